"""ViT Planner V2 model (models/planner/model.py): RoPE, 2x2 compression, forward/backward, velocity head, sizes."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from models.common.params import ParamsError, PlannerParams, parse_section
from models.layers import Block, RotaryEmbedding2D
from models.planner.config import PlannerConfig
from models.planner.model import (
    ConnectorV2,
    PatchCompressor2x2,
    ViTPlannerV2,
    count_parameters,
    integrate_velocities,
)

# V1 size: img_size and embed_dim from the seed; depth, heads and decoder sizes are ours (the seed gives none)
V1 = {"img_size": 518, "embed_dim": 2048, "depth": 24, "num_heads": 16, "decoder_dim": 1024, "decoder_heads": 16,
      "decoder_layers": 6}


def _small(**kw) -> PlannerConfig:
    base = {"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_dim": 32, "decoder_heads": 2, "decoder_layers": 1,
            "frames": 2, "use_ego_status": False}
    base.update(kw)
    return PlannerConfig(**base)


# -------------------------------------------------------------------------------------------------- config

SEED_PATH = dict(ego_path="queries", route_input="none")  # the seed's architecture (tests/test_planner_route.py: the rest)


def test_config_from_params_takes_only_the_architecture():
    p = PlannerParams(cameras=["CAM_FRONT", "CAM_BACK"], epochs=3, lr=0.1, num_workers=2, figure_samples=0)
    c = PlannerConfig.from_params(p)
    assert c.num_cameras == 2 and c.embed_dim == p.embed_dim and c.img_size == p.img_size
    assert not {"epochs", "lr", "num_workers", "image_cache_mb", "figure_samples", "mlp_lr"} & set(vars(c))
    with pytest.raises(TypeError, match="PlannerConfig"):
        ViTPlannerV2(p)                                          # a params section never reaches the model
    with pytest.raises(ValueError, match="PlannerConfig.img_size"):
        PlannerConfig(img_size=10)


def test_encoder_blocks_use_the_shared_2d_rope():
    """The encoder is built from models/layers: 2-D RoPE on (row, col) of each patch, no rotation of time."""
    model = ViTPlannerV2(_small(depth=2))
    for block in model.encoder.blocks:
        assert isinstance(block, Block) and isinstance(block.attn.rope, RotaryEmbedding2D)
        assert block.attn.rope.theta == 100.0
    assert ViTPlannerV2(_small(use_rope=False)).encoder.blocks[0].attn.rope is None
    names = set(model.state_dict())
    assert {"encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.mlp.fc1.weight",
            "decoder.blocks.0.cross_attn.kv.weight", "decoder.blocks.0.norm3.weight"} <= names


def test_encoder_rotation_depends_on_patch_offset_only():
    """Two frames with the same content give the same tokens (time has no rotation; time_embed zeroed)."""
    torch.manual_seed(0)
    enc = ViTPlannerV2(_small(frames=2, depth=2, img_size=28)).encoder.eval()
    with torch.no_grad():
        enc.time_embed.zero_()
    x = torch.randn(1, 1, 1, 3, 28, 28).expand(1, 2, 1, 3, 28, 28)
    y = enc(x)
    torch.testing.assert_close(y[0, 0], y[0, 1])


# -------------------------------------------------------------------------------------------------- connector


@pytest.mark.parametrize("grid,odd_grid,out", [(16, "pad", 8), (16, "crop", 8), (9, "pad", 5), (9, "crop", 4),
                                               (1, "pad", 1)])
def test_compression_shapes(grid, odd_grid, out):
    comp = PatchCompressor2x2(dim=8, out_dim=12, hidden_dim=0, num_layers=2, odd_grid=odd_grid)
    assert comp(torch.randn(3, grid, grid, 8)).shape == (3, out, out, 12)


def test_odd_grid_pad_keeps_the_last_row_and_column_crop_drops_them():
    x = torch.randn(1, 9, 9, 4)
    y = x.clone()
    y[:, 8, :] += 1.0
    for odd_grid, changed in (("pad", True), ("crop", False)):
        comp = PatchCompressor2x2(4, 6, 0, 2, odd_grid)
        assert (not torch.allclose(comp(x), comp(y))) is changed


def test_compression_concatenates_each_2x2_block():
    comp = PatchCompressor2x2(dim=1, out_dim=4, hidden_dim=0, num_layers=1, odd_grid="pad")
    with torch.no_grad():
        comp.mlp[0].weight.copy_(torch.eye(4))
        comp.mlp[0].bias.zero_()
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    y = comp(x)
    assert y[0, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]       # [a b; c d] -> [a, b, c, d]
    assert y[0, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


@pytest.mark.parametrize("img,compress,odd_grid,per_frame", [(224, True, "pad", 64), (128, True, "pad", 25),
                                                             (128, True, "crop", 16), (128, False, "pad", 81),
                                                             (224, False, "pad", 256)])
def test_connector_tokens(img, compress, odd_grid, per_frame):
    p = _small(img_size=img, use_2x2_compression=compress, odd_grid=odd_grid)
    g = img // 14
    mem = ConnectorV2(p)(torch.randn(2, p.frames, 1, g, g, p.embed_dim))
    assert mem.shape == (2, p.frames * per_frame, p.decoder_dim)
    if not compress:
        assert isinstance(ConnectorV2(p).proj, torch.nn.Linear)
    assert ViTPlannerV2(p).num_memory_tokens == p.frames * per_frame


# -------------------------------------------------------------------------------------------------- model


def _check_forward_backward(p: PlannerConfig, b: int = 2, ego: bool = False):
    torch.manual_seed(0)
    model = ViTPlannerV2(p)
    frames = torch.randn(b, p.frames, 3, p.img_size, p.img_size)
    out = model(frames, torch.randn(b, p.ego_status_dim) if ego else None)
    wp, vel = out["waypoints"], out["velocities"]
    assert wp.shape == vel.shape == (b, p.future_steps, 2)
    assert torch.allclose(wp, torch.cumsum(vel * p.dt, dim=1))
    (wp ** 2).mean().backward()
    for name, t in model.named_parameters():
        assert t.grad is not None, name
        assert torch.isfinite(t.grad).all(), name
    return model


def test_forward_backward_default_size():
    p = PlannerConfig.from_params(PlannerParams(**SEED_PATH))
    model = _check_forward_backward(p, ego=True)
    assert model.encoder.pos_embed is None
    assert model.num_memory_tokens == 4 * 25


def test_absolute_position_path_without_rope():
    model = _check_forward_backward(PlannerConfig(use_rope=False), ego=True)
    assert model.encoder.pos_embed.shape == (81, 128)


def test_rope_makes_the_encoder_position_aware():
    """With RoPE and no absolute embedding, swapping two patches of a frame changes their encodings."""
    torch.manual_seed(0)
    enc = ViTPlannerV2(_small(frames=1, depth=2, img_size=28)).encoder.eval()   # 2x2 patches
    x = torch.randn(1, 1, 1, 3, 28, 28)
    y = enc(x)[0, 0, 0]                                      # (2, 2, D)
    x2 = x.clone()
    x2[..., :14, :14], x2[..., :14, 14:] = x[..., :14, 14:], x[..., :14, :14]
    y2 = enc(x2)[0, 0, 0]
    assert not torch.allclose(y[0, 0], y2[0, 1], atol=1e-5)  # same content, other position


def test_multi_camera_and_ego_status():
    p = _small(num_cameras=2, use_ego_status=True, ego_status_dim=3)
    model = ViTPlannerV2(p)
    out = model(torch.randn(2, 2, 2, 3, 128, 128), torch.randn(2, 3))
    assert out["waypoints"].shape == (2, 6, 2)
    assert model.num_memory_tokens == 2 * 2 * 25           # the ego status conditions the queries instead
    model.eval()
    frames, z = torch.randn(2, 2, 2, 3, 128, 128), torch.randn(2, 3)
    base = model(frames, z)["waypoints"]
    assert not torch.allclose(base, model(frames, z + 1.0)["waypoints"])   # the ego status reaches the output
    mean, std = torch.tensor([5.0, -1.0, 0.5]), torch.tensor([2.0, 0.5, 4.0])
    model.set_ego_normalization(mean, std)                  # standardised inside: mean + std * z acts like z
    torch.testing.assert_close(model(frames, mean + std * z)["waypoints"], base)
    assert set(model.state_dict()) >= {"ego_mean", "ego_std"}  # saved with the weights
    with pytest.raises(ValueError, match="ego_status"):
        model(torch.randn(2, 2, 2, 3, 128, 128))
    with pytest.raises(ValueError, match="frames must be"):
        model(torch.randn(2, 2, 3, 128, 128))            # one camera given, two configured
    _check_forward_backward(_small(use_ego_status=True), ego=True)


def test_wrong_image_size_is_refused():
    model = ViTPlannerV2(_small())
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 2, 3, 112, 112))


# -------------------------------------------------------------------------------------------------- head


def test_velocity_integration_hand_case():
    v = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, -1.0], [4.0, 2.0]]])
    wp = integrate_velocities(v, 0.5)
    assert wp.tolist() == [[[0.5, 0.0], [1.5, 0.0], [1.5, -0.5], [3.5, 0.5]]]


def test_velocity_head_unit_integrates_its_velocities():
    model = ViTPlannerV2(_small())
    vel, wp = model.head(torch.randn(3, 6, 32))
    assert vel.shape == wp.shape == (3, 6, 2)
    assert torch.allclose(wp[:, 0], vel[:, 0] * 0.5)
    assert torch.allclose(wp[:, 1:] - wp[:, :-1], vel[:, 1:] * 0.5, atol=1e-6)


# -------------------------------------------------------------------------------------------------- sizes


def expected_parameters(p: PlannerConfig) -> int:
    """Parameter count from the architecture description, written independently of the modules."""
    d, dd, n_cam = p.embed_dim, p.decoder_dim, p.num_cameras
    g = p.img_size // p.patch_size
    h, hd = int(d * p.mlp_ratio), int(dd * p.mlp_ratio)
    enc = 3 * p.patch_size ** 2 * d + d + p.frames * d + n_cam * d + (0 if p.use_rope else g * g * d)
    enc += p.depth * (2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)) + 2 * d
    if p.use_2x2_compression:
        widths = [4 * d] + [p.compression_hidden_dim or 4 * d] * (p.compression_num_layers - 1) + [dd]
        conn = sum(a * b + b for a, b in itertools.pairwise(widths))
    else:
        conn = d * dd + dd
    dec = p.future_steps * dd + 2 * dd
    dec += p.decoder_layers * (3 * 2 * dd + (4 * dd * dd + 4 * dd) + (4 * dd * dd + 4 * dd)
                               + (dd * hd + hd) + (hd * dd + dd))
    head = dd * dd + dd + dd * 2 + 2
    ego = p.ego_status_dim * dd + dd if p.use_ego_status else 0
    return enc + conn + dec + head + ego


@pytest.mark.parametrize("kw", [{}, {"use_rope": False}, {"use_2x2_compression": False},
                                {"compression_hidden_dim": 100, "compression_num_layers": 3},
                                {"use_ego_status": True, "num_cameras": 2}])
def test_parameter_count_matches_the_formula(kw):
    p = dataclasses.replace(PlannerConfig.from_params(PlannerParams(**SEED_PATH)), **kw)
    with torch.device("meta"):
        model = ViTPlannerV2(p)
    assert count_parameters(model) == expected_parameters(p)


def test_default_parameter_count():
    assert expected_parameters(PlannerConfig.from_params(PlannerParams(**SEED_PATH))) == 1_348_866


def test_v1_size_instantiates_on_meta():
    p = PlannerConfig.from_params(PlannerParams(**V1, **SEED_PATH))
    with torch.device("meta"):
        model = ViTPlannerV2(p)
    assert model.encoder.grid == 37                          # 518 / 14 exactly
    assert model.num_memory_tokens == 4 * 19 * 19            # 37x37 -> pad -> 19x19 per frame
    assert next(model.parameters()).device.type == "meta"
    assert count_parameters(model) == expected_parameters(p) == 1_387_171_842   # incl. the ego-status embedding


# -------------------------------------------------------------------------------------------------- params


def _arch(**values) -> PlannerConfig:
    """Load a planner section and make its model config, as a stage does before any work."""
    return PlannerConfig.from_params(parse_section("planner", values))


def test_img_size_smaller_than_patch_is_a_params_error():
    with pytest.raises(ParamsError, match=r"planner\.img_size = 10.*patch_size"):
        _arch(img_size=10)
    with pytest.raises(ParamsError, match=r"planner\.img_size"):
        _arch(img_size=13, patch_size=14)
    _arch(img_size=14)                                       # exactly one patch is fine


def test_other_planner_params_errors():
    with pytest.raises(ParamsError, match=r"planner\.embed_dim"):
        _arch(embed_dim=100, num_heads=3)
    with pytest.raises(ParamsError, match=r"planner\.num_heads"):
        _arch(embed_dim=96, num_heads=16)                    # head width 6, not divisible by 4
    _arch(embed_dim=96, num_heads=16, use_rope=False)
    with pytest.raises(ParamsError, match=r"planner\.odd_grid"):
        _arch(img_size=20, odd_grid="crop")                  # 1x1 grid, crop leaves nothing
    with pytest.raises(ParamsError, match=r"planner\.odd_grid"):
        parse_section("planner", {"odd_grid": "drop"})
