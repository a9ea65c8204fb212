"""The train_tokenizer and report_tokenizer stages on a tiny tracks output: one process, and 2 gloo processes
under torchrun (the tokenizer's loss is part of its forward, so the DDP wrapper synchronises its gradients)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_dim=32, num_heads=2, num_layers=2, decoder_mlp_hidden_dim=32, codebook_size=64, epochs=2,
            batch_size=4, img_size=[64, 96])


@pytest.fixture(scope="module")
def trained(synth_dataroot, tmp_path_factory):
    """Tracks of the tiny world (8 x 8 grid, 8-frame windows) and a tokenizer trained on them in one process."""
    from stages import tracks, train_tokenizer

    root = tmp_path_factory.mktemp("tokenizer_stage")
    params = root / "params.yaml"
    with open(params, "w") as fh:
        YAML(typ="safe", pure=True).dump({
            "data": {"dataroot": str(synth_dataroot), "version": "v1.0-synth", "splits": ["train", "val"]},
            "tracks": {"window": 8, "window_stride": 4, "image_size": [64, 96], "grid_size": 8, "workers": 1,
                       "input": str(synth_dataroot / "v1.0-synth")},
            "tokenizer": TINY}, fh)
    assert tracks.main(["--params", str(params), "--out", str(root / "tracks"), "--metrics", "",
                        "--no-progress"]) == 0
    assert train_tokenizer.main(["--params", str(params), "--tracks", str(root / "tracks"), "--out",
                                 str(root / "model"), "--live", str(root / "live"), "--no-progress"]) == 0
    return root


def test_report_scores_final_and_writes_a_numeric_headline(trained):
    from stages import report_tokenizer

    out = trained / "report"
    assert report_tokenizer.main(["--params", str(trained / "params.yaml"), "--tracks", str(trained / "tracks"),
                                  "--model", str(trained / "model" / "final.safetensors"), "--out", str(out)]) == 0
    head = json.loads((out / "metrics.json").read_text())
    assert set(head) == {"model", "model_visible", "zero"}
    assert set(head["model"]) == {"mse", "norm_acc", "delta_auc", "codes", "mse_share", "auc_share"}
    assert set(head["model_visible"]) == {"mse", "norm_acc", "delta_auc", "mse_share", "auc_share"}
    assert all(type(v) in (int, float) for row in head.values() for v in row.values())
    details = json.loads((out / "details.json").read_text())
    assert details["rows"]["model"]["mse"] == head["model"]["mse"]
    assert details["rows"]["zero_motion"]["delta_auc"] == head["zero"]["delta_auc"]
    assert details["rows_visible"]["model"]["delta_auc"] == head["model_visible"]["delta_auc"]
    assert details["share"]["all_steps"]["model"]["mse"] == head["model"]["mse_share"]
    # every reference is scored both ways, and the ceiling and zero motion pin the shares at 1 and 0
    for scoring in ("rows", "rows_visible"):
        assert set(details[scoring]) == {"model", "zero_motion", "perfect_labels", "affine_flow", "mean_velocity"}
    for scoring in ("all_steps", "visible_steps"):
        assert details["share"][scoring]["perfect_labels"]["delta_auc"] == 1.0
        assert details["share"][scoring]["zero_motion"]["mse"] == 0.0
    assert (out / "figures" / "gap_to_ceiling.png").stat().st_size > 0


def test_ddp_two_processes_match_one(trained, tmp_path):
    """torchrun with 2 gloo processes (global batch 4 = 2 x 2) ends where one process does."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_tokenizer", "--params", str(trained / "params.yaml"), "--tracks",
           str(trained / "tracks"), "--out", str(tmp_path / "model"), "--live", str(tmp_path / "live")]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((trained / "live" / "metrics.json").read_text())["live"]
    two = json.loads((tmp_path / "live" / "metrics.json").read_text())["live"]
    assert set(one) == {"loss", "val_loss"}
    for k, v in one.items():
        assert two[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    from models.train.checkpoint import read_state
    from safetensors.torch import load_file

    assert read_state(tmp_path / "model" / "final.safetensors")["world_size"] == 2
    a = load_file(str(trained / "model" / "final.safetensors"))
    b = load_file(str(tmp_path / "model" / "final.safetensors"))
    weights = [k for k in a if k.startswith("model.")]  # the weights, not the optimizer state
    assert weights and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in weights)


def test_an_empty_split_is_refused_with_a_message(trained, tmp_path, capsys):
    """Every consumer of data/tracks refuses an empty split by name (not a reshape error deep inside)."""
    from safetensors.numpy import load_file, save_file

    from stages import train_tokenizer

    tracks = tmp_path / "tracks"
    shutil.copytree(trained / "tracks", tracks)
    arrays = load_file(str(tracks / "val.safetensors"))
    save_file({k: v[:0] for k, v in arrays.items()}, str(tracks / "val.safetensors"))
    rc = train_tokenizer.main(["--params", str(trained / "params.yaml"), "--tracks", str(tracks), "--out",
                               str(tmp_path / "model"), "--live", str(tmp_path / "live"), "--no-progress"])
    assert rc == 1 and "val.safetensors: the 'val' split has no windows" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_grouped_tokens_track_codes_and_visible_loss_through_both_stages(trained, tmp_path):
    """The quality options (issue 15) run end to end on real tracks: params -> stage -> checkpoint -> report,
    which counts the per-track tokens in the window's budget and scores the visible points."""
    from stages import report_tokenizer, train_tokenizer

    params = tmp_path / "params.yaml"
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load((trained / "params.yaml").read_text())
    doc["tokenizer"].update(point_groups=2, track_codes=16, loss_steps="visible", epochs=1)
    with open(params, "w") as fh:
        yaml.dump(doc, fh)
    assert train_tokenizer.main(["--params", str(params), "--tracks", str(trained / "tracks"), "--out",
                                 str(tmp_path / "model"), "--live", str(tmp_path / "live"), "--no-progress"]) == 0
    assert report_tokenizer.main(["--params", str(params), "--tracks", str(trained / "tracks"), "--model",
                                  str(tmp_path / "model" / "final.safetensors"), "--out", str(tmp_path / "report")]) == 0
    codebook = json.loads((tmp_path / "report" / "details.json").read_text())["codebook"]
    # 8 x 8 tracks, 8-frame windows: 7 steps x 4 groups of 64 codes (6 bits) + 64 tracks x 15 codes ([5, 3])
    assert codebook["tokens_per_window"] == 7 * 4 + 64 and codebook["track_codebook_size"] == 15
    assert codebook["bits_per_window"] == pytest.approx(7 * 4 * 6 + 64 * math.log2(15))
    assert 1 <= codebook["track_codes_used"] <= 15
    # a model built with other options cannot load these weights: the stage says which key is wrong
    assert report_tokenizer.main(["--params", str(trained / "params.yaml"), "--tracks", str(trained / "tracks"),
                                  "--model", str(tmp_path / "model" / "final.safetensors"),
                                  "--out", str(tmp_path / "wrong")]) != 0
