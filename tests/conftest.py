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

# 28 px / patch 14 -> 2x2 patches -> 1 compressed token per frame; head width 16 (RoPE needs a multiple of 4)
TINY_PLANNER = dict(frames=2, img_size=28, embed_dim=16, depth=1, num_heads=1, compression_hidden_dim=32,
                    decoder_dim=16, decoder_heads=1, decoder_layers=1, use_ego_status=True, epochs=2, batch_size=4,
                    lr=1.0e-3, warmup_steps=1, mlp_hidden_dim=16, mlp_epochs=2, figure_samples=1)


def tiny_synth_params(**overrides) -> SynthParams:
    return SynthParams(**{**TINY_WORLD, **overrides})


@pytest.fixture(scope="session")
def synth_dataroot(tmp_path_factory):
    """A tiny synthetic nuScenes dataroot (3 scenes over two locations, 12 samples each)."""
    from models.world.generate import generate_world

    root = tmp_path_factory.mktemp("synth") / "nuscenes"
    generate_world(tiny_synth_params(), root, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_cache(synth_dataroot, tmp_path_factory):
    """The GT cache (train + val) of the tiny world, default cache params."""
    from models.common.params import parse_section
    from models.nuscenes.cache import build_cache

    out = tmp_path_factory.mktemp("synth_cache") / "cache"
    data = parse_section("data", {"dataroot": str(synth_dataroot), "version": "v1.0-synth"})
    build_cache(data, parse_section("cache", {"workers": 1}), out, progress=False)
    return out
