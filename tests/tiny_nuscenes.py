"""A hand-written two-scene nuScenes dataroot for GT-cache tests (not a world generator).

One boston-seaport town with a straight 4-lane road (two median islands = holes), a north branch, a turn lane
sticking out of the road, overlapping crossings and dense divider lines; scene ``scene-a`` (train) drives east
with constant acceleration at exact 0.5 s steps, ``scene-b`` (val) drives west on a constant-yaw-rate arc with
jittered timestamps. Three annotated agents each. Values are chosen so tests can check them by hand.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

CAMS = {  # channel -> (yaw deg in ego, translation)
    "CAM_FRONT": (0.0, [1.70, 0.0, 1.51]),
    "CAM_FRONT_RIGHT": (-55.0, [1.55, -0.49, 1.50]),
    "CAM_FRONT_LEFT": (55.0, [1.52, 0.49, 1.51]),
    "CAM_BACK": (180.0, [0.03, 0.0, 1.57]),
    "CAM_BACK_LEFT": (110.0, [1.04, 0.48, 1.56]),
    "CAM_BACK_RIGHT": (-110.0, [1.04, -0.48, 1.56]),
}
LIDAR_ROT = None  # set below: yaw -90 deg with a 0.3 deg tilt, like a real mount
IMAGE_WH = (16, 9)
DT_A = [0.5] * 7
DT_B = [0.5, 0.45, 0.55, 0.5, 0.48, 0.52, 0.5]
ACCEL_A, V0_A, X0_A, Y_A = 1.0, 4.0, 330.0, 997.5
OMEGA_B, V_B, START_B = 0.1, 5.0, (650.0, 1007.5)


def quat_z(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def quat_mul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return [w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2]


LIDAR_ROT = quat_mul(quat_z(-np.pi / 2), [float(np.cos(0.0026)), float(np.sin(0.0026)), 0.0, 0.0])
CAM_BASE = [0.5, -0.5, 0.5, -0.5]  # ego <- camera for a forward-looking camera


def trajectory_a() -> np.ndarray:
    """(8, 4) [t, x, y, yaw]: straight east, x = x0 + v0 t + a t^2 / 2."""
    t = np.concatenate([[0.0], np.cumsum(DT_A)])
    return np.stack([t, X0_A + V0_A * t + 0.5 * ACCEL_A * t ** 2, np.full_like(t, Y_A), np.zeros_like(t)], 1)


def trajectory_b() -> np.ndarray:
    """(8, 4): west-bound arc with yaw = pi + omega t at speed v (radius v / omega, turning left)."""
    t = np.concatenate([[0.0], np.cumsum(DT_B)])
    yaw = np.pi + OMEGA_B * t
    r = V_B / OMEGA_B
    x = START_B[0] + r * (np.sin(yaw) - np.sin(np.pi))
    y = START_B[1] - r * (np.cos(yaw) - np.cos(np.pi))
    return np.stack([t, x, y, yaw], 1)


def _interp_pose(traj: np.ndarray, t: float) -> tuple[float, float, float]:
    return (float(np.interp(t, traj[:, 0], traj[:, 1])), float(np.interp(t, traj[:, 0], traj[:, 2])),
            float(np.interp(t, traj[:, 0], traj[:, 3])))


AGENTS = {  # scene -> [(category, size wlh, f(t) -> (x, y, z, yaw))]
    "scene-a": [
        ("vehicle.car", [1.9, 4.5, 1.6], lambda t: (348.0 + 5.0 * t, 997.5, 0.8, 0.0)),
        ("human.pedestrian.adult", [0.6, 0.7, 1.8], lambda t: (522.0, 992.0 + 1.2 * t, 0.9, np.pi / 2)),
        ("movable_object.barrier", [2.0, 0.4, 1.0], lambda t: (352.0, 1009.0, 0.5, 0.3)),
    ],
    "scene-b": [
        ("vehicle.truck", [2.5, 8.0, 3.0], lambda t: (630.0 - 6.0 * t, 1002.5, 1.5, np.pi)),
        ("human.pedestrian.adult", [0.6, 0.7, 1.8], lambda t: (523.0, 1008.0 - t, 0.9, -np.pi / 2)),
        ("vehicle.bicycle", [0.7, 1.8, 1.2], lambda t: (640.0 - 3.0 * t, 1009.0, 0.6, np.pi + 0.05)),
    ],
}


def _tok(rng) -> str:
    return uuid.UUID(int=int(rng.integers(0, 2 ** 63)) << 64 | int(rng.integers(0, 2 ** 63))).hex


def _map_expansion(rng, location: str) -> dict:
    nodes, lines, polys = [], [], []

    def node(x, y):
        t = str(uuid.UUID(int=int(rng.integers(0, 2 ** 62))))
        nodes.append({"token": t, "x": float(x), "y": float(y)})
        return t

    def polygon(ext, holes=()):
        t = str(uuid.UUID(int=int(rng.integers(0, 2 ** 62))))
        polys.append({"token": t, "exterior_node_tokens": [node(*p) for p in ext],
                      "holes": [{"node_tokens": [node(*p) for p in h]} for h in holes]})
        return t

    def line(x0, y0, x1, y1):
        n = int(np.hypot(x1 - x0, y1 - y0)) + 1  # 1 m nodes
        t = str(uuid.UUID(int=int(rng.integers(0, 2 ** 62))))
        lines.append({"token": t, "node_tokens": [node(x, y) for x, y in zip(np.linspace(x0, x1, n),
                                                                            np.linspace(y0, y1, n))]})
        return t

    def rect(x0, y0, x1, y1):
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    def rec(**kw):
        return {"token": str(uuid.UUID(int=int(rng.integers(0, 2 ** 62)))), **kw}

    # The branch's corners are also nodes of the main road (adjacent polygons share nodes, as in real maps).
    main = polygon([(300, 990), (700, 990), (700, 1010), (500, 1010), (480, 1010), (300, 1010)],
                   holes=[rect(560, 999, 600, 1001), rect(624, 999, 632, 1001)])
    branch = polygon(rect(480, 1010, 500, 1100))
    road_segment = [rec(polygon_token=main, is_intersection=False, drivable_area_token=""),
                    rec(polygon_token=branch, is_intersection=False, drivable_area_token="")]
    lane = [rec(polygon_token=polygon(rect(300, y0, 700, y1)), lane_type="CAR", from_edge_line_token="",
                to_edge_line_token="", left_lane_divider_segments=[], right_lane_divider_segments=[])
            for y0, y1 in ((990, 995), (995, 999), (1001, 1005), (1005, 1010))]  # islands stay holes
    lane.append(rec(polygon_token=polygon(rect(400, 985, 450, 990.5)), lane_type="CAR", from_edge_line_token="",
                    to_edge_line_token="", left_lane_divider_segments=[], right_lane_divider_segments=[]))
    ped = [rec(polygon_token=polygon(rect(520, 990, 524, 1010)), road_segment_token=""),
           rec(polygon_token=polygon(rect(522, 990, 526, 1010)), road_segment_token=""),
           rec(polygon_token=polygon(rect(480, 1030, 500, 1034)), road_segment_token=""),
           rec(polygon_token=polygon(rect(640, 990, 644, 1010)), road_segment_token="")]
    road_divider = [rec(line_token=line(300, 1000, 560, 1000), road_segment_token="")]
    lane_divider = [rec(line_token=line(300, y, 700, y), lane_divider_segments=[]) for y in (995, 1005)]
    lane_divider.append(rec(line_token=line(490, 1010, 490, 1100), lane_divider_segments=[]))
    drivable = [rec(polygon_tokens=[main, branch])]
    arcs = {r["token"]: [{"start_pose": [300.0, 992.5, 0.0], "end_pose": [700.0, 992.5, 0.0], "shape": "LSL",
                          "radius": 999.0, "segment_length": [0.0, 400.0, 0.0]}] for r in lane}
    return {
        "version": "1.3", "canvas_edge": [2979.5, 2118.1],
        "polygon": polys, "line": lines, "node": nodes, "drivable_area": drivable, "road_segment": road_segment,
        "road_block": [], "lane": lane, "ped_crossing": ped, "walkway": [], "stop_line": [], "carpark_area": [],
        "road_divider": road_divider, "lane_divider": lane_divider, "traffic_light": [], "lane_connector": [],
        "arcline_path_3": arcs, "connectivity": {r["token"]: {"incoming": [], "outgoing": []} for r in lane},
    }


def write_tiny_dataroot(root: str | Path, version: str = "v1.0-synth", seed: int = 0, repeats: int = 1) -> Path:
    """Write the dataroot under ``root`` and return it. ``repeats`` > 1 adds copies of scene-a to train
    (``scene-a1``...), each shifted 40 m east, so a multi-worker build has several chunks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    tdir = root / version
    tdir.mkdir(parents=True, exist_ok=True)
    location = "boston-seaport"
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "expansion" / f"{location}.json").write_text(json.dumps(_map_expansion(rng, location)))
    map_token = _tok(rng)
    Image.new("L", (4, 4), 255).save(root / "maps" / f"{map_token}.png")

    T = {name: [] for name in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                               "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
    cats = {}
    for name in ("vehicle.car", "vehicle.truck", "vehicle.bicycle", "human.pedestrian.adult",
                 "movable_object.barrier"):
        cats[name] = _tok(rng)
        T["category"].append({"token": cats[name], "name": name, "description": name})
    attr = _tok(rng)
    T["attribute"].append({"token": attr, "name": "vehicle.moving", "description": ""})
    T["visibility"] = [{"token": str(i), "level": lv, "description": ""}
                       for i, lv in enumerate(["v0-40", "v40-60", "v60-80", "v80-100"], 1)]
    cs = {}
    for ch in list(CAMS) + ["LIDAR_TOP"]:
        st = _tok(rng)
        T["sensor"].append({"token": st, "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"})
        cs[ch] = _tok(rng)
        if ch == "LIDAR_TOP":
            T["calibrated_sensor"].append({"token": cs[ch], "sensor_token": st, "translation": [0.943713, 0.0, 1.84023],
                                           "rotation": LIDAR_ROT, "camera_intrinsic": []})
        else:
            yaw, tr = CAMS[ch]
            T["calibrated_sensor"].append({
                "token": cs[ch], "sensor_token": st, "translation": tr,
                "rotation": quat_mul(quat_z(np.deg2rad(yaw)), CAM_BASE),
                "camera_intrinsic": [[10.0, 0.0, 8.0], [0.0, 10.0, 4.5], [0.0, 0.0, 1.0]]})
    splits = {"synth_train": [], "synth_val": []}
    t0 = 1533151603547590
    scenes = [("scene-a", trajectory_a(), 0.0, "synth_train"), ("scene-b", trajectory_b(), 0.0, "synth_val")]
    scenes += [(f"scene-a{r}", trajectory_a(), 40.0 * r, "synth_train") for r in range(1, repeats)]
    for si, (scene_name, traj, shift, split) in enumerate(scenes):
        traj = traj + np.array([0.0, shift, 0.0, 0.0])
        agents = [(c, s, (lambda f, d: lambda t: (f(t)[0] + d,) + tuple(f(t)[1:]))(f, shift))
                  for c, s, f in AGENTS[scene_name[:7]]]
        splits[split].append(scene_name)
        log_tok, scene_tok = _tok(rng), _tok(rng)
        T["log"].append({"token": log_tok, "logfile": f"log-{si}", "vehicle": "n015", "date_captured": "2018-08-01",
                         "location": location})
        stoks = [_tok(rng) for _ in traj]
        base = t0 + si * 100_000_000
        ts = [base + int(round(t * 1e6)) for t in traj[:, 0]]
        for i, st in enumerate(stoks):
            T["sample"].append({"token": st, "timestamp": ts[i], "scene_token": scene_tok,
                                "prev": stoks[i - 1] if i else "", "next": stoks[i + 1] if i + 1 < len(stoks) else ""})
        T["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": len(stoks),
                           "first_sample_token": stoks[0], "last_sample_token": stoks[-1], "name": scene_name,
                           "description": "tiny"})
        for ci, ch in enumerate(["LIDAR_TOP"] + list(CAMS)):
            sd_toks = [_tok(rng) for _ in stoks]
            folder = root / "samples" / ch
            folder.mkdir(parents=True, exist_ok=True)
            for i, st in enumerate(stoks):
                sd_ts = ts[i] + ci * 8000  # cameras fire a few ms after the lidar key frame
                x, y, yaw = _interp_pose(traj, (sd_ts - base) * 1e-6)
                ext = "pcd.bin" if ch == "LIDAR_TOP" else "jpg"
                fname = f"samples/{ch}/n015-{scene_name}__{ch}__{sd_ts}.{ext}"
                if ch == "LIDAR_TOP":
                    rng.standard_normal((10, 5)).astype(np.float32).tofile(root / fname)
                else:
                    Image.new("RGB", IMAGE_WH, (ci * 30, i * 20, si * 100)).save(root / fname, quality=90)
                T["ego_pose"].append({"token": sd_toks[i], "timestamp": sd_ts, "rotation": quat_z(yaw),
                                      "translation": [x, y, 0.0]})
                T["sample_data"].append({
                    "token": sd_toks[i], "sample_token": st, "ego_pose_token": sd_toks[i],
                    "calibrated_sensor_token": cs[ch], "timestamp": sd_ts,
                    "fileformat": "pcd" if ch == "LIDAR_TOP" else "jpg", "is_key_frame": True,
                    "height": 0 if ch == "LIDAR_TOP" else IMAGE_WH[1], "width": 0 if ch == "LIDAR_TOP" else IMAGE_WH[0],
                    "filename": fname, "prev": sd_toks[i - 1] if i else "",
                    "next": sd_toks[i + 1] if i + 1 < len(sd_toks) else ""})
        for cat, size, f in agents:
            inst = _tok(rng)
            atoks = [_tok(rng) for _ in stoks]
            T["instance"].append({"token": inst, "category_token": cats[cat], "nbr_annotations": len(atoks),
                                  "first_annotation_token": atoks[0], "last_annotation_token": atoks[-1]})
            for i, st in enumerate(stoks):
                x, y, z, yaw = f(traj[i, 0])
                T["sample_annotation"].append({
                    "token": atoks[i], "sample_token": st, "instance_token": inst, "visibility_token": "4",
                    "attribute_tokens": [attr] if cat.startswith("vehicle") else [],
                    "translation": [x, y, z], "size": size, "rotation": quat_z(yaw),
                    "prev": atoks[i - 1] if i else "", "next": atoks[i + 1] if i + 1 < len(atoks) else "",
                    "num_lidar_pts": 20, "num_radar_pts": 0})
    T["map"].append({"token": map_token, "log_tokens": [r["token"] for r in T["log"]], "category": "semantic_prior",
                     "filename": f"maps/{map_token}.png"})
    for name, recs in T.items():
        (tdir / f"{name}.json").write_text(json.dumps(recs, indent=1))
    (tdir / "splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="session")
def tiny_dataroot(tmp_path_factory):
    """Session-wide hand-written dataroot (import this fixture into a test module to use it)."""
    return write_tiny_dataroot(tmp_path_factory.mktemp("tiny") / "nuscenes")
