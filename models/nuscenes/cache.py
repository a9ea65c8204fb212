"""Build the per-split ground-truth cache from any nuScenes dataroot through nuscenes-devkit 1.2.0.

Layout written into ``out_dir`` (the stage wraps it in ``atomic_dir``)::

    manifest.json                 params, dataroot/version, splits (scene names, counts), array schema, classes,
                                  frame conventions
    <split>/arrays.safetensors    numeric arrays, leading dim S (see ARRAYS)
    <split>/samples.json          {"samples": [per-sample metadata in array order], "instance_tokens": [...]}

Work is done per scene: every scene's samples are gathered through the devkit (``NuScenes.get``), and all
transforms, finite differences, box warps and the padding are batched numpy over the scene. Map elements come
from :class:`map_gt.LocationMap` (pre-indexed once per location). Scenes are processed in chunks by a fork
``multiprocessing`` pool (workers inherit the loaded tables copy-on-write) and reassembled in split order, so
the bytes do not depend on ``cache.workers``.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from . import validate as V
from .geometry import invert_transform, make_transform, wrap_angle, yaw_of
from .map_gt import LocationMap
from .splits import resolve_splits

FORMAT = "nuscenes-gt-cache/1"
CAMERAS = V.CAMERAS
AGENT_CLASSES = ("vehicle", "pedestrian", "other")
AGENT_CLASS_RULE = {"vehicle": "category_name starts with 'vehicle.'",
                    "pedestrian": "category_name starts with 'human.pedestrian.'",
                    "other": "every other category (movable_object.*, static_object.*, animal)"}
COMMANDS = ("RIGHT", "LEFT", "FORWARD")
# cache keys that change how the cache is built, not its content: left out of the manifest so the output bytes
# (and downstream DVC stages) do not change with them
EXECUTION_ONLY = ("workers", "check_files")
COMMAND_THRESHOLD_M = 2.0
ROUTE_FILE = "ego_route.json"  # <dataroot>/<version>/ego_route.json, written by models.world.generate
ROUTE_FORMAT = "ego-route/1"
ROUTE_SOURCES = {
    "world_route": "the dataroot's ego_route.json (the planned route each scene's ego follows, geometry only): "
                   "route_points at cache.route_distances along it from the current LIDAR_TOP origin projected onto "
                   "it (monotonically along the scene); route_command from the route point at "
                   "cache.route_command_distance (lateral x >= 2 m RIGHT, <= -2 m LEFT, else FORWARD)",
    "gt_future_rule": "no route file (real nuScenes): route_command is the UniAD / ST-P3 command, computed from the "
                      "GT future (the last valid future waypoint's lateral x >= 2 m RIGHT, <= -2 m LEFT, else "
                      "FORWARD: UniAD trajectory_api.py get_sdc_planning_label, ST-P3 NuscenesData.py "
                      "get_gt_trajectory), the same as `command` and a leak as it is there; route_points are zeros "
                      "with route_valid false",
}

# name -> (symbolic shape, dtype, meaning). H history, F future, A agents, M map elements, P points.
ARRAYS = {
    "cam_intrinsic": (("S", 6, 3, 3), "float32", "camera matrix K per camera (order: cameras)"),
    "cam2ego": (("S", 6, 4, 4), "float64", "camera -> ego (calibrated_sensor) per camera"),
    "cam2lidar": (("S", 6, 4, 4), "float64", "camera -> current LIDAR_TOP via each camera's own ego pose: "
                                             "inv(lidar2ego) inv(ego2global_lidar) ego2global_cam cam2ego"),
    "ego2global": (("S", 4, 4), "float64", "ego -> global at the LIDAR_TOP key frame (its ego_pose)"),
    "lidar2ego": (("S", 4, 4), "float64", "LIDAR_TOP -> ego (calibrated_sensor)"),
    "ego_history": (("S", "H", 3), "float32", "past LIDAR_TOP origins (x, y, yaw) in the current LIDAR frame, "
                                               "oldest first; the last is the current (0, 0, 0); 0 where invalid"),
    "ego_history_valid": (("S", "H"), "bool", "history step exists (false before the scene start)"),
    "ego_status": (("S", 5), "float32", "[speed m/s, longitudinal acceleration m/s^2, yaw rate rad/s, vx, vy] "
                                        "of the LIDAR_TOP origin in the current LIDAR frame, from ego-pose "
                                        "finite differences (no CAN bus), see frames.ego_status"),
    "future_waypoints": (("S", "F", 3), "float32", "future LIDAR_TOP origins (x, y, yaw) at the next F key frames "
                                                    "(sample.next) in the current LIDAR frame; 0 where invalid"),
    "future_valid": (("S", "F"), "bool", "future key frame exists in the scene"),
    "command": (("S",), "int8", "0 RIGHT, 1 LEFT, 2 FORWARD from the last valid waypoint's x (>= 2 m right, "
                                "<= -2 m left; FORWARD without future): DERIVED FROM GT (a leak)"),
    "route_points": (("S", "R", 2), "float32", "points of the ego's planned route at cache.route_distances ahead "
                                                "along it, (x, y) in the current LIDAR frame; 0 where invalid "
                                                "(see manifest route_source)"),
    "route_valid": (("S", "R"), "bool", "route point exists (the route reaches that far; false without a route)"),
    "route_command": (("S",), "int8", "0 RIGHT, 1 LEFT, 2 FORWARD: the honest route command (manifest "
                                      "route_source says from what)"),
    "agent_boxes": (("S", "F+1", "A", 7), "float32", "annotated boxes [x, y, z, w, l, h, yaw] in the current "
                                                      "LIDAR frame at the current (0) and each future key frame; "
                                                      "nearest-first to the ego at that step; 0 padded"),
    "agent_valid": (("S", "F+1", "A"), "bool", "box slot is filled"),
    "agent_class": (("S", "F+1", "A"), "int8", "index into agent_classes; -1 pad"),
    "agent_instance": (("S", "F+1", "A"), "int32", "index into samples.json instance_tokens; -1 pad"),
    "agent_count": (("S", "F+1"), "int32", "annotations at that step before truncation to A (0 if invalid)"),
    "map_points": (("S", "M", "P", 2), "float32", "map elements resampled by arc length, current LIDAR frame "
                                                   "(MapTR recipe); 0 padded"),
    "map_class": (("S", "M"), "int8", "index into map_classes; -1 pad"),
    "map_closed": (("S", "M"), "bool", "element is a closed ring (first point == last point)"),
    "map_valid": (("S", "M"), "bool", "element slot is filled"),
    "scene_index": (("S",), "int32", "index of the sample's scene in this split's scene list"),
    "frame_index": (("S",), "int32", "key-frame index of the sample within its scene"),
}

FRAMES = {
    "global": "map frame: x east, y north, metres (map-expansion coordinates)",
    "ego": "x forward, y left, z up (ego_pose: ego -> global)",
    "lidar": "LIDAR_TOP: x right, y forward, z up; all planning, agent and map quantities are in the CURRENT "
             "sample's LIDAR_TOP frame, as MapTR / UniAD use",
    "camera": "x right, y down, z forward",
    "quaternion": "[w, x, y, z]; box size [w, l, h]; yaw = heading of the box's length axis (or of the future "
                  "LIDAR_TOP frame's x axis) measured counter-clockwise from the current LIDAR x axis",
    "waypoints": "full 3-D transform inv(lidar2global_now) lidar2global_future, (x, y) of the origin and the "
                 "relative yaw",
    "map": "yaw-only frame of the explorer/MapTR: R(-yaw(lidar2global)) (p - lidar2global.t[:2]); patch "
           "[along = lidar y, across = lidar x] = cache.patch_size",
    "ego_status": "LIDAR_TOP origins p_k and LIDAR sample_data timestamps t_k of the scene's key frames: "
                  "v = (p_k - p_{k-1}) / (t_k - t_{k-1}) (backward; the first sample uses the forward pair 0-1), "
                  "a = (v_k - v_{k-1}) / ((t_k - t_{k-2}) / 2) (samples 0 and 1 use the first three frames), "
                  "yaw rate likewise from the wrapped yaw difference; rotated into the current LIDAR frame; "
                  "speed = |v| (3-D), longitudinal acceleration = a_y (LIDAR forward); zeros where the scene is too "
                  "short (speed and yaw rate need 2 key frames, acceleration 3)",
    "agents_order": "per step, boxes sorted by xy distance to the ego LIDAR origin at that step "
                    "(the waypoint; the current origin at step 0), first A kept",
}


class _PreloadedNuScenes:
    """Factory for a devkit ``NuScenes`` that indexes tables already parsed (and checked) by validate.py."""

    @staticmethod
    def load(version: str, dataroot: str, tables: dict):
        from nuscenes.nuscenes import NuScenes

        class Preloaded(NuScenes):
            def __load_table__(self, table_name):  # noqa: N802 (devkit's name; not name-mangled)
                if table_name in tables:
                    return tables[table_name]
                return super().__load_table__(table_name)

        return Preloaded(version=version, dataroot=str(dataroot), verbose=False)


def agent_class_of(category_name: str) -> int:
    if category_name.startswith("vehicle."):
        return 0
    if category_name.startswith("human.pedestrian."):
        return 1
    return 2


# --------------------------------------------------------------------------------------------------
# Per-scene computation (runs in workers)
# --------------------------------------------------------------------------------------------------

_CTX: dict = {}  # set in the parent before the fork: nusc, cache params, maps, chains, table_root


def _records(nusc, samples, channel):
    sds = [nusc.get("sample_data", s["data"][channel]) for s in samples]
    eps = [nusc.get("ego_pose", sd["ego_pose_token"]) for sd in sds]
    css = [nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]) for sd in sds]
    return sds, eps, css


def _pose(recs) -> np.ndarray:
    return make_transform(np.array([r["translation"] for r in recs]), np.array([r["rotation"] for r in recs]))


def ego_status_from_poses(pos: np.ndarray, yaw: np.ndarray, t: np.ndarray, rot_now_inv: np.ndarray) -> np.ndarray:
    """Finite-difference ego status of one scene.

    pos (n, 3) LIDAR_TOP origins (global), yaw (n,) their global yaw, t (n,) seconds, rot_now_inv (n, 3, 3)
    global -> current LIDAR rotations. Returns (n, 5) [speed, a_long, yaw_rate, vx, vy] (see FRAMES)."""
    n = len(pos)
    out = np.zeros((n, 5), dtype=np.float64)
    if n < 2:
        return out
    k = np.maximum(np.arange(n), 1)  # velocity pair (k-1, k)
    dt = t[k] - t[k - 1]
    v = (pos[k] - pos[k - 1]) / dt[:, None]  # (n, 3) global
    yaw_rate = wrap_angle(yaw[k] - yaw[k - 1]) / dt
    v_loc = np.einsum("nij,nj->ni", rot_now_inv, v)
    a_long = np.zeros(n)
    if n >= 3:
        m = np.maximum(np.arange(n), 2)  # acceleration triple (m-2, m-1, m)
        v2 = (pos[m] - pos[m - 1]) / (t[m] - t[m - 1])[:, None]
        v1 = (pos[m - 1] - pos[m - 2]) / (t[m - 1] - t[m - 2])[:, None]
        a = (v2 - v1) / ((t[m] - t[m - 2]) / 2)[:, None]
        a_long = np.einsum("nij,nj->ni", rot_now_inv, a)[:, 1]  # LIDAR y = forward
    out[:, 0] = np.linalg.norm(v, axis=1)  # frame-independent 3-D speed
    out[:, 1] = a_long
    out[:, 2] = yaw_rate
    out[:, 3:5] = v_loc[:, :2]
    return out


def _steps(n: int, offsets: np.ndarray, g: np.ndarray, gi: np.ndarray):
    """(n, K) target indices i + offsets, validity, and (n, K, 3) (x, y, yaw) in each current LIDAR frame."""
    j = np.arange(n)[:, None] + offsets[None, :]
    valid = (j >= 0) & (j < n)
    jc = np.clip(j, 0, n - 1)
    rel = gi[:, None] @ g[jc]  # (n, K, 4, 4) future/past lidar -> current lidar
    xyyaw = np.concatenate([rel[..., :2, 3], yaw_of(rel[..., :3, :3])[..., None]], axis=-1)
    xyyaw[~valid] = 0.0
    return jc, valid, xyyaw


def process_scene(scene_token: str) -> dict:
    """All arrays and metadata of one scene's key frames (n = its sample count)."""
    ctx = _CTX
    nusc, cp = ctx["nusc"], ctx["cache"]
    H, F, A = cp.history_steps, cp.future_steps, cp.max_agents
    scene = nusc.get("scene", scene_token)
    location = nusc.get("log", scene["log_token"])["location"]
    samples = [nusc.get("sample", t) for t in ctx["chains"][scene_token]]
    n = len(samples)

    sd_l, ep_l, cs_l = _records(nusc, samples, V.LIDAR)
    e2g = _pose(ep_l)  # (n, 4, 4)
    l2e = _pose(cs_l)
    g = e2g @ l2e  # lidar2global (n, 4, 4)
    gi = invert_transform(g)
    t_us = np.array([sd["timestamp"] for sd in sd_l], dtype=np.int64)  # increasing: checked in prepare()
    t = (t_us - t_us[0]) * 1e-6

    cam_sd, cam_e2g, cam_c2e, cam_k = [], [], [], []
    for ch in CAMERAS:
        sds, eps, css = _records(nusc, samples, ch)
        cam_sd.append(sds)
        cam_e2g.append(_pose(eps))
        cam_c2e.append(_pose(css))
        cam_k.append(np.array([c["camera_intrinsic"] for c in css], dtype=np.float64))
    cam_e2g = np.stack(cam_e2g, 1)  # (n, 6, 4, 4)
    cam_c2e = np.stack(cam_c2e, 1)
    cam2lidar = gi[:, None] @ cam_e2g @ cam_c2e

    _, hist_valid, hist = _steps(n, np.arange(-(H - 1), 1), g, gi)  # (n, H), (n, H, 3)
    _, fut_valid, fut = _steps(n, np.arange(1, F + 1), g, gi)  # (n, F, 3)
    yaw_now = yaw_of(g[:, :3, :3])  # (n,) global yaw of the LIDAR frame = the map patch angle

    status = ego_status_from_poses(g[:, :3, 3], yaw_now, t, gi[:, :3, :3])

    nvalid = fut_valid.sum(1)
    last_x = fut[np.arange(n), np.maximum(nvalid - 1, 0), 0]
    command = np.where(last_x >= COMMAND_THRESHOLD_M, 0, np.where(last_x <= -COMMAND_THRESHOLD_M, 1, 2))
    command[nvalid == 0] = 2

    distances = np.asarray(cp.route_distances, np.float64)
    route = ctx["routes"].get(scene_token) if ctx["routes"] is not None else None
    if route is None:
        route_points, route_valid = np.zeros((n, len(distances), 2)), np.zeros((n, len(distances)), bool)
        route_command = command.copy()
    else:
        route_points, route_valid, route_command = route_inputs(route, g, gi, distances, cp.route_command_distance)

    agents = _agents(nusc, samples, g, gi, fut, fut_valid, F, A)

    map_points, map_class, map_closed = ctx["maps"][location].scene_elements(g[:, :2, 3], yaw_now)

    meta = [{
        "token": s["token"], "scene": scene["name"], "frame": i, "timestamp": int(s["timestamp"]),
        "location": location,
        "cams": [cam_sd[c][i]["filename"] for c in range(len(CAMERAS))],
        "lidar": sd_l[i]["filename"],
    } for i, s in enumerate(samples)]

    return {
        "n": n, "meta": meta, "instance_tokens": agents.pop("instance_tokens"),
        "arrays": {
            "cam_intrinsic": np.stack(cam_k, 1).astype(np.float32),
            "cam2ego": cam_c2e, "cam2lidar": cam2lidar, "ego2global": e2g, "lidar2ego": l2e,
            "ego_history": hist.astype(np.float32), "ego_history_valid": hist_valid,
            "ego_status": status.astype(np.float32),
            "future_waypoints": fut.astype(np.float32), "future_valid": fut_valid,
            "command": command.astype(np.int8),
            "route_points": route_points.astype(np.float32), "route_valid": route_valid,
            "route_command": route_command.astype(np.int8),
            **agents,
            "map_points": map_points, "map_class": map_class, "map_closed": map_closed,
            "map_valid": map_class >= 0,
            "frame_index": np.arange(n, dtype=np.int32),
        },
    }


def command_of(lateral_x: np.ndarray) -> np.ndarray:
    """(n,) lateral offsets (LIDAR x, metres) -> (n,) int 0 RIGHT (>= 2 m), 1 LEFT (<= -2 m), 2 FORWARD."""
    return np.where(lateral_x >= COMMAND_THRESHOLD_M, 0, np.where(lateral_x <= -COMMAND_THRESHOLD_M, 1, 2))


def project_along(route: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Arc length (n,) along the polyline ``route`` (R, 2) of each of the successive positions ``points`` (n, 2).

    The first position takes the earliest route segment within 1 m of its nearest distance (a route that comes
    back near its start is not mistaken for its start); each later one the nearest segment between 1 m behind
    the previous projection and 60 m ahead of it, so the progress along the route is monotonic."""
    seg = np.diff(route, axis=0)                                             # (R-1, 2)
    seg_len = np.maximum(np.linalg.norm(seg, axis=1), 1e-9)
    s0 = np.concatenate([[0.0], np.cumsum(seg_len)])                          # (R,)
    out = np.zeros(len(points))
    prev = None
    for i, p in enumerate(points):
        u = np.clip(np.einsum("kj,kj->k", p - route[:-1], seg) / seg_len ** 2, 0.0, 1.0)  # (R-1,)
        d = np.linalg.norm(route[:-1] + u[:, None] * seg - p, axis=1)
        s = s0[:-1] + u * seg_len
        if prev is None:
            k = int(np.flatnonzero(d <= d.min() + 1.0)[0])
        else:
            d = np.where((s >= prev - 1.0) & (s <= prev + 60.0), d, np.inf)
            k = int(np.argmin(d))
        out[i] = prev = s[k]
    return out


def route_inputs(route: np.ndarray, g: np.ndarray, gi: np.ndarray, distances: np.ndarray,
                 command_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene's route inputs: route (R, 2) global polyline, g / gi (n, 4, 4) lidar2global and its inverse,
    distances (K,) metres ahead. Returns route_points (n, K, 2) in each current LIDAR frame (0 where invalid),
    route_valid (n, K) (the route reaches that far) and route_command (n,) from the point at ``command_distance``
    (the route's end where it is shorter)."""
    s_route = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route, axis=0), axis=1))])
    s_now = project_along(route, g[:, :2, 3])                                 # (n,)
    want = s_now[:, None] + np.concatenate([distances, [command_distance]])[None]  # (n, K+1)
    valid = want <= s_route[-1] + 1e-6
    xy = np.stack([np.interp(want, s_route, route[:, 0]), np.interp(want, s_route, route[:, 1])], -1)
    z = np.broadcast_to(g[:, None, 2, 3], want.shape)                        # the LIDAR's own height: a flat route
    pts = np.concatenate([xy, z[..., None], np.ones_like(z)[..., None]], -1)  # (n, K+1, 4) global
    local = np.einsum("nij,nkj->nki", gi, pts)[..., :2]                       # (n, K+1, 2) current LIDAR frame
    command = command_of(local[:, -1, 0])
    points, valid = local[:, :-1].copy(), valid[:, :-1]
    points[~valid] = 0.0
    return points, valid, command


def load_routes(table_root: Path, scene_tokens: list[str]) -> dict[str, np.ndarray] | None:
    """scene token -> (R, 2) route polyline from ``<table_root>/ego_route.json``; None when there is no file.

    Raises ``NuScenesInputError`` naming the file for a wrong format or a scene without a route of >= 2 points."""
    path = Path(table_root) / ROUTE_FILE
    if not path.exists():
        return None
    doc = V.read_json(path, "ego route file")
    if not isinstance(doc, dict) or doc.get("format") != ROUTE_FORMAT or not isinstance(doc.get("scenes"), dict):
        raise V.NuScenesInputError(path, f"not an ego route file: expected an object with format "
                                         f"{ROUTE_FORMAT!r} and a 'scenes' object")
    routes = {}
    for tok in scene_tokens:
        rec = doc["scenes"].get(tok)
        try:
            pts = np.asarray(rec["points"], np.float64)
        except (TypeError, KeyError, ValueError):
            pts = np.zeros((0,))
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2 or not np.isfinite(pts).all():
            raise V.NuScenesInputError(path, "scene has no route of >= 2 finite [x, y] points", record=tok)
        routes[tok] = pts
    return routes


def _agents(nusc, samples, g, gi, fut, fut_valid, F: int, A: int) -> dict:
    """Boxes of the current and each future key frame in each current LIDAR frame, nearest-first, padded."""
    n = len(samples)
    anns = [nusc.get("sample_annotation", tok) for s in samples for tok in s["anns"]]
    per_sample = np.array([len(s["anns"]) for s in samples], dtype=np.int64)  # (n,)
    start = np.concatenate([[0], np.cumsum(per_sample)[:-1]])
    tokens = sorted({a["instance_token"] for a in anns})
    tok_index = {tok: i for i, tok in enumerate(tokens)}
    out = {
        "agent_boxes": np.zeros((n, F + 1, A, 7), np.float32),
        "agent_valid": np.zeros((n, F + 1, A), bool),
        "agent_class": np.full((n, F + 1, A), -1, np.int8),
        "agent_instance": np.full((n, F + 1, A), -1, np.int32),
        "agent_count": np.zeros((n, F + 1), np.int32),
        "instance_tokens": tokens,
    }
    if not anns:
        return out
    trans = np.array([a["translation"] for a in anns], dtype=np.float64)  # (Na, 3)
    size = np.array([a["size"] for a in anns], dtype=np.float64)  # (Na, 3) w, l, h
    rot = make_transform(np.zeros_like(trans), np.array([a["rotation"] for a in anns]))[:, :3, :3]
    cls = np.array([agent_class_of(a["category_name"]) for a in anns], dtype=np.int8)
    inst = np.array([tok_index[a["instance_token"]] for a in anns], dtype=np.int32)

    # (i, k) pairs with a valid target sample j = i + k; k = 0 is the current frame.
    i_idx, k_idx = np.meshgrid(np.arange(n), np.arange(F + 1), indexing="ij")
    j_idx = i_idx + k_idx
    ok = j_idx < n
    i_idx, k_idx, j_idx = i_idx[ok], k_idx[ok], j_idx[ok]  # (Q,)
    cnt = per_sample[j_idx]
    out["agent_count"][i_idx, k_idx] = cnt
    q = np.repeat(np.arange(len(i_idx)), cnt)  # (B,) pair of each box
    a_idx = np.repeat(start[j_idx] - np.cumsum(np.r_[0, cnt[:-1]]), cnt) + np.arange(cnt.sum())  # (B,)
    bi, bk = i_idx[q], k_idx[q]
    r_now = gi[bi, :3, :3]  # (B, 3, 3) global -> current lidar
    centre = np.einsum("bij,bj->bi", r_now, trans[a_idx]) + gi[bi, :3, 3]
    yaw = yaw_of(r_now @ rot[a_idx])
    ego_xy = np.where(bk[:, None] > 0, fut[bi, np.maximum(bk - 1, 0), :2], 0.0)  # ego at that step
    dist = np.hypot(*(centre[:, :2] - ego_xy).T)
    order = np.lexsort((a_idx, dist, q))  # group by pair, nearest first, ties by annotation order
    q_sorted = q[order]
    first = np.searchsorted(q_sorted, q_sorted, side="left")
    rank = np.arange(len(order)) - first
    keep = rank < A
    sel, slot = order[keep], rank[keep]
    bi, bk = bi[sel], bk[sel]
    box = np.concatenate([centre[sel], size[a_idx[sel]], yaw[sel, None]], axis=1)  # (K, 7)
    out["agent_boxes"][bi, bk, slot] = box.astype(np.float32)
    out["agent_valid"][bi, bk, slot] = True
    out["agent_class"][bi, bk, slot] = cls[a_idx[sel]]
    out["agent_instance"][bi, bk, slot] = inst[a_idx[sel]]
    return out


def _process_chunk(scene_tokens: list[str]) -> list[dict]:
    return [process_scene(tok) for tok in scene_tokens]


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def _assemble(results: list[dict]) -> tuple[dict, list[dict], list[str]]:
    """Concatenate per-scene results in order; pad map arrays to the split's M; remap instance ids."""
    m = max([r["arrays"]["map_class"].shape[1] for r in results] + [1])
    tokens = sorted({tok for r in results for tok in r["instance_tokens"]})
    index = {tok: i for i, tok in enumerate(tokens)}
    arrays: dict[str, list] = {name: [] for name in ARRAYS}
    meta = []
    for scene_i, r in enumerate(results):
        a = dict(r["arrays"])
        pad = m - a["map_class"].shape[1]
        if pad:
            a["map_points"] = np.pad(a["map_points"], ((0, 0), (0, pad), (0, 0), (0, 0)))
            for name, fill in (("map_class", -1), ("map_closed", False), ("map_valid", False)):
                a[name] = np.pad(a[name], ((0, 0), (0, pad)), constant_values=fill)
        lut = np.array([index[t] for t in r["instance_tokens"]] + [-1], dtype=np.int32)
        a["agent_instance"] = lut[a["agent_instance"]]  # -1 -> lut[-1] = -1
        a["scene_index"] = np.full(r["n"], scene_i, np.int32)
        for name in ARRAYS:
            arrays[name].append(a[name])
        for rec in r["meta"]:
            meta.append({**rec, "scene_index": scene_i})
    out = {}
    for name, (shape, dtype, _) in ARRAYS.items():
        arr = np.ascontiguousarray(np.concatenate(arrays[name]).astype(dtype, copy=False))
        out[name] = arr
    return out, meta, tokens


def _array_schema(cp) -> dict:
    sizes = {"H": cp.history_steps, "F": cp.future_steps, "F+1": cp.future_steps + 1, "A": cp.max_agents,
             "P": cp.map_points, "R": len(cp.route_distances)}
    schema = {}
    for name, (shape, dtype, meaning) in ARRAYS.items():
        schema[name] = {"shape": list(shape), "dtype": dtype, "meaning": meaning,
                        "sizes": {k: v for k, v in sizes.items() if k in shape}}
    return schema


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def prepare(data, cache, log=print) -> dict:
    """Validate inputs, load the devkit and pre-index maps. Returns the build context (no outputs written)."""
    import time

    clock = [time.perf_counter()]
    from nuscenes.map_expansion.map_api import NuScenesMap

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 3)

    timings = {"imports": lap()}
    dataroot, version = data.dataroot, data.version
    tables = V.load_tables(dataroot, version)
    table_root = Path(dataroot) / version
    chains = V.walk_scenes(table_root, tables)
    by_name: dict[str, dict] = {}
    for sc in tables["scene"]:
        if sc["name"] in by_name:
            raise V.NuScenesInputError(table_root / "scene.json", f"duplicate scene name {sc['name']!r}",
                                       record=sc["token"])
        by_name[sc["name"]] = sc
    splits, source = resolve_splits(dataroot, version, list(by_name), list(data.splits))

    # Key-frame sample_data lookup from the parsed tables (the devkit is not loaded yet).
    cs_channel = {}
    sensors = {r["token"]: r["channel"] for r in tables["sensor"]}
    for r in tables["calibrated_sensor"]:
        cs_channel[r["token"]] = sensors[r["sensor_token"]]
    keyframe = {(r["sample_token"], cs_channel[r["calibrated_sensor_token"]]): r
                for r in tables["sample_data"] if r["is_key_frame"]}
    ego = {r["token"]: r for r in tables["ego_pose"]}
    log_of = {r["token"]: r for r in tables["log"]}

    poses_by_loc: dict[str, tuple[list, list, str]] = {}
    files = []
    for split in splits:
        for name in splits[split]:
            sc = by_name[name]
            log_rec = log_of[sc["log_token"]]
            xy, toks, _ = poses_by_loc.setdefault(log_rec["location"], ([], [], log_rec["token"]))
            stamps = [keyframe[(st, V.LIDAR)]["timestamp"] for st in chains[sc["token"]]]
            bad = [k for k in range(1, len(stamps)) if not stamps[k] > stamps[k - 1]]
            if bad:
                raise V.NuScenesInputError(table_root / "sample_data.json",
                                           f"LIDAR_TOP key-frame timestamps of scene {name!r} do not increase "
                                           f"along sample.next",
                                           record=keyframe[(chains[sc["token"]][bad[0]], V.LIDAR)]["token"])
            for st in chains[sc["token"]]:
                sd = keyframe[(st, V.LIDAR)]
                ep = ego[sd["ego_pose_token"]]
                xy.append(ep["translation"][:2])
                toks.append(ep["token"])
                if cache.check_files:
                    files += [(keyframe[(st, ch)]["token"], keyframe[(st, ch)]["filename"], st) for ch in V.CHANNELS]
    for loc in sorted(poses_by_loc):
        xy, toks, first_log = poses_by_loc[loc]
        V.check_map_expansion(dataroot, loc, np.asarray(xy, dtype=np.float64).reshape(-1, 2), toks, first_log)
    if cache.check_files:
        V.check_sensor_files(dataroot, table_root, files)
    timings["validate"] = lap()
    nusc = _PreloadedNuScenes.load(version, dataroot, tables)
    timings["devkit_load"] = lap()
    maps = {}
    for loc in sorted(poses_by_loc):
        lmap = LocationMap(NuScenesMap(dataroot=str(dataroot), map_name=loc), cache.patch_size,
                           cache.map_classes, cache.map_points)
        V.check_poses_on_roads(V.expansion_path(dataroot, loc), lmap.surface_tree, len(lmap.surface),
                               np.asarray(poses_by_loc[loc][0], dtype=np.float64).reshape(-1, 2))
        maps[loc] = lmap
    timings["map_index"] = lap()
    scene_tokens = {split: [by_name[nm]["token"] for nm in names] for split, names in splits.items()}
    routes = load_routes(table_root, [t for toks in scene_tokens.values() for t in toks])
    return {"routes": routes, "route_source": "gt_future_rule" if routes is None else "world_route", "nusc": nusc, "cache": cache, "data": data, "maps": maps, "chains": chains, "table_root": table_root,
            "splits": splits, "split_source": source, "scene_tokens": scene_tokens, "timings": timings}


def run_split(ctx: dict, split: str, workers: int, progress: bool = True) -> tuple[dict, list, list]:
    """Process one split's scenes (in a fork pool when workers > 1) and assemble its arrays."""
    from tqdm import tqdm

    global _CTX
    _CTX = ctx
    scenes = ctx["scene_tokens"][split]
    sizes = {tok: len(ctx["chains"][tok]) for tok in scenes}
    nchunks = min(len(scenes), max(1, workers * 4))
    chunks = [list(c) for c in np.array_split(np.asarray(scenes, dtype=object), nchunks) if len(c)]
    results: list[dict] = []
    bar = tqdm(total=sum(sizes.values()), desc=f"gt_cache {split}", unit="sample", disable=not progress,
               leave=False)
    try:
        if workers <= 1:
            for c in chunks:
                results += _process_chunk(c)
                bar.update(sum(sizes[t] for t in c))
        else:
            with mp.get_context("fork").Pool(min(workers, len(chunks))) as pool:
                for c, res in zip(chunks, pool.imap(_process_chunk, chunks)):
                    results += res
                    bar.update(sum(sizes[t] for t in c))
    finally:
        bar.close()
    return _assemble(results)


def build_cache(data, cache, out_dir: str | Path, progress: bool = True, log=print) -> dict:
    """Validate, build every split in ``data.splits`` into ``out_dir`` and write the manifest.

    Returns {split: {"samples": S, "scenes": n, "max_map_elements": M, "seconds": ...}} (timings are not
    written to the outputs)."""
    import time

    from safetensors.numpy import save_file

    from models.common.io import write_json

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    ctx = prepare(data, cache)
    t_prep = time.perf_counter() - t0
    summary, split_info = {}, {}
    for split in data.splits:
        t1 = time.perf_counter()
        arrays, meta, tokens = run_split(ctx, split, cache.workers, progress)
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        save_file(arrays, str(d / "arrays.safetensors"))
        os.chmod(d / "arrays.safetensors", 0o644)  # safetensors creates it owner-only
        write_json(d / "samples.json", {"samples": meta, "instance_tokens": tokens}, indent=None)
        S, M = len(meta), arrays["map_class"].shape[1]
        split_info[split] = {"samples": S, "num_scenes": len(ctx["splits"][split]),
                             "max_map_elements": M, "num_instances": len(tokens),
                             "scenes": ctx["splits"][split],
                             "shapes": {k: list(v.shape) for k, v in arrays.items()}}
        summary[split] = {"samples": S, "scenes": len(ctx["splits"][split]), "max_map_elements": M,
                          "map_elements": int(arrays["map_valid"].sum()), "seconds": time.perf_counter() - t1}
    manifest = {
        "format": FORMAT,
        "params": {"data": dataclasses.asdict(data),
                   "cache": {k: v for k, v in dataclasses.asdict(cache).items() if k not in EXECUTION_ONLY}},
        "params_omitted": sorted(EXECUTION_ONLY),
        "dataroot": str(data.dataroot), "version": data.version,
        "split_source": ctx["split_source"], "splits": split_info,
        "cameras": list(CAMERAS),
        "agent_classes": list(AGENT_CLASSES), "agent_class_rule": AGENT_CLASS_RULE,
        "map_classes": list(cache.map_classes), "commands": list(COMMANDS),
        "history_steps": cache.history_steps, "future_steps": cache.future_steps,
        "max_agents": cache.max_agents, "map_points": cache.map_points, "patch_size": list(cache.patch_size),
        "route_source": ctx["route_source"], "route_rule": ROUTE_SOURCES[ctx["route_source"]],
        "route_distances": list(cache.route_distances), "route_command_distance": cache.route_command_distance,
        "derived_from_gt": {
            "command": "computed from the GT future (UniAD / ST-P3 rule): leaks the answer when used as input",
            "ego_status": "from ego-pose finite differences; the first sample of a scene uses the next key "
                          "frame (forward difference)",
            **({"route_command": "no route file: the GT-future command rule (a leak)"}
               if ctx["route_source"] == "gt_future_rule" else {})},
        "arrays": _array_schema(cache),
        "files": {"arrays": "<split>/arrays.safetensors", "samples": "<split>/samples.json"},
        "frames": FRAMES,
    }
    write_json(out_dir / "manifest.json", manifest)
    summary["_prepare_seconds"] = t_prep
    summary["_prepare_breakdown"] = ctx["timings"]
    return summary
