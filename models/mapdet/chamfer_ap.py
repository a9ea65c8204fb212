"""MapTR Chamfer AP for vectorised maps, written from the convention note
(``/work/shared/design/metrics_conventions_2.md`` §3; hustvl/MapTR ``map_utils/{mean_ap,tpfp,tpfp_chamfer}.py``).

* Predictions and GT are re-sampled to 100 points by arc length (``linspace(0, L, 100)``).
* A (prediction, GT) pair is scored ``-CD`` only when their 2 m flat-cap / mitre-join buffers intersect
  (touching counts); other pairs get the sentinel ``-100``. Zero-length lines never match.
* ``CD`` = average of the two directed mean nearest-neighbour Euclidean distances.
* Per sample and class: greedy matching in stable descending-score order; each prediction takes only its argmax
  GT (first index on ties) and is a TP iff ``CD <= thr`` (not strict) and that GT is still free.
* Per class and threshold: detections pooled over all samples, stable sort on ``-score``, VOC 'area' AP in float32.
* ``mAP`` = mean over all classes (a class without GT counts as 0).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import shapely

CLASS_NAMES = ("divider", "ped_crossing", "boundary")
THRESHOLDS = (0.5, 1.0, 1.5)
NUM_SAMPLE_PTS = 100
BUFFER_WIDTH = 2.0
SENTINEL = -100.0
_EPS32 = np.finfo(np.float32).eps
_CHUNK_ELEMS = 2_000_000        # float64 elements per vectorised block (~16 MB)


# ---------------------------------------------------------------------------------------------- re-sampling
def resample_polylines(points: np.ndarray, num: int = NUM_SAMPLE_PTS) -> np.ndarray:
    """``[K, N, 2]`` polylines (N >= 2) -> ``[K, num, 2]`` points at arc lengths ``linspace(0, L, num)``,
    linearly interpolated inside their segment. A zero-length polyline gives copies of its first vertex."""
    pts = np.asarray(points, np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[1] < 2:
        raise ValueError(f"points must be [K, N >= 2, 2], got {pts.shape}")
    K, N = pts.shape[:2]
    out = np.empty((K, num, 2))
    step = max(1, _CHUNK_ELEMS // max(1, num * N))
    for a in range(0, K, step):
        p = pts[a:a + step]
        seg = np.diff(p, axis=1)                                            # [k, N-1, 2]
        seg_len = np.sqrt(seg[..., 0] ** 2 + seg[..., 1] ** 2)              # [k, N-1]
        cum = np.concatenate([np.zeros((len(p), 1)), np.cumsum(seg_len, axis=1)], axis=1)   # [k, N]
        # linspace(0, L, num) row by row, with numpy's scalar arithmetic (k * (L / (num - 1)), last = L)
        d = np.arange(num)[None, :] * (cum[:, -1:] / max(num - 1, 1))      # [k, num]
        d[:, -1] = cum[:, -1]
        # segment index = last vertex with cum <= d (searchsorted 'right' - 1), kept on a real segment
        idx = np.clip(np.sum(cum[:, None, :] <= d[:, :, None], axis=-1) - 1, 0, N - 2)      # [k, num]
        c0 = np.take_along_axis(cum, idx, axis=1)
        sl = np.take_along_axis(seg_len, idx, axis=1)
        t = np.zeros_like(d)
        np.divide(d - c0, sl, out=t, where=sl > 0)
        t = np.clip(t, 0.0, 1.0)
        p0 = np.take_along_axis(p, idx[..., None], axis=1)
        dv = np.take_along_axis(seg, idx[..., None], axis=1)
        res = p0 + t[..., None] * dv
        res[cum[:, -1] == 0] = p[cum[:, -1] == 0, :1]
        out[a:a + step] = res
    return out


def resample_polyline(points: np.ndarray, num: int = NUM_SAMPLE_PTS) -> np.ndarray:
    """``[N, 2]`` polyline (N >= 2) -> ``[num, 2]``; see :func:`resample_polylines`."""
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[-1] != 2:
        raise ValueError(f"points must be [N, 2], got {pts.shape}")
    return resample_polylines(pts[None], num)[0]


def _resample_ragged(polylines: Sequence[np.ndarray], num: int) -> np.ndarray:
    """List of ``[n_i, 2]`` polylines -> ``[K, num, 2]``, batched by vertex count."""
    out = np.empty((len(polylines), num, 2))
    counts = np.array([len(p) for p in polylines], dtype=np.int64)
    for n in np.unique(counts):
        sel = np.flatnonzero(counts == n)
        out[sel] = resample_polylines(np.stack([polylines[i] for i in sel]), num)
    return out


# ---------------------------------------------------------------------------------------- distance and gate
def _pair_chamfer(pred: np.ndarray, gt: np.ndarray, pi: np.ndarray, gi: np.ndarray) -> np.ndarray:
    """Chamfer distance of the pairs ``(pred[pi[k]], gt[gi[k]])``, vectorised in memory-bounded blocks."""
    out = np.empty(len(pi))
    if len(pi) == 0:
        return out
    step = max(1, _CHUNK_ELEMS // (pred.shape[1] * gt.shape[1] * 2))
    for a in range(0, len(pi), step):
        p, g = pred[pi[a:a + step]], gt[gi[a:a + step]]                     # [m, P, 2], [m, G, 2]
        diff = p[:, :, None, :] - g[:, None, :, :]                          # [m, P, G, 2]
        dist = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)               # [m, P, G]
        out[a:a + step] = (dist.min(axis=2).mean(axis=1) + dist.min(axis=1).mean(axis=1)) / 2
    return out


def chamfer_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``[Np, P, 2]`` x ``[Ng, G, 2]`` -> ``[Np, Ng]`` Chamfer distance: mean of the two directed mean
    nearest-neighbour Euclidean distances."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[-1] != 2 or gt.shape[-1] != 2:
        raise ValueError(f"pred and gt must be [K, P, 2], got {pred.shape} and {gt.shape}")
    pi, gi = np.divmod(np.arange(len(pred) * len(gt)), max(len(gt), 1))
    return _pair_chamfer(pred, gt, pi, gi).reshape(len(pred), len(gt))


def _buffers(lines: np.ndarray, width: float) -> np.ndarray:
    """``[K, P, 2]`` -> K flat-cap, mitre-join buffers; ``None`` for zero-length lines (never match)."""
    bufs = np.full(len(lines), None, dtype=object)
    if len(lines) == 0:
        return bufs
    nonzero = np.any(lines != lines[:, :1], axis=(1, 2))
    if nonzero.any():
        bufs[nonzero] = shapely.buffer(shapely.linestrings(lines[nonzero]), width,
                                       cap_style="flat", join_style="mitre")
    return bufs


def _gate_pairs(pred_bufs: np.ndarray, gt_bufs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(pred, gt)`` whose buffers intersect (STRtree query), sorted by (pred, gt)."""
    if len(pred_bufs) == 0 or len(gt_bufs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    gi, pi = shapely.STRtree(pred_bufs).query(gt_bufs, predicate="intersects")
    order = np.lexsort((gi, pi))
    return pi[order].astype(np.int64), gi[order].astype(np.int64)


def buffer_gate(pred: np.ndarray, gt: np.ndarray, width: float = BUFFER_WIDTH) -> np.ndarray:
    """``[Np, P, 2]`` x ``[Ng, G, 2]`` -> bool ``[Np, Ng]``: the lines' ``width`` buffers (flat caps, mitre
    joins) intersect, touching included. Zero-length lines match nothing."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[-1] != 2 or gt.shape[-1] != 2:
        raise ValueError(f"pred and gt must be [K, P, 2], got {pred.shape} and {gt.shape}")
    gate = np.zeros((len(pred), len(gt)), bool)
    pi, gi = _gate_pairs(_buffers(pred, width), _buffers(gt, width))
    gate[pi, gi] = True
    return gate


# ---------------------------------------------------------------------------------------------- matching
def _claim_first(scores: np.ndarray, keys: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Greedy VOC claim: visiting in stable descending score, the first eligible prediction per GT key is a TP.
    Equivalent to the upstream loop (argmax-only, no fall-back), vectorised."""
    tp = np.zeros(len(scores), bool)
    order = np.argsort(-scores, kind="stable")
    cand = order[eligible[order]]
    _, first = np.unique(keys[cand], return_index=True)
    tp[cand[first]] = True
    return tp


def _best_gt(cd: np.ndarray, gate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row max / argmax (first on ties) of ``where(gate, -cd, -100)``; ``-inf`` when there is no GT."""
    n_pred, n_gt = gate.shape
    if n_gt == 0:
        return np.full(n_pred, -np.inf), np.zeros(n_pred, np.int64)
    score = np.where(gate, -cd, SENTINEL)
    best = np.argmax(score, axis=1)
    return score[np.arange(n_pred), best], best


def match_sample(scores: np.ndarray, cd: np.ndarray, gate: np.ndarray, thr: float) -> np.ndarray:
    """One sample, one class: bool TP flags ``[Np]`` (False = FP) for Chamfer threshold ``thr`` (``CD <= thr``).
    ``cd`` entries where ``gate`` is False are ignored."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    cd, gate = np.asarray(cd, np.float64), np.asarray(gate, bool)
    if cd.shape != gate.shape or cd.ndim != 2 or cd.shape[0] != len(scores):
        raise ValueError(f"cd and gate must be [Np, Ng] with Np = {len(scores)}, got {cd.shape}, {gate.shape}")
    best_score, best = _best_gt(cd, gate)
    return _claim_first(scores, best, best_score >= -thr)


# -------------------------------------------------------------------------------------------------- AP
def average_precision(tp_flags: np.ndarray, scores: np.ndarray, num_gts: int) -> float:
    """VOC 'area' AP of a pooled detection list (stable sort on ``-score``), float32 as upstream.
    0 when ``num_gts == 0``."""
    tp_flags = np.asarray(tp_flags).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(tp_flags) != len(scores):
        raise ValueError(f"{len(tp_flags)} tp flags for {len(scores)} scores")
    if num_gts <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp_flags[order].astype(np.float32)
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(np.float32(1) - tp)
    recall = tp_cum / np.maximum(np.float32(num_gts), _EPS32)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, _EPS32)
    mrec = np.concatenate([np.zeros(1, np.float32), recall, np.ones(1, np.float32)])
    mpre = np.concatenate([np.zeros(1, np.float32), precision, np.zeros(1, np.float32)])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    ind = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.float32(np.sum((mrec[ind + 1] - mrec[ind]) * mpre[ind + 1])))


# ------------------------------------------------------------------------------------------------ inputs
def _polylines(pts: Any, where: str) -> list[np.ndarray]:
    """``[N, P, 2]`` array or list of ``[n_i, 2]`` -> list of float64 arrays (shape-checked)."""
    if isinstance(pts, np.ndarray) and pts.size == 0 and pts.ndim < 3:
        return []
    out = []
    for k, p in enumerate(pts):
        a = np.asarray(p, np.float64)
        if a.size == 0:
            a = a.reshape(0, 2)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{where}: element {k} must be [n, 2], got shape {a.shape}")
        out.append(a)
    return out


def _vector(x: Any, n: int, dtype, where: str) -> np.ndarray:
    a = np.asarray(x, dtype).reshape(-1) if x is not None else np.zeros(0, dtype)
    if len(a) != n:
        raise ValueError(f"{where}: {len(a)} values for {n} elements")
    return a


def _parse(predictions: Sequence[dict], ground_truth: Sequence[dict]):
    """Validated per-sample (pred polylines, labels, scores) and (gt polylines, labels)."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction samples for {len(ground_truth)} ground-truth samples")
    preds, gts = [], []
    for s, (pr, gt) in enumerate(zip(predictions, ground_truth)):
        g_pts = _polylines(gt["pts"], f"ground_truth[{s}]")
        for k, g in enumerate(g_pts):
            if len(g) < 2:
                raise ValueError(f"ground_truth[{s}]: element {k} has {len(g)} vertices (need >= 2)")
            if not np.isfinite(g).all():
                raise ValueError(f"ground_truth[{s}]: element {k} has non-finite coordinates")
        g_lab = _vector(gt.get("labels"), len(g_pts), np.int64, f"ground_truth[{s}] labels")
        p_pts = _polylines(pr["pts"], f"predictions[{s}]")
        p_lab = _vector(pr.get("labels"), len(p_pts), np.int64, f"predictions[{s}] labels")
        p_sc = _vector(pr.get("scores"), len(p_pts), np.float64, f"predictions[{s}] scores")
        for k, p in enumerate(p_pts):
            if not np.isfinite(p).all():
                raise ValueError(f"predictions[{s}]: element {k} has non-finite coordinates")
        if not np.isfinite(p_sc).all():
            raise ValueError(f"predictions[{s}]: non-finite scores")
        keep = [k for k, p in enumerate(p_pts) if len(p) >= 2]            # < 2 points: neither TP nor FP
        preds.append(([p_pts[k] for k in keep], p_lab[keep], p_sc[keep]))
        gts.append((g_pts, g_lab))
    return preds, gts


# ------------------------------------------------------------------------------------------------ metric
def chamfer_ap(predictions: Sequence[dict], ground_truth: Sequence[dict],
               class_names: Sequence[str] = CLASS_NAMES, thresholds: Sequence[float] = THRESHOLDS,
               num_samples_pts: int = NUM_SAMPLE_PTS) -> dict[str, float]:
    """MapTR Chamfer AP over an evaluation set.

    ``predictions[s]``: ``{"pts": [N, P, 2] or list of [n_i, 2], "labels": [N], "scores": [N]}``;
    ``ground_truth[s]``: ``{"pts": list of [n_i, 2] or [M, P, 2], "labels": [M]}``. Label ``c`` is
    ``class_names[c]``; other labels are ignored. Returns ``{cls}_AP_thr_{thr}``, ``{cls}_AP``, ``mAP``,
    ``{cls}_num_gts`` and ``{cls}_num_dets``.
    """
    preds, gts = _parse(predictions, ground_truth)
    out: dict[str, float] = {}
    class_ap = []
    for c, name in enumerate(class_names):
        # pooled per class: sample order, then input order within the sample
        p_lines, p_sample, p_scores, g_lines, g_sample = [], [], [], [], []
        for s, ((pp, pl, ps), (gp, gl)) in enumerate(zip(preds, gts)):
            sel = np.flatnonzero(pl == c)
            p_lines += [pp[k] for k in sel]
            p_scores.append(ps[sel])
            p_sample += [s] * len(sel)
            sel = np.flatnonzero(gl == c)
            g_lines += [gp[k] for k in sel]
            g_sample += [s] * len(sel)
        p_sample, g_sample = np.asarray(p_sample, np.int64), np.asarray(g_sample, np.int64)
        scores = np.concatenate(p_scores) if p_scores else np.zeros(0)
        P = _resample_ragged(p_lines, num_samples_pts)
        G = _resample_ragged(g_lines, num_samples_pts)
        p_bufs, g_bufs = _buffers(P, BUFFER_WIDTH), _buffers(G, BUFFER_WIDTH)

        # threshold-independent per-prediction best GT (global GT index) and its pair score
        best_score = np.full(len(P), -np.inf)
        best_gt = np.zeros(len(P), np.int64)
        p_start = np.searchsorted(p_sample, np.arange(len(preds) + 1))
        g_start = np.searchsorted(g_sample, np.arange(len(preds) + 1))
        for s in np.unique(p_sample):
            pa, pb, ga, gb = p_start[s], p_start[s + 1], g_start[s], g_start[s + 1]
            if gb == ga:
                continue
            pi, gi = _gate_pairs(p_bufs[pa:pb], g_bufs[ga:gb])
            cd = np.zeros((pb - pa, gb - ga))
            cd[pi, gi] = _pair_chamfer(P, G, pi + pa, gi + ga)
            gate = np.zeros_like(cd, bool)
            gate[pi, gi] = True
            bs, bg = _best_gt(cd, gate)
            best_score[pa:pb], best_gt[pa:pb] = bs, bg + ga

        aps = []
        for thr in thresholds:
            tp = _claim_first(scores, best_gt, best_score >= -thr)
            ap = average_precision(tp, scores, len(G))
            out[f"{name}_AP_thr_{float(thr)}"] = ap
            aps.append(ap)
        out[f"{name}_AP"] = float(np.mean(aps))
        out[f"{name}_num_gts"] = float(len(G))
        out[f"{name}_num_dets"] = float(len(P))
        class_ap.append(out[f"{name}_AP"])
    out["mAP"] = float(np.mean(class_ap)) if class_ap else 0.0
    return out
