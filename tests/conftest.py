"""Shared fixtures: one tiny synthetic world per test session (built in a few seconds)."""
from __future__ import annotations

import os

import pytest

from models.common.params import SynthParams

os.environ.setdefault("DVCLIVE_TEST", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TINY_WORLD = dict(num_scenes=3, val_scenes=1, scene_seconds=6.0, image_width=96, image_height=54, town_blocks=3,
                  num_vehicles=6, num_pedestrians=4, num_parked=4, lidar_azimuth_bins=256, track_grid=6,
                  track_horizon=8, track_stride=6, workers=1)


def tiny_synth_params(**overrides) -> SynthParams:
    return SynthParams(**{**TINY_WORLD, **overrides})


@pytest.fixture(scope="session")
def synth_dataroot(tmp_path_factory):
    """A tiny synthetic nuScenes dataroot (3 scenes over two locations, 12 samples each)."""
    from models.world.generate import generate_world

    root = tmp_path_factory.mktemp("synth") / "nuscenes"
    generate_world(tiny_synth_params(), root, progress=False)
    return root
