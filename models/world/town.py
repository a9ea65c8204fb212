"""A procedural town: a grid road network with intersections, curved corners and crossings.

Geometry only (shapely + numpy), no file format. ``build_town`` lays out a ``blocks x blocks`` grid of
nodes ``block_length`` apart. Corner nodes (two perpendicular arms) become large-radius curves; the
others become T- or 4-way intersections with filleted kerbs, pedestrian crossings on every arm and
stop lines before them. Every road has two lanes per direction (road divider in the middle, dashed
lane dividers between same-direction lanes); Singapore locations drive on the left.

Every drivable path element (a road lane, a curve lane or an intersection connector) is a straight
line or a single circular arc, so it is exactly representable by a nuScenes ``arcline_path_3`` record
and the devkit's ``discretize_centerlines`` reproduces our centre lines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from models.common.params import SynthParams

LANE_WIDTH = 3.5
LANES_PER_DIRECTION = 2
ROAD_HALF_WIDTH = LANE_WIDTH * LANES_PER_DIRECTION  # 7 m
INTERSECTION_HALF = 13.0  # junction square half size: road half width + kerb fillet
CURVE_RADIUS = 24.0  # centre-line radius of the corner curves
SIDEWALK_WIDTH = 3.5
CROSSING_RANGE = (INTERSECTION_HALF - 4.0, INTERSECTION_HALF - 0.5)  # along an arm, from the node
STOP_LINE_RANGE = (INTERSECTION_HALF + 0.3, INTERSECTION_HALF + 0.8)
TOWN_ORIGIN = (300.0, 300.0)  # south-west grid node, global metres

# Real map sizes; the devkit hard-codes them per location (nuscenes_format.md §4).
CANVAS_EDGE = {
    "singapore-onenorth": (1585.6, 2025.0),
    "singapore-hollandvillage": (2808.3, 2922.9),
    "singapore-queenstown": (3228.6, 3687.1),
    "boston-seaport": (2979.5, 2118.1),
}

ARMS = {"E": (1.0, 0.0), "N": (0.0, 1.0), "W": (-1.0, 0.0), "S": (0.0, -1.0)}


def right_of(d: np.ndarray) -> np.ndarray:
    return np.array([d[1], -d[0]])


@dataclass
class Path:
    """A directed drivable centre line: a road lane, a curve lane or an intersection connector."""

    kind: str  # "lane" (road / curve) or "connector" (inside an intersection)
    points: np.ndarray  # (N, 2) every <= 0.5 m
    headings: np.ndarray  # (N,)
    arcline: dict  # nuScenes arcline_path_3 record (start_pose, shape, radius, segment_length)
    turn: str  # straight / left / right
    node: int = -1  # junction index for connectors and curves, -1 for road lanes
    edge: int = -1  # road edge index for road lanes
    lane_index: int = 0  # 0 = inner (next to the road divider), 1 = outer (kerb side)
    successors: list = field(default_factory=list)
    predecessors: list = field(default_factory=list)

    @property
    def length(self) -> float:
        return float(sum(self.arcline["segment_length"]))

    @property
    def polygon(self) -> Polygon:
        return LineString(self.points).buffer(LANE_WIDTH / 2, cap_style="flat")


@dataclass
class Crossing:
    polygon: Polygon
    centre: np.ndarray  # (2,)
    road_dir: np.ndarray  # (2,) unit direction of the road it crosses
    half_length: float  # half its extent across the road (kerb to kerb)
    road_segment: int  # index into Town.road_segments


@dataclass
class Town:
    location: str
    canvas_edge: tuple
    hand: int  # +1 right-hand traffic, -1 left-hand traffic
    nodes: np.ndarray  # (K, 2) grid node positions
    node_kind: list  # "intersection" / "curve" per node
    paths: list  # [Path]
    road_segments: list  # [(Polygon, is_intersection)]
    road_blocks: list  # [(Polygon, road_segment index, from_line (2,2), to_line (2,2))]
    lane_dividers: list  # [np.ndarray (N, 2)] dashed white
    road_dividers: list  # [np.ndarray (N, 2)] double yellow
    crossings: list  # [Crossing]
    stop_lines: list  # [(Polygon, type, crossing index or -1, traffic light index or -1)]
    traffic_lights: list  # [(line (2,2), position (3,), yaw)]
    walkways: list  # [Polygon]
    sidewalk_lines: list  # [np.ndarray (N, 2)] closed rings along the middle of the walkways
    carparks: list  # [(Polygon, orientation)]
    parking_spots: np.ndarray  # (P, 3) x, y, yaw inside car parks
    buildings: np.ndarray  # (B, 6) cx, cy, w, l, h, yaw
    drivable_area: list  # [Polygon]
    bounds: tuple  # (xmin, ymin, xmax, ymax) of everything drawn

    def path_polyline(self, indices: list) -> np.ndarray:
        """Concatenate consecutive paths into one polyline, dropping duplicated joints."""
        pts = [self.paths[indices[0]].points]
        for i in indices[1:]:
            pts.append(self.paths[i].points[1:])
        return np.concatenate(pts)


# --------------------------------------------------------------------------------------------------
# Path primitives
# --------------------------------------------------------------------------------------------------


def straight_path(p0, p1, **kw) -> Path:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    n = max(int(math.ceil(length / 0.5)) + 1, 2)
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = p0 + t * (p1 - p0)
    yaw = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    arc = {"start_pose": [float(p0[0]), float(p0[1]), yaw], "end_pose": [float(p1[0]), float(p1[1]), yaw],
           "shape": "LSL", "radius": 999.999, "segment_length": [0.0, length, 0.0]}
    return Path(points=pts, headings=np.full(n, yaw), arcline=arc, **kw)


def turn_path(p0, d0, p1, d1, **kw) -> Path:
    """A 90-degree circular arc from pose (p0, d0) to pose (p1, d1)."""
    p0, d0, p1, d1 = (np.asarray(v, float) for v in (p0, d0, p1, d1))
    left = d0[0] * d1[1] - d0[1] * d1[0] > 0
    radius = abs(float(np.dot(p1 - p0, d0)))
    lateral = abs(float(np.dot(p1 - p0, right_of(d0))))
    assert abs(radius - lateral) < 1e-6, "a 90-degree turn needs equal forward and lateral offsets"
    normal = -right_of(d0) if left else right_of(d0)
    centre = p0 + radius * normal
    a0 = math.atan2(p0[1] - centre[1], p0[0] - centre[0])
    sweep = math.pi / 2 if left else -math.pi / 2
    length = radius * math.pi / 2
    n = max(int(math.ceil(length / 0.5)) + 1, 2)
    ang = a0 + np.linspace(0.0, sweep, n)
    pts = centre + radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    yaw0 = math.atan2(d0[1], d0[0])
    headings = yaw0 + np.linspace(0.0, sweep, n)
    arc = {"start_pose": [float(p0[0]), float(p0[1]), yaw0],
           "end_pose": [float(p1[0]), float(p1[1]), float(math.atan2(d1[1], d1[0]))],
           "shape": "LSL" if left else "RSR", "radius": radius, "segment_length": [length, 0.0, 0.0]}
    return Path(points=pts, headings=headings, arcline=arc, turn="left" if left else "right", **kw)


def arc_polyline(centre, radius, a0, a1, step=0.5) -> np.ndarray:
    n = max(int(math.ceil(abs(a1 - a0) * radius / step)) + 1, 2)
    ang = np.linspace(a0, a1, n)
    return np.asarray(centre) + radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)


def densify(line: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Resample a polyline so consecutive nodes are at most ``step`` apart (devkit patch queries)."""
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    out = [line[:1]]
    for a, b, s in zip(line[:-1], line[1:], seg):
        n = max(int(math.ceil(s / step)), 1)
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------------
# Town layout
# --------------------------------------------------------------------------------------------------


def build_town(location: str, params: SynthParams, rng: np.random.Generator) -> Town:
    """Lay out the road network, markings, crossings, kerbs, car parks and buildings of one town."""
    nb, spacing = params.town_blocks, params.block_length
    hand = -1 if location.startswith("singapore") else 1
    origin = np.array(TOWN_ORIGIN)
    grid = {(i, j): origin + spacing * np.array([i, j], float) for i in range(nb) for j in range(nb)}
    keys = sorted(grid)
    index = {k: n for n, k in enumerate(keys)}
    nodes = np.stack([grid[k] for k in keys])

    def arms_of(i, j):
        return [a for a, (dx, dy) in ARMS.items() if (i + int(dx), j + int(dy)) in grid]

    node_kind, extent = [], []
    for (i, j) in keys:
        arms = arms_of(i, j)
        corner = len(arms) == 2 and ARMS[arms[0]][0] != ARMS[arms[1]][0] and ARMS[arms[0]][1] != ARMS[arms[1]][1]
        node_kind.append("curve" if corner else "intersection")
        extent.append(CURVE_RADIUS if corner else INTERSECTION_HALF)

    paths: list[Path] = []
    road_segments, road_blocks, lane_dividers, road_dividers = [], [], [], []
    crossings, stop_lines, traffic_lights = [], [], []
    # incoming[(node, arm)] / outgoing[(node, arm)]: road-lane path indices by lane index
    incoming, outgoing = {}, {}

    # Road edges between neighbouring nodes ---------------------------------------------------------
    edges = [((i, j), (i + 1, j)) for (i, j) in keys if (i + 1, j) in grid]
    edges += [((i, j), (i, j + 1)) for (i, j) in keys if (i, j + 1) in grid]
    for e, (ka, kb) in enumerate(edges):
        a, b = index[ka], index[kb]
        d = (nodes[b] - nodes[a]) / np.linalg.norm(nodes[b] - nodes[a])
        start, end = nodes[a] + extent[a] * d, nodes[b] - extent[b] * d
        seg_poly = _strip(start, end, -ROAD_HALF_WIDTH, ROAD_HALF_WIDTH)
        seg_index = len(road_segments)
        road_segments.append((seg_poly, False))
        road_dividers.append(densify(np.stack([start, end])))
        for side in (-1.0, 1.0):
            off = side * LANE_WIDTH
            lane_dividers.append(densify(np.stack([start, end]) + off * right_of(d)))
        arm_a = _arm_name(d)
        arm_b = _arm_name(-d)
        for direction, (p_from, p_to, n_from, n_to, arm_to, arm_from) in enumerate(
                [(start, end, a, b, arm_b, arm_a), (end, start, b, a, arm_a, arm_b)]):
            dd = d if direction == 0 else -d
            side = hand * right_of(dd)
            road_blocks.append((_strip(p_from, p_to, 0.0, ROAD_HALF_WIDTH, d=dd, side=side), seg_index,
                                np.stack([p_from, p_from + ROAD_HALF_WIDTH * side]),
                                np.stack([p_to, p_to + ROAD_HALF_WIDTH * side])))
            for k in range(LANES_PER_DIRECTION):
                off = (k + 0.5) * LANE_WIDTH * side
                path = straight_path(p_from + off, p_to + off, kind="lane", turn="straight", edge=e, lane_index=k)
                outgoing.setdefault((n_from, arm_from), {})[k] = len(paths)
                incoming.setdefault((n_to, arm_to), {})[k] = len(paths)
                paths.append(path)
        # a mid-block crossing on some edges
        length = float(np.linalg.norm(end - start))
        if length > 40 and rng.random() < 0.5:
            mid = 0.5 * (start + end) + d * rng.uniform(-0.15, 0.15) * length
            crossings.append(_crossing(mid, d, seg_index))
            for dd in (d, -d):
                side = hand * right_of(dd)
                stop_c = mid - dd * 2.8
                stop_lines.append((_strip(stop_c - dd * 0.25, stop_c + dd * 0.25, 0.0, ROAD_HALF_WIDTH,
                                          d=dd, side=side), "PED_CROSSING", len(crossings) - 1, -1))

    # Junctions: curves and intersections ----------------------------------------------------------
    for n, (i, j) in enumerate(keys):
        arms = arms_of(i, j)
        c = nodes[n]
        ext = extent[n]
        if node_kind[n] == "curve":
            da, db = np.array(ARMS[arms[0]]), np.array(ARMS[arms[1]])
            centre = c + CURVE_RADIUS * (da + db)
            a_from = math.atan2(-db[1], -db[0])  # angle of the arm-a end seen from the centre
            a_to = math.atan2(-da[1], -da[0])
            if abs(_wrap(a_to - a_from)) > math.pi / 2 + 1e-6:
                a_from, a_to = a_to, a_from
            a1 = a_from + _wrap(a_to - a_from)
            outer = arc_polyline(centre, CURVE_RADIUS + ROAD_HALF_WIDTH, a_from, a1)
            inner = arc_polyline(centre, CURVE_RADIUS - ROAD_HALF_WIDTH, a1, a_from)
            road_segments.append((Polygon(np.concatenate([outer, inner])), False))
            road_dividers.append(arc_polyline(centre, CURVE_RADIUS, a_from, a1, step=1.0))
            for r in (CURVE_RADIUS - LANE_WIDTH, CURVE_RADIUS + LANE_WIDTH):
                lane_dividers.append(arc_polyline(centre, r, a_from, a1, step=1.0))
            for arm_in, arm_out in ((arms[0], arms[1]), (arms[1], arms[0])):
                d_in, d_out = -np.array(ARMS[arm_in]), np.array(ARMS[arm_out])
                for k in range(LANES_PER_DIRECTION):
                    o = (k + 0.5) * LANE_WIDTH
                    p0 = c - ext * d_in + o * hand * right_of(d_in)
                    p1 = c + ext * d_out + o * hand * right_of(d_out)
                    paths.append(turn_path(p0, d_in, p1, d_out, kind="lane", node=n, lane_index=k))
                    _link(paths, incoming[(n, arm_in)][k], len(paths) - 1)
                    _link(paths, len(paths) - 1, outgoing[(n, arm_out)][k])
            continue

        seg_index = len(road_segments)
        road_segments.append((_intersection_polygon(c, arms), True))
        for arm in arms:
            da = np.array(ARMS[arm])
            crossings.append(_crossing(c + da * 0.5 * sum(CROSSING_RANGE), da, seg_index))
            # incoming traffic on this arm drives towards the node: direction -da
            side = hand * right_of(-da)
            stop_c = c + da * 0.5 * sum(STOP_LINE_RANGE)
            light = len(traffic_lights)
            kerb = c + da * STOP_LINE_RANGE[1] + (ROAD_HALF_WIDTH + 0.5) * side
            traffic_lights.append((np.stack([kerb, kerb + 0.5 * da]),
                                   np.array([kerb[0], kerb[1], 0.0]), math.atan2(-da[1], -da[0])))
            stop_lines.append((_strip(stop_c - da * 0.25, stop_c + da * 0.25, 0.0, ROAD_HALF_WIDTH, d=-da,
                                      side=side), "TRAFFIC_LIGHT", -1, light))
            stop_lines.append((_strip(stop_c - da * 0.25, stop_c + da * 0.25, 0.0, ROAD_HALF_WIDTH, d=-da,
                                      side=side), "PED_CROSSING", len(crossings) - 1, -1))
        for arm_in in arms:
            d_in = -np.array(ARMS[arm_in])
            for arm_out in arms:
                if arm_out == arm_in:
                    continue
                d_out = np.array(ARMS[arm_out])
                cross = d_in[0] * d_out[1] - d_in[1] * d_out[0]
                if abs(cross) < 1e-9:
                    lane_pairs = [(k, k) for k in range(LANES_PER_DIRECTION)]
                else:
                    near_side = (cross < 0) == (hand > 0)
                    k = LANES_PER_DIRECTION - 1 if near_side else 0
                    lane_pairs = [(k, k)]
                for k_in, k_out in lane_pairs:
                    p0 = c - ext * d_in + (k_in + 0.5) * LANE_WIDTH * hand * right_of(d_in)
                    p1 = c + ext * d_out + (k_out + 0.5) * LANE_WIDTH * hand * right_of(d_out)
                    if abs(cross) < 1e-9:
                        path = straight_path(p0, p1, kind="connector", turn="straight", node=n, lane_index=k_in)
                    else:
                        path = turn_path(p0, d_in, p1, d_out, kind="connector", node=n, lane_index=k_in)
                    paths.append(path)
                    _link(paths, incoming[(n, arm_in)][k_in], len(paths) - 1)
                    _link(paths, len(paths) - 1, outgoing[(n, arm_out)][k_out])

    roads = unary_union([p for p, _ in road_segments])
    walk = roads.buffer(SIDEWALK_WIDTH, join_style="mitre").difference(roads)
    walkways = [g for g in getattr(walk, "geoms", [walk]) if g.area > 1.0]
    mid = roads.buffer(SIDEWALK_WIDTH / 2, join_style="mitre")
    sidewalk_lines = [densify(np.asarray(r.coords), 1.0) for g in getattr(mid, "geoms", [mid])
                      for r in [g.exterior, *g.interiors]]
    carparks, spots, buildings = _blocks(nodes, nb, spacing, roads, rng)
    drivable = unary_union([roads] + [p for p, _ in carparks])
    drivable_area = [g for g in getattr(drivable, "geoms", [drivable])]
    all_geoms = unary_union([drivable, walk] + [box(*b[:2], *(b[:2] + 1)) for b in buildings])
    xmin, ymin, xmax, ymax = all_geoms.bounds
    town = Town(location=location, canvas_edge=CANVAS_EDGE[location], hand=hand, nodes=nodes,
                node_kind=node_kind, paths=paths, road_segments=road_segments, road_blocks=road_blocks,
                lane_dividers=lane_dividers, road_dividers=road_dividers, crossings=crossings,
                stop_lines=stop_lines, traffic_lights=traffic_lights, walkways=walkways,
                sidewalk_lines=sidewalk_lines, carparks=carparks,
                parking_spots=spots, buildings=buildings, drivable_area=drivable_area,
                bounds=(xmin - 40, ymin - 40, xmax + 40, ymax + 40))
    _check_valid(town)
    return town


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _arm_name(d: np.ndarray) -> str:
    for name, v in ARMS.items():
        if np.allclose(v, d):
            return name
    raise ValueError(f"not an axis direction: {d}")


def _link(paths: list, a: int, b: int) -> None:
    """Record that path b follows path a."""
    paths[a].successors.append(b)
    paths[b].predecessors.append(a)


def _strip(p0, p1, off0, off1, d=None, side=None) -> Polygon:
    """The rectangle between offsets off0..off1 (along ``side``, default right of p0->p1)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    if d is None:
        d = (p1 - p0) / np.linalg.norm(p1 - p0)
    n = right_of(d) if side is None else np.asarray(side, float)
    return Polygon([p0 + off0 * n, p1 + off0 * n, p1 + off1 * n, p0 + off1 * n]).normalize()


def _crossing(centre, road_dir, seg_index) -> Crossing:
    centre, road_dir = np.asarray(centre, float), np.asarray(road_dir, float)
    half_w = 0.5 * (CROSSING_RANGE[1] - CROSSING_RANGE[0])
    poly = _strip(centre - road_dir * half_w, centre + road_dir * half_w, -ROAD_HALF_WIDTH, ROAD_HALF_WIDTH)
    return Crossing(polygon=poly, centre=centre, road_dir=road_dir, half_length=ROAD_HALF_WIDTH,
                    road_segment=seg_index)


def _intersection_polygon(c: np.ndarray, arms: list) -> Polygon:
    """Junction square with kerb fillets between present arms, cut at the kerb of missing arms."""
    J, hw = INTERSECTION_HALF, ROAD_HALF_WIDTH
    poly = box(c[0] - J, c[1] - J, c[0] + J, c[1] + J)
    for name, (dx, dy) in ARMS.items():
        if name not in arms:  # cut everything beyond the through road's kerb on this side
            far = 2 * J
            if dx:
                cut = box(c[0] + dx * hw if dx > 0 else c[0] - far, c[1] - far,
                          c[0] + far if dx > 0 else c[0] + dx * hw, c[1] + far)
            else:
                cut = box(c[0] - far, c[1] + dy * hw if dy > 0 else c[1] - far,
                          c[0] + far, c[1] + far if dy > 0 else c[1] + dy * hw)
            poly = poly.difference(cut)
    for sx in (-1, 1):
        for sy in (-1, 1):
            ax = "E" if sx > 0 else "W"
            ay = "N" if sy > 0 else "S"
            if ax in arms and ay in arms:
                corner = shapely.Point(c[0] + sx * J, c[1] + sy * J).buffer(J - hw, quad_segs=16)
                poly = poly.difference(corner)
    return shapely.set_precision(poly, 1e-6).normalize()


def _blocks(nodes, nb, spacing, roads, rng):
    """Car parks with parking spots next to some kerbs, and buildings filling the blocks."""
    carparks, spots, buildings = [], [], []
    keep_clear = roads.buffer(SIDEWALK_WIDTH + 0.5)  # kerbside walkways stay free of buildings
    x0, y0 = nodes[:, 0].min(), nodes[:, 1].min()
    setback = ROAD_HALF_WIDTH + SIDEWALK_WIDTH + 1.0
    # block cells: inner blocks and a ring of outer blocks around the grid
    for bi in range(-1, nb):
        for bj in range(-1, nb):
            cx0, cy0 = x0 + bi * spacing, y0 + bj * spacing
            lo = np.array([cx0 + setback, cy0 + setback])
            hi = np.array([cx0 + spacing - setback, cy0 + spacing - setback])
            if bi == -1:
                lo[0] = cx0 + spacing - setback - 30
            if bj == -1:
                lo[1] = cy0 + spacing - setback - 30
            if bi == nb - 1:
                hi[0] = cx0 + setback + 30
            if bj == nb - 1:
                hi[1] = cy0 + setback + 30
            cell = box(lo[0], lo[1], hi[0], hi[1])
            if cell.is_empty or cell.area < 100:
                continue
            occupied = []
            inner = 0 <= bi < nb - 1 and 0 <= bj < nb - 1
            if inner and rng.random() < 0.6:  # a car park along the block's south or north side
                south = rng.random() < 0.5
                depth, width = 14.0, min(40.0, (hi[0] - lo[0]) * 0.6)
                xs = lo[0] + rng.uniform(2.0, (hi[0] - lo[0]) - width - 2.0)
                ys = lo[1] if south else hi[1] - depth
                cp = box(xs, ys, xs + width, ys + depth)
                carparks.append((cp, math.pi / 2))
                occupied.append(cp.buffer(3.0))
                n_spots = int(width // 2.8)
                row_y = ys + depth * (0.3 if south else 0.7)
                for s in range(n_spots):
                    spots.append((xs + 1.4 + s * 2.8, row_y, math.pi / 2))
            # buildings: a row of boxes along each side of the block, set back from the sidewalk
            for side in range(4):
                along = (hi[0] - lo[0]) if side % 2 == 0 else (hi[1] - lo[1])
                pos = 2.0
                while pos < along - 8.0:
                    length = min(rng.uniform(10.0, 24.0), along - pos - 2.0)
                    depth = rng.uniform(8.0, 14.0)
                    height = rng.uniform(6.0, 22.0)
                    gap = rng.uniform(2.0, 6.0)
                    t = pos + length / 2
                    if side == 0:
                        cx, cy, w, l = lo[0] + t, lo[1] + depth / 2 + 1, depth, length
                    elif side == 1:
                        cx, cy, w, l = hi[0] - depth / 2 - 1, lo[1] + t, length, depth
                    elif side == 2:
                        cx, cy, w, l = lo[0] + t, hi[1] - depth / 2 - 1, depth, length
                    else:
                        cx, cy, w, l = lo[0] + depth / 2 + 1, lo[1] + t, length, depth
                    fp = box(cx - l / 2, cy - w / 2, cx + l / 2, cy + w / 2)
                    if (length > 6.0 and cell.contains(fp) and not any(fp.intersects(o) for o in occupied)
                            and not fp.intersects(keep_clear)):
                        buildings.append((cx, cy, w, l, height, 0.0))
                        occupied.append(fp.buffer(0.5))
                    pos += length + gap
    spots_arr = np.array(spots, float).reshape(-1, 3)
    # buildings: yaw 0 means length along x; (w, l) in nuScenes order = (across, along heading)
    return carparks, spots_arr, np.array(buildings, float).reshape(-1, 6)


def _check_valid(town: Town) -> None:
    """Invalid polygons are silently dropped by the devkit (nuscenes_format.md §6.7): refuse them."""
    layers = {"road_segment": [p for p, _ in town.road_segments], "crossing": [c.polygon for c in town.crossings],
              "walkway": town.walkways, "carpark": [p for p, _ in town.carparks],
              "lane": [p.polygon for p in town.paths], "drivable_area": town.drivable_area}
    for name, polys in layers.items():
        for k, p in enumerate(polys):
            if not p.is_valid or p.is_empty:
                raise AssertionError(f"town {town.location}: invalid {name} polygon #{k}: {shapely.is_valid_reason(p)}")
