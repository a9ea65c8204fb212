"""The honest route input (world ego_route.json -> cache route_* arrays -> planner / Ego-MLP), the residual ego path
and checkpoint selection on held-out train scenes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.common.params import ParamsError, PlannerParams, parse_section
from models.nuscenes import cache as C
from models.nuscenes.validate import NuScenesInputError
from tests.conftest import TINY_PLANNER
from tests.tiny_nuscenes import tiny_dataroot  # noqa: F401 (fixture)


def tiny(**overrides) -> PlannerParams:
    return PlannerParams(**{**TINY_PLANNER, **overrides})


def lidar2global(xy: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """(n, 4, 4) LIDAR (x right, y forward) -> global for poses at ``xy`` heading ``heading`` (rad from east)."""
    n = len(xy)
    g = np.tile(np.eye(4), (n, 1, 1))
    a = heading - math.pi / 2                                      # the LIDAR x axis points to the right
    g[:, 0, 0], g[:, 0, 1], g[:, 1, 0], g[:, 1, 1] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    g[:, :2, 3] = xy
    return g


# --------------------------------------------------------------------------------------------------
# Cache: route geometry
# --------------------------------------------------------------------------------------------------


def test_route_points_and_command_on_a_left_turn():
    # east for 30 m, then north (a left turn) for 60 m; the ego at x = 0 and x = 10 heading east
    route = np.array([[0.0, 0.0], [30.0, 0.0], [30.0, 60.0]])
    g = lidar2global(np.array([[0.0, 0.0], [10.0, 0.0]]), np.zeros(2))
    pts, valid, cmd = C.route_inputs(route, g, np.linalg.inv(g), np.array([5.0, 40.0, 100.0]), 25.0)
    assert valid.tolist() == [[True, True, False], [True, True, False]]
    np.testing.assert_allclose(pts[0, 0], [0.0, 5.0], atol=1e-9)       # 5 m straight ahead
    np.testing.assert_allclose(pts[0, 1], [-10.0, 30.0], atol=1e-9)    # 40 m along: 10 m up the left branch
    np.testing.assert_allclose(pts[1, 1], [-20.0, 20.0], atol=1e-9)
    assert (pts[:, 2] == 0).all()                                      # beyond the route's end: 0, invalid
    assert cmd.tolist() == [2, 1]                                      # 25 m ahead: still straight, then LEFT
    assert C.command_of(np.array([2.0, -2.0, 1.9])).tolist() == [0, 1, 2]


def test_projection_is_monotonic_on_a_route_that_comes_back():
    # a square loop that passes its start again after 40 m; the ego keeps advancing
    route = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0], [20.0, 0.0]])
    pts = np.array([[0.5, 0.0], [10.0, 5.0], [0.0, 5.0], [0.2, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(C.project_along(route, pts), [0.5, 15.0, 35.0, 40.2, 45.0], atol=1e-9)


def test_route_file_is_optional_and_checked(tmp_path):
    assert C.load_routes(tmp_path, ["a"]) is None
    (tmp_path / C.ROUTE_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(NuScenesInputError, match="not an ego route file"):
        C.load_routes(tmp_path, ["a"])
    doc = {"format": C.ROUTE_FORMAT, "scenes": {"a": {"points": [[0, 0], [1, 0]]}, "b": {"points": [[0, 0]]}}}
    (tmp_path / C.ROUTE_FILE).write_text(json.dumps(doc))
    assert C.load_routes(tmp_path, ["a"])["a"].shape == (2, 2)
    for scenes in (["b"], ["c"]):
        with pytest.raises(NuScenesInputError, match=f"{C.ROUTE_FILE}.*{scenes[0]}"):
            C.load_routes(tmp_path, scenes)


def test_route_distances_must_increase():
    with pytest.raises(ParamsError, match="cache.route_distances"):
        parse_section("cache", {"route_distances": [10.0, 5.0]})
    with pytest.raises(ParamsError, match="cache.route_command_distance"):
        parse_section("cache", {"route_command_distance": 0.0})


def test_world_writes_the_route_its_ego_follows(synth_dataroot):
    from models.world.generate import ROUTE_FILE, VERSION

    assert ROUTE_FILE == C.ROUTE_FILE
    doc = json.loads((synth_dataroot / VERSION / ROUTE_FILE).read_text())
    tables = {n: json.loads((synth_dataroot / VERSION / f"{n}.json").read_text())
              for n in ("scene", "sample", "sample_data", "ego_pose")}
    assert doc["format"] == C.ROUTE_FORMAT and set(doc["scenes"]) == {s["token"] for s in tables["scene"]}
    pose = {p["token"]: p for p in tables["ego_pose"]}
    for scene in tables["scene"]:
        route = np.asarray(doc["scenes"][scene["token"]]["points"])
        xy = np.array([pose[sd["ego_pose_token"]]["translation"][:2] for sd in tables["sample_data"]
                       if sd["is_key_frame"] and sd["sample_token"] in
                       {s["token"] for s in tables["sample"] if s["scene_token"] == scene["token"]}])
        seg = np.diff(route, axis=0)
        u = np.clip(np.einsum("pkj,kj->pk", xy[:, None] - route[None, :-1], seg) / (seg ** 2).sum(1), 0, 1)
        d = np.linalg.norm(route[None, :-1] + u[..., None] * seg - xy[:, None], axis=2).min(1)
        assert d.max() < 0.05, scene["name"]                          # every ego pose lies on its route


def test_synth_cache_route_arrays_follow_the_future(synth_cache):
    from models.nuscenes.dataset import GTCacheDataset

    ds = GTCacheDataset(synth_cache, "train")
    a, m = ds.arrays, ds.manifest
    assert m["route_source"] == "world_route" and m["route_distances"] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0,
                                                                           35.0, 40.0]
    assert a["route_points"].shape == (len(ds), 8, 2) and a["route_valid"].all()
    # the GT future lies on the route: within 0.6 m of the polyline through the origin and the route points
    for i in range(len(ds)):
        poly = np.concatenate([np.zeros((1, 2)), a["route_points"][i]])
        seg = np.diff(poly, axis=0)
        for f in a["future_waypoints"][i][a["future_valid"][i], :2]:
            u = np.clip(((f - poly[:-1]) * seg).sum(1) / (seg ** 2).sum(1), 0, 1)
            assert np.linalg.norm(poly[:-1] + u[:, None] * seg - f, axis=1).min() < 0.6


def test_a_dataroot_without_route_uses_the_gt_command_rule(tiny_dataroot, tmp_path):  # noqa: F811
    from models.nuscenes.dataset import GTCacheDataset

    data = parse_section("data", {"dataroot": str(tiny_dataroot), "version": "v1.0-synth"})
    C.build_cache(data, parse_section("cache", {"workers": 1}), tmp_path / "cache", progress=False)
    ds = GTCacheDataset(tmp_path / "cache", "train")
    assert ds.manifest["route_source"] == "gt_future_rule" and "UniAD" in ds.manifest["route_rule"]
    assert (ds.arrays["route_command"] == ds.arrays["command"]).all() and not ds.arrays["route_valid"].any()
    from models.planner.data import PlannerSamples

    with pytest.raises(ParamsError, match="planner.route_input = 'points'.*no route geometry"):
        PlannerSamples(tmp_path / "cache", "train", tiny(route_input="points", mlp_route_input="command"),
                       dataroot=tiny_dataroot)


# --------------------------------------------------------------------------------------------------
# Planner: route features, residual ego path, selection split
# --------------------------------------------------------------------------------------------------


def _batch(b: int = 2, r: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"ego_history": torch.randn(b, 3, 3, generator=g), "ego_history_valid": torch.ones(b, 3, dtype=torch.bool),
            "ego_status": torch.randn(b, 5, generator=g), "command": torch.tensor([0, 2][:b]),
            "route_command": torch.tensor([1, 2][:b]), "route_points": torch.randn(b, r, 2, generator=g) * 10,
            "route_valid": torch.ones(b, r, dtype=torch.bool),
            "frames": torch.randint(0, 255, (b, 2, 1, 3, 28, 28), generator=g, dtype=torch.uint8)}


def test_route_features_layout():
    from models.planner.ego_mlp import ROUTE_SCALE_M, ego_features, feature_dim, route_dim, route_features

    batch = _batch()
    assert route_features(batch, "none") is None
    assert route_features(batch, "command").tolist() == [[0, 1, 0], [0, 0, 1]]
    f = route_features(batch, "points")
    assert f.shape == (2, route_dim("points", 3)) == (2, 12)
    torch.testing.assert_close(f[:, 3:9], batch["route_points"].flatten(1) / ROUTE_SCALE_M)
    assert ego_features(batch, True, "points").shape[1] == feature_dim(3, 5, True, "points", 3) == 8 + 5 + 3 + 12


def test_residual_planner_starts_as_its_ego_path_and_freezes_it():
    from models.planner.ego_mlp import ego_features, route_features
    from models.planner.training import PlannerTask, build_ego_mlp, build_planner

    p = tiny(ego_path="residual", route_input="points", mlp_route_input="command")
    mlp = build_ego_mlp(p, 3, 3)
    model = build_planner(p, 3, 3, mlp.state_dict())
    assert not any(t.requires_grad for t in model.ego_path.parameters())
    assert all(t.requires_grad for t in build_planner(tiny(ego_path_trainable=True), 3, 3).ego_path.parameters())
    batch = _batch()
    out = model(batch["frames"], batch["ego_status"], route_features(batch, "points"),
                ego_features(batch, False, "command"))
    torch.testing.assert_close(out["waypoints"], mlp(ego_features(batch, False, "command"))["waypoints"])
    torch.testing.assert_close(out["base"], out["waypoints"])
    task = PlannerTask(p, None, None, 3, 3)
    loss, _ = task.loss(model, {**batch, "target": torch.randn(2, 6, 2), "target_valid": torch.ones(2, 6)})
    loss.backward()                                                    # the correction learns, the path does not
    assert model.head.fc2.weight.grad.abs().sum() > 0 and model.ego_path.net[0].weight.grad is None
    with pytest.raises(ValueError, match="route must be"):
        model(batch["frames"], batch["ego_status"], None, ego_features(batch, False, "command"))
    with pytest.raises(ValueError, match="ego_features"):
        model(batch["frames"], batch["ego_status"], route_features(batch, "points"))


def test_queries_planner_refuses_ego_features():
    from models.planner.training import build_planner

    model = build_planner(tiny(ego_path="queries", route_input="none"), 3, 3)
    batch = _batch()
    assert model.ego_path is None and model(batch["frames"], batch["ego_status"])["waypoints"].shape == (2, 6, 2)
    with pytest.raises(ValueError, match="not residual"):
        model(batch["frames"], batch["ego_status"], None, torch.zeros(2, 13))


def test_selection_split_holds_out_the_last_train_scenes(synth_cache):
    from models.planner.data import PlannerSamples

    s = PlannerSamples(synth_cache, "train", tiny())
    fit, select = s.selection_split(1)
    scene = s.cache.arrays["scene_index"]
    assert len(fit) + len(select) == len(s) and set(scene[select]) == {scene.max()}
    assert scene.max() not in set(scene[fit])
    with pytest.raises(ParamsError, match="planner.select_scenes = 2"):
        s.selection_split(int(scene.max()) + 1)
