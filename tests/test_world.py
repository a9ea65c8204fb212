"""The synthetic world: devkit compatibility, table fidelity, geometric truth and determinism."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import shapely
from PIL import Image
from pyquaternion import Quaternion
from shapely.geometry import LineString

from models.world.generate import VERSION, generate_world
from tests.conftest import tiny_synth_params

matplotlib.use("Agg")

CHANNELS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
            "LIDAR_TOP"]

# Field sets of real nuScenes v1.0 tables (the devkit adds more at load time; those must not be written).
REAL_FIELDS = {
    "category": {"token", "name", "description", "index"},
    "attribute": {"token", "name", "description"},
    "visibility": {"token", "level", "description"},
    "sensor": {"token", "channel", "modality"},
    "calibrated_sensor": {"token", "sensor_token", "translation", "rotation", "camera_intrinsic"},
    "ego_pose": {"token", "timestamp", "rotation", "translation"},
    "log": {"token", "logfile", "vehicle", "date_captured", "location"},
    "scene": {"token", "log_token", "nbr_samples", "first_sample_token", "last_sample_token", "name", "description"},
    "sample": {"token", "timestamp", "prev", "next", "scene_token"},
    "sample_data": {"token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "timestamp", "fileformat",
                    "is_key_frame", "height", "width", "filename", "prev", "next"},
    "sample_annotation": {"token", "sample_token", "instance_token", "visibility_token", "attribute_tokens",
                          "translation", "size", "rotation", "prev", "next", "num_lidar_pts", "num_radar_pts"},
    "instance": {"token", "category_token", "nbr_annotations", "first_annotation_token", "last_annotation_token"},
    "map": {"token", "log_tokens", "category", "filename"},
}


@pytest.fixture(scope="module")
def nusc(synth_dataroot):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(VERSION, str(synth_dataroot), verbose=False)


def test_tables_have_every_real_field(synth_dataroot):
    for table, fields in REAL_FIELDS.items():
        records = json.loads((synth_dataroot / VERSION / f"{table}.json").read_text())
        assert records, table
        for rec in records:
            assert set(rec) == fields, (table, set(rec) ^ fields)


def test_devkit_core_api(nusc, synth_dataroot):
    from nuscenes.eval.common.utils import quaternion_yaw
    from nuscenes.prediction import PredictHelper
    from nuscenes.utils.data_classes import LidarPointCloud

    sample = nusc.sample[len(nusc.sample) // 2]
    for ch in CHANNELS:
        path, boxes, K = nusc.get_sample_data(sample["data"][ch])
        assert Path(path).is_file()
        if ch == "LIDAR_TOP":
            assert K is None
            pc = LidarPointCloud.from_file(path)
            assert pc.points.shape[0] == 4 and pc.points.shape[1] > 1000
        else:
            assert K.shape == (3, 3)
            assert Image.open(path).size == (96, 54)
    _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"], use_flat_vehicle_coordinates=True)
    assert len(boxes) > 0
    # a CAM_FRONT sweep (non-key frame) interpolates boxes between samples
    sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    sweep = nusc.get("sample_data", sd["prev"])
    assert not sweep["is_key_frame"] and sweep["filename"].startswith("sweeps/CAM_FRONT/")
    nusc.get_sample_data(sweep["token"])
    ann = nusc.get("sample_annotation", sample["anns"][0])
    assert np.all(np.isfinite(nusc.box_velocity(ann["token"])[:2])) or ann["prev"] == ann["next"] == ""
    assert quaternion_yaw(Quaternion(ann["rotation"])) == pytest.approx(
        Quaternion(ann["rotation"]).yaw_pitch_roll[0])
    nusc.list_scenes()
    nusc.list_sample(sample["token"])
    helper = PredictHelper(nusc)
    inst_ann = next(a for a in nusc.sample_annotation if a["next"])
    fut = helper.get_future_for_agent(inst_ann["instance_token"], inst_ann["sample_token"], 2.0, in_agent_frame=True)
    assert fut.shape[1] == 2 and len(fut) >= 1


def test_devkit_rendering(nusc, tmp_path):
    sample = nusc.sample[3]
    nusc.render_sample_data(sample["data"]["CAM_FRONT"], out_path=str(tmp_path / "cam.png"), verbose=False)
    nusc.render_sample_data(sample["data"]["LIDAR_TOP"], out_path=str(tmp_path / "lidar.png"), verbose=False)
    nusc.render_pointcloud_in_image(sample["token"], out_path=str(tmp_path / "pc.png"), verbose=False)
    for name in ("cam.png", "lidar.png", "pc.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_devkit_map_api(nusc, synth_dataroot):
    from nuscenes.map_expansion import arcline_path_utils
    from nuscenes.map_expansion.map_api import NuScenesMap

    for log in nusc.log:
        nmap = NuScenesMap(str(synth_dataroot), log["location"])
        scene = next(s for s in nusc.scene if s["log_token"] == log["token"])
        sample = nusc.get("sample", scene["first_sample_token"])
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        x, y = pose["translation"][:2]
        layers = nmap.layers_on_point(x, y)
        assert layers["drivable_area"] and layers["road_segment"] and layers["lane"], layers
        patch = (x - 30, y - 30, x + 30, y + 30)
        recs = nmap.get_records_in_patch(patch, ["lane", "road_divider", "lane_divider", "road_segment"], "intersect")
        assert recs["lane"] and recs["road_divider"] and recs["lane_divider"]
        box = (x, y, 60, 30)
        assert len(nmap.explorer._get_layer_line(box, 30.0, "lane_divider")) > 0
        assert len(nmap.explorer._get_layer_polygon(box, 30.0, "road_segment")) > 0
        assert len(nmap.explorer._get_layer_polygon(box, 30.0, "drivable_area")) > 0
        mask = nmap.get_map_mask(box, 30.0, ["drivable_area", "ped_crossing", "walkway"], (120, 60))
        assert mask.shape == (3, 120, 60) and mask[0].sum() > 0
        lane = nmap.get_closest_lane(x, y, radius=2.0)
        assert lane
        poses = arcline_path_utils.discretize_lane(nmap.get_arcline_path(lane), 0.5)
        d = np.min(np.linalg.norm(np.array(poses)[:, :2] - [x, y], axis=1))
        assert d < 0.3  # the ego drives on the lane centre line
        assert len(nmap.discretize_centerlines(1.0)) == len(nmap.lane) + len(nmap.lane_connector)
        assert nmap.get_outgoing_lane_ids(lane)
        # the semantic prior raster agrees with the map expansion at the ego position
        assert nusc.get("map", log["map_token"])["mask"].is_on_mask(x, y)[0]


def test_map_centrelines_match_arclines(synth_dataroot):
    """Our lane centre lines equal the devkit's discretisation of the arcline records we wrote."""
    from nuscenes.map_expansion import arcline_path_utils

    from models.world.map_expansion import town_to_map_json
    from models.world.town import build_town

    params = tiny_synth_params()
    town = build_town(params.locations[0], params, np.random.default_rng([params.seed, 7919, 0]))
    m = town_to_map_json(town)
    tokens = [r["token"] for r in m["lane"]] + [r["token"] for r in m["lane_connector"]]
    assert len(tokens) == len(town.paths) == len(m["arcline_path_3"]) == len(m["connectivity"])
    for path, arc in zip(town.paths, m["arcline_path_3"].values()):
        devkit_line = LineString(np.array(arcline_path_utils.discretize(arc[0], 0.25))[:, :2])
        d = shapely.distance(shapely.points(path.points), devkit_line)
        assert d.max() < 0.01, d.max()


def test_splits_are_scene_level(synth_dataroot):
    splits = json.loads((synth_dataroot / VERSION / "splits.json").read_text())
    scenes = {s["name"] for s in json.loads((synth_dataroot / VERSION / "scene.json").read_text())}
    train, val = set(splits["synth_train"]), set(splits["synth_val"])
    assert train and val and not train & val and train | val == scenes


def test_val_start_keeps_each_scene_whatever_the_world_size(synth_dataroot, tmp_path):
    """A smaller world with its val split moved to the front: scene k's tables and images are the same bytes
    as in the fixture's world, so a bigger world with ``val_start`` is scored on the default's val scenes."""
    root = tmp_path / "nuscenes"
    generate_world(tiny_synth_params(num_scenes=2, val_start=0), root, progress=False)
    splits = json.loads((root / VERSION / "splits.json").read_text())
    assert splits == {"synth_train": ["synth-0001"], "synth_val": ["synth-0000"]}

    def scene_records(dataroot, name):
        tables = {t: json.loads((dataroot / VERSION / f"{t}.json").read_text()) for t in ("scene", "sample")}
        scene = next(s for s in tables["scene"] if s["name"] == name)
        samples = [s for s in tables["sample"] if s["scene_token"] == scene["token"]]
        return scene, samples

    for name in ("synth-0000", "synth-0001"):
        scene, samples = scene_records(root, name)
        assert (scene, samples) == scene_records(synth_dataroot, name)
    first = sorted((root / "samples" / "CAM_FRONT").glob("*.jpg"))
    assert first
    for image in first:
        assert image.read_bytes() == (synth_dataroot / "samples" / "CAM_FRONT" / image.name).read_bytes()


def _world_points_to_image(nusc, sd_token, pts_world):
    """Project world points into a camera using only the devkit's tables (independent of the renderer)."""
    sd = nusc.get("sample_data", sd_token)
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    p = pts_world - np.array(pose["translation"])
    p = p @ Quaternion(pose["rotation"]).rotation_matrix  # global -> ego
    p = p - np.array(cs["translation"])
    p = p @ Quaternion(cs["rotation"]).rotation_matrix  # ego -> camera
    K = np.array(cs["camera_intrinsic"])
    uv = p[:, :2] / p[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, p[:, 2]


def _sample_pixels(nusc, token, img, pts_xy, store):
    h, w = img.shape
    world = np.concatenate([pts_xy, np.zeros((len(pts_xy), 1))], 1)
    uv, z = _world_points_to_image(nusc, token, world)
    ok = (z > 2) & (z < 14) & (uv[:, 0] > 1) & (uv[:, 0] < w - 2) & (uv[:, 1] > 1) & (uv[:, 1] < h - 2)
    store += [img[int(round(v)), int(round(u))] for u, v in uv[ok]]


def test_markings_are_where_the_calibration_says(nusc, synth_dataroot):
    """Zebra bars project onto bright pixels; plain asphalt on the lanes next to the crossing is dark."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    bright, dark = [], []
    for log in nusc.log:
        nmap = NuScenesMap(str(synth_dataroot), log["location"])
        crossings = [nmap.extract_polygon(c["polygon_token"]) for c in nmap.ped_crossing]
        samples = [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["log_token"] == log["token"]]
        for sample in samples:
            token = sample["data"]["CAM_FRONT"]
            img = np.asarray(Image.open(nusc.get_sample_data_path(token)).convert("L"), float)
            for poly in crossings:
                x0, y0, x1, y1 = poly.bounds
                along = np.array([1.0, 0.0]) if (x1 - x0) < (y1 - y0) else np.array([0.0, 1.0])  # road direction
                across = along[::-1]
                c = np.array(poly.centroid.coords[0])
                bars = np.arange(-7.0 + 0.6, 7.0 - 0.3, 1.2)  # bar centres across the road (ground.py)
                _sample_pixels(nusc, token, img, c + bars[:, None] * across, bright)
                lanes = np.array([-5.25, -1.75 + 0.6, 1.75 - 0.6, 5.25])  # lane centres, off the divider paint
                for sgn in (-1.0, 1.0):
                    _sample_pixels(nusc, token, img, c + sgn * 8.0 * along + lanes[:, None] * across, dark)
    assert len(bright) >= 5 and len(dark) >= 5, (len(bright), len(dark))
    assert np.median(bright) > np.median(dark) + 60, (np.median(bright), np.median(dark))


def test_boxes_land_on_their_pixels(nusc, synth_dataroot):
    """An annotated box's centre, projected with the tables' calibration, hits that box in the depth truth."""
    checked = 0
    for scene in nusc.scene:
        truth = np.load(synth_dataroot / "extras" / f"{scene['name']}.npz")
        depth = truth["keyframe_depth"].astype(np.float32)  # (S, 6, H, W)
        tok, i = scene["first_sample_token"], 0
        while tok:
            sample = nusc.get("sample", tok)
            sd_token = sample["data"]["CAM_FRONT"]
            _, boxes, K = nusc.get_sample_data(sd_token)
            h, w = depth.shape[2:]
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                z = box.center[2]
                u = K[0, 0] * box.center[0] / z + K[0, 2]
                v = K[1, 1] * box.center[1] / z + K[1, 2]
                if ann["visibility_token"] != "4" or not (3 < z < 40) or not (0 <= u < w - 1 and 0 <= v < h - 1):
                    continue
                d = depth[i, 0, int(round(v)), int(round(u))]
                # the visible surface is in front of the centre by at most half the box diagonal
                assert z - 0.5 * np.linalg.norm(box.wlh[:2]) - 0.2 <= d <= z + 0.2, (ann["token"], d, z)
                checked += 1
            tok, i = sample["next"], i + 1
    assert checked >= 3


def test_exact_tracks_follow_the_ground(nusc, synth_dataroot):
    """Ground query points, back-projected with the tables' poses, re-project onto their exact tracks."""
    manifest = json.loads((synth_dataroot / "extras" / "manifest.json").read_text())
    assert manifest["track_convention"].startswith("pixel (x=u=column")
    scene = nusc.scene[0]
    extra = manifest["scenes"][scene["name"]]
    truth = np.load(synth_dataroot / extra["file"])
    uv, vis, obj = truth["track_uv"], truth["track_visible"], truth["track_object"]  # (S, T, Q, 2), (S, T, Q), (S, Q)
    seeds = truth["track_query_frame"]
    assert uv.shape[:3] == vis.shape and uv.shape[1] == manifest["track_horizon"]
    compared = 0
    for s, f in enumerate(seeds):
        sd0 = nusc.get("sample_data", extra["sweep_tokens"][f])
        ground = np.flatnonzero(obj[s] == -1)
        # back-project the query pixels onto z = 0 with the devkit's pose and calibration
        pose = nusc.get("ego_pose", sd0["ego_pose_token"])
        cs = nusc.get("calibrated_sensor", sd0["calibrated_sensor_token"])
        K = np.array(cs["camera_intrinsic"])
        q = uv[s, 0, ground]
        rays = np.stack([(q[:, 0] - K[0, 2]) / K[0, 0], (q[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(q))], 1)
        R_ce = Quaternion(cs["rotation"]).rotation_matrix
        R_eg = Quaternion(pose["rotation"]).rotation_matrix
        origin = R_eg @ np.array(cs["translation"]) + np.array(pose["translation"])
        dirs = rays @ (R_eg @ R_ce).T
        t = -origin[2] / dirs[:, 2]
        world = origin + t[:, None] * dirs
        for h in range(1, uv.shape[1]):
            proj, z = _world_points_to_image(nusc, extra["sweep_tokens"][f + h], world)
            ok = vis[s, h, ground]
            if ok.any():
                err = np.linalg.norm(proj[ok] - uv[s, h, ground][ok], axis=1)
                assert err.max() < 0.05, err.max()
                compared += int(ok.sum())
    assert compared > 20


def test_same_params_same_bytes(tmp_path):
    params = tiny_synth_params(num_scenes=2, scene_seconds=4.0, locations=["singapore-queenstown"], workers=2)

    def digest(root: Path) -> dict:
        return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    generate_world(params, tmp_path / "a", progress=False)
    generate_world(params.__class__(**{**params.__dict__, "workers": 1}), tmp_path / "b", progress=False)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and len(a) > 50
    generate_world(params.__class__(**{**params.__dict__, "seed": 1}), tmp_path / "c", progress=False)
    assert digest(tmp_path / "c") != a


def test_world_rewards_vision():
    """Constant-velocity extrapolation of the ego is clearly wrong in the default-like world."""
    from models.world.town import build_town
    from models.world.traffic import SIM_HZ, simulate_scene

    params = tiny_synth_params()
    town = build_town("boston-seaport", params, np.random.default_rng(0))
    errors, stops, turns = [], 0, 0
    for k in range(6):
        ego, agents = simulate_scene(town, params, np.random.default_rng([3, k]), 20.0)
        step = int(SIM_HZ / 2)
        xy = ego.xy[::step]
        for i in range(1, len(xy) - 6):
            errors.append(np.linalg.norm(xy[i] + 6 * (xy[i] - xy[i - 1]) - xy[i + 6]))
        stops += bool(ego.speed[5:].min() < 0.5)
        turns += bool(abs(ego.yaw[-1] - ego.yaw[0]) > np.pi / 4)
        # no agent drives through the ego
        for a in agents:
            assert np.min(np.linalg.norm(a.xy - ego.xy, axis=1)) > 0.5
    assert np.mean(errors) > 1.0
    assert stops + turns >= 2
