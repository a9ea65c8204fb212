"""Shared attention (``models.layers.Attention``, SDPA) against the same attention written out (matmul, softmax,
matmul), forward + backward, at the planner's default sequence and at a geometry-model-like one.

    python -m benchmarks.bench_layers [--steps 10] [--threads 1]

Also times the additive key bias (the geometry model's dynamic-mask path) against no bias, and the 2-D RoPE
hook against none. Memory is what autograd keeps for the backward pass of one forward (distinct storages,
counted with ``saved_tensors_hooks``). Timings go to the console (and --out JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from models.layers import Attention, RotaryEmbedding2D, grid_positions, merge_heads, split_heads

CASES = {  # name: (batch, tokens, dim, heads)
    "planner default (4 frames x 9x9 patches)": (16, 324, 128, 2),
    "geometry-like (6 views x 5 + 18x18 tokens)": (2, 6 * (5 + 324), 256, 4),
}


def naive_forward(attn: Attention, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same module's weights, attention written out: softmax(q k^T / sqrt(d) + bias) v."""
    q, k, v = (split_heads(t, attn.num_heads) for t in attn.qkv(x).chunk(3, dim=-1))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return attn.proj(merge_heads(logits.softmax(-1) @ v))


def _time(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _saved_mb(forward) -> float:
    """MB of tensors autograd keeps for the backward pass of one forward (distinct storages)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values()) / 2 ** 20


def measure(batch: int, tokens: int, dim: int, heads: int, steps: int) -> dict:
    torch.manual_seed(0)
    attn = Attention(dim, heads)
    roped = Attention(dim, heads, rope=RotaryEmbedding2D())
    x = torch.randn(batch, tokens, dim, requires_grad=True)
    bias = torch.randn(batch, 1, 1, tokens) * 0.1                          # per-key bias, as a dynamic mask
    side = int(math.isqrt(tokens))
    pos = grid_positions(side, side)[:tokens] if side * side == tokens else torch.zeros(tokens, 2)

    def run(f):
        return lambda: f().sum().backward()

    out = {"shape": [batch, tokens, dim, heads]}
    out["sdpa_ms"] = 1e3 * _time(run(lambda: attn(x)), steps)
    out["naive_ms"] = 1e3 * _time(run(lambda: naive_forward(attn, x, None)), steps)
    out["sdpa_bias_ms"] = 1e3 * _time(run(lambda: attn(x, attn_bias=bias)), steps)
    out["naive_bias_ms"] = 1e3 * _time(run(lambda: naive_forward(attn, x, bias)), steps)
    out["sdpa_rope_ms"] = 1e3 * _time(run(lambda: roped(x, pos)), steps)
    out["sdpa_saved_mb"] = _saved_mb(lambda: attn(x))
    out["naive_saved_mb"] = _saved_mb(lambda: naive_forward(attn, x, None))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name, shape in CASES.items():
        r = measure(*shape, steps=args.steps)
        results[name] = r
        print(f"{name} {r['shape']}: SDPA {r['sdpa_ms']:.1f} ms vs written out {r['naive_ms']:.1f} ms "
              f"({r['naive_ms'] / r['sdpa_ms']:.2f}x); with key bias {r['sdpa_bias_ms']:.1f} vs "
              f"{r['naive_bias_ms']:.1f} ms; with 2-D RoPE {r['sdpa_rope_ms']:.1f} ms "
              f"({r['sdpa_rope_ms'] / r['sdpa_ms']:.2f}x plain); kept for backward {r['sdpa_saved_mb']:.0f} vs "
              f"{r['naive_saved_mb']:.0f} MB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
