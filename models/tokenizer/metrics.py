"""Trajectory and codebook metrics, exactly as official AMPLIFY (amplify/utils/metrics.py).

Inputs are **points** (not velocities) in normalised (row, col) units, time on the axis before the points:
``(..., T, N, 2)``; in tokenizer training the prediction is the decoded velocities integrated from the
ground-truth first point, so t = 0 is included and always exact.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PIXEL_TOLERANCES = tuple(range(1, 11))

METRIC_KEYS = ("mse", "l1", "cross_track_l2", "normalized_accuracy",
               *(f"pixel_accuracy_{k}" for k in PIXEL_TOLERANCES), "delta_auc", "nonzero_pred_percent",
               "nonzero_gt_percent", "nonzero_pred_accuracy", "nonzero_pred_f1")


def _as_bvtn(x: torch.Tensor) -> torch.Tensor:
    """(..., T, N, 2) -> (B, V, T, N, 2): missing leading axes become size 1, extra ones fold into B."""
    if x.dim() == 3:
        return x[None, None]
    if x.dim() == 4:
        return x[:, None]
    if x.dim() == 5:
        return x
    return x.reshape(-1, *x.shape[-4:])


def cross_track_distance(ref_traj: torch.Tensor, sampled_trajs: torch.Tensor) -> torch.Tensor:
    """Official ``compute_cross_track_distance`` (no discount), for ``(..., T, N, 2)`` inputs.

    For every point of ``ref_traj`` at (t, n): the smallest L2 distance to ``sampled_trajs[t', n]`` over all
    times t' of the **same** track n (discrete points, not segments); mean over (view, time, track), then over
    the batch. Not symmetric. ``trajectory_metrics`` calls it with ``ref_traj = pred``, ``sampled_trajs = gt``.
    """
    ref, sam = _as_bvtn(ref_traj), _as_bvtn(sampled_trajs)
    pairwise = torch.norm(sam.unsqueeze(2) - ref.unsqueeze(3), dim=-1)  # (b, v, t_ref, t_sampled, n)
    return pairwise.min(dim=3).values.mean(dim=(1, 2, 3)).mean()


def trajectory_metrics(pred_points: torch.Tensor, gt_points: torch.Tensor, img_size: Sequence[int]) -> dict:
    """Official ``get_traj_metrics(pred, gt, img_size, all_pixel_tol=True)`` as a dict of Python floats.

    * ``mse``, ``l1``: means over every element (both coordinates);
    * ``cross_track_l2``: :func:`cross_track_distance` (pred as reference);
    * ``normalized_accuracy``: fraction of **coordinates** with ``|pred - gt| < 0.5 px`` (strict), where one pixel
      is ``2 / img_size[0]`` (rows only, the official assumes a square image);
    * ``pixel_accuracy_k`` (k = 1..10): fraction of coordinates with ``|pred - gt| < k px`` (strict: an error of
      exactly k px fails tolerance k);
    * ``delta_auc``: mean of the ten ``pixel_accuracy_k`` (not TAP-Vid's delta_avg);
    * ``nonzero_pred_percent`` / ``nonzero_gt_percent``: fraction (in [0, 1]) of velocity elements (per-step
      differences, per coordinate) that are exactly ``!= 0``;
    * ``nonzero_pred_accuracy``: (tp + tn) / all, positives being nonzero velocity elements;
    * ``nonzero_pred_f1``: ``tp / (tp + (fp + fn) / 2)``, 0.0 when the denominator is 0.

    The thresholds are computed as the official computes them (a float32 ``k * px``), so float32 inputs give the
    official numbers bit for bit. Shapes must match; NaN or infinite values raise ``ValueError``.
    """
    if pred_points.shape != gt_points.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred_points.shape)} vs {tuple(gt_points.shape)}")
    if pred_points.dim() < 3 or pred_points.shape[-1] != 2:
        raise ValueError(f"points must be (..., T, N, 2), got shape {tuple(pred_points.shape)}")
    for name, x in (("pred_points", pred_points), ("gt_points", gt_points)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contain NaN or infinite values")
    pred = _as_bvtn(pred_points.detach())
    gt = _as_bvtn(gt_points.detach())
    pred_vel = pred[:, :, 1:] - pred[:, :, :-1]
    gt_vel = gt[:, :, 1:] - gt[:, :, :-1]

    metrics: dict = {
        "mse": F.mse_loss(pred, gt),
        "l1": F.l1_loss(pred, gt),
        "cross_track_l2": cross_track_distance(ref_traj=pred, sampled_trajs=gt),
    }
    norm_pixel_size = 2.0 / img_size[0]
    abs_err = torch.abs(pred - gt)
    metrics["normalized_accuracy"] = torch.sum(abs_err < (norm_pixel_size / 2)) / gt.numel()
    accuracies = []
    for tolerance in torch.arange(1, 11, 1):
        accuracy = torch.sum(abs_err < (tolerance * norm_pixel_size)) / gt.numel()
        metrics[f"pixel_accuracy_{int(tolerance)}"] = accuracy
        accuracies.append(accuracy.item())
    metrics["delta_auc"] = torch.tensor(accuracies).mean()

    metrics["nonzero_pred_percent"] = (pred_vel != 0).sum() / pred_vel.numel()
    metrics["nonzero_gt_percent"] = (gt_vel != 0).sum() / gt_vel.numel()
    pos_pred, pos_gt = pred_vel != 0, gt_vel != 0
    tp = (pos_pred & pos_gt).sum()
    fp = (pos_pred & ~pos_gt).sum()
    tn = (~pos_pred & ~pos_gt).sum()
    fn = (~pos_pred & pos_gt).sum()
    total = tp + fp + tn + fn
    metrics["nonzero_pred_accuracy"] = (tp + tn) / total if total != 0 else 0.0
    denominator = tp + 0.5 * (fp + fn)
    metrics["nonzero_pred_f1"] = tp / denominator if denominator != 0 else 0.0

    return {k: (float(v.item()) if isinstance(v, torch.Tensor) else float(v)) for k, v in metrics.items()}


VISIBLE_METRIC_KEYS = ("mse", "l1", "normalized_accuracy", *(f"pixel_accuracy_{k}" for k in PIXEL_TOLERANCES),
                       "delta_auc")


def visible_trajectory_metrics(pred_points: torch.Tensor, gt_points: torch.Tensor, visible: torch.Tensor,
                               img_size: Sequence[int]) -> dict:
    """:func:`trajectory_metrics`' point metrics over the **visible** points only (not an AMPLIFY metric).

    ``visible`` ``(..., T, N)`` bool beside points ``(..., T, N, 2)``: every mean (MSE, L1, the accuracies and so
    delta-AUC) runs over the coordinates of points visible at that time, with the official thresholds. A lost LK
    point is frozen in place with ``visible`` False, so these numbers leave out the steps no motion code can know.
    """
    if pred_points.shape != gt_points.shape or tuple(visible.shape) != tuple(gt_points.shape[:-1]):
        raise ValueError(f"pred {tuple(pred_points.shape)}, gt {tuple(gt_points.shape)} and visible "
                         f"{tuple(visible.shape)} do not match (..., T, N, 2) / (..., T, N)")
    if visible.dtype != torch.bool or not bool(visible.any()):
        raise ValueError("visible must be a bool tensor with at least one visible point")
    mask = visible[..., None].expand_as(gt_points)
    err = (pred_points.detach() - gt_points.detach())[mask]  # (K,) coordinates of visible points
    px = 2.0 / img_size[0]
    metrics = {"mse": (err ** 2).mean(), "l1": err.abs().mean(),
               "normalized_accuracy": (err.abs() < px / 2).float().mean()}
    accuracies = []
    for tolerance in torch.arange(1, 11, 1):
        accuracy = (err.abs() < tolerance * px).float().mean()
        metrics[f"pixel_accuracy_{int(tolerance)}"] = accuracy
        accuracies.append(accuracy.item())
    metrics["delta_auc"] = torch.tensor(accuracies).mean()
    return {k: float(v) for k, v in metrics.items()}


def codebook_perplexity(indices: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """Official ``get_codebook_perplexity`` and ``get_normalized_codebook_perplexity``: ``(perplexity, normalised)``.

    ``p = bincount(indices, minlength=codebook_size) / numel``; ``perplexity = 2 ** -sum(p * log2(p + 1e-10))``;
    normalised = ``perplexity / min(codebook_size, indices.numel())``, so it depends on the batch size and can
    exceed 1 very slightly (the 1e-10). AMPLIFY passes the nominal ``codebook_size`` (2048, not the 1920 codes FSQ
    has).
    """
    if indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() == 0:
        raise ValueError("indices is empty")
    if int(indices.min()) < 0:
        raise ValueError(f"indices must be >= 0, got {int(indices.min())}")
    if int(codebook_size) < 1:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    counts = torch.bincount(indices.flatten(), minlength=int(codebook_size)).float()
    usage = counts / counts.sum()
    perplexity = torch.pow(2, -torch.sum(usage * torch.log2(usage + 1e-10)))
    normalized = perplexity / min(int(codebook_size), indices.numel())
    return float(perplexity.item()), float(normalized.item())
