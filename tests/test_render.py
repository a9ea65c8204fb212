"""Tests for the ray-casting renderer (models/world/render.py, models/world/raycast.py).

Main scene, built here: grey asphalt with a white stripe, a white square and a fine zebra far away;
a car, a yawed car, a pedestrian, a building and a wall that straddles the camera plane. The last
section keeps the integrator's original small-scene checks.
"""
import math

import numpy as np
import pytest

from models.world import raycast as rc
from models.world.render import (Boxes, Camera, GroundTexture, lidar_scan, points_in_boxes,
                                 project_surface_points, render_camera, surface_points)

RES, X0, Y0 = 0.1, -20.0, -5.0
ASPHALT, WHITE = 90, 240
STRIPE_X = (-4.0, -3.6)            # white stripe, all along the texture
SQUARE = (2.0, 3.0, 6.0, 7.0)      # white square x0, x1, y0, y1
ZEBRA_Y = (40.0, 65.0)             # 0.2 m stripes (0.4 m period) between these y
CAM_H = 1.5
K = np.array([[252.0, 0.0, 160.0], [0.0, 252.0, 90.0], [0.0, 0.0, 1.0]])
W, H = 320, 180
CAM_BASE = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)  # ego(x fwd) <- cam


def make_ground() -> GroundTexture:
    rows, cols = 800, 400                                                    # y in [-5, 75), x in [-20, 20)
    tex = np.full((rows, cols, 3), ASPHALT, dtype=np.uint8)
    xc = X0 + (np.arange(cols) + 0.5) * RES                                  # texel-centre x
    yc = Y0 + (np.arange(rows) + 0.5) * RES
    tex[:, (xc > STRIPE_X[0]) & (xc < STRIPE_X[1])] = WHITE
    sq_r = (yc > SQUARE[2]) & (yc < SQUARE[3])
    sq_c = (xc > SQUARE[0]) & (xc < SQUARE[1])
    tex[np.ix_(sq_r, sq_c)] = WHITE
    zebra = (yc > ZEBRA_Y[0]) & (yc < ZEBRA_Y[1]) & (np.floor(yc / 0.2) % 2 == 0)
    tex[zebra] = WHITE
    return GroundTexture(rgb=tex, origin=(X0, Y0), resolution=RES)


def make_boxes(car_xy=(0.0, 10.0), car_yaw=0.0) -> Boxes:
    return Boxes(
        center=[[car_xy[0], car_xy[1], 0.8], [-6.0, 16.0, 0.75], [-2.5, 7.0, 0.875], [12.0, 25.0, 5.0],
                [3.2, 0.0, 1.0]],
        size=[[1.8, 4.4, 1.6], [1.9, 4.6, 1.5], [0.6, 0.6, 1.75], [8.0, 10.0, 10.0], [0.3, 10.0, 2.0]],
        yaw=[car_yaw, 0.5, 0.0, 0.2, np.pi / 2],
        color=[[200, 30, 30], [30, 60, 200], [40, 160, 40], [180, 170, 150], [120, 120, 120]],
        kind=[0, 0, 1, 2, 2],
        dynamic=[True, True, True, False, False],
    )


def no_boxes() -> Boxes:
    return Boxes([], [], [], [], [], [])


def make_camera(xy=(0.0, 0.0), yaw=np.pi / 2, height=CAM_H) -> Camera:
    m = np.eye(4)
    m[:3, :3] = rc.rot_z(yaw) @ CAM_BASE
    m[:3, 3] = [xy[0], xy[1], height]
    return Camera(K=K, cam2world=m, width=W, height=H)


def project(camera: Camera, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent pinhole projection of world points (n, 3) -> uv (n, 2), z (n,)."""
    R, t = camera.cam2world[:3, :3], camera.cam2world[:3, 3]
    pc = (np.atleast_2d(pts) - t) @ R
    uvw = pc @ camera.K.T
    return uvw[:, :2] / uvw[:, 2:], pc[:, 2]


def pix(camera: Camera, p) -> tuple[float, float]:
    """(u, v) of one world point."""
    uv, _ = project(camera, np.asarray(p, dtype=np.float64).reshape(1, 3))
    return float(uv[0, 0]), float(uv[0, 1])


def analytic_ground(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: ground hit x, y (H, W) and z-depth (H, W), inf where the ray goes up."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ camera.cam2world[:3, :3].T
    o = camera.cam2world[:3, 3]
    with np.errstate(divide="ignore"):
        t = np.where(d[..., 2] < 0, -o[2] / d[..., 2], np.inf)
    return o[0] + t * d[..., 0], o[1] + t * d[..., 1], t


@pytest.fixture(scope="module")
def scene():
    ground, boxes, cam = make_ground(), make_boxes(), make_camera()
    return ground, boxes, cam, render_camera(ground, boxes, cam)


# ------------------------------------------------------------------------------------------ camera
def test_output_types_and_sky(scene):
    _, _, _, r = scene
    assert r.rgb.shape == (H, W, 3) and r.rgb.dtype == np.uint8
    assert r.depth.shape == (H, W) and r.depth.dtype == np.float32
    assert r.object_index.shape == (H, W) and r.object_index.dtype == np.int32
    assert r.dynamic_mask.shape == (H, W) and r.dynamic_mask.dtype == bool
    sky = r.object_index == -2
    assert sky[0, : W // 2].all() and np.isinf(r.depth[sky]).all() and np.isfinite(r.depth[~sky]).all()
    top, horizon = r.rgb[0, 0].astype(int), r.rgb[np.nonzero(sky[:, 0])[0][-1], 0].astype(int)
    assert top[2] > top[0] + 40 and horizon.min() > top.min()               # blue above, whiter at horizon


def test_painted_square_at_projected_pixel(scene):
    _, _, cam, r = scene
    centre = np.array([0.5 * (SQUARE[0] + SQUARE[1]), 0.5 * (SQUARE[2] + SQUARE[3]), 0.0])
    u, v = pix(cam, centre)
    i, j = int(round(v)), int(round(u))
    assert r.object_index[i, j] == -1
    assert np.abs(r.rgb[i, j].astype(int) - WHITE).max() <= 6
    u, v = pix(cam, centre + [-2.0, 0.0, 0.0])                               # 2 m left: asphalt
    assert np.abs(r.rgb[int(round(v)), int(round(u))].astype(int) - ASPHALT).max() <= 6


def test_ground_is_geometrically_exact(scene):
    """Every near ground pixel is white iff its analytic ground hit is inside the stripe/square."""
    _, _, cam, r = scene
    gx, gy, t = analytic_ground(cam)
    near = (r.object_index == -1) & (t < 12.0)
    in_stripe = (gx > STRIPE_X[0]) & (gx < STRIPE_X[1])
    in_square = (gx > SQUARE[0]) & (gx < SQUARE[1]) & (gy > SQUARE[2]) & (gy < SQUARE[3])
    white = in_stripe | in_square
    d_edge = np.minimum.reduce([np.abs(gx - STRIPE_X[0]), np.abs(gx - STRIPE_X[1]),
                                np.where((gy > SQUARE[2] - 1) & (gy < SQUARE[3] + 1),
                                         np.minimum(np.abs(gx - SQUARE[0]), np.abs(gx - SQUARE[1])), np.inf),
                                np.where((gx > SQUARE[0] - 1) & (gx < SQUARE[1] + 1),
                                         np.minimum(np.abs(gy - SQUARE[2]), np.abs(gy - SQUARE[3])), np.inf)])
    clear = near & (d_edge > 0.15)                                           # > 1 texel from any edge
    g = r.rgb[..., 1].astype(int)
    assert clear.sum() > 3000 and (white & clear).sum() > 100
    assert (g[white & clear] > 200).all()
    assert (g[~white & clear] < 120).all()


def test_ground_depth_is_analytic(scene):
    _, _, cam, r = scene
    _, _, t = analytic_ground(cam)
    g = r.object_index == -1
    np.testing.assert_allclose(r.depth[g], t[g], rtol=1e-5)


def test_distant_zebra_is_filtered(scene):
    """0.2 m stripes 40-65 m away alias without mip-mapping (std ~35); with it they blur to mid grey."""
    ground, _, cam, _ = scene
    r = render_camera(ground, no_boxes(), cam)
    assert not (r.object_index >= 0).any() and not r.dynamic_mask.any()
    gx, gy, _ = analytic_ground(cam)
    far = (r.object_index == -1) & (gy > ZEBRA_Y[0] + 3) & (gy < ZEBRA_Y[1] - 3) & (np.abs(gx) < 3)
    assert far.sum() > 50
    vals = r.rgb[..., 1][far].astype(float)
    assert vals.std() < 15 and ASPHALT + 30 < vals.mean() < WHITE - 30


def test_box_occludes_ground(scene):
    _, boxes, cam, r = scene
    # the car's near side face is the plane y = 10 - 0.9, perpendicular to the optical axis
    u, v = pix(cam, [0.0, 9.1, 0.8])
    i, j = int(round(v)), int(round(u))
    assert r.object_index[i, j] == 0 and r.dynamic_mask[i, j]
    assert r.depth[i, j] == pytest.approx(9.1, abs=1e-4)
    _, _, t = analytic_ground(cam)
    car = r.object_index == 0
    assert car.sum() > 500 and (r.depth[car] < t[car]).all()
    assert np.array_equal(r.dynamic_mask, np.isin(r.object_index, [0, 1, 2]))
    u, v = pix(cam, boxes.center[3])                                         # static building
    assert r.object_index[int(round(v)), int(round(u))] == 3
    assert not r.dynamic_mask[r.object_index == 3].any()


def test_culling_matches_brute_force(scene):
    """Pixel-rectangle culling (including the wall straddling the camera plane) loses no hits."""
    ground, boxes, cam, r = scene
    v, u = np.mgrid[0:H, 0:W]
    sp = surface_points(ground, boxes, cam, np.stack([u.ravel(), v.ravel()], 1).astype(float))
    assert np.array_equal(sp.object_index.reshape(H, W), r.object_index)
    assert (r.object_index == 4).sum() > 200                                 # the straddling wall is seen
    fin = np.isfinite(r.depth)
    np.testing.assert_allclose(sp.depth.reshape(H, W)[fin], r.depth[fin], rtol=1e-6)


def test_render_is_deterministic(scene):
    ground, boxes, cam, r = scene
    r2 = render_camera(make_ground(), make_boxes(), make_camera())           # fresh caches
    for a, b in ((r.rgb, r2.rgb), (r.depth, r2.depth), (r.object_index, r2.object_index)):
        assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------------------------------------- LiDAR
@pytest.fixture(scope="module")
def lidar():
    ground, boxes = make_ground(), make_boxes()
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 0.0, 1.84]
    return ground, boxes, pose, lidar_scan(ground, boxes, pose, max_range=60.0)


def _inside_box(pts, boxes, k, margin=0.0):
    local = (pts - boxes.center[k]) @ rc.rot_z(boxes.yaw[k])
    half = rc.half_extents(boxes.size)[k] + margin
    return np.all(np.abs(local) <= half, axis=1)


def test_lidar_ground_range_and_intensity(lidar):
    ground, boxes, pose, pts = lidar
    assert pts.dtype == np.float32 and pts.shape[1] == 5 and len(pts) > 5000
    rng = np.linalg.norm(pts[:, :3], axis=1)
    assert rng.max() <= 60.0 + 1e-3
    assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(32))
    world = pts[:, :3] + pose[:3, 3]
    on_box = np.zeros(len(pts), bool)
    for k in range(len(boxes)):
        on_box |= _inside_box(world, boxes, k, 0.05)
    gnd = pts[~on_box]
    np.testing.assert_allclose(gnd[:, 2], -1.84, atol=1e-4)
    counts = points_in_boxes(world, boxes)
    assert counts[0] > 0 and counts[3] > 0                                   # car and building are hit
    # every hit above the ground lies on a box face and the default 1 cm margin counts it
    above = pts[:, 2] > -1.84 + 1e-3
    near_1cm = np.zeros(len(pts), bool)
    for k in range(len(boxes)):
        near_1cm |= _inside_box(world, boxes, k, 0.01)
    assert near_1cm[above].all() and counts.sum() >= above.sum()
    # markings are brighter than asphalt
    wg = world[~on_box]
    stripe = (wg[:, 0] > STRIPE_X[0] + 0.05) & (wg[:, 0] < STRIPE_X[1] - 0.05) & (wg[:, 1] > Y0) & (wg[:, 1] < 70)
    asphalt = (np.abs(wg[:, 0] + 8) < 2) & (wg[:, 1] > Y0) & (wg[:, 1] < 70)
    assert stripe.sum() > 3 and asphalt.sum() > 10
    assert gnd[stripe, 3].min() > gnd[asphalt, 3].max()


def test_lidar_rotated_sensor_frame(lidar):
    """Points come back in the sensor frame: a yawed sensor sees the same world."""
    ground, boxes, pose, pts = lidar
    pose2 = pose.copy()
    pose2[:3, :3] = rc.rot_z(-np.pi / 2)                                    # nuScenes-like LIDAR_TOP mount
    pts2 = lidar_scan(ground, boxes, pose2, max_range=60.0)
    w2 = pts2[:, :3].astype(np.float64) @ pose2[:3, :3].T + pose2[:3, 3]
    assert abs(len(pts2) - len(pts)) < 0.02 * len(pts)
    c1 = points_in_boxes(pts[:, :3] + pose[:3, 3], boxes)
    c2 = points_in_boxes(w2, boxes)
    assert c2[0] > 0 and abs(int(c1[0]) - int(c2[0])) <= 0.2 * c1[0]


def test_points_in_boxes_hand_made():
    boxes = make_boxes()
    c, yaw = np.array([-6.0, 16.0, 0.75]), 0.5                              # box 1: l 4.6, w 1.9, h 1.5, yawed
    fwd, left = np.array([np.cos(yaw), np.sin(yaw), 0]), np.array([-np.sin(yaw), np.cos(yaw), 0])
    pts = np.array([
        [0.0, 10.0, 0.8], [2.1, 10.8, 1.5], [-2.1, 9.2, 0.1],               # in box 0
        [2.3, 10.0, 0.8], [0.0, 11.0, 0.8], [0.0, 10.0, 1.7],               # out of box 0
        c, c + 2.2 * fwd, c - 0.9 * left + [0, 0, 0.7],                     # in box 1
        c + 2.4 * fwd, c + 1.0 * left, c + 1.2 * fwd + 0.3 * left + [0, 0, 0.8],  # out of box 1
    ])
    np.testing.assert_array_equal(points_in_boxes(pts, boxes, margin=0.0), [3, 3, 0, 0, 0])
    assert points_in_boxes(np.zeros((0, 3)), boxes).tolist() == [0] * 5


# ----------------------------------------------------------------------------------- point tracking
def test_surface_points_round_trip(scene):
    ground, boxes, cam, r = scene
    v, u = np.mgrid[0:H:3, 0:W:3]
    uv = np.stack([u.ravel(), v.ravel()], 1).astype(float)
    uv = np.concatenate([uv, uv[::7] + [0.37, -0.21]])                     # some sub-pixel queries too
    sp = surface_points(ground, boxes, cam, uv)
    n_grid = u.size
    assert np.array_equal(sp.object_index[:n_grid], r.object_index[v.ravel(), u.ravel()])
    uv2, vis = project_surface_points(sp, boxes, cam, r.depth)
    solid = sp.object_index != -2
    assert np.abs(uv2[solid] - uv[solid]).max() < 1e-3
    inside = (uv[:, 0] < W - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < H - 0.5)
    assert vis[solid & inside].all()
    assert not vis[~solid].any() and np.isnan(uv2[~solid]).all()
    _, vis_exact = project_surface_points(sp, boxes, cam, None)
    assert vis_exact[solid & inside].all()
    # ground points are stored as world points on z = 0
    assert np.abs(sp.local[sp.object_index == -1, 2]).max() < 1e-9


def test_point_moves_with_its_box(scene):
    ground, boxes, cam, r = scene
    u, v = pix(cam, [0.5, 9.1, 1.0])                                         # on the car's near face
    sp = surface_points(ground, boxes, cam, np.array([[u, v]]))
    assert sp.object_index[0] == 0
    np.testing.assert_allclose(sp.local[0], [0.5, -0.9, 0.2], atol=1e-6)
    boxes_b = make_boxes(car_xy=(1.0, 11.0), car_yaw=0.1)
    cam_b = make_camera(xy=(0.2, 1.0), yaw=np.pi / 2 + 0.05)
    r_b = render_camera(ground, boxes_b, cam_b)
    uv_b, vis = project_surface_points(sp, boxes_b, cam_b, r_b.depth)
    world_b = rc.rot_z(0.1) @ sp.local[0] + boxes_b.center[0]
    np.testing.assert_allclose(uv_b[0], pix(cam_b, world_b), atol=1e-3)
    assert vis[0]
    assert r_b.object_index[int(round(uv_b[0, 1])), int(round(uv_b[0, 0]))] == 0
    # a static ground point stays put
    ug, vg = pix(cam, [2.5, 6.5, 0.0])
    spg = surface_points(ground, boxes, cam, np.array([[ug, vg]]))
    uvg, visg = project_surface_points(spg, boxes_b, cam_b, r_b.depth)
    np.testing.assert_allclose(uvg[0], pix(cam_b, [2.5, 6.5, 0.0]), atol=1e-3)
    assert spg.object_index[0] == -1 and visg[0]


def test_occluded_point_is_invisible(scene):
    ground, boxes, cam, r = scene
    u, v = pix(cam, [5.0, 14.0, 0.0])
    sp = surface_points(ground, boxes, cam, np.array([[u, v]]))
    assert sp.object_index[0] == -1
    boxes_b = make_boxes(car_xy=(3.5, 10.0))                               # the car drives in front of it
    r_b = render_camera(ground, boxes_b, cam)
    uv_b, vis = project_surface_points(sp, boxes_b, cam, r_b.depth)
    np.testing.assert_allclose(uv_b[0], [u, v], atol=1e-3)
    assert r_b.object_index[int(round(v)), int(round(u))] == 0 and not vis[0]
    _, vis_exact = project_surface_points(sp, boxes_b, cam, None)
    assert not vis_exact[0]
    # behind the camera: invisible, uv NaN
    uv_back, vis_back = project_surface_points(sp, boxes, make_camera(yaw=-np.pi / 2), None)
    assert not vis_back[0] and np.isnan(uv_back[0]).all()


# ------------------------------------------------------------- the integrator's original small-scene checks
SH, SW = 90, 160
SK = np.array([[120.0, 0.0, (SW - 1) / 2], [0.0, 120.0, (SH - 1) / 2], [0.0, 0.0, 1.0]])


def small_camera(x: float, y: float, yaw: float = 0.0) -> Camera:
    m = np.eye(4)
    m[:3, :3] = rc.rot_z(yaw) @ CAM_BASE
    m[:3, 3] = [x, y, CAM_H]
    return Camera(K=SK, cam2world=m, width=SW, height=SH)


@pytest.fixture(scope="module")
def road() -> GroundTexture:
    """Grey asphalt 100 m x 40 m with a white stripe across the road at x = 5.8..6.5 m (0.1 m texels)."""
    rgb = np.full((400, 1000, 3), 60, np.uint8)
    rgb[:, 58:65] = 240  # x in [5.8, 6.5)
    return GroundTexture(rgb=rgb, origin=(0.0, -20.0), resolution=0.1)


def cars(*specs) -> Boxes:
    """specs: (x, y, yaw, dynamic) cars of size w 2, l 4, h 1.5."""
    n = len(specs)
    return Boxes(center=[[x, y, 0.75] for x, y, _, _ in specs], size=[[2.0, 4.0, 1.5]] * n,
                 yaw=[yaw for _, _, yaw, _ in specs], color=[[200, 30, 30]] * n, kind=[0] * n,
                 dynamic=[d for *_, d in specs])


def test_small_painted_ground_appears_at_its_projection_with_exact_depth(road):
    cam = small_camera(0.0, 0.0)
    out = render_camera(road, cars(), cam)
    assert out.rgb.shape == (SH, SW, 3) and out.depth.shape == (SH, SW)
    uv, z = project(cam, np.array([[6.15, 0.0, 0.0], [9.0, 0.0, 0.0]]))
    (us, vs), (ua, va) = np.round(uv).astype(int)
    assert out.rgb[vs, us].mean() > 150  # on the stripe
    assert out.rgb[va, ua].mean() < 110  # plain asphalt
    assert out.object_index[va, ua] == -1 and out.object_index[0, 0] == -2
    # a ground pixel's depth is the analytic z-depth of the ray's hit on z = 0
    v = SH - 5
    z_expected = CAM_H * SK[1, 1] / (v - SK[1, 2])
    assert out.depth[v, SW // 2] == pytest.approx(z_expected, rel=1e-4)
    assert np.isinf(out.depth[0, 0])


def test_small_box_occludes_ground_and_marks_its_pixels(road):
    cam = small_camera(0.0, 0.0)
    out = render_camera(road, cars((12.0, 0.0, 0.0, True)), cam)
    uv, z = project(cam, np.array([[10.0, 0.0, 0.75]]))  # centre of the rear face
    u, v = np.round(uv[0]).astype(int)
    assert out.object_index[v, u] == 0 and out.dynamic_mask[v, u]
    assert out.depth[v, u] == pytest.approx(10.0, abs=1e-3)
    static = render_camera(road, cars((12.0, 0.0, 0.0, False)), cam)
    assert static.object_index[v, u] == 0 and not static.dynamic_mask.any()
    # the stripe behind the box is hidden where the box is
    assert out.dynamic_mask.sum() > 50


def test_small_render_is_deterministic(road):
    cam = small_camera(1.0, 0.5, 0.1)
    a = render_camera(road, cars((12.0, 1.0, 0.3, True), (25.0, -3.0, 1.0, False)), cam)
    b = render_camera(road, cars((12.0, 1.0, 0.3, True), (25.0, -3.0, 1.0, False)), cam)
    assert a.rgb.tobytes() == b.rgb.tobytes() and a.depth.tobytes() == b.depth.tobytes()


def test_small_lidar_ground_height_range_and_points_in_boxes(road):
    height = 1.84
    lidar2world = np.eye(4)
    lidar2world[:3, 3] = [0.0, 0.0, height]
    scene = cars((8.0, 0.0, 0.0, True))
    pts = lidar_scan(road, scene, lidar2world, beams=16, azimuth_bins=360, max_range=50.0)
    assert pts.shape[1] == 5 and pts.dtype == np.float32
    rng = np.linalg.norm(pts[:, :3], axis=1)
    assert rng.max() <= 50.0 + 1e-3
    world = pts[:, :3] + [0.0, 0.0, height]
    on_box = points_in_boxes(world, scene)[0]
    assert on_box > 10
    # points that are not on the box lie on the ground: z = -height in the sensor frame
    local = world - [8.0, 0.0, 0.75]
    off_box = ~np.all(np.abs(local) <= [2.0 + 1e-6, 1.0 + 1e-6, 0.75 + 1e-6], axis=1)
    assert np.allclose(pts[off_box, 2], -height, atol=1e-4)
    assert set(np.unique(pts[:, 4])) <= set(range(16))
    # points_in_boxes on a hand-made set: faces inclusive, rotated box
    rot = cars((0.0, 0.0, math.pi / 2, False))  # length 4 now along y
    hand = np.array([[0.0, 1.9, 0.1], [0.0, 2.1, 0.1], [0.9, 0.0, 1.5], [1.1, 0.0, 0.5], [0.0, 0.0, -0.1]])
    assert points_in_boxes(hand, rot).tolist() == [2]


def test_small_surface_points_round_trip(road):
    cam = small_camera(0.0, 0.0)
    scene = cars((12.0, 0.5, 0.2, True))
    out = render_camera(road, scene, cam)
    jj, ii = np.meshgrid(np.arange(3, SW - 3, 7), np.arange(3, SH - 3, 7))
    uv = np.stack([jj.ravel(), ii.ravel()], axis=1).astype(float)
    surf = surface_points(road, scene, cam, uv)
    assert np.array_equal(surf.object_index, out.object_index[ii.ravel(), jj.ravel()])
    back, vis = project_surface_points(surf, scene, cam, out.depth)
    solid = surf.object_index != -2
    assert np.abs(back[solid] - uv[solid]).max() < 1e-3
    assert vis[solid].mean() > 0.95 and not vis[~solid].any()


def test_small_points_move_with_their_box_and_get_occluded(road):
    cam = small_camera(0.0, 0.0)
    before = cars((12.0, 0.0, 0.0, True))
    after = cars((12.0, 1.5, 0.0, True))  # the car moved 1.5 m to the left
    uv0, _ = project(cam, np.array([[10.0, 0.0, 0.75]]))
    surf = surface_points(road, before, cam, uv0)
    assert surf.object_index[0] == 0
    uv1, vis1 = project_surface_points(surf, after, cam, render_camera(road, after, cam).depth)
    expected, _ = project(cam, np.array([[10.0, 1.5, 0.75]]))
    assert np.allclose(uv1, expected, atol=1e-3) and vis1[0]
    # a ground point behind the car is visible alone, hidden once a second car stands in front of it
    g_uv, _ = project(cam, np.array([[20.0, 0.0, 0.0]]))
    g = surface_points(road, cars(), cam, g_uv)
    assert g.object_index[0] == -1
    blocker = cars((12.0, 0.0, 0.0, True))
    _, vis_exact = project_surface_points(g, blocker, cam, None)
    _, vis_depth = project_surface_points(g, blocker, cam, render_camera(road, blocker, cam).depth)
    _, vis_free = project_surface_points(g, cars(), cam, None)
    assert vis_free[0] and not vis_exact[0] and not vis_depth[0]
