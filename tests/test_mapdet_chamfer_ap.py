"""models.mapdet.chamfer_ap: MapTR Chamfer AP (metrics_conventions_2.md §3) against hand-computed values and an
independent slow reference (shapely per pair, explicit loops and sorting)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from shapely.geometry import LineString

from models.mapdet import chamfer_ap as C
from models.mapdet.chamfer_ap import (average_precision, buffer_gate, chamfer_ap, chamfer_matrix, match_sample,
                                      resample_polyline, resample_polylines)

CLASSES = ("divider", "ped_crossing", "boundary")


def seg(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y1]], np.float64)


def horiz(y, x0=0.0, x1=99.0):
    """Horizontal segment; 100-point re-sampling puts points at x0 + k (x1 - x0) / 99."""
    return seg(x0, y, x1, y)


def one(pts, labels, scores=None):
    d = {"pts": list(pts), "labels": np.asarray(labels, np.int64)}
    if scores is not None:
        d["scores"] = np.asarray(scores, np.float64)
    return d


# ---------------------------------------------------------------------------------------------- re-sampling
def test_resample_by_arc_length():
    out = resample_polyline([[0, 0], [0, 0], [1, 0], [1, 0], [1, 1], [1, 1]], num=5)   # duplicate vertices
    np.testing.assert_allclose(out, [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1]], atol=1e-15)
    ring = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]], float)      # closed: back to the start
    np.testing.assert_allclose(resample_polyline(ring, num=9), [[0, 0], [1, 0], [2, 0], [2, 1], [2, 2], [1, 2],
                                                                [0, 2], [0, 1], [0, 0]], atol=1e-15)
    assert resample_polyline(seg(3, 4, 3, 4)).tolist() == [[3.0, 4.0]] * 100     # zero length


def test_resample_batch_matches_shapely_interpolate():
    rng = np.random.default_rng(3)
    for n in (2, 3, 20, 40):
        lines = rng.normal(0, 5, (7, n, 2))
        lines[0, 1] = lines[0, 0]                                           # a zero-length segment
        batch = resample_polylines(lines)
        for k, p in enumerate(lines):
            np.testing.assert_allclose(batch[k], resample_polyline(p), atol=0)
            ls = LineString(p)
            ref = [ls.interpolate(d).coords[0] for d in np.linspace(0, ls.length, 100)]
            np.testing.assert_allclose(batch[k], ref, atol=1e-12)
    with pytest.raises(ValueError):
        resample_polylines(np.zeros((3, 1, 2)))


# ---------------------------------------------------------------------------------------------- Chamfer, gate
def test_chamfer_hand_computed():
    P = resample_polylines(np.stack([horiz(0.3), horiz(0.3)[::-1], horiz(0.0)]))
    G = resample_polylines(np.stack([horiz(0.0), horiz(0.0, 0.0, 198.0)]))
    cd = chamfer_matrix(P, G)
    assert cd[0, 0] == pytest.approx(0.3, abs=1e-12)                       # not squared (0.09)
    assert cd[1, 0] == pytest.approx(cd[0, 0], abs=1e-12)                  # reversed prediction: same
    # [0, 99] vs [0, 198] (points at k and 2k): pred->gt mean 0.5, gt->pred mean 2500 / 100 = 25 -> average 12.75
    assert cd[2, 1] == pytest.approx(12.75, abs=1e-9)
    assert cd.shape == (3, 2) and chamfer_matrix(P, G[:0]).shape == (3, 0)


def test_buffer_gate_flat_caps_and_touching():
    G = resample_polylines(np.stack([seg(0, 0, 0.5, 0)]))
    P = resample_polylines(np.stack([seg(0.6, 0, 1.1, 0),                  # collinear, 0.1 m gap: no
                                     seg(0.5, 0, 1.0, 0),                  # collinear, ends touch: yes
                                     seg(0, 4, 0.5, 4),                    # parallel, buffers touch at y = 2
                                     seg(0, 4.001, 0.5, 4.001),            # 1 mm further: no
                                     seg(0.25, 0, 0.25, 0)]))              # zero length: never
    assert chamfer_matrix(P[:1], G)[0, 0] == pytest.approx(0.35, abs=1e-9)  # small CD, still gated out
    assert buffer_gate(P, G)[:, 0].tolist() == [False, True, True, False, False]
    assert not buffer_gate(G, resample_polylines(seg(7, 7, 7, 7)[None]))[0, 0]
    # end to end: the gapped piece is an FP at every threshold even though CD (0.35) < 0.5
    r = chamfer_ap([one([seg(0.6, 0, 1.1, 0)], [0], [0.9])], [one([seg(0, 0, 0.5, 0)], [0])])
    assert [r[f"divider_AP_thr_{t}"] for t in ("0.5", "1.0", "1.5")] == [0.0, 0.0, 0.0]
    r = chamfer_ap([one([seg(0.1, 0, 0.6, 0)], [0], [0.9])], [one([seg(0, 0, 0.5, 0)], [0])])
    assert r["divider_AP"] == 1.0


# ---------------------------------------------------------------------------------------------- matching
def test_threshold_is_not_strict():
    G = resample_polylines(horiz(0.0)[None])
    for off, expect in ((0.5, [1, 1, 1]), (1.0, [0, 1, 1]), (1.5, [0, 0, 1]),
                        (np.nextafter(1.0, 2.0), [0, 0, 1])):
        cd = chamfer_matrix(resample_polylines(horiz(off)[None]), G)
        if off in (0.5, 1.0, 1.5):
            assert cd[0, 0] == off                                          # exact float equality
        got = [match_sample([0.9], cd, np.ones((1, 1), bool), t)[0] for t in (0.5, 1.0, 1.5)]
        assert got == [bool(e) for e in expect]
        r = chamfer_ap([one([horiz(off)], [2], [0.9])], [one([horiz(0.0)], [2])])
        assert [r[f"boundary_AP_thr_{t}"] for t in ("0.5", "1.0", "1.5")] == [float(e) for e in expect]


def test_argmax_only_no_fallback_and_first_index_on_ties():
    gate = np.ones((2, 2), bool)
    # pred 1's best GT (0) is taken by pred 0 -> FP although GT 1 (0.3) is within 0.5
    assert match_sample([0.9, 0.8], np.array([[0.0, 0.4], [0.1, 0.3]]), gate, 0.5).tolist() == [True, False]
    # tie in pred 0's row -> GT 0 (first index); then pred 1's best (GT 0) is taken
    assert match_sample([0.9, 0.8], np.array([[0.2, 0.2], [0.1, 0.4]]), gate, 0.5).tolist() == [True, False]
    # an ungated pair is ignored (sentinel -100), whatever its cd
    assert match_sample([0.9], np.array([[0.1, 0.4]]), np.array([[False, True]]), 0.5).tolist() == [True]
    assert match_sample([0.9], np.array([[0.1, 0.6]]), np.array([[False, True]]), 0.5).tolist() == [False]
    # descending score decides who claims first, not input order or CD
    assert match_sample([0.1, 0.9], np.array([[0.0], [0.4]]), np.ones((2, 1), bool), 0.5).tolist() == [False, True]
    assert match_sample([0.9, 0.8], np.zeros((2, 0)), np.zeros((2, 0), bool), 1.0).tolist() == [False, False]
    # end to end: two GTs at y = 0 and 0.4; preds at y = 0 (0.9) and y = 0.1 (0.8) -> TP, FP -> AP 0.5 at 0.5 m
    r = chamfer_ap([one([horiz(0.0), horiz(0.1)], [0, 0], [0.9, 0.8])], [one([horiz(0.0), horiz(0.4)], [0, 0])])
    assert r["divider_AP_thr_0.5"] == pytest.approx(0.5, abs=1e-7)


def test_stable_tie_order_in_matching():
    n = 40                                                                  # beyond numpy's insertion-sort size
    cd = np.linspace(1.0, 0.0, n)[:, None]                                  # later preds are closer
    tp = match_sample(np.full(n, 0.5), cd, np.ones((n, 1), bool), 1.0)
    assert tp.tolist() == [True] + [False] * (n - 1)


# ---------------------------------------------------------------------------------------------- AP
def test_voc_area_ap_hand_computed():
    # recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7], 3) == pytest.approx(5 / 9, abs=1e-6)
    # order comes from the scores, not the input order
    assert average_precision([1, 1, 0], [0.9, 0.7, 0.8], 3) == pytest.approx(5 / 9, abs=1e-6)
    # recall 0, .25, .5, .5, .75; precision 0, 1/2, 2/3, 1/2, 3/5 -> .25 (2/3 + 2/3 + 3/5)
    assert average_precision([0, 1, 1, 0, 1], [5, 4, 3, 2, 1], 4) == pytest.approx(0.25 * (4 / 3 + 0.6), abs=1e-6)
    assert average_precision([1, 1], [0.5, 0.4], 0) == 0.0
    assert average_precision([], [], 2) == 0.0
    assert average_precision([1, 1], [0.5, 0.4], 2) == 1.0


def test_stable_tie_order_in_ap():
    assert average_precision([0, 1], [0.5, 0.5], 1) == pytest.approx(0.5)
    assert average_precision([1, 0], [0.5, 0.5], 1) == 1.0
    # pooled across samples: ties keep sample order (sample 0's FP before sample 1's TP)
    gt = [one([], []), one([horiz(0.0)], [0])]
    fp_first = [one([horiz(50.0)], [0], [0.5]), one([horiz(0.0)], [0], [0.5])]
    assert chamfer_ap(fp_first, gt)["divider_AP"] == pytest.approx(0.5)
    gt2 = [one([horiz(0.0)], [0]), one([], [])]
    assert chamfer_ap(fp_first[::-1], gt2)["divider_AP"] == 1.0


def test_map_counts_every_class_and_perfect_predictions():
    ring = np.array([[0, 0], [4, 0], [4, 3], [0, 3], [0, 0]], float)
    gts = [one([horiz(0.0), ring, seg(0, 10, 20, 12)], [0, 1, 2]), one([horiz(5.0, 0, 30)], [0])]
    preds = [one([horiz(0.0)[::-1], ring, seg(0, 10, 20, 12)], [0, 1, 2], [0.9, 0.8, 0.7]),
             one([horiz(5.0, 0, 30)], [0], [0.6])]
    r = chamfer_ap(preds, gts)
    assert r["mAP"] == 1.0 and all(r[f"{c}_AP"] == 1.0 for c in CLASSES)
    assert r["divider_num_gts"] == 2.0 and r["divider_num_dets"] == 2.0
    # drop ped crossings everywhere: the class still counts, with AP 0
    r = chamfer_ap([one([horiz(0.0), seg(0, 10, 20, 12)], [0, 2], [0.9, 0.7])],
                   [one([horiz(0.0), seg(0, 10, 20, 12)], [0, 2])])
    assert r["ped_crossing_AP"] == 0.0 and r["ped_crossing_num_gts"] == 0.0
    assert r["mAP"] == pytest.approx(2 / 3)
    # detections of a class without any GT: AP 0
    r = chamfer_ap([one([horiz(0.0), ring], [0, 1], [0.9, 0.8])], [one([horiz(0.0)], [0])])
    assert r["ped_crossing_AP"] == 0.0 and r["ped_crossing_num_dets"] == 1.0 and r["divider_AP"] == 1.0
    assert set(r) == ({f"{c}_AP_thr_{t}" for c in CLASSES for t in ("0.5", "1.0", "1.5")} | {"mAP"}
                      | {f"{c}_{k}" for c in CLASSES for k in ("AP", "num_gts", "num_dets")})


def test_short_predictions_dropped_and_array_input():
    gts = [one([horiz(0.0)], [0])]
    base = chamfer_ap([one([horiz(3.0), horiz(0.0)], [0, 0], [0.9, 0.8])], gts)
    with_point = chamfer_ap([one([np.array([[1.0, 2.0]]), horiz(3.0), horiz(0.0)], [0, 0, 0],
                                 [0.99, 0.9, 0.8])], gts)
    assert with_point == base and base["divider_num_dets"] == 2.0
    assert base["divider_AP"] == pytest.approx(0.5)
    arr = chamfer_ap([{"pts": np.stack([horiz(3.0), horiz(0.0)]), "labels": np.array([0, 0]),
                       "scores": np.array([0.9, 0.8])}],
                     [{"pts": np.stack([horiz(0.0)]), "labels": np.array([0])}])
    assert arr == base


def test_input_validation():
    good_p = one([horiz(0.0)], [0], [0.9])
    with pytest.raises(ValueError, match=r"ground_truth\[1\]: element 1 has 1 vertices"):
        chamfer_ap([good_p, good_p], [one([horiz(0.0)], [0]), one([horiz(0.0), np.array([[0.0, 1.0]])], [0, 0])])
    with pytest.raises(ValueError, match=r"ground_truth\[0\]: element 0 has non-finite"):
        chamfer_ap([good_p], [one([seg(0, 0, np.nan, 1)], [0])])
    with pytest.raises(ValueError, match="prediction samples"):
        chamfer_ap([good_p], [])
    with pytest.raises(ValueError, match="labels"):
        chamfer_ap([good_p], [one([horiz(0.0)], [0, 1])])
    with pytest.raises(ValueError, match="scores"):
        chamfer_ap([one([horiz(0.0)], [0], [0.9, 0.1])], [one([horiz(0.0)], [0])])


def test_distances_and_gates_computed_once_per_sample_class(monkeypatch):
    calls = []
    real = C._gate_pairs
    monkeypatch.setattr(C, "_gate_pairs", lambda p, g: calls.append(1) or real(p, g))
    preds = [one([horiz(0.0), horiz(1.0)], [0, 2], [0.9, 0.8]), one([horiz(0.0)], [0], [0.9])]
    gts = [one([horiz(0.0), horiz(1.0)], [0, 2]), one([], [])]
    chamfer_ap(preds, gts)
    assert len(calls) == 2                                                  # (sample 0, divider), (0, boundary)


# ------------------------------------------------------------------------------- independent slow reference
def _ref_resample(pts, num=100):
    line = LineString(pts)
    return np.array([line.interpolate(d).coords[0] for d in np.linspace(0, line.length, num)])


def _ref_tpfp(pred_lines, scores, gt_lines, thr):
    """Upstream tpfp_det / custom_polyline_score, one pair at a time."""
    n, m = len(pred_lines), len(gt_lines)
    if m == 0:
        return [0] * n
    buf = [LineString(x).buffer(2.0, cap_style="flat", join_style="mitre") for x in pred_lines]
    gbuf = [LineString(x).buffer(2.0, cap_style="flat", join_style="mitre") for x in gt_lines]
    mat = [[-100.0] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            if buf[i].intersects(gbuf[j]):
                d = cdist(pred_lines[i], gt_lines[j], "euclidean")
                mat[i][j] = -(d.min(-1).mean() + d.min(-2).mean()) / 2
    covered = [False] * m
    tp = [0] * n
    for i in sorted(range(n), key=lambda k: -scores[k]):                   # Python's sort is stable
        best = 0
        for j in range(1, m):
            if mat[i][j] > mat[i][best]:
                best = j
        if mat[i][best] >= -thr and not covered[best]:
            covered[best] = True
            tp[i] = 1
    return tp


def _ref_ap(tp, scores, num_gts):
    if num_gts == 0:
        return 0.0
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    mrec, mpre, ctp, cfp = [0.0], [0.0], 0, 0
    for k in order:
        ctp += tp[k]
        cfp += 1 - tp[k]
        mrec.append(ctp / num_gts)
        mpre.append(ctp / (ctp + cfp))
    mrec.append(1.0)
    mpre.append(0.0)
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def _ref_chamfer_ap(preds, gts, thresholds=(0.5, 1.0, 1.5)):
    out, aps = {}, []
    for c, name in enumerate(CLASSES):
        pooled = {t: ([], []) for t in thresholds}
        num_gts = 0
        for pr, gt in zip(preds, gts):
            g = [_ref_resample(x) for x, lab in zip(gt["pts"], gt["labels"]) if lab == c]
            keep = [k for k, lab in enumerate(pr["labels"]) if lab == c and len(pr["pts"][k]) >= 2]
            p = [_ref_resample(pr["pts"][k]) for k in keep]
            s = [float(pr["scores"][k]) for k in keep]
            num_gts += len(g)
            for t in thresholds:
                pooled[t][0].extend(_ref_tpfp(p, s, g, t))
                pooled[t][1].extend(s)
        cls_aps = [_ref_ap(*pooled[t], num_gts) for t in thresholds]
        for t, a in zip(thresholds, cls_aps):
            out[f"{name}_AP_thr_{t}"] = a
        out[f"{name}_AP"] = sum(cls_aps) / len(cls_aps)
        aps.append(out[f"{name}_AP"])
    out["mAP"] = sum(aps) / len(aps)
    return out


def _random_set(seed, n_samples=6):
    rng = np.random.default_rng(seed)
    as_array = seed % 2 == 1                                               # [N, 20, 2] arrays vs ragged lists
    preds, gts = [], []
    for _ in range(n_samples):
        g_pts, g_lab = [], []
        for c in range(3):
            if rng.random() < 0.25:
                continue                                                    # no GT of this class here
            for _ in range(rng.integers(1, 4)):
                nv = int(rng.integers(3, 8))
                start = rng.uniform(-12, 12, 2)
                pts = np.vstack([start, start + np.cumsum(rng.normal(0, 3, (nv - 1, 2)), axis=0)])
                if c == 1:
                    pts = np.vstack([pts, pts[:1]])                         # closed ring
                g_pts.append(pts)
                g_lab.append(c)
        if rng.random() < 0.3:                                              # zero-length GT: never matched
            g_pts.append(np.repeat(rng.uniform(-12, 12, (1, 2)), 3, axis=0))
            g_lab.append(int(rng.integers(3)))
        p_pts, p_lab = [], []
        for g, lab in zip(g_pts, g_lab):
            for _ in range(rng.integers(0, 3)):
                q = _ref_resample(g, 20) + rng.normal(0, rng.choice([0.05, 0.3, 0.6, 1.0, 2.0]), (20, 2))
                p_pts.append(q[::-1] if rng.random() < 0.5 else q)
                p_lab.append(lab if rng.random() < 0.85 else int(rng.integers(3)))
        for _ in range(rng.integers(0, 4)):                                 # false positives
            start = rng.uniform(-12, 12, 2)
            p_pts.append(start + np.cumsum(rng.normal(0, 0.5, (20, 2)), axis=0))
            p_lab.append(int(rng.integers(3)))
        if not as_array and rng.random() < 0.5:                             # dropped: one point
            p_pts.append(rng.uniform(-12, 12, (1, 2)))
            p_lab.append(int(rng.integers(3)))
        scores = np.round(rng.uniform(0, 1, len(p_pts)), 1)                # coarse: many ties
        pts = np.asarray(p_pts).reshape(-1, 20, 2) if as_array else p_pts
        preds.append({"pts": pts, "labels": np.asarray(p_lab, np.int64), "scores": scores})
        gts.append({"pts": g_pts, "labels": np.asarray(g_lab, np.int64)})
    return preds, gts


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_slow_reference(seed):
    preds, gts = _random_set(seed)
    got, ref = chamfer_ap(preds, gts), _ref_chamfer_ap(preds, gts)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    # the random sets are informative: partial APs occur and thresholds differ
    vals = [got[f"{c}_AP_thr_{t}"] for c in CLASSES for t in (0.5, 1.0, 1.5)]
    assert any(0.0 < v < 1.0 for v in vals)
