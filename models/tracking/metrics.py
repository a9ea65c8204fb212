"""TAP-Vid point-tracking metrics, written from the definition of tapnet's ``compute_tapvid_metrics``
(google-deepmind/tapnet, ``tapnet/tapvid/evaluation_datasets.py``, current version; conventions in
``/work/shared/design/metrics_conventions.md`` §1).

* ``query_points [b, n, 3]`` are **(t, y, x)**; ``gt_tracks`` / ``pred_tracks [b, n, T, 2]`` are **(x, y)** pixels;
  occlusion arrays ``[b, n, T]`` bool, True = occluded (predictions must already be binarised).
* query frame = ``np.round(t)`` (half to even). Evaluated frames: ``first`` -> t > query frame;
  ``strided`` -> every t != query frame.
* within threshold: ``sum((pred - gt)^2) < thr^2`` (strict) for thr in 1, 2, 4, 8, 16 px.
* occlusion_accuracy = sum[(pred_occ == gt_occ) & E] / sum E;
  pts_within_thr = sum(W & V & E) / sum(V & E) (GT visibility only);
  jaccard_thr = sum(W & V & P & E) / (sum(V & E) + sum(P & (~V | ~W) & E)).
* every output is per video ``[b]`` (per track ``[b, n]`` with ``trackwise=True``); the benchmark number is the
  plain mean over videos. Coordinates are expected in a 256 x 256 raster (see :func:`to_tapvid_raster`).
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)
TAPVID_SIZE = 256
METRIC_KEYS = (["occlusion_accuracy"] + [k for t in THRESHOLDS for k in (f"pts_within_{t}", f"jaccard_{t}")]
               + ["average_jaccard", "average_pts_within_thresh"])


def tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                   pred_occluded: np.ndarray, pred_tracks: np.ndarray, query_mode: str,
                   trackwise: bool = False) -> dict[str, np.ndarray]:
    """TAP-Vid metrics, keys in tapnet's order (:data:`METRIC_KEYS`). 0/0 gives NaN, as the reference does."""
    query_points = np.asarray(query_points)
    gt_occluded, pred_occluded = np.asarray(gt_occluded), np.asarray(pred_occluded)
    if gt_occluded.dtype != bool or pred_occluded.dtype != bool:
        raise TypeError("occlusion arrays must be bool (threshold predicted visibility first)")
    gt_tracks, pred_tracks = np.asarray(gt_tracks, np.float64), np.asarray(pred_tracks, np.float64)
    b, n, T = gt_occluded.shape
    if query_points.shape != (b, n, 3) or gt_tracks.shape != (b, n, T, 2) or pred_tracks.shape != (b, n, T, 2) \
            or pred_occluded.shape != (b, n, T):
        raise ValueError("shapes: query_points [b, n, 3], occluded [b, n, T], tracks [b, n, T, 2]")
    axes = (2,) if trackwise else (1, 2)
    qf = np.round(query_points[..., 0]).astype(np.int32)                      # (b, n), half to even
    t = np.arange(T)[None, None, :]
    if query_mode == "first":
        evaluate = t > qf[..., None]
    elif query_mode == "strided":
        evaluate = t != qf[..., None]
    else:
        raise ValueError(f"unknown query_mode {query_mode!r} (first or strided)")
    visible, pred_visible = ~gt_occluded, ~pred_occluded
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["occlusion_accuracy"] = (np.sum((pred_occluded == gt_occluded) & evaluate, axis=axes)
                                     / np.sum(evaluate, axis=axes))
        d2 = np.sum((pred_tracks - gt_tracks) ** 2, axis=-1)
        n_visible = np.sum(visible & evaluate, axis=axes)
        within_all, jaccard_all = [], []
        for thr in THRESHOLDS:
            within = d2 < thr * thr
            correct = within & visible
            frac = np.sum(correct & evaluate, axis=axes) / n_visible
            tp = np.sum(correct & pred_visible & evaluate, axis=axes)
            fp = np.sum(pred_visible & (~visible | ~within) & evaluate, axis=axes)
            jac = tp / (n_visible + fp)
            out[f"pts_within_{thr}"], out[f"jaccard_{thr}"] = frac, jac
            within_all.append(frac)
            jaccard_all.append(jac)
        out["average_jaccard"] = np.mean(np.stack(jaccard_all), axis=0)
        out["average_pts_within_thresh"] = np.mean(np.stack(within_all), axis=0)
    return {k: out[k] for k in METRIC_KEYS}


def to_tapvid_raster(xy: np.ndarray, height: int, width: int, size: int = TAPVID_SIZE) -> np.ndarray:
    """(x, y) pixels of an ``height x width`` image (OpenCV convention: pixel centres at integers) to the same
    convention in a ``size x size`` raster, as a resize maps them: ``x' = (x + 0.5) * size / width - 0.5``.
    Distances scale by ``size / width`` (columns) and ``size / height`` (rows)."""
    xy = np.asarray(xy, np.float64)
    scale = np.array([size / width, size / height])
    return (xy + 0.5) * scale - 0.5
