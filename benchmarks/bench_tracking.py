"""Benchmark of the tracks stage: tracked frames per second for each backend, frame reading, and the whole stage.

    python -m benchmarks.bench_tracking [--params params.yaml] [--split train] [--clips 2]
                                        [--cotracker-checkpoint PATH] [--stage] [--out reports/tracks_bench.json]

One process, one OpenCV thread (what each stage worker gets). A backend's figure is *window frames* per second:
windows x T frames tracked (N = grid_size^2 queries each) divided by the tracking time, frames already decoded
and resized. ``lk`` counts its per-clip grey conversion; ``oracle`` counts its per-frame depth rendering.
``cotracker`` runs when the package is importable (random weights without --cotracker-checkpoint: the compute
does not depend on the weights); otherwise it is reported as unavailable. ``--stage`` also times the whole stage
(``tracks.workers`` processes) into a temporary folder, for lk and oracle. CPU seconds are reported beside wall
seconds (the machine may be shared). Timings are machine-dependent: keep them out of cached outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from models.common.params import load_section


def _time_backend(name: str, make, frames_list, truth_jobs, tp) -> dict:
    from models.tracking import conventions as C

    H, W = tp.image_size
    T = tp.window
    queries = C.query_grid_xy(tp.grid_size, H, W)
    windows = 0
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "oracle":
        for oracle, sweep_of, query_src, starts in truth_jobs:
            for s in starts:
                oracle.track(sweep_of[s:s + T], query_src)
                windows += 1
    else:
        tracker = make()
        for frames in frames_list:
            from models.tracking.sources import window_starts

            state = tracker.prepare(frames.rgb)
            for s in window_starts(len(frames.rgb), T, tp.window_stride):
                tracker.track(state, s, T, queries)
                windows += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"windows": windows, "seconds": round(dt, 3), "cpu_seconds": round(cpu, 3),
            "window_frames_per_s": round(windows * T / dt, 1),
            "window_frames_per_cpu_s": round(windows * T / cpu, 1),
            "ms_per_window": round(dt / max(windows, 1) * 1e3, 2), "queries": len(queries)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--split", default="train")
    ap.add_argument("--clips", type=int, default=2, help="clips of the split to time (0: all)")
    ap.add_argument("--cotracker-checkpoint", default="")
    ap.add_argument("--stage", action="store_true", help="also time the whole stage")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from models.tracking import pipeline as P
    from models.tracking.oracle import Oracle, load_scene_truth, to_source
    from models.tracking.sources import load_frames, window_starts
    from models.tracking.trackers import CoTrackerTracker, LKTracker, cotracker_available
    from models.tracking import conventions as C

    cv2.setNumThreads(1)
    limits = P._single_threaded_blas()           # as in the stage
    limits.__enter__()
    data, tp = load_section("data", args.params), load_section("tracks", args.params)
    H, W = tp.image_size
    clips, _, truth = P.list_clips(data, tp)
    sel = clips[args.split][: args.clips or None]
    res: dict = {"params": {"image_size": tp.image_size, "window": tp.window, "window_stride": tp.window_stride,
                            "grid_size": tp.grid_size, "target_fps": tp.target_fps, "source": tp.source},
                 "clips": [c.name for c in sel], "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    frames_list = [load_frames(c, tp.target_fps, (H, W), tp.frames_fps) for c in sel]
    dt = time.perf_counter() - t0
    n_frames = sum(len(f.rgb) for f in frames_list)
    res["read_resample_resize"] = {"frames": n_frames, "seconds": round(dt, 3),
                                   "frames_per_s": round(n_frames / dt, 1)}

    backends = {"lk": {"lk_win_size": tp.lk_win_size, "lk_levels": tp.lk_levels}}
    res["lk"] = _time_backend("lk", lambda: LKTracker(tp.lk_win_size, tp.lk_levels, tp.lk_fb_threshold),
                              frames_list, None, tp) | backends["lk"]

    if truth is not None:
        jobs = []
        queries = C.query_grid_xy(tp.grid_size, H, W)
        for clip, frames in zip(sel, frames_list):
            rec = truth["scenes"][clip.name]
            index = {tok: i for i, tok in enumerate(rec["sweep_tokens"])}
            oracle = Oracle(load_scene_truth(os.path.join(truth["root"], rec["file"]), clip.calibration["K"],
                                             clip.calibration["sensor2ego"], truth["width"], truth["height"]))
            jobs.append((oracle, np.array([index[t] for t in frames.tokens]),
                         to_source(queries, frames.source_size, (H, W)),
                         window_starts(len(frames.rgb), tp.window, tp.window_stride)))
        res["oracle"] = _time_backend("oracle", None, frames_list, jobs, tp)
    else:
        res["oracle"] = "unavailable: the dataroot has no exact truth"

    if cotracker_available():
        def make():
            if args.cotracker_checkpoint:
                return CoTrackerTracker.from_checkpoint(args.cotracker_checkpoint, tp.cotracker_device)
            from cotracker.predictor import CoTrackerPredictor

            return CoTrackerTracker(CoTrackerPredictor(checkpoint=None, offline=True, v2=False, window_len=60).eval())

        import dataclasses

        f0 = frames_list[0]                                              # a few windows: it is slow on a CPU
        one = [dataclasses.replace(f0, rgb=f0.rgb[: tp.window + 2 * tp.window_stride])]
        res["cotracker"] = _time_backend("cotracker", make, one, None, tp)
        res["cotracker"]["weights"] = "checkpoint" if args.cotracker_checkpoint else "random (same compute)"
    else:
        res["cotracker"] = "unavailable: the 'cotracker' package is not installed"

    if args.stage:
        import dataclasses

        from models.tracking.pipeline import build_tracks

        res["stage"] = {}
        for backend in ("lk", "oracle") if truth is not None else ("lk",):
            stp = dataclasses.replace(tp, backend=backend)
            with tempfile.TemporaryDirectory() as tmp:
                t0, c0 = time.perf_counter(), os.times()
                man, _ = build_tracks(data, stp, os.path.join(tmp, "tracks"), progress=False, log=lambda *_: None)
                dt, c1 = time.perf_counter() - t0, os.times()
            cpu = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user", "children_system"))
            frames = sum(man["splits"][s]["frames"] for s in man["splits"])
            windows = sum(man["splits"][s]["windows_total"] for s in man["splits"])
            res["stage"][backend] = {
                "workers": stp.workers, "seconds": round(dt, 2), "cpu_seconds": round(cpu, 2), "frames": frames,
                "windows": windows, "source_frames_per_s": round(frames / dt, 1),
                "window_frames_per_s": round(windows * stp.window / dt, 1),
                "note": "lk also runs the oracle for the TAP-Vid scores when the dataroot has exact truth"}
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
