"""DVC stage ``convert_weights``: Pi3 + PAGE-4D checkpoints -> the geometry model's initial weights.

    python -m stages.convert_weights [--params params.yaml] [-S geometry.KEY=VALUE | -S convert.KEY=VALUE ...]
                                     [--out data/weights] [--metrics reports/convert_weights.json]

Reads ``convert.pi3`` (flat safetensors) and ``convert.page4d`` (a torch zip, state dict under ``model``), file
names inside ``convert.checkpoint_dir`` (the stage's data dependency); null = a seeded random checkpoint in that
source's exact key layout at the configured size, written to a temporary folder and read back through the same
reader (the report's first line says ``random sources``). Writes ``<out>/geometry_init.safetensors`` (loads into
``GeometryModel`` with ``strict=True``, checked before anything is written), ``<out>/provenance.json`` and
``provenance.tsv`` (one row per target tensor: source, source file, source key, transform, shape; the TSV's first
line is the summary, ``random sources`` or ``real sources``) atomically, and the headline counts by source to
``--metrics``, with ``<metrics>_details.json`` beside it.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from stages._cli import guarded, load_params, stage_parser, write_reports


def main(argv: list[str] | None = None) -> int:
    from models.geometry.convert import ConversionError

    return guarded(_main, argv, input_errors=(ConversionError,))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", default="data/weights")
    ap.add_argument("--metrics", default="reports/convert_weights.json", help="headline ('' to skip)")
    args = ap.parse_args(argv)
    geometry, conv = load_params(args, "geometry", "convert")
    from models.geometry.config import GeometryConfig

    cfg = GeometryConfig.from_params(geometry)           # architecture rules, before any work

    import torch
    from safetensors.torch import save_file

    from models.common.io import atomic_dir, write_json
    from models.common.tensor_digest import WEIGHTS_KEY, seal
    from models.geometry.convert import convert, read_checkpoint
    from models.geometry.model import GeometryModel
    from models.geometry.sources import write_random_sources

    torch.manual_seed(conv.seed)                           # fresh parameters: the same bytes every run
    model = GeometryModel(cfg)
    target = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in target.items()}
    with tempfile.TemporaryDirectory() as tmp:
        random_paths = None
        files = {}
        for name in ("pi3", "page4d"):
            given = getattr(conv, name)
            if given is None:
                random_paths = random_paths or write_random_sources(cfg, shapes, tmp, conv.seed)
                files[name] = random_paths[name]
            else:
                files[name] = Path(conv.checkpoint_dir) / given
        sources = {name: read_checkpoint(path) for name, path in files.items()}
        names = {name: (f"random {path.name}" if getattr(conv, name) is None else str(path))
                 for name, path in files.items()}
        state, rows = convert(cfg, target, sources["pi3"], sources["page4d"], names, tuple(conv.register_slots))
    GeometryModel(cfg).load_state_dict(state, strict=True)          # the converted file loads, every key
    random = [n for n in ("pi3", "page4d") if getattr(conv, n) is None]
    first = (f"random sources: {', '.join(random)} generated in the real key layout at the configured size (seed "
             f"{conv.seed}); not pretrained weights" if random else "real sources")
    counts = {s: sum(r.source == s for r in rows) for s in ("pi3", "page4d", "fresh")}
    headline = {"tensors": {**counts, "total": len(rows)},
                "resampled": sum(r.transform.startswith("pos_embed_resample") for r in rows),
                "random_sources": len(random)}
    provenance = {"summary": first, "files": names,
                  "register_slots": list(conv.register_slots), "mask_head": cfg.mask_head,
                  "rows": [{"target": r.target, "shape": list(r.shape), "source": r.source,
                            "source_file": names.get(r.source, ""), "source_key": r.source_key,
                            "transform": r.transform} for r in rows]}
    with atomic_dir(args.out) as out:
        save_file(state, str(out / "geometry_init.safetensors"),              # with its SHA-256 digest
                  metadata={WEIGHTS_KEY: seal(state, {"provenance": first})})
        write_json(out / "provenance.json", provenance)
        lines = [f"# {first}", "target\tshape\tsource\tsource_file\tsource_key\ttransform"]
        lines += [f"{r['target']}\t{r['shape']}\t{r['source']}\t{r['source_file']}\t{r['source_key']}\t"
                  f"{r['transform']}" for r in provenance["rows"]]
        (out / "provenance.tsv").write_text("\n".join(lines) + "\n")
    write_reports(args.metrics, headline, {"summary": first, **headline, "files": provenance["files"]})
    print(f"convert_weights: {first}\n  {len(rows)} tensors: {counts['pi3']} from Pi3, {counts['page4d']} from "
          f"PAGE-4D, {counts['fresh']} fresh; {headline['resampled']} pos_embed resampled -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
