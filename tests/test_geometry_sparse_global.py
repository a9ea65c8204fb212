"""Sparse global attention: equivalence to full global attention when S = all tokens, the memory strategy against a
hand-written attention, top-K selection, gradients, shapes and the key count / cost."""
from __future__ import annotations

import math

import pytest
import torch

from models.geometry.sparse_global import SparseGlobalAttention, attention_flops, topk_by_index
from models.layers import grid_positions

B, T, V, NS, H, W, C, HEADS = 2, 3, 2, 3, 3, 4, 32, 2       # N = NS + H*W = 15 tokens per frame, head width 16
P, N = H * W, NS + H * W


def _pos() -> torch.Tensor:
    return torch.cat([torch.zeros(NS, 2, dtype=torch.long), grid_positions(H, W, offset=1)])      # [N, 2]


def _unit(strategy: str, dtype=torch.float32, **kw) -> SparseGlobalAttention:
    torch.manual_seed(0)
    m = SparseGlobalAttention(C, HEADS, strategy, **kw).to(dtype).eval()
    with torch.no_grad():                      # LayerScale 0.01 would hide differences; make the residuals count
        for p in m.block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        m.block.ls1.gamma.fill_(1.0)
        m.block.ls2.gamma.fill_(1.0)
    return m


def _x(dtype=torch.float32, requires_grad=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T, V, N, C, generator=g, dtype=dtype).requires_grad_(requires_grad)


def _full(m: SparseGlobalAttention, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Full global attention over all T*V*N tokens with the same block."""
    attn_bias = None if bias is None else bias.reshape(B, 1, 1, T * V * N)
    return m.block(x.reshape(B, T * V * N, C), pos=_pos().repeat(T * V, 1), attn_bias=attn_bias).view(x.shape)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("strategy,kw", [("landmarks", dict(num_landmarks=P)), ("dilated", dict(stride=1))])
def test_all_keys_equals_full_global_attention(strategy, kw, dtype, tol):
    m = _unit(strategy, dtype, **kw)
    x = _x(dtype)
    score = torch.rand(B, T, V, P, dtype=dtype)
    with torch.no_grad():
        out = m(x, _pos(), NS, score=score, grid=(H, W))
        ref = _full(m, x)
        bias = torch.randn(B, T, V, N, dtype=dtype)
        out_b = m(x, _pos(), NS, score=score, grid=(H, W), key_bias=bias)
        ref_b = _full(m, x, bias)
    assert m.num_keys(T, V, N, NS, (H, W)) == T * V * N
    assert (out - ref).abs().max().item() < tol
    assert (out_b - ref_b).abs().max().item() < tol
    assert (out - x).abs().max().item() > 0.1                  # the update is not trivially small


def test_memory_matches_hand_written_attention():
    M = 5
    m = _unit("memory", torch.float64, num_memory=M)
    x = _x(torch.float64)
    with torch.no_grad():
        out = m(x, _pos(), NS)
        blk, a = m.block, m.block.attn
        seq = x.reshape(B, T * V * N, C)
        keys = torch.cat([x[:, :, :, :NS].reshape(B, T * V * NS, C), m.memory_tokens.expand(B, -1, -1)], 1)
        assert keys.shape[1] == m.num_keys(T, V, N, NS) == T * V * NS + M
        d = C // HEADS

        def heads(t):
            return t.view(B, -1, HEADS, d).transpose(1, 2)

        hq, hk = blk.norm1(seq), blk.norm1(keys)
        q = heads(hq @ a.qkv.weight[:C].T + a.qkv.bias[:C])
        k = heads(hk @ a.qkv.weight[C:2 * C].T + a.qkv.bias[C:2 * C])
        v = heads(hk @ a.qkv.weight[2 * C:].T + a.qkv.bias[2 * C:])
        q, k = a.q_norm(q), a.k_norm(k)          # keys are special + memory tokens: all at (0, 0), no rotation
        q = a.rope(q, _pos().repeat(T * V, 1))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        y = (w @ v).transpose(1, 2).reshape(B, -1, C) @ a.proj.weight.T + a.proj.bias
        ref = seq + blk.ls1(y)
        ref = ref + blk.ls2(blk.mlp(blk.norm2(ref)))
    assert (out - ref.view(x.shape)).abs().max().item() < 1e-10
    # the memory tokens matter: other memory -> other output
    with torch.no_grad():
        m.memory_tokens.add_(torch.randn_like(m.memory_tokens))       # (a constant shift is removed by norm1)
        assert (m(x, _pos(), NS) - out).abs().max().item() > 1e-3


def test_topk_selection_picks_highest_scores():
    K = 4
    m = _unit("landmarks", num_landmarks=K)
    x = _x()
    score = torch.zeros(B, T, V, P)
    g = torch.Generator().manual_seed(3)
    chosen = torch.stack([torch.randperm(P, generator=g)[:K] for _ in range(B * T * V)]).view(B, T, V, K)
    score.scatter_(-1, chosen, 1.0 + torch.rand(B, T, V, K, generator=g))
    idx = m.key_indices(x, NS, score).view(B, T, V, NS + K)
    frame = (torch.arange(T * V).view(1, T, V, 1) * N)
    local = idx - frame
    assert torch.equal(local[..., :NS], torch.arange(NS).expand(B, T, V, NS))
    assert torch.equal(local[..., NS:], NS + chosen.sort(-1).values)
    # ties go to the lower index, deterministically
    tied = torch.tensor([[0.5, 1.0, 1.0, 1.0, 0.2, 1.0]])
    assert topk_by_index(tied, 2).tolist() == [[1, 2]]
    assert topk_by_index(tied, 4).tolist() == [[1, 2, 3, 5]]
    # score None: top-K by token norm
    xs = x.clone()
    xs[..., NS:, :] *= 0.01
    big = chosen[..., :1]                                                             # [B, T, V, 1]
    xs[..., NS:, :].scatter_(-2, big[..., None].expand(-1, -1, -1, -1, C), 100.0)
    idx_n = m.key_indices(xs, NS).view(B, T, V, NS + K) - frame
    assert (idx_n[..., NS:] == NS + big).any(-1).all()
    # output only depends on the selected keys: perturbing an unselected patch changes only that token
    with torch.no_grad():
        out = m(x, _pos(), NS, score=score)
        x2 = x.clone()
        unsel = next(i for i in range(P) if i not in chosen[0, 0, 0].tolist())
        x2[0, 0, 0, NS + unsel] += 5.0
        out2 = m(x2, _pos(), NS, score=score)
        diff = (out2 - out).abs().amax(-1)
    assert diff[0, 0, 0, NS + unsel] > 0
    diff[0, 0, 0, NS + unsel] = 0
    assert diff.max().item() == 0.0


@pytest.mark.parametrize("strategy", ["landmarks", "dilated", "memory"])
def test_shape_and_gradients(strategy):
    m = _unit(strategy, num_landmarks=3, stride=2, num_memory=4).train()
    x = _x(requires_grad=True)
    score = torch.rand(B, T, V, P)
    out = m(x, _pos(), NS, score=score, grid=(H, W))
    assert out.shape == (B, T, V, N, C)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name in ("norm1.weight", "attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.proj.weight",
                 "ls1.gamma", "mlp.fc1.weight", "ls2.gamma"):
        assert m.block.get_parameter(name).grad.abs().sum() > 0, name
    if strategy == "memory":
        assert m.memory_tokens.shape == (1, 4, C)
        assert m.memory_tokens.grad.abs().sum() > 0
    # the block's keys are a View-SA block's keys under the prefix "block."
    assert "block.attn.qkv.weight" in m.state_dict() and "block.ls1.gamma" in m.state_dict()


def test_key_counts_and_cost():
    L = T * V * N
    lm = SparseGlobalAttention(C, HEADS, "landmarks", num_landmarks=4)
    dl = SparseGlobalAttention(C, HEADS, "dilated", stride=2)
    mm = SparseGlobalAttention(C, HEADS, "memory", num_memory=7)
    x = _x()
    assert lm.num_keys(T, V, N, NS) == T * V * (NS + 4) == lm.key_indices(x, NS).shape[1]
    n_dil = T * V * (NS + math.ceil(H / 2) * math.ceil(W / 2))                       # rows 0, 2; cols 0, 2
    assert dl.num_keys(T, V, N, NS, (H, W)) == n_dil == dl.key_indices(x, NS, grid=(H, W)).shape[1]
    loc = dl.key_indices(x, NS, grid=(H, W))[0, :NS + 4]                           # frame (0, 0)
    assert loc.tolist() == [0, 1, 2, NS + 0, NS + 2, NS + 2 * W + 0, NS + 2 * W + 2]
    assert mm.num_keys(T, V, N, NS) == T * V * NS + 7 and mm.key_indices(x, NS).shape[1] == T * V * NS
    for m in (lm, dl, mm):
        S = m.num_keys(T, V, N, NS, (H, W))
        assert S < L
        assert attention_flops(L, S, C) == 4 * L * S * C
        assert attention_flops(L, S, C) / attention_flops(L, L, C) == pytest.approx(S / L)
    assert attention_flops(L, 10, C, projections=True) == 4 * L * 10 * C + 4 * L * C * C + 4 * 10 * C * C
    # full size: 24 x 4 frames of 1 + 4 + 37*37 tokens
    Tf, Vf, Nf, NSf, G, Cf = 24, 4, 1374, 5, (37, 37), 1024
    Lf = Tf * Vf * Nf
    big = {s: SparseGlobalAttention(64, 4, s, num_landmarks=64, stride=4, num_memory=64) for s in
           ("landmarks", "dilated", "memory")}
    counts = {s: u.num_keys(Tf, Vf, Nf, NSf, G) for s, u in big.items()}
    assert counts == {"landmarks": 6624, "dilated": 10080, "memory": 544}
    assert attention_flops(Lf, Lf, Cf) == pytest.approx(7.13e13, rel=1e-2)
    assert round(Lf / counts["landmarks"]) == 20 and round(Lf / counts["dilated"]) == 13
    assert round(Lf / counts["memory"]) == 242


def test_errors():
    x = _x()
    with pytest.raises(ValueError, match="strategy"):
        SparseGlobalAttention(C, HEADS, "full")
    with pytest.raises(ValueError, match="grid"):
        SparseGlobalAttention(C, HEADS, "dilated")(x, _pos(), NS)
    with pytest.raises(ValueError, match="exceeds"):
        SparseGlobalAttention(C, HEADS, "landmarks", num_landmarks=P + 1)(x, _pos(), NS)
    with pytest.raises(ValueError, match="score"):
        SparseGlobalAttention(C, HEADS, "landmarks", num_landmarks=2)(x, _pos(), NS, score=torch.rand(B, T, V, P + 1))
