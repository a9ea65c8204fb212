"""models/geometry/metrics: hand-computed cases for every rule of metrics_conventions_2.md section 4 (VGGT pose
errors, accuracy, AUC; plus Sim(3) ATE) and section 5 (Pi3 depth_evaluation), and the mask IoU / F1."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from models.geometry.metrics import (DEPTH_KEYS, ate_sim3, camera_centres, depth_metrics, lower_median,
                                     mask_iou_f1, pair_indices, pose_accuracy, pose_auc, relative_pose_errors,
                                     rotmat_to_quat, umeyama_sim3, weighted_mean)

ROT_FLOOR = math.degrees(math.acos(1.0 - 2.0 * 1e-15))            # ~3.6e-6 deg
TRANS_FLOOR = math.degrees(math.acos(math.sqrt(1.0 - 1e-15)))     # ~1.8e-6 deg


# ------------------------------------------------------------------ helpers

def _w2c(R, t) -> np.ndarray:
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R, t
    return E


def _random_w2c(rng, S) -> np.ndarray:
    Rs = Rotation.random(S, random_state=rng).as_matrix()
    ts = rng.normal(size=(S, 3)) * 2.0
    return np.stack([_w2c(R, t) for R, t in zip(Rs, ts)])


def _perturb(rng, E, rot_deg=3.0, trans=0.2) -> np.ndarray:
    out = E.copy()
    for k in range(len(E)):
        dR = Rotation.from_rotvec(rng.normal(size=3) * math.radians(rot_deg)).as_matrix()
        out[k, :3, :3] = dR @ E[k, :3, :3]
        out[k, :3, 3] = E[k, :3, 3] + rng.normal(size=3) * trans
    return out


def _sim3_world_change(E, s, Rg, tg) -> np.ndarray:
    """w2c extrinsics after the world change X' = s Rg X + tg: R' = R Rg^T, t' = s t - R Rg^T tg (scale acts on t
    only); the camera centres move as C' = s Rg C + tg."""
    out = np.empty_like(E)
    for k in range(len(E)):
        R, t = E[k, :3, :3], E[k, :3, 3]
        Rn = R @ Rg.T
        out[k] = _w2c(Rn, s * t - Rn @ tg)
    return out


def _loop_reference(pred, gt):
    """Independent per-pair loop: Rel_ij = E_i inv(E_j) with np.linalg.inv; geodesic angle by scipy; unsigned
    direction angle. Valid for errors well above the 1e-15 floor."""
    S = len(pred)
    rot, trans = [], []
    for i in range(S):
        for j in range(i + 1, S):
            Rp = pred[i] @ np.linalg.inv(pred[j])
            Rg = gt[i] @ np.linalg.inv(gt[j])
            rot.append(np.degrees(Rotation.from_matrix(Rp[:3, :3].T @ Rg[:3, :3]).magnitude()))
            a, b = Rp[:3, 3], Rg[:3, 3]
            c = abs(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
            trans.append(np.degrees(np.arccos(np.clip(c, -1, 1))))
    return np.array(rot), np.array(trans)


# ------------------------------------------------------------------ section 4: per-pair errors

def test_pair_indices_lexicographic():
    i, j = pair_indices(4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(pair_indices(10)[0]) == 45


def test_quaternion_conversion_matches_scipy():
    rng = np.random.default_rng(0)
    R = Rotation.random(200, random_state=rng)
    q = rotmat_to_quat(R.as_matrix())
    q_ref = R.as_quat()[:, [3, 0, 1, 2]]                            # scipy is (x, y, z, w)
    assert np.allclose(np.abs(np.sum(q * q_ref, axis=1)), 1.0, atol=1e-12)
    # near-180-degree rotations take the other branches
    for axis in np.eye(3):
        qq = rotmat_to_quat(Rotation.from_rotvec(axis * math.pi).as_matrix()[None])[0]
        assert np.allclose(np.abs(qq[1:]), axis, atol=1e-12)


def test_identical_poses_give_the_floor_not_zero():
    rng = np.random.default_rng(1)
    E = _random_w2c(rng, 6)
    rot, trans = relative_pose_errors(E, E.copy())
    assert rot.shape == trans.shape == (15,)
    assert np.all(rot > 0) and np.all(trans > 0)
    assert np.allclose(rot, ROT_FLOOR, rtol=0, atol=1e-5)          # pitfall 3: tolerance ~1e-5 deg
    assert np.allclose(trans, TRANS_FLOOR, rtol=0, atol=1e-5)
    assert 1e-6 < ROT_FLOOR < 1e-5 and 1e-6 < TRANS_FLOOR < 1e-5
    # [S, 3, 4] input and torch float32 input are accepted (promoted to float64)
    rot34, trans34 = relative_pose_errors(torch.from_numpy(E[:, :3]).float(), E[:, :3])
    assert rot34.dtype == np.float64 and rot34.shape == (15,)
    assert np.all(rot34 < 0.01) and np.all(trans34 < 0.01)


def test_known_rotation_error_is_10_degrees():
    t0 = np.array([1.0, 2.0, 3.0])
    Rz10 = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    gt = np.stack([_w2c(np.eye(3), t0), _w2c(np.eye(3), np.zeros(3))])
    pred = np.stack([_w2c(Rz10, t0), _w2c(np.eye(3), np.zeros(3))])
    rot, trans = relative_pose_errors(pred, gt)                      # R_rel = Rz10 vs I; t_rel = t0 for both
    assert rot[0] == pytest.approx(10.0, abs=1e-9)
    assert trans[0] == pytest.approx(TRANS_FLOOR, abs=1e-5)


def test_translation_angle_sign_blind_and_known_values():
    gt = np.stack([_w2c(np.eye(3), [1.0, 0, 0]), _w2c(np.eye(3), np.zeros(3))])

    def err(direction):
        pred = np.stack([_w2c(np.eye(3), direction), _w2c(np.eye(3), np.zeros(3))])
        return relative_pose_errors(pred, gt)[1][0]

    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    assert err([3 * c, 3 * s, 0]) == pytest.approx(20.0, abs=1e-9)            # scale-invariant
    assert err([-c, -s, 0]) == pytest.approx(20.0, abs=1e-9)                  # 160 deg -> min(160, 20)
    assert err([-5.0, 0, 0]) == pytest.approx(0.0, abs=1e-5)                  # opposite direction: ~0 (floor)
    assert err([0, 1.0, 0]) == pytest.approx(90.0, abs=1e-9)
    assert err([0, 0, 0]) == 90.0                                            # zero pred translation -> 90, not NaN
    # zero GT relative translation (concentric GT cameras, pure rotation) -> 90
    gt0 = np.stack([_w2c(np.eye(3), np.zeros(3)), _w2c(Rotation.from_euler("y", 30, degrees=True).as_matrix(),
                                                        np.zeros(3))])
    pred0 = gt0.copy()
    pred0[0, :3, 3] = [0.1, 0.2, 0.3]
    rot, trans = relative_pose_errors(pred0, gt0)
    assert trans[0] == 90.0
    assert rot[0] == pytest.approx(ROT_FLOOR, abs=1e-5)
    # the sign-blind result lies in [0, 90]
    rng = np.random.default_rng(2)
    _, trans = relative_pose_errors(_random_w2c(rng, 8), _random_w2c(rng, 8))
    assert np.all((trans >= 0) & (trans <= 90))


def test_non_finite_translation_becomes_1e6_radians():
    rng = np.random.default_rng(3)
    gt = _random_w2c(rng, 3)
    pred = gt.copy()
    pred[2, 0, 3] = np.inf
    rot, trans = relative_pose_errors(pred, gt)
    e = 1e6 * 180.0 / np.pi
    # pairs (0,2) and (1,2) involve the bad camera
    assert trans[1] == pytest.approx(abs(180.0 - e)) and trans[2] == pytest.approx(abs(180.0 - e))
    assert trans[0] == pytest.approx(TRANS_FLOOR, abs=1e-5)
    acc = pose_accuracy(rot, trans, thresholds=(30,))
    assert acc["rta@30"] == pytest.approx(1 / 3)


def test_matches_independent_loop_and_pair_order():
    rng = np.random.default_rng(4)
    gt = _random_w2c(rng, 5)
    pred = _perturb(rng, gt, rot_deg=5.0, trans=0.5)
    rot, trans = relative_pose_errors(pred, gt)
    rot_ref, trans_ref = _loop_reference(pred, gt)
    assert np.allclose(rot, rot_ref, atol=1e-7)
    assert np.allclose(trans, trans_ref, atol=1e-7)

    # a 10-degree error on camera 2 only (rotated about its own centre): exactly the pairs with a 2 are wrong
    gt = _random_w2c(rng, 4)
    pred = gt.copy()
    C2 = camera_centres(gt[2:3])[0]
    R2 = Rotation.from_euler("x", 10, degrees=True).as_matrix() @ gt[2, :3, :3]
    pred[2] = _w2c(R2, -R2 @ C2)
    rot, _ = relative_pose_errors(pred, gt)      # pairs (0,1),(0,2),(0,3),(1,2),(1,3),(2,3)
    assert np.allclose(rot[[1, 3, 5]], 10.0, atol=1e-9)
    assert np.allclose(rot[[0, 2, 4]], ROT_FLOOR, atol=1e-5)
    # VGGT's Rel_ij = E_i E_j^-1 (direction in camera i): translation error of pair (i, j) is not that of Pi3's
    # E_j E_i^-1 in general
    pred = _perturb(rng, gt, rot_deg=8.0, trans=0.8)
    _, trans = relative_pose_errors(pred, gt)
    _, trans_rev = relative_pose_errors(pred[::-1].copy(), gt[::-1].copy())
    assert not np.allclose(trans, trans_rev[::-1], atol=1e-3)


def test_errors_invariant_to_sim3_change_of_predicted_world():
    rng = np.random.default_rng(5)
    gt = _random_w2c(rng, 6)
    pred = _perturb(rng, gt, rot_deg=4.0, trans=0.3)
    rot, trans = relative_pose_errors(pred, gt)
    Rg = Rotation.random(random_state=rng).as_matrix()
    pred2 = _sim3_world_change(pred, 3.7, Rg, np.array([5.0, -2.0, 1.0]))
    # camera centres move with the similarity (checks the construction)
    assert np.allclose(camera_centres(pred2), 3.7 * camera_centres(pred) @ Rg.T + [5.0, -2.0, 1.0])
    rot2, trans2 = relative_pose_errors(pred2, gt)
    assert np.allclose(rot2, rot, atol=1e-8) and np.allclose(trans2, trans, atol=1e-8)
    # pitfall 1: camera-to-world matrices are not invariant
    c2w = np.linalg.inv(pred)
    c2w2 = np.linalg.inv(pred2)
    gt_c2w = np.linalg.inv(gt)
    assert not np.allclose(relative_pose_errors(c2w2, gt_c2w)[1], relative_pose_errors(c2w, gt_c2w)[1], atol=1e-3)


# ------------------------------------------------------------------ section 4: aggregates

def test_accuracy_is_strict():
    rot = np.array([4.999, 5.0, 5.001, 14.0, 15.0, 29.99, 30.0, 100.0])
    trans = np.array([0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 15.0, 30.0])
    acc = pose_accuracy(rot, trans)
    assert set(acc) == {"rra@5", "rta@5", "rra@15", "rta@15", "rra@30", "rta@30"}
    assert acc["rra@5"] == 1 / 8                     # 5.0 exactly fails
    assert acc["rra@15"] == 4 / 8                    # 15.0 exactly fails
    assert acc["rra@30"] == 6 / 8
    assert acc["rta@5"] == 2 / 8
    assert acc["rta@15"] == 6 / 8
    assert acc["rta@30"] == 7 / 8
    acc32 = pose_accuracy(np.arange(3.0), np.zeros(3), thresholds=(1,), float32=True)
    assert acc32["rra@1"] == float(np.float32(1) / np.float32(3))


def test_auc_closed_last_bin_and_denominator():
    T = 30
    # m = max(rot, trans): 0.5, 29.5, 30 (exactly T: counts, closed last bin), 31 (> T: denominator only)
    rot = np.array([0.5, 1.0, 30.0, 0.0])
    trans = np.array([0.1, 29.5, 2.0, 31.0])
    auc = pose_auc(rot, trans, T)
    assert auc == pytest.approx((29 * 0.25 + 0.75) / 30, abs=1e-15)     # = 8/30
    # same numbers through numpy's histogram (VGGT calculate_auc_np) and the frac(m < k) / frac(m <= T) form
    m = np.maximum(rot, trans)
    h, _ = np.histogram(m, bins=np.arange(T + 1))
    assert auc == np.mean(np.cumsum(h.astype(float) / len(m)))
    frac = [np.mean(m < k) for k in range(1, T)] + [np.mean(m <= T)]
    assert auc == pytest.approx(np.mean(frac), abs=1e-15)
    # m slightly above T: no bin at all
    assert pose_auc(np.array([30.0 + 1e-9]), np.array([0.0]), T) == 0.0
    assert pose_auc(np.array([30.0]), np.array([0.0]), T) == pytest.approx(1 / 30)
    # integer edges are half-open: m = 3 exactly counts from the k = 4 step on
    assert pose_auc(np.array([3.0]), np.array([0.0]), 5) == pytest.approx(2 / 5)
    # the max of the two errors, not the min: perfect rotation, 10 deg translation
    assert pose_auc(np.array([0.0]), np.array([10.0]), 30) == pytest.approx(20 / 30)
    # identical poses (floor errors) give AUC 1
    rng = np.random.default_rng(6)
    E = _random_w2c(rng, 5)
    assert pose_auc(*relative_pose_errors(E, E), 3) == 1.0


def test_auc_matches_numpy_histogram_on_random_errors():
    rng = np.random.default_rng(7)
    rot = rng.uniform(0, 40, 500)
    trans = rng.uniform(0, 40, 500)
    rot[:5] = [30, 15, 5, 3, 1]
    trans[:5] = 0
    for T in (3, 5, 15, 30):
        m = np.maximum(rot, trans)
        h, _ = np.histogram(m, bins=np.arange(T + 1))
        assert pose_auc(rot, trans, T) == np.mean(np.cumsum(h.astype(float) / len(m)))


# ------------------------------------------------------------------ Sim(3) ATE

def test_camera_centres():
    rng = np.random.default_rng(8)
    E = _random_w2c(rng, 4)
    C = camera_centres(E)
    assert np.allclose(np.einsum("sab,sb->sa", E[:, :3, :3], C) + E[:, :3, 3], 0.0, atol=1e-12)
    assert np.allclose(C, np.linalg.inv(E)[:, :3, 3])
    assert np.allclose(camera_centres(E[:, :3]), C)


def test_umeyama_recovers_similarity_and_ate_zero():
    rng = np.random.default_rng(9)
    src = rng.normal(size=(12, 3))
    R = Rotation.random(random_state=rng).as_matrix()
    dst = 2.5 * src @ R.T + np.array([1.0, -3.0, 0.5])
    s, Rf, t = umeyama_sim3(src, dst)
    assert s == pytest.approx(2.5, rel=1e-12)
    assert np.allclose(Rf, R, atol=1e-12) and np.allclose(t, [1.0, -3.0, 0.5], atol=1e-12)
    assert ate_sim3(src, dst) == pytest.approx(0.0, abs=1e-12)
    # from w2c extrinsics: a Sim(3)-changed copy of the GT poses has ATE 0
    gt = _random_w2c(rng, 7)
    pred = _sim3_world_change(gt, 0.3, R, np.array([4.0, 4.0, -1.0]))
    assert ate_sim3(camera_centres(pred), camera_centres(gt)) == pytest.approx(0.0, abs=1e-12)
    # a mirrored target never yields a reflection
    _, Rm, _ = umeyama_sim3(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(Rm) == pytest.approx(1.0)


def test_ate_known_value_for_perturbed_square():
    """GT square (+-1, +-1, 0); pred lifts its corners by +-eps in a checkerboard. The optimal alignment is R = I,
    t = 0, s = 2 / (2 + eps^2), and ATE = eps * sqrt(2 / (2 + eps^2)); any similarity on pred leaves it unchanged."""
    eps = 0.3
    gt = np.array([[1, 1, 0], [1, -1, 0], [-1, -1, 0], [-1, 1, 0]], dtype=float)
    pred = gt + np.array([[0, 0, eps], [0, 0, -eps], [0, 0, eps], [0, 0, -eps]])
    s, R, t = umeyama_sim3(pred, gt)
    assert s == pytest.approx(2 / (2 + eps ** 2), rel=1e-12)
    assert np.allclose(R, np.eye(3), atol=1e-12) and np.allclose(t, 0, atol=1e-12)
    expected = eps * math.sqrt(2 / (2 + eps ** 2))
    assert ate_sim3(pred, gt) == pytest.approx(expected, rel=1e-12)
    Rg = Rotation.from_euler("xyz", [20, -50, 75], degrees=True).as_matrix()
    assert ate_sim3(7.0 * pred @ Rg.T + [1, 2, 3], gt) == pytest.approx(expected, rel=1e-10)


def test_umeyama_is_the_least_squares_optimum():
    rng = np.random.default_rng(10)
    src = rng.normal(size=(30, 3))
    R = Rotation.from_euler("xyz", [10, 20, -15], degrees=True).as_matrix()
    dst = 1.7 * src @ R.T + np.array([0.2, 0.1, -0.4]) + rng.normal(size=(30, 3)) * 0.05
    s, Rf, t = umeyama_sim3(src, dst)

    def residual(x):
        return (np.exp(x[0]) * src @ Rotation.from_rotvec(x[1:4]).as_matrix().T + x[4:] - dst).ravel()

    sol = least_squares(residual, np.zeros(7), xtol=1e-14, ftol=1e-14, gtol=1e-14)
    assert np.exp(sol.x[0]) == pytest.approx(s, rel=1e-7)
    assert np.allclose(Rotation.from_rotvec(sol.x[1:4]).as_matrix(), Rf, atol=1e-7)
    assert np.allclose(sol.x[4:], t, atol=1e-7)
    ate = ate_sim3(src, dst)
    assert ate == pytest.approx(math.sqrt(np.mean(np.sum(residual(sol.x).reshape(-1, 3) ** 2, axis=1))), rel=1e-9)


# ------------------------------------------------------------------ section 5: depth

def test_valid_mask_strict_max_depth():
    gt = np.array([[0.0, -1.0, 80.0, 79.5], [100.0, 10.0, 1.0, 80.0 - 1e-9]])
    pred = np.ones_like(gt) * 2.0
    r = depth_metrics(pred, gt)                                      # gt > 0 and gt < 80
    assert r["valid_pixels"] == 4                                    # 79.5, 10, 1, 80-1e-9
    r = depth_metrics(pred, gt, max_depth=None)
    assert r["valid_pixels"] == 6                                    # adds 80 and 100
    r = depth_metrics(pred, gt, max_depth=10.0)
    assert r["valid_pixels"] == 1                                    # 10 is excluded (strict)
    assert r["abs_rel"] == pytest.approx(1.0)                        # only gt = 1, pred = 2, no alignment
    assert list(depth_metrics(pred, gt)) == list(DEPTH_KEYS)


def test_median_alignment_uses_the_lower_median():
    p = np.array([1.0, 2.0, 3.0, 10.0])
    g = np.array([3.0, 4.0, 9.0, 20.0])
    assert lower_median(p) == 2.0 and lower_median(g) == 4.0        # numpy: 2.5 and 6.5
    assert lower_median([5.0, 1.0, 3.0]) == 3.0
    r = depth_metrics(p, g, align="median", return_alignment=True)
    assert r["align_scale"] == 2.0                                   # not 6.5 / 2.5 = 2.6
    # aligned p = [2, 4, 6, 20] against g = [3, 4, 9, 20]
    assert r["abs_rel"] == pytest.approx((1 / 3 + 3 / 9) / 4, rel=1e-14)
    assert r["sq_rel"] == pytest.approx((1 / 3 + 9 / 9) / 4, rel=1e-14)
    assert r["rmse"] == pytest.approx(math.sqrt(10 / 4), rel=1e-14)
    assert r["log_rmse"] == pytest.approx(math.sqrt(2 * math.log(2 / 3) ** 2 / 4), rel=1e-14)
    assert r["delta_1.25"] == 0.5 and r["delta_1.25^2"] == 1.0 and r["delta_1.25^3"] == 1.0
    assert r["valid_pixels"] == 4


def test_stack_is_one_pixel_set_with_one_alignment():
    rng = np.random.default_rng(11)
    gt = rng.uniform(1, 50, size=(3, 5, 7))
    pred = gt * np.array([1.0, 2.0, 4.0])[:, None, None] * rng.uniform(0.9, 1.1, size=gt.shape)
    r = depth_metrics(pred, gt, align="median", return_alignment=True)
    assert r["valid_pixels"] == 105
    assert r["align_scale"] == lower_median(gt) / lower_median(pred)
    per_frame = [depth_metrics(pred[k], gt[k], align="median") for k in range(3)]
    assert weighted_mean(per_frame)["abs_rel"] < 0.5 * r["abs_rel"]  # per-frame alignment inflates scores
    # without alignment, the stack's abs_rel is the valid-pixel-weighted mean of the per-frame ones
    gt[0, :2] = 0.0                                                  # frame 0 loses 14 pixels
    frames = [depth_metrics(pred[k], gt[k]) for k in range(3)]
    stack = depth_metrics(pred, gt)
    agg = weighted_mean(frames)
    assert agg["valid_pixels"] == stack["valid_pixels"] == 91
    for key in ("abs_rel", "sq_rel"):
        assert agg[key] == pytest.approx(stack[key], rel=1e-12)
        assert agg[key] != pytest.approx(np.mean([f[key] for f in frames]), rel=1e-6)


def test_scale_alignment_reweighted_l1():
    p = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    g = np.array([2.1, 3.9, 6.2, 8.0, 30.0])                          # one outlier
    s = g.mean() / p.mean()
    for _ in range(10):
        w = 1.0 / (np.abs(s * p - g) + 1e-8)
        s = np.sum(w * p * g) / np.sum(w * p * p)
    r = depth_metrics(p, g, align="scale", return_alignment=True)
    assert r["align_scale"] == pytest.approx(s, rel=1e-14)
    assert r["abs_rel"] == pytest.approx(np.mean(np.abs(s * p - g) / g), rel=1e-12)
    # the L1 optimum is the p-weighted median of g / p = 6.2 / 3 (the outlier 30 / 5 is ignored)
    assert abs(s - 6.2 / 3) < 1e-3
    # the clamp s >= 1e-3: L1 scale 1e-6 is raised to 1e-3, so pred becomes [1, 2]
    r = depth_metrics(np.array([1000.0, 2000.0]), np.array([0.001, 0.002]), align="scale", return_alignment=True)
    assert r["align_scale"] == 1e-3
    assert r["abs_rel"] == pytest.approx(999.0, rel=1e-9)


def test_lstsq_alignment():
    p = np.array([1.0, 2.0, 3.0, 4.0])
    r = depth_metrics(p, 2 * p + 1, align="lstsq", return_alignment=True)
    assert r["align_scale"] == pytest.approx(2.0) and r["align_shift"] == pytest.approx(1.0)
    assert r["abs_rel"] == pytest.approx(0.0, abs=1e-12) and r["delta_1.25"] == 1.0
    g = np.array([3.0, 4.0, 8.0, 9.0])
    s = np.sum((p - p.mean()) * (g - g.mean())) / np.sum((p - p.mean()) ** 2)   # = 2.2
    t = g.mean() - s * p.mean()                                                 # = 0.5
    r = depth_metrics(p, g, align="lstsq", return_alignment=True)
    assert r["align_scale"] == pytest.approx(2.2, rel=1e-12) and r["align_shift"] == pytest.approx(0.5, rel=1e-12)
    assert s == pytest.approx(2.2) and t == pytest.approx(0.5)
    a = 2.2 * p + 0.5                                                          # [2.7, 4.9, 7.1, 9.3]
    assert r["rmse"] == pytest.approx(math.sqrt(np.mean((a - g) ** 2)), rel=1e-12)


def test_delta_thresholds_strict_and_float32():
    g = np.array([1.0, 1.0, 5.0])
    p = np.array([1.25, 1.0, 4.0])                                    # ratios 1.25, 1, 5/4 = 1.25 exactly
    r = depth_metrics(p, g)
    assert r["delta_1.25"] == float(np.float32(1) / np.float32(3))   # strict: the two ratios at 1.25 fail
    assert r["delta_1.25"] != 1 / 3                                   # float32 mean, as upstream
    assert r["delta_1.25^2"] == 1.0
    r = depth_metrics(np.array([1.5625, 1.953125]), np.array([1.0, 1.0]))   # exactly 1.25^2 and 1.25^3
    assert (r["delta_1.25"], r["delta_1.25^2"], r["delta_1.25^3"]) == (0.0, 0.0, 0.5)


def test_log_clamp_and_clips():
    r = depth_metrics(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    assert r["abs_rel"] == 0.5                                        # unclamped p
    assert r["log_rmse"] == pytest.approx(math.sqrt(math.log(1e-5) ** 2 / 2))   # p clamped to 1e-5
    r = depth_metrics(np.array([10.0, 1.0]), np.array([2.0, 1.0]), post_clip_max=3.0)
    assert r["abs_rel"] == pytest.approx(0.25)
    r = depth_metrics(np.array([10.0, 1.0, 2.0]), np.array([2.0, 1.0, 2.0]), pre_clip_max=3.0, align="median",
                      return_alignment=True)
    assert r["align_scale"] == 1.0                                   # medians of [3, 1, 2] and [2, 1, 2]: 2 / 2
    assert r["abs_rel"] == pytest.approx((1 / 2) / 3)


def test_custom_mask_after_alignment():
    p = np.array([1.0, 2.0, 3.0, 10.0])
    g = np.array([3.0, 4.0, 9.0, 20.0])
    m = np.array([False, True, True, False])
    r = depth_metrics(p, g, align="median", custom_mask=m, return_alignment=True)
    assert r["align_scale"] == 2.0                                   # fitted on all four pixels
    assert r["valid_pixels"] == 2
    assert r["abs_rel"] == pytest.approx((0 + 3 / 9) / 2)


@pytest.mark.parametrize("align", ["none", "median", "scale", "lstsq", "lad2"])
def test_empty_case_all_zero(align):
    gt = np.array([[0.0, -2.0], [90.0, 80.0]])
    r = depth_metrics(np.ones_like(gt), gt, align=align)
    assert r == {k: 0 for k in DEPTH_KEYS}
    assert not any(isinstance(v, float) and math.isnan(v) for v in r.values())
    r = depth_metrics(np.ones(3), np.ones(3), align=align, custom_mask=np.zeros(3, bool))
    assert r == {k: 0 for k in DEPTH_KEYS}


def test_weighted_mean_by_valid_pixels():
    a = {"abs_rel": 0.1, "rmse": 1.0, "valid_pixels": 1}
    b = {"abs_rel": 0.5, "rmse": 3.0, "valid_pixels": 3}
    e = {"abs_rel": 0.0, "rmse": 0.0, "valid_pixels": 0}                # empty image: weight 0
    w = weighted_mean([a, b, e])
    assert w["abs_rel"] == pytest.approx((0.1 + 3 * 0.5) / 4)
    assert w["rmse"] == pytest.approx((1.0 + 9.0) / 4)
    assert w["valid_pixels"] == 4
    assert weighted_mean([e, e])["abs_rel"] == 0.0


def _adam_reference(p, g, s, t, lr=1e-4, max_iters=1000, tol=1e-6):
    """Numpy transcription of torch Adam (betas 0.9/0.999, eps 1e-8) on sum |s p + t - g|, sign(0) = 0, with Pi3's
    stopping rule. Returns (s, t, iterations)."""
    x = np.array([s, t], dtype=np.float64)
    m, v = np.zeros(2), np.zeros(2)
    prev = None
    for k in range(1, max_iters + 1):
        r = x[0] * p + x[1] - g
        loss = np.sum(np.abs(r))
        sg = np.sign(r)
        grad = np.array([np.sum(sg * p), np.sum(sg)])
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        x = x - (lr / (1 - 0.9 ** k)) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** k) + 1e-8)
        if prev is not None and abs(prev - loss) < tol:
            break
        prev = loss
    return x[0], x[1], k


def test_lad2_reproduces_adam_and_stays_near_median_start():
    rng = np.random.default_rng(12)
    g = rng.uniform(1.0, 20.0, 400)
    p = 0.5 * g + 3.0 + rng.normal(size=400) * 0.2                    # L1 optimum: s ~ 2, t ~ -6
    s0 = lower_median(g) / lower_median(p)
    r = depth_metrics(p, g, align="lad2", return_alignment=True)
    s_ref, t_ref, iters = _adam_reference(p, g, s0, 0.0)
    assert iters == 1000                                              # it does not converge (pitfall 5)
    assert r["align_scale"] == pytest.approx(s_ref, abs=1e-10)
    assert r["align_shift"] == pytest.approx(t_ref, abs=1e-10)
    # close to the median-scale start, with a small shift; far from the L1 optimum (s ~ 2, t ~ -6). One Adam step
    # moves a parameter by at most lr (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr, so 1000 steps by at most ~0.32.
    bound = 1000 * 1e-4 * 0.1 / math.sqrt(0.001)
    assert abs(r["align_scale"] - s0) <= bound
    assert 0 < abs(r["align_shift"]) <= bound
    assert abs(r["align_scale"] - s0) < abs(r["align_scale"] - 2.0)
    assert abs(r["align_shift"] - (-6.0)) > 5.0
    aligned = r["align_scale"] * p + r["align_shift"]
    assert r["abs_rel"] == pytest.approx(np.mean(np.abs(aligned - g) / g), rel=1e-12)
    # lr = 0: the iterations do not move, lad2 is the median scaling exactly
    r0 = depth_metrics(p, g, align="lad2", lr=0.0, return_alignment=True)
    rm = depth_metrics(p, g, align="median")
    assert r0["align_scale"] == s0 and r0["align_shift"] == 0.0
    assert all(r0[k] == rm[k] for k in DEPTH_KEYS)


def test_lad2_subgradient_zero_and_early_stop():
    p = np.array([1.0, 2.0, 4.0])
    g = 2.0 * p                                                       # residuals exactly 0 at s = 2, t = 0
    r = depth_metrics(p, g, align="lad2", return_alignment=True)
    assert r["align_scale"] == 2.0 and r["align_shift"] == 0.0       # gradient 0 -> no step; stops at iter 2
    # a tiny problem whose loss stops changing by 1e-6 early: same iteration count as the reference
    p = np.array([1.0, 1.0, 1.0])
    g = np.array([1.0, 1.0, 1.0 + 1e-9])
    s_ref, t_ref, iters = _adam_reference(p, g, 1.0, 0.0)
    assert iters < 1000
    r = depth_metrics(p, g, align="lad2", return_alignment=True)
    assert r["align_scale"] == pytest.approx(s_ref, abs=1e-12) and r["align_shift"] == pytest.approx(t_ref, abs=1e-12)


def test_torch_inputs_accepted():
    g = torch.tensor([[3.0, 4.0], [9.0, 20.0]])
    p = torch.tensor([[1.0, 2.0], [3.0, 10.0]])
    r = depth_metrics(p, g, align="median")
    assert r["abs_rel"] == pytest.approx(1 / 6, rel=1e-7)


# ------------------------------------------------------------------ masks

def test_mask_iou_f1():
    prob = np.array([[0.9, 0.5], [0.2, 0.7]])                         # 0.5 is not > 0.5
    gt = np.array([[True, True], [False, False]])
    r = mask_iou_f1(prob, gt)
    assert r == {"iou": pytest.approx(1 / 3), "f1": pytest.approx(0.5), "pixels": 4}
    assert mask_iou_f1(prob, gt, threshold=0.4)["iou"] == pytest.approx(2 / 3)
    assert mask_iou_f1(np.zeros((2, 3)), np.zeros((2, 3), bool)) == {"iou": 1.0, "f1": 1.0, "pixels": 6}
    assert mask_iou_f1(np.zeros(2), np.array([True, False])) == {"iou": 0.0, "f1": 0.0, "pixels": 2}
    r = mask_iou_f1(torch.tensor([0.6, 0.6]), torch.tensor([True, True]))
    assert r["iou"] == 1.0 and r["f1"] == 1.0
