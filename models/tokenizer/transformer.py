"""The small GPT-2-style transformer AMPLIFY's tokenizer is built from (amplify/models/transformer.py).

Same structure, parameter names and initialisation as the official modules: pre-LN blocks, Linear and LayerNorm
without bias inside the blocks, a GELU MLP of width 4x, a learned positional embedding followed by dropout, a
final LayerNorm, GPT-2 init (N(0, 0.02), residual ``c_proj`` at ``0.02 / sqrt(2 * n_layers)``). The attention
math is the shared ``models.layers.attend`` (SDPA, boolean mask where True means "may attend"; the official full
masks are passed as ``None``, identical result). Mask buffers are not saved in state dicts.

Why these modules are not ``models.layers.Attention`` / ``Mlp`` / ``Block``: AMPLIFY's checkpoints name the fused
projection ``c_attn`` (not ``qkv``), the output ``c_proj`` (not ``proj``), the MLP ``c_fc`` / ``c_proj`` (not
``fc1`` / ``fc2``), the norms ``ln_1`` / ``ln_2`` and split cross-attention into ``q_proj`` / ``kv_proj``; its
decoder block runs self-attention -> MLP -> cross-attention -> MLP (four residual branches), and GPT-2's init finds
the residual projections by the name ``c_proj``. Keeping the names keeps official checkpoints loadable without a
key map; what is shared is the attention computation itself (head split, SDPA with masks, merge).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.layers import attend, merge_heads, split_heads


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """Official ``causal_mask``: ``tril(ones)`` as bool, True = may attend (token t sees tokens <= t)."""
    return torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device))


def LayerNorm(dim: int, bias: bool) -> nn.LayerNorm:  # noqa: N802 (the official class name)
    """LayerNorm with an optional bias (eps 1e-5); parameters ``weight`` [and ``bias``]."""
    return nn.LayerNorm(dim, eps=1e-5, bias=bias)


class MLP(nn.Module):
    def __init__(self, hidden_dim: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(hidden_dim, 4 * hidden_dim, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * hidden_dim, hidden_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class SelfAttention(nn.Module):
    def __init__(self, hidden_dim: int, n_heads: int, dropout: float, bias: bool, attn_mask: torch.Tensor | None):
        super().__init__()
        if hidden_dim % n_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by n_heads {n_heads}")
        self.c_attn = nn.Linear(hidden_dim, 3 * hidden_dim, bias=bias)
        self.c_proj = nn.Linear(hidden_dim, hidden_dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_heads
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        q, k, v = self.c_attn(x).split(self.hidden_dim, dim=2)
        mask = None if self.attn_mask is None else self.attn_mask[:t, :t]
        y = attend(split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head),
                   attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)  # (b, heads, t, head_dim)
        return self.resid_dropout(self.c_proj(merge_heads(y)))


class CrossAttention(nn.Module):
    """Queries from ``x``, keys and values from ``cond``; no mask (the official cross-attention is full)."""

    def __init__(self, hidden_dim: int, n_heads: int, dropout: float, bias: bool):
        super().__init__()
        if hidden_dim % n_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by n_heads {n_heads}")
        self.q_proj = nn.Linear(hidden_dim, hidden_dim, bias=bias)
        self.kv_proj = nn.Linear(hidden_dim, 2 * hidden_dim, bias=bias)
        self.c_proj = nn.Linear(hidden_dim, hidden_dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_heads
        self.hidden_dim = hidden_dim
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x)
        k, v = self.kv_proj(cond).split(self.hidden_dim, dim=2)
        y = attend(split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head),
                   dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(merge_heads(y)))


class EncoderBlock(nn.Module):
    """``x += attn(ln_1(x)); x += mlp(ln_2(x))``."""

    def __init__(self, hidden_dim, n_heads, dropout, bias, attn_mask):
        super().__init__()
        self.ln_1 = LayerNorm(hidden_dim, bias=bias)
        self.attn = SelfAttention(hidden_dim, n_heads, dropout, bias, attn_mask)
        self.ln_2 = LayerNorm(hidden_dim, bias=bias)
        self.mlp = MLP(hidden_dim, dropout, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class DecoderBlock(nn.Module):
    """Official order: self-attention -> MLP -> cross-attention(cond) -> MLP, each pre-LN and residual."""

    def __init__(self, hidden_dim, n_heads, dropout, bias, attn_mask):
        super().__init__()
        self.ln_1 = LayerNorm(hidden_dim, bias=bias)
        self.self_attn = SelfAttention(hidden_dim, n_heads, dropout, bias, attn_mask)
        self.ln_2 = LayerNorm(hidden_dim, bias=bias)
        self.mlp = MLP(hidden_dim, dropout, bias)
        self.ln_3 = LayerNorm(hidden_dim, bias=bias)
        self.cross_attn = CrossAttention(hidden_dim, n_heads, dropout, bias)
        self.ln_4 = LayerNorm(hidden_dim, bias=bias)
        self.mlp_2 = MLP(hidden_dim, dropout, bias)

    def forward(self, x, cond):
        x = x + self.self_attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        x = x + self.cross_attn(self.ln_3(x), cond)
        return x + self.mlp_2(self.ln_4(x))


class _Transformer(nn.Module):
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _gpt2_init(self, n_layers: int) -> None:
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.seq_len:
            raise ValueError(f"sequence of length {t} is longer than the positional table ({self.seq_len})")
        pos = torch.arange(t, dtype=torch.long, device=x.device)
        return self.transformer.drop(x + self.transformer.pos_emb(pos))


class TransformerEncoder(_Transformer):
    def __init__(self, seq_len, hidden_dim, n_layers, n_heads, dropout=0.1, bias=False, attn_mask=None):
        super().__init__()
        self.seq_len = seq_len
        self.transformer = nn.ModuleDict(dict(
            pos_emb=nn.Embedding(seq_len, hidden_dim),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([EncoderBlock(hidden_dim, n_heads, dropout, bias, attn_mask) for _ in range(n_layers)]),
            ln_f=LayerNorm(hidden_dim, bias=bias),
        ))
        self._gpt2_init(n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)


class TransformerDecoder(_Transformer):
    def __init__(self, q_seq_len, hidden_dim, n_layers, n_heads, dropout=0.1, bias=False, attn_mask=None):
        super().__init__()
        self.seq_len = q_seq_len
        self.transformer = nn.ModuleDict(dict(
            pos_emb=nn.Embedding(q_seq_len, hidden_dim),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([DecoderBlock(hidden_dim, n_heads, dropout, bias, attn_mask) for _ in range(n_layers)]),
            ln_f=LayerNorm(hidden_dim, bias=bias),
        ))
        self._gpt2_init(n_layers)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for block in self.transformer.h:
            x = block(x, cond)
        return self.transformer.ln_f(x)
