"""DVC stage ``train_planner``: train ViT Planner V2 and its Ego-MLP baseline on the GT cache.

    python -m stages.train_planner [--params params.yaml] [-S planner.KEY=VALUE ...] [--no-progress]
                                   [--cache data/cache] [--out data/models/planner]
                                   [--live reports/train_planner] [--live-mlp reports/train_ego_mlp]
                                   [--work data/models/.planner.resume]
    torchrun --nproc_per_node 2 -m stages.train_planner      # DDP (gloo on CPU, NCCL on GPU)

Both go through the shared training loop (AdamW, warm-up + cosine, clipping, AMP, safetensors checkpoints
last/best/final with resume, DVCLive). Both train on the train split less its last ``planner.select_scenes``
scenes, which select ``best`` (DVCLive's "val" curves are on them); the val split is not read here. The Ego-MLP
trains first; with ``planner.ego_path = residual`` its ``best`` weights become the planner's ego path.
Outputs: ``<out>/planner/*.safetensors`` and ``<out>/ego_mlp/*``.
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
    from torch.utils.data import Subset

    from models.planner.data import PlannerSamples
    from models.planner.training import (
        EgoMLPTask,
        EgoOnly,
        PlannerTask,
        build_ego_mlp,
        feature_statistics,
        mlp_config,
        planner_config,
        fused_statistics,
        route_points_of,
        target_statistics,
    )
    from models.train import load_weights, train
    from models.train.workdir import fingerprint, stage_work

    main_rank = os.environ.get("RANK", "0") == "0"
    progress = main_rank and show_progress(args)
    samples = PlannerSamples(args.cache, "train", p, progress=progress)
    fit, select = samples.selection_split(p.select_scenes)      # sample indices: trained on / selecting best
    history_steps = int(samples.cache.manifest["history_steps"])
    route_points = route_points_of(samples)

    f_mean, f_std = feature_statistics(samples, p, fit)
    mlp_train, mlp_select = EgoOnly(samples, fit), EgoOnly(samples, select)
    steps = -(-len(mlp_train) // p.batch_size)
    run = fingerprint(p, inputs=[args.cache])
    with stage_work(args.work, args.out) as work:
        mlp = train(EgoMLPTask(p, history_steps, f_mean, f_std, route_points), mlp_train, mlp_select,
                    mlp_config(p, steps), Path(args.out) / "ego_mlp", args.live_mlp, resume=True, progress=progress,
                    work_dir=work / "ego_mlp", fingerprint=run)
        ego_path_state = None
        if p.ego_path == "residual":  # the selected Ego-MLP becomes the planner's ego path
            ego_mlp = build_ego_mlp(p, history_steps, route_points)
            load_weights(Path(args.out) / "ego_mlp" / "best.safetensors", ego_mlp)
            ego_path_state = ego_mlp.state_dict()

        ego_mean, ego_std = samples.ego_statistics(fit)
        fused = fused_statistics(f_mean, f_std) if p.ego_path == "fused" else None
        planner = train(PlannerTask(p, ego_mean, ego_std, history_steps, route_points, ego_path_state, fused,
                                    target_statistics(samples, fit)),
                        Subset(samples, fit), Subset(samples, select), planner_config(p),
                        Path(args.out) / "planner", args.live, resume=True, progress=progress,
                        work_dir=work / "planner", fingerprint=run)
    if not main_rank:
        return
    for name, s in (("ego_mlp", mlp), ("planner", planner)):
        best = s["best"]
        print(f"train_planner: {name}: {len(fit)} train / {len(select)} selection samples (last "
              f"{p.select_scenes} train scenes), {s['global_step']} steps; best selection l2_avg "
              f"{best['value']:.3f} m (UniAD rule) at epoch {best['epoch']}")

if __name__ == "__main__":
    sys.exit(main())
