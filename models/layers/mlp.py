"""Feed-forward networks: ``Mlp`` (two layers, DINOv2 / timm names ``fc1``, ``act``, ``fc2``) and ``linear_stack``."""
from __future__ import annotations

from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def linear_stack(widths: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear(widths[0] -> widths[1]) - activation - ... - Linear(widths[-2] -> widths[-1]) (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
