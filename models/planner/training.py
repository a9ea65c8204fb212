"""Glue between the planner (and its Ego-MLP baseline), the GT-cache samples and the shared training loop.

Both models minimise the L1 distance between predicted and GT waypoints (sum over x, y; mean over a sample's
valid future steps, then over samples), as AD-MLP does. Validation reports the mean loss and the L2 error at 1 / 2 / 3 s under the
UniAD rule (per step, invalid steps count 0 in the denominator); ``l2_avg`` picks ``best.safetensors``. The stage
validates on the selection scenes (the last ``planner.select_scenes`` scenes of train, not trained on), never on
the reported val split. The full metric set (both conventions, collisions) is computed by ``stages.report_planner``.

With ``planner.ego_path = residual`` the planner embeds the trained Ego-MLP (its ``best`` weights) as its ego path
and learns a correction on top (models/planner/model.py). With ``fused`` its ego path is a fresh Ego-MLP-shaped MLP
over the Ego-MLP's features and the perception head's outputs, trained with the planner. With a perception head the
planner's loss adds ``perception_weight`` x the smooth-L1 (beta 0.1) between the head's outputs and the cache's
corridor targets (models/planner/perception.py), both standardised by the training samples' target statistics.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.common.params import PlannerParams
from models.planner.ego_mlp import EgoMLP, ego_features, feature_dim, route_features
from models.planner.config import PlannerConfig
from models.planner.model import ViTPlannerV2
from models.planner.perception import PERCEPTION_TARGETS
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
    """ViT Planner V2 on planner samples; the ego status is standardised by the training samples' statistics.

    ``ego_path_state``: the trained Ego-MLP's state dict, the residual's ego path (``ego_path = residual``; None
    for a model whose weights are loaded afterwards, as in the report). ``fused_stats``: (mean, std) of the fused
    ego path's input, the Ego-MLP features then the perception targets (``ego_path = fused``; None likewise).
    ``target_stats``: (mean, std) of the perception targets, standardising the auxiliary loss."""

    def __init__(self, p: PlannerParams, ego_mean: np.ndarray | None, ego_std: np.ndarray | None,
                 history_steps: int, route_points: int, ego_path_state: dict | None = None,
                 fused_stats: tuple | None = None, target_stats: tuple | None = None):
        self.p, self.ego_mean, self.ego_std = p, ego_mean, ego_std
        self.history_steps, self.route_points, self.ego_path_state = history_steps, route_points, ego_path_state
        self.fused_stats = fused_stats
        k = len(PERCEPTION_TARGETS)
        self.target_stats = tuple(torch.as_tensor(x, dtype=torch.float32) for x in target_stats) if target_stats \
            else (torch.zeros(k), torch.ones(k))

    def build_model(self) -> ViTPlannerV2:
        model = build_planner(self.p, self.history_steps, self.route_points, self.ego_path_state)
        if self.p.use_ego_status and self.ego_mean is not None:
            model.set_ego_normalization(self.ego_mean, self.ego_std)
        if self.p.ego_path == "fused" and self.fused_stats is not None:
            model.ego_path.set_normalization(*self.fused_stats)
        if model.perception is not None:
            model.perception.set_target_normalization(*self.target_stats)
        return model

    def outputs(self, model, batch) -> dict:
        p = self.p
        if p.ego_path == "fused":
            return model(batch["frames"], None, None, ego_features(batch, p.mlp_use_command, p.mlp_route_input))
        ego = batch["ego_status"] if p.use_ego_status else None
        feats = ego_features(batch, p.mlp_use_command, p.mlp_route_input) if p.ego_path == "residual" else None
        return model(batch["frames"], ego, route_features(batch, p.route_input), feats)

    def predict(self, model, batch) -> torch.Tensor:
        return self.outputs(model, batch)["waypoints"]

    def loss(self, model, batch):
        valid = batch["target_valid"].float()
        out = self.outputs(model, batch)
        pred = out["waypoints"]
        loss = waypoint_l1(pred, batch["target"], valid)
        with torch.no_grad():
            logs = {"l2": (uniad_l2_steps(pred, batch["target"], valid).sum() / valid.sum().clamp_min(1)).item()}
        if "perception" in out:
            aux = perception_loss(out["perception"], batch["perception_target"], *self.target_stats)
            logs["perception"] = float(aux.detach())
            if self.p.perception_weight > 0:
                loss = loss + self.p.perception_weight * aux
        return loss, logs


def perception_loss(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 0.1) between the perception head's outputs (B, K) and the standardised targets (B, K),
    mean over samples and values. The head thus predicts standardised values, which the fused ego path reads as
    they are (mean 0, std 1 in its input statistics: :func:`fused_statistics`)."""
    t = (target.float() - mean.to(target.device)) / std.to(target.device)
    return F.smooth_l1_loss(pred.float(), t, beta=0.1)


def build_planner(p: PlannerParams, history_steps: int, route_points: int,
                  ego_path_state: dict | None = None) -> ViTPlannerV2:
    """The planner of ``p``; with ``ego_path = residual`` its ego path is an Ego-MLP (loaded from
    ``ego_path_state`` when given) whose parameters train only with ``ego_path_trainable``."""
    ego_path = None
    if p.ego_path == "residual":
        ego_path = build_ego_mlp(p, history_steps, route_points)
        if ego_path_state is not None:
            ego_path.load_state_dict(ego_path_state)
        ego_path.requires_grad_(p.ego_path_trainable)
    elif p.ego_path == "fused":  # a fresh Ego-MLP over [ego features, perception head outputs]
        ego_path = build_ego_mlp(p, history_steps, route_points, extra_inputs=len(PERCEPTION_TARGETS))
    return ViTPlannerV2(PlannerConfig.from_params(p, route_points), ego_path=ego_path)


class EgoMLPTask(_WaypointTask):
    """The Ego-MLP baseline; feature statistics from the train split."""

    def __init__(self, p: PlannerParams, history_steps: int, feat_mean: np.ndarray | None,
                 feat_std: np.ndarray | None, route_points: int = 0):
        self.p, self.history_steps, self.feat_mean, self.feat_std = p, history_steps, feat_mean, feat_std
        self.route_points = route_points

    def build_model(self) -> EgoMLP:
        model = build_ego_mlp(self.p, self.history_steps, self.route_points)
        if self.feat_mean is not None:
            model.set_normalization(self.feat_mean, self.feat_std)
        return model

    def predict(self, model, batch) -> torch.Tensor:
        return model(ego_features(batch, self.p.mlp_use_command, self.p.mlp_route_input))["waypoints"]


def build_ego_mlp(p: PlannerParams, history_steps: int, route_points: int = 0, extra_inputs: int = 0) -> EgoMLP:
    return EgoMLP(feature_dim(history_steps, p.ego_status_dim, p.mlp_use_command, p.mlp_route_input, route_points)
                  + extra_inputs, p.mlp_hidden_dim, p.mlp_layers, p.future_steps)


def route_points_of(samples) -> int:
    """R, the route points per sample of a :class:`PlannerSamples` split (0 for a cache without them)."""
    return int(samples.arrays["route_points"].shape[1]) if "route_points" in samples.arrays else 0


def feature_statistics(samples, p: PlannerParams, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the Ego-MLP's :func:`ego_features` over a :class:`PlannerSamples` split (or its
    ``indices``; no images read)."""
    data = EgoOnly(samples, indices)
    feats = ego_features({k: torch.from_numpy(np.asarray(v)) for k, v in data.arrays.items()},
                         p.mlp_use_command, p.mlp_route_input).double()
    return feats.mean(0).float().numpy(), feats.std(0, unbiased=False).clamp_min(1e-3).float().numpy()


def fused_statistics(feat_mean: np.ndarray, feat_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fused ego path's input statistics: the Ego-MLP features' then (0, 1) for the standardised perception."""
    k = len(PERCEPTION_TARGETS)
    return (np.concatenate([feat_mean, np.zeros(k, np.float32)]).astype(np.float32),
            np.concatenate([feat_std, np.ones(k, np.float32)]).astype(np.float32))


def target_statistics(samples, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (floored at 1e-3) of the perception targets over a split (or its ``indices``)."""
    t = samples.arrays["perception_target"].astype(np.float64)
    t = t if indices is None else t[np.asarray(indices)]
    return t.mean(0).astype(np.float32), np.maximum(t.std(0), 1e-3).astype(np.float32)


class EgoOnly(torch.utils.data.Dataset):
    """A planner split (or its ``indices``) without the frames (for the Ego-MLP: nothing is decoded per item)."""

    KEYS = ("ego_status", "ego_history", "ego_history_valid", "command", "route_command", "route_points",
            "route_valid", "target", "target_valid")

    def __init__(self, samples, indices=None):
        pick = slice(None) if indices is None else np.asarray(indices)
        self.arrays = {k: samples.arrays[k][pick] for k in self.KEYS if k in samples.arrays}

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
