"""Permutation-equivalent GT orderings and Hungarian matching for vectorised map elements.

Follows hustvl/MapTR: the equivalence set Gamma of ``LiDARInstanceLines`` with v3's size 2*(P-1) (open
polyline: forward + reversed; closed ring: every cyclic shift in both directions). Rings are shifted on the
already-resampled points (as ``shift_fixed_num_sampled_points_v1``), not re-resampled per start vertex. Then
``MapTRAssigner`` (``projects/mmdet3d_plugin/maptr/assigners/maptr_assigner.py``) with mmdet's
``FocalLossCost`` and MapTR's ``OrderedPtsL1Cost`` (L1 over the flattened P*2 coordinates, minimised over
Gamma). See ``/work/shared/design/map_and_planning.md`` A.3.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@lru_cache(maxsize=16)
def _order_indices(num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-index tables ``(open [G, P], closed [G, P])`` long, G = 2*(P-1), built once per P."""
    p, n = num_points, num_points - 1  # n distinct ring vertices
    g = 2 * n
    i = torch.arange(p)
    k = torch.arange(n)[:, None]
    fwd = (k + i) % n                      # [n, P]; column P-1 equals column 0, so the ring stays closed
    closed = torch.cat([fwd, n - 1 - fwd])  # [G, P]; reversed vertex list v'[j] = v[n-1-j], same shifts
    open_ = i.expand(g, p).clone()          # orderings >= 2 repeat the forward one (flagged invalid)
    open_[1] = p - 1 - i
    return open_, closed


def equivalent_orderings(points: torch.Tensor, closed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All equivalent point orderings of each GT element.

    points ``[..., M, P, 2]`` (resampled by arc length; a closed ring repeats point 0 as point P-1),
    closed ``[..., M]`` bool. Returns orders ``[..., M, G, P, 2]`` with G = 2*(P-1), and order_valid
    ``[..., M, G]`` bool: 2 valid orderings (forward, reversed) for an open polyline, whose invalid slots
    repeat the forward ordering; 2*(P-1) for a closed ring (each start vertex, both directions, re-closed).
    """
    if points.dim() < 3 or points.shape[-1] != 2 or points.shape[-2] < 2:
        raise ValueError(f"points must be [..., M, P>=2, 2], got {tuple(points.shape)}")
    if closed.shape != points.shape[:-2]:
        raise ValueError(f"closed must be {tuple(points.shape[:-2])}, got {tuple(closed.shape)}")
    open_idx, closed_idx = (t.to(points.device) for t in _order_indices(points.shape[-2]))
    g = open_idx.shape[0]
    closed = closed.bool()
    orders = torch.where(closed[..., None, None, None], points[..., closed_idx, :],
                         points[..., open_idx, :])                                # [..., M, G, P, 2]
    open_valid = torch.arange(g, device=points.device) < 2                         # [G]
    order_valid = closed[..., None] | open_valid                                   # [..., M, G]
    return orders, order_valid


class HungarianMatcher:
    """MapTR's one-to-one assignment: ``cls_weight * FocalLossCost + pts_weight * OrderedPtsL1Cost``."""

    def __init__(self, cls_weight: float = 2.0, pts_weight: float = 5.0, alpha: float = 0.25,
                 gamma: float = 2.0, eps: float = 1e-12):
        self.cls_weight, self.pts_weight = cls_weight, pts_weight
        self.alpha, self.gamma, self.eps = alpha, gamma, eps

    @torch.no_grad()
    def cost(self, logits: torch.Tensor, pts: torch.Tensor, gt_labels: torch.Tensor, orders: torch.Tensor,
             order_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cost ``[Q, M]`` float32 and the best ordering per pair ``[Q, M]`` long.

        logits ``[Q, C]``, pts ``[Q, P, 2]``, gt_labels ``[M]``, orders ``[M, G, P, 2]``, order_valid
        ``[M, G]``. Coordinates are used as given; the caller normalises them to [0, 1] by the patch (as
        MapTR's ``normalize_2d_pts``), so that the two cost terms have MapTR's relative scale.
        """
        q, m, g = logits.shape[0], orders.shape[0], orders.shape[1]
        if pts.shape[0] != q or pts.shape[1:] != orders.shape[2:]:
            raise ValueError(f"pts {tuple(pts.shape)} does not fit logits {tuple(logits.shape)} / "
                             f"orders {tuple(orders.shape)}")
        prob = logits.float().sigmoid()                                                    # [Q, C]
        neg = -(1 - prob + self.eps).log() * (1 - self.alpha) * prob.pow(self.gamma)
        pos = -(prob + self.eps).log() * self.alpha * (1 - prob).pow(self.gamma)
        cls_cost = pos[:, gt_labels] - neg[:, gt_labels]                                   # [Q, M]
        flat_gt = orders.float().reshape(m * g, -1)                                        # [M*G, P*2]
        pts_cost = torch.cdist(pts.float().reshape(q, -1), flat_gt, p=1).view(q, m, g)     # [Q, M, G]
        pts_cost = pts_cost.masked_fill(~order_valid.bool()[None], float("inf"))
        pts_cost, order_idx = pts_cost.min(dim=2)                                          # [Q, M]
        return self.cls_weight * cls_cost + self.pts_weight * pts_cost, order_idx

    @torch.no_grad()
    def match(self, logits: torch.Tensor, pts: torch.Tensor, gt_labels: torch.Tensor, orders: torch.Tensor,
              order_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Optimal assignment (scipy ``linear_sum_assignment``): ``(pred_idx, gt_idx, order_idx)``, each ``[K]``
        long on the logits' device, K = min(Q, M); shapes as in :meth:`cost`. M = 0 gives empty tensors."""
        device = logits.device
        if orders.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty.clone(), empty.clone()
        cost, order_idx = self.cost(logits, pts, gt_labels, orders, order_valid)
        # non-finite predictions (a diverging run) still get an assignment, so the loss turns non-finite and the
        # training loop stops naming the step, instead of scipy refusing the matrix deep inside the loss
        rows, cols = linear_sum_assignment(np.nan_to_num(cost.cpu().double().numpy(), nan=1e30, posinf=1e30,
                                                         neginf=-1e30))
        pred_idx = torch.from_numpy(rows.astype(np.int64)).to(device)
        gt_idx = torch.from_numpy(cols.astype(np.int64)).to(device)
        return pred_idx, gt_idx, order_idx[pred_idx, gt_idx]
