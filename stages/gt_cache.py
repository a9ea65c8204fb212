"""DVC stage ``gt_cache``: per-split planning / map / agent GT cache from any nuScenes dataroot.

    python -m stages.gt_cache [--params params.yaml] [--out data/cache] [--metrics reports/gt_cache.json]

Reads the ``data`` and ``cache`` sections (validated before any work) and builds the cache through
``models.nuscenes.cache.build_cache`` into a temporary directory that replaces ``--out`` only on success.
Timings go to the console only: the metrics file holds deterministic content statistics.
"""
from __future__ import annotations

import argparse
import sys

from models.common.io import atomic_dir, write_json
from models.common.params import load_section
from stages._cli import guarded


def main(argv: list[str] | None = None) -> int:
    from models.nuscenes.validate import NuScenesInputError

    return guarded(_main, argv, (NuScenesInputError,))


def _main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (sections: data, cache)")
    ap.add_argument("--out", default="data/cache", help="output cache directory")
    ap.add_argument("--metrics", default="reports/gt_cache.json", help="content statistics for dvc exp show ('' to skip)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    data = load_section("data", args.params)
    cache = load_section("cache", args.params)

    from models.nuscenes.cache import build_cache
    from models.nuscenes.dataset import cache_statistics

    with atomic_dir(args.out) as tmp:
        summary = build_cache(data, cache, tmp, progress=not args.no_progress)
        stats = cache_statistics(tmp)
    prep, breakdown = summary.pop("_prepare_seconds"), summary.pop("_prepare_breakdown")
    print(f"gt_cache: {data.dataroot} ({data.version}) -> {args.out}; workers {cache.workers}; prepare "
          f"{prep:.2f} s (" + ", ".join(f"{k} {v:.2f} s" for k, v in breakdown.items()) + ")")
    for split, s in summary.items():
        rate = s["samples"] / s["seconds"] if s["seconds"] > 0 else float("nan")
        print(f"  {split}: {s['samples']} samples, {s['scenes']} scenes, {s['map_elements']} map elements "
              f"(max {s['max_map_elements']}/sample), {s['seconds']:.2f} s, {rate:.0f} samples/s")
    if args.metrics:
        write_json(args.metrics, stats)


if __name__ == "__main__":
    sys.exit(main())
