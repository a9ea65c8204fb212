"""Seeding and RNG state as tensors (so it can live in a safetensors checkpoint, no pickle)."""
from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers, e.g. (cfg.seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader workers: numpy and python from the worker's torch seed (base_seed + worker_id)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict[str, torch.Tensor]:
    """Every global RNG of this process as CPU tensors."""
    mt = np.random.get_state()  # ('MT19937', keys uint32[624], pos, has_gauss, cached_gaussian)
    version, internal, gauss = random.getstate()  # (3, 625 ints, None | float)
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(mt[1].astype(np.int64)),
        "numpy_extra": torch.tensor([mt[2], mt[3], mt[4]], dtype=torch.float64),
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()  # current device: one device per rank
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    py = state["python"].tolist()
    has, gauss = state["python_gauss"].tolist()
    random.setstate((py[0], tuple(py[1:]), gauss if has else None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))
