"""Hand-worked checks of models.planner.metrics (metrics_conventions.md §2) and the CV / CTRV baselines."""
import numpy as np
import pytest

from models.planner import baselines as B
from models.planner import metrics as M

F = 6


def empty_occ(S=1):
    return np.zeros((S, F, 200, 200), bool)


def boxes(S, A, spec):
    """spec: list of (s, t_future (1..F), a, x, y, w, l, yaw, cls)."""
    b = np.zeros((S, F + 1, A, 7), np.float32)
    v = np.zeros((S, F + 1, A), bool)
    c = -np.ones((S, F + 1, A), np.int8)
    for s, t, a, x, y, w, l, yaw, cls in spec:
        b[s, t, a] = [x, y, 0, w, l, 1.5, yaw]
        v[s, t, a] = True
        c[s, t, a] = cls
    return b, v, c


def at(x, y, S=1):
    return np.tile(np.array([x, y], np.float64), (S, F, 1))


def test_footprint_is_fixed_32_cells_front_row_and_plus_side_dropped():
    # waypoint at the origin: rows 97..104 x cols 98..101 exactly
    hits = np.zeros((200, 200), bool)
    for r in range(94, 108):
        for c in range(95, 105):
            occ = empty_occ()
            occ[0, :, r, c] = True
            hits[r, c] = M.collisions(at(0, 0), occ, "uniad")[0, 0]
    assert hits.sum() == 32 and hits[97:105, 98:102].all()
    # relative to the rasteriser (round((v+50)/0.5)): a point box at y=+2.0 hits, y=+2.5 (front row) does not;
    # x=-1.0 hits, x=+1.0 (+column side, inside the continuous 1.85 m box) does not
    for (x, y), expect in {(0, 2.0): True, (0, 2.5): False, (0, -1.5): True, (0, -2.0): False,
                           (-1.0, 0): True, (0.5, 0): True, (1.0, 0): False, (-1.5, 0): False}.items():
        b, v, c = boxes(1, 1, [(0, t, 0, x, y, 0.1, 0.1, 0.0, 0) for t in range(1, F + 1)])
        occ = M.occupancy_grid(b, v, c, np.ones((1, F), bool), "uniad")
        assert occ[0, 0].sum() == 1
        assert M.collisions(at(0, 0), occ, "uniad")[0, 0] == expect, (x, y)


def test_int32_truncation_not_rounding_or_floor():
    occ = empty_occ()
    occ[0, :, 0, 100] = True
    occ[0, :, 7, 100] = True
    # y = -48.7: rows -0.4 .. 6.6 -> trunc 0..6 (row 7 not reached, row 0 reached)
    assert M.collisions(at(0, -48.7), occ, "uniad")[0, 0]
    occ2 = empty_occ()
    occ2[0, :, 7, 100] = True
    assert not M.collisions(at(0, -48.7), occ2, "uniad")[0, 0]
    # y = +0.3: rows 97.6 .. 104.6 -> 97..104, not 98..105 as rounding would give
    occ3 = empty_occ()
    occ3[0, :, 97, 100] = True
    assert M.collisions(at(0, 0.3), occ3, "uniad")[0, 0]
    occ3[0, :, 97, 100] = False
    occ3[0, :, 105, 100] = True
    assert not M.collisions(at(0, 0.3), occ3, "uniad")[0, 0]


def test_boxes_outside_grid_are_clipped_onto_the_border():
    occ = empty_occ()
    occ[0, :, 0, 199] = True
    assert M.collisions(at(80, -80), occ, "uniad")[0, 0]      # smeared onto row 0 / col 199
    assert M.collisions(at(-80, -80), occ, "stp3")[0, 0]      # stp3 columns use -x
    assert not M.collisions(at(-80, -80), occ, "uniad")[0, 0]


def test_column_sign_and_mirror_non_equivalence():
    occ = empty_occ()
    occ[0, :, 100, 108:112] = True  # uniad cells of a waypoint at x = +5 m
    assert M.collisions(at(5, 1.5), occ, "uniad")[0, 0]
    assert not M.collisions(at(5, 1.5), occ, "stp3")[0, 0]
    assert M.collisions(at(-5, 1.5), occ, "stp3")[0, 0]
    # point vehicle at x = +1.0: missed by uniad (dropped +col side) but hit by stp3 (mirror), and vice versa
    for x, uni, st in ((1.0, False, True), (-1.0, True, False)):
        b, v, c = boxes(1, 1, [(0, t, 0, x, 0.0, 0.1, 0.1, 0.0, 0) for t in range(1, F + 1)])
        fv = np.ones((1, F), bool)
        ou, os_ = (M.occupancy_grid(b, v, c, fv, k) for k in ("uniad", "stp3"))
        assert np.argwhere(ou[0, 0]).tolist() == [[100, 102 if x > 0 else 98]]
        assert np.argwhere(os_[0, 0]).tolist() == [[100, 98 if x > 0 else 102]]
        assert M.collisions(at(0, 0), ou, "uniad")[0, 0] == uni
        assert M.collisions(at(0, 0), os_, "stp3")[0, 0] == st


def test_occupancy_classes_and_invalid_frames():
    spec = [(0, 1, 0, 10, 10, 2, 4, 0.3, 0),    # vehicle
            (0, 1, 1, -10, 10, 0.7, 0.7, 0.0, 1),  # pedestrian
            (0, 1, 2, 0, -10, 1, 1, 0.0, 2)]    # other (barrier / cone)
    b, v, c = boxes(1, 3, spec)
    fv = np.array([[True] * 5 + [False]])
    ou = M.occupancy_grid(b, v, c, fv, "uniad")
    os_ = M.occupancy_grid(b, v, c, fv, "stp3")
    assert ou[0, 0, 120, 120] and not ou[0, 0, 120, 80]          # vehicle only
    assert os_[0, 0, 120, 80] and os_[0, 0, 120, 120]           # vehicle (mirrored) + pedestrian
    assert not ou[0, 0, 80, 100] and not os_[0, 0, 80, 100]     # "other" in neither
    assert ou[0, 0].sum() > 0 and ou[0, 1:5].sum() == 0
    assert ou[0, 5].all() and not os_[0, 5].any()               # UniAD fills missing frames with 255
    # box footprint: 2 m x 4 m at yaw 0.3 has ~ (4/0.5)*(2/0.5) = 32 cells (+ edges)
    assert 30 <= ou[0, 0].sum() <= 60


def test_fill_hand_worked_rectangles_and_half_to_even_rounding():
    fv = np.ones((1, F), bool)
    # 2 m x 4 m at (10, 10), yaw 0 (length along x): x 8..12 -> cols 116..124 (uniad) / 76..84 (stp3),
    # y 9..11 -> rows 118..122; cv2.fillPoly includes the boundary: 5 x 9 = 45 cells
    b, v, c = boxes(1, 1, [(0, 1, 0, 10.0, 10.0, 2.0, 4.0, 0.0, 0)])
    for conv, cols in (("uniad", (116, 124)), ("stp3", (76, 84))):
        occ = M.occupancy_grid(b, v, c, fv, conv)[0, 0]
        expect = np.zeros((200, 200), bool)
        expect[118:123, cols[0]:cols[1] + 1] = True
        assert (occ == expect).all(), conv
    # corners at 0.25 and 0.75 m: (v + 50) / 0.5 = 100.5 and 101.5 -> numpy's half-to-even gives 100 and 102
    # (floor would give 100..101, round-half-up 101..102)
    b, v, c = boxes(1, 1, [(0, 1, 0, 0.5, 0.5, 0.5, 0.5, 0.0, 0)])
    occ = M.occupancy_grid(b, v, c, fv, "uniad")[0, 0]
    assert np.argwhere(occ).min(0).tolist() == [100, 100] and np.argwhere(occ).max(0).tolist() == [102, 102]
    assert occ.sum() == 9
    # across the border: x 47..51 -> cols 194..202, clipped to 194..199; rows 98..102
    b, v, c = boxes(1, 1, [(0, 1, 0, 49.0, 0.0, 2.0, 4.0, 0.0, 0)])
    occ = M.occupancy_grid(b, v, c, fv, "uniad")[0, 0]
    expect = np.zeros((200, 200), bool)
    expect[98:103, 194:200] = True
    assert (occ == expect).all()


def test_overlapping_boxes_give_their_union():
    """One fillPoly call per box (UniAD): a box inside another leaves no hole (a single multi-polygon call would)."""
    fv = np.ones((1, F), bool)
    b, v, c = boxes(1, 2, [(0, 1, 0, 0.0, 0.0, 4.0, 8.0, 0.0, 0), (0, 1, 1, 0.0, 0.0, 2.0, 2.0, 0.0, 0)])
    occ = M.occupancy_grid(b, v, c, fv, "uniad")[0, 0]
    expect = np.zeros((200, 200), bool)
    expect[96:105, 92:109] = True  # y -2..2 -> rows 96..104, x -4..4 -> cols 92..108
    assert (occ == expect).all()


@pytest.mark.parametrize("centre_range, max_length", [(40, 15), (62, 15), (55, 120)])
def test_occupancy_matches_uniad_recipe(centre_range, max_length):
    """The whole rasteriser against UniAD's recipe written out independently (occflow_label.py): per valid box of
    the convention's classes, corners from (x, y, w, l, yaw), ``np.round((v + 50) / 0.5)`` with the column sign,
    int32, one ``cv2.fillPoly`` per box. Boxes inside the grid, across its border, larger than the grid, and
    overlapping in the same frame; axis-aligned ones give horizontal and vertical edges."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(centre_range)
    S, A = 4, 40
    b = np.zeros((S, F + 1, A, 7), np.float32)
    b[..., :2] = rng.uniform(-centre_range, centre_range, (S, F + 1, A, 2))
    b[..., 3] = rng.uniform(0.2, max_length / 4, (S, F + 1, A))
    b[..., 4] = rng.uniform(0.2, max_length, (S, F + 1, A))
    b[..., 6] = rng.uniform(-4, 4, (S, F + 1, A))
    b[:, :, :5, 6] = 0.0
    v = rng.random((S, F + 1, A)) < 0.9
    c = rng.integers(0, 3, (S, F + 1, A)).astype(np.int8)
    fv = np.ones((S, F), bool)
    fv[0, 4:] = False
    for conv, classes, sign in (("uniad", (0,), 1.0), ("stp3", (0, 1), -1.0)):
        ref = np.zeros((S, F, 200, 200), np.uint8)
        for s in range(S):
            for t in range(F):
                if not fv[s, t]:
                    ref[s, t] = 1 if conv == "uniad" else 0
                    continue
                for a in range(A):
                    if not v[s, t + 1, a] or c[s, t + 1, a] not in classes:
                        continue
                    x, y, _, w, l, _, yaw = b[s, t + 1, a].astype(np.float64)
                    d = np.array([[l / 2, w / 2], [l / 2, -w / 2], [-l / 2, -w / 2], [-l / 2, w / 2]])
                    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
                    xy = d @ rot.T + [x, y]
                    poly = np.stack([np.round((sign * xy[:, 0] + 50) / 0.5), np.round((xy[:, 1] + 50) / 0.5)], -1)
                    cv2.fillPoly(ref[s, t], [poly.astype(np.int32)], 1)
        occ = M.occupancy_grid(b, v, c, fv, conv)
        assert occ.dtype == bool and occ.shape == (S, F, 200, 200)
        assert (occ == ref.astype(bool)).all(), (conv, np.argwhere(occ != ref.astype(bool))[:5].tolist())


def test_perfect_prediction_gives_zero_even_on_gt_collisions():
    rng = np.random.default_rng(1)
    S, A = 8, 6
    spec = [(s, t, a, *rng.uniform(-6, 6, 2), 2.0, 4.5, rng.uniform(-3, 3), int(rng.integers(0, 3)))
            for s in range(S) for t in range(1, F + 1) for a in range(A)]
    b, v, c = boxes(S, A, spec)
    fv = np.ones((S, F), bool)
    fv[0, 4:] = False
    gt = rng.uniform(-3, 3, (S, F, 2)).astype(np.float32)
    assert M.collisions(gt, M.occupancy_grid(b, v, c, fv, "uniad"), "uniad").any()  # GT itself collides
    out = M.all_planning_metrics(gt.copy(), gt, fv, b, v, c)
    assert set(out) == {f"{k}/{m}" for k in M.CONVENTIONS for m in M.METRIC_KEYS}
    assert all(val == 0.0 for val in out.values())


def test_gt_collision_excluded_but_denominator_kept():
    occ = empty_occ(2)
    occ[:, :, 100, 100] = True                 # obstacle at the origin, all steps
    gt = np.stack([at(0, 0)[0], at(20, 20)[0]])  # sample 0's GT collides, sample 1's does not
    pred = np.stack([at(0, 0)[0], at(20, 20)[0]])
    pred[1, 1] = [0, 0]                         # sample 1 collides at step 2 only
    l2, col, n = M.per_step(pred, gt, np.ones((2, F), bool), occ, "uniad")
    assert n == 2
    np.testing.assert_allclose(col, [0, 0.5, 0, 0, 0, 0])   # 1 / 2, not 1 / 1
    rep = M.report(l2, col, "uniad")
    assert rep["col_1s"] == 50.0 and rep["col_2s"] == 0.0 and rep["col_avg"] == pytest.approx(50 / 3)
    rep = M.report(l2, col, "stp3")
    assert rep["col_1s"] == 25.0 and rep["col_2s"] == 12.5 and rep["col_3s"] == pytest.approx(50 / 6)


def test_per_step_vs_cumulative_mean_and_masking():
    S = 2
    gt = np.zeros((S, F, 2))
    gt[..., 1] = np.arange(1, F + 1) * 2.0
    pred = gt.copy()
    pred[0, :, 0] += np.arange(1, F + 1)  # sample 0: error t at step t; sample 1: perfect
    b, v, c = boxes(S, 1, [])
    fv = np.ones((S, F), bool)
    uni = M.planning_metrics(pred, gt, fv, b, v, c, "uniad")
    st = M.planning_metrics(pred, gt, fv, b, v, c, "stp3")
    assert [uni[k] for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg")] == pytest.approx([1.0, 2.0, 3.0, 2.0])
    assert [st[k] for k in ("l2_1s", "l2_2s", "l2_3s", "l2_avg")] == pytest.approx([0.75, 1.25, 1.75, 1.25])
    # UniAD: an invalid step adds 0 but stays in the denominator; ST-P3 drops the sample
    fv[0, 5] = False
    uni = M.planning_metrics(pred, gt, fv, b, v, c, "uniad")
    assert uni["l2_3s"] == 0.0 and uni["l2_2s"] == pytest.approx(2.0)
    st = M.planning_metrics(pred, gt, fv, b, v, c, "stp3")
    assert st["l2_avg"] == 0.0
    # ST-P3 also needs the last 3 history frames
    hv = np.ones((S, 4), bool)
    hv[1, -3] = False
    fv[:] = True
    st = M.planning_metrics(pred, gt, fv, b, v, c, "stp3", history_valid=hv)
    assert st["l2_1s"] == pytest.approx(1.5)  # only sample 0: mean(1, 2)


def test_inputs_not_mutated_and_torch_accepted():
    torch = pytest.importorskip("torch")
    pred = torch.ones(1, F, 2)
    gt = torch.zeros(1, F, 2)
    b, v, c = boxes(1, 1, [(0, 1, 0, 1.0, 1.0, 2, 4, 0, 0)])
    M.all_planning_metrics(pred, gt, torch.ones(1, F, dtype=torch.bool), torch.from_numpy(b),
                           torch.from_numpy(v), torch.from_numpy(c))
    assert (pred == 1).all() and (gt == 0).all()


def _history(x, y, yaw, H=4):
    h = np.stack([x, y, yaw], -1)[None].astype(np.float32)
    return h, np.ones((1, H), bool)


def test_constant_velocity_straight_line():
    v = np.array([1.0, 8.0])  # m/s, slight drift to the right
    t = 0.5 * np.arange(-3, 1)
    h, hv = _history(v[0] * t, v[1] * t, np.zeros(4))
    out = B.constant_velocity(h, hv, np.zeros((1, 5)))
    np.testing.assert_allclose(out[0], v[None] * 0.5 * np.arange(1, 7)[:, None], atol=1e-5)
    # fallback to ego_status (vx, vy) when history is invalid
    hv[0, -2] = False
    st = np.array([[5.0, 0, 0, 0.0, 5.0]])
    np.testing.assert_allclose(B.constant_velocity(h, hv, st)[0, :, 1], 2.5 * np.arange(1, 7), atol=1e-5)


@pytest.mark.parametrize("w", [0.3, -0.2, 0.0])
def test_ctrv_reproduces_constant_turn_arc(w):
    v = 7.0
    tt = 0.5 * np.arange(-3, 7)

    def pose(t):  # arc through the origin, heading +y at t = 0, yaw of the LIDAR x axis relative to now
        if w == 0:
            return np.zeros_like(t), v * t, np.zeros_like(t)
        return v / w * (np.cos(w * t) - 1), v / w * np.sin(w * t), w * t

    x, y, yaw = pose(tt)
    h, hv = _history(x[:4], y[:4], yaw[:4])
    out = B.constant_velocity_yaw_rate(h, hv, np.zeros((1, 5)))
    np.testing.assert_allclose(out[0], np.stack([x[4:], y[4:]], -1), atol=1e-4)
    if w:
        assert np.sign(out[0, -1, 0]) == -np.sign(w)  # left turn (w > 0) goes to -x
        cv = B.constant_velocity(h, hv, np.zeros((1, 5)))
        assert np.abs(cv[0] - np.stack([x[4:], y[4:]], -1)).max() > 0.5
