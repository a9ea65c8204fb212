"""MapTR training losses for vectorised map elements.

Follows hustvl/MapTR (``maptr_tiny_r50_24e.py``, ``dense_heads/maptr_head.py``, ``losses/map_loss.py``):
sigmoid focal classification (mmdet ``py_sigmoid_focal_loss``, weight 2), ``PtsL1Loss`` on the matched
prediction against its best equivalent GT ordering (weight 5) and ``PtsDirCosLoss`` on consecutive-point
edge vectors (weight 0.005), each summed and divided by the number of GT elements (``num_total_pos``).
Matching is :class:`models.mapdet.matching.HungarianMatcher` (``MapTRAssigner``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.mapdet.matching import HungarianMatcher, equivalent_orderings


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Summed sigmoid focal loss. logits ``[N, C]``, targets ``[N]`` long in [0, C], C = background."""
    n, c = logits.shape
    if targets.shape != (n,) or (targets.numel() and (targets.min() < 0 or targets.max() > c)):
        raise ValueError(f"targets must be [{n}] with values in [0, {c}], got {tuple(targets.shape)}")
    onehot = F.one_hot(targets, c + 1)[:, :c].to(logits.dtype)                     # [N, C]
    prob = logits.sigmoid()
    pt = (1 - prob) * onehot + prob * (1 - onehot)
    weight = (alpha * onehot + (1 - alpha) * (1 - onehot)) * pt.pow(gamma)
    return (F.binary_cross_entropy_with_logits(logits, onehot, reduction="none") * weight).sum()


def points_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of |pred - target| over ``[K, P, 2]`` (MapTR ``PtsL1Loss`` before ``avg_factor``)."""
    return (pred - target).abs().sum()


def edge_direction_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sum over the P-1 edges of ``1 - cos(pred edge, target edge)``, ``[K, P, 2]`` inputs (MapTR
    ``PtsDirCosLoss``: ``CosineEmbeddingLoss`` with target 1, eps added to each squared norm)."""
    dp, dt = pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1]            # [K, P-1, 2]
    denom = (((dp * dp).sum(-1) + eps) * ((dt * dt).sum(-1) + eps)).sqrt()
    return (1 - (dp * dt).sum(-1) / denom).sum()


@dataclass
class MapLossWeights:
    """MapTR's loss weights (``maptr_tiny_r50_24e.py``); cls and pts also weight the matching cost."""
    cls: float = 2.0
    pts: float = 5.0
    dir: float = 0.005


class MapDetectionLoss(nn.Module):
    """Hungarian-matched MapTR loss over a batch of Q predicted and M (padded) GT map elements."""

    def __init__(self, weights: MapLossWeights, num_classes: int, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.weights, self.num_classes, self.alpha, self.gamma = weights, num_classes, alpha, gamma
        self.matcher = HungarianMatcher(weights.cls, weights.pts, alpha, gamma)

    def forward(self, logits: torch.Tensor, pts: torch.Tensor, gt_points: torch.Tensor, gt_labels: torch.Tensor,
                gt_closed: torch.Tensor, gt_valid: torch.Tensor,
                num_gt: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """logits ``[B, Q, C]``, pts ``[B, Q, P, 2]``, gt_points ``[B, M, P, 2]``, gt_labels ``[B, M]`` long,
        gt_closed / gt_valid ``[B, M]`` bool (invalid rows are padding and may hold anything). ``num_gt``: the
        normaliser (default this batch's valid GT count; under DDP the caller passes the global count divided by
        the world size, as DETR's ``num_boxes``, so that averaged gradients equal one process's).
        Coordinates as in :meth:`HungarianMatcher.cost` (normalised by the patch).
        Returns the weighted total and the unweighted, normalised components plus the match count."""
        b, q, c = logits.shape
        if c != self.num_classes or pts.dim() != 4 or pts.shape[:2] != (b, q) or pts.shape[-1] != 2:
            raise ValueError(f"logits {tuple(logits.shape)} / pts {tuple(pts.shape)} do not fit "
                             f"[B, Q, {self.num_classes}] / [B, Q, P, 2]")
        p, m = pts.shape[2], gt_points.shape[1]
        if p < 2:
            raise ValueError(f"need P >= 2 points per element, got pts {tuple(pts.shape)}")
        if gt_points.shape != (b, m, p, 2) or gt_labels.shape != (b, m) or gt_closed.shape != (b, m) \
                or gt_valid.shape != (b, m):
            raise ValueError(f"GT shapes gt_points {tuple(gt_points.shape)}, gt_labels {tuple(gt_labels.shape)}, "
                             f"gt_closed {tuple(gt_closed.shape)}, gt_valid {tuple(gt_valid.shape)} do not fit "
                             f"[{b}, M, {p}, 2] / [{b}, M]")
        gt_valid = gt_valid.bool()
        valid_labels = gt_labels[gt_valid]
        if valid_labels.numel() and (valid_labels.min() < 0 or valid_labels.max() >= c):
            raise ValueError(f"valid gt_labels must lie in [0, {c}), got [{int(valid_labels.min())}, "
                             f"{int(valid_labels.max())}]")
        orders, order_valid = equivalent_orderings(gt_points, gt_closed)                    # [B, M, G, P, 2]
        targets = torch.full((b, q), c, dtype=torch.long, device=logits.device)             # background = C
        bi, pi, gi, oi = [], [], [], []
        for s in range(b):
            keep = gt_valid[s].nonzero().squeeze(1)                                         # [M_s]
            pred_idx, gt_idx, order_idx = self.matcher.match(
                logits[s], pts[s], gt_labels[s, keep], orders[s, keep], order_valid[s, keep])
            targets[s, pred_idx] = gt_labels[s, keep[gt_idx]]
            for acc, idx in zip((bi, pi, gi, oi), (torch.full_like(pred_idx, s), pred_idx, keep[gt_idx], order_idx)):
                acc.append(idx)
        bi, pi, gi, oi = (torch.cat(t) for t in (bi, pi, gi, oi))                          # [K]
        num_gt = max(int(gt_valid.sum()), 1) if num_gt is None else max(float(num_gt), 1e-6)
        matched_pred, matched_gt = pts[bi, pi], orders[bi, gi, oi].to(pts.dtype)           # [K, P, 2]
        loss_cls = sigmoid_focal_loss(logits.reshape(b * q, c), targets.reshape(-1), self.alpha, self.gamma) / num_gt
        loss_pts = points_l1_loss(matched_pred, matched_gt) / num_gt
        loss_dir = edge_direction_loss(matched_pred, matched_gt) / num_gt
        w = self.weights
        total = w.cls * loss_cls + w.pts * loss_pts + w.dir * loss_dir
        return total, {"loss_cls": float(loss_cls.detach()), "loss_pts": float(loss_pts.detach()),
                       "loss_dir": float(loss_dir.detach()), "matched": float(bi.numel())}
