"""DVC stage ``train_geometry``: fine-tune the converted geometry model on multi-view windows.

    python -m stages.train_geometry [--params params.yaml] [-S geometry.KEY=VALUE | -S train_geometry.KEY=VALUE ...]
                                    [--cache data/cache] [--init data/weights/geometry_init.safetensors]
                                    [--out data/models/geometry] [--live reports/train_geometry] [--no-progress]
                                    [--work data/models/.geometry.resume]
    torchrun --nproc_per_node 2 -m stages.train_geometry      # DDP (gloo on CPU, NCCL on GPU)

Windows of ``train_geometry.frames`` consecutive key frames x ``train_geometry.cameras`` from the GT cache (the
synthetic world by default; a real nuScenes dataroot unchanged), or of a multi-view sequence folder
(``train_geometry.source: sequences``, ``train_geometry.sequences``). The shared loop: AdamW with three parameter
groups, warm-up + cosine, clipping, AMP (bf16 on CPU) when asked, safetensors checkpoints last/best/final with
resume, DVCLive logs; ``geometry.activation_checkpointing`` recomputes blocks in backward. Training runs in
``--work`` and is published at the end, so a killed ``dvc repro`` resumes (models/train/workdir.py).
"""
from __future__ import annotations

import os
import sys

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (ValueError,))   # + the shared input errors of stages._cli


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--init", default="data/weights/geometry_init.safetensors")
    ap.add_argument("--out", default="data/models/geometry")
    ap.add_argument("--live", default="reports/train_geometry")
    ap.add_argument("--work", help="checkpoints and logs until published, for resuming "
                    "(default: .<out name>.resume beside --out)")
    args = ap.parse_args(argv)
    geometry, p = load_params(args, "geometry", "train_geometry")
    from models.geometry.config import GeometryConfig

    from models.geometry.windows import check_input

    cfg = GeometryConfig.from_params(geometry)           # architecture rules, before any work
    check_input(p, args.cache)

    from models.geometry.training import GeometryTask, geometry_train_config
    from models.geometry.windows import open_windows
    from models.train import train
    from models.train.workdir import fingerprint, stage_work

    main_rank = os.environ.get("RANK", "0") == "0"
    train_set = open_windows(p, "train", cfg, args.cache, cache_mb=p.image_cache_mb)
    val_set = open_windows(p, "val", cfg, args.cache, cache_mb=p.image_cache_mb)
    task = GeometryTask(cfg, p, args.init)
    with stage_work(args.work, args.out) as work:
        summary = train(task, train_set, val_set, geometry_train_config(p), args.out, args.live, resume=True,
                        progress=main_rank and show_progress(args), work_dir=work,
                        fingerprint=fingerprint(geometry, p, inputs=[args.cache, args.init, p.input]))
    if main_rank:
        val = summary.get("val") or {}
        print(f"train_geometry: {len(train_set)} train / {len(val_set)} val windows, {summary['global_step']} steps; "
              f"final val loss {val.get('loss', float('nan')):.4f} -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
