"""``report_mapdet``'s work: the trained detector and the layout baseline on the validation samples, scored by
the same Chamfer-AP code, and the figures.

Figures are PNG with deterministic bytes (matplotlib ``Figure`` rendered by Agg without pyplot,
``metadata={"Software": None}``): for the first ``mapdet.figure_samples`` validation samples, the six camera images
above a bird's-eye view of the patch (x right, y forward, metres) with the GT elements and the model's predictions.
As many predictions are drawn as the sample has GT elements, the highest-scoring first, their opacity the score.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import MapSamples
from .evaluation import LayoutBaseline, headline, predict_split, score

COLOURS = ("tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple")


def evaluate_split(model, train: MapSamples, val: MapSamples, figures_dir: Path, figure_samples: int,
                   seed: int = 0) -> dict:
    preds = predict_split(model, val)
    baseline = LayoutBaseline(train, seed=seed)
    results = {"model": score(preds, val), "baseline": score([baseline.predict()] * len(val), val)}
    figures = [draw_sample(figures_dir, i, val, preds[i]) for i in range(min(figure_samples, len(val)))]
    head = {name: headline(r, val.classes) for name, r in results.items()}
    details = {"samples": len(val), "classes": val.classes, "patch_size": list(val.patch_size),
               "convention": "MapTR Chamfer AP (metrics_conventions_2 section 3): 100-point arc-length resampling, "
                             "2 m flat-cap buffer gate, greedy argmax matching with CD <= threshold, VOC area AP "
                             "pooled over samples, mAP over all classes; GT = the cache's fixed-point polylines",
               "baseline": {"what": "mean training layout: k-means prototypes of the training GT per class, scored "
                                    "by cluster share (no image)", "prototypes": baseline.counts},
               "predictors": results, "figures": figures}
    return {"headline": head, "details": details}


def draw_sample(folder: Path, index: int, samples: MapSamples, pred: dict) -> str:
    from matplotlib.figure import Figure

    from models.common.io import atomic_file

    item = samples[index]
    N = item["images"].shape[0]
    H, W = samples.patch_size
    fig = Figure(figsize=(2.0 * max(N, 3), 2.0 + 2.0 * max(N, 3) * H / W / 2.2), dpi=80)
    gs = fig.add_gridspec(2, N, height_ratios=[1, 2.0 * max(N, 3) * H / W / 2.2 / 2.0 * 1.0])
    for c in range(N):
        ax = fig.add_subplot(gs[0, c])
        ax.imshow(item["images"][c].transpose(1, 2, 0))
        ax.set_title(samples.cameras[c], fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    bev = fig.add_subplot(gs[1, :])
    gt = samples.ground_truth(index)
    for pts, label in zip(gt["pts"], gt["labels"]):
        bev.plot(pts[:, 0], pts[:, 1], "-", color=COLOURS[int(label) % len(COLOURS)], lw=3, alpha=0.35)
    order = np.argsort(-pred["scores"], kind="stable")[:len(gt["labels"])]
    for j in order:
        pts = pred["pts"][j]
        bev.plot(pts[:, 0], pts[:, 1], "--", color=COLOURS[int(pred["labels"][j]) % len(COLOURS)], lw=1.2,
                 alpha=float(np.clip(0.25 + pred["scores"][j], 0.25, 1.0)))
    for c, name in enumerate(samples.classes):
        bev.plot([], [], "-", color=COLOURS[c % len(COLOURS)], lw=3, alpha=0.35, label=f"GT {name}")
        bev.plot([], [], "--", color=COLOURS[c % len(COLOURS)], lw=1.2, label=f"predicted {name}")
    bev.plot([0], [0], "k^", ms=6, label="ego (LIDAR_TOP)")
    bev.set_xlim(-W / 2, W / 2)
    bev.set_ylim(-H / 2, H / 2)
    bev.set_aspect("equal")
    bev.set_xlabel("x right (m)")
    bev.set_ylabel("y forward (m)")
    bev.legend(fontsize=5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    meta = samples.cache.samples[index]
    fig.suptitle(f"val sample {index} ({meta['scene']}): GT (thick) and the top {len(order)} predictions (dashed)",
                 fontsize=8)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"sample_{index:03d}.png"
    with atomic_file(folder / name, "wb") as fh:
        fig.savefig(fh, format="png", metadata={"Software": None})
    return name
