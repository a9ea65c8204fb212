"""The planner's corridor perception: GT targets from the cache, the perception head and its auxiliary loss, and
the fused ego path (an Ego-MLP over ego features and the perceived corridor)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.common.params import ConfigError, ParamsError, parse_section
from models.planner.perception import CORRIDOR_M, PERCEPTION_TARGETS, corridor_targets
from tests.test_planner_route import _batch, tiny


def _arrays(agents: list[tuple], route: np.ndarray | None = None) -> dict:
    """One sample; agents: (x, y, class, instance, next (x, y) or None) in the current LIDAR frame."""
    a = 8
    boxes, valid = np.zeros((1, 2, a, 7), np.float32), np.zeros((1, 2, a), bool)
    cls, inst = np.full((1, 2, a), -1, np.int8), np.full((1, 2, a), -1, np.int32)
    for k, (x, y, c, i, nxt) in enumerate(agents):
        boxes[0, 0, k, :2], valid[0, 0, k], cls[0, 0, k], inst[0, 0, k] = (x, y), True, c, i
        if nxt is not None:  # stored in another slot at the next key frame: matched by instance, not slot
            j = a - 1 - k
            boxes[0, 1, j, :2], valid[0, 1, j], cls[0, 1, j], inst[0, 1, j] = nxt, True, c, i
    out = {"agent_boxes": boxes, "agent_valid": valid, "agent_class": cls, "agent_instance": inst}
    if route is not None:
        out.update(route_points=route[None].astype(np.float32), route_valid=np.ones((1, len(route)), bool))
    return out


def test_corridor_targets_hand_cases():
    assert PERCEPTION_TARGETS == ("gap", "present", "lead_speed")
    np.testing.assert_allclose(corridor_targets(_arrays([])), [[1.0, 0.0, 0.0]])
    # a car 20 m ahead, 0.5 m off the straight corridor, 2.5 m further 0.5 s later: 5 m/s
    t = corridor_targets(_arrays([(0.5, 20.0, 0, 7, (0.5, 22.5))]))
    np.testing.assert_allclose(t, [[20.0 / CORRIDOR_M, 1.0, 0.5]], atol=1e-6)
    # nearer agents that do not count: a car 3.5 m to the side, one behind, one within 1 m; a pedestrian at
    # 3.5 m to the side does (pedestrian half-width 4 m) and has no next box (speed 0)
    t = corridor_targets(_arrays([(3.5, 5.0, 0, 1, None), (0.0, -5.0, 0, 2, None), (0.0, 0.5, 0, 3, None),
                                  (3.5, 10.0, 1, 4, None), (0.5, 20.0, 0, 7, (0.5, 22.5))]))
    np.testing.assert_allclose(t, [[10.0 / CORRIDOR_M, 1.0, 0.0]], atol=1e-6)
    # beyond the corridor length: nothing
    np.testing.assert_allclose(corridor_targets(_arrays([(0.0, 45.0, 0, 1, None)])), [[1.0, 0.0, 0.0]])


def test_corridor_follows_the_route_points():
    # the route turns right after 10 m: a car at (10, 20) is on it, 10 + 10 = 20 m along; one straight ahead is not
    route = np.array([[0.0, 5.0], [0.0, 10.0], [10.0, 10.0], [10.0, 20.0], [10.0, 30.0]])
    t = corridor_targets(_arrays([(0.0, 25.0, 0, 1, None), (10.0, 20.0, 0, 2, (10.0, 21.0))], route))
    np.testing.assert_allclose(t, [[30.0 / CORRIDOR_M, 1.0, 0.2]], atol=1e-6)


def _fused_batch():
    return {**_batch(), "target": torch.randn(2, 6, 2), "target_valid": torch.ones(2, 6),
            "perception_target": torch.tensor([[0.5, 1.0, 0.3], [1.0, 0.0, 0.0]])}


@pytest.mark.parametrize("kw", [{}, {"use_rope": False}, {"use_2x2_compression": False}, {"img_size": 42},
                                {"odd_grid": "crop", "img_size": 56}])
def test_fused_planner_reads_the_perceived_corridor(kw):
    from models.planner.training import PlannerTask, fused_statistics

    p = tiny(ego_path="fused", perception_weight=1.0, mlp_route_input="command", **kw)
    stats = fused_statistics(np.zeros(8 + 5 + 3, np.float32), np.ones(8 + 5 + 3, np.float32))
    task = PlannerTask(p, None, None, 3, 3, fused_stats=stats, target_stats=(np.full(3, 0.5), np.full(3, 2.0)))
    model = task.build_model()
    assert model.decoder is None and model.head is None and model.ego_path.net[0].in_features == 16 + 3
    torch.testing.assert_close(model.perception.target_std, torch.full((3,), 2.0))
    batch = _fused_batch()
    if kw.get("img_size"):
        batch["frames"] = torch.randint(0, 255, (2, 2, 1, 3, kw["img_size"], kw["img_size"]), dtype=torch.uint8)
    out = task.outputs(model, batch)
    assert out["waypoints"].shape == (2, 6, 2) and out["perception"].shape == (2, 3)
    # the waypoints move with the perceived values (the MLP reads them), and both losses reach the encoder
    with torch.no_grad():
        model.perception.mlp[-1].bias += 1.0
    assert not torch.allclose(task.outputs(model, batch)["waypoints"], out["waypoints"])
    loss, logs = task.loss(model, batch)
    loss.backward()
    assert "perception" in logs and model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(t.grad is not None for t in model.ego_path.parameters())      # the fused path trains
    with pytest.raises(ValueError, match="fused"):
        model(batch["frames"], batch["ego_status"], None, torch.zeros(2, 16))


def test_perception_loss_is_weighted_and_standardised():
    from models.planner.training import PlannerTask, perception_loss

    batch = _fused_batch()
    mean, std = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.5, 0.5, 1.0])
    exact = (batch["perception_target"] - mean) / std
    assert float(perception_loss(exact, batch["perception_target"], mean, std)) == 0.0
    torch.manual_seed(0)
    p = tiny(ego_path="residual", route_input="points", mlp_route_input="command")
    off = PlannerTask(p, None, None, 3, 3)
    on = PlannerTask(tiny(ego_path="residual", route_input="points", mlp_route_input="command",
                          perception_weight=2.0), None, None, 3, 3)
    assert off.build_model().perception is None and "perception" not in off.outputs(off.build_model(), batch)
    torch.manual_seed(0)
    model = on.build_model()
    loss, logs = on.loss(model, batch)
    out = on.outputs(model, batch)
    from models.planner.training import waypoint_l1

    expected = waypoint_l1(out["waypoints"], batch["target"], batch["target_valid"]) + 2.0 * logs["perception"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_fused_needs_the_head_and_params_accept_it():
    from models.planner.config import PlannerConfig

    with pytest.raises(ParamsError, match="planner.perception_weight"):
        parse_section("planner", {"perception_weight": -1.0})
    with pytest.raises(ParamsError, match="planner.ego_path"):
        parse_section("planner", {"ego_path": "other"})
    assert parse_section("planner", {"ego_path": "fused", "perception_weight": 0.5}).ego_path == "fused"
    assert PlannerConfig.from_params(tiny(ego_path="fused")).perception_dim == len(PERCEPTION_TARGETS)
    assert PlannerConfig.from_params(tiny()).perception_dim == 0
    with pytest.raises(ConfigError, match="perception_dim"):
        PlannerConfig(ego_path="fused", perception_dim=0)


def test_samples_carry_the_corridor_targets(synth_cache):
    from models.planner.data import PlannerSamples
    from models.planner.training import target_statistics

    s = PlannerSamples(synth_cache, "train", tiny())
    t = s.arrays["perception_target"]
    assert t.shape == (len(s), 3) and t.dtype == np.float32
    assert ((t[:, 0] > 0) & (t[:, 0] <= 1)).all() and set(np.unique(t[:, 1])) <= {0.0, 1.0}
    assert ((t[:, 0] < 1) == (t[:, 1] == 1)).all() and (t[:, 2][t[:, 1] == 0] == 0).all()
    mean, std = target_statistics(s)
    assert mean.shape == std.shape == (3,) and (std >= 1e-3).all()
    assert s[0]["perception_target"].shape == (3,)
