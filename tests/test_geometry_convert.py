"""The Pi3 + PAGE-4D conversion: the full-size plan against the real layouts, random sources through the real
readers, strict loading, and every bad-input message."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from models.geometry.config import GeometryConfig, full_size
from models.geometry.convert import ConversionError, check_sources, convert, plan, read_checkpoint
from models.geometry.model import GeometryModel
from models.geometry.sources import source_layouts, write_random_sources

from tests.checkpoint_layouts import layout_dir

LAYOUTS = layout_dir() or Path("shared/checkpoint_layouts")
needs_layouts = pytest.mark.skipif(layout_dir() is None, reason="the shared checkpoint layouts are not here")


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _layout(name: str) -> dict[str, tuple]:
    return {t["key"]: tuple(t["shape"]) for t in json.loads((LAYOUTS / name).read_text())["tensors"]}


@pytest.fixture(scope="module")
def full_target():
    with torch.device("meta"):
        return _shapes(GeometryModel(full_size()))


@needs_layouts
def test_full_size_plan_covers_every_target_once_with_the_expected_sources(full_target):
    rows = plan(full_size(), full_target)
    assert [r.target for r in rows] == list(full_target)                       # each target exactly once
    check_sources(full_size(), rows, {"pi3": _layout("pi3.json"), "page4d": _layout("page4d.json")},
                  {"pi3": "pi3.json", "page4d": "page4d.json"})
    by_source = {s: sum(r.source == s for r in rows) for s in ("pi3", "page4d", "fresh")}
    assert by_source == {"pi3": 992, "page4d": 419, "fresh": 6}                # checkpoints.md §3 (+ 4 lambdas, gate)
    blocks = [r for r in rows if re.match(r"aggregator\.(time|view)_blocks\.", r.target)]
    assert len(blocks) == 864
    expected = {row["target"]: row for row in json.loads((LAYOUTS / "vggt_t_mv_mapping.json").read_text())["mapping"]}
    assert len(expected) == 1411
    for r in rows:
        if r.source == "fresh":
            continue
        e = expected[r.target]
        assert (r.source, r.source_key) == (e["source"], e["source_key"]), r.target
        assert list(r.shape) == e["shape"], r.target


@needs_layouts
def test_full_size_official_mask_head_and_shared_part_counts(full_target):
    cfg = full_size(mask_head="official")
    with torch.device("meta"):
        target = _shapes(GeometryModel(cfg))
    check_sources(cfg, plan(cfg, target), {"pi3": _layout("pi3.json"), "page4d": _layout("page4d_official.json")},
                  {"pi3": "pi3.json", "page4d": "page4d_official.json"})
    counts = json.loads((LAYOUTS / "page4d.json").read_text())["submodule_param_counts"]
    numel = {}
    for k, shape in full_target.items():
        for prefix in ("aggregator.patch_embed", "aggregator.time_blocks", "aggregator.view_blocks", "camera_head",
                       "depth_head", "point_head", "aggregator.spatial_mask_head"):
            if k.startswith(prefix + "."):
                numel[prefix] = numel.get(prefix, 0) + int(torch.Size(shape).numel())
    assert numel["aggregator.patch_embed"] == counts["aggregator.patch_embed"]["numel"]
    assert numel["aggregator.time_blocks"] == counts["aggregator.frame_blocks"]["numel"]
    assert numel["aggregator.view_blocks"] == counts["aggregator.global_blocks"]["numel"]
    assert numel["aggregator.spatial_mask_head"] == counts["aggregator.spatial_mask_head"]["numel"]


@needs_layouts
def test_the_real_layouts_mismatched_to_the_config_are_errors(full_target):
    rows = plan(full_size(), full_target)            # eval mask head, given the official checkpoint
    with pytest.raises(ConversionError, match=r"page4d_official\.json: key 'aggregator\.spatial_mask_head\.head0\.2"
                                              r"\.weight' has shape \[256, 1024, 1, 1\]: PAGE-4D's official mask "
                                              r"head; set geometry\.mask_head: official"):
        check_sources(full_size(), rows, {"pi3": _layout("pi3.json"), "page4d": _layout("page4d_official.json")},
                      {"pi3": "pi3.json", "page4d": "page4d_official.json"})


# ------------------------------------------------------------------------------- random sources, tiny size
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = GeometryConfig()
    torch.manual_seed(0)
    model = GeometryModel(cfg)
    folder = tmp_path_factory.mktemp("sources")
    paths = write_random_sources(cfg, _shapes(model), folder, seed=3)
    return cfg, model, paths


def _convert(cfg, model, pi3, page4d, **kw):
    return convert(cfg, model.state_dict(), pi3, page4d, {"pi3": "pi3.safetensors", "page4d": "page4d.pt"}, **kw)


def test_random_sources_convert_and_load_strictly(tiny):
    cfg, model, paths = tiny
    pi3, page4d = read_checkpoint(paths["pi3"]), read_checkpoint(paths["page4d"])
    state, rows = _convert(cfg, model, pi3, page4d)
    fresh = GeometryModel(cfg)
    assert fresh.load_state_dict(state, strict=True)                           # every key, no leftovers
    assert torch.equal(state["aggregator.time_blocks.0.attn.qkv.weight"], pi3["decoder.0.attn.qkv.weight"])
    assert torch.equal(state["aggregator.view_blocks.2.mlp.fc1.bias"], pi3["decoder.5.mlp.fc1.bias"])
    assert torch.equal(state["aggregator.view_blocks.3.ls1.gamma"], page4d["aggregator.global_blocks.3.ls1.gamma"])
    assert torch.equal(state["aggregator.patch_embed.patch_embed.proj.weight"], pi3["encoder.patch_embed.proj.weight"])
    assert torch.equal(state["aggregator.register_token"][0, 0], pi3["register_token"][0, 0, 1:5])
    assert torch.equal(state["aggregator.register_token"][0, 1], pi3["register_token"][0, 0, 1:5])
    assert torch.equal(state["camera_head.pose_branch.fc2.weight"], page4d["camera_head.pose_branch.fc2.weight"])
    assert float(state["aggregator.lambda_pose_view"]) == 0.0 and float(state["aggregator.mask_gate.alpha"]) == 1.0
    assert {r.source for r in rows} == {"pi3", "page4d", "fresh"}


def test_pos_embed_is_resampled_for_another_size(tiny):
    import dataclasses

    from models.geometry.encoder import resample_pos_embed

    cfg, model, paths = tiny
    small = dataclasses.replace(cfg, img_size=70)                               # 5 x 5 grid, sources have 8 x 8
    target = GeometryModel(small)
    state, rows = _convert(small, target, read_checkpoint(paths["pi3"]), read_checkpoint(paths["page4d"]))
    row = next(r for r in rows if r.target == "aggregator.patch_embed.pos_embed")
    assert row.transform.startswith("pos_embed_resample 8x8 -> 5x5")
    want = resample_pos_embed(read_checkpoint(paths["pi3"])["encoder.pos_embed"], (5, 5))
    assert torch.equal(state["aggregator.patch_embed.pos_embed"], want)
    assert GeometryModel(small).load_state_dict(state, strict=True)


@pytest.mark.parametrize("damage, message", [
    (lambda pi3, pg: pi3.pop("decoder.3.attn.proj.weight"), r"pi3\.safetensors: missing key 'decoder\.3\.attn\.proj"
                                                            r"\.weight' \(for aggregator\.view_blocks\.1\.attn\.proj"),
    (lambda pi3, pg: pi3.update({"decoder.99.extra": torch.zeros(2)}), r"pi3\.safetensors: key 'decoder\.99\.extra' "
                                                                       r"\[2\] is not mapped"),
    (lambda pi3, pg: pg.update({"aggregator.camera_token": torch.zeros(1, 2, 1, 8)}),
     r"page4d\.pt: key 'aggregator\.camera_token' has shape \[1, 2, 1, 8\], aggregator\.camera_token expects "
     r"\[1, 2, 1, 64\]"),
])
def test_bad_sources_name_the_key(tiny, damage, message):
    cfg, model, paths = tiny
    pi3, page4d = dict(read_checkpoint(paths["pi3"])), dict(read_checkpoint(paths["page4d"]))
    damage(pi3, page4d)
    with pytest.raises(ConversionError, match=message):
        _convert(cfg, model, pi3, page4d)


def test_bad_files_are_refused_with_the_reason(tmp_path, tiny):
    from safetensors.torch import save_file

    _, _, paths = tiny
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(paths["pi3"].read_bytes()[:1000])
    with pytest.raises(ConversionError, match=r"cut\.safetensors: not a readable safetensors file"):
        read_checkpoint(truncated)
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(paths["page4d"].read_bytes()[:5000])
    with pytest.raises(ConversionError, match=r"cut\.pt: (not a torch zip|unreadable torch checkpoint)"):
        read_checkpoint(cut_pt)
    ints = tmp_path / "ints.safetensors"
    save_file({"encoder.cls_token": torch.zeros(1, 1, 4, dtype=torch.int64)}, str(ints))
    with pytest.raises(ConversionError, match=r"ints\.safetensors: key 'encoder\.cls_token' has dtype torch\.int64"):
        read_checkpoint(ints)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": _Code()}, evil)
    with pytest.raises(ConversionError, match=r"evil\.pt: refused: the file asks for Python objects"):
        read_checkpoint(evil)
    prefixed = tmp_path / "prefixed.pt"
    torch.save({"model": {"module.a.weight": torch.zeros(2), "_orig_mod.b": torch.ones(1, dtype=torch.bfloat16)}},
               prefixed)
    assert set(read_checkpoint(prefixed)) == {"a.weight", "b"}


class _Code:
    """Unpickling this would need this module's code."""
