"""``geometry_infer``'s work: the trained model over a multi-view sequence folder, window by window, with the
``report_geometry`` metrics when the folder holds depth and calibration (:mod:`models.geometry.evaluation`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.common.io import atomic_dir, save_npz, write_json

from .config import GeometryConfig
from .data import SequenceWindows, collate_windows
from .evaluation import Scores, headline, upsample_patches
from .report import _load


def infer_sequence(cfg: GeometryConfig, p, sequence: str | Path, model_path: str | Path, out_dir: str | Path,
                   depth_unit: float = 1.0, external_mask: bool = False) -> dict:
    """``external_mask``: feed the folder's dynamic masks to the model as ``M_ext`` (e.g. SegAnyMo's); the mask
    metric then measures the fused mask against those same masks, so it is left out."""
    windows = SequenceWindows(sequence, frames=p.frames, image_hw=tuple(p.image_size), depth_unit=depth_unit,
                              stride=p.frames)
    model = _load(cfg, str(model_path))
    scores = Scores()
    scored = 0
    with atomic_dir(out_dir) as tmp:
        for k in range(len(windows)):
            item = windows[k]
            batch = collate_windows([item])
            calibrated = bool(item["has_intrinsics"]) and bool(item["has_extrinsics"])
            use_ext = external_mask and bool(item["has_dynamic"])
            if external_mask and not use_ext:
                raise ValueError(f"{sequence}: --external-mask needs the folder's masks (masks/view_<k>/<t>.png)")
            with torch.no_grad():
                out = model(batch["images"], external_mask=batch["dynamic"].float() if use_ext else None,
                            intrinsics=batch["intrinsics"][:, 0] if calibrated else None,
                            cam_to_ref=batch["cam_to_ref"] if calibrated else None)
            T, V, _, H, W = item["images"].shape
            depth = out["depth"][0, ..., 0].double() * p.scale                            # [T, V, H, W]
            extr = out["extrinsics"][0].double().clone()
            extr[..., :3, 3] *= p.scale
            mask = np.zeros((T, V, H, W))
            if out["mask"] is not None:
                mask = upsample_patches(out["mask"][0, ..., 0], (H // cfg.patch_size, W // cfg.patch_size),
                                        cfg.patch_size).double().numpy()
            save_npz(tmp / f"window_{k:03d}.npz", depth=depth.float().numpy(),
                     depth_conf=out["depth_conf"][0].float().numpy(), extrinsics=extr.float().numpy(),
                     intrinsics=out["intrinsics"][0].float().numpy(), mask=mask.astype(np.float32),
                     times=np.arange(item["start"], item["start"] + T, dtype=np.int32))
            if bool(item["has_depth"]) and bool(item["has_extrinsics"]):
                truth = {"depth": np.asarray(item["depth"], np.float64).reshape(T * V, H, W),
                         "extrinsics": np.asarray(item["extrinsics"], np.float64).reshape(T * V, 3, 4),
                         "dynamic": np.asarray(item["dynamic"]).reshape(T * V, H, W)
                         if bool(item["has_dynamic"]) and not external_mask else None}
                scores.add(depth.reshape(T * V, H, W).numpy(), extr.reshape(T * V, 3, 4).numpy(),
                           mask.reshape(T * V, H, W), truth)
                scored += 1
        summary = {"sequence": str(sequence), "windows": len(windows), "frames": p.frames,
                   "views": int(windows[0]["images"].shape[1]), "image_size": list(p.image_size),
                   "scored_windows": scored, "external_mask": external_mask}
        if scored:
            result = scores.result()
            summary.update(headline=headline(result), metrics=result)
        write_json(tmp / "metrics.json" if scored else tmp / "summary.json", summary)
    return summary
