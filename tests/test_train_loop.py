"""The shared training loop (models/train) on a tiny MLP regression task (tests/ddp_worker.py)."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from models.common.params import ParamsError
from models.train import CheckpointError, TrainConfig, TrainingDiverged, WarmupCosine, load_weights, loop, read_state
from models.train import train
from tests.ddp_worker import ToyData, ToyTask

os.environ["DVCLIVE_TEST"] = "true"
ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(epochs=3, batch_size=8, lr=0.05, weight_decay=0.01, warmup_steps=5, min_lr_ratio=0.1,
                  grad_clip=0.5, seed=3, log_every=2, device="cpu")


def run(tmp: Path, cfg: TrainConfig = CFG, task: ToyTask | None = None, resume: bool = False):
    return train(task or ToyTask(), ToyData(64, 0), ToyData(16, 1), cfg, tmp / "out", tmp / "live",
                 resume=resume, progress=False)


def tsv(path: Path) -> list[tuple[int, float]]:
    with open(path) as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][0] == "step", rows[0]
    return [(int(r[0]), float(r[1])) for r in rows[1:]]


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()} if directory.is_dir() else {}


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    """One run of CFG with the optimizer's view recorded: per step, group lrs and the clipped grad norm."""
    tmp = tmp_path_factory.mktemp("basic")
    seen, pre_clip = [], []
    adamw_step, clip = torch.optim.AdamW.step, loop.clip_gradients

    def spy_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(({g["name"]: g["lr"] for g in self.param_groups}, torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()))
        return adamw_step(self, *args, **kwargs)

    def spy_clip(params, max_norm):
        norm = clip(params, max_norm)
        pre_clip.append(norm.item())
        return norm

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        (tmp / "dvc.yaml").write_text("stages: {}\n")
        mp.setattr(torch.optim.AdamW, "step", spy_step)
        mp.setattr(loop, "clip_gradients", spy_clip)
        summary = run(tmp)
    return tmp, summary, seen, pre_clip


# --------------------------------------------------------------------------------------------------
# Config and schedule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, key, why", [
    ({"lr": -1.0}, "train.lr", "> 0.0"),
    ({"epochs": 0}, "train.epochs", ">= 1"),
    ({"epochs": 2.5}, "train.epochs", "integer"),
    ({"amp": "yes"}, "train.amp", "true or false"),
    ({"betas": [0.9]}, "train.betas", "exactly 2"),
    ({"betas": [0.9, 1.0]}, "train.betas", "< 1"),
    ({"min_lr_ratio": 2.0}, "train.min_lr_ratio", "<= 1.0"),
    ({"device": "tpu"}, "train.device", "one of"),
    ({"learning_rate": 0.1}, "train.learning_rate", "unknown key"),
])
def test_config_rejects_bad_values_naming_the_key(values, key, why):
    with pytest.raises(ParamsError) as err:
        TrainConfig.from_dict(values, source="params.yaml")
    assert key in str(err.value) and why in str(err.value) and "params.yaml" in str(err.value), str(err.value)


def test_config_from_dict_defaults_and_coercion():
    cfg = TrainConfig.from_dict({"lr": 1, "betas": [0.9, 0.95], "epochs": 2}, section="planner_train")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.betas == [0.9, 0.95] and cfg.epochs == 2
    assert cfg.warmup_steps == TrainConfig().warmup_steps
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ParamsError, match="planner_train.grad_clip"):
        TrainConfig.from_dict({"grad_clip": -1.0}, section="planner_train")


def test_run_level_config_errors(tmp_path):
    with pytest.raises(ParamsError, match=r"train.warmup_steps = 24: must be smaller than the run's 24 steps"):
        run(tmp_path, CFG.replace(warmup_steps=24))
    with pytest.raises(ParamsError, match="train.batch_size = 128: larger than the train set"):
        run(tmp_path, CFG.replace(batch_size=128, drop_last=True))


def test_schedule_values_at_warmup_peak_and_cosine_end():
    s = WarmupCosine(total_steps=25, warmup_steps=4, min_lr_ratio=0.1)
    assert [s.factor(i) for i in range(4)] == [0.2, 0.4, 0.6, 0.8]      # (s + 1) / (W + 1)
    assert s.factor(4) == 1.0                                            # peak at s = W
    assert math.isclose(s.factor(14), 0.1 + 0.9 * 0.5, rel_tol=1e-12)    # cosine midpoint
    assert s.factor(24) == 0.1                                           # last step: min_lr_ratio
    assert s.factor(100) == 0.1
    assert all(s.factor(i) > s.factor(i + 1) for i in range(4, 24))
    assert WarmupCosine(10, 0, 0.0).factor(0) == 1.0 and WarmupCosine(10, 0, 0.0).factor(9) == 0.0


def test_each_group_gets_its_own_scheduled_lr(basic):
    tmp, summary, seen, _ = basic
    total = summary["global_step"]
    assert total == 24 and len(seen) == 24
    sched = WarmupCosine(total, CFG.warmup_steps, CFG.min_lr_ratio)
    for step, (lrs, _) in enumerate(seen):
        assert lrs == {"q": CFG.lr * sched.factor(step), "m": CFG.lr * 0.5 * sched.factor(step)}, step
    assert seen[CFG.warmup_steps][0]["q"] == CFG.lr and seen[-1][0]["q"] == CFG.lr * CFG.min_lr_ratio
    logged = dict(tsv(tmp / "live/plots/metrics/lr/m.tsv"))  # row at step k: lr of update k
    assert logged[24] == CFG.lr * 0.5 * CFG.min_lr_ratio and logged[6] == CFG.lr * 0.5


def test_gradient_clipping_bounds_the_norm(basic):
    _, _, seen, pre_clip = basic
    post = [norm for _, norm in seen]
    assert max(pre_clip) > 2 * CFG.grad_clip                    # clipping had work to do
    for before, after in zip(pre_clip, post):
        assert after <= CFG.grad_clip * (1 + 1e-5)
        assert after == pytest.approx(min(before, CFG.grad_clip), rel=1e-4)


# --------------------------------------------------------------------------------------------------
# A run: loss, checkpoints, DVCLive
# --------------------------------------------------------------------------------------------------


def test_loss_decreases(basic):
    tmp, summary, _, _ = basic
    val = tsv(tmp / "live/plots/metrics/val/loss.tsv")
    assert [s for s, _ in val] == [8, 16, 24]
    assert val[-1][1] < 0.5 * val[0][1]
    train_loss = tsv(tmp / "live/plots/metrics/train/loss.tsv")
    assert train_loss[-1][1] < 0.5 * train_loss[0][1]
    assert summary["val"]["loss"] == val[-1][1] and summary["best"] == {
        "metric": "loss", "mode": "min", "value": val[-1][1], "epoch": 3}


def test_checkpoints_are_safetensors_with_full_state(basic):
    tmp, _, _, _ = basic
    out = tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "final.safetensors", "last.safetensors"]
    assert not [p for p in tmp.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".bin")]
    assert not [p for p in tmp.rglob(".*tmp-*")]
    with safe_open(str(out / "final.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert list(f.metadata()) == ["train_state"]
    assert {"model.0.weight", "model.2.bias", "optim.0.exp_avg", "optim.3.exp_avg_sq", "optim.0.step",
            "rng.0.torch", "rng.0.numpy_keys", "rng.0.python"} <= keys
    state = read_state(out / "final.safetensors")
    assert state["epoch"] == 3 and state["global_step"] == 24 and state["world_size"] == 1
    assert state["scheduler"] == {"name": "warmup_cosine", "total_steps": 24, "warmup_steps": 5,
                                  "min_lr_ratio": 0.1, "step": 24}
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["q", "m"]
    assert state["config"] == {k: v for k, v in CFG.to_dict().items() if k != "num_workers"}
    assert state["best"]["epoch"] == 3
    model = ToyTask().build_model()
    assert load_weights(out / "final.safetensors", model)["epoch"] == 3
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        for k, v in model.state_dict().items():
            assert torch.equal(v, f.get_tensor(f"model.{k}")), k


def test_load_weights_is_strict_and_names_keys(basic):
    tmp, _, _, _ = basic
    path = tmp / "out" / "final.safetensors"
    with pytest.raises(CheckpointError) as err:
        load_weights(path, nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)))
    assert "2.weight" in str(err.value) and "(2, 16)" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_weights(path, nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.Linear(1, 1)))
    assert "missing in file: 3.bias, 3.weight" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_weights(path, nn.Sequential(nn.Linear(4, 16)))
    assert "unexpected in file: 2.bias, 2.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp / "out" / "nope.safetensors", nn.Linear(1, 1))
    plain, layer = tmp / "plain.safetensors", nn.Linear(3, 2)     # a plain state_dict file loads too
    save_file(layer.state_dict(), str(plain))
    fresh = nn.Linear(3, 2)
    assert load_weights(plain, fresh) == {} and torch.equal(fresh.weight, layer.weight)


def test_dvclive_files_and_dvc_yaml_untouched(basic):
    tmp, _, _, _ = basic
    live = tmp / "live"
    metrics = json.loads((live / "metrics.json").read_text())  # the headline only, under the folder's name
    assert metrics == {"live": {"loss": tsv(live / "plots/metrics/train/loss.tsv")[-1][1],
                                "val_loss": tsv(live / "plots/metrics/val/loss.tsv")[-1][1]}}
    names = sorted(str(p.relative_to(live / "plots/metrics")) for p in (live / "plots/metrics").rglob("*.tsv"))
    assert names == ["lr/m.tsv", "lr/q.tsv", "train/grad_norm.tsv", "train/loss.tsv",  # no epoch-vs-step chart
                     "train/mae.tsv", "val/loss.tsv", "val/mae.tsv"]
    assert [s for s, _ in tsv(live / "plots/metrics/train/loss.tsv")] == list(range(2, 25, 2))
    assert (tmp / "dvc.yaml").read_text() == "stages: {}\n"
    assert [p.name for p in tmp.rglob("dvc.yaml")] == ["dvc.yaml"] and not (tmp / ".dvc").exists()


def test_dvclive_outside_test_mode_never_writes_dvc_yaml(tmp_path, monkeypatch):
    """Real DVCLive integration (no DVCLIVE_TEST) in a DVC repo: our dvc.yaml stays byte-identical and
    DVC reads the metrics and plots it declares."""
    monkeypatch.delenv("DVCLIVE_TEST")
    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    dvc_yaml = "metrics:\n- live/metrics.json\nplots:\n- live/plots/metrics:\n    x: step\n"
    (tmp_path / "dvc.yaml").write_text(dvc_yaml)
    train(ToyTask(), ToyData(32, 0), ToyData(8, 1), CFG.replace(epochs=1, warmup_steps=1), tmp_path / "out", "live",
          resume=False)
    assert (tmp_path / "dvc.yaml").read_text() == dvc_yaml and len(list(tmp_path.rglob("dvc.yaml"))) == 1
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], check=True,
                           capture_output=True, text=True).stdout
    shown = json.loads(shown)
    data = next(iter(shown.values()))["data"]["live/metrics.json"]["data"]
    assert set(data["live"]) == {"loss", "val_loss"}
    plots = json.loads(subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], check=True,
                                      capture_output=True, text=True).stdout)["data"]
    assert {f"live/plots/metrics/{n}.tsv" for n in ("train/loss", "val/loss", "lr/q")} <= set(plots)


# --------------------------------------------------------------------------------------------------
# Reproducibility: determinism, resume, divergence
# --------------------------------------------------------------------------------------------------


def test_same_config_gives_identical_checkpoint_bytes(basic, tmp_path):
    run(tmp_path)
    assert file_bytes(tmp_path / "out") == file_bytes(basic[0] / "out")
    other = tmp_path / "seed4"
    run(other, CFG.replace(seed=4))
    assert file_bytes(other / "out")["final.safetensors"] != file_bytes(tmp_path / "out")["final.safetensors"]


class NoisyData(ToyData):
    """Augmentation from numpy's and python's global RNGs (seeded per loader worker)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {"x": item["x"] + float(np.random.normal(0, 0.05)), "y": item["y"] + 0.01 * random.random()}


class NoisyCrashTask(ToyTask):
    """Dropout and input jitter from torch's global RNG; optionally killed at update ``crash_at``."""

    def __init__(self, crash_at: int = 0):
        super().__init__()
        self.crash_at = crash_at

    def build_model(self):
        return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))

    def param_groups(self, model):
        return [{"name": "q", "params": list(model[0].parameters())},
                {"name": "m", "params": list(model[3].parameters()), "lr_mult": 0.5}]

    def loss(self, model, batch):
        if self.calls + 1 == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        batch = {"x": batch["x"] + 0.01 * torch.randn_like(batch["x"]), "y": batch["y"]}
        return super().loss(model, batch)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    cfg = CFG.replace(epochs=4, num_workers=1)
    full, cut = tmp_path / "full", tmp_path / "cut"

    def run_noisy(tmp, task, resume=False):
        return train(task, NoisyData(64, 0), NoisyData(16, 1), cfg, tmp / "out", tmp / "live", resume=resume)

    run_noisy(full, NoisyCrashTask())
    with pytest.raises(KeyboardInterrupt):
        run_noisy(cut, NoisyCrashTask(crash_at=21))     # killed in epoch 3, after last.safetensors of epoch 2
    assert read_state(cut / "out/last.safetensors")["epoch"] == 2 and not (cut / "out/final.safetensors").exists()
    assert tsv(cut / "live/plots/metrics/train/loss.tsv")[-1][0] == 20   # rows past the checkpoint
    summary = run_noisy(cut, NoisyCrashTask(), resume=True)
    assert summary["resumed_from_epoch"] == 2 and summary["global_step"] == 32
    assert file_bytes(cut / "out") == file_bytes(full / "out")           # weights, optimizer, RNG, metrics
    for name in ("train/loss.tsv", "lr/q.tsv", "val/loss.tsv"):
        assert (cut / "live/plots/metrics" / name).read_text() == (full / "live/plots/metrics" / name).read_text()
    assert json.loads((cut / "live/metrics.json").read_text()) == json.loads((full / "live/metrics.json").read_text())
    with pytest.raises(ParamsError, match=r"lr: 0.05 -> 0.1"):
        train(NoisyCrashTask(), NoisyData(64, 0), None, cfg.replace(lr=0.1), cut / "out", cut / "live")
    final = (cut / "out/final.safetensors").read_bytes()
    (cut / "out/final.safetensors").unlink()       # as if killed between last and final
    assert run_noisy(cut, NoisyCrashTask(), resume=True)["global_step"] == 32
    assert (cut / "out/final.safetensors").read_bytes() == final


def test_crash_while_writing_leaves_previous_checkpoint(tmp_path, monkeypatch):
    import models.train.checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def dying_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:                       # epoch 2: half a file, then the process is killed
            Path(path).write_bytes(b"\x00" * 100)
            raise KeyboardInterrupt("killed while writing")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    assert ".last.safetensors.tmp-" in calls[1]
    assert sorted(file_bytes(tmp_path / "out")) == ["best.safetensors", "last.safetensors"]   # no temp file
    assert read_state(tmp_path / "out/last.safetensors")["epoch"] == 1
    load_weights(tmp_path / "out/last.safetensors", ToyTask().build_model())


def _weights(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def test_checkpoint_policy_eval_every_and_no_val_set(tmp_path, basic):
    run(tmp_path, CFG.replace(eval_every_epochs=2, keep_every_epochs=2))
    # validating less often changes the val curve and best.safetensors, never the trained weights
    assert _weights(tmp_path / "out/final.safetensors") == _weights(basic[0] / "out/final.safetensors")
    assert [s for s, _ in tsv(tmp_path / "live/plots/metrics/val/loss.tsv")] == [16, 24]   # epoch 2 and the last
    assert sorted(file_bytes(tmp_path / "out")) == ["best.safetensors", "epoch_0002.safetensors",
                                                    "final.safetensors", "last.safetensors"]
    assert read_state(tmp_path / "out/epoch_0002.safetensors")["epoch"] == 2
    summary = train(ToyTask(), ToyData(64, 0), None, CFG, tmp_path / "noval", tmp_path / "noval_live",
                    resume=False)
    assert summary["best"]["value"] is None and summary["val"] == {}
    assert sorted(file_bytes(tmp_path / "noval")) == ["final.safetensors", "last.safetensors"]


class NanTask(ToyTask):
    """From update ``at``: a NaN loss, or a finite loss whose gradients are NaN. Records the checkpoint
    bytes at that moment."""

    def __init__(self, at: int, where: str, out: Path):
        super().__init__()
        self.at, self.where, self.out, self.before = at, where, out, None

    def loss(self, model, batch):
        loss, logs = super().loss(model, batch)
        if self.calls == self.at:
            self.before = file_bytes(self.out)
            if self.where == "loss":
                loss = loss * float("nan")
            else:
                loss.register_hook(lambda g: g * float("nan"))
        return loss, logs


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_stops_naming_step_and_keeps_last_good_checkpoint(tmp_path, where):
    task = NanTask(at=13, where=where, out=tmp_path / "out")
    with pytest.raises(TrainingDiverged) as err:
        run(tmp_path, task=task)
    msg = str(err.value)
    last = tmp_path / "out" / "last.safetensors"
    assert "step 13 " in msg and str(last) in msg and "after epoch 1" in msg, msg
    assert err.value.step == 13 and err.value.checkpoint == last
    assert task.calls == 13                                              # stopped immediately
    assert file_bytes(tmp_path / "out") == task.before and set(task.before) == {"last.safetensors", "best.safetensors"}
    assert tsv(tmp_path / "live/plots/metrics/train/loss.tsv")[-1][0] == 12


def test_nan_in_first_epoch_says_no_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step 3 .*none \(no epoch finished\)"):
        run(tmp_path, task=NanTask(at=3, where="loss", out=tmp_path / "out"))
    assert file_bytes(tmp_path / "out") == {}


def test_bf16_autocast_on_cpu_trains(tmp_path):
    summary = run(tmp_path, CFG.replace(amp=True, epochs=2))
    assert math.isfinite(summary["val"]["loss"]) and (tmp_path / "out/final.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# DDP: 2 processes (gloo, CPU) equal one process with the same global batch
# --------------------------------------------------------------------------------------------------


def test_ddp_two_processes_match_single_process(tmp_path, basic):
    cfg = CFG.replace(num_workers=1)   # 64 samples, global batch 8 = 2 ranks x 4, no dropout
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(ddp / "out"), str(ddp / "live"), str(ddp / "report"),
           json.dumps(cfg.to_dict())]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((ddp / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["counts"] for r in reports] == [{"save_checkpoint": 3, "copy_checkpoint": 4, "LiveLog": 1},
                                              {"save_checkpoint": 0, "copy_checkpoint": 0, "LiveLog": 0}]
    assert all(r["summary"]["world_size"] == 2 and not r["group_initialized_after"] for r in reports)
    assert reports[0]["summary"]["val"] == reports[1]["summary"]["val"]        # all-reduced
    assert sorted(p.name for p in (ddp / "out").iterdir()) == ["best.safetensors", "final.safetensors",
                                                              "last.safetensors"]
    assert read_state(ddp / "out/final.safetensors")["world_size"] == 2
    assert (ddp / "live/metrics.json").is_file()

    single = run(tmp_path / "single", cfg)
    model = ToyTask().build_model()
    load_weights(tmp_path / "single/out/final.safetensors", model)
    ref = model.state_dict()
    for r in (0, 1):
        with safe_open(str(ddp / "report" / f"rank{r}.safetensors"), "pt") as f:
            for k, v in ref.items():
                assert (f.get_tensor(k) - v).abs().max().item() <= 1e-6, (r, k)
    for k, v in single["val"].items():
        assert reports[0]["summary"]["val"][k] == pytest.approx(v, abs=1e-6)
