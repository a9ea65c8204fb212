"""Benchmark of the foundation stages through DVC, on a scratch copy of this repository.

    python -m benchmarks.bench_pipeline [--params params.yaml] [--out reports/bench_pipeline.json]

Measures, in one run: `dvc repro` of synth_world + gt_cache on the given params (wall time, peak RSS
of the largest process), a second `dvc repro` with nothing changed (must run no stage), and the cost
of one camera image and one LiDAR sweep of the renderer. Timings depend on the machine: they go to
the console and the optional JSON, never into cached outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _copy_repo(dst: Path, params: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, files.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    shutil.copy2(params, dst / "params.yaml")
    (dst / "dvc.lock").unlink(missing_ok=True)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(git + ["commit", "-qm", "bench"], cwd=dst, check=True)


def _timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return time.perf_counter() - t, res.stdout + res.stderr


def render_costs(repeats: int = 20) -> dict:
    """ms per default-size camera image and per LiDAR sweep, on a default-params town."""
    import numpy as np

    from models.common.params import SynthParams
    from models.world import render
    from models.world.generate import _static_boxes
    from models.world.ground import paint_town
    from models.world.sensors import camera_calibration, ego_pose_matrix, lidar_calibration
    from models.world.town import build_town

    p = SynthParams()
    town = build_town(p.locations[0], p, np.random.default_rng(0))
    ground = paint_town(town, 0)
    boxes = _static_boxes(town)
    path = town.paths[0]
    x, y = path.points[len(path.points) // 2]
    pose = ego_pose_matrix(x, y, float(path.headings[0]))
    cam = camera_calibration(p.image_width, p.image_height)["CAM_FRONT"]
    camera = render.Camera(K=cam["K"], cam2world=pose @ cam["sensor2ego"], width=p.image_width, height=p.image_height)
    render.render_camera(ground, boxes, camera)  # warm caches (ray grid, mip pyramid)
    t = time.perf_counter()
    for _ in range(repeats):
        render.render_camera(ground, boxes, camera)
    cam_ms = (time.perf_counter() - t) / repeats * 1e3
    lidar2world = pose @ lidar_calibration()["sensor2ego"]
    t = time.perf_counter()
    for _ in range(max(repeats // 4, 1)):
        pts = render.lidar_scan(ground, boxes, lidar2world, beams=p.lidar_beams, azimuth_bins=p.lidar_azimuth_bins)
    lidar_ms = (time.perf_counter() - t) / max(repeats // 4, 1) * 1e3
    return {"camera_ms": round(cam_ms, 2), "lidar_ms": round(lidar_ms, 2), "boxes": len(boxes),
            "lidar_points": int(len(pts)), "image": [p.image_width, p.image_height]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    res = {"render": render_costs()}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        _copy_repo(repo, Path(args.params))
        wall, out = _timed(["dvc", "repro"], repo)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ran = sorted({ln.split("'")[1] for ln in out.splitlines() if ln.startswith("Running stage '")})
        noop, out2 = _timed(["dvc", "repro"], repo)
        ran2 = sorted({ln.split("'")[1] for ln in out2.splitlines() if ln.startswith("Running stage '")})
        world = json.loads((repo / "reports" / "synth_world.json").read_text())
        files = sum(1 for _ in (repo / "data" / "nuscenes").rglob("*") if _.is_file())
        size_mb = sum(f.stat().st_size for f in (repo / "data" / "nuscenes").rglob("*") if f.is_file()) / 2**20
    res["repro"] = {"seconds": round(wall, 1), "stages_run": ran, "peak_rss_mb": round(peak_mb),
                    "samples": world["samples"], "images": world["sample_data"] - world["samples"],
                    "dataroot_files": files, "dataroot_mb": round(size_mb, 1)}
    res["noop_repro"] = {"seconds": round(noop, 2), "stages_run": ran2,
                         "ratio_to_full": round(noop / wall, 4)}
    print(json.dumps(res, indent=1))
    if args.out:
        from models.common.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
