"""Vectorised HD-map GT (MapTR / HDMapNet recipe), fast path.

Recipe (map_and_planning.md A.1-A.3), in the current LIDAR_TOP frame (x right, y forward):

* patch: ``patch_size = [along (lidar y), across (lidar x)]`` centred on the LIDAR_TOP origin, rotated by
  ``patch_angle = yaw(lidar2global)``; geometry is clipped in the global frame, then mapped to the local
  frame by ``R(-yaw) (p - centre)`` (yaw-only, as the devkit explorer and MapTR do);
* divider: every ``road_divider`` and ``lane_divider`` line clipped to the patch; multi-part results split;
* ped_crossing: union of the clipped crossings; each ring (exteriors clockwise, holes counter-clockwise)
  intersected with the patch grown by 0.2 m, so crossings stay closed rings; multi-part results line-merged;
* boundary: union(union(road_segment), union(lane)); rings oriented as above, intersected with the patch
  shrunk by 0.2 m (which cuts them open at the patch edge) and line-merged;
* each element resampled to P points at ``np.linspace(0, length, P)`` and clamped to the patch.

Instead of querying the devkit per sample (``NuScenesMapExplorer._get_layer_*`` re-extracts every record of a
layer for every call), each location is pre-indexed once: the divider lines, the union of the crossings and
the union's boundary rings (cut into short chunks) are built from the devkit's ``extract_line`` /
``extract_polygon`` and put into shapely STRtrees. All samples of a scene are then done together
(:meth:`LocationMap.scene_elements`): one tree query per class with every patch, one vectorised clip of all
(patch, geometry) pairs, one coordinate transform into each pair's own patch frame, one grouped line-merge and
one resampling call. ``map_reference.py`` keeps the devkit path for tests and benchmarks.

Two details differ from MapTR on purpose, in both paths: closed elements start at their lowest (x, then y)
vertex (MapTR's start point is whatever GEOS's union returned: arbitrary), and non-line parts of a clip
(a point where a line grazes the patch corner) are dropped (MapTR raises ``NotImplementedError``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.strtree import STRtree

LINE_LAYERS = ("road_divider", "lane_divider")
CONTOUR_LAYERS = ("road_segment", "lane")
SURFACE_LAYERS = ("road_segment", "lane", "drivable_area")
EDGE_MARGIN = 0.2  # m, MapTR's grow (ped_crossing) / shrink (boundary) of the local patch
RING_CHUNK_SEGMENTS = 16  # boundary rings are indexed in chunks of at most this many segments
_LINESTRING, _MULTILINESTRING, _POLYGON = 1, 5, 3


@dataclass(frozen=True)
class MapElements:
    """Elements of one sample, sorted by (class, start point, end point)."""

    points: np.ndarray  # (K, P, 2) float32, local LIDAR frame
    classes: np.ndarray  # (K,) int8, index into the class list
    closed: np.ndarray  # (K,) bool, first point == last point (a full ring inside the patch)


# --------------------------------------------------------------------------------------------------
# Patch helpers
# --------------------------------------------------------------------------------------------------


def _rot(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


def local_box(patch_size, margin: float = 0.0) -> shapely.Polygon:
    hx, hy = patch_size[1] / 2 + margin, patch_size[0] / 2 + margin
    return shapely.box(-hx, -hy, hx, hy)


def orient_rings(polys: np.ndarray, return_index: bool = False):
    """Rings of polygons as LineStrings, exteriors clockwise and holes counter-clockwise (MapTR's orientation);
    with ``return_index`` also the polygon index of each ring."""
    if len(polys) == 0:
        empty = np.empty(0, dtype=object)
        return (empty, np.empty(0, dtype=np.int64)) if return_index else empty
    rings, owner = shapely.get_rings(polys, return_index=True)
    is_ext = np.ones(len(rings), dtype=bool)
    is_ext[1:] = owner[1:] != owner[:-1]  # get_rings yields the exterior first
    ccw = shapely.is_ccw(rings)
    flip = np.where(is_ext, ccw, ~ccw)
    rings = np.where(flip, shapely.reverse(rings), rings)
    lines = shapely.linestrings(shapely.get_coordinates(rings), indices=np.repeat(
        np.arange(len(rings)), shapely.get_num_coordinates(rings)))
    return (lines, owner) if return_index else lines


def merge_multi(geoms: np.ndarray) -> np.ndarray:
    """``ops.linemerge`` applied where the clip returned a MultiLineString (as MapTR does)."""
    if len(geoms) == 0:
        return geoms
    multi = shapely.get_type_id(geoms) == _MULTILINESTRING
    out = geoms.copy()
    if multi.any():
        out[multi] = shapely.line_merge(geoms[multi])
    return out


def _polygon_parts(geom) -> np.ndarray:
    parts = shapely.get_parts(np.asarray([geom], dtype=object))
    return parts[(shapely.get_type_id(parts) == _POLYGON) & ~shapely.is_empty(parts)]


# --------------------------------------------------------------------------------------------------
# Resampling, shared by the fast path and the reference
# --------------------------------------------------------------------------------------------------


def canonical_start(lines: np.ndarray) -> np.ndarray:
    """Closed lines restarted at their lowest (x, then y; rounded to 0.1 mm) vertex, direction kept."""
    if len(lines) == 0:
        return lines
    closed = shapely.is_closed(lines)
    if not closed.any():
        return lines
    ring = lines[closed]
    xy, g = shapely.get_coordinates(ring, return_index=True)  # (N, 2), (N,) ring id
    n = np.bincount(g, minlength=len(ring))  # coords per ring incl. the repeated closing one
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = np.arange(len(xy)) - start[g]
    body = pos < n[g] - 1  # drop the closing duplicate
    xy, g, pos = xy[body], g[body], pos[body]
    m = n - 1
    key = np.round(xy, 4)  # 0.1 mm: vertices on a patch edge tie robustly despite float noise
    order = np.lexsort((key[:, 1], key[:, 0], g))  # per ring, lowest x then y first
    first = np.ones(len(order), dtype=bool)
    first[1:] = g[order][1:] != g[order][:-1]
    k = np.zeros(len(ring), dtype=np.int64)
    k[g[order][first]] = pos[order][first]
    shifted = (pos - k[g]) % m[g]
    new = np.lexsort((shifted, g))
    xy, g = xy[new], g[new]
    head = np.ones(len(g), dtype=bool)
    head[1:] = g[1:] != g[:-1]
    xy = np.concatenate([xy, xy[head]])  # re-close each ring
    g = np.concatenate([g, g[head]])
    o = np.argsort(g, kind="stable")
    out = lines.copy()
    out[closed] = shapely.linestrings(xy[o], indices=g[o])
    return out


def finalize(lines: np.ndarray, classes: np.ndarray, num_points: int, patch_size) -> MapElements:
    """Canonical start, arc-length resampling to ``num_points``, clamp, and a deterministic order."""
    owner = np.zeros(len(lines), dtype=np.int64)
    pts, cls, closed, _ = finalize_batch(lines, classes, owner, num_points, patch_size)
    return MapElements(pts, cls, closed)


def finalize_batch(lines: np.ndarray, classes: np.ndarray, owner: np.ndarray, num_points: int, patch_size):
    """:func:`finalize` for elements of several patches; sorted by (owner, class, start, end).

    Returns points (K, P, 2) f32, classes (K,) i8, closed (K,) bool, owner (K,)."""
    lines = np.asarray(lines, dtype=object)
    classes = np.asarray(classes, dtype=np.int8)
    owner = np.asarray(owner, dtype=np.int64)
    if len(lines):
        keep = shapely.length(lines) > 0
        lines, classes, owner = lines[keep], classes[keep], owner[keep]
    if len(lines) == 0:
        return np.zeros((0, num_points, 2), np.float32), np.zeros(0, np.int8), np.zeros(0, bool), owner
    lines = canonical_start(lines)
    closed = shapely.is_closed(lines)
    frac = np.linspace(0.0, 1.0, num_points)
    dist = shapely.length(lines)[:, None] * frac[None, :]  # (K, P) = np.linspace(0, L, P)
    pts = shapely.get_coordinates(shapely.line_interpolate_point(lines[:, None], dist)).reshape(len(lines),
                                                                                                 num_points, 2)
    pts[closed, -1] = pts[closed, 0]
    hx, hy = patch_size[1] / 2, patch_size[0] / 2
    pts[..., 0] = np.clip(pts[..., 0], -hx, hx)
    pts[..., 1] = np.clip(pts[..., 1], -hy, hy)
    pts = pts.astype(np.float32)
    order = np.lexsort((pts[:, -1, 1], pts[:, -1, 0], pts[:, 0, 1], pts[:, 0, 0], classes, owner))
    return pts[order], classes[order], closed[order], owner[order]


# --------------------------------------------------------------------------------------------------
# Pre-indexed location
# --------------------------------------------------------------------------------------------------


class LocationMap:
    """One location's map geometry, pre-indexed for per-sample clipping (build once, query many times)."""

    def __init__(self, nusc_map, patch_size, classes, num_points: int):
        self.location = nusc_map.map_name
        self.patch_size = tuple(float(v) for v in patch_size)
        self.classes = list(classes)
        self.num_points = int(num_points)
        get_poly, get_line = nusc_map.extract_polygon, nusc_map.extract_line

        lines = [get_line(r["line_token"]) for layer in LINE_LAYERS for r in getattr(nusc_map, layer)]
        self.divider_lines = np.asarray([g for g in lines if not g.is_empty], dtype=object)

        peds = [get_poly(r["polygon_token"]) for r in nusc_map.ped_crossing]
        ped_union = shapely.union_all(np.asarray([p for p in peds if p.is_valid], dtype=object))
        self.ped_polys = _polygon_parts(ped_union)

        unions = []
        for layer in CONTOUR_LAYERS:  # invalid polygons are skipped, as the explorer does
            polys = [get_poly(r["polygon_token"]) for r in getattr(nusc_map, layer)]
            unions.append(shapely.union_all(np.asarray([p for p in polys if p.is_valid], dtype=object)))
        contour = shapely.union_all(np.asarray(unions, dtype=object))
        rings = orient_rings(_polygon_parts(contour))
        self.bound_chunks, self.bound_ring = _chunk_lines(rings, RING_CHUNK_SEGMENTS)

        surface = [get_poly(r["polygon_token"]) for layer in ("road_segment", "lane")
                   for r in getattr(nusc_map, layer)]
        surface += [get_poly(t) for r in nusc_map.drivable_area for t in r["polygon_tokens"]]
        self.surface = shapely.make_valid(np.asarray(surface, dtype=object)) if surface else np.empty(0, object)
        self.surface_tree = STRtree(self.surface)

        self.divider_tree = STRtree(self.divider_lines)
        self.ped_tree = STRtree(self.ped_polys)
        self.bound_tree = STRtree(self.bound_chunks)
        self._grown = local_box(self.patch_size, EDGE_MARGIN)

    def lines_batch(self, centers: np.ndarray, yaws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unresampled local-frame elements of n patches at once.

        centers (n, 2) global, yaws (n,) rad. Returns (lines (K,) LineString, class (K,) int8, patch (K,) int).
        One set of vectorised shapely calls for all patches: tree queries return (patch, geometry) pairs, the
        pairs are clipped together and moved to their own patch frame by one coordinate transform."""
        centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
        yaws = np.asarray(yaws, dtype=np.float64).reshape(-1)
        patches = patch_polygons(centers, yaws, self.patch_size)
        out = []
        for ci, name in enumerate(self.classes):
            if name == "divider":
                pi, gi = _query(self.divider_tree, patches)
                clipped = _to_local_batch(shapely.intersection(self.divider_lines[gi], patches[pi]), pi, centers, yaws)
                lines, owner = _line_parts(clipped, pi)
            elif name == "ped_crossing":
                # the crossings were unioned once per location: the clipped parts are disjoint, so the union of
                # MapTR's per-sample clips is just these pieces
                pi, gi = _query(self.ped_tree, patches)
                clipped = _to_local_batch(shapely.intersection(self.ped_polys[gi], patches[pi]), pi, centers, yaws)
                polys, src = shapely.get_parts(clipped, return_index=True)
                keep = (shapely.get_type_id(polys) == _POLYGON) & ~shapely.is_empty(polys)
                polys, poly_owner = polys[keep], pi[src[keep]]
                rings, ring_src = orient_rings(polys, return_index=True)
                lines, owner = _line_parts(merge_multi(shapely.intersection(rings, self._grown)),
                                           poly_owner[ring_src])
            elif name == "boundary":
                shrunk = patch_polygons(centers, yaws, self.patch_size, -EDGE_MARGIN)
                pi, gi = _query(self.bound_tree, shrunk)
                clipped = shapely.intersection(self.bound_chunks[gi], shrunk[pi])
                parts, part_pair = _line_parts(clipped, np.arange(len(pi)))
                parts = _to_local_batch(parts, pi[part_pair], centers, yaws)
                key = pi[part_pair] * (int(self.bound_ring.max(initial=0)) + 1) + self.bound_ring[gi[part_pair]]
                if len(parts):
                    order = np.argsort(key, kind="stable")
                    uniq, group = np.unique(key[order], return_inverse=True)
                    merged = shapely.line_merge(shapely.multilinestrings(parts[order], indices=group))
                    lines, owner = _line_parts(merged, pi[part_pair][order][np.searchsorted(key[order], uniq)])
                else:
                    lines, owner = parts, np.empty(0, dtype=np.int64)
            else:
                raise ValueError(f"unknown map class {name!r}")
            out.append((lines, np.full(len(lines), ci, dtype=np.int8), owner))
        if not out:
            return np.empty(0, dtype=object), np.empty(0, dtype=np.int8), np.empty(0, dtype=np.int64)
        return tuple(np.concatenate(x) for x in zip(*out))

    def scene_elements(self, centers: np.ndarray, yaws: np.ndarray):
        """Resampled elements of n patches, padded: points (n, m, P, 2) f32, class (n, m) i8 (-1 pad),
        closed (n, m) bool; m = the most elements of any of the patches."""
        n = len(np.asarray(yaws).reshape(-1))
        lines, cls, owner = self.lines_batch(centers, yaws)
        pts, cls, closed, owner = finalize_batch(lines, cls, owner, self.num_points, self.patch_size)
        counts = np.bincount(owner, minlength=n)
        m = int(counts.max(initial=0))
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within patch
        points = np.zeros((n, m, self.num_points, 2), np.float32)
        classes = np.full((n, m), -1, np.int8)
        closed_out = np.zeros((n, m), bool)
        points[owner, slot], classes[owner, slot], closed_out[owner, slot] = pts, cls, closed
        return points, classes, closed_out

    def lines_for(self, center: np.ndarray, yaw: float) -> tuple[np.ndarray, np.ndarray]:
        """Unresampled local-frame elements (LineStrings, class indices) of one patch."""
        lines, cls, _ = self.lines_batch(np.asarray(center, dtype=np.float64)[None, :2], np.array([yaw]))
        return lines, cls

    def elements(self, center: np.ndarray, yaw: float) -> MapElements:
        lines, cls = self.lines_for(center, yaw)
        return finalize(lines, cls, self.num_points, self.patch_size)


def patch_polygons(centers: np.ndarray, yaws: np.ndarray, patch_size, margin: float = 0.0) -> np.ndarray:
    """(n,) global-frame patches, as :func:`patch_polygon` for each (centre, yaw)."""
    hx, hy = patch_size[1] / 2 + margin, patch_size[0] / 2 + margin
    corners = np.array([[hx, -hy], [hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])  # (5, 2)
    c, s = np.cos(yaws)[:, None], np.sin(yaws)[:, None]  # (n, 1)
    xy = np.stack([c * corners[:, 0] - s * corners[:, 1], s * corners[:, 0] + c * corners[:, 1]], -1)
    return shapely.polygons(xy + centers[:, None, :])  # (n,)


def _query(tree: STRtree, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patch index, geometry index) pairs of intersecting geometries, sorted by patch then geometry."""
    pi, gi = tree.query(patches, predicate="intersects")
    order = np.lexsort((gi, pi))
    return pi[order], gi[order]


def _to_local_batch(geoms: np.ndarray, owner: np.ndarray, centers: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """Each geometry to its own patch frame: ``R(-yaw) (p - centre)`` of patch ``owner``."""
    if len(geoms) == 0:
        return geoms
    xy, g = shapely.get_coordinates(geoms, return_index=True)
    o = owner[g]
    d = xy - centers[o]
    c, s = np.cos(yaws[o]), np.sin(yaws[o])
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], 1)
    return shapely.set_coordinates(geoms.copy(), local)


def _line_parts(geoms: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty LineString parts of ``geoms`` and the owner of each (owner[i] belongs to geoms[i])."""
    if len(geoms) == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    parts, src = shapely.get_parts(geoms, return_index=True)
    keep = (shapely.get_type_id(parts) == _LINESTRING) & ~shapely.is_empty(parts)
    return parts[keep], np.asarray(owner)[src[keep]]


def _chunk_lines(lines: np.ndarray, max_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut lines into consecutive chunks of <= ``max_segments`` segments sharing end points.

    Returns (chunks (C,) LineString, source line index (C,))."""
    if len(lines) == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    xy, g = shapely.get_coordinates(lines, return_index=True)
    n = np.bincount(g, minlength=len(lines))
    segs = n - 1
    nchunk = np.maximum(1, -(-segs // max_segments))  # ceil
    chunk_line = np.repeat(np.arange(len(lines)), nchunk)  # (C,)
    chunk_k = np.arange(len(chunk_line)) - np.repeat(np.cumsum(nchunk) - nchunk, nchunk)
    start = np.repeat(np.cumsum(n) - n, nchunk) + chunk_k * max_segments  # first coord index
    stop = np.minimum(start + max_segments, np.repeat(np.cumsum(n) - 1, nchunk))  # last coord index (incl.)
    counts = stop - start + 1
    idx = np.repeat(start - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
    chunks = shapely.linestrings(xy[idx], indices=np.repeat(np.arange(len(counts)), counts))
    return chunks, chunk_line
