"""A small multi-view sequence folder rendered from a synthetic street, with its exact depth, calibration and
dynamic masks: the reference input for the sequence reader's tests and the own-data recipe.

A fixed rig of ``views`` cameras (yaw steps of 360 / views degrees, 1.5 m above the ground) watches a street whose
cars and pedestrians move in straight lines; ``times`` frames at ``fps``. Written in either layout.

Options for tracker tests (all off by default, and then the bytes are those of the plain writer):

* ``noise_std``: per-pixel Gaussian sensor noise (grey levels) on every image, seeded by (seed, time, view);
* ``jpeg_quality``: images as ``.jpg`` at that quality instead of ``.png``;
* ``track_grid``: the generator's exact point tracks of a ``track_grid`` x ``track_grid`` query grid on frame 0,
  ``tracks/view<k>.npz`` (``tracks`` (N, T, 2) float32 x, y; ``visible`` (N, T) bool; ``dynamic`` (N,) bool;
  ``query_frame`` (N,) int32), the truth a tracker's output is scored against.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.common.io import save_npz
from models.world import render
from models.world.sensors import add_camera_noise

BASE = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)  # OpenCV camera axes -> world (yaw 0)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rig_cameras(views: int, width: int, height: int) -> list[render.Camera]:
    """The fixed rig: view k looks along yaw 90 + k * 360 / views degrees (view 0 along +y, the street)."""
    f = 0.75 * width
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    cams = []
    for k in range(views):
        m = np.eye(4)
        m[:3, :3] = _rot_z(np.pi / 2 + 2 * np.pi * k / views) @ BASE
        m[:3, 3] = [0.0, 0.0, 1.5]
        cams.append(render.Camera(K=K, cam2world=m, width=width, height=height))
    return cams


def _path(root: Path, folder: str, layout: str, t: int, v: int, ext: str) -> Path:
    p = root / folder / (f"time_{t}/view{v}{ext}" if layout == "time-major" else f"view{v}/{t}{ext}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def query_grid(g: int, width: int, height: int) -> np.ndarray:
    """(g * g, 2) float64 x, y query points, row-major: x = (j + 0.5) * width / g - 0.5 (pixel centres at integers),
    the same for y with height."""
    u = (np.arange(g) + 0.5) * width / g - 0.5
    v = (np.arange(g) + 0.5) * height / g - 0.5
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu.ravel(), vv.ravel()], axis=1)


def write_demo_sequence(root: str | Path, times: int = 24, views: int = 4, width: int = 160, height: int = 120,
                        fps: float = 30.0, layout: str = "time-major", depth_unit: float = 1.0,
                        seed: int = 0, noise_std: float = 0.0, jpeg_quality: int | None = None,
                        track_grid: int = 0) -> Path:
    """Write ``images/``, ``depths/`` (z-depth / depth_unit, 0 for sky), ``intrs/``, ``extrs/`` (world-to-camera)
    and ``masks/view_<k>/<t>.png``; time and view folders are not zero-padded (numeric sorting matters).

    ``noise_std`` > 0 adds Gaussian sensor noise of that std (grey levels) to each image, drawn from
    ``np.random.default_rng((seed, t, v))`` (same arguments, same bytes); depth, calibration and masks stay exact.
    ``jpeg_quality`` (1..100) writes the images as ``.jpg`` at that quality instead of ``.png``. ``track_grid``
    = g > 0 also writes ``tracks/view<k>.npz``: the exact tracks of :func:`query_grid` on frame 0 of view k
    (``render.surface_points`` carried along with the boxes, ``render.project_surface_points`` against each frame's
    rendered depth): ``tracks`` (N, T, 2) float32 x, y pixels (frame 0 is the query grid; NaN where undefined:
    sky points after frame 0, points behind the camera), ``visible`` (N, T) bool (at frame 0: every point but
    sky), ``dynamic`` (N,) bool (on a moving box), ``query_frame`` (N,) int32 zeros; N = g * g."""
    if layout not in ("time-major", "view-major"):
        raise ValueError(f"layout must be time-major or view-major, got {layout!r}")
    noise_std = float(noise_std)
    if not (noise_std >= 0.0 and np.isfinite(noise_std)):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    if jpeg_quality is not None and (isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, (int, np.integer))
                                     or not 1 <= jpeg_quality <= 100):
        raise ValueError(f"jpeg_quality must be None or an integer in 1..100, got {jpeg_quality!r}")
    if isinstance(track_grid, bool) or not isinstance(track_grid, (int, np.integer)) or track_grid < 0:
        raise ValueError(f"track_grid must be an integer >= 0, got {track_grid!r}")
    ext, params = (".png", []) if jpeg_quality is None else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    root = Path(root)
    ground, boxes = render._demo_scene(n_boxes=50, seed=seed)
    rng = np.random.default_rng(seed)
    speed = np.where(boxes.kind == 0, rng.uniform(4, 10, len(boxes)), rng.uniform(0.8, 1.6, len(boxes)))
    velocity = np.column_stack([np.cos(boxes.yaw), np.sin(boxes.yaw)]) * (speed * boxes.dynamic)[:, None]
    cams = rig_cameras(views, width, height)

    def boxes_at(t: int) -> render.Boxes:
        return render.Boxes(center=boxes.center + np.column_stack([velocity * t / fps, np.zeros(len(boxes))]),
                            size=boxes.size, yaw=boxes.yaw, color=boxes.color, kind=boxes.kind,
                            dynamic=boxes.dynamic)

    if track_grid:
        query = query_grid(int(track_grid), width, height)
        moving = boxes.dynamic & (np.linalg.norm(velocity, axis=1) > 0)
        start = boxes_at(0)
        surfaces = [render.surface_points(ground, start, cam, query) for cam in cams]
        tracks = np.full((views, len(query), times, 2), np.nan, np.float32)
        visible = np.zeros((views, len(query), times), bool)
    for t in range(times):
        moved = boxes_at(t)
        for v, cam in enumerate(cams):
            out = render.render_camera(ground, moved, cam)
            rgb = add_camera_noise(out.rgb, noise_std, np.random.default_rng((seed, t, v))) if noise_std else out.rgb
            cv2.imwrite(str(_path(root, "images", layout, t, v, ext)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
            depth = np.where(np.isfinite(out.depth), out.depth / depth_unit, 0.0).astype(np.float32)
            np.save(_path(root, "depths", layout, t, v, ".npy"), depth)
            np.save(_path(root, "intrs", layout, t, v, ".npy"), cam.K)
            np.save(_path(root, "extrs", layout, t, v, ".npy"), np.linalg.inv(cam.cam2world)[:3])
            mask = root / "masks" / f"view_{v}" / f"{t}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask), out.dynamic_mask.astype(np.uint8) * 255)
            if track_grid:
                tracks[v, :, t], visible[v, :, t] = render.project_surface_points(surfaces[v], moved, cam, out.depth)
    if track_grid:
        for v, surf in enumerate(surfaces):
            seen = surf.object_index != -2                     # a query point is visible at its own frame (not sky)
            tracks[v, :, 0] = query                            # exact, not re-projected
            visible[v, :, 0] = seen
            obj = surf.object_index
            dynamic = (obj >= 0) & moving[np.maximum(obj, 0)]
            save_npz(root / "tracks" / f"view{v}.npz", tracks=tracks[v], visible=visible[v], dynamic=dynamic,
                     query_frame=np.zeros(len(query), np.int32))
    return root
