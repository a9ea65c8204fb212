"""VGGT's prediction heads (camera, depth, points) with VGGT / PAGE-4D checkpoint names.

A VGGT-style aggregator returns one token tensor per layer, ``tokens_list[i]`` of shape ``(B, S, 1 + R + P, 2C)``:
S frames, per frame the camera token (index 0), R register tokens, then P = (H / p) * (W / p) patch tokens in
row-major order, ``patch_start_idx = 1 + R`` (VGGT: R = 4, 2C = 2048, 24 layers, patch p = 14).

- ``CameraHead``: token 0 of the last layer -> a list of ``num_iterations`` pose encodings ``(B, S, 9)``
  (``absT_quaR_FoV``, decoded by ``models.geometry.pose_encoding``), each a refinement of the previous one.
- ``DPTHead``: patch tokens of four layers -> dense maps at the input resolution. Built by ``vggt_depth_head()``
  (depth ``(B, S, H, W, 1)`` with ``exp``, confidence ``(B, S, H, W)`` with ``1 + exp``) and ``vggt_point_head()``
  (world points ``(B, S, H, W, 3)`` with ``inv_log``, confidence ``(B, S, H, W)``).

Constructor defaults are the full VGGT-1B size, whose ``state_dict`` equals the ``camera_head.*``, ``depth_head.*``
and ``point_head.*`` tensors of VGGT-1B and PAGE-4D checkpoints name for name and shape for shape (tested against
``shared/checkpoint_layouts/page4d.json``), so those load with ``strict=True``. VGGT initialises nothing itself (torch
defaults, ``empty_pose_tokens`` zeros, LayerScale 0.01); neither does this file.

Parts reused from ``models/layers``: ``Block`` (the camera trunk: VGGT's block names and computation, LayerNorm eps
1e-5, no qk-norm, no RoPE) and ``Mlp`` (``pose_branch``: ``fc1``, GELU, ``fc2``). The DPT convolutions
(``ResidualConvUnit``, ``FusionBlock``, ``DPTScratch``) have no counterpart there and are written here with VGGT's
names (``resConfUnit1``, ``out_conv``, ``layer1_rn``, ``refinenet1`` ...).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Block, Mlp

POSE_ENCODING_DIMS = {"absT_quaR_FoV": 9}

# --------------------------------------------------------------------------------------------------
# Activations (VGGT's head_act)
# --------------------------------------------------------------------------------------------------


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) * (exp(|y|) - 1)``: the inverse of ``sign(x) * log(1 + |x|)``."""
    return torch.sign(y) * torch.expm1(y.abs())


_POSE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x, "inv_log": inverse_log_transform, "exp": torch.exp, "relu": F.relu}


def _norm_exp(xyz: torch.Tensor) -> torch.Tensor:
    d = xyz.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return xyz / d * torch.expm1(d)


def _xy_inv_log(xyz: torch.Tensor) -> torch.Tensor:
    xy, z = xyz.split([2, 1], dim=-1)
    z = inverse_log_transform(z)
    return torch.cat([xy * z, z], dim=-1)


_DENSE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp, "inv_log": inverse_log_transform, "norm_exp": _norm_exp,
    "norm": lambda x: x / x.norm(dim=-1, keepdim=True), "relu": F.relu, "xy_inv_log": _xy_inv_log,
    "sigmoid": torch.sigmoid, "linear": lambda x: x}

_CONF_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "expp1": lambda c: 1 + c.exp(), "expp0": torch.exp, "sigmoid": torch.sigmoid}


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; allowed: {sorted(table)}")
    return table[name]


def activate_pose(pose_enc: torch.Tensor, trans_act: str = "linear", quat_act: str = "linear",
                  fov_act: str = "relu") -> torch.Tensor:
    """``(..., 9)`` raw encoding -> activated: translation ``[:3]``, quaternion ``[3:7]``, fields of view ``[7:]``."""
    t, quat, fov = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7:]
    return torch.cat([_pick(_POSE_ACTIVATIONS, trans_act, "trans_act")(t),
                      _pick(_POSE_ACTIVATIONS, quat_act, "quat_act")(quat),
                      _pick(_POSE_ACTIVATIONS, fov_act, "fov_act")(fov)], dim=-1)


def activate_head(out: torch.Tensor, activation: str = "inv_log", conf_activation: str = "expp1"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C, H, W)`` -> values ``(N, H, W, C - 1)`` (channels ``:-1``), confidence ``(N, H, W)`` (last channel)."""
    fmap = out.permute(0, 2, 3, 1)                                                      # (N, H, W, C)
    values = _pick(_DENSE_ACTIVATIONS, activation, "activation")(fmap[..., :-1])
    conf = _pick(_CONF_ACTIVATIONS, conf_activation, "conf_activation")(fmap[..., -1])
    return values, conf


# --------------------------------------------------------------------------------------------------
# Camera head
# --------------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """DiT's AdaLN modulation ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


class CameraHead(nn.Module):
    """Camera token of the last layer -> ``num_iterations`` refined pose encodings, each ``(B, S, 9)``.

    Per iteration k (VGGT's ``trunk_fn``): the previous raw encoding (detached; a learnt ``empty_pose_tokens`` at
    k = 0) is embedded (``embed_pose``) and mapped by ``poseLN_modulation`` (SiLU, Linear) to ``shift, scale, gate``;
    ``x = tok + gate * modulate(adaln_norm(tok), shift, scale)`` with ``tok`` the ``token_norm``-ed camera tokens;
    ``x`` goes through the ``trunk`` of Blocks, ``trunk_norm`` and ``pose_branch`` (Mlp 2C -> C -> 9) to a delta that
    is added to the raw encoding; the list holds each iteration's encoding after ``activate_pose`` (translation and
    quaternion linear, fields of view ReLU by default).

    The trunk's sequence axis is the frame axis: the S camera tokens of a sample attend to each other (B, S, 2C).
    """

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, num_iterations: int = 4, pose_encoding_type: str = "absT_quaR_FoV",
                 trans_act: str = "linear", quat_act: str = "linear", fov_act: str = "relu"):
        super().__init__()
        self.target_dim = _pick(POSE_ENCODING_DIMS, pose_encoding_type, "pose_encoding_type")
        for name, act in (("trans_act", trans_act), ("quat_act", quat_act), ("fov_act", fov_act)):
            _pick(_POSE_ACTIVATIONS, act, name)
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.num_iterations = num_iterations
        self.trans_act, self.quat_act, self.fov_act = trans_act, quat_act, fov_act
        # construction order = VGGT's (state_dict order matches the checkpoint's)
        self.trunk = nn.Sequential(*(Block(dim_in, num_heads, mlp_ratio, init_values=init_values)
                                     for _ in range(trunk_depth)))
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.target_dim))
        self.embed_pose = nn.Linear(self.target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, self.target_dim)

    def forward(self, tokens_list: Sequence[torch.Tensor], num_iterations: int | None = None) -> list[torch.Tensor]:
        """``tokens_list[-1]`` (B, S, N, 2C) -> list of ``num_iterations`` (default the constructor's) (B, S, 9)."""
        tokens = self.token_norm(tokens_list[-1][:, :, 0])                                # (B, S, 2C)
        b, s, _ = tokens.shape
        pose_enc = None
        out = []
        for _ in range(num_iterations or self.num_iterations):
            if pose_enc is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(b, s, -1))           # (B, S, 2C)
            else:
                pose_enc = pose_enc.detach()                                              # no backprop through steps
                cond = self.embed_pose(pose_enc)
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)           # 3 x (B, S, 2C)
            x = tokens + gate * modulate(self.adaln_norm(tokens), shift, scale)
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))                      # (B, S, 9)
            pose_enc = delta if pose_enc is None else pose_enc + delta
            out.append(activate_pose(pose_enc, self.trans_act, self.quat_act, self.fov_act))
        return out


# --------------------------------------------------------------------------------------------------
# DPT head
# --------------------------------------------------------------------------------------------------

_INTERPOLATE_MAX = 1610612736   # VGGT's bound on output elements per interpolate call (INT_MAX issues on CUDA)


def interpolate(x: torch.Tensor, size: tuple[int, int] | None = None, scale_factor: float | None = None
                ) -> torch.Tensor:
    """Bilinear, ``align_corners=True`` resize of ``(N, C, h, w)``, split over N when the output is huge."""
    if size is None:
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements > _INTERPOLATE_MAX:
        chunks = torch.chunk(x, elements // _INTERPOLATE_MAX + 1, dim=0)
        return torch.cat([F.interpolate(c, size=size, mode="bilinear", align_corners=True) for c in chunks])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def uv_grid(width: int, height: int, aspect_ratio: float | None = None, dtype: torch.dtype | None = None,
            device: torch.device | None = None) -> torch.Tensor:
    """``(height, width, 2)`` (u, v) cell centres on the image plane normalised by its diagonal (MoGe / VGGT).

    u spans ``+-ar / sqrt(1 + ar^2) * (width - 1) / width``, v ``+-1 / sqrt(1 + ar^2) * (height - 1) / height``,
    ``ar`` the width / height ratio (default ``width / height``); top-left negative.
    """
    ar = width / height if aspect_ratio is None else aspect_ratio
    diag = (ar ** 2 + 1.0) ** 0.5
    span_x, span_y = ar / diag * (width - 1) / width, 1.0 / diag * (height - 1) / height
    u = torch.linspace(-span_x, span_x, width, dtype=dtype, device=device)
    v = torch.linspace(-span_y, span_y, height, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(u, v, indexing="xy")                                          # (height, width) each
    return torch.stack((uu, vv), dim=-1)


def sincos_embed(pos: torch.Tensor, dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """``(M,)`` -> ``(M, dim)``: ``[sin(pos w_i), cos(pos w_i)]``, ``w_i = omega_0^(-i / (dim / 2))``, i < dim / 2."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    dtype = torch.float32 if pos.device.type == "mps" else torch.float64                   # as VGGT
    omega = 1.0 / omega_0 ** (torch.arange(dim // 2, dtype=dtype, device=pos.device) / (dim / 2.0))
    angles = pos.reshape(-1).to(dtype)[:, None] * omega[None]                             # (M, dim / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def uv_embed(uv: torch.Tensor, dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """``(h, w, 2)`` -> ``(h, w, dim)``: first half embeds u (x), second half v (y)."""
    h, w, _ = uv.shape
    flat = uv.reshape(-1, 2)
    emb = torch.cat([sincos_embed(flat[:, 0], dim // 2, omega_0), sincos_embed(flat[:, 1], dim // 2, omega_0)], -1)
    return emb.view(h, w, dim)


def add_uv_pos_embed(x: torch.Tensor, aspect_ratio: float, ratio: float = 0.1) -> torch.Tensor:
    """``x (N, C, h, w) + 0.1 * uv_embed`` of an ``h x w`` grid spanning an image of ``aspect_ratio`` = W / H.

    VGGT's DPT ``_apply_pos_embed``: no parameters, so nothing of it is in the checkpoint. The grid is float32, the
    angles float64 (float32 on MPS) as VGGT's; the embedding is added in ``x``'s dtype (VGGT adds a float32 one).
    """
    n, c, h, w = x.shape
    emb = uv_embed(uv_grid(w, h, aspect_ratio, dtype=torch.float32, device=x.device), c) * ratio   # (h, w, C)
    return x + emb.permute(2, 0, 1).to(x.dtype)[None]


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))`` (3x3 convs with bias).

    The skip is ``relu(x)``, not ``x``: VGGT passes ``nn.ReLU(inplace=True)`` and applies it to the input first,
    which overwrites the input that is added back at the end (Depth Anything's DPT uses ``ReLU(False)``).
    VGGT's weights were trained with this, so it is reproduced here without the in-place write.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """RefineNet fusion: ``out_conv(resize(resConfUnit2(x + resConfUnit1(skip))))``.

    ``resize``: bilinear (align_corners) to ``size``, or x2 without it. Without a residual (``refinenet4``, the
    coarsest level) there is no ``skip`` and no ``resConfUnit1``.
    """

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
                ) -> torch.Tensor:
        if (skip is not None) != self.has_residual:
            raise ValueError("a skip input is needed exactly when the block has a residual unit")
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = interpolate(x, size=size) if size is not None else interpolate(x, scale_factor=2)
        return self.out_conv(x)


class DPTScratch(nn.Module):
    """VGGT's ``scratch``: ``layer{i}_rn`` 3x3 convs (no bias) to ``features``, ``refinenet{i}``, output convs.

    ``forward`` runs the fusion and ``output_conv1`` (VGGT's ``scratch_forward``); ``output_conv2`` (3x3 conv to
    ``head_hidden``, ReLU, 1x1 conv to ``output_dim``) is applied by the head after upsampling. With
    ``feature_only`` ``output_conv1`` keeps ``features`` channels and there is no ``output_conv2``.
    """

    def __init__(self, in_channels: Sequence[int], features: int, output_dim: int, feature_only: bool = False,
                 head_hidden: int = 32):
        super().__init__()
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = (
            nn.Conv2d(c, features, 3, padding=1, bias=False) for c in in_channels)
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_residual=False)
        if feature_only:
            self.output_conv1 = nn.Conv2d(features, features, 3, padding=1)
        else:
            self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            self.output_conv2 = nn.Sequential(nn.Conv2d(features // 2, head_hidden, 3, padding=1), nn.ReLU(),
                                              nn.Conv2d(head_hidden, output_dim, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """4 maps (finest first, sizes 4h, 2h, h, ceil(h / 2)) -> ``(N, features // 2 or features, 8h, 8w)``."""
        l1, l2, l3, l4 = (self.layer1_rn(feats[0]), self.layer2_rn(feats[1]), self.layer3_rn(feats[2]),
                          self.layer4_rn(feats[3]))                                        # (N, F, .) each
        out = self.refinenet4(l4, size=l3.shape[2:])                                      # (N, F, h, w)
        out = self.refinenet3(out, l3, size=l2.shape[2:])                                 # (N, F, 2h, 2w)
        out = self.refinenet2(out, l2, size=l1.shape[2:])                                 # (N, F, 4h, 4w)
        out = self.refinenet1(out, l1)                                                    # (N, F, 8h, 8w)
        return self.output_conv1(out)


class DPTHead(nn.Module):
    """Dense head on four aggregator layers (DPT, "Vision Transformers for Dense Prediction"; VGGT's ``DPTHead``).

    Per layer ``intermediate_layer_idx[i]``: patch tokens (B*S, P, 2C) -> ``norm`` -> map (B*S, 2C, h, w), h = H // p
    -> ``projects[i]`` (1x1 conv to ``out_channels[i]``) -> + UV sin-cos embedding (``pos_embed``) ->
    ``resize_layers[i]``: ConvTranspose x4, ConvTranspose x2, identity, 3x3 conv stride 2 (sizes 4h, 2h, h,
    ceil(h / 2)). The scratch fuses them coarse to fine (8h x 8w), the result is resized bilinearly to
    ``(h * p / down_ratio, w * p / down_ratio)`` (the input size when H and W are multiples of p), the embedding is
    added again, and ``output_conv2`` + ``activate_head`` give values ``(B, S, H, W, output_dim - 1)`` and confidence
    ``(B, S, H, W)``. With ``feature_only`` the output is the feature map ``(B, S, features, H, W)`` instead.
    """

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, output_dim: int = 4, activation: str = "inv_log",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23), pos_embed: bool = True,
                 feature_only: bool = False, down_ratio: int = 1, head_hidden: int = 32):
        super().__init__()
        if len(out_channels) != 4 or len(intermediate_layer_idx) != 4:
            raise ValueError(f"DPT reads exactly 4 layers: out_channels {list(out_channels)}, "
                             f"intermediate_layer_idx {list(intermediate_layer_idx)}")
        out_width = features if feature_only else features // 2
        if pos_embed and any(c % 4 for c in (*out_channels, out_width)):
            raise ValueError(f"the UV embedding needs widths divisible by 4: out_channels {list(out_channels)}, "
                             f"output_conv1 width {out_width} (features {features})")
        if not feature_only:
            _pick(_DENSE_ACTIVATIONS, activation, "activation")
            _pick(_CONF_ACTIVATIONS, conf_activation, "conf_activation")
            if output_dim < 2:
                raise ValueError(f"output_dim must be >= 2 (values + confidence), got {output_dim}")
        self.patch_size, self.down_ratio = patch_size, down_ratio
        self.activation, self.conf_activation = activation, conf_activation
        self.pos_embed, self.feature_only = pos_embed, feature_only
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1) for c in out_channels)
        c = out_channels
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = DPTScratch(out_channels, features, output_dim, feature_only, head_hidden)

    def forward(self, tokens_list: Sequence[torch.Tensor], images: torch.Tensor, patch_start_idx: int,
                frames_chunk_size: int | None = 8):
        """``tokens_list`` of (B, S, N, 2C), ``images`` (B, S, 3, H, W) (read for B, S, H, W only).

        Returns ``(values (B, S, H', W', output_dim - 1), conf (B, S, H', W'))``, or features
        ``(B, S, C', H', W')`` with ``feature_only``; ``H' = (H // p) * p / down_ratio``. Frames run in chunks of
        ``frames_chunk_size`` to bound memory (None: all at once); the result does not depend on it.
        """
        s = images.shape[1]
        if frames_chunk_size is None or frames_chunk_size >= s:
            return self._forward_frames(tokens_list, images.shape[-2:], patch_start_idx, slice(None))
        if frames_chunk_size < 1:
            raise ValueError(f"frames_chunk_size must be >= 1 or None, got {frames_chunk_size}")
        chunks = [self._forward_frames(tokens_list, images.shape[-2:], patch_start_idx, slice(i, i + frames_chunk_size))
                  for i in range(0, s, frames_chunk_size)]
        if self.feature_only:
            return torch.cat(chunks, dim=1)
        return torch.cat([c[0] for c in chunks], dim=1), torch.cat([c[1] for c in chunks], dim=1)

    def _forward_frames(self, tokens_list: Sequence[torch.Tensor], image_hw: tuple[int, int], patch_start_idx: int,
                        frames: slice):
        height, width = int(image_hw[0]), int(image_hw[1])
        ph, pw = height // self.patch_size, width // self.patch_size
        feats = []
        for i, layer in enumerate(self.intermediate_layer_idx):
            x = tokens_list[layer][:, frames, patch_start_idx:]                            # (B, s, P, 2C)
            b, s, p, c = x.shape
            if p != ph * pw:
                raise ValueError(f"layer {layer} has {p} patch tokens after patch_start_idx {patch_start_idx}; "
                                 f"a {height}x{width} image with patch {self.patch_size} has {ph}x{pw}")
            x = self.norm(x.reshape(b * s, p, c))                                          # (B*s, P, 2C)
            x = x.transpose(1, 2).reshape(b * s, c, ph, pw)                                # (B*s, 2C, h, w)
            x = self.projects[i](x)                                                        # (B*s, oc_i, h, w)
            if self.pos_embed:
                x = add_uv_pos_embed(x, width / height)
            feats.append(self.resize_layers[i](x))                                         # 4h, 2h, h, ceil(h/2)
        out = self.scratch(feats)                                                          # (B*s, C', 8h, 8w)
        out = interpolate(out, size=(int(ph * self.patch_size / self.down_ratio),
                                     int(pw * self.patch_size / self.down_ratio)))         # (B*s, C', H', W')
        if self.pos_embed:
            out = add_uv_pos_embed(out, width / height)
        if self.feature_only:
            return out.view(b, s, *out.shape[1:])                                          # (B, s, C', H', W')
        values, conf = activate_head(self.scratch.output_conv2(out), self.activation, self.conf_activation)
        return values.view(b, s, *values.shape[1:]), conf.view(b, s, *conf.shape[1:])      # (B, s, H', W', D-1)


def vggt_depth_head(**overrides) -> DPTHead:
    """VGGT's ``depth_head``: 2 outputs, depth ``exp`` (B, S, H, W, 1) and confidence ``1 + exp`` (B, S, H, W)."""
    return DPTHead(**{"output_dim": 2, "activation": "exp", "conf_activation": "expp1", **overrides})


def vggt_point_head(**overrides) -> DPTHead:
    """VGGT's ``point_head``: 4 outputs, world points ``inv_log`` (B, S, H, W, 3) and confidence ``1 + exp``."""
    return DPTHead(**{"output_dim": 4, "activation": "inv_log", "conf_activation": "expp1", **overrides})
