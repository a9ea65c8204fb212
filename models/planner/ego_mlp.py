"""Ego-MLP: the AD-MLP-like ego-state baseline (design/map_and_planning.md B.4), no perception.

Inputs per sample (:func:`ego_features`): the past LIDAR poses (x, y, yaw) of the ego history except the current
one (which is always 0), their validity flags, the ego status [speed, a_long, yaw_rate, vx, vy], the honest route
input of ``planner.mlp_route_input`` (:func:`route_features`) and, with ``planner.mlp_use_command``, the one-hot
GT high-level command (derived from the GT future: a leak, as in AD-MLP; kept as that ablation).
Features are standardised with train-set statistics kept as buffers, so a checkpoint carries them.

    x (B, D) -> [Linear -> ReLU] x (mlp_layers - 1) -> Linear -> (B, F * 2) -> waypoints (B, F, 2) metres

AD-MLP itself: Linear(21 -> 512) - ReLU - Linear(512 -> 512) - ReLU - Linear(512 -> 21), L1 loss.
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers import linear_stack

NUM_COMMANDS = 3
ROUTE_INPUTS = ("none", "command", "points")
ROUTE_SCALE_M = 10.0  # route points are divided by this (metres) before they enter a model


def route_features(batch: dict, mode: str) -> torch.Tensor | None:
    """The honest route input of a collated batch (the cache's route_* arrays, never the GT future):

        none     None
        command  (B, 3)        one-hot route_command (RIGHT, LEFT, FORWARD)
        points   (B, 3 + 3R)   one-hot route_command, route_points (R, 2) / 10 m flattened, route_valid (R,)
    """
    if mode == "none":
        return None
    parts = [nn.functional.one_hot(batch["route_command"].long(), NUM_COMMANDS).float()]
    if mode == "points":
        parts += [batch["route_points"].float().flatten(1) / ROUTE_SCALE_M, batch["route_valid"].float()]
    return torch.cat(parts, dim=1)


def route_dim(mode: str, route_points: int) -> int:
    """Width of :func:`route_features` for ``route_points`` (R) points per sample."""
    return {"none": 0, "command": NUM_COMMANDS, "points": NUM_COMMANDS + 3 * route_points}[mode]


def ego_features(batch: dict, use_command: bool, route_input: str = "none") -> torch.Tensor:
    """Planner items (collated) -> (B, D) float32 features (see the module docstring)."""
    hist = batch["ego_history"][:, :-1].float()                              # (B, H-1, 3) past poses
    valid = batch["ego_history_valid"][:, :-1].float()                       # (B, H-1)
    parts = [hist.flatten(1), valid, batch["ego_status"].float()]
    if use_command:
        parts.append(nn.functional.one_hot(batch["command"].long(), NUM_COMMANDS).float())
    route = route_features(batch, route_input)
    if route is not None:
        parts.append(route)
    return torch.cat(parts, dim=1)


def feature_dim(history_steps: int, ego_status_dim: int, use_command: bool, route_input: str = "none",
                route_points: int = 0) -> int:
    return ((history_steps - 1) * 4 + ego_status_dim + (NUM_COMMANDS if use_command else 0)
            + route_dim(route_input, route_points))


class EgoMLP(nn.Module):
    """forward(features (B, in_dim)) -> {"waypoints": (B, future_steps, 2)}."""

    def __init__(self, in_dim: int, hidden_dim: int, layers: int, future_steps: int):
        super().__init__()
        self.future_steps = future_steps
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.net = linear_stack([in_dim] + [hidden_dim] * (layers - 1) + [future_steps * 2], nn.ReLU)

    def set_normalization(self, mean, std) -> None:
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (features - self.feat_mean) / self.feat_std
        return {"waypoints": self.net(x).view(-1, self.future_steps, 2)}    # (B, F, 2)
