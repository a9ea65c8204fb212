"""Glue between the geometry model, its windows and the shared training loop.

Parameter groups (each split into decay / no-decay, with its own learning-rate multiplier from the params):
``converted`` (the encoder, Time-SA / View-SA blocks, sparse global blocks, camera and register tokens: what Pi3 and
PAGE-4D trained), ``heads`` (camera, depth, point heads) and ``new`` (mask head, mask gate, lambdas, epipolar
strength, memory tokens). Losses: :mod:`models.geometry.losses`; depth supervision is LiDAR projected into each
camera (what real nuScenes has) or a sequence folder's depth; the mask loss (optional) uses the synthetic world's
exact dynamic masks or a folder's masks, unless those masks are the model's input (``external_mask``).
"""
from __future__ import annotations

import torch

from models.train import TrainConfig, TrainTask, load_weights

from .config import GeometryConfig
from .losses import aleatoric_loss, camera_loss, depth_to_world_points, mask_loss
from .mask_head import patch_mask
from .model import GeometryModel
from .pose_encoding import extri_intri_to_pose_encoding

NEW_PREFIXES = ("aggregator.spatial_mask_head.", "aggregator.mask_gate.", "aggregator.lambda_",
                "aggregator.epipolar.")
HEAD_PREFIXES = ("camera_head.", "depth_head.", "point_head.")


def geometry_train_config(p) -> TrainConfig:
    return TrainConfig.from_dict({
        "epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr, "weight_decay": p.weight_decay,
        "warmup_steps": p.warmup_steps, "grad_clip": p.grad_clip, "amp": p.amp, "seed": p.seed,
        "log_every": 5, "eval_every_epochs": p.eval_every_epochs}, section="train_geometry")


def group_of(name: str) -> str:
    if name.startswith(HEAD_PREFIXES):
        return "heads"
    if name.startswith(NEW_PREFIXES) or name.endswith(".memory_tokens"):
        return "new"
    return "converted"


def targets(batch: dict, scale: float) -> dict:
    """Scaled supervision of a collated batch: pose encodings [B, T, V, 9], depth [B, T, V, H, W, 1] with its valid
    mask, world points [B, T, V, H, W, 3] (the reference camera's frame)."""
    extr = batch["extrinsics"].clone()
    extr[..., :3, 3] = extr[..., :3, 3] / scale
    H, W = batch["images"].shape[-2:]
    depth = batch["depth"] / scale
    return {"pose_enc": extri_intri_to_pose_encoding(extr, batch["intrinsics"], (H, W)),
            "depth": depth[..., None], "valid": batch["depth"] > 0,
            "points": depth_to_world_points(depth, batch["intrinsics"], extr)}


class GeometryTask(TrainTask):
    monitor, mode = "loss", "min"
    find_unused_parameters = True      # DDP: the mask head, lambdas or epipolar strength may sit out a config

    def __init__(self, cfg: GeometryConfig, p, init_path: str | None):
        from .data import collate_windows

        self.cfg, self.p, self.init_path = cfg, p, init_path
        self.collate_fn = collate_windows

    def build_model(self) -> GeometryModel:
        model = GeometryModel(self.cfg)
        if self.init_path:
            load_weights(self.init_path, model, strict=True)
        return model

    def param_groups(self, model) -> list[dict]:
        mult = {"converted": self.p.lr_converted, "heads": self.p.lr_heads, "new": self.p.lr_new}
        groups: dict[tuple, list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups.setdefault((group_of(name), param.ndim >= 2), []).append(param)
        return [{"name": f"{g}_{'decay' if decay else 'no_decay'}", "params": ps, "lr_mult": mult[g],
                 **({} if decay else {"weight_decay": 0.0})} for (g, decay), ps in sorted(groups.items())]

    def forward(self, model, batch) -> dict:
        """``train_geometry.external_mask``: the sequence folder's masks enter the model as ``M_ext``."""
        ext = batch["dynamic"].float() if self.p.external_mask else None                # [B, T, V, H, W]
        return model(batch["images"], external_mask=ext, intrinsics=batch["intrinsics"][:, 0],
                     cam_to_ref=batch["cam_to_ref"])

    def loss(self, model, batch):
        out = self.forward(model, batch)
        tgt = targets(batch, self.p.scale)
        terms = {"camera": camera_loss(out["pose_enc_list"], tgt["pose_enc"], self.p.pose_gamma),
                 "depth": aleatoric_loss(out["depth"], out["depth_conf"], tgt["depth"], tgt["valid"],
                                         self.p.conf_alpha),
                 "points": aleatoric_loss(out["world_points"], out["world_points_conf"], tgt["points"],
                                          tgt["valid"], self.p.conf_alpha)}
        if (self.p.mask_weight > 0 and not self.p.external_mask and out["mask_logits"] is not None
                and bool(batch["has_dynamic"].any())):
            share = patch_mask(batch["dynamic"].float(), self.cfg.patch_size)                 # [B, T, V, P]
            keep = batch["has_dynamic"].bool()
            terms["mask"] = mask_loss(out["mask_logits"][..., 0][keep], share[keep])
        weights = {"camera": self.p.camera_weight, "depth": self.p.depth_weight, "points": self.p.points_weight,
                   "mask": self.p.mask_weight}
        loss = sum(weights[k] * v for k, v in terms.items())
        return loss, {k: float(v.detach()) for k, v in terms.items()}

    def evaluate(self, model, loader) -> dict[str, float]:
        """Mean training loss terms over val windows (the metrics against truth: stages.report_geometry)."""
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            loss, terms = self.loss(model, batch)
            b = len(batch["images"])
            for k, v in {"loss": float(loss), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n += b
        return {k: v / max(n, 1) for k, v in sums.items()}
