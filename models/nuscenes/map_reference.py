"""Slow reference for the map GT: MapTR's ``VectorizedLocalMap`` steps through the devkit explorer.

Follows ``hustvl/MapTR: projects/mmdet3d_plugin/datasets/nuscenes_map_dataset.py``
(``gen_vectorized_samples``, ``get_map_geom``, ``ped_poly_geoms_to_instances``, ``poly_geoms_to_instances``)
using ``NuScenesMapExplorer._get_layer_line`` / ``_get_layer_polygon`` for every layer on every call. Used
only by tests (to check :mod:`map_gt`'s pre-indexed path) and by the benchmark; not by the cache builder.
"""
from __future__ import annotations

import numpy as np
import shapely
from shapely import ops
from shapely.geometry import LineString, MultiLineString, MultiPolygon

from .map_gt import EDGE_MARGIN, MapElements, finalize, local_box


def _rings(union) -> tuple[list, list]:
    if union.geom_type != "MultiPolygon":
        union = MultiPolygon([union])
    exteriors, interiors = [], []
    for poly in union.geoms:
        exteriors.append(poly.exterior)
        interiors.extend(poly.interiors)
    return exteriors, interiors


def _clip_rings(union, box) -> list:
    """MapTR: exteriors made clockwise, holes counter-clockwise, intersected with ``box``, line-merged."""
    exteriors, interiors = _rings(union)
    results = []
    for ring, want_ccw in [(e, False) for e in exteriors] + [(i, True) for i in interiors]:
        if ring.is_ccw != want_ccw:
            ring = LineString(list(ring.coords)[::-1])  # MapTR assigns reversed coords in place (shapely 1)
        lines = ring.intersection(box)
        if isinstance(lines, MultiLineString):
            lines = ops.linemerge(lines)
        results.append(lines)
    return results


def _instances(geoms) -> list:
    out = []
    for g in geoms:
        if g is None or g.is_empty:
            continue
        if g.geom_type == "MultiLineString":
            out.extend(g.geoms)
        elif g.geom_type == "LineString":
            out.append(g)
        elif g.geom_type == "GeometryCollection":  # MapTR raises here; we keep the line parts
            out.extend(p for p in g.geoms if p.geom_type == "LineString")
    return out


def reference_lines(explorer, center, yaw: float, patch_size, classes) -> tuple[list, list]:
    """Unresampled elements of one patch through the devkit explorer (MapTR's exact steps)."""
    patch_box = (float(center[0]), float(center[1]), float(patch_size[0]), float(patch_size[1]))
    angle = float(yaw) / np.pi * 180.0
    lines, cls = [], []
    for ci, name in enumerate(classes):
        if name == "divider":
            found = []
            for layer in ("road_divider", "lane_divider"):
                found += _instances(explorer._get_layer_line(patch_box, angle, layer))
        elif name == "ped_crossing":
            peds = explorer._get_layer_polygon(patch_box, angle, "ped_crossing")
            if not peds:
                continue
            found = _instances(_clip_rings(ops.unary_union(peds), local_box(patch_size, EDGE_MARGIN)))
        elif name == "boundary":
            roads = explorer._get_layer_polygon(patch_box, angle, "road_segment")
            lanes = explorer._get_layer_polygon(patch_box, angle, "lane")
            union = ops.unary_union([ops.unary_union(roads), ops.unary_union(lanes)])
            if union.is_empty:
                continue
            union = MultiPolygon([p for p in shapely.get_parts(union) if p.geom_type == "Polygon"])
            found = _instances(_clip_rings(union, local_box(patch_size, -EDGE_MARGIN)))
        else:
            raise ValueError(f"unknown map class {name!r}")
        lines += found
        cls += [ci] * len(found)
    return lines, cls


def reference_elements(explorer, center, yaw: float, patch_size, classes, num_points: int) -> MapElements:
    lines, cls = reference_lines(explorer, center, yaw, patch_size, classes)
    return finalize(np.asarray(lines, dtype=object), np.asarray(cls, dtype=np.int8), num_points, patch_size)
