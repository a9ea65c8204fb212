"""Windows of the temporal multi-view geometry model (models/geometry/data.py) on the tiny synthetic world:
layout, poses against the generator's truth, LiDAR depth against the exact depth, intrinsics scaling, and the
messages for short scenes and broken inputs; SequenceWindows on a demo sequence folder."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from models.geometry.data import (NuScenesWindows, SequenceWindows, WindowCache, WindowInputError, collate_windows,
                                  resize_intrinsics)

HW = (42, 84)          # the tiny world's images are 54 x 96


def nearest_rows(src: int, dst: int) -> np.ndarray:
    return np.minimum(np.floor((np.arange(dst) + 0.5) * src / dst).astype(int), src - 1)


def resized_nearest(a: np.ndarray, hw) -> np.ndarray:
    return a[..., nearest_rows(a.shape[-2], hw[0])[:, None], nearest_rows(a.shape[-1], hw[1])[None, :]]


@pytest.fixture(scope="module")
def val(synth_cache):
    return NuScenesWindows(synth_cache, "val", 3, None, HW)


@pytest.fixture(scope="module")
def item(val):
    return val[2]


def rotations_ok(R: np.ndarray, tol: float = 1e-5) -> bool:
    eye = np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max()
    return bool(eye < tol and np.abs(np.linalg.det(R) - 1).max() < tol)


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def test_windows_layout_dtypes_and_collate(val, item, synth_cache):
    from models.nuscenes.dataset import GTCacheDataset

    T, V, (H, W) = 3, 6, HW
    assert len(val) == 12 - 3 + 1 and val.skipped == {"short_scenes": []}
    assert len(NuScenesWindows(synth_cache, "val", 3, None, HW, stride=4)) == 3          # starts 0, 4, 8
    want = {"images": ((T, V, 3, H, W), np.float32), "intrinsics": ((T, V, 3, 3), np.float32),
            "extrinsics": ((T, V, 3, 4), np.float32), "cam_to_ref": ((V, 4, 4), np.float32),
            "depth": ((T, V, H, W), np.float32), "depth_exact": ((T, V, H, W), np.float32),
            "dynamic": ((T, V, H, W), np.bool_)}
    for key, (shape, dtype) in want.items():
        assert item[key].shape == shape and item[key].dtype == dtype, key
    assert 0.0 <= item["images"].min() and item["images"].max() <= 1.0 and item["images"].std() > 0.05
    assert item["has_exact"] is True and item["has_depth"] is True and item["has_dynamic"] is True
    assert item["scene"] == "synth-0002" and item["start"] == 2
    cache = GTCacheDataset(synth_cache, "val")
    assert item["tokens"] == [cache.samples[i]["token"] for i in range(2, 5)]

    # images: RGB (not BGR) of the right file, INTER_AREA-resized
    path = cache[3]["cam_paths"][4]
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    ref = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item["images"][1, 4], ref, atol=1e-6)

    # exact truth: nearest neighbour at the resized pixel centres, inf (sky) -> 0
    extras = np.load(val._extras_files["synth-0002"])
    src = extras["keyframe_depth"][2:5].astype(np.float32)
    exact = resized_nearest(src, HW)
    np.testing.assert_array_equal(item["depth_exact"], np.where(np.isfinite(exact), exact, 0))
    np.testing.assert_array_equal(item["dynamic"], resized_nearest(extras["keyframe_dynamic"][2:5], HW))
    assert (item["depth_exact"] == 0).any() and item["dynamic"].any()

    batch = collate_windows([val[0], item])
    assert tuple(batch["images"].shape) == (2, T, V, 3, H, W) and str(batch["images"].dtype) == "torch.float32"
    assert str(batch["dynamic"].dtype) == "torch.bool" and batch["has_exact"].tolist() == [True, True]
    assert batch["scene"] == ["synth-0002"] * 2 and batch["start"] == [0, 2] and len(batch["tokens"][1]) == T


def test_camera_subset_and_no_exact(synth_cache):
    ds = NuScenesWindows(synth_cache, "val", 2, ["CAM_BACK", "CAM_FRONT"], (28, 56), exact=False)
    it = ds[0]
    assert it["images"].shape == (2, 2, 3, 28, 56) and it["has_exact"] is False and it["has_dynamic"] is False
    assert not it["depth_exact"].any() and not it["dynamic"].any() and (it["depth"] > 0).any()
    # the reference camera is the first one asked for (CAM_BACK)
    np.testing.assert_allclose(it["extrinsics"][0, 0], np.eye(4)[:3], atol=1e-6)


@pytest.mark.parametrize("hw", [(40, 84), (42, 90), (0, 14)])
def test_image_size_must_be_a_multiple_of_14(synth_cache, hw):
    with pytest.raises(ValueError, match=rf"image_hw = \({hw[0]}, {hw[1]}\).*multiples of 14"):
        NuScenesWindows(synth_cache, "val", 2, None, hw)


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def test_extrinsics_are_relative_to_the_reference_camera(item, synth_cache):
    from models.nuscenes.dataset import GTCacheDataset

    E = item["extrinsics"].astype(np.float64)
    np.testing.assert_allclose(E[0, 0], np.eye(4)[:3], atol=1e-6)
    assert rotations_ok(E[..., :3]) and rotations_ok(item["cam_to_ref"][..., :3, :3])
    E4 = np.tile(np.eye(4), (3, 6, 1, 1))
    E4[..., :3, :] = E
    np.testing.assert_allclose(item["cam_to_ref"], np.linalg.inv(E4[0]), atol=1e-5)   # camera v -> ref at t = 0
    np.testing.assert_allclose(item["cam_to_ref"][0], np.eye(4), atol=1e-6)
    # close to the rig calibration: the cameras fire tens of ms apart, so they differ by that ego motion only
    a = GTCacheDataset(synth_cache, "val").arrays
    c2e = a["cam2ego"][2]
    rig = np.linalg.inv(c2e[0]) @ c2e
    assert np.abs(rig[:, :3, :3] - item["cam_to_ref"][:, :3, :3]).max() < 0.02
    assert np.abs(rig[:, :3, 3] - item["cam_to_ref"][:, :3, 3]).max() < 1.0


def test_camera_poses_match_the_generators_ego_poses(synth_cache):
    """CAM_FRONT's key-frame poses from the generator's own ego track and rig (independent of the tables)."""
    from models.world.sensors import CAMERA_OFFSET_US, camera_calibration, ego_pose_matrix

    ds = NuScenesWindows(synth_cache, "val", 3, ["CAM_FRONT"], HW, stride=2)
    it = ds[2]                                                       # key frames 4, 5, 6
    z = np.load(ds._extras_files[it["scene"]])
    rig = camera_calibration(96, 54)["CAM_FRONT"]["sensor2ego"]
    cam2world = []
    for t in range(3):
        when = z["keyframe_timestamps"][it["start"] + t] + CAMERA_OFFSET_US["CAM_FRONT"]
        j = int(np.flatnonzero(z["sweep_timestamps"] == when)[0])
        cam2world.append(ego_pose_matrix(*z["sweep_ego_pose"][j]) @ rig)
    moved = 0.0
    for t in range(3):
        want = (np.linalg.inv(cam2world[t]) @ cam2world[0])[:3]
        np.testing.assert_allclose(it["extrinsics"][t, 0], want, atol=1e-4)
        moved = max(moved, float(np.linalg.norm(want[:, 3])))
    assert moved > 1.0                                               # the ego drives: the check has teeth


def test_exact_depth_reprojects_between_cameras(item):
    """Back-project camera (t, v)'s exact depth, move it with the extrinsics into the reference camera, and compare
    with the reference camera's own exact depth (static pixels seen by both)."""
    e, dyn = item["depth_exact"], item["dynamic"]
    K, E = item["intrinsics"].astype(np.float64), item["extrinsics"].astype(np.float64)
    H, W = e.shape[-2:]

    def reproject(t, v):
        rows, cols = np.nonzero((e[t, v] > 0) & ~dyn[t, v])
        pix = np.stack([cols, rows, np.ones_like(cols)]).astype(np.float64)
        X = np.linalg.inv(K[t, v]) @ pix * e[t, v, rows, cols]             # camera (t, v)
        Xw = E[t, v, :, :3].T @ (X - E[t, v, :, 3:])                        # world = reference camera
        p = K[0, 0] @ Xw
        z = p[2]
        front = z > 0.5
        u = np.floor(p[0] / np.where(front, z, 1) + 0.5).astype(int)
        w = np.floor(p[1] / np.where(front, z, 1) + 0.5).astype(int)
        ok = front & (u >= 0) & (u < W) & (w >= 0) & (w < H)
        ref = e[0, 0, w[ok], u[ok]]
        seen = (ref > 0) & ~dyn[0, 0, w[ok], u[ok]]
        return (z[ok][seen] - ref[seen]) / ref[seen]

    for t, v in ((0, 1), (0, 2), (1, 1), (2, 0)):
        rel = reproject(t, v)
        assert len(rel) > 100, (t, v)
        assert abs(np.median(rel)) < 0.01, (t, v, np.median(rel))
        assert np.median(np.abs(rel)) < 0.04, (t, v, np.median(np.abs(rel)))
    assert np.median(np.abs(reproject(0, 1))) < 0.02                 # across cameras: the overlap is off the ground


def test_lidar_depth_agrees_with_the_exact_depth(item):
    d, e, dyn = item["depth"], item["depth_exact"], item["dynamic"]
    assert (d > 0).mean() > 0.1 and d.min() == 0 and (d[d > 0] > 0.1).all()
    both = (d > 0) & (e > 0) & ~dyn
    assert both.sum() > 1000
    rel = np.abs(d[both] - e[both]) / e[both]
    assert np.median(rel) < 0.02, np.median(rel)
    for v in range(6):
        b = both[:, v]
        assert np.median(np.abs(d[:, v][b] - e[:, v][b]) / e[:, v][b]) < 0.03, v


def test_intrinsics_scaling_round_trips_a_projected_point(item, synth_cache):
    from models.nuscenes.dataset import GTCacheDataset

    K0 = GTCacheDataset(synth_cache, "val").arrays["cam_intrinsic"][3].astype(np.float64)   # key frame 3 = t 1
    K1 = item["intrinsics"][1].astype(np.float64)
    sx, sy = HW[1] / 96, HW[0] / 54
    X = np.array([[1.3, -0.4, 7.0], [-2.0, 0.9, 12.5], [0.0, 0.0, 3.0]])
    for v in range(6):
        p0, p1 = K0[v] @ X.T, K1[v] @ X.T
        x0, x1 = p0[:2] / p0[2], p1[:2] / p1[2]
        np.testing.assert_allclose(x1[0], (x0[0] + 0.5) * sx - 0.5, atol=1e-4)
        np.testing.assert_allclose(x1[1], (x0[1] + 0.5) * sy - 0.5, atol=1e-4)
        # the synthetic principal point is the image centre, and stays it
        np.testing.assert_allclose(K1[v, :2, 2], [(HW[1] - 1) / 2, (HW[0] - 1) / 2], atol=1e-4)
    back = resize_intrinsics(resize_intrinsics(K0, (54, 96), HW), HW, (54, 96))
    np.testing.assert_allclose(back, K0, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Short scenes, broken inputs
# --------------------------------------------------------------------------------------------------


def _cache_copy(synth_cache, tmp_path, split, edit):
    """A copy of the cache whose ``split`` is rewritten by ``edit(arrays, samples) -> (arrays, samples)``."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "cache"
    shutil.copytree(synth_cache, out)
    arrays = load_file(str(out / split / "arrays.safetensors"))
    side = json.loads((out / split / "samples.json").read_text())
    arrays, side["samples"] = edit(arrays, side["samples"])
    save_file(arrays, str(out / split / "arrays.safetensors"))
    (out / split / "samples.json").write_text(json.dumps(side))
    return out


def test_short_scenes_are_skipped_and_counted(synth_cache, tmp_path):
    def shorten(arrays, samples):           # train: synth-0000 whole (12), synth-0001 cut to 5 key frames
        keep = np.array([i for i, s in enumerate(samples) if s["scene"] == "synth-0000" or s["frame"] < 5])
        return {k: np.ascontiguousarray(v[keep]) for k, v in arrays.items()}, [samples[i] for i in keep]
    cache = _cache_copy(synth_cache, tmp_path, "train", shorten)
    ds = NuScenesWindows(cache, "train", 6, ["CAM_FRONT"], HW)
    assert ds.skipped == {"short_scenes": ["synth-0001"]}
    assert len(ds) == 12 - 6 + 1 and {w[0] for w in ds.windows} == {"synth-0000"}
    assert len(NuScenesWindows(cache, "train", 5, ["CAM_FRONT"], HW)) == (12 - 5 + 1) + 1


def test_no_window_left_names_the_split_scenes_and_setting(synth_cache):
    with pytest.raises(ValueError, match=r"split 'val'.*frames = 13.*synth-0002: 12 key frames"):
        NuScenesWindows(synth_cache, "val", 13, None, HW)


def test_a_bad_calibration_names_the_sample(synth_cache, tmp_path):
    def skew(arrays, samples):
        arrays["cam2lidar"][4, 2, :3, :3] *= 1.05
        return arrays, samples
    cache = _cache_copy(synth_cache, tmp_path, "val", skew)
    token = json.loads((cache / "val" / "samples.json").read_text())["samples"][4]["token"]
    with pytest.raises(WindowInputError, match=rf"{token}.*CAM_FRONT_LEFT.*cam2lidar is not orthonormal"):
        NuScenesWindows(cache, "val", 2, None, HW)


def _root_copy(synth_dataroot, tmp_path, copy: str):
    """A dataroot of symlinks to the fixture's, with ``copy`` (e.g. ``samples/LIDAR_TOP``) a real copy to break."""
    root = tmp_path / "root"

    def mirror(src, dst, rel):
        dst.mkdir(parents=True)
        for entry in src.iterdir():
            sub = f"{rel}/{entry.name}".lstrip("/")
            if sub == copy:
                shutil.copytree(entry, dst / entry.name)
            elif copy.startswith(sub + "/"):
                mirror(entry, dst / entry.name, sub)
            else:
                (dst / entry.name).symlink_to(entry)
    mirror(synth_dataroot, root, "")
    return root


def _val_meta(synth_cache, i=0):
    return json.loads((synth_cache / "val" / "samples.json").read_text())["samples"][i]


def _same_item(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
        else:
            assert a[k] == b[k], k


def test_window_cache_gives_the_same_bytes_without_reading_again(synth_cache, synth_dataroot, tmp_path):
    root = _root_copy(synth_dataroot, tmp_path, "samples")
    fresh = NuScenesWindows(synth_cache, "val", 2, None, HW)
    cached = WindowCache(NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root), budget_mb=64)
    first = [cached[k] for k in range(len(cached))]
    assert cached.used > 0 and len(cached.windows) == len(fresh.windows)   # the wrapped dataset's attributes
    assert cached._items[0]["images"].dtype == np.uint8                    # JPEG pixels kept at a quarter of the size
    shutil.rmtree(root / "samples")                                     # every image and LiDAR sweep gone
    for k in range(len(fresh)):
        _same_item(fresh[k], first[k])
        again = cached[k]
        _same_item(fresh[k], again)
        again["images"][:] = 0                                          # a caller's edit stays its own
    _same_item(fresh[0], cached[0])
    with pytest.raises(IndexError):
        cached[len(cached)]


def test_depth_alone_is_the_items_depth(val):
    for k in (0, len(val) - 1):
        assert val.depth(k).tobytes() == val[k]["depth"].tobytes()


def test_window_cache_keeps_only_what_fits(synth_cache):
    ds = NuScenesWindows(synth_cache, "val", 2, None, HW)
    one = WindowCache(ds, budget_mb=1)
    one[0]
    size = one.used
    assert 0 < size <= 2 ** 20
    for k in range(len(one)):
        one[k]
    assert one.used == size * len(one._items) <= 2 ** 20 and len(one._items) < len(one)
    none = WindowCache(ds, budget_mb=0)
    _same_item(none[1], ds[1])
    assert none.used == 0 and not none._items


def test_a_missing_image_names_the_file_and_sample(synth_cache, synth_dataroot, tmp_path):
    root = _root_copy(synth_dataroot, tmp_path, "samples/CAM_BACK")
    meta = _val_meta(synth_cache, 1)
    (root / meta["cams"][3]).unlink()
    with pytest.raises(WindowInputError, match=rf"{meta['cams'][3]}: camera image of sample {meta['token']}.*"
                                               r"CAM_BACK\) not found"):
        NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root)


def test_an_undecodable_image_names_the_file_and_sample(synth_cache, synth_dataroot, tmp_path):
    root = _root_copy(synth_dataroot, tmp_path, "samples/CAM_FRONT")
    meta = _val_meta(synth_cache, 1)
    (root / meta["cams"][0]).write_bytes(b"not a jpeg")
    ds = NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root)
    ds[2]                                                            # key frames 2, 3: fine
    with pytest.raises(WindowInputError, match=rf"{meta['cams'][0]}: missing or unreadable camera image of sample "
                                               rf"{meta['token']} \(scene synth-0002, camera CAM_FRONT\)"):
        ds[1]                                                        # key frames 1, 2


def test_a_truncated_lidar_file_names_the_file_and_sample(synth_cache, synth_dataroot, tmp_path):
    root = _root_copy(synth_dataroot, tmp_path, "samples/LIDAR_TOP")
    meta = _val_meta(synth_cache, 2)
    path = root / meta["lidar"]
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(WindowInputError, match=rf"{meta['lidar']}: LiDAR file of sample {meta['token']} has "
                                               r"\d+ bytes, not a multiple of 5 float32"):
        NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root)


def test_nan_in_a_lidar_file_names_the_file_and_sample(synth_cache, synth_dataroot, tmp_path):
    root = _root_copy(synth_dataroot, tmp_path, "samples/LIDAR_TOP")
    meta = _val_meta(synth_cache, 0)
    path = root / meta["lidar"]
    pts = np.fromfile(path, np.float32).reshape(-1, 5)
    pts[10, 1] = np.nan
    pts[11, 0] = np.inf
    pts.tofile(path)
    ds = NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root)
    with pytest.raises(WindowInputError, match=rf"{meta['lidar']}: LiDAR file of sample {meta['token']} has 2 "
                                               r"point\(s\) with NaN or inf"):
        ds[0]


def test_extras_of_another_size_name_the_file(synth_cache, synth_dataroot, tmp_path):
    root = _root_copy(synth_dataroot, tmp_path, "extras")
    path = root / "extras" / "synth-0002.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["keyframe_depth"] = arrays["keyframe_depth"][..., ::2, ::2]
    arrays["keyframe_dynamic"] = arrays["keyframe_dynamic"][..., ::2, ::2]
    np.savez(path, **arrays)
    ds = NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root)
    with pytest.raises(WindowInputError, match=r"synth-0002\.npz: exact depth of 27 x 48 pixels, but the image of "
                                               r"sample \w+ camera CAM_FRONT is 54 x 96"):
        ds[0]
    assert NuScenesWindows(synth_cache, "val", 2, None, HW, dataroot=root, exact=False)[0]["has_exact"] is False


# --------------------------------------------------------------------------------------------------
# Sequence folders
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo sequence (6 times, 2 views, 120 x 160), its rig moved forward 1 m per time (a moving rig)."""
    from models.sequences.demo import write_demo_sequence

    root = write_demo_sequence(tmp_path_factory.mktemp("seq") / "demo", times=6, views=2)
    for t in range(6):
        for v in range(2):
            path = root / "extrs" / f"time_{t}" / f"view{v}.npy"
            E = np.load(path)
            E[:, 3] -= E[:, :3] @ np.array([0.3 * t, 1.0 * t, 0.0])    # camera centre + (0.3 t, t, 0) in the world
            np.save(path, E)
    return root


def test_sequence_windows(demo):
    from models.sequences.reader import MultiViewSequence

    hw = (84, 112)
    ds = SequenceWindows(demo, 3, hw, stride=2)
    assert len(ds) == 2
    it = ds[1]                                                       # times 2, 3, 4
    seq = MultiViewSequence(demo, fixed_rig=False)
    assert it["images"].shape == (3, 2, 3, *hw) and it["images"].dtype == np.float32
    assert it["has_depth"] and it["has_dynamic"] and it["has_intrinsics"] and it["has_extrinsics"]
    assert not it["has_exact"] and not it["depth_exact"].any()
    assert it["start"] == 2 and it["tokens"] == ["demo/t2", "demo/t3", "demo/t4"]
    for t in range(3):
        for v in range(2):
            np.testing.assert_array_equal(it["depth"][t, v], resized_nearest(seq.depth(t + 2, v), hw))
            np.testing.assert_array_equal(it["dynamic"][t, v], resized_nearest(seq.dynamic_mask(t + 2, v), hw))
            np.testing.assert_allclose(it["intrinsics"][t, v],
                                       resize_intrinsics(seq.intrinsics(t + 2, v), (120, 160), hw), atol=1e-5)
    assert it["dynamic"].any() and (it["depth"] > 0).mean() > 0.3

    def E4(t, v):
        m = np.eye(4)
        m[:3] = seq.extrinsics(t, v)
        return m
    ref = np.linalg.inv(E4(2, 0))                                    # reference camera -> world
    np.testing.assert_allclose(it["extrinsics"][0, 0], np.eye(4)[:3], atol=1e-6)
    for t in range(3):
        for v in range(2):
            np.testing.assert_allclose(it["extrinsics"][t, v], (E4(t + 2, v) @ ref)[:3], atol=1e-5)
    np.testing.assert_allclose(it["extrinsics"][2, 0, :, 3], -E4(2, 0)[:3, :3] @ [0.6, 2.0, 0.0], atol=1e-5)
    for v in range(2):
        np.testing.assert_allclose(it["cam_to_ref"][v], E4(2, 0) @ np.linalg.inv(E4(2, v)), atol=1e-5)
    assert rotations_ok(it["extrinsics"][..., :3])

    batch = collate_windows([ds[0], it])
    assert tuple(batch["depth"].shape) == (2, 3, 2, *hw) and batch["start"] == [0, 2]


def test_sequence_without_depth_and_too_short(demo, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(demo / "images", bare / "images")
    it = SequenceWindows(bare, 2, (28, 42))[0]
    assert not (it["has_depth"] or it["has_dynamic"] or it["has_intrinsics"] or it["has_extrinsics"])
    assert it["depth"].shape == (2, 2, 28, 42) and not it["depth"].any() and not it["extrinsics"].any()
    with pytest.raises(ValueError, match=rf"{bare}: 6 time\(s\) in the sequence, fewer than frames = 7"):
        SequenceWindows(bare, 7, (28, 42))
