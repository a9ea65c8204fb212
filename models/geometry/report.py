"""``report_geometry``'s work: predictions of the trained model, the converted initialisation and the trivial
baseline on the validation windows, their scores (:mod:`models.geometry.evaluation`) and the figures.

Figures are PNG with deterministic bytes (matplotlib ``Figure`` rendered by Agg without pyplot,
``metadata={"Software": None}``), for the first ``train_geometry.figure_windows`` validation windows: per window,
the reference-time images of every camera with predicted depth, true depth and the absolute error beneath, the
predicted dynamic mask over the image, and a bird's-eye view (x right, z forward of the reference camera) of the
true and predicted camera centres of all frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.train import load_weights

from .config import GeometryConfig
from .evaluation import Scores, headline, mean_depth_baseline, upsample_patches
from .model import GeometryModel
from .windows import collate_windows, open_windows


def _load(cfg: GeometryConfig, path: str) -> GeometryModel:
    model = GeometryModel(cfg)
    load_weights(path, model, strict=True)
    return model.eval()


def _truth(item: dict, external_mask: bool = False) -> dict:
    """Exact depth and masks where the world gives them, else the LiDAR / folder depth and the folder's masks
    (none when those masks were the model's input, ``external_mask``)."""
    T, V = item["images"].shape[:2]
    exact = bool(item["has_exact"])
    depth = item["depth_exact"] if exact else item["depth"]
    scored_mask = bool(item["has_dynamic"]) and not external_mask
    return {"depth": np.asarray(depth, np.float64).reshape(T * V, *depth.shape[-2:]),
            "extrinsics": np.asarray(item["extrinsics"], np.float64).reshape(T * V, 3, 4),
            "dynamic": np.asarray(item["dynamic"]).reshape(T * V, *depth.shape[-2:]) if scored_mask else None}


def _predict(model: GeometryModel, item: dict, scale: float, external_mask: bool = False) -> dict:
    batch = collate_windows([item])
    with torch.no_grad():
        out = model(batch["images"], external_mask=batch["dynamic"].float() if external_mask else None,
                    intrinsics=batch["intrinsics"][:, 0], cam_to_ref=batch["cam_to_ref"])
    T, V = item["images"].shape[:2]
    H, W = item["images"].shape[-2:]
    extr = out["extrinsics"][0].double().reshape(T * V, 3, 4).clone()
    extr[:, :, 3] *= scale
    mask = None
    if out["mask"] is not None:
        mask = upsample_patches(out["mask"][0, ..., 0], (H // model.cfg.patch_size, W // model.cfg.patch_size),
                                model.cfg.patch_size).reshape(T * V, H, W).double().numpy()
    return {"depth": (out["depth"][0, ..., 0].double() * scale).reshape(T * V, H, W).numpy(),
            "extrinsics": extr.numpy(), "mask": mask}


def evaluate_split(cfg: GeometryConfig, p, cache_dir: str, init_path: str, model_path: str, figures_dir: Path,
                   progress: bool = False) -> dict:
    from tqdm import tqdm

    val = open_windows(p, "val", cfg, cache_dir)
    train = open_windows(p, "train", cfg, cache_dir)
    mean_depth = mean_depth_baseline(train)                                      # [V, H, W]
    models = {"model": _load(cfg, model_path), "init": _load(cfg, init_path)}
    scores = {name: Scores() for name in ("model", "init", "baseline")}
    figures = []
    for i in tqdm(range(len(val)), desc="report_geometry", unit="window", disable=not progress, leave=False):
        item = val[i]
        truth = _truth(item, p.external_mask)
        T, V = item["images"].shape[:2]
        preds = {name: _predict(m, item, p.scale, p.external_mask) for name, m in models.items()}
        for name, pred in preds.items():
            scores[name].add(pred["depth"], pred["extrinsics"], pred["mask"], truth)
        identity = np.tile(np.eye(3, 4), (T * V, 1, 1))
        scores["baseline"].add(np.tile(mean_depth, (T, 1, 1)), identity, np.zeros_like(truth["depth"]), truth)
        if i < p.figure_windows:
            figures.append(draw_window(figures_dir, i, item, truth, preds["model"]))
    results = {name: s.result() for name, s in scores.items()}
    head = {name: headline(r) for name, r in results.items()}
    details = {"windows": len(val), "frames": p.frames, "cameras": list(p.cameras), "image_size": list(p.image_size),
               "source": p.source, "sequences": getattr(val, "sequences", None), "external_mask": p.external_mask,
               "truth": _truth_text(val[0], p), "baseline": "per-camera per-pixel mean training LiDAR depth; identity poses; "
                                             "no dynamic pixel", "predictors": results, "figures": figures,
               "skipped": getattr(val, "skipped", {})}
    return {"headline": head, "details": details}


def _truth_text(item: dict, p) -> str:
    if bool(item["has_exact"]):
        return "exact dense depth and dynamic masks (synthetic world)"
    if p.source == "nuscenes":
        return "LiDAR depth"
    masks = ("none scored: the folder's masks were the model's input (external_mask)" if p.external_mask
             else "the folder's masks" if bool(item["has_dynamic"]) else "none in the folder")
    return f"the sequence folder's depth (depth_unit {p.depth_unit} m) and camera poses; dynamic masks: {masks}"


def draw_window(folder: Path, index: int, item: dict, truth: dict, pred: dict) -> str:
    """One PNG per window; returns its name."""
    from matplotlib.figure import Figure

    from models.common.io import atomic_file

    from .metrics import camera_centres

    T, V = item["images"].shape[:2]
    H, W = item["images"].shape[-2:]
    fig = Figure(figsize=(2.2 * V, 2.2 * 4 * H / W + 2.6), dpi=80)
    axes = fig.subplots(5, V, squeeze=False, gridspec_kw={"height_ratios": [1, 1, 1, 1, 2.2 * W / H / V * 1.6]})
    vmax = float(np.percentile(truth["depth"][truth["depth"] > 0], 95)) if (truth["depth"] > 0).any() else 1.0
    for v in range(V):
        img = np.asarray(item["images"][0, v]).transpose(1, 2, 0)
        gt = truth["depth"][v]
        pd = pred["depth"][v]
        err = np.where(gt > 0, np.abs(pd - gt), np.nan)
        axes[0, v].imshow(img)
        axes[1, v].imshow(pd, vmin=0, vmax=vmax, cmap="magma_r")
        axes[2, v].imshow(np.where(gt > 0, gt, np.nan), vmin=0, vmax=vmax, cmap="magma_r")
        axes[3, v].imshow(err, vmin=0, vmax=vmax / 4, cmap="viridis")
        if pred["mask"] is not None:
            axes[0, v].imshow(np.ma.masked_less(pred["mask"][v], 0.5), alpha=0.5, cmap="autumn", vmin=0, vmax=1)
        for r, label in enumerate(("image + predicted mask", "predicted depth", "true depth", "|error|")):
            axes[r, v].set_xticks([])
            axes[r, v].set_yticks([])
            if v == 0:
                axes[r, v].set_ylabel(label, fontsize=7)
    gs = axes[4, 0].get_gridspec()
    for ax in axes[4]:
        ax.remove()
    bev = fig.add_subplot(gs[4, :])
    for name, extr, style in (("true", truth["extrinsics"], "o"), ("predicted", pred["extrinsics"], "x")):
        c = camera_centres(extr)
        bev.plot(c[:, 0], c[:, 2], style, label=f"{name} camera centres", ms=5)
    bev.set_xlabel("x (m, reference camera)")
    bev.set_ylabel("z (m)")
    bev.set_aspect("equal", adjustable="datalim")
    bev.legend(fontsize=7)
    fig.suptitle(f"val window {index} ({item['scene']}, key frame {item['start']}): time 0, {V} cameras", fontsize=9)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"window_{index:03d}.png"
    with atomic_file(folder / name, "wb") as fh:
        fig.savefig(fh, format="png", metadata={"Software": None})
    return name
