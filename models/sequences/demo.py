"""A small multi-view sequence folder rendered from a synthetic street, with its exact depth, calibration and
dynamic masks: the reference input for the sequence reader's tests and the own-data recipe.

A fixed rig of ``views`` cameras (yaw steps of 360 / views degrees, 1.5 m above the ground) watches a street whose
cars and pedestrians move in straight lines; ``times`` frames at ``fps``. Written in either layout.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from models.world import render

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


def write_demo_sequence(root: str | Path, times: int = 24, views: int = 4, width: int = 160, height: int = 120,
                        fps: float = 30.0, layout: str = "time-major", depth_unit: float = 1.0,
                        seed: int = 0) -> Path:
    """Write ``images/``, ``depths/`` (z-depth / depth_unit, 0 for sky), ``intrs/``, ``extrs/`` (world-to-camera)
    and ``masks/view_<k>/<t>.png``; time and view folders are not zero-padded (numeric sorting matters)."""
    if layout not in ("time-major", "view-major"):
        raise ValueError(f"layout must be time-major or view-major, got {layout!r}")
    root = Path(root)
    ground, boxes = render._demo_scene(n_boxes=50, seed=seed)
    rng = np.random.default_rng(seed)
    speed = np.where(boxes.kind == 0, rng.uniform(4, 10, len(boxes)), rng.uniform(0.8, 1.6, len(boxes)))
    velocity = np.column_stack([np.cos(boxes.yaw), np.sin(boxes.yaw)]) * (speed * boxes.dynamic)[:, None]
    cams = rig_cameras(views, width, height)
    for t in range(times):
        moved = render.Boxes(center=boxes.center + np.column_stack([velocity * t / fps, np.zeros(len(boxes))]),
                             size=boxes.size, yaw=boxes.yaw, color=boxes.color, kind=boxes.kind,
                             dynamic=boxes.dynamic)
        for v, cam in enumerate(cams):
            out = render.render_camera(ground, moved, cam)
            cv2.imwrite(str(_path(root, "images", layout, t, v, ".png")), cv2.cvtColor(out.rgb, cv2.COLOR_RGB2BGR))
            depth = np.where(np.isfinite(out.depth), out.depth / depth_unit, 0.0).astype(np.float32)
            np.save(_path(root, "depths", layout, t, v, ".npy"), depth)
            np.save(_path(root, "intrs", layout, t, v, ".npy"), cam.K)
            np.save(_path(root, "extrs", layout, t, v, ".npy"), np.linalg.inv(cam.cam2world)[:3])
            mask = root / "masks" / f"view_{v}" / f"{t}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask), out.dynamic_mask.astype(np.uint8) * 255)
    return root
