"""DVC stage ``tracks``: point tracks on video windows (AMPLIFY conventions) to ``data/tracks``.

    python -m stages.tracks [--params params.yaml] [-S data.KEY=VALUE | -S tracks.KEY=VALUE ...] [--no-progress]
                            [--out data/tracks] [--metrics reports/tracks.json]

Reads params sections ``data`` (the dataroot for source nuscenes, and which splits) and ``tracks``. Writes
``<out>/manifest.json`` and ``<out>/<split>.safetensors`` atomically. ``--metrics``: windows per split and, when
the dataroot has exact tracks (the synthetic world), the val split's TAP-Vid AJ, delta_avg and OA of the backend
(``tracker``) and of points that never move (``static``), scored against the same truth for own clips with
``tracks.reference``; with no truth at all, the val split's forward-backward round trip within 1 px and lost-point
share (``consistency``). ``<metrics>_details.json`` beside it: every count and value per split and clip.
"""
from __future__ import annotations

import sys

from models.common.io import atomic_dir
from models.nuscenes.validate import NuScenesInputError
from models.tracking.pipeline import build_tracks
from models.tracking.sources import TrackingInputError
from stages._cli import guarded, load_params, show_progress, stage_parser, write_reports

HEADLINE = {"aj": "average_jaccard", "delta_avg": "average_pts_within_thresh", "oa": "occlusion_accuracy"}


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, input_errors=(NuScenesInputError, TrackingInputError))


def _main(argv: list[str] | None) -> None:
    ap = stage_parser(__doc__)
    ap.add_argument("--out", default="data/tracks")
    ap.add_argument("--metrics", default="reports/tracks.json", help="headline ('' to skip; details beside it)")
    args = ap.parse_args(argv)
    data, tracks = load_params(args, "data", "tracks")  # both validated before any work

    with atomic_dir(args.out) as tmp:
        _, details = build_tracks(data, tracks, tmp, progress=show_progress(args))
    write_reports(args.metrics, headline(details), details)


def headline(details: dict) -> dict:
    """The val split's AJ, delta_avg and OA of the tracker and the static baseline (window counts: details)."""
    out = {}
    val = details.get("val", {})
    for name, key in (("tracker", "tapvid"), ("static", "tapvid_static_baseline")):
        scores = {short: (val.get(key) or {}).get(long) for short, long in HEADLINE.items()}
        if None not in scores.values():  # no exact truth, or no scored window
            out[name] = scores
    consistency = val.get("consistency")
    if not out and consistency:          # no truth: how far the tracks can be trusted
        out["consistency"] = {k: consistency[k] for k in ("round_trip_1px", "lost_share")
                              if consistency.get(k) is not None}
    return out


if __name__ == "__main__":
    sys.exit(main())
