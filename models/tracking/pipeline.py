"""The ``tracks`` stage's work: list clips, track each window's query grid, screen, score against exact truth,
write the outputs.

Per clip (in a fork pool of ``tracks.workers`` processes; results do not depend on the worker count):
read -> resample to ``target_fps`` -> resize to ``image_size`` -> windows -> the backend tracks AMPLIFY's query
grid from each window's first frame -> (synthetic world) the oracle tracks the same grid exactly ->
:func:`models.tracking.conventions.finalize_windows` screens and converts -> TAP-Vid metrics per window.

TAP-Vid scoring (``reports/tracks.json``): each window is one video, ``query_mode = "first"`` with every query
on frame 0; only queries the truth sees at frame 0 are scored (TAP-Vid queries are visible points); pixel
coordinates of the resized frames are mapped to a 256 x 256 raster (``(p + 0.5) * 256 / size - 0.5``); the
split value is the plain mean over windows (NaN windows, with no visible scored point, are counted and left
out). Windows dropped as ``nan`` are not scored; ``empty_static`` windows are scored (the tracker did run).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np

from . import conventions as C
from .metrics import METRIC_KEYS, TAPVID_SIZE, tapvid_metrics, to_tapvid_raster
from .oracle import SKY_RULE, Oracle, load_scene_truth, to_resized, to_source
from .reference import find_reference, load_reference, window_reference
from .sources import Clip, TrackingInputError, folder_clips, load_frames, nuscenes_clips, window_starts
from .trackers import make_tracker

ARRAYS = {  # name: (shape, dtype, meaning)
    "tracks": ("(Nw, T, N, 2)", "float32", C.COORDINATES),
    "visible": ("(Nw, T, N)", "bool", "the backend's visibility (lk: tracked and not lost; oracle: exact)"),
    "velocities": ("(Nw, T-1, N, 2)", "float32", C.VELOCITIES),
    "static": ("(Nw, N)", "bool", "the point does not move while visible (tracks.static_rule, "
                                  "tracks.static_threshold; conventions.static_points)"),
    "window_scene": ("(Nw,)", "int32", "index into splits.<split>.sources (the window's source clip)"),
    "window_start": ("(Nw,)", "int32", "first frame of the window, frame index at target_fps"),
    "window_time_us": ("(Nw,)", "int64", "timestamp of the window's first frame: the sample_data timestamp for "
                                         "nuscenes, microseconds from the clip's first frame for videos/frames"),
}
_CTX: dict = {}  # set in the parent before forking: tracker, params, truth
UPSAMPLING_TOLERANCE = 1.05  # target_fps up to 5 % above a clip's native rate is not upsampling


# --------------------------------------------------------------------------------------------- clips
def list_clips(data, tp) -> tuple[dict[str, list[Clip]], str, dict | None]:
    """({split: clips}, split description, truth index or None). Truth: the synthetic world's extras."""
    splits = list(data.splits)
    if tp.source == "nuscenes":
        clips, split_source = nuscenes_clips(data.dataroot, data.version, splits)
        truth = _truth_index(data)
        if tp.backend == "oracle" and truth is None:
            raise TrackingInputError(f"{Path(data.dataroot) / 'extras' / 'manifest.json'}: tracks.backend = "
                                     f"'oracle' needs the synthetic world's exact truth (data.version "
                                     f"{data.version!r} has none)")
        return clips, split_source, truth
    clips = folder_clips(tp.input, tp.source, tp.val_fraction, splits, tp.val_clips, tp.reference)
    if tp.val_clips is not None:
        return clips, f"tracks.val_clips = {list(tp.val_clips)} -> val, the other clips train", None
    return clips, (f"sha256(clip name) / 2^64 < tracks.val_fraction = {tp.val_fraction} -> val, else train; with "
                   f"two or more clips, an empty split takes the clip with the smallest (val) or largest (train) "
                   f"hash"), None


def check_input(data, tp) -> None:
    """``tracks.input`` is the stage's one data dependency in dvc.yaml (DVC cannot choose a dependency by
    ``tracks.source``): for the nuscenes source it must name the dataroot's table folder, so that DVC and the
    stage read the same thing."""
    import os

    from models.common.params import ParamsError

    if tp.source == "nuscenes":
        tables = os.path.join(str(data.dataroot), str(data.version))
        if os.path.normpath(tp.input) != os.path.normpath(tables):
            raise ParamsError(f"params: tracks.input = {tp.input!r}: with tracks.source = nuscenes it must be "
                              f"<data.dataroot>/<data.version> = {tables!r}, the folder DVC watches for this stage "
                              f"(-S tracks.input={tables})")


def _truth_index(data) -> dict | None:
    path = Path(data.dataroot) / "extras" / "manifest.json"
    if not path.is_file():
        return None
    man = json.loads(path.read_text())
    if man.get("version") != data.version:
        return None
    width, height = man["image_size"]
    return {"root": str(Path(data.dataroot)), "width": int(width), "height": int(height),
            "scenes": {name: {"file": rec["file"], "sweep_tokens": rec["sweep_tokens"]}
                       for name, rec in man["scenes"].items()}}


# ------------------------------------------------------------------------------------------ one clip
def process_clip(clip: Clip) -> dict:
    """Track every window of one clip. Returns kept windows' arrays, drop counts and per-window scores."""
    tp, tracker, truth = _CTX["tp"], _CTX["tracker"], _CTX["truth"]
    H, W = tp.image_size
    T = tp.window
    res = {"name": clip.name, "dropped": {r: 0 for r in C.DROP_REASONS}, "windows": 0, "frames": 0,
           "source_fps": None, "source_size": None, "oracle": {"sky_points": 0, "held_positions": 0}}
    frames = load_frames(clip, tp.target_fps, (H, W), tp.frames_fps, tp.resize)
    n = len(frames.rgb)
    res.update(frames=n, source_fps=frames.source_fps, source_size=frames.source_size)
    res["rate"] = rate_report(clip.name, frames, tp)
    if clip.layout:
        res["rate"]["layout"] = clip.layout                     # a sequence view: which layout was read
    if n == 0:
        res["dropped"]["no_frames"], res["windows"] = 1, 1
        return res
    if n < T:
        res["dropped"]["short"], res["windows"] = 1, 1
        return res
    starts = window_starts(n, T, tp.window_stride)
    queries = C.query_grid_xy(tp.grid_size, H, W)                              # (N, 2) x, y, resized frames
    N = len(queries)

    oracle = sweep_of = None
    if truth is not None and clip.name in truth["scenes"]:
        rec = truth["scenes"][clip.name]
        if frames.source_size != (truth["width"], truth["height"]):
            raise TrackingInputError(f"{clip.name}: frames are {frames.source_size}, the exact truth is for "
                                     f"{truth['width']}x{truth['height']}")
        index = {tok: i for i, tok in enumerate(rec["sweep_tokens"])}
        missing = [tok for tok in frames.tokens if tok not in index]
        if missing:
            raise TrackingInputError(f"{Path(truth['root']) / rec['file']}: CAM_FRONT sample_data {missing[0]} of "
                                     f"scene {clip.name} has no exact truth (extras/manifest.json sweep_tokens)")
        sweep_of = np.array([index[tok] for tok in frames.tokens], np.int64)
        oracle = Oracle(load_scene_truth(Path(truth["root"]) / rec["file"], clip.calibration["K"],
                                         clip.calibration["sensor2ego"], truth["width"], truth["height"]))
        query_src = to_source(queries, frames.source_size, (H, W), tp.resize)

    if tracker is None and oracle is None:
        raise TrackingInputError(f"{clip.name}: tracks.backend = 'oracle' but the scene has no exact truth in "
                                 f"extras/manifest.json")
    state = tracker.prepare(frames.rgb) if tracker is not None else None
    pred_xy = np.empty((len(starts), T, N, 2), np.float64)
    pred_vis = np.empty((len(starts), T, N), bool)
    gt_xy = gt_vis = None
    if oracle is not None:
        gt_xy = np.empty_like(pred_xy)
        gt_vis = np.empty_like(pred_vis)
    for w, s in enumerate(starts):
        if oracle is not None:
            uv, vis, counts = oracle.track(sweep_of[s:s + T], query_src)
            gt_xy[w], gt_vis[w] = to_resized(uv, frames.source_size, (H, W), tp.resize), vis
            for k in counts:
                res["oracle"][k] += counts[k]
        if tracker is None:
            pred_xy[w], pred_vis[w] = gt_xy[w], gt_vis[w]
        else:
            xy, vis = tracker.track(state, s, T, queries)
            pred_xy[w], pred_vis[w] = xy, vis

    if oracle is None:
        res.update(score_against_reference(clip, frames, tracker, state, starts, tp))
        if "scores" not in res:                                   # no truth for this clip: self-consistency
            res["consistency"] = consistency(tracker, frames.rgb, starts, T, pred_xy, pred_vis)

    fin = C.finalize_windows(pred_xy, pred_vis, H, W, tp.static_threshold, tp.static_rule)
    reason = fin["reason"]
    keep = reason == ""
    for r in ("nan", "empty_static"):
        res["dropped"][r] = int(np.sum(reason == r))
    res["windows"] = len(starts)
    res["arrays"] = {
        "tracks": fin["tracks"][keep], "visible": fin["visible"][keep], "velocities": fin["velocities"][keep],
        "static": fin["static"][keep], "window_start": np.asarray(starts, np.int32)[keep],
        "window_time_us": frames.time_us[np.asarray(starts, np.int64)][keep].astype(np.int64),
    }
    if gt_xy is not None:
        scored = reason != "nan"
        res["scores"] = score_windows(pred_xy[scored], pred_vis[scored], gt_xy[scored], gt_vis[scored], H, W)
        static_pred = np.broadcast_to(queries[None, None], gt_xy[scored].shape)
        res["baseline"] = score_windows(static_pred, np.ones_like(gt_vis[scored]), gt_xy[scored], gt_vis[scored], H, W)
    return res


def score_against_reference(clip: Clip, frames, tracker, state, starts: list[int], tp) -> dict:
    """``tracks.reference`` scores for one clip (:mod:`models.tracking.reference`): {} when the clip has none,
    else the reference's description and per-window TAP-Vid ``scores`` and zero-motion ``baseline``."""
    if tp.reference is None:
        return {}
    path = find_reference(clip, tp.input, tp.reference)
    if path is None:
        return {"reference": None}
    H, W = tp.image_size
    T = tp.window
    ref = load_reference(path, frames.source_frames, frames.source_size)
    rxy, rvis = window_reference(ref, frames.source_index, frames.source_size, (H, W), tp.resize)   # (M, n, ...)
    per_window, baseline = [], []
    for s in starts:
        q = rvis[:, s]                                            # queries: reference points seen at frame s
        if not q.any():
            continue
        gt_xy = np.nan_to_num(rxy[q, s:s + T].transpose(1, 0, 2))[None]                 # (1, T, Nq, 2)
        gt_vis = rvis[q, s:s + T].T[None]                                               # (1, T, Nq)
        queries = rxy[q, s]
        xy, vis = tracker.track(state, s, T, queries)
        per_window.append(score_windows(xy[None], vis[None], gt_xy, gt_vis, H, W))
        still = np.broadcast_to(queries[None, None], gt_xy.shape)
        baseline.append(score_windows(still, np.ones_like(gt_vis), gt_xy, gt_vis, H, W))
    out = {"reference": {"file": path.as_posix(), "kind": ref.kind, "tracks": int(len(ref.xy)),
                         "windows_with_queries": len(per_window)}}
    if per_window:
        out["scores"] = {k: np.concatenate([w[k] for w in per_window]) for k in per_window[0]}
        out["baseline"] = {k: np.concatenate([w[k] for w in baseline]) for k in baseline[0]}
    return out


def consistency(tracker, rgb: np.ndarray, starts: list[int], T: int, pred_xy: np.ndarray,
                pred_vis: np.ndarray) -> dict:
    """How far the tracks can be trusted without truth, per window: the share of queries lost by the window's last
    frame, and a forward-backward round trip (each point still tracked at the last frame is tracked back to the
    first on the reversed clip; its error is the distance to its query, pixels of the resized frames). Returns
    {key: (windows,)} arrays: ``lost_share``, ``round_trip_1px`` / ``round_trip_2px`` (share of ALL queries that
    come back within 1 / 2 px; lost either way counts as failing) and ``fb_error_px`` (median over points tracked
    both ways, NaN when none)."""
    reverse = tracker.prepare(rgb[::-1])
    n, N = len(rgb), pred_xy.shape[2]
    out = {k: np.full(len(starts), np.nan) for k in ("lost_share", "round_trip_1px", "round_trip_2px", "fb_error_px")}
    for w, s in enumerate(starts):
        alive = pred_vis[w, -1]
        out["lost_share"][w] = 1.0 - alive.mean()
        err = np.full(N, np.inf)
        if alive.any():
            back, back_vis = tracker.track(reverse, n - s - T, T, pred_xy[w, -1, alive])
            e = np.linalg.norm(np.asarray(back[-1], np.float64) - pred_xy[w, 0, alive], axis=-1)
            err[np.flatnonzero(alive)] = np.where(back_vis[-1], e, np.inf)
        out["round_trip_1px"][w] = np.mean(err < 1.0)
        out["round_trip_2px"][w] = np.mean(err < 2.0)
        if np.isfinite(err).any():
            out["fb_error_px"][w] = np.median(err[np.isfinite(err)])
    return out


def rate_report(name: str, frames, tp) -> dict:
    """What resampling did to one clip: native frames and rate, frames used at target_fps, source frames repeated
    (upsampling) or never used (downsampling), and for a clip too short for one window the rate that would give
    one. Upsampling beyond 5 % of the native rate is refused unless ``tracks.allow_upsampling`` (the mean rate of a
    timestamped stream jitters around its nominal value)."""
    idx = frames.source_index
    used = len(np.unique(idx))
    native = frames.source_fps
    out = {"native_frames": int(frames.source_frames), "native_fps": native, "fps": tp.target_fps,
           "frames": int(len(idx)), "repeated": int(len(idx) - used), "unused": int(frames.source_frames - used)}
    if native and tp.target_fps > native * UPSAMPLING_TOLERANCE and not tp.allow_upsampling:
        raise TrackingInputError(
            f"{name}: native rate {native:g} fps is below tracks.target_fps = {tp.target_fps:g}: resampling would "
            f"repeat {out['repeated']} of {len(idx)} frames (points that stand still for a frame); set "
            f"tracks.target_fps <= {native:g}, or tracks.allow_upsampling: true to accept the repeats")
    if len(idx) < tp.window and frames.source_frames > 1 and native:
        duration = (frames.source_frames - 1) / native
        need = (tp.window - 1) / duration
        out["fps_for_one_window"] = round(need, 3)
        out["short"] = (f"{frames.source_frames} frames at {native:g} fps ({duration:.2f} s) give {len(idx)} frames "
                        f"at tracks.target_fps = {tp.target_fps:g}, fewer than tracks.window = {tp.window}: "
                        + (f"tracks.target_fps >= {need:.3g} or " if need <= native * UPSAMPLING_TOLERANCE or tp.allow_upsampling
                           else "")
                        + f"tracks.window <= {max(len(idx), 2)} would keep it")
    return out


def check_no_empty_split(by_split: dict[str, list[dict]], clips: dict, tp) -> None:
    """A split that ends with no window is an error naming the split, its clips, why each gave nothing, and what
    to change (never an empty file and exit 0)."""
    for split, results in by_split.items():
        if any(len((res.get("arrays") or {}).get("tracks", ())) for res in results):
            continue
        where = f"tracks.input = {tp.input}" if tp.source != "nuscenes" else "the dataroot"
        if not results:
            fix = ("name one in tracks.val_clips, or add clips" if split == "val" else "add clips")
            raise TrackingInputError(f"tracks: split '{split}' has no clips in {where}; {fix}")
        reasons = []
        for res in results:
            dropped = [r for r, k in res["dropped"].items() if k]
            reasons.append(f"{res['name']}: " + (res["rate"].get("short") or
                                                  f"{res['windows']} window(s), dropped as {dropped}"))
        raise TrackingInputError(f"tracks: split '{split}' has no windows; its clips: " + "; ".join(reasons))


def score_windows(pred_xy, pred_vis, gt_xy, gt_vis, H: int, W: int) -> dict:
    """Per-window TAP-Vid metrics (b = windows), queries on frame 0, only queries visible in the truth at frame 0
    scored (the others get query frame T, so no frame is evaluated for them). Returns {key: (b,)} plus
    ``queries`` (b,) scored per window."""
    b, T, N, _ = np.shape(gt_xy)
    if b == 0:
        return {**{k: np.zeros(0) for k in METRIC_KEYS}, "queries": np.zeros(0, np.int64)}
    gt = to_tapvid_raster(gt_xy, H, W)                                          # (b, T, N, 2) x, y
    pred = to_tapvid_raster(pred_xy, H, W)
    scored = gt_vis[:, 0]                                                        # (b, N)
    qt = np.where(scored, 0.0, float(T))
    query_points = np.stack([qt, gt[:, 0, :, 1], gt[:, 0, :, 0]], axis=-1)       # (b, N, 3) t, y, x
    out = tapvid_metrics(query_points, ~gt_vis.transpose(0, 2, 1), gt.transpose(0, 2, 1, 3),
                         ~np.asarray(pred_vis, bool).transpose(0, 2, 1), pred.transpose(0, 2, 1, 3), "first")
    out["queries"] = scored.sum(axis=1)
    return out


# ------------------------------------------------------------------------------------------- a split
def run_split(clips: list[Clip], workers: int, progress: bool = True, desc: str = "tracks") -> list[dict]:
    """process_clip over clips, in order (a fork pool when workers > 1)."""
    from tqdm import tqdm

    results: list[dict] = []
    with tqdm(total=len(clips), desc=desc, unit="clip", disable=not progress, leave=False) as bar:
        if workers <= 1 or len(clips) <= 1:
            for c in clips:
                results.append(process_clip(c))
                bar.update(1)
        else:
            with mp.get_context("fork").Pool(min(workers, len(clips))) as pool:
                for res in pool.imap(process_clip, clips):
                    results.append(res)
                    bar.update(1)
    return results


def _assemble(results: list[dict], T: int, N: int) -> dict:
    parts: dict[str, list] = {k: [] for k in ARRAYS}
    for k, res in enumerate(results):
        arr = res.get("arrays")
        if not arr:
            continue
        parts["window_scene"].append(np.full(len(arr["tracks"]), k, np.int32))
        for name in ARRAYS:
            if name != "window_scene":
                parts[name].append(arr[name])
    empty = {"tracks": np.zeros((0, T, N, 2), np.float32), "visible": np.zeros((0, T, N), bool),
             "velocities": np.zeros((0, T - 1, N, 2), np.float32), "static": np.zeros((0, N), bool),
             "window_scene": np.zeros(0, np.int32), "window_start": np.zeros(0, np.int32),
             "window_time_us": np.zeros(0, np.int64)}
    return {name: np.ascontiguousarray(np.concatenate(parts[name])) if parts[name] else empty[name]
            for name in ARRAYS}


def _mean_consistency(results: list[dict]) -> dict | None:
    """Split means of :func:`consistency` over windows, and each clip's own means."""
    per = [r for r in results if "consistency" in r and len(r["consistency"]["lost_share"])]
    if not per:
        return None

    def means(arrays: list[dict]) -> dict:
        cat = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
        out = {k: (round(float(np.nanmean(v)), 6) if np.isfinite(v).any() else None) for k, v in cat.items()}
        return {**out, "windows": int(len(cat["lost_share"]))}

    return {**means([r["consistency"] for r in per]),
            "units": "pixels of the resized frames; shares of the window's queries",
            "per_clip": {r["name"]: means([r["consistency"]]) for r in per}}


def _mean_scores(results: list[dict], key: str) -> dict | None:
    per = [r[key] for r in results if key in r]
    if not per:
        return None
    cat = {k: np.concatenate([p[k] for p in per]) for k in per[0]}
    ok = np.isfinite(cat["average_jaccard"]) & np.isfinite(cat["occlusion_accuracy"])
    out = {k: (round(float(np.mean(cat[k][ok])), 6) if ok.any() else None) for k in METRIC_KEYS}
    out["windows_scored"] = int(ok.sum())
    out["windows_without_visible_queries"] = int((~ok).sum())
    out["queries_scored"] = int(cat["queries"][ok].sum())
    return out


# ------------------------------------------------------------------------------------------- the stage
def build_tracks(data, tp, out_dir: str | Path, progress: bool = True, log=print) -> tuple[dict, dict]:
    """Track every split into ``out_dir`` (``<split>.safetensors`` + ``manifest.json``); returns (manifest,
    metrics). ``out_dir`` should be a fresh directory (the stage passes an atomic temporary one)."""
    import cv2

    check_input(data, tp)
    tracker = make_tracker(tp)                               # a backend that cannot run fails before any work
    clips, split_source, truth = list_clips(data, tp)
    cv2.setNumThreads(1)
    with _single_threaded_blas():                            # forked workers inherit the limit
        return _build(data, tp, tracker, clips, split_source, truth, out_dir, progress, log)


def _single_threaded_blas():
    """The geometry does many tiny matrix products: multi-threaded BLAS only spins (it doubled the CPU time and
    slowed the other worker). Uses threadpoolctl when it is installed; a no-op otherwise."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _build(data, tp, tracker, clips, split_source, truth, out_dir, progress, log) -> tuple[dict, dict]:
    from safetensors.numpy import save_file

    from models.common.io import write_json

    _CTX.clear()
    _CTX.update(tp=tp, tracker=tracker, truth=truth)
    H, W = tp.image_size
    T, N = tp.window, tp.grid_size ** 2
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_splits, metrics = {}, {}
    everything = [c for split_clips in clips.values() for c in split_clips]      # one pool: balanced workers
    all_results = iter(run_split(everything, tp.workers, progress, desc="tracks"))
    by_split = {split: [next(all_results) for _ in split_clips] for split, split_clips in clips.items()}
    for split, results in by_split.items():
        for res in results:
            if "short" in res["rate"]:
                log(f"tracks {split}: clip {res['name']} dropped: {res['rate']['short']}")
            elif res["rate"]["repeated"] or res["rate"]["unused"]:
                r = res["rate"]
                log(f"tracks {split}: clip {res['name']}: {r['native_frames']} frames at {r['native_fps']} fps -> "
                    f"{r['frames']} at {r['fps']:g} fps ({r['unused']} source frames unused, {r['repeated']} repeated)")
    check_no_empty_split(by_split, clips, tp)                # before anything is written
    for split, results in by_split.items():
        arrays = _assemble(results, T, N)
        save_file(arrays, str(out_dir / f"{split}.safetensors"))
        dropped = {r: sum(res["dropped"][r] for res in results) for r in C.DROP_REASONS}
        total = sum(res["windows"] for res in results)
        counts = {"clips": len(results), "frames": sum(res["frames"] for res in results),
                  "windows_total": total, "windows_kept": int(len(arrays["tracks"])), "dropped": dropped,
                  "static_points": int(arrays["static"].sum()), "points": int(arrays["static"].size)}
        assert counts["windows_kept"] + sum(dropped.values()) == total
        manifest_splits[split] = {
            **counts,
            "sources": [res["name"] for res in results],
            "dropped_clips": {r: [res["name"] for res in results if res["dropped"][r] and r in ("short", "no_frames")]
                              for r in ("short", "no_frames")},
            "source_fps": sorted({res["source_fps"] for res in results if res["source_fps"]}),
            "per_clip": {res["name"]: {**res["rate"], "windows_kept": len((res.get("arrays") or {}).get("tracks", ()))}
                      for res in results},
            "source_sizes": sorted({tuple(res["source_size"]) for res in results if res["source_size"]}),
            "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
        }
        m = {**counts, "static_fraction": round(counts["static_points"] / counts["points"], 6)
             if counts["points"] else None}
        scores = _mean_scores(results, "scores")
        if scores is not None:
            m["tapvid"] = scores
            m["tapvid_static_baseline"] = _mean_scores(results, "baseline")
            if truth is not None:
                m["oracle"] = {k: sum(res["oracle"][k] for res in results) for k in ("sky_points", "held_positions")}
        if tp.reference is not None:
            m["reference"] = {res["name"]: res.get("reference") for res in results}   # None: the clip has none
        consistency = _mean_consistency(results)
        if consistency is not None:
            m["consistency"] = consistency
        metrics[split] = m
        log(f"tracks {split}: {len(results)} clips, {counts['windows_kept']}/{total} windows kept "
            f"(dropped {dropped})" + (f"; AJ {scores['average_jaccard']}, delta_avg "
                                      f"{scores['average_pts_within_thresh']}" if scores else ""))

    params = {k: v for k, v in dataclasses.asdict(tp).items() if k != "workers"}  # not content: no rerun
    manifest = {
        "params": params,
        "data": {"dataroot": str(data.dataroot), "version": data.version} if tp.source == "nuscenes" else None,
        "source": tp.source, "backend": tp.backend,
        "T": T, "N": N, "grid_size": tp.grid_size, "image_size": [H, W], "fps": tp.target_fps,
        "coordinate_convention": C.COORDINATE_CONVENTION,
        "coordinates": C.COORDINATES,
        "query_points": np.round(C.grid_normalised(tp.grid_size), 9).tolist(),
        "query_grid": "AMPLIFY grid_queries: linspace(-1 + 1/g, 1 - 1/g, g) per axis, row-major (n = i * g + j), "
                      "the same grid seeded on the first frame of every window",
        "velocities": C.VELOCITIES,
        "static": (f"static[w, n] = max over frames t where visible[w, t, n] of |tracks[w, t, n] - tracks[w, 0, n]| "
                   f"< {tp.static_threshold} (normalised units; one pixel of a row = {2.0 / H:.6g})"
                   if tp.static_rule == "displacement" else
                   f"static[w, n] = max over steps t with visible[w, t, n] and visible[w, t + 1, n] of "
                   f"|velocities[w, t, n]| < {tp.static_threshold} (normalised units per frame at {tp.target_fps} "
                   f"fps; one pixel of a row = {2.0 / H:.6g})") + "; lost or hidden frames are no evidence of motion",
        "visibility": "lk: tracked and not lost (LK status, forward-backward error < lk_fb_threshold px, inside "
                      "the image; a lost point keeps its last position with visible False for the rest of the "
                      "window: that position is a placeholder, not a measurement); cotracker: predictor visibility "
                      "(sigmoid > 0.9); oracle: exact (depth test)",
        "oracle_rules": SKY_RULE if truth is not None else None,
        "windows": f"windows of T = {T} frames every {tp.window_stride} frames at {tp.target_fps} fps "
                   f"(nearest-timestamp resampling), frames resized to {H}x{W} by tracks.resize = {tp.resize} "
                   f"(cv2.INTER_AREA, RGB; models/tracking/resize.py)",
        "drop_reasons": {"nan": "a non-finite tracked position in the window",
                         "short": "a clip with fewer than T frames (one per clip)",
                         "empty_static": "every point of the window is static",
                         "no_frames": "a clip without a readable frame (one per clip)"},
        "window_source": "splits.<split>.sources[window_scene[i]] is the source of window i",
        "split_source": split_source,
        "splits": manifest_splits,
        "arrays": {k: {"shape": v[0], "dtype": v[1], "meaning": v[2]} for k, v in ARRAYS.items()},
    }
    write_json(out_dir / "manifest.json", manifest)
    if truth is not None:
        truth_text = "synthetic world oracle (exact)"
    elif tp.reference is not None:
        truth_text = (f"reference tracks (tracks.reference = {tp.reference}); clips without one get the "
                      f"forward-backward consistency instead")
    else:
        truth_text = None
    metrics = {"backend": tp.backend, "source": tp.source, "truth": truth_text,
               **({} if truth_text else {"no_truth": "no exact truth and no tracks.reference: TAP-Vid metrics "
                                                     "cannot be computed; 'consistency' gives the forward-backward "
                                                     "round trip and the lost-point share per split and clip"}),
               "tapvid_conventions": f"query_mode first, queries on frame 0 visible in the truth, {TAPVID_SIZE}x"
                                     f"{TAPVID_SIZE} raster, mean over windows", **metrics}
    return manifest, metrics


def load_tracks(tracks_dir: str | Path, split: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read one split of the stage's output: ({array name: array}, manifest)."""
    from safetensors.numpy import load_file

    tracks_dir = Path(tracks_dir)
    manifest = json.loads((tracks_dir / "manifest.json").read_text())
    if split not in manifest["splits"]:
        raise TrackingInputError(f"{tracks_dir / 'manifest.json'}: no split {split!r} "
                                 f"(have {sorted(manifest['splits'])})")
    return load_file(str(tracks_dir / f"{split}.safetensors")), manifest
