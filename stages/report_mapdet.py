"""DVC stage ``report_mapdet``: the trained map detector on the validation samples beside the mean-training-layout
baseline, both scored by MapTR's Chamfer AP (:mod:`models.mapdet.chamfer_ap`).

    python -m stages.report_mapdet [--params params.yaml] [--cache data/cache]
                                   [--model data/models/mapdet] [--out reports/mapdet]

Writes ``<out>/metrics.json`` (per predictor: mAP, per-class AP, mAP at 0.5 / 1.0 / 1.5 m; ``mapdet_random_sources`` 1 when
the BLIP-2 parts or the language model were seeded random tensors), ``<out>/details.json`` (every AP, the
provenance) and ``<out>/figures/`` (fixed validation samples: six cameras above the BEV of GT and predictions).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from stages._cli import guarded, load_params, show_progress, stage_parser


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, (ValueError,))   # + the shared input errors of stages._cli


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--model", default="data/models/mapdet")
    ap.add_argument("--out", default="reports/mapdet")
    args = ap.parse_args(argv)
    (p,) = load_params(args, "mapdet")

    from models.common.io import atomic_dir, write_json
    from models.mapdet.config import MapDetConfig
    from models.mapdet.data import MapSamples
    from models.mapdet.model import MapDetector
    from models.mapdet.report import evaluate_split
    from models.mapdet.sources import prompt_ids_for
    from models.train import load_weights

    model_dir = Path(args.model)
    provenance_path = model_dir / "provenance.json"
    if not provenance_path.is_file():
        raise FileNotFoundError(f"{provenance_path}: no provenance next to the trained detector (run train_mapdet)")
    provenance = json.loads(provenance_path.read_text())
    progress = show_progress(args)
    train = MapSamples(args.cache, "train", p.cameras, p.image_size, p.image_cache_mb, progress=progress)
    val = MapSamples(args.cache, "val", p.cameras, p.image_size, p.image_cache_mb, progress=progress)
    cfg = MapDetConfig.from_params(p, val.num_points, len(val.classes))
    model = MapDetector(cfg, prompt_ids_for(cfg, p))
    load_weights(model_dir / "final.safetensors", model, strict=True)
    with atomic_dir(args.out) as tmp:
        result = evaluate_split(model, train, val, tmp / "figures", p.figure_samples, seed=p.seed)
        random = bool(provenance.get("random_sources", True))
        write_json(tmp / "metrics.json", {**result["headline"], "mapdet_random_sources": int(random)})
        write_json(tmp / "details.json", {**result["details"], "provenance": provenance})
    h = result["headline"]
    for name in ("model", "baseline"):
        r = h[name]
        print(f"report_mapdet: {name:8s} mAP {r['mAP']:.4f} (divider {r['divider_AP']:.4f}, ped_crossing "
              f"{r['ped_crossing_AP']:.4f}, boundary {r['boundary_AP']:.4f})"
              + ("  [random BLIP-2 / LM sources]" if random and name == "model" else ""))


if __name__ == "__main__":
    sys.exit(main())
