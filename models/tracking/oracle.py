"""Exact tracks of arbitrary query points in the synthetic world (the ``oracle`` backend and the truth the other
backends are scored against).

The scene state comes from ``extras/<scene>.npz`` (``sweep_ego_pose``, ``sweep_boxes``, ``box_kind``,
``box_dynamic``, ``static_boxes``) and the CAM_FRONT calibration from the tables; geometry is
``models.world.render.surface_points`` / ``project_surface_points``, with visibility from a depth test against
the depth rendered at each frame (``render_camera`` with a dummy ground texture: the ground is the plane z = 0,
so depth does not depend on the texture). This is exactly how the world's own ``track_uv`` is made.

Positions a tracker output cannot hold are made finite by rule, and are never visible:

* a query on the sky (or on ground beyond the renderer's range) is a point at infinity: it moves with the
  camera rotation only;
* a point that goes behind the camera keeps its last finite position.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.world import raycast as rc
from models.world import render
from models.world.sensors import ego_pose_matrix

from .resize import to_resized, to_source  # noqa: F401  (the oracle's callers import them from here)
from .sources import TrackingInputError

_DUMMY_GROUND = render.GroundTexture(rgb=np.full((1, 1, 3), 100, np.uint8), origin=(0.0, 0.0), resolution=1.0)
SKY_RULE = ("sky queries: points at infinity (camera rotation only); points behind the camera hold their last "
            "finite position; neither is ever visible")


@dataclass
class SceneTruth:
    ego_pose: np.ndarray       # (F, 3) x, y, yaw per sweep
    boxes: np.ndarray          # (F, A, 7) agents x, y, z, w, l, h, yaw
    box_kind: np.ndarray       # (A,) int8
    box_dynamic: np.ndarray    # (A,) bool
    static_boxes: np.ndarray   # (B, 7)
    K: np.ndarray              # (3, 3)
    sensor2ego: np.ndarray     # (4, 4)
    width: int
    height: int


def load_scene_truth(npz_path: str | Path, K: np.ndarray, sensor2ego: np.ndarray, width: int,
                     height: int) -> SceneTruth:
    path = Path(npz_path)
    if not path.is_file():
        raise TrackingInputError(f"{path}: exact-truth file of the synthetic world not found")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("sweep_ego_pose", "sweep_boxes", "box_kind", "box_dynamic", "static_boxes")
                   if k not in z.files]
        if missing:
            raise TrackingInputError(f"{path}: missing arrays {missing}")
        return SceneTruth(ego_pose=np.asarray(z["sweep_ego_pose"], np.float64),
                          boxes=np.asarray(z["sweep_boxes"], np.float64),
                          box_kind=np.asarray(z["box_kind"], np.int8),
                          box_dynamic=np.asarray(z["box_dynamic"], bool),
                          static_boxes=np.asarray(z["static_boxes"], np.float64).reshape(-1, 7),
                          K=np.asarray(K, np.float64), sensor2ego=np.asarray(sensor2ego, np.float64),
                          width=int(width), height=int(height))


class Oracle:
    """Exact tracks in one scene; rendered depth is cached per sweep."""

    def __init__(self, truth: SceneTruth):
        self.truth = truth
        self._depth: dict[int, np.ndarray] = {}

    def boxes(self, f: int) -> render.Boxes:
        t = self.truth
        a, s = t.boxes[f], t.static_boxes
        n_a, n_s = len(a), len(s)
        return render.Boxes(center=np.concatenate([a[:, :3], s[:, :3]]), size=np.concatenate([a[:, 3:6], s[:, 3:6]]),
                            yaw=np.concatenate([a[:, 6], s[:, 6]]), color=np.zeros((n_a + n_s, 3), np.uint8),
                            kind=np.concatenate([t.box_kind, np.full(n_s, 2, np.int8)]),
                            dynamic=np.concatenate([t.box_dynamic, np.zeros(n_s, bool)]))

    def camera(self, f: int) -> render.Camera:
        t = self.truth
        return render.Camera(K=t.K, cam2world=ego_pose_matrix(*t.ego_pose[f]) @ t.sensor2ego,
                             width=t.width, height=t.height)

    def depth(self, f: int) -> np.ndarray:
        """Rendered z-depth (H, W) float32 of sweep f, exactly ``render_camera(...).depth``. The renderer's
        ray-casting core (``_cast_camera``) is used when present: the same depth without shading, 5x faster
        (tests/test_tracking.py checks they agree)."""
        if f not in self._depth:
            cast = getattr(render, "_cast_camera", None)
            if cast is not None:
                depth = cast(self.boxes(f), self.camera(f), render.MAX_GROUND_RANGE)[0].astype(np.float32)
            else:
                depth = render.render_camera(_DUMMY_GROUND, self.boxes(f), self.camera(f)).depth
            self._depth[f] = depth
        return self._depth[f]

    def track_raw(self, frames: list[int] | np.ndarray,
                  query_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact tracks of query pixels (Q, 2) (u, v) seeded on ``frames[0]``, at the source resolution:
        (uv (T, Q, 2) float32 with NaN for sky / behind the camera, visible (T, Q) bool, object index (Q,))."""
        frames = [int(f) for f in frames]
        query_uv = np.asarray(query_uv, np.float64).reshape(-1, 2)
        surf = render.surface_points(_DUMMY_GROUND, self.boxes(frames[0]), self.camera(frames[0]), query_uv)
        uv = np.empty((len(frames), len(query_uv), 2), np.float32)
        vis = np.empty((len(frames), len(query_uv)), bool)
        for h, f in enumerate(frames):
            uv[h], vis[h] = render.project_surface_points(surf, self.boxes(f), self.camera(f), self.depth(f))
        return uv, vis, surf.object_index

    def track(self, frames: list[int] | np.ndarray, query_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """:meth:`track_raw` with every position finite (the rules in the module docstring); returns
        (uv (T, Q, 2) float64, visible (T, Q), counts {"sky_points", "held_positions"})."""
        frames = [int(f) for f in frames]
        uv, vis, obj = self.track_raw(frames, query_uv)
        uv = uv.astype(np.float64)
        sky = obj == -2
        if sky.any():
            uv[:, sky] = self._at_infinity(frames, np.asarray(query_uv, np.float64).reshape(-1, 2)[sky])
        bad = ~np.isfinite(uv).all(axis=-1)                                       # (T, Q)
        held = int(bad.sum())
        for h in range(1, len(frames)):                                           # hold the last finite position
            uv[h, bad[h]] = uv[h - 1, bad[h]]
        vis &= ~bad
        vis[:, sky] = False
        return uv, vis, {"sky_points": int(sky.sum()), "held_positions": held}

    def _at_infinity(self, frames: list[int], query_uv: np.ndarray) -> np.ndarray:
        K = self.truth.K
        X, Y = rc.pixel_rays(K, query_uv[:, 0], query_uv[:, 1])
        R0 = self.camera(frames[0]).cam2world[:3, :3]
        d = np.stack([X, Y, np.ones_like(X)], axis=1) @ R0.T                       # world directions
        out = np.full((len(frames), len(query_uv), 2), np.nan)
        for h, f in enumerate(frames):
            pc = d @ self.camera(f).cam2world[:3, :3]                              # R_t^T d
            z = pc[:, 2]
            with np.errstate(invalid="ignore", divide="ignore"):
                zs = np.where(z > rc.NEAR, z, np.nan)
                out[h, :, 0] = (K[0, 0] * pc[:, 0] + K[0, 1] * pc[:, 1]) / zs + K[0, 2]
                out[h, :, 1] = K[1, 1] * pc[:, 1] / zs + K[1, 2]
        return out
