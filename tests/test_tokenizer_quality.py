"""What the tokenizer's quality work added (issue 15): grouped tokens (``point_groups``), visibility-aware loss and
scoring (``loss_steps``, :func:`visible_trajectory_metrics`), the no-learning references and the gap shares the
report prints. Hand-worked cases and one short training run that only the grouped layout can fit."""
from __future__ import annotations

import pytest
import torch

from models.common.params import ParamsError, TokenizerParams, parse_section
from models.tokenizer.config import TokenizerConfig
from models.tokenizer.labels import labels_to_displacements, tracks_to_labels, velocities_to_points, visible_steps
from models.tokenizer.metrics import trajectory_metrics, visible_trajectory_metrics
from models.tokenizer.model import MotionTokenizer, block_causal_mask, point_group_index
from models.tokenizer.references import (affine_flow_velocities, as_whole_pixel_tracks,
                                         mean_velocity_velocities)
from models.tokenizer.report import gap_shares

IMG, GRID = (128, 128), (15, 15)
PX = 2 / 128


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cfg(**kw) -> TokenizerConfig:
    base = dict(hidden_dim=32, num_heads=2, num_layers=2, codebook_size=64, decoder_mlp_hidden_dim=32, dropout=0.0,
                point_groups=1, track_codes=0)
    return TokenizerConfig.from_params(TokenizerParams(**{**base, **kw}))


# ------------------------------------------------------------------------------------------------ grouped tokens


def test_point_group_index_blocks_of_the_row_major_grid():
    # 4 x 4 grid, 2 x 2 blocks: n = i * 4 + j -> block (i // 2, j // 2)
    assert point_group_index(16, 2).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    # 5 x 5 grid in 2 x 2 blocks: sizes 3x3 (well: rows 0-2 / 3-4 by i * 2 // 5), padded with the index 25
    index = point_group_index(25, 2)
    sizes = [int((row < 25).sum()) for row in index]
    assert sizes == [9, 6, 6, 4] and index.shape == (4, 9) and int(index[3, -1]) == 25
    assert sorted(int(n) for n in index.flatten() if n < 25) == list(range(25))
    assert point_group_index(16, 1).tolist() == [list(range(16))]
    with pytest.raises(ValueError, match="square query grid"):
        point_group_index(12, 2)
    with pytest.raises(ValueError, match="more than the 4 tracks per side"):
        point_group_index(16, 5)


def test_block_causal_mask():
    mask = block_causal_mask(3, 2)
    assert mask.shape == (6, 6)
    assert mask[0].tolist() == [True, True, False, False, False, False]  # step 0 sees both of its groups
    assert mask[3].tolist() == [True, True, True, True, False, False]
    assert torch.equal(block_causal_mask(4, 1), torch.tril(torch.ones(4, 4, dtype=torch.bool)))


def test_grouped_layout_tokens_causality_and_locality():
    torch.manual_seed(0)
    model = MotionTokenizer(small_cfg(point_groups=2), num_tracks=16, track_horizon=6).eval()
    assert model.num_tokens == 5 * 4
    vel = torch.randn(3, 1, 5, 16, 2) * 0.02
    out = model(vel)
    assert out["indices"].shape == (3, 20) and out["logits"].shape == (3, 1, 5, 16, 225)
    assert torch.allclose(model.decode(out["indices"]), out["logits"], atol=1e-5)
    changed = vel.clone()
    changed[:, :, 3] += 0.05
    z2 = model(changed)["z"]  # tokens (t, g): steps 0-2 are the first 12 tokens
    assert torch.equal(out["z"][:, :12], z2[:, :12]) and not torch.allclose(out["z"][:, 12:], z2[:, 12:])
    # the encoder reads a group's own tracks: a token's input is its block's velocities
    seen = {}
    model.encoder.encoder_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0].detach()))
    model(vel)
    block = point_group_index(16, 2)[1]  # tracks 2, 3, 6, 7
    assert torch.allclose(seen["x"][:, 1], (vel[:, 0, 0, block] * 64.0).reshape(3, 8))  # step 0, group 1
    # each track's logits read its own group's decoder feature: same codes for that group -> same logits
    codes = out["codes"].clone()
    codes[:, 4:] = 0  # keep step 0 of every group, change the rest
    assert not torch.allclose(model.decode_codes(codes), out["logits"])


def test_grouped_params_validate_and_layout_is_one_param_away():
    assert parse_section("tokenizer", {"point_groups": 4}).point_groups == 4
    with pytest.raises(ParamsError, match=r"tokenizer\.point_groups"):
        parse_section("tokenizer", {"point_groups": 0})
    with pytest.raises(ParamsError, match=r"tokenizer\.loss_steps"):
        parse_section("tokenizer", {"loss_steps": "some"})
    with pytest.raises(ValueError, match="square query grid"):
        MotionTokenizer(small_cfg(point_groups=2), num_tracks=12, track_horizon=6)
    # point_groups 1 is AMPLIFY's layout: the same parameters and checkpoint keys as before
    official = MotionTokenizer(small_cfg(), num_tracks=16, track_horizon=6)
    assert official.num_tokens == 5 and official.encoder.encoder_proj.in_features == 32


# ------------------------------------------------------------------------------------------------ visibility


def test_visible_steps_hand_worked():
    visible = torch.tensor([[True, True], [True, False], [False, False], [True, True]])  # (T=4, N=2)
    assert visible_steps(visible).tolist() == [[True, False], [False, False], [False, False]]
    with pytest.raises(ValueError, match="bool"):
        visible_steps(visible.float())


def test_visible_loss_leaves_out_invisible_steps():
    torch.manual_seed(0)
    model = MotionTokenizer(small_cfg(loss_steps="visible"), num_tracks=16, track_horizon=6)
    tracks = torch.cumsum(torch.randn(2, 6, 16, 2) * 0.02, dim=1)
    visible = torch.ones(2, 6, 16, dtype=torch.bool)
    visible[:, 3:, :8] = False  # tracks 0-7 lost from frame 3: steps 2, 3, 4 of them do not count
    velocities, labels = model.inputs(tracks)
    out = model(velocities, labels=labels, visible=visible)
    ce = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 225), labels.reshape(-1), reduction="none")
    keep = visible_steps(visible)[:, None].reshape(-1)
    torch.testing.assert_close(out["loss"], ce[keep].mean())
    # the logits of invisible steps get no gradient
    logits = out["logits"]
    logits.retain_grad()
    out["loss"].backward()
    assert float(logits.grad[:, 0, 2:, :8].abs().max()) == 0.0 and float(logits.grad[:, 0, :2, :8].abs().max()) > 0
    all_steps = MotionTokenizer(small_cfg(), num_tracks=16, track_horizon=6)
    all_steps.load_state_dict(model.state_dict())
    assert not torch.allclose(all_steps(velocities, labels=labels, visible=visible)["loss"], out["loss"])
    with pytest.raises(ValueError, match="no 'visible' flags"):
        model(velocities, labels=labels)


def test_visible_metrics_hand_worked_and_all_visible_equals_the_official():
    torch.manual_seed(0)
    gt = torch.rand(2, 5, 4, 2) - 0.5
    pred = gt + torch.randn_like(gt) * 2 * PX
    everyone = torch.ones(2, 5, 4, dtype=torch.bool)
    official = trajectory_metrics(pred, gt, IMG)
    ours = visible_trajectory_metrics(pred, gt, everyone, IMG)
    for key in ("mse", "l1", "normalized_accuracy", "delta_auc", "pixel_accuracy_3"):
        assert ours[key] == pytest.approx(official[key], rel=1e-6, abs=1e-9)
    # one visible point with a 1.2 px row error and an exact column: MSE = (1.2 px)^2 / 2, half the coordinates
    # within 0.5 px, 1.2 px fails tolerance 1 and passes 2..10
    gt = torch.zeros(1, 1, 2, 2)
    pred = gt.clone()
    pred[0, 0, 0, 0] = 1.2 * PX
    pred[0, 0, 1] = 0.5  # an invisible point far off: ignored
    visible = torch.tensor([[[True, False]]])
    m = visible_trajectory_metrics(pred, gt, visible, IMG)
    assert m["mse"] == pytest.approx((1.2 * PX) ** 2 / 2)
    assert m["normalized_accuracy"] == 0.5 and m["pixel_accuracy_1"] == 0.5 and m["pixel_accuracy_2"] == 1.0
    assert m["delta_auc"] == pytest.approx((0.5 + 9 * 1.0) / 10)
    with pytest.raises(ValueError, match="at least one visible"):
        visible_trajectory_metrics(pred, gt, torch.zeros_like(visible), IMG)


# ------------------------------------------------------------------------------------------------ references


def test_affine_flow_is_exact_on_affine_motion_and_mean_velocity_on_constant_motion():
    torch.manual_seed(0)
    n, steps = 25, 6
    p0 = (torch.rand(3, n, 2) - 0.5) * 0.8
    tracks = [p0]
    for _ in range(steps - 1):  # a different affine map every step (zoom, shear, shift)
        a = torch.eye(2) + torch.randn(3, 2, 2) * 0.02
        b = torch.randn(3, 1, 2) * 0.01
        tracks.append(tracks[-1] @ a + b)
    tracks = torch.stack(tracks, dim=1)  # (3, T, N, 2)
    v = tracks[:, 1:] - tracks[:, :-1]
    torch.testing.assert_close(affine_flow_velocities(tracks), v, atol=1e-6, rtol=0)
    assert not torch.allclose(mean_velocity_velocities(tracks), v, atol=1e-4)
    constant = p0[:, None] + torch.arange(steps).float()[None, :, None, None] * torch.randn(3, 1, n, 2) * 0.01
    torch.testing.assert_close(mean_velocity_velocities(constant), constant[:, 1:] - constant[:, :-1])
    # weights: a lost point's frozen steps do not pull its mean velocity to zero
    frozen = constant.clone()
    frozen[:, 3:, 0] = frozen[:, 2:3, 0]
    weights = torch.ones(3, steps - 1, n)
    weights[:, 2:, 0] = 0
    torch.testing.assert_close(mean_velocity_velocities(frozen, weights)[:, :, 0],
                               (constant[:, 1:, 0] - constant[:, :-1, 0]))


def test_whole_pixel_decoding_of_the_true_velocities_is_the_ceiling():
    torch.manual_seed(1)
    tracks = torch.cumsum(torch.randn(2, 6, 9, 2) * 2 * PX, dim=1) * 0.5
    labels = tracks_to_labels(tracks, IMG, GRID)
    ceiling = velocities_to_points(labels_to_displacements(labels, IMG, GRID), init_points=tracks[:, :1], time_dim=1)
    decoded = as_whole_pixel_tracks(tracks[:, 1:] - tracks[:, :-1], tracks, IMG, GRID)
    torch.testing.assert_close(decoded, ceiling, atol=1e-6, rtol=0)


def test_gap_shares():
    rows = {"zero_motion": {"mse": 0.02, "normalized_accuracy": 0.4, "delta_auc": 0.7},
            "perfect_labels": {"mse": 0.0, "normalized_accuracy": 0.8, "delta_auc": 1.0},
            "model": {"mse": 0.005, "normalized_accuracy": 0.5, "delta_auc": 0.85}}
    share = gap_shares(rows)
    assert share["model"] == pytest.approx({"mse": 0.75, "normalized_accuracy": 0.25, "delta_auc": 0.5})
    assert share["zero_motion"] == {"mse": 0.0, "normalized_accuracy": 0.0, "delta_auc": 0.0}
    assert share["perfect_labels"] == {"mse": 1.0, "normalized_accuracy": 1.0, "delta_auc": 1.0}


# ------------------------------------------------------------------------------------------------ training


def quadrant_windows(batch: int, seed: int, size: int = 32, horizon: int = 5) -> torch.Tensor:
    """4 x 4 tracks whose 2 x 2 quadrants each move with their own whole-pixel velocity (-1..1 px per step):
    9^4 = 6561 motions per step, more than one token's 64 codes, one code per quadrant each."""
    px = 2 / size
    g = torch.Generator().manual_seed(seed)
    cells = torch.linspace(-0.3, 0.3, 4)
    grid = torch.stack(torch.meshgrid(cells, cells, indexing="ij"), dim=-1).reshape(16, 2)
    grid = torch.round(grid / px) * px + 0.2 * px
    quadrant = point_group_index(16, 2)  # (4, 4)
    velocity = torch.zeros(batch, 16, 2)
    velocity[:, quadrant] = (torch.randint(-1, 2, (batch, 4, 1, 2), generator=g).float() * px)
    steps = torch.arange(horizon, dtype=torch.float32)[None, :, None, None]
    return grid[None, None] + steps * velocity[:, None]


def _train(point_groups: int, train: torch.Tensor, steps: int = 250) -> MotionTokenizer:
    torch.manual_seed(0)
    model = MotionTokenizer(small_cfg(hidden_dim=64, num_heads=4, decoder_mlp_hidden_dim=64, img_size=[32, 32],
                                      input_scale=16.0,
                                      point_groups=point_groups), num_tracks=16, track_horizon=5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(steps):
        loss, _ = model.loss({"tracks": train[torch.randint(0, len(train), (32,))]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_grouped_tokens_carry_per_region_motion_one_token_cannot():
    train, val = quadrant_windows(512, seed=0), quadrant_windows(128, seed=1)
    accuracy = {}
    for groups in (1, 2):
        logs = _train(groups, train).evaluate({"tracks": val})
        accuracy[groups] = logs["label_accuracy"]
    assert accuracy[2] > 0.95 and accuracy[1] < 0.5, accuracy  # measured: 0.997 and 0.24


# ------------------------------------------------------------------------------------------------ per-track codes


def test_track_codes_shapes_decode_and_validation():
    torch.manual_seed(0)
    model = MotionTokenizer(small_cfg(track_codes=64), num_tracks=16, track_horizon=6).eval()
    vel = torch.randn(3, 1, 5, 16, 2) * 0.02
    out = model(vel)
    assert out["track_indices"].shape == (3, 16) and out["track_codes"].shape == (3, 16, 32)
    assert model.num_track_codes == 64
    torch.testing.assert_close(model.decode(out["indices"], out["track_indices"]), out["logits"])
    # a track's code changes only that track's logits
    other = out["track_indices"].clone()
    other[:, 5] = (other[:, 5] + 1) % 64
    changed = model.decode(out["indices"], other)
    moved = (changed - out["logits"]).abs().amax(dim=(0, 1, 2, 4))  # (N,)
    assert float(moved[5]) > 0 and float(moved[torch.arange(16) != 5].max()) == 0.0
    with pytest.raises(ValueError, match="track_indices"):
        model.decode(out["indices"])
    with pytest.raises(ValueError, match="per-track codes"):
        model.decode_codes(out["codes"])
    with pytest.raises(ParamsError, match=r"tokenizer\.track_codes"):
        parse_section("tokenizer", {"track_codes": -1})
    with pytest.raises(Exception, match="track_codes"):
        small_cfg(track_codes=10)  # not a size FSQ's table has
    assert "track_indices" in out and MotionTokenizer(small_cfg(), 16, 6)(vel)["track_indices"] is None


def own_velocity_windows(batch: int, seed: int, size: int = 32, horizon: int = 5) -> torch.Tensor:
    """16 tracks each moving with its own whole-pixel velocity (-1..1 px per step): 9^16 motions per step,
    far beyond any per-step code; one code per track each."""
    px = 2 / size
    g = torch.Generator().manual_seed(seed)
    cells = torch.linspace(-0.3, 0.3, 4)
    grid = torch.stack(torch.meshgrid(cells, cells, indexing="ij"), dim=-1).reshape(16, 2)
    grid = torch.round(grid / px) * px + 0.2 * px
    velocity = torch.randint(-1, 2, (batch, 16, 2), generator=g).float() * px
    steps = torch.arange(horizon, dtype=torch.float32)[None, :, None, None]
    return grid[None, None] + steps * velocity[:, None]


def test_track_codes_carry_each_tracks_own_motion():
    train, val = own_velocity_windows(512, seed=0), own_velocity_windows(128, seed=1)
    accuracy = {}
    for track_codes in (0, 64):
        torch.manual_seed(0)
        model = MotionTokenizer(small_cfg(hidden_dim=64, num_heads=4, decoder_mlp_hidden_dim=64, img_size=[32, 32],
                                          input_scale=16.0, track_codes=track_codes), num_tracks=16, track_horizon=5)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
        for _ in range(200):
            loss, _ = model.loss({"tracks": train[torch.randint(0, len(train), (32,))]})
            opt.zero_grad()
            loss.backward()
            opt.step()
        accuracy[track_codes] = model.eval().evaluate({"tracks": val})["label_accuracy"]
    assert accuracy[64] > 0.6 and accuracy[0] < 0.3, accuracy  # measured: 0.68 and 0.17 (9 motions per track)


def test_the_default_layout_at_the_data_shape_and_at_full_width_on_meta():
    """params.yaml's default: 4 x 4 groups (240 step tokens of 512 codes) + 400 track tokens of 256 ([8, 6, 5])."""
    torch.manual_seed(0)
    model = MotionTokenizer(TokenizerConfig.from_params(TokenizerParams()), num_tracks=400, track_horizon=16)
    out = model(torch.randn(2, 1, 15, 400, 2) * 0.01)
    assert out["indices"].shape == (2, 240) and out["track_indices"].shape == (2, 400)
    assert out["logits"].shape == (2, 1, 15, 400, 225) and model.num_track_codes == 240
    with torch.device("meta"):
        full = MotionTokenizer(TokenizerConfig(hidden_dim=768, num_heads=8, num_layers=2, codebook_size=2048),
                               num_tracks=400, track_horizon=16, num_views=2)
    assert all(p.device.type == "meta" for p in full.parameters()) and full.num_tokens == 240
    # the grouped encoder reads 25 tracks x 2 views x 2 per token instead of 800 x 2: fewer input weights
    assert full.encoder.encoder_proj.in_features == 25 * 2 * 2
