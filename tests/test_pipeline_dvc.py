"""End to end through DVC on a copy of the repository: repro, no-op repro, `dvc status` after params that
re-run one stage or none, headline metrics, plots, and experiments that re-run exactly the stages whose params
changed. Uses the tiny world so it takes a few minutes."""
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
TINY_GEOMETRY = dict(img_size=28, embed_dim=32, num_heads=2, encoder_depth=1, depth=2, pi3_layers=1,
                     camera_trunk_depth=1, camera_iterations=1, dpt_features=8, dpt_out_channels=[4, 4, 8, 8])
TINY_TRAIN_GEOMETRY = dict(cameras=["CAM_FRONT", "CAM_BACK"], image_size=[28, 42], epochs=1, batch_size=4,
                           warmup_steps=1, figure_windows=1)
ALL_STAGES = {"synth_world", "gt_cache", "tracks", "train_tokenizer", "report_tokenizer", "train_planner",
              "report_planner", "convert_weights", "train_geometry", "report_geometry", "train_mapdet", "report_mapdet",
              "report"}
TINY_MAPDET = dict(image_size=28, vision_width=16, vision_layers=1, vision_heads=2, vision_intermediate=32,
                   qformer_width=16, qformer_layers=1, qformer_heads=2, qformer_intermediate=32,
                   cross_attention_frequency=1, qformer_encoder_width=16, num_query_tokens=4, lm_width=32, lm_layers=1,
                   lm_heads=2, lm_kv_heads=2, lm_intermediate=48, num_instances=4, decoder_width=16, decoder_heads=2,
                   epochs=1, batch_size=4, warmup_steps=1, figure_samples=1)
PLANNER = {"train_planner", "report_planner"}
GEOMETRY = {"convert_weights", "train_geometry", "report_geometry"}
MAPDET = {"train_mapdet", "report_mapdet"}

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVCLIVE_TEST": "true", "GIT_AUTHOR_NAME": "test",
           "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _exp(repo: Path, *overrides: str) -> set[str]:
    """The stages one experiment runs; ``--temp`` starts it from HEAD, as a queued run does."""
    return _ran(_run(["dvc", "exp", "run", "--temp"] + [a for o in overrides for a in ("-S", o)], repo))


def _stale_with(repo: Path, changes: dict) -> set[str]:
    """The stages ``dvc status`` lists after editing params.yaml (restored afterwards)."""
    yaml, original = YAML(), (repo / "params.yaml").read_text()
    params = yaml.load(original)
    for key, value in changes.items():
        section, name = key.split(".")
        params[section][name] = value
    with open(repo / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    try:
        return set(json.loads(_run(["dvc", "status", "--json"], repo)))
    finally:
        (repo / "params.yaml").write_text(original)


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{path}.{key}" if path else key)
    else:
        yield path, tree


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
    for section, values in (("tracks", TINY_TRACKS), ("tokenizer", TINY_TOKENIZER), ("planner", TINY_PLANNER),
                            ("geometry", TINY_GEOMETRY), ("train_geometry", TINY_TRAIN_GEOMETRY),
                            ("mapdet", TINY_MAPDET)):
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
    assert "verdicts hold" in (repo / "reports" / "report" / "report.md").read_text()
    # DVC-produced data is ignored by git
    status = _run(["git", "status", "--porcelain", "--untracked-files=all"], repo)
    assert "data/nuscenes/" not in status and "data/cache/" not in status, status

    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == set() and "up to date" in out, out
    _run(GIT + ["add", "-A"], repo)
    _run(GIT + ["commit", "-qm", "lock"], repo)

    # a report-only key re-runs its report only; keys that change no output re-run nothing
    assert _stale_with(repo, {"planner.figure_samples": 2}) == {"report_planner", "report"}
    assert _stale_with(repo, {"synth.workers": 2}) == set()
    assert _stale_with(repo, {"synth.workers": 2, "cache.workers": 2, "cache.check_files": False,
                              "tracks.workers": 2, "planner.num_workers": 1, "planner.image_cache_mb": 0}) == set()

    # headline metrics: numbers only, and every column name unique across the pipeline (no file prefix)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo))
    files = next(iter(shown.values()))["data"]
    names = [name for f in files.values() for name, _ in _leaves(f["data"])]
    assert len(files) == 8 and len(names) == len(set(names)), files  # one per stage with a headline
    for path, f in files.items():
        for name, value in _leaves(f["data"]):
            assert type(value) in (int, float), (path, name, value)
    assert "planner.uniad.l2_avg" in names and "model.codes" in names and "zero.norm_acc" in names
    assert not any("loss" in name for name in names)  # training curves are plots, not headlines

    # plots: one loss chart per learned model (train and val, x = step), the figures as images
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], repo))["data"]
    assert {"tokenizer loss", "planner loss", "ego_mlp loss", "geometry loss", "mapdet loss"} <= set(plots), \
        sorted(plots)
    assert not any("epoch" in name for name in plots), sorted(plots)
    assert any(name.startswith("reports/planner/figures/") and name.endswith(".png") for name in plots)
    _run(["dvc", "plots", "show", "-o", str(repo.parent / "plots")], repo)
    assert (repo.parent / "plots" / "index.html").stat().st_size > 0

    assert _exp(repo, "synth.num_scenes=4") == ALL_STAGES - {"convert_weights"}   # the conversion reads no data
    report = {"report"}                                   # last in the DAG: every change reaches it
    assert _exp(repo, "convert.register_slots=[0,1,2,3]") == GEOMETRY | report
    assert _exp(repo, "cache.map_points=10") == ({"gt_cache"} | PLANNER | (GEOMETRY - {"convert_weights"}) | MAPDET
                                                 | report)
    assert _exp(repo, "mapdet.figure_samples=2") == {"report_mapdet"} | report
    assert _exp(repo, "mapdet.freeze_lm=false") == MAPDET | report
    assert _exp(repo, "planner.use_rope=false") == PLANNER | report
    assert _exp(repo, "planner.figure_samples=2") == {"report_planner"} | report
    assert _exp(repo, "tokenizer.loss=focal") == {"train_tokenizer", "report_tokenizer"} | report
    assert _exp(repo, "tracks.backend=oracle") == {"tracks", "train_tokenizer", "report_tokenizer"} | report

    header = _run(["dvc", "exp", "show", "--csv"], repo).splitlines()[0].split(",")
    for column in ("synth.num_scenes", "cache.map_points", "tokenizer.loss", "tracks.backend", "planner.use_rope",
                   "scenes", "train_samples", "tracker.aj", "model.mse", "zero.mse", "model.norm_acc",
                   "planner.uniad.l2_avg", "constant_velocity.stp3.l2_avg", "ego_mlp.uniad.col_avg", "model.mAP",
                   "baseline.mAP", "mapdet.freeze_lm"):
        assert column in header, (column, header)
    assert not any(":" in c for c in header), header   # no name needed its file as a prefix


def test_push_then_pull_into_a_fresh_clone(repo, tmp_path):
    """Outputs shared through a (local directory) DVC remote arrive intact in another clone."""
    if not (repo / "dvc.lock").exists():
        _run(["dvc", "repro"], repo)
    _run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], repo)
    _run(GIT + ["add", "-A"], repo)
    _run(GIT + ["commit", "-qm", "remote", "--allow-empty"], repo)
    _run(["dvc", "push", "--run-cache"], repo)                       # outputs and the run cache
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _run(["dvc", "pull"], clone)
    status = _run(["dvc", "status"], clone)
    assert "up to date" in status, status
    for rel in ("data/cache/manifest.json", "data/nuscenes/v1.0-synth/sample.json",
                "data/models/mapdet/final.safetensors"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes()
    out = _run(["dvc", "repro"], clone)                              # a colleague skips all the work
    assert _ran(out) == set(), out
    again = tmp_path / "clone_pull_on_repro"                          # the same with one command
    _run(["git", "clone", "-q", str(repo), str(again)], tmp_path)
    out = _run(["dvc", "repro", "--pull"], again)
    assert _ran(out) == set(), out
    assert (again / "data/models/planner/planner/final.safetensors").read_bytes() == \
        (repo / "data/models/planner/planner/final.safetensors").read_bytes()


def test_two_fresh_repros_are_identical_with_1_and_2_workers(repo, tmp_path):
    """A fresh clone rebuilt from nothing (empty DVC cache, no run cache), with 2 workers wherever a stage has
    workers, writes a dvc.lock identical to the first run's: every output's hash is the same."""
    if not (repo / "dvc.lock").exists():
        _run(["dvc", "repro"], repo)
        _run(GIT + ["add", "-A"], repo)
        _run(GIT + ["commit", "-qm", "lock"], repo)
    clone = tmp_path / "fresh"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    yaml = YAML()
    params = yaml.load((clone / "params.yaml").read_text())
    for section, key, value in (("synth", "workers", 2), ("cache", "workers", 2), ("tracks", "workers", 2),
                                ("planner", "num_workers", 1)):
        assert params[section][key] != value
        params[section][key] = value
    with open(clone / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    out = _run(["dvc", "repro", "--force", "--no-run-cache"], clone)  # every stage, reports included
    assert _ran(out) == ALL_STAGES, out
    assert (clone / "dvc.lock").read_text() == (repo / "dvc.lock").read_text()


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
