"""DVC stage ``gt_cache``: per-split planning / map / agent GT cache from any nuScenes dataroot.

    python -m stages.gt_cache [--params params.yaml] [-S data.KEY=VALUE | -S cache.KEY=VALUE ...] [--no-progress]
                              [--out data/cache] [--metrics reports/gt_cache.json]

Reads the ``data`` and ``cache`` sections (validated before any work) and builds the cache through
``models.nuscenes.cache.build_cache`` into a temporary directory that replaces ``--out`` only on success.
Timings go to the console only: ``--metrics`` holds the sample count per split, ``<metrics>_details.json`` beside
it the deterministic content statistics of ``cache_statistics``.
"""
from __future__ import annotations

import sys

from models.common.io import atomic_dir
from stages._cli import guarded, load_params, show_progress, stage_parser, write_reports


def main(argv: list[str] | None = None) -> int:
    from models.nuscenes.validate import NuScenesInputError

    return guarded(_main, argv, (NuScenesInputError,))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", default="data/cache", help="output cache directory")
    ap.add_argument("--metrics", default="reports/gt_cache.json",
                    help="samples per split ('' to skip; content statistics beside it in <name>_details.json)")
    args = ap.parse_args(argv)
    data, cache = load_params(args, "data", "cache")

    from models.nuscenes.cache import build_cache
    from models.nuscenes.dataset import cache_statistics

    with atomic_dir(args.out) as tmp:
        summary = build_cache(data, cache, tmp, progress=show_progress(args))
        stats = cache_statistics(tmp)
    prep, breakdown = summary.pop("_prepare_seconds"), summary.pop("_prepare_breakdown")
    print(f"gt_cache: {data.dataroot} ({data.version}) -> {args.out}; workers {cache.workers}; prepare "
          f"{prep:.2f} s (" + ", ".join(f"{k} {v:.2f} s" for k, v in breakdown.items()) + ")")
    for split, s in summary.items():
        rate = s["samples"] / s["seconds"] if s["seconds"] > 0 else float("nan")
        print(f"  {split}: {s['samples']} samples, {s['scenes']} scenes, {s['map_elements']} map elements "
              f"(max {s['max_map_elements']}/sample), {s['seconds']:.2f} s, {rate:.0f} samples/s")
    write_reports(args.metrics, {f"{split}_samples": s["samples"] for split, s in stats.items()}, stats)


if __name__ == "__main__":
    sys.exit(main())
