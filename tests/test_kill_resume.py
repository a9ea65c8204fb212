"""Killed and failed training stages (docs/faults.md): the work folder of models/train/workdir.py.

The loop-level tests use the toy task of tests/test_train_loop.py; the end-to-end tests build two tiny git + DVC
repositories with one ``train_planner`` stage (the real stage's outputs and params), SIGKILL one ``dvc repro``
mid-training, repro again, and compare every output and dvc.lock with an uninterrupted repro; then make the stage
fail and restore the committed results with the one documented command.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from models.common.params import SECTIONS, ParamsError
from models.train import loop, read_state, train
from models.train import workdir as W
from tests.conftest import TINY_PLANNER
from tests.test_train_loop import CFG, NoisyCrashTask, NoisyData, file_bytes

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
RESTORE = "git checkout HEAD -- params.yaml dvc.lock reports/ && dvc checkout --force"   # docs/faults.md
TRAINING_STAGES = ("train_tokenizer", "train_planner", "train_geometry", "train_mapdet")


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (hidden ones too)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# The loop with a work folder (toy task)
# --------------------------------------------------------------------------------------------------

CUT_CFG = CFG.replace(epochs=4, num_workers=0)


def toy(tmp: Path, task=None, cfg=CUT_CFG, fingerprint=None, work: bool = True):
    return train(task or NoisyCrashTask(), NoisyData(64, 0), NoisyData(16, 1), cfg, tmp / "out", tmp / "live",
                 progress=False, work_dir=tmp / "work" if work else None, fingerprint=fingerprint)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted run, straight into out/ and live/ (no work folder)."""
    tmp = tmp_path_factory.mktemp("full")
    toy(tmp, work=False)
    return tmp


def test_a_killed_run_touches_no_output_and_resumes_to_the_same_bytes(full, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/best.safetensors").write_bytes(b"previous result")   # an older run's output
    (tmp_path / "out/epoch_0002.safetensors").write_bytes(b"stale")
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path, NoisyCrashTask(crash_at=21))   # killed in epoch 3, after last.safetensors of epoch 2
    assert file_bytes(tmp_path / "out") == {"best.safetensors": b"previous result", "epoch_0002.safetensors": b"stale"}
    assert not (tmp_path / "live").exists()
    assert read_state(tmp_path / "work/last.safetensors")["epoch"] == 2
    summary = toy(tmp_path)
    assert summary["resumed_from_epoch"] == 2
    assert "work: resumed from epoch 2/4 (step 16)" in capsys.readouterr().err
    assert file_bytes(tmp_path / "out") == file_bytes(full / "out")     # the stale epoch_0002 is gone
    assert tree_bytes(tmp_path / "live") == tree_bytes(full / "live")   # TSVs and metrics.json
    assert summary["checkpoints"]["final"] == str(tmp_path / "out/final.safetensors")
    assert (tmp_path / "work/run.json").is_file()     # kept until the stage says done (W.stage_work)
    with W.stage_work(tmp_path / "work", tmp_path / "out"):
        pass
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("where", ["between_logs_and_last", "between_last_and_copies"])
def test_a_kill_around_writing_last_still_resumes_exactly(full, tmp_path, monkeypatch, where):
    """Killed after epoch 2's logs but before its ``last`` (resume from epoch 1 drops those rows), or after its
    ``last`` but before best/final (redone on resume)."""
    if where == "between_logs_and_last":
        real, calls = loop.save_checkpoint, []

        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed before writing last")
            return real(*args, **kwargs)
        monkeypatch.setattr(loop, "save_checkpoint", dying)
        resumed = 1
    else:
        real = loop._epoch_copies

        def dying(last, out_dir, epoch, improved, cfg):
            if epoch == 4:
                raise KeyboardInterrupt("killed before copying final")
            return real(last, out_dir, epoch, improved, cfg)
        monkeypatch.setattr(loop, "_epoch_copies", dying)
        resumed = 4
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path)
    monkeypatch.undo()
    assert toy(tmp_path)["resumed_from_epoch"] == resumed
    assert file_bytes(tmp_path / "out") == file_bytes(full / "out")
    assert tree_bytes(tmp_path / "live") == tree_bytes(full / "live")


def test_another_runs_work_folder_is_discarded_with_one_line(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path, NoisyCrashTask(crash_at=21), fingerprint={"params": {"depth": 1}})
    capsys.readouterr()
    other = CUT_CFG.replace(lr=0.1)
    summary = toy(tmp_path, cfg=other, fingerprint={"params": {"depth": 2}})
    err = [line for line in capsys.readouterr().err.splitlines() if "work" in line]
    assert summary["resumed_from_epoch"] is None and len(err) == 1, err
    assert "discarding the work folder" in err[0] and "config.lr: 0.05 -> 0.1" in err[0], err
    assert "fingerprint.params.depth: 1 -> 2" in err[0] and "starting over" in err[0], err
    fresh = tmp_path / "fresh"
    toy(fresh, cfg=other, work=False)
    assert file_bytes(tmp_path / "out") == file_bytes(fresh / "out")
    assert tree_bytes(tmp_path / "live") == tree_bytes(fresh / "live")


def test_an_unreadable_checkpoint_is_discarded_not_loaded(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path, NoisyCrashTask(crash_at=21))
    (tmp_path / "work/last.safetensors").write_bytes(b"\0" * 64)
    assert toy(tmp_path)["resumed_from_epoch"] is None
    assert "unreadable checkpoint" in capsys.readouterr().err


def test_a_folder_that_is_not_a_work_folder_is_never_deleted(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work/notes.txt").write_text("mine")
    with pytest.raises(ParamsError, match="not a training work folder"):
        toy(tmp_path)
    assert (tmp_path / "work/notes.txt").read_text() == "mine"
    with pytest.raises(ParamsError, match="overlaps the out folder"):
        train(NoisyCrashTask(), NoisyData(64, 0), None, CUT_CFG, tmp_path / "out", tmp_path / "live",
              work_dir=tmp_path / "out" / "work")


def _ddp(tmp: Path, out: Path, cfg, work: Path) -> list[dict]:
    """tests/ddp_worker.py on 2 CPU ranks with a work folder; each rank's summary."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out / "out"), str(out / "live"), str(out / "report"),
           json.dumps(cfg.to_dict()), str(work)]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / "report" / f"rank{r}.json").read_text())["summary"] for r in (0, 1)]


def test_ddp_ranks_resume_together_from_rank_0s_work_folder(tmp_path):
    cfg = CFG.replace(keep_every_epochs=1)
    work = tmp_path / "work"
    first = _ddp(tmp_path, tmp_path / "a", cfg, work)
    assert [s["resumed_from_epoch"] for s in first] == [None, None]
    # rewind the work folder to what a kill during epoch 2 leaves: last = best = epoch 1, no later checkpoint
    for name in ("last", "best"):
        shutil.copyfile(work / "epoch_0001.safetensors", work / f"{name}.safetensors")
    for name in ("epoch_0002", "epoch_0003", "final"):
        (work / f"{name}.safetensors").unlink()
    second = _ddp(tmp_path, tmp_path / "b", cfg, work)
    assert [s["resumed_from_epoch"] for s in second] == [1, 1]
    assert file_bytes(tmp_path / "b/out") == file_bytes(tmp_path / "a/out")   # optimizer and both ranks' RNG too
    assert tree_bytes(tmp_path / "b/live") == tree_bytes(tmp_path / "a/live")


def test_fingerprint_ignores_runtime_keys_and_sees_changed_inputs(tmp_path):
    from models.common.params import PlannerParams

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/a.npz").write_bytes(b"1")
    base = W.fingerprint(PlannerParams(**TINY_PLANNER), inputs=[tmp_path / "cache"])
    same = W.fingerprint(PlannerParams(**TINY_PLANNER, num_workers=3, image_cache_mb=0), inputs=[tmp_path / "cache"])
    assert same == base
    assert W.fingerprint(PlannerParams(**{**TINY_PLANNER, "depth": 2}), inputs=[tmp_path / "cache"]) != base
    (tmp_path / "cache/a.npz").write_bytes(b"22")
    assert W.fingerprint(PlannerParams(**TINY_PLANNER), inputs=[tmp_path / "cache"]) != base


def test_the_code_digest_covers_the_loaded_modules_of_models_and_stages(tmp_path, monkeypatch):
    digests = W.code_digests()
    assert {"models/train/loop.py", "models/train/workdir.py"} <= set(digests)
    assert all(k.startswith(("models/", "stages/")) for k in digests)
    (tmp_path / "models").mkdir()
    (tmp_path / "models/edited.py").write_text("a = 1\n")
    module = types.SimpleNamespace(__file__=str(tmp_path / "models/edited.py"))
    monkeypatch.setitem(sys.modules, "edited_module", module)
    before = W.code_digests(tmp_path)
    (tmp_path / "models/edited.py").write_text("a = 2\n")
    assert list(before) == ["models/edited.py"] and W.code_digests(tmp_path) != before


def test_not_run_keys_are_exactly_what_dvc_yaml_leaves_out_of_training_stages():
    """A key dvc.yaml lists re-runs the stage, so it must end a resume too; one it leaves out must not."""
    stages = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in TRAINING_STAGES:
        listed = set(stages[name]["params"])
        for section in {key.split(".")[0] for key in listed}:
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
            unlisted = {f for f in fields if f"{section}.{f}" not in listed}
            assert unlisted == fields & W.NOT_RUN_KEYS, (name, section)


def test_default_work_folders_are_outside_every_output_and_gitignored():
    stages = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = [Path(next(iter(o)) if isinstance(o, dict) else o) for s in stages.values() for o in s.get("outs", [])]
    for name in TRAINING_STAGES:
        out = next(o for o in outs if str(o).startswith("data/models/") and name.endswith(o.name))
        work = W.default_work(out)
        assert work == Path(f"data/models/.{out.name}.resume")
        assert not any(o == work or o in work.parents or work in o.parents for o in outs), work
        res = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(work / "planner/last.safetensors")],
                             cwd=ROOT)
        assert res.returncode == 0, f"{work} is not gitignored"


# --------------------------------------------------------------------------------------------------
# End to end through DVC: SIGKILL, repro again; a failed stage, one restore command
# --------------------------------------------------------------------------------------------------

EPOCHS = 8   # planner epochs (ego_mlp: TINY_PLANNER's 2); killed once its work folder holds epoch >= 2
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVCLIVE_TEST": "true", "PYTHONDONTWRITEBYTECODE": "1",
       "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "test",
       "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def _run(cmd: list[str] | str, cwd: Path, ok: bool = True) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, shell=isinstance(cmd, str))
    assert (res.returncode == 0) == ok, f"{cmd} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _make_repo(dst: Path, cache: Path) -> Path:
    """Code, .gitignore and DVC config of this repository; the real train_planner stage reading a copied tiny GT
    cache; the real planner params with TINY_PLANNER and EPOCHS; committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if rel.startswith(("models/", "stages/")) and rel.endswith(".py") and (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    shutil.copy2(ROOT / ".gitignore", dst / ".gitignore")
    shutil.copytree(cache, dst / "cache")
    yaml = YAML()
    real = yaml.load((ROOT / "params.yaml").read_text())
    planner = {**real["planner"], **TINY_PLANNER, "epochs": EPOCHS}
    with open(dst / "params.yaml", "w") as fh:
        yaml.dump({"planner": planner}, fh)
    stage = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]["train_planner"]
    stage = {"cmd": f"{sys.executable} -m stages.train_planner --cache cache --no-progress",
             "deps": ["cache", "models", "stages"], "params": stage["params"], "outs": stage["outs"]}
    with open(dst / "dvc.yaml", "w") as fh:
        yaml.dump({"stages": {"train_planner": stage}}, fh)
    _run(["git", "init", "-q"], dst)
    _run(["dvc", "init", "-q"], dst)
    shutil.copy2(ROOT / ".dvc/config", dst / ".dvc/config")   # autostage, as this repository
    _run(GIT + ["add", "-A"], dst)
    _run(GIT + ["commit", "-qm", "tiny"], dst)
    return dst


def _results(repo: Path) -> dict[str, bytes]:
    out = {"dvc.lock": (repo / "dvc.lock").read_bytes()}
    for folder in ("data/models/planner", "reports"):
        out.update({f"{folder}/{k}": v for k, v in tree_bytes(repo / folder).items()})
    return out


@pytest.fixture(scope="module")
def uninterrupted(synth_cache, tmp_path_factory):
    """Repo A: one uninterrupted ``dvc repro``, committed; returns (repo, its results)."""
    repo = _make_repo(tmp_path_factory.mktemp("uninterrupted"), synth_cache)
    out = _run(["dvc", "repro"], repo)
    assert "resumed" not in out and "discarding" not in out, out
    _run(GIT + ["add", "-A"], repo)
    _run(GIT + ["commit", "-qm", "results"], repo)
    return repo, _results(repo)


def _epoch(last: Path) -> int:
    try:
        return read_state(last)["epoch"]
    except Exception:   # not there yet (or replaced while read)
        return 0


@pytest.mark.slow
def test_killed_repro_resumes_and_ends_byte_identical(uninterrupted, synth_cache, tmp_path):
    repo = _make_repo(tmp_path / "repo", synth_cache)
    work = repo / "data/models/.planner.resume"
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while _epoch(work / "planner/last.safetensors") < 2:
            assert proc.poll() is None, "dvc repro ended before it could be killed"
            assert time.monotonic() < deadline, "no planner checkpoint of epoch 2 in time"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # dvc, its shell and the training process, as an OOM kill
        proc.wait()
    cut = _epoch(work / "planner/last.safetensors")
    assert 2 <= cut < EPOCHS, cut
    assert not (repo / "data/models/planner/planner").exists()   # nothing of the planner published
    assert (work / "ego_mlp/final.safetensors").is_file()         # the finished model kept until the stage ends
    assert ".resume" not in _run(["git", "status", "--porcelain", "--untracked-files=all"], repo)

    out = _run(["dvc", "repro"], repo)
    assert re.search(r"\.planner\.resume/ego_mlp: resumed from epoch 2/2\b", out), out
    m = re.search(r"\.planner\.resume/planner: resumed from epoch (\d+)/" + str(EPOCHS), out)
    assert m and int(m.group(1)) >= cut, out
    assert not work.exists()
    results = _results(repo)
    expected = uninterrupted[1]
    assert sorted(results) == sorted(expected)
    for name in ("data/models/planner/planner/final.safetensors", "data/models/planner/ego_mlp/final.safetensors",
                 "reports/train_planner/metrics.json", "reports/train_ego_mlp/metrics.json", "dvc.lock"):
        assert results[name] == expected[name], name
    assert results == expected   # every checkpoint (optimizer and RNG state too) and every plot row


@pytest.mark.slow
def test_a_failed_stage_is_restored_by_the_documented_command(uninterrupted):
    repo, expected = uninterrupted
    yaml = YAML()
    params = yaml.load((repo / "params.yaml").read_text())
    params["planner"]["frames"] = 5   # valid in params.yaml, beyond the cache's history: fails at run time
    with open(repo / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    out = _run(["dvc", "repro"], repo, ok=False)
    assert "frames" in out, out
    assert not (repo / "data/models/planner").exists() and not (repo / "reports/train_planner/plots").exists()

    _run(RESTORE, repo)
    assert _results(repo) == expected
    assert "up to date" in _run(["dvc", "status"], repo)
    assert _run(["git", "status", "--porcelain", "--untracked-files=all"], repo).strip() == ""
    assert "up to date" in _run(["dvc", "repro"], repo)   # nothing re-runs


def test_the_restore_command_tested_here_is_the_documented_one():
    for doc in ("README.md", "docs/faults.md"):
        assert RESTORE in (ROOT / doc).read_text(), doc
