"""``TrainTask``: what a model brings to the shared loop (its model, loss, param groups and metrics)."""
from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.train.optim import default_param_groups


class TrainTask(abc.ABC):
    """Subclass once per model. The loop calls, in order:

    ``build_model()`` once, after seeding, so the initial weights are reproducible (load pretrained or
    converted weights here); ``param_groups(model)`` once; ``loss(model, batch)`` every step, under
    autocast, with ``model`` possibly DDP-wrapped (call ``model(...)``, not its submodules, so DDP
    syncs the gradients); ``evaluate(model, loader)`` under ``torch.no_grad()`` with the model in
    eval mode and unwrapped. After ``train()`` returns, ``task.model`` is the trained model.
    """

    monitor: str = "loss"            # key of evaluate()'s dict that decides best.safetensors
    mode: str = "min"                # "min" or "max"
    shard_eval: bool = True          # True: each DDP rank evaluates 1/N of val_set and the metrics are
    #                                  averaged weighted by shard size (exact for per-sample means).
    #                                  False: rank 0 evaluates all of val_set (ratios of sums, mAP).
    find_unused_parameters: bool = False   # passed to DistributedDataParallel
    collate_fn: Callable[[list], Any] | None = None   # DataLoader collate_fn (None: default_collate)

    model: nn.Module | None = None   # set by train()

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model on the CPU (the loop moves it to the device)."""

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW groups: ``{"name": str, "params": [...], "lr_mult": float = 1, "weight_decay": float = cfg}``.

        Every trainable parameter must be in exactly one group. Default: "decay" (matrices, kernels)
        and "no_decay" (biases, norms, scalars, ndim < 2).
        """
        return default_param_groups(model)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise (a mean over the batch) and named float components to log."""

    def epoch_log(self, epoch: int, train_logs: dict[str, float], val: dict[str, float],
                  lrs: dict[str, float]) -> str | None:
        """One line the loop prints (rank 0) after each epoch's validation; None: nothing."""
        return None

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader) -> dict[str, float]:
        """Validation metrics over ``loader`` (per-sample means if ``shard_eval``); must hold ``monitor``."""
