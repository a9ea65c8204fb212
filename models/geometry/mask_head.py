"""The dynamic mask head and its fusion with an external mask.

Both PAGE-4D mask heads load (``/work/shared/design/checkpoints.md`` §1; told apart by the shape of
``head0.2.weight``). Each maps the patch tokens of one frame, as a ``[C, h, w]`` grid, to a per-patch *dynamic
logit* ``M~`` (large = moving):

* ``eval`` (PAGE-4D evaluation release, ``checkpoint_150.pt``): ``head0`` = depthwise 3x3, GELU, depthwise 3x3,
  GELU, 1x1 to one channel, plus scalars ``alpha_logit`` and ``tau_logit``. PAGE-4D's suppression is
  ``s = clamp(softplus(alpha_logit) * sigmoid(-head0(x) / softplus(tau_logit)), 0, 1)``; ``M~ = logit(s)`` (clamped
  to 1e-6), so ``sigmoid(M~)`` is exactly PAGE-4D's dynamic score.
* ``official`` (PAGE-4D official release): the input is standardised per channel over the grid, ``head0`` =
  depthwise 3x3, GELU, 1x1 to ``hidden``, GELU, 1x1 to one channel, and PAGE-4D's score is
  ``sigmoid(head0(x_n) + mean_c(x_n))``; ``M~ = head0(x_n) + mean_c(x_n)`` (the channel mean detached, as there).

Fusion with an external mask ``M_ext`` in [0, 1] (e.g. SegAnyMo, pooled to patches): ``mask_gating: scalar``
gives ``M = sigmoid(alpha * M~ + beta * M_ext)`` with learnable ``alpha = beta = 1`` at init; ``mlp`` adds a 1x1 MLP
of ``(M~, M_ext)`` whose last layer starts at zero, so it starts as the scalar gate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("eval", "official")
GATINGS = ("scalar", "mlp")


class DynamicMaskHead(nn.Module):
    """``forward(patch_tokens [N, P, C], grid (h, w)) -> M~ [N, P]`` (dynamic logits)."""

    def __init__(self, dim: int, variant: str = "eval", hidden: int = 256):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"mask head variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        if variant == "eval":
            self.head0 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
                                       nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
                                       nn.Conv2d(dim, 1, 1))
            self.alpha_logit = nn.Parameter(torch.tensor(1.0).log())     # PAGE-4D's init: alpha 1, tau 2
            self.tau_logit = nn.Parameter(torch.tensor(2.0).log())
        else:
            self.head0 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
                                       nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 1, 1))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        n, p, c = tokens.shape
        h, w = grid
        if p != h * w:
            raise ValueError(f"mask head: {p} patch tokens do not form a {h} x {w} grid")
        x = tokens.transpose(1, 2).reshape(n, c, h, w)                           # [N, C, h, w]
        if self.variant == "eval":
            tau = (F.softplus(self.tau_logit) + 1e-6).clamp(min=1e-3)
            alpha = F.softplus(self.alpha_logit) + 1e-6
            suppress = (alpha * torch.sigmoid(-self.head0(x) / tau)).clamp(1e-6, 1 - 1e-6)
            logit = torch.logit(suppress)
        else:
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)
            xn = (x - mean) / std
            logit = self.head0(xn) + xn.mean(dim=1, keepdim=True).detach()
        return logit.reshape(n, p)                                               # [N, P]


class MaskGate(nn.Module):
    """``forward(M~ [..., P], M_ext [..., P] or None) -> M [..., P]`` in (0, 1)."""

    def __init__(self, gating: str = "scalar", hidden: int = 8):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"mask gating must be one of {GATINGS}, got {gating!r}")
        self.gating = gating
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(1.0))
        if gating == "mlp":
            self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, 1))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, logits: torch.Tensor, external: torch.Tensor | None = None) -> torch.Tensor:
        ext = torch.zeros_like(logits) if external is None else external.to(logits.dtype)
        z = self.alpha * logits + self.beta * ext
        if self.gating == "mlp":
            z = z + self.mlp(torch.stack((logits, ext), dim=-1)).squeeze(-1)
        return torch.sigmoid(z)


def patch_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """An image-resolution mask ``[..., H, W]`` (0/1 or probabilities) -> the share of each patch that is set,
    ``[..., (H/patch) * (W/patch)]`` row-major."""
    lead, (H, W) = mask.shape[:-2], mask.shape[-2:]
    pooled = F.avg_pool2d(mask.reshape(-1, 1, H, W).float(), patch)
    return pooled.reshape(*lead, -1)
