"""Paint a town's map onto the ground texture the renderer and the LiDAR read.

Layers, bottom to top: grass, kerbside walkways (concrete), car parks and roads (asphalt), then
markings: dashed white lane dividers, double yellow road dividers, zebra crossings, stop lines and
parking bays. Every surface carries deterministic grain so that point trackers have texture to lock
onto. A parallel reflectivity raster gives LiDAR intensities (markings bright, asphalt dark).
"""
from __future__ import annotations

import cv2
import numpy as np
from shapely.geometry import Polygon

from models.world.render import GroundTexture
from models.world.town import Town

RESOLUTION = 0.1  # metres per texel
_SHIFT = 4  # cv2 fixed-point bits for sub-texel accurate drawing

GRASS, CONCRETE, ASPHALT = (74, 104, 52), (168, 166, 160), (62, 63, 66)
WHITE, YELLOW = (232, 232, 226), (222, 184, 40)
REFLECT = {"grass": 25, "concrete": 90, "asphalt": 40, "white": 220, "yellow": 190}


def paint_town(town: Town, seed: int) -> GroundTexture:
    xmin, ymin, xmax, ymax = town.bounds
    w = int(np.ceil((xmax - xmin) / RESOLUTION))
    h = int(np.ceil((ymax - ymin) / RESOLUTION))
    origin = (float(xmin), float(ymin))
    rng = np.random.default_rng(seed)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = GRASS
    refl = np.full((h, w), REFLECT["grass"], np.uint8)

    def px(pts) -> np.ndarray:  # world metres -> fixed-point texel coordinates (x = col, y = row)
        p = (np.asarray(pts, float) - origin) / RESOLUTION
        return np.round(p * (1 << _SHIFT)).astype(np.int32)

    def fill(polys, colour, reflect):
        for poly in polys:
            rings = [px(np.asarray(poly.exterior.coords))] + [px(np.asarray(r.coords)) for r in poly.interiors]
            # drawn in a mask over the polygon's bounding box (whole texels, a texel of margin) instead of the
            # whole canvas: the fixed-point vertices move by whole texels, so the same texels are filled
            lo, hi = rings[0].min(axis=0) >> _SHIFT, rings[0].max(axis=0) >> _SHIFT
            c0, r0 = max(int(lo[0]) - 1, 0), max(int(lo[1]) - 1, 0)
            c1, r1 = min(int(hi[0]) + 2, w), min(int(hi[1]) + 2, h)
            if c0 >= c1 or r0 >= r1:
                continue
            corner = np.array([c0, r0], np.int32) << _SHIFT
            mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
            cv2.fillPoly(mask, [rings[0] - corner], 1, lineType=cv2.LINE_8, shift=_SHIFT)
            for hole in rings[1:]:
                cv2.fillPoly(mask, [hole - corner], 0, lineType=cv2.LINE_8, shift=_SHIFT)
            m = mask.astype(bool)
            rgb[r0:r1, c0:c1][m] = colour
            refl[r0:r1, c0:c1][m] = reflect

    def stroke(line, colour, reflect, width_m):
        thickness = max(int(round(width_m / RESOLUTION)), 1)
        pts = px(line).reshape(-1, 1, 2)
        cv2.polylines(rgb, [pts], False, colour, thickness, lineType=cv2.LINE_AA, shift=_SHIFT)
        cv2.polylines(refl, [pts], False, reflect, thickness, lineType=cv2.LINE_AA, shift=_SHIFT)

    fill(town.walkways, CONCRETE, REFLECT["concrete"])
    fill([p for p, _ in town.road_segments] + [p for p, _ in town.carparks], ASPHALT, REFLECT["asphalt"])

    for line in town.lane_dividers:
        for dash in _dashes(np.asarray(line), on=3.0, off=6.0):
            stroke(dash, WHITE, REFLECT["white"], 0.15)
    for line in town.road_dividers:
        line = np.asarray(line)
        for off in (-0.15, 0.15):
            stroke(_offset(line, off), YELLOW, REFLECT["yellow"], 0.12)
    for c in town.crossings:  # zebra bars parallel to the road, across its whole width
        across = np.array([c.road_dir[1], -c.road_dir[0]])
        half_w = 1.75
        for t in np.arange(-c.half_length + 0.6, c.half_length - 0.3, 1.2):
            centre = c.centre + across * t
            bar = Polygon([centre - c.road_dir * half_w - across * 0.3, centre + c.road_dir * half_w - across * 0.3,
                           centre + c.road_dir * half_w + across * 0.3, centre - c.road_dir * half_w + across * 0.3])
            fill([bar], WHITE, REFLECT["white"])
    for poly, kind, _, _ in town.stop_lines:
        if kind == "TRAFFIC_LIGHT":
            fill([poly], WHITE, REFLECT["white"])
    for poly, _ in town.carparks:  # bay separators every 2.8 m
        x0, y0, x1, y1 = poly.bounds
        for x in np.arange(x0, x1 + 1e-6, 2.8):
            stroke(np.array([[x, y0 + 1.0], [x, y1 - 1.0]]), WHITE, REFLECT["white"], 0.12)

    _add_grain(rgb, rng)
    return GroundTexture(rgb=rgb, origin=origin, resolution=RESOLUTION, intensity=refl)


def _add_grain(rgb: np.ndarray, rng: np.random.Generator) -> None:
    """Fine grain plus low-frequency blotches (tar patches, worn paint), in place."""
    h, w, _ = rgb.shape
    fine = rng.integers(-10, 11, size=(h, w), dtype=np.int16)
    coarse = rng.integers(-12, 13, size=(h // 16 + 2, w // 16 + 2)).astype(np.float32)
    coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    out = rgb.astype(np.int16) + (fine + coarse)[..., None]
    np.clip(out, 0, 255, out=out)
    rgb[:] = out.astype(np.uint8)


def _dashes(line: np.ndarray, on: float, off: float) -> list:
    """Cut a polyline into dashes of length ``on`` separated by gaps of ``off`` (arc length)."""
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    out = []
    start = 0.5 * off
    while start + on <= s[-1]:
        ts = np.linspace(start, start + on, 7)
        out.append(np.stack([np.interp(ts, s, line[:, 0]), np.interp(ts, s, line[:, 1])], axis=1))
        start += on + off
    return out


def _offset(line: np.ndarray, off: float) -> np.ndarray:
    """Shift a polyline sideways by ``off`` metres (positive = left of its direction)."""
    d = np.gradient(line, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return line + off * np.stack([-d[:, 1], d[:, 0]], axis=1)

