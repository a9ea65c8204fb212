"""The AMPLIFY motion tokenizer: public label / metric functions against hand-worked cases, FSQ levels, the model's
shapes, size, loss options and a short training run.

Units in the hand-worked cases: img_size 128 x 128, so pixel p of a row is n * 64 + 64 and one pixel is
2 / 128 = 1 / 64 = 0.015625 normalised; class = (d_row + 7) * 15 + (d_col + 7) on the 15 x 15 grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.common.params import ParamsError, TokenizerParams, load_section, parse_section
from models.tokenizer import fsq_levels
from models.tokenizer.labels import (center_class, labels_to_displacements, logits_to_displacements,
                                     tracks_to_labels, velocities_to_points)
from models.tokenizer.metrics import METRIC_KEYS, codebook_perplexity, trajectory_metrics
from models.tokenizer.config import TokenizerConfig
from models.tokenizer.model import MotionTokenizer

ROOT = Path(__file__).resolve().parents[1]
IMG = (128, 128)
GRID = (15, 15)
PX = 1 / 64  # one pixel, normalised
AMPLIFY_LAYOUT = dict(point_groups=1, track_codes=0)  # one token per step (the default is 4 x 4 groups + track codes)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: the same numbers on every machine, and no OpenMP spin-waiting when other jobs share
    the cores (two threads on a busy 2-core box made the training test 20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_of(pixel: float, size: int = 128) -> float:
    """Normalised coordinate of a (fractional) pixel position: (p - H/2) / (H/2)."""
    return (pixel - size / 2) / (size / 2)


def track(*points_px, size=(128, 128)) -> torch.Tensor:
    """One track (T, 1, 2) from (row, col) pixel positions."""
    return torch.tensor([[[n_of(r, size[0]), n_of(c, size[1])]] for r, c in points_px], dtype=torch.float32)


def cls(d_row: int, d_col: int) -> int:
    return (d_row + 7) * 15 + (d_col + 7)


# ------------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("points, expected, why", [
    (((63.5, 10), (64.5, 10)), cls(0, 0), "63.5 -> 64 and 64.5 -> 64 (half to even), not +1 as floor(x + .5)"),
    (((2.5, 10), (3.5, 10)), cls(2, 0), "2.5 -> 2, 3.5 -> 4: +2 (floor(x + .5) would give +1)"),
    (((0.5, 10), (1.5, 10)), cls(2, 0), "0.5 -> 0, 1.5 -> 2"),
    (((10, 10), (11, 10)), cls(1, 0), "one pixel down is row +1: class 127"),
    (((10, 10), (10, 11)), cls(0, 1), "one pixel right is col +1: class 113"),
    (((10, 10), (17, 3)), cls(7, -7), "exactly +-7 px is inside the window"),
    (((10, 10), (20, 1)), cls(7, -7), "+10 / -9 px clamp to the window edge +-7"),
    (((126, 10), (128, 10)), cls(1, 0), "n = +1 is pixel 128, clamped to 127 before differencing: +1 not +2"),
    (((126, 10), (160, 10)), cls(1, 0), "far below the image: the border clamp wins over the window clamp"),
    (((128, 10), (140, 10)), cls(0, 0), "a track that stays outside the frame reads as stationary at the border"),
    (((1, 5), (-12.8, -40)), cls(-1, -5), "negative pixels clamp to 0"),
    (((127.5, 127.5), (127.4, 127.4)), cls(0, 0), "127.5 clamps to 127 (not 128), 127.4 rounds to 127"),
])
def test_tracks_to_labels_hand_worked(points, expected, why):
    label = tracks_to_labels(track(*points), IMG, GRID)
    assert label.shape == (1, 1) and label.dtype == torch.long
    assert int(label) == expected, why


def test_tracks_to_labels_row_col_order_and_non_square_image():
    assert center_class(GRID) == 112
    # H = 64 rows, W = 128 cols: the same normalised step of 2/64 is 1 row pixel but 2 column pixels
    step = 2 / 64
    tracks = torch.tensor([[[0.0, 0.0]], [[step, 0.0]], [[step, step]]])
    assert tracks_to_labels(tracks, (64, 128), GRID)[:, 0].tolist() == [cls(1, 0), cls(0, 2)]
    # a 5 x 5 grid clamps at +-2 and has 25 classes: (+3, -1) px -> (+2, -1) -> (2 + 2) * 5 + (-1 + 2) = 21
    assert int(tracks_to_labels(track((10, 10), (13, 9)), IMG, (5, 5))) == 21


def test_tracks_to_labels_shapes_and_bad_input():
    tracks = torch.rand(2, 3, 5, 4, 2) * 2 - 1
    assert tracks_to_labels(tracks, IMG, GRID).shape == (2, 3, 4, 4)
    bad = tracks.clone()
    bad[1, 0, 2, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        tracks_to_labels(bad, IMG, GRID)
    bad[1, 0, 2, 3, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        tracks_to_labels(bad, IMG, GRID)
    with pytest.raises(ValueError, match="odd"):
        tracks_to_labels(tracks, IMG, (4, 4))  # the official formula overflows for even grids
    with pytest.raises(ValueError, match="at least 2 time steps"):
        tracks_to_labels(tracks[:, :, :1], IMG, GRID)


def one_hot_logits(*classes: int, num: int = 225) -> torch.Tensor:
    logits = torch.zeros(len(classes), num)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = 5.0
    return logits


def test_logits_to_displacements_hand_worked():
    out = logits_to_displacements(one_hot_logits(cls(1, 0), cls(0, 1), 0, 224, 112), IMG, GRID)
    expected = [[PX, 0.0], [0.0, PX], [-7 * PX, -7 * PX], [7 * PX, 7 * PX], [0.0, 0.0]]
    assert out.dtype == torch.float32 and out.tolist() == expected  # 7 px = 0.109375 exactly
    # argmax, not an expectation: equal logits decode to the first class, (-7, -7) px
    assert logits_to_displacements(torch.zeros(225), IMG, GRID).tolist() == [-7 * PX, -7 * PX]
    # a tie between classes 50 and 60 goes to 50: row 50 // 15 - 7 = -4, col 50 % 15 - 7 = -2
    tie = torch.zeros(225)
    tie[[50, 60]] = 3.0
    assert logits_to_displacements(tie, IMG, GRID).tolist() == [-4 * PX, -2 * PX]
    # one row pixel of a 64-row image is 2 / 64; the scale is 2 / H, not 2 / (H - 1)
    assert logits_to_displacements(one_hot_logits(cls(1, 1)), (64, 128), GRID).tolist() == [[1 / 32, 1 / 64]]
    # a 5 x 5 grid: class 24 = (+2, +2) px
    assert logits_to_displacements(one_hot_logits(24, num=25), IMG, (5, 5)).tolist() == [[2 * PX, 2 * PX]]
    # leading axes are kept: (b, v, t, n, C) -> (b, v, t, n, 2)
    assert logits_to_displacements(torch.randn(2, 1, 3, 4, 225), IMG, GRID).shape == (2, 1, 3, 4, 2)
    with pytest.raises(ValueError, match="225 classes"):
        logits_to_displacements(torch.zeros(3, 224), IMG, GRID)
    with pytest.raises(ValueError, match="NaN or infinite"):
        logits_to_displacements(torch.full((225,), float("nan")), IMG, GRID)


def test_labels_round_trip_every_class():
    labels = torch.arange(225)
    d = labels_to_displacements(labels, IMG, GRID)
    # back to pixels and classes: (row + 7) * 15 + (col + 7)
    px = torch.round(d * 64).long()
    assert ((px[:, 0] + 7) * 15 + (px[:, 1] + 7)).tolist() == labels.tolist()
    assert torch.equal(logits_to_displacements(torch.nn.functional.one_hot(labels, 225).float(), IMG, GRID), d)


def test_velocities_to_points_hand_worked():
    velocities = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[-1.0, -1.0]]]])  # (1, 3, 1, 2)
    init = torch.tensor([[[[10.0, 20.0]]]])  # (1, 1, 1, 2)
    points = velocities_to_points(velocities, init_points=init, time_dim=1)
    assert points.tolist() == [[[[10.0, 20.0]], [[11.0, 20.0]], [[11.0, 22.0]], [[10.0, 21.0]]]]
    # negative time axis, broadcasting one initial point over the batch
    points = velocities_to_points(velocities[0], init_points=init[0], time_dim=-3)
    assert points[:, 0].tolist() == [[10.0, 20.0], [11.0, 20.0], [11.0, 22.0], [10.0, 21.0]]


# ------------------------------------------------------------------------------------------------ metrics


def test_trajectory_metrics_hand_worked():
    # one track over 4 steps, (row, col) in pixels; errors per coordinate: 0, 0 | .5, 0 | 0, 1 | 3, 0 px
    gt = track((64, 64), (64, 65), (64, 66), (64, 67))
    pred = track((64, 64), (64.5, 65), (64, 67), (67, 67))
    m = trajectory_metrics(pred, gt, IMG)
    assert tuple(m) == METRIC_KEYS and all(isinstance(v, float) for v in m.values())
    assert m["mse"] == pytest.approx((0.25 + 1 + 9) / 8 * PX ** 2, rel=1e-6)
    assert m["l1"] == pytest.approx((0.5 + 1 + 3) / 8 * PX, rel=1e-6)
    # per predicted point the nearest GT point of the same track at any time: 0, .5, 0, 3 px
    assert m["cross_track_l2"] == pytest.approx((0 + 0.5 + 0 + 3) / 4 * PX, rel=1e-6)
    # swapped arguments give another number (0, .5, 1, 0 px): the order is part of the definition
    swapped = trajectory_metrics(gt, pred, IMG)["cross_track_l2"]
    assert swapped == pytest.approx((0 + 0.5 + 1 + 0) / 4 * PX, rel=1e-6)
    # strict thresholds per coordinate: 0.5 px fails the half-pixel test, 1 px fails k = 1, 3 px fails k = 3
    assert m["normalized_accuracy"] == 5 / 8
    assert [m[f"pixel_accuracy_{k}"] for k in range(1, 11)] == [6 / 8, 7 / 8, 7 / 8] + [1.0] * 7
    assert m["delta_auc"] == pytest.approx((6 / 8 + 7 / 8 + 7 / 8 + 7) / 10, rel=1e-6)
    # velocity elements: gt (0,1) (0,1) (0,1); pred (.5,1) (-.5,2) (3,0) -> tp 2, fp 3, tn 0, fn 1
    assert m["nonzero_gt_percent"] == pytest.approx(3 / 6)
    assert m["nonzero_pred_percent"] == pytest.approx(5 / 6)
    assert m["nonzero_pred_accuracy"] == pytest.approx(2 / 6)
    assert m["nonzero_pred_f1"] == pytest.approx(2 / (2 + 0.5 * 4))


def test_trajectory_metrics_static_and_shapes():
    still = torch.zeros(2, 5, 3, 2)  # (B, T, N, 2)
    m = trajectory_metrics(still, still, IMG)
    assert m["mse"] == 0.0 and m["delta_auc"] == 1.0 and m["normalized_accuracy"] == 1.0
    assert m["nonzero_pred_f1"] == 0.0 and m["nonzero_pred_accuracy"] == 1.0  # F1 denominator 0 -> 0.0
    gt = torch.randn(2, 2, 5, 3, 2) * 0.1  # (B, V, T, N, 2)
    pred = gt + 0.01
    assert trajectory_metrics(pred, gt, IMG)["mse"] == pytest.approx(1e-4, rel=1e-4)
    assert trajectory_metrics(pred[:, 0], gt[:, 0], IMG)["l1"] == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match="shapes differ"):
        trajectory_metrics(pred, gt[:, :1], IMG)
    with pytest.raises(ValueError, match="NaN"):
        trajectory_metrics(pred * float("nan"), gt, IMG)


def test_codebook_perplexity_hand_worked():
    p, norm = codebook_perplexity(torch.tensor([0, 0, 1, 1]), 4)
    assert p == pytest.approx(2.0, rel=1e-6) and norm == pytest.approx(0.5, rel=1e-6)
    p, norm = codebook_perplexity(torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), 2048)
    assert p == pytest.approx(4.0, rel=1e-6) and norm == pytest.approx(1.0, rel=1e-6)  # / min(2048, 4)
    p, norm = codebook_perplexity(torch.full((8,), 5), 16)
    assert p == pytest.approx(1.0, rel=1e-6) and norm == pytest.approx(1 / 8, rel=1e-6)
    with pytest.raises(ValueError, match="integer"):
        codebook_perplexity(torch.tensor([0.0, 1.0]), 4)


# ------------------------------------------------------------------------------------------------ FSQ levels


@pytest.mark.parametrize("size, levels", [
    (16, [5, 3]), (64, [8, 8]), (256, [8, 6, 5]), (512, [8, 8, 8]), (1024, [8, 5, 5, 5]), (2048, [8, 8, 6, 5]),
    (4096, [7, 5, 5, 5, 5]), (3000, [8, 8, 6, 5]), (4095, [8, 8, 6, 5]), (2000, [8, 5, 5, 5]), (31, [5, 3]),
])
def test_fsq_levels_official_mapping(size, levels):
    assert fsq_levels(size) == levels


def test_fsq_levels_unsupported_sizes_raise():
    for size in (1, 8, 15, 32, 63, 128, 255, 8192, 10000):
        with pytest.raises(ValueError, match="no FSQ levels"):
            fsq_levels(size)
    for size in (0, -4, 2.5, True):
        with pytest.raises(ValueError):
            fsq_levels(size)
    assert math.prod(fsq_levels(2048)) == 1920  # the official default has only 1920 codes


# ------------------------------------------------------------------------------------------------ params


def test_params_validation():
    assert TokenizerParams().codebook_size in (512,) and fsq_levels(TokenizerParams().codebook_size)
    assert parse_section("tokenizer", {"loss": "focal"}).loss == "focal"
    for values, key, why in [
        ({"codebook_size": 128}, "tokenizer.codebook_size", "no FSQ levels"),
        ({"hidden_dim": 100, "num_heads": 8}, "tokenizer.hidden_dim", "divisible"),
        ({"num_layers": 1}, "tokenizer.num_layers", ">= 2"),
        ({"rel_cls_img_size": [14, 15]}, "tokenizer.rel_cls_img_size", "odd"),
        ({"img_size": [128.0, 128]}, "tokenizer.img_size", "integers"),
        ({"loss": "mse"}, "tokenizer.loss", "one of"),
    ]:
        with pytest.raises(ParamsError) as err:  # types at load, architecture rules when the config is made
            TokenizerConfig.from_params(parse_section("tokenizer", values))
        assert key in str(err.value) and why in str(err.value), str(err.value)


def test_focal_from_params_file(tmp_path):
    """`dvc exp run -S tokenizer.loss=focal` rewrites params.yaml; the section loads and the loss runs."""
    text = (ROOT / "params.yaml").read_text()
    section = text[text.index("\ntokenizer:"):]
    assert "  loss: relative_ce" in section
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(section, section.replace("  loss: relative_ce", "  loss: focal", 1)))
    cfg = load_section("tokenizer", path)
    assert cfg.loss == "focal" and cfg == TokenizerParams(loss="focal")
    model = MotionTokenizer(small_cfg(loss="focal"), num_tracks=16, track_horizon=6)
    _, logs = model.loss({"tracks": constant_velocity(4, 16, 6)[0]})
    assert math.isfinite(logs["loss"]) and logs["loss"] < logs["ce"]


# ------------------------------------------------------------------------------------------------ model


def small_cfg(**kw) -> TokenizerConfig:
    base = dict(hidden_dim=32, num_heads=2, num_layers=2, codebook_size=64, decoder_mlp_hidden_dim=32, dropout=0.0,
                **AMPLIFY_LAYOUT)
    return TokenizerConfig.from_params(TokenizerParams(**{**base, **kw}))


def expected_num_params(hidden, layers, levels, views, tracks, horizon, mlp_hidden=256, classes=225,
                        per_view=False) -> int:
    """Parameter count from the official architecture, written out by hand (not by building the model)."""
    d, t = hidden, horizon - 1
    tokens = t * (views if per_view else 1)
    in_dim = tracks * 2 * (1 if per_view else views)
    attn = d + 3 * d * d + d * d  # ln_1 (no bias) + c_attn + c_proj, no biases
    mlp = d + 2 * d * 4 * d  # ln + c_fc + c_proj
    cross = d + d * d + 2 * d * d + d * d  # ln_3 + q_proj + kv_proj + c_proj
    encoder = (in_dim * d + d) + tokens * d + layers * (attn + mlp) + d
    fsq = (d * len(levels) + len(levels)) + (len(levels) * d + d)
    decoder = (tokens * d + (layers // 2) * (attn + mlp + cross + mlp) + d
               + tracks * d + views * d
               + (3 * d * mlp_hidden + mlp_hidden) + (mlp_hidden * d + d)
               + (d * classes + classes))
    return encoder + fsq + decoder


def test_full_amplify_size_on_meta_device():
    full = TokenizerConfig(hidden_dim=768, num_heads=8, num_layers=2, codebook_size=2048, **AMPLIFY_LAYOUT)
    # AMPLIFY's default (two views, 400 tracks, horizon 16): 30,847,973 = encoder 15,400,704 + FSQ 6,916
    # + decoder 15,440,353
    assert expected_num_params(768, 2, [8, 8, 6, 5], views=2, tracks=400, horizon=16) == 30_847_973
    assert expected_num_params(768, 2, [8, 8, 6, 5], 2, 400, 16, per_view=True) == 30_256_613
    with torch.device("meta"):
        two_views = MotionTokenizer(full, num_tracks=400, track_horizon=16, num_views=2)
        one_view = MotionTokenizer(full, num_tracks=400, track_horizon=16, num_views=1)
    assert all(p.device.type == "meta" for p in two_views.parameters())
    assert two_views.num_params == 30_847_973
    assert one_view.num_params == expected_num_params(768, 2, [8, 8, 6, 5], 1, 400, 16) == 30_232_805
    assert two_views.levels == [8, 8, 6, 5] and two_views.num_codes == 1920


def test_default_forward_backward_shapes():
    torch.manual_seed(0)
    model = MotionTokenizer(TokenizerConfig.from_params(TokenizerParams(**AMPLIFY_LAYOUT)), num_tracks=400,
                            track_horizon=16)
    assert model.num_params == expected_num_params(128, 2, [8, 8, 8], 1, 400, 16)
    tracks = torch.cumsum(torch.randn(2, 16, 400, 2) * 0.01, dim=1)
    out = model(model.tracks_to_velocities(tracks))
    assert out["logits"].shape == (2, 1, 15, 400, 225)
    assert out["indices"].shape == (2, 15) and out["indices"].dtype == torch.long
    assert out["codes"].shape == out["z"].shape == (2, 15, 128)
    loss, logs = model.loss({"tracks": tracks, "visible": torch.ones(2, 16, 400, dtype=torch.bool),
                             "static": torch.zeros(2, 400, dtype=torch.bool)})
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert {"loss", "ce", "label_accuracy", "perplexity", "perplexity_norm"} <= set(logs)
    assert all(isinstance(v, float) for v in logs.values())
    assert model.reconstruct({"tracks": tracks}).shape == (2, 16, 400, 2)
    groups = model.param_groups(0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_structure_causal_encoder_per_step_logits_and_decode():
    torch.manual_seed(0)
    model = MotionTokenizer(small_cfg(), num_tracks=16, track_horizon=6).eval()
    vel = torch.randn(3, 1, 5, 16, 2) * 0.02
    out = model(vel)
    changed = vel.clone()
    changed[:, :, 3] += 0.05
    z2 = model(changed)["z"]
    assert torch.equal(out["z"][:, :3], z2[:, :3]) and not torch.allclose(out["z"][:, 3:], z2[:, 3:])
    assert not torch.allclose(out["logits"][:, :, 0], out["logits"][:, :, 1])  # logits differ per step
    assert torch.allclose(model.decode(out["indices"]), out["logits"], atol=1e-5)
    assert torch.equal(model.encode(vel), out["indices"])
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 5), 64))
    # nominal 2048 has 1920 codes: 1920..2047 wrap onto other codes as in the official FSQ (1920 -> code 0)
    big = MotionTokenizer(small_cfg(codebook_size=2048), num_tracks=16, track_horizon=6).eval()
    assert big.num_codes == 1920
    assert torch.equal(big.decode(torch.full((1, 5), 1920)), big.decode(torch.zeros(1, 5, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        big.decode(torch.full((1, 5), 2048))


def test_input_scale_scales_only_what_the_encoder_sees():
    """input_scale = s on velocities v feeds the encoder exactly what input_scale = 1 (AMPLIFY) feeds it on s * v;
    the scale is a constant (same parameters, same checkpoint keys) and labels and loss targets do not change."""
    torch.manual_seed(0)
    scaled = MotionTokenizer(small_cfg(input_scale=64.0), num_tracks=16, track_horizon=6).eval()
    plain = MotionTokenizer(small_cfg(input_scale=1.0), num_tracks=16, track_horizon=6).eval()
    assert scaled.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(scaled.state_dict())
    seen = {}
    for name, model in (("scaled", scaled), ("plain", plain)):
        model.encoder.encoder_proj.register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, args[0].detach().clone()))
    vel = torch.randn(3, 1, 5, 16, 2) * 0.02
    out_scaled = scaled(vel)
    out_plain = plain(vel * 64.0)
    assert torch.equal(seen["scaled"], seen["plain"])
    assert torch.equal(out_scaled["z"], out_plain["z"]) and torch.equal(out_scaled["indices"], out_plain["indices"])
    plain(vel)
    assert torch.equal(seen["plain"], vel.permute(0, 2, 1, 3, 4).reshape(3, 5, 32))  # AMPLIFY: unscaled (v n d)
    assert torch.allclose(seen["scaled"], 64.0 * seen["plain"])
    tracks, _ = constant_velocity(2, 16, 6)
    assert torch.equal(scaled.labels(tracks), plain.labels(tracks))  # targets are in pixels whatever the scale


def test_input_scale_must_be_positive():
    assert parse_section("tokenizer", {"input_scale": 1}).input_scale == 1.0  # AMPLIFY; an integer is accepted
    for value in (0, 0.0, -64.0):
        with pytest.raises(ParamsError) as err:
            parse_section("tokenizer", {"input_scale": value})
        assert "tokenizer.input_scale" in str(err.value) and "> 0" in str(err.value), str(err.value)
    for value in (0.0, -1.0, float("inf")):
        with pytest.raises(ParamsError, match=r"tokenizer\.input_scale"):
            TokenizerParams(input_scale=value)


def test_per_view_layout():
    model = MotionTokenizer(small_cfg(per_view=True), num_tracks=16, track_horizon=6, num_views=2)
    out = model(torch.randn(2, 2, 5, 16, 2) * 0.02)
    assert out["indices"].shape == (2, 10) and out["logits"].shape == (2, 2, 5, 16, 225)
    loss, logs = model.loss({"tracks": torch.rand(2, 2, 6, 16, 2) - 0.5})
    assert "loss_view1" in logs
    assert float(loss.detach()) == pytest.approx(logs["loss_view0"] + logs["loss_view1"], rel=1e-5)
    assert model.reconstruct({"tracks": torch.zeros(2, 2, 6, 16, 2)}).shape == (2, 2, 6, 16, 2)


def test_perfect_labels_reconstruct_the_quantised_ground_truth():
    tracks, _ = constant_velocity(6, 16, 8, seed=3)
    model = MotionTokenizer(small_cfg(), num_tracks=16, track_horizon=8)
    labels = tracks_to_labels(tracks, IMG, GRID)[:, None]  # (B, 1, T-1, N)
    model.forward = lambda velocities: {"logits": torch.nn.functional.one_hot(labels, 225).float() * 10}
    pred = model.reconstruct({"tracks": tracks})
    # the quantised ground truth, independently: first point + (rounded pixel(t) - rounded pixel(0)) * 2 / 128
    pixels = torch.round(torch.clamp(tracks * 64 + 64, 0, 127).double())
    quantised = tracks[:, :1].double() + (pixels - pixels[:, :1]) / 64
    assert torch.allclose(pred.double(), quantised, atol=1e-6)
    # and yet not the ground truth itself: rounding errors remain (do not expect perfect metrics)
    metrics = trajectory_metrics(pred, tracks, IMG)
    assert metrics["normalized_accuracy"] < 1.0 and metrics["pixel_accuracy_1"] == 1.0


def test_focal_and_static_mask_change_the_loss_as_defined():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 3, 4, 225) * 2
    labels = torch.randint(0, 225, (2, 1, 3, 4))
    labels[0, 0, :, 0] = 112  # some zero-motion targets
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 225), labels.reshape(-1), reduction="none")
    ce = ce.view(2, 1, 3, 4)

    static = torch.tensor([[True, False, False, True], [False, False, False, False]])  # (B, N)

    def loss(**kw):
        return MotionTokenizer(small_cfg(**kw), num_tracks=4, track_horizon=4).loss_terms(logits, labels, static)[0]

    assert torch.allclose(loss(), ce.mean())  # plain relative CE; static flags ignored unless mask_static
    assert torch.allclose(loss(loss="focal", focal_gamma=0.0, focal_center_weight=1.0), ce.mean())
    p = torch.exp(-ce)
    w = torch.where(labels == 112, 0.25, 1.0)
    assert torch.allclose(loss(loss="focal", focal_gamma=2.0, focal_center_weight=0.25),
                          (w * (1 - p) ** 2 * ce).mean(), rtol=1e-5)
    keep = ~static[:, None, None, :].expand_as(ce)
    assert torch.allclose(loss(mask_static=True), ce[keep].mean())
    focal_masked = (w * (1 - p) ** 2 * ce)[keep].mean()
    assert torch.allclose(loss(mask_static=True, loss="focal", focal_center_weight=0.25), focal_masked, rtol=1e-5)
    # static points get no gradient under the mask
    model = MotionTokenizer(small_cfg(mask_static=True), num_tracks=4, track_horizon=4)
    leaf = logits.clone().requires_grad_(True)
    model.loss_terms(leaf, labels, static)[0].backward()
    assert leaf.grad[0, :, :, 0].abs().sum() == 0 and leaf.grad[0, :, :, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="static"):
        model.loss({"tracks": torch.zeros(1, 4, 4, 2)})


def test_nan_and_inf_tracks_are_refused():
    model = MotionTokenizer(small_cfg(), num_tracks=16, track_horizon=6)
    tracks = torch.zeros(2, 6, 16, 2)
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = tracks.clone()
        bad[1, 2, 3, 1] = value
        for call, arg in ((model.loss, {"tracks": bad}), (model.reconstruct, {"tracks": bad}),
                          (model.evaluate, {"tracks": bad}), (model, bad.diff(dim=1)), (model.encode, bad.diff(dim=1))):
            with pytest.raises(ValueError, match="NaN or infinite"):
                call(arg)
    with pytest.raises(ValueError, match=r"\(B, V=1, 6, N=16, 2\)"):
        model.loss({"tracks": torch.zeros(2, 5, 16, 2)})


# ------------------------------------------------------------------------------------------------ training


def constant_velocity(batch: int, tracks: int, horizon: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows whose points all move with one constant velocity (0..+-4 px per step, fractional).

    With horizon <= 8 every point stays inside the 128 x 128 frame (|n| <= 0.55 + 7 * 4 / 64 < 1)."""
    g = torch.Generator().manual_seed(seed)
    side = round(tracks ** 0.5)
    lin = torch.linspace(-0.5, 0.5, side)
    grid = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2)
    start = grid[None] + (torch.rand(batch, 1, 2, generator=g) - 0.5) * 0.1  # stays inside the frame
    velocity = (torch.rand(batch, 1, 2, generator=g) - 0.5) * 8 * PX
    steps = torch.arange(horizon, dtype=torch.float32)[None, :, None, None]
    return start[:, None] + steps * velocity[:, None], velocity


def integer_velocity_windows(batch: int, tracks: int, horizon: int, size: int, seed: int) -> torch.Tensor:
    """Windows moving with one constant whole-pixel velocity (-2..2 px per step) from 0.2 px off pixel centres.

    Every label is then exact (no rounding ambiguity) and the points stay inside the frame for horizon 6.
    """
    px = 2 / size
    g = torch.Generator().manual_seed(seed)
    side = round(tracks ** 0.5)
    cells = torch.linspace(-0.25, 0.25, side)
    grid = torch.stack(torch.meshgrid(cells, cells, indexing="ij"), dim=-1).reshape(-1, 2)
    grid = torch.round(grid / px) * px + 0.2 * px
    start = grid[None] + torch.randint(-1, 2, (batch, 1, 2), generator=g) * px
    velocity = torch.randint(-2, 3, (batch, 1, 2), generator=g).float() * px
    steps = torch.arange(horizon, dtype=torch.float32)[None, :, None, None]
    return start[:, None] + steps * velocity[:, None]


def test_short_training_run_learns_constant_velocity():
    """Plain AdamW on the unmodified model. A 32 x 32 pixel grid makes one pixel 2/32 normalised, so the tiny
    model's 16-track input is not drowned by its biases (velocities enter unscaled, as in AMPLIFY)."""
    size = 32
    train = integer_velocity_windows(256, 16, 6, size, seed=0)
    val = integer_velocity_windows(64, 16, 6, size, seed=1)
    assert float(train.abs().max()) < 1 and float(val.abs().max()) < 1
    torch.manual_seed(3)
    model = MotionTokenizer(small_cfg(hidden_dim=64, num_heads=4, decoder_mlp_hidden_dim=64, codebook_size=512,
                                      img_size=[size, size]), num_tracks=16, track_horizon=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    with torch.no_grad():
        initial = float(model.loss({"tracks": train})[0])
    for _ in range(500):
        loss, _ = model.loss({"tracks": train[torch.randint(0, len(train), (32,))]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = float(model.loss({"tracks": train})[0])
    assert final < 0.2 * initial, (initial, final)
    metrics = model.evaluate({"tracks": val})
    zero_motion = trajectory_metrics(val[:, :1].expand_as(val), val, (size, size))
    assert metrics["mse"] < 0.5 * zero_motion["mse"], (metrics["mse"], zero_motion["mse"])
    assert metrics["delta_auc"] > zero_motion["delta_auc"]


def test_loss_is_part_of_forward():
    """One public call gives the loss (what a DDP wrapper needs): forward(velocities, labels, static)."""
    torch.manual_seed(0)
    model = MotionTokenizer(small_cfg(mask_static=True), num_tracks=16, track_horizon=6)
    tracks = constant_velocity(3, 16, 6)[0]
    static = torch.zeros(3, 16, dtype=torch.bool)
    static[:, :4] = True
    velocities, labels = model.inputs(tracks)
    out = model(velocities, labels=labels, static=static)
    want, _ = model.loss_terms(out["logits"], labels, static)
    torch.testing.assert_close(out["loss"], want)
    assert out["logs"]["static_fraction"] == 0.25 and "loss" not in model(velocities)
    loss, logs = model.loss({"tracks": tracks, "static": static})
    torch.testing.assert_close(loss, want)
    assert logs == out["logs"]
    with pytest.raises(TypeError, match="TokenizerConfig"):
        MotionTokenizer(TokenizerParams(), num_tracks=16, track_horizon=6)
