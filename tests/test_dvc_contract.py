"""dvc.yaml against the code: each stage lists the params keys it reads and every code file it imports."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from models.common.params import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
STAGES = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]

# Keys that never change an output's bytes: no stage lists them, so changing one re-runs nothing.
NOT_CONTENT = {
    "synth.workers",           # render processes: scenes are rendered independently and written in order
    "cache.workers",           # the same for the GT cache
    "cache.check_files",       # a check of the dataroot that passes or stops the stage; it writes nothing
    "tracks.workers",          # clips tracked in a pool, results in clip order
    "planner.num_workers",     # DataLoader processes: per-worker seeds, the same batches
    "planner.image_cache_mb",  # images decoded once or per sample: the same pixels
    "mapdet.image_cache_mb",   # the same for the map detector
    "train_geometry.image_cache_mb",  # geometry windows kept in memory: the same arrays (tested)
    "geometry.activation_checkpointing",  # blocks recomputed in backward: the same gradients (tested)
}


def test_the_report_leaves_out_exactly_the_keys_that_change_no_output():
    from models.report.sections import NO_OUTPUT_KEYS

    assert set(NO_OUTPUT_KEYS) == NOT_CONTENT


def _module(stage: dict) -> str:
    return re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1)


def test_listed_keys_exist_and_every_key_is_listed_or_not_content():
    raw = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    listed = set()
    for name, stage in STAGES.items():
        for key in stage["params"]:
            section, _, field = key.partition(".")
            assert field in (raw.get(section) or {}), f"{name}: params.yaml has no {key}"
            listed.add(key)
    every = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert not listed & NOT_CONTENT, f"listed, though they change no output: {sorted(listed & NOT_CONTENT)}"
    assert every - NOT_CONTENT <= listed, f"read by no stage: {sorted(every - NOT_CONTENT - listed)}"


def test_stages_list_keys_of_exactly_the_sections_they_load():
    for name, stage in STAGES.items():
        tree = ast.parse((ROOT / "stages" / f"{_module(stage)}.py").read_text())
        loaded = {arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and getattr(node.func, "id", "") in ("load_params", "load_section")
                  for arg in node.args if isinstance(arg, ast.Constant)}
        if _module(stage) == "report":           # reads params.yaml whole (to list what differs from the defaults)
            loaded = set(SECTIONS)
        assert {key.split(".")[0] for key in stage["params"]} == loaded, name


@pytest.mark.parametrize("stages, section, config", [
    (("train_tokenizer", "report_tokenizer"), "tokenizer", "models.tokenizer.config.TokenizerConfig"),
    (("train_planner", "report_planner"), "planner", "models.planner.config.PlannerConfig"),
    (("convert_weights", "train_geometry", "report_geometry"), "geometry", "models.geometry.config.GeometryConfig"),
])
def test_stages_that_build_a_model_list_its_config(stages, section, config):
    import importlib

    module, _, cls = config.rpartition(".")
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    keys = {f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section]) if f.name in fields} - NOT_CONTENT
    for name in stages:
        assert keys <= set(STAGES[name]["params"]), (name, sorted(keys - set(STAGES[name]["params"])))


# ------------------------------------------------------------------------------------------- code deps
def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def imported_files(start: Path) -> set[str]:
    """Every file of ``models/`` and ``stages/`` that ``start`` imports, transitively, function-local imports
    included (``from models.x import y`` reaches ``models/__init__.py``, ``models/x/__init__.py`` and
    ``models/x/y.py`` when ``y`` is a module)."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = path.relative_to(ROOT).parent.parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                anchor = package[:len(package) - node.level + 1] if node.level else ()  # relative imports
                base = ".".join(anchor + ((node.module,) if node.module else ()))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] in ("models", "stages"):
                    todo += [f for k in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:k])))]
    return {str(p.relative_to(ROOT)) for p in seen}


def _has_code(rel: str) -> bool:
    """False for a file that is empty or only a docstring (a package's ``__init__.py``): it changes nothing."""
    body = ast.parse((ROOT / rel).read_text()).body
    return not all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def uncovered(stage: dict) -> list[str]:
    """Code files the stage imports that no dep covers (a folder dep covers every file below it)."""
    deps = [d for d in stage["deps"] if "${" not in d]
    files = imported_files(ROOT / "stages" / f"{_module(stage)}.py")
    return sorted(f for f in files if _has_code(f) and not any(f == d or f.startswith(d.rstrip("/") + "/")
                                                                for d in deps))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_code_file_is_a_dep(name):
    assert uncovered(STAGES[name]) == [], f"dvc.yaml: stage {name} imports these but does not depend on them"


def test_the_dep_check_sees_a_removed_folder_and_a_file_dep():
    stage = dict(STAGES["report_tokenizer"])
    stage["deps"] = [d for d in stage["deps"] if d != "models/train"]
    assert "models/train/loop.py" in uncovered(stage)
    stage = dict(STAGES["train_planner"])
    stage["deps"] = [d for d in stage["deps"] if d != "models/planner/model.py"]
    assert uncovered(stage) == ["models/planner/model.py"]
    assert "stages/_cli.py" in uncovered(dict(stage, deps=[d for d in stage["deps"] if d != "stages/_cli.py"]))
