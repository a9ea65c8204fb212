"""Planner figures: hand-worked geometry (box corners, ground plane, projection) and deterministic PNGs on a cache
built from the session's tiny synthetic world."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from models.planner.figures import (
    box_corners_xy,
    camera_polyline,
    default_figure_indices,
    ground_points_in_lidar,
    project_to_image,
    write_planner_figures,
)

F_PX, CX, CY, H, W = 250.0, 159.5, 89.5, 180, 320
K = np.array([[F_PX, 0.0, CX], [0.0, F_PX, CY], [0.0, 0.0, 1.0]])
CAM_T = np.array([0.0, 0.9, -0.3])  # camera centre in the LIDAR frame


def front_cam2lidar(t=CAM_T) -> np.ndarray:
    """A front camera: camera x (right) = LIDAR x, camera y (down) = LIDAR -z, camera z (forward) = LIDAR y."""
    T = np.eye(4)
    T[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # columns: camera axes in LIDAR
    T[:3, 3] = t
    return T


def lidar2ego(tilt_rad: float = 0.0, height: float = 1.84) -> np.ndarray:
    """nuScenes-like LIDAR_TOP mount: LIDAR y (forward) -> ego x, LIDAR x (right) -> ego -y, then a tilt about
    the LIDAR x axis; origin 0.94 m ahead of the ego origin and ``height`` above the ground."""
    yaw = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # R_z(-90 deg)
    c, s = np.cos(tilt_rad), np.sin(tilt_rad)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    T = np.eye(4)
    T[:3, :3] = yaw @ tilt
    T[:3, 3] = [0.94, 0.0, height]
    return T


# ------------------------------------------------------------------------------------------------ box corners
def test_box_corners_yaw_0_and_90_degrees():
    # w = 2, l = 4 at (1, 2): yaw 0 -> length along x
    c0 = box_corners_xy(np.array([1.0, 2.0, 0.5, 2.0, 4.0, 1.5, 0.0]))
    assert c0.shape == (4, 2)
    expected0 = {(-1.0, 1.0), (-1.0, 3.0), (3.0, 1.0), (3.0, 3.0)}
    assert {tuple(np.round(p, 9) + 0.0) for p in c0} == expected0
    # yaw 90 deg -> length along y
    c90 = box_corners_xy(np.array([1.0, 2.0, 0.5, 2.0, 4.0, 1.5, np.pi / 2]))
    expected90 = {(0.0, 0.0), (2.0, 0.0), (0.0, 4.0), (2.0, 4.0)}
    assert {tuple(np.round(p, 9) + 0.0) for p in c90} == expected90
    # a loop: consecutive edges alternate between the two side lengths (no diagonal)
    edges = np.linalg.norm(np.roll(c90, -1, axis=0) - c90, axis=1)
    np.testing.assert_allclose(np.sort(edges), [2.0, 2.0, 4.0, 4.0])
    # the front (the last two corners) lies along +length: +x for yaw 0, +y for yaw 90
    np.testing.assert_allclose(c0[2:].mean(0), [3.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(c90[2:].mean(0), [1.0, 4.0], atol=1e-12)
    # batched shapes
    assert box_corners_xy(np.zeros((3, 5, 7))).shape == (3, 5, 4, 2)


# ----------------------------------------------------------------------------------------------- ground plane
def test_ground_points_level_lidar_hand_value():
    pts = ground_points_in_lidar(np.array([[0.0, 0.0], [3.0, 10.0], [-2.0, 25.0]]), lidar2ego())
    np.testing.assert_allclose(pts[:, :2], [[0.0, 0.0], [3.0, 10.0], [-2.0, 25.0]])
    np.testing.assert_allclose(pts[:, 2], -1.84)  # a level LIDAR 1.84 m above the ground


def test_ground_points_give_ego_z_zero_with_a_tilted_lidar():
    T = lidar2ego(tilt_rad=np.deg2rad(2.0))
    xy = np.array([[[0.0, 0.0], [1.0, 5.0]], [[-4.0, 30.0], [7.0, -3.0]]])  # (2, 2, 2): batched
    pts = ground_points_in_lidar(xy, T)
    assert pts.shape == (2, 2, 3)
    np.testing.assert_allclose(pts[..., :2], xy)
    ego = pts @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(ego[..., 2], 0.0, atol=1e-12)
    # tilting the LIDAR forward-up by 2 deg: ground 30 m ahead is lower in the LIDAR frame than under the origin
    assert pts[1, 0, 2] < pts[0, 0, 2]


# ------------------------------------------------------------------------------------------------- projection
def test_optical_axis_projects_to_principal_point_and_hand_offsets():
    ahead = CAM_T + np.array([[0.0, 10.0, 0.0],    # on the optical axis
                              [1.0, 10.0, 0.0],    # 1 m right at 10 m: u = cx + f / 10
                              [0.0, 10.0, -1.0],   # 1 m below at 10 m: v = cy + f / 10
                              [0.0, 40.0, 0.0]])
    uv, vis = project_to_image(ahead, K, front_cam2lidar(), (H, W))
    np.testing.assert_allclose(uv[0], [CX, CY], atol=1e-9)
    np.testing.assert_allclose(uv[1], [CX + F_PX / 10, CY], atol=1e-9)
    np.testing.assert_allclose(uv[2], [CX, CY + F_PX / 10], atol=1e-9)
    np.testing.assert_allclose(uv[3], [CX, CY], atol=1e-9)
    assert vis.all()


def test_points_behind_too_near_or_outside_are_not_visible():
    pts = CAM_T + np.array([[0.0, -5.0, 0.0],     # behind the camera (would project onto the principal point)
                            [0.0, 0.05, 0.0],     # in front by less than 0.1 m
                            [0.0, 0.2, 0.0],      # in front by 0.2 m: visible
                            [20.0, 10.0, 0.0],    # u = cx + 500: right of the image
                            [0.0, 10.0, 5.0],     # v = cy - 125: above the image
                            [0.0, 1.0, (CY + 0.5) / F_PX - 1e-6]])  # just inside the top edge v = -0.5
    uv, vis = project_to_image(pts, K, front_cam2lidar(), (H, W))
    assert vis.tolist() == [False, False, True, False, False, True]
    assert np.isnan(uv[0]).all() and np.isnan(uv[1]).all()
    np.testing.assert_allclose(uv[3], [CX + 500.0, CY])
    assert uv[5, 1] == pytest.approx(-0.5, abs=1e-3)


def test_camera_polyline_is_clipped_at_the_near_plane():
    # from 5 m behind the camera to 20 m ahead on the optical axis, then 2 m to the right
    pts = CAM_T + np.array([[0.0, -5.0, -1.0], [0.0, 20.0, -1.0], [2.0, 20.0, -1.0]])
    line = camera_polyline(pts, K, front_cam2lidar(), near=0.1)
    assert line.shape == (3, 2) and np.isfinite(line).all()
    np.testing.assert_allclose(line[0], [CX, CY + F_PX * 1.0 / 0.1])  # clipped start: depth exactly 0.1 m
    np.testing.assert_allclose(line[1], [CX, CY + F_PX / 20])
    np.testing.assert_allclose(line[2], [CX + F_PX * 2 / 20, CY + F_PX / 20])
    # a polyline entirely behind the camera draws nothing
    assert camera_polyline(CAM_T - np.array([[0.0, 1.0, 0.0], [0.0, 9.0, 0.0]]), K, front_cam2lidar()).shape == (0, 2)


# -------------------------------------------------------------------------------------------- sample choice
def test_default_figure_indices_spread_and_prefer_complete_futures():
    valid = np.ones((20, 6), bool)
    valid[[3, 8, 9, 18, 19], -1] = False
    ds = type("DS", (), {"arrays": {"future_valid": valid}, "__len__": lambda self: 20})()
    idx = default_figure_indices(ds, 4)
    assert idx == sorted(set(idx)) and len(idx) == 4
    assert all(valid[i].all() for i in idx)
    assert idx == default_figure_indices(ds, 4)
    assert idx[0] <= 3 and idx[-1] >= 14  # spread over the split
    assert len(default_figure_indices(ds, 18)) == 18  # tops up with incomplete ones
    assert default_figure_indices(ds, 100) == list(range(20)) and default_figure_indices(ds, 0) == []


# ------------------------------------------------------------------------------------------- figures on disk
@pytest.fixture(scope="module")
def synth_val(synth_dataroot, tmp_path_factory):
    from models.common.params import parse_section
    from models.nuscenes.cache import build_cache
    from models.nuscenes.dataset import GTCacheDataset

    out = tmp_path_factory.mktemp("planner_figs") / "cache"
    data = parse_section("data", {"dataroot": str(synth_dataroot), "version": "v1.0-synth", "splits": ["val"]})
    build_cache(data, parse_section("cache", {"workers": 1}), out, progress=False)
    return GTCacheDataset(out, "val", cameras=["CAM_BACK", "CAM_FRONT"])  # CAM_FRONT found by name


def test_write_planner_figures_writes_deterministic_pngs(synth_val, tmp_path):
    from PIL import Image

    ds = synth_val
    gt = ds.arrays["future_waypoints"][..., :2]
    preds = {"GT shifted": gt + np.float32([1.0, 0.0]), "zero": np.zeros_like(gt)}
    indices = default_figure_indices(ds, 2)
    first = write_planner_figures(tmp_path / "a", ds, preds, indices)
    second = write_planner_figures(tmp_path / "b", ds, preds, indices)
    assert [p.name for p in first] == [f"sample_{i:03d}_{ds.samples[i]['token'][:8]}.png" for i in indices]
    assert [p.name for p in second] == [p.name for p in first]
    for a, b in zip(first, second):
        data = a.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert hashlib.sha256(data).digest() == hashlib.sha256(b.read_bytes()).digest()
        with Image.open(a) as im:
            im.verify()
        with Image.open(a) as im:
            assert im.size[0] > im.size[1] > 300
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in first)  # no temp files


def test_write_planner_figures_refuses_misaligned_predictions(synth_val, tmp_path):
    with pytest.raises(ValueError, match="aligned"):
        write_planner_figures(tmp_path, synth_val, {"bad": np.zeros((len(synth_val) + 1, 6, 2))}, [0])
    with pytest.raises(ValueError, match="reserved"):
        write_planner_figures(tmp_path, synth_val, {"GT": np.zeros((len(synth_val), 6, 2))}, [0])
