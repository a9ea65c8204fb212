"""Benchmark of the GT cache build: prepare breakdown, per-sample cost split, worker scaling, fast vs devkit map.

    python -m benchmarks.bench_gt_cache [--params params.yaml] [--split train] [--repeat 8] [--workers 1 2]
                                   [--reference-samples 100] [--out reports/gt_cache_bench.json]

Scaling runs process the split's scenes ``--repeat`` times over (the same scenes, so a small world still gives
the pool enough work to amortise its start-up). Timings are machine-dependent: keep them out of cached outputs.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from models.common.params import load_section

from models.nuscenes import cache as C
from models.nuscenes.geometry import yaw_of


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--split", default="train")
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reference-samples", type=int, default=100)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    data, cp = load_section("data", args.params), load_section("cache", args.params)
    t0 = time.perf_counter()
    ctx = C.prepare(data, cp)
    res = {"dataroot": data.dataroot, "version": data.version, "prepare_seconds": round(time.perf_counter() - t0, 3),
           "prepare_breakdown": ctx["timings"]}
    C._CTX = ctx
    scenes = ctx["scene_tokens"][args.split]
    n = sum(len(ctx["chains"][t]) for t in scenes)

    # per-sample cost: everything vs the map part alone (same samples, fast path)
    for tok in scenes[:1]:  # warm-up (first-call costs)
        C.process_scene(tok)
    t = time.perf_counter()
    for tok in scenes:
        C.process_scene(tok)
    total = time.perf_counter() - t
    poses = []
    for tok in scenes:
        loc = ctx["nusc"].get("log", ctx["nusc"].get("scene", tok)["log_token"])["location"]
        for st in ctx["chains"][tok]:
            sd = ctx["nusc"].get("sample_data", ctx["nusc"].get("sample", st)["data"]["LIDAR_TOP"])
            e = ctx["nusc"].get("ego_pose", sd["ego_pose_token"])
            c = ctx["nusc"].get("calibrated_sensor", sd["calibrated_sensor_token"])
            g = C._pose([e])[0] @ C._pose([c])[0]
            poses.append((loc, g[:2, 3], float(yaw_of(g[:3, :3]))))
    t = time.perf_counter()  # the builder's path: one batched map call per scene
    start = 0
    for tok in scenes:
        m = len(ctx["chains"][tok])
        chunk = poses[start:start + m]
        start += m
        ctx["maps"][chunk[0][0]].scene_elements(np.array([c for _, c, _ in chunk]), np.array([y for *_, y in chunk]))
    map_time = time.perf_counter() - t
    res["per_sample_ms"] = {"all": round(total / n * 1e3, 3), "map": round(map_time / n * 1e3, 3),
                            "map_share": round(map_time / total, 3), "samples": n}

    # fast vs devkit-explorer reference on the first N samples
    from models.nuscenes.map_reference import reference_elements

    m = min(args.reference_samples, len(poses))
    t = time.perf_counter()
    for loc, centre, yaw in poses[:m]:
        ctx["maps"][loc].elements(centre, yaw)
    fast = time.perf_counter() - t
    t, worst = time.perf_counter(), 0.0
    refs = []
    for loc, centre, yaw in poses[:m]:
        lm = ctx["maps"][loc]
        refs.append(reference_elements(_explorer(ctx, loc), centre, yaw, lm.patch_size, lm.classes, lm.num_points))
    ref = time.perf_counter() - t
    for (loc, centre, yaw), r in zip(poses[:m], refs):
        e = ctx["maps"][loc].elements(centre, yaw)
        if e.points.shape == r.points.shape:
            worst = max(worst, float(np.abs(e.points - r.points).max(initial=0.0)))
        else:
            worst = float("inf")
    res["map_fast_vs_devkit"] = {"samples": m, "fast_single_sample_ms": round(fast / m * 1e3, 3),
                                 "devkit_ms": round(ref / m * 1e3, 3), "speedup": round(ref / fast, 1),
                                 "max_abs_diff_m": worst}

    # worker scaling over the repeated scene list
    ctx["scene_tokens"] = dict(ctx["scene_tokens"], _bench=scenes * args.repeat)
    res["scaling"] = {}
    for w in args.workers:
        t = time.perf_counter()
        C.run_split(ctx, "_bench", w, progress=False)
        dt = time.perf_counter() - t
        res["scaling"][str(w)] = {"samples": n * args.repeat, "seconds": round(dt, 3),
                                  "samples_per_second": round(n * args.repeat / dt, 1)}
    print(json.dumps(res, indent=1))
    if args.out:
        from models.common.io import write_json

        write_json(args.out, res)
    return res


def _explorer(ctx, loc):
    cache = ctx.setdefault("_explorers", {})
    if loc not in cache:
        from nuscenes.map_expansion.map_api import NuScenesMap

        cache[loc] = NuScenesMap(dataroot=str(ctx["data"].dataroot), map_name=loc).explorer
    return cache[loc]


if __name__ == "__main__":
    main()
