"""The command line every stage shares (stages/_cli.py): -S overrides, --no-progress, bars only on a terminal."""
from __future__ import annotations

import importlib
import json

import pytest

from models.common.params import ParamsError
from stages._cli import load_params, parse_overrides, show_progress, stage_parser

STAGES = ("synth_world", "gt_cache", "tracks", "train_tokenizer", "report_tokenizer", "train_planner",
          "report_planner")


def test_values_are_yaml_as_in_dvc_exp_run():
    got = parse_overrides(["planner.epochs=2", "planner.use_rope=false", "planner.lr=1e-4",
                           "cache.patch_size=[50, 25.0]", "tracks.reference=null", "synth.locations=[boston-seaport]"],
                          ("planner", "cache", "tracks", "synth"))
    assert got == {"planner": {"epochs": 2, "use_rope": False, "lr": 1e-4}, "cache": {"patch_size": [50, 25.0]},
                   "tracks": {"reference": None}, "synth": {"locations": ["boston-seaport"]}}


@pytest.mark.parametrize("item, why", [
    ("planner.epochs", "expected section.key=value"),
    ("epochs=2", "expected section.key=value"),
    ("planner.a.b=2", "expected section.key=value"),
    ("cache.map_points=10", r"'cache' is not a section this stage reads \(planner\)"),
    ("planner.cameras=[CAM_FRONT", "not valid YAML"),
])
def test_malformed_or_foreign_overrides_are_refused(item, why):
    with pytest.raises(ParamsError, match=why):
        parse_overrides([item], ("planner",))


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  version: v1.0-mini\ncache:\n  map_points: 20\n")
    args = stage_parser(None).parse_args(["--params", str(path), "-S", "cache.map_points=7", "-S", "data.splits=[val]"])
    data, cache = load_params(args, "data", "cache")
    assert cache.map_points == 7 and data.splits == ["val"] and data.version == "v1.0-mini"
    assert "map_points: 20" in path.read_text()  # for this run only
    for item, why in (("cache.map_pointz=7", "unknown key 'cache.map_pointz'"), ("cache.map_points=1", ">= 2"),
                      ("cache.map_points=seven", "must be an integer")):
        with pytest.raises(ParamsError, match=why) as err:
            load_params(stage_parser(None).parse_args(["--params", str(path), "-S", item]), "data", "cache")
        assert f"{path} with -S cache." in str(err.value)


def test_progress_only_on_a_terminal_and_never_with_no_progress(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    assert not show_progress(stage_parser(None).parse_args([]))  # pytest captures stderr: not a terminal
    monkeypatch.setattr("sys.stderr", Tty())
    assert show_progress(stage_parser(None).parse_args([]))
    assert not show_progress(stage_parser(None).parse_args(["--no-progress"]))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_takes_the_shared_options_and_refuses_before_any_work(stage, tmp_path, capsys):
    rc = importlib.import_module(f"stages.{stage}").main(["--params", "params.yaml", "--no-progress",
                                                          "-S", "nosuch.key=1"])
    assert rc == 2 and "'nosuch' is not a section this stage reads" in capsys.readouterr().err


def test_an_override_reaches_the_outputs(synth_dataroot, tmp_path):
    from stages import gt_cache

    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  dataroot: {synth_dataroot}\n  version: v1.0-synth\ncache:\n  workers: 1\n")
    out, metrics, details = tmp_path / "cache", tmp_path / "m.json", tmp_path / "m_details.json"
    assert gt_cache.main(["--params", str(path), "--out", str(out), "--metrics", str(metrics), "--no-progress",
                          "-S", "cache.map_points=7"]) == 0
    assert json.loads((out / "manifest.json").read_text())["params"]["cache"]["map_points"] == 7
    head = json.loads(metrics.read_text())
    assert set(head) == {"train_samples", "val_samples"} and all(type(v) is int for v in head.values())
    assert json.loads(details.read_text())["train"]["samples"] == head["train_samples"]
