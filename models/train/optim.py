"""AdamW over named parameter groups, the warmup + cosine learning-rate schedule, gradient clipping."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def default_param_groups(model: nn.Module) -> list[dict]:
    """Two groups: "decay" (ndim >= 2) and "no_decay" (biases, norm weights, scalars: no weight decay)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"name": "decay", "params": decay}, {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, groups: list[dict], cfg) -> torch.optim.AdamW:
    """AdamW whose groups keep ``name``, ``lr_mult`` and ``base_lr = cfg.lr * lr_mult``.

    Checks that group names are unique and that every trainable parameter is in exactly one group.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, str] = {}
    out = []
    for i, g in enumerate(groups):
        g = dict(g)
        name = str(g.setdefault("name", f"group{i}"))
        params = list(g["params"])
        if not params:
            raise ValueError(f"param group '{name}' is empty")
        if name in {o["name"] for o in out}:
            raise ValueError(f"param group name '{name}' is used twice")
        for p in params:
            if id(p) in seen:
                raise ValueError(f"parameter '{names.get(id(p), '?')}' is in groups '{seen[id(p)]}' and '{name}'")
            seen[id(p)] = name
        mult = float(g.pop("lr_mult", 1.0))
        g.update(params=params, lr_mult=mult, base_lr=cfg.lr * mult, lr=cfg.lr * mult)
        out.append(g)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"trainable parameters in no param group: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return torch.optim.AdamW(out, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


class WarmupCosine:
    """Per-step lr factor, applied to each group's ``base_lr`` before optimizer step ``s`` (0-based):

        s <  W:           f = (s + 1) / (W + 1)                       linear ramp, below the peak
        W <= s < T:       f = m + (1 - m) * (1 + cos(pi * p)) / 2,    p = (s - W) / max(1, T - 1 - W)

    so f(W) = 1 (the peak) and f(T - 1) = m (``min_lr_ratio``) at the last step; p is clamped to [0, 1].
    Stateless apart from the step, which the loop owns (and checkpoints).
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.total_steps, self.warmup_steps, self.min_lr_ratio = int(total_steps), int(warmup_steps), min_lr_ratio

    def factor(self, step: int) -> float:
        w, t, m = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if step < w:
            return (step + 1) / (w + 1)
        p = min(1.0, max(0.0, (step - w) / max(1, t - 1 - w)))
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Set every group's lr for ``step``; returns ``{group name: lr}`` for logging."""
        f = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return {g["name"]: g["lr"] for g in optimizer.param_groups}

    def state_dict(self) -> dict:
        return {"name": "warmup_cosine", "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio}


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm`` (0 = no clipping).

    Returns the norm before clipping (a 0-d tensor; inf/nan when a gradient is not finite).
    """
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm if max_norm > 0 else math.inf)
