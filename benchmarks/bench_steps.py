"""Training steps of every training stage at the default params: time waiting for data, time computing, and the
model's FLOPs per second against the machine's float32 matmul peak, all measured in one run.

    python -m benchmarks.bench_steps [--steps 6] [--out reports/steps_bench.json]

Each stage's task, training set and loader are built as the stage builds them (same batch size, collate function
and ``num_workers``). After one warm-up step, ``--steps`` steps are timed in two parts: ``next(loader)`` (data wait)
and loss + backward + AdamW step (compute). A dataset that keeps what it read (the geometry windows) is also timed on
the same batches again, as in every epoch after the first. The FLOPs of one step (forward and backward) come from
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls, convolutions and attention: element-wise work
is left out, so the ratio to the matmul peak is a lower bound of how busy the cores are.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def _planner():
    from models.common.params import load_section
    from models.planner.data import PlannerSamples
    from models.planner.training import (PlannerTask, build_ego_mlp, feature_statistics, fused_statistics,
                                         planner_config, route_points_of, target_statistics)

    p = load_section("planner")
    data = PlannerSamples("data/cache", "train", p)
    fit = list(range(len(data)))
    history, route = int(data.cache.manifest["history_steps"]), route_points_of(data)
    mean, std = data.ego_statistics(fit)
    # as the stage builds it; the residual's ego path is an untrained Ego-MLP here (the same compute)
    ego_state = build_ego_mlp(p, history, route).state_dict() if p.ego_path == "residual" else None
    fused = fused_statistics(*feature_statistics(data, p, fit)) if p.ego_path == "fused" else None
    return (PlannerTask(p, mean, std, history, route, ego_state, fused, target_statistics(data, fit)), data,
            planner_config(p))


def _tokenizer():
    from models.common.params import load_section
    from models.tokenizer.training import TokenizerTask, TrackWindows, train_config

    p = load_section("tokenizer")
    data = TrackWindows("data/tracks", "train")
    return TokenizerTask(p, num_tracks=int(data.N), track_horizon=int(data.T)), data, train_config(p)


def _geometry():
    from models.common.params import load_section
    from models.geometry.config import GeometryConfig
    from models.geometry.training import GeometryTask, geometry_train_config
    from models.geometry.windows import open_windows

    g, p = load_section("geometry"), load_section("train_geometry")
    cfg = GeometryConfig.from_params(g)
    return (GeometryTask(cfg, p, "data/weights/geometry_init.safetensors"),
            open_windows(p, "train", cfg, "data/cache", cache_mb=p.image_cache_mb), geometry_train_config(p))


def _mapdet():
    from models.common.params import load_section
    from models.mapdet.config import MapDetConfig
    from models.mapdet.data import MapSamples
    from models.mapdet.training import MapDetTask, mapdet_train_config

    p = load_section("mapdet")
    data = MapSamples("data/cache", "train", p.cameras, p.image_size, p.image_cache_mb)
    cfg = MapDetConfig.from_params(p, data.num_points, len(data.classes))
    return MapDetTask(cfg, p), data, mapdet_train_config(p)


STAGES = {"train_tokenizer": _tokenizer, "train_planner": _planner, "train_geometry": _geometry,
          "train_mapdet": _mapdet}


def measure(name: str, steps: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    task, data, cfg = STAGES[name]()
    model = task.build_model()
    model.train()
    groups = task.param_groups(model)
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-5)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, collate_fn=task.collate_fn,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(0))
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss, _ = task.loss(model, batch)
        loss.backward()
        opt.step()

    step(next_batch())
    wait, compute = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next_batch()
        t1 = time.perf_counter()
        step(batch)
        compute.append(time.perf_counter() - t1)
        wait.append(t1 - t0)
    from models.geometry.data import WindowCache

    warm = None
    if isinstance(data, WindowCache):  # windows kept after their first read (image_cache_mb): the same batches
        loader.generator.manual_seed(0)  # again, as every epoch after the first reads them
        it = iter(loader)
        next_batch()
        warm = []
        for _ in range(steps):
            t0 = time.perf_counter()
            next_batch()
            warm.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as counter:
        loss, _ = task.loss(model, batch)
        loss.backward()
    flops = counter.get_total_flops()
    w, c = statistics.median(wait), statistics.median(compute)
    return {"stage": name, "batch_size": cfg.batch_size, "data_wait_s": w, "compute_s": c,
            "data_wait_share": w / (w + c), "flops_per_step": flops, "gflops_per_s": flops / c / 1e9,
            **({} if warm is None else {"data_wait_later_epochs_s": statistics.median(warm),
                                        "data_wait_share_later_epochs": statistics.median(warm) / (
                                            statistics.median(warm) + c)})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="reports/steps_bench.json")
    args = ap.parse_args(argv)
    from benchmarks.bench_budget import matmul_peak_gflops

    peak = matmul_peak_gflops()
    rows = []
    for name in STAGES:
        r = measure(name, args.steps)
        r["share_of_matmul_peak"] = r["gflops_per_s"] / peak
        rows.append(r)
        print(f"{name:16s} batch {r['batch_size']:2d}: data {1000 * r['data_wait_s']:7.1f} ms "
              f"({100 * r['data_wait_share']:4.1f} %), compute {1000 * r['compute_s']:7.1f} ms, "
              f"{r['gflops_per_s']:6.1f} GFLOP/s = {100 * r['share_of_matmul_peak']:4.1f} % of the matmul peak",
              flush=True)
        if "data_wait_later_epochs_s" in r:
            print(f"{'':16s} epochs after the first (windows kept in memory): data "
                  f"{1000 * r['data_wait_later_epochs_s']:7.1f} ms ({100 * r['data_wait_share_later_epochs']:4.1f} %)",
                  flush=True)
    print(f"matmul peak (float32, 2048^3): {peak:.0f} GFLOP/s")
    Path(args.out).write_text(json.dumps({"matmul_peak_gflops": peak, "stages": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
