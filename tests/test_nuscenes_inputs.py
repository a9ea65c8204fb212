"""Bad nuScenes inputs: one clear error naming file and record, and the previous cache left untouched."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from models.nuscenes.validate import NuScenesInputError
from stages.gt_cache import main
from tests.tiny_nuscenes import tiny_dataroot  # noqa: F401 (fixture)

VERSION = "v1.0-synth"


def _load(root: Path, table: str):
    return json.loads((root / VERSION / f"{table}.json").read_text())


def _save(root: Path, table: str, recs) -> None:
    (root / VERSION / f"{table}.json").write_text(json.dumps(recs))


def _edit_map(root: Path, fn) -> None:
    path = root / "maps" / "expansion" / "boston-seaport.json"
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def _first(root, table, pred=lambda r: True):
    return next(r for r in _load(root, table) if pred(r))


def _set(root, table, index, **fields):
    recs = _load(root, table)
    recs[index].update(fields)
    _save(root, table, recs)
    return recs[index]["token"]


def _del_field(root, table, index, field):
    recs = _load(root, table)
    del recs[index][field]
    _save(root, table, recs)
    return recs[index]["token"]


def _delete_blob(root, channel):
    rec = _first(root, "sample_data", lambda r: f"/{channel}/" in r["filename"])
    (root / rec["filename"]).unlink()
    return [rec["token"], rec["filename"]]


def _other_scene_sample(root):
    samples = _load(root, "sample")
    b = next(s for s in samples if s["scene_token"] != samples[2]["scene_token"])
    _set(root, "sample", 2, next=b["token"])
    return [b["token"], "reached from scene 'scene-a'", "scene_token"]


# id -> (mutation(root) -> [extra expected substrings] or None, expected substrings)
CASES = {
    "missing_table": (lambda r: (r / VERSION / "sample_annotation.json").unlink(),
                      ["sample_annotation.json", "not found"]),
    "malformed_json": (lambda r: (r / VERSION / "ego_pose.json").write_text(
        (r / VERSION / "ego_pose.json").read_text()[:-40]),
        ["ego_pose.json", "not valid JSON", "at line ", ", column "]),
    "table_not_a_list": (lambda r: (r / VERSION / "category.json").write_text('{"name": "x"}'),
                         ["category.json", "JSON list"]),
    "record_missing_field": (lambda r: [_del_field(r, "ego_pose", 3, "translation")],
                             ["ego_pose.json", "missing field(s) ['translation']"]),
    "bad_quaternion": (lambda r: [_set(r, "calibrated_sensor", 0, rotation=[1.0, 0.0])],
                       ["calibrated_sensor.json", "'rotation'", "4 finite numbers"]),
    "unresolved_calibrated_sensor": (lambda r: [_set(r, "sample_data", 5, calibrated_sensor_token="deadbeef")],
                                     ["sample_data.json", "calibrated_sensor_token 'deadbeef' not found in "
                                                          "calibrated_sensor.json"]),
    "unresolved_instance": (lambda r: [_set(r, "sample_annotation", 0, instance_token="nope")],
                            ["sample_annotation.json", "instance_token 'nope' not found in instance.json"]),
    "chain_leaves_scene": (_other_scene_sample, ["sample.json", "sample.next"]),
    "missing_image": (lambda r: _delete_blob(r, "CAM_BACK"), ["sample_data.json", "not found"]),
    "missing_lidar": (lambda r: _delete_blob(r, "LIDAR_TOP"), ["sample_data.json", "not found"]),
    "map_of_other_location": (lambda r: _edit_map(r, lambda m: m.update(canvas_edge=[1585.6, 2025.0])),
                              ["boston-seaport.json", "looks like the map of 'singapore-onenorth'"]),
    "map_of_other_town": (lambda r: _edit_map(r, lambda m: [n.update(x=n["x"] + 1200.0) for n in m["node"]]),
                          ["boston-seaport.json", "looks like another location's (or town's) map"]),
    "pose_outside_canvas": (lambda r: [_set(r, "ego_pose", _lidar_pose_index(r), translation=[-20.0, 5.0, 0.0])],
                            ["boston-seaport.json", "outside this map's canvas", "another location's map"]),
    "map_missing": (lambda r: (r / "maps" / "expansion" / "boston-seaport.json").unlink(),
                    ["boston-seaport.json", "map expansion for location 'boston-seaport' not found", "log.json"]),
    "map_missing_key": (lambda r: _edit_map(r, lambda m: m.pop("lane")),
                        ["boston-seaport.json", "lacks the key 'lane'"]),
    "map_bad_reference": (lambda r: _edit_map(r, lambda m: m["lane_divider"][0].update(line_token="gone")),
                          ["boston-seaport.json", "line_token 'gone' not found"]),
    "timestamps_not_increasing": (lambda r: [_set(r, "sample_data", _lidar_sd_index(r, 3), timestamp=1)],
                                  ["sample_data.json", "timestamps of scene 'scene-a' do not increase"]),
    "splits_missing": (lambda r: (r / VERSION / "splits.json").unlink(), ["splits.json", "not found"]),
    "split_names_unknown_scene": (lambda r: (r / VERSION / "splits.json").write_text(
        json.dumps({"synth_train": ["scene-a", "scene-zz"], "synth_val": ["scene-b"]})),
        ["splits.json", "'scene-zz'", "not in scene.json"]),
}


def _lidar_sd_index(root, k):
    """Index in sample_data.json of scene-a's k-th LIDAR_TOP key frame (records are written in time order)."""
    return [i for i, r in enumerate(_load(root, "sample_data")) if "/LIDAR_TOP/" in r["filename"]][k]


def _lidar_pose_index(root):
    sds = _load(root, "sample_data")
    tok = next(r["ego_pose_token"] for r in sds if "/LIDAR_TOP/" in r["filename"])
    return next(i for i, e in enumerate(_load(root, "ego_pose")) if e["token"] == tok)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _params(path: Path, root: Path, version: str = VERSION) -> Path:
    path.write_text(f"data:\n  dataroot: {root}\n  version: {version}\n  splits:\n    - train\n    - val\n"
                    f"cache:\n  workers: 1\n")
    return path


@pytest.fixture(scope="module")
def previous_cache(tiny_dataroot, tmp_path_factory):
    """A good cache built by the stage: every failing run below targets it and must leave it untouched."""
    d = tmp_path_factory.mktemp("prev")
    out = d / "cache"
    assert main(["--params", str(_params(d / "params.yaml", tiny_dataroot)), "--out", str(out), "--metrics", "",
                 "--no-progress"]) == 0
    return out, _digest(out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_error_and_keeps_previous_cache(case, tiny_dataroot, previous_cache, tmp_path,
                                                                  capsys):
    root = tmp_path / "nuscenes"
    shutil.copytree(tiny_dataroot, root)
    mutate, expected = CASES[case]
    extra = mutate(root)
    extra = extra if isinstance(extra, list) else []
    out, digest = previous_cache
    rc = main(["--params", str(_params(tmp_path / "params.yaml", root)), "--out", str(out), "--metrics", "",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    for text in expected + [str(e) for e in extra]:
        assert text in err, (text, err)
    assert _digest(out) == digest
    assert sorted(p.name for p in out.parent.iterdir()) == ["cache", "params.yaml"]  # no temp dirs left


def test_real_dataroot_without_requested_version(tiny_dataroot, previous_cache, tmp_path, capsys):
    out, digest = previous_cache
    rc = main(["--params", str(_params(tmp_path / "p.yaml", tiny_dataroot, "v1.0-mini")), "--out", str(out),
               "--metrics", "", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "v1.0-mini" in err and "versions present: ['v1.0-synth']" in err
    assert _digest(out) == digest


def test_error_object_names_file_and_record(tiny_dataroot, tmp_path):
    from models.common.params import parse_section
    from models.nuscenes.cache import prepare

    root = tmp_path / "nuscenes"
    shutil.copytree(tiny_dataroot, root)
    token = _set(root, "sample_data", 7, ego_pose_token="missing-pose")
    data = parse_section("data", {"dataroot": str(root), "version": VERSION})
    with pytest.raises(NuScenesInputError) as info:
        prepare(data, parse_section("cache", {}))
    assert info.value.path.endswith("sample_data.json") and info.value.record == token
    assert str(info.value) == (f"{root / VERSION / 'sample_data.json'}: record {token}: ego_pose_token "
                               f"'missing-pose' not found in ego_pose.json")


def test_missing_files_pass_when_check_files_is_off(tiny_dataroot, tmp_path):
    from models.common.params import parse_section
    from models.nuscenes.cache import prepare

    root = tmp_path / "nuscenes"
    shutil.copytree(tiny_dataroot, root)
    _delete_blob(root, "CAM_FRONT")
    data = parse_section("data", {"dataroot": str(root), "version": VERSION})
    ctx = prepare(data, parse_section("cache", {"check_files": False}))
    assert ctx["splits"] == {"train": ["scene-a"], "val": ["scene-b"]}


def test_real_versions_use_the_official_split_lists(tmp_path):
    from nuscenes.utils.splits import create_splits_scenes

    from models.nuscenes.splits import resolve_splits

    official = create_splits_scenes()
    names = official["mini_train"] + official["mini_val"]
    splits, source = resolve_splits(tmp_path, "v1.0-mini", names, ["train", "val"])
    assert splits == {"train": sorted(official["mini_train"]), "val": sorted(official["mini_val"])}
    assert "mini_train" in source
    with pytest.raises(NuScenesInputError, match="split 'val' lists scene 'scene-0003'.*not in scene.json"):
        resolve_splits(tmp_path, "v1.0-trainval", official["train"], ["train", "val"])


def test_input_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(NuScenesInputError("a/b.json", "broken", record="tok")))
    assert (str(err), err.path, err.record) == ("a/b.json: record tok: broken", "a/b.json", "tok")
