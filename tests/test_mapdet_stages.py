"""train_mapdet -> report_mapdet at a tiny size on the tiny synthetic world, DDP with 2 CPU processes, and the
inputs refused before any work (bad map GT, a broken checkpoint folder)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(image_size=28, vision_width=16, vision_layers=1, vision_heads=2, vision_intermediate=32,
            qformer_width=16, qformer_layers=2, qformer_heads=2, qformer_intermediate=32, qformer_encoder_width=24,
            num_query_tokens=4, lm_width=32, lm_layers=1, lm_heads=2, lm_kv_heads=2, lm_intermediate=48,
            num_instances=6, decoder_width=16, decoder_heads=2, epochs=2, batch_size=4, warmup_steps=1,
            figure_samples=1)


def write_params(path: Path, **changes) -> Path:
    with open(path, "w") as fh:
        YAML(typ="safe", pure=True).dump({"mapdet": {**TINY, **changes}}, fh)
    return path


@pytest.fixture(scope="module")
def trained(synth_cache, tmp_path_factory):
    from stages import report_mapdet, train_mapdet

    root = tmp_path_factory.mktemp("mapdet_stages")
    params = write_params(root / "params.yaml")
    common = ["--params", str(params), "--no-progress", "--cache", str(synth_cache)]
    assert train_mapdet.main(common + ["--out", str(root / "model"), "--live", str(root / "live")]) == 0
    assert report_mapdet.main(common + ["--model", str(root / "model"), "--out", str(root / "report")]) == 0
    return root


def test_train_then_report_model_beside_the_baseline(trained, capfd):
    head = json.loads((trained / "report" / "metrics.json").read_text())
    assert set(head) == {"model", "baseline", "mapdet_random_sources"} and head["mapdet_random_sources"] == 1
    for name in ("model", "baseline"):
        assert {"mAP", "divider_AP", "ped_crossing_AP", "boundary_AP", "mAP_0.5m", "mAP_1.0m",
                "mAP_1.5m"} <= set(head[name])
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in head[name].values())
    details = json.loads((trained / "report" / "details.json").read_text())
    assert details["provenance"]["qformer"]["random_source"] and "vision_proj" in details["provenance"]["new"]
    assert details["predictors"]["model"]["divider_num_gts"] > 0
    assert (trained / "report" / "figures" / "sample_000.png").stat().st_size > 10_000
    ckpts = {p.name for p in (trained / "model").glob("*.safetensors")}
    assert {"last.safetensors", "best.safetensors", "final.safetensors"} <= ckpts
    logged = {f.stem for f in (trained / "live" / "plots" / "metrics" / "lr").glob("*.tsv")}
    assert logged == {"qformer", "queries", "decoder"}


def test_epoch_lines_show_the_loss_breakdown_and_the_group_learning_rates(synth_cache, tmp_path, capsys):
    from stages import train_mapdet

    params = write_params(tmp_path / "params.yaml", epochs=1)
    assert train_mapdet.main(["--params", str(params), "--no-progress", "--cache", str(synth_cache), "--out",
                              str(tmp_path / "m"), "--live", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert "loss_cls=" in out and "loss_pts=" in out and "loss_dir=" in out and "val loss=" in out
    assert "LR: q=" in out and " m=" in out and " d=" in out and "random BLIP-2 / LM sources" in out


def test_same_params_same_bytes(trained, synth_cache, tmp_path):
    from stages import train_mapdet

    assert train_mapdet.main(["--params", str(trained / "params.yaml"), "--no-progress", "--cache", str(synth_cache),
                              "--out", str(tmp_path / "model"), "--live", str(tmp_path / "live")]) == 0
    for name in ("final.safetensors", "provenance.json"):
        assert (tmp_path / "model" / name).read_bytes() == (trained / "model" / name).read_bytes(), name


def test_ddp_two_processes_match_one(trained, synth_cache, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_mapdet", "--params", str(trained / "params.yaml"), "--cache", str(synth_cache),
           "--out", str(tmp_path / "model"), "--live", str(tmp_path / "live"), "--no-progress"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((trained / "live" / "metrics.json").read_text())["live"]
    two = json.loads((tmp_path / "live" / "metrics.json").read_text())["live"]
    for k, v in one.items():
        assert two[k] == pytest.approx(v, rel=1e-3, abs=1e-4), k


def test_map_gt_with_coincident_points_is_refused(synth_cache, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from stages import train_mapdet

    cache = tmp_path / "cache"
    shutil.copytree(synth_cache, cache)
    path = cache / "train" / "arrays.safetensors"
    arrays = load_file(str(path))
    s, m = map(int, np.argwhere(arrays["map_valid"])[3])
    arrays["map_points"][s, m] = arrays["map_points"][s, m, :1]                  # one point repeated: no length
    save_file(arrays, str(path))
    params = write_params(tmp_path / "params.yaml")
    rc = train_mapdet.main(["--params", str(params), "--no-progress", "--cache", str(cache), "--out",
                            str(tmp_path / "m")])
    assert rc == 1 and f"sample {s}, map element {m}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_broken_language_model_folder_is_refused_naming_the_shard(synth_cache, tmp_path, capsys):
    from models.mapdet import checkpoints as C
    from models.mapdet.config import MapDetConfig
    from models.common.params import parse_section
    from stages import train_mapdet

    cfg = MapDetConfig.from_params(parse_section("mapdet", TINY), num_points=20)
    folder = C.write_random_checkpoint(cfg.lm_config(), tmp_path / "lm", seed=0, shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    params = write_params(tmp_path / "params.yaml", lm_checkpoint=str(folder))
    rc = train_mapdet.main(["--params", str(params), "--no-progress", "--cache", str(synth_cache), "--out",
                            str(tmp_path / "m")])
    assert rc == 1 and "model-00002-of-00002.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_diverging_loss_stops_naming_the_step_and_the_last_good_checkpoint(synth_cache, tmp_path, capsys):
    from stages import train_mapdet

    params = write_params(tmp_path / "params.yaml", epochs=3, lr_decoder=1.0e30, lr_queries=1.0e30,
                          lr_qformer=1.0e30, grad_clip=0.0)
    rc = train_mapdet.main(["--params", str(params), "--no-progress", "--cache", str(synth_cache), "--out",
                            str(tmp_path / "m"), "--live", str(tmp_path / "l")])
    err = capsys.readouterr().err
    assert rc == 1 and "training diverged at step" in err and "last good checkpoint" in err
    assert not (tmp_path / "m" / "final.safetensors").exists()
