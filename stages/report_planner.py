"""DVC stage ``report_planner``: open-loop metrics of the planner and its baselines, and figures.

    python -m stages.report_planner [--params params.yaml] [-S planner.KEY=VALUE ...] [--no-progress]
                                    [--cache data/cache] [--models data/models/planner] [--out reports/planner]

Writes ``<out>/metrics.json`` (average L2 and collision rate of planner / ego_mlp / constant_velocity /
constant_turn_rate under the UniAD and ST-P3 conventions, so ``dvc exp show`` puts the model and its baselines
in one row), ``<out>/details.json`` (every horizon, which rows beat constant velocity, the sample count, the image
ablation's L2 cost and, with a perception head, its val errors on own and fixed images) and
``<out>/figures/`` (BEV + CAM_FRONT projection for ``planner.figure_samples`` fixed validation samples).
The learned models are scored from their ``best.safetensors``: the checkpoint chosen on the selection scenes
(the last ``planner.select_scenes`` scenes of the train split), so the val split reported here chose nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (FileNotFoundError, ValueError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--models", default="data/models/planner")
    ap.add_argument("--out", default="reports/planner")
    args = ap.parse_args(argv)
    [p] = load_params(args, "planner")
    from models.planner.config import PlannerConfig

    PlannerConfig.from_params(p)  # rules between architecture keys, before any work

    from models.common.io import atomic_dir, write_json
    from models.planner.data import PlannerSamples
    from models.planner.figures import default_figure_indices, write_planner_figures
    from models.planner.report import (
        IMAGE_ABLATION,
        FixedImages,
        image_ablation,
        kinematic_predictions,
        perception_errors,
        planning_report,
    )
    from models.planner.training import (
        EgoMLPTask,
        EgoOnly,
        PlannerTask,
        build_ego_mlp,
        build_planner,
        predict_split,
        route_points_of,
    )
    from models.train import load_weights

    val = PlannerSamples(args.cache, "val", p, progress=show_progress(args))
    history_steps = int(val.cache.manifest["history_steps"])
    route_points = route_points_of(val)
    models = Path(args.models)
    planner = build_planner(p, history_steps, route_points)
    load_weights(models / "planner" / "best.safetensors", planner)
    mlp = build_ego_mlp(p, history_steps, route_points)
    load_weights(models / "ego_mlp" / "best.safetensors", mlp)
    # statistics are buffers inside the checkpoints; each task knows which inputs its model reads
    planner_task = PlannerTask(p, None, None, history_steps, route_points)
    mlp_task = EgoMLPTask(p, history_steps, None, None, route_points)
    predictions = {"planner": predict_split(planner, val, planner_task.predict),
                   IMAGE_ABLATION: predict_split(planner, FixedImages(val), planner_task.predict),
                   "ego_mlp": predict_split(mlp, EgoOnly(val), mlp_task.predict),
                   **kinematic_predictions(val.cache.arrays, p.future_steps, p.dt)}
    report = planning_report(predictions, val.cache.arrays)
    report["samples"] = len(val)
    report["use_ego_status"] = p.use_ego_status
    report["ego_path"], report["route_input"] = p.ego_path, p.route_input
    report["route_source"] = val.cache.manifest.get("route_source", "none")
    report["checkpoint"] = "best.safetensors (chosen on the last planner.select_scenes train scenes)"
    report["image_ablation_l2_cost"] = image_ablation(report["rows"])
    report["perception_weight"] = p.perception_weight
    if planner.perception is not None:  # how well the head sees the corridor, on its own and on a fixed image
        def perceived(model, batch):
            return model.perception.unstandardise(planner_task.outputs(model, batch)["perception"])

        target = val.arrays["perception_target"]
        report["perception"] = {name: perception_errors(predict_split(planner, data, perceived), target)
                                for name, data in (("planner", val), (IMAGE_ABLATION, FixedImages(val)))}

    with atomic_dir(Path(args.out) / "figures") as fig_dir:
        drawn = {k: v for k, v in predictions.items() if k != IMAGE_ABLATION}
        write_planner_figures(fig_dir, val.cache, drawn, default_figure_indices(val.cache, p.figure_samples))
    write_json(Path(args.out) / "details.json", report)
    write_json(Path(args.out) / "metrics.json", {
        name: {conv: {k: row[conv][k] for k in ("l2_avg", "col_avg")} for conv in row}
        for name, row in report["rows"].items()})
    rows = report["rows"]
    for conv in ("uniad", "stp3"):
        parts = ", ".join(f"{n} {r[conv]['l2_avg']:.3f} m / {r[conv]['col_avg']:.2f} %" for n, r in rows.items())
        print(f"report_planner: {len(val)} val samples, {conv} avg L2 / col: {parts}")


if __name__ == "__main__":
    sys.exit(main())
