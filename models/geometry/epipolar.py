"""Epipolar prior for View-SA: an additive attention-logit bias that favours, for a patch query of view ``i``, the
key patches of every other view ``j`` whose centres lie near the query's epipolar line.

Conventions
-----------
* **Intrinsics** ``K [B, V, 3, 3]`` in pixels of the image the model sees (after any resize / crop), OpenCV pixel
  convention: pixel centres at integer coordinates, so the pixel ``(u, v)`` covers ``[u - 0.5, u + 0.5]`` and the
  image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; ``x_pix ~ K x_cam``.
* **Poses** ``cam_to_ref [B, V, 4, 4]`` (a ``[B, V, 3, 4]`` top part is accepted too): rigid camera-to-reference
  transforms, ``X_ref = R_i X_cam_i + t_i``, OpenCV camera axes (x right, y down, z forward). Any common
  reference frame works (only relative poses enter); translation units are free.
* **Fundamental matrices** ``F [B, V, V, 3, 3]``: ``F[b, i, j]`` maps a homogeneous pixel ``x_i`` of view ``i`` to
  the epipolar line ``l = F[b, i, j] @ x_i`` of view ``j`` (``l . x_j = 0`` for every pixel ``x_j`` of view ``j``
  seeing the same 3-D point: ``x_j^T F_ij x_i = 0``, OpenCV's ``findFundamentalMat(points_i, points_j)``
  convention). With ``T_ji = T_j^-1 T_i = [R | t]`` (camera ``i`` to camera ``j``), ``F_ij = K_j^-T [t]_x R K_i^-1``,
  and ``F_ji = F_ij^T``. Each ``F_ij`` is scaled to unit Frobenius norm (the scale of ``F`` is free; this keeps
  float32 well conditioned). ``F[i, i] = 0`` (no constraint within a view), and so is ``F[i, j]`` for a baseline
  ``|t| <= min_baseline`` (concentric cameras: no epipolar geometry, no bias).
* **Patches**: row-major on the ``h x w`` grid of patch size ``p``; patch ``(row, col)`` covers pixels
  ``col * p .. col * p + p - 1`` so its centre is ``((col + 0.5) p - 0.5, (row + 0.5) p - 0.5)``.
* **Distances** ``D [B, V*P, V*P]``: query index ``i * P + a`` (view ``i``, patch ``a``), key index ``j * P + b``;
  ``D`` is the pixel distance of key centre ``b`` from the line ``F_ij x_a`` (0 within a view and where ``F_ij = 0``).
* **Bias** ``[B, 1, V*N, V*N]`` over View-SA tokens ``[view 0: num_special specials, P patches; view 1: ...]``
  (the aggregator's ``x.reshape(B*T, V*N, C)`` for one time): ``-strength * (1 - exp(-D^2 / (2 sigma^2)))`` for
  patch-patch pairs of different views, 0 for same-view pairs and for any pair with a special token. With
  ``strength > 0`` it is 0 on the epipolar line and decreases (towards ``-strength``) with the distance; at
  ``strength = 0`` it is exactly 0 (the prior starts as the identity). It broadcasts over heads and adds to other
  key biases (e.g. the aggregator's ``[B*T, 1, 1, V*N]`` mask bias).

**Memory**: the bias is dense, ``(V*N)^2`` floats per sample (``D`` is ``(V*P)^2``): e.g. V = 6, a 518 x 518 image
with patch 14 (P = 1369, N = 1374 with 5 special tokens) gives 68M floats = 272 MB per sample in float32, and
``EpipolarPrior.forward`` materialises it for each of the ``B*T`` View-SA batches (``expand`` over ``T`` cannot be
a view once ``B`` and ``T`` are merged). Compute it once per forward and reuse it in every View-SA layer; the
gradient reaches ``strength`` only (and ``K`` / ``cam_to_ref`` if they require grad: detach them if not wanted).
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn


def _skew(t: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> the cross-product matrices (..., 3, 3): ``[t]_x v = t x v``."""
    x, y, z = t.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(t.shape + (3,))


def fundamental_matrices(K: torch.Tensor, cam_to_ref: torch.Tensor, min_baseline: float = 1e-6) -> torch.Tensor:
    """``K [B, V, 3, 3]``, ``cam_to_ref [B, V, 4, 4]`` (or ``[B, V, 3, 4]``) -> ``F [B, V, V, 3, 3]``.

    ``F[b, i, j] @ x_i`` is the epipolar line of pixel ``x_i`` (view ``i``) in view ``j``; ``x_j^T F_ij x_i = 0``.
    Computed in float64, unit Frobenius norm per pair, returned in ``K``'s dtype; the diagonal and pairs with a
    baseline ``<= min_baseline`` (pose units) are 0. See the module docstring for the conventions.
    """
    if K.shape[-2:] != (3, 3) or cam_to_ref.shape[-2:] not in ((4, 4), (3, 4)) or K.shape[:-2] != cam_to_ref.shape[:-2]:
        raise ValueError(f"expected K [B, V, 3, 3] and cam_to_ref [B, V, 4, 4], got {tuple(K.shape)}, "
                         f"{tuple(cam_to_ref.shape)}")
    dtype = K.dtype if K.is_floating_point() else torch.get_default_dtype()
    K64, pose = K.double(), cam_to_ref.double()
    R, t = pose[..., :3, :3], pose[..., :3, 3]                                    # [B, V, 3, 3], [B, V, 3]
    V = K.shape[-3]
    # T_ji = T_j^-1 T_i = [R_j^T R_i | R_j^T (t_i - t_j)]; index [b, i, j]
    Ri, Rj = R[:, :, None], R[:, None, :]                                         # [B, V, 1, 3, 3], [B, 1, V, 3, 3]
    R_ji = Rj.transpose(-1, -2) @ Ri                                              # [B, V, V, 3, 3]
    t_ji = (Rj.transpose(-1, -2) @ (t[:, :, None] - t[:, None, :])[..., None])[..., 0]   # [B, V, V, 3]
    E = _skew(t_ji) @ R_ji                                                        # x̂_j^T E x̂_i = 0
    Kinv = torch.linalg.inv(K64)                                                  # [B, V, 3, 3]
    Fm = Kinv[:, None, :].transpose(-1, -2) @ E @ Kinv[:, :, None]                # K_j^-T E K_i^-1
    norm = torch.linalg.matrix_norm(Fm)[..., None, None]                          # [B, V, V, 1, 1]
    keep = (t_ji.norm(dim=-1) > min_baseline) & ~torch.eye(V, dtype=torch.bool, device=K.device)
    Fm = torch.where(keep[..., None, None], Fm / norm.clamp_min(1e-300), torch.zeros_like(Fm))
    return Fm.to(dtype)


def patch_centres(h: int, w: int, patch: int, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[h*w, 3]`` homogeneous pixel centres ``((col + 0.5) p - 0.5, (row + 0.5) p - 0.5, 1)``, row-major."""
    dtype = dtype or torch.get_default_dtype()
    rows = torch.arange(h, device=device, dtype=dtype).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=dtype).repeat(h)
    return torch.stack([(cols + 0.5) * patch - 0.5, (rows + 0.5) * patch - 0.5, torch.ones_like(cols)], -1)


def epipolar_distance(F: torch.Tensor, centres: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F [B, V, V, 3, 3]``, ``centres [P, 3]`` (P = h*w) -> ``D [B, V*P, V*P]`` in pixels.

    ``D[b, i*P + a, j*P + b']`` = distance of key centre ``b'`` (view ``j``) from the epipolar line ``F_ij x_a`` of
    query centre ``a`` (view ``i``); 0 where ``F_ij = 0`` (same view, no baseline). Computed in ``F``'s dtype.
    """
    B, V = F.shape[:2]
    P = h * w
    if centres.shape != (P, 3):
        raise ValueError(f"centres must be [{P}, 3] for a {h} x {w} grid, got {tuple(centres.shape)}")
    c = centres.to(F)
    lines = torch.einsum("bijkl,al->bijak", F, c)                                # [B, V(i), V(j), P(a), 3]
    scale = lines[..., :2].norm(dim=-1, keepdim=True)                             # [B, V, V, P, 1]
    lines = lines / scale.clamp_min(torch.finfo(F.dtype).tiny)                   # 0 stays 0
    D = torch.einsum("bijak,ck->biajc", lines, c).abs()                           # [B, V(i), P(a), V(j), P(b)]
    return D.reshape(B, V * P, V * P)


def epipolar_bias(D: torch.Tensor, strength: torch.Tensor | float, sigma: float, num_special: int,
                  num_views: int | None = None) -> torch.Tensor:
    """``D`` -> additive View-SA logit bias ``[B, 1, V*N, V*N]`` with ``N = num_special + P``.

    ``D`` is ``[B, V*P, V*P]`` (from :func:`epipolar_distance`; then ``num_views = V`` is required, since ``V``
    and ``P`` cannot be told apart from the shape) or ``[B, V, P, V, P]``. The bias is
    ``-strength * (1 - exp(-D^2 / (2 sigma^2)))`` between patches of different views, 0 within a view and for any
    pair with a special token (each view's first ``num_special`` tokens). ``strength``: a scalar (tensor or float;
    gradients reach it); ``sigma`` in pixels. Token order ``[view 0: specials, patches; view 1: ...]``.
    """
    if D.dim() == 3:
        if num_views is None:
            raise ValueError("D [B, V*P, V*P] needs num_views=V (or pass D as [B, V, P, V, P])")
        B, L = D.shape[:2]
        if L % num_views or D.shape[2] != L:
            raise ValueError(f"D {tuple(D.shape)} is not [B, V*P, V*P] with V = {num_views}")
        D = D.view(B, num_views, L // num_views, num_views, L // num_views)
    elif D.dim() != 5 or D.shape[1:3] != D.shape[3:5] or (num_views is not None and D.shape[1] != num_views):
        raise ValueError(f"D must be [B, V*P, V*P] or [B, V, P, V, P], got {tuple(D.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    B, V, P = D.shape[:3]
    other = ~torch.eye(V, dtype=torch.bool, device=D.device)[:, None, :, None]      # [V, 1, V, 1]
    falloff = torch.where(other, 1 - torch.exp(-D.square() / (2.0 * sigma * sigma)), torch.zeros_like(D))
    if not torch.is_tensor(strength):
        strength = torch.tensor(float(strength), dtype=D.dtype, device=D.device)
    bias = -strength.to(D.dtype) * falloff                                         # [B, V, P, V, P]
    bias = nnf.pad(bias, (num_special, 0, 0, 0, num_special, 0))                     # [B, V, N, V, N]
    N = num_special + P
    return bias.reshape(B, 1, V * N, V * N)


class EpipolarPrior(nn.Module):
    """The View-SA epipolar bias with a learnable ``strength`` (initialised to 0: the prior starts as the identity).

    ``sigma``: the Gaussian width in pixels (None: the patch size given to :meth:`forward`). ``min_baseline``:
    camera pairs closer than this (pose units) get no bias. ``forward(K [B, V, 3, 3], cam_to_ref [B, V, 4, 4], h, w,
    patch, num_special, T) -> [B*T, 1, V*N, V*N]``: one fixed rig calibration for all ``T`` times, expanded in the
    aggregator's View-SA batch order ``b * T + t`` (``x [B, T, V, N, C] -> x.reshape(B*T, V*N, C)``). Memory:
    ``B*T*(V*N)^2`` floats (see the module docstring); the result has ``K``'s float dtype.
    """

    def __init__(self, sigma: float | None = None, min_baseline: float = 1e-6):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))
        self.sigma = sigma
        self.min_baseline = min_baseline

    def distance(self, K: torch.Tensor, cam_to_ref: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
        """``D [B, V*P, V*P]`` for the rig (no dependence on ``strength``)."""
        Fm = fundamental_matrices(K, cam_to_ref, self.min_baseline)
        return epipolar_distance(Fm, patch_centres(h, w, patch, device=Fm.device, dtype=Fm.dtype), h, w)

    def forward(self, K: torch.Tensor, cam_to_ref: torch.Tensor, h: int, w: int, patch: int, num_special: int,
                T: int) -> torch.Tensor:
        B, V = K.shape[:2]
        D = self.distance(K, cam_to_ref, h, w, patch)
        sigma = float(patch if self.sigma is None else self.sigma)
        bias = epipolar_bias(D, self.strength, sigma, num_special, num_views=V)     # [B, 1, V*N, V*N]
        L = bias.shape[-1]
        return bias[:, None].expand(B, T, 1, L, L).reshape(B * T, 1, L, L)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, min_baseline={self.min_baseline}"
