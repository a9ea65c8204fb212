"""models/layers: attention masks and bias, RoPE, blocks, patch embed, DINOv2/VGGT parameter names."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.layers import (Attention, Block, CrossAttention, CrossBlock, DropPath, LayerScale, Mlp, PatchEmbed,
                           RotaryEmbedding1D, RotaryEmbedding2D, grid_positions)


def _naive_attention(q, k, v, mask=None, bias=None):
    """softmax(q k^T / sqrt(d) + bias, masked) v, written out."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1) @ v


def _qkv(attn: Attention, x):
    b, length, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).view(b, length, 3, h, d // h).permute(2, 0, 3, 1, 4)  # VGGT's reshape
    return attn.q_norm(q), attn.k_norm(k), v


def test_attention_matches_naive_with_mask_and_bias():
    torch.manual_seed(0)
    attn = Attention(32, 4, qk_norm=True).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True                                  # every row attends somewhere
    bias = torch.randn(2, 4, 7, 7)
    q, k, v = _qkv(attn, x)
    for kwargs, ref in (({}, _naive_attention(q, k, v)),
                        ({"attn_mask": mask}, _naive_attention(q, k, v, mask=mask)),
                        ({"attn_bias": bias}, _naive_attention(q, k, v, bias=bias)),
                        ({"attn_mask": mask, "attn_bias": bias}, _naive_attention(q, k, v, mask, bias))):
        want = attn.proj(ref.transpose(1, 2).reshape(2, 7, 32))
        torch.testing.assert_close(attn(x, **kwargs), want, atol=1e-5, rtol=1e-5)


def test_attention_bias_changes_output_and_broadcasts():
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(3, 5, 16)
    key_bias = torch.zeros(3, 1, 1, 5)
    key_bias[..., 2] = -30.0                             # per-key bias, broadcast over heads and queries
    out = attn(x, attn_bias=key_bias)
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[:, 2] = False
    torch.testing.assert_close(out, attn(x, attn_mask=mask), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, attn(x))


def test_attention_refuses_float_mask_and_int_bias():
    attn = Attention(8, 2)
    x = torch.randn(1, 3, 8)
    with pytest.raises(TypeError, match="boolean"):
        attn(x, attn_mask=torch.zeros(3, 3))
    with pytest.raises(TypeError, match="float"):
        attn(x, attn_bias=torch.zeros(3, 3, dtype=torch.long))


def test_cross_attention_matches_naive():
    torch.manual_seed(1)
    ca = CrossAttention(16, 2, kv_dim=24).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 9, 24)
    q = ca.q(x).view(2, 3, 2, 8).transpose(1, 2)
    k, v = ca.kv(mem).view(2, 9, 2, 2, 8).permute(2, 0, 3, 1, 4)
    want = ca.proj(_naive_attention(q, k, v).transpose(1, 2).reshape(2, 3, 16))
    torch.testing.assert_close(ca(x, mem), want, atol=1e-5, rtol=1e-5)


def _score(rope, q, k, pq, pk):
    """Attention logit between one query at position pq and one key at pk, (1, 1, 1, d) vectors."""
    return float((rope(q, pq) * rope(k, pk)).sum())


def test_rope_2d_score_depends_only_on_offset():
    torch.manual_seed(0)
    rope = RotaryEmbedding2D(theta=100.0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    rope64 = lambda x, p: rope(x, torch.tensor([p], dtype=torch.float64))  # noqa: E731
    for offset in ((0, 0), (1, 2), (-3, 5), (4, -1)):
        scores = [_score(rope64, q, k, (r + offset[0], c + offset[1]), (r, c)) for r, c in ((0, 0), (2, 7), (9, 3))]
        assert max(scores) - min(scores) < 1e-9, (offset, scores)
    assert abs(_score(rope64, q, k, (1, 0), (0, 0)) - _score(rope64, q, k, (0, 1), (0, 0))) > 1e-6  # axes differ


def test_rope_1d_score_depends_only_on_offset():
    torch.manual_seed(0)
    rope = RotaryEmbedding1D(theta=10000.0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    rope64 = lambda x, p: rope(x, torch.tensor([p], dtype=torch.float64))  # noqa: E731
    for offset in (0, 1, -4, 11):
        scores = [_score(rope64, q, k, t + offset, t) for t in (0, 3, 17)]
        assert max(scores) - min(scores) < 1e-9


def test_rope_2d_convention_by_hand():
    """First half rotated by the row, second by the column, rotate-half pairing within each half."""
    rope = RotaryEmbedding2D(theta=100.0)
    x = torch.arange(1.0, 9.0).view(1, 1, 1, 8)           # halves [1 2 3 4] (row) and [5 6 7 8] (col)
    row, col = 2.0, 3.0
    y = rope(x, torch.tensor([[row, col]]))
    freqs = [1.0, 100.0 ** (-2 / 4)]                       # theta^(-2i/half), half = 4
    want = []
    for base, p in ((0, row), (4, col)):
        a = x[0, 0, 0, base:base + 4]
        ang = torch.tensor([p * f for f in freqs] * 2)
        rot = torch.cat((-a[2:], a[:2]))
        want.append(a * ang.cos() + rot * ang.sin())
    torch.testing.assert_close(y[0, 0, 0], torch.cat(want))


def test_rope_position_zero_is_identity_and_batched_positions():
    rope = RotaryEmbedding2D()
    x = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(rope(x, torch.zeros(4, 2)), x)
    pos = grid_positions(2, 2, offset=1)                     # (4, 2)
    batched = torch.stack((pos, torch.zeros_like(pos)))      # sample 1 unrotated
    y = rope(x, batched)
    torch.testing.assert_close(y[0], rope(x[:1], pos)[0])
    torch.testing.assert_close(y[1], x[1])


def test_attention_rope_leaves_special_tokens_at_zero_unrotated():
    torch.manual_seed(0)
    attn = Attention(16, 2, rope=RotaryEmbedding2D()).eval()
    plain = Attention(16, 2).eval()
    plain.load_state_dict(attn.state_dict())
    x = torch.randn(1, 4, 16)
    zeros = torch.zeros(4, 2)
    torch.testing.assert_close(attn(x, pos=zeros), plain(x))
    assert not torch.allclose(attn(x, pos=grid_positions(2, 2)), plain(x))


def test_grid_positions():
    pos = grid_positions(2, 3, repeats=2, offset=1)
    assert pos.tolist()[:6] == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    assert pos.shape == (12, 2)


def test_block_parameter_names_match_vggt():
    block = Block(64, 4, qk_norm=True, init_values=0.01)
    names = [k for k in block.state_dict()]
    assert names == ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight",
                     "attn.q_norm.bias", "attn.k_norm.weight", "attn.k_norm.bias", "attn.proj.weight",
                     "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"]
    assert block.attn.q_norm.weight.shape == (16,) and block.ls1.gamma.shape == (64,)
    assert float(block.ls1.gamma.detach()[0]) == pytest.approx(0.01)
    assert "ls1.gamma" not in Block(64, 4).state_dict()     # no LayerScale -> no parameter


def test_vggt_block_layout_param_count():
    """A VGGT / Pi3 block at width 1024: 18 tensors, 12,598,528 parameters (checkpoints.md section 3)."""
    with torch.device("meta"):
        block = Block(1024, 16, qk_norm=True, init_values=0.01)
    assert len(block.state_dict()) == 18
    assert sum(p.numel() for p in block.parameters()) == 12_598_528


def test_block_is_pre_ln_residual():
    torch.manual_seed(0)
    block = Block(16, 2, init_values=0.5).eval()
    x = torch.randn(2, 5, 16)
    h = x + block.ls1(block.attn(block.norm1(x)))
    want = h + 0.5 * block.mlp(block.norm2(h))
    torch.testing.assert_close(block(x), want)


def test_cross_block_order_and_names():
    torch.manual_seed(0)
    block = CrossBlock(16, 2, kv_dim=8).eval()
    x, mem = torch.randn(2, 3, 16), torch.randn(2, 6, 8)
    h = x + block.attn(block.norm1(x))
    h = h + block.cross_attn(block.norm2(h), mem)
    torch.testing.assert_close(block(x, mem), h + block.mlp(block.norm3(h)))
    assert "cross_attn.kv.weight" in block.state_dict()


def test_drop_path_and_layer_scale():
    torch.manual_seed(0)
    dp = DropPath(0.25)
    x = torch.ones(4000, 3)
    y = dp(x)
    kept = (y[:, 0] > 0).float().mean()
    assert abs(float(kept) - 0.75) < 0.03
    assert torch.all((y == 0) | ((y - 1 / 0.75).abs() < 1e-6))
    assert torch.equal(dp.eval()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)
    torch.testing.assert_close(LayerScale(3, 0.1)(torch.ones(2, 3)), torch.full((2, 3), 0.1))


def test_mlp_and_patch_embed():
    torch.manual_seed(0)
    mlp = Mlp(8, 32)
    x = torch.randn(2, 8)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
    pe = PatchEmbed(patch_size=14, in_chans=3, embed_dim=16)
    img = torch.randn(2, 3, 128, 130)
    tokens = pe(img)
    assert pe.grid(128, 130) == (9, 9) and tokens.shape == (2, 81, 16)
    # token (row 1, col 2) is the conv over pixels [14:28, 28:42]
    patch = img[:, :, 14:28, 28:42]
    want = (patch[:, None] * pe.proj.weight[None]).sum((2, 3, 4)) + pe.proj.bias
    torch.testing.assert_close(tokens[:, 1 * 9 + 2], want, atol=1e-4, rtol=1e-4)
    assert list(pe.state_dict()) == ["proj.weight", "proj.bias"]
