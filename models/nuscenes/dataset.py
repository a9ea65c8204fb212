"""Read side of the GT cache: a torch-free map-style dataset over one split.

``GTCacheDataset(cache_dir, split)[i]`` is a dict of numpy arrays (one sample) plus its token, scene and file
paths; it has ``__len__``/``__getitem__`` so a torch ``DataLoader`` can wrap it unchanged. All arrays of the
split are loaded once (safetensors, no pickles), so indexing is a slice.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cache import CAMERAS, FORMAT

CAM_ARRAYS = ("cam_intrinsic", "cam2ego", "cam2lidar")


class CacheMismatchError(ValueError):
    """The cache on disk was built with settings a caller cannot use."""


def read_manifest(cache_dir: str | Path) -> dict:
    """Parsed ``manifest.json`` of a cache directory (clear errors if absent or of another format)."""
    path = Path(cache_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GT cache manifest not found (run `python -m stages.gt_cache`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CacheMismatchError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; rebuild the cache")
    return manifest


def require(manifest: dict, source: str = "manifest.json", **expected) -> None:
    """Raise :class:`CacheMismatchError` unless each ``key=value`` matches the manifest.

    Keys: any top-level manifest entry (``future_steps``, ``history_steps``, ``max_agents``, ``map_points``,
    ``map_classes``, ``patch_size``, ``version``, ``dataroot``) or ``data.<key>`` / ``cache.<key>`` for the
    params the cache was built with."""
    problems = []
    for key, want in expected.items():
        if "." in key:
            section, sub = key.split(".", 1)
            have = manifest.get("params", {}).get(section, {}).get(sub, KeyError)
        else:
            have = manifest.get(key, KeyError)
        if have is KeyError:
            problems.append(f"{key}: not recorded in the cache")
        elif _norm(have) != _norm(want):
            problems.append(f"{key}: cache has {have!r}, caller requires {want!r}")
    if problems:
        raise CacheMismatchError(f"{source}: GT cache does not match: " + "; ".join(problems)
                                 + " (rebuild it with matching params)")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


class GTCacheDataset:
    """One split of the GT cache.

    cache_dir: the cache folder (``data/cache``); split: ``train`` / ``val``; load_images: decode the camera
    JPEGs into ``images`` (Ncam, H, W, 3) uint8; cameras: subset/order of camera names (default all six);
    dataroot: where the image paths resolve (default: the manifest's dataroot, relative to the cwd).
    """

    def __init__(self, cache_dir: str | Path, split: str, load_images: bool = False, cameras=None,
                 dataroot: str | Path | None = None):
        from safetensors.numpy import load_file

        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        if split not in self.manifest["splits"]:
            raise KeyError(f"{self.cache_dir / 'manifest.json'}: split {split!r} not cached; "
                           f"available: {sorted(self.manifest['splits'])}")
        self.split = split
        cams = list(cameras) if cameras is not None else list(CAMERAS)
        unknown = [c for c in cams if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; choose from {list(CAMERAS)}")
        self.cameras = cams
        self._cam_idx = np.array([CAMERAS.index(c) for c in cams], dtype=np.int64)
        self.load_images = load_images
        self.dataroot = Path(dataroot if dataroot is not None else self.manifest["dataroot"])
        self.arrays = load_file(str(self.cache_dir / split / "arrays.safetensors"))
        side = json.loads((self.cache_dir / split / "samples.json").read_text())
        self.samples = side["samples"]
        self.instance_tokens = side["instance_tokens"]
        n = {len(v) for v in self.arrays.values()} | {len(self.samples)}
        if len(n) != 1:
            raise CacheMismatchError(f"{self.cache_dir / split}: arrays and samples.json disagree on the sample "
                                     f"count {sorted(n)}; rebuild the cache")

    def require(self, **expected) -> "GTCacheDataset":
        """Check the cache matches what the caller needs (e.g. ``future_steps=6``); returns self."""
        require(self.manifest, str(self.cache_dir / "manifest.json"), **expected)
        return self

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        meta = self.samples[i]
        item = {k: (v[i][self._cam_idx] if k in CAM_ARRAYS else v[i]) for k, v in self.arrays.items()}
        item["token"] = meta["token"]
        item["scene"] = meta["scene"]
        item["cam_paths"] = [str(self.dataroot / meta["cams"][j]) for j in self._cam_idx]
        item["lidar_path"] = str(self.dataroot / meta["lidar"])
        if self.load_images:
            item["images"] = self._images(item["cam_paths"])
        return item

    @staticmethod
    def _images(paths: list[str]) -> np.ndarray:
        from PIL import Image

        imgs = []
        for p in paths:
            with Image.open(p) as im:
                imgs.append(np.asarray(im.convert("RGB")))
        shapes = {im.shape for im in imgs}
        if len(shapes) != 1:
            raise ValueError(f"cameras have different image sizes {sorted(shapes)}; select cameras of one size")
        return np.stack(imgs)  # (Ncam, H, W, 3) uint8


def cache_statistics(cache_dir: str | Path) -> dict:
    """Deterministic content statistics of a built cache, per split (the stage's metrics file).

    Counts, the share of valid future waypoints, the command mix, ego speed, agents in view, map
    elements per class per sample, and ``cv_l2_3s``: the L2 error at 3 s of constant-velocity
    extrapolation from the ego status (what a planner without vision starts from).
    """
    manifest = read_manifest(cache_dir)
    out = {}
    for split in manifest["splits"]:
        ds = GTCacheDataset(cache_dir, split)
        a = ds.arrays
        valid = a["future_valid"]
        speed = a["ego_status"][:, 0]
        vel = a["ego_status"][:, 3:5]  # (S, 2) vx, vy in the LIDAR frame
        t = 0.5 * np.arange(1, valid.shape[1] + 1)  # (F,) seconds
        cv = vel[:, None, :] * t[None, :, None]  # (S, F, 2)
        last = valid[:, -1]
        l2 = np.linalg.norm(cv[last, -1] - a["future_waypoints"][last, -1, :2], axis=1)
        cmd = np.bincount(a["command"].astype(np.int64), minlength=len(manifest["commands"])) / max(len(ds), 1)
        per_class = {name: round(float(((a["map_class"] == k) & a["map_valid"]).sum() / max(len(ds), 1)), 3)
                     for k, name in enumerate(manifest["map_classes"])}
        out[split] = {
            "samples": len(ds), "scenes": manifest["splits"][split]["num_scenes"],
            "future_valid_share": round(float(valid.mean()), 4),
            "command_share": {name: round(float(c), 4) for name, c in zip(manifest["commands"], cmd)},
            "ego_speed_mean": round(float(speed.mean()), 3),
            "agents_now_mean": round(float(a["agent_valid"][:, 0].sum(axis=1).mean()), 2),
            "map_elements_per_sample": per_class,
            "cv_l2_3s": round(float(l2.mean()), 3) if len(l2) else None,
        }
    return out
