"""Trajectory-reconstruction report of a trained motion tokenizer on validation windows.

Encode -> quantise -> decode every window, integrate the decoded displacements into tracks (from the
ground-truth first point, as the official reconstruction does) and score them with the official
metrics, beside two references computed on the same windows:

* ``zero_motion``: every point stays at its first position (what a tokenizer must beat);
* ``perfect_labels``: the ground truth's own displacement classes decoded (the ceiling: the error left
  is the quantisation of motion to whole pixels within the 15 x 15 window).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.tokenizer.labels import (center_class, labels_to_displacements, logits_to_displacements,
                                     tracks_to_labels, velocities_to_points)
from models.tokenizer.metrics import codebook_perplexity, trajectory_metrics
from models.tokenizer.model import MotionTokenizer


@torch.no_grad()
def reconstruction_report(model: MotionTokenizer, windows, batch_size: int = 32) -> dict:
    """Metrics of the model and of both references over ``windows`` (a TrackWindows), plus the predictions
    ``pred`` (Nw, T, N, 2) and the code indices ``indices`` (Nw, L) for figures."""
    model.eval()
    tracks_all = torch.from_numpy(windows.arrays["tracks"]).float()  # (Nw, T, N, 2)
    preds, ceilings, indices, hits, hits_ceiling, centre = [], [], [], 0.0, 0.0, 0.0
    for start in range(0, len(tracks_all), batch_size):
        tracks = tracks_all[start:start + batch_size][:, None]  # (B, 1, T, N, 2)
        labels = tracks_to_labels(tracks, model.img_size, model.grid_size)  # (B, 1, T-1, N)
        out = model(model.tracks_to_velocities(tracks))
        first = tracks[:, :, :1]
        steps = logits_to_displacements(out["logits"], model.img_size, model.grid_size)
        preds.append(velocities_to_points(steps, init_points=first, time_dim=2)[:, 0])
        exact = labels_to_displacements(labels, model.img_size, model.grid_size)
        ceilings.append(velocities_to_points(exact, init_points=first, time_dim=2)[:, 0])
        indices.append(out["indices"].reshape(len(tracks), -1))
        hits += float((out["logits"].argmax(-1) == labels).float().sum())
        centre += float((labels == model.center_class).float().sum())
        hits_ceiling += float(labels.numel())
    pred, ceiling, idx = torch.cat(preds), torch.cat(ceilings), torch.cat(indices)
    zero = tracks_all[:, :1].expand_as(tracks_all)
    n_labels = hits_ceiling
    rows = {
        "model": {**trajectory_metrics(pred, tracks_all, model.img_size), "label_accuracy": hits / n_labels},
        "zero_motion": {**trajectory_metrics(zero, tracks_all, model.img_size), "label_accuracy": centre / n_labels},
        "perfect_labels": {**trajectory_metrics(ceiling, tracks_all, model.img_size), "label_accuracy": 1.0},
    }
    perplexity, normalised = codebook_perplexity(idx, model.num_codes)
    unique = int(torch.unique(idx).numel())
    codebook = {"perplexity": perplexity, "perplexity_normalised": normalised, "unique_codes": unique,
                "codebook_size": int(model.num_codes), "share_used": unique / model.num_codes}
    return {"rows": rows, "codebook": codebook, "windows": int(len(tracks_all)),
            "pred": pred.numpy(), "indices": idx.numpy()}


LOWER_IS_BETTER = ("mse", "l1", "cross_track_l2")


def beats(rows: dict, metric: str, a: str = "model", b: str = "zero_motion") -> bool:
    """Whether row ``a`` is strictly better than ``b`` on ``metric`` (lower for errors, higher otherwise)."""
    x, y = rows[a][metric], rows[b][metric]
    return x < y if metric in LOWER_IS_BETTER else x > y


def draw_tracks(frame: np.ndarray | None, gt: np.ndarray, pred: np.ndarray, img_size, path: Path, title: str) -> None:
    """GT (green) and reconstructed (magenta) tracks of one window over its first frame. Tracks are
    normalised (row, col) (T, N, 2); drawn in pixel (x, y) with pixel centres at integers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, W = img_size
    to_px = lambda t: ((t[..., 1] + 1) * W / 2, (t[..., 0] + 1) * H / 2)  # noqa: E731 (col, row) -> (x, y)
    fig, ax = plt.subplots(figsize=(4, 4 * H / W), dpi=120)
    ax.imshow(frame if frame is not None else np.full((H, W, 3), 255, np.uint8), extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    for tracks, colour in ((gt, "#22dd44"), (pred, "#ee22cc")):
        x, y = to_px(tracks)
        ax.plot(x, y, "-", color=colour, lw=0.7, alpha=0.9)
        ax.plot(x[0], y[0], ".", color=colour, ms=2)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def draw_codebook_histogram(indices: np.ndarray, codebook_size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.bincount(indices.ravel(), minlength=codebook_size)
    order = np.sort(counts)[::-1]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=120)
    ax.bar(np.arange(codebook_size), order, width=1.0, color="#3366aa")
    ax.set_yscale("log" if order.max() > 100 else "linear")
    ax.set_xlabel("code rank")
    ax.set_ylabel("uses on val")
    used = int((counts > 0).sum())
    ax.set_title(f"codebook usage: {used} of {codebook_size} codes used "
                 f"({used / codebook_size:.1%}), perplexity {math.exp(_entropy(counts)):.1f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
