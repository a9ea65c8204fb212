"""``MapDecoder``: the language model's hidden states at the map-query positions -> map elements.

    states [B, I, P, Dlm] -> Linear -> decoder_layers x Block (self-attention over all I * P slots)
      class head: LayerNorm + Linear on the mean over an instance's P slots  -> logits [B, I, C]
      point head: Mlp per slot, sigmoid                                      -> points [B, I, P, 2] in [0, 1]

As MapTR's head: per-instance classification (sigmoid focal, no background logit) and per-point regression in
coordinates normalised to the patch (x right over [-W/2, W/2], y forward over [-H/2, H/2]).
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers import Block, Mlp

from .config import MapDetConfig


class MapDecoder(nn.Module):
    def __init__(self, cfg: MapDetConfig):
        super().__init__()
        D = cfg.decoder_width
        self.input = nn.Linear(cfg.lm_width, D)
        self.slot_embed = nn.Parameter(torch.randn(cfg.num_points, D) * 0.02)     # which point of the polyline
        self.blocks = nn.ModuleList(Block(D, cfg.decoder_heads) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(D)
        self.class_head = nn.Linear(D, cfg.num_classes)
        self.point_head = Mlp(D, D, 2)
        nn.init.constant_(self.class_head.bias, -4.6)                             # focal-loss prior p = 0.01

    def forward(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        B, I, P, _ = states.shape
        x = self.input(states) + self.slot_embed                                  # [B, I, P, D]
        x = x.flatten(1, 2)                                                       # [B, I*P, D]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).view(B, I, P, -1)
        return {"logits": self.class_head(x.mean(2)),                            # [B, I, C]
                "points": torch.sigmoid(self.point_head(x))}                     # [B, I, P, 2]
