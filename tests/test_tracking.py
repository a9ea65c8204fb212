"""The tracks stage: TAP-Vid metrics (hand-worked), AMPLIFY conventions, resampling and windows, the LK and
CoTracker backends, the exact oracle against the world's own tracks, bad-input counting, and the stage end to end."""
from __future__ import annotations

import re
import dataclasses
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.common.params import ParamsError, parse_section
from models.tracking import conventions as C
from models.tracking.metrics import METRIC_KEYS, tapvid_metrics, to_tapvid_raster
from models.tracking.sources import (TrackingInputError, hash_split, load_frames, resample_indices,
                                     window_starts, Clip)
from models.tracking.trackers import (CoTrackerTracker, LKTracker, TrackerUnavailableError, cotracker_available,
                                      load_state_dict, make_tracker)
from tests.tiny_nuscenes import tiny_dataroot  # noqa: F401 (fixture)

VERSION = "v1.0-synth"


def tracks_params(**kw):
    return parse_section("tracks", {"workers": 1, **kw})


def data_params(root):
    return parse_section("data", {"dataroot": str(root), "version": VERSION, "splits": ["train", "val"]})


# ------------------------------------------------------------------------------------------- TAP-Vid
def _one(gt, gt_occ, pred, pred_occ, qt=0.0, mode="first"):
    """One video, one track: gt / pred (T, 2) x, y; occluded (T,)."""
    gt, pred = np.asarray(gt, float), np.asarray(pred, float)
    q = np.array([[[qt, gt[0, 1], gt[0, 0]]]])
    return tapvid_metrics(q, np.asarray(gt_occ)[None, None], gt[None, None], np.asarray(pred_occ)[None, None],
                          pred[None, None], mode)


def test_tapvid_hand_worked_case():
    # T = 4, query at t = 0; evaluated t = 1, 2, 3. GT visible at 1, 2, occluded at 3.
    gt = [[10, 10], [11, 10], [12, 10], [13, 10]]
    pred = [[10, 10], [11, 10], [17, 10], [13, 10]]          # exact at 1, 5 px off at 2, predicted visible at 3
    m = _one(gt, [False, False, False, True], pred, [False, False, False, False])
    assert list(m) == METRIC_KEYS
    assert m["occlusion_accuracy"][0] == pytest.approx(2 / 3)
    for thr, frac, jac in ((1, .5, .25), (2, .5, .25), (4, .5, .25), (8, 1., 2 / 3), (16, 1., 2 / 3)):
        assert m[f"pts_within_{thr}"][0] == pytest.approx(frac)
        assert m[f"jaccard_{thr}"][0] == pytest.approx(jac)       # TP / (visible + FP)
    assert m["average_pts_within_thresh"][0] == pytest.approx(0.7)
    assert m["average_jaccard"][0] == pytest.approx((3 * .25 + 2 * 2 / 3) / 5)


def test_tapvid_reference_cases_and_conventions():
    T = 6
    gt = np.stack([np.arange(T) * 2.0, np.full(T, 5.0)], 1)
    vis = np.zeros(T, bool)
    perfect = _one(gt, vis, gt, vis)
    assert all(perfect[k][0] == 1.0 for k in METRIC_KEYS)
    occluded = _one(gt, vis, gt, ~vis)                               # all predicted occluded: AJ 0, delta same
    assert occluded["average_jaccard"][0] == 0 and occluded["average_pts_within_thresh"][0] == 1
    off3 = _one(gt, vis, gt + [3.0, 0.0], vis)                       # 3 px: within 4, 8, 16 only -> 0.6
    assert off3["average_pts_within_thresh"][0] == pytest.approx(0.6)
    exact2 = _one(gt, vis, gt + [0.0, 2.0], vis)                     # exactly 2 px: strict < fails thr 2
    assert exact2["pts_within_2"][0] == 0 and exact2["pts_within_4"][0] == 1
    # 'first' evaluates only t > query frame; 'strided' every t != query frame (query at 2.5 -> 2, half to even)
    pred = gt.copy()
    pred[:2] += 100.0                                                # wrong before the query frame
    first = _one(gt, vis, pred, vis, qt=2.5)
    strided = _one(gt, vis, pred, vis, qt=2.5, mode="strided")
    assert first["pts_within_16"][0] == 1.0                          # frames 3, 4, 5
    assert strided["pts_within_16"][0] == pytest.approx(3 / 5)       # frames 0, 1, 3, 4, 5
    assert _one(gt, vis, pred, vis, qt=3.5)["pts_within_16"][0] == 1.0   # 3.5 -> 4
    with pytest.raises(TypeError):
        _one(gt, vis, gt, np.zeros(T))                               # probabilities must be thresholded first


def test_tapvid_per_video_and_raster():
    gt = np.zeros((2, 1, 3, 2))
    occ = np.zeros((2, 1, 3), bool)
    pred = gt.copy()
    pred[1] += 20.0
    q = np.zeros((2, 1, 3))
    m = tapvid_metrics(q, occ, gt, occ, pred, "first")
    assert m["average_jaccard"].tolist() == [1.0, 0.0]               # one value per video
    xy = to_tapvid_raster(np.array([[-0.5, -0.5], [127.5, 63.5]]), 64, 128)
    np.testing.assert_allclose(xy, [[-0.5, -0.5], [255.5, 255.5]])    # image edges map to raster edges


# ------------------------------------------------------------------------------------ AMPLIFY conventions
def test_amplify_normalisation_edges():
    H, W = 128, 64
    rc = np.array([[0.0, 0.0], [H, W], [H / 2, W / 2], [-5.0, 1e3], [np.nan, 1.0]])
    n = C.normalize_rc(rc, H, W)
    np.testing.assert_array_equal(n[:4], [[-1, -1], [1, 1], [0, 0], [-1, 1]])
    assert np.isnan(n[4, 0]) and n[4, 1] == pytest.approx(1 / 32 - 1)
    np.testing.assert_allclose(C.unnormalize_rc(n[:3], H, W), rc[:3])   # inverse, no clamp
    grid = C.grid_normalised(20)
    assert grid.shape == (400, 2) and grid.min() == pytest.approx(-0.95) and grid.max() == pytest.approx(0.95)
    assert grid[1, 0] == grid[0, 0] and grid[1, 1] > grid[0, 1]          # row-major: n = i * g + j
    xy = C.query_grid_xy(20, 128, 128)
    assert xy[0].tolist() == pytest.approx([3.2, 3.2]) and xy[-1].tolist() == pytest.approx([124.8, 124.8])


def test_finalize_windows_velocities_static_and_nan():
    T, N = 4, 3
    xy = np.zeros((3, T, N, 2))
    xy[0, :, 0, 0] = np.arange(T) * 2.0                   # window 0: point 0 moves 2 px / frame in x
    xy[1, 2, 1, 1] = np.nan                               # window 1: a NaN
    # window 2: nothing moves -> every point static -> empty_static
    out = C.finalize_windows(xy, np.ones((3, T, N), bool), 64, 64, static_threshold=0.01, static_rule="speed")
    assert out["reason"].tolist() == ["", "nan", "empty_static"]
    np.testing.assert_array_equal(out["velocities"], out["tracks"][:, 1:] - out["tracks"][:, :-1])
    assert out["tracks"].dtype == np.float32 and out["velocities"].dtype == np.float32
    np.testing.assert_allclose(out["velocities"][0, :, 0], [[0.0, 2 / 32]] * 3, atol=1e-6)  # (row, col)
    assert out["static"][0].tolist() == [False, True, True]


def test_static_means_not_moving_while_visible():
    """Lost frames are no evidence of motion; jitter adds up under the speed rule but not the displacement rule."""
    T = 6
    tracks = np.zeros((1, T, 4, 2))
    tracks[0, :, 0, 1] = np.arange(T) * 0.02                  # 0: steady motion, 0.02 per frame (0.1 in all)
    tracks[0, :, 1, 1] = 0.01 * (-1.0) ** np.arange(T)        # 1: jitter of +-0.01 around its query
    tracks[0, 3:, 2, 1] = 0.5                                 # 2: jumps when lost (a guessed position)
    tracks[0, 3:, 3, 1] = 0.5                                 # 3: the same jump, seen
    vis = np.ones((1, T, 4), bool)
    vis[0, 3:, 2] = False
    disp = C.static_points(tracks, vis, 0.05, "displacement")
    speed = C.static_points(tracks, vis, 0.015, "speed")
    assert disp.tolist() == [[False, True, True, False]]
    assert speed.tolist() == [[False, False, True, False]]     # the jitter's step 0.02 > 0.015: "moving"
    none_seen = np.zeros((1, T, 4), bool)
    none_seen[:, 0] = True
    assert C.static_points(tracks, none_seen, 0.05).all()     # never seen after the query: no evidence of motion
    with pytest.raises(ValueError, match="static rule"):
        C.static_points(tracks, vis, 0.05, "median")


# --------------------------------------------------------------------------------- resampling, windows
def test_resampling_and_window_counts():
    t12 = np.round(np.arange(25) * 1e6 / 12)                        # 25 frames at 12 Hz (integer us)
    np.testing.assert_array_equal(resample_indices(t12, 12.0), np.arange(25))
    np.testing.assert_array_equal(resample_indices(t12, 6.0), np.arange(0, 25, 2))
    t10 = np.arange(25) * 100_000                                     # 10 Hz; 20 Hz targets fall on midpoints
    np.testing.assert_array_equal(resample_indices(t10, 20.0)[:6], [0, 0, 1, 1, 2, 2])   # ties -> earlier frame
    assert len(resample_indices(t10, 20.0)) == 49 and len(resample_indices(t12, 24.0)) == 49
    jitter = np.array([0, 90_000, 160_000, 260_000, 330_000])         # nearest timestamp, not index arithmetic
    np.testing.assert_array_equal(resample_indices(jitter, 10.0), [0, 1, 2, 4])
    assert len(resample_indices([], 10.0)) == 0
    assert window_starts(40, 16, 4) == [0, 4, 8, 12, 16, 20, 24]
    assert window_starts(16, 16, 8) == [0] and window_starts(15, 16, 1) == []
    assert hash_split("clip-a", 0.0) == "train" and hash_split("clip-a", 1.0) == "val"
    assert hash_split("clip-a", 0.5) == hash_split("clip-a", 0.5)


# ---------------------------------------------------------------------------------------------- LK
def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32) * 255, (0, 0), 2.0)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _translating(T=12, H=96, W=96, v=(1.6, -0.7)):
    big = _texture(300, 300)
    frames = []
    for t in range(T):        # frame t shows the texture shifted by t * v: a scene point moves by -v per frame
        M = np.float32([[1, 0, 100 + v[0] * t], [0, 1, 100 + v[1] * t]])
        g = cv2.warpAffine(big, M, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        frames.append(np.repeat(g[..., None], 3, axis=2))
    return np.stack(frames)


def test_lk_recovers_translation():
    rgb = _translating()
    T, H, W = rgb.shape[:3]
    lk = LKTracker(15, 3, 1.0)
    q = C.query_grid_xy(10, H, W)
    tracks, vis = lk.track(lk.prepare(rgb), 0, T, q)
    truth = q[None] - np.array([1.6, -0.7]) * np.arange(T)[:, None, None]
    inside = ((truth >= -0.5) & (truth < np.array([W, H]) - 0.5)).all(-1)
    err = np.linalg.norm(tracks - truth, axis=-1)
    assert vis[0].all() and not (vis & ~inside).any()                 # points leaving the image are lost
    assert np.median(err[vis]) < 0.1 and (err[vis] < 0.5).mean() > 0.95
    assert vis[inside].mean() > 0.9
    frozen = ~vis[-1]                                                # lost points stay where they were lost
    assert np.isfinite(tracks).all() and frozen.any()


# ------------------------------------------------------------------------------------------ CoTracker
def test_cotracker_without_package_is_a_clear_error():
    if cotracker_available():
        pytest.skip("cotracker is installed here")
    tp = tracks_params(backend="cotracker", cotracker_checkpoint="ckpt/scaled_offline.pth")
    with pytest.raises(TrackerUnavailableError) as err:
        make_tracker(tp)
    msg = str(err.value)
    assert "co-tracker" in msg and "pip install" in msg and "tracks.cotracker_checkpoint" in msg
    assert isinstance(err.value, ParamsError)
    with pytest.raises(ParamsError, match="tracks.cotracker_checkpoint"):
        tracks_params(backend="cotracker")                           # no checkpoint param: refused at parse


class _Sentinel:
    """Unpickling this would create a file: the loader must never run it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    import torch

    sentinel = tmp_path / "code-ran"
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Sentinel(str(sentinel))}, bad)
    with pytest.raises(TrackingInputError, match="refused"):
        load_state_dict(bad)
    assert not sentinel.exists()
    bad2 = tmp_path / "bad2.pth"
    with open(bad2, "wb") as fh:
        pickle.dump(_Sentinel(str(sentinel)), fh, protocol=2)
    with pytest.raises(TrackingInputError, match="refused"):
        load_state_dict(bad2)
    assert not sentinel.exists()
    not_tensors = tmp_path / "ints.pth"
    torch.save({"w": 3}, not_tensors)
    with pytest.raises(TrackingInputError, match="not a tensor"):
        load_state_dict(not_tensors)
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(3)}}, good)                # upstream wrapper is unwrapped
    assert list(load_state_dict(good)) == ["w"]
    with pytest.raises(TrackingInputError, match="not found"):
        load_state_dict(tmp_path / "missing.pth")


def test_cotracker_adapter_conventions():
    """With a stand-in predictor: video (1, T, 3, H, W) float 0..255, queries (1, N, 3) as (t=0, x, y)."""
    import torch

    seen = {}

    class Echo(torch.nn.Module):
        def forward(self, video, queries):
            seen["video"], seen["queries"] = video, queries
            T = video.shape[1]
            tracks = queries[:, None, :, 1:].repeat(1, T, 1, 1) + torch.arange(T)[None, :, None, None]
            return tracks, torch.ones(1, T, queries.shape[1], dtype=torch.bool)

    rgb = np.random.default_rng(0).integers(0, 255, (10, 16, 24, 3), dtype=np.uint8)
    trk = CoTrackerTracker(Echo())
    q = np.array([[1.0, 2.0], [20.0, 10.0]])
    tracks, vis = trk.track(trk.prepare(rgb), 2, 5, q)
    assert seen["video"].shape == (1, 5, 3, 16, 24) and seen["video"].dtype == torch.float32
    assert torch.equal(seen["video"][0, 0], torch.from_numpy(rgb[2]).permute(2, 0, 1).float())
    assert seen["queries"][0].tolist() == [[0.0, 1.0, 2.0], [0.0, 20.0, 10.0]]
    assert tracks.shape == (5, 2, 2) and vis.dtype == bool
    np.testing.assert_allclose(tracks[3], q + 3)


# ------------------------------------------------------------------------------------------- oracle
def test_oracle_matches_world_tracks(synth_dataroot):
    from models.tracking.oracle import Oracle, load_scene_truth, to_resized, to_source
    from models.tracking.sources import nuscenes_clips
    from models.world import render

    clips, _ = nuscenes_clips(synth_dataroot, VERSION, ["train", "val"])
    man = json.loads((synth_dataroot / "extras" / "manifest.json").read_text())
    W, H = man["image_size"]
    g, horizon = man["track_grid"], man["track_horizon"]
    u = (np.arange(g) + 0.5) * W / g - 0.5
    v = (np.arange(g) + 0.5) * H / g - 0.5
    query = np.stack([a.ravel() for a in np.meshgrid(u, v)], axis=1)
    checked = 0
    for clip in clips["train"][:1] + clips["val"]:
        rec = man["scenes"][clip.name]
        oracle = Oracle(load_scene_truth(synth_dataroot / rec["file"], clip.calibration["K"],
                                         clip.calibration["sensor2ego"], W, H))
        with np.load(synth_dataroot / rec["file"]) as z:
            for s, f in enumerate(z["track_query_frame"]):
                uv, vis, obj = oracle.track_raw(range(f, f + horizon), query)
                ref, ref_vis = z["track_uv"][s], z["track_visible"][s]
                np.testing.assert_array_equal(obj, z["track_object"][s])
                np.testing.assert_array_equal(vis, ref_vis)
                np.testing.assert_allclose(uv[ref_vis], ref[ref_vis], atol=1e-2)
                assert (np.isnan(uv) == np.isnan(ref)).mean() > 0.99
                checked += int(ref_vis.sum())
        # the depth-only fast path renders exactly render_camera's depth
        cam, boxes = oracle.camera(3), oracle.boxes(3)
        ground = render.GroundTexture(rgb=np.zeros((1, 1, 3), np.uint8), origin=(0.0, 0.0), resolution=1.0)
        np.testing.assert_array_equal(oracle.depth(3), render.render_camera(ground, boxes, cam).depth)
        # finite-filled tracks: same where visible, finite everywhere, never visible where filled
        uv_raw, vis_raw, _ = oracle.track_raw(range(0, horizon), query)
        uv_fill, vis_fill, counts = oracle.track(range(0, horizon), query)
        assert np.isfinite(uv_fill).all() and np.array_equal(vis_fill, vis_raw)
        np.testing.assert_allclose(uv_fill[vis_raw], uv_raw[vis_raw])
    assert checked > 1000
    xy = np.array([[0.0, 0.0], [127.0, 127.0]])                       # resized <-> source pixel centres
    np.testing.assert_allclose(to_resized(to_source(xy, (W, H), (128, 128)), (W, H), (128, 128)), xy)
    np.testing.assert_allclose(to_source([[-0.5, -0.5]], (W, H), (128, 128)), [[-0.5, -0.5]])


# ------------------------------------------------------------------------------------ params validation
@pytest.mark.parametrize("values, key", [
    ({"backend": "raft"}, "tracks.backend"),
    ({"window": 1}, "tracks.window"),
    ({"image_size": [128.5, 128]}, "tracks.image_size"),
    ({"image_size": [4, 128]}, "tracks.image_size"),
    ({"grid_size": 50, "image_size": [32, 32]}, "tracks.grid_size"),
    ({"reference": "refs"}, "tracks.reference"),
    ({"source": "frames", "input": "x", "backend": "oracle"}, "tracks.backend"),
    ({"input": ""}, "tracks.input"),
    ({"target_fps": 0.0}, "tracks.target_fps"),
    ({"static_threshold": -1.0}, "tracks.static_threshold"),
    ({"val_fraction": 1.5}, "tracks.val_fraction"),
])
def test_bad_tracks_params(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        parse_section("tracks", values)


# ------------------------------------------------------------------------------- folder sources, bad input
def _write_frames(folder: Path, frames: np.ndarray):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), f[..., ::-1])


def test_frame_folders_count_bad_input(tmp_path, monkeypatch):
    from models.tracking import pipeline as P

    clips = tmp_path / "clips"
    moving = _translating(T=20, H=48, W=64)
    _write_frames(clips / "a_moving", moving)
    _write_frames(clips / "b_static", np.repeat(moving[:1], 12, axis=0))
    _write_frames(clips / "c_short", moving[:5])
    (clips / "d_empty").mkdir()
    (clips / "d_empty" / "notes.txt").write_text("no images here")
    tp = tracks_params(source="frames", input=str(clips), frames_fps=10.0, target_fps=10.0, window=8,
                       window_stride=4, image_size=[48, 64], grid_size=6, val_fraction=0.0)
    data = parse_section("data", {"splits": ["train"]})
    man, metrics = P.build_tracks(data, tp, tmp_path / "out", progress=False, log=lambda *_: None)
    tr = man["splits"]["train"]
    assert tr["sources"] == ["a_moving", "b_static", "c_short", "d_empty"]
    assert tr["dropped"] == {"nan": 0, "short": 1, "empty_static": 2, "no_frames": 1}
    assert tr["dropped_clips"] == {"short": ["c_short"], "no_frames": ["d_empty"]}
    assert tr["windows_kept"] == 4 and tr["windows_total"] == 4 + 4         # a: 4 windows; b: 2 static
    assert "val" not in man["splits"] and "tapvid" not in metrics["train"]
    assert tr["per_clip"]["c_short"]["native_frames"] == 5 and "tracks.window <= 5" in tr["per_clip"]["c_short"]["short"]

    class NaNTracker(LKTracker):           # a tracker that returns a non-finite position in its second window
        def track(self, state, start, T, q):
            xy, vis = super().track(state, start, T, q)
            if start == 8:                 # only the moving clip has a window starting at frame 8
                xy[3, 0, 0] = np.inf
            return xy, vis

    monkeypatch.setattr(P, "make_tracker", lambda tp: NaNTracker())
    man, _ = P.build_tracks(data, tp, tmp_path / "out2", progress=False, log=lambda *_: None)
    assert man["splits"]["train"]["dropped"]["nan"] == 1 and man["splits"]["train"]["windows_kept"] == 3
    from safetensors.numpy import load_file
    arrays = load_file(str(tmp_path / "out2" / "train.safetensors"))
    assert np.isfinite(arrays["tracks"]).all() and arrays["window_start"].tolist() == [0, 4, 12]


def test_mp4_folder_source(tmp_path):
    from models.tracking import pipeline as P
    from safetensors.numpy import load_file

    videos = tmp_path / "videos"
    videos.mkdir()
    rgb = _translating(T=30, H=64, W=64, v=(1.0, 0.5))
    writer = cv2.VideoWriter(str(videos / "clip1.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (64, 64))
    assert writer.isOpened()
    for f in rgb:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    (videos / "broken.mp4").write_bytes(b"not a video")
    clip = Clip(name="clip1.mp4", split="train", kind="video", path=str(videos / "clip1.mp4"))
    fr = load_frames(clip, 10.0, (32, 32), 12.0)                      # 20 fps -> 10 fps: every other frame
    assert fr.source_fps == 20.0 and fr.source_size == (64, 64) and fr.rgb.shape == (15, 32, 32, 3)
    assert fr.source_index.tolist() == list(range(0, 30, 2)) and fr.time_us[1] == 100_000
    tp = tracks_params(source="videos", input=str(videos), target_fps=20.0, window=10, window_stride=5,
                       image_size=[64, 64], grid_size=5, val_fraction=0.0)
    man, _ = P.build_tracks(parse_section("data", {"splits": ["train"]}), tp, tmp_path / "out", progress=False,
                            log=lambda *_: None)
    split = man["splits"]["train"]
    assert split["sources"] == ["broken.mp4", "clip1.mp4"] and split["dropped"]["no_frames"] == 1
    assert split["windows_kept"] == 5 and split["source_fps"] == [20.0]
    arrays = load_file(str(tmp_path / "out" / "train.safetensors"))
    assert arrays["tracks"].shape == (5, 10, 25, 2) and arrays["window_scene"].tolist() == [1] * 5
    # the scene moves by (-1, -0.5) px / frame (x, y): normalised (row, col) velocity = (-0.5, -1) * 2 / 64
    v = arrays["velocities"][arrays["visible"][:, 1:] & arrays["visible"][:, :-1]]
    np.testing.assert_allclose(np.median(v, axis=0), [-1 / 64, -2 / 64], atol=2e-3)   # mp4 compression noise


def test_folder_source_errors(tmp_path):
    from models.tracking import pipeline as P

    data = parse_section("data", {"splits": ["train"]})
    with pytest.raises(TrackingInputError, match="not found"):
        P.build_tracks(data, tracks_params(source="videos", input=str(tmp_path / "nope")), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrackingInputError, match="no video files"):
        P.build_tracks(data, tracks_params(source="videos", input=str(tmp_path / "empty")), tmp_path / "o")


# ----------------------------------------------------------------------------------------- end to end
def _stage(tmp_path, root, name, **tracks):
    from ruamel.yaml import YAML

    from stages import tracks as stage

    params = tmp_path / f"{name}.yaml"
    with open(params, "w") as fh:
        YAML().dump({"data": {"dataroot": str(root), "version": VERSION, "splits": ["train", "val"]},
                     "tracks": {"window": 8, "window_stride": 4, "image_size": [64, 96], "grid_size": 8,
                                "workers": 1, "input": str(root / VERSION), **tracks}}, fh)
    out, metrics = tmp_path / f"{name}_out", tmp_path / f"{name}.json"
    rc = stage.main(["--params", str(params), "--out", str(out), "--metrics", str(metrics)])
    return rc, out, tmp_path / f"{name}_details.json"  # the headline is checked in test_stage_end_to_end_lk_contract


def test_stage_end_to_end_lk_contract(synth_dataroot, tmp_path):
    from models.tracking.pipeline import load_tracks

    rc, out, metrics_path = _stage(tmp_path, synth_dataroot, "lk")
    assert rc == 0
    man = json.loads((out / "manifest.json").read_text())
    metrics = json.loads(metrics_path.read_text())
    assert man["T"] == 8 and man["N"] == 64 and man["image_size"] == [64, 96] and man["fps"] == 12.0
    assert man["backend"] == "lk" and man["params"]["window_stride"] == 4
    assert man["coordinate_convention"] == ("normalised (row, col) in [-1, 1], AMPLIFY normalize_traj: "
                                            "n = clamp((p - H/2)/(H/2), -1, 1)")
    assert man["split_source"].startswith("v1.0-synth/splits.json")
    world = json.loads((synth_dataroot / VERSION / "splits.json").read_text())
    for split, key in (("train", "synth_train"), ("val", "synth_val")):
        info = man["splits"][split]
        assert info["sources"] == sorted(world[key])
        assert info["windows_kept"] + sum(info["dropped"].values()) == info["windows_total"] > 0
        a, _ = load_tracks(out, split)
        nw = info["windows_kept"]
        expect = {"tracks": ((nw, 8, 64, 2), np.float32), "visible": ((nw, 8, 64), bool),
                  "velocities": ((nw, 7, 64, 2), np.float32), "static": ((nw, 64), bool),
                  "window_scene": ((nw,), np.int32), "window_start": ((nw,), np.int32),
                  "window_time_us": ((nw,), np.int64)}
        for name, (shape, dtype) in expect.items():
            assert a[name].shape == shape and a[name].dtype == dtype, name
            assert info["arrays"][name] == [list(shape), np.dtype(dtype).name]
        t = a["tracks"]
        assert np.isfinite(t).all() and t.min() >= -1 and t.max() <= 1
        np.testing.assert_array_equal(a["velocities"], t[:, 1:] - t[:, :-1])
        np.testing.assert_allclose(t[:, 0], np.broadcast_to(C.grid_normalised(8), (nw, 64, 2)), atol=1e-6)
        moved = np.linalg.norm(t.astype(np.float64) - t[:, :1], axis=-1)              # from the query
        moved = np.where(a["visible"], moved, 0.0).max(axis=1)
        assert man["params"]["static_rule"] == "displacement"
        np.testing.assert_array_equal(a["static"], moved < man["params"]["static_threshold"])
        assert a["visible"][:, 0].all() and (a["window_start"] % 4 == 0).all()
        m = metrics[split]
        assert set(METRIC_KEYS) <= set(m["tapvid"]) and m["windows_kept"] == nw
        assert 0.3 < m["tapvid"]["average_jaccard"] <= 1 and 0.5 < m["tapvid"]["occlusion_accuracy"] <= 1
        assert m["tapvid"]["average_jaccard"] > m["tapvid_static_baseline"]["average_jaccard"]
    head = json.loads((tmp_path / "lk.json").read_text())  # headline: val AJ / delta_avg / OA of both
    assert set(head) == {"tracker", "static"} and set(head["static"]) == {"aj", "delta_avg", "oa"}
    assert head["tracker"]["aj"] == metrics["val"]["tapvid"]["average_jaccard"]
    # deterministic and independent of the worker count, which no output records
    rc2, out2, metrics2 = _stage(tmp_path, synth_dataroot, "lk2", workers=2)
    assert rc2 == 0 and metrics2.read_bytes() == metrics_path.read_bytes()
    for name in ("train.safetensors", "val.safetensors", "manifest.json"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes()


def test_stage_oracle_is_perfect_and_errors_exit_cleanly(synth_dataroot, tmp_path, capsys):
    rc, out, metrics_path = _stage(tmp_path, synth_dataroot, "oracle", backend="oracle")
    assert rc == 0
    m = json.loads(metrics_path.read_text())
    assert m["val"]["tapvid"]["average_jaccard"] == 1.0 and m["val"]["tapvid"]["occlusion_accuracy"] == 1.0
    if not cotracker_available():
        rc, out, metrics_path = _stage(tmp_path, synth_dataroot, "cot", backend="cotracker",
                                       cotracker_checkpoint=str(tmp_path / "x.pth"))
        assert rc == 2 and "pip install" in capsys.readouterr().err
        assert not out.exists() and not metrics_path.exists()
    rc, out, _ = _stage(tmp_path, tmp_path / "no-dataroot", "missing")
    assert rc == 1 and "dataroot not found" in capsys.readouterr().err and not out.exists()


def test_dataclass_replace_keeps_validation():
    tp = tracks_params()
    assert dataclasses.replace(tp, window=8).window == 8
    with pytest.raises(ParamsError):
        dataclasses.replace(tp, grid_size=500).validate()


def test_nuscenes_source_without_truth(tiny_dataroot, tmp_path):
    """A dataroot without exact truth (the hand-written one: CAM_FRONT key frames only, jittered timestamps):
    frames in time order through the devkit, windows counted, no TAP-Vid scores; flat images give only static
    points, so every window is dropped as empty_static: the stage refuses to write empty splits."""
    from nuscenes.nuscenes import NuScenes

    from models.tracking import pipeline as P
    from models.tracking.sources import nuscenes_clips

    clips, _ = nuscenes_clips(tiny_dataroot, VERSION, ["train", "val"])
    nusc = NuScenes(VERSION, str(tiny_dataroot), verbose=False)
    for split, names in (("train", ["scene-a"]), ("val", ["scene-b"])):
        (clip,) = clips[split]
        assert clip.name == names[0]
        scene = next(s for s in nusc.scene if s["name"] == clip.name)
        expect, tok = [], scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            expect.append(nusc.get("sample_data", sample["data"]["CAM_FRONT"])["token"])
            tok = sample["next"]
        assert [f[2] for f in clip.frames] == expect
    tp = tracks_params(target_fps=2.0, window=4, window_stride=2, image_size=[8, 16], grid_size=4,
                       input=str(tiny_dataroot / VERSION))
    with pytest.raises(TrackingInputError, match=r"split 'train' has no windows; its clips: scene-a: 3 window\(s\), "
                                                 r"dropped as \['empty_static'\]"):
        P.build_tracks(data_params(tiny_dataroot), tp, tmp_path / "out", progress=False, log=lambda *_: None)
    assert not list((tmp_path / "out").glob("*.safetensors"))          # nothing written: never an empty split


# ------------------------------------------------------------------------- own clips: no silent empties
def _four_clips(root: Path, frames: int = 24) -> Path:
    moving = _translating(T=frames, H=48, W=64)
    for k in range(4):
        _write_frames(root / f"clip{k}", np.roll(moving, 3 * k, axis=2))
    return root


def _own(tmp_path, **kw):
    base = dict(source="frames", input=str(tmp_path / "clips"), frames_fps=30.0, target_fps=30.0, window=8,
                window_stride=4, image_size=[48, 64], grid_size=6)
    return tracks_params(**{**base, **kw})


def test_val_is_never_empty_with_two_or_more_clips(tmp_path):
    from models.tracking import pipeline as P
    from models.tracking.sources import assign_splits, hash_split

    names = [f"clip{k}" for k in range(4)]
    assert all(hash_split(n, 0.1) == "train" for n in names)            # the hash alone leaves val empty
    split = assign_splits(names, 0.1)
    assert list(split.values()).count("val") == 1
    assert assign_splits(names, 0.1, splits=("train",)) == {n: "train" for n in names}
    assert assign_splits(names, 0.1, val_clips=["clip2"]) == {**{n: "train" for n in names}, "clip2": "val"}
    with pytest.raises(TrackingInputError, match=r"tracks.val_clips names \['clip9'\]"):
        assign_splits(names, 0.1, val_clips=["clip9"])
    _four_clips(tmp_path / "clips")
    man, _ = P.build_tracks(parse_section("data", {"splits": ["train", "val"]}), _own(tmp_path), tmp_path / "out",
                            progress=False, log=lambda *_: None)
    assert man["splits"]["val"]["windows_kept"] > 0 and man["splits"]["train"]["clips"] == 3
    man, _ = P.build_tracks(parse_section("data", {"splits": ["train", "val"]}), _own(tmp_path, val_clips=["clip3"]),
                            tmp_path / "out2", progress=False, log=lambda *_: None)
    assert man["splits"]["val"]["sources"] == ["clip3"] and "tracks.val_clips" in man["split_source"]


def test_a_clip_too_short_at_the_target_rate_says_what_would_keep_it(tmp_path, capsys):
    """30 fps clips of 24 frames resampled to 12 fps give 10 frames < window 16: the stage fails (exit 1, nothing
    written) naming the split, each clip's native frames and rate, and the settings that would keep it."""
    from stages import tracks as stage

    _four_clips(tmp_path / "clips")
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  splits: [train, val]\ntracks:\n  source: frames\n  input: {tmp_path / 'clips'}\n"
                      "  frames_fps: 30.0\n  target_fps: 12.0\n  window: 16\n  image_size: [48, 64]\n"
                      "  grid_size: 6\n  workers: 1\n")
    out = tmp_path / "tracks"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    rc = stage.main(["--params", str(params), "--out", str(out), "--metrics", "", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and (out / "previous.txt").read_text() == "kept"
    assert "split 'train' has no windows" in err
    assert ("clip0: 24 frames at 30 fps (0.77 s) give 10 frames at tracks.target_fps = 12, fewer than "
            "tracks.window = 16: tracks.target_fps >= 19.6 or tracks.window <= 10 would keep it") in err
    rc = stage.main(["--params", str(params), "--out", str(out), "--metrics", "", "--no-progress",
                     "-S", "tracks.target_fps=20.0"])
    assert rc == 0 and json.loads((out / "manifest.json").read_text())["splits"]["val"]["windows_kept"] > 0


def test_upsampling_is_refused_unless_asked_for(tmp_path):
    from models.tracking import pipeline as P

    _four_clips(tmp_path / "clips", frames=12)
    data = parse_section("data", {"splits": ["train", "val"]})
    with pytest.raises(TrackingInputError, match=r"clip\d: native rate 10 fps is below tracks.target_fps = 12: "
                                                 r"resampling would repeat \d+ of \d+ frames"):
        P.build_tracks(data, _own(tmp_path, frames_fps=10.0, target_fps=12.0), tmp_path / "out", progress=False,
                       log=lambda *_: None)
    man, _ = P.build_tracks(data, _own(tmp_path, frames_fps=10.0, target_fps=12.0, allow_upsampling=True),
                            tmp_path / "out2", progress=False, log=lambda *_: None)
    rate = man["splits"]["train"]["per_clip"]["clip0"]
    assert rate["native_frames"] == 12 and rate["frames"] == 14 and rate["repeated"] == 2 and rate["unused"] == 0
    man, _ = P.build_tracks(data, _own(tmp_path, frames_fps=30.0, target_fps=12.0, window=4), tmp_path / "out3",
                            progress=False, log=lambda *_: None)
    rate = man["splits"]["train"]["per_clip"]["clip0"]
    assert rate["frames"] == 5 and rate["unused"] == 7 and rate["repeated"] == 0   # downsampling, said out loud


# ------------------------------------------------------------------------------- fitting frames (resize)
@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_resize_modes_map_points_where_the_pixels_go(mode):
    """A 4:3 frame with one bright block: its centre lands where to_resized says, in every mode; pad keeps the
    aspect with bars, crop cuts the sides; to_source inverts to_resized."""
    from models.tracking.resize import fit, resize_frame, to_resized, to_source

    src = np.zeros((120, 160, 3), np.uint8)
    src[40:50, 100:110] = 255                                       # block centre (104.5, 44.5) in the source
    out = resize_frame(src, (64, 64), mode)
    assert out.shape == (64, 64, 3)
    ys, xs = np.nonzero(out[..., 0] > 60)
    weights = out[ys, xs, 0].astype(float)
    centre = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    np.testing.assert_allclose(centre, to_resized([[104.5, 44.5]], (160, 120), (64, 64), mode)[0], atol=0.3)
    xy = np.array([[0.0, 0.0], [63.0, 31.5], [10.2, 50.7]])
    np.testing.assert_allclose(to_resized(to_source(xy, (160, 120), (64, 64), mode), (160, 120), (64, 64), mode), xy)
    f = fit((160, 120), (64, 64), mode)
    if mode == "pad":                                               # 64 x 48 image with 8-row bars above and below
        assert f.scaled_wh == (64, 48) and f.offset == (0, 8) and out[:8].max() == 0 and out[-8:].max() == 0
    elif mode == "crop":                                            # 85 x 64 scaled, 11 of 21 columns cut on the left
        assert f.scaled_wh == (85, 64) and f.offset == (-11, 0)
    else:
        assert f.scale == (0.4, 64 / 120)


# --------------------------------------------------------------------------------- multi-view sequences
@pytest.mark.parametrize("layout", ["time-major", "view-major"])
def test_a_multi_view_sequence_is_tracked_view_by_view(tmp_path, layout):
    """The issue's recording: 24 times x 4 views at 30 fps, 4:3 frames. Each view is a clip; val is not empty;
    the manifest says which layout was read and the rates."""
    from models.sequences.demo import write_demo_sequence
    from models.tracking import pipeline as P

    seq = write_demo_sequence(tmp_path / "rig", times=24, views=4, width=64, height=48, fps=30.0, layout=layout)
    tp = tracks_params(source="sequences", input=str(seq), frames_fps=30.0, target_fps=30.0, window=16,
                       window_stride=4, image_size=[48, 64], grid_size=6, static_threshold=0.0)
    data = parse_section("data", {"splits": ["train", "val"]})
    man, _ = P.build_tracks(data, tp, tmp_path / "out", progress=False, log=lambda *_: None)
    names = man["splits"]["train"]["sources"] + man["splits"]["val"]["sources"]
    assert sorted(names) == [f"rig/view{k}" for k in range(4)] and man["splits"]["val"]["windows_kept"] > 0
    rate = {**man["splits"]["train"]["per_clip"], **man["splits"]["val"]["per_clip"]}["rig/view0"]
    assert rate["layout"] == layout and rate["native_frames"] == 24 and rate["native_fps"] == 30.0
    assert rate["frames"] == 24 and rate["repeated"] == rate["unused"] == 0


def test_a_sequence_read_as_clip_folders_is_refused(tmp_path):
    from models.sequences.demo import write_demo_sequence
    from models.tracking import pipeline as P

    seq = write_demo_sequence(tmp_path / "rig", times=4, views=2, width=32, height=24)
    data = parse_section("data", {"splits": ["train", "val"]})
    for folder in (seq, seq / "images"):
        tp = tracks_params(source="frames", input=str(folder), image_size=[24, 32], grid_size=4)
        with pytest.raises(TrackingInputError, match="is a multi-view sequence.*tracks.source: sequences"):
            P.build_tracks(data, tp, tmp_path / "out", progress=False, log=lambda *_: None)
    tp = tracks_params(source="sequences", input=str(tmp_path), image_size=[24, 32], grid_size=4)
    (tmp_path / "rig" / "images" / "view0").mkdir()                        # both layouts at once
    with pytest.raises(TrackingInputError, match="ambiguous layout"):
        P.build_tracks(data, tp, tmp_path / "out2", progress=False, log=lambda *_: None)


def _break_unreadable(seq):
    (seq / "images" / "time_2" / "view1.png").write_bytes(b"not a png")
    return r"time_2/view1.png: not a readable image"


def _break_frame_count(seq):
    (seq / "images" / "time_3" / "view1.png").unlink()
    return r"images/time_3: view\(s\) \[1\] missing"


def _break_intrinsics(seq):
    np.save(seq / "intrs" / "time_1" / "view0.npy", np.eye(4))
    return r"intrs/time_1/view0.npy: intrinsics must be 3 x 3, got shape \(4, 4\)"


def _break_rotation(seq):
    E = np.load(seq / "extrs" / "time_0" / "view1.npy")
    E[:, :3] *= 1.5
    np.save(seq / "extrs" / "time_0" / "view1.npy", E)
    return r"extrs/time_0/view1.npy: the rotation is not orthonormal"


def _break_depth(seq):
    np.save(seq / "depths" / "time_2" / "view0.npy", np.ones((5, 7), np.float32))
    return r"depths/time_2/view0.npy: .*\(5, 7\)"


@pytest.mark.parametrize("damage", [_break_unreadable, _break_frame_count, _break_intrinsics, _break_rotation,
                                    _break_depth])
def test_a_bad_sequence_stops_the_stage_naming_the_file(tmp_path, capsys, damage):
    """The whole sequence folder is checked before any work: one error naming the file, the output untouched."""
    from models.sequences.demo import write_demo_sequence
    from stages import tracks as stage

    seq = write_demo_sequence(tmp_path / "rig", times=4, views=2, width=32, height=24)
    pattern = damage(seq)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  splits: [train, val]\ntracks:\n  source: sequences\n  input: {seq}\n  frames_fps: 30.0\n  target_fps: 30.0\n"
                      "  window: 4\n  image_size: [24, 32]\n  grid_size: 4\n  workers: 1\n")
    out = tmp_path / "tracks"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    rc = stage.main(["--params", str(params), "--out", str(out), "--metrics", "", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and re.search(pattern, err), err
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
