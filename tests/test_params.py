"""The params loader: every section of params.yaml validates, and bad values stop a stage before work."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from models.common.params import SECTIONS, ParamsError, describe_sections, load_section, parse_section

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_validate_and_cover_every_field():
    raw = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    for name, cls in SECTIONS.items():
        assert name in raw, f"params.yaml lacks section {name}"
        load_section(name, ROOT / "params.yaml")
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(raw[name]) == fields, f"params.yaml '{name}' differs from {cls.__name__}: {set(raw[name]) ^ fields}"


def test_defaults_equal_params_yaml():
    """The dataclass defaults (used by tests and as documentation) are the shipped params."""
    raw = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    for name, cls in SECTIONS.items():
        assert parse_section(name, raw[name]) == cls(), name


@pytest.mark.parametrize("text, key, why", [
    ("synth:\n  num_scenez: 3\n", "synth.num_scenez", "unknown key"),
    ("synth:\n  num_scenes: -1\n", "synth.num_scenes", ">= 2"),
    ("synth:\n  num_scenes: three\n", "synth.num_scenes", "integer"),
    ("synth:\n  num_scenes: 2.5\n", "synth.num_scenes", "integer"),
    ("synth:\n  image_width: 321\n", "synth.image_width", "even"),
    ("synth:\n  locations:\n    - boston\n", "synth.locations", "boston-seaport"),
    ("synth:\n  locations: []\n", "synth.locations", "at least 1"),
    ("synth:\n  num_scenes: 4\n  val_scenes: 4\n", "synth.val_scenes", "smaller than"),
    ("synth:\n  num_scenes: 10\n  val_scenes: 3\n  val_start: 8\n", "synth.val_start", "run past"),
    ("synth:\n  val_start: -2\n", "synth.val_start", ">= -1"),
    ("synth:\n  scene_seconds: .nan\n", "synth.scene_seconds", "finite"),
    ("cache:\n  patch_size:\n    - 60.0\n", "cache.patch_size", "exactly 2"),
    ("cache:\n  check_files: yes\n", "cache.check_files", "true or false"),
    ("cache:\n  map_classes:\n    - lane\n", "cache.map_classes", "not allowed"),
    ("data:\n  splits:\n    - test\n", "data.splits", "not allowed"),
])
def test_bad_values_name_key_value_and_rule(tmp_path, text, key, why):
    path = _write(tmp_path, text)
    section = key.split(".")[0]
    with pytest.raises(ParamsError) as err:
        load_section(section, path)
    msg = str(err.value)
    assert key in msg and why in msg and str(path) in msg, msg


def test_yaml_12_semantics(tmp_path):
    """1e-4 is a float and 'off' is not a boolean, as DVC (ruamel, YAML 1.2) reads them."""
    path = _write(tmp_path, "synth:\n  block_length: 1.1e+2\n")
    assert load_section("synth", path).block_length == 110.0
    path = _write(tmp_path, "cache:\n  check_files: off\n")
    with pytest.raises(ParamsError, match="true or false"):
        load_section("cache", path)


def test_missing_file_and_section(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_section("synth", tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="section 'cache' is missing"):
        load_section("cache", _write(tmp_path, "synth: {}\n"))


def test_stage_refuses_bad_params_before_any_work(tmp_path, capsys):
    from stages import synth_world

    path = _write(tmp_path, "synth:\n  num_scenes: 0\n")
    out = tmp_path / "world"
    rc = synth_world.main(["--params", str(path), "--out", str(out), "--metrics", str(tmp_path / "m.json")])
    assert rc == 2 and "synth.num_scenes = 0" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_misspelled_section_is_refused_whichever_section_is_loaded(tmp_path):
    path = _write(tmp_path, "synth:\n  seed: 1\ncahce:\n  workers: 1\n")
    for section in ("synth", "cache"):
        with pytest.raises(ParamsError, match=r"unknown section 'cahce'; known sections: \['data', 'synth', 'cache'"):
            load_section(section, path)


def test_params_reference_doc_is_current():
    doc = (ROOT / "docs" / "params.md").read_text()
    assert describe_sections() in doc, "docs/params.md is stale: regenerate with `python -m models.common.params`"
