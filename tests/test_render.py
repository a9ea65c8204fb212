"""The ray-casting renderer on a hand-made scene: geometry, occlusion, LiDAR and exact tracking truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.world import render

H, W = 90, 160
K = np.array([[120.0, 0.0, (W - 1) / 2], [0.0, 120.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
CAM_HEIGHT = 1.5
_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # R_ego<-cam at yaw 0


def camera_at(x: float, y: float, yaw: float = 0.0) -> render.Camera:
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ _AXES
    T[:3, 3] = [x, y, CAM_HEIGHT]
    return render.Camera(K=K, cam2world=T, width=W, height=H)


@pytest.fixture(scope="module")
def ground() -> render.GroundTexture:
    """Grey asphalt 100 m x 40 m with a white stripe across the road at x = 5.8..6.5 m (0.1 m texels)."""
    rgb = np.full((400, 1000, 3), 60, np.uint8)
    rgb[:, 58:65] = 240  # x in [5.8, 6.5)
    return render.GroundTexture(rgb=rgb, origin=(0.0, -20.0), resolution=0.1)


def boxes(*specs) -> render.Boxes:
    """specs: (x, y, yaw, dynamic) cars of size w 2, l 4, h 1.5."""
    n = len(specs)
    return render.Boxes(center=[[x, y, 0.75] for x, y, _, _ in specs], size=[[2.0, 4.0, 1.5]] * n,
                        yaw=[yaw for _, _, yaw, _ in specs], color=[[200, 30, 30]] * n, kind=[0] * n,
                        dynamic=[d for *_, d in specs])


def project(cam: render.Camera, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.linalg.inv(cam.cam2world)
    pc = pts @ T[:3, :3].T + T[:3, 3]
    return pc[:, :2] / pc[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]], pc[:, 2]


def test_painted_ground_appears_at_its_projection_with_exact_depth(ground):
    cam = camera_at(0.0, 0.0)
    out = render.render_camera(ground, boxes(), cam)
    assert out.rgb.shape == (H, W, 3) and out.depth.shape == (H, W)
    uv, z = project(cam, np.array([[6.15, 0.0, 0.0], [9.0, 0.0, 0.0]]))
    (us, vs), (ua, va) = np.round(uv).astype(int)
    assert out.rgb[vs, us].mean() > 150  # on the stripe
    assert out.rgb[va, ua].mean() < 110  # plain asphalt
    assert out.object_index[va, ua] == -1 and out.object_index[0, 0] == -2
    # a ground pixel's depth is the analytic z-depth of the ray's hit on z = 0
    v = H - 5
    z_expected = CAM_HEIGHT * K[1, 1] / (v - K[1, 2])
    assert out.depth[v, W // 2] == pytest.approx(z_expected, rel=1e-4)
    assert np.isinf(out.depth[0, 0])


def test_box_occludes_ground_and_marks_its_pixels(ground):
    cam = camera_at(0.0, 0.0)
    out = render.render_camera(ground, boxes((12.0, 0.0, 0.0, True)), cam)
    uv, z = project(cam, np.array([[10.0, 0.0, 0.75]]))  # centre of the rear face
    u, v = np.round(uv[0]).astype(int)
    assert out.object_index[v, u] == 0 and out.dynamic_mask[v, u]
    assert out.depth[v, u] == pytest.approx(10.0, abs=1e-3)
    static = render.render_camera(ground, boxes((12.0, 0.0, 0.0, False)), cam)
    assert static.object_index[v, u] == 0 and not static.dynamic_mask.any()
    # the stripe behind the box is hidden where the box is
    assert out.dynamic_mask.sum() > 50


def test_render_is_deterministic(ground):
    cam = camera_at(1.0, 0.5, 0.1)
    a = render.render_camera(ground, boxes((12.0, 1.0, 0.3, True), (25.0, -3.0, 1.0, False)), cam)
    b = render.render_camera(ground, boxes((12.0, 1.0, 0.3, True), (25.0, -3.0, 1.0, False)), cam)
    assert a.rgb.tobytes() == b.rgb.tobytes() and a.depth.tobytes() == b.depth.tobytes()


def test_lidar_ground_height_range_and_points_in_boxes(ground):
    height = 1.84
    lidar2world = np.eye(4)
    lidar2world[:3, 3] = [0.0, 0.0, height]
    scene = boxes((8.0, 0.0, 0.0, True))
    pts = render.lidar_scan(ground, scene, lidar2world, beams=16, azimuth_bins=360, max_range=50.0)
    assert pts.shape[1] == 5 and pts.dtype == np.float32
    rng = np.linalg.norm(pts[:, :3], axis=1)
    assert rng.max() <= 50.0 + 1e-3
    world = pts[:, :3] + [0.0, 0.0, height]
    on_box = render.points_in_boxes(world, scene)[0]
    assert on_box > 10
    # points that are not on the box lie on the ground: z = -height in the sensor frame
    local = world - [8.0, 0.0, 0.75]
    off_box = ~np.all(np.abs(local) <= [2.0 + 1e-6, 1.0 + 1e-6, 0.75 + 1e-6], axis=1)
    assert np.allclose(pts[off_box, 2], -height, atol=1e-4)
    assert set(np.unique(pts[:, 4])) <= set(range(16))
    # points_in_boxes on a hand-made set: faces inclusive, rotated box
    rot = boxes((0.0, 0.0, math.pi / 2, False))  # length 4 now along y
    hand = np.array([[0.0, 1.9, 0.1], [0.0, 2.1, 0.1], [0.9, 0.0, 1.5], [1.1, 0.0, 0.5], [0.0, 0.0, -0.1]])
    assert render.points_in_boxes(hand, rot).tolist() == [2]


def test_surface_points_round_trip(ground):
    cam = camera_at(0.0, 0.0)
    scene = boxes((12.0, 0.5, 0.2, True))
    out = render.render_camera(ground, scene, cam)
    jj, ii = np.meshgrid(np.arange(3, W - 3, 7), np.arange(3, H - 3, 7))
    uv = np.stack([jj.ravel(), ii.ravel()], axis=1).astype(float)
    surf = render.surface_points(ground, scene, cam, uv)
    assert np.array_equal(surf.object_index, out.object_index[ii.ravel(), jj.ravel()])
    back, vis = render.project_surface_points(surf, scene, cam, out.depth)
    solid = surf.object_index != -2
    assert np.abs(back[solid] - uv[solid]).max() < 1e-3
    assert vis[solid].mean() > 0.95 and not vis[~solid].any()


def test_points_move_with_their_box_and_get_occluded(ground):
    cam = camera_at(0.0, 0.0)
    before = boxes((12.0, 0.0, 0.0, True))
    after = boxes((12.0, 1.5, 0.0, True))  # the car moved 1.5 m to the left
    uv0, _ = project(cam, np.array([[10.0, 0.0, 0.75]]))
    surf = render.surface_points(ground, before, cam, uv0)
    assert surf.object_index[0] == 0
    uv1, vis1 = render.project_surface_points(surf, after, cam, render.render_camera(ground, after, cam).depth)
    expected, _ = project(cam, np.array([[10.0, 1.5, 0.75]]))
    assert np.allclose(uv1, expected, atol=1e-3) and vis1[0]
    # a ground point behind the car is visible alone, hidden once a second car stands in front of it
    g_uv, _ = project(cam, np.array([[20.0, 0.0, 0.0]]))
    g = render.surface_points(ground, boxes(), cam, g_uv)
    assert g.object_index[0] == -1
    blocker = boxes((12.0, 0.0, 0.0, True))
    _, vis_exact = render.project_surface_points(g, blocker, cam, None)
    _, vis_depth = render.project_surface_points(g, blocker, cam, render.render_camera(ground, blocker, cam).depth)
    _, vis_free = render.project_surface_points(g, boxes(), cam, None)
    assert vis_free[0] and not vis_exact[0] and not vis_depth[0]
