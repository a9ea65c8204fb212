"""Geometry model cost: measured forward+backward time and peak memory at the params' size, and the full size's
FLOPs and activation memory computed analytically per attention kind.

    python -m benchmarks.bench_geometry [--params params.yaml] [--repeats 3] [--out reports/geometry_bench.json]

Measured: each configuration runs in its own process (one torch thread pair, as a stage gets on 2 cores), a
warm-up step, then the median of ``--repeats`` forward+backward steps on random images ``[1, T, V, 3, S, S]``
(S = geometry.img_size); peak memory is the process's peak resident set minus its resident set after building the
model (CPU). Configurations: T x V = 2 x 6 and 4 x 6 with two_stream shared (default), separate and off, and each
sparse global strategy added every other layer.

Analytic (full size, the seeds' example ``[1, 24, 4, 3, 518, 518]``: 37 x 37 = 1369 patches, N = 1374 tokens per
frame, C = 1024): multiply-adds of the attention products (QK^T and AV: 2 L_q L_k C) and of the block's linear
layers (qkv, proj, MLP x4: 12 L C^2) per attention kind, forward only (backward is about twice); activation memory
kept for backward in bf16, per block ``~ 34 L C`` bytes (LayerNorm, qkv, attention out, MLP 4C in and out, residuals;
SDPA keeps no L^2 matrix) and ``2 L C`` with activation checkpointing (the block input only); and, for comparison,
the bf16 attention matrix of 16 heads that a non-fused attention would materialise per block.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FULL = {"T": 24, "V": 4, "S": 518, "patch": 14, "C": 1024, "R": 4, "depth": 24, "encoder_depth": 24}


def analytic(T=24, V=4, S=518, patch=14, C=1024, R=4, depth=24, encoder_depth=24, sparse_keys: int | None = None,
             global_every: int = 0, mask_layer: int | None = 8) -> dict:
    """FLOPs (forward, 2 per multiply-add) and bf16 activation bytes of the full model, per attention kind. Two
    streams (``mask_layer`` set: shared or separate) run layers ``mask_layer..depth-1`` twice; None = one stream."""
    P = (S // patch) ** 2
    N = 1 + R + P
    frames = T * V

    def block(seqs: int, L: int, keys: int) -> tuple[float, float, float]:
        flops = seqs * (2 * 2 * L * keys * C + 2 * 12 * L * C * C)
        return flops, seqs * L * C, seqs * L * keys

    kinds = {"encoder": block(frames, 1 + R + P, 1 + R + P), "time_sa": block(V, T * N, T * N),
             "view_sa": block(T, V * N, V * N)}
    if global_every:
        keys = T * V * N if sparse_keys is None else sparse_keys
        kinds["global"] = block(1, T * V * N, keys)
    runs = depth if mask_layer is None else mask_layer + 2 * (depth - mask_layer)     # block runs per kind
    counts = {"encoder": encoder_depth, "time_sa": runs, "view_sa": runs,
              "global": (depth // global_every) * runs // depth if global_every else 0}
    out = {}
    for k, (flops, elems, scores) in kinds.items():
        n = counts[k]
        out[k] = {"block_runs": n, "tflops_forward": round(n * flops / 1e12, 2),
                  "activation_gb_bf16": round(n * elems * 34 / 1e9, 2),
                  "activation_gb_bf16_checkpointed": round(n * elems * 2 / 1e9, 2),
                  "attention_matrix_gb_per_block_if_materialised": round(scores * 16 * 2 / 1e9, 1)}
    out["total_tflops_forward"] = round(sum(v["tflops_forward"] for v in out.values() if isinstance(v, dict)), 1)
    return out


def _measure(cfg_json: str, T: int, V: int, repeats: int) -> dict:
    import resource
    import statistics
    import time

    import torch

    from models.geometry.config import GeometryConfig
    from models.geometry.model import GeometryModel

    torch.set_num_threads(2)
    raw = json.loads(cfg_json)
    cfg = GeometryConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    torch.manual_seed(0)
    model = GeometryModel(cfg).train()
    x = torch.rand(1, T, V, 3, cfg.img_size, cfg.img_size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = model(x)
        (out["depth"].mean() + out["world_points"].mean() + out["pose_enc"].mean()).backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": round(statistics.median(times), 3), "peak_mb": round((peak - base) / 1024, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="reports/geometry_bench.json")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child[0], int(args.child[1]), int(args.child[2]), int(args.child[3]))))
        return 0
    import dataclasses

    from models.common.params import load_section
    from models.geometry.config import GeometryConfig

    base = dataclasses.asdict(GeometryConfig.from_params(load_section("geometry", args.params)))
    variants = {"shared": {}, "separate": {"two_stream": "separate"}, "off": {"two_stream": "off"}}
    fields = {f.name for f in dataclasses.fields(GeometryConfig)}
    for strategy in ("landmarks", "dilated", "memory"):
        if "global_every" in fields:
            variants[f"global {strategy}"] = {"global_every": 2, "global_strategy": strategy}
    measured = {}
    for T, V in ((2, 6), (4, 6)):
        for name, over in variants.items():
            cfg = json.dumps({**base, **over})
            res = subprocess.run([sys.executable, "-m", "benchmarks.bench_geometry", "--child", cfg, str(T), str(V),
                                  str(args.repeats)], capture_output=True, text=True, check=True)
            measured[f"{T}x{V} {name}"] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{T}x{V} {name}: {measured[f'{T}x{V} {name}']}", flush=True)
    first = measured["2x6 shared"]
    for rec in measured.values():
        rec["time_vs_2x6_shared"] = round(rec["seconds"] / first["seconds"], 2)
    full = {"one stream (two_stream off)": analytic(mask_layer=None), "two streams from layer 8 (default)": analytic(),
            "two streams + full global every 2nd layer": analytic(global_every=2)}
    P = (518 // 14) ** 2
    frames = 24 * 4
    for name, keys in (("landmarks 64 per frame", frames * (5 + 64)), ("dilated stride 2", frames * (5 + 19 * 19)),
                       ("memory 256", frames * 5 + 256)):
        full[f"two streams + sparse global ({name}) every 2nd layer"] = analytic(global_every=2, sparse_keys=keys)
    result = {"size": {k: base[k] for k in ("img_size", "embed_dim", "depth", "encoder_depth", "num_heads")},
              "measured_fwd_bwd": measured, "full_size_analytic": full, "full_size_input": [1, 24, 4, 3, 518, 518],
              "patches_per_frame": P}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(full, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
