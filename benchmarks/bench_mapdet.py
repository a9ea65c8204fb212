"""What freezing the map detector's language model saves: time per training step and peak memory, frozen vs
unfrozen, measured in one run at the params' size and at a larger language model, and computed at 7B.

    python -m benchmarks.bench_mapdet [--params params.yaml] [--steps 4] [--out reports/mapdet_bench.json]

Measured: each (size, frozen) configuration runs in its own process on random images ``[2, 6, 3, S, S]`` and random
GT (20 elements), a warm-up step then the median of ``--steps`` full training steps (forward, MapTR loss, backward,
AdamW step over the trainable groups: the frozen LM has no gradient and no optimiser state). Peak memory is the
process's peak resident set minus its resident set after building the model and the optimiser (CPU; on CUDA
``max_memory_allocated``). The larger size keeps the vision side and widens the language model to 512 x 8 layers
(vocab 32000), so that it dominates as at 7B.

Analytic (7B, the seed's set-up): bytes per parameter in mixed precision. Every weight is held in bf16 (2 B); a
trained parameter also needs an fp32 master copy, an fp32 gradient and AdamW's two fp32 moments (16 B). Activations
are left out (they depend on batch and sequence, and the frozen model still keeps the LM's activations for the
backward pass that reaches the Q-Former). Time: a frozen LM still runs its backward for the activation gradients
(about one forward) but skips the weight gradients (about one forward) and the optimiser update of 7B parameters.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LARGER = {"lm_width": 512, "lm_layers": 8, "lm_heads": 8, "lm_kv_heads": 8, "lm_intermediate": 1376,
          "lm_vocab": 32000}


def run_one(params: str, size: str, frozen: bool, steps: int) -> dict:
    import resource
    import statistics
    import time

    import torch

    from models.common.params import load_section
    from models.mapdet.config import MapDetConfig
    from models.mapdet.model import MapDetector
    from models.mapdet.training import MapDetTask

    p = load_section("mapdet", params)
    cfg = MapDetConfig.from_params(p, num_points=20, num_classes=3).replace(freeze_lm=frozen)
    if size == "larger":
        cfg = cfg.replace(**LARGER)
    torch.manual_seed(0)
    model = MapDetector(cfg, list(range(1, 40)))
    task = MapDetTask(cfg, p)
    groups = task.param_groups(model)
    if not frozen and not any(g["name"] == "lm" for g in groups):
        raise RuntimeError("unfrozen LM without an lm group")
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    B, M = 2, 20
    batch = {"images": torch.randint(0, 256, (B, cfg.num_cameras, 3, cfg.image_size, cfg.image_size),
                                     dtype=torch.uint8, generator=g),
             "gt_points": torch.rand(B, M, 20, 2, generator=g), "gt_labels": torch.randint(0, 3, (B, M), generator=g),
             "gt_closed": torch.zeros(B, M, dtype=torch.bool), "gt_valid": torch.ones(B, M, dtype=torch.bool)}
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
        batch = {k: v.cuda() for k, v in batch.items()}
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = task.loss(model, batch)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    return {"size": size, "frozen": frozen, "step_s": statistics.median(times), "peak_mib": (peak - base) / 2 ** 20,
            "params": sum(q.numel() for q in model.parameters()), "trainable": trainable,
            "optimizer_state_tensors": sum(len(s) for s in opt.state.values()),
            "device": "cuda" if cuda else "cpu"}


def analytic_7b() -> dict:
    """Mixed-precision bytes at the seed's size (LLaMA-2-7B base + EVA ViT-g + Q-Former + queries + decoder)."""
    import torch

    from models.mapdet.config import MapDetConfig
    from models.mapdet.model import MapDetector

    cfg = MapDetConfig.full_size("llama")
    with torch.device("meta"):
        model = MapDetector(cfg, list(range(1, 21)))
    count = {g: sum(p.numel() for _, p in ps) for g, ps in model.groups().items()}
    total = sum(count.values())
    trained_frozen = count["qformer"] + count["queries"] + count["decoder"]
    trained_unfrozen = trained_frozen + count["lm"]
    gib = 2 ** 30
    frozen = (2 * total + 16 * trained_frozen) / gib
    unfrozen = (2 * total + 16 * trained_unfrozen) / gib
    return {"params_by_group": count, "total": total, "trainable_frozen": trained_frozen,
            "trainable_share": trained_frozen / total, "frozen_gib": frozen, "unfrozen_gib": unfrozen,
            "memory_saved": 1 - frozen / unfrozen,
            "step_time_ratio_estimate": "about 1.5x from the LM's compute (3 vs 2 forward-equivalents) plus the "
                                        "optimiser update of 6.6B parameters; measure on the target GPU"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="reports/mapdet_bench.json")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "FROZEN"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.params, args.one[0], args.one[1] == "1", args.steps)))
        return 0
    rows = []
    for size in ("default", "larger"):
        for frozen in (True, False):
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_mapdet", "--params", args.params,
                                  "--steps", str(args.steps), "--one", size, "1" if frozen else "0"],
                                 check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{size:8s} {'frozen  ' if frozen else 'unfrozen'} step {r['step_s'] * 1000:8.1f} ms  peak "
                  f"{r['peak_mib']:8.1f} MiB  trainable {r['trainable']:>12,} of {r['params']:>12,}")
    ratios = {}
    for size in ("default", "larger"):
        f, u = (next(r for r in rows if r["size"] == size and r["frozen"] is fr) for fr in (True, False))
        ratios[size] = {"unfrozen_over_frozen_time": u["step_s"] / f["step_s"],
                        "frozen_memory_saving": 1 - f["peak_mib"] / max(u["peak_mib"], 1e-9)}
        print(f"{size}: unfrozen / frozen step time {ratios[size]['unfrozen_over_frozen_time']:.2f}x, freezing "
              f"saves {100 * ratios[size]['frozen_memory_saving']:.0f} % of the training memory")
    a = analytic_7b()
    print(f"7B (analytic, weights bf16, trained params +16 B): frozen {a['frozen_gib']:.1f} GiB, unfrozen "
          f"{a['unfrozen_gib']:.1f} GiB: freezing saves {100 * a['memory_saved']:.0f} %; trainable "
          f"{a['trainable_frozen']:,} of {a['total']:,} ({100 * a['trainable_share']:.2f} %)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"measured": rows, "ratios": ratios, "analytic_7b": a}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
