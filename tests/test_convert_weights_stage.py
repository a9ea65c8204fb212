"""The convert_weights stage end to end: random sources by default, real files from the checkpoint folder, and
failures that name the file or param and leave the previous output untouched."""
from __future__ import annotations

import json

import torch
from ruamel.yaml import YAML
from safetensors.torch import load_file

from models.geometry.config import GeometryConfig
from models.geometry.model import GeometryModel
from stages import convert_weights as stage

GEOMETRY = {"img_size": 56, "embed_dim": 32, "num_heads": 2, "encoder_depth": 1, "depth": 3, "pi3_layers": 2,
            "camera_trunk_depth": 1, "camera_iterations": 1, "dpt_features": 16, "dpt_out_channels": [8, 8, 16, 16]}


def _cfg() -> GeometryConfig:
    """The stage's config: params defaults (epipolar on) with the tiny sizes."""
    from models.common.params import parse_section

    return GeometryConfig.from_params(parse_section("geometry", GEOMETRY))


def _run(tmp_path, name, convert=None, geometry=None):
    params = tmp_path / f"{name}.yaml"
    with open(params, "w") as fh:
        YAML(typ="safe", pure=True).dump({"geometry": {**GEOMETRY, **(geometry or {})},
                                          "convert": {"checkpoint_dir": str(tmp_path / "ckpt"), **(convert or {})}}, fh)
    out = tmp_path / f"{name}_weights"
    rc = stage.main(["--params", str(params), "--out", str(out), "--metrics", str(tmp_path / f"{name}.json"),
                     "--no-progress"])
    return rc, out


def test_random_sources_by_default_then_the_same_files_as_real_ones(tmp_path):
    (tmp_path / "ckpt").mkdir()
    rc, out = _run(tmp_path, "random")
    assert rc == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["summary"].startswith("random sources: pi3, page4d")
    tsv = (out / "provenance.tsv").read_text().splitlines()
    assert tsv[0].startswith("# random sources") and len(tsv) == 2 + len(prov["rows"])
    head = json.loads((tmp_path / "random.json").read_text())
    assert head["random_sources"] == 2 and head["tensors"]["total"] == len(prov["rows"])
    state = load_file(str(out / "geometry_init.safetensors"))
    cfg = _cfg()
    assert GeometryModel(cfg).load_state_dict(state, strict=True)
    row = next(r for r in prov["rows"] if r["target"] == "aggregator.view_blocks.1.attn.qkv.weight")
    assert (row["source"], row["source_key"], row["transform"]) == ("pi3", "decoder.3.attn.qkv.weight", "copy")

    from models.geometry.sources import write_random_sources

    shapes = {k: tuple(v.shape) for k, v in GeometryModel(cfg).state_dict().items()}
    write_random_sources(cfg, shapes, tmp_path / "ckpt", seed=0)            # the same tensors, now "real" files
    rc, out2 = _run(tmp_path, "real", {"pi3": "pi3_random.safetensors", "page4d": "page4d_random.pt"})
    assert rc == 0
    assert json.loads((out2 / "provenance.json").read_text())["summary"] == "real sources"
    real = load_file(str(out2 / "geometry_init.safetensors"))
    assert all(torch.equal(real[k], state[k]) for k in state)


def test_a_bad_source_stops_the_stage_and_keeps_the_previous_output(tmp_path, capsys):
    from models.geometry.sources import write_random_sources

    cfg = _cfg()
    shapes = {k: tuple(v.shape) for k, v in GeometryModel(cfg).state_dict().items()}
    paths = write_random_sources(cfg, shapes, tmp_path / "ckpt", seed=0)
    pg = torch.load(paths["page4d"], weights_only=True)
    pg["model"]["depth_head.norm.weight"] = torch.zeros(7)
    torch.save(pg, paths["page4d"])
    out = tmp_path / "bad_weights"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    rc, _ = _run(tmp_path, "bad", {"page4d": "page4d_random.pt"})
    err = capsys.readouterr().err
    assert rc == 1 and "page4d_random.pt: key 'depth_head.norm.weight' has shape [7], depth_head.norm.weight expects [64]" in err
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]


def test_bad_params_name_the_key(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    for convert, geometry, key in (({"register_slots": [0, 0, 1, 2]}, None, "convert.register_slots"),
                                   ({"pi3": "../elsewhere.safetensors"}, None, "convert.pi3"),
                                   (None, {"mask_layer": 3}, "geometry.mask_layer"),
                                   (None, {"img_size": 50}, "geometry.img_size")):
        rc, out = _run(tmp_path, "p", convert, geometry)
        assert rc == 2 and key in capsys.readouterr().err and not out.exists()
