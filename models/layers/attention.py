"""Multi-head self- and cross-attention through ``scaled_dot_product_attention``.

Masks: ``attn_mask`` is boolean, True = may attend; ``attn_bias`` is an additive float logit bias. Both broadcast
to ``(B, heads, Lq, Lk)`` and may be given together (the bias where the mask allows, -inf elsewhere).
``Attention`` keeps DINOv2 / VGGT names: a fused ``qkv`` (rows q | k | v, heads contiguous), optional per-head
LayerNorms ``q_norm`` / ``k_norm`` (qk-norm), ``proj``; with a ``rope`` module and per-token positions, q and k
are rotated after qk-norm (as VGGT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b, length, c = x.shape
    return x.view(b, length, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def _sdpa_mask(attn_mask: torch.Tensor | None, attn_bias: torch.Tensor | None, dtype: torch.dtype):
    """One ``attn_mask`` argument for SDPA from a boolean mask and/or an additive bias."""
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be boolean (True = may attend), got {attn_mask.dtype}; "
                        "pass an additive float bias as attn_bias")
    if attn_bias is None:
        return attn_mask
    if not attn_bias.is_floating_point():
        raise TypeError(f"attn_bias must be a float tensor, got {attn_bias.dtype}")
    bias = attn_bias.to(dtype)
    if attn_mask is not None:
        bias = bias.masked_fill(~attn_mask, float("-inf"))
    return bias


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
           attn_bias: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """SDPA over (B, heads, L, d) tensors with the mask conventions of this module."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(attn_mask, attn_bias, q.dtype),
                                          dropout_p=dropout_p)


class Attention(nn.Module):
    """Self-attention ``(B, L, D) -> (B, L, D)``; ``forward(x, pos=None, attn_mask=None, attn_bias=None)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False, norm_eps: float = 1e-5, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rope: nn.Module | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, h, L, d) each
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        y = attend(q, k, v, attn_mask, attn_bias, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(merge_heads(y)))                                   # (B, L, D)


class CrossAttention(nn.Module):
    """Queries from ``x`` (B, Lq, D), keys and values from ``memory`` (B, Lk, kv_dim): ``q``, ``kv``, ``proj``."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, qkv_bias: bool = True,
                 proj_bias: bool = True, qk_norm: bool = False, norm_eps: float = 1e-5, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, attn_mask: torch.Tensor | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q_norm(split_heads(self.q(x), self.num_heads))                               # (B, h, Lq, d)
        k, v = (split_heads(t, self.num_heads) for t in self.kv(memory).chunk(2, dim=-1))   # (B, h, Lk, d)
        y = attend(q, self.k_norm(k), v, attn_mask, attn_bias, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(merge_heads(y)))                                      # (B, Lq, D)
