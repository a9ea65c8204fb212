"""models/geometry: VGGT heads (checkpoint layout, shapes, gradients) and the absT_quaR_FoV pose encoding."""
from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from models.geometry.heads import (CameraHead, DPTHead, ResidualConvUnit, uv_grid, vggt_depth_head,
                                   vggt_point_head)
from models.geometry.pose_encoding import (extri_intri_to_pose_encoding, mat_to_quat, pose_encoding_to_extri_intri,
                                           quat_to_mat)

from tests.checkpoint_layouts import CANDIDATES as LAYOUT_DIRS
HEADS = ("camera_head", "depth_head", "point_head")


def _layout(name: str) -> dict:
    for root in LAYOUT_DIRS:
        if (root / name).is_file():
            return json.loads((root / name).read_text())
    pytest.skip(f"{name} not found (shared/checkpoint_layouts)")


def _full_heads() -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return {"camera_head": CameraHead(), "depth_head": vggt_depth_head(), "point_head": vggt_point_head()}


# --------------------------------------------------------------------------------------------------
# (a) full size: the checkpoint's keys and shapes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["page4d.json", "vggt.json"])
def test_full_size_state_dict_equals_checkpoint_layout(layout):
    d = _layout(layout)
    heads = _full_heads()
    for prefix, head in heads.items():
        expected = [(t["key"][len(prefix) + 1:], list(t["shape"])) for t in d["tensors"]
                    if t["key"].startswith(prefix + ".")]
        got = [(k, list(v.shape)) for k, v in head.state_dict().items()]
        assert got == expected, prefix                                   # names, shapes and order
        # strict loading of tensors shaped as in the checkpoint
        sd = {k: torch.empty(shape, device="meta") for k, shape in expected}
        head.load_state_dict(sd, strict=True, assign=True)


def test_full_size_parameter_counts():
    d = _layout("page4d.json")
    counts = d["submodule_param_counts"]
    heads = _full_heads()
    for prefix, head in heads.items():
        entries = {k: v for k, v in counts.items() if k == prefix or k.startswith(prefix + ".")}
        total = sum(p.numel() for p in head.parameters())
        assert total == sum(v["numel"] for v in entries.values()), prefix
        for key, v in entries.items():
            if key == prefix:                                            # the head's own parameters
                params = list(head.parameters(recurse=False))
            else:
                params = list(head.get_submodule(key[len(prefix) + 1:]).parameters())
            assert (len(params), sum(p.numel() for p in params)) == (v["num_tensors"], v["numel"]), key
    assert sum(p.numel() for p in heads["camera_head"].parameters()) == 216_174_610


# --------------------------------------------------------------------------------------------------
# (b) tiny configs: forward shapes, gradients
# --------------------------------------------------------------------------------------------------

B, S, H, W, P, R, DIM = 1, 2, 28, 28, 14, 4, 64
TINY_DPT = dict(dim_in=DIM, patch_size=P, features=16, out_channels=(8, 8, 16, 16),
                intermediate_layer_idx=(0, 1, 2, 3))


def _tokens(num_layers: int = 4, requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    n = 1 + R + (H // P) * (W // P)
    return [torch.randn(B, S, n, DIM, generator=g, requires_grad=requires_grad) for _ in range(num_layers)]


def _grads_ok(module: torch.nn.Module):
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in module.parameters())


def test_tiny_camera_head_forward_and_gradients():
    torch.manual_seed(0)
    head = CameraHead(dim_in=DIM, trunk_depth=2, num_heads=4, num_iterations=3)
    tokens = _tokens(requires_grad=True)
    out = head(tokens)
    assert len(out) == 3 and all(o.shape == (B, S, 9) for o in out)
    assert all((o[..., 7:] >= 0).all() for o in out)                    # FoV through ReLU
    assert len(head(tokens, num_iterations=1)) == 1
    sum(o.square().sum() for o in out).backward()
    _grads_ok(head)
    assert tokens[-1].grad[:, :, 0].abs().sum() > 0                     # reads token 0 of the last layer only
    assert tokens[-1].grad[:, :, 1:].abs().sum() == 0 and tokens[0].grad is None


@pytest.mark.parametrize("kind", ["depth", "point"])
def test_tiny_dpt_heads_forward_and_gradients(kind):
    torch.manual_seed(0)
    head = (vggt_depth_head if kind == "depth" else vggt_point_head)(**TINY_DPT)
    tokens = _tokens()
    images = torch.rand(B, S, 3, H, W)
    values, conf = head(tokens, images, patch_start_idx=1 + R)
    channels = 1 if kind == "depth" else 3
    assert values.shape == (B, S, H, W, channels) and conf.shape == (B, S, H, W)
    assert (conf > 1).all()                                             # expp1
    if kind == "depth":
        assert (values > 0).all()                                       # exp
    (values.square().mean() + conf.mean()).backward()
    _grads_ok(head)
    # frame chunking is only a memory bound
    v1, c1 = head(tokens, images, patch_start_idx=1 + R, frames_chunk_size=1)
    torch.testing.assert_close(v1, values.detach())
    torch.testing.assert_close(c1, conf.detach())


def test_tiny_dpt_feature_only_and_non_square():
    torch.manual_seed(0)
    head = DPTHead(**TINY_DPT, feature_only=True)
    h, w = 28, 42
    tokens = [torch.randn(B, S, 1 + R + (h // P) * (w // P), DIM) for _ in range(4)]
    feats = head(tokens, torch.rand(B, S, 3, h, w), patch_start_idx=1 + R)
    assert feats.shape == (B, S, 16, h, w)
    with pytest.raises(ValueError, match="patch tokens"):
        head(tokens, torch.rand(B, S, 3, 28, 28), patch_start_idx=1 + R)


def test_residual_unit_reproduces_vggt_inplace_relu():
    """VGGT's unit: ``out = ReLU(inplace=True)(x)`` (overwrites x), convs, then ``out + x``."""
    torch.manual_seed(0)
    unit = ResidualConvUnit(4)
    x = torch.randn(2, 4, 5, 5)
    ref_x = x.clone()
    relu = torch.nn.ReLU(inplace=True)
    out = relu(ref_x)
    out = unit.conv2(relu(unit.conv1(out)))
    torch.testing.assert_close(unit(x), out + ref_x)


def test_uv_grid_layout():
    uv = uv_grid(4, 3, aspect_ratio=4 / 3)
    assert uv.shape == (3, 4, 2)
    assert uv[0, 0, 0] < 0 and uv[0, 0, 1] < 0 and uv[-1, -1, 0] > 0 and uv[-1, -1, 1] > 0
    torch.testing.assert_close(uv[0, :, 1], uv[0, :1, 1].expand(4))    # v constant along a row


# --------------------------------------------------------------------------------------------------
# (c, d) pose encoding and quaternions
# --------------------------------------------------------------------------------------------------


def test_pose_encoding_round_trip():
    g = torch.Generator().manual_seed(0)
    n = (3, 5)
    hw = (294, 518)
    rot = torch.from_numpy(Rotation.random(15, random_state=0).as_matrix()).reshape(*n, 3, 3)
    t = torch.randn(*n, 3, 1, dtype=torch.float64, generator=g) * 5
    extrinsics = torch.cat([rot, t], dim=-1)                                        # (B, S, 3, 4)
    fx = 200 + 400 * torch.rand(n, dtype=torch.float64, generator=g)
    fy = 200 + 400 * torch.rand(n, dtype=torch.float64, generator=g)
    intrinsics = torch.zeros(*n, 3, 3, dtype=torch.float64)
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = fx, fy
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = hw[1] / 2, hw[0] / 2, 1.0

    enc = extri_intri_to_pose_encoding(extrinsics, intrinsics, hw)
    assert enc.shape == (*n, 9)
    torch.testing.assert_close(enc[..., :3], t[..., 0])
    torch.testing.assert_close(enc[..., 7], 2 * torch.atan(hw[0] / 2 / fy))
    assert (enc[..., 6] >= 0).all()                                                  # w last, standardised
    ext2, int2 = pose_encoding_to_extri_intri(enc, hw)
    torch.testing.assert_close(ext2, extrinsics, atol=1e-5, rtol=0)
    torch.testing.assert_close(int2, intrinsics, atol=1e-5, rtol=1e-5)
    ext3, none = pose_encoding_to_extri_intri(enc, build_intrinsics=False)
    assert none is None
    torch.testing.assert_close(ext3, ext2)
    # float32 round trip
    ext4, int4 = pose_encoding_to_extri_intri(extri_intri_to_pose_encoding(extrinsics.float(), intrinsics.float(), hw),
                                              hw)
    torch.testing.assert_close(ext4, extrinsics.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(int4, intrinsics.float(), atol=1e-3, rtol=1e-5)


def test_quaternions_match_scipy_scalar_last():
    rots = Rotation.random(200, random_state=1)
    q_scipy = rots.as_quat()                                                         # (x, y, z, w)
    q_scipy = q_scipy * (1 - 2 * (q_scipy[:, 3:] < 0))                               # w >= 0
    mats = torch.from_numpy(rots.as_matrix())
    torch.testing.assert_close(quat_to_mat(torch.from_numpy(q_scipy)), mats, atol=1e-12, rtol=0)
    torch.testing.assert_close(mat_to_quat(mats), torch.from_numpy(q_scipy), atol=1e-10, rtol=0)
    # unnormalised quaternions; identity and half turns (w = 0: q and -q both valid, compared up to sign)
    torch.testing.assert_close(quat_to_mat(3 * torch.from_numpy(q_scipy)), mats, atol=1e-12, rtol=0)
    special = Rotation.from_rotvec([[0, 0, 0], [math.pi, 0, 0], [0, math.pi, 0], [0, 0, math.pi],
                                    [math.pi / math.sqrt(2), math.pi / math.sqrt(2), 0]])
    q = torch.from_numpy(special.as_quat())
    got = mat_to_quat(torch.from_numpy(special.as_matrix()))
    err = torch.minimum((got - q).abs().amax(-1), (got + q).abs().amax(-1))
    assert err.max() < 1e-12


def test_mat_to_quat_gradient_finite():
    mats = torch.from_numpy(Rotation.random(8, random_state=2).as_matrix()).requires_grad_(True)
    mat_to_quat(mats).sum().backward()
    assert torch.isfinite(mats.grad).all()
