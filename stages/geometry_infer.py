"""Run the trained geometry model on a multi-view sequence folder (not a DVC stage: a user's tool).

    python -m stages.geometry_infer --sequence DIR [--model data/models/geometry/final.safetensors]
                                    [--out data/geometry_infer/<folder name>] [--depth-unit 1.0]
                                    [--params params.yaml] [-S geometry.KEY=VALUE | -S train_geometry.KEY=VALUE ...]

The folder is read by :class:`models.sequences.MultiViewSequence` (either layout; docs/sequences.md) in windows of
``train_geometry.frames`` times x all its views, resized to ``train_geometry.image_size``. Writes, per window,
``window_<k>.npz``: ``depth [T, V, H, W]`` metres, ``depth_conf``, ``extrinsics [T, V, 3, 4]`` world-to-camera
with the world = the window's camera (t=0, v=0), metres, ``intrinsics [T, V, 3, 3]`` (pixels of the resized
images), ``mask [T, V, H, W]`` (the dynamic mask M, upsampled from patches) and ``times``; and, when the folder has
depth and calibration, ``metrics.json`` with the same depth / camera / mask metrics as ``report_geometry`` against
the folder's depth, extrinsics and masks. ``--external-mask`` feeds the folder's masks to the model as the external
mask ``M_ext`` (fused with the predicted mask; the mask metric is then left out).
"""
from __future__ import annotations

import sys
from pathlib import Path

from stages._cli import guarded, load_params, stage_parser


def main(argv: list[str] | None = None) -> int:
    from models.train import CheckpointError

    return guarded(_main, argv, (FileNotFoundError, ValueError, CheckpointError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--sequence", required=True, help="a multi-view sequence folder (with images/)")
    ap.add_argument("--model", default="data/models/geometry/final.safetensors")
    ap.add_argument("--out", default=None)
    ap.add_argument("--depth-unit", type=float, default=1.0, help="metres per stored depth unit of the folder")
    ap.add_argument("--external-mask", action="store_true", help="feed the folder's dynamic masks to the model as "
                    "M_ext (then they are no truth for the mask metric, which is left out)")
    args = ap.parse_args(argv)
    geometry, p = load_params(args, "geometry", "train_geometry")
    from models.geometry.config import GeometryConfig

    cfg = GeometryConfig.from_params(geometry)

    from models.geometry.infer import infer_sequence

    out = Path(args.out) if args.out else Path("data/geometry_infer") / Path(args.sequence).resolve().name
    summary = infer_sequence(cfg, p, args.sequence, args.model, out, depth_unit=args.depth_unit,
                             external_mask=args.external_mask)
    print(f"geometry_infer: {summary['windows']} windows of {summary['frames']} times x {summary['views']} views "
          f"-> {out}" + (f"; depth AbsRel {summary['headline']['depth_abs_rel']:.3f}, AUC@30 "
                         f"{summary['headline']['auc30']:.3f}" if summary.get("headline") else "; no truth in the "
                                                                                              "folder"))


if __name__ == "__main__":
    sys.exit(main())
