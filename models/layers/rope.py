"""Rotary position embeddings: 1-D (time) and 2-D (row, column), rotate-half pairing.

1-D: channel pairs ``(i, i + d/2)`` of a head of width ``d`` rotate by ``pos * theta^(-2i/d)``.
2-D (VGGT's ``RotaryPositionEmbedding2D`` and Pi3's ``RoPE2D`` convention, and the planner's): the first half of
the head is a 1-D rotation by the row, the second half a 1-D rotation by the column, each with its own rotate-half
pairing and frequencies ``theta^(-2i/(d/2))``.

Positions are given per token, so special tokens (camera, registers) can sit at position 0, where the rotation is
the identity (VGGT puts patches at ``(row + 1, col + 1)`` for that reason). The attention score of a rotated query
and key depends only on their position offset (tested).
"""
from __future__ import annotations

import torch
from torch import nn


def _angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Angles (..., dim) for positions (...): pairs (i, i + dim/2) share the frequency theta^(-2i/dim)."""
    dtype = torch.float64 if pos.dtype == torch.float64 else torch.float32   # angles never below float32
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=dtype, device=pos.device) / dim)  # (dim/2,)
    ang = pos.to(dtype)[..., None] * inv_freq                                             # (..., dim/2)
    return torch.cat((ang, ang), dim=-1)                                                          # (..., dim)


def _angle_dtype(pos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Positions as float64 for a float64 input (exact rotations in float64 checks), unchanged otherwise."""
    return pos.to(torch.float64) if x.dtype == torch.float64 and pos.dtype != torch.float64 else pos


def _for_heads(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """cos/sin (L, d) or (B, L, d) -> broadcastable to x (B, heads, L, d), in x's dtype."""
    if t.dim() == 3:
        t = t[:, None]
    return t.to(x.dtype)


class RotaryEmbedding1D(nn.Module):
    """``forward(x (B, heads, L, d), pos (L,) or (B, L))``: x rotated by its token's 1-D position."""

    def __init__(self, theta: float = 10000.0):
        super().__init__()
        self.theta = float(theta)

    def cos_sin(self, pos: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if dim % 2:
            raise ValueError(f"1-D RoPE needs an even head width, got {dim}")
        ang = _angles(pos, dim, self.theta)
        return ang.cos(), ang.sin()

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cos, sin = (_for_heads(t, x) for t in self.cos_sin(_angle_dtype(pos, x), x.shape[-1]))
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # rotate_half
        return x * cos + rotated * sin


class RotaryEmbedding2D(nn.Module):
    """``forward(x (B, heads, L, d), pos (L, 2) or (B, L, 2))`` with pos = (row, col) of each token."""

    def __init__(self, theta: float = 100.0):
        super().__init__()
        self.theta = float(theta)

    def cos_sin(self, pos: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if dim % 4:
            raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {dim}")
        if pos.shape[-1] != 2:
            raise ValueError(f"2-D RoPE positions must end in (row, col), got shape {tuple(pos.shape)}")
        half = dim // 2
        ang = torch.cat((_angles(pos[..., 0], half, self.theta), _angles(pos[..., 1], half, self.theta)), dim=-1)
        return ang.cos(), ang.sin()                                                   # (..., L, d) each

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cos, sin = (_for_heads(t, x) for t in self.cos_sin(_angle_dtype(pos, x), x.shape[-1]))
        # rotate_half within each half, in one pass: (..., axis, pair half, d/4)
        q = x.unflatten(-1, (2, 2, x.shape[-1] // 4))
        rotated = torch.stack((-q[..., 1, :], q[..., 0, :]), dim=-2).flatten(-3)
        return x * cos + rotated * sin


def grid_positions(rows: int, cols: int, repeats: int = 1, offset: int = 0, device=None) -> torch.Tensor:
    """(repeats * rows * cols, 2) long (row, col) of the tokens of ``repeats`` consecutive row-major grids.

    ``offset`` is added to both coordinates (VGGT uses 1 so that position 0 is left to special tokens)."""
    r = torch.arange(rows, device=device).repeat_interleave(cols)   # 0,0,..,1,1,..
    c = torch.arange(cols, device=device).repeat(rows)              # 0,1,..,0,1,..
    return (torch.stack((r, c), dim=-1) + offset).repeat(repeats, 1)
