"""DVC stage ``report_geometry``: the trained geometry model on validation windows, beside the converted
initialisation and a trivial baseline (per-pixel mean training depth; identity relative poses; no motion), all
scored by the same code on the same windows (:mod:`models.geometry.evaluation`).

    python -m stages.report_geometry [--params params.yaml] [--cache data/cache]
                                     [--init data/weights/geometry_init.safetensors]
                                     [--model data/models/geometry/final.safetensors] [--out reports/geometry]

Writes ``<out>/metrics.json`` (headline: per predictor depth AbsRel and delta < 1.25 unaligned, AbsRel after median
alignment, pose AUC@30 and RRA@15, ATE, mask IoU), ``<out>/details.json`` (every metric) and ``<out>/figures/``
(fixed validation windows: predicted and true depth with the error, the dynamic mask over the image, a bird's-eye
view of predicted and true camera centres).
"""
from __future__ import annotations

import sys
from pathlib import Path

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (ValueError,))   # + the shared input errors of stages._cli


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--init", default="data/weights/geometry_init.safetensors")
    ap.add_argument("--model", default="data/models/geometry/final.safetensors")
    ap.add_argument("--out", default="reports/geometry")
    args = ap.parse_args(argv)
    geometry, p = load_params(args, "geometry", "train_geometry")
    from models.geometry.config import GeometryConfig

    from models.geometry.windows import check_input

    cfg = GeometryConfig.from_params(geometry)
    check_input(p, args.cache)

    from models.common.io import atomic_dir, write_json
    from models.geometry.report import evaluate_split

    with atomic_dir(args.out) as tmp:
        result = evaluate_split(cfg, p, args.cache, args.init, args.model, tmp / "figures",
                                progress=show_progress(args))
        write_json(tmp / "metrics.json", result["headline"])
        write_json(tmp / "details.json", result["details"])
    h = result["headline"]
    for name in ("model", "init", "baseline"):
        r = h[name]
        print(f"report_geometry: {name:8s} depth AbsRel {r['depth_abs_rel']:.3f} (median-aligned "
              f"{r['depth_median_abs_rel']:.3f}), AUC@30 {r['auc30']:.3f}, ATE {r['ate_m']:.2f} m"
              + (f", mask IoU {r['mask_iou']:.3f}" if "mask_iou" in r else ""))


if __name__ == "__main__":
    sys.exit(main())
