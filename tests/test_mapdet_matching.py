"""MapTR permutation-equivalent matching and losses (models.mapdet.matching / models.mapdet.losses)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.mapdet.losses import (MapDetectionLoss, MapLossWeights, edge_direction_loss, points_l1_loss,
                                  sigmoid_focal_loss)
from models.mapdet.matching import HungarianMatcher, equivalent_orderings


def _ring(n: int, seed: int = 0) -> torch.Tensor:
    """A closed ring of n distinct vertices as n+1 points (last = first), [n+1, 2]."""
    g = torch.Generator().manual_seed(seed)
    verts = torch.rand(n, 2, generator=g)
    return torch.cat([verts, verts[:1]])


def _point_cost(pred: torch.Tensor, gt: torch.Tensor, closed: bool) -> tuple[float, int]:
    """Point cost (cls weight 0) and best ordering of one prediction [P, 2] against one GT [P, 2]."""
    orders, valid = equivalent_orderings(gt[None], torch.tensor([closed]))
    cost, order_idx = HungarianMatcher(cls_weight=0.0, pts_weight=1.0).cost(
        torch.zeros(1, 1), pred[None], torch.zeros(1, dtype=torch.long), orders, valid)
    return float(cost[0, 0]), int(order_idx[0, 0])


def test_ordering_counts_and_closure():
    p = 6
    gt = torch.stack([torch.rand(p, 2), _ring(p - 1)])                      # [2, P, 2]: open, closed
    orders, valid = equivalent_orderings(gt[None], torch.tensor([[False, True]]))
    assert orders.shape == (1, 2, 2 * (p - 1), p, 2) and valid.shape == (1, 2, 2 * (p - 1))
    assert valid[0, 0].sum() == 2 and valid[0, 1].sum() == 2 * (p - 1)
    assert torch.isfinite(orders).all()
    assert torch.equal(orders[0, 0, 0], gt[0]) and torch.equal(orders[0, 0, 1], gt[0].flip(0))
    assert torch.equal(orders[0, 0, 2:], gt[0].expand(2 * (p - 1) - 2, p, 2))   # invalid slots = forward
    ring_orders = orders[0, 1]
    assert torch.equal(ring_orders[:, 0], ring_orders[:, -1])                # every ordering stays closed
    assert len({tuple(o.flatten().tolist()) for o in ring_orders}) == 2 * (p - 1)


def test_orderings_reject_single_point():
    with pytest.raises(ValueError, match=r"\(3, 1, 2\)"):
        equivalent_orderings(torch.zeros(3, 1, 2), torch.zeros(3, dtype=torch.bool))


def test_reversed_polyline_costs_zero():
    gt = torch.rand(5, 2)
    assert _point_cost(gt.flip(0), gt, closed=False) == (0.0, 1)
    assert _point_cost(gt, gt, closed=False) == (0.0, 0)
    assert _point_cost(gt.roll(1, 0), gt, closed=False)[0] > 0


def test_shifted_ring_costs_zero():
    n = 5
    ring = _ring(n)
    verts = ring[:-1]
    shifted = verts.roll(-2, 0)                                              # starts at vertex 2
    cost, order = _point_cost(torch.cat([shifted, shifted[:1]]), ring, closed=True)
    assert cost == 0.0 and order == 2
    rev = verts.flip(0).roll(-3, 0)                                          # reversed, then shifted by 3
    cost, order = _point_cost(torch.cat([rev, rev[:1]]), ring, closed=True)
    assert cost == 0.0 and order == n + 3
    # the same ring treated as an open polyline does not admit the shift
    assert _point_cost(torch.cat([shifted, shifted[:1]]), ring, closed=False)[0] > 0


def test_matcher_beats_greedy_on_3x3():
    # each element is P=2 copies of one location; point cost = 2 * L1 between locations
    gt_loc = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pred_loc = torch.tensor([[0.4, 0.0], [-0.5, 0.0], [0.0, 0.9]])
    gt = gt_loc[:, None].expand(3, 2, 2)
    pred = pred_loc[:, None].expand(3, 2, 2)
    orders, valid = equivalent_orderings(gt, torch.zeros(3, dtype=torch.bool))
    matcher = HungarianMatcher()
    logits, labels = torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)   # equal class cost everywhere
    cost, _ = matcher.cost(logits, pred, labels, orders, valid)
    pred_idx, gt_idx, order_idx = matcher.match(logits, pred, labels, orders, valid)
    assignment = dict(zip(pred_idx.tolist(), gt_idx.tolist()))
    assert assignment == {0: 1, 1: 0, 2: 2}
    best = min(itertools.permutations(range(3)), key=lambda perm: sum(float(cost[i, perm[i]]) for i in range(3)))
    assert assignment == dict(enumerate(best))
    # greedy (cheapest remaining pair first) takes pred 2 -> GT 2, pred 0 -> GT 0, pred 1 -> GT 1: worse
    greedy, free_q, free_m = {}, set(range(3)), set(range(3))
    while free_q:
        i, j = min(((i, j) for i in free_q for j in free_m), key=lambda ij: float(cost[ij]))
        greedy[i] = j
        free_q.discard(i), free_m.discard(j)
    assert greedy == {0: 0, 1: 1, 2: 2}
    assert sum(float(cost[i, j]) for i, j in greedy.items()) > sum(float(cost[i, j]) for i, j in assignment.items())
    assert order_idx.shape == (3,)


def test_matcher_empty_and_rectangular():
    matcher = HungarianMatcher()
    orders, valid = equivalent_orderings(torch.zeros(0, 4, 2), torch.zeros(0, dtype=torch.bool))
    out = matcher.match(torch.zeros(5, 3), torch.rand(5, 4, 2), torch.zeros(0, dtype=torch.long), orders, valid)
    assert all(t.numel() == 0 and t.dtype == torch.long for t in out)
    orders, valid = equivalent_orderings(torch.rand(4, 4, 2), torch.zeros(4, dtype=torch.bool))
    pred_idx, gt_idx, _ = matcher.match(torch.zeros(2, 3), torch.rand(2, 4, 2), torch.zeros(4, dtype=torch.long),
                                        orders, valid)
    assert pred_idx.numel() == 2 and len(set(gt_idx.tolist())) == 2


def test_focal_loss_matches_hand_computation():
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
    targets = torch.tensor([0, 2, 1])                                        # 2 = background
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for n in range(3):
        for c in range(2):
            p = 1 / (1 + math.exp(-float(logits[n, c])))
            if targets[n] == c:
                expected += -alpha * (1 - p) ** gamma * math.log(p)
            else:
                expected += -(1 - alpha) * p ** gamma * math.log(1 - p)
    assert float(sigmoid_focal_loss(logits, targets, alpha, gamma)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        sigmoid_focal_loss(logits, torch.tensor([0, 3, 1]))


def test_points_and_direction_losses():
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])           # [1, 3, 2]
    assert float(points_l1_loss(target, target)) == 0.0
    assert float(edge_direction_loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(edge_direction_loss(2 * target + 1, target)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    pred = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])             # edges: up (perp.), right (same)
    assert float(points_l1_loss(pred, target)) == pytest.approx(0 + 2 + 2)
    assert float(edge_direction_loss(pred, target)) == pytest.approx(1.0, abs=1e-6)
    assert float(edge_direction_loss(target.flip(1), target)) == pytest.approx(4.0, abs=1e-6)  # opposite: 2/edge
    empty = torch.zeros(0, 3, 2)
    assert float(points_l1_loss(empty, empty)) == 0.0 == float(edge_direction_loss(empty, empty))


def _batch(seed: int = 0):
    """B=2, Q=6, C=3, P=4, M=3: sample 0 has an open line and a closed ring, sample 1 no valid GT."""
    g = torch.Generator().manual_seed(seed)
    gt_points = torch.full((2, 3, 4, 2), float("nan"))                       # padding is NaN on purpose
    gt_points[0, 0] = torch.rand(4, 2, generator=g)
    gt_points[0, 1] = _ring(3, seed=seed + 1)
    gt_labels = torch.tensor([[0, 1, 7], [7, 7, 7]])                         # padding labels out of range
    gt_closed = torch.tensor([[False, True, False], [False, False, False]])
    gt_valid = torch.tensor([[True, True, False], [False, False, False]])
    logits = torch.randn(2, 6, 3, generator=g)
    pts = torch.rand(2, 6, 4, 2, generator=g)
    return logits, pts, gt_points, gt_labels, gt_closed, gt_valid


def test_loss_total_is_weighted_sum_and_padding_is_ignored():
    weights = MapLossWeights()
    loss = MapDetectionLoss(weights, num_classes=3)
    logits, pts, gt_points, gt_labels, gt_closed, gt_valid = _batch()
    total, parts = loss(logits, pts, gt_points, gt_labels, gt_closed, gt_valid)
    assert torch.isfinite(total) and parts["matched"] == 2.0
    assert float(total) == pytest.approx(weights.cls * parts["loss_cls"] + weights.pts * parts["loss_pts"]
                                         + weights.dir * parts["loss_dir"], rel=1e-5)
    assert parts["loss_pts"] > 0 and parts["loss_dir"] > 0
    # dropping the padding rows gives the same value
    total2, _ = loss(logits[:1], pts[:1], gt_points[:1, :2], gt_labels[:1, :2], gt_closed[:1, :2], gt_valid[:1, :2])
    bg_only = sigmoid_focal_loss(logits[1], torch.full((6,), 3)) / 2
    assert float(total) == pytest.approx(float(total2) + weights.cls * float(bg_only), rel=1e-5)


def test_loss_zero_gt_is_background_focal_only():
    loss = MapDetectionLoss(MapLossWeights(), num_classes=3)
    logits, pts, gt_points, gt_labels, gt_closed, gt_valid = _batch()
    logits.requires_grad_(True), pts.requires_grad_(True)
    total, parts = loss(logits, pts, gt_points, gt_labels, gt_closed, torch.zeros_like(gt_valid))
    assert torch.isfinite(total) and parts["matched"] == 0.0 and parts["loss_pts"] == 0.0
    expected = sigmoid_focal_loss(logits.detach().reshape(12, 3), torch.full((12,), 3))   # num_gt clamps to 1
    assert parts["loss_cls"] == pytest.approx(float(expected), rel=1e-6)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_reversed_gt_prediction_has_zero_point_losses():
    loss = MapDetectionLoss(MapLossWeights(), num_classes=2)
    gt = torch.rand(1, 1, 5, 2)
    _, parts = loss(torch.zeros(1, 1, 2), gt.flip(2), gt, torch.zeros(1, 1, dtype=torch.long),
                    torch.zeros(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool))
    assert parts["loss_pts"] == 0.0 and parts["loss_dir"] == pytest.approx(0.0, abs=1e-6)


def test_loss_validates_shapes():
    loss = MapDetectionLoss(MapLossWeights(), num_classes=3)
    logits, pts, gt_points, gt_labels, gt_closed, gt_valid = _batch()
    with pytest.raises(ValueError, match=r"\(2, 6, 1, 2\)"):
        loss(logits, pts[:, :, :1], gt_points[:, :, :1], gt_labels, gt_closed, gt_valid)
    with pytest.raises(ValueError, match="gt_labels"):
        loss(logits, pts, gt_points, gt_labels.clamp(max=5), gt_closed, gt_valid.fill_(True))


def test_gradients_flow_and_loss_trains():
    torch.manual_seed(0)
    loss = MapDetectionLoss(MapLossWeights(), num_classes=3)
    logits0, pts0, gt_points, gt_labels, gt_closed, gt_valid = _batch(seed=3)
    logits, pts = torch.nn.Parameter(logits0.clone()), torch.nn.Parameter(pts0.clone())
    total, first = loss(logits, pts, gt_points, gt_labels, gt_closed, gt_valid)
    total.backward()
    assert logits.grad.abs().sum() > 0 and pts.grad.abs().sum() > 0
    assert torch.isfinite(pts.grad).all()
    opt = torch.optim.Adam([logits, pts], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        total, parts = loss(logits, pts, gt_points, gt_labels, gt_closed, gt_valid)
        total.backward()
        opt.step()
    w = MapLossWeights()
    first_total = w.cls * first["loss_cls"] + w.pts * first["loss_pts"] + w.dir * first["loss_dir"]
    assert float(total.detach()) < 0.3 * first_total
    assert parts["loss_pts"] < 0.3 * first["loss_pts"] and parts["loss_cls"] < first["loss_cls"]
