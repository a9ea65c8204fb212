"""DVC stage ``report_tokenizer``: trajectory reconstruction by the trained tokenizer on val windows.

    python -m stages.report_tokenizer [--params params.yaml] [-S tokenizer.KEY=VALUE ...] [--no-progress]
                                      [--tracks data/tracks] [--model data/models/tokenizer/final.safetensors]
                                      [--out reports/tokenizer]

Scores ``final.safetensors``, the weights after the last epoch: ``best`` was chosen on these same val windows,
so its numbers would be optimistic (report_planner scores ``final`` too). Writes ``<out>/metrics.json`` (MSE,
normalised accuracy, delta-AUC and label accuracy of the model and of zero motion, codes used),
``<out>/details.json`` (every metric of the model, zero motion, the perfect-label ceiling and the no-learning
references, over all steps and over visible points, each row's share of the way from zero motion to the ceiling,
codebook usage, which metrics beat zero motion) and ``<out>/figures/`` (GT vs reconstructed tracks over the first frame of fixed
val windows, codebook usage histogram).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from models.common.io import atomic_dir, write_json
from stages._cli import guarded, load_params, stage_parser

FIGURE_WINDOWS = 4
GT_ONLY = ("nonzero_gt_percent",)
# cross_track_l2 measures the GT's distance to the *predicted* polyline; zero motion predicts a single point,
# for which the official definition gives 0, and even the perfect-label ceiling scores above it: the
# metric cannot rank a reconstruction against zero motion, so it is reported but not part of the verdict.
DEGENERATE_FOR_ZERO_MOTION = ("cross_track_l2",)
# metrics.json name -> report name, per row: short names keep `dvc exp show` narrow (docs/data.md)
HEADLINE = {"mse": "mse", "norm_acc": "normalized_accuracy", "delta_auc": "delta_auc"}
SHARES = {"mse": "mse", "auc": "delta_auc"}  # metrics.json <name>_share: the way from zero motion to the ceiling


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (FileNotFoundError, ValueError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--tracks", default="data/tracks")
    ap.add_argument("--model", default="data/models/tokenizer/final.safetensors")
    ap.add_argument("--out", default="reports/tokenizer")
    args = ap.parse_args(argv)
    [params] = load_params(args, "tokenizer")
    from models.tokenizer.config import TokenizerConfig
    config = TokenizerConfig.from_params(params)  # rules between architecture keys, before any work

    import numpy as np

    from models.tokenizer.model import MotionTokenizer
    from models.tokenizer.report import (LOWER_IS_BETTER, beats, draw_codebook_histogram, draw_gap_shares,
                                         draw_tracks, reconstruction_report)
    from models.tokenizer.training import TrackWindows
    from models.train import load_weights

    windows = TrackWindows(args.tracks, "val")
    model = MotionTokenizer(config, num_tracks=int(windows.N), track_horizon=int(windows.T), num_views=1)
    load_weights(args.model, model)
    rep = reconstruction_report(model, windows)
    rows = rep["rows"]
    # properties of the ground truth alone (equal for every row) are not reconstruction metrics
    metrics = [m for m in rows["model"] if isinstance(rows["model"][m], float) and m not in GT_ONLY]
    summary = {"windows": rep["windows"], "rows": rows, "rows_visible": rep["rows_visible"], "share": rep["share"],
               "visible_point_share": rep["visible_share"], "visible_step_share": rep["visible_step_share"],
               "codebook": rep["codebook"],
               "beats_zero_motion": {m: beats(rows, m) for m in metrics},
               "lower_is_better": list(LOWER_IS_BETTER)}
    summary["excluded_from_verdict"] = {m: "zero motion scores 0 by the official definition (a single-point "
                                           "prediction); the perfect-label ceiling scores "
                                           f"{rows['perfect_labels'][m]:.5f}" for m in DEGENERATE_FOR_ZERO_MOTION}
    summary["beats_zero_motion_all"] = all(v for m, v in summary["beats_zero_motion"].items()
                                           if m not in DEGENERATE_FOR_ZERO_MOTION)

    with atomic_dir(Path(args.out) / "figures") as fig_dir:
        frames = _first_frames(windows, params.img_size)
        picks = np.linspace(0, len(windows) - 1, FIGURE_WINDOWS).round().astype(int)
        for k, i in enumerate(picks):
            draw_tracks(frames(i), windows.arrays["tracks"][i], rep["pred"][i], params.img_size,
                        fig_dir / f"tracks_{k}.png", f"val window {i}: GT (green) vs reconstructed (magenta)")
        draw_codebook_histogram(rep["indices"], rep["codebook"]["codebook_size"], fig_dir / "codebook_usage.png")
        draw_gap_shares(rep["share"], fig_dir / "gap_to_ceiling.png")
    write_json(Path(args.out) / "details.json", summary)
    share, vis = rep["share"], rep["rows_visible"]
    write_json(Path(args.out) / "metrics.json", {
        "model": {**{k: rows["model"][v] for k, v in HEADLINE.items()}, "codes": rep["codebook"]["unique_codes"],
                  **{f"{k}_share": share["all_steps"]["model"][v] for k, v in SHARES.items()}},
        # the same model scored on visible points only (lost LK points frozen in place left out)
        "model_visible": {**{k: vis["model"][v] for k, v in HEADLINE.items()},
                          **{f"{k}_share": share["visible_steps"]["model"][v] for k, v in SHARES.items()}},
        "zero": {k: rows["zero_motion"][v] for k, v in HEADLINE.items()}})  # the zero-motion reference
    m, z = rows["model"], rows["zero_motion"]
    a, v = share["all_steps"]["model"], share["visible_steps"]["model"]
    print(f"report_tokenizer: {rep['windows']} val windows; mse {m['mse']:.5f} (zero motion {z['mse']:.5f}), "
          f"delta_auc {m['delta_auc']:.3f} ({z['delta_auc']:.3f}); way to the ceiling: mse {a['mse']:.1%}, "
          f"delta_auc {a['delta_auc']:.1%} (visible points: {v['mse']:.1%}, {v['delta_auc']:.1%}); "
          f"codebook {rep['codebook']['unique_codes']} "
          f"codes used; beats zero motion on every metric (but {', '.join(DEGENERATE_FOR_ZERO_MOTION)}): "
          f"{summary['beats_zero_motion_all']}")


def _first_frames(windows, img_size):
    """A function window index -> its first frame resized to img_size (None where the source has no file)."""
    import cv2

    manifest = windows.manifest
    data = manifest.get("data")
    if not data:
        return lambda i: None
    root = Path(data["dataroot"])
    records = json.loads((root / data["version"] / "sample_data.json").read_text())
    by_time = {r["timestamp"]: r["filename"] for r in records if "__CAM_FRONT__" in r["filename"]}
    times = windows.window_time_us

    def frame(i: int):
        name = by_time.get(int(times[i]))
        if name is None or not (root / name).is_file():
            return None
        img = cv2.cvtColor(cv2.imread(str(root / name)), cv2.COLOR_BGR2RGB)
        return cv2.resize(img, (img_size[1], img_size[0]), interpolation=cv2.INTER_AREA)

    return frame


if __name__ == "__main__":
    sys.exit(main())
