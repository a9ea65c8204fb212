"""What a no-op ``dvc repro`` of this pipeline costs, beside DVC's own floor measured in the same run.

    python -m benchmarks.bench_noop [--repeats 5] [--out reports/noop.json]

Four figures, interleaved round by round so that a busy moment of the machine hits all of them alike:

- ``pipeline``: ``dvc repro`` in this repository with every stage up to date. The script first asks
  ``dvc status`` and refuses to time anything when a stage is stale, so it never runs a stage.
- ``floor``: DVC's floor for a DAG of the same number of stages. A temporary repository holds a chain of
  stages, each with one file dependency, one params key and one file output, reproduced once and then timed.
- ``startup``: ``dvc --version``, the interpreter and DVC's command-line imports.
- ``params``: DVC's own params reading, timed in this process. ``dvc repro`` calls
  ``dvc.dependency.param.read_param_file`` once per stage: it parses ``params.yaml`` and looks every listed key up
  with ``dpath.get``, which walks the whole parsed tree for each key. Three layouts are timed with the same call:
  the keys ``dvc.yaml`` lists; the best layout that keeps the DAG exact (a stage lists a whole section wherever it
  reads every key of it that changes an output, which assumes the keys that change no output moved to a section
  no stage lists); and no params at all (what the parsing alone costs).

- ``outputs``: DVC's check of every output and file or folder dependency (``Output.status``, which ``dvc repro``
  calls for each), timed in this process, the slowest ones named: a folder costs a ``stat`` and a state-database
  lookup per file.

The difference between the pipeline and the floor is what this pipeline's size costs: its params keys, its
directory dependencies and outputs, its larger ``dvc.yaml`` and ``dvc.lock``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

from benchmarks.bench_budget import NOOP_S as NOOP_TARGET_S  # the budget's no-op target, in one place


def time_command(cmd: list[str], cwd: Path | str) -> float:
    """Wall seconds of one command (it must succeed)."""
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def build_floor_repo(root: Path, stages: int) -> Path:
    """A git + DVC repository whose ``dvc.yaml`` chains ``stages`` minimal stages; reproduced once, so that a
    following ``dvc repro`` is a no-op. Returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    (root / "seed.txt").write_text("0\n")
    (root / "params.yaml").write_text("".join(f"s{i}:\n  value: {i}\n" for i in range(stages)))
    copy = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
    dag = {"stages": {}}
    for i in range(stages):
        src = "seed.txt" if i == 0 else f"out{i - 1}.txt"
        dag["stages"][f"s{i}"] = {"cmd": f'{sys.executable} -c "{copy}" {src} out{i}.txt',
                                  "deps": [src], "params": [f"s{i}.value"], "outs": [f"out{i}.txt"]}
    with open(root / "dvc.yaml", "w") as f:
        YAML().dump(dag, f)
    subprocess.run(["dvc", "repro", "-q"], cwd=root, check=True, capture_output=True)
    return root


def up_to_date(repo: Path | str) -> bool:
    out = subprocess.run(["dvc", "status", "--json"], cwd=repo, check=True, capture_output=True, text=True).stdout
    return json.loads(out or "{}") == {}


def exact_section_layout(stages: dict, params: dict, no_output_keys: set[str]) -> dict[str, list[str]]:
    """Each stage's params entries when a stage lists a whole section wherever it lists every key of that section
    that changes an output, and single keys elsewhere."""
    layout = {}
    for name, stage in stages.items():
        listed = [k for k in stage.get("params", []) if isinstance(k, str)]
        entries = []
        for section in dict.fromkeys(k.split(".")[0] for k in listed):
            content = {f"{section}.{k}" for k in params.get(section) or {}} - no_output_keys
            mine = [k for k in listed if k.split(".")[0] == section]
            entries += [section] if set(mine) == content else mine
        layout[name] = entries
    return layout


def time_params_reading(layouts: dict[str, dict[str, list[str]]], params_file: str = "params.yaml",
                        repeats: int = 5) -> dict[str, float]:
    """Seconds DVC's ``read_param_file`` takes for every stage of each layout (median over ``repeats``)."""
    from dvc.dependency.param import read_param_file
    from dvc.fs import LocalFileSystem

    fs = LocalFileSystem()
    read_param_file(fs, params_file)  # imports and first parse out of the timings
    times = {name: [] for name in layouts}
    for _ in range(repeats):
        for name, layout in layouts.items():
            t = time.perf_counter()
            for keys in layout.values():
                read_param_file(fs, params_file, keys or None, flatten=True)  # no keys: the parse alone
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def time_output_checks(repo: Path | str) -> tuple[float, list[tuple[float, str, str]]]:
    """Seconds DVC takes to check every output and file dependency of the pipeline (second of two passes, the
    first warms the state database), and the checks sorted slowest first as (seconds, stage, path)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        stages = list(dvc_repo.index.stages)
        checks = [(stage.name, item) for stage in stages
                  for item in [*stage.outs, *stage.deps] if not hasattr(item, "read_params")]
        for _, item in checks:
            item.status()
        timed = []
        for name, item in checks:
            t = time.perf_counter()
            item.status()
            timed.append((time.perf_counter() - t, name, str(item)))
    timed.sort(reverse=True)
    return sum(t for t, _, _ in timed), timed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="reports/noop.json")
    args = ap.parse_args(argv)
    from models.report.sections import NO_OUTPUT_KEYS

    repo = Path.cwd()
    if not up_to_date(repo):
        print("dvc status reports stale stages: run `dvc repro` first (this script never runs a stage)")
        return 1
    stages = YAML(typ="safe", pure=True).load((repo / "dvc.yaml").read_text())["stages"]
    params = YAML(typ="safe", pure=True).load((repo / "params.yaml").read_text())
    layouts = {"listed keys": {n: list(s.get("params", [])) for n, s in stages.items()},
               "exact sections": exact_section_layout(stages, params, set(NO_OUTPUT_KEYS)),
               "no params": {n: [] for n in stages}}
    lookups = {name: sum(len(v) for v in layout.values()) for name, layout in layouts.items()}

    with tempfile.TemporaryDirectory() as tmp:
        floor_repo = build_floor_repo(Path(tmp) / "floor", len(stages))
        rounds = {"pipeline": [], "floor": [], "startup": []}
        for _ in range(args.repeats):
            rounds["pipeline"].append(time_command(["dvc", "repro"], repo))
            rounds["floor"].append(time_command(["dvc", "repro"], floor_repo))
            rounds["startup"].append(time_command(["dvc", "--version"], repo))
    if not up_to_date(repo):
        print("a stage went stale while timing: the figures are not those of a no-op")
        return 1
    seconds = {k: statistics.median(v) for k, v in rounds.items()}
    reading = time_params_reading(layouts, repeats=args.repeats)
    checks_s, checks = time_output_checks(repo)

    import datetime

    result = {"measured": f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores",
              "stages": len(stages), "repeats": args.repeats, "target_s": NOOP_TARGET_S,
              "seconds": seconds, "spread": {k: [min(v), max(v)] for k, v in rounds.items()},
              "params_reading_s": reading, "params_lookups": lookups,
              "output_checks": {"count": len(checks), "seconds": checks_s,
                                "slowest": [{"seconds": t, "stage": n, "path": p} for t, n, p in checks[:5]]}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    pipe, floor = seconds["pipeline"], seconds["floor"]
    print(f"| what (median of {args.repeats}) | seconds | against DVC's floor |\n| --- | ---: | ---: |")
    print(f"| no-op `dvc repro`, this pipeline ({len(stages)} stages) | {pipe:.2f} | {pipe / floor:.2f}x |")
    print(f"| no-op `dvc repro`, DVC's floor ({len(stages)} minimal stages) | {floor:.2f} | 1.00x |")
    print(f"| `dvc --version` | {seconds['startup']:.2f} | {seconds['startup'] / floor:.2f}x |")
    for name, s in reading.items():
        print(f"| params reading, {name} ({lookups[name]} lookups) | {s:.2f} | {s / floor:.2f}x |")
    print(f"| output and file-dependency checks ({len(checks)}) | {checks_s:.2f} | {checks_s / floor:.2f}x |")
    for t, name, path in checks[:3]:
        print(f"| of which `{path}` ({name}) | {t:.3f} | {t / floor:.2f}x |")
    best = pipe - (reading["listed keys"] - reading["exact sections"])
    print(f"\nthe exact-sections layout would bring this no-op to about {best:.2f} s; with no params at all, about "
          f"{pipe - (reading['listed keys'] - reading['no params']):.2f} s (target {NOOP_TARGET_S:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
