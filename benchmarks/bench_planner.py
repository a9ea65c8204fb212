"""Planner training: samples/s and peak memory with and without 2x2 compression, and the data-loading wait.

    python -m benchmarks.bench_planner [--params params.yaml] [--cache data/cache] [--sizes 128 224]
                                       [--steps 6] [--warmup 2] [--memory-steps 2] [--data-steps 0]
                                       [--data-warmup 2] [--workers 0 2] [--device auto|cpu|cuda] [--threads 0]
                                       [--skip-compute] [--skip-data] [--json PATH]
    python -m benchmarks.bench_planner --sizes 128 --steps 2 --warmup 1 --data-steps 3   # a quick look

1. Compute: for each img_size in --sizes, ``use_2x2_compression`` false (the baseline) and true (the ``planner``
   section of --params otherwise), full optimiser steps as the shared loop does them (lr schedule, forward + L1
   loss of ``PlannerTask``, backward, gradient clipping, AdamW over the loop's param groups, the loop's
   deterministic mode) on one synthetic batch of the data's shape (uint8 frames, planner.batch_size samples).
   Step time: both models in one process, --warmup steps each, then --steps steps interleaved (off, on, off,
   on, ...) so that a change in the machine's load does not bias the ratio; the median -> samples/s. Peak
   memory: each configuration alone in a fresh spawned process for --memory-steps steps, its maximum RSS minus
   its RSS after the imports (and, on CUDA, ``torch.cuda.max_memory_allocated``). Tokens per frame: encoder
   patches (G x G, G = img_size // patch_size) and connector tokens (G' x G' with compression, else G x G).
2. Data: the default model on the real ``PlannerSamples`` of --cache through a DataLoader built as the loop
   builds it (DistributedSampler with shuffle, batch planner.batch_size): with the default ``image_cache_mb``
   (every image decoded once up-front; that decode is timed) and with ``image_cache_mb: 0`` (decode per item)
   for each of --workers. Data wait = time in ``next(iterator)`` (creating the iterator, i.e. starting the
   workers, included); its share of the step time over --data-steps steps (0: one epoch) from a fresh
   iterator, after --data-warmup steps on a throwaway one.

Ratios compare configurations of the same run. Timings go to the console (and --json), never into cached
outputs: they depend on the machine and on whatever else it is running.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import time
import traceback

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from models.common.params import PlannerParams, load_section
from models.planner.data import PlannerSamples
from models.planner.model import compressed_grid, count_parameters
from models.planner.training import PlannerTask, planner_config
from models.train import distributed as D
from models.train.loop import to_device
from models.train.optim import WarmupCosine, build_optimizer, clip_gradients
from models.train.seeding import seed_everything, worker_init_fn


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------------------------------
# One training step, as models/train/loop.py does it
# --------------------------------------------------------------------------------------------------


class _Trainer:
    """Model, optimizer, schedule and step of the shared loop for ``PlannerTask`` (single process)."""

    def __init__(self, p: PlannerParams, device: str, ego_mean=None, ego_std=None):
        self.cfg = planner_config(p)
        self.env = D.setup(device, self.cfg.deterministic)
        self.device = self.env.device
        if self.cfg.deterministic:  # as train() does
            torch.use_deterministic_algorithms(True, warn_only=True)
        ego_mean = np.zeros(p.ego_status_dim, np.float32) if ego_mean is None else ego_mean
        ego_std = np.ones(p.ego_status_dim, np.float32) if ego_std is None else ego_std
        self.task = PlannerTask(p, ego_mean, ego_std)
        seed_everything(self.cfg.seed)
        self.model = self.task.build_model().to(self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.task.param_groups(self.model), self.cfg)
        amp = self.cfg.amp and (self.device.type != "cpu" or torch.amp.is_autocast_available("cpu"))
        self.autocast_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp and self.device.type == "cuda" else None
        self.schedule = WarmupCosine(10_000, self.cfg.warmup_steps, self.cfg.min_lr_ratio)
        self.params = [q for g in self.optimizer.param_groups for q in g["params"]]
        self.n = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, batch) -> float:
        self.schedule.apply(self.optimizer, self.n)
        batch = to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss, _ = self.task.loss(self.model, batch)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = clip_gradients(self.params, self.cfg.grad_clip)
        loss_val, _ = torch.stack([loss.detach().float(), norm.float()]).tolist()  # the loop's per-step sync
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.sync()
        self.n += 1
        return loss_val


def _synthetic_batch(p: PlannerParams, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    n, s = len(p.cameras), p.img_size
    speed = torch.rand(batch, 1, 1, generator=g) * 10.0                               # m/s
    steps = torch.arange(1, p.future_steps + 1, dtype=torch.float32).view(1, -1, 1)  # (1, F, 1)
    target = torch.cat((torch.zeros(batch, p.future_steps, 1), speed * steps * p.dt), dim=-1)  # (B, F, 2) forward
    return {"frames": torch.randint(0, 256, (batch, p.frames, n, 3, s, s), dtype=torch.uint8, generator=g),
            "ego_status": torch.randn(batch, p.ego_status_dim, generator=g),
            "target": target, "target_valid": torch.ones(batch, p.future_steps, dtype=torch.bool)}


def _tokens(model, p: PlannerParams) -> dict:
    g = model.encoder.grid
    conn = compressed_grid(g, p.odd_grid) ** 2 if p.use_2x2_compression else g * g
    return {"grid": g, "patches_per_frame": g * g, "connector_tokens_per_frame": conn,
            "encoder_tokens_per_sample": p.frames * len(p.cameras) * g * g,
            "memory_tokens_per_sample": int(model.num_memory_tokens)}


# --------------------------------------------------------------------------------------------------
# Child-process measurements
# --------------------------------------------------------------------------------------------------


def measure_memory(p: PlannerParams, device: str, steps: int) -> dict:
    """``steps`` optimiser steps of one configuration (run in a fresh process: its peak memory is the figure)."""
    tr = _Trainer(p, device)
    batch = _synthetic_batch(p, p.batch_size)
    for _ in range(steps):
        tr.step(batch)
    return {"img_size": p.img_size, "use_2x2_compression": p.use_2x2_compression, **_tokens(tr.model, p),
            "params": count_parameters(tr.model), "connector_params": count_parameters(tr.model.connector),
            "memory_steps": steps, "device": str(tr.device)}


def measure_timing(ps: list[PlannerParams], device: str, steps: int, warmup: int) -> list[dict]:
    """Step times of several configurations in one process, interleaved (A B A B ...) after ``warmup`` steps
    each, so that a change in the machine's load between configurations does not bias their ratio."""
    trainers = [_Trainer(p, device) for p in ps]
    batches = [_synthetic_batch(p, p.batch_size) for p in ps]
    if trainers[0].device.type == "cuda":
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    for tr, b in zip(trainers, batches):
        for _ in range(warmup):
            tr.step(b)
    times: list[list[float]] = [[] for _ in ps]
    for _ in range(steps):
        for i, (tr, b) in enumerate(zip(trainers, batches)):
            t = time.perf_counter()
            tr.step(b)
            times[i].append(time.perf_counter() - t)
    out = []
    for p, ts in zip(ps, times):
        med = statistics.median(ts)
        out.append({"img_size": p.img_size, "use_2x2_compression": p.use_2x2_compression, "batch": p.batch_size,
                    "steps": steps, "warmup": warmup, "seconds_per_step_median": round(med, 4),
                    "seconds_per_step_min": round(min(ts), 4), "seconds_per_step_max": round(max(ts), 4),
                    "samples_per_second": round(p.batch_size / med, 2),
                    "seconds_per_step_all": [round(t, 3) for t in ts]})
    return out


def measure_data(p: PlannerParams, device: str, cache: str, split: str, steps: int, warmup: int) -> dict:
    t = time.perf_counter()
    ds = PlannerSamples(cache, split, p)
    init_s = time.perf_counter() - t
    tr = _Trainer(p, device, *ds.ego_statistics())
    cfg, env = tr.cfg, tr.env
    gen = torch.Generator()
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed, drop_last=cfg.drop_last)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=tr.task.collate_fn, pin_memory=env.device.type == "cuda",
                        drop_last=cfg.drop_last, worker_init_fn=worker_init_fn, generator=gen)
    per_epoch = len(loader)
    steps = steps or per_epoch
    epoch = 0

    def fresh_iter():
        nonlocal epoch
        sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed + epoch)
        epoch += 1
        return iter(loader)

    it = fresh_iter()  # warm-up on a throwaway iterator (model first-call costs, worker start)
    for _ in range(min(warmup, per_epoch)):
        tr.step(next(it))
    del it
    waits, totals, sizes = [], [], []
    it = None
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = None
        while batch is None:
            if it is None:
                it = fresh_iter()
            try:
                batch = next(it)
            except StopIteration:
                it = None
        t1 = time.perf_counter()
        tr.step(batch)
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        totals.append(t2 - t0)
        sizes.append(len(batch["frames"]))
    del it
    return {"image_cache_mb": p.image_cache_mb, "num_workers": p.num_workers, "images_cached": ds.images is not None,
            "samples": len(ds), "images": len(ds) * len(p.cameras), "dataset_init_seconds": round(init_s, 3),
            "steps": steps, "steps_per_epoch": per_epoch, "samples_timed": int(sum(sizes)),
            "wait_seconds_total": round(sum(waits), 4), "step_seconds_total": round(sum(totals), 4),
            "wait_ms_per_step_mean": round(1e3 * sum(waits) / steps, 2),
            "wait_ms_first": round(1e3 * waits[0], 2), "wait_ms_max": round(1e3 * max(waits), 2),
            "seconds_per_step_median": round(statistics.median(totals), 4),
            "wait_share": round(sum(waits) / sum(totals), 4),
            "samples_per_second": round(sum(sizes) / sum(totals), 2), "device": str(tr.device)}


def _child(conn, kind: str, kwargs: dict, threads: int, start_method: str) -> None:
    try:
        # a spawned child defaults to spawning its own children; DataLoader workers should start as they do
        # under `python -m stages.train_planner` (the parent's default, fork on Linux before Python 3.14)
        mp.set_start_method(start_method, force=True)
        if threads > 0:
            torch.set_num_threads(threads)
        base = _rss_mb()  # after the imports of this module (torch, the model, the data)
        cuda = kwargs["device"] == "cuda" or (kwargs["device"] == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if kind == "timing":
            kwargs["ps"] = [PlannerParams(**p) for p in kwargs["ps"]]
        else:
            kwargs["p"] = PlannerParams(**kwargs["p"])
        res = {"memory": measure_memory, "timing": measure_timing, "data": measure_data}[kind](**kwargs)
        info = {"threads": torch.get_num_threads(), "rss_after_imports_mb": round(base),
                "peak_rss_increase_mb": round(_rss_mb() - base)}
        if cuda:
            info["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
        conn.send(("ok", {"result": res, **info}))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(kind: str, threads: int, **kwargs) -> dict:
    """``measure_<kind>(**kwargs)`` in a fresh spawned interpreter; returns ``{"result": ..., "threads",
    "rss_after_imports_mb", "peak_rss_increase_mb" [, "cuda_max_allocated_mb"], "process_wall_seconds"}``."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, kind, kwargs, threads, mp.get_start_method()))
    t = time.perf_counter()
    proc.start()
    send.close()
    try:
        status, res = recv.recv()
    except EOFError:
        proc.join()
        status, res = "error", f"child exited with code {proc.exitcode} before reporting"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"bench_planner: {kind} measurement failed in the child process:\n{res}")
    res["process_wall_seconds"] = round(time.perf_counter() - t, 2)
    return res


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def markdown(res: dict) -> str:
    out = []
    rows = res.get("compute", [])
    if rows:
        cuda = any("cuda_max_allocated_mb" in r for r in rows)
        r0 = rows[0]
        title = (f"Full optimiser steps, batch {r0['batch']}, {r0['threads']} threads, {r0['device']}; s / step: median "
                 f"of {r0['steps']} after {r0['warmup']} warm-up, compression off and on interleaved in one process; "
                 f"peak memory: a fresh process per configuration ({r0['memory_steps']} steps):")
        cols = ["img_size", "2x2 compression", "patches / frame", "connector tokens / frame",
                "tokens / sample (encoder -> decoder memory)", "parameters", "s / step", "samples / s",
                "peak RSS increase"] + (["CUDA peak allocated"] if cuda else [])
        out += [title, "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in rows:
            out.append(f"| {r['img_size']} | {'on' if r['use_2x2_compression'] else 'off'} | "
                       f"{r['patches_per_frame']} ({r['grid']}x{r['grid']}) | {r['connector_tokens_per_frame']} | "
                       f"{r['encoder_tokens_per_sample']} -> {r['memory_tokens_per_sample']} | "
                       f"{r['params'] / 1e6:.2f} M | {r['seconds_per_step_median']:.3f} | "
                       f"{r['samples_per_second']:.1f} | {_fmt_mb(r['peak_rss_increase_mb'])} |"
                       + (f" {_fmt_mb(r.get('cuda_max_allocated_mb', 0))} |" if cuda else ""))
        out.append("")
        for size, rt in res.get("compression_ratios", {}).items():
            out.append(f"- {size} px, compression on / off: samples/s x{rt['samples_per_second']}, "
                       f"peak memory x{rt['peak_memory']}, decoder memory tokens x{rt['memory_tokens']}, "
                       f"parameters x{rt['params']}")
        out.append("")
    rows = res.get("data", [])
    if rows:
        title = (f"Data wait on the real PlannerSamples ({rows[0]['samples']} samples, "
                 f"{rows[0]['steps']} steps from a fresh iterator):")
        cols = ["images", "workers", "dataset init", "data wait / step (mean)", "first batch wait",
                "s / step (median)", "wait share"]
        out += [title, "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in rows:
            what = (f"decoded up-front (image_cache_mb {r['image_cache_mb']})" if r["images_cached"]
                    else f"decoded per item (image_cache_mb {r['image_cache_mb']})")
            out.append(f"| {what} | {r['num_workers']} | {r['dataset_init_seconds']:.2f} s | "
                       f"{r['wait_ms_per_step_mean']:.1f} ms | {r['wait_ms_first']:.1f} ms | "
                       f"{r['seconds_per_step_median']:.3f} | {100 * r['wait_share']:.1f} % |")
        out.append("")
    out.append(f"Whole benchmark: {res['wall_seconds']:.0f} s wall.")
    return "\n".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--split", default="train")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="img_size values to measure")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per compute configuration (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each configuration before them")
    ap.add_argument("--memory-steps", type=int, default=2,
                    help="steps of each configuration's own process that measures its peak memory")
    ap.add_argument("--data-steps", type=int, default=0, help="timed steps per data configuration; 0 = one epoch")
    ap.add_argument("--data-warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                    help="DataLoader workers for the per-item decoding (image_cache_mb 0) runs")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each child; 0 = torch's default")
    ap.add_argument("--skip-compute", action="store_true")
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if min(args.steps, args.memory_steps) < 1 or min(args.warmup, args.data_steps, args.data_warmup) < 0:
        ap.error("--steps and --memory-steps must be >= 1; --warmup, --data-steps and --data-warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    base = load_section("planner", args.params)
    t0 = time.perf_counter()
    res: dict = {"machine": {"cpus": mp.cpu_count(), "torch": torch.__version__,
                             "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                 "device_requested": args.device}

    def flat(r: dict) -> dict:
        return {**r.pop("result"), **r}

    if not args.skip_compute:
        rows = []
        for size in args.sizes:
            ps = [dataclasses.replace(base, img_size=size, use_2x2_compression=c) for c in (False, True)]  # off: base
            for p in ps:
                print(f"compute: img_size {size}, compression {'on' if p.use_2x2_compression else 'off'}: peak "
                      f"memory ({args.memory_steps} steps, fresh process) ...", file=sys.stderr, flush=True)
                rows.append(flat(run_isolated("memory", args.threads, p=dataclasses.asdict(p), device=args.device,
                                              steps=args.memory_steps)))
            print(f"compute: img_size {size}, compression off/on interleaved: {args.warmup} + {args.steps} steps "
                  "each ...", file=sys.stderr, flush=True)
            t = run_isolated("timing", args.threads, ps=[dataclasses.asdict(p) for p in ps], device=args.device,
                             steps=args.steps, warmup=args.warmup)
            for row, timing in zip(rows[-2:], t["result"]):
                row.update(timing, timing_process_wall_seconds=t["process_wall_seconds"])
        ratios = {}
        for size in args.sizes:
            off, on = (next(r for r in rows if r["img_size"] == size and r["use_2x2_compression"] == c)
                       for c in (False, True))
            mem_key = "cuda_max_allocated_mb" if "cuda_max_allocated_mb" in on else "peak_rss_increase_mb"
            ratios[str(size)] = {
                "samples_per_second": round(on["samples_per_second"] / off["samples_per_second"], 3),
                "seconds_per_step": round(on["seconds_per_step_median"] / off["seconds_per_step_median"], 3),
                "peak_memory": round(on[mem_key] / off[mem_key], 3) if off[mem_key] else math.nan,
                "peak_memory_measure": mem_key,
                "memory_tokens": round(on["memory_tokens_per_sample"] / off["memory_tokens_per_sample"], 3),
                "params": round(on["params"] / off["params"], 3)}
        res["compute"], res["compression_ratios"] = rows, ratios

    if not args.skip_data:
        res["data"] = []
        configs = [(base.image_cache_mb, 0)] + [(0, w) for w in args.workers]
        for cache_mb, workers in configs:
            p = dataclasses.replace(base, image_cache_mb=cache_mb, num_workers=workers)
            print(f"data: image_cache_mb {cache_mb}, {workers} workers ...", file=sys.stderr, flush=True)
            res["data"].append(flat(run_isolated("data", args.threads, p=dataclasses.asdict(p), device=args.device,
                                                 cache=args.cache, split=args.split, steps=args.data_steps,
                                                 warmup=args.data_warmup)))

    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    print()
    print(markdown(res))
    if args.json:
        from models.common.io import write_json

        write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
