"""Predictions of the map detector and of the trivial baseline, scored by MapTR's Chamfer AP.

* ``decode``: MapTR's NMS-free decoding: the sigmoid scores of every (instance, class) pair, the top
  ``num_instances`` of them, each with its instance's points (so one instance may be reported under two classes),
  in metres of the LIDAR frame.
* ``LayoutBaseline``: the mean training layout. Per class, the training elements (each a fixed-point polyline,
  open ones oriented to run away from the ego, rings from the cache's canonical start) are clustered with k-means
  into as many prototypes as the class has elements per training sample on average (rounded up); each prototype
  is the mean of its cluster and scores its cluster's share of the class. It sees no image: what a detector
  reaches by knowing where map elements usually are.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .chamfer_ap import chamfer_ap
from .data import MapSamples, denormalise


def decode(logits: torch.Tensor, points: torch.Tensor, patch_size, top_k: int | None = None) -> list[dict]:
    """logits [B, I, C], points [B, I, P, 2] in [0, 1] -> per sample ``{"pts" [K, P, 2] m, "labels", "scores"}``."""
    B, I, C = logits.shape
    k = min(top_k or I, I * C)
    scores = torch.sigmoid(logits.float()).flatten(1)                           # [B, I*C]
    top, idx = scores.topk(k, dim=1)                                             # sorted, stable for ties
    inst, label = idx // C, idx % C
    out = []
    for b in range(B):
        pts = denormalise(points[b, inst[b]].double().cpu().numpy(), patch_size)
        out.append({"pts": pts, "labels": label[b].cpu().numpy(), "scores": top[b].double().cpu().numpy()})
    return out


def _oriented(points: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Open polylines made to run away from the origin (first point nearer); rings unchanged. [K, P, 2]."""
    d0 = np.linalg.norm(points[:, 0], axis=-1)
    d1 = np.linalg.norm(points[:, -1], axis=-1)
    flip = ~closed & (d1 < d0)
    out = points.copy()
    out[flip] = out[flip, ::-1]
    return out


class LayoutBaseline:
    def __init__(self, train: MapSamples, seed: int = 0):
        from scipy.cluster.vq import kmeans2

        a = train.arrays
        valid = a["gt_valid"]
        self.prototypes: list[tuple[np.ndarray, int, float]] = []                # (points [P, 2] m, label, score)
        self.counts = {}
        for c, name in enumerate(train.classes):
            sel = valid & (a["gt_labels"] == c)
            n = int(sel.sum())
            if n == 0:
                continue
            per_sample = n / len(train)
            k = max(1, min(n, math.ceil(per_sample)))
            elems = _oriented(train.metres[sel], a["gt_closed"][sel])            # [n, P, 2]
            flat = elems.reshape(n, -1)
            centroids, assign = kmeans2(flat, k, seed=np.random.default_rng(seed + c), minit="++", iter=50)
            share = np.bincount(assign, minlength=k) / n
            for j in range(k):
                if share[j] > 0:
                    self.prototypes.append((centroids[j].reshape(-1, 2), c, float(share[j])))
            self.counts[name] = k

    def predict(self) -> dict:
        return {"pts": np.stack([p for p, _, _ in self.prototypes]),
                "labels": np.array([c for _, c, _ in self.prototypes]),
                "scores": np.array([s for _, _, s in self.prototypes])}


def predict_split(model, samples: MapSamples, batch_size: int = 8) -> list[dict]:
    from .training import images_to_float

    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            items = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
            images = torch.from_numpy(np.stack([it["images"] for it in items]))
            out = model(images_to_float(images))
            preds.extend(decode(out["logits"], out["points"], samples.patch_size, model.cfg.num_instances))
    return preds


def score(preds: list[dict], samples: MapSamples) -> dict:
    gts = [samples.ground_truth(i) for i in range(len(samples))]
    return chamfer_ap(preds, gts, class_names=tuple(samples.classes))


def headline(result: dict, classes) -> dict:
    """The few numbers ``dvc exp show`` compares: mAP, per-class AP, mAP per threshold."""
    out = {"mAP": result["mAP"], **{f"{c}_AP": result[f"{c}_AP"] for c in classes}}
    for thr in ("0.5", "1.0", "1.5"):
        out[f"mAP_{thr}m"] = float(np.mean([result[f"{c}_AP_thr_{thr}"] for c in classes]))
    return {k: round(float(v), 6) for k, v in out.items()}
