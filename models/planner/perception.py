"""The planner's perception target: what is in the corridor of the ego's route ahead (from the GT cache).

The synthetic world slows the ego for leaders on its route and for pedestrians crossing it shortly before it
arrives (models/world/traffic.py), so what decides its speed is visible: the nearest agent in the corridor ahead.
:func:`corridor_targets` turns the cache's current agent boxes into a (S, K) training target that the planner's
perception head predicts from the images (``planner.perception_weight``); with ``planner.ego_path = fused`` the
predicted values are an input of the planner's waypoint MLP. The targets are GT labels, never a model input.

    gap         distance along the corridor to the nearest agent in it / CORRIDOR_M (1: nothing within CORRIDOR_M)
    present     1 if an agent is in the corridor within CORRIDOR_M, else 0
    lead_speed  that agent's speed along the corridor (m/s, from its box at the next key frame, same instance) / 10

The corridor: the polyline from the current LIDAR origin through the cache's valid ``route_points`` (straight
ahead, LIDAR +y, for a sample without them); an agent is in it when its box centre lies within
VEHICLE_HALF_WIDTH_M (vehicles, other) or PEDESTRIAN_HALF_WIDTH_M (pedestrians: about to step in) of the
polyline, more than 1 m ahead along it.
"""
from __future__ import annotations

import numpy as np

PERCEPTION_TARGETS = ("gap", "present", "lead_speed")
CORRIDOR_M = 40.0
VEHICLE_HALF_WIDTH_M = 2.0          # about half the world's 3.5 m lane plus a margin
PEDESTRIAN_HALF_WIDTH_M = 4.0
PEDESTRIAN_CLASS = 1                # cache agent_classes: vehicle, pedestrian, other
SPEED_SCALE = 10.0


def corridor_targets(a: dict, dt: float = 0.5) -> np.ndarray:
    """Cache arrays of one split -> (S, len(PERCEPTION_TARGETS)) float32 (see the module docstring).

    Reads route_points / route_valid (optional), agent_boxes, agent_valid, agent_class, agent_instance; ``dt``:
    seconds between key frames (the lead speed's finite difference)."""
    boxes, valid = np.asarray(a["agent_boxes"]), np.asarray(a["agent_valid"], bool)
    cls, inst = np.asarray(a["agent_class"]), np.asarray(a["agent_instance"])
    n = len(boxes)
    rp = np.asarray(a["route_points"], np.float64) if "route_points" in a else np.zeros((n, 0, 2))
    rv = np.asarray(a["route_valid"], bool) if "route_valid" in a else np.zeros((n, 0), bool)
    out = np.zeros((n, len(PERCEPTION_TARGETS)), np.float32)
    for i in range(n):
        pts = np.concatenate([[[0.0, 0.0]], rp[i][rv[i]]])
        if len(pts) < 2:
            pts = np.array([[0.0, 0.0], [0.0, CORRIDOR_M]])
        seg = np.diff(pts, axis=0)                                           # (K, 2)
        seg_len = np.maximum(np.linalg.norm(seg, axis=1), 1e-6)
        s0 = np.concatenate([[0.0], np.cumsum(seg_len)])
        gap, speed = CORRIDOR_M, 0.0
        for k in np.flatnonzero(valid[i, 0]):
            p = boxes[i, 0, k, :2].astype(np.float64)
            u = np.clip(((p - pts[:-1]) * seg).sum(1) / seg_len ** 2, 0.0, 1.0)
            d = np.linalg.norm(pts[:-1] + u[:, None] * seg - p, axis=1)
            j = int(np.argmin(d))
            s = s0[j] + u[j] * seg_len[j]
            half = PEDESTRIAN_HALF_WIDTH_M if cls[i, 0, k] == PEDESTRIAN_CLASS else VEHICLE_HALF_WIDTH_M
            if d[j] < half and 1.0 < s < gap:
                gap, speed = s, 0.0
                same = np.flatnonzero(valid[i, 1] & (inst[i, 1] == inst[i, 0, k])) if boxes.shape[1] > 1 else []
                if len(same):
                    speed = float(((boxes[i, 1, same[0], :2] - p) / dt * seg[j] / seg_len[j]).sum())
        out[i] = (gap / CORRIDOR_M, float(gap < CORRIDOR_M), speed / SPEED_SCALE)
    return out


__all__ = ["CORRIDOR_M", "PERCEPTION_TARGETS", "corridor_targets"]
