"""Training checkpoints as single safetensors files (no pickle), written atomically.

Layout of ``last/best/final/epoch_NNNN.safetensors``:

    model.<state_dict key>          the unwrapped model's weights and buffers
    optim.<param index>.<name>      AdamW state (exp_avg, exp_avg_sq, step) per parameter
    rng.<rank>.<name>               every rank's RNG state (see seeding.rng_state)
    __metadata__["train_state"]     one JSON string: epoch, global_step, best, metrics, config,
                                    world_size, optimizer param_groups, scheduler, scaler

Exactly one metadata key: safetensors serialises its metadata map in an unspecified (Rust
HashMap) order, measured to differ between processes with several keys, which would break
byte-identical checkpoints. A file is written to ``.<name>.tmp-<pid>``, fsynced and renamed,
so a crash leaves either the previous file or the new one, never a partial one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

STATE_KEY = "train_state"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model/optimizer."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def _plain_tensors(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no storage (safetensors refuses shared/tied ones)."""
    out, storages = {}, set()
    for k, t in named.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], rng: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write model (+ optimizer, per-rank RNG, JSON ``state``) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    named = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    state = dict(state, format_version=FORMAT_VERSION)
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for idx, pstate in sd["state"].items():
            for name, v in pstate.items():
                if isinstance(v, torch.Tensor):
                    named[f"optim.{idx}.{name}"] = v
                else:
                    scalars[f"{idx}.{name}"] = v
        state["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalars}
    for rank, r in enumerate(rng or []):
        named.update({f"rng.{rank}.{k}": v for k, v in r.items()})
    meta = {STATE_KEY: json.dumps(state, sort_keys=True)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(_plain_tensors(named), str(tmp), metadata=meta)
        _publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Atomic byte copy (best/final/epoch_NNNN from last)."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        _publish(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def read_state(path: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint ({} for a plain weights file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for a corrupt header
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    return json.loads(meta[STATE_KEY]) if STATE_KEY in meta else {}


def read_tensors(path: str | Path, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors whose key starts with ``prefix``, with the prefix stripped."""
    with safe_open(str(path), "pt", device=str(device)) as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_weights(path: str | Path, model: nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load the model weights of a training checkpoint (or of a plain safetensors state_dict) into
    ``model``. ``strict``: missing, unexpected and wrongly shaped keys raise ``CheckpointError``
    naming them. Returns the checkpoint's JSON state ({} for a plain file)."""
    state = read_state(path)
    target = unwrap(model)
    weights = read_tensors(path, "model." if state else "")
    expected = target.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(weights) & set(expected)) if weights[k].shape != expected[k].shape]

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:10]) + (f" (+{len(keys) - 10} more)" if len(keys) > 10 else "")

    problems = [f"shape mismatch: {listed(shapes)}"] if shapes else []
    if strict:
        problems += [f"missing in file: {listed(missing)}"] if missing else []
        problems += [f"unexpected in file: {listed(unexpected)}"] if unexpected else []
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {type(target).__name__}; " + "; ".join(problems))
    target.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=strict)
    return state


def load_optimizer(path: str | Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore AdamW state saved by :func:`save_checkpoint`; group names must match."""
    saved = state["optimizer"]
    names_now = [g.get("name") for g in optimizer.param_groups]
    names_then = [g.get("name") for g in saved["param_groups"]]
    if names_now != names_then:
        raise CheckpointError(f"{path}: param groups {names_then} in the checkpoint, {names_now} in the optimizer")
    per_param: dict[int, dict[str, Any]] = {}
    for key, t in read_tensors(path, "optim.").items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = t
    for key, v in saved["scalars"].items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in saved["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def load_rng(path: str | Path, rank: int) -> dict[str, torch.Tensor]:
    return read_tensors(path, f"rng.{rank}.")
