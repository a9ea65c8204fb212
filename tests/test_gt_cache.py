"""GT cache: values checked against independent devkit / pyquaternion computations, determinism, dataset."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pyquaternion import Quaternion

from models.common.params import parse_section
from models.nuscenes.cache import ARRAYS, build_cache, ego_status_from_poses
from models.nuscenes.dataset import CacheMismatchError, GTCacheDataset, read_manifest
from tests import tiny_nuscenes as tiny
from tests.tiny_nuscenes import tiny_dataroot  # noqa: F401 (fixture)

VERSION = "v1.0-synth"


def make_params(dataroot, **cache):
    data = parse_section("data", {"dataroot": str(dataroot), "version": VERSION, "splits": ["train", "val"]})
    return data, parse_section("cache", {"workers": 1, **cache})


def build(dataroot, out: Path, **cache) -> Path:
    data, cp = make_params(dataroot, **cache)
    build_cache(data, cp, out, progress=False)
    return out


@pytest.fixture(scope="module", params=["tiny", "synth"])
def built(request, tmp_path_factory):
    """(dataroot, cache dir, devkit NuScenes) for the hand-written dataroot and the generated world."""
    from nuscenes.nuscenes import NuScenes

    root = request.getfixturevalue(f"{request.param}_dataroot")
    out = build(root, tmp_path_factory.mktemp("cache") / "cache")
    return root, out, NuScenes(VERSION, str(root), verbose=False)


def _lidar_pose(nusc, sample_token):
    """(ego Quaternion, ego t, lidar cs Quaternion, cs t) of a sample's LIDAR_TOP key frame via the devkit."""
    sd = nusc.get("sample_data", nusc.get("sample", sample_token)["data"]["LIDAR_TOP"])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return Quaternion(ep["rotation"]), np.array(ep["translation"]), Quaternion(cs["rotation"]), np.array(
        cs["translation"])


def _global_to_lidar(nusc, sample_token, p):
    eq, et, cq, ct = _lidar_pose(nusc, sample_token)
    return cq.inverse.rotate(eq.inverse.rotate(np.asarray(p) - et) - ct)


def _datasets(out):
    return {split: GTCacheDataset(out, split) for split in ("train", "val")}


def _walk(nusc, token, steps):
    """Tokens reached by following sample.next (steps > 0) or sample.prev (steps < 0); None past the end."""
    key = "next" if steps > 0 else "prev"
    for _ in range(abs(steps)):
        token = nusc.get("sample", token)[key] if token else ""
        if not token:
            return None
    return token


def test_future_waypoints_and_history_equal_independent_transforms(built):
    _, out, nusc = built
    for ds in _datasets(out).values():
        F, H = ds.manifest["future_steps"], ds.manifest["history_steps"]
        for i in range(len(ds)):
            it = ds[i]
            eq, et, cq, ct = _lidar_pose(nusc, it["token"])
            yaw_now = (eq * cq).yaw_pitch_roll[0]
            for step, (arr, valid) in [(k, (it["future_waypoints"][k - 1], it["future_valid"][k - 1]))
                                       for k in range(1, F + 1)] + \
                                      [(k, (it["ego_history"][H - 1 + k], it["ego_history_valid"][H - 1 + k]))
                                       for k in range(-(H - 1), 1)]:
                tok = _walk(nusc, it["token"], step) if step else it["token"]
                assert valid == (tok is not None), (i, step)
                if tok is None:
                    assert not arr.any()
                    continue
                feq, fet, fcq, fct = _lidar_pose(nusc, tok)
                origin = feq.rotate(fct) + fet  # future LIDAR_TOP origin, global
                want = _global_to_lidar(nusc, it["token"], origin)
                np.testing.assert_allclose(arr[:2], want[:2], atol=2e-3)
                if abs(want[:2]).max() < 1e3:
                    rel = ((eq * cq).inverse * (feq * fcq)).yaw_pitch_roll[0]
                    assert abs((arr[2] - rel + np.pi) % (2 * np.pi) - np.pi) < 1e-4
            assert np.allclose(it["ego_history"][-1], 0) and it["ego_history_valid"][-1]
            assert np.isfinite(yaw_now)


def test_agent_boxes_land_where_annotations_say(built):
    _, out, nusc = built
    for ds in _datasets(out).values():
        F = ds.manifest["future_steps"]
        for i in range(len(ds)):
            it = ds[i]
            eq, et, cq, ct = _lidar_pose(nusc, it["token"])
            for k in range(F + 1):
                tok = _walk(nusc, it["token"], k) if k else it["token"]
                if tok is None:
                    assert not it["agent_valid"][k].any() and it["agent_count"][k] == 0
                    continue
                anns = nusc.get("sample", tok)["anns"]
                assert it["agent_count"][k] == len(anns)
                cached = {ds.instance_tokens[j]: (box, c) for j, box, c, v in zip(
                    it["agent_instance"][k], it["agent_boxes"][k], it["agent_class"][k], it["agent_valid"][k]) if v}
                assert len(cached) == min(len(anns), ds.manifest["max_agents"])
                for ann_tok in anns:
                    ann = nusc.get("sample_annotation", ann_tok)
                    if ann["instance_token"] not in cached:
                        continue  # truncated: only the A nearest are kept
                    box = nusc.get_box(ann_tok)  # devkit Box API: global -> ego -> lidar
                    box.translate(-et)
                    box.rotate(eq.inverse)
                    box.translate(-ct)
                    box.rotate(cq.inverse)
                    got, cls = cached[ann["instance_token"]]
                    np.testing.assert_allclose(got[:3], box.center, atol=2e-3)
                    np.testing.assert_allclose(got[3:6], box.wlh, atol=1e-5)
                    dyaw = (got[6] - box.orientation.yaw_pitch_roll[0] + np.pi) % (2 * np.pi) - np.pi
                    assert abs(dyaw) < 1e-4
                    name = ann["category_name"]
                    assert cls == (0 if name.startswith("vehicle.") else 1 if name.startswith("human.pedestrian.")
                                   else 2)
                # nearest-first to the ego at that step
                ego = np.zeros(2) if k == 0 else it["future_waypoints"][k - 1, :2]
                d = np.hypot(*(it["agent_boxes"][k, it["agent_valid"][k], :2] - ego).T)
                assert (np.diff(d) >= -1e-4).all()


def test_camera_extrinsics_follow_the_devkit_chain(built):
    """cam2lidar = lidar_now <- global <- ego(at the camera timestamp) <- camera, checked with pyquaternion."""
    from models.nuscenes.cache import CAMERAS

    _, out, nusc = built
    ds = GTCacheDataset(out, "train")
    p = np.array([1.0, -2.0, 5.0])
    for i in range(0, len(ds), max(1, len(ds) // 5)):
        it, sample = ds[i], nusc.get("sample", ds.samples[i]["token"])
        for c, ch in enumerate(CAMERAS):
            sd = nusc.get("sample_data", sample["data"][ch])
            ep, cs = nusc.get("ego_pose", sd["ego_pose_token"]), nusc.get("calibrated_sensor",
                                                                         sd["calibrated_sensor_token"])
            g = Quaternion(ep["rotation"]).rotate(Quaternion(cs["rotation"]).rotate(p) + cs["translation"]) \
                + ep["translation"]
            want = _global_to_lidar(nusc, sample["token"], g)
            np.testing.assert_allclose(it["cam2lidar"][c][:3, :3] @ p + it["cam2lidar"][c][:3, 3], want, atol=1e-6)
            np.testing.assert_allclose(it["cam_intrinsic"][c], cs["camera_intrinsic"], rtol=1e-6)
            assert ds.samples[i]["cams"][c] == sd["filename"]


def _canon(points, classes, closed):
    """Elements sorted by (class, rounded coordinates) for order-free comparison."""
    keys = [(int(c), bool(z), tuple(np.round(p, 2).ravel())) for p, c, z in zip(points, classes, closed)]
    order = sorted(range(len(keys)), key=lambda j: keys[j])
    return points[order], classes[order], closed[order]


def test_map_elements_match_devkit_explorer_reference(built):
    from nuscenes.map_expansion.map_api import NuScenesMap

    from models.nuscenes.map_reference import reference_elements

    root, out, nusc = built
    maps = {}
    n_elems = 0
    for ds in _datasets(out).values():
        m = ds.manifest
        for i in range(len(ds)):
            it, loc = ds[i], ds.samples[i]["location"]
            if loc not in maps:
                maps[loc] = NuScenesMap(str(root), loc)
            eq, et, cq, ct = _lidar_pose(nusc, it["token"])
            centre = (eq.rotate(ct) + et)[:2]
            yaw = (eq * cq).yaw_pitch_roll[0]
            ref = reference_elements(maps[loc].explorer, centre, yaw, m["patch_size"], m["map_classes"],
                                     m["map_points"])
            v = it["map_valid"]
            assert (v[:v.sum()]).all() and not v[v.sum():].any()  # filled slots come first
            got = _canon(it["map_points"][v], it["map_class"][v], it["map_closed"][v])
            want = _canon(ref.points, ref.classes, ref.closed)
            assert got[0].shape == want[0].shape, (i, it["map_class"][v], ref.classes)
            np.testing.assert_allclose(got[0], want[0], atol=1e-3)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[2], want[2])
            closed = it["map_points"][v][it["map_closed"][v]]
            assert np.array_equal(closed[:, 0], closed[:, -1])
            n_elems += int(v.sum())
    assert n_elems > 0


def test_map_classes_present_on_tiny(tiny_dataroot, tmp_path):
    """The hand-written town has all three classes, a closed crossing and a hole in the road."""
    out = build(tiny_dataroot, tmp_path / "cache")
    ds = GTCacheDataset(out, "val")
    cls = ds.arrays["map_class"][ds.arrays["map_valid"]]
    assert set(cls.tolist()) == {0, 1, 2}
    assert ds.arrays["map_closed"][ds.arrays["map_class"] == 1].all()  # crossings are closed rings
    hole = ds.arrays["map_closed"] & (ds.arrays["map_class"] == 2)  # the median island, fully in the patch
    assert hole.any()
    pts = ds.arrays["map_points"]
    assert (np.abs(pts[..., 0]) <= 15.0).all() and (np.abs(pts[..., 1]) <= 30.0).all()


def test_ego_status_hand_checked_values(tiny_dataroot, tmp_path):
    out = build(tiny_dataroot, tmp_path / "cache")
    tr, va = GTCacheDataset(out, "train"), GTCacheDataset(out, "val")
    # scene-a: x = 330 + 4 t + t^2 / 2 at t = 0, 0.5, ..., 3.5; heading east (LIDAR +y), lidar tilted 0.3 deg
    t = np.arange(8) * 0.5
    v_back = 4.0 + (t[1:] + t[:-1]) / 2  # backward difference = speed at the interval midpoint
    speed = np.concatenate([[v_back[0]], v_back])  # the first sample uses the forward pair
    st = tr.arrays["ego_status"]
    np.testing.assert_allclose(st[:, 0], speed, atol=1e-4)
    np.testing.assert_allclose(st[:, 1], 1.0, atol=1e-4)  # constant acceleration 1 m/s^2
    np.testing.assert_allclose(st[:, 2], 0.0, atol=1e-6)
    np.testing.assert_allclose(st[:, 3], 0.0, atol=1e-4)
    np.testing.assert_allclose(st[:, 4], speed, atol=2e-4)  # vy = forward, up to cos(0.3 deg)
    hist = tr.arrays["ego_history"][2]  # sample 2: one invalid step, then t = 0, 0.5, 1.0
    np.testing.assert_array_equal(tr.arrays["ego_history_valid"][2], [False, True, True, True])
    x = 330 + 4 * t + t ** 2 / 2
    np.testing.assert_allclose(hist[1:, 1], [-(x[2] - x[0]), -(x[2] - x[1]), 0.0], atol=1e-3)
    np.testing.assert_array_equal(hist[0], 0.0)
    np.testing.assert_array_equal(tr.arrays["command"], 2)  # straight: FORWARD
    # scene-b: constant yaw rate 0.1 rad/s on jittered timestamps; turning left
    np.testing.assert_allclose(va.arrays["ego_status"][:, 2], tiny.OMEGA_B, atol=1e-6)
    assert va.arrays["command"][0] == 1  # LEFT: the last waypoint is > 2 m to the left
    assert (va.arrays["future_waypoints"][0, :, 0] < 0).all()


def test_ego_status_function_on_exact_values():
    """Hand values: x = t^2 (a = 2) with dt 0.5 then 0.25; yaw 0, 0.1, 0.3; identity rotation to lidar."""
    t = np.array([0.0, 0.5, 0.75])
    pos = np.stack([t ** 2, np.zeros(3), np.zeros(3)], 1)
    yaw = np.array([0.0, 0.1, 0.3])
    out = ego_status_from_poses(pos, yaw, t, np.repeat(np.eye(3)[None], 3, 0))
    # v(0) = v(1) = 0.25/0.5 = 0.5; v(2) = (0.5625 - 0.25)/0.25 = 1.25
    np.testing.assert_allclose(out[:, 0], [0.5, 0.5, 1.25])
    # a = (1.25 - 0.5) / (0.75 / 2) = 2 for every sample (the first three frames)
    np.testing.assert_allclose(out[:, 1], [0.0, 0.0, 0.0])  # identity frame: lidar y is global y
    np.testing.assert_allclose(out[:, 2], [0.2, 0.2, 0.8])
    np.testing.assert_allclose(out[:, 3], [0.5, 0.5, 1.25])
    rot = np.repeat(np.array([[[0, -1, 0], [1, 0, 0], [0, 0, 1.0]]]), 3, 0)  # lidar y (forward) = global x
    np.testing.assert_allclose(ego_status_from_poses(pos, yaw, t, rot)[:, 1], [2.0, 2.0, 2.0])
    assert not ego_status_from_poses(pos[:1], yaw[:1], t[:1], rot[:1]).any()


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bytes_do_not_depend_on_worker_count(tmp_path):
    root = tiny.write_tiny_dataroot(tmp_path / "nuscenes", repeats=3)  # 3 train scenes: several chunks
    one = build(root, tmp_path / "w1", workers=1)
    two = build(root, tmp_path / "w2", workers=2)
    d1, d2 = _digest(one), _digest(two)
    assert d1 == d2
    manifest = (one / "manifest.json").read_text()
    assert str(tmp_path) in manifest  # the dataroot as given ...
    assert '"map_points": 20' in manifest and '"workers"' in manifest  # params (workers listed as omitted)
    assert "seconds" not in manifest and "host" not in manifest


def test_dataset_items_and_require(tiny_dataroot, tmp_path):
    out = build(tiny_dataroot, tmp_path / "cache")
    ds = GTCacheDataset(out, "train", load_images=True, cameras=["CAM_FRONT", "CAM_BACK"])
    assert len(ds) == 8
    it = ds[3]
    assert it["images"].shape == (2, tiny.IMAGE_WH[1], tiny.IMAGE_WH[0], 3) and it["images"].dtype == np.uint8
    assert it["cam2lidar"].shape == (2, 4, 4) and it["cam_intrinsic"].shape == (2, 3, 3)
    assert it["cam_paths"][1].endswith(".jpg") and "CAM_BACK" in it["cam_paths"][1]
    m = read_manifest(out)
    for name, (shape, dtype, _) in ARRAYS.items():
        assert ds.arrays[name].dtype == np.dtype(dtype), name
        assert len(ds.arrays[name].shape) == len(shape), name
        assert m["splits"]["train"]["shapes"][name] == list(ds.arrays[name].shape)
    assert m["splits"]["train"]["scenes"] == ["scene-a"] and m["splits"]["val"]["scenes"] == ["scene-b"]
    ds.require(future_steps=6, history_steps=4, map_classes=["divider", "ped_crossing", "boundary"],
               **{"data.version": VERSION})
    with pytest.raises(CacheMismatchError, match="future_steps: cache has 6, caller requires 8"):
        ds.require(future_steps=8)
    with pytest.raises(CacheMismatchError, match="history_steps"):
        ds.require(history_steps=2, future_steps=6)
    with pytest.raises(KeyError, match="split 'test' not cached"):
        GTCacheDataset(out, "test")
    # cam2lidar composes each camera's own ego pose with the lidar's (cameras fire 8 ms later)
    full = GTCacheDataset(out, "train")[3]
    lidar2global = full["ego2global"] @ full["lidar2ego"]
    np.testing.assert_allclose(full["cam2lidar"][0][:3, :3].T @ full["cam2lidar"][0][:3, :3], np.eye(3), atol=1e-9)
    assert not np.allclose(full["cam2lidar"][0], np.linalg.inv(full["lidar2ego"]) @ full["cam2ego"][0])
    assert np.isfinite(lidar2global).all()


def test_stage_cli_writes_cache_and_report(tiny_dataroot, tmp_path, capsys):
    from stages.gt_cache import main

    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  dataroot: {tiny_dataroot}\n  version: {VERSION}\n  splits:\n    - val\n"
                      f"cache:\n  workers: 1\n  future_steps: 4\n")
    assert main(["--params", str(params), "--out", str(tmp_path / "c"), "--metrics", str(tmp_path / "r.json"),
                 "--no-progress"]) == 0
    assert "val: 8 samples" in capsys.readouterr().out
    ds = GTCacheDataset(tmp_path / "c", "val")
    assert ds.arrays["future_waypoints"].shape == (8, 4, 3) and ds.arrays["agent_boxes"].shape[1] == 5
    assert (tmp_path / "r.json").is_file()
    params.write_text(params.read_text().replace("future_steps: 4", "future_steps: 0"))
    assert main(["--params", str(params), "--out", str(tmp_path / "c"), "--metrics", ""]) == 2
    assert "cache.future_steps" in capsys.readouterr().err
