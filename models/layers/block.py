"""Pre-LN transformer blocks with optional LayerScale and drop-path (DINOv2 / VGGT names).

``Block``:      ``x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))``
``CrossBlock``: ``x += ls1(attn(norm1(x))); x += ls2(cross_attn(norm2(x), memory)); x += ls3(mlp(norm3(x)))``
Without ``init_values`` the ``ls*`` are identities and hold no parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers.attention import Attention, CrossAttention
from models.layers.drop_path import DropPath
from models.layers.layer_scale import LayerScale
from models.layers.mlp import Mlp


def _scale(dim: int, init_values: float | None) -> nn.Module:
    return LayerScale(dim, init_values) if init_values else nn.Identity()


def _drop(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class Block(nn.Module):
    """``forward(x (B, L, D), pos=None, attn_mask=None, attn_bias=None) -> (B, L, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, qk_norm: bool = False,
                 init_values: float | None = None, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 act_layer: type[nn.Module] = nn.GELU, rope: nn.Module | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm, rope=rope)
        self.ls1 = _scale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, bias=ffn_bias)
        self.ls2 = _scale(dim, init_values)
        self.drop_path = _drop(drop_path)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), pos, attn_mask, attn_bias)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class CrossBlock(nn.Module):
    """``forward(x (B, Lq, D), memory (B, Lk, kv_dim), memory_mask=None, memory_bias=None) -> (B, Lq, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, kv_dim: int | None = None,
                 qkv_bias: bool = True, qk_norm: bool = False, init_values: float | None = None,
                 drop_path: float = 0.0, norm_eps: float = 1e-5, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.ls1 = _scale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = CrossAttention(dim, num_heads, kv_dim=kv_dim, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.ls2 = _scale(dim, init_values)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls3 = _scale(dim, init_values)
        self.drop_path = _drop(drop_path)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                memory_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path(self.ls2(self.cross_attn(self.norm2(x), memory, memory_mask, memory_bias)))
        return x + self.drop_path(self.ls3(self.mlp(self.norm3(x))))
