"""Trajectory-reconstruction report of a trained motion tokenizer on validation windows.

Encode -> quantise -> decode every window, integrate the decoded displacements into tracks (from the
ground-truth first point, as the official reconstruction does) and score them with the official
metrics, beside references computed on the same windows:

* ``zero_motion``: every point stays at its first position (what a tokenizer must beat);
* ``perfect_labels``: the ground truth's own displacement classes decoded (the ceiling: the error left
  is the quantisation of motion to whole pixels within the 15 x 15 window);
* ``affine_flow`` and ``mean_velocity``: no-learning references of a given form (models/tokenizer/references.py),
  decoded to whole-pixel steps as the model's output is.

Every row is scored twice: ``rows`` over all steps (the official numbers) and ``rows_visible`` over the points
visible at each time (:func:`visible_trajectory_metrics`; references fitted to visible steps only). ``share``
gives, per row and metric, how far it goes from zero motion (0) to the ceiling (1).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.tokenizer.labels import (labels_to_displacements, logits_to_displacements, tracks_to_labels,
                                     velocities_to_points, visible_steps)
from models.tokenizer.metrics import codebook_perplexity, trajectory_metrics, visible_trajectory_metrics
from models.tokenizer.model import MotionTokenizer
from models.tokenizer.references import affine_flow_velocities, as_whole_pixel_tracks, mean_velocity_velocities

REFERENCES = ("zero_motion", "perfect_labels", "affine_flow", "mean_velocity")
SHARE_METRICS = ("mse", "normalized_accuracy", "delta_auc")


@torch.no_grad()
def reconstruction_report(model: MotionTokenizer, windows, batch_size: int = 32) -> dict:
    """Metrics of the model and of the references over ``windows`` (a TrackWindows), plus the predictions
    ``pred`` (Nw, T, N, 2) and the code indices ``indices`` (Nw, L) for figures."""
    model.eval()
    tracks_all = torch.from_numpy(windows.arrays["tracks"]).float()  # (Nw, T, N, 2)
    visible_all = torch.from_numpy(windows.arrays["visible"]).bool()  # (Nw, T, N)
    preds, indices, track_indices, hits, hits_visible = [], [], [], 0.0, 0.0
    for start in range(0, len(tracks_all), batch_size):
        tracks = tracks_all[start:start + batch_size][:, None]  # (B, 1, T, N, 2)
        labels = tracks_to_labels(tracks, model.img_size, model.grid_size)  # (B, 1, T-1, N)
        out = model(model.tracks_to_velocities(tracks))
        steps = logits_to_displacements(out["logits"], model.img_size, model.grid_size)
        preds.append(velocities_to_points(steps, init_points=tracks[:, :, :1], time_dim=2)[:, 0])
        indices.append(out["indices"].reshape(len(tracks), -1))
        if out["track_indices"] is not None:
            track_indices.append(out["track_indices"])
        right = out["logits"].argmax(-1) == labels  # (B, 1, T-1, N)
        hits += float(right.float().sum())
        hits_visible += float((right[:, 0] & visible_steps(visible_all[start:start + batch_size])).float().sum())
    pred, idx = torch.cat(preds), torch.cat(indices)
    labels_all = tracks_to_labels(tracks_all, model.img_size, model.grid_size)  # (Nw, T-1, N)
    seen = visible_steps(visible_all)  # (Nw, T-1, N)
    centre = labels_all == model.center_class

    def whole_pixel(v):
        return as_whole_pixel_tracks(v, tracks_all, model.img_size, model.grid_size)

    exact = velocities_to_points(labels_to_displacements(labels_all, model.img_size, model.grid_size),
                                 init_points=tracks_all[:, :1], time_dim=1)
    zero = tracks_all[:, :1].expand_as(tracks_all)
    predictions = {  # row -> (all-steps prediction, visible-steps prediction, label accuracy all / visible)
        "model": (pred, pred, hits / labels_all.numel(), hits_visible / max(float(seen.sum()), 1.0)),
        "zero_motion": (zero, zero, float(centre.float().mean()), float((centre & seen).sum() / seen.sum())),
        "perfect_labels": (exact, exact, 1.0, 1.0),
        "affine_flow": (whole_pixel(affine_flow_velocities(tracks_all)),
                        whole_pixel(affine_flow_velocities(tracks_all, seen)), None, None),
        "mean_velocity": (whole_pixel(mean_velocity_velocities(tracks_all)),
                          whole_pixel(mean_velocity_velocities(tracks_all, seen)), None, None),
    }
    rows, rows_visible = {}, {}
    for name, (p_all, p_vis, acc, acc_vis) in predictions.items():
        rows[name] = trajectory_metrics(p_all, tracks_all, model.img_size)
        rows_visible[name] = visible_trajectory_metrics(p_vis, tracks_all, visible_all, model.img_size)
        if acc is not None:
            rows[name]["label_accuracy"], rows_visible[name]["label_accuracy"] = acc, acc_vis
    perplexity, normalised = codebook_perplexity(idx, model.num_codes)
    unique = int(torch.unique(idx).numel())
    codebook = {"perplexity": perplexity, "perplexity_normalised": normalised, "unique_codes": unique,
                "codebook_size": int(model.num_codes), "share_used": unique / model.num_codes,
                "tokens_per_window": int(model.num_tokens),
                "bits_per_window": float(model.num_tokens * math.log2(model.num_codes))}
    if track_indices:  # tokenizer.track_codes: one more token per track, its own codebook
        n_track = model.num_views * model.num_tracks
        codebook.update(track_tokens_per_window=n_track, track_codebook_size=int(model.num_track_codes),
                        track_codes_used=int(torch.unique(torch.cat(track_indices)).numel()))
        codebook["tokens_per_window"] += n_track
        codebook["bits_per_window"] += n_track * math.log2(model.num_track_codes)
    return {"rows": rows, "rows_visible": rows_visible,
            "share": {"all_steps": gap_shares(rows), "visible_steps": gap_shares(rows_visible)},
            "visible_share": float(visible_all.float().mean()), "visible_step_share": float(seen.float().mean()),
            "codebook": codebook, "windows": int(len(tracks_all)), "pred": pred.numpy(), "indices": idx.numpy()}


def gap_shares(rows: dict) -> dict:
    """Per row, for MSE / normalised accuracy / delta-AUC: ``(row - zero) / (ceiling - zero)``, i.e. the share of
    the way from zero motion (0) to the perfect-label ceiling (1); NaN where the ceiling equals zero motion."""
    zero, ceiling = rows["zero_motion"], rows["perfect_labels"]
    out = {}
    for name, row in rows.items():
        out[name] = {}
        for m in SHARE_METRICS:
            gap = ceiling[m] - zero[m]
            out[name][m] = (row[m] - zero[m]) / gap if gap else float("nan")
    return out


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


def draw_gap_shares(share: dict, path: Path) -> None:
    """Bars: each row's share of the way from zero motion to the ceiling, per metric, all steps vs visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in share["all_steps"] if n not in ("zero_motion", "perfect_labels")]
    fig, axes = plt.subplots(1, len(SHARE_METRICS), figsize=(9, 2.8), dpi=120, sharey=True)
    for ax, metric in zip(axes, SHARE_METRICS):
        y = np.arange(len(names))
        for k, (scoring, colour) in enumerate((("all_steps", "#3366aa"), ("visible_steps", "#ee8833"))):
            vals = [share[scoring][n][metric] for n in names]
            ax.barh(y + 0.2 - 0.4 * k, vals, height=0.38, color=colour, label=scoring.replace("_", " "))
        ax.axvline(0, color="k", lw=0.6)
        ax.axvline(1, color="k", lw=0.6, ls="--")
        ax.set_title(metric.replace("_", " "), fontsize=8)
        ax.set_yticks(np.arange(len(names)), names, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle("share of the way from zero motion (0) to the perfect-label ceiling (1), val", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
