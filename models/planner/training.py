"""Glue between the planner (and its Ego-MLP baseline), the GT-cache samples and the shared training loop.

Both models minimise the L1 distance between predicted and GT waypoints (sum over x, y; mean over a sample's
valid future steps, then over samples), as AD-MLP does. Validation reports the mean loss and the L2 error at 1 / 2 / 3 s under the
UniAD rule (per step, invalid steps count 0 in the denominator); ``l2_avg`` picks ``best.safetensors``.
The full metric set (both conventions, collisions) is computed by ``stages.report_planner``.
"""
from __future__ import annotations

import numpy as np
import torch

from models.common.params import PlannerParams
from models.planner.ego_mlp import EgoMLP, ego_features, feature_dim
from models.planner.config import PlannerConfig
from models.planner.model import ViTPlannerV2
from models.train import TrainConfig, TrainTask


def planner_config(p: PlannerParams) -> TrainConfig:
    return TrainConfig.from_dict({
        "epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr, "weight_decay": p.weight_decay,
        "warmup_steps": p.warmup_steps, "grad_clip": p.grad_clip, "amp": p.amp, "seed": p.seed,
        "num_workers": p.num_workers, "log_every": 5}, section="planner")


def mlp_config(p: PlannerParams, steps_per_epoch: int) -> TrainConfig:
    """AdamW at ``mlp_lr``, no weight decay, warm-up over the first epoch."""
    return TrainConfig.from_dict({
        "epochs": p.mlp_epochs, "batch_size": p.batch_size, "lr": p.mlp_lr, "weight_decay": 0.0,
        "warmup_steps": min(steps_per_epoch, p.mlp_epochs * steps_per_epoch - 1), "grad_clip": p.grad_clip,
        "seed": p.seed, "log_every": 20}, section="planner")


def waypoint_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean over its valid steps of |dx| + |dy|; then the mean over samples (a sample without a
    valid step counts 0). pred, target (B, F, 2), valid (B, F). A mean of per-sample values keeps DDP exact:
    the average of equal-sized rank batches is the global batch's value."""
    err = (pred.float() - target.float()).abs().sum(-1) * valid             # (B, F)
    return (err.sum(1) / valid.sum(1).clamp_min(1)).mean()


def uniad_l2_steps(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, F) L2 per sample and step, 0 where the GT step is invalid (UniAD masking)."""
    return torch.linalg.vector_norm(pred.float() - target.float(), dim=-1) * valid


class _WaypointTask(TrainTask):
    monitor, mode = "l2_avg", "min"

    def predict(self, model, batch) -> torch.Tensor:
        """(B, F, 2) waypoints for a collated batch; each task (planner, Ego-MLP) feeds its own inputs."""
        raise NotImplementedError  # abstract: PlannerTask and EgoMLPTask implement it

    def loss(self, model, batch):
        valid = batch["target_valid"].float()
        pred = self.predict(model, batch)
        loss = waypoint_l1(pred, batch["target"], valid)
        with torch.no_grad():
            l2 = (uniad_l2_steps(pred, batch["target"], valid).sum() / valid.sum().clamp_min(1)).item()
        return loss, {"l2": l2}

    def evaluate(self, model, loader) -> dict[str, float]:
        """Per-sample means: ``loss`` and the UniAD L2 at 1 / 2 / 3 s and their average."""
        loss_sum, l2_sum, count = 0.0, None, 0
        for batch in loader:
            valid = batch["target_valid"].float()
            pred = self.predict(model, batch)
            n = len(valid)
            loss_sum += float(waypoint_l1(pred, batch["target"], valid)) * n
            steps = uniad_l2_steps(pred, batch["target"], valid).sum(0)     # (F,)
            l2_sum = steps if l2_sum is None else l2_sum + steps
            count += n
        l2 = (l2_sum / max(count, 1)).tolist()
        out = {"loss": loss_sum / max(count, 1)}
        out.update({f"l2_{k}s": l2[2 * k - 1] for k in (1, 2, 3) if 2 * k - 1 < len(l2)})
        out["l2_avg"] = float(np.mean([out[k] for k in ("l2_1s", "l2_2s", "l2_3s") if k in out]))
        return out


class PlannerTask(_WaypointTask):
    """ViT Planner V2 on planner samples; the ego status is standardised by the train split's statistics."""

    def __init__(self, p: PlannerParams, ego_mean: np.ndarray, ego_std: np.ndarray):
        self.p, self.ego_mean, self.ego_std = p, ego_mean, ego_std

    def build_model(self) -> ViTPlannerV2:
        model = ViTPlannerV2(PlannerConfig.from_params(self.p))
        if self.p.use_ego_status:
            model.set_ego_normalization(self.ego_mean, self.ego_std)
        return model

    def predict(self, model, batch) -> torch.Tensor:
        ego = batch["ego_status"] if self.p.use_ego_status else None
        return model(batch["frames"], ego)["waypoints"]


class EgoMLPTask(_WaypointTask):
    """The Ego-MLP baseline; feature statistics from the train split."""

    def __init__(self, p: PlannerParams, history_steps: int, feat_mean: np.ndarray, feat_std: np.ndarray):
        self.p, self.history_steps, self.feat_mean, self.feat_std = p, history_steps, feat_mean, feat_std

    def build_model(self) -> EgoMLP:
        model = build_ego_mlp(self.p, self.history_steps)
        model.set_normalization(self.feat_mean, self.feat_std)
        return model

    def predict(self, model, batch) -> torch.Tensor:
        return model(ego_features(batch, self.p.mlp_use_command))["waypoints"]


def build_ego_mlp(p: PlannerParams, history_steps: int) -> EgoMLP:
    return EgoMLP(feature_dim(history_steps, p.ego_status_dim, p.mlp_use_command), p.mlp_hidden_dim,
                  p.mlp_layers, p.future_steps)


def feature_statistics(samples, use_command: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of :func:`ego_features` over a whole :class:`PlannerSamples` split (no images read)."""
    a = samples.arrays
    feats = ego_features({k: torch.from_numpy(np.asarray(a[k])) for k in
                          ("ego_history", "ego_history_valid", "ego_status", "command")}, use_command).double()
    return feats.mean(0).float().numpy(), feats.std(0, unbiased=False).clamp_min(1e-3).float().numpy()


class EgoOnly(torch.utils.data.Dataset):
    """A planner split without the frames (for the Ego-MLP: nothing is decoded per item)."""

    KEYS = ("ego_status", "ego_history", "ego_history_valid", "command", "target", "target_valid")

    def __init__(self, samples):
        self.arrays = {k: samples.arrays[k] for k in self.KEYS}

    def __len__(self) -> int:
        return len(self.arrays["target"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.arrays.items()}


@torch.no_grad()
def predict_split(model, dataset, predict_fn, batch_size: int = 32) -> np.ndarray:
    """(S, F, 2) float32 predictions over ``dataset`` in order (eval mode, CPU or the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out.append(predict_fn(model, batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 2), np.float32)
