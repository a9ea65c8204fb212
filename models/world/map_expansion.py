"""Serialise a :class:`~models.world.town.Town` as a nuScenes map-expansion JSON (version 1.3).

Every layer the devkit's ``NuScenesMap`` opens is written with every field real maps have, with
complete referential integrity (polygons -> nodes, lines -> nodes, stop lines -> crossings and traffic
lights, lanes -> divider nodes), an ``arcline_path_3`` entry and a ``connectivity`` entry for every
lane and lane connector, and line nodes at most 1 m apart (the devkit's patch queries test nodes,
not geometry: nuscenes_format.md §6.4).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from shapely.geometry import Polygon

from models.world.town import Town, densify


def map_token(*parts) -> str:
    """Deterministic dashed UUID, the format real map-expansion records use."""
    h = hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Builder:
    def __init__(self, location: str):
        self.loc = location
        self.layers = {k: [] for k in (
            "polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
            "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light",
            "lane_connector")}
        self.counter = 0

    def token(self, kind: str) -> str:
        self.counter += 1
        return map_token(self.loc, kind, self.counter)

    def nodes(self, pts: np.ndarray) -> list:
        toks = []
        for x, y in np.asarray(pts, float):
            t = self.token("node")
            self.layers["node"].append({"token": t, "x": round(float(x), 4), "y": round(float(y), 4)})
            toks.append(t)
        return toks

    def line(self, pts: np.ndarray) -> tuple[str, list]:
        toks = self.nodes(densify(np.asarray(pts, float), 1.0))
        t = self.token("line")
        self.layers["line"].append({"token": t, "node_tokens": toks})
        return t, toks

    def polygon(self, poly: Polygon) -> str:
        ext = np.asarray(poly.exterior.coords)[:-1]
        holes = [{"node_tokens": self.nodes(np.asarray(r.coords)[:-1])} for r in poly.interiors]
        t = self.token("polygon")
        self.layers["polygon"].append({"token": t, "exterior_node_tokens": self.nodes(ext), "holes": holes})
        return t


def town_to_map_json(town: Town) -> dict:
    """The map-expansion dict for ``town`` (json.dump it to maps/expansion/<location>.json)."""
    b = _Builder(town.location)
    L = b.layers

    da_tokens = [b.polygon(p) for p in town.drivable_area]
    da_token = b.token("drivable_area")
    L["drivable_area"].append({"token": da_token, "polygon_tokens": da_tokens})

    seg_tokens = []
    for poly, is_intersection in town.road_segments:
        t = b.token("road_segment")
        L["road_segment"].append({"token": t, "polygon_token": b.polygon(poly), "is_intersection": bool(is_intersection),
                                  "drivable_area_token": da_token})
        seg_tokens.append(t)

    block_tokens = []
    for poly, seg, from_line, to_line in town.road_blocks:
        t = b.token("road_block")
        L["road_block"].append({"token": t, "polygon_token": b.polygon(poly), "from_edge_line_token": b.line(from_line)[0],
                                "to_edge_line_token": b.line(to_line)[0], "road_segment_token": seg_tokens[seg]})
        block_tokens.append(t)

    for line in town.road_dividers:
        seg = _nearest_segment(town, line)
        L["road_divider"].append({"token": b.token("road_divider"), "line_token": b.line(line)[0],
                                  "road_segment_token": seg_tokens[seg]})
    divider_nodes = []
    for line in town.lane_dividers:
        tok, nodes = b.line(line)
        segs = [{"node_token": n, "segment_type": "DOUBLE_DASHED_WHITE" if k % 2 == 0 else "NIL"}
                for k, n in enumerate(nodes)]
        L["lane_divider"].append({"token": b.token("lane_divider"), "line_token": tok, "lane_divider_segments": segs})
        divider_nodes.append((np.asarray(line), nodes))

    path_tokens = [b.token("lane" if p.kind == "lane" else "lane_connector") for p in town.paths]
    arclines, connectivity = {}, {}
    for p, tok in zip(town.paths, path_tokens):
        poly_tok = b.polygon(p.polygon)
        if p.kind == "connector":
            L["lane_connector"].append({"token": tok, "polygon_token": poly_tok})
        else:
            left, right = _lane_divider_segments(p, divider_nodes)
            d = p.points[1] - p.points[0]
            n = np.array([d[1], -d[0]]) / np.linalg.norm(d) * 3.5 / 2
            L["lane"].append({
                "token": tok, "polygon_token": poly_tok, "lane_type": "CAR",
                "from_edge_line_token": b.line(np.stack([p.points[0] - n, p.points[0] + n]))[0],
                "to_edge_line_token": b.line(np.stack([p.points[-1] - n, p.points[-1] + n]))[0],
                "left_lane_divider_segments": left, "right_lane_divider_segments": right})
        arclines[tok] = [{k: _round(v) for k, v in p.arcline.items()}]
        connectivity[tok] = {"incoming": [path_tokens[i] for i in p.predecessors],
                             "outgoing": [path_tokens[i] for i in p.successors]}

    crossing_tokens = []
    for c in town.crossings:
        t = b.token("ped_crossing")
        L["ped_crossing"].append({"token": t, "polygon_token": b.polygon(c.polygon),
                                  "road_segment_token": seg_tokens[c.road_segment]})
        crossing_tokens.append(t)
    for poly in town.walkways:
        L["walkway"].append({"token": b.token("walkway"), "polygon_token": b.polygon(poly)})

    light_tokens = []
    for line, pos, yaw in town.traffic_lights:
        t = b.token("traffic_light")
        pose = {"tx": float(pos[0]), "ty": float(pos[1]), "tz": 0.0, "rx": 0.0, "ry": 0.0, "rz": float(yaw)}
        items = [{"color": color, "shape": "CIRCLE", "rel_pos": {"tx": 0.0, "ty": 0.0, "tz": z, "rx": 0.0, "ry": 0.0,
                                                               "rz": 0.0}, "to_road_block_tokens": []}
                 for color, z in (("RED", 4.2), ("YELLOW", 3.9), ("GREEN", 3.6))]
        L["traffic_light"].append({"token": t, "line_token": b.line(line)[0], "traffic_light_type": "VERTICAL",
                                   "from_road_block_token": block_tokens[_nearest_block(town, pos[:2])],
                                   "items": items, "pose": pose})
        light_tokens.append(t)
    for poly, kind, crossing, light in town.stop_lines:
        L["stop_line"].append({
            "token": b.token("stop_line"), "polygon_token": b.polygon(poly), "stop_line_type": kind,
            "ped_crossing_tokens": [crossing_tokens[crossing]] if crossing >= 0 else [],
            "traffic_light_tokens": [light_tokens[light]] if light >= 0 else [],
            "road_block_token": block_tokens[_nearest_block(town, np.asarray(poly.centroid.coords)[0])]})
    for poly, orientation in town.carparks:
        L["carpark_area"].append({"token": b.token("carpark_area"), "polygon_token": b.polygon(poly),
                                  "orientation": float(orientation), "road_block_token": ""})

    out = dict(L)
    out["arcline_path_3"] = arclines
    out["connectivity"] = connectivity
    out["canvas_edge"] = list(town.canvas_edge)
    out["version"] = "1.3"
    return out


def _round(v):
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def _nearest_segment(town: Town, line: np.ndarray) -> int:
    mid = np.asarray(line)[len(line) // 2]
    from shapely.geometry import Point
    d = [poly.distance(Point(mid)) for poly, _ in town.road_segments]
    return int(np.argmin(d))


def _nearest_block(town: Town, xy) -> int:
    from shapely.geometry import Point
    d = [poly.distance(Point(float(xy[0]), float(xy[1]))) for poly, *_ in town.road_blocks]
    return int(np.argmin(d))


def _lane_divider_segments(path, divider_nodes) -> tuple[list, list]:
    """The divider nodes running along this lane's left and right edges (empty where it is a kerb)."""
    mid = path.points[len(path.points) // 2]
    heading = path.headings[len(path.headings) // 2]
    left_n = np.array([-math.sin(heading), math.cos(heading)])
    out = {"left": [], "right": []}
    for line, nodes in divider_nodes:
        d = np.linalg.norm(line - mid, axis=1)
        k = int(np.argmin(d))
        if d[k] > 2.0:
            continue
        side = "left" if np.dot(line[k] - mid, left_n) > 0 else "right"
        seg_dir = np.dot(line[-1] - line[0], [math.cos(heading), math.sin(heading)])
        ordered = nodes if seg_dir >= 0 else nodes[::-1]
        out[side] = [{"node_token": n, "segment_type": "DOUBLE_DASHED_WHITE"} for n in ordered]
    return out["left"], out["right"]
