"""``TrainConfig``: the hyperparameters the shared loop owns (everything but the model's own).

Fields follow the conventions of :mod:`models.common.params` (``_f`` metadata: ``min``/``gt``/``max``,
``length``...), so a params section can register ``TrainConfig`` directly in ``SECTIONS`` or embed
its keys and call :meth:`TrainConfig.from_dict`. Every check raises ``ParamsError`` naming the key.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from models.common.params import ParamsError, _check_value, _f

# Keys that change the optimisation trajectory: a resumed run must agree with its checkpoint on these.
# (num_workers, log_every and the checkpoint policy do not change the weights.)
TRAJECTORY_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "betas", "eps", "warmup_steps", "min_lr_ratio",
                   "grad_clip", "amp", "seed", "drop_last", "deterministic")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of any model (see models/train/loop.py for what each key does)."""

    epochs: int = _f(10, "passes over the train set", min=1)
    batch_size: int = _f(8, "GLOBAL batch per optimizer step; split evenly over DDP ranks", min=1)
    lr: float = _f(1.0e-4, "peak learning rate (a group's lr = lr * its lr_mult)", gt=0.0)
    weight_decay: float = _f(0.05, "AdamW decoupled weight decay (a group may override it)", min=0.0)
    betas: list = _f([0.9, 0.999], "AdamW betas, each in [0, 1)", length=2, item_min=0.0)
    eps: float = _f(1.0e-8, "AdamW epsilon", gt=0.0)
    warmup_steps: int = _f(100, "linear warmup steps before the peak", min=0)
    min_lr_ratio: float = _f(0.01, "lr at the last step of the cosine, as a fraction of the peak", min=0.0, max=1.0)
    grad_clip: float = _f(1.0, "max global L2 norm of the gradients; 0 = no clipping", min=0.0)
    amp: bool = _f(False, "mixed precision: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA")
    seed: int = _f(0, "seeds torch, numpy, python, the sampler and the loader workers", min=0)
    num_workers: int = _f(0, "DataLoader worker processes per rank", min=0)
    drop_last: bool = _f(False, "drop the last incomplete batch of each epoch")
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms during training (warn only)")
    device: str = _f("auto", "auto (CUDA if available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    log_every: int = _f(10, "optimizer steps between DVCLive train rows (mean over the window)", min=1)
    eval_every_epochs: int = _f(1, "validate every N epochs (and always after the last)", min=1)
    save_best: bool = _f(True, "write best.safetensors when the task's monitor metric improves")
    keep_every_epochs: int = _f(0, "also keep epoch_NNNN.safetensors every N epochs; 0 = never", min=0)

    def __post_init__(self) -> None:
        self._validate("TrainConfig")

    def _validate(self, source: str, section: str = "train") -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _check_value(f"{section}.{f.name}", getattr(self, f.name), hints[f.name], f.metadata, source)
            object.__setattr__(self, f.name, value)  # ints given for floats become floats
        for beta in self.betas:
            if not beta < 1.0:
                raise ParamsError(f"{source}: {section}.betas = {self.betas!r}: each beta must be < 1")

    @classmethod
    def from_dict(cls, values: dict, section: str = "train", source: str = "params") -> TrainConfig:
        """Build from a params dict; unknown keys, wrong types and bad values raise ``ParamsError``."""
        if not isinstance(values, dict):
            raise ParamsError(f"{source}: section '{section}' must be a mapping, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ParamsError(f"{source}: unknown key '{section}.{unknown[0]}'; allowed keys in '{section}': {names}")
        obj = cls.__new__(cls)  # validate with the caller's section name and source, then freeze
        defaults = cls()
        for name in names:
            object.__setattr__(obj, name, values.get(name, getattr(defaults, name)))
        obj._validate(source, section)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
