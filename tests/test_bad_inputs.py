"""The bad-input corpus (issue 14, item 5): every bad input a stage can meet, one test each.

Each case runs the stage as ``python -m stages.<name>`` would (``main([...])``) and asserts one ``error:`` line on
stderr naming the file and the record, tensor or key, a non-zero exit (2 for params, 1 for inputs), and that the
output a previous run left is byte for byte untouched. Some cases are also tested beside their code; they are
listed here again so the whole corpus is in one place:

    nuScenes dataroot (gt_cache)   a table that does not parse, a token that resolves nowhere, a missing, a truncated,
                                   a non-JPEG and a corrupt-header camera image, a LiDAR file of the wrong size
    tracks (train_tokenizer)       NaN in a window
    checkpoints (report_planner)   a flipped byte in the header, in the metadata (malformed, or edited but valid),
                                   in a weight; a truncated file; a tensor added or removed after writing; an extra
                                   or missing key in a well-formed checkpoint; a checkpoint written before digests;
                                   and every reader (resume included) checks the digest
    weights (convert_weights)      geometry_init carries a digest; one written before digests is refused
    source weights (convert)       a PAGE-4D ``.pt`` whose pickle asks for code
    params (every stage)           a value of the wrong type, one out of range, an unknown key in every section
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from ruamel.yaml import YAML

from models.common.params import SECTIONS
from tests.conftest import TINY_PLANNER
from tests.test_convert_weights_stage import GEOMETRY

VERSION = "v1.0-synth"


def dump_yaml(path: Path, obj: dict) -> Path:
    with open(path, "w") as fh:
        YAML(typ="safe", pure=True).dump(obj, fh)
    return path


def snapshot(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (a folder or a file): what "untouched" is checked against."""
    out = {}
    for root in paths:
        for p in sorted([root] if root.is_file() else root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sentinel(folder: Path) -> Path:
    """A previous run's output: a folder holding one file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "previous.json").write_text('{"written": "by a previous run"}\n')
    return folder


def one_error_line(capsys, rc: int, expected_rc: int, *needles: str) -> str:
    """The stage's last stderr line is its only error line, it names every needle, and rc is as expected."""
    err = capsys.readouterr().err
    assert rc == expected_rc, err
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("error: ") and sum(s.startswith("error: ") for s in lines) == 1, err
    for needle in needles:
        assert str(needle) in lines[-1], (needle, lines[-1])
    return lines[-1]


# ----------------------------------------------------------------------------------- nuScenes dataroot (gt_cache)
def _table(root: Path, name: str) -> Path:
    return root / VERSION / f"{name}.json"


def _key_frame(root: Path, channel: str, index: int = 0) -> dict:
    recs = [r for r in json.loads(_table(root, "sample_data").read_text())
            if r["is_key_frame"] and f"/{channel}/" in r["filename"]]
    return recs[index]


def _table_does_not_parse(root: Path) -> list:
    path = _table(root, "sample")
    path.write_text(path.read_text()[:-25])
    return ["sample.json", "not valid JSON", "line "]


def _token_resolves_nowhere(root: Path) -> list:
    recs = json.loads(_table(root, "sample_data").read_text())
    recs[3]["sample_token"] = "no-such-sample"
    _table(root, "sample_data").write_text(json.dumps(recs))
    return ["sample_data.json", f"record {recs[3]['token']}", "sample_token 'no-such-sample' not found in sample.json"]


def _missing_camera_image(root: Path) -> list:
    rec = _key_frame(root, "CAM_FRONT", 2)
    (root / rec["filename"]).unlink()
    return ["sample_data.json", rec["token"], rec["filename"], f"sample {rec['sample_token']}", "not found"]


def _truncated_camera_image(root: Path) -> list:
    rec = _key_frame(root, "CAM_BACK_LEFT", 4)
    path = root / rec["filename"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [str(path), rec["token"], f"sample {rec['sample_token']}", "end-of-image marker FF D9", "truncated"]


def _camera_image_not_a_jpeg(root: Path) -> list:
    rec = _key_frame(root, "CAM_FRONT_RIGHT", 1)
    path = root / rec["filename"]
    path.write_bytes(b"<html>not an image</html>" * 40)
    return [str(path), rec["token"], f"sample {rec['sample_token']}", "not a JPEG"]


def _camera_image_with_corrupt_headers(root: Path) -> list:
    rec = _key_frame(root, "CAM_BACK", 3)
    path = root / rec["filename"]
    raw = path.read_bytes()
    path.write_bytes(raw[:3] + b"\x00" * 200 + raw[203:])    # the markers after SOI zeroed, EOI intact
    return [str(path), rec["token"], f"sample {rec['sample_token']}", "cannot be decoded"]


def _lidar_of_wrong_size(root: Path) -> list:
    rec = _key_frame(root, "LIDAR_TOP", 5)
    path = root / rec["filename"]
    path.write_bytes(path.read_bytes()[:-8])                  # 1.6 points short of a whole number
    return [str(path), rec["token"], f"sample {rec['sample_token']}", "not a whole, non-zero number of points"]


DATAROOT_CASES = {f.__name__.lstrip("_"): f for f in (
    _table_does_not_parse, _token_resolves_nowhere, _missing_camera_image, _truncated_camera_image,
    _camera_image_not_a_jpeg, _camera_image_with_corrupt_headers, _lidar_of_wrong_size)}


@pytest.mark.parametrize("case", list(DATAROOT_CASES))
def test_gt_cache_bad_dataroot(case, synth_dataroot, tmp_path, capsys):
    from stages import gt_cache

    root = tmp_path / "nuscenes"
    shutil.copytree(synth_dataroot, root, ignore=shutil.ignore_patterns("extras", "sweeps"))
    expected = DATAROOT_CASES[case](root)
    params = dump_yaml(tmp_path / "params.yaml", {"data": {"dataroot": str(root), "version": VERSION},
                                                  "cache": {"workers": 1, "check_files": True}})
    out, metrics = sentinel(tmp_path / "cache"), tmp_path / "reports" / "gt_cache.json"
    before = snapshot(out)
    rc = gt_cache.main(["--params", str(params), "--out", str(out), "--metrics", str(metrics), "--no-progress"])
    one_error_line(capsys, rc, 1, *expected)
    assert snapshot(out) == before and not metrics.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "nuscenes", "params.yaml"]   # no temp dirs


def test_the_file_checks_pass_on_the_intact_world(synth_dataroot):
    """The positive control of the cases above: every key-frame file of the world passes the same checks."""
    from models.nuscenes.validate import check_sensor_files

    recs = [r for r in json.loads(_table(synth_dataroot, "sample_data").read_text()) if r["is_key_frame"]]
    check_sensor_files(synth_dataroot, synth_dataroot / VERSION,
                       [(r["token"], r["filename"], r["sample_token"]) for r in recs])


# ------------------------------------------------------------------------------------ tracks (train_tokenizer)
TINY_TOKENIZER = dict(hidden_dim=32, num_heads=2, num_layers=2, decoder_mlp_hidden_dim=32, codebook_size=64,
                      epochs=1, batch_size=4, img_size=[64, 96])


def test_tracks_with_nan_are_refused(synth_dataroot, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from stages import tracks, train_tokenizer

    params = dump_yaml(tmp_path / "params.yaml", {
        "data": {"dataroot": str(synth_dataroot), "version": VERSION, "splits": ["train", "val"]},
        "tracks": {"window": 8, "window_stride": 4, "image_size": [64, 96], "grid_size": 8, "workers": 1,
                   "backend": "oracle", "input": str(synth_dataroot / VERSION)},
        "tokenizer": TINY_TOKENIZER})
    out = tmp_path / "tracks"
    assert tracks.main(["--params", str(params), "--out", str(out), "--metrics", "", "--no-progress"]) == 0
    capsys.readouterr()
    arrays = load_file(str(out / "train.safetensors"))
    arrays["tracks"][1, 3, 5, 0] = float("nan")
    save_file(arrays, str(out / "train.safetensors"))
    model, live = sentinel(tmp_path / "model"), sentinel(tmp_path / "live")
    before = snapshot(model, live)
    rc = train_tokenizer.main(["--params", str(params), "--tracks", str(out), "--out", str(model), "--live", str(live),
                               "--no-progress"])
    one_error_line(capsys, rc, 1, out / "train.safetensors", "window 1", "non-finite")
    assert snapshot(model, live) == before


# ---------------------------------------------------------------------------------- checkpoints (report_planner)
@pytest.fixture(scope="module")
def planner_models(synth_cache, tmp_path_factory):
    """A planner and an Ego-MLP trained for a step or two: the report stage reads their final checkpoints."""
    from stages import train_planner

    tmp = tmp_path_factory.mktemp("bad_checkpoints")
    params = dump_yaml(tmp / "params.yaml", {"planner": {**TINY_PLANNER, "epochs": 1, "mlp_epochs": 1}})
    rc = train_planner.main(["--params", str(params), "--cache", str(synth_cache), "--out", str(tmp / "models"),
                             "--live", str(tmp / "live"), "--live-mlp", str(tmp / "live_mlp"), "--no-progress"])
    assert rc == 0
    return tmp


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def _rewrite(path: Path, edit) -> None:
    """Rewrite the file's tensors through ``edit`` keeping its metadata (and so its now stale digest)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    edit(tensors)
    save_file(tensors, str(path), metadata=meta)


def _resave(path: Path, edit) -> None:
    """Write a well-formed checkpoint (a valid digest) whose model keys went through ``edit``."""
    from models.common.params import PlannerParams
    from models.planner.training import build_planner
    from models.train.checkpoint import load_weights, save_checkpoint

    model = build_planner(PlannerParams(**TINY_PLANNER), history_steps=4, route_points=8)
    state = load_weights(path, model)

    class Edited(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            sd = dict(model.state_dict())
            edit(sd)
            return sd

    save_checkpoint(path, Edited(), None, state)


def _header_byte(path: Path) -> list:
    _flip(path, path.read_bytes().index(b'"dtype"') + 1)      # "dtype" -> "etype": the header no longer parses
    return ["not a readable safetensors file"]


def _truncated(path: Path) -> list:
    path.write_bytes(path.read_bytes()[:-100])
    return ["not a readable safetensors file"]


def _metadata_byte_malformed(path: Path) -> list:
    _flip(path, path.read_bytes().index(b'\\"epoch\\":') + 9)   # ':' -> ';' inside the train_state JSON
    return ["metadata key 'train_state' is not valid JSON"]


def _metadata_byte_still_valid(path: Path) -> list:
    raw = path.read_bytes()
    _flip(path, raw.index(b'\\"epoch\\": ') + 11)             # epoch 1 -> 0: valid JSON, wrong content
    return ["metadata key 'train_state' does not match its SHA-256 digest"]


def _weight_byte(path: Path) -> list:
    n, header = _header(path)
    key = sorted(k for k in header if k.startswith("model.") and "weight" in k)[0]
    _flip(path, 8 + n + header[key]["data_offsets"][0] + 2)
    return [f"SHA-256 mismatch): {key}"]


def _tensor_added_after_writing(path: Path) -> list:
    _rewrite(path, lambda t: t.update({"model.extra.weight": torch.zeros(3)}))
    return ["not in the digest: model.extra.weight"]


def _tensor_removed_after_writing(path: Path) -> list:
    gone = []

    def drop_last_weight(tensors):
        gone.append(sorted(k for k in tensors if k.startswith("model."))[-1])
        del tensors[gone[0]]

    _rewrite(path, drop_last_weight)
    return [f"in the digest but not in the file: {gone[0]}"]


def _extra_key(path: Path) -> list:
    _resave(path, lambda sd: sd.update({"extra_buffer": torch.ones(2)}))
    return ["weights do not fit ViTPlannerV2", "unexpected in file: extra_buffer"]


def _missing_key(path: Path) -> list:
    gone = []

    def drop_first(sd):
        gone.append(sorted(sd)[0])
        del sd[gone[0]]

    _resave(path, drop_first)
    return ["weights do not fit ViTPlannerV2", f"missing in file: {gone[0]}"]


def _written_before_digests(path: Path) -> list:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        tensors, state = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["train_state"])
    state.pop("sha256")
    save_file(tensors, str(path), metadata={"train_state": json.dumps(dict(state, format_version=1))})
    return ["no 'sha256' tensor digest", "older version", "rerunning the stage"]


CHECKPOINT_CASES = {f.__name__.lstrip("_"): f for f in (
    _header_byte, _truncated, _metadata_byte_malformed, _metadata_byte_still_valid, _weight_byte, _tensor_added_after_writing,
    _tensor_removed_after_writing, _extra_key, _missing_key, _written_before_digests)}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_report_planner_bad_checkpoint(case, planner_models, synth_cache, tmp_path, capsys):
    from stages import report_planner

    models = tmp_path / "models"
    shutil.copytree(planner_models / "models", models)
    bad = models / "planner" / "best.safetensors"                # what report_planner scores
    expected = CHECKPOINT_CASES[case](bad)
    out = sentinel(tmp_path / "report")
    before = snapshot(out, models)
    rc = report_planner.main(["--params", str(planner_models / "params.yaml"), "--cache", str(synth_cache),
                              "--models", str(models), "--out", str(out), "--no-progress"])
    one_error_line(capsys, rc, 1, bad, *expected)
    assert snapshot(out, models) == before                      # the report and the checkpoints: nothing written


def test_the_intact_checkpoint_loads(planner_models):
    """The positive control of the cases above."""
    from models.common.params import PlannerParams
    from models.planner.training import build_planner
    from models.train.checkpoint import load_weights

    model = build_planner(PlannerParams(**TINY_PLANNER), history_steps=4, route_points=8)
    assert load_weights(planner_models / "models" / "planner" / "final.safetensors", model)["epoch"] == 1


def test_every_checkpoint_reader_checks_the_digest(planner_models, tmp_path):
    """read_state, read_tensors, load_weights, load_optimizer and load_rng all refuse a flipped weight byte."""
    from models.common.params import PlannerParams
    from models.planner.training import build_planner
    from models.train.checkpoint import (CheckpointError, load_optimizer, load_rng, load_weights, read_state,
                                         read_tensors)

    good = planner_models / "models" / "planner" / "last.safetensors"
    state = read_state(good)
    assert "sha256" not in state and state["format_version"] == 2
    bad = tmp_path / "last.safetensors"
    shutil.copyfile(good, bad)
    [needle] = _weight_byte(bad)
    model = build_planner(PlannerParams(**TINY_PLANNER), history_steps=4, route_points=8)
    params = list(model.parameters())                   # one parameter per saved group name: names are checked
    optimizer = torch.optim.AdamW([{"params": [params[i]], "name": g["name"]}
                                   for i, g in enumerate(state["optimizer"]["param_groups"])])
    for read in (lambda: read_state(bad), lambda: read_tensors(bad, "optim."), lambda: load_weights(bad, model),
                 lambda: load_optimizer(bad, optimizer, state), lambda: load_rng(bad, 0)):
        with pytest.raises(CheckpointError) as err:
            read()
        assert str(bad) in str(err.value) and needle in str(err.value)


def test_weight_files_carry_a_digest_and_old_ones_are_refused(tmp_path):
    """convert_weights writes geometry_init with a digest (train_geometry and report_geometry load it through
    load_weights); a weights file written before digests is refused; a foreign plain state_dict loads unchecked."""
    from safetensors.torch import load_file, save_file

    from models.common.params import parse_section
    from models.geometry.config import GeometryConfig
    from models.geometry.model import GeometryModel
    from models.train.checkpoint import CheckpointError, load_weights
    from stages import convert_weights

    (tmp_path / "ckpt").mkdir()
    params = dump_yaml(tmp_path / "params.yaml", {"geometry": GEOMETRY,
                                                  "convert": {"checkpoint_dir": str(tmp_path / "ckpt")}})
    assert convert_weights.main(["--params", str(params), "--out", str(tmp_path / "w"), "--metrics", "",
                                 "--no-progress"]) == 0
    init = tmp_path / "w" / "geometry_init.safetensors"
    model = GeometryModel(GeometryConfig.from_params(parse_section("geometry", GEOMETRY)))
    assert load_weights(init, model) == {}
    old = tmp_path / "old_init.safetensors"
    save_file(load_file(str(init)), str(old), metadata={"provenance": "random sources"})
    with pytest.raises(CheckpointError, match=r"old_init\.safetensors: no tensor digest .*rerunning the stage"):
        load_weights(old, model)
    foreign = tmp_path / "foreign.safetensors"
    save_file(load_file(str(init)), str(foreign))
    assert load_weights(foreign, model) == {}
    _weight_byte_plain = 8 + _header(init)[0] + 3
    _flip(init, _weight_byte_plain)
    with pytest.raises(CheckpointError, match=r"geometry_init\.safetensors: tensor\(s\) whose bytes"):
        load_weights(init, model)


# ------------------------------------------------------------------------------- source weights (convert_weights)
class _Payload:
    """Unpickling this would run ``os.mkdir(marker)``: code, which ``weights_only`` must refuse to run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_pt_file_whose_pickle_asks_for_code_is_refused(tmp_path, capsys):
    from stages import convert_weights

    (tmp_path / "ckpt").mkdir()
    marker = tmp_path / "payload_ran"
    torch.save({"model": {"camera_token": torch.zeros(1)}, "hook": _Payload(marker)}, tmp_path / "ckpt" / "evil.pt")
    params = dump_yaml(tmp_path / "params.yaml", {
        "geometry": GEOMETRY, "convert": {"checkpoint_dir": str(tmp_path / "ckpt"), "page4d": "evil.pt"}})
    out = sentinel(tmp_path / "weights")
    before = snapshot(out)
    rc = convert_weights.main(["--params", str(params), "--out", str(out), "--metrics", str(tmp_path / "m.json"),
                               "--no-progress"])
    one_error_line(capsys, rc, 1, tmp_path / "ckpt" / "evil.pt", "refused", "no code is unpickled")
    assert not marker.exists() and snapshot(out) == before and not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------------------------------ params (every stage)
# one stage per section (the first stage that reads it) and its output options
SECTION_STAGES = {
    "data": ("gt_cache", ("--out", "--metrics")),
    "synth": ("synth_world", ("--out", "--metrics", "--figures")),
    "cache": ("gt_cache", ("--out", "--metrics")),
    "tracks": ("tracks", ("--out", "--metrics")),
    "tokenizer": ("train_tokenizer", ("--out", "--live")),
    "planner": ("train_planner", ("--out", "--live", "--live-mlp")),
    "geometry": ("convert_weights", ("--out", "--metrics")),
    "convert": ("convert_weights", ("--out", "--metrics")),
    "train_geometry": ("train_geometry", ("--out", "--live")),
    "mapdet": ("train_mapdet", ("--out", "--live")),
}


def _run_with_params(stage: str, options: tuple, sections: dict, tmp_path: Path) -> tuple[int, Path, dict, dict]:
    """Run ``stage`` with a params file of every section ({} = defaults, ``sections`` replaced) and every output
    option pointing at a previous run's output. Returns (rc, params path, outputs' snapshot before, after)."""
    params = dump_yaml(tmp_path / "params.yaml", {**{s: {} for s in SECTIONS}, **sections})
    outputs = {}
    for opt in options:
        if opt == "--metrics":                                     # a file; the others are folders
            outputs[opt] = tmp_path / "metrics.json"
            outputs[opt].write_text('{"written": "by a previous run"}\n')
        else:
            outputs[opt] = sentinel(tmp_path / opt.strip("-"))
    before = snapshot(*outputs.values())
    argv = ["--params", str(params), "--no-progress"] + [x for opt, p in outputs.items() for x in (opt, str(p))]
    rc = importlib.import_module(f"stages.{stage}").main(argv)
    return rc, params, before, snapshot(*outputs.values())


def test_every_section_has_a_stage_here():
    assert set(SECTION_STAGES) == set(SECTIONS)


@pytest.mark.parametrize("section", list(SECTION_STAGES))
def test_an_unknown_key_is_refused_in_every_section(section, tmp_path, capsys):
    stage, options = SECTION_STAGES[section]
    rc, params, before, after = _run_with_params(stage, options, {section: {"no_such_key": 1}}, tmp_path)
    one_error_line(capsys, rc, 2, params, f"unknown key '{section}.no_such_key'", f"allowed keys in '{section}'")
    assert after == before


def test_a_value_of_the_wrong_type_is_refused(tmp_path, capsys):
    rc, params, before, after = _run_with_params("train_planner", SECTION_STAGES["planner"][1],
                                                 {"planner": {"epochs": "two"}}, tmp_path)
    one_error_line(capsys, rc, 2, params, "planner.epochs = 'two'", "must be an integer")
    assert after == before


def test_a_value_out_of_range_is_refused(tmp_path, capsys):
    rc, params, before, after = _run_with_params("gt_cache", SECTION_STAGES["cache"][1],
                                                 {"cache": {"map_points": 1}}, tmp_path)
    one_error_line(capsys, rc, 2, params, "cache.map_points = 1", "must be >= 2")
    assert after == before


# ------------------------------------------------------------------------------------------- the one-line rule
def test_every_base_input_error_names_an_exception_class():
    from stages._cli import BASE_INPUT_ERRORS, base_input_errors

    for module, name in BASE_INPUT_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
    assert len(base_input_errors()) == 1 + len(BASE_INPUT_ERRORS)


def test_the_error_line_starts_on_its_own_line_after_a_progress_bar(monkeypatch):
    """On a terminal a live tqdm bar is closed and the line cleared before ``error:`` (the cursor is never left
    at the end of a bar); the exit code stays 1."""
    from tqdm import tqdm

    from models.train.checkpoint import CheckpointError
    from stages._cli import guarded

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)

    def body(argv):
        bar = tqdm(total=10, file=term, desc="training", leave=True)
        bar.update(3)
        bar.refresh()
        raise CheckpointError("a/b.safetensors: broken")

    assert guarded(body, []) == 1
    text = term.getvalue()
    before, _, after = text.rpartition("error: a/b.safetensors: broken")
    assert "training" in before and after == "\n"
    # what a terminal shows: the error starts at column 0 of a line of its own
    assert before.endswith(("\n", "\r\x1b[K")), repr(before[-40:])
    assert before.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1] in ("", "\x1b[K"), repr(before[-40:])
