"""AMPLIFY's track conventions (pairlab/AMPLIFY, ``amplify/utils/data_utils.py``; see
``/work/shared/design/amplify.md`` §1) and the screening of tracked windows.

* Pixels: OpenCV convention, pixel (row i, col j) has its centre at (x = j, y = i); trackers work in (x, y).
* Stored tracks are **(row, col)**, normalised per axis as AMPLIFY's ``normalize_traj``:
  ``n = clamp((p - H/2) / (H/2), -1, 1)`` (rows with H, columns with W), so n = -1 is pixel 0 and +1 pixel H.
* Query grid (``grid_queries``): ``linspace(-1 + 1/g, 1 - 1/g, g)`` per axis (+-0.95 for g = 20), row-major
  (track n = i * g + j is grid row i, column j), the same in every window.
* Velocities (``points_to_velocities``): ``diff`` over time of the normalised tracks, unscaled.
"""
from __future__ import annotations

import numpy as np

COORDINATE_CONVENTION = "normalised (row, col) in [-1, 1], AMPLIFY normalize_traj: n = clamp((p - H/2)/(H/2), -1, 1)"
COORDINATES = ("normalised (row, col) in [-1, 1], AMPLIFY normalize_traj: n = clamp((p - H/2)/(H/2), -1, 1) "
               "with p the pixel coordinate (OpenCV convention: pixel centres at integers; rows use H, "
               "columns W); unnormalize_traj: p = n * H/2 + H/2")
VELOCITIES = "velocities = tracks[:, 1:] - tracks[:, :-1] (AMPLIFY points_to_velocities), normalised units per frame"
DROP_REASONS = ("nan", "short", "empty_static", "no_frames")


def grid_normalised(g: int) -> np.ndarray:
    """AMPLIFY's g x g query grid, (g*g, 2) float64 normalised (row, col), row-major."""
    lin = np.linspace(-1.0 + 1.0 / g, 1.0 - 1.0 / g, g)
    rows, cols = np.meshgrid(lin, lin, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def unnormalize_rc(rc: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (row, col) -> pixel (row, col) (``unnormalize_traj``: no clamp)."""
    rc = np.asarray(rc, np.float64)
    half = np.array([height / 2.0, width / 2.0])
    return rc * half + half


def normalize_rc(rc_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel (row, col) -> normalised (row, col), clamped to [-1, 1] (``normalize_traj``). NaN stays NaN."""
    rc_px = np.asarray(rc_px, np.float64)
    half = np.array([height / 2.0, width / 2.0])
    return np.clip((rc_px - half) / half, -1.0, 1.0)


def query_grid_xy(g: int, height: int, width: int) -> np.ndarray:
    """The query grid in pixel (x, y) of a ``height x width`` image, (g*g, 2) float64."""
    return unnormalize_rc(grid_normalised(g), height, width)[:, ::-1].copy()


STATIC_RULES = ("displacement", "speed")


def static_points(tracks: np.ndarray, visible: np.ndarray, threshold: float, rule: str = "displacement") -> np.ndarray:
    """Which points do not move while visible, (Nw, N) bool, from normalised tracks (Nw, T, N, 2) and (Nw, T, N).

    ``displacement``: the largest distance from the query position over the frames where the point is visible is
    below ``threshold``; ``speed``: the largest per-frame step between two visible frames is below it (normalised
    units; a step of the tracker's jitter adds up over a window, so this rule needs a tiny threshold and calls noisy
    background moving: docs/tracking.md). Frames where a point is lost or hidden are no evidence either way (a lost
    LK point is frozen, an occluded CoTracker point is guessed); a point never seen after its query is static.
    """
    tracks = np.asarray(tracks, np.float64)
    visible = np.asarray(visible, bool)
    with np.errstate(invalid="ignore"):
        if rule == "displacement":
            d = np.sqrt(np.sum((tracks - tracks[:, :1]) ** 2, axis=-1))                    # (Nw, T, N)
            return np.where(visible, d, 0.0).max(axis=1) < threshold
        if rule == "speed":
            step = np.sqrt(np.sum(np.diff(tracks, axis=1) ** 2, axis=-1))                  # (Nw, T-1, N)
            return np.where(visible[:, 1:] & visible[:, :-1], step, 0.0).max(axis=1) < threshold
    raise ValueError(f"static rule must be one of {STATIC_RULES}, got {rule!r}")


def finalize_windows(tracks_xy: np.ndarray, visible: np.ndarray, height: int, width: int,
                     static_threshold: float, static_rule: str = "displacement") -> dict:
    """Screen tracked windows and convert them to the stored convention.

    ``tracks_xy (Nw, T, N, 2)`` pixel (x, y), ``visible (Nw, T, N)`` bool. Returns ``reason (Nw,)`` object array
    (``""`` kept, ``"nan"`` any non-finite position, ``"empty_static"`` every point static) and, for every window,
    ``tracks (Nw, T, N, 2)`` float32 normalised (row, col), ``velocities (Nw, T-1, N, 2)`` float32, ``static
    (Nw, N)`` bool (:func:`static_points` on the stored tracks) and ``visible``. Non-finite windows carry NaN in
    their arrays: write only the kept ones.
    """
    tracks_xy = np.asarray(tracks_xy, np.float64)
    finite = np.isfinite(tracks_xy).all(axis=(1, 2, 3))
    tracks = normalize_rc(tracks_xy[..., ::-1], height, width).astype(np.float32)
    velocities = tracks[:, 1:] - tracks[:, :-1]                                 # float32, exactly as stored
    static = static_points(tracks, visible, static_threshold, static_rule)
    reason = np.full(len(tracks_xy), "", dtype=object)
    reason[finite & static.all(axis=1)] = "empty_static"
    reason[~finite] = "nan"
    return {"reason": reason, "tracks": tracks, "velocities": velocities,
            "static": static & finite[:, None], "visible": np.asarray(visible, bool)}
