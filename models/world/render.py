"""Ray-casting renderer for the synthetic flat-ground world: camera images, LiDAR sweeps and exact
point-tracking truth.

Conventions
-----------
* World: metres, x east, y north, z up; the ground is the plane z = 0.
* Camera: x right, y down, z forward; pinhole ``K``; OpenCV pixels, i.e. pixel (row i, col j) has its
  centre at (u=j, v=i) and rays go through pixel centres. ``depth`` is camera z-depth.
* Box: centre (world, z = centre height), size [w, l, h] (nuScenes order), yaw about +z. Box-local
  frame: x along the heading (extent l), y across (extent w), z up (extent h), origin at the centre.
* LiDAR: points in the sensor frame given by ``lidar2world``; azimuth bin k points at
  ``2 pi k / azimuth_bins`` from sensor +x towards +y; ring 0 is the lowest beam.

A camera (or LiDAR) inside a box sees through that box; keep the ego out of ``boxes``.
Geometry lives in ``models/world/raycast.py``; this module adds appearance and the public API.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
from scipy.spatial import cKDTree

from models.world import raycast as rc

MAX_GROUND_RANGE = 250.0      # m, horizontal; farther ground is drawn as sky
GRASS_RGB = np.array([98, 112, 72], dtype=np.float32)     # ground outside the texture
GRASS_INTENSITY = 12.0
HORIZON_RGB = np.array([222, 230, 238], dtype=np.float32)
ZENITH_RGB = np.array([88, 138, 206], dtype=np.float32)
HAZE_MAX, HAZE_DIST = 0.45, 300.0                          # haze = HAZE_MAX * (1 - exp(-range / HAZE_DIST))
LIGHT_DIR = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])  # towards the sun (world)
AMBIENT, DIFFUSE = 0.42, 0.58
MIP_BIAS = 0.0                # added to log2(footprint / texel); > 0 blurs more
MAX_MIP_LEVELS = 12
NOISE_CELL, NOISE_AMP = 0.35, 0.09                         # box surface grain (m, relative brightness)
KIND_INTENSITY = np.array([70.0, 30.0, 45.0, 40.0], dtype=np.float32)  # car, pedestrian, building, other
_SHRT_MAX = 32767             # cv2.remap size limit


# ----------------------------------------------------------------------------------------- data types
@dataclass(eq=False)
class GroundTexture:
    """The map painted on the ground plane.

    Texel (r, c) covers x in [x0 + c*res, x0 + (c+1)*res), y in [y0 + r*res, y0 + (r+1)*res) (row index
    grows with y). Outside the texture the ground is ``GRASS_RGB``. Treat as immutable: the mip pyramid
    and derived reflectivity are cached on the object on first use.
    """
    rgb: np.ndarray                    # (H, W, 3) uint8
    origin: tuple[float, float]        # (x0, y0)
    resolution: float                  # metres per texel
    intensity: np.ndarray | None = None  # (H, W) uint8 LiDAR reflectivity; None -> from rgb luminance
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)


@dataclass(eq=False)
class Boxes:
    """All objects of one frame, same order in every frame of a scene (index = identity)."""
    center: np.ndarray   # (N, 3) float64 world, z = centre height
    size: np.ndarray     # (N, 3) w, l, h
    yaw: np.ndarray      # (N,)
    color: np.ndarray    # (N, 3) uint8 base colour
    kind: np.ndarray     # (N,) int8: 0 car/vehicle, 1 pedestrian, 2 building/static structure
    dynamic: np.ndarray  # (N,) bool

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1, 3)
        n = len(self.center)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(n, 3)
        self.yaw = np.asarray(self.yaw, dtype=np.float64).reshape(n)
        self.color = np.asarray(self.color, dtype=np.uint8).reshape(n, 3)
        self.kind = np.asarray(self.kind, dtype=np.int8).reshape(n)
        self.dynamic = np.asarray(self.dynamic, dtype=bool).reshape(n)

    def __len__(self) -> int:
        return len(self.center)


@dataclass(eq=False)
class Camera:
    K: np.ndarray          # (3, 3)
    cam2world: np.ndarray  # (4, 4)
    width: int
    height: int


@dataclass(eq=False)
class CameraRender:
    rgb: np.ndarray           # (H, W, 3) uint8
    depth: np.ndarray         # (H, W) float32 camera z-depth, inf for sky
    object_index: np.ndarray  # (H, W) int32 box index, -1 ground, -2 sky
    dynamic_mask: np.ndarray  # (H, W) bool, pixel shows a box with dynamic=True


@dataclass(eq=False)
class SurfacePoints:
    object_index: np.ndarray  # (Q,) int32 box index, -1 ground, -2 sky
    local: np.ndarray         # (Q, 3) float64 box-local hit point; world point for ground; NaN for sky
    depth: np.ndarray         # (Q,) float64 camera z-depth in the query frame (inf for sky)


# ------------------------------------------------------------------------------------------- helpers
def _pose(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (3, 3) and translation (3,) of a 4x4 pose."""
    m = np.asarray(m, dtype=np.float64)
    return m[:3, :3], m[:3, 3]


def _rotate(R: np.ndarray, X, Y, Z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World components of ray-frame vectors (X, Y, Z); shapes follow X."""
    return (R[0, 0] * X + R[0, 1] * Y + R[0, 2] * Z,
            R[1, 0] * X + R[1, 1] * Y + R[1, 2] * Z,
            R[2, 0] * X + R[2, 1] * Y + R[2, 2] * Z)


def _box_geometry(boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """Box-to-world rotations (N, 3, 3) and local half extents (N, 3)."""
    return rc.box_frames(boxes.yaw), rc.half_extents(boxes.size)


def _to_uint8(col: np.ndarray) -> np.ndarray:
    """Round and clip float colours to uint8."""
    return np.clip(np.rint(col), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- ground texture
def _mip_pyramid(ground: GroundTexture) -> list[np.ndarray]:
    """Gaussian pyramid of the ground texture (cached); level l texel c sits at level-0 texel 2^l c."""
    pyr = ground._cache.get("mip")
    if pyr is None:
        pyr = [np.ascontiguousarray(ground.rgb, dtype=np.uint8)]
        while len(pyr) < MAX_MIP_LEVELS and min(pyr[-1].shape[:2]) > 2:
            pyr.append(cv2.pyrDown(pyr[-1]))
        ground._cache["mip"] = pyr
    return pyr


def _reflectivity(ground: GroundTexture) -> np.ndarray:
    """(H, W) uint8 LiDAR reflectivity: given, else luminance^2 / 255 (asphalt dark, paint bright)."""
    refl = ground._cache.get("refl")
    if refl is None:
        if ground.intensity is not None:
            refl = np.asarray(ground.intensity, dtype=np.uint8)
        else:
            lum = ground.rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            refl = _to_uint8(lum * lum / 255.0)
        ground._cache["refl"] = refl
    return refl


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Bilinear lookup of img (h, w, 3) at texel coords (n,) (integer = texel centre) -> (n, 3) float32.

    Texels outside the image read as ``border``. Uses cv2.remap when the sizes allow, else numpy.
    """
    h, w = img.shape[:2]
    n = len(u)
    if n == 0:
        return np.zeros((0, 3), dtype=np.float32)
    u = np.minimum(np.maximum(u, -4.0), w + 3.0)                                 # keep far points finite
    v = np.minimum(np.maximum(v, -4.0), h + 3.0)
    if max(h, w) < _SHRT_MAX:
        cols = 256
        rows = -(-n // cols)
        mx = np.full(rows * cols, -8.0, dtype=np.float32)
        my = np.full(rows * cols, -8.0, dtype=np.float32)
        mx[:n], my[:n] = u, v
        out = cv2.remap(img, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(b) for b in border))
        return out.reshape(-1, 3)[:n].astype(np.float32)
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    out = np.zeros((n, 3), dtype=np.float64)
    for di, dj, wt in ((0, 0, (1 - fv) * (1 - fu)), (0, 1, (1 - fv) * fu), (1, 0, fv * (1 - fu)), (1, 1, fv * fu)):
        r, c = (v0 + di).astype(np.int64), (u0 + dj).astype(np.int64)
        inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w))[:, None]
        out += wt * np.where(inside, img[r.clip(0, h - 1), c.clip(0, w - 1)], border)
    return out.astype(np.float32)


def _sample_ground(ground: GroundTexture, x: np.ndarray, y: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Trilinear (mip-mapped) ground colour at world points (n,) with pixel footprint (n,) m -> (n, 3)."""
    pyr = _mip_pyramid(ground)
    res = float(ground.resolution)
    tu = (x - ground.origin[0]) / res - 0.5                                      # level-0 texel coords
    tv = (y - ground.origin[1]) / res - 0.5
    with np.errstate(divide="ignore"):
        lev = np.clip(np.log2(np.maximum(footprint, 1e-9) / res) + MIP_BIAS, 0.0, len(pyr) - 1.0)
    l0 = np.floor(lev).astype(np.int64)
    frac = (lev - l0).astype(np.float32)[:, None]
    out = np.empty((len(x), 3), dtype=np.float32)
    for lv in np.nonzero(np.bincount(l0))[0]:
        sel = np.nonzero(l0 == lv)[0]
        s = 0.5 ** lv
        col = _bilinear(pyr[lv], tu[sel] * s, tv[sel] * s, GRASS_RGB)
        if lv + 1 < len(pyr):
            col_up = _bilinear(pyr[lv + 1], tu[sel] * (s * 0.5), tv[sel] * (s * 0.5), GRASS_RGB)
            col += frac[sel] * (col_up - col)
        out[sel] = col
    return out


def _texel_lookup(img: np.ndarray, ground: GroundTexture, x: np.ndarray, y: np.ndarray, outside: float) -> np.ndarray:
    """Nearest-texel lookup of a (H, W) map at world points (n,) -> (n,) float32; ``outside`` off-map."""
    c = np.floor((x - ground.origin[0]) / ground.resolution)
    r = np.floor((y - ground.origin[1]) / ground.resolution)
    h, w = img.shape[:2]
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    vals = img[np.clip(r, 0, h - 1).astype(np.int64), np.clip(c, 0, w - 1).astype(np.int64)]
    return np.where(inside, vals, outside).astype(np.float32)


# ------------------------------------------------------------------------------------------ shading
def _sky(dzw: np.ndarray, dnorm: np.ndarray) -> np.ndarray:
    """Blue-white gradient by ray elevation: (n,) -> (n, 3) float32."""
    s = np.sqrt(np.clip(dzw / dnorm, 0.0, 1.0)).astype(np.float32)[:, None]
    return HORIZON_RGB + s * (ZENITH_RGB - HORIZON_RGB)


def _haze(col: np.ndarray, rng: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """Blend (n, 3) colours toward the horizon colour with range (n,); ``extra`` is a minimum haze."""
    f = HAZE_MAX * (1.0 - np.exp(-rng / HAZE_DIST))
    if extra is not None:
        f = np.maximum(f, extra)
    f = f.astype(np.float32)[:, None]
    return col + f * (HORIZON_RGB - col)


def _hash01(*ints: np.ndarray) -> np.ndarray:
    """Deterministic integer hash of int64 arrays -> float32 in [0, 1)."""
    h = np.zeros(np.shape(ints[0]), dtype=np.int64)
    for a, p in zip(ints, (73856093, 19349663, 83492791, 2654435761)):
        h ^= np.asarray(a, dtype=np.int64) * p
    h = (h ^ (h >> 13)) * 1274126177
    h ^= h >> 16
    return ((h & 0xFFFF).astype(np.float32)) / 65536.0


class _Hits(NamedTuple):
    """Box hits in box-local terms, all (n,) or (n, 3); float32 except the integer fields.

    ``take`` accepts an index array or a slice (a slice gives views, no copies).
    """
    idx: np.ndarray      # box index
    local: np.ndarray    # (n, 3) hit point in the box frame
    half: np.ndarray     # (n, 3) half extents (x along heading, y across, z up)
    axis: np.ndarray     # face axis: 0 front/back, 1 sides, 2 top/bottom
    sign: np.ndarray     # face side, +1 / -1 along the axis
    s: np.ndarray        # along-face horizontal coordinate (local y on front/back, local x on sides)
    s_half: np.ndarray   # half extent of s
    zb: np.ndarray       # height above the box bottom
    h: np.ndarray        # box height

    def take(self, sel) -> "_Hits":
        return _Hits(*(a[sel] for a in self))


def _box_hits(boxes: Boxes, idx: np.ndarray, hit: np.ndarray) -> _Hits:
    """Box-local description of world hit points (n, 3) on boxes idx (n,)."""
    half = rc.half_extents(boxes.size)[idx].astype(np.float32)                 # (n, 3)
    cy, sy = np.cos(boxes.yaw)[idx], np.sin(boxes.yaw)[idx]
    rel = hit - boxes.center[idx]                                               # (n, 3) float64
    local = np.empty(rel.shape, dtype=np.float32)                               # Rz(-yaw) (p - c)
    local[:, 0] = cy * rel[:, 0] + sy * rel[:, 1]
    local[:, 1] = cy * rel[:, 1] - sy * rel[:, 0]
    local[:, 2] = rel[:, 2]
    axis = np.argmax(np.abs(local) / half, axis=1)
    rows = np.arange(len(idx))
    sign = np.where(local[rows, axis] >= 0, np.float32(1), np.float32(-1))
    front = axis == 0
    s = np.where(front, local[:, 1], local[:, 0])
    s_half = np.where(front, half[:, 1], half[:, 0])
    return _Hits(idx, local, half, axis, sign, s, s_half, local[:, 2] + half[:, 2], 2 * half[:, 2])


def _rgb(*c: float) -> np.ndarray:
    return np.array(c, dtype=np.float32)


def _paint_car(col: np.ndarray, f: _Hits) -> np.ndarray:
    """Roof, dark bottom strip, window band, wheels on the sides, head and tail lights."""
    vert = f.axis < 2
    col = np.where((f.axis == 2)[:, None], col * 0.85, col)
    col = np.where((vert & (f.zb < 0.2 * f.h))[:, None], _rgb(40, 40, 42), col)
    band = vert & (f.zb > 0.58 * f.h) & (f.zb < 0.9 * f.h) & (np.abs(f.s) < 0.82 * f.s_half)
    col = np.where(band[:, None], _rgb(40, 48, 60), col)
    r = np.minimum(0.34, 0.3 * f.h)
    wheel = (f.axis == 1) & ((np.abs(f.local[:, 0]) - 0.62 * f.half[:, 0]) ** 2 + (f.zb - r) ** 2 < r * r)
    col = np.where(wheel[:, None], _rgb(18, 18, 18), col)
    lamp = ((f.axis == 0) & (np.abs(f.s) > 0.55 * f.s_half) & (np.abs(f.s) < 0.85 * f.s_half)
            & (f.zb > 0.42 * f.h) & (f.zb < 0.52 * f.h))
    col = np.where((lamp & (f.sign > 0))[:, None], _rgb(235, 235, 210), col)
    return np.where((lamp & (f.sign < 0))[:, None], _rgb(190, 25, 25), col)


def _paint_pedestrian(col: np.ndarray, f: _Hits) -> np.ndarray:
    """Dark legs (lower 47 %), skin-coloured head (top 14 %)."""
    col = np.where((f.zb < 0.47 * f.h)[:, None], col * 0.4 + 20.0, col)
    return np.where((f.zb > 0.86 * f.h)[:, None], _rgb(200, 160, 130), col)


def _paint_building(col: np.ndarray, f: _Hits) -> np.ndarray:
    """Darker roof; window grid (3.0 m bays, 3.2 m floors) with a per-window tint."""
    col = np.where((f.axis == 2)[:, None], col * 0.8, col)
    sc = f.s + f.s_half                                                         # from the face corner
    ms, mz = np.mod(sc, 3.0), np.mod(f.zb, 3.2)
    win = ((f.axis < 2) & (ms > 0.8) & (ms < 2.2) & (mz > 0.9) & (mz < 2.3) & (f.zb > 0.6)
           & (f.zb < f.h - 0.4) & (sc > 0.4) & (sc < 2 * f.s_half - 0.4))
    tint = 0.75 + 0.5 * _hash01(np.floor(sc / 3.0).astype(np.int64), np.floor(f.zb / 3.2).astype(np.int64),
                                f.axis * 2 + (f.sign > 0), f.idx)
    return np.where(win[:, None], _rgb(55, 70, 92) * tint[:, None], col)


_PAINTERS = {0: _paint_car, 1: _paint_pedestrian, 2: _paint_building}


def _shade_boxes(boxes: Boxes, idx: np.ndarray, hit: np.ndarray, t: np.ndarray, rng: np.ndarray,
                 focal: float) -> np.ndarray:
    """Colours (n, 3) float32 of box hits: idx (n,) sorted by kind, world hit points (n, 3), z-depth t
    and range (n,)."""
    f = _box_hits(boxes, idx, hit)
    col = boxes.color[idx].astype(np.float32)                                   # (n, 3) albedo
    kind = boxes.kind[idx]
    bounds = np.searchsorted(kind, np.arange(len(_PAINTERS) + 1))               # kinds are contiguous
    for k, paint in _PAINTERS.items():
        sel = slice(bounds[k], bounds[k + 1])
        if bounds[k + 1] > bounds[k]:
            col[sel] = paint(col[sel], f.take(sel))
    # Lambert: the world normal is sign * Rz(yaw) e_axis
    cy, sy = np.cos(boxes.yaw)[idx], np.sin(boxes.yaw)[idx]
    lx, ly, lz = LIGHT_DIR
    ndl = f.sign * np.where(f.axis == 0, cy * lx + sy * ly, np.where(f.axis == 1, cy * ly - sy * lx, lz))
    shade = AMBIENT + DIFFUSE * np.maximum(ndl, 0.0)
    # surface grain for point trackers: hash of in-face cells, faded out once cells are sub-pixel
    cells = np.floor(f.local / NOISE_CELL).astype(np.int64)                     # (n, 3)
    cells[np.arange(len(idx)), f.axis] = 1000 + f.axis * 2 + (f.sign > 0)
    fade = np.minimum(np.maximum(NOISE_CELL * focal / np.maximum(t, 1e-6) / 3.0 - 0.5, 0.0), 1.0)
    grain = 1.0 + NOISE_AMP * fade * (2.0 * _hash01(cells[:, 0], cells[:, 1], cells[:, 2], idx) - 1.0)
    return _haze(col * (shade * grain).astype(np.float32)[:, None], rng)


# ---------------------------------------------------------------------------------------- rendering
def _cast_camera(boxes: Boxes, camera: Camera, max_ground_range: float):
    """Depth (H, W) float64, object index (H, W) int32 and world ray components for a camera.

    Geometry only (no shading); models/tracking/oracle.py calls it for fast depth, keep the signature.
    """
    X, Y, dnorm = rc.camera_ray_grid(camera.K, camera.width, camera.height)     # (H, W) each
    R, o = _pose(camera.cam2world)
    dxw, dyw, dzw = _rotate(R, X, Y, 1.0)
    depth = rc.ground_hit(o, dxw, dyw, dzw, max_ground_range)                   # (H, W)
    obj = np.where(np.isfinite(depth), -1, -2).astype(np.int32)
    if len(boxes):
        R_box, half = _box_geometry(boxes)
        corners_cam = (rc.box_corners(boxes.center, boxes.size, boxes.yaw) - o) @ R  # (N, 8, 3)
        rects = rc.box_pixel_rects(corners_cam, np.asarray(camera.K, np.float64), camera.width, camera.height)
        for k in np.nonzero((rects[:, 0] < rects[:, 1]) & (rects[:, 2] < rects[:, 3]))[0]:
            i0, i1, j0, j1 = rects[k]
            tk = rc.rays_vs_box(o, R, X[i0:i1, j0:j1], Y[i0:i1, j0:j1], 1.0, boxes.center[k], R_box[k], half[k])
            cur, cur_obj = depth[i0:i1, j0:j1], obj[i0:i1, j0:j1]              # views
            upd = tk < cur
            np.copyto(cur, tk, where=upd)
            np.copyto(cur_obj, np.int32(k), where=upd)
    return depth, obj, (dxw, dyw, dzw), dnorm


def render_camera(ground: GroundTexture, boxes: Boxes, camera: Camera, *,
                  max_ground_range: float = MAX_GROUND_RANGE) -> CameraRender:
    """Ray-cast one camera image: colour, z-depth, object index and dynamic mask."""
    depth, obj, (dxw, dyw, dzw), dnorm = _cast_camera(boxes, camera, max_ground_range)
    R, o = _pose(camera.cam2world)
    K = np.asarray(camera.K, dtype=np.float64)
    focal = float(np.sqrt(abs(K[0, 0] * K[1, 1])))
    H, W = camera.height, camera.width
    rgb = np.empty((H * W, 3), dtype=np.float32)
    flat = obj.ravel()
    t_all, dz_all, dn_all = depth.ravel(), dzw.ravel(), dnorm.ravel()

    sky = np.nonzero(flat == -2)[0]
    rgb[sky] = _sky(dz_all[sky], dn_all[sky])

    gnd = np.nonzero(flat == -1)[0]
    if len(gnd):
        t = t_all[gnd]
        gx, gy = o[0] + t * dxw.ravel()[gnd], o[1] + t * dyw.ravel()[gnd]
        footprint = t / np.sqrt(focal * focal * np.abs(dz_all[gnd]))            # geometric-mean pixel size
        col = _sample_ground(ground, gx, gy, footprint)
        horiz = np.hypot(gx - o[0], gy - o[1])
        edge_fade = np.clip((horiz / max_ground_range - 0.75) / 0.25, 0.0, 1.0) ** 2
        rgb[gnd] = _haze(col, t * dn_all[gnd], edge_fade)

    box = np.nonzero(flat >= 0)[0]
    if len(box):
        box = box[np.argsort(boxes.kind[flat[box]], kind="stable")]             # kinds contiguous for painting
        t = t_all[box]
        hit = o + t[:, None] * np.stack([dxw.ravel()[box], dyw.ravel()[box], dz_all[box]], axis=1)
        rgb[box] = _shade_boxes(boxes, flat[box], hit, t, t * dn_all[box], focal)

    dyn = np.zeros((H, W), dtype=bool)
    if len(boxes):
        dyn = (obj >= 0) & boxes.dynamic[np.maximum(obj, 0)]
    return CameraRender(rgb=_to_uint8(rgb).reshape(H, W, 3), depth=depth.astype(np.float32),
                        object_index=obj, dynamic_mask=dyn)


# --------------------------------------------------------------------------------------------- LiDAR
def lidar_scan(ground: GroundTexture, boxes: Boxes, lidar2world: np.ndarray, beams: int = 32,
               azimuth_bins: int = 1024, max_range: float = 70.0,
               fov_deg: tuple = (-30.67, 10.67)) -> np.ndarray:
    """One LiDAR sweep: (N, 5) float32 (x, y, z, intensity 0..255, ring) in the sensor frame.

    Only rays hitting the ground or a box within ``max_range`` (range, not horizontal) are returned,
    ordered azimuth-major (bin 0 rings 0..B-1, bin 1, ...).
    """
    D = rc.lidar_ray_grid(beams, azimuth_bins, fov_deg)                         # (3, B, A) sensor frame
    R, o = _pose(lidar2world)
    dxw, dyw, dzw = _rotate(R, D[0], D[1], D[2])
    t = rc.ground_hit(o, dxw, dyw, dzw, np.inf)                                 # (B, A) range
    obj = np.full(t.shape, -1, dtype=np.int32)
    if len(boxes):
        R_box, half = _box_geometry(boxes)
        centers_s = (boxes.center - o) @ R                                      # (N, 3)
        corners_s = (rc.box_corners(boxes.center, boxes.size, boxes.yaw) - o) @ R  # (N, 8, 3)
        radius = np.linalg.norm(half, axis=1)
        wins = rc.lidar_box_windows(centers_s, corners_s, radius, beams, azimuth_bins, fov_deg, max_range)
        for k, win in enumerate(wins):
            if win is None:
                continue
            r0, r1, bins = win
            sub = (slice(r0, r1 + 1), bins)
            tk = rc.rays_vs_box(o, R, D[0][sub], D[1][sub], D[2][sub], boxes.center[k], R_box[k], half[k])
            cur = t[sub]
            upd = tk < cur
            t[sub] = np.where(upd, tk, cur)
            obj[sub] = np.where(upd, k, obj[sub])
    keep = (t <= max_range).T                                                   # (A, B) azimuth-major
    tk, ok = t.T[keep], obj.T[keep]
    ring = np.broadcast_to(np.arange(beams, dtype=np.float32)[None, :], keep.shape)[keep]
    pts = tk[:, None] * D.transpose(2, 1, 0)[keep]                              # (P, 3) sensor frame
    inten = np.empty(len(tk), dtype=np.float32)
    g = ok < 0
    wx = o[0] + tk[g] * dxw.T[keep][g]
    wy = o[1] + tk[g] * dyw.T[keep][g]
    inten[g] = _texel_lookup(_reflectivity(ground), ground, wx, wy, GRASS_INTENSITY)
    if len(boxes):
        inten[~g] = KIND_INTENSITY[np.clip(boxes.kind[ok[~g]], 0, len(KIND_INTENSITY) - 1)]
    return np.concatenate([pts, inten[:, None], ring[:, None]], axis=1).astype(np.float32)


def points_in_boxes(points_world: np.ndarray, boxes: Boxes, margin: float = 0.01) -> np.ndarray:
    """Number of points inside each box grown by ``margin`` metres on every side, (N,) int64.

    For nuScenes num_lidar_pts. LiDAR hits lie exactly on box faces, so without a margin float32
    rounding would drop about half of them; 1 cm keeps them all. Pass margin=0 for the exact box.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    counts = np.zeros(len(boxes), dtype=np.int64)
    if len(pts) == 0 or len(boxes) == 0:
        return counts
    R_box, half = _box_geometry(boxes)
    tree = cKDTree(pts)
    half = half + margin
    cands = tree.query_ball_point(boxes.center, np.linalg.norm(half, axis=1) * (1 + 1e-9) + 1e-9)
    for k, idx in enumerate(cands):
        if idx:
            local = (pts[np.asarray(idx)] - boxes.center[k]) @ R_box[k]          # (m, 3) = Rb^T (p - c)
            counts[k] = int(np.all(np.abs(local) <= half[k], axis=1).sum())
    return counts


# ------------------------------------------------------------------------------ point-tracking truth
def surface_points(ground: GroundTexture, boxes: Boxes, camera: Camera, uv: np.ndarray, *,
                   max_ground_range: float = MAX_GROUND_RANGE) -> SurfacePoints:
    """The surface seen through sub-pixel positions uv (Q, 2) = (u, v): object and anchored coordinates.

    Same geometry (and tie-breaking) as ``render_camera``, so at pixel centres ``object_index`` equals
    the rendered one. ``ground`` is unused (the ground is the plane z = 0) but kept for symmetry.
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    X, Y = rc.pixel_rays(camera.K, uv[:, 0], uv[:, 1])                        # (Q,) each, z = 1
    R, o = _pose(camera.cam2world)
    dxw, dyw, dzw = _rotate(R, X, Y, 1.0)
    tg = rc.ground_hit(o, dxw, dyw, dzw, max_ground_range)
    if len(boxes):
        R_box, half = _box_geometry(boxes)
        t, idx = rc.cast_boxes_full(o, R, X, Y, 1.0, boxes.center, R_box, half, tg)
    else:
        t, idx = tg, np.full(len(uv), -1, dtype=np.int32)
    obj = np.where(idx >= 0, idx, np.where(np.isfinite(tg), -1, -2)).astype(np.int32)
    with np.errstate(invalid="ignore"):
        hit = o + t[:, None] * np.stack([dxw, dyw, dzw], axis=1)               # (Q, 3) world
    local = np.where((obj == -2)[:, None], np.nan, hit)
    on_box = np.nonzero(obj >= 0)[0]
    if len(on_box):
        k = obj[on_box]
        local[on_box] = np.einsum("nji,nj->ni", R_box[k], hit[on_box] - boxes.center[k])
    return SurfacePoints(object_index=obj, local=local, depth=t)


def _world_points(points: SurfacePoints, boxes_t: Boxes) -> np.ndarray:
    """World positions (Q, 3) of surface points carried along by their objects at time t."""
    obj = points.object_index
    world = np.array(points.local, dtype=np.float64, copy=True)
    on_box = np.nonzero(obj >= 0)[0]
    if len(on_box):
        k = obj[on_box]
        R_box = rc.box_frames(boxes_t.yaw[k])
        world[on_box] = np.einsum("nij,nj->ni", R_box, points.local[on_box]) + boxes_t.center[k]
    world[obj == -2] = np.nan
    return world


def project_surface_points(points: SurfacePoints, boxes_t: Boxes, camera_t: Camera,
                           depth_t: np.ndarray | None, rel_tol: float = 0.02,
                           abs_tol: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Move surface points with their objects into frame t and project them: (uv (Q, 2) float32, visible (Q,)).

    uv is NaN for sky points and points behind the camera. ``visible`` requires: not sky, in front of
    the camera, nearest pixel inside the image, and not occluded. Occlusion test:

    * ``depth_t`` given (the rendered z-depth of frame t): with z the point's camera depth and
      d_ref the *largest* depth of the 2x2 pixel centres around (u, v) (the bilinear neighbourhood),
      visible iff ``z <= d_ref * (1 + rel_tol) + abs_tol``. Taking the farthest neighbour keeps
      points on grazing surfaces (distant ground changes metres of depth per pixel) and on silhouette
      edges visible; a point is occluded only when all four neighbours show something in front.
    * ``depth_t`` None: exact test, the ray to the point must not hit any box of ``boxes_t`` before
      ``z * (1 - rel_tol) - abs_tol``.
    """
    world = _world_points(points, boxes_t)                                      # (Q, 3)
    R, o = _pose(camera_t.cam2world)
    K = np.asarray(camera_t.K, dtype=np.float64)
    pc = (world - o) @ R                                                        # (Q, 3) camera frame
    z = pc[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        front = z > rc.NEAR
        zs = np.where(front, z, np.nan)
        u = (K[0, 0] * pc[:, 0] + K[0, 1] * pc[:, 1]) / zs + K[0, 2]
        v = (K[1, 1] * pc[:, 1]) / zs + K[1, 2]
        W, H = camera_t.width, camera_t.height
        inside = front & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    visible = inside & (points.object_index != -2)
    cand = np.nonzero(visible)[0]
    if len(cand):
        if depth_t is not None:
            d_ref = _farthest_neighbour_depth(np.asarray(depth_t), u[cand], v[cand])
            ok = z[cand] <= d_ref * (1.0 + rel_tol) + abs_tol
        else:
            X, Y = pc[cand, 0] / z[cand], pc[cand, 1] / z[cand]
            ok = np.ones(len(cand), dtype=bool)
            if len(boxes_t):
                R_box, half = _box_geometry(boxes_t)
                t_occ, _ = rc.cast_boxes_full(o, R, X, Y, 1.0, boxes_t.center, R_box, half,
                                              np.full(len(cand), np.inf))
                ok = t_occ >= z[cand] * (1.0 - rel_tol) - abs_tol
        visible[cand] = ok
    return np.stack([u, v], axis=1).astype(np.float32), visible


def _farthest_neighbour_depth(depth: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Max of depth over the 2x2 pixel centres surrounding each (u, v), clamped to the image: (n,)."""
    H, W = depth.shape
    j0 = np.clip(np.floor(u).astype(np.int64), 0, W - 1)
    i0 = np.clip(np.floor(v).astype(np.int64), 0, H - 1)
    j1, i1 = np.minimum(j0 + 1, W - 1), np.minimum(i0 + 1, H - 1)
    return np.maximum(np.maximum(depth[i0, j0], depth[i0, j1]), np.maximum(depth[i1, j0], depth[i1, j1])).astype(np.float64)


# ------------------------------------------------------------------------------------------- timing
def _demo_scene(n_boxes: int = 60, seed: int = 0) -> tuple[GroundTexture, Boxes]:
    """A random street scene for timing: 2 km^2 of textured ground, cars, pedestrians, buildings."""
    rng = np.random.default_rng(seed)
    tex = np.full((2000, 2000, 3), 85, dtype=np.uint8)
    tex[:, 990:1010] = 240                                                      # a long stripe
    tex[::40, :] = 230                                                          # crossings every 4 m
    ground = GroundTexture(rgb=tex, origin=(-100.0, -100.0), resolution=0.1)
    kind = rng.choice([0, 1, 2], size=n_boxes, p=[0.5, 0.3, 0.2]).astype(np.int8)
    dims = np.array([[1.9, 4.5, 1.6], [0.6, 0.6, 1.75], [12.0, 20.0, 15.0]])[kind]
    xy = rng.uniform([-60, -20], [60, 100], size=(n_boxes, 2))
    center = np.column_stack([xy, dims[:, 2] / 2])
    boxes = Boxes(center=center, size=dims, yaw=rng.uniform(-np.pi, np.pi, n_boxes),
                  color=rng.integers(30, 230, (n_boxes, 3)), kind=kind, dynamic=kind < 2)
    return ground, boxes


if __name__ == "__main__":
    import time

    cv2.setNumThreads(1)
    ground, boxes = _demo_scene()
    K = np.array([[252.0, 0, 160.0], [0, 252.0, 90.0], [0, 0, 1]])
    base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    frames = []
    for i in range(200):
        yaw = np.pi / 2 + 0.6 * np.sin(i / 30) + (i % 6) * np.pi / 3
        m = np.eye(4)
        m[:3, :3] = rc.rot_z(yaw) @ base
        m[:3, 3] = [0.0, -10.0 + 0.3 * i, 1.5]
        frames.append(Camera(K=K, cam2world=m, width=320, height=180))
    render_camera(ground, boxes, frames[0])                                     # warm caches
    best = np.full(len(frames), np.inf)                                         # best of 3 per frame
    for _ in range(3):
        for f, cam in enumerate(frames):
            t0 = time.perf_counter()
            render_camera(ground, boxes, cam)
            best[f] = min(best[f], time.perf_counter() - t0)
    dt = best.mean()
    lid = np.eye(4)
    lid[:3, 3] = [0, 0, 1.84]
    t1 = time.perf_counter()
    for _ in range(20):
        pts = lidar_scan(ground, boxes, lid)
    dl = (time.perf_counter() - t1) / 20
    print(f"render_camera 320x180, {len(boxes)} boxes: {dt * 1e3:.2f} ms/image; "
          f"lidar_scan 32x1024: {dl * 1e3:.2f} ms ({len(pts)} points)")
