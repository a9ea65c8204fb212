"""Planner samples from the GT cache: the last ``frames`` key frames of each camera, ego state and targets.

Item i of :class:`PlannerSamples` (numpy; the default collate stacks them):

    frames          (T, N, 3, S, S) uint8   T = planner.frames (oldest first, the current frame last),
                                            N = len(planner.cameras), S = planner.img_size
    ego_status      (5,) float32            cache ego_status [speed, a_long, yaw_rate, vx, vy]
    ego_history     (H, 3) float32, ego_history_valid (H,) bool
    command         () int64                0 RIGHT, 1 LEFT, 2 FORWARD (derived from the GT future: a leak)
    route_command   () int64                the honest route command (cache route_command; manifest route_source)
    route_points    (R, 2) float32, route_valid (R,) bool   the planned route ahead (cache route_points)
    perception_target (K,) float32          GT corridor values the perception head learns (models/planner/perception.py)
    target          (F, 2) float32          future LIDAR (x right, y forward) waypoints, metres
    target_valid    (F,) bool
    index           () int64                the sample's index in the split

Choices:
- Previous frames are the previous key frames (samples) of the same scene, found by the cache's
  ``scene_index`` / ``frame_index``. Before a scene's first key frame the earliest frame is repeated (the
  cache's ``ego_history_valid`` says which steps are real).
- Images are resized to ``img_size x img_size`` as a whole (aspect ratio not kept, the full field of view is),
  bilinear, with PIL. When every resized image fits into ``planner.image_cache_mb`` they are decoded once
  at construction; otherwise each item decodes its own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.common.params import ParamsError, PlannerParams
from models.nuscenes.dataset import GTCacheDataset
from models.planner.perception import corridor_targets


class ImageDecodeError(ValueError):
    """An input image is missing or cannot be decoded; the message names the file and the sample."""


def previous_frame_indices(scene_index: np.ndarray, frame_index: np.ndarray, frames: int) -> np.ndarray:
    """(S,) scene and key-frame indices -> (S, frames) sample indices of frames t-(frames-1) .. t.

    Steps before a scene's first sample repeat its earliest available sample (clamped frame index).
    Raises ``ValueError`` if a scene's frame indices are not contiguous from 0 (a partial cache)."""
    scene_index, frame_index = np.asarray(scene_index, np.int64), np.asarray(frame_index, np.int64)
    lookup: dict[tuple[int, int], int] = {(int(s), int(f)): i for i, (s, f) in enumerate(zip(scene_index,
                                                                                                frame_index))}
    offsets = np.arange(-(frames - 1), 1)                                    # (T,) e.g. -3 .. 0
    wanted = np.maximum(frame_index[:, None] + offsets[None, :], 0)          # (S, T) clamped at the scene start
    out = np.empty(wanted.shape, np.int64)
    for (i, t), f in np.ndenumerate(wanted):                                 # S * T dict lookups, at startup only
        key = (int(scene_index[i]), int(f))
        if key not in lookup:
            raise ValueError(f"sample {i}: scene {int(scene_index[i])} has no key frame {int(f)} in the cache "
                             "(frame indices must run from 0 without gaps); rebuild the cache")
        out[i, t] = lookup[key]
    return out


def decode_resized(path: str, size: int, what: str) -> np.ndarray:
    """One image file -> (3, size, size) uint8; ``ImageDecodeError`` naming ``what`` if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageDecodeError(f"{path}: cannot decode the image of {what}: {e}") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))                      # (3, S, S)


class PlannerSamples:
    """One split of the GT cache as planner inputs and targets (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, split: str, p: PlannerParams, dataroot: str | Path | None = None,
                 progress: bool = False):
        self.p = p
        self.cache = GTCacheDataset(cache_dir, split, cameras=p.cameras, dataroot=dataroot)
        m = self.cache.manifest
        source = self.cache.cache_dir / "manifest.json"
        if int(m["future_steps"]) != p.future_steps:
            raise ParamsError(f"params: planner.future_steps = {p.future_steps}, but the cache {source} was written "
                              f"with cache.future_steps = {m['future_steps']}; make them equal (and rebuild the cache "
                              "if the horizon should change)")
        if p.frames > int(m["history_steps"]):
            raise ParamsError(f"params: planner.frames = {p.frames}: larger than the {m['history_steps']} key frames "
                              f"of history the cache {source} holds (cache.history_steps); lower planner.frames or "
                              "raise cache.history_steps")
        a = self.cache.arrays
        if a["ego_status"].shape[1] != p.ego_status_dim:
            raise ParamsError(f"params: planner.ego_status_dim = {p.ego_status_dim}, but the cache's ego_status has "
                              f"{a['ego_status'].shape[1]} values per sample")
        self.frame_index = previous_frame_indices(a["scene_index"], a["frame_index"], p.frames)  # (S, T)
        self.arrays = {
            "ego_status": a["ego_status"].astype(np.float32),
            "ego_history": a["ego_history"].astype(np.float32),
            "ego_history_valid": a["ego_history_valid"].astype(bool),
            "command": a["command"].astype(np.int64),
            **self._route_arrays(a, source),
            "perception_target": corridor_targets(a, p.dt),
            "target": a["future_waypoints"][..., :2].astype(np.float32),
            "target_valid": a["future_valid"].astype(bool),
        }
        n_img = len(self.cache) * len(p.cameras)
        self.images = None                                                   # (S, N, 3, S_px, S_px) when cached
        if n_img * 3 * p.img_size ** 2 <= p.image_cache_mb * 2 ** 20:
            self.images = self._decode_all(progress)

    def __len__(self) -> int:
        return len(self.cache)

    def _route_arrays(self, a: dict, source) -> dict:
        """The cache's route arrays; a cache without them, or without route points where a model reads them, is
        refused naming the param."""
        m = self.cache.manifest
        needs = {k: v for k, v in (("route_input", self.p.route_input), ("mlp_route_input", self.p.mlp_route_input))
                 if v != "none"}
        if "route_command" not in a:
            if needs:
                k = next(iter(needs))
                raise ParamsError(f"params: planner.{k} = {needs[k]!r}, but the cache {source} has no route arrays "
                                  "(written before route inputs existed); rebuild the cache")
            return {}
        for k, v in needs.items():
            if v == "points" and m.get("route_source") != "world_route":
                raise ParamsError(f"params: planner.{k} = 'points', but the cache {source} has no route geometry "
                                  f"(route_source {m.get('route_source')!r}: the dataroot has no ego_route.json); "
                                  "use command or none")
        return {"route_command": a["route_command"].astype(np.int64),
                "route_points": a["route_points"].astype(np.float32),
                "route_valid": a["route_valid"].astype(bool)}

    def selection_split(self, select_scenes: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices (fit, select): the last ``select_scenes`` scenes of this split (by scene_index) are held
        out to select checkpoints, the others train. Raises ``ParamsError`` if no scene would be left to train on."""
        scene = np.asarray(self.cache.arrays["scene_index"])
        n_scenes = int(scene.max()) + 1 if len(scene) else 0
        if select_scenes >= n_scenes:
            raise ParamsError(f"params: planner.select_scenes = {select_scenes}: the split has only {n_scenes} "
                              "scenes; at least one must be left to train on")
        held = scene >= n_scenes - select_scenes
        return np.flatnonzero(~held), np.flatnonzero(held)

    def _what(self, i: int, cam: int) -> str:
        meta = self.cache.samples[i]
        return f"sample {i} (token {meta['token']}, scene {meta['scene']}) camera {self.p.cameras[cam]}"

    def _paths(self, i: int) -> list[str]:
        meta = self.cache.samples[i]
        return [str(self.cache.dataroot / meta["cams"][j]) for j in self.cache._cam_idx]

    def _decode_sample(self, i: int) -> np.ndarray:
        return np.stack([decode_resized(path, self.p.img_size, self._what(i, c))
                         for c, path in enumerate(self._paths(i))])          # (N, 3, S, S)

    def _decode_all(self, progress: bool) -> np.ndarray:
        from tqdm import tqdm

        return np.stack([self._decode_sample(i) for i in tqdm(range(len(self)), desc="decode images",
                                                              disable=not progress, leave=False)])

    def __getitem__(self, i: int) -> dict:
        idx = self.frame_index[i]                                            # (T,)
        if self.images is not None:
            frames = self.images[idx]                                        # (T, N, 3, S, S)
        else:
            frames = np.stack([self._decode_sample(int(j)) for j in idx])
        item = {k: v[i] for k, v in self.arrays.items()}
        item["frames"] = frames
        item["index"] = np.int64(i)
        return item

    def ego_statistics(self, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (floored at 1e-3) of ego_status over the split (or its ``indices``), for standardising."""
        x = self.arrays["ego_status"].astype(np.float64)
        x = x if indices is None else x[np.asarray(indices)]
        return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-3).astype(np.float32)
