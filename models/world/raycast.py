"""Ray-casting geometry for the synthetic flat-ground world.

Pure geometry, no colours: camera / LiDAR ray grids, ray vs. ground plane (z = 0), ray vs. oriented
box (slab test in the box-local frame) and the per-box culling that keeps the renderer fast.

Conventions (see ``models/world/render.py``): world x east, y north, z up; camera x right, y down,
z forward; a box has centre ``c`` (world), size ``[w, l, h]`` and yaw about +z; its local frame has
x along the heading (extent l), y across (extent w), z up (extent h), origin at the centre.

Camera rays are stored with a camera-frame z component of exactly 1, so the ray parameter ``t`` of a
hit *is* its z-depth. LiDAR rays are unit vectors, so ``t`` is the range.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

NEAR = 0.05  # m; hits with ray parameter <= NEAR are ignored (camera z-depth / LiDAR range)
_CACHE_SIZE = 16

# Corner b of a box has local sign (+/-) per axis from its bits: bit0 -> x, bit1 -> y, bit2 -> z.
CORNER_SIGNS = np.array([[1 if b & 1 else -1, 1 if b & 2 else -1, 1 if b & 4 else -1]
                         for b in range(8)], dtype=np.float64)                         # (8, 3)
# The 12 edges join corners that differ in exactly one bit.
BOX_EDGES = np.array([(b, b | (1 << k)) for k in range(3) for b in range(8) if not b & (1 << k)])  # (12, 2)


class _LRU(OrderedDict):
    """Tiny least-recently-used cache (ray grids are reused across thousands of frames)."""

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        val = make()
        self[key] = val
        if len(self) > _CACHE_SIZE:
            self.popitem(last=False)
        return val


_CAM_RAYS = _LRU()
_LIDAR_RAYS = _LRU()


def rot_z(yaw: np.ndarray | float) -> np.ndarray:
    """Rotation matrices about +z: (...,) -> (..., 3, 3)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    z, o = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def pixel_rays(K: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray directions (x, y, 1) through pixel coordinates (u, v); shapes follow u.

    This is the single place where pixels become rays, so the renderer and ``surface_points`` agree
    bit for bit at pixel centres.
    """
    Ki = np.linalg.inv(np.asarray(K, dtype=np.float64))
    Ki = Ki / Ki[2, 2]
    x = Ki[0, 0] * u + Ki[0, 1] * v + Ki[0, 2]
    y = Ki[1, 1] * v + Ki[1, 0] * u + Ki[1, 2]
    return x, y


def camera_ray_grid(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cached rays through all pixel centres: X, Y (H, W) with z = 1, and the norm |(X, Y, 1)| (H, W)."""
    K = np.asarray(K, dtype=np.float64)
    key = (K.tobytes(), int(width), int(height))

    def make():
        v, u = np.mgrid[0:height, 0:width].astype(np.float64)                  # (H, W) each
        x, y = pixel_rays(K, u, v)
        x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        norm = np.sqrt(x * x + y * y + 1.0)
        for a in (x, y, norm):
            a.setflags(write=False)
        return x, y, norm

    return _CAM_RAYS.get_or(key, make)


def lidar_ray_grid(beams: int, azimuth_bins: int, fov_deg: tuple[float, float]) -> np.ndarray:
    """Cached unit LiDAR directions in the sensor frame, (3, beams, azimuth_bins).

    Ring r has elevation ``fov[0] + r * (fov[1] - fov[0]) / (beams - 1)`` (ring 0 lowest); bin k has
    azimuth ``2 pi k / azimuth_bins`` measured from sensor +x towards +y.
    """
    key = (int(beams), int(azimuth_bins), float(fov_deg[0]), float(fov_deg[1]))

    def make():
        el = np.deg2rad(ring_elevations(beams, fov_deg))                       # (B,)
        az = 2.0 * np.pi * np.arange(azimuth_bins) / azimuth_bins             # (A,)
        ce, se = np.cos(el)[:, None], np.sin(el)[:, None]
        d = np.stack([ce * np.cos(az), ce * np.sin(az), np.broadcast_to(se, (beams, azimuth_bins))])
        d = np.ascontiguousarray(d)                                             # (3, B, A)
        d.setflags(write=False)
        return d

    return _LIDAR_RAYS.get_or(key, make)


def ring_elevations(beams: int, fov_deg: tuple[float, float]) -> np.ndarray:
    """Elevation (degrees) of each ring, evenly spaced over fov, ring 0 lowest: (beams,)."""
    if beams == 1:
        return np.array([0.5 * (fov_deg[0] + fov_deg[1])])
    return np.linspace(fov_deg[0], fov_deg[1], beams)


def ground_hit(origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
               max_range: float) -> np.ndarray:
    """Ray parameter of the z = 0 hit for rays origin + t * d (d in world), inf when none.

    A hit counts when it lies in front (t > NEAR) and within ``max_range`` horizontal distance.
    """
    oz = float(origin[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -oz / dz
    ok = (t > NEAR) & (t * np.sqrt(dx * dx + dy * dy) <= max_range)
    return np.where(ok, t, np.inf)


def box_frames(yaw: np.ndarray) -> np.ndarray:
    """Box-to-world rotations (N, 3, 3) (rotation about +z by yaw)."""
    return rot_z(np.asarray(yaw, dtype=np.float64).reshape(-1))


def box_corners(center: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World corners (N, 8, 3) in CORNER_SIGNS order."""
    half = half_extents(size)                                                   # (N, 3)
    local = CORNER_SIGNS[None] * half[:, None, :]                               # (N, 8, 3)
    return np.einsum("nij,nkj->nki", box_frames(yaw), local) + center[:, None, :]


def half_extents(size: np.ndarray) -> np.ndarray:
    """Local half extents (N, 3) along (x=heading, y=across, z=up) from nuScenes size [w, l, h]."""
    size = np.asarray(size, dtype=np.float64).reshape(-1, 3)
    return 0.5 * size[:, [1, 0, 2]]


def slab_hit(o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Entry parameter of rays o + t * d into the box |p_a| <= half_a (all in box-local frame).

    Returns inf on a miss, for hits at t <= NEAR, and for rays starting inside the box (a camera or
    sensor inside a box sees through it). Shapes follow dx.
    """
    tn = tf = None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for a, d in enumerate((dx, dy, dz)):
            inv = 1.0 / d
            t1 = (-half[a] - o[a]) * inv
            t2 = (half[a] - o[a]) * inv
            lo, hi = np.fmin(t1, t2), np.fmax(t1, t2)
            tn = lo if tn is None else np.fmax(tn, lo)
            tf = hi if tf is None else np.fmin(tf, hi)
    return np.where((tn <= tf) & (tn > NEAR), tn, np.inf)


def rays_vs_box(origin: np.ndarray, R_ray: np.ndarray, X: np.ndarray, Y: np.ndarray, Z: np.ndarray | float,
                center: np.ndarray, R_box: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Hit parameter of rays origin + t * R_ray @ (X, Y, Z) against one oriented box; inf on a miss.

    ``R_ray`` maps the ray frame (camera or sensor) to world; X, Y, Z are ray-frame components.
    """
    o = R_box.T @ (origin - center)                                             # (3,) box-local origin
    M = R_box.T @ R_ray                                                         # ray frame -> box local
    dx = M[0, 0] * X + M[0, 1] * Y + M[0, 2] * Z
    dy = M[1, 0] * X + M[1, 1] * Y + M[1, 2] * Z
    dz = M[2, 0] * X + M[2, 1] * Y + M[2, 2] * Z
    return slab_hit(o, dx, dy, dz, half)


def cast_boxes_full(origin: np.ndarray, R_ray: np.ndarray, X: np.ndarray, Y: np.ndarray, Z,
                    center: np.ndarray, R_box: np.ndarray, half: np.ndarray,
                    t_init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest box hit for every ray (no culling); returns (t, index) with index -1 where t_init wins."""
    t = np.array(t_init, dtype=np.float64, copy=True)
    idx = np.full(t.shape, -1, dtype=np.int32)
    for k in range(len(center)):
        tk = rays_vs_box(origin, R_ray, X, Y, Z, center[k], R_box[k], half[k])
        upd = tk < t
        t[upd] = tk[upd]
        idx[upd] = k
    return t, idx


def box_pixel_rects(corners_cam: np.ndarray, K: np.ndarray, width: int, height: int,
                    margin: int = 1) -> np.ndarray:
    """Pixel rectangles (N, 4) = (i0, i1, j0, j1), half-open, covering each box's projection.

    The box is clipped against the plane z = NEAR first (its in-front corners plus the crossings of
    its 12 edges), so boxes straddling the camera get an exact, not a full-image, rectangle. Boxes
    entirely behind the camera or outside the image get an empty rectangle (i0 >= i1 or j0 >= j1).
    """
    n = len(corners_cam)
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64)
    p0, p1 = corners_cam[:, BOX_EDGES[:, 0]], corners_cam[:, BOX_EDGES[:, 1]]  # (N, 12, 3)
    z0, z1 = p0[..., 2] - NEAR, p1[..., 2] - NEAR
    cross = z0 * z1 < 0                                                         # (N, 12)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(cross, z0 / (z0 - z1), 0.0)
    pe = p0 + s[..., None] * (p1 - p0)                                          # (N, 12, 3)
    pts = np.concatenate([corners_cam, pe], axis=1)                             # (N, 20, 3)
    valid = np.concatenate([corners_cam[..., 2] >= NEAR, cross], axis=1)        # (N, 20)
    z = np.where(valid, pts[..., 2], 1.0)
    u = (K[0, 0] * pts[..., 0] + K[0, 1] * pts[..., 1]) / z + K[0, 2]
    v = (K[1, 1] * pts[..., 1]) / z + K[1, 2]
    big = 1e9
    umin = np.where(valid, u, big).min(1).clip(-big, big)
    umax = np.where(valid, u, -big).max(1).clip(-big, big)
    vmin = np.where(valid, v, big).min(1).clip(-big, big)
    vmax = np.where(valid, v, -big).max(1).clip(-big, big)
    j0 = np.clip(np.floor(umin) - margin, 0, width).astype(np.int64)
    j1 = np.clip(np.floor(umax) + 1 + margin, 0, width).astype(np.int64)
    i0 = np.clip(np.floor(vmin) - margin, 0, height).astype(np.int64)
    i1 = np.clip(np.floor(vmax) + 1 + margin, 0, height).astype(np.int64)
    return np.stack([i0, i1, j0, j1], axis=1)


def lidar_box_windows(centers_s: np.ndarray, corners_s: np.ndarray, radius: np.ndarray, beams: int,
                      azimuth_bins: int, fov_deg: tuple[float, float], max_range: float
                      ) -> list[tuple[int, int, np.ndarray] | None]:
    """Per box, the (ring0, ring1, azimuth-bin indices) window of LiDAR rays that can hit it, or None.

    Works in the sensor frame. Azimuth limits come from the corners (exact for a convex box whose
    footprint does not contain the sensor); elevation limits from the bounding sphere (conservative).
    """
    out: list[tuple[int, int, np.ndarray] | None] = []
    el = ring_elevations(beams, fov_deg)
    step = (el[-1] - el[0]) / max(beams - 1, 1)
    dist = np.linalg.norm(centers_s, axis=1)                                    # (N,)
    dxy = np.linalg.norm(centers_s[:, :2], axis=1)
    az_c = np.arctan2(centers_s[:, 1], centers_s[:, 0])
    az = np.arctan2(corners_s[..., 1], corners_s[..., 0])                       # (N, 8)
    rel = (az - az_c[:, None] + np.pi) % (2 * np.pi) - np.pi
    da = 2 * np.pi / azimuth_bins
    for k in range(len(centers_s)):
        if dist[k] - radius[k] > max_range:
            out.append(None)
            continue
        if dist[k] <= radius[k]:
            r0, r1 = 0, beams - 1
        else:
            elc = np.rad2deg(np.arcsin(np.clip(centers_s[k, 2] / dist[k], -1, 1)))
            half_ang = np.rad2deg(np.arcsin(min(1.0, radius[k] / dist[k])))
            r0 = int(max(0, np.floor((elc - half_ang - el[0]) / step) if beams > 1 else 0))
            r1 = int(min(beams - 1, np.ceil((elc + half_ang - el[0]) / step) if beams > 1 else 0))
            if r0 > r1:
                out.append(None)
                continue
        if dxy[k] <= radius[k]:
            bins = np.arange(azimuth_bins)
        else:
            k0 = int(np.floor((az_c[k] + rel[k].min()) / da)) - 1
            k1 = int(np.ceil((az_c[k] + rel[k].max()) / da)) + 1
            bins = np.arange(k0, k1 + 1) % azimuth_bins
        out.append((r0, r1, bins))
    return out
