"""models/geometry/epipolar: fundamental matrices (vs. synthetic geometry and OpenCV), epipolar distances, the View-SA
bias and EpipolarPrior's [B*T, 1, V*N, V*N] layout."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from models.geometry.epipolar import (EpipolarPrior, epipolar_bias, epipolar_distance, fundamental_matrices,
                                      patch_centres)
from models.layers.attention import attend

H, W, PATCH = 56, 84, 14          # 4 x 6 patches
h, w = H // PATCH, W // PATCH
P = h * w
FX = FY = 50.0
CX, CY = (W - 1) / 2, (H - 1) / 2  # image centre, OpenCV pixel convention


def _K(dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[FX, 0, CX], [0, FY, CY], [0, 0, 1]], dtype=dtype)


def _pose(euler_deg, centre, dtype=torch.float64) -> torch.Tensor:
    """cam_to_ref 4x4: rotation (camera axes in the reference frame) and camera centre."""
    T = torch.eye(4, dtype=dtype)
    T[:3, :3] = torch.tensor(Rotation.from_euler("xyz", euler_deg, degrees=True).as_matrix(), dtype=dtype)
    T[:3, 3] = torch.tensor(centre, dtype=dtype)
    return T


def _rig(poses, dtype=torch.float64):
    """K [1, V, 3, 3], cam_to_ref [1, V, 4, 4]."""
    V = len(poses)
    return _K(dtype).expand(1, V, 3, 3).clone(), torch.stack([p.to(dtype) for p in poses])[None]


def _project(X_ref: torch.Tensor, cam_to_ref: torch.Tensor, K: torch.Tensor):
    """World points [M, 3] -> pixels [M, 2] and depths [M] in the camera."""
    R, t = cam_to_ref[:3, :3], cam_to_ref[:3, 3]
    Xc = (X_ref - t) @ R                     # R^T (X - t), row vectors
    uvw = Xc @ K.T
    return uvw[:, :2] / uvw[:, 2:], Xc[:, 2]


def _backproject(uv: torch.Tensor, depth: torch.Tensor, cam_to_ref: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    ray = torch.cat([uv, torch.ones_like(uv[:, :1])], 1) @ torch.linalg.inv(K).T   # z = 1
    Xc = ray * depth[:, None]
    return Xc @ cam_to_ref[:3, :3].T + cam_to_ref[:3, 3]


# a general two-camera pair: camera 1 about 1 m to the right of camera 0, slightly rotated (not rectified)
POSE0 = _pose([0, 0, 0], [0, 0, 0])
POSE1 = _pose([2.0, -8.0, 3.0], [1.0, 0.05, -0.1])
# an oblique pair (diagonal baseline, larger rotation): here F_01 and F_10 give clearly different lines
POSE_OBLIQUE = _pose([6.0, -12.0, 8.0], [0.7, 0.5, 0.2])


def _correspondences(M=60, seed=0):
    """Random 3-D points at depths 2..30 m seen by both cameras: pixels in view 0 and view 1 ([M, 2] each)."""
    g = torch.Generator().manual_seed(seed)
    K = _K()
    uv0 = torch.rand(4 * M, 2, generator=g, dtype=torch.float64) * torch.tensor([W - 1.0, H - 1.0])
    depth = 2 + 28 * torch.rand(4 * M, generator=g, dtype=torch.float64)
    X = _backproject(uv0, depth, POSE0, K)
    uv1, z1 = _project(X, POSE1, K)
    ok = (z1 > 0.1)
    return uv0[ok][:M], uv1[ok][:M]


def _line_distances(Fm: torch.Tensor, uv0: torch.Tensor, uv1: torch.Tensor) -> torch.Tensor:
    """epipolar_distance with 'centres' = the given points (grid 2M x 1, same points for both views): [M] distances
    of uv1[a] from the line of uv0[a] in view 1."""
    M = uv0.shape[0]
    pts = torch.cat([torch.cat([uv0, uv1]), torch.ones(2 * M, 1, dtype=uv0.dtype)], 1)   # [2M, 3]
    D = epipolar_distance(Fm, pts, 2 * M, 1)                                               # [1, 4M, 4M]
    a = torch.arange(M)
    return D[0, a, 2 * M + M + a], D


# --------------------------------------------------------------------------------------------------
# fundamental matrices
# --------------------------------------------------------------------------------------------------


def test_fundamental_matrices_satisfy_epipolar_constraint():
    K, pose = _rig([POSE0, POSE1])
    Fm = fundamental_matrices(K, pose)
    assert Fm.shape == (1, 2, 2, 3, 3) and Fm.dtype == torch.float64
    assert torch.equal(Fm[0, 0, 0], torch.zeros(3, 3)) and torch.equal(Fm[0, 1, 1], torch.zeros(3, 3))
    assert torch.allclose(torch.linalg.matrix_norm(Fm[0, 0, 1]), torch.tensor(1.0, dtype=torch.float64))
    assert torch.linalg.matrix_rank(Fm[0, 0, 1]) == 2
    uv0, uv1 = _correspondences()
    x0 = torch.cat([uv0, torch.ones(len(uv0), 1, dtype=torch.float64)], 1)
    x1 = torch.cat([uv1, torch.ones(len(uv1), 1, dtype=torch.float64)], 1)
    # x_j^T F_ij x_i = 0, relative to the scale of F and of the points
    for Fij, xi, xj in ((Fm[0, 0, 1], x0, x1), (Fm[0, 1, 0], x1, x0)):
        residual = torch.einsum("mk,kl,ml->m", xj, Fij, xi).abs() / (xj.norm(dim=1) * xi.norm(dim=1))
        assert residual.max() < 1e-12
    assert torch.allclose(Fm[0, 1, 0], Fm[0, 0, 1].T, atol=1e-12)     # F_ji = F_ij^T (both unit norm)

    true_d, D = _line_distances(Fm, uv0, uv1)
    assert true_d.max() < 1e-6
    M = len(uv0)
    wrong = D[0, torch.arange(M), 3 * M + torch.arange(M).roll(7)]        # non-corresponding pairs
    assert wrong.median() > 5.0 and (wrong > 0.5).float().mean() > 0.9
    # distances are symmetric in the sense of the reverse direction too: x0 on the line of x1 in view 0
    rev = D[0, 2 * M + M + torch.arange(M), torch.arange(M)]
    assert rev.max() < 1e-6


def test_fundamental_matrix_matches_opencv_8point():
    K, pose = _rig([POSE0, POSE1])
    Fm = fundamental_matrices(K, pose)[0]
    uv0, uv1 = _correspondences(M=40, seed=1)
    for (i, j), (pi, pj) in (((0, 1), (uv0, uv1)), ((1, 0), (uv1, uv0))):
        F_cv, _ = cv2.findFundamentalMat(pi.numpy(), pj.numpy(), cv2.FM_8POINT)   # x_j^T F x_i = 0
        F_cv = torch.from_numpy(F_cv)
        F_cv = F_cv / torch.linalg.matrix_norm(F_cv)
        ours = Fm[i, j]
        sign = torch.sign((F_cv * ours).sum())
        assert torch.allclose(sign * F_cv, ours, atol=1e-6), (F_cv, ours)


def test_fundamental_rectified_stereo_and_degenerate_pairs():
    # pure horizontal baseline, same K: epipolar lines are image rows, so D = |y_a - y_b| exactly
    K, pose = _rig([POSE0, _pose([0, 0, 0], [1.0, 0, 0])])
    D = epipolar_distance(fundamental_matrices(K, pose), patch_centres(h, w, PATCH, dtype=torch.float64), h, w)
    rows = torch.arange(h).repeat_interleave(w).double()
    expect = (rows[:, None] - rows[None, :]).abs() * PATCH
    assert torch.allclose(D[0, :P, P:], expect, atol=1e-9) and torch.allclose(D[0, P:, :P], expect, atol=1e-9)
    assert torch.equal(D[0, :P, :P], torch.zeros(P, P)) and torch.equal(D[0, P:, P:], torch.zeros(P, P))
    # concentric cameras (rotation only): no epipolar geometry -> F = 0, D = 0
    K, pose = _rig([POSE0, _pose([0, 20, 0], [0, 0, 0])])
    Fm = fundamental_matrices(K, pose)
    assert torch.equal(Fm, torch.zeros_like(Fm))
    D = epipolar_distance(Fm, patch_centres(h, w, PATCH, dtype=torch.float64), h, w)
    assert torch.equal(D, torch.zeros_like(D))


def test_patch_centres_row_major():
    c = patch_centres(h, w, PATCH)
    assert c.shape == (P, 3)
    assert c[0].tolist() == [6.5, 6.5, 1.0]                       # (0 + 0.5) * 14 - 0.5
    assert c[1].tolist() == [20.5, 6.5, 1.0]                      # next column
    assert c[w].tolist() == [6.5, 20.5, 1.0]                      # next row
    assert c[-1].tolist() == [(w - 0.5) * PATCH - 0.5, (h - 0.5) * PATCH - 0.5, 1.0]


def test_float32_distances_close_to_float64():
    K, pose = _rig([POSE0, POSE1, _pose([-3, 12, 1], [-0.8, 0.1, 0.3])])
    D64 = epipolar_distance(fundamental_matrices(K, pose), patch_centres(h, w, PATCH, dtype=torch.float64), h, w)
    D32 = epipolar_distance(fundamental_matrices(K.float(), pose.float()), patch_centres(h, w, PATCH), h, w)
    assert D32.dtype == torch.float32
    assert (D32.double() - D64).abs().max() < 1e-3


# --------------------------------------------------------------------------------------------------
# the bias
# --------------------------------------------------------------------------------------------------


def _falloff(d, sigma):
    return 1 - math.exp(-d * d / (2 * sigma * sigma))


@pytest.mark.parametrize("num_special", [0, 5])
def test_bias_layout_zeros_and_formula(num_special):
    K, pose = _rig([POSE0, POSE1, _pose([-3, 12, 1], [-0.8, 0.1, 0.3])])
    V, N = 3, num_special + P
    D = epipolar_distance(fundamental_matrices(K, pose), patch_centres(h, w, PATCH, dtype=torch.float64), h, w)
    zero = epipolar_bias(D, torch.zeros(()), PATCH, num_special, num_views=V)
    assert zero.shape == (1, 1, V * N, V * N) and torch.equal(zero, torch.zeros_like(zero))

    s, sigma = 2.5, 10.0
    bias = epipolar_bias(D, torch.tensor(s), sigma, num_special, num_views=V)
    b = bias.view(V, N, V, N)
    assert torch.equal(b[:, :num_special], torch.zeros_like(b[:, :num_special]))       # special queries
    assert torch.equal(b[:, :, :, :num_special], torch.zeros_like(b[:, :, :, :num_special]))   # special keys
    for i in range(V):
        assert torch.equal(b[i, :, i], torch.zeros(N, N, dtype=b.dtype))               # within a view
    patches = b[:, num_special:, :, num_special:]                                        # [V, P, V, P]
    expect = -s * (1 - torch.exp(-D.view(V, P, V, P) ** 2 / (2 * sigma ** 2)))
    assert torch.allclose(patches, expect, atol=1e-12)
    assert patches.max() <= 0 and patches.min() >= -s
    # monotone: over all cross-view pairs, a larger distance never gives a larger (less negative) bias
    off = ~torch.eye(V, dtype=torch.bool)[:, None, :, None].expand(V, P, V, P)
    d, v = D.view(V, P, V, P)[off], patches[off]
    order = torch.argsort(d)
    assert (v[order].diff() <= 1e-12).all()
    # the same from the 5-D form, and errors without num_views
    assert torch.equal(epipolar_bias(D.view(1, V, P, V, P), torch.tensor(s), sigma, num_special), bias)
    with pytest.raises(ValueError):
        epipolar_bias(D, torch.tensor(s), sigma, num_special)


@pytest.mark.parametrize("pose1", [POSE1, POSE_OBLIQUE], ids=["near_rectified", "oblique"])
def test_bias_is_maximal_at_the_true_correspondence(pose1):
    """For a query patch of view 0 whose scene point (at several depths) lands in key patch b of view 1, the bias at
    b is within the patch tolerance of the row's maximum over view 1 (the centre of b is at most p / sqrt(2) from the
    true correspondence, which lies on the line)."""
    K, pose = _rig([POSE0, pose1])
    Kc = K[0, 0]
    centres = patch_centres(h, w, PATCH, dtype=torch.float64)
    D = epipolar_distance(fundamental_matrices(K, pose), centres, h, w)
    s, sigma, S = 3.0, float(PATCH), 1
    bias = epipolar_bias(D, torch.tensor(s), sigma, S, num_views=2).view(2, S + P, 2, S + P)[0, S:, 1, S:]  # [P, P]
    half_diag = PATCH / math.sqrt(2)
    checked = 0
    for depth in (2.0, 4.0, 8.0, 30.0):
        X = _backproject(centres[:, :2], torch.full((P,), depth, dtype=torch.float64), POSE0, Kc)
        uv1, z1 = _project(X, pose1, Kc)
        col = torch.floor((uv1[:, 0] + 0.5) / PATCH).long()
        row = torch.floor((uv1[:, 1] + 0.5) / PATCH).long()
        inside = (z1 > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        for a in torch.nonzero(inside).flatten().tolist():
            b = row[a] * w + col[a]
            assert D[0, a, P + b] <= half_diag + 1e-9
            assert bias[a, b] >= -s * _falloff(half_diag, sigma) - 1e-12
            assert bias[a, b] >= bias[a].max() - s * _falloff(half_diag, sigma)
            assert bias[a].argmax() == D[0, a, P:].argmin()          # the best key is the one nearest the line
            checked += 1
    assert checked >= 10
    # rectified stereo: the correspondence sits in the same patch row, on the line -> exactly the maximum, 0
    K, pose = _rig([POSE0, _pose([0, 0, 0], [1.0, 0, 0])])
    D = epipolar_distance(fundamental_matrices(K, pose), centres, h, w)
    bias = epipolar_bias(D, torch.tensor(s), sigma, 0, num_views=2)[0, 0, :P, P:]
    rows = torch.arange(h).repeat_interleave(w)
    same_row = rows[:, None] == rows[None, :]
    assert torch.equal(bias[same_row], torch.zeros_like(bias[same_row]))
    assert (bias[~same_row] < -0.5).all()


# --------------------------------------------------------------------------------------------------
# EpipolarPrior
# --------------------------------------------------------------------------------------------------


def test_epipolar_prior_shapes_order_and_gradient():
    B, T, V, S = 2, 3, 3, 5
    N = S + P
    K = _K(torch.float32).expand(B, V, 3, 3).clone()
    K[1] *= torch.tensor([[1.2, 1, 1], [1, 1.2, 1], [1, 1, 1]])                  # a different rig for b = 1
    pose = torch.stack([torch.stack([POSE0, POSE1, _pose([-3, 12, 1], [-0.8, 0.1, 0.3])]),
                        torch.stack([POSE0, _pose([0, 5, 0], [0.5, 0, 0]), _pose([1, -4, 0], [-0.6, 0.2, 0])])]
                       ).float()
    prior = EpipolarPrior()
    assert prior.strength.shape == () and prior.strength.item() == 0.0 and prior.sigma is None
    out = prior(K, pose, h, w, PATCH, S, T)
    assert out.shape == (B * T, 1, V * N, V * N) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))                                # identity at init

    with torch.no_grad():
        prior.strength.fill_(1.5)
    out = prior(K, pose, h, w, PATCH, S, T)
    for b in range(B):
        D = epipolar_distance(fundamental_matrices(K[b:b + 1], pose[b:b + 1]), patch_centres(h, w, PATCH), h, w)
        ref = epipolar_bias(D, prior.strength.detach(), float(PATCH), S, num_views=V)[0]     # sigma = patch
        for t in range(T):
            assert torch.equal(out[b * T + t].detach(), ref)                       # batch-major b * T + t
    assert not torch.allclose(out[0], out[T])                                     # the two rigs differ
    out.sum().backward()
    assert prior.strength.grad is not None and prior.strength.grad < 0

    # it plugs into attention as the aggregator's View-SA bias: x [B, T, V, N, C] -> [B*T, V*N, C]
    heads, d = 2, 4
    x = torch.randn(B, T, V, N, heads * d)
    q = x.reshape(B * T, V * N, heads, d).transpose(1, 2)                          # [B*T, heads, V*N, d]
    key_mask = torch.rand(B, T, V, N).reshape(B * T, 1, 1, V * N)                  # the mask bias, broadcast
    y = attend(q, q, q, attn_bias=out.detach() + key_mask)
    assert y.shape == q.shape and torch.isfinite(y).all()
    prior0 = EpipolarPrior(sigma=7.0)
    y0 = attend(q, q, q, attn_bias=prior0(K, pose, h, w, PATCH, S, T).detach() + key_mask)
    assert torch.allclose(y0, attend(q, q, q, attn_bias=key_mask), atol=1e-6)
