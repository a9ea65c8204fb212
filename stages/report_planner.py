"""DVC stage ``report_planner``: open-loop metrics of the planner and its baselines, and figures.

    python -m stages.report_planner [--params params.yaml] [--cache data/cache] [--models data/models/planner]
                                    [--out reports/planner]

Writes ``<out>/metrics.json`` (rows planner / ego_mlp / constant_velocity / constant_turn_rate, each under the
UniAD and ST-P3 conventions, so ``dvc exp show`` puts the model and its baselines in one row) and
``<out>/figures/`` (BEV + CAM_FRONT projection for ``planner.figure_samples`` fixed validation samples).
The learned models are scored from their ``final.safetensors`` (not ``best``, which validation chose).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.common.params import load_section
from stages._cli import guarded


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (FileNotFoundError, ValueError))


def _main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--models", default="data/models/planner")
    ap.add_argument("--out", default="reports/planner")
    args = ap.parse_args(argv)
    p = load_section("planner", args.params)

    from models.common.io import atomic_dir, write_json
    from models.planner.data import PlannerSamples
    from models.planner.figures import default_figure_indices, write_planner_figures
    from models.planner.model import ViTPlannerV2
    from models.planner.report import kinematic_predictions, planning_report
    from models.planner.training import (
        EgoMLPTask,
        EgoOnly,
        PlannerTask,
        build_ego_mlp,
        predict,
    )
    from models.train import load_weights

    val = PlannerSamples(args.cache, "val", p)
    history_steps = int(val.cache.manifest["history_steps"])
    models = Path(args.models)
    planner = ViTPlannerV2(p)
    load_weights(models / "planner" / "final.safetensors", planner)
    mlp = build_ego_mlp(p, history_steps)
    load_weights(models / "ego_mlp" / "final.safetensors", mlp)
    # statistics are buffers inside the checkpoints; the tasks are used only for their _predict
    planner_task = PlannerTask(p, None, None)
    mlp_task = EgoMLPTask(p, history_steps, None, None)
    predictions = {"planner": predict(planner, val, planner_task._predict),
                   "ego_mlp": predict(mlp, EgoOnly(val), mlp_task._predict),
                   **kinematic_predictions(val.cache.arrays, p.future_steps, p.dt)}
    report = planning_report(predictions, val.cache.arrays)
    report["samples"] = len(val)
    report["use_ego_status"] = p.use_ego_status

    with atomic_dir(Path(args.out) / "figures") as fig_dir:
        write_planner_figures(fig_dir, val.cache, predictions, default_figure_indices(val.cache, p.figure_samples))
    write_json(Path(args.out) / "metrics.json", report)
    rows = report["rows"]
    for conv in ("uniad", "stp3"):
        parts = ", ".join(f"{n} {r[conv]['l2_avg']:.3f} m / {r[conv]['col_avg']:.2f} %" for n, r in rows.items())
        print(f"report_planner: {len(val)} val samples, {conv} avg L2 / col: {parts}")


if __name__ == "__main__":
    sys.exit(main())
