"""The temporal multi-view aggregator: DINOv2 patch tokens, then alternating Time-SA and View-SA, a dynamic mask
head at ``mask_layer`` and, from there on, a pose stream and a geometry stream with attention-logit biases.

Tokens per frame ``(t, v)``: ``[camera, R registers, P patches]`` (N = 1 + R + P). The camera and register tokens
have VGGT's two slots: slot 0 for the **reference frame (t = 0, v = 0)**, slot 1 for every other frame; camera poses
are expressed relative to that frame. Patches carry 2-D RoPE at (row + 1, col + 1); special tokens sit at (0, 0),
where the rotation is the identity.

* **Time-SA** (fixed view, across times): ``[B*V, T*N, C]``; **View-SA** (fixed time, across views):
  ``[B*T, V*N, C]``; each layer runs them in ``aa_order`` (default time then view: Pi3 runs frame before global,
  and Time-SA comes from frame blocks, View-SA from global blocks).
* **Mask**: the mask head reads the patch tokens of layer ``mask_layer - 1``'s Time-SA output (detached, as PAGE-4D
  does) and gives ``M~ [B, T, V, P]``; :class:`MaskGate` fuses it with an optional external mask into
  ``M``. ``m_j`` is ``M`` at patch keys and 0 at camera and register keys.
* **Two streams** from ``mask_layer`` on (``two_stream``): the pose stream runs with the additive key bias
  ``-lambda_pose * m_j`` and feeds the camera head, the geometry stream with ``+lambda_geo * m_j`` feeds depth and
  points; one lambda per stream and attention kind, all initialised to 0 so a converted model computes what its
  sources computed. ``shared``: the same blocks run twice; ``separate``: the pose stream has its own copies
  (``pose_time_blocks`` / ``pose_view_blocks``, converted from the same source blocks); ``off``: one stream and no
  bias (the mask is still predicted). ``use_mask: false`` runs no mask head at all (no M, no bias; ``mask`` is None).

* **Epipolar prior** (``epipolar``, with calibration given): in View-SA an additive bias
  ``-s (1 - exp(-d^2 / 2 sigma^2))`` between patches of different views, d the distance in pixels of the key
  patch's centre to the epipolar line of the query patch's centre (:mod:`models.geometry.epipolar`); ``s`` is one
  learnable scalar initialised to 0, so a converted model is unchanged until training moves it.
* **Sparse global attention** (``global_every`` = k > 0): after every k-th layer, a
  :class:`~models.geometry.sparse_global.SparseGlobalAttention` block lets every token of the sample attend to a
  subset of all ``T*V*N`` tokens (``global_strategy``: landmarks = special tokens + the top-K patches per frame by
  the dynamic mask M, or by token norm before the mask exists; dilated = special tokens + a strided patch grid;
  memory = special tokens + learnable memory tokens). Its block is converted from the layer's View-SA source block
  (the global attention of Pi3 / PAGE-4D); memory tokens are new. In a biased stream it gets the View-SA bias.

Each layer's output is ``concat(first attention out, second attention out)`` per stream (the second after the sparse
global block when the layer has one), ``[B, T*V, N, 2C]`` with frames in (t, v) order, as VGGT's heads expect.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import Block, RotaryEmbedding2D, grid_positions
from models.layers.rope import _angles

from .config import GeometryConfig
from .encoder import DinoV2Config, DinoV2Encoder
from .epipolar import EpipolarPrior
from .mask_head import DynamicMaskHead, MaskGate, patch_mask
from .sparse_global import SparseGlobalAttention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAMBDAS = ("lambda_pose_time", "lambda_pose_view", "lambda_geo_time", "lambda_geo_view")


def encoder_config(cfg: GeometryConfig) -> DinoV2Config:
    return DinoV2Config(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                        depth=cfg.encoder_depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                        num_register_tokens=cfg.num_register_tokens)


class SpaceTimeRope(RotaryEmbedding2D):
    """2-D RoPE on (row, col) plus a relative time rotation: ``pos (L, 3) = (row, col, t)``. Each rotate-half pair
    turns by its 2-D angle plus ``t * theta_t^(-2i/d)`` over the whole head, so the score of two tokens depends on
    their time offset only, and tokens of the same time see exactly the 2-D rotation (time_rope option)."""

    def __init__(self, theta: float, time_theta: float):
        super().__init__(theta)
        self.time_theta = float(time_theta)

    def cos_sin(self, pos: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        half = dim // 2
        space = torch.cat((_angles(pos[..., 0], half, self.theta), _angles(pos[..., 1], half, self.theta)), dim=-1)
        t = _angles(pos[..., 2], dim // 2, self.time_theta)                      # (..., d/2): one per pair
        quarter = dim // 4
        t = torch.cat((t[..., :quarter], t[..., :quarter], t[..., quarter:], t[..., quarter:]), dim=-1)
        ang = space + t
        return ang.cos(), ang.sin()


def _blocks(cfg: GeometryConfig, rope: nn.Module, layers: range) -> nn.ModuleList:
    return nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, qk_norm=True,
                               init_values=0.01, norm_eps=cfg.layer_norm_eps(i), rope=rope) for i in layers)


class Aggregator(nn.Module):
    def __init__(self, cfg: GeometryConfig):
        super().__init__()
        self.cfg = cfg
        C, R = cfg.embed_dim, cfg.num_register_tokens
        self.patch_embed = DinoV2Encoder(encoder_config(cfg))
        self.rope = RotaryEmbedding2D(cfg.rope_theta)
        self.time_rope = SpaceTimeRope(cfg.rope_theta, cfg.time_rope_theta) if cfg.time_rope else self.rope
        self.time_blocks = _blocks(cfg, self.time_rope, range(cfg.depth))
        self.view_blocks = _blocks(cfg, self.rope, range(cfg.depth))
        self.mask_layer = cfg.layer_of_mask
        if cfg.two_stream == "separate":          # index k is layer mask_layer + k
            self.pose_time_blocks = _blocks(cfg, self.time_rope, range(self.mask_layer, cfg.depth))
            self.pose_view_blocks = _blocks(cfg, self.rope, range(self.mask_layer, cfg.depth))
        self.global_layers = cfg.global_layers
        if self.global_layers:                    # index k follows layer global_layers[k]
            self.sparse_blocks = nn.ModuleList(
                SparseGlobalAttention(C, cfg.num_heads, cfg.global_strategy, num_landmarks=cfg.global_landmarks,
                                      stride=cfg.global_stride, num_memory=cfg.global_memory,
                                      mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.layer_norm_eps(i), rope=self.rope)
                for i in self.global_layers)
        if cfg.epipolar:
            self.epipolar = EpipolarPrior(sigma=cfg.epipolar_sigma or None)
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, R, C) * 1e-6)
        self.spatial_mask_head = DynamicMaskHead(C, cfg.mask_head, cfg.mask_hidden_dim)
        self.mask_gate = MaskGate(cfg.mask_gating)
        for name in LAMBDAS:
            self.register_parameter(name, nn.Parameter(torch.zeros(())))
        self.patch_start_idx = 1 + R
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------------------ pieces
    def _special(self, token: torch.Tensor, B: int, T: int, V: int) -> torch.Tensor:
        """(1, 2, X, C) -> (B, T, V, X, C): slot 0 at the reference frame (0, 0), slot 1 elsewhere."""
        out = token[:, 1:2].expand(B, T * V, *token.shape[2:]).clone()
        out[:, 0] = token[:, 0]
        return out.view(B, T, V, *token.shape[2:])

    def _block(self, kind: str, layer: int, stream: str) -> Block:
        if stream == "pose" and self.cfg.two_stream == "separate" and layer >= self.mask_layer:
            return (self.pose_time_blocks if kind == "time" else self.pose_view_blocks)[layer - self.mask_layer]
        return (self.time_blocks if kind == "time" else self.view_blocks)[layer]

    def _attend(self, kind: str, block: Block, x: torch.Tensor, pos: torch.Tensor,
                key_mask: torch.Tensor | None, strength: torch.Tensor | None,
                view_bias: torch.Tensor | None = None) -> torch.Tensor:
        """One Time-SA or View-SA block on tokens (B, T, V, N, C); ``key_mask`` (B, T, V, N) times ``strength`` is
        the additive key bias (None: no bias); ``view_bias`` [B*T, 1, V*N, V*N] is added in View-SA (epipolar)."""
        B, T, V, N, C = x.shape
        if kind == "time":
            seq = x.permute(0, 2, 1, 3, 4).reshape(B * V, T * N, C)               # [B*V, T*N, C]
            p = pos.repeat(T, 1)
            if self.cfg.time_rope:                                                # (row, col, t)
                t = torch.arange(T, device=pos.device).repeat_interleave(N)[:, None]
                p = torch.cat([p, t], dim=-1)
            bias = None if key_mask is None else \
                (strength * key_mask.permute(0, 2, 1, 3).reshape(B * V, 1, 1, T * N))
        else:
            seq = x.reshape(B * T, V * N, C)                                      # [B*T, V*N, C]
            p = pos.repeat(V, 1)
            bias = None if key_mask is None else (strength * key_mask.reshape(B * T, 1, 1, V * N))
            if view_bias is not None:
                bias = view_bias if bias is None else bias + view_bias
        if self.cfg.activation_checkpointing and self.training:
            out = checkpoint(block, seq, p, None, bias, use_reentrant=False)
        else:
            out = block(seq, pos=p, attn_bias=bias)
        if kind == "time":
            return out.view(B, V, T, N, C).permute(0, 2, 1, 3, 4)
        return out.view(B, T, V, N, C)

    def _strength(self, stream: str, kind: str) -> torch.Tensor | None:
        if stream == "pose":
            return -getattr(self, f"lambda_pose_{kind}")
        if stream == "geo":
            return getattr(self, f"lambda_geo_{kind}")
        return None

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, external_mask: torch.Tensor | None = None,
                intrinsics: torch.Tensor | None = None, cam_to_ref: torch.Tensor | None = None) -> dict:
        """``images [B, T, V, 3, H, W]`` in [0, 1] (``[B, S, 3, H, W]`` is read as V = 1); ``external_mask``
        ``[B, T, V, H, W]`` in [0, 1] or None; ``intrinsics [B, V, 3, 3]`` (pixels of the input) and ``cam_to_ref
        [B, V, 4, 4]`` (camera v to view 0 of the same time, OpenCV axes; a fixed rig) for the epipolar prior
        (``epipolar``; without them no prior). Returns ``pose`` and ``geo``: lists of ``depth`` tensors
        ``[B, T*V, N, 2C]`` (the same list twice without two streams), ``mask_logits [B, T, V, P]`` (M~), ``mask``
        ``[B, T, V, P]`` (M), ``grid`` (h, w), ``patch_start_idx``."""
        if images.dim() == 5:
            images = images[:, :, None]
        if images.dim() != 6 or images.shape[3] != 3:
            raise ValueError(f"images must be [B, T, V, 3, H, W] or [B, S, 3, H, W], got {tuple(images.shape)}")
        B, T, V, _, H, W = images.shape
        ps = self.cfg.patch_size
        if H % ps or W % ps:
            raise ValueError(f"image size {H} x {W} is not a multiple of the patch size {ps}")
        h, w = H // ps, W // ps
        x = (images.reshape(B * T * V, 3, H, W) - self._mean) / self._std
        patches = self.patch_embed(x).view(B, T, V, h * w, -1)                       # [B, T, V, P, C]
        tokens = torch.cat([self._special(self.camera_token, B, T, V),
                            self._special(self.register_token, B, T, V), patches], dim=3)   # [B, T, V, N, C]
        N = tokens.shape[3]
        pos = torch.cat([torch.zeros(self.patch_start_idx, 2, dtype=torch.long, device=images.device),
                         grid_positions(h, w, offset=1, device=images.device)])          # [N, 2]
        ext = None if external_mask is None else patch_mask(external_mask, ps)          # [B, T, V, P]
        epi = None
        if self.cfg.epipolar and intrinsics is not None and cam_to_ref is not None and V > 1:
            epi = self.epipolar(intrinsics.to(x.dtype), cam_to_ref.to(x.dtype), h, w, ps, self.patch_start_idx, T)

        two = self.cfg.two_stream != "off"
        streams = {"main": tokens}
        outputs: dict[str, list] = {"main": []}
        key_mask = mask_logits = mask = None
        for layer in range(self.cfg.depth):
            if two and layer == self.mask_layer:
                streams = {"pose": streams["main"], "geo": streams["main"]}
                outputs = {"pose": list(outputs["main"]), "geo": list(outputs["main"])}
            for stream, x in list(streams.items()):
                parts = []
                for kind in self.cfg.aa_order:
                    biased = key_mask is not None and stream != "main"
                    x = self._attend(kind, self._block(kind, layer, stream), x, pos,
                                     key_mask if biased else None, self._strength(stream, kind) if biased else None,
                                     epi if kind == "view" else None)
                    parts.append(x)
                    if kind == self.cfg.aa_order[-1] and layer in self.global_layers:
                        g = self.sparse_blocks[self.global_layers.index(layer)]
                        bias = None if not biased else self._strength(stream, "view") * key_mask
                        x = g(x, pos, self.patch_start_idx, score=mask, grid=(h, w), key_bias=bias)
                        parts[-1] = x
                    if kind == "time" and layer == self.mask_layer - 1 and self.cfg.use_mask:
                        feats = x[:, :, :, self.patch_start_idx:].detach()               # [B, T, V, P, C]
                        mask_logits = self.spatial_mask_head(feats.reshape(B * T * V, h * w, -1), (h, w))
                        mask_logits = mask_logits.view(B, T, V, h * w)
                        mask = self.mask_gate(mask_logits, ext)
                        key_mask = torch.cat([mask.new_zeros(B, T, V, self.patch_start_idx), mask], dim=-1)
                streams[stream] = x
                outputs[stream].append(torch.cat(parts, dim=-1).view(B, T * V, N, -1))   # [B, T*V, N, 2C]
        pose = outputs["pose"] if two else outputs["main"]
        geo = outputs["geo"] if two else outputs["main"]
        return {"pose": pose, "geo": geo, "mask_logits": mask_logits, "mask": mask, "grid": (h, w),
                "patch_start_idx": self.patch_start_idx, "shape": (B, T, V)}
