"""Planner samples from the GT cache, the Ego-MLP baseline, the train_planner / report_planner stages and DDP."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.common.params import ParamsError, PlannerParams
from models.planner.data import (
    ImageDecodeError,
    PlannerSamples,
    decode_resized,
    previous_frame_indices,
)
from models.planner.ego_mlp import EgoMLP, ego_features, feature_dim
from models.planner.report import planning_report
from tests.conftest import TINY_PLANNER

ROOT = Path(__file__).resolve().parents[1]

def tiny(**overrides) -> PlannerParams:
    return PlannerParams(**{**TINY_PLANNER, **overrides})


def write_params(path: Path, **overrides) -> Path:
    from ruamel.yaml import YAML

    with open(path, "w") as fh:
        YAML(typ="safe", pure=True).dump({"planner": {**TINY_PLANNER, **overrides}}, fh)
    return path


# --------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------


def test_previous_frame_indices_clamp_at_the_scene_start():
    scene = np.array([0, 0, 0, 1, 1])
    frame = np.array([0, 1, 2, 0, 1])
    assert previous_frame_indices(scene, frame, 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3],
                                                                [3, 3, 4]]
    assert previous_frame_indices(scene, frame, 1).tolist() == [[0], [1], [2], [3], [4]]
    # samples out of order are found by (scene, frame), not by position
    assert previous_frame_indices(scene[::-1], frame[::-1], 2).tolist() == [[1, 0], [1, 1], [3, 2], [4, 3],
                                                                           [4, 4]]
    with pytest.raises(ValueError, match="no key frame 1"):
        previous_frame_indices(np.array([0, 0]), np.array([0, 2]), 2)


def test_samples_hold_the_previous_key_frames_of_the_scene(synth_cache):
    p = tiny(frames=3)
    ds = PlannerSamples(synth_cache, "train", p)
    lazy = PlannerSamples(synth_cache, "train", tiny(frames=3, image_cache_mb=0))
    assert ds.images is not None and lazy.images is None
    a = ds.cache.arrays
    for i in (0, 1, 5, len(ds) - 1):
        item, other = ds[i], lazy[i]
        assert item["frames"].shape == (3, 1, 3, 28, 28) and item["frames"].dtype == np.uint8
        np.testing.assert_array_equal(item["frames"], other["frames"])    # cached == decoded per item
        for t in range(3):
            j = ds.frame_index[i, t]
            assert a["scene_index"][j] == a["scene_index"][i]
            assert a["frame_index"][j] == max(a["frame_index"][i] - (2 - t), 0)
            own = decode_resized(ds._paths(int(j))[0], 28, "test")
            np.testing.assert_array_equal(item["frames"][t, 0], own)
        np.testing.assert_array_equal(item["target"], a["future_waypoints"][i, :, :2])
        assert item["target_valid"].tolist() == a["future_valid"][i].tolist()
    # the current frame is the sample's own CAM_FRONT image, and frames differ over time (the ego moves)
    assert not np.array_equal(ds[5]["frames"][0], ds[5]["frames"][2])


def test_frames_beyond_the_cached_history_are_refused(synth_cache):
    with pytest.raises(ParamsError, match=r"planner.frames = 5.*cache.history_steps"):
        PlannerSamples(synth_cache, "val", tiny(frames=5))


def test_a_cache_with_another_horizon_is_refused(synth_cache):
    with pytest.raises(ParamsError, match=r"planner.future_steps = 4.*cache.future_steps = 6"):
        PlannerSamples(synth_cache, "val", tiny(future_steps=4))


def test_img_size_below_the_patch_is_refused():
    from models.planner.config import PlannerConfig

    with pytest.raises(ParamsError, match=r"planner.img_size = 10.*patch_size = 14"):
        PlannerConfig.from_params(tiny(img_size=10))


def test_an_undecodable_image_names_the_sample(synth_cache, synth_dataroot, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synth_dataroot / "samples" / "CAM_FRONT", root / "samples" / "CAM_FRONT")
    probe = PlannerSamples(synth_cache, "val", tiny(image_cache_mb=0), dataroot=root)
    bad = Path(probe._paths(3)[0])
    bad.write_bytes(b"not a jpeg")
    token = probe.cache.samples[3]["token"]
    with pytest.raises(ImageDecodeError, match=rf"{bad.name}.*sample 3 \(token {token}.*CAM_FRONT"):
        probe[3]
    with pytest.raises(ImageDecodeError, match=rf"sample 3 \(token {token}"):
        PlannerSamples(synth_cache, "val", tiny(), dataroot=root)   # decoding up-front fails the same way
    bad.unlink()
    with pytest.raises(ImageDecodeError, match="sample 3"):
        probe[3]


# --------------------------------------------------------------------------------------------------
# Ego-MLP and the report
# --------------------------------------------------------------------------------------------------


def test_ego_features_layout():
    batch = {"ego_history": torch.tensor([[[-2.0, -4.0, 0.1], [-1.0, -2.0, 0.05], [0.0, 0.0, 0.0]]]),
             "ego_history_valid": torch.tensor([[False, True, True]]),
             "ego_status": torch.tensor([[4.0, 0.5, 0.1, 0.2, 3.9]]), "command": torch.tensor([1])}
    f = ego_features(batch, use_command=True)
    assert f.tolist()[0] == pytest.approx([-2.0, -4.0, 0.1, -1.0, -2.0, 0.05, 0.0, 1.0, 4.0, 0.5, 0.1, 0.2, 3.9,
                                           0.0, 1.0, 0.0])
    assert f.shape[1] == feature_dim(3, 5, True) and ego_features(batch, False).shape[1] == feature_dim(3, 5, False)
    mlp = EgoMLP(f.shape[1], 8, 3, 6)
    assert mlp(f)["waypoints"].shape == (1, 6, 2)
    assert len([m for m in mlp.net if isinstance(m, torch.nn.Linear)]) == 3


def test_planning_report_rows_and_verdict(synth_cache):
    from models.nuscenes.dataset import GTCacheDataset
    from models.planner.report import kinematic_predictions

    a = GTCacheDataset(synth_cache, "val").arrays
    gt = a["future_waypoints"][..., :2]
    preds = {"perfect": gt.copy(), "zero": np.zeros_like(gt), **kinematic_predictions(a, 6, 0.5)}
    rep = planning_report(preds, a)
    assert set(rep["rows"]) == {"perfect", "zero", "constant_velocity", "constant_turn_rate"}
    for conv in ("uniad", "stp3"):
        assert rep["rows"]["perfect"][conv]["l2_avg"] == 0.0 and rep["rows"]["perfect"][conv]["col_avg"] == 0.0
        assert rep["rows"]["constant_velocity"][conv]["l2_avg"] > 0.0
    assert rep["beats_constant_velocity"]["perfect"] == {"uniad": True, "stp3": True}
    assert rep["beats_constant_velocity"]["zero"] == {"uniad": False, "stp3": False}


# --------------------------------------------------------------------------------------------------
# Stages, single process and DDP
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synth_cache, tmp_path_factory):
    from stages import report_planner, train_planner

    tmp = tmp_path_factory.mktemp("planner_stage")
    params = write_params(tmp / "params.yaml")
    rc = train_planner.main(["--params", str(params), "--cache", str(synth_cache), "--out", str(tmp / "models"),
                             "--live", str(tmp / "live"), "--live-mlp", str(tmp / "live_mlp")])
    assert rc == 0
    rc = report_planner.main(["--params", str(params), "--cache", str(synth_cache), "--models", str(tmp / "models"),
                              "--out", str(tmp / "report")])
    assert rc == 0
    return tmp


def test_train_planner_writes_checkpoints_and_logs(trained):
    for model in ("planner", "ego_mlp"):
        names = sorted(p.name for p in (trained / "models" / model).iterdir())
        assert names == ["best.safetensors", "final.safetensors", "last.safetensors"], model
    for live in ("live", "live_mlp"):
        metrics = json.loads((trained / live / "metrics.json").read_text())
        assert set(metrics[live]) == {"loss", "val_loss"}
        for name in ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "loss"):
            assert (trained / live / "plots" / "metrics" / "val" / f"{name}.tsv").is_file()


def test_report_planner_scores_every_row_under_both_conventions(trained):
    head = json.loads((trained / "report" / "metrics.json").read_text())
    rep = json.loads((trained / "report" / "details.json").read_text())
    assert head == {name: {conv: {k: row[conv][k] for k in ("l2_avg", "col_avg")} for conv in row}
                    for name, row in rep["rows"].items()}
    assert set(rep["rows"]) == {"planner", "planner_fixed_image", "ego_mlp", "constant_velocity",
                                "constant_turn_rate"}
    assert set(rep["image_ablation_l2_cost"]) == {"uniad", "stp3"}
    keys = {f"{m}_{k}" for m in ("l2", "col") for k in ("1s", "2s", "3s", "avg")}
    for row in rep["rows"].values():
        assert set(row) == {"uniad", "stp3"} and all(set(row[c]) == keys for c in row)
    assert set(rep["beats_constant_velocity"]) == {"planner", "planner_fixed_image", "ego_mlp", "constant_turn_rate"}
    figures = sorted((trained / "report" / "figures").iterdir())
    assert len(figures) == 1 and figures[0].suffix == ".png"


def test_fixed_images_replace_only_the_frames():
    from models.planner.report import FixedImages

    items = [{"frames": np.full((2, 1, 3, 4, 4), k, np.uint8), "target": np.full((6, 2), k, np.float32)}
             for k in range(3)]
    fixed = FixedImages(items, index=1)
    assert len(fixed) == 3
    for k in range(3):
        assert (fixed[k]["frames"] == 1).all() and (fixed[k]["target"] == k).all()
    assert (items[2]["frames"] == 2).all()                                  # the samples themselves untouched


def test_report_planner_is_deterministic(trained, synth_cache):
    from stages import report_planner

    out = trained / "report_again"
    assert report_planner.main(["--params", str(trained / "params.yaml"), "--cache", str(synth_cache),
                                "--models", str(trained / "models"), "--out", str(out)]) == 0
    for name in ("metrics.json", "details.json"):
        assert (out / name).read_bytes() == (trained / "report" / name).read_bytes()
    for fig in (trained / "report" / "figures").iterdir():
        assert (out / "figures" / fig.name).read_bytes() == fig.read_bytes()


def test_train_planner_refuses_bad_params_before_any_work(tmp_path, synth_cache, capsys):
    from stages import train_planner

    params = write_params(tmp_path / "params.yaml", patch_size=32)
    rc = train_planner.main(["--params", str(params), "--cache", str(synth_cache), "--out", str(tmp_path / "m"),
                             "--live", str(tmp_path / "l"), "--live-mlp", str(tmp_path / "lm")])
    assert rc == 2
    assert "planner.img_size = 28" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() and not (tmp_path / "l").exists()


def test_ddp_two_processes_match_one(trained, synth_cache, tmp_path):
    """torchrun with 2 gloo processes (global batch 4 = 2 x 2) ends where one process does."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_planner", "--params", str(trained / "params.yaml"), "--cache", str(synth_cache),
           "--out", str(tmp_path / "models"), "--live", str(tmp_path / "live"), "--live-mlp",
           str(tmp_path / "live_mlp")]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for live in ("live", "live_mlp"):
        one = json.loads((trained / live / "metrics.json").read_text())[live]
        two = json.loads((tmp_path / live / "metrics.json").read_text())[live]
        for k, v in one.items():
            assert two[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (live, k)
    from models.train.checkpoint import read_state

    assert read_state(tmp_path / "models" / "planner" / "final.safetensors")["world_size"] == 2
