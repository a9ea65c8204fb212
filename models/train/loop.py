"""``train()``: the one training loop every model of the product uses.

A step (``step`` = optimizer updates done so far; update number ``step + 1`` is running):

    lr_g = base_lr_g * WarmupCosine.factor(step)        per group g, base_lr_g = cfg.lr * lr_mult_g
    loss, logs = task.loss(ddp_model, batch)             under autocast when cfg.amp
    backward (scaled on CUDA+amp) -> unscale -> clip to cfg.grad_clip -> finite check -> AdamW step

An epoch ends with validation (every ``eval_every_epochs`` and after the last epoch), then
``last.safetensors`` (+ ``best`` when ``task.monitor`` improved, ``epoch_NNNN`` per the policy,
``final`` after the last epoch), all written by rank 0 only.

Reproducibility: the model is built right after ``seed_everything(cfg.seed)``; the train order is
``DistributedSampler(seed=cfg.seed).set_epoch(epoch)`` (also in a single process, so one process
with global batch B and N ranks with B/N each see the same samples per step); DataLoader worker
seeds come from a generator reseeded per (seed, epoch, rank); the global RNGs of every rank are
checkpointed. Resuming from ``last`` therefore replays the uninterrupted run bit for bit.

Crash safety: an epoch's DVCLive rows and metrics.json are written before its ``last`` (a kill in between
resumes from the previous epoch, whose resume drops the later rows), and the copies of ``last`` an epoch ends
with (best, epoch_NNNN, final) are redone on resume (a kill between writing ``last`` and copying it).
``work_dir`` (models/train/workdir.py): train in a folder DVC does not delete and publish to ``out_dir`` /
``live_dir`` at the end, so a stage killed under ``dvc repro`` resumes there.
"""
from __future__ import annotations

import contextlib
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from models.common.params import ParamsError
from models.train import distributed as D
from models.train import workdir as W
from models.train.checkpoint import (
    copy_checkpoint,
    load_optimizer,
    load_rng,
    load_weights,
    read_state,
    save_checkpoint,
)
from models.train.config import TRAJECTORY_KEYS, TrainConfig
from models.train.live import LiveLog
from models.train.optim import WarmupCosine, build_optimizer, clip_gradients
from models.train.seeding import (
    derive_seed,
    rng_state,
    seed_everything,
    set_rng_state,
    worker_init_fn,
)
from models.train.task import TrainTask

CHECKPOINT_NAMES = ("last", "best", "final")


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; ``step`` is the failing update (1-based), ``checkpoint`` the last good one."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside (nested) dicts, lists and tuples moved to ``device``; anything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def _autocast(cfg: TrainConfig, device: torch.device):
    if not cfg.amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _loader(dataset: Dataset, batch: int, sampler, cfg: TrainConfig, task: TrainTask, env: D.DistEnv,
            drop_last: bool) -> tuple[DataLoader, torch.Generator]:
    gen = torch.Generator()  # reseeded per epoch; gives the loader's worker base seed
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=task.collate_fn, pin_memory=env.device.type == "cuda", drop_last=drop_last,
                        worker_init_fn=worker_init_fn, generator=gen)
    return loader, gen


def _evaluate(task: TrainTask, model: torch.nn.Module, val_set: Dataset, cfg: TrainConfig, env: D.DistEnv,
              per_rank: int, epoch: int) -> dict[str, float]:
    """Task metrics over val_set; sharded over ranks (weighted mean) or on rank 0 (broadcast)."""
    sharded = task.shard_eval and len(val_set) >= env.world_size
    if not sharded and not env.is_main:
        return D.broadcast(None, env)
    indices = list(range(env.rank, len(val_set), env.world_size)) if sharded else list(range(len(val_set)))
    loader, gen = _loader(val_set, per_rank, indices, cfg, task, env, drop_last=False)
    gen.manual_seed(derive_seed(cfg.seed, epoch, env.rank, 1))
    model.eval()
    try:
        with torch.no_grad(), _autocast(cfg, env.device):
            metrics = {k: float(v) for k, v in task.evaluate(model, loader).items()}
    finally:
        model.train()
    if task.monitor not in metrics:
        raise KeyError(f"{type(task).__name__}.evaluate() returned {sorted(metrics)}, "
                       f"which lacks the monitor metric '{task.monitor}'")
    return D.weighted_mean(metrics, len(indices), env) if sharded else D.broadcast(metrics, env)


def _recorded(cfg: TrainConfig) -> dict:
    """The config a checkpoint records: all but the loader's worker count, which changes no weight (so the
    checkpoint's bytes, a DVC output, do not depend on it)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "num_workers"}


def _clear_old(out_dir: Path) -> None:
    for path in [out_dir / f"{n}.safetensors" for n in CHECKPOINT_NAMES] + sorted(out_dir.glob("epoch_*.safetensors")):
        path.unlink(missing_ok=True)


def _epoch_copies(last: Path, out_dir: Path, epoch: int, improved: bool, cfg: TrainConfig) -> None:
    """The byte copies of ``last`` that end ``epoch``: best (when it improved), epoch_NNNN, final."""
    if improved and cfg.save_best:
        copy_checkpoint(last, out_dir / "best.safetensors")
    if cfg.keep_every_epochs and epoch % cfg.keep_every_epochs == 0:
        copy_checkpoint(last, out_dir / f"epoch_{epoch:04d}.safetensors")
    if epoch == cfg.epochs:
        copy_checkpoint(last, out_dir / "final.safetensors")


def _resume(last: Path, cfg: TrainConfig, steps_per_epoch: int, model, optimizer, scaler, env: D.DistEnv) -> dict:
    """Load model, optimizer, scaler and this rank's RNG from ``last``; returns its JSON state."""
    state = read_state(last)
    diffs = [f"{k}: {state['config'].get(k)!r} -> {getattr(cfg, k)!r}" for k in TRAJECTORY_KEYS
             if state["config"].get(k) != cfg.to_dict()[k]]
    if state.get("steps_per_epoch") != steps_per_epoch:
        diffs.append(f"steps_per_epoch: {state.get('steps_per_epoch')} -> {steps_per_epoch}")
    if diffs:
        raise ParamsError(f"{last}: cannot resume, the run changed ({'; '.join(diffs)}); "
                          f"delete {last.parent} or pass resume=False")
    load_weights(last, model)
    load_optimizer(last, optimizer, state)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if state["world_size"] == env.world_size:
        set_rng_state(load_rng(last, env.rank))
    else:
        warnings.warn(f"{last}: written by {state['world_size']} rank(s), resuming on {env.world_size}: "
                      "RNG streams reseeded, so the run is not bit-identical to an uninterrupted one")
        seed_everything(derive_seed(cfg.seed, 1 + env.rank, state["epoch"]))
    return state


def train(task: TrainTask, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig,
          out_dir: str | Path, live_dir: str | Path, resume: bool = True, progress: bool | None = None,
          work_dir: str | Path | None = None, fingerprint: dict | None = None) -> dict:
    """Train ``task`` and return a summary (see the module docstring; ``val_set=None``: no
    validation, no best). ``resume``: continue from ``out_dir/last.safetensors`` when present (its
    config must agree on every key in ``TRAJECTORY_KEYS``), else start fresh, removing old
    checkpoints. ``progress``: tqdm bar on rank 0 (None: only on a terminal).
    ``work_dir``: train there instead and publish to ``out_dir`` / ``live_dir`` after the last epoch; resume
    only from a work folder of the same run (``fingerprint``: what else identifies it, see
    :func:`models.train.workdir.fingerprint`), discarding another run's (models/train/workdir.py).
    Raises ``TrainingDiverged`` on a non-finite loss/gradient before touching any checkpoint."""
    env = D.setup(cfg.device, cfg.deterministic)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # filling every torch.empty with NaN costs ~10 % of a planner step and changes no result of correct code
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        work = None if work_dir is None else (Path(work_dir), fingerprint or {})
        return _train(task, train_set, val_set, cfg, Path(out_dir), Path(live_dir), resume, progress, env, work)
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        D.teardown(env)


def _train(task, train_set, val_set, cfg: TrainConfig, out_dir: Path, live_dir: Path, resume: bool,
           progress: bool | None, env: D.DistEnv, work: tuple[Path, dict] | None = None) -> dict:
    if cfg.batch_size % env.world_size:
        raise ParamsError(f"train.batch_size = {cfg.batch_size}: must be divisible by the {env.world_size} DDP ranks")
    if task.mode not in ("min", "max"):
        raise ValueError(f"{type(task).__name__}.mode = {task.mode!r}: must be 'min' or 'max'")
    per_rank = cfg.batch_size // env.world_size
    amp_cpu_ok = env.device.type != "cpu" or torch.amp.is_autocast_available("cpu")
    if cfg.amp and not amp_cpu_ok:
        warnings.warn("bf16 autocast is not available on this CPU; training in fp32")
        cfg = cfg.replace(amp=False)

    # Model, optimizer, schedule, data ---------------------------------------------------------------
    seed_everything(cfg.seed)
    model = task.build_model().to(env.device)
    optimizer = build_optimizer(model, task.param_groups(model), cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and env.device.type == "cuda" else None
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=cfg.drop_last)
    loader, gen = _loader(train_set, per_rank, sampler, cfg, task, env, drop_last=cfg.drop_last)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ParamsError(f"train.batch_size = {cfg.batch_size}: larger than the train set ({len(train_set)}) "
                          "with drop_last")
    if cfg.warmup_steps >= cfg.epochs * steps_per_epoch:
        raise ParamsError(f"train.warmup_steps = {cfg.warmup_steps}: must be smaller than the run's "
                          f"{cfg.epochs * steps_per_epoch} steps ({cfg.epochs} epochs x {steps_per_epoch})")
    schedule = WarmupCosine(cfg.epochs * steps_per_epoch, cfg.warmup_steps, cfg.min_lr_ratio)
    seed_everything(derive_seed(cfg.seed, 1 + env.rank))  # per-rank stream for dropout/augmentation

    # Resume or start fresh --------------------------------------------------------------------------
    ckpt_dir, live_run = out_dir, live_dir     # where this run writes (the work folder, if any)
    if work is not None:
        ckpt_dir, live_run = work[0], W.live_folder(work[0], live_dir)
        identity = {"task": f"{type(task).__module__}.{type(task).__qualname__}", "config": _recorded(cfg),
                    "device": env.device.type, "torch": torch.__version__, "steps_per_epoch": steps_per_epoch,
                    "live": live_run.name, "fingerprint": work[1]}
        resume = D.broadcast(W.prepare(ckpt_dir, identity, out_dir, live_dir, resume) if env.is_main else None,
                             env)
    last = ckpt_dir / "last.safetensors"
    start_epoch, step, best, best_epoch, resumed, val = 0, 0, None, None, None, {}
    last_good, good_epoch = None, 0
    if resume and last.is_file():
        state = _resume(last, cfg, steps_per_epoch, model, optimizer, scaler, env)
        start_epoch, step, resumed = state["epoch"], state["global_step"], state["epoch"]
        best, best_epoch, val = state["best"]["value"], state["best"]["epoch"], state.get("metrics") or {}
        last_good, good_epoch = last, start_epoch
        if env.is_main:
            _epoch_copies(last, ckpt_dir, start_epoch, best_epoch == start_epoch, cfg)  # a kill may have cut them
            print(f"{ckpt_dir}: resumed from epoch {start_epoch}/{cfg.epochs} (step {step})", file=sys.stderr,
                  flush=True)
    elif env.is_main:
        _clear_old(ckpt_dir)
    model_ddp = model
    if env.enabled:
        model_ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    live = LiveLog(live_run, resume_step=step if resumed is not None else None) if env.is_main else None
    train_logs: dict[str, float] = {}

    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            gen.manual_seed(derive_seed(cfg.seed, epoch, env.rank))
            model.train()
            sums: dict[str, float] = {}   # window sums of the logged values, and their counts
            counts: dict[str, int] = {}
            bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=True if not env.is_main else (None if progress is None else not progress))
            for i, batch in enumerate(bar):
                lrs = schedule.apply(optimizer, step)
                batch = to_device(batch, env.device)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(cfg, env.device):
                    loss, logs = task.loss(model_ddp, batch)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                norm = clip_gradients(params, cfg.grad_clip)
                loss_val, norm_val = torch.stack([loss.detach().float(), norm.float()]).tolist()
                # With a GradScaler a non-finite gradient is routine (the step is skipped, the scale
                # lowered); without one it is divergence. A non-finite loss always is.
                bad = not math.isfinite(loss_val) or (scaler is None and not math.isfinite(norm_val))
                if D.any_true(bad, env):
                    where = f"{last_good} (after epoch {good_epoch})" if last_good else "none (no epoch finished)"
                    raise TrainingDiverged(
                        f"training diverged at step {step + 1} (epoch {epoch + 1}, batch {i + 1}): "
                        f"loss {loss_val}, gradient norm {norm_val}; last good checkpoint (left untouched): {where}",
                        step + 1, last_good)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                step += 1
                values = {"loss": loss_val, **{k: float(v) for k, v in logs.items()}}
                if math.isfinite(norm_val):  # not finite: a step the GradScaler skipped
                    values["grad_norm"] = norm_val
                for k, v in values.items():
                    sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
                if step % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                    train_logs = D.weighted_mean({k: v / counts[k] for k, v in sums.items()}, 1.0, env)
                    if live is not None:
                        live.log({**{f"train/{k}": v for k, v in train_logs.items()},
                                  **{f"lr/{g}": lr for g, lr in lrs.items()}}, step)
                    bar.set_postfix(loss=f"{train_logs['loss']:.4g}")
                    sums, counts = {}, {}
            bar.close()

            # Validation, checkpoints, epoch summary -----------------------------------------------------
            is_last = epoch + 1 == cfg.epochs
            improved = evaluated = False
            if val_set is not None and ((epoch + 1) % cfg.eval_every_epochs == 0 or is_last):
                val, evaluated = _evaluate(task, model, val_set, cfg, env, per_rank, epoch), True
                improved = _improved(val[task.monitor], best, task.mode)
                if improved:
                    best, best_epoch = val[task.monitor], epoch + 1
            state = {"epoch": epoch + 1, "global_step": step, "steps_per_epoch": steps_per_epoch,
                     "world_size": env.world_size, "config": _recorded(cfg), "metrics": val,
                     "best": {"metric": task.monitor, "mode": task.mode, "value": best, "epoch": best_epoch},
                     "scheduler": dict(schedule.state_dict(), step=step),
                     "scaler": scaler.state_dict() if scaler is not None else {}}
            rngs = D.gather(rng_state(), env)  # after validation: exactly what the next epoch starts from
            if env.is_main:
                if evaluated:  # logs first: a resume from the previous epoch drops them again
                    live.log({f"val/{k}": v for k, v in val.items()}, step)
                live.flush()
                save_checkpoint(last, model, optimizer, state, rngs)
                _epoch_copies(last, ckpt_dir, epoch + 1, improved, cfg)
                line = task.epoch_log(epoch + 1, train_logs, val if evaluated else {}, lrs)
                if line:
                    tqdm.write(line)
            last_good, good_epoch = last, epoch + 1
        D.barrier(env)
    finally:
        if live is not None:
            live.close()
    if work is not None:
        if env.is_main:
            W.publish(ckpt_dir, out_dir, live_dir)
        D.barrier(env)

    task.model = model
    ckpts = {n: out_dir / f"{n}.safetensors" for n in CHECKPOINT_NAMES}
    return {"epochs": cfg.epochs, "global_step": step, "steps_per_epoch": steps_per_epoch,
            "world_size": env.world_size, "resumed_from_epoch": resumed, "train": train_logs, "val": val,
            "best": {"metric": task.monitor, "mode": task.mode, "value": best, "epoch": best_epoch},
            "checkpoints": {n: str(p) for n, p in ckpts.items() if p.is_file()}}
