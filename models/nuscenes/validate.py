"""Input validation for a nuScenes dataroot, run before the devkit touches it.

The devkit's own failures are bare ``KeyError``/``AssertionError``s. Every check here raises
:class:`NuScenesInputError`, whose message starts with the offending file and names the record.
Checks are set-based (one pass per table), so a full v1.0-trainval validates in seconds.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"
CHANNELS = CAMERAS + (LIDAR,)

# Real map-expansion dimensions [width, height] in metres (nuscenes/map_expansion/map_api.py docstring).
LOCATION_CANVAS = {
    "singapore-onenorth": (1585.6, 2025.0),
    "singapore-hollandvillage": (2808.3, 2922.9),
    "singapore-queenstown": (3228.6, 3687.1),
    "boston-seaport": (2979.5, 2118.1),
}
CANVAS_TOLERANCE_M = 1.0

# Fields the devkit reads at load time or the GT cache reads (nuscenes_format.md §2, marks I and C).
REQUIRED_FIELDS = {
    "category": ("token", "name"),
    "attribute": ("token", "name"),
    "visibility": ("token",),
    "instance": ("token", "category_token"),
    "sensor": ("token", "channel", "modality"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "ego_pose": ("token", "translation", "rotation", "timestamp"),
    "log": ("token", "location"),
    "scene": ("token", "log_token", "first_sample_token", "name"),
    "sample": ("token", "timestamp", "scene_token", "prev", "next"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "filename",
                    "is_key_frame", "width", "height", "timestamp"),
    "sample_annotation": ("token", "sample_token", "instance_token", "translation", "size", "rotation"),
    "map": ("token", "log_tokens", "filename"),
}

# (table, field, target table, empty string allowed)
REFERENCES = (
    ("instance", "category_token", "category", False),
    ("calibrated_sensor", "sensor_token", "sensor", False),
    ("scene", "log_token", "log", False),
    ("scene", "first_sample_token", "sample", False),
    ("sample", "scene_token", "scene", False),
    ("sample", "prev", "sample", True),
    ("sample", "next", "sample", True),
    ("sample_data", "sample_token", "sample", False),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor", False),
    ("sample_data", "ego_pose_token", "ego_pose", False),
    ("sample_annotation", "sample_token", "sample", False),
    ("sample_annotation", "instance_token", "instance", False),
)

# (table, field, expected trailing shape)
NUMERIC_FIELDS = (
    ("calibrated_sensor", "translation", (3,)),
    ("calibrated_sensor", "rotation", (4,)),
    ("ego_pose", "translation", (3,)),
    ("ego_pose", "rotation", (4,)),
    ("sample_annotation", "translation", (3,)),
    ("sample_annotation", "size", (3,)),
    ("sample_annotation", "rotation", (4,)),
)

MAP_LIST_KEYS = ("polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
                 "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light",
                 "lane_connector")
MAP_DICT_KEYS = ("arcline_path_3", "connectivity")


class NuScenesInputError(ValueError):
    """A nuScenes input problem; the message names the file and, where there is one, the record."""

    def __init__(self, path: str | Path, problem: str, record: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.record = record
        where = f"{self.path}: record {record}: " if record is not None else f"{self.path}: "
        super().__init__(where + problem)

    def __reduce__(self):  # picklable across worker processes
        return self.__class__, (self.path, self.problem, self.record)


# --------------------------------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> object:
    """Parse a JSON file; a missing file or a syntax error names the file (and line/column)."""
    if not path.is_file():
        raise NuScenesInputError(path, f"{what} not found")
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise NuScenesInputError(path, f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                       f"column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise NuScenesInputError(path, f"{what} is not UTF-8 text: {exc}") from None


def check_version_folder(dataroot: str | Path, version: str) -> Path:
    """The ``<dataroot>/<version>`` folder must exist; otherwise list the versions that do."""
    root = Path(dataroot)
    if not root.is_dir():
        raise NuScenesInputError(root, "dataroot not found (data.dataroot)")
    table_root = root / version
    if not table_root.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "scene.json").is_file())
        raise NuScenesInputError(
            table_root, f"version '{version}' not found in this dataroot (data.version); "
                        f"versions present: {present if present else 'none'}")
    return table_root


def load_tables(dataroot: str | Path, version: str) -> dict[str, list[dict]]:
    """Read and check all 13 tables: existence, JSON syntax, list-of-objects, required fields, numeric
    shapes and the referential integrity the devkit and the cache rely on. Returns the parsed tables."""
    table_root = check_version_folder(dataroot, version)
    tables: dict[str, list[dict]] = {}
    for name in TABLES:
        path = table_root / f"{name}.json"
        data = read_json(path, f"table '{name}'")
        if not isinstance(data, list):
            raise NuScenesInputError(path, f"table '{name}' must be a JSON list of records, got "
                                           f"{type(data).__name__}")
        fields = REQUIRED_FIELDS[name]
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise NuScenesInputError(path, f"item {i} is a {type(rec).__name__}, not a record object")
            missing = [f for f in fields if f not in rec]
            if missing:
                raise NuScenesInputError(path, f"missing field(s) {missing}", record=rec.get("token", f"#{i}"))
        tokens = [r["token"] for r in data]
        if len(set(tokens)) != len(tokens):
            seen: set = set()
            dup = next(t for t in tokens if t in seen or seen.add(t))
            raise NuScenesInputError(path, "duplicate token", record=dup)
        tables[name] = data
    if not tables["map"]:
        raise NuScenesInputError(table_root / "map.json", "table 'map' is empty (the devkit needs >= 1 record)")
    _check_numeric(table_root, tables)
    _check_references(table_root, tables)
    return tables


def _check_numeric(table_root: Path, tables: dict) -> None:
    for name, field, shape in NUMERIC_FIELDS:
        recs = tables[name]
        try:
            arr = np.asarray([r[field] for r in recs], dtype=np.float64)
            ok = arr.shape == (len(recs),) + shape and np.isfinite(arr).all()
        except (TypeError, ValueError):
            ok = False
        if ok and field == "rotation":
            ok = bool((np.linalg.norm(arr, axis=-1) > 1e-6).all()) if len(recs) else True
        if not ok:
            for r in recs:  # only on failure: find the first bad record
                try:
                    v = np.asarray(r[field], dtype=np.float64)
                    good = v.shape == shape and np.isfinite(v).all()
                    if good and field == "rotation":
                        good = bool(np.linalg.norm(v) > 1e-6)
                except (TypeError, ValueError):
                    good = False
                if not good:
                    raise NuScenesInputError(table_root / f"{name}.json",
                                             f"field '{field}' = {r[field]!r} must be {shape[0]} finite numbers"
                                             + (" (non-zero quaternion [w, x, y, z])" if field == "rotation" else ""),
                                             record=r["token"])
    sensors = {r["token"]: r for r in tables["sensor"]}
    for r in tables["calibrated_sensor"]:
        sensor = sensors.get(r["sensor_token"])
        if sensor is not None and sensor["modality"] == "camera":
            try:
                good = np.asarray(r["camera_intrinsic"], dtype=np.float64).shape == (3, 3)
            except (TypeError, ValueError):
                good = False
            if not good:
                raise NuScenesInputError(table_root / "calibrated_sensor.json",
                                         f"camera_intrinsic of camera {sensor['channel']} must be a 3x3 matrix, "
                                         f"got {r['camera_intrinsic']!r}", record=r["token"])


def _check_references(table_root: Path, tables: dict) -> None:
    tokens = {name: {r["token"] for r in recs} for name, recs in tables.items()}
    for table, field, target, allow_empty in REFERENCES:
        valid = tokens[target] | ({""} if allow_empty else set())
        values = [r[field] for r in tables[table]]
        bad = {v for v in values if not isinstance(v, str)} | (set(v for v in values if isinstance(v, str)) - valid)
        if bad:
            rec = next(r for r in tables[table] if not isinstance(r[field], str) or r[field] not in valid)
            raise NuScenesInputError(table_root / f"{table}.json",
                                     f"{field} {rec[field]!r} not found in {target}.json", record=rec["token"])
    for rec in tables["sample_annotation"]:
        bad_attr = set(rec.get("attribute_tokens", [])) - tokens["attribute"]
        if bad_attr:
            raise NuScenesInputError(table_root / "sample_annotation.json",
                                     f"attribute_tokens entry {sorted(bad_attr)[0]!r} not found in attribute.json",
                                     record=rec["token"])
    covered = set()
    for rec in tables["map"]:
        if not isinstance(rec["log_tokens"], list):
            raise NuScenesInputError(table_root / "map.json", "log_tokens must be a list", record=rec["token"])
        covered.update(rec["log_tokens"])
        mask = Path(table_root).parent / rec["filename"]
        if not mask.is_file():
            raise NuScenesInputError(table_root / "map.json",
                                     f"map raster '{rec['filename']}' not found at {mask}", record=rec["token"])
    for rec in tables["log"]:
        if rec["token"] not in covered:
            raise NuScenesInputError(table_root / "map.json",
                                     f"log.json record {rec['token']} is not listed in any map record's log_tokens")
        if rec["location"] not in LOCATION_CANVAS:
            raise NuScenesInputError(table_root / "log.json",
                                     f"location {rec['location']!r} is not a nuScenes map location; "
                                     f"allowed: {sorted(LOCATION_CANVAS)}", record=rec["token"])
    # Key frames: every sample needs the six cameras and LIDAR_TOP (the cache and MapTR/UniAD read them).
    channel_of_cs = {}
    sensors = {r["token"]: r for r in tables["sensor"]}
    for r in tables["calibrated_sensor"]:
        channel_of_cs[r["token"]] = sensors[r["sensor_token"]]["channel"]
    have = {(r["sample_token"], channel_of_cs[r["calibrated_sensor_token"]])
            for r in tables["sample_data"] if r["is_key_frame"]}
    for rec in tables["sample"]:
        for ch in CHANNELS:
            if (rec["token"], ch) not in have:
                raise NuScenesInputError(table_root / "sample.json",
                                         f"no key-frame {ch} record in sample_data.json", record=rec["token"])


def walk_scenes(table_root: Path, tables: dict) -> dict[str, list[str]]:
    """scene token -> its sample tokens in time order (sample.next chain), checking the chain stays in the
    scene, has no cycle and ends at last_sample_token when that field is present."""
    samples = {r["token"]: r for r in tables["sample"]}
    out = {}
    for scene in tables["scene"]:
        chain, seen = [], set()
        tok = scene["first_sample_token"]
        while tok:
            if tok in seen:
                raise NuScenesInputError(table_root / "sample.json", f"sample.next chain of scene "
                                         f"{scene['name']!r} loops back to this record", record=tok)
            seen.add(tok)
            rec = samples[tok]
            if rec["scene_token"] != scene["token"]:
                raise NuScenesInputError(table_root / "sample.json",
                                         f"reached from scene {scene['name']!r} ({scene['token']}) through "
                                         f"sample.next but its scene_token is {rec['scene_token']!r}", record=tok)
            chain.append(tok)
            tok = rec["next"]
        last = scene.get("last_sample_token")
        if last and chain[-1] != last:
            raise NuScenesInputError(table_root / "scene.json",
                                     f"sample.next chain ends at {chain[-1]} but last_sample_token is {last}",
                                     record=scene["token"])
        out[scene["token"]] = chain
    return out


# --------------------------------------------------------------------------------------------------
# Map expansion
# --------------------------------------------------------------------------------------------------


def expansion_path(dataroot: str | Path, location: str) -> Path:
    return Path(dataroot) / "maps" / "expansion" / f"{location}.json"


def check_map_expansion(dataroot: str | Path, location: str, poses: np.ndarray, pose_tokens: list[str],
                        first_log: str) -> None:
    """Check ``maps/expansion/<location>.json``: present, parseable, the keys and version the devkit needs,
    referential integrity of the layers we read, a canvas matching the location's real size, and all ego
    positions ``poses (N, 2)`` (records ``pose_tokens``) inside the canvas."""
    path = expansion_path(dataroot, location)
    if not path.is_file():
        raise NuScenesInputError(path, f"map expansion for location '{location}' not found "
                                       f"(needed by log.json record {first_log})")
    obj = read_json(path, "map expansion")
    if not isinstance(obj, dict):
        raise NuScenesInputError(path, "map expansion must be a JSON object")
    for key in MAP_LIST_KEYS + MAP_DICT_KEYS + ("canvas_edge", "version"):
        if key not in obj:
            raise NuScenesInputError(path, f"map expansion lacks the key '{key}'")
        if key in MAP_LIST_KEYS and not isinstance(obj[key], list):
            raise NuScenesInputError(path, f"map expansion key '{key}' must be a list")
        if key in MAP_DICT_KEYS and not isinstance(obj[key], dict):
            raise NuScenesInputError(path, f"map expansion key '{key}' must be an object")
    if not isinstance(obj["version"], str) or obj["version"] < "1.3":
        raise NuScenesInputError(path, f"map version {obj['version']!r} must be a string >= '1.3' (devkit 1.2.0)")
    try:
        canvas = np.asarray(obj["canvas_edge"], dtype=np.float64)
        assert canvas.shape == (2,)
    except (TypeError, ValueError, AssertionError):
        raise NuScenesInputError(path, f"canvas_edge {obj['canvas_edge']!r} must be [width, height]") from None
    expected = np.asarray(LOCATION_CANVAS[location])
    if np.abs(canvas - expected).max() > CANVAS_TOLERANCE_M:
        others = [loc for loc, dims in LOCATION_CANVAS.items()
                  if loc != location and np.abs(canvas - np.asarray(dims)).max() <= CANVAS_TOLERANCE_M]
        like = f"it looks like the map of '{others[0]}'" if others else "it matches no nuScenes location"
        raise NuScenesInputError(path, f"canvas_edge {canvas.tolist()} does not match {location}'s "
                                       f"{list(expected)} (tolerance {CANVAS_TOLERANCE_M} m): {like}")
    outside = ~((poses >= 0).all(axis=1) & (poses <= canvas).all(axis=1))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise NuScenesInputError(path, f"ego_pose.json record {pose_tokens[i]} at ({poses[i, 0]:.1f}, "
                                       f"{poses[i, 1]:.1f}) lies outside this map's canvas {canvas.tolist()}: "
                                       f"the map expansion looks like another location's map")
    _check_map_references(path, obj)


def _check_map_references(path: Path, obj: dict) -> None:
    def tokens(key):
        return {r.get("token") for r in obj[key] if isinstance(r, dict)}

    nodes, lines, polys = tokens("node"), tokens("line"), tokens("polygon")
    for rec in obj["polygon"]:
        for tok in list(rec.get("exterior_node_tokens", [])) + [t for h in rec.get("holes", [])
                                                                  for t in h.get("node_tokens", [])]:
            if tok not in nodes:
                raise NuScenesInputError(path, f"polygon node_token {tok!r} not found in 'node'",
                                         record=rec.get("token"))
    for rec in obj["line"]:
        for tok in rec.get("node_tokens", []):
            if tok not in nodes:
                raise NuScenesInputError(path, f"line node_token {tok!r} not found in 'node'",
                                         record=rec.get("token"))
    for layer in ("road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line", "carpark_area",
                  "lane_connector"):
        for rec in obj[layer]:
            if rec.get("polygon_token") not in polys:
                raise NuScenesInputError(path, f"{layer} polygon_token {rec.get('polygon_token')!r} not found in "
                                               f"'polygon'", record=rec.get("token"))
    for rec in obj["drivable_area"]:
        for tok in rec.get("polygon_tokens", []):
            if tok not in polys:
                raise NuScenesInputError(path, f"drivable_area polygon_token {tok!r} not found in 'polygon'",
                                         record=rec.get("token"))
    for layer in ("road_divider", "lane_divider", "traffic_light"):
        for rec in obj[layer]:
            if rec.get("line_token") not in lines:
                raise NuScenesInputError(path, f"{layer} line_token {rec.get('line_token')!r} not found in 'line'",
                                         record=rec.get("token"))


def check_poses_on_roads(path: Path, surface_tree, surface_count: int, poses: np.ndarray,
                         min_fraction: float = 0.5, distance: float = 5.0) -> None:
    """Most ego positions must lie on (within ``distance`` m of) the map's road surface; a map expansion of
    another town with the same canvas fails here. ``surface_tree`` is an STRtree of road polygons."""
    if len(poses) == 0:
        return
    import shapely

    pts = shapely.points(poses)
    if surface_count == 0:
        frac = 0.0
    else:
        hit = surface_tree.query(pts, predicate="dwithin", distance=distance)[0]
        frac = len(np.unique(hit)) / len(poses)
    if frac < min_fraction:
        raise NuScenesInputError(path, f"only {frac:.0%} of the {len(poses)} ego positions of this location lie "
                                       f"within {distance} m of its road_segment/lane/drivable_area polygons: "
                                       f"the map expansion looks like another location's (or town's) map")


# --------------------------------------------------------------------------------------------------
# Sensor files
# --------------------------------------------------------------------------------------------------


LIDAR_POINT_BYTES = 5 * 4        # a nuScenes .pcd.bin point: x, y, z, intensity, ring index as float32
JPEG_SOI, JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
JPEG_TAIL = 64                   # bytes read at the end of a JPEG (the EOI marker may be followed by padding)


def check_sensor_files(dataroot: str | Path, table_root: Path, items: Iterable[tuple[str, str, str]]) -> None:
    """Every (sample_data token, relative filename, sample token) must exist (one directory listing per folder),
    and be readable cheaply: a camera ``.jpg`` must start with the JPEG markers, parse (PIL reads the headers up
    to the image data, no decode) and end with the end-of-image marker ``FF D9`` (so a truncated file fails); a
    LiDAR ``.pcd.bin`` must hold a whole, non-zero number of 5-float32 points. A few small reads per file: 2,400
    key-frame JPEGs of the default world take about 0.1 s (warm page cache; a full decode took 0.5 s there and
    would take minutes on v1.0-trainval's 1600 x 900 images)."""
    root = Path(dataroot)
    by_dir: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for token, rel, sample in items:
        by_dir[os.path.dirname(rel)].append((token, rel, sample))
    for d in sorted(by_dir):
        try:
            present = set(os.listdir(root / d))
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        for token, rel, sample in by_dir[d]:
            if os.path.basename(rel) not in present:
                raise NuScenesInputError(table_root / "sample_data.json",
                                         f"file '{rel}' of sample {sample} not found at {root / rel} "
                                         f"(cache.check_files)", record=token)
            problem = _sensor_file_problem(root / rel)
            if problem:
                raise NuScenesInputError(root / rel, f"{problem}; file of sample {sample} (sample_data.json, "
                                                     f"cache.check_files)", record=token)


def _sensor_file_problem(path: Path) -> str | None:
    """Why a camera JPEG or a LiDAR .pcd.bin cannot be used, or None (other formats are not inspected)."""
    name = path.name.lower()
    try:
        if name.endswith(".pcd.bin"):
            size = path.stat().st_size
            if size == 0 or size % LIDAR_POINT_BYTES:
                return (f"LiDAR point cloud of {size} bytes is not a whole, non-zero number of points "
                        f"({LIDAR_POINT_BYTES} bytes each: x, y, z, intensity, ring as float32): truncated or "
                        f"not a nuScenes .pcd.bin")
        elif name.endswith((".jpg", ".jpeg")):
            from PIL import Image, UnidentifiedImageError

            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if fh.read(len(JPEG_SOI)) != JPEG_SOI:
                    return "camera image does not start with the JPEG start-of-image marker FF D8 FF: not a JPEG"
                fh.seek(max(0, size - JPEG_TAIL))
                if not fh.read().rstrip(b"\x00").endswith(JPEG_EOI):
                    return (f"camera image of {size} bytes does not end with the JPEG end-of-image marker FF D9: "
                            f"truncated")
                fh.seek(0)
                try:
                    Image.open(fh).close()      # parses the headers up to the image data, decodes nothing
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                    return f"camera image cannot be decoded (corrupt JPEG headers): {exc}"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None
