"""DVC stage ``train_tokenizer``: train the AMPLIFY motion tokenizer on the ``tracks`` windows.

    python -m stages.train_tokenizer [--params params.yaml] [-S tokenizer.KEY=VALUE ...] [--no-progress]
                                     [--tracks data/tracks] [--out data/models/tokenizer]
                                     [--live reports/train_tokenizer] [--work data/models/.tokenizer.resume]

Shared training loop (AdamW, schedule, clipping, safetensors checkpoints last/best/final with resume,
DDP under ``torchrun``), DVCLive logs in ``--live`` (metrics.json and plots that dvc exp show / dvc plots read).
Training runs in ``--work`` and is published to ``--out`` / ``--live`` at the end, so a killed ``dvc repro``
resumes (models/train/workdir.py).
"""
from __future__ import annotations

import os
import sys

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (FileNotFoundError, ValueError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--tracks", default="data/tracks")
    ap.add_argument("--out", default="data/models/tokenizer")
    ap.add_argument("--live", default="reports/train_tokenizer")
    ap.add_argument("--work", help="checkpoints and logs until published, for resuming "
                    "(default: .<out name>.resume beside --out)")
    args = ap.parse_args(argv)
    [params] = load_params(args, "tokenizer")
    from models.tokenizer.config import TokenizerConfig

    TokenizerConfig.from_params(params)  # rules between architecture keys, before any work

    from models.tokenizer.training import TokenizerTask, TrackWindows, train_config
    from models.train import train
    from models.train.workdir import fingerprint, stage_work

    train_set, val_set = TrackWindows(args.tracks, "train"), TrackWindows(args.tracks, "val")
    task = TokenizerTask(params, num_tracks=int(train_set.N), track_horizon=int(train_set.T))
    with stage_work(args.work, args.out) as work:
        summary = train(task, train_set, val_set, train_config(params), args.out, args.live, resume=True,
                        progress=show_progress(args), work_dir=work,
                        fingerprint=fingerprint(params, inputs=[args.tracks]))
    best = summary.get("best") or {}
    if summary.get("world_size", 1) > 1 and os.environ.get("RANK", "0") != "0":
        return
    print(f"train_tokenizer: {len(train_set)} train / {len(val_set)} val windows, {summary['global_step']} steps; "
          f"best val {best.get('metric')} = {best.get('value')} (epoch {best.get('epoch')}) -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
