"""DINOv2 ViT encoder with register tokens: the image encoder of a VGGT-style geometry model.

State-dict keys and shapes are those of VGGT / PAGE-4D's ``aggregator.patch_embed.*`` and (apart from
``mask_token``, which Pi3 deletes) Pi3's ``encoder.*`` (``shared/checkpoint_layouts/page4d.json``, ``pi3.json``;
``shared/design/checkpoints.md`` §1, §4), so either checkpoint loads by stripping its prefix::

    cls_token [1, 1, C]   pos_embed [1, 1 + G*G, C]   register_tokens [1, R, C]   mask_token [1, C]
    patch_embed.proj.{weight, bias}   (conv p x p, stride p)
    blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}   norm

Computation (DINOv2's ``prepare_tokens_with_masks`` and ``forward_features``)::

    images (N, 3, H, W), H and W multiples of p
      -> patch tokens (N, P, C), P = (H/p)(W/p) row-major; where ``masks`` (N, P) is True: mask_token
      -> [cls, patches] + pos_embed resampled to the (H/p, W/p) grid (cls row kept as is)
      -> [cls, registers, patches]        registers are inserted after the pos embedding: they get none
      -> ``depth`` pre-LN blocks (LayerNorm eps 1e-6, fused qkv with bias, no qk-norm, LayerScale)
      -> final LayerNorm; the patch tokens of it are DINOv2's ``x_norm_patchtokens`` (what VGGT and Pi3 use)

The pos-embed resampling is DINOv2's ``interpolate_pos_encoding`` with ``interpolate_antialias=True`` and
``interpolate_offset=0.0`` (VGGT's and Pi3's settings): bicubic, antialiased, to an output *size* (not a scale
factor), computed in float32 or wider and cast back. :func:`resample_pos_embed` is that step alone, for the
forward pass and for converting a checkpoint to a model built at another ``img_size`` (37x37 -> 27x27 for 378 px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.common.params import ConfigError
from models.layers import Block, PatchEmbed


@dataclass(frozen=True)
class DinoV2Config:
    """Architecture of the encoder; the defaults are DINOv2 ViT-L/14 reg4 at 518 px (VGGT, PAGE-4D, Pi3)."""

    img_size: int = 518             # square training size: pos_embed holds a (img_size / patch_size)^2 grid
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    init_values: float = 1.0        # LayerScale init (ls1.gamma, ls2.gamma); 0 = no LayerScale
    norm_eps: float = 1e-6          # every LayerNorm (norm1, norm2, final norm)
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    drop_path_rate: float = 0.0     # stochastic depth, rising linearly from 0 to this over the blocks

    def __post_init__(self) -> None:
        def fail(key: str, why: str):
            raise ConfigError("DinoV2Config", key, getattr(self, key), why)

        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        if self.num_register_tokens < 0:
            fail("num_register_tokens", "must be >= 0")
        if self.img_size % self.patch_size:
            fail("img_size", f"must be a multiple of patch_size = {self.patch_size}")
        if self.embed_dim % self.num_heads:
            fail("embed_dim", f"must be divisible by num_heads = {self.num_heads}")
        if self.mlp_ratio <= 0:
            fail("mlp_ratio", "must be > 0")
        if self.norm_eps <= 0:
            fail("norm_eps", "must be > 0")
        if not 0.0 <= self.drop_path_rate < 1.0:
            fail("drop_path_rate", "must lie in [0, 1)")

    @property
    def grid(self) -> int:
        """Patches per side of the training size (37 for 518 px at patch 14)."""
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: cls + registers (5 for reg4)."""
        return 1 + self.num_register_tokens


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + G*G, C) -> (1, 1 + gh*gw, C)``: the square patch grid resampled to ``(gh, gw)``, cls row kept.

    Bicubic with antialias, to an output size (DINOv2 with ``interpolate_offset=0``), computed in float32 (or
    float64 for float64 input) and returned in the input dtype. The same grid returns the input unchanged."""
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, 1 + G*G, C), got {tuple(pos_embed.shape)}")
    gh, gw = (int(v) for v in new_grid)
    if gh < 1 or gw < 1:
        raise ValueError(f"new_grid must be positive, got {tuple(new_grid)}")
    n, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"pos_embed holds {n} patch rows, not a square grid (shape {tuple(pos_embed.shape)})")
    if (gh, gw) == (g, g):
        return pos_embed
    work = torch.float64 if pos_embed.dtype == torch.float64 else torch.float32
    grid = pos_embed[:, 1:].to(work).reshape(1, g, g, dim).permute(0, 3, 1, 2)             # (1, C, G, G)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)                            # (1, gh*gw, C)
    return torch.cat((pos_embed[:, :1].to(work), patches), dim=1).to(pos_embed.dtype)


class DinoV2Encoder(nn.Module):
    """``forward(images (N, 3, H, W), masks=None, return_all_tokens=False)``.

    Returns the normalised patch tokens ``(N, P, C)``, P = (H/p)(W/p) row-major; with ``return_all_tokens`` also
    the whole normalised sequence ``(N, 1 + R + P, C)`` = [cls, registers, patches] as a second element.
    Images are expected already normalised (ImageNet mean/std for the released weights)."""

    def __init__(self, cfg: DinoV2Config = DinoV2Config()):
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        # registration order = the checkpoints' key order
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid * cfg.grid, c))
        self.register_tokens = (nn.Parameter(torch.zeros(1, cfg.num_register_tokens, c))
                                if cfg.num_register_tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, c))
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, c)
        # stochastic depth 0 .. drop_path_rate linearly (DINOv2's linspace), in Python so it also builds on meta
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(c, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                  ffn_bias=cfg.ffn_bias, qk_norm=False, init_values=cfg.init_values or None, drop_path=rate,
                  norm_eps=cfg.norm_eps)
            for rate in rates)
        self.norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2's: pos_embed trunc-normal 0.02, cls / registers normal 1e-6, Linear trunc-normal 0.02 + zero bias."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of patches of an input of this size; ValueError unless both are multiples of the patch."""
        p = self.cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} (HxW) is not a multiple of the patch size {p}")
        return height // p, width // p

    def prepare_tokens(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) -> [cls, registers, patches] (N, 1 + R + P, C) before the blocks."""
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        gh, gw = self.patch_grid(images.shape[-2], images.shape[-1])
        x = self.patch_embed(images)                                                     # (N, P, C)
        if masks is not None:
            if masks.shape != x.shape[:2]:
                raise ValueError(f"masks must be (N, P) = {tuple(x.shape[:2])}, got {tuple(masks.shape)}")
            x = torch.where(masks.to(torch.bool).unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x), dim=1)  # (N, 1 + P, C)
        x = x + resample_pos_embed(self.pos_embed, (gh, gw)).to(x.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.to(x.dtype).expand(x.shape[0], -1, -1)           # (N, R, C)
            x = torch.cat((x[:, :1], regs, x[:, 1:]), dim=1)                             # (N, 1 + R + P, C)
        return x

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None, return_all_tokens: bool = False):
        x = self.prepare_tokens(images, masks)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)                                                                 # (N, 1 + R + P, C)
        patches = x[:, self.cfg.num_prefix_tokens:]                                      # (N, P, C)
        return (patches, x) if return_all_tokens else patches
