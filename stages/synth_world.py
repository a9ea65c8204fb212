"""DVC stage ``synth_world``: write the synthetic nuScenes-format world to ``data/nuscenes``.

    python -m stages.synth_world [--params params.yaml] [-S synth.KEY=VALUE ...] [--no-progress]
                                 [--out data/nuscenes] [--metrics reports/synth_world.json]
                                 [--figures reports/synth_world]

``--metrics`` holds the headline counts (scenes, samples, annotations); ``<metrics>_details.json`` beside it every
statistic of ``world_metrics`` (instances per category, how the ego drives).
"""
from __future__ import annotations

import sys
from pathlib import Path

from models.common.io import atomic_dir
from models.world.figures import write_figures
from models.world.generate import VERSION, generate_world, world_metrics
from stages._cli import guarded, load_params, show_progress, stage_parser, write_reports


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv)


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", default="data/nuscenes")
    ap.add_argument("--metrics", default="reports/synth_world.json", help="counts ('' to skip; details beside it)")
    ap.add_argument("--figures", default="reports/synth_world", help="town maps, cameras, exact tracks (PNG)")
    args = ap.parse_args(argv)
    [params] = load_params(args, "synth")  # validated before any work

    with atomic_dir(args.out) as tmp:
        summary = generate_world(params, tmp, progress=show_progress(args))
        details = world_metrics(tmp)
    with atomic_dir(args.figures) as fig_dir:
        write_figures(args.out, VERSION, fig_dir)
    write_reports(args.metrics, {k: details[k] for k in ("scenes", "samples", "annotations")}, details)
    print(f"synth_world: {summary['scenes']} scenes in {', '.join(summary['locations'])}; "
          f"{summary['tables']['sample']} samples, {summary['tables']['sample_annotation']} annotations -> {Path(args.out)}")


if __name__ == "__main__":
    sys.exit(main())
