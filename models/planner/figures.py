"""Planner figures for people: a BEV of GT vs predicted trajectories over the map and the agent boxes, and the
same trajectories drawn on the ground in the CAM_FRONT image, for a fixed set of validation samples.

Frames (see the GT cache manifest, ``frames``): everything planning-related is in the current LIDAR_TOP frame
(x right, y forward, z up); box yaw = heading of the box's length axis, counter-clockwise from LIDAR +x; the
nuScenes ego frame sits on the ground (ego z = 0 is the road surface); camera frame x right, y down, z forward;
pixels (x = u = column, y = v = row) with pixel centres at integers (OpenCV), so the image spans
[-0.5, W - 0.5] x [-0.5, H - 0.5].

Figures are PNG with deterministic bytes: matplotlib ``Figure`` objects rendered by Agg without pyplot (no global
backend switch, nothing left open), ``metadata={"Software": None}``, written to a temporary name and renamed.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from models.common.io import atomic_file
from models.planner.metrics import EGO_L, EGO_W, box_corners

AGENT_CLASSES = ("vehicle", "pedestrian", "other")  # cache agent_class indices (manifest agent_classes)
MAP_COLOURS = {"divider": "#f0a020", "ped_crossing": "#2f6fd0", "boundary": "#2a9a4a"}  # MapTR's orange/blue/green
AGENT_COLOURS = {"vehicle": "#7b4fb5", "pedestrian": "#d6307e", "other": "#8a8a8a"}
GT_NAME = "GT"
GT_COLOUR = "#111111"
PRED_COLOURS = ("#e02020", "#17becf", "#8c564b", "#bcbd22", "#e377c2", "#1f3fff")
NEAR_M = 0.1  # points closer than this in front of the camera are not visible
DT_S = 0.5  # seconds between waypoints (nuScenes key frames)
CAMERA = "CAM_FRONT"


# --------------------------------------------------------------------------------------------------- geometry
def box_corners_xy(boxes: np.ndarray) -> np.ndarray:
    """(..., 7) [x, y, z, w, l, h, yaw] (LIDAR frame; yaw of the length axis, counter-clockwise from +x) ->
    (..., 4, 2) bottom corners (x, y) as a loop. Same contract as :func:`models.planner.metrics.box_corners`,
    which it reuses: back-right, back-left, front-left, front-right of the box's own (length, width) axes."""
    return box_corners(boxes)


def ground_points_in_lidar(xy: np.ndarray, lidar2ego: np.ndarray) -> np.ndarray:
    """(..., 2) LIDAR-frame (x, y) -> (..., 3) LIDAR-frame points on the ground: z is chosen so that
    ``lidar2ego`` maps each point to ego z = 0 (the nuScenes ego frame sits on the ground).

    With p_ego = R p + t, ego z = R[2, 0] x + R[2, 1] y + R[2, 2] z + t[2] = 0 gives
    z = -(t[2] + R[2, 0] x + R[2, 1] y) / R[2, 2] (R[2, 2] is ~1 for any LIDAR mounted upright)."""
    xy = np.asarray(xy, dtype=np.float64)[..., :2]
    T = np.asarray(lidar2ego, dtype=np.float64)
    r = T[2, :3]
    if abs(r[2]) < 1e-6:
        raise ValueError(f"lidar2ego has a LIDAR z axis parallel to the ground (R[2, 2] = {r[2]:.3g}); "
                         "the ground plane cannot be expressed as z(x, y) in the LIDAR frame")
    z = -(T[2, 3] + r[0] * xy[..., 0] + r[1] * xy[..., 1]) / r[2]
    return np.concatenate([xy, z[..., None]], axis=-1)


def lidar_to_camera(points_lidar: np.ndarray, cam2lidar: np.ndarray) -> np.ndarray:
    """(..., 3) LIDAR-frame points -> (..., 3) camera-frame points (x right, y down, z forward)."""
    p = np.asarray(points_lidar, dtype=np.float64)
    T = np.asarray(cam2lidar, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    return (p - t) @ R  # R^T (p - t), row vectors; exact inverse of a rigid transform


def _pixels(p_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixel (u, v) (no visibility test; z must be nonzero)."""
    K = np.asarray(K, dtype=np.float64)
    q = p_cam @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return q[:, :2] / q[:, 2:3]


def project_to_image(points_lidar: np.ndarray, K: np.ndarray, cam2lidar: np.ndarray,
                     image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) LIDAR-frame points -> pixel (N, 2) float (u = column, v = row; pixel centres at integers) and a
    visible mask (N,): in front of the camera by more than 0.1 m and inside the image
    (-0.5 <= u < W - 0.5, -0.5 <= v < H - 0.5). Pixels of points not in front are NaN."""
    p = lidar_to_camera(np.asarray(points_lidar, dtype=np.float64).reshape(-1, 3), cam2lidar)
    H, W = int(image_hw[0]), int(image_hw[1])
    front = p[:, 2] > NEAR_M
    uv = np.full((len(p), 2), np.nan)
    uv[front] = _pixels(p[front], K)
    u, v = uv[:, 0], uv[:, 1]
    with np.errstate(invalid="ignore"):
        inside = (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    return uv, front & inside


def camera_polyline(points_lidar: np.ndarray, K: np.ndarray, cam2lidar: np.ndarray,
                    near: float = NEAR_M) -> np.ndarray:
    """Pixel polyline of a 3-D polyline (N, 3) in the LIDAR frame, clipped exactly to the near plane
    (camera z >= ``near``): (N', 2) with NaN rows between separate visible runs (matplotlib breaks the line
    there). A straight segment projects to a straight segment, so clipping its ends is exact; the image
    border is left to the axes' clipping."""
    p = lidar_to_camera(np.asarray(points_lidar, dtype=np.float64).reshape(-1, 3), cam2lidar)
    out: list[np.ndarray] = []
    last_end = None
    for a, b in itertools.pairwise(p):
        za, zb = a[2], b[2]
        if za < near and zb < near:
            continue
        if za < near:
            a = a + (near - za) / (zb - za) * (b - a)
        elif zb < near:
            b = a + (near - za) / (zb - za) * (b - a)
        if last_end is None or not np.array_equal(last_end, a):
            if out:
                out.append(np.full((1, 3), np.nan))
            out.append(a[None])
        out.append(b[None])
        last_end = b
    if not out:
        return np.zeros((0, 2))
    seg = np.concatenate(out)
    uv = np.full((len(seg), 2), np.nan)
    ok = np.isfinite(seg[:, 2])
    uv[ok] = _pixels(seg[ok], K)
    return uv


# ------------------------------------------------------------------------------------------------------ style
def trajectory_colours(names) -> dict[str, str]:
    """Colour per trajectory name: GT black, predictions in order of appearance (GT excluded), so the BEV and the
    camera panel agree whether or not GT is in the dict."""
    colours, k = {}, 0
    for name in names:
        if name == GT_NAME:
            colours[name] = GT_COLOUR
        else:
            colours[name] = PRED_COLOURS[k % len(PRED_COLOURS)]
            k += 1
    return colours


def _with_origin(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, np.shape(xy)[-1])[:, :2]
    xy = xy[np.isfinite(xy).all(1)]
    return np.concatenate([np.zeros((1, 2)), xy])


def _gt_xy(sample: dict) -> np.ndarray:
    """(n, 2) GT waypoints of the valid future steps (the cache pads invalid ones with 0)."""
    valid = np.asarray(sample["future_valid"], dtype=bool)
    return np.asarray(sample["future_waypoints"], dtype=np.float64)[valid, :2]


# -------------------------------------------------------------------------------------------------------- BEV
def plot_bev(ax, sample: dict, trajectories: dict[str, np.ndarray],
             map_classes=("divider", "ped_crossing", "boundary"), extent=(-15, 15, -10, 40)) -> None:
    """Bird's-eye view in the current LIDAR frame (x right, y forward = up on the page, metres, equal aspect):
    map elements by class, agent boxes at the current step by class (with a heading tick at the front), the ego
    box at the origin (EGO_W x EGO_L, length along +y), the GT trajectory (valid steps) and each named prediction
    (F, 2), every one starting from the origin with a marker at each waypoint.

    ``map_classes`` names the cache's map_class indices in order; ``extent`` = (xmin, xmax, ymin, ymax)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon

    x0, x1, y0, y1 = extent
    handles = []
    # map elements
    pts = np.asarray(sample["map_points"], dtype=np.float64)
    cls = np.asarray(sample["map_class"])
    valid = np.asarray(sample["map_valid"], dtype=bool)
    for k, name in enumerate(map_classes):
        colour = MAP_COLOURS.get(name, "#444444")
        for m in np.flatnonzero(valid & (cls == k)):
            ax.plot(pts[m, :, 0], pts[m, :, 1], "-", color=colour, lw=1.2, zorder=1)
        handles.append(Line2D([], [], color=colour, lw=1.2, label=name))
    # agents at the current step
    boxes = np.asarray(sample["agent_boxes"], dtype=np.float64)[0]
    a_valid = np.asarray(sample["agent_valid"], dtype=bool)[0]
    a_cls = np.asarray(sample["agent_class"])[0]
    corners = box_corners_xy(boxes)
    for k, name in enumerate(AGENT_CLASSES):
        colour = AGENT_COLOURS[name]
        for a in np.flatnonzero(a_valid & (a_cls == k)):
            ax.add_patch(Polygon(corners[a], closed=True, facecolor=colour, edgecolor=colour, alpha=0.35,
                                 lw=0.8, zorder=2))
            front = corners[a, 2:4].mean(0)  # front-left, front-right -> middle of the front edge
            ax.plot([boxes[a, 0], front[0]], [boxes[a, 1], front[1]], "-", color=colour, lw=0.8, zorder=2)
        handles.append(Polygon(np.zeros((3, 2)), facecolor=colour, edgecolor=colour, alpha=0.35, label=name))
    # ego at the origin, length along LIDAR +y
    ego = box_corners_xy(np.array([0.0, 0.0, 0.0, EGO_W, EGO_L, 1.5, np.pi / 2]))
    ax.add_patch(Polygon(ego, closed=True, facecolor="#cccccc", edgecolor="#000000", lw=1.0, zorder=3))
    handles.append(Polygon(np.zeros((3, 2)), facecolor="#cccccc", edgecolor="#000000", label="ego"))
    # trajectories
    named = {GT_NAME: _gt_xy(sample), **{k: v for k, v in trajectories.items() if k != GT_NAME}}
    colours = trajectory_colours(named)
    for name, xy in named.items():
        line = _with_origin(xy)
        ax.plot(line[:, 0], line[:, 1], "-", color=colours[name], lw=1.6 if name == GT_NAME else 1.3,
                marker="o", ms=3.5, markevery=list(range(1, len(line))), zorder=5 if name == GT_NAME else 4)
        handles.append(Line2D([], [], color=colours[name], marker="o", ms=3.5, label=name))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x right [m] (LIDAR)")
    ax.set_ylabel("y forward [m] (LIDAR)")
    ax.grid(True, color="#e4e4e4", lw=0.5, zorder=0)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), borderaxespad=0.0, fontsize=6,
              framealpha=0.85)


# ----------------------------------------------------------------------------------------------------- camera
def plot_camera(ax, image: np.ndarray, K, cam2lidar, lidar2ego, trajectories: dict[str, np.ndarray]) -> None:
    """Show ``image`` (H, W, 3) uint8 and draw each trajectory (n, 2) (LIDAR x, y; starting at the ego origin)
    on the ground plane (ego z = 0), projected with ``K`` and ``cam2lidar``; only the visible part is drawn
    (exact near-plane clipping, image border by the axes), markers at the visible waypoints."""
    from matplotlib.lines import Line2D

    image = np.asarray(image)
    H, W = image.shape[:2]
    ax.imshow(image, extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
    colours = trajectory_colours(trajectories)
    handles = []
    for name, xy in trajectories.items():
        ground = ground_points_in_lidar(_with_origin(xy), lidar2ego)
        line = camera_polyline(ground, K, cam2lidar)
        lw, z = (2.0, 4) if name == GT_NAME else (1.6, 3)  # GT on top, as in the BEV
        if len(line):
            ax.plot(line[:, 0], line[:, 1], "-", color=colours[name], lw=lw, alpha=0.9, zorder=z)
        uv, vis = project_to_image(ground[1:], K, cam2lidar, (H, W))
        if vis.any():
            ax.plot(uv[vis, 0], uv[vis, 1], "o", color=colours[name], ms=4, mec="white", mew=0.6, zorder=z)
        handles.append(Line2D([], [], color=colours[name], marker="o", ms=4, lw=lw, label=name))
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)


# ------------------------------------------------------------------------------------------------ the figures
def _l2_at(pred: np.ndarray, sample: dict, seconds: float = 3.0) -> float | None:
    """L2 (m) between a prediction and GT at ``seconds`` (None if GT is invalid there or the prediction is
    too short or non-finite)."""
    k = round(seconds / DT_S) - 1
    valid = np.asarray(sample["future_valid"], dtype=bool)
    if k < 0 or k >= len(valid) or k >= len(pred) or not valid[k]:
        return None
    d = float(np.linalg.norm(np.asarray(pred[k, :2], np.float64) - sample["future_waypoints"][k, :2]))
    return d if np.isfinite(d) else None


def _check_predictions(dataset, predictions: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in predictions.items():
        if name == GT_NAME:
            raise ValueError(f"prediction name {GT_NAME!r} is reserved for the ground truth")
        a = np.asarray(arr)
        if a.ndim != 3 or a.shape[0] != len(dataset) or a.shape[2] < 2:
            raise ValueError(f"prediction {name!r}: shape {a.shape}, expected (S={len(dataset)}, F, 2) aligned "
                             f"with the dataset's samples")
        out[name] = a[..., :2]
    return out


def write_planner_figures(out_dir, dataset, predictions: dict[str, np.ndarray], indices: list[int]) -> list[Path]:
    """One PNG per sample index, ``out_dir/sample_{i:03d}_{token[:8]}.png``: BEV (left) and CAM_FRONT with the
    trajectories on the ground (right); the title names the scene, the sample index and each prediction's L2 at
    3 s. ``dataset`` is a :class:`models.nuscenes.dataset.GTCacheDataset` opened with CAM_FRONT among its cameras;
    ``predictions`` maps a name to (S, F, 2) LIDAR-frame waypoints aligned with the dataset. Deterministic bytes."""
    from matplotlib.figure import Figure
    from PIL import Image

    if CAMERA not in dataset.cameras:
        raise ValueError(f"the dataset must be opened with {CAMERA} among its cameras, got {dataset.cameras}")
    cam = dataset.cameras.index(CAMERA)
    preds = _check_predictions(dataset, predictions)
    map_classes = tuple(dataset.manifest.get("map_classes", ("divider", "ped_crossing", "boundary")))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in indices:
        i = int(i)
        item = dataset[i]
        with Image.open(item["cam_paths"][cam]) as im:
            image = np.asarray(im.convert("RGB"))
        sample_preds = {name: p[i] for name, p in preds.items()}
        K, cam2lidar = item["cam_intrinsic"][cam], item["cam2lidar"][cam]

        fig = Figure(figsize=(13.0, 6.2), dpi=100)
        ax_bev, ax_cam = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 2.2]})
        plot_bev(ax_bev, item, sample_preds, map_classes=map_classes)
        plot_camera(ax_cam, image, K, cam2lidar, item["lidar2ego"], {GT_NAME: _gt_xy(item), **sample_preds})
        ax_bev.set_title("BEV, agents now", fontsize=9)
        ax_cam.set_title(f"{CAMERA}: trajectories on the ground plane", fontsize=9)
        l2 = []
        for name, p in sample_preds.items():
            d = _l2_at(p, item)
            l2.append(f"{name} {d:.2f} m" if d is not None else f"{name} n/a")
        complete = bool(np.asarray(item["future_valid"]).all())
        fig.suptitle(f"{item['scene']}  {dataset.split} sample {i} ({item['token'][:8]})   L2@3s: " + ", ".join(l2)
                     + ("" if complete else "   (GT future incomplete)"), fontsize=10)
        fig.tight_layout()
        path = out_dir / f"sample_{i:03d}_{item['token'][:8]}.png"
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format="png", metadata={"Software": None})
        fig.clear()
        written.append(path)
    return written


def default_figure_indices(dataset, count: int) -> list[int]:
    """``count`` sample indices spread evenly over the split (sorted, deterministic): evenly spaced among the
    samples whose GT future is fully valid, topped up evenly from the others if there are too few."""
    n = len(dataset)
    count = max(0, min(int(count), n))
    if count == 0:
        return []
    full = np.asarray(dataset.arrays["future_valid"], dtype=bool).all(1)
    preferred, rest = np.flatnonzero(full), np.flatnonzero(~full)

    def spread(idx: np.ndarray, k: int) -> list[int]:
        if k <= 0 or len(idx) == 0:
            return []
        if k >= len(idx):
            return [int(x) for x in idx]
        pos = np.floor((np.arange(k) + 0.5) * len(idx) / k).astype(np.int64)  # centres of k equal bins
        return [int(x) for x in idx[pos]]

    chosen = spread(preferred, count)
    chosen += spread(rest, count - len(chosen))
    return sorted(chosen)
