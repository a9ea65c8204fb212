"""Sparse global attention over all ``T*V*N`` tokens of a sample (one unit, not yet wired into the aggregator).

Full global attention over a sample's ``L = T*V*N`` tokens (``N = 1 + R + P`` per frame) costs ``O(L^2 C)``: at
full size (T = 24, V = 4, N = 1 + 4 + 37*37 = 1374, C = 1024) that is L = 131,904 and ~7.1e13 FLOPs for the
score and weighted-sum products alone, per layer and sample. :class:`SparseGlobalAttention` keeps every token as a
query but lets it attend only to a key/value subset ``S`` of the sample's tokens, so the cost is ``O(L |S| C)``:

* ``landmarks``: ``S`` = the special (camera + register) tokens of every frame + the top-``num_landmarks`` (K)
  patch tokens of every frame by ``score`` (e.g. the dynamic mask M or a confidence; token L2 norm when ``score``
  is None). ``|S| = T*V*(num_special + K)``.
* ``dilated``: ``S`` = special tokens + the patches on every ``stride``-th row and column of each frame's
  ``h x w`` grid (rows/cols 0, s, 2s, ...). ``|S| = T*V*(num_special + ceil(h/s) * ceil(w/s))``.
* ``memory``: ``S`` = special tokens + ``num_memory`` (M) learnable memory tokens at position (0, 0) (no
  rotation). The memory tokens are keys/values only (never updated, never returned).
  ``|S| = T*V*num_special + M``.

Per layer and sample, :func:`attention_flops` ``= 4 L |S| C`` (``Q K^T`` and ``A V``, a multiply-add = 2 FLOPs);
with ``projections=True`` it adds the linear maps this unit runs: ``q`` and ``proj`` on all L tokens
(``4 L C^2``) and ``k``, ``v`` on the |S| keys only (``4 |S| C^2``); the MLP (``16 L C^2`` at ratio 4) is the same
for every strategy and not counted. At full size (C = 1024, R = 4 -> num_special = 5, h = w = 37):

===========================  ===============================  ==========  ==============================
strategy                     |S| per sample                   |S|         attention FLOPs vs full (L/|S|)
===========================  ===============================  ==========  ==============================
full                         T*V*N                            131,904     1x
landmarks (K = 64)           T*V*(5 + 64)                     6,624       ~20x fewer
dilated (stride 4)           T*V*(5 + 10*10)                  10,080      ~13x fewer
memory (M = 64)              T*V*5 + 64                       544         ~242x fewer
===========================  ===============================  ==========  ==============================

The unit wraps a :class:`models.layers.Block` named ``block`` (qk-norm, LayerScale 0.01, 2-D RoPE) so that its
weights can be copied from a View-SA block (state-dict keys ``block.norm1.weight``, ``block.attn.qkv.weight`` ...).
The forward is the block's own computation with the key set restricted: ``x + ls1(attn(norm1(x)))`` with queries
from all tokens and keys/values from ``S``, then ``x + ls2(mlp(norm2(x)))``. ``q`` is projected for all tokens and
``k``, ``v`` only for the (gathered, normalised) subset, with the rows of the block's fused ``qkv`` weight; qk-norm
and RoPE (positions gathered with the keys) as in :class:`models.layers.Attention`; attention through
``F.scaled_dot_product_attention``. When ``S`` is every token (``landmarks`` with K = P, ``dilated`` with stride 1)
the output equals ``block(x.reshape(B, T*V*N, C), pos=pos.repeat(T*V, 1))`` (tested).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Block, RotaryEmbedding2D
from models.layers.attention import merge_heads, split_heads

STRATEGIES = ("landmarks", "dilated", "memory")


def attention_flops(L: int, S: int, C: int, projections: bool = False) -> int:
    """FLOPs of attention from ``L`` queries to ``S`` keys of width ``C`` (summed over heads): ``4 L S C``
    (``Q K^T`` and ``A V``). ``projections``: add ``4 L C^2`` (q and output projection on every token) and
    ``4 S C^2`` (k and v on the keys). Full global attention is ``S = L``; see the module docstring per strategy."""
    flops = 4 * L * S * C
    if projections:
        flops += 4 * L * C * C + 4 * S * C * C
    return flops


def topk_by_index(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (..., k) of the ``k`` largest entries along the last dim, deterministic: ties go to the lower index
    (a stable descending sort, the tie rule ``torch.topk`` does not promise), returned in ascending index order."""
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]
    return order.sort(dim=-1).values


class SparseGlobalAttention(nn.Module):
    """Global attention from all tokens of a sample to a key subset; ``strategy`` in ``landmarks`` | ``dilated``
    | ``memory`` (see the module docstring).

    ``forward(x [B, T, V, N, C], pos [N, 2], num_special, score=None [B, T, V, P], grid=None (h, w),
    key_bias=None [B, T, V, N]) -> [B, T, V, N, C]``.
    """

    def __init__(self, dim: int, num_heads: int, strategy: str = "landmarks", *, num_landmarks: int = 64,
                 stride: int = 2, num_memory: int = 64, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float = 0.01, norm_eps: float = 1e-5, drop_path: float = 0.0,
                 rope: nn.Module | None = None, rope_theta: float = 100.0):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if num_landmarks < 1 or stride < 1 or num_memory < 1:
            raise ValueError(f"num_landmarks, stride and num_memory must be >= 1, got "
                             f"{num_landmarks}, {stride}, {num_memory}")
        self.strategy = strategy
        self.num_landmarks = int(num_landmarks)
        self.stride = int(stride)
        self.num_memory = int(num_memory)
        self.num_heads = num_heads
        self.block = Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, qk_norm=True, init_values=init_values,
                           drop_path=drop_path, norm_eps=norm_eps,
                           rope=rope if rope is not None else RotaryEmbedding2D(rope_theta))
        if strategy == "memory":
            self.memory_tokens = nn.Parameter(torch.randn(1, self.num_memory, dim) * 0.02)   # [1, M, C]

    # ------------------------------------------------------------------------------------------ key selection
    def patches_per_frame(self, P: int, grid: tuple[int, int] | None = None) -> int:
        """Patch keys per frame (0 for ``memory``)."""
        if self.strategy == "landmarks":
            if self.num_landmarks > P:
                raise ValueError(f"num_landmarks = {self.num_landmarks} exceeds the {P} patches per frame")
            return self.num_landmarks
        if self.strategy == "dilated":
            h, w = self._grid(P, grid)
            return math.ceil(h / self.stride) * math.ceil(w / self.stride)
        return 0

    def num_keys(self, T: int, V: int, N: int, num_special: int, grid: tuple[int, int] | None = None) -> int:
        """|S|: keys per sample, memory tokens included."""
        per_frame = num_special + self.patches_per_frame(N - num_special, grid)
        return T * V * per_frame + (self.num_memory if self.strategy == "memory" else 0)

    @staticmethod
    def _grid(P: int, grid: tuple[int, int] | None) -> tuple[int, int]:
        if grid is None:
            raise ValueError("strategy 'dilated' needs grid=(h, w)")
        h, w = grid
        if h * w != P:
            raise ValueError(f"grid {h} x {w} does not match the {P} patch tokens per frame")
        return h, w

    @torch.no_grad()
    def key_indices(self, x: torch.Tensor, num_special: int, score: torch.Tensor | None = None,
                    grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Long ``[B, S_tok]``: indices into the flattened ``[B, T*V*N]`` tokens of the token keys (memory tokens
        not included), ascending within each frame, frames in (t, v) order."""
        B, T, V, N, _ = x.shape
        P = N - num_special
        if P < 0 or num_special < 0:
            raise ValueError(f"num_special = {num_special} does not fit N = {N} tokens per frame")
        dev = x.device
        special = torch.arange(num_special, device=dev)                                    # [ns]
        if self.strategy == "landmarks":
            k = self.patches_per_frame(P)
            if score is None:
                score = x[..., num_special:, :].float().norm(dim=-1)                      # [B, T, V, P]
            elif score.shape != (B, T, V, P):
                raise ValueError(f"score must be [B, T, V, P] = {(B, T, V, P)}, got {tuple(score.shape)}")
            patches = num_special + topk_by_index(score.detach(), k)                       # [B, T, V, K]
            local = torch.cat([special.expand(B, T, V, num_special), patches], dim=-1)     # [B, T, V, ns+K]
        else:
            if self.strategy == "dilated":
                h, w = self._grid(P, grid)
                rows = torch.arange(0, h, self.stride, device=dev)
                cols = torch.arange(0, w, self.stride, device=dev)
                patches = num_special + (rows[:, None] * w + cols[None, :]).flatten()
            else:
                patches = special.new_zeros(0)
            local = torch.cat([special, patches]).expand(B, T, V, -1)                      # [B, T, V, n]
        frame = torch.arange(T * V, device=dev).view(1, T, V, 1) * N
        return (local + frame).reshape(B, -1)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, pos: torch.Tensor, num_special: int, score: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, V, N, C]``; ``pos [N, 2]`` long (row + 1, col + 1) per frame token, special tokens at
        (0, 0); ``num_special`` = 1 + R leading tokens per frame; ``score [B, T, V, P]`` (``landmarks``; None: token
        norm); ``grid (h, w)`` (``dilated``); ``key_bias [B, T, V, N]`` an optional additive logit bias per key
        (as the aggregator's ``strength * m_j``; memory keys get 0). Returns ``[B, T, V, N, C]``."""
        if x.dim() != 5:
            raise ValueError(f"x must be [B, T, V, N, C], got {tuple(x.shape)}")
        B, T, V, N, C = x.shape
        if pos.shape != (N, 2):
            raise ValueError(f"pos must be [N, 2] = {(N, 2)}, got {tuple(pos.shape)}")
        blk, attn = self.block, self.block.attn
        L = T * V * N
        seq = x.reshape(B, L, C)
        idx = self.key_indices(x, num_special, score, grid)                                # [B, S_tok]
        full_pos = pos.repeat(T * V, 1)                                                    # [L, 2]
        key_pos = full_pos[idx]                                                            # [B, S_tok, 2]

        h = blk.norm1(seq)                                                                 # [B, L, C]
        keys = torch.gather(h, 1, idx[..., None].expand(-1, -1, C))                        # [B, S_tok, C]
        bias = None
        if key_bias is not None:
            if key_bias.shape != (B, T, V, N):
                raise ValueError(f"key_bias must be [B, T, V, N] = {(B, T, V, N)}, got {tuple(key_bias.shape)}")
            bias = torch.gather(key_bias.reshape(B, L), 1, idx)                            # [B, S_tok]
        if self.strategy == "memory":
            mem = blk.norm1(self.memory_tokens.to(h.dtype)).expand(B, -1, -1)              # [B, M, C]
            keys = torch.cat([keys, mem], dim=1)                                           # [B, S, C]
            key_pos = torch.cat([key_pos, key_pos.new_zeros(B, self.num_memory, 2)], dim=1)
            if bias is not None:
                bias = torch.cat([bias, bias.new_zeros(B, self.num_memory)], dim=1)

        w, b = attn.qkv.weight, attn.qkv.bias                                              # rows q | k | v
        q = F.linear(h, w[:C], None if b is None else b[:C])                               # [B, L, C]
        k, v = F.linear(keys, w[C:], None if b is None else b[C:]).chunk(2, dim=-1)         # [B, S, C] each
        q, k, v = (split_heads(t, self.num_heads) for t in (q, k, v))                      # [B, h, *, d]
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.rope is not None:
            q, k = attn.rope(q, full_pos), attn.rope(k, key_pos)
        mask = None if bias is None else bias[:, None, None, :].to(q.dtype)                # [B, 1, 1, S]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=attn.attn_drop if self.training else 0.0)
        y = attn.proj_drop(attn.proj(merge_heads(y)))                                      # [B, L, C]
        seq = seq + blk.drop_path(blk.ls1(y))
        seq = seq + blk.drop_path(blk.ls2(blk.mlp(blk.norm2(seq))))
        return seq.view(B, T, V, N, C)
