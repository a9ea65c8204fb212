"""Glue between the map detector, its samples and the shared training loop.

Optimiser (the seed's): AdamW over three parameter groups with their own learning rates, ``qformer`` (Q-Former,
its query tokens, the camera embedding, the input and language projections: ``lr_qformer``), ``queries`` (map
queries: ``lr_queries``) and ``decoder`` (``lr_decoder``), weight decay on every parameter, betas (0.9, 0.999),
warm-up + cosine, clipping. The frozen language model and image encoder are in no group (no optimiser state);
``freeze_lm: false`` adds an ``lm`` group (``lr_lm``) and ``freeze_encoder: false`` an ``encoder`` group
(``lr_qformer``). The loss is MapTR's (:class:`.losses.MapDetectionLoss`) on coordinates normalised to the patch.
"""
from __future__ import annotations

import torch

from models.train import TrainConfig, TrainTask

from .config import MapDetConfig
from .losses import MapDetectionLoss, MapLossWeights

GROUP_SHORT = {"qformer": "q", "queries": "m", "decoder": "d", "lm": "lm", "encoder": "e"}


def mapdet_train_config(p) -> TrainConfig:
    return TrainConfig.from_dict({
        "epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr_decoder, "weight_decay": p.weight_decay,
        "betas": [0.9, 0.999], "warmup_steps": p.warmup_steps, "grad_clip": p.grad_clip, "amp": p.amp,
        "seed": p.seed, "log_every": 5, "keep_every_epochs": p.keep_every_epochs,
        "eval_every_epochs": p.eval_every_epochs}, section="mapdet")


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0                                              # uint8 [B, N, 3, S, S] -> [0, 1]


class MapDetTask(TrainTask):
    monitor, mode = "loss", "min"

    def __init__(self, cfg: MapDetConfig, p):
        self.cfg, self.p = cfg, p
        self.criterion = MapDetectionLoss(MapLossWeights(cls=p.cls_weight, pts=p.pts_weight, dir=p.dir_weight),
                                          num_classes=cfg.num_classes)
        self.provenance: dict = {}

    def build_model(self):
        from .sources import build_detector

        model, self.provenance = build_detector(self.cfg, self.p, seed=self.p.seed)
        return model

    def param_groups(self, model) -> list[dict]:
        lrs = {"qformer": self.p.lr_qformer, "queries": self.p.lr_queries, "decoder": self.p.lr_decoder,
               "lm": self.p.lr_lm, "encoder": self.p.lr_qformer}
        out = []
        for name, named in model.groups().items():
            params = [q for _, q in named if q.requires_grad]
            if params:
                out.append({"name": name, "params": params, "lr_mult": lrs[name] / self.p.lr_decoder})
        return out

    def loss(self, model, batch):
        """MapTR's loss normalised by the GLOBAL batch's GT count (all-reduced under DDP, as DETR's num_boxes)."""
        out = model(images_to_float(batch["images"]))
        num_gt = batch["gt_valid"].sum().float()
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            torch.distributed.all_reduce(num_gt)
        total, logs = self.criterion(out["logits"].float(), out["points"].float(), batch["gt_points"],
                                     batch["gt_labels"], batch["gt_closed"], batch["gt_valid"],
                                     num_gt=max(float(num_gt), 1.0) / world)
        return total, logs

    def evaluate(self, model, loader) -> dict[str, float]:
        """Mean over validation samples of each sample's loss terms (each normalised by its own GT count, so the
        value does not depend on how samples are batched or sharded; Chamfer AP: stages.report_mapdet)."""
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            out = model(images_to_float(batch["images"]))
            for i in range(len(batch["images"])):
                one = {k: batch[k][i:i + 1] for k in ("gt_points", "gt_labels", "gt_closed", "gt_valid")}
                loss, terms = self.criterion(out["logits"][i:i + 1].float(), out["points"][i:i + 1].float(),
                                             one["gt_points"], one["gt_labels"], one["gt_closed"], one["gt_valid"])
                for k, v in {"loss": float(loss), **terms}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def epoch_log(self, epoch, train_logs, val, lrs) -> str:
        lr = " ".join(f"{GROUP_SHORT.get(g, g)}={v:.2e}" for g, v in lrs.items())
        parts = " ".join(f"{k}={v:.4f}" for k, v in train_logs.items() if k.startswith("loss"))
        vals = f" | val loss={val['loss']:.4f}" if "loss" in val else ""
        return f"epoch {epoch}: {parts}{vals} | LR: {lr}"
