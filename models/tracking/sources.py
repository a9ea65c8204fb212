"""Clips to track: each scene's CAM_FRONT stream of a nuScenes dataroot, video files, or image-sequence folders.

A clip is resampled to ``target_fps`` by nearest timestamp (targets ``t0 + k / fps`` from the first frame to the
last; a target exactly half-way between two frames takes the earlier one), fitted into ``image_size`` by
``tracks.resize`` (:mod:`models.tracking.resize`; cv2 ``INTER_AREA``, RGB) and cut into windows of T frames every
``window_stride`` frames (``starts = range(0, n - T + 1, stride)``; a clip with 0 < n < T frames is one
``short`` window, a clip with no readable frame one ``no_frames`` window).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from .resize import resize_frame

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CHANNEL = "CAM_FRONT"
TIME_EPS_US = 1.0  # timestamps are integer microseconds; targets within 1 us of the last frame still count


class TrackingInputError(ValueError):
    """Bad input for the tracks stage (a missing folder, an unreadable image, a refused checkpoint)."""


@dataclass
class Clip:
    """One video: ``kind`` nuscenes (frames listed with timestamps), video (a file) or frames (a folder)."""
    name: str
    split: str
    kind: str
    path: str = ""
    frames: list = field(default_factory=list)      # nuscenes: [(timestamp_us, file path, sample_data token)]
    calibration: dict | None = None                 # nuscenes: {"K": (3, 3), "sensor2ego": (4, 4)} of CAM_FRONT
    layout: str | None = None                       # sequence: the folder's layout (time-major / view-major)


@dataclass
class Frames:
    """A clip after resampling and resizing: ``rgb (n, H, W, 3) uint8``; per frame the source frame index,
    its timestamp (us from the clip's first frame for videos and folders) and, for nuscenes, its token."""
    rgb: np.ndarray
    source_index: np.ndarray
    time_us: np.ndarray
    tokens: list
    source_size: tuple[int, int] | None   # (W, H) of the source frames
    source_fps: float | None              # native rate: the container's, frames_fps, or from the timestamps
    source_frames: int = 0                # frames in the source clip (read or listed)


# ------------------------------------------------------------------------------------------ resampling
def resample_stream(times_us: Iterable[float], fps: float) -> Iterator[tuple[int, int]]:
    """Nearest-timestamp resampling of a time-ordered stream: yields (target k, source index i) in order.

    Targets are ``t0 + k * 1e6 / fps`` for ``t0 + k * 1e6 / fps <= t_last`` (within 1 us); a target half-way
    between two frames takes the earlier one. Works on a stream (videos), so it never needs the length.
    """
    period = 1e6 / fps
    it = iter(times_us)
    try:
        t_first = float(next(it))
    except StopIteration:
        return
    k, prev_i, prev_t = 0, 0, t_first
    for i, t in enumerate(it, start=1):
        t = float(t)
        if t < prev_t:
            raise ValueError(f"timestamps must not decrease (frame {i}: {t} < {prev_t})")
        mid = 0.5 * (prev_t + t)
        while t_first + k * period <= mid + TIME_EPS_US * 1e-3:
            yield k, prev_i
            k += 1
        prev_i, prev_t = i, t
    while t_first + k * period <= prev_t + TIME_EPS_US:
        yield k, prev_i
        k += 1


def resample_indices(times_us: Iterable[float], fps: float) -> np.ndarray:
    """Source index of every target frame, (n,) int64 (see :func:`resample_stream`)."""
    return np.array([i for _, i in resample_stream(times_us, fps)], dtype=np.int64)


def window_starts(n_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of the full windows of a clip of ``n_frames`` (none when it is shorter than a window)."""
    return list(range(0, n_frames - window + 1, stride))


def _hash_unit(name: str) -> float:
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16) / 2.0 ** 64


def hash_split(name: str, val_fraction: float) -> str:
    """Deterministic split of a folder clip: val iff sha256(name) as a fraction of 2^64 < val_fraction."""
    return "val" if _hash_unit(name) < val_fraction else "train"


def assign_splits(names: list[str], val_fraction: float, val_clips: list[str] | None = None,
                  splits: tuple[str, ...] = ("train", "val")) -> dict[str, str]:
    """Clip name -> "train" / "val". ``val_clips`` (names) overrides the hash split. Otherwise
    :func:`hash_split`, and when both splits are wanted and there are two or more clips, neither is left empty:
    the clip with the smallest hash moves to an empty val, the one with the largest to an empty train
    (deterministic, stated in the manifest)."""
    if val_clips is not None:
        unknown = sorted(set(val_clips) - set(names))
        if unknown:
            raise TrackingInputError(f"tracks.val_clips names {unknown}, which are not clips of the folder "
                                     f"(clips: {names[:12]}{' ...' if len(names) > 12 else ''})")
        return {n: "val" if n in val_clips else "train" for n in names}
    out = {n: hash_split(n, val_fraction) for n in names}
    if len(names) >= 2 and {"train", "val"} <= set(splits):
        by_hash = sorted(names, key=_hash_unit)
        if "val" not in out.values():
            out[by_hash[0]] = "val"
        if "train" not in out.values():
            out[by_hash[-1]] = "train"
    return out


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------- clip listing
def folder_clips(folder: str | Path, kind: str, val_fraction: float, splits: list[str],
                 val_clips: list[str] | None = None, reference: str | None = None) -> dict[str, list[Clip]]:
    """Clips of a folder source (kind ``videos``: video files; ``frames``: sub-folders of images; ``sequences``), by
    split (:func:`assign_splits`). ``reference``: the reference-tracks folder inside ``folder``, never a clip."""
    root = Path(folder)
    if not root.is_dir():
        raise TrackingInputError(f"{root}: folder of clips not found (tracks.input, tracks.source = {kind})")
    if kind == "sequences":
        return _by_split(_sequence_clips(root), val_fraction, splits, val_clips)
    if kind == "videos":
        items = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                       key=lambda p: _natural_key(p.name))
        what = f"video files ({', '.join(VIDEO_EXTENSIONS)})"
    else:
        skip = Path(reference).parts[0] if reference else None
        items = sorted((p for p in root.iterdir() if p.is_dir() and p.name != skip), key=lambda p: _natural_key(p.name))
        what = "sub-folders (one image sequence each)"
        if (root / "images").is_dir() or any(re.match(r"^time_\d+$", p.name) for p in items):
            raise TrackingInputError(f"{root}: this is a multi-view sequence (images/ or time_<t>/ folders), not a "
                                     "folder of clips: read it with tracks.source: sequences (each view becomes a "
                                     "clip), tracks.input = the folder holding images/")
    if not items:
        raise TrackingInputError(f"{root}: no {what} found (tracks.source = {kind})")
    clips = [Clip(name=p.name, split="", kind="video" if kind == "videos" else "frames", path=str(p)) for p in items]
    return _by_split(clips, val_fraction, splits, val_clips)


def _by_split(clips: list[Clip], val_fraction: float, splits: list[str],
              val_clips: list[str] | None) -> dict[str, list[Clip]]:
    """The wanted splits' clips, each clip's ``split`` set by :func:`assign_splits`, in listing order."""
    assigned = assign_splits([c.name for c in clips], val_fraction, val_clips, tuple(splits))
    out: dict[str, list[Clip]] = {s: [] for s in splits}
    for c in clips:
        c.split = assigned[c.name]
        if c.split in out:
            out[c.split].append(c)
    return out


def _sequence_clips(root: Path) -> list[Clip]:
    """Source ``sequences``: ``root`` is one multi-view sequence folder (with ``images/``) or a folder of them; each
    view of each sequence is one clip, named ``<sequence>/view<k>`` (:mod:`models.sequences` layouts)."""
    from models.sequences import MultiViewSequence, SequenceLayoutError

    seqs = [root] if (root / "images").is_dir() else sorted(
        (p for p in root.iterdir() if (p / "images").is_dir()), key=lambda p: _natural_key(p.name))
    if not seqs:
        raise TrackingInputError(f"{root}: no multi-view sequence (a folder with images/ in the time-major or "
                                 f"view-major layout, docs/sequences.md) here or in its sub-folders "
                                 f"(tracks.source = sequences)")
    clips = []
    for seq in seqs:
        try:   # the whole folder is checked (images, depth, calibration, masks) before any work; any rig
            grid = MultiViewSequence(seq, fixed_rig=False).grid
        except SequenceLayoutError as exc:
            raise TrackingInputError(str(exc)) from exc
        for v, view in enumerate(grid.views):
            clips.append(Clip(name=f"{seq.name}/view{view}", split="", kind="sequence", path=str(seq),
                              frames=[(0, str(row[v]), "") for row in grid.paths], layout=grid.layout))
    return clips


class _PreloadedNuScenes:
    """A devkit ``NuScenes`` indexing tables already parsed and checked by ``models.nuscenes.validate``."""

    @staticmethod
    def load(version: str, dataroot: str, tables: dict):
        from nuscenes.nuscenes import NuScenes

        class Preloaded(NuScenes):
            def __load_table__(self, table_name):  # noqa: N802 (the devkit's name)
                if table_name in tables:
                    return tables[table_name]
                return super().__load_table__(table_name)

        return Preloaded(version=version, dataroot=str(dataroot), verbose=False)


def nuscenes_clips(dataroot: str | Path, version: str, splits: list[str]) -> tuple[dict[str, list[Clip]], str]:
    """Every scene of the wanted splits with its CAM_FRONT stream (key frames and sweeps in time order), read
    through the devkit: from the scene's first key frame, walk ``sample_data.prev`` then ``next`` while the
    record's sample belongs to the scene. Returns ({split: clips}, split source description)."""
    from models.nuscenes import validate as V
    from models.nuscenes.splits import resolve_splits

    tables = V.load_tables(dataroot, version)
    table_root = Path(dataroot) / version
    names = [sc["name"] for sc in tables["scene"]]
    split_names, split_source = resolve_splits(dataroot, version, names, list(splits))
    nusc = _PreloadedNuScenes.load(version, str(dataroot), tables)
    by_name = {sc["name"]: sc for sc in tables["scene"]}
    out: dict[str, list[Clip]] = {}
    for split, scene_names in split_names.items():
        clips = []
        for name in scene_names:
            sc = by_name[name]
            clip = Clip(name=name, split=split, kind="nuscenes", path=str(table_root))
            first = nusc.get("sample", sc["first_sample_token"])
            if CHANNEL in first["data"]:
                recs = _walk_channel(nusc, first["data"][CHANNEL], sc["token"])
                recs.sort(key=lambda r: (r["timestamp"], r["token"]))
                clip.frames = [(int(r["timestamp"]), os.path.join(str(dataroot), r["filename"]), r["token"])
                               for r in recs]
                cs = nusc.get("calibrated_sensor", recs[0]["calibrated_sensor_token"])
                if any(r["calibrated_sensor_token"] != recs[0]["calibrated_sensor_token"] for r in recs):
                    raise V.NuScenesInputError(table_root / "sample_data.json",
                                               f"scene {name!r}: {CHANNEL} calibration changes within the scene",
                                               record=recs[0]["token"])
                clip.calibration = {"K": np.array(cs["camera_intrinsic"], np.float64),
                                    "sensor2ego": _transform(cs["translation"], cs["rotation"])}
            clips.append(clip)
        out[split] = clips
    return out, split_source


def _walk_channel(nusc, sd_token: str, scene_token: str) -> list[dict]:
    def in_scene(rec) -> bool:
        return nusc.get("sample", rec["sample_token"])["scene_token"] == scene_token

    start = nusc.get("sample_data", sd_token)
    recs, cur = [start], start
    while cur["prev"]:
        cur = nusc.get("sample_data", cur["prev"])
        if not in_scene(cur):
            break
        recs.append(cur)
    recs.reverse()
    cur = start
    while cur["next"]:
        cur = nusc.get("sample_data", cur["next"])
        if not in_scene(cur):
            break
        recs.append(cur)
    return recs


def _transform(translation, rotation_wxyz) -> np.ndarray:
    from pyquaternion import Quaternion

    T = np.eye(4)
    T[:3, :3] = Quaternion(rotation_wxyz).rotation_matrix
    T[:3, 3] = translation
    return T


# ------------------------------------------------------------------------------------------- reading
def _read_image(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise TrackingInputError(f"{path}: image missing or unreadable")
    return img


def load_frames(clip: Clip, fps: float, size_hw: tuple[int, int], frames_fps: float,
                resize: str = "stretch") -> Frames:
    """Read, resample and resize a clip (``resize``: a :mod:`models.tracking.resize` mode). A clip without any
    readable frame gives 0 frames (not an error);
    an unreadable image inside a nuscenes stream or an image folder is an error naming the file."""
    if clip.kind == "video":
        return _load_video(clip.path, fps, size_hw, frames_fps, resize)
    if clip.kind == "nuscenes":
        times = [f[0] for f in clip.frames]
        paths = [f[1] for f in clip.frames]
        tokens = [f[2] for f in clip.frames]
    elif clip.kind == "sequence":                      # one view of a multi-view sequence, in time order
        paths = [f[1] for f in clip.frames]
        times = [i * 1e6 / frames_fps for i in range(len(paths))]
        tokens = []
    else:
        folder = Path(clip.path)
        paths = [str(p) for p in sorted((p for p in folder.iterdir()
                                         if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                                        key=lambda p: _natural_key(p.name))]
        times = [i * 1e6 / frames_fps for i in range(len(paths))]
        tokens = []
    idx = resample_indices(times, fps)
    rgb = np.empty((len(idx), size_hw[0], size_hw[1], 3), np.uint8)
    source_size = None
    cache: dict[int, np.ndarray] = {}
    for k, i in enumerate(idx):
        if i not in cache:
            cache.clear()  # indices do not decrease: keep only the last decoded frame
            img = _read_image(paths[i])
            source_size = source_size or (img.shape[1], img.shape[0])
            if (img.shape[1], img.shape[0]) != source_size:
                raise TrackingInputError(f"{paths[i]}: frame size {img.shape[1]}x{img.shape[0]} differs from the "
                                         f"clip's first frame ({source_size[0]}x{source_size[1]})")
            cache[i] = resize_frame(img, size_hw, resize)
        rgb[k] = cache[i]
    t0 = times[0] if times else 0
    time_us = np.array([int(round(times[i] - (t0 if clip.kind != "nuscenes" else 0))) for i in idx], np.int64)
    if clip.kind == "nuscenes":  # the mean rate of the stream's timestamps
        native = (round((len(times) - 1) * 1e6 / (times[-1] - times[0]), 2)
                  if len(times) > 1 and times[-1] > times[0] else None)
    else:
        native = frames_fps
    return Frames(rgb=rgb, source_index=idx, time_us=time_us, tokens=[tokens[i] for i in idx] if tokens else [],
                  source_size=source_size, source_fps=native, source_frames=len(paths))


def _load_video(path: str, fps: float, size_hw: tuple[int, int], fallback_fps: float, resize: str) -> Frames:
    cap = cv2.VideoCapture(path)
    try:
        src_fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
        if not np.isfinite(src_fps) or src_fps <= 0 or src_fps > 1000:
            src_fps = fallback_fps
        frames: list[np.ndarray] = []
        index: list[int] = []
        source_size = None
        state = {"i": -1, "img": None}

        def times() -> Iterator[float]:
            while cap.isOpened():
                ok, img = cap.read()
                if not ok or img is None:
                    return
                state["i"] += 1
                state["img"] = img
                yield state["i"] * 1e6 / src_fps

        # resample_stream emits (k, i) only after reading frame i + 1 (or at the end), so keep the previous frame
        prev: dict[int, np.ndarray] = {}
        for _, i in resample_stream(_remember(times(), state, prev), fps):
            img = prev[i]
            source_size = source_size or (img.shape[1], img.shape[0])
            frames.append(resize_frame(img, size_hw, resize))
            index.append(i)
    finally:
        cap.release()
    rgb = np.stack(frames) if frames else np.zeros((0, size_hw[0], size_hw[1], 3), np.uint8)
    idx = np.array(index, np.int64)
    return Frames(rgb=rgb, source_index=idx, time_us=np.round(idx * 1e6 / src_fps).astype(np.int64), tokens=[],
                  source_size=source_size, source_fps=src_fps if len(idx) else None, source_frames=state["i"] + 1)


def _remember(times: Iterator[float], state: dict, prev: dict) -> Iterator[float]:
    """Pass timestamps through while keeping the last two decoded frames by index (what resample_stream needs)."""
    for t in times:
        prev[state["i"]] = state["img"]
        for old in [j for j in prev if j < state["i"] - 1]:
            del prev[old]
        yield t
