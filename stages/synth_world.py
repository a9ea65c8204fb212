"""DVC stage ``synth_world``: write the synthetic nuScenes-format world to ``data/nuscenes``.

    python -m stages.synth_world [--params params.yaml] [--out data/nuscenes] [--metrics reports/synth_world.json]
                                 [--figures reports/synth_world]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.common.io import atomic_dir, write_json
from models.common.params import load_section
from models.world.figures import write_figures
from models.world.generate import VERSION, generate_world, world_metrics
from stages._cli import guarded


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/nuscenes")
    ap.add_argument("--metrics", default="reports/synth_world.json")
    ap.add_argument("--figures", default="reports/synth_world", help="town maps, cameras, exact tracks (PNG)")
    args = ap.parse_args(argv)
    params = load_section("synth", args.params)  # validated before any work

    with atomic_dir(args.out) as tmp:
        summary = generate_world(params, tmp)
        metrics = world_metrics(tmp)
    with atomic_dir(args.figures) as fig_dir:
        write_figures(args.out, VERSION, fig_dir)
    write_json(args.metrics, metrics)
    print(f"synth_world: {summary['scenes']} scenes in {', '.join(summary['locations'])}; "
          f"{summary['tables']['sample']} samples, {summary['tables']['sample_annotation']} annotations -> {Path(args.out)}")


if __name__ == "__main__":
    sys.exit(main())
