"""The geometry stages at a tiny size: convert -> train -> report on the tiny synthetic world, DDP with 2 CPU
processes, inference on a sequence folder, and the losses by hand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from models.geometry.losses import aleatoric_loss, camera_loss, depth_to_world_points, mask_loss

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = {"img_size": 28, "embed_dim": 32, "num_heads": 2, "encoder_depth": 1, "depth": 2, "pi3_layers": 1,
            "camera_trunk_depth": 1, "camera_iterations": 1, "dpt_features": 8, "dpt_out_channels": [4, 4, 8, 8],
            "mask_hidden_dim": 4}
TRAIN = {"frames": 2, "cameras": ["CAM_FRONT", "CAM_BACK"], "image_size": [28, 42], "epochs": 1, "batch_size": 4,
         "window_stride": 2, "figure_windows": 1, "warmup_steps": 1}


@pytest.fixture(scope="module")
def trained(synth_cache, synth_dataroot, tmp_path_factory):
    from stages import convert_weights, report_geometry, train_geometry

    root = tmp_path_factory.mktemp("geometry_stages")
    (root / "ckpt").mkdir()
    params = root / "params.yaml"
    with open(params, "w") as fh:
        YAML(typ="safe", pure=True).dump({"geometry": GEOMETRY,
                                          "train_geometry": {**TRAIN, "input": f"{synth_dataroot}/v1.0-synth"},
                                          "convert": {"checkpoint_dir": str(root / "ckpt")}}, fh)
    common = ["--params", str(params), "--no-progress"]
    assert convert_weights.main(common + ["--out", str(root / "weights"), "--metrics", ""]) == 0
    init = str(root / "weights" / "geometry_init.safetensors")
    assert train_geometry.main(common + ["--cache", str(synth_cache), "--init", init, "--out", str(root / "model"),
                                         "--live", str(root / "live")]) == 0
    assert report_geometry.main(common + ["--cache", str(synth_cache), "--init", init, "--model",
                                          str(root / "model" / "final.safetensors"), "--out",
                                          str(root / "report")]) == 0
    return root


def test_train_then_report_three_predictors_on_the_same_windows(trained):
    head = json.loads((trained / "report" / "metrics.json").read_text())
    assert set(head) == {"model", "init", "baseline"}
    for name, values in head.items():
        assert {"depth_abs_rel", "depth_delta1", "depth_median_abs_rel", "auc30", "rra15", "ate_m"} <= set(values)
        assert all(isinstance(v, float) and np.isfinite(v) for v in values.values()), name
    assert "mask_iou" in head["model"] and "mask_iou" in head["init"]
    details = json.loads((trained / "report" / "details.json").read_text())
    assert details["truth"].startswith("exact dense depth") and details["windows"] > 0
    pairs = {n: p["camera"]["pairs"] for n, p in details["predictors"].items()}
    assert len(set(pairs.values())) == 1 and pairs["model"] == details["windows"] * 6   # 4 frames: 6 pairs each
    assert (trained / "report" / "figures" / "window_000.png").stat().st_size > 10_000
    live = json.loads((trained / "live" / "metrics.json").read_text())["live"]
    assert {"loss", "val_loss"} <= set(live)


def test_ddp_two_processes_match_one(trained, synth_cache, tmp_path):
    """torchrun with 2 gloo processes (global batch 4 = 2 x 2) ends where one process does."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_geometry", "--params", str(trained / "params.yaml"), "--cache", str(synth_cache),
           "--init", str(trained / "weights" / "geometry_init.safetensors"), "--out", str(tmp_path / "model"),
           "--live", str(tmp_path / "live"), "--no-progress"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((trained / "live" / "metrics.json").read_text())["live"]
    two = json.loads((tmp_path / "live" / "metrics.json").read_text())["live"]
    for k, v in one.items():
        assert two[k] == pytest.approx(v, rel=1e-3, abs=1e-4), k


def test_inference_on_a_sequence_folder_with_metrics(trained, tmp_path):
    from models.sequences.demo import write_demo_sequence
    from stages import geometry_infer

    seq = write_demo_sequence(tmp_path / "robot", times=4, views=2, width=84, height=56, fps=30.0)
    out = tmp_path / "pred"
    rc = geometry_infer.main(["--params", str(trained / "params.yaml"), "--sequence", str(seq), "--model",
                              str(trained / "model" / "final.safetensors"), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["windows"] == 2 and summary["scored_windows"] == 2 and summary["views"] == 2
    assert np.isfinite(summary["headline"]["depth_abs_rel"]) and "mask_iou" in summary["headline"]
    with np.load(out / "window_000.npz") as z:
        assert z["depth"].shape == (2, 2, 28, 42) and z["extrinsics"].shape == (2, 2, 3, 4)
        assert (z["depth"] > 0).all()
    plain = np.load(out / "window_000.npz")["mask"]
    rc = geometry_infer.main(["--params", str(trained / "params.yaml"), "--sequence", str(seq), "--model",
                              str(trained / "model" / "final.safetensors"), "--out", str(tmp_path / "ext"),
                              "--external-mask"])
    fused = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert rc == 0 and fused["external_mask"] and "mask_iou" not in fused["headline"]
    with np.load(tmp_path / "ext" / "window_000.npz") as z:
        assert not np.array_equal(z["mask"], plain) and np.array_equal(z["depth"].shape, (2, 2, 28, 42))
    rc = geometry_infer.main(["--params", str(trained / "params.yaml"), "--sequence", str(tmp_path / "nothing"),
                              "--model", str(trained / "model" / "final.safetensors"), "--out", str(tmp_path / "x")])
    assert rc == 1 and not (tmp_path / "x").exists()


def test_train_and_report_on_sequence_folders(trained, tmp_path):
    """source sequences: two generated folders train, one validates; its depth, poses and masks score the model;
    with external_mask the masks are the model's input and the mask metric is left out."""
    from models.sequences.demo import write_demo_sequence
    from stages import report_geometry, train_geometry

    root = tmp_path / "seqs"
    for k, name in enumerate(("lab_a", "lab_b", "lab_c")):
        write_demo_sequence(root / name, times=4, views=2, width=84, height=56, seed=k, depth_unit=0.001)
    init = str(trained / "weights" / "geometry_init.safetensors")
    seq = {"source": "sequences", "input": str(root), "depth_unit": 0.001, "val_sequences": ["lab_b"],
           "batch_size": 2}
    heads = {}
    for ext in (False, True):
        params = tmp_path / f"params_{ext}.yaml"
        with open(params, "w") as fh:
            YAML(typ="safe", pure=True).dump({"geometry": GEOMETRY, "train_geometry": {**TRAIN, **seq,
                                                                                       "external_mask": ext}}, fh)
        common = ["--params", str(params), "--no-progress"]
        out = tmp_path / f"run_{ext}"
        assert train_geometry.main(common + ["--init", init, "--out", str(out / "model"), "--live",
                                             str(out / "live")]) == 0
        assert report_geometry.main(common + ["--init", init, "--model", str(out / "model" / "final.safetensors"),
                                              "--out", str(out / "report")]) == 0
        heads[ext] = json.loads((out / "report" / "metrics.json").read_text())
        details = json.loads((out / "report" / "details.json").read_text())
        assert details["sequences"] == ["lab_b"] and details["windows"] == 2        # 4 times, frames 2, no overlap
        assert "sequence folder's depth" in details["truth"]
        logged = {f.stem for f in (out / "live" / "plots" / "metrics" / "train").glob("*.tsv")}
        assert ("mask" in logged) is (not ext)                                    # folder masks supervise unless fed
    assert "mask_iou" in heads[False]["model"] and "mask_iou" not in heads[True]["model"]
    for ext in (False, True):
        assert all(np.isfinite(v) for v in heads[ext]["model"].values())


@pytest.mark.parametrize("change, message", [
    ({"val_sequences": ["nope"]}, "val_sequences names ['nope']"),
    ({"val_sequences": ["lab_a", "lab_b"]}, "leaves no sequence"),
    ({"input": "MISSING"}, "no such folder"),
    ({"source": "nuscenes", "input": "somewhere/else", "depth_unit": 1.0}, "must be <data.dataroot>/<data.version>"),
])
def test_sequence_source_refuses_bad_setups(trained, synth_cache, tmp_path, capsys, change, message):
    from models.sequences.demo import write_demo_sequence
    from stages import train_geometry

    root = tmp_path / "seqs"
    for k, name in enumerate(("lab_a", "lab_b")):
        write_demo_sequence(root / name, times=3, views=2, width=42, height=28, seed=k)
    tp = {**TRAIN, "source": "sequences", "input": str(root), **change}
    if tp["input"] == "MISSING":
        tp["input"] = str(tmp_path / "missing")
    params = tmp_path / "params.yaml"
    with open(params, "w") as fh:
        YAML(typ="safe", pure=True).dump({"geometry": GEOMETRY, "train_geometry": tp}, fh)
    rc = train_geometry.main(["--params", str(params), "--no-progress", "--cache", str(synth_cache), "--init",
                              str(trained / "weights" / "geometry_init.safetensors"), "--out", str(tmp_path / "m")])
    assert rc in (1, 2) and message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_losses_by_hand():
    enc = torch.tensor([[0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0, 0.9, 1.1]])
    flipped = enc.clone()
    flipped[:, 3:7] *= -1                                                        # the same rotation
    assert float(camera_loss([enc], flipped)) == 0.0
    assert float(camera_loss([enc + 0.1, enc], enc)) == pytest.approx(0.6 * 0.9)  # earlier iterations weigh gamma^k
    assert float(camera_loss([enc + 0.1, enc + 0.1], enc, gamma=0.5)) == pytest.approx(1.5 * 0.9)
    pred, target = torch.tensor([[[[2.0]]]]), torch.tensor([[[[1.5]]]])
    conf, valid = torch.tensor([[[3.0]]]), torch.tensor([[[True]]])
    assert float(aleatoric_loss(pred, conf, target, valid, alpha=0.2)) == pytest.approx(3 * 0.5 - 0.2 * np.log(3))
    assert float(aleatoric_loss(pred, conf, target, ~valid)) == 0.0
    K = torch.tensor([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]])
    E = torch.eye(4)[:3].clone()
    E[:, 3] = torch.tensor([0.5, -0.2, 1.0])
    depth = torch.full((30, 40), 4.0)
    X = depth_to_world_points(depth, K, E)                                       # back into the camera and project
    cam = X @ E[:, :3].T + E[:, 3]
    uv = (cam @ K.T)[..., :2] / cam[..., 2:]
    v, u = torch.meshgrid(torch.arange(30.0), torch.arange(40.0), indexing="ij")
    assert torch.allclose(uv, torch.stack([u, v], -1), atol=1e-4) and torch.allclose(cam[..., 2], depth)
    logits = torch.tensor([2.0, -2.0, -2.0, -2.0])
    share = torch.tensor([0.9, 0.0, 0.1, 0.2])
    import torch.nn.functional as F
    want = F.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0, 0, 0]), pos_weight=torch.tensor(3.0))
    assert float(mask_loss(logits, share)) == pytest.approx(float(want))
