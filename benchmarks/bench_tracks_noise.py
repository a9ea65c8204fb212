"""Tracks on a fixed rig with and without camera noise: TAP-Vid against the generator's exact tracks, lost points, and
the static filter's precision / recall against the exact dynamic masks, for several static rules.

    python -m benchmarks.bench_tracks_noise [--times 48] [--size 320 240] [--noise 0:none 4:75 8:50]
                                            [--out reports/tracks_noise_bench.json]

Per noise setting (``std:jpeg``: Gaussian std in grey levels, JPEG quality or ``none`` for PNG), a 4-view demo
sequence (:func:`models.sequences.demo.write_demo_sequence`, 30 fps, fixed cameras) goes through the tracks stage
code (``tracks.source: sequences``, ``tracks.reference: tracks``, the params' tracker settings at 30 fps). Then:

* ``tapvid``: AJ / delta_avg / OA of the tracker and of zero motion against the exact tracks (the stage's numbers);
* ``lost_at_end``: share of the grid's queries the tracker no longer sees at the window's last frame;
* static filter: a grid query is truly static when its source pixel at the window's first frame is off the exact
  dynamic mask (every dynamic box of the demo moves); each rule is applied to the stored tracks and visibility and
  scored by precision and recall of "static", the share of background queries it calls moving, and the share of
  queries on moving objects it calls moving (``moving_recall``).

Rules (thresholds in pixels of a row of the resized frames): ``speed_all`` the largest per-frame step over the
window (the first version's rule; frozen lost points count as still), ``speed`` the same over steps whose two
frames are visible, ``displacement`` the largest distance from the query over visible frames; and the stage's own
``static`` array under the params' rule.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

RULES = {"speed_all": (0.256, 0.5, 1.0), "speed": (0.256, 0.5, 1.0, 1.5), "displacement": (1.0, 2.0, 3.0, 4.0)}


def static_by_rule(tracks: np.ndarray, visible: np.ndarray, rule: str, thr_px: float, height: int) -> np.ndarray:
    """(Nw, N) static from the stored normalised tracks (Nw, T, N, 2) and visibility; thresholds in pixels of a
    row. ``speed_all`` (the first version: every step, lost ones too) is only here; the others are the stage's
    :func:`models.tracking.conventions.static_points`."""
    from models.tracking.conventions import static_points

    thr = thr_px * 2.0 / height
    if rule == "speed_all":
        step = np.linalg.norm(np.diff(tracks.astype(np.float64), axis=1), axis=-1)
        return step.max(axis=1) < thr
    return static_points(tracks, visible, thr, rule)


def measure(root: Path, tp, data) -> dict:
    from safetensors.numpy import load_file

    from models.tracking.pipeline import build_tracks
    from models.tracking.resize import to_source

    out = root.parent / (root.name + "_tracks")
    t0 = time.perf_counter()
    man, metrics = build_tracks(data, tp, out, progress=False, log=lambda *_: None)
    seconds = time.perf_counter() - t0
    H, W = tp.image_size
    truth_static, tracks, visible, stored = [], [], [], []
    for split in man["splits"]:
        arr = load_file(str(out / f"{split}.safetensors"))
        sources = man["splits"][split]["sources"]
        src_wh = tuple(man["splits"][split]["source_sizes"][0])
        q_rc = (np.array(man["query_points"]) + 1.0) * np.array([H / 2.0, W / 2.0])       # (N, 2) row, col
        q_src = to_source(q_rc[:, ::-1], src_wh, (H, W), tp.resize)                      # (N, 2) x, y
        ij = np.clip(np.round(q_src).astype(int), 0, [src_wh[0] - 1, src_wh[1] - 1])
        for w in range(len(arr["tracks"])):
            view = sources[arr["window_scene"][w]].rsplit("view", 1)[1]
            mask = cv2.imread(str(root / "masks" / f"view_{view}" / f"{int(arr['window_start'][w])}.png"), 0)
            truth_static.append(mask[ij[:, 1], ij[:, 0]] == 0)
        tracks.append(arr["tracks"])
        visible.append(arr["visible"])
        stored.append(arr["static"])
    truth = np.stack(truth_static)
    tracks, visible, stored = np.concatenate(tracks), np.concatenate(visible), np.concatenate(stored)
    rules = {}
    cases = [(f"{rule}<{thr:g}px", static_by_rule(tracks, visible, rule, thr, H))
             for rule, thresholds in RULES.items() for thr in thresholds]
    for name, pred in cases + [(f"stage: {tp.static_rule} < {tp.static_threshold:g}", stored)]:
        hits = np.sum(pred & truth)
        rules[name] = {"precision": round(float(hits / max(pred.sum(), 1)), 4),
                       "recall": round(float(hits / max(truth.sum(), 1)), 4),
                       "background_called_moving": round(float(np.mean(~pred[truth])), 4),
                       "moving_recall": round(float(np.mean(~pred[~truth])), 4)}
    val = metrics["val"]
    return {"seconds": round(seconds, 1), "windows": int(len(truth)), "truly_static": round(float(truth.mean()), 4),
            "lost_at_end": round(float(1.0 - visible[:, -1].mean()), 4),
            "lost_at_end_background": round(float(1.0 - visible[:, -1][truth].mean()), 4),
            "tapvid_val": {"tracker": {k: val["tapvid"][k] for k in ("average_jaccard", "average_pts_within_thresh",
                                                                     "occlusion_accuracy")},
                           "zero_motion": {k: val["tapvid_static_baseline"][k]
                                           for k in ("average_jaccard", "average_pts_within_thresh",
                                                     "occlusion_accuracy")}},
            "static_rules": rules}


def main(argv=None) -> int:
    from models.common.params import load_section, parse_section
    from models.sequences.demo import write_demo_sequence

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--times", type=int, default=48)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    ap.add_argument("--noise", nargs="+", default=["0:none", "4:75", "8:50"])
    ap.add_argument("--set", nargs="*", default=[], help="tracks params overrides key=value (YAML values)")
    ap.add_argument("--out", default="reports/tracks_noise_bench.json")
    args = ap.parse_args(argv)
    from ruamel.yaml import YAML

    base = {**vars(load_section("tracks", args.params)),
            **{k: YAML(typ="safe", pure=True).load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    results = {"settings": {"times": args.times, "views": args.views, "size": args.size, "fps": 30.0,
                            "overrides": args.set}}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.noise:
            std, q = setting.split(":")
            root = Path(tmp) / f"noise_{std}_{q}" / "seq"
            write_demo_sequence(root, times=args.times, views=args.views, width=args.size[0], height=args.size[1],
                                fps=30.0, track_grid=20, noise_std=float(std),
                                jpeg_quality=None if q == "none" else int(q))
            tp = parse_section("tracks", {**base, "source": "sequences", "input": str(root), "reference": "tracks",
                                          "frames_fps": 30.0, "target_fps": 30.0, "val_clips": None})
            data = parse_section("data", {"splits": ["train", "val"]})
            results[f"noise {std}, jpeg {q}"] = measure(root, tp, data)
            print(setting, json.dumps(results[f"noise {std}, jpeg {q}"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
