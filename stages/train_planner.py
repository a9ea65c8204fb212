"""DVC stage ``train_planner``: train ViT Planner V2 and its Ego-MLP baseline on the GT cache.

    python -m stages.train_planner [--params params.yaml] [-S planner.KEY=VALUE ...] [--no-progress]
                                   [--cache data/cache] [--out data/models/planner]
                                   [--live reports/train_planner] [--live-mlp reports/train_ego_mlp]
                                   [--work data/models/.planner.resume]
    torchrun --nproc_per_node 2 -m stages.train_planner      # DDP (gloo on CPU, NCCL on GPU)

Both go through the shared training loop (AdamW, warm-up + cosine, clipping, AMP, safetensors checkpoints
last/best/final with resume, DVCLive). Outputs: ``<out>/planner/*.safetensors`` and ``<out>/ego_mlp/*``.
Both train in ``<work>/ego_mlp`` and ``<work>/planner``, removed once both are published, so a killed
``dvc repro`` resumes without retraining a finished model (models/train/workdir.py).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (FileNotFoundError, ValueError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--out", default="data/models/planner")
    ap.add_argument("--live", default="reports/train_planner")
    ap.add_argument("--live-mlp", default="reports/train_ego_mlp")
    ap.add_argument("--work", help="checkpoints and logs until published, for resuming "
                    "(default: .<out name>.resume beside --out)")
    args = ap.parse_args(argv)
    [p] = load_params(args, "planner")
    from models.planner.config import PlannerConfig

    PlannerConfig.from_params(p)  # rules between architecture keys, before any work

    from models.train import distributed

    with distributed.session():  # one process group for both models under torchrun
        _train_both(p, args)


def _train_both(p, args) -> None:
    from models.planner.data import PlannerSamples
    from models.planner.training import (
        EgoMLPTask,
        EgoOnly,
        PlannerTask,
        feature_statistics,
        mlp_config,
        planner_config,
    )
    from models.train import train
    from models.train.workdir import fingerprint, stage_work

    main_rank = os.environ.get("RANK", "0") == "0"
    progress = main_rank and show_progress(args)
    train_set = PlannerSamples(args.cache, "train", p, progress=progress)
    val_set = PlannerSamples(args.cache, "val", p, progress=progress)
    history_steps = int(train_set.cache.manifest["history_steps"])

    f_mean, f_std = feature_statistics(train_set, p.mlp_use_command)
    mlp_train, mlp_val = EgoOnly(train_set), EgoOnly(val_set)
    steps = -(-len(mlp_train) // p.batch_size)
    run = fingerprint(p, inputs=[args.cache])
    with stage_work(args.work, args.out) as work:
        mlp = train(EgoMLPTask(p, history_steps, f_mean, f_std), mlp_train, mlp_val, mlp_config(p, steps),
                    Path(args.out) / "ego_mlp", args.live_mlp, resume=True, progress=progress,
                    work_dir=work / "ego_mlp", fingerprint=run)

        ego_mean, ego_std = train_set.ego_statistics()
        planner = train(PlannerTask(p, ego_mean, ego_std), train_set, val_set, planner_config(p),
                        Path(args.out) / "planner", args.live, resume=True, progress=progress,
                        work_dir=work / "planner", fingerprint=run)
    if not main_rank:
        return
    for name, s in (("ego_mlp", mlp), ("planner", planner)):
        val = s.get("val") or {}
        print(f"train_planner: {name}: {len(train_set)} train / {len(val_set)} val samples, {s['global_step']} "
              f"steps; final val l2_avg {val.get('l2_avg', float('nan')):.3f} m (UniAD rule)")

if __name__ == "__main__":
    sys.exit(main())
