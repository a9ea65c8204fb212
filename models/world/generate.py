"""Build the synthetic world as a nuScenes dataroot, plus the exact truth nuScenes does not have.

Layout written under ``out_dir``::

    v1.0-synth/*.json              the 13 tables, plus splits.json {"synth_train": [...], "synth_val": [...]},
                                   sensor_digest.json (md5 over every sensor and truth file) and ego_route.json
                                   (each scene's planned ego route: the navigation input a real car has)
    maps/expansion/<location>.json map expansion (version 1.3) per location used
    maps/<token>.png               semantic prior (drivable area at 0.1 m/px, as the devkit's MapMask expects)
    samples/<CHANNEL>/*.jpg|.pcd.bin   key frames: 6 cameras and LIDAR_TOP (JPEG at ``synth.jpeg_quality``, with
                                   ``synth.camera_noise_std`` Gaussian sensor noise seeded per file name)
    sweeps/CAM_FRONT/*.jpg         CAM_FRONT between key frames (``synth.sweep_hz``)
    extras/manifest.json           conventions and per-scene file list for the truth below
    extras/<scene>.npz             exact truth: CAM_FRONT point tracks, key-frame depth and dynamic masks,
                                   and the scene state (ego poses and every box at every sweep frame)

Scenes are rendered in worker processes (fork: the towns and ground textures are built once in the
parent and shared copy-on-write). Each scene draws from its own seeded generator, so the bytes do
not depend on the worker count.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from models.common.io import save_npz, write_json
from models.common.params import SynthParams
from models.world import render
from models.world.ground import paint_town
from models.world.map_expansion import town_to_map_json
from models.world.sensors import (CAMERA_OFFSET_US, CAMERA_ORDER, camera_calibration, camera_noise,
                                  ego_pose_matrix, lidar_calibration)
from models.world.tables import BoxAnnotation, SceneRecord, SensorFrame, token, write_tables
from models.world.town import Town, build_town
from models.world.traffic import CATEGORY, Agent, simulate_scene

VERSION = "v1.0-synth"
SPLIT_KEYS = ("synth_train", "synth_val")
KEYFRAME_US = 500_000  # 2 Hz key frames
BASE_TIMESTAMP_US = 1_533_151_600_000_000  # 2018-08-01, like the real logs
ANNOTATION_RANGE = 60.0  # metres around the ego within which agents are annotated
ROUTE_FILE = "ego_route.json"  # models.nuscenes.cache.ROUTE_FILE reads it
ROUTE_FORMAT = "ego-route/1"
TRACK_CONVENTION = "pixel (x=u=column, y=v=row), OpenCV convention: pixel centres at integer coordinates"

_WORLD: dict = {}  # filled in the parent before forking: location -> (Town, GroundTexture)


@dataclass
class SceneJob:
    index: int
    name: str
    location: str
    params: SynthParams
    out_dir: Path


def scene_names(params: SynthParams) -> list[str]:
    return [f"synth-{k:04d}" for k in range(params.num_scenes)]


def split_scenes(params: SynthParams) -> dict:
    """Scene-level split: ``val_scenes`` consecutive scenes from ``val_start`` are val, the last ones by
    default (with round-robin locations, the val split covers consecutive locations in turn)."""
    names = scene_names(params)
    start = params.num_scenes - params.val_scenes if params.val_start < 0 else params.val_start
    val = names[start:start + params.val_scenes]
    return {SPLIT_KEYS[0]: [n for n in names if n not in val], SPLIT_KEYS[1]: val}


def generate_world(params: SynthParams, out_dir: Path, progress: bool = True) -> dict:
    """Write the whole dataroot into ``out_dir`` (which should be empty); returns a summary dict."""
    out_dir = Path(out_dir)
    locations = list(params.locations)
    map_tokens = {loc: token("map", loc) for loc in locations}
    (out_dir / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    for k, loc in enumerate(locations):
        town = build_town(loc, params, np.random.default_rng([params.seed, 7919, k]))
        ground = paint_town(town, seed=params.seed * 1000 + k)
        _WORLD[loc] = (town, ground)
        with open(out_dir / "maps" / "expansion" / f"{loc}.json", "w") as fh:
            json.dump(town_to_map_json(town), fh, separators=(",", ":"))
        _write_semantic_prior(town, out_dir / "maps" / f"{map_tokens[loc]}.png")
    for sub in [f"samples/{c}" for c in CAMERA_ORDER + ("LIDAR_TOP",)] + ["sweeps/CAM_FRONT", "extras"]:
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    jobs = [SceneJob(k, name, locations[k % len(locations)], params, out_dir)
            for k, name in enumerate(scene_names(params))]
    if params.workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(params.workers, len(jobs))) as pool:
            records = list(tqdm(pool.imap(render_scene, jobs), total=len(jobs), desc="synth_world scenes",
                                disable=not progress))
    else:
        records = [render_scene(j) for j in tqdm(jobs, desc="synth_world scenes", disable=not progress)]

    counts = write_tables(records, out_dir / VERSION, map_tokens)
    write_json(out_dir / VERSION / "splits.json", split_scenes(params))
    write_json(out_dir / VERSION / "sensor_digest.json", sensor_digest(out_dir))
    write_json(out_dir / VERSION / ROUTE_FILE, ego_routes(records), indent=None)
    write_json(out_dir / "extras" / "manifest.json", {
        "version": VERSION,
        "image_size": [params.image_width, params.image_height],
        "sweep_hz": params.sweep_hz,
        "track_convention": TRACK_CONVENTION,
        "track_grid": params.track_grid, "track_horizon": params.track_horizon, "track_stride": params.track_stride,
        "depth": "camera z-depth in metres, float16, inf for sky",
        "camera_order": list(CAMERA_ORDER),
        "box_columns": ["x", "y", "z", "w", "l", "h", "yaw"],
        "box_kind": {"0": "vehicle", "1": "pedestrian", "2": "building"},
        "scenes": {r.name: r.extra for r in records},
        "splits": split_scenes(params),
    })
    return {"tables": counts, "scenes": len(records), "locations": locations}


def ego_routes(records: list[SceneRecord]) -> dict:
    """The ``ego_route.json`` document: per scene token, the lane-graph route the ego was told to follow.

    The polyline starts at the ego's first pose and runs past the scene's end (the route is planned for the
    scene's duration plus 120 m), in the global map frame, rounded to millimetres. It carries geometry only
    (no speeds, no timing), like a navigation route."""
    return {"format": ROUTE_FORMAT, "frame": "global map frame: x east, y north, metres (as ego_pose)",
            "scenes": {token("scene", r.name): {"name": r.name, "points": r.ego_route} for r in records}}


def sensor_digest(dataroot: Path) -> dict:
    """One md5 over every sensor file and the exact truth, kept beside the tables.

    Stages that read images depend on ``<dataroot>/<version>`` (the tables) rather than on the image
    folders, so that a real dataroot's hundreds of GB are never hashed by DVC; this file makes the
    synthetic world's tables folder change whenever any of its pixels do.
    """
    h = hashlib.md5()
    files = sorted(p for d in ("samples", "sweeps", "extras") for p in (Path(dataroot) / d).rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(dataroot)).encode())
        h.update(hashlib.md5(p.read_bytes()).digest())
    return {"files": len(files), "md5": h.hexdigest()}


# --------------------------------------------------------------------------------------------------
# One scene
# --------------------------------------------------------------------------------------------------


def render_scene(job: SceneJob) -> SceneRecord:
    p = job.params
    town, ground = _WORLD[job.location]
    rng = np.random.default_rng([p.seed, 104729, job.index])
    n_samples = int(round(p.scene_seconds * 2))
    duration = (n_samples - 1) * KEYFRAME_US / 1e6 + 0.2
    ego, agents = simulate_scene(town, p, rng, duration)
    t0 = BASE_TIMESTAMP_US + job.index * 3_600_000_000
    logfile = f"synth-{job.location}-{job.index:04d}"
    W, H = p.image_width, p.image_height
    cams, lidar = camera_calibration(W, H), lidar_calibration()
    statics = _static_boxes(town)

    def boxes_at(t_us: int) -> render.Boxes:
        t = (t_us - t0) / 1e6
        xy = np.array([a.pose_at(t)[0] for a in agents]).reshape(-1, 2)
        yaw = np.array([a.pose_at(t)[1] for a in agents]).reshape(-1)
        size = np.array([a.size for a in agents]).reshape(-1, 3)
        centre = np.concatenate([xy, size[:, 2:3] / 2], axis=1)
        kinds = np.array([1 if a.kind == "pedestrian" else 0 for a in agents], np.int8)
        dyn = np.array([a.moving for a in agents], bool)
        colours = np.array([a.color for a in agents], np.uint8).reshape(-1, 3)
        return render.Boxes(center=np.concatenate([centre, statics.center]),
                            size=np.concatenate([size, statics.size]), yaw=np.concatenate([yaw, statics.yaw]),
                            color=np.concatenate([colours, statics.color]),
                            kind=np.concatenate([kinds, statics.kind]), dynamic=np.concatenate([dyn, statics.dynamic]))

    def ego_at(t_us: int) -> tuple:
        (x, y), yaw = ego.pose_at((t_us - t0) / 1e6)
        return float(x), float(y), float(yaw)

    def camera(ch: str, t_us: int) -> render.Camera:
        return render.Camera(K=cams[ch]["K"], cam2world=ego_pose_matrix(*ego_at(t_us)) @ cams[ch]["sensor2ego"],
                             width=W, height=H)

    frames: list[SensorFrame] = []
    sample_ts = [t0 + i * KEYFRAME_US for i in range(n_samples)]

    # CAM_FRONT at sweep rate; the sweep nearest each key-frame trigger time is the key frame
    front_key_times = np.array(sample_ts) + CAMERA_OFFSET_US["CAM_FRONT"]
    last = front_key_times[-1]
    sweep_ts = front_key_times[0] + np.round(np.arange(int((last - front_key_times[0]) * p.sweep_hz / 1e6) + 1)
                                             * 1e6 / p.sweep_hz).astype(np.int64)
    key_of_sweep = np.full(len(sweep_ts), -1)
    for i, tk in enumerate(front_key_times):
        j = int(np.argmin(np.abs(sweep_ts - tk)))
        sweep_ts[j], key_of_sweep[j] = tk, i
    front_depth = np.empty((len(sweep_ts), H, W), np.float32)
    front_boxes, front_cams = [], []
    key_depth = np.empty((n_samples, len(CAMERA_ORDER), H, W), np.float16)
    key_dynamic = np.empty((n_samples, len(CAMERA_ORDER), H, W), bool)
    visibility = np.zeros((n_samples, len(agents)))  # best visible share over the six cameras
    for j, ts in enumerate(sweep_ts):
        ts = int(ts)
        boxes, cam = boxes_at(ts), camera("CAM_FRONT", ts)
        out = render.render_camera(ground, boxes, cam)
        key = int(key_of_sweep[j])
        folder = "samples" if key >= 0 else "sweeps"
        fname = f"{folder}/CAM_FRONT/{logfile}__CAM_FRONT__{ts}.jpg"
        _save_camera_image(out.rgb, job.out_dir, fname, p)
        nxt = key if key >= 0 else int(np.searchsorted(front_key_times, ts))
        frames.append(SensorFrame("CAM_FRONT", ts, fname, key >= 0, min(nxt, n_samples - 1), ego_at(ts)))
        front_depth[j] = out.depth
        front_boxes.append(boxes)
        front_cams.append(cam)
        if key >= 0:
            key_depth[key, 0], key_dynamic[key, 0] = out.depth, out.dynamic_mask
            visibility[key] = np.maximum(visibility[key], _visible_fraction(out.object_index, boxes, cam, len(agents)))

    annotations: list[BoxAnnotation] = []
    in_range = np.zeros((n_samples, len(agents)), bool)
    per_sample = []
    for i, ts_lidar in enumerate(sample_ts):
        for c, ch in enumerate(CAMERA_ORDER[1:], start=1):
            ts = ts_lidar + CAMERA_OFFSET_US[ch]
            cam_boxes, cam = boxes_at(ts), camera(ch, ts)
            out = render.render_camera(ground, cam_boxes, cam)
            fname = f"samples/{ch}/{logfile}__{ch}__{ts}.jpg"
            _save_camera_image(out.rgb, job.out_dir, fname, p)
            frames.append(SensorFrame(ch, ts, fname, True, i, ego_at(ts)))
            key_depth[i, c], key_dynamic[i, c] = out.depth, out.dynamic_mask
            visibility[i] = np.maximum(visibility[i], _visible_fraction(out.object_index, cam_boxes, cam, len(agents)))
        boxes = boxes_at(ts_lidar)
        lidar2world = ego_pose_matrix(*ego_at(ts_lidar)) @ lidar["sensor2ego"]
        pts = render.lidar_scan(ground, boxes, lidar2world, beams=p.lidar_beams, azimuth_bins=p.lidar_azimuth_bins)
        fname = f"samples/LIDAR_TOP/{logfile}__LIDAR_TOP__{ts_lidar}.pcd.bin"
        pts.astype(np.float32).tofile(job.out_dir / fname)
        frames.append(SensorFrame("LIDAR_TOP", ts_lidar, fname, True, i, ego_at(ts_lidar)))
        world_pts = pts[:, :3].astype(np.float64) @ lidar2world[:3, :3].T + lidar2world[:3, 3]
        n_pts = render.points_in_boxes(world_pts, boxes)[: len(agents)]
        ex, ey, _ = ego_at(ts_lidar)
        dist = np.linalg.norm(boxes.center[: len(agents), :2] - [ex, ey], axis=1)
        in_range[i] = dist < ANNOTATION_RANGE
        per_sample.append((boxes, n_pts))

    for a_idx, agent in enumerate(agents):
        seen = np.flatnonzero(in_range[:, a_idx])
        if len(seen) == 0:
            continue
        for i in range(seen[0], seen[-1] + 1):  # contiguous instance tracks, as in real nuScenes
            boxes, n_pts = per_sample[i]
            t = (sample_ts[i] - t0) / 1e6
            annotations.append(BoxAnnotation(
                sample_index=i, instance=a_idx, category=CATEGORY[agent.kind],
                translation=tuple(boxes.center[a_idx]), size=tuple(boxes.size[a_idx]), yaw=float(boxes.yaw[a_idx]),
                attribute=_attribute(agent, t), visibility=_visibility_token(visibility[i, a_idx]),
                num_lidar_pts=int(n_pts[a_idx])))

    tracks = _exact_tracks(ground, front_boxes, front_cams, front_depth, p)
    n_agents = len(agents)
    save_npz(job.out_dir / "extras" / f"{job.name}.npz",
             track_query_frame=tracks["query_frame"], track_uv=tracks["uv"], track_visible=tracks["visible"],
             track_object=tracks["object"],
             sweep_timestamps=sweep_ts, sweep_ego_pose=np.array([ego_at(int(t)) for t in sweep_ts]),
             sweep_boxes=np.stack([np.concatenate([b.center, b.size, b.yaw[:, None]], axis=1)[:n_agents]
                                   for b in front_boxes]).astype(np.float32),
             box_kind=front_boxes[0].kind[:n_agents], box_dynamic=front_boxes[0].dynamic[:n_agents],
             static_boxes=np.concatenate([statics.center, statics.size, statics.yaw[:, None]], axis=1),
             keyframe_timestamps=np.array(sample_ts, np.int64), keyframe_depth=key_depth,
             keyframe_dynamic=key_dynamic)
    description = _describe(job.location, ego, agents, town)
    return SceneRecord(name=job.name, location=job.location, logfile=logfile, description=description,
                       sample_timestamps=sample_ts, frames=frames, annotations=annotations, image_size=(W, H),
                       ego_route=np.round(ego.route, 3).tolist(),
                       extra={"file": f"extras/{job.name}.npz", "location": job.location,
                              "num_sweeps": int(len(sweep_ts)), "num_agents": n_agents,
                              "sweep_tokens": [token("sample_data", job.name, "CAM_FRONT", int(t)) for t in sweep_ts]})


def _exact_tracks(ground, boxes_seq, cams_seq, depth_seq, p: SynthParams) -> dict:
    """Exact 2-D tracks of a ``track_grid``^2 query grid re-seeded every ``track_stride`` sweeps."""
    W, H = cams_seq[0].width, cams_seq[0].height
    g = p.track_grid
    u = (np.arange(g) + 0.5) * W / g - 0.5
    v = (np.arange(g) + 0.5) * H / g - 0.5
    uu, vv = np.meshgrid(u, v)
    query = np.stack([uu.ravel(), vv.ravel()], axis=1)  # (Q, 2) x, y
    starts = list(range(0, len(cams_seq) - p.track_horizon + 1, p.track_stride))
    uv = np.full((len(starts), p.track_horizon, len(query), 2), np.nan, np.float32)
    vis = np.zeros((len(starts), p.track_horizon, len(query)), bool)
    obj = np.empty((len(starts), len(query)), np.int32)
    for s, f in enumerate(starts):
        surf = render.surface_points(ground, boxes_seq[f], cams_seq[f], query)
        obj[s] = surf.object_index
        for h in range(p.track_horizon):
            uv[s, h], vis[s, h] = render.project_surface_points(surf, boxes_seq[f + h], cams_seq[f + h],
                                                                depth_seq[f + h])
    return {"query_frame": np.array(starts, np.int32), "uv": uv, "visible": vis, "object": obj}


def _static_boxes(town: Town) -> render.Boxes:
    b = town.buildings  # (B, 6) cx, cy, w, l, h, yaw
    shades = (np.arange(len(b)) * 37 % 60)[:, None]
    colour = np.clip(np.array([150, 130, 115])[None] + shades - 30, 0, 255)
    return render.Boxes(center=np.stack([b[:, 0], b[:, 1], b[:, 4] / 2], axis=1), size=b[:, 2:5], yaw=b[:, 5],
                        color=colour.astype(np.uint8), kind=np.full(len(b), 2, np.int8),
                        dynamic=np.zeros(len(b), bool))


def _visible_fraction(objects: np.ndarray, boxes: render.Boxes, cam: render.Camera, n_agents: int) -> np.ndarray:
    """Per agent: rendered pixels / area of its projected box hull clipped to the image, (A,).

    0 for agents behind the camera or outside the image. Occlusion by other objects lowers it.
    """
    from shapely.geometry import MultiPoint, box as sbox

    counts = np.bincount(objects[(objects >= 0) & (objects < n_agents)], minlength=n_agents)
    frac = np.zeros(n_agents)
    corners = _box_corners(boxes.center[:n_agents], boxes.size[:n_agents], boxes.yaw[:n_agents])  # (A, 8, 3)
    world2cam = np.linalg.inv(cam.cam2world)
    pc = corners @ world2cam[:3, :3].T + world2cam[:3, 3]  # (A, 8, 3) camera frame
    image = sbox(-0.5, -0.5, cam.width - 0.5, cam.height - 0.5)
    for a in np.flatnonzero(counts):
        if (pc[a, :, 2] <= 0.1).any():
            frac[a] = 1.0  # straddles the camera plane: it fills the view, call it fully visible
            continue
        uv = pc[a, :, :2] / pc[a, :, 2:3] * [cam.K[0, 0], cam.K[1, 1]] + [cam.K[0, 2], cam.K[1, 2]]
        area = MultiPoint(uv).convex_hull.intersection(image).area
        frac[a] = min(counts[a] / max(area, 1.0), 1.0)
    return frac


def _box_corners(center: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(N, 8, 3) world corners of boxes (size w, l, h; length along the heading)."""
    sx = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * 0.5
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sz = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    lx = size[:, 1:2] * sx  # (N, 8) along heading
    ly = size[:, 0:1] * sy
    lz = size[:, 2:3] * sz
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    return np.stack([center[:, 0:1] + c * lx - s * ly, center[:, 1:2] + s * lx + c * ly, center[:, 2:3] + lz], axis=2)


def _visibility_token(frac: float) -> str:
    return "4" if frac >= 0.8 else "3" if frac >= 0.6 else "2" if frac >= 0.4 else "1"


def _attribute(agent: Agent, t: float) -> str:
    moving = float(agent.speed_at(t)) > 0.3
    if agent.kind == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if agent.parked:
        return "vehicle.parked"
    return "vehicle.moving" if moving else "vehicle.stopped"


def _describe(location: str, ego: Agent, agents: list, town: Town) -> str:
    turn = float(np.degrees(ego.yaw[-1] - ego.yaw[0]))
    manoeuvre = "left turn" if turn > 45 else "right turn" if turn < -45 else "straight"
    stops = "stops" if ego.speed.min() < 0.5 else "no stop"
    n_ped = sum(a.kind == "pedestrian" for a in agents)
    n_veh = sum(a.kind in ("car", "truck") and not a.parked for a in agents)
    return f"synthetic {location}: ego {manoeuvre}, {stops}, {n_veh} vehicles, {n_ped} pedestrians"


def _save_jpeg(rgb: np.ndarray, path: Path, quality: int = 90) -> None:
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)


def _save_camera_image(rgb: np.ndarray, out_dir: Path, fname: str, p: SynthParams) -> None:
    """One camera image as written by the sensor: ``synth.camera_noise_std`` Gaussian noise (seeded by
    ``synth.seed`` and the file name ``fname``; skipped when 0), then JPEG at ``synth.jpeg_quality``."""
    rgb = camera_noise(rgb, p.camera_noise_std, p.seed, fname)
    _save_jpeg(rgb, out_dir / fname, p.jpeg_quality)


def _write_semantic_prior(town: Town, path: Path) -> None:
    """Drivable area at 0.1 m/px over the whole canvas, rows from the north edge (devkit MapMask)."""
    res = 0.1
    w, h = int(town.canvas_edge[0] / res), int(town.canvas_edge[1] / res)
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for poly in town.drivable_area:
        ext = np.asarray(poly.exterior.coords) / res
        draw.polygon([(x, h - y) for x, y in ext], fill=255)
        for ring in poly.interiors:
            r = np.asarray(ring.coords) / res
            draw.polygon([(x, h - y) for x, y in r], fill=0)
    img.save(path, format="PNG", compress_level=1)


def world_metrics(dataroot: Path) -> dict:
    """Deterministic summary of a written world for ``dvc exp show``: counts, and how the ego drives.

    ``ego.cv_l2_3s`` is the error (m) of constant-velocity extrapolation of the ego's key-frame poses
    at 3 s: how much a planner that only sees ego history would miss (what vision must recover).
    """
    tables = {n: json.loads((Path(dataroot) / VERSION / f"{n}.json").read_text())
              for n in ("scene", "sample", "sample_data", "ego_pose", "sample_annotation", "instance", "category")}
    pose = {p["token"]: p for p in tables["ego_pose"]}
    lidar = {}
    for sd in tables["sample_data"]:
        if sd["is_key_frame"] and sd["filename"].startswith("samples/LIDAR_TOP"):
            lidar[sd["sample_token"]] = pose[sd["ego_pose_token"]]
    samples = {s["token"]: s for s in tables["sample"]}
    speeds, yaw_rates, cv_err = [], [], []
    for scene in tables["scene"]:
        chain, tok = [], scene["first_sample_token"]
        while tok:
            chain.append(lidar[tok])
            tok = samples[tok]["next"]
        xy = np.array([p["translation"][:2] for p in chain])
        ts = np.array([p["timestamp"] for p in chain]) / 1e6
        yaw = np.unwrap([2 * np.arctan2(p["rotation"][3], p["rotation"][0]) for p in chain])
        v = np.linalg.norm(np.diff(xy, axis=0), axis=1) / np.diff(ts)
        speeds += v.tolist()
        yaw_rates += (np.abs(np.diff(yaw)) / np.diff(ts)).tolist()
        for i in range(1, len(xy) - 6):
            pred = xy[i] + (xy[i] - xy[i - 1]) * 6
            cv_err.append(float(np.linalg.norm(pred - xy[i + 6])))
    cats = {c["token"]: c["name"] for c in tables["category"]}
    per_cat: dict = {}
    for inst in tables["instance"]:
        name = cats[inst["category_token"]].split(".")[0]
        per_cat[name] = per_cat.get(name, 0) + 1
    speeds, yaw_rates = np.array(speeds), np.array(yaw_rates)
    return {
        "scenes": len(tables["scene"]), "samples": len(tables["sample"]),
        "sample_data": len(tables["sample_data"]), "annotations": len(tables["sample_annotation"]),
        "instances": per_cat,
        "ego": {"mean_speed": round(float(speeds.mean()), 4), "stopped_share": round(float((speeds < 0.5).mean()), 4),
                "turning_share": round(float((yaw_rates > 0.1).mean()), 4),
                "cv_l2_3s": round(float(np.mean(cv_err)), 4) if cv_err else 0.0},
    }
