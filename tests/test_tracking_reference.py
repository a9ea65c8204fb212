"""tracks.reference (own clips scored against reference tracks in three formats) and, without any truth, the
forward-backward consistency report."""
from __future__ import annotations

import numpy as np
import pytest

from models.common.params import ParamsError, parse_section
from models.tracking import pipeline as P
from models.tracking.sources import TrackingInputError
from models.tracking.trackers import LKTracker
from tests.test_tracking import _translating, _write_frames

V = np.array([1.6, -0.7])        # _translating: a scene point moves by -V pixels per frame
H, W, FRAMES = 48, 64, 20


def _clips(root, n=2):
    moving = _translating(T=FRAMES, H=H, W=W, v=tuple(V))
    for k in range(n):
        _write_frames(root / f"clip{k}", moving)
    return root


def _exact(n_points=30, seed=0):
    """Exact tracks of the translating clips: (N, T, 2) pixels and visibility (inside the frame)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform([8, 8], [W - 8, H - 8], (n_points, 2))
    xy = q[:, None] - V * np.arange(FRAMES)[None, :, None]
    vis = (xy[..., 0] > 2) & (xy[..., 0] < W - 3) & (xy[..., 1] > 2) & (xy[..., 1] < H - 3)
    return xy, vis


def _params(root, **kw):
    base = dict(source="frames", input=str(root), frames_fps=10.0, target_fps=10.0, window=8, window_stride=4,
                image_size=[H, W], grid_size=6, val_clips=["clip1"], workers=1)
    return parse_section("tracks", {**base, **kw})


def _build(root, tmp_path, **kw):
    return P.build_tracks(parse_section("data", {"splits": ["train", "val"]}), _params(root, **kw),
                          tmp_path / "out", progress=False, log=lambda *_: None)


@pytest.mark.parametrize("fmt", ["npz", "tapvid", "seganymo"])
def test_reference_tracks_give_tapvid_numbers_beside_zero_motion(tmp_path, fmt):
    root = _clips(tmp_path / "clips")
    xy, vis = _exact()
    ref = root / "refs"
    ref.mkdir()
    for k in range(2):
        if fmt == "npz":
            np.savez(ref / f"clip{k}.npz", tracks=xy.astype(np.float32), visible=vis)
        elif fmt == "tapvid":
            np.savez(ref / f"clip{k}.npz", points=(xy + 0.5) / [W, H], occluded=~vis)
        else:
            (ref / f"clip{k}").mkdir()
            np.save(ref / f"clip{k}" / "dynamic_traj.npy", np.moveaxis(xy, -1, 0))
            np.save(ref / f"clip{k}" / "dynamic_visibility.npy", vis)
    man, metrics = _build(root, tmp_path, reference="refs")
    assert man["splits"]["train"]["sources"] == ["clip0"]              # the reference folder is not a clip
    val = metrics["val"]
    assert metrics["truth"].startswith("reference tracks") and "no_truth" not in metrics
    assert val["reference"]["clip1"]["kind"] == fmt and val["reference"]["clip1"]["tracks"] == 30
    assert val["tapvid"]["average_jaccard"] > 0.9                       # LK on a clean translation
    assert val["tapvid_static_baseline"]["average_jaccard"] < 0.5       # points that never move: far off
    assert "consistency" not in val
    from stages.tracks import headline

    assert set(headline(metrics)) == {"tracker", "static"}


def test_reference_scores_follow_the_tracker(tmp_path, monkeypatch):
    """A tracker that drifts 3 px per frame scores below LK against the same reference."""
    root = _clips(tmp_path / "clips")
    xy, vis = _exact()
    (root / "refs").mkdir()
    for k in range(2):
        np.savez(root / "refs" / f"clip{k}.npz", tracks=xy, visible=vis)
    _, good = _build(root, tmp_path, reference="refs")

    class Drifting(LKTracker):
        def track(self, state, start, T, q):
            out, v = super().track(state, start, T, q)
            return out + 3.0 * np.arange(T)[:, None, None], v

    monkeypatch.setattr(P, "make_tracker", lambda tp: Drifting())
    _, bad = P.build_tracks(parse_section("data", {"splits": ["train", "val"]}), _params(root, reference="refs"),
                            tmp_path / "out2", progress=False, log=lambda *_: None)
    assert bad["val"]["tapvid"]["average_jaccard"] < good["val"]["tapvid"]["average_jaccard"] - 0.3


def test_clips_without_a_reference_are_listed_and_get_consistency(tmp_path):
    root = _clips(tmp_path / "clips")
    xy, vis = _exact()
    (root / "refs").mkdir()
    np.savez(root / "refs" / "clip1.npz", tracks=xy, visible=vis)        # only the val clip has one
    _, metrics = _build(root, tmp_path, reference="refs")
    assert metrics["train"]["reference"] == {"clip0": None} and "tapvid" not in metrics["train"]
    assert metrics["train"]["consistency"]["per_clip"]["clip0"]["windows"] == 4
    assert "tapvid" in metrics["val"]


def test_without_truth_the_report_says_so_and_gives_consistency(tmp_path, monkeypatch):
    from stages.tracks import headline

    root = _clips(tmp_path / "clips")
    _, metrics = _build(root, tmp_path)
    assert metrics["truth"] is None and "no exact truth" in metrics["no_truth"]
    c = metrics["val"]["consistency"]
    # grid points near the left edge leave the frame (lost); every point tracked to the end comes back
    assert 0.1 < c["lost_share"] < 0.4 and c["round_trip_1px"] > 1 - c["lost_share"] - 0.02 and c["fb_error_px"] < 0.2
    assert set(c["per_clip"]) == {"clip1"}
    assert headline(metrics) == {"consistency": {"round_trip_1px": c["round_trip_1px"],
                                                 "lost_share": c["lost_share"]}}

    class Jittery(LKTracker):         # positions off by a random 2-4 px at the last frame: the round trip fails
        def track(self, state, start, T, q):
            out, v = super().track(state, start, T, q)
            rng = np.random.default_rng(start)
            out[-1] += rng.choice([-1, 1], out[-1].shape) * rng.uniform(2, 4, out[-1].shape)
            return out, v

    monkeypatch.setattr(P, "make_tracker", lambda tp: Jittery())
    _, bad = P.build_tracks(parse_section("data", {"splits": ["train", "val"]}), _params(root),
                            tmp_path / "out2", progress=False, log=lambda *_: None)
    assert bad["val"]["consistency"]["round_trip_1px"] < 0.2


@pytest.mark.parametrize("write, message", [
    (lambda d, xy, vis: np.savez(d / "clip0.npz", tracks=xy[:, :5], visible=vis[:, :5]),
     r"clip0.npz: reference covers 5 frames, the clip has 20"),
    (lambda d, xy, vis: np.savez(d / "clip0.npz", tracks=xy, visible=vis[:, :3]),
     r"clip0.npz: visibility of shape \(30, 3\), expected \(N, T\) = \(30, 20\)"),
    (lambda d, xy, vis: np.savez(d / "clip0.npz", xy=xy),
     r"clip0.npz: a reference .npz needs arrays tracks \+ visible"),
    (lambda d, xy, vis: np.savez(d / "clip0.npz", tracks=xy[..., :1], visible=vis),
     r"clip0.npz: reference tracks of shape \(30, 20, 1\)"),
    (lambda d, xy, vis: (d / "clip0").mkdir() or np.save(d / "clip0" / "dynamic_traj.npy", np.moveaxis(xy, -1, 0)),
     r"clip0: a SegAnyMo reference folder needs .*missing \['dynamic_visibility.npy'\]"),
    (lambda d, xy, vis: (d / "clip0.npz").write_bytes(b"not a zip"), r"clip0.npz: unreadable reference .npz"),
    (lambda d, xy, vis: np.savez(d / "clip0.npz", tracks=np.where(vis[..., None], np.nan, xy), visible=vis),
     r"clip0.npz: a visible reference point has a non-finite position"),
])
def test_bad_reference_files_are_named(tmp_path, write, message):
    root = _clips(tmp_path / "clips")
    xy, vis = _exact()
    (root / "refs").mkdir()
    write(root / "refs", xy, vis)
    with pytest.raises(TrackingInputError, match=message):
        _build(root, tmp_path, reference="refs")
    assert not (tmp_path / "out" / "train.safetensors").exists()


def test_reference_param_must_stay_inside_the_input():
    for bad in ("/abs/refs", "../refs", "."):
        with pytest.raises(ParamsError, match=r"tracks\.reference"):
            parse_section("tracks", {"source": "frames", "input": "clips", "reference": bad})
    with pytest.raises(ParamsError, match=r"tracks\.reference.*folder sources"):
        parse_section("tracks", {"reference": "refs"})


def test_nuscenes_source_input_must_be_the_table_folder(tmp_path):
    tp = parse_section("tracks", {"input": "somewhere/else"})
    data = parse_section("data", {"dataroot": str(tmp_path / "ns"), "version": "v1.0-mini"})
    with pytest.raises(ParamsError, match=r"tracks\.input = 'somewhere/else': with tracks\.source = nuscenes it must "
                                          r"be <data\.dataroot>/<data\.version> = .*ns/v1\.0-mini"):
        P.build_tracks(data, tp, tmp_path / "out", progress=False)
