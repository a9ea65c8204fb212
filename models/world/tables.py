"""Write the 13 nuScenes tables for the generated scenes, with every field real nuScenes has.

Input is one :class:`SceneRecord` per scene (what the renderer produced: sample times, sample_data
files with ego poses, box annotations); output is ``<dataroot>/<version>/*.json``. Tokens are
deterministic 32-hex strings derived from names, so the same world gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

from models.world.sensors import CAMERA_ORDER, camera_calibration, lidar_calibration

# The 23 nuScenes categories with their lidarseg indices (nuScenes v1.0 category.json).
CATEGORIES = [
    ("animal", 1, "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", 2, "Adult subcategory."),
    ("human.pedestrian.child", 3, "Child subcategory."),
    ("human.pedestrian.construction_worker", 4, "Construction worker"),
    ("human.pedestrian.personal_mobility", 5, "A small electric or self-propelled vehicle, e.g. skateboard."),
    ("human.pedestrian.police_officer", 6, "Police officer."),
    ("human.pedestrian.stroller", 7, "Strollers."),
    ("human.pedestrian.wheelchair", 8, "Wheelchairs."),
    ("movable_object.barrier", 9, "Temporary road barrier placed in the scene in order to redirect traffic."),
    ("movable_object.debris", 10, "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", 11, "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", 12, "All types of traffic cone."),
    ("static_object.bicycle_rack", 13, "Area or device intended to park or secure the bicycles in a row."),
    ("vehicle.bicycle", 14, "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds."),
    ("vehicle.bus.bendy", 15, "Bendy bus subcategory."),
    ("vehicle.bus.rigid", 16, "Rigid bus subcategory."),
    ("vehicle.car", 17, "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans."),
    ("vehicle.construction", 18, "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", 19, "All types of ambulances."),
    ("vehicle.emergency.police", 20, "All types of police vehicles."),
    ("vehicle.motorcycle", 21, "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly."),
    ("vehicle.trailer", 22, "Any vehicle trailer, both for trucks, cars and bikes."),
    ("vehicle.truck", 23, "Vehicles primarily designed to haul cargo including pick-ups, lorrys, trucks."),
]
ATTRIBUTES = [
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
]
VISIBILITY = [("1", "v0-40", "visibility of whole object is between 0 and 40%"),
              ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
              ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
              ("4", "v80-100", "visibility of whole object is between 80 and 100%")]
CHANNELS = CAMERA_ORDER + ("LIDAR_TOP",)


def token(*parts) -> str:
    """Deterministic 32-hex token, the format real nuScenes tables use."""
    return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


@dataclass
class SensorFrame:
    channel: str
    timestamp: int  # µs
    filename: str  # relative to the dataroot
    is_key_frame: bool
    sample_index: int  # key frame: its sample; sweep: the next sample (nuScenes convention)
    ego_pose: tuple  # (x, y, yaw) ego->global at ``timestamp``


@dataclass
class BoxAnnotation:
    sample_index: int
    instance: int  # agent id within the scene
    category: str
    translation: tuple  # box centre, global
    size: tuple  # w, l, h
    yaw: float
    attribute: str
    visibility: str  # "1".."4"
    num_lidar_pts: int


@dataclass
class SceneRecord:
    name: str
    location: str
    logfile: str
    description: str
    sample_timestamps: list  # µs, key frames
    frames: list  # [SensorFrame]
    annotations: list  # [BoxAnnotation]
    image_size: tuple = (0, 0)  # (width, height)
    extra: dict = field(default_factory=dict)
    ego_route: list = field(default_factory=list)  # [[x, y], ...] the ego's planned route, global metres


def write_tables(scenes: list[SceneRecord], table_dir: Path, map_tokens: dict) -> dict:
    """Write the 13 tables into ``table_dir``; returns {table: record count}."""
    T = {k: [] for k in ("category", "attribute", "visibility", "sensor", "calibrated_sensor", "ego_pose", "log",
                         "scene", "sample", "sample_data", "sample_annotation", "instance", "map")}
    cat_tok = {name: token("category", name) for name, _, _ in CATEGORIES}
    T["category"] = [{"token": cat_tok[n], "name": n, "description": d, "index": i} for n, i, d in CATEGORIES]
    attr_tok = {name: token("attribute", name) for name, _ in ATTRIBUTES}
    T["attribute"] = [{"token": attr_tok[n], "name": n, "description": d} for n, d in ATTRIBUTES]
    T["visibility"] = [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITY]
    sensor_tok = {ch: token("sensor", ch) for ch in CHANNELS}
    T["sensor"] = [{"token": sensor_tok[ch], "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"}
                   for ch in CHANNELS]

    logs_by_location: dict = {}
    for scene in scenes:
        w, h = scene.image_size
        cams, lidar = camera_calibration(w, h), lidar_calibration()
        calib_tok = {ch: token("calibrated_sensor", scene.name, ch) for ch in CHANNELS}
        for ch in CHANNELS:
            c = lidar if ch == "LIDAR_TOP" else cams[ch]
            T["calibrated_sensor"].append({
                "token": calib_tok[ch], "sensor_token": sensor_tok[ch],
                "translation": [round(float(v), 6) for v in c["translation"]],
                "rotation": _quat(c["rotation"]),
                "camera_intrinsic": [] if ch == "LIDAR_TOP" else np.round(c["K"], 6).tolist()})
        log_tok = token("log", scene.name)
        logs_by_location.setdefault(scene.location, []).append(log_tok)
        T["log"].append({"token": log_tok, "logfile": scene.logfile, "vehicle": "synth-ego",
                         "date_captured": "2018-08-01", "location": scene.location})

        n = len(scene.sample_timestamps)
        sample_tok = [token("sample", scene.name, i) for i in range(n)]
        scene_tok = token("scene", scene.name)
        for i, ts in enumerate(scene.sample_timestamps):
            T["sample"].append({"token": sample_tok[i], "timestamp": int(ts),
                                "prev": sample_tok[i - 1] if i > 0 else "",
                                "next": sample_tok[i + 1] if i < n - 1 else "", "scene_token": scene_tok})
        T["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": n,
                           "first_sample_token": sample_tok[0], "last_sample_token": sample_tok[-1],
                           "name": scene.name, "description": scene.description})

        by_channel: dict = {}
        for f in scene.frames:
            by_channel.setdefault(f.channel, []).append(f)
        for ch in CHANNELS:
            frames = sorted(by_channel.get(ch, []), key=lambda f: f.timestamp)
            toks = [token("sample_data", scene.name, ch, f.timestamp) for f in frames]
            for k, (f, tok) in enumerate(zip(frames, toks)):
                x, y, yaw = f.ego_pose
                T["ego_pose"].append({"token": tok, "timestamp": int(f.timestamp),
                                      "rotation": _quat(Quaternion(axis=[0, 0, 1], angle=float(yaw))),
                                      "translation": [round(float(x), 6), round(float(y), 6), 0.0]})
                is_cam = ch != "LIDAR_TOP"
                T["sample_data"].append({
                    "token": tok, "sample_token": sample_tok[f.sample_index], "ego_pose_token": tok,
                    "calibrated_sensor_token": calib_tok[ch], "timestamp": int(f.timestamp),
                    "fileformat": "jpg" if is_cam else "pcd", "is_key_frame": bool(f.is_key_frame),
                    "height": int(h) if is_cam else 0, "width": int(w) if is_cam else 0, "filename": f.filename,
                    "prev": toks[k - 1] if k > 0 else "", "next": toks[k + 1] if k < len(toks) - 1 else ""})

        by_instance: dict = {}
        for a in scene.annotations:
            by_instance.setdefault(a.instance, []).append(a)
        for inst in sorted(by_instance):
            anns = sorted(by_instance[inst], key=lambda a: a.sample_index)
            inst_tok = token("instance", scene.name, inst)
            ann_toks = [token("sample_annotation", scene.name, inst, a.sample_index) for a in anns]
            T["instance"].append({"token": inst_tok, "category_token": cat_tok[anns[0].category],
                                  "nbr_annotations": len(anns), "first_annotation_token": ann_toks[0],
                                  "last_annotation_token": ann_toks[-1]})
            for k, (a, tok) in enumerate(zip(anns, ann_toks)):
                T["sample_annotation"].append({
                    "token": tok, "sample_token": sample_tok[a.sample_index], "instance_token": inst_tok,
                    "visibility_token": a.visibility, "attribute_tokens": [attr_tok[a.attribute]],
                    "translation": [round(float(v), 6) for v in a.translation],
                    "size": [round(float(v), 6) for v in a.size],
                    "rotation": _quat(Quaternion(axis=[0, 0, 1], angle=float(a.yaw))),
                    "prev": ann_toks[k - 1] if k > 0 else "", "next": ann_toks[k + 1] if k < len(anns) - 1 else "",
                    "num_lidar_pts": int(a.num_lidar_pts), "num_radar_pts": 0})

    for loc in sorted(logs_by_location):
        T["map"].append({"token": map_tokens[loc], "log_tokens": logs_by_location[loc], "category": "semantic_prior",
                         "filename": f"maps/{map_tokens[loc]}.png"})

    table_dir.mkdir(parents=True, exist_ok=True)
    for name, records in T.items():
        with open(table_dir / f"{name}.json", "w") as fh:
            json.dump(records, fh, indent=0, separators=(",", ": "))
    return {k: len(v) for k, v in T.items()}


def _quat(q: Quaternion) -> list:
    """[w, x, y, z] with w >= 0 (a canonical sign, so identical rotations give identical bytes)."""
    v = np.asarray(q.elements, float)
    if v[0] < 0:
        v = -v
    return [round(float(x), 8) for x in v]
