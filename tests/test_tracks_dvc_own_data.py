"""The README's own-data recipe through DVC: `dvc repro tracks` on a generated 4-view sequence folder in a fresh
DVC repo that has no synthetic world; the clips' bytes are the stage's dependency."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]


def _dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def own_repo(tmp_path_factory) -> Path:
    from models.sequences.demo import write_demo_sequence

    repo = tmp_path_factory.mktemp("own_repo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "models"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    # the recipe: a 4-view time-major recording, 24 times at 30 fps, 4:3 frames
    write_demo_sequence(repo / "own" / "robot", times=24, views=4, width=96, height=72, fps=30.0,
                        layout="time-major", track_grid=8)
    yaml = YAML()
    params = yaml.load((repo / "params.yaml").read_text())
    params["tracks"].update({"source": "sequences", "input": "own/robot", "reference": "tracks",
                             "frames_fps": 30.0, "target_fps": 30.0, "image_size": [48, 64], "grid_size": 6,
                             "workers": 1})
    with open(repo / "params.yaml", "w") as fh:
        yaml.dump(params, fh)
    return repo


def test_dvc_repro_tracks_runs_on_own_sequence_without_a_synthetic_world(own_repo):
    out = _dvc(own_repo, "repro", "tracks")
    assert "synth_world" not in out                                      # not an ancestor of own clips
    assert not (own_repo / "data" / "nuscenes").exists()
    man = json.loads((own_repo / "data" / "tracks" / "manifest.json").read_text())
    assert man["source"] == "sequences" and man["splits"]["val"]["windows_kept"] > 0
    per_clip = {**man["splits"]["train"]["per_clip"], **man["splits"]["val"]["per_clip"]}
    assert sorted(per_clip) == [f"robot/view{k}" for k in range(4)]
    for rates in per_clip.values():                                     # the rates, stated per clip
        assert rates["layout"] == "time-major" and rates["native_fps"] == 30.0 and rates["frames"] == 24
        assert rates["repeated"] == rates["unused"] == 0
    assert sum(man["splits"][s]["windows_total"] for s in ("train", "val")) == 4 * 3     # (24 - 16) / 4 + 1 each
    report = json.loads((own_repo / "reports" / "tracks.json").read_text())
    assert set(report) == {"tracker", "static"}                          # TAP-Vid against the exact tracks
    assert all(0.0 < report[k]["aj"] <= 1.0 for k in ("tracker", "static"))
    assert json.loads(_dvc(own_repo, "status", "tracks", "--json")) == {}


def test_changing_one_frame_reruns_tracks(own_repo):
    frame = own_repo / "own" / "robot" / "images" / "time_5" / "view2.png"
    img = cv2.imread(str(frame))
    img[10:20, 10:20] = 255 - img[10:20, 10:20]
    cv2.imwrite(str(frame), img)
    status = json.loads(_dvc(own_repo, "status", "tracks", "--json"))
    assert "tracks" in status and "own/robot" in json.dumps(status["tracks"])
