"""Reference tracks for one's own clips (``tracks.reference``): where they are, how they are read, and how the
tracker is scored against them.

``tracks.reference`` names a folder inside ``tracks.input`` (so DVC watches it with the clips). For a clip named
``<clip>`` (videos, frames) it holds, for a sequence view ``<sequence>/view<k>`` the sequence folder's own
``<reference>/`` holds (with ``<clip>`` = ``view<k>``), either

* ``<clip>.npz`` with ``tracks (N, T, 2)`` float (x, y) pixels of the source frames (OpenCV convention: pixel
  centres at integers) and ``visible (N, T)`` bool; or TAP-Vid's ``points (N, T, 2)`` (x, y) in [0, 1] of the
  frame's width and height (0 = left/top edge, so x_px = x * W - 0.5) and ``occluded (N, T)`` bool; or
* ``<clip>/dynamic_traj.npy (2, N, T)`` (x, y) pixels and ``<clip>/dynamic_visibility.npy (N, T)`` (SegAnyMo's
  export; its points are queried at their first visible frame).

T is the clip's native frame count (every source frame, before resampling). Scoring uses the windows the stage
cuts: in each window, every reference track visible at the window's first frame is a query there (TAP-Vid's
``query_mode = "first"`` inside the window, the convention the exact-truth score uses), the backend tracks it, and
the window is scored against the reference at the resampled frames. A SegAnyMo track first seen at frame k is so
queried in every window that starts at or after k while it is visible. Clips without a file are not scored and
are listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .resize import to_resized
from .sources import Clip, TrackingInputError

SEGANYMO_FILES = ("dynamic_traj.npy", "dynamic_visibility.npy")


@dataclass
class ReferenceTracks:
    xy: np.ndarray        # (N, T_native, 2) float64 (x, y) source pixels
    visible: np.ndarray   # (N, T_native) bool
    path: str
    kind: str             # "npz", "tapvid" or "seganymo"


def reference_path(clip: Clip, folder_root: str | Path, reference: str) -> Path:
    """Where the reference of ``clip`` lives (a ``.npz`` file or a SegAnyMo folder: the caller checks which)."""
    if clip.kind == "sequence":                               # name <sequence>/view<k>; files inside the sequence
        return Path(clip.path) / reference / clip.name.rsplit("/", 1)[1]
    return Path(folder_root) / reference / Path(clip.name).stem if clip.kind == "video" else \
        Path(folder_root) / reference / clip.name


def find_reference(clip: Clip, folder_root: str | Path, reference: str) -> Path | None:
    base = reference_path(clip, folder_root, reference)
    if base.with_name(base.name + ".npz").is_file():
        return base.with_name(base.name + ".npz")
    if base.is_dir():
        return base
    return None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TrackingInputError(f"{path}: unreadable reference array ({exc})") from None


def load_reference(path: Path, native_frames: int, source_wh: tuple[int, int]) -> ReferenceTracks:
    """Read and check one clip's reference; every problem names the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        missing = [f for f in SEGANYMO_FILES if not (path / f).is_file()]
        if missing:
            raise TrackingInputError(f"{path}: a SegAnyMo reference folder needs {list(SEGANYMO_FILES)}; missing "
                                     f"{missing}")
        traj, vis = _load_npy(path / SEGANYMO_FILES[0]), _load_npy(path / SEGANYMO_FILES[1])
        if traj.ndim != 3 or traj.shape[0] != 2:
            raise TrackingInputError(f"{path / SEGANYMO_FILES[0]}: shape {traj.shape}, expected (2, N, T)")
        xy, kind, where = np.moveaxis(traj, 0, -1), "seganymo", path / SEGANYMO_FILES[1]
    else:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise TrackingInputError(f"{path}: unreadable reference .npz ({exc})") from None
        if {"tracks", "visible"} <= set(arrays):
            xy, vis, kind = arrays["tracks"], arrays["visible"], "npz"
        elif {"points", "occluded"} <= set(arrays):
            pts = np.asarray(arrays["points"], np.float64)
            xy = pts * np.array(source_wh, np.float64) - 0.5 if pts.ndim == 3 and pts.shape[-1] == 2 else pts
            vis, kind = ~np.asarray(arrays["occluded"]).astype(bool), "tapvid"
        else:
            raise TrackingInputError(f"{path}: a reference .npz needs arrays tracks + visible (pixels) or TAP-Vid "
                                     f"points + occluded; it has {sorted(arrays)}")
        where = path
    xy, vis = np.asarray(xy, np.float64), np.asarray(vis)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise TrackingInputError(f"{path}: reference tracks of shape {xy.shape}, expected (N, T, 2) (x, y)")
    if vis.shape != xy.shape[:2]:
        raise TrackingInputError(f"{where}: visibility of shape {vis.shape}, expected (N, T) = {xy.shape[:2]}")
    if vis.dtype != bool and not np.isin(vis, (0, 1)).all():
        raise TrackingInputError(f"{where}: visibility must be boolean (0/1), found values {np.unique(vis)[:5]}")
    vis = vis.astype(bool)
    if xy.shape[1] != native_frames:
        raise TrackingInputError(f"{path}: reference covers {xy.shape[1]} frames, the clip has {native_frames} "
                                 f"(one column per source frame, before resampling)")
    if not np.isfinite(xy[vis]).all():
        raise TrackingInputError(f"{path}: a visible reference point has a non-finite position")
    return ReferenceTracks(xy=xy, visible=vis, path=str(path), kind=kind)


def window_reference(ref: ReferenceTracks, source_index: np.ndarray, source_wh: tuple[int, int],
                     size_hw: tuple[int, int], resize: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference at the resampled frames, in pixels of the resized frames: ((N, n, 2), (N, n)); a point that
    falls outside the resized image (crop) counts as not visible."""
    H, W = size_hw
    xy = to_resized(ref.xy[:, source_index], source_wh, size_hw, resize)
    with np.errstate(invalid="ignore"):
        inside = (xy[..., 0] >= -0.5) & (xy[..., 0] < W - 0.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] < H - 0.5)
    return xy, ref.visible[:, source_index] & inside
