"""Training losses of the geometry model (VGGT's forms), one function per term.

Scale convention: nuScenes is metric, so the model is trained and evaluated in metres divided by one global
constant ``scale`` (``train_geometry.scale``, default 10 m): depth, world points and camera translations are in
units of ``scale`` metres in the loss, and predictions are multiplied back by ``scale`` before every metric. There is
no per-window normalisation (VGGT's mean-distance normalisation would make the unaligned metric meaningless).

* **camera**: for refinement iteration k of K, weight ``gamma^(K-1-k)`` (the last iteration weighs 1); per frame,
  ``|dt|_1 + |dq|_1 + |dfov|_1`` between predicted and true 9-D encodings (the true quaternion's sign is chosen to
  match the prediction, as q and -q are the same rotation); mean over frames.
* **depth** (aleatoric, VGGT's confidence-weighted form): over valid pixels, ``mean(c |d - g|) - alpha mean(log c)``
  with c the predicted confidence (> 1).
* **points**: the same form on world points (in the reference camera's frame) from the true depth.
* **mask** (optional): binary cross-entropy of the dynamic-mask logits against the share of each patch covered by
  the true dynamic mask (> 0.5 = dynamic), positives weighted by the batch's negative / positive ratio (<= 20).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def camera_loss(pose_enc_list: list[torch.Tensor], target: torch.Tensor, gamma: float = 0.6) -> torch.Tensor:
    """``pose_enc_list``: K tensors [..., 9]; ``target`` [..., 9] (quaternion scalar-last, any sign)."""
    K = len(pose_enc_list)
    total = pose_enc_list[0].new_zeros(())
    for k, pred in enumerate(pose_enc_list):
        q_pred, q_true = pred[..., 3:7], target[..., 3:7]
        sign = torch.where((q_pred * q_true).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        err = ((pred[..., :3] - target[..., :3]).abs().sum(-1) + (q_pred - sign * q_true).abs().sum(-1)
               + (pred[..., 7:] - target[..., 7:]).abs().sum(-1))
        total = total + gamma ** (K - 1 - k) * err.mean()
    return total


def aleatoric_loss(pred: torch.Tensor, conf: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                   alpha: float = 0.2) -> torch.Tensor:
    """``pred``/``target`` [..., H, W, D] (D = 1 depth, 3 points), ``conf``/``valid`` [..., H, W]."""
    v = valid.to(pred.dtype)
    n = v.sum().clamp_min(1.0)
    err = (pred - target).abs().sum(-1)                                          # [..., H, W]
    return (conf * err * v).sum() / n - alpha * (torch.log(conf) * v).sum() / n


def mask_loss(logits: torch.Tensor, dynamic_share: torch.Tensor, max_pos_weight: float = 20.0) -> torch.Tensor:
    """``logits`` [..., P]; ``dynamic_share`` [..., P] in [0, 1] (share of the patch on a moving object). Moving
    patches are rare (a few %), so positives are weighted by the batch's negative / positive ratio (at most
    ``max_pos_weight``): a plain BCE is minimised by calling everything static."""
    target = (dynamic_share > 0.5).to(logits.dtype)
    pos = target.sum()
    weight = ((target.numel() - pos) / pos.clamp_min(1.0)).clamp(1.0, max_pos_weight)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight.detach())


def depth_to_world_points(depth: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """Depth [..., H, W] (camera z), intrinsics [..., 3, 3], world-to-camera extrinsics [..., 3, 4] -> world points
    [..., H, W, 3]: ``X = R^T (d K^-1 [u, v, 1] - t)`` at pixel centres (u = column, v = row)."""
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(H, dtype=depth.dtype, device=depth.device),
                          torch.arange(W, dtype=depth.dtype, device=depth.device), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)                         # [H, W, 3]
    rays = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(intrinsics), pix)  # [..., H, W, 3]
    cam = rays * depth[..., None]
    R, t = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    return torch.einsum("...ji,...hwj->...hwi", R, cam - t[..., None, None, :])
