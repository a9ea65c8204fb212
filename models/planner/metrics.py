"""Open-loop nuScenes planning metrics, reproducing UniAD's and ST-P3's ``PlanningMetric`` grid arithmetic.

See ``shared/design/metrics_conventions.md`` §2 and ``map_and_planning.md`` §B. All inputs are in the current
LIDAR_TOP frame (x right, y forward, metres); trajectories are (S, F, 2) waypoints at +0.5 s ... +F*0.5 s.
Everything is batched numpy (inputs may be numpy arrays or CPU torch tensors; inputs are never mutated).

Grid (both conventions): 200 x 200 cells of 0.5 m over [-50, 50); ``grid[s, t, row, col]`` with
row <-> LIDAR y and col <-> +x (``'uniad'``) or -x (``'stp3'``, the mirror image).

* Occupancy rasteriser (UniAD ``occflow_label.py``): each box's 4 bottom corners -> ``round((v + 50) / 0.5)``
  (numpy round, half to even), then ``cv2.fillPoly`` with (col, row) as int32, one call per box as UniAD does
  (so overlapping boxes give their union; one call with several polygons would cancel the overlaps). Classes:
  vehicles (``'uniad'``), vehicles + pedestrians (``'stp3'``). Future frames outside
  the scene are all-occupied (UniAD's 255) for ``'uniad'``; for ``'stp3'`` they are left empty (those samples are
  excluded from the ST-P3 metric anyway).
  Deviation (documented, pitfall 11): ST-P3 rasterises in its ego (rear-axle) yaw-only frame and warps the
  rasters; we rasterise directly in the current LIDAR frame with the ST-P3 column sign.
* Ego box collision (``evaluate_single_coll``): the fixed 32 cells rows 97..104 x cols 98..101 (the
  ``skimage.draw.polygon`` of the 1.85 m x 4.084 m box, centre +0.5 m in y, heading ignored), shifted by the
  waypoint: ``rows = int32(y/0.5 + {97..104})``, ``cols = int32(x'/0.5 + {98..101})`` with x' = +x (uniad) or -x
  (stp3); int32 truncates toward zero, then both are clipped to [0, 199]; collision = any occupied cell.
* GT exclusion: a step where the GT trajectory's box collides adds no prediction collision but the sample stays
  in the denominator. L2 per step = ``sqrt(sum(mask * d^2))``; UniAD masks invalid steps (adds 0, counted in N).
* Reporting: ``'uniad'``: value at steps 2, 4, 6 (1/2/3 s) over all samples; ``'stp3'``: mean of the per-step
  values over steps 1..2k, only samples with all F future steps valid (and the last 3 history entries valid when
  ``history_valid`` is given). Avg = mean of the 1/2/3 s values. Collisions are reported in %.
"""
from __future__ import annotations

import cv2
import numpy as np

CONVENTIONS = ("uniad", "stp3")
GRID = 200
RES = 0.5
HALF = 50.0
EGO_W = 1.85
EGO_L = 4.084
BOX_ROWS = np.arange(97, 105)  # skimage.draw.polygon rows of the ego box at the origin
BOX_COLS = np.arange(98, 102)  # ... and columns (8 x 4 = 32 cells)
OCC_CLASSES = {"uniad": (0,), "stp3": (0, 1)}  # cache agent_class: 0 vehicle, 1 pedestrian, 2 other
COL_SIGN = {"uniad": 1.0, "stp3": -1.0}
METRIC_KEYS = ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "col_1s", "col_2s", "col_3s", "col_avg")


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(..., 7) [x, y, z, w, l, h, yaw] -> (..., 4, 2) bottom-corner loop (x, y); yaw = heading of the length axis,
    counter-clockwise from +x. (cv2.fillPoly's output does not depend on the loop's start or direction.)"""
    b = np.asarray(boxes, dtype=np.float64)
    c, s = np.cos(b[..., 6]), np.sin(b[..., 6])
    u = np.stack([c, s], -1)[..., None, :]   # length axis
    v = np.stack([-s, c], -1)[..., None, :]  # width axis
    sign = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], np.float64)
    hl = (b[..., 4] / 2)[..., None, None]
    hw = (b[..., 3] / 2)[..., None, None]
    return b[..., None, :2] + sign[:, 0:1] * hl * u + sign[:, 1:2] * hw * v


def corners_to_pixels(corners_xy: np.ndarray, convention: str) -> np.ndarray:
    """(..., 2) LIDAR (x, y) -> (..., 2) int64 (col, row) = round((v + 50)/0.5) with x sign per convention."""
    _check(convention)
    p = np.asarray(corners_xy, dtype=np.float64)
    col = np.round((COL_SIGN[convention] * p[..., 0] + HALF) / RES)
    row = np.round((p[..., 1] + HALF) / RES)
    return np.stack([col, row], -1).astype(np.int64)


def fill_boxes(frames: np.ndarray, frame_index: np.ndarray, pixels: np.ndarray) -> None:
    """``cv2.fillPoly(frames[k], [poly], 1)`` (shift 0, LINE_8) for each (V, 2) (col, row) polygon of ``pixels``
    (N, V, 2) into frame ``frame_index[n]`` of the C-contiguous uint8 ``frames`` (K, H, W), in place. One call per
    polygon, as UniAD's ``occflow_label.py``: overlaps give the union."""
    pts = np.ascontiguousarray(pixels, dtype=np.int32)
    for k, poly in zip(frame_index.tolist(), pts):
        cv2.fillPoly(frames[k], [poly], 1)


def occupancy_grid(agent_boxes, agent_valid, agent_class, future_valid, convention: str) -> np.ndarray:
    """GT occupancy (S, F, 200, 200) bool at future steps 1..F of ``agent_boxes`` (S, F+1, A, 7).

    ``'uniad'``: vehicles only, invalid future frames all True (UniAD's 255); ``'stp3'``: vehicles + pedestrians,
    invalid frames left empty. Rows <-> y, columns <-> +x (uniad) / -x (stp3); see the module docstring."""
    _check(convention)
    boxes = np.asarray(agent_boxes)[:, 1:]
    valid = np.asarray(agent_valid, dtype=bool)[:, 1:]
    cls = np.asarray(agent_class)[:, 1:]
    fv = np.asarray(future_valid, dtype=bool)
    S, F = boxes.shape[:2]
    sel = valid & np.isin(cls, OCC_CLASSES[convention]) & fv[..., None]
    s, t, a = np.nonzero(sel)
    occ = np.zeros((S, F, GRID, GRID), dtype=np.uint8)
    if len(s):
        pix = corners_to_pixels(box_corners(boxes[s, t, a]), convention)
        fill_boxes(occ.reshape(S * F, GRID, GRID), s * F + t, pix)
    occ = occ.view(bool)  # 0 / 1 bytes
    if convention == "uniad":
        occ[~fv] = True
    return occ


def collisions(traj, occupancy, convention: str) -> np.ndarray:
    """(S, F) bool: the reference's 32-cell ego box at each waypoint of ``traj`` (S, F, 2) hits ``occupancy``
    (S, F, 200, 200) (any nonzero). int32 truncation toward zero, then clipping to [0, 199] (never dropped)."""
    _check(convention)
    tr = np.asarray(traj, dtype=np.float64)[..., :2]
    occ = np.asarray(occupancy)
    S, F = tr.shape[:2]
    x = COL_SIGN[convention] * tr[..., 0] / RES
    y = tr[..., 1] / RES
    lim = 1e9  # keep the int32 cast defined; the clip below gives the same cell as the reference's wrap-free case
    r = np.clip(np.clip(y[..., None, None] + BOX_ROWS[:, None], -lim, lim).astype(np.int32), 0, GRID - 1)
    c = np.clip(np.clip(x[..., None, None] + BOX_COLS[None, :], -lim, lim).astype(np.int32), 0, GRID - 1)
    si = np.arange(S)[:, None, None, None]
    ti = np.arange(F)[None, :, None, None]
    return occ[si, ti, r, c].reshape(S, F, -1).astype(bool).any(-1)


def per_step(pred, gt, gt_valid, occupancy, convention: str, sample_mask=None):
    """Per-step sums / N as the reference's ``compute()``: returns (l2 (F,), col fraction (F,), N)."""
    _check(convention)
    pred = np.asarray(pred, dtype=np.float64)[..., :2]
    gt = np.asarray(gt, dtype=np.float64)[..., :2]
    gv = np.asarray(gt_valid, dtype=bool)
    occ = np.asarray(occupancy)
    if sample_mask is not None:
        m = np.asarray(sample_mask, dtype=bool)
        pred, gt, gv, occ = pred[m], gt[m], gv[m], occ[m]
    N, F = pred.shape[:2]
    if N == 0:
        return np.full(F, np.nan), np.full(F, np.nan), 0
    sq = (pred - gt) ** 2
    if convention == "uniad":
        sq = sq * gv[..., None]
    l2 = np.sqrt(sq.sum(-1)).sum(0) / N
    counted = collisions(pred, occ, convention) & ~collisions(gt, occ, convention)
    return l2, counted.sum(0) / N, N


def report(l2_step: np.ndarray, col_step: np.ndarray, convention: str) -> dict:
    """Per-step vectors (F >= 6) -> {l2_1s ... col_avg}; collisions in %."""
    _check(convention)
    out = {}
    for name, v, scale in (("l2", l2_step, 1.0), ("col", col_step, 100.0)):
        vals = []
        for k in (1, 2, 3):
            vals.append(float(v[2 * k - 1]) if convention == "uniad" else float(np.mean(v[:2 * k])))
            out[f"{name}_{k}s"] = vals[-1] * scale
        out[f"{name}_avg"] = float(np.mean(vals)) * scale
    return out


def stp3_sample_mask(gt_valid, history_valid=None) -> np.ndarray:
    """ST-P3 sample selection: all future steps valid (and the last 3 history entries when given)."""
    m = np.asarray(gt_valid, dtype=bool).all(1)
    if history_valid is not None:
        m = m & np.asarray(history_valid, dtype=bool)[:, -3:].all(1)
    return m


def planning_metrics(pred, gt, gt_valid, agent_boxes, agent_valid, agent_class, convention: str,
                     history_valid=None, occupancy=None) -> dict:
    """L2 (m) and box-collision rate (%) at 1/2/3 s and their average under ``convention``.

    pred, gt (S, F, 2) LIDAR (x right, y forward); gt_valid (S, F) = cache future_valid; agent_* from the cache;
    history_valid (S, H) = cache ego_history_valid (ST-P3 selection only); occupancy may be passed precomputed
    (from :func:`occupancy_grid` with the same convention)."""
    _check(convention)
    gv = np.asarray(gt_valid, dtype=bool)
    if occupancy is None:
        occupancy = occupancy_grid(agent_boxes, agent_valid, agent_class, gv, convention)
    mask = stp3_sample_mask(gv, history_valid) if convention == "stp3" else None
    l2, col, _ = per_step(pred, gt, gv, occupancy, convention, mask)
    return report(l2, col, convention)


def all_planning_metrics(pred, gt, gt_valid, agent_boxes, agent_valid, agent_class, history_valid=None) -> dict:
    """Both conventions, keys ``uniad/l2_1s`` ... ``stp3/col_avg``."""
    out = {}
    for conv in CONVENTIONS:
        m = planning_metrics(pred, gt, gt_valid, agent_boxes, agent_valid, agent_class, conv, history_valid)
        out.update({f"{conv}/{k}": v for k, v in m.items()})
    return out
