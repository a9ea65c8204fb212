"""DVC stage ``train_mapdet``: train the map detector (Q-Former + frozen language model + map queries + decoder).

    python -m stages.train_mapdet [--params params.yaml] [-S mapdet.KEY=VALUE ...] [--cache data/cache]
                                  [--out data/models/mapdet] [--live reports/train_mapdet] [--no-progress]
                                  [--work data/models/.mapdet.resume]
    torchrun --nproc_per_node 2 -m stages.train_mapdet          # DDP (gloo on CPU, NCCL on GPU)

Reads the GT cache's map GT and the key frames' camera images. The BLIP-2 parts and the language model come from
``mapdet.blip2_checkpoint`` / ``mapdet.lm_checkpoint`` or, without them, from seeded random tensors in the real
layouts pushed through the same loaders (``<out>/provenance.json`` says which). The shared loop: AdamW with three
parameter groups, warm-up + cosine, clipping 0.1, AMP when asked, ``last`` (every epoch, for resume) / ``best`` /
``final`` safetensors checkpoints with optimiser and scheduler state, DVCLive, one line per epoch with the loss
breakdown and the per-group learning rates (``LR: q=... m=... d=...``). Training runs in ``--work`` and is
published at the end, so a killed ``dvc repro`` resumes (models/train/workdir.py).
"""
from __future__ import annotations

import os
import sys

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    from models.train import TrainingDiverged

    return guarded(_main, argv, (ValueError, TrainingDiverged))   # + the shared input errors of stages._cli


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--out", default="data/models/mapdet")
    ap.add_argument("--live", default="reports/train_mapdet")
    ap.add_argument("--work", help="checkpoints and logs until published, for resuming "
                    "(default: .<out name>.resume beside --out)")
    args = ap.parse_args(argv)
    (p,) = load_params(args, "mapdet")

    from models.common.io import write_json
    from models.mapdet.config import MapDetConfig
    from models.mapdet.data import MapSamples
    from models.mapdet.training import MapDetTask, mapdet_train_config
    from models.train import train
    from models.train.workdir import fingerprint, stage_work

    main_rank = os.environ.get("RANK", "0") == "0"
    progress = main_rank and show_progress(args)
    train_set = MapSamples(args.cache, "train", p.cameras, p.image_size, p.image_cache_mb, progress=progress)
    val_set = MapSamples(args.cache, "val", p.cameras, p.image_size, p.image_cache_mb, progress=progress)
    cfg = MapDetConfig.from_params(p, train_set.num_points, len(train_set.classes))
    task = MapDetTask(cfg, p)
    sources = [args.cache] + [c for c in (p.blip2_checkpoint, p.lm_checkpoint) if c]
    with stage_work(args.work, args.out) as work:
        summary = train(task, train_set, val_set, mapdet_train_config(p), args.out, args.live, resume=True,
                        progress=progress, work_dir=work, fingerprint=fingerprint(p, inputs=sources))
        if main_rank:
            write_json(os.path.join(args.out, "provenance.json"), task.provenance)
    if main_rank:
        val = summary.get("val") or {}
        flag = " (random BLIP-2 / LM sources: no real checkpoint given)" if task.provenance.get("random_sources") \
            else ""
        print(f"train_mapdet: {len(train_set)} train / {len(val_set)} val samples, {summary['global_step']} steps; "
              f"final val loss {val.get('loss', float('nan')):.4f} -> {args.out}{flag}")


if __name__ == "__main__":
    sys.exit(main())
