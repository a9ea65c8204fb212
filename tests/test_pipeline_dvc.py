"""End to end through DVC on a copy of the repository: repro, no-op repro, and experiments that re-run
exactly the stages whose params changed. Uses the tiny world so it takes well under a minute."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import TINY_PLANNER, TINY_WORLD

TINY_TRACKS = dict(workers=1, grid_size=8)
TINY_TOKENIZER = dict(epochs=1, batch_size=8, hidden_dim=32, num_heads=2, decoder_mlp_hidden_dim=32)
ALL_STAGES = {"synth_world", "gt_cache", "tracks", "train_tokenizer", "report_tokenizer", "train_planner",
              "report_planner"}
PLANNER = {"train_planner", "report_planner"}

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVCLIVE_TEST": "true", "GIT_AUTHOR_NAME": "test",
           "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _back_to_baseline(repo: Path) -> None:
    """Undo what ``dvc exp run`` leaves in the workspace (it stages its params.yaml, lock and reports)."""
    _run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "reports"], repo)
    _run(["dvc", "checkout", "-q"], repo)


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git + DVC checkout of this repository's files with tiny params."""
    dst = tmp_path_factory.mktemp("clone") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("data/nuscenes/", "data/cache/", "data/tracks/", "data/models/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    yaml = YAML()
    params = yaml.load((dst / "params.yaml").read_text())
    for key, value in TINY_WORLD.items():
        params["synth"][key] = value
    params["cache"]["workers"] = 1
    for section, values in (("tracks", TINY_TRACKS), ("tokenizer", TINY_TOKENIZER), ("planner", TINY_PLANNER)):
        for key, value in values.items():
            params[section][key] = value
    with open(dst / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    (dst / "dvc.lock").unlink(missing_ok=True)
    _run(["git", "init", "-q"], dst)
    _run(GIT + ["add", "-A"], dst)
    _run(GIT + ["commit", "-qm", "tiny"], dst)
    return dst


def test_repro_then_noop_then_experiments(repo):
    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == ALL_STAGES, out
    manifest = json.loads((repo / "data" / "cache" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] > 0 and manifest["splits"]["val"]["samples"] > 0
    assert json.loads((repo / "reports" / "synth_world.json").read_text())["scenes"] == TINY_WORLD["num_scenes"]
    # DVC-produced data is ignored by git
    status = _run(["git", "status", "--porcelain", "--untracked-files=all"], repo)
    assert "data/nuscenes/" not in status and "data/cache/" not in status, status

    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == set() and "up to date" in out, out
    _run(GIT + ["add", "-A"], repo)
    _run(GIT + ["commit", "-qm", "lock"], repo)

    out = _run(["dvc", "exp", "run", "-S", "synth.num_scenes=4"], repo)
    assert _ran(out) == ALL_STAGES, out
    _back_to_baseline(repo)
    out = _run(["dvc", "exp", "run", "-S", "cache.map_points=10"], repo)
    assert _ran(out) == {"gt_cache"} | PLANNER, out   # the planner reads the cache (its figures draw the map)
    _back_to_baseline(repo)
    out = _run(["dvc", "exp", "run", "-S", "planner.use_rope=false"], repo)
    assert _ran(out) == PLANNER, out
    _back_to_baseline(repo)
    out = _run(["dvc", "exp", "run", "-S", "tokenizer.loss=focal"], repo)
    assert _ran(out) == {"train_tokenizer", "report_tokenizer"}, out
    _back_to_baseline(repo)
    out = _run(["dvc", "exp", "run", "-S", "tracks.backend=oracle"], repo)
    assert _ran(out) == {"tracks", "train_tokenizer", "report_tokenizer"}, out

    table = _run(["dvc", "exp", "show", "--csv"], repo)
    header = table.splitlines()[0]
    assert "synth.num_scenes" in header and "cache.map_points" in header and "tokenizer.loss" in header
    assert "tracks.backend" in header and any(c.startswith("reports/tracks.json:") for c in header.split(","))
    assert any("val.loss" in c for c in header.split(",")), header
    assert "planner.use_rope" in header, header
    for column in ("rows.planner.uniad.l2_avg", "rows.constant_velocity.stp3.l2_avg", "rows.ego_mlp.uniad.l2_avg"):
        assert any(c.split(":")[-1] == column for c in header.split(",")), (column, header)   # prefixed if ambiguous
    assert "reports/synth_world.json:scenes" in header or "scenes" in header, header


def test_push_then_pull_into_a_fresh_clone(repo, tmp_path):
    """Outputs shared through a (local directory) DVC remote arrive intact in another clone."""
    if not (repo / "dvc.lock").exists():
        _run(["dvc", "repro"], repo)
    _run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo)
    _run(GIT + ["add", "-A"], repo)
    _run(GIT + ["commit", "-qm", "remote", "--allow-empty"], repo)
    _run(["dvc", "push"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run(["dvc", "pull"], clone)
    status = _run(["dvc", "status"], clone)
    assert "up to date" in status, status
    for rel in ("data/cache/manifest.json", "data/nuscenes/v1.0-synth/sample.json"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes()


def test_external_dataroot_needs_no_synthetic_world(repo, tmp_path):
    """Pointing data.dataroot elsewhere (as for real nuScenes) makes gt_cache independent of synth_world."""
    if not (repo / "data" / "nuscenes").exists():
        _run(["dvc", "repro", "synth_world"], repo)
    external = tmp_path / "nuscenes"
    shutil.copytree(repo / "data" / "nuscenes", external)
    yaml = YAML()
    original = (repo / "params.yaml").read_text()
    params = yaml.load(original)
    params["data"]["dataroot"] = str(external)
    assert "synth_world" in _run(["dvc", "dag", "gt_cache"], repo)  # default: the world is an ancestor
    with open(repo / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    try:
        dag = _run(["dvc", "dag", "gt_cache"], repo)
        assert "gt_cache" in dag and "synth_world" not in dag, dag
        out = _run(["dvc", "repro", "--force", "gt_cache"], repo)
        assert _ran(out) == {"gt_cache"}, out
        assert json.loads((repo / "data" / "cache" / "manifest.json").read_text())["dataroot"] == str(external)
    finally:
        (repo / "params.yaml").write_text(original)
