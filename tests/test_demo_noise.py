"""Camera noise, JPEG output and exact tracks of the synthetic-data generators: the demo multi-view sequence
(models/sequences/demo.py) and the nuScenes-format world's camera sensor (models/world/sensors.py)."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.common.params import ParamsError, SynthParams, parse_section
from models.sequences import MultiViewSequence, find_grid
from models.sequences.demo import query_grid, write_demo_sequence
from models.world.sensors import add_camera_noise, camera_noise, image_noise_rng

SMALL = dict(times=3, views=2, width=64, height=48)


def _digest(root: Path, folder: str = "images") -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ demo sequence
def test_noise_changes_image_bytes_and_is_deterministic(tmp_path):
    plain = _digest(write_demo_sequence(tmp_path / "plain", **SMALL))
    a = _digest(write_demo_sequence(tmp_path / "a", noise_std=4.0, **SMALL))
    b = _digest(write_demo_sequence(tmp_path / "b", noise_std=4.0, **SMALL))
    assert a == b
    assert set(a) == set(plain) and all(a[k] != plain[k] for k in a)
    other_seed = _digest(write_demo_sequence(tmp_path / "c", noise_std=4.0, seed=1, **SMALL))
    assert other_seed != a
    # only the images carry noise: depth, calibration and masks stay exact
    for folder in ("depths", "intrs", "extrs", "masks"):
        assert _digest(tmp_path / "a", folder) == _digest(tmp_path / "plain", folder), folder
    noisy = MultiViewSequence(tmp_path / "a").image(1, 1).astype(np.float64)
    clean = MultiViewSequence(tmp_path / "plain").image(1, 1).astype(np.float64)
    assert 2.0 < np.std(noisy - clean) < 6.0


def test_zero_noise_is_the_default(tmp_path):
    plain = write_demo_sequence(tmp_path / "plain", **SMALL)
    zero = write_demo_sequence(tmp_path / "zero", noise_std=0.0, jpeg_quality=None, track_grid=0, **SMALL)
    for folder in ("images", "depths", "intrs", "extrs", "masks"):
        assert _digest(zero, folder) == _digest(plain, folder), folder
    assert not (zero / "tracks").exists()


def test_jpeg_quality_writes_jpg_the_reader_reads(tmp_path):
    plain = MultiViewSequence(write_demo_sequence(tmp_path / "png", **SMALL))
    for layout in ("time-major", "view-major"):
        root = write_demo_sequence(tmp_path / layout, jpeg_quality=80, layout=layout, noise_std=2.0, **SMALL)
        files = [p for p in (root / "images").rglob("*") if p.is_file()]
        assert files and all(p.suffix == ".jpg" for p in files)
        grid = find_grid(root / "images")
        assert (grid.num_times, grid.num_views, grid.layout) == (3, 2, layout)
        seq = MultiViewSequence(root)
        img = seq.image(2, 1)
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert np.abs(img.astype(np.float64) - plain.image(2, 1)).mean() < 12.0
    low = write_demo_sequence(tmp_path / "low", jpeg_quality=10, **SMALL)
    high = write_demo_sequence(tmp_path / "high", jpeg_quality=95, **SMALL)
    assert (low / "images/time_0/view0.jpg").stat().st_size < (high / "images/time_0/view0.jpg").stat().st_size


@pytest.mark.parametrize("kwargs", [dict(noise_std=-1.0), dict(noise_std=float("nan")), dict(jpeg_quality=0),
                                    dict(jpeg_quality=101), dict(jpeg_quality=90.0), dict(track_grid=-1)])
def test_bad_options_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_demo_sequence(tmp_path / "bad", **SMALL, **kwargs)


G, T, V = 12, 8, 2


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    return write_demo_sequence(root / "seq", times=T, views=V, width=64, height=48, fps=10.0, track_grid=G)


def test_exact_tracks_format(tracked):
    assert sorted(p.name for p in (tracked / "tracks").iterdir()) == [f"view{v}.npz" for v in range(V)]
    n = G * G
    for v in range(V):
        d = np.load(tracked / "tracks" / f"view{v}.npz")
        assert set(d.files) == {"tracks", "visible", "dynamic", "query_frame"}
        assert d["tracks"].shape == (n, T, 2) and d["tracks"].dtype == np.float32
        assert d["visible"].shape == (n, T) and d["visible"].dtype == bool
        assert d["dynamic"].shape == (n,) and d["dynamic"].dtype == bool
        assert d["query_frame"].shape == (n,) and d["query_frame"].dtype == np.int32
        assert not d["query_frame"].any()
        assert np.isfinite(d["tracks"][d["visible"]]).all()
    # the reader still opens the folder with a tracks/ beside the sequence
    assert MultiViewSequence(tracked).num_times == T


def test_exact_tracks_start_on_the_query_grid_and_static_points_stay(tracked):
    query = query_grid(G, 64, 48)
    assert query[0].tolist() == [64 / G / 2 - 0.5, 48 / G / 2 - 0.5]
    moved = 0.0
    for v in range(V):
        d = np.load(tracked / "tracks" / f"view{v}.npz")
        tracks, visible, dynamic = d["tracks"], d["visible"], d["dynamic"]
        vis0 = visible[:, 0]
        assert vis0.any()
        np.testing.assert_allclose(tracks[vis0, 0], query[vis0], atol=1e-4)
        static = visible & ~dynamic[:, None]
        shift = np.linalg.norm(tracks - tracks[:, :1], axis=-1)
        assert static[:, 1:].any()
        assert (shift[static] < 1e-3).all(), shift[static].max()
        assert not (visible & ~vis0[:, None]).any()   # sky at frame 0 is never visible
        dyn = visible & dynamic[:, None]
        if dyn.any():
            moved = max(moved, float(shift[dyn].max()))
    assert moved > 1.0


def test_sky_queries_are_not_visible(tmp_path):
    """View 0 looks along the street at the horizon: its top rows are sky, never visible."""
    root = write_demo_sequence(tmp_path / "seq", times=2, views=1, width=64, height=48, track_grid=8)
    d = np.load(root / "tracks" / "view0.npz")
    depth0 = np.load(root / "depths" / "time_0" / "view0.npy")
    query = query_grid(8, 64, 48)
    sky = depth0[np.rint(query[:, 1]).astype(int), np.rint(query[:, 0]).astype(int)] == 0
    assert sky.any() and (~sky).any()
    assert not d["visible"][sky].any()
    assert d["visible"][~sky, 0].all()


# ---------------------------------------------------------------------------------------- world camera noise
def _image(h=60, w=80):
    rng = np.random.default_rng(5)
    return rng.integers(40, 216, (h, w, 3)).astype(np.uint8)   # away from 0 / 255: clipping stays rare


def test_world_noise_zero_std_is_identity():
    img = _image()
    assert camera_noise(img, 0.0, 0, "samples/CAM_FRONT/x.jpg") is img
    assert add_camera_noise(img, 0, None) is img


def test_world_noise_is_deterministic_per_seed_and_image():
    img = _image()
    a = camera_noise(img, 5.0, 0, "samples/CAM_FRONT/a.jpg")
    np.testing.assert_array_equal(a, camera_noise(img, 5.0, 0, "samples/CAM_FRONT/a.jpg"))
    assert not np.array_equal(a, camera_noise(img, 5.0, 0, "samples/CAM_FRONT/b.jpg"))
    assert not np.array_equal(a, camera_noise(img, 5.0, 1, "samples/CAM_FRONT/a.jpg"))
    r1, r2 = image_noise_rng(3, "k").random(4), image_noise_rng(3, "k").random(4)
    np.testing.assert_array_equal(r1, r2)


@pytest.mark.parametrize("std", [2.0, 8.0])
def test_world_noise_has_the_asked_std(std):
    img = _image()
    out = camera_noise(img, std, 0, "samples/CAM_BACK/c.jpg")
    assert out.dtype == np.uint8 and out.shape == img.shape
    diff = out.astype(np.float64) - img
    assert (diff != 0).mean() > 0.5
    assert abs(diff.mean()) < 0.2 * std
    assert 0.9 * std < diff.std() < 1.1 * std


def test_world_noise_clips_to_uint8():
    out = add_camera_noise(np.full((20, 20, 3), 250, np.uint8), 30.0, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() < 250


def test_world_save_defaults_keep_the_old_bytes(tmp_path):
    from models.world.generate import _save_camera_image

    img = _image()
    _save_camera_image(img, tmp_path, "x.jpg", SynthParams())
    old = io.BytesIO()
    Image.fromarray(img).save(old, format="JPEG", quality=90)
    assert (tmp_path / "x.jpg").read_bytes() == old.getvalue()
    _save_camera_image(img, tmp_path, "y.jpg", SynthParams(camera_noise_std=3.0, jpeg_quality=70))
    assert (tmp_path / "y.jpg").read_bytes() != old.getvalue()


def test_synth_params_bounds():
    p = parse_section("synth", {"camera_noise_std": 2, "jpeg_quality": 75})
    assert (p.camera_noise_std, p.jpeg_quality) == (2.0, 75)
    assert (SynthParams().camera_noise_std, SynthParams().jpeg_quality) == (0.0, 90)
    for bad in ({"camera_noise_std": -0.5}, {"camera_noise_std": 51.0}, {"jpeg_quality": 0},
                {"jpeg_quality": 101}, {"jpeg_quality": 90.5}):
        with pytest.raises(ParamsError, match=f"synth.{next(iter(bad))}"):
            parse_section("synth", bad)
