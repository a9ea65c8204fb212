"""Open-loop nuScenes planning metrics, reproducing UniAD's and ST-P3's ``PlanningMetric`` grid arithmetic.

See ``shared/design/metrics_conventions.md`` §2 and ``map_and_planning.md`` §B. All inputs are in the current
LIDAR_TOP frame (x right, y forward, metres); trajectories are (S, F, 2) waypoints at +0.5 s ... +F*0.5 s.
Everything is batched numpy (inputs may be numpy arrays or CPU torch tensors; inputs are never mutated).

Grid (both conventions): 200 x 200 cells of 0.5 m over [-50, 50); ``grid[s, t, row, col]`` with
row <-> LIDAR y and col <-> +x (``'uniad'``) or -x (``'stp3'``, the mirror image).

* Occupancy rasteriser (UniAD ``occflow_label.py``): each box's 4 bottom corners -> ``round((v + 50) / 0.5)``
  (numpy round, half to even), then ``cv2.fillPoly`` with (col, row). :func:`occupancy_grid` re-implements
  ``cv2.fillPoly`` (OpenCV 4.x, shift 0, LINE_8) vectorised: the fixed-point scan-line fill plus the 8-connected
  Bresenham edges, both following OpenCV's clipping of edges that leave the grid (pixel-exact against cv2 4.11,
  boxes across the border included). Classes: vehicles (``'uniad'``), vehicles + pedestrians (``'stp3'``). Future frames outside
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
_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT
_CHUNK = 4096  # polygons rasterised per vectorised chunk


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


def _scan_fill(P: np.ndarray, H: int, W: int):
    """cv2 CollectPolyEdges + FillEdgeCollection for (N, V, 2) int (x, y) polygons -> (poly, row, col) index
    arrays. Like OpenCV 4.x, an edge with an end outside the image is first clipped (:func:`_clip_line`) and the
    scan line follows the clipped segment's slope, extended back to the original end rows."""
    N, V, _ = P.shape
    p0, p1 = P, np.roll(P, -1, axis=1)
    outside = ((p0 < 0) | (p1 < 0) | (p0[..., :1] >= W) | (p1[..., :1] >= W)
               | (p0[..., 1:] >= H) | (p1[..., 1:] >= H)).any(-1)  # (N, V)
    c0, c1, _ = _clip_line(p0, p1, H, W)
    c0 = np.where(outside[..., None], c0, p0)
    c1 = np.where(outside[..., None], c1, p1)
    keep_y = ~outside | (c0[..., 1] == c1[..., 1])  # cv2 keeps the original rows when clipping flattens the edge
    c0y = np.where(keep_y, p0[..., 1], c0[..., 1])
    c1y = np.where(keep_y, p1[..., 1], c1[..., 1])
    num = (c1[..., 0] - c0[..., 0]) * _XY_ONE
    den = c1y - c0y
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = np.where(den != 0, np.sign(num) * np.sign(den) * (np.abs(num) // np.maximum(np.abs(den), 1)), 0)
    top0 = p0[..., 1] < p1[..., 1]  # the edge starts at its upper end
    y0 = np.where(top0, p0[..., 1], p1[..., 1])
    y1 = np.where(top0, p1[..., 1], p0[..., 1])
    X0 = np.where(top0, c0[..., 0] * _XY_ONE + (p0[..., 1] - c0y) * dx,
                  c1[..., 0] * _XY_ONE + (p1[..., 1] - c1y) * dx)  # fixed-point x at row y0
    ymin = P[..., 1].min(1)
    K = int((P[..., 1].max(1) - ymin).max()) if N else 0
    if K == 0:  # no polygon spans a row boundary: only the edges (Bresenham) are drawn
        return (np.zeros(0, np.int64),) * 3
    ys = ymin[:, None] + np.arange(K)[None, :]  # (N, K)
    act = (y1 > y0)[:, None, :] & (ys[..., None] >= y0[:, None, :]) & (ys[..., None] < y1[:, None, :])  # (N,K,V)
    xs = X0[:, None, :] + (ys[..., None] - y0[:, None, :]) * dx[:, None, :]
    big = np.iinfo(np.int64).max // 4
    xs = np.sort(np.where(act, xs, big), axis=-1)
    cols, rows, polys = [], [], []
    lo = np.where(act.any((1, 2)), xs.min((1, 2)) >> _XY_SHIFT, 0)  # inactive lanes hold big
    hi = np.where(xs < big, xs, -big).max((1, 2)) >> _XY_SHIFT
    xmin = np.clip(lo, 0, W - 1)
    Kx = int(np.clip(hi - xmin + 1, 0, W).max()) if N else 0
    cx = xmin[:, None, None] + np.arange(Kx)[None, None, :]  # (N, 1, Kx)
    for j in range(0, V - 1, 2):  # consecutive sorted pairs
        xl, xr = xs[..., j], xs[..., j + 1]
        ok = xr < big
        x1 = (xl + _XY_ONE - 1) >> _XY_SHIFT
        x2 = xr >> _XY_SHIFT
        m = ok[..., None] & (cx >= x1[..., None]) & (cx <= x2[..., None])
        n, k, c = np.nonzero(m)
        polys.append(n), rows.append(ys[n, k]), cols.append(cx[n, 0, c])
    return np.concatenate(polys), np.concatenate(rows), np.concatenate(cols)


def _clip_line(p1: np.ndarray, p2: np.ndarray, H: int, W: int):
    """Vectorised OpenCV ``clipLine(Size, pt1, pt2)`` (Cohen-Sutherland, (double) products cast toward zero).
    Returns clipped (p1, p2) and whether any part is inside."""
    x1, y1 = p1[..., 0].astype(np.int64), p1[..., 1].astype(np.int64)
    x2, y2 = p2[..., 0].astype(np.int64), p2[..., 1].astype(np.int64)
    right, bottom = W - 1, H - 1

    def code(x, y):
        return (x < 0) * 1 + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

    c1, c2 = code(x1, y1), code(x2, y2)
    go = ((c1 & c2) == 0) & ((c1 | c2) != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = go & ((c1 & 12) != 0)
        a = np.where(c1 < 8, 0, bottom)
        nx = x1 + np.trunc((a - y1).astype(np.float64) * (x2 - x1) / (y2 - y1))
        x1 = np.where(m, np.nan_to_num(nx).astype(np.int64), x1); y1 = np.where(m, a, y1)
        c1 = np.where(m, (x1 < 0) * 1 + (x1 > right) * 2, c1)
        m = go & ((c2 & 12) != 0)
        a = np.where(c2 < 8, 0, bottom)
        nx = x2 + np.trunc((a - y2).astype(np.float64) * (x2 - x1) / (y2 - y1))
        x2 = np.where(m, np.nan_to_num(nx).astype(np.int64), x2); y2 = np.where(m, a, y2)
        c2 = np.where(m, (x2 < 0) * 1 + (x2 > right) * 2, c2)
        go2 = go & ((c1 & c2) == 0) & ((c1 | c2) != 0)
        m = go2 & (c1 != 0)
        a = np.where(c1 == 1, 0, right)
        ny = y1 + np.trunc((a - x1).astype(np.float64) * (y2 - y1) / (x2 - x1))
        y1 = np.where(m, np.nan_to_num(ny).astype(np.int64), y1); x1 = np.where(m, a, x1)
        c1 = np.where(m, 0, c1)
        m = go2 & (c2 != 0)
        a = np.where(c2 == 1, 0, right)
        ny = y2 + np.trunc((a - x2).astype(np.float64) * (y2 - y1) / (x2 - x1))
        y2 = np.where(m, np.nan_to_num(ny).astype(np.int64), y2); x2 = np.where(m, a, x2)
        c2 = np.where(m, 0, c2)
    return np.stack([x1, y1], -1), np.stack([x2, y2], -1), (c1 | c2) == 0


def _bresenham(P: np.ndarray):
    """cv2 Line (LINE_8, LineIterator left-to-right) of every polygon edge -> (poly, row, col) index arrays.
    Like cv2, each edge is first clipped to the image (:func:`_clip_line`) and the walk starts at the clipped ends."""
    N, V, _ = P.shape
    p0, p1, inside = _clip_line(P, np.roll(P, -1, axis=1), GRID, GRID)
    swap = p1[..., 0] < p0[..., 0]
    a = np.where(swap[..., None], p1, p0)
    b = np.where(swap[..., None], p0, p1)
    ax = b[..., 0] - a[..., 0]
    ddy = b[..., 1] - a[..., 1]
    sy = np.where(ddy < 0, -1, 1)
    ay = np.abs(ddy)
    ymajor = ay > ax
    D = np.where(ymajor, ay, ax)
    d = np.where(ymajor, ax, ay)
    L = int(D.max()) + 1 if N else 0
    err = D - 2 * d
    m = np.zeros_like(D)
    minor = np.zeros((N, V, L), np.int64)
    for k in range(1, L):  # walk over the major axis (vectorised over all edges)
        step = err < 0
        err = err + np.where(step, 2 * D - 2 * d, -2 * d)
        m = m + step
        minor[..., k] = m
    k = np.arange(L)[None, None, :]
    x = a[..., 0:1] + np.where(ymajor[..., None], minor, k)
    y = a[..., 1:2] + sy[..., None] * np.where(ymajor[..., None], k, minor)
    valid = (k <= D[..., None]) & inside[..., None]
    n, e, kk = np.nonzero(valid)
    return n, y[n, e, kk], x[n, e, kk]


def fill_polygons(P: np.ndarray, H: int = GRID, W: int = GRID):
    """Vectorised ``cv2.fillPoly`` (shift 0, LINE_8) of (N, V, 2) integer (col, row) polygons.
    Returns (poly_index, row, col) of the drawn pixels inside the H x W image (duplicates possible)."""
    P = np.asarray(P, dtype=np.int64)
    out = [], [], []
    for i in range(0, len(P), _CHUNK):
        q = P[i:i + _CHUNK]
        for n, r, c in (_scan_fill(q, H, W), _bresenham(q)):
            keep = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            out[0].append(n[keep] + i), out[1].append(r[keep]), out[2].append(c[keep])
    if not out[0]:
        return (np.zeros(0, np.int64),) * 3
    return tuple(np.concatenate(o) for o in out)


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
    occ = np.zeros((S, F, GRID, GRID), dtype=bool)
    if len(s):
        pix = corners_to_pixels(box_corners(boxes[s, t, a]), convention)
        n, r, c = fill_polygons(pix)
        occ[s[n], t[n], r, c] = True
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
