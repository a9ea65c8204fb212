"""Image -> patch tokens by a conv whose stride is the patch size (DINOv2 / VGGT name ``proj``)."""
from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """``(N, C, H, W) -> (N, (H // p) * (W // p), D)`` row-major (``flatten=False``: ``(N, D, H // p, W // p)``).

    Pixels past the last whole patch are dropped (the conv's floor), e.g. 128 px at patch 14 -> 9 x 9 patches."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768, flatten: bool = True):
        super().__init__()
        self.patch_size = int(patch_size)
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch rows and columns of an input of this size."""
        return height // self.patch_size, width // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)                              # (N, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2) if self.flatten else x
