"""One multi-view sequence folder, checked whole before anything is read for real.

    <root>/images/   (required)  time-major time_<t>/view<k>.<ext> or view-major view<k>/<t>.<ext>
    <root>/depths/   (optional)  same grid, .npy float32 (H, W) z-depth, 0 = invalid, unit `depth_unit` metres
    <root>/intrs/    (optional)  same grid, .npy or .txt 3 x 3 pinhole intrinsics
    <root>/extrs/    (optional)  same grid, .npy or .txt 3 x 4 world-to-camera [R | t], OpenCV axes
                                 (x right, y down, z forward)
    <root>/<masks>/  (optional)  view_<k>/<t>.png dynamic masks, 0 / 255

Every companion folder must cover exactly the images' (time, view) grid. Bad input (an unreadable image, a
calibration of the wrong shape, a rotation that is not orthonormal, depth or a mask of another size than its
image, a camera that moves on a fixed rig) is one :class:`SequenceLayoutError` naming the file and what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.sequences.layout import SequenceLayoutError, ViewTimeGrid, find_grid

CALIB_EXTENSIONS = (".npy", ".txt")
ROTATION_TOL = 1e-3   # |R R^T - I| and |det R - 1|
RIG_TOL = 1e-5        # a fixed rig's calibration may differ over time by float noise only (relative)


def _read_matrix(path: Path) -> np.ndarray:
    try:
        m = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise SequenceLayoutError(f"{path}: unreadable calibration: {exc}") from exc
    return np.asarray(m, dtype=np.float64)


def check_intrinsics(K: np.ndarray, path: Path) -> np.ndarray:
    if K.shape != (3, 3):
        raise SequenceLayoutError(f"{path}: intrinsics must be 3 x 3, got shape {K.shape}")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise SequenceLayoutError(f"{path}: not a pinhole intrinsic matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                                  f"with fx, fy > 0: {K.tolist()}")
    return K


def check_extrinsics(E: np.ndarray, path: Path) -> np.ndarray:
    if E.shape == (4, 4) and np.allclose(E[3], [0, 0, 0, 1]):
        E = E[:3]
    if E.shape != (3, 4):
        raise SequenceLayoutError(f"{path}: extrinsics must be 3 x 4 world-to-camera [R | t], got shape {E.shape}")
    R = E[:, :3]
    err = np.abs(R @ R.T - np.eye(3)).max() if np.isfinite(E).all() else np.inf
    if err > ROTATION_TOL or abs(np.linalg.det(R) - 1.0) > ROTATION_TOL:
        raise SequenceLayoutError(f"{path}: the rotation is not orthonormal with det +1 (|R R^T - I| = {err:.2g}, "
                                  f"det = {np.linalg.det(R):.4g}); expected world-to-camera [R | t]")
    return E


@dataclass(frozen=True)
class ViewSize:
    height: int
    width: int


class MultiViewSequence:
    """``MultiViewSequence(root, depth_unit=1.0, masks="masks", fixed_rig=True)``; indices t, v count from 0
    in the sorted order of the folder names (``grid.times[t]``, ``grid.views[v]`` are the names' numbers).

    ``fixed_rig``: every view's intrinsics and extrinsics must be the same at every time (a static multi-camera
    rig); ``False`` accepts a moving rig (extrinsics may change, each still a valid rotation)."""

    def __init__(self, root: str | Path, depth_unit: float = 1.0, masks: str = "masks", fixed_rig: bool = True):
        self.root = Path(root)
        if not depth_unit > 0:
            raise ValueError(f"depth_unit must be > 0 (metres per stored unit), got {depth_unit}")
        self.depth_unit = float(depth_unit)
        self.fixed_rig = fixed_rig
        self.grid = find_grid(self.root / "images")
        self.sizes = self._check_images()
        self.depths = self._companion("depths", (".npy",))
        self.intrs = self._companion("intrs", CALIB_EXTENSIONS)
        self.extrs = self._companion("extrs", CALIB_EXTENSIONS)
        self.masks = self._companion(masks, (".png",))
        self._K = self._calibration(self.intrs, check_intrinsics)
        self._E = self._calibration(self.extrs, check_extrinsics)
        if self.depths is not None:
            self._check_depths()
        if self.masks is not None:
            self._check_masks()

    # ------------------------------------------------------------------------------------------ checks
    @property
    def num_times(self) -> int:
        return self.grid.num_times

    @property
    def num_views(self) -> int:
        return self.grid.num_views

    def _check_images(self) -> list[ViewSize]:
        sizes: list[ViewSize | None] = [None] * self.num_views
        for t, row in enumerate(self.grid.paths):
            for v, path in enumerate(row):
                img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if img is None or img.ndim not in (2, 3):
                    raise SequenceLayoutError(f"{path}: not a readable image (time {self.grid.times[t]}, "
                                              f"view {self.grid.views[v]})")
                size = ViewSize(*img.shape[:2])
                if sizes[v] is None:
                    sizes[v] = size
                elif size != sizes[v]:
                    raise SequenceLayoutError(f"{path}: {size.height} x {size.width} pixels, but view "
                                              f"{self.grid.views[v]} is {sizes[v].height} x {sizes[v].width} at "
                                              f"time {self.grid.times[0]}; a view keeps one size")
        return sizes

    def _companion(self, name: str, extensions: tuple[str, ...]) -> ViewTimeGrid | None:
        folder = self.root / name
        if not folder.exists():
            return None
        grid = find_grid(folder, extensions)
        if grid.times != self.grid.times or grid.views != self.grid.views:
            raise SequenceLayoutError(
                f"{folder}: covers times {_span(grid.times)} x views {list(grid.views)}, but images/ has times "
                f"{_span(self.grid.times)} x views {list(self.grid.views)}; every image needs its {name} file")
        return grid

    def _calibration(self, grid: ViewTimeGrid | None, check) -> np.ndarray | None:
        """(T, V, rows, cols) float64, each checked; with ``fixed_rig``, the same for a view at every time."""
        if grid is None:
            return None
        mats = np.stack([np.stack([check(_read_matrix(p), p) for p in row]) for row in grid.paths])
        if self.fixed_rig:
            for v in range(self.num_views):
                scale = max(1.0, float(np.abs(mats[0, v]).max()))
                moved = np.abs(mats[:, v] - mats[0, v]).reshape(self.num_times, -1).max(axis=1) > RIG_TOL * scale
                if moved.any():
                    t = int(np.argmax(moved))
                    raise SequenceLayoutError(
                        f"{grid.paths[t][v]}: differs from time {self.grid.times[0]} of view {self.grid.views[v]}, "
                        f"but the rig is fixed (a static multi-camera rig keeps its calibration; pass "
                        f"fixed_rig=False for a moving one)")
        return mats

    def _check_depths(self) -> None:
        for t, row in enumerate(self.depths.paths):
            for v, path in enumerate(row):
                d = np.load(path, mmap_mode="r", allow_pickle=False)
                size = self.sizes[v]
                if d.shape != (size.height, size.width):
                    raise SequenceLayoutError(f"{path}: depth of shape {d.shape}, but its image is "
                                              f"{size.height} x {size.width}")
                if d.dtype.kind != "f":
                    raise SequenceLayoutError(f"{path}: depth must be float (float32), got {d.dtype}")
                bad = int((~np.isfinite(d)).sum() + (np.asarray(d) < 0).sum())
                if bad:
                    raise SequenceLayoutError(f"{path}: {bad} negative or non-finite depth value(s); write 0 for "
                                              "pixels without depth")

    def _check_masks(self) -> None:
        for t, row in enumerate(self.masks.paths):
            for v, path in enumerate(row):
                m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                size = self.sizes[v]
                if m is None:
                    raise SequenceLayoutError(f"{path}: not a readable mask image")
                if m.shape != (size.height, size.width):
                    raise SequenceLayoutError(f"{path}: mask of {m.shape[0]} x {m.shape[1]} pixels, but its image "
                                              f"is {size.height} x {size.width}")
                values = np.unique(m)
                if not set(values.tolist()) <= {0, 255}:
                    raise SequenceLayoutError(f"{path}: a dynamic mask holds 0 and 255 only; found values "
                                              f"{values[:6].tolist()}")

    # ------------------------------------------------------------------------------------------ access
    def image(self, t: int, v: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        img = cv2.imread(str(self.grid.paths[t][v]), cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def depth(self, t: int, v: int) -> np.ndarray:
        """(H, W) float32 z-depth in metres, 0 where invalid."""
        if self.depths is None:
            raise FileNotFoundError(f"{self.root / 'depths'}: this sequence has no depth")
        return (np.load(self.depths.paths[t][v], allow_pickle=False).astype(np.float32) * self.depth_unit)

    def intrinsics(self, t: int, v: int) -> np.ndarray:
        """(3, 3) float64."""
        if self._K is None:
            raise FileNotFoundError(f"{self.root / 'intrs'}: this sequence has no intrinsics")
        return self._K[t, v].copy()

    def extrinsics(self, t: int, v: int) -> np.ndarray:
        """(3, 4) float64 world-to-camera [R | t] (OpenCV axes), translation in metres."""
        if self._E is None:
            raise FileNotFoundError(f"{self.root / 'extrs'}: this sequence has no extrinsics")
        return self._E[t, v].copy()

    def dynamic_mask(self, t: int, v: int) -> np.ndarray:
        """(H, W) bool, True where the pixel shows a moving object."""
        if self.masks is None:
            raise FileNotFoundError(f"{self.root}: this sequence has no dynamic masks")
        return cv2.imread(str(self.masks.paths[t][v]), cv2.IMREAD_GRAYSCALE) > 127

    def describe(self) -> dict:
        """What was found, for a stage's manifest."""
        return {"root": str(self.root), "layout": self.grid.layout, "times": self.num_times,
                "views": self.num_views, "time_indices": list(self.grid.times), "view_indices": list(self.grid.views),
                "image_sizes": [[s.height, s.width] for s in self.sizes],
                "depth": self.depths is not None, "depth_unit_m": self.depth_unit,
                "intrinsics": self._K is not None, "extrinsics": self._E is not None,
                "dynamic_masks": self.masks is not None, "fixed_rig": self.fixed_rig}


def _span(indices: tuple[int, ...]) -> str:
    return f"{indices[0]}..{indices[-1]} ({len(indices)})" if indices else "none"
