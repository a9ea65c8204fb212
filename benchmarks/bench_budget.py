"""The pipeline's budget: wall time and peak memory of every stage of one full `dvc repro`, and a no-op repro.

    python -m benchmarks.bench_budget [--force] [--out reports/budget.json]

Runs ``dvc repro --single-item <stage>`` for each stage in DAG order (``--force``: also the stages that are up to
date), each from its own Python process, so that the stage's peak resident set is that process's
``RUSAGE_CHILDREN`` maximum (the largest process of the stage's tree, DVC included). Then times a no-op ``dvc repro``
(median of 3), interleaved with DVC's floor for as many stages (``benchmarks/bench_noop.py`` breaks it down). Also
measures the machine's float32 matmul peak (2048 x 2048, median of 5), the reference for FLOPs per second. Writes
the figures as JSON and prints a Markdown table for docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S, NOOP_S, MEMORY_GB = 12 * 60, 1.0, 4.0


def stages_in_order() -> list[str]:
    from ruamel.yaml import YAML

    out = subprocess.run(["dvc", "dag", "--md"], capture_output=True, text=True, check=True).stdout
    declared = list(YAML(typ="safe", pure=True).load(Path("dvc.yaml").read_text())["stages"])
    edges = [line.strip() for line in out.splitlines() if "-->" in line]
    deps: dict[str, set] = {s: set() for s in declared}
    names = {f"node{i + 1}": None for i in range(len(declared))}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("node") and "[" in line and "-->" not in line:
            key, label = line.split("[", 1)
            names[key] = label.strip("]\"")
    for edge in edges:
        a, b = (x.strip() for x in edge.split("-->"))
        if names.get(a) in deps and names.get(b) in deps:
            deps[names[b]].add(names[a])
    order, done = [], set()
    while len(order) < len(declared):
        for s in declared:
            if s not in done and deps[s] <= done:
                order.append(s)
                done.add(s)
                break
        else:
            raise RuntimeError(f"cycle or unparsed DAG: {deps}")
    return order


def run_stage(stage: str, force: bool) -> dict:
    code = ("import resource, subprocess, sys, time\n"
            f"cmd = ['dvc', 'repro', '--single-item', {stage!r}] + (['--force'] if {force} else [])\n"
            "t = time.perf_counter(); r = subprocess.run(cmd, capture_output=True, text=True)\n"
            "ran = int('Running stage' in r.stdout + r.stderr)\n"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, ran)\n"
            "sys.stderr.write(r.stdout[-2000:] + r.stderr[-2000:])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds, kib, rc, ran = res.stdout.split()
    return {"stage": stage, "seconds": float(seconds), "peak_gib": int(kib) / 2 ** 20, "ran": ran == "1",
            "rc": int(rc)}


def matmul_peak_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / statistics.median(times) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--out", default="reports/budget.json")
    args = ap.parse_args(argv)
    rows = []
    for stage in stages_in_order():
        rows.append(run_stage(stage, args.force))
        r = rows[-1]
        print(f"{stage:18s} {r['seconds']:7.1f} s  peak {r['peak_gib']:.2f} GiB  {'ran' if r['ran'] else 'up to date'}"
              f"{'' if r['rc'] == 0 else '  FAILED'}", flush=True)
        if r["rc"]:
            return 1
    import tempfile

    from benchmarks.bench_noop import build_floor_repo, time_command

    noop, floor = [], []
    with tempfile.TemporaryDirectory() as tmp:
        floor_repo = build_floor_repo(Path(tmp) / "floor", len(rows))
        for _ in range(3):
            noop.append(time_command(["dvc", "repro"], Path.cwd()))
            floor.append(time_command(["dvc", "repro"], floor_repo))
    total = sum(r["seconds"] for r in rows)
    import datetime
    import os

    result = {"measured": f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores",
              "stages": rows, "total_s": total, "noop_s": statistics.median(noop),
              "noop_floor_s": statistics.median(floor),
              "matmul_peak_gflops": matmul_peak_gflops(),
              "budget": {"total_s": BUDGET_S, "noop_s": NOOP_S, "peak_gib": MEMORY_GB}}
    print(f"total {total / 60:.1f} min (budget {BUDGET_S / 60:.0f}), no-op repro {result['noop_s']:.2f} s (DVC's floor "
          f"for {len(rows)} stages {result['noop_floor_s']:.2f} s), matmul "
          f"peak {result['matmul_peak_gflops']:.0f} GFLOP/s")
    print("\n| stage | wall time | peak memory |\n| --- | ---: | ---: |")
    for r in rows:
        print(f"| `{r['stage']}` | {r['seconds']:.0f} s | {r['peak_gib']:.2f} GiB |")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
