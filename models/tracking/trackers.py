"""Tracker backends. One interface: ``prepare(rgb (n, H, W, 3) uint8) -> clip state`` once per clip, then
``track(state, start, T, queries (N, 2) x, y) -> (tracks (T, N, 2) float x, y pixels, visible (T, N) bool)`` per
window, queries on the window's first frame, OpenCV pixel convention (CoTracker's output convention).

* ``lk``: OpenCV pyramidal Lucas-Kanade, frame to frame, with a forward-backward check. A point is lost (frozen
  at its last position and invisible for the rest of the window) when either LK status is 0, the
  forward-backward error is ``>= fb_threshold`` px, or it leaves the image (``-0.5 <= x < W - 0.5``, same for y).
* ``cotracker``: CoTracker3 offline through the official ``CoTrackerPredictor`` (queries ``(t=0, x, y)``; its
  visibility is ``sigmoid > 0.9`` as the predictor returns it), from a local checkpoint loaded with
  ``torch.load(weights_only=True)`` and checked to be a state dict of tensors.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from models.common.params import ParamsError

from .sources import TrackingInputError

LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
COTRACKER_INSTALL = ("the 'cotracker' package is not installed: install CoTracker3 from a clone of "
                     "https://github.com/facebookresearch/co-tracker (`pip install -e .`; it is not on PyPI) and "
                     "download its offline checkpoint scaled_offline.pth to a local path, then set "
                     "tracks.cotracker_checkpoint to that path (no network is used at run time), or use "
                     "tracks.backend: lk")


class TrackerUnavailableError(ParamsError):
    """The chosen backend cannot run here (a package or a checkpoint param is missing)."""


# ------------------------------------------------------------------------------------------------ LK
class LKTracker:
    name = "lk"

    def __init__(self, win_size: int = 15, levels: int = 3, fb_threshold: float = 1.0):
        self.win = (int(win_size), int(win_size))
        self.levels = int(levels)
        self.fb_threshold = float(fb_threshold)

    def prepare(self, rgb: np.ndarray) -> list:
        """Grey frames (cv2 RGB2GRAY), converted once per clip. (OpenCV's Python binding cannot take pre-built
        pyramids, so each LK call builds its own.)"""
        grey = [cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) for img in rgb]
        return [grey, rgb.shape[1], rgb.shape[2]]

    def track(self, state: list, start: int, T: int, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pyramids, H, W = state
        N = len(queries_xy)
        tracks = np.empty((T, N, 2), np.float32)
        visible = np.zeros((T, N), bool)
        pts = np.asarray(queries_xy, np.float32).reshape(-1, 2).copy()
        tracks[0], visible[0] = pts, True
        alive = np.ones(N, bool)
        params = dict(winSize=self.win, maxLevel=self.levels, criteria=LK_CRITERIA)
        for t in range(1, T):
            idx = np.flatnonzero(alive)
            if len(idx):
                p0 = pts[idx].reshape(-1, 1, 2)
                prev, cur = pyramids[start + t - 1], pyramids[start + t]
                p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **params)
                p0b, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **params)
                p1, p0b = p1.reshape(-1, 2), p0b.reshape(-1, 2)
                fb = np.linalg.norm(p0b - p0.reshape(-1, 2), axis=1)
                inside = (p1[:, 0] >= -0.5) & (p1[:, 0] < W - 0.5) & (p1[:, 1] >= -0.5) & (p1[:, 1] < H - 0.5)
                ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < self.fb_threshold) & inside \
                    & np.isfinite(p1).all(axis=1)
                alive[idx[~ok]] = False
                pts[idx[ok]] = p1[ok]
            tracks[t], visible[t] = pts, alive
        return tracks, visible


# ----------------------------------------------------------------------------------------- CoTracker
def load_state_dict(path: str | Path) -> dict:
    """A checkpoint as a state dict of tensors, read with ``torch.load(weights_only=True)`` (never unpickling
    code); an upstream ``{"model": state_dict}`` wrapper is unwrapped. Anything else is refused."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise TrackingInputError(f"{path}: CoTracker checkpoint not found (tracks.cotracker_checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingInputError(f"{path}: refused: not a state dict of tensors loadable with "
                                 f"torch.load(weights_only=True) (no code is unpickled): {first}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise TrackingInputError(f"{path}: refused: expected a non-empty state dict (str -> tensor), "
                                 f"got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TrackingInputError(f"{path}: refused: entry {bad[0]!r} is not a tensor "
                                 f"({type(obj[bad[0]]).__name__}); expected a state dict of tensors")
    return obj


def cotracker_available() -> bool:
    return importlib.util.find_spec("cotracker") is not None


class CoTrackerTracker:
    name = "cotracker"

    def __init__(self, predictor, device: str = "cpu"):
        self.predictor = predictor
        self.device = device

    @classmethod
    def from_checkpoint(cls, checkpoint: str | None, device: str = "cpu") -> "CoTrackerTracker":
        if not cotracker_available():
            raise TrackerUnavailableError(f"tracks.backend = 'cotracker': {COTRACKER_INSTALL}")
        if not checkpoint:
            raise TrackerUnavailableError("tracks.backend = 'cotracker' needs tracks.cotracker_checkpoint: a local "
                                          "path to CoTracker3's scaled_offline.pth (a state dict of tensors)")
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise TrackerUnavailableError("tracks.cotracker_device = 'cuda': no CUDA device is available here")
        state = load_state_dict(checkpoint)
        from cotracker.predictor import CoTrackerPredictor

        predictor = CoTrackerPredictor(checkpoint=None, offline=True, v2=False, window_len=60)
        try:
            predictor.model.load_state_dict(state)
        except RuntimeError as exc:
            raise TrackingInputError(f"{checkpoint}: not a CoTracker3 offline checkpoint: "
                                     f"{str(exc).splitlines()[0]}") from None
        predictor = predictor.to(device).eval()
        return cls(predictor, device)

    def prepare(self, rgb: np.ndarray):
        return rgb

    def track(self, state, start: int, T: int, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        video = torch.from_numpy(np.ascontiguousarray(state[start:start + T])).permute(0, 3, 1, 2)[None]
        video = video.to(self.device, torch.float32)                              # (1, T, 3, H, W), 0..255 RGB
        q = np.asarray(queries_xy, np.float32).reshape(-1, 2)
        queries = torch.from_numpy(np.concatenate([np.zeros((len(q), 1), np.float32), q], axis=1))[None]
        with torch.no_grad():
            tracks, visible = self.predictor(video, queries=queries.to(self.device))
        tracks = tracks[0].detach().cpu().numpy().astype(np.float32)              # (T, N, 2) x, y
        visible = visible[0].detach().cpu().numpy()
        if visible.ndim == 3:                                                     # (T, N, 1) in some versions
            visible = visible[..., 0]
        return tracks, visible.astype(bool)


def make_tracker(tp):
    """The tracker of ``tracks.backend`` (``None`` for the oracle, which the pipeline runs itself). Raises
    :class:`TrackerUnavailableError` before any work when the backend cannot run here."""
    if tp.backend == "lk":
        return LKTracker(tp.lk_win_size, tp.lk_levels, tp.lk_fb_threshold)
    if tp.backend == "cotracker":
        return CoTrackerTracker.from_checkpoint(tp.cotracker_checkpoint, tp.cotracker_device)
    return None
