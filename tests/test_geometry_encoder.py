"""models/geometry/encoder.py: DINOv2 ViT-L/14 reg4 layout (VGGT / PAGE-4D / Pi3) and equivalence with DINOv2.

The reference below is written from DINOv2's definition (``dinov2/models/vision_transformer.py``
``prepare_tokens_with_masks`` / ``interpolate_pos_encoding`` / ``forward_features`` and its ``Block``) with plain
torch ops on a bare state_dict: explicit softmax attention on DINOv2's ``(B, N, 3, H, D)`` qkv reshape,
``F.layer_norm``, erf GELU. timm is not used: it imports torchvision, whose PyPI build (0.28.0 for torch 2.13)
does not load against the CPU torch build. The antialiased bicubic resampling itself is checked against weights
written out by hand (PIL's / torch's antialias filter, cubic a = -0.5).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.geometry.encoder import DinoV2Config, DinoV2Encoder, resample_pos_embed

from tests.checkpoint_layouts import layout_dir

LAYOUTS = layout_dir() or Path("shared/checkpoint_layouts")
TINY = dict(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, num_register_tokens=4)


def _layout(name: str, prefix: str) -> tuple[list[tuple[str, tuple]], dict]:
    path = LAYOUTS / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    d = json.loads(path.read_text())
    keys = [(t["key"][len(prefix):], tuple(t["shape"])) for t in d["tensors"] if t["key"].startswith(prefix)]
    return keys, d


# -------------------------------------------------------------------------------------------------
# layout
# -------------------------------------------------------------------------------------------------


def test_full_size_state_dict_matches_page4d_and_pi3():
    with torch.device("meta"):
        enc = DinoV2Encoder(DinoV2Config())
    ours = [(k, tuple(v.shape)) for k, v in enc.state_dict().items()]
    n_params = sum(p.numel() for p in enc.parameters())
    assert (len(ours), n_params) == (344, 304_372_736)           # the layout files' numbers, kept here too
    assert enc.blocks[0].norm1.eps == enc.blocks[23].norm2.eps == enc.norm.eps == 1e-6

    page4d, d = _layout("page4d.json", "aggregator.patch_embed.")
    assert ours == page4d                                        # same keys, shapes and order
    assert n_params == d["submodule_param_counts"]["aggregator.patch_embed"]["numel"]

    pi3, p = _layout("pi3.json", "encoder.")
    assert [kv for kv in ours if kv[0] != "mask_token"] == pi3
    pi3_numel = sum(v["numel"] for k, v in p["submodule_param_counts"].items() if k.split(".")[0] == "encoder")
    assert pi3_numel == n_params - 1024                          # all but mask_token [1, 1024]


# -------------------------------------------------------------------------------------------------
# independent DINOv2 reference
# -------------------------------------------------------------------------------------------------


def _cubic_aa(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _aa_bicubic_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of antialiased bicubic resampling (align_corners=False), written out."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1 else 2.0
    inv = 1.0 / scale if scale >= 1 else 1.0
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            w[i, j] = _cubic_aa((j - centre + 0.5) * inv)
        w[i] /= w[i].sum()
    return w


def _dinov2_pos_embed(pos_embed, x_tokens, w, h, patch):
    """DINOv2 ``interpolate_pos_encoding`` (interpolate_offset=0, antialias=True); (w, h) = the image's (H, W)."""
    npatch = x_tokens.shape[1] - 1
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    dim = x_tokens.shape[-1]
    w0, h0 = w // patch, h // patch
    m = int(math.sqrt(n))
    patch_pos = F.interpolate(pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2), size=(w0, h0),
                              mode="bicubic", antialias=True)
    assert (w0, h0) == patch_pos.shape[-2:]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1], patch_pos), dim=1)


def _dinov2_reference(sd: dict, x: torch.Tensor, patch: int, heads: int, eps: float = 1e-6, masks=None):
    """DINOv2 ``forward_features`` from a state_dict: returns the normalised tokens [cls, registers, patches]."""
    b, _, w, h = x.shape                                         # DINOv2 names H "w" and W "h"
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    if masks is not None:
        t = torch.where(masks.unsqueeze(-1), sd["mask_token"].unsqueeze(0), t)
    t = torch.cat((sd["cls_token"].expand(b, -1, -1), t), dim=1)
    t = t + _dinov2_pos_embed(sd["pos_embed"], t, w, h, patch)
    t = torch.cat((t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]), dim=1)
    c = t.shape[-1]
    d = c // heads
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = lambda name: sd[f"blocks.{i}.{name}"]                # noqa: E731
        y = F.layer_norm(t, (c,), p("norm1.weight"), p("norm1.bias"), eps)
        n = y.shape[1]
        qkv = (y @ p("attn.qkv.weight").T + p("attn.qkv.bias")).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * d ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(b, n, c)
        o = o @ p("attn.proj.weight").T + p("attn.proj.bias")
        t = t + p("ls1.gamma") * o
        y = F.layer_norm(t, (c,), p("norm2.weight"), p("norm2.bias"), eps)
        y = y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")
        y = 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))
        y = y @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
        t = t + p("ls2.gamma") * y
    return F.layer_norm(t, (c,), sd["norm.weight"], sd["norm.bias"], eps)


def _random_tiny(dtype=torch.float64) -> DinoV2Encoder:
    """The tiny encoder with every tensor random (seeded): gammas, norms and biases too, not just the init."""
    torch.manual_seed(0)
    enc = DinoV2Encoder(DinoV2Config(**TINY)).to(dtype).eval()
    with torch.no_grad():
        for name, prm in enc.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                prm.copy_(1.0 + 0.2 * torch.randn_like(prm))
            elif name.endswith("gamma"):
                prm.copy_(0.5 + torch.rand_like(prm))
            elif name.endswith(("weight",)) and prm.dim() >= 2:
                prm.normal_(0.0, 1.0 / math.sqrt(prm[0].numel()))
            else:
                prm.normal_(0.0, 0.5)
    return enc


@pytest.mark.parametrize("hw", [(42, 70), (56, 56), (28, 56)])
def test_matches_independent_dinov2_reference(hw):
    """42x70: pos_embed 4x4 -> 3x5 (rows down, cols up, antialias on both); 56x56: no interpolation."""
    enc = _random_tiny(torch.float64)
    sd = {k: v.detach() for k, v in enc.state_dict().items()}
    torch.manual_seed(1)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    with torch.no_grad():
        patches, tokens = enc(x, return_all_tokens=True)
        ref = _dinov2_reference(sd, x, 14, TINY["num_heads"])
    n_patch = (hw[0] // 14) * (hw[1] // 14)
    assert patches.shape == (2, n_patch, 64) and tokens.shape == (2, 5 + n_patch, 64)
    diff = (tokens - ref).abs().max().item()
    assert diff < 1e-10, f"float64 max abs diff to the DINOv2 reference at {hw}: {diff:.3g}"
    assert torch.equal(patches, tokens[:, 5:])

    # float32 (the run-time dtype) against the float64 reference
    enc32 = enc.float()
    with torch.no_grad():
        out32 = enc32(x.float(), return_all_tokens=True)[1]
    diff32 = (out32.double() - ref).abs().max().item()
    assert diff32 < 1e-4, f"float32 max abs diff to the float64 DINOv2 reference at {hw}: {diff32:.3g}"


def test_masks_use_mask_token_as_dinov2():
    enc = _random_tiny(torch.float64)
    sd = {k: v.detach() for k, v in enc.state_dict().items()}
    torch.manual_seed(2)
    x = torch.randn(2, 3, 42, 70, dtype=torch.float64)
    masks = torch.rand(2, 15) > 0.5
    with torch.no_grad():
        out = enc(x, masks=masks, return_all_tokens=True)[1]
        ref = _dinov2_reference(sd, x, 14, TINY["num_heads"], masks=masks)
        assert not torch.allclose(out, enc(x, return_all_tokens=True)[1])
    diff = (out - ref).abs().max().item()
    assert diff < 1e-10, f"masked: float64 max abs diff to the DINOv2 reference: {diff:.3g}"


# -------------------------------------------------------------------------------------------------
# pos-embed resampling
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("g,new", [(4, (3, 5)), (37, (27, 27)), (37, (21, 37)), (6, (6, 6))])
def test_resample_pos_embed_matches_hand_written_antialiased_bicubic(g, new):
    torch.manual_seed(3)
    pe = torch.randn(1, 1 + g * g, 8, dtype=torch.float64)
    out = resample_pos_embed(pe, new)
    gh, gw = new
    wr, wc = _aa_bicubic_weights(g, gh), _aa_bicubic_weights(g, gw)
    grid = pe[0, 1:].reshape(g, g, 8)
    want = torch.einsum("ai,ijc,bj->abc", wr, grid, wc).reshape(gh * gw, 8)
    assert out.shape == (1, 1 + gh * gw, 8)
    assert torch.equal(out[0, 0], pe[0, 0])                     # cls row kept
    diff = (out[0, 1:] - want).abs().max().item()
    assert diff < 1e-12, f"max abs diff to hand-written antialiased bicubic {g}->{new}: {diff:.3g}"
    # not the plain (non-antialiased, a = -0.75) bicubic when shrinking or enlarging
    if new != (g, g):
        plain = F.interpolate(grid.permute(2, 0, 1)[None], size=new, mode="bicubic", antialias=False)
        assert not torch.allclose(out[0, 1:], plain[0].permute(1, 2, 0).reshape(-1, 8))


def test_resample_pos_embed_orientation_dtype_and_identity():
    g = 5
    rows = torch.arange(g, dtype=torch.float32).repeat_interleave(g)            # channel 0 = patch row
    cols = torch.arange(g, dtype=torch.float32).repeat(g)                       # channel 1 = patch column
    pe = torch.cat((torch.zeros(1, 2), torch.stack((rows, cols), dim=1)))[None]  # (1, 1 + 25, 2)
    out = resample_pos_embed(pe.to(torch.bfloat16), (3, 7))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 22, 2)
    grid = out[0, 1:].float().reshape(3, 7, 2)
    assert torch.allclose(grid[..., 0], grid[:, :1, 0].expand(3, 7), atol=1e-2)   # row channel: constant per row
    assert torch.allclose(grid[..., 1], grid[:1, :, 1].expand(3, 7), atol=1e-2)   # col channel: constant per col
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all() and (grid[0, 1:, 1] > grid[0, :-1, 1]).all()
    assert resample_pos_embed(pe, (5, 5)) is pe
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(torch.zeros(1, 1 + 12, 4), (3, 3))


def test_converted_model_at_another_size_matches_run_time_interpolation():
    """A model built at 42 px with pos_embed resampled offline = the 56 px model interpolating at run time."""
    big = _random_tiny(torch.float64)
    small = DinoV2Encoder(DinoV2Config(**{**TINY, "img_size": 42})).to(torch.float64).eval()
    sd = big.state_dict()
    sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], (3, 3))
    small.load_state_dict(sd)
    x = torch.randn(1, 3, 42, 42, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), atol=1e-12, rtol=0)


# -------------------------------------------------------------------------------------------------
# errors and config
# -------------------------------------------------------------------------------------------------


def test_input_not_a_multiple_of_the_patch_is_refused():
    enc = DinoV2Encoder(DinoV2Config(**TINY))
    with pytest.raises(ValueError, match=r"43x56.*patch size 14"):
        enc(torch.zeros(1, 3, 43, 56))


def test_config_checks_and_defaults():
    from models.common.params import ConfigError

    c = DinoV2Config()
    assert (c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio, c.num_register_tokens,
            c.init_values, c.norm_eps, c.grid, c.num_prefix_tokens) == (518, 14, 1024, 24, 16, 4.0, 4, 1.0, 1e-6,
                                                                       37, 5)
    with pytest.raises(ConfigError, match="img_size"):
        DinoV2Config(img_size=500)
    with pytest.raises(ConfigError, match="embed_dim"):
        DinoV2Config(embed_dim=100, num_heads=16)
