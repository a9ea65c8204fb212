"""Process group set-up and the few collectives the loop needs; all are no-ops in a single process.

DDP is used when the environment says so (``torchrun``/``torch.distributed.run`` set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or when the caller already
initialised a process group. Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool      # we initialised the group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", deterministic: bool = True) -> DistEnv:
    """Pick the device and, under torchrun, initialise the process group."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but CUDA is not available")
    if use_cuda and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    local = int(os.environ.get("LOCAL_RANK", rank if world > 1 else 0))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return DistEnv(rank, world, local, dev, owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "auto"):
    """Hold one process group over several ``train()`` calls of one torchrun process (a stage training two
    models): re-initialising a group after destroying it hangs on torchrun's rendezvous store."""
    env = setup(device)
    try:
        yield env
    finally:
        teardown(env)


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def any_true(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not env.enabled:
        return flag
    t = torch.tensor([float(flag)], device=_comm_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def weighted_mean(values: dict[str, float], weight: float, env: DistEnv) -> dict[str, float]:
    """``sum_r w_r * v_r / sum_r w_r`` per key (same keys on every rank); float64 on the wire."""
    if not env.enabled:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([weight * values[k] for k in keys] + [weight], dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(t)
    return {k: (t[i] / t[-1]).item() for i, k in enumerate(keys)}


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (in-memory pickle of small Python objects)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device(env))
    return box[0]


def gather(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
