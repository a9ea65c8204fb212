"""The geometry model: shapes, the converted blocks against Pi3's block pair written out independently, the logit
bias inside attention, the mask head and its fusion, streams, and bad input."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from models.common.params import ConfigError
from models.geometry.config import GeometryConfig, full_size
from models.geometry.convert import convert, read_checkpoint
from models.geometry.model import GeometryModel
from models.geometry.sources import write_random_sources

TINY = dict(img_size=56, embed_dim=32, num_heads=2, encoder_depth=1, depth=3, pi3_layers=2, camera_trunk_depth=1,
            camera_iterations=1, dpt_features=16, dpt_out_channels=(8, 8, 16, 16), mask_hidden_dim=8)


def tiny_cfg(**kw) -> GeometryConfig:
    return GeometryConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny model converted from random Pi3 / PAGE-4D sources (float64), with the Pi3 source state."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = GeometryModel(cfg)
    paths = write_random_sources(cfg, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                                 tmp_path_factory.mktemp("src"), seed=5)
    pi3 = read_checkpoint(paths["pi3"])
    state, _ = convert(cfg, model.state_dict(), pi3, read_checkpoint(paths["page4d"]), {"pi3": "a", "page4d": "b"})
    model.load_state_dict(state, strict=True)
    return cfg, model.double().eval(), {k: v.double() for k, v in pi3.items()}


def test_output_shapes_and_the_single_view_form():
    cfg = tiny_cfg()
    model = GeometryModel(cfg).eval()
    out = model(torch.rand(1, 2, 3, 3, 42, 56))                                  # 3 x 4 patches
    T, V, H, W, P = 2, 3, 42, 56, 12
    assert out["pose_enc"].shape == (1, T, V, 9) and len(out["pose_enc_list"]) == cfg.camera_iterations
    assert out["extrinsics"].shape == (1, T, V, 3, 4) and out["intrinsics"].shape == (1, T, V, 3, 3)
    assert out["depth"].shape == (1, T, V, H, W, 1) and out["depth_conf"].shape == (1, T, V, H, W)
    assert out["world_points"].shape == (1, T, V, H, W, 3) and out["world_points_conf"].shape == (1, T, V, H, W)
    assert out["mask_logits"].shape == out["mask"].shape == (1, T, V, P, 1)
    single = model(torch.rand(1, 4, 3, 42, 56))                                  # [B, S, 3, H, W]: V = 1
    assert single["depth"].shape == (1, 4, 1, H, W, 1)


def test_bad_input_and_config_messages():
    model = GeometryModel(tiny_cfg())
    with pytest.raises(ValueError, match=r"image size 40 x 56 is not a multiple of the patch size 14"):
        model(torch.rand(1, 1, 1, 3, 40, 56))
    with pytest.raises(ConfigError, match="mask_layer"):
        tiny_cfg(mask_layer=3)
    with pytest.raises(ConfigError, match="mask_layer"):
        tiny_cfg(mask_layer=0)
    with pytest.raises(ConfigError, match="aa_order"):
        tiny_cfg(aa_order=("time", "time"))
    with pytest.raises(TypeError, match="GeometryConfig"):
        GeometryModel({"embed_dim": 32})


def test_full_size_builds_on_meta_with_the_shared_parameter_counts():
    with torch.device("meta"):
        model = GeometryModel(full_size())
    n = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()}
    assert n["aggregator"] == 909_133_827 + 6                     # PAGE-4D's aggregator + 4 lambdas + the gate
    assert n["camera_head"] == 216_174_610
    assert model.cfg.dpt_layers == (4, 11, 17, 23)
    assert GeometryConfig(depth=4).dpt_layers == (0, 1, 2, 3)


# ------------------------------------------------------------------------------- exactness of the blocks
def _vggt_rope(x, pos, theta=100.0):
    """RoPE2D as VGGT / Pi3 write it: first half of the head by y, second by x, rotate-half in each half."""
    d = x.shape[-1] // 2

    def one(t, p):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = p[:, None].double() * inv[None]
        ang = torch.cat([ang, ang], dim=-1)                                      # (L, d)
        rot = torch.cat([-t[..., d // 2:], t[..., :d // 2]], dim=-1)
        return t * ang.cos() + rot * ang.sin()

    return torch.cat([one(x[..., :d], pos[:, 0]), one(x[..., d:], pos[:, 1])], dim=-1)


def _pi3_block(x, sd, prefix, pos, heads, bias=None):
    """One Pi3 BlockRope from its state dict, with plain tensor ops (eps 1e-6 block norms, 1e-5 qk norms)."""
    C = x.shape[-1]
    hd = C // heads
    g = lambda name: sd[f"{prefix}.{name}"]                                       # noqa: E731
    h = F.layer_norm(x, (C,), g("norm1.weight"), g("norm1.bias"), 1e-6)
    qkv = h @ g("attn.qkv.weight").T + g("attn.qkv.bias")
    q, k, v = qkv.view(*x.shape[:2], 3, heads, hd).permute(2, 0, 3, 1, 4)       # (B, heads, L, hd)
    q = F.layer_norm(q, (hd,), g("attn.q_norm.weight"), g("attn.q_norm.bias"), 1e-5)
    k = F.layer_norm(k, (hd,), g("attn.k_norm.weight"), g("attn.k_norm.bias"), 1e-5)
    q, k = _vggt_rope(q, pos), _vggt_rope(k, pos)
    logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if bias is not None:
        logits = logits + bias
    a = torch.softmax(logits, dim=-1) @ v
    a = a.transpose(1, 2).reshape(*x.shape[:2], C) @ g("attn.proj.weight").T + g("attn.proj.bias")
    x = x + g("ls1.gamma") * a
    h = F.layer_norm(x, (C,), g("norm2.weight"), g("norm2.bias"), 1e-6)
    h = F.gelu(h @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")) @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")
    return x + g("ls2.gamma") * h


def _entry_tokens(agg, images):
    """Tokens entering layer 0: (B, T, V, N, C), and the positions (N, 2)."""
    from models.layers import grid_positions

    B, T, V, _, H, W = images.shape
    x = (images.reshape(-1, 3, H, W) - agg._mean) / agg._std
    h, w = H // agg.cfg.patch_size, W // agg.cfg.patch_size
    patches = agg.patch_embed(x).view(B, T, V, h * w, -1)
    tokens = torch.cat([agg._special(agg.camera_token, B, T, V), agg._special(agg.register_token, B, T, V),
                        patches], dim=3)
    pos = torch.cat([torch.zeros(agg.patch_start_idx, 2, dtype=torch.long), grid_positions(h, w, offset=1)])
    return tokens, pos


@pytest.mark.parametrize("T, V", [(1, 1), (3, 2)])
def test_a_converted_time_view_pair_equals_pi3s_frame_global_pair(converted, T, V):
    """T = V = 1 is the issue's check; at 3 x 2, Time-SA equals Pi3's global attention over one view's times and
    View-SA over one time's views."""
    cfg, model, pi3 = converted
    agg = model.aggregator
    torch.manual_seed(1)
    images = torch.rand(1, T, V, 3, 42, 56, dtype=torch.float64)
    tokens, pos = _entry_tokens(agg, images)
    B, _, _, N, C = tokens.shape
    with torch.no_grad():
        ours = agg._attend("view", agg.view_blocks[1], agg._attend("time", agg.time_blocks[1], tokens, pos,
                                                                     None, None), pos, None, None)
        ref = tokens.permute(0, 2, 1, 3, 4).reshape(B * V, T * N, C)            # per view, across times
        ref = _pi3_block(ref, pi3, "decoder.2", pos.repeat(T, 1), cfg.num_heads)
        ref = ref.view(B, V, T, N, C).permute(0, 2, 1, 3, 4).reshape(B * T, V * N, C)
        ref = _pi3_block(ref, pi3, "decoder.3", pos.repeat(V, 1), cfg.num_heads).view(B, T, V, N, C)
    diff = (ours - ref).abs().max().item()
    assert diff < 1e-12, f"max abs difference {diff:.3g}"


def test_the_logit_bias_is_A_minus_lambda_m_inside_attention(converted):
    """Pose stream, View-SA: logits A_ij - lambda * m_j; m_j = 0 at camera and register keys."""
    cfg, model, pi3 = converted
    agg = model.aggregator
    images = torch.rand(1, 1, 2, 3, 42, 56, dtype=torch.float64)
    tokens, pos = _entry_tokens(agg, images)
    B, T, V, N, C = tokens.shape
    m = torch.rand(B, T, V, N - agg.patch_start_idx, dtype=torch.float64)
    key_mask = torch.cat([m.new_zeros(B, T, V, agg.patch_start_idx), m], dim=-1)
    lam = 0.7
    with torch.no_grad():
        ours = agg._attend("view", agg.view_blocks[0], tokens, pos, key_mask, torch.tensor(-lam, dtype=torch.float64))
        bias = (-lam * key_mask.reshape(B * T, 1, 1, V * N))
        ref = _pi3_block(tokens.reshape(B * T, V * N, C), pi3, "decoder.1", pos.repeat(V, 1), cfg.num_heads, bias)
        plain = agg._attend("view", agg.view_blocks[0], tokens, pos, None, None)
    assert (ours.reshape(B * T, V * N, C) - ref).abs().max() < 1e-12
    assert (ours - plain).abs().max() > 1e-6                                     # the bias does change attention
    special = key_mask[..., :agg.patch_start_idx]
    assert torch.count_nonzero(special) == 0


def test_mask_in_forward_streams_and_lambdas(converted):
    cfg, model, _ = converted
    images = torch.rand(1, 2, 2, 3, 42, 56, dtype=torch.float64)
    with torch.no_grad():
        out = model(images, return_tokens=True)
        pose, geo = out["tokens"]["pose"], out["tokens"]["geo"]
        assert all(torch.equal(a, b) for a, b in zip(pose, geo))                # lambdas 0: one computation
        assert torch.allclose(out["mask"], torch.sigmoid(out["mask_logits"]))    # scalar gate at init, no M_ext
        ext = torch.zeros(1, 2, 2, 42, 56, dtype=torch.float64)
        ext[..., :14, :14] = 1.0                                                 # the first patch of every frame
        fused = model(images, external_mask=ext)["mask"][..., 0]
        assert torch.allclose(fused[..., 0], torch.sigmoid(out["mask_logits"][..., 0, 0] + 1.0))
        assert torch.allclose(fused[..., 1:], out["mask"][..., 1:, 0])
        model.aggregator.lambda_geo_time.fill_(2.0)
        moved = model(images, return_tokens=True)["tokens"]
        model.aggregator.lambda_geo_time.fill_(0.0)
    k = cfg.layer_of_mask
    assert all(torch.equal(a, b) for a, b in zip(moved["pose"], pose))          # the pose stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(moved["geo"][:k], geo[:k]))    # before mask_layer: one stream
    assert (moved["geo"][k] - geo[k]).abs().max() > 1e-6


def test_separate_streams_and_official_head_and_mlp_gate_run():
    for kw in (dict(two_stream="separate"), dict(two_stream="off"), dict(mask_head="official", mask_gating="mlp"),
               dict(aa_order=("view", "time"))):
        model = GeometryModel(tiny_cfg(**kw))
        out = model(torch.rand(1, 2, 2, 3, 28, 28))
        sum(v.sum() for v in out.values() if torch.is_tensor(v)).backward()
        grads = [p.grad for n, p in model.named_parameters() if "spatial_mask_head.head0" in n]
        assert all(g is None for g in grads) or True                            # the head reads detached tokens
    sep = GeometryModel(tiny_cfg(two_stream="separate"))
    names = set(sep.state_dict())
    assert "aggregator.pose_time_blocks.0.attn.qkv.weight" in names and "aggregator.pose_view_blocks.1.ls2.gamma" in names


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = GeometryModel(tiny_cfg()).train()
    b = GeometryModel(dataclasses.replace(tiny_cfg(), activation_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 2, 1, 3, 28, 28)
    for m in (a, b):
        out = m(x)
        (out["depth"].mean() + out["pose_enc"].sum()).backward()
    ga = dict(a.named_parameters())
    for n, p in b.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, ga[n].grad, atol=1e-6), n


def test_time_rope_is_relative_and_leaves_one_time_unchanged():
    from models.geometry.aggregator import SpaceTimeRope

    rope = SpaceTimeRope(100.0, 100.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 4, 16, dtype=torch.float64), torch.randn(1, 1, 4, 16, dtype=torch.float64)
    pos = torch.tensor([[1, 2, 0], [3, 1, 1], [0, 0, 2], [2, 2, 3]])
    score = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    shifted = pos + torch.tensor([0, 0, 5])
    assert torch.allclose(score, rope(q, shifted) @ rope(k, shifted).transpose(-1, -2), atol=1e-5)  # float32 angles
    from models.layers import RotaryEmbedding2D

    plain = RotaryEmbedding2D(100.0)
    same_t = pos.clone()
    same_t[:, 2] = 3
    assert torch.allclose(rope(q, same_t) @ rope(k, same_t).transpose(-1, -2),
                          plain(q, pos[:, :2]) @ plain(k, pos[:, :2]).transpose(-1, -2), atol=1e-5)
    assert not torch.allclose(score, plain(q, pos[:, :2]) @ plain(k, pos[:, :2]).transpose(-1, -2), atol=1e-6)
    torch.manual_seed(0)
    off = GeometryModel(tiny_cfg()).eval()
    on = GeometryModel(tiny_cfg(time_rope=True)).eval()
    on.load_state_dict(off.state_dict())
    x = torch.rand(1, 1, 2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(off(x)["depth"], on(x)["depth"])                      # one time: the same computation
        x2 = torch.rand(1, 2, 2, 3, 28, 28)
        assert not torch.equal(off(x2)["depth"], on(x2)["depth"])


@pytest.mark.parametrize("strategy", ["landmarks", "dilated", "memory"])
def test_sparse_global_blocks_convert_from_view_blocks_and_run(tmp_path, strategy):
    cfg = tiny_cfg(global_every=2, global_strategy=strategy, global_landmarks=4, global_memory=3)
    assert cfg.global_layers == (1,)
    torch.manual_seed(0)
    model = GeometryModel(cfg)
    paths = write_random_sources(cfg, {k: tuple(v.shape) for k, v in model.state_dict().items()}, tmp_path, 1)
    pi3 = read_checkpoint(paths["pi3"])
    state, rows = convert(cfg, model.state_dict(), pi3, read_checkpoint(paths["page4d"]), {"pi3": "a", "page4d": "b"})
    model.load_state_dict(state, strict=True)
    assert torch.equal(state["aggregator.sparse_blocks.0.block.attn.qkv.weight"], pi3["decoder.3.attn.qkv.weight"])
    fresh = {r.target for r in rows if r.source == "fresh"}
    assert ("aggregator.sparse_blocks.0.memory_tokens" in fresh) == (strategy == "memory")
    out = model(torch.rand(1, 2, 2, 3, 42, 56))
    out["depth"].mean().backward()
    assert model.aggregator.sparse_blocks[0].block.attn.qkv.weight.grad is not None


def test_epipolar_prior_is_added_inside_view_attention(converted):
    """Strength 0: the converted model is unchanged; strength s: View-SA logits get exactly the prior's bias."""
    cfg, model, pi3 = converted
    ecfg = dataclasses.replace(cfg, epipolar=True)
    emodel = GeometryModel(ecfg).double().eval()
    state = model.state_dict()
    state["aggregator.epipolar.strength"] = torch.zeros((), dtype=torch.float64)
    emodel.load_state_dict(state, strict=True)
    images = torch.rand(1, 1, 2, 3, 42, 56, dtype=torch.float64)
    K = torch.tensor([[40.0, 0, 27.5], [0, 40.0, 20.5], [0, 0, 1]], dtype=torch.float64).expand(1, 2, 3, 3)
    pose = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    pose[0, 1, 0, 3] = 1.0                                                        # view 1: 1 m to the right
    with torch.no_grad():
        assert torch.equal(model(images)["depth"], emodel(images, intrinsics=K, cam_to_ref=pose)["depth"])
        emodel.aggregator.epipolar.strength.fill_(3.0)
        agg = emodel.aggregator
        tokens, pos = _entry_tokens(agg, images)
        B, T, V, N, C = tokens.shape
        epi = agg.epipolar(K, pose, 3, 4, 14, agg.patch_start_idx, T)           # [B*T, 1, V*N, V*N]
        assert epi.abs().max() > 0
        ours = agg._attend("view", agg.view_blocks[0], tokens, pos, None, None, epi)
        ref = _pi3_block(tokens.reshape(B * T, V * N, C), pi3, "decoder.1", pos.repeat(V, 1), cfg.num_heads, epi)
        assert (ours.reshape(B * T, V * N, C) - ref).abs().max() < 1e-12
        assert not torch.equal(model(images)["depth"], emodel(images, intrinsics=K, cam_to_ref=pose)["depth"])
