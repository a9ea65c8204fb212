"""Scoring geometry predictions on validation windows against truth, the same code for the trained model, the
converted initialisation and the trivial baseline (:mod:`models.geometry.metrics` holds the exact definitions).

Per window (T times x V cameras, S = T * V frames):

* **depth** against the exact dense depth (the synthetic world) or, without it, the LiDAR depth; the window's S
  frames are one pixel set (one alignment per window, §5 "videodepth"), ``max_depth`` 80 m, valid pixels only:
  ``depth`` unaligned (metric: nuScenes is metric) and ``depth_median`` with median scale alignment; split values
  are valid-pixel-weighted means over windows.
* **camera**: the predicted world-to-camera extrinsics of all S frames against the true ones, every frame pair, VGGT's
  current relative-pose errors; RRA / RTA at 5 / 15 / 30 degrees and AUC@30 pooled over all pairs of all windows
  (Pi3's pooling); ATE (metres) of the camera centres after a Sim(3) alignment, mean over windows.
* **mask**: ``M > 0.5`` (per patch, upsampled to pixels) against the exact dynamic masks: IoU and F1 over all
  pixels of all windows.
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics as M

DEPTH_KEYS = ("abs_rel", "delta_1.25")
POSE_THRESHOLDS = (5, 15, 30)


class Scores:
    """Accumulates one predictor's scores over windows; :meth:`result` gives the split values."""

    def __init__(self):
        self.depth: list[dict] = []
        self.depth_median: list[dict] = []
        self.rot: list[np.ndarray] = []
        self.trans: list[np.ndarray] = []
        self.ate: list[float] = []
        self.mask_pred: list[np.ndarray] = []
        self.mask_true: list[np.ndarray] = []

    def add(self, depth: np.ndarray, extrinsics: np.ndarray, mask: np.ndarray | None, truth: dict) -> None:
        """depth [S, H, W] metres, extrinsics [S, 3, 4] (world-to-camera, metres), mask [S, H, W] in [0, 1] or None;
        ``truth``: ``depth`` [S, H, W] (0 invalid), ``extrinsics`` [S, 3, 4], ``dynamic`` [S, H, W] or None."""
        self.depth.append(M.depth_metrics(depth, truth["depth"], max_depth=80.0, align="none"))
        self.depth_median.append(M.depth_metrics(depth, truth["depth"], max_depth=80.0, align="median"))
        rot, trans = M.relative_pose_errors(extrinsics, truth["extrinsics"])
        self.rot.append(rot)
        self.trans.append(trans)
        self.ate.append(M.ate_sim3(M.camera_centres(extrinsics), M.camera_centres(truth["extrinsics"])))
        if mask is not None and truth.get("dynamic") is not None:
            self.mask_pred.append(np.asarray(mask, np.float64).ravel())
            self.mask_true.append(np.asarray(truth["dynamic"], bool).ravel())

    def result(self) -> dict:
        depth, median = M.weighted_mean(self.depth), M.weighted_mean(self.depth_median)
        rot, trans = np.concatenate(self.rot), np.concatenate(self.trans)
        out = {"depth": depth, "depth_median": median,
               "camera": {**M.pose_accuracy(rot, trans, POSE_THRESHOLDS), "auc@30": M.pose_auc(rot, trans, 30),
                          "ate_m": float(np.mean(self.ate)), "pairs": int(len(rot))}}
        if self.mask_pred:
            out["mask"] = M.mask_iou_f1(np.concatenate(self.mask_pred), np.concatenate(self.mask_true))
        return out


def headline(result: dict) -> dict:
    """The few numbers ``dvc exp show`` compares (numeric only)."""
    out = {"depth_abs_rel": result["depth"]["abs_rel"], "depth_delta1": result["depth"]["delta_1.25"],
           "depth_median_abs_rel": result["depth_median"]["abs_rel"], "auc30": result["camera"]["auc@30"],
           "rra15": result["camera"]["rra@15"], "ate_m": result["camera"]["ate_m"]}
    if "mask" in result:
        out["mask_iou"] = result["mask"]["iou"]
    return {k: round(float(v), 6) for k, v in out.items()}


def upsample_patches(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Per-patch values [..., P] -> pixels [..., h * patch, w * patch] (nearest)."""
    h, w = grid
    m = mask.reshape(*mask.shape[:-1], h, w)
    return m.repeat_interleave(patch, -2).repeat_interleave(patch, -1)


def mean_depth_baseline(windows, limit: int | None = None) -> np.ndarray:
    """Per camera and pixel, the mean of the valid training supervision depth (LiDAR) over training windows,
    [V, H, W] metres; pixels never observed take the mean of all valid depth."""
    total = count = None
    read = getattr(windows, "depth", None) or (lambda k: windows[k]["depth"])  # nuScenes windows: images not decoded
    for i in range(len(windows) if limit is None else min(limit, len(windows))):
        d = np.asarray(read(i), np.float64)                                       # [T, V, H, W]
        v = d > 0
        s, c = (d * v).sum(0), v.sum(0)
        total, count = (s, c) if total is None else (total + s, count + c)
    fill = total.sum() / max(count.sum(), 1)
    return np.where(count > 0, total / np.maximum(count, 1), fill)
