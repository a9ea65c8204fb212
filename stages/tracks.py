"""DVC stage ``tracks``: point tracks on video windows (AMPLIFY conventions) to ``data/tracks``.

    python -m stages.tracks [--params params.yaml] [--out data/tracks] [--metrics reports/tracks.json]

Reads params sections ``data`` (the dataroot for source nuscenes, and which splits) and ``tracks``. Writes
``<out>/manifest.json`` and ``<out>/<split>.safetensors`` atomically, and the TAP-Vid metrics of the chosen
backend against the synthetic world's exact tracks (when the dataroot has them) to ``--metrics``.
"""
from __future__ import annotations

import argparse
import sys

from models.common.io import atomic_dir, write_json
from models.common.params import load_section
from models.nuscenes.validate import NuScenesInputError
from models.tracking.pipeline import build_tracks
from models.tracking.sources import TrackingInputError
from stages._cli import guarded


def main(argv: list[str] | None = None) -> int:
    return guarded(_main, argv, input_errors=(NuScenesInputError, TrackingInputError))


def _main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/tracks")
    ap.add_argument("--metrics", default="reports/tracks.json")
    args = ap.parse_args(argv)
    data = load_section("data", args.params)  # both validated before any work
    tracks = load_section("tracks", args.params)

    with atomic_dir(args.out) as tmp:
        _, metrics = build_tracks(data, tracks, tmp)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    sys.exit(main())
