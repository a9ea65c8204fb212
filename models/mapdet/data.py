"""Map-detection samples from the GT cache: the six camera images of a key frame and its vectorised map GT.

Item i of :class:`MapSamples` (numpy; the default collate stacks them within a split):

    images      (N, 3, S, S) uint8   the key frame's N = len(mapdet.cameras) images, resized whole to S x S
                                     (aspect ratio not kept, the full field of view is), bilinear (PIL)
    gt_points   (M, P, 2) float32    map elements normalised to the patch: x' = x / W + 0.5, y' = y / H + 0.5
                                     (LIDAR frame: x right in [-W/2, W/2], y forward in [-H/2, H/2];
                                     H, W = cache.patch_size), M = the split's padded element count
    gt_labels   (M,) int64           index into cache.map_classes; -1 pad
    gt_closed   (M,) bool            closed ring (ped_crossing polygons)
    gt_valid    (M,) bool
    index       () int64

The cache holds every element resampled to ``cache.map_points`` points by arc length (MapTR's fixed-number GT);
scoring resamples these polylines to 100 points, so the GT that AP sees is the cache's 20-point polyline rather
than the raw clipped geometry (within a few centimetres on the synthetic world's straight and gently curved
elements).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.nuscenes.dataset import GTCacheDataset
from models.planner.data import decode_resized


class MapInputError(ValueError):
    """A GT cache whose map GT cannot be used: names the file, the sample and the element."""


def normalise(points: np.ndarray, patch_size) -> np.ndarray:
    H, W = float(patch_size[0]), float(patch_size[1])
    return np.stack([points[..., 0] / W + 0.5, points[..., 1] / H + 0.5], -1)


def denormalise(points: np.ndarray, patch_size) -> np.ndarray:
    """Inverse of :func:`normalise`: [..., 2] in [0, 1] -> metres in the LIDAR frame."""
    H, W = float(patch_size[0]), float(patch_size[1])
    points = np.asarray(points, np.float64)
    return np.stack([(points[..., 0] - 0.5) * W, (points[..., 1] - 0.5) * H], -1)


def check_map_gt(arrays: dict, source: str, classes: list[str]) -> None:
    """Refuse GT a detector cannot learn from: fewer than 2 points, non-finite points, unknown classes."""
    pts, cls, valid = arrays["map_points"], arrays["map_class"], arrays["map_valid"]
    if pts.ndim != 4 or pts.shape[-1] != 2 or pts.shape[2] < 2:
        raise MapInputError(f"{source}: map_points has shape {list(pts.shape)}; expected [S, M, P, 2] with P >= 2 "
                            "points per element (a polyline needs two)")
    bad = valid & ~np.isfinite(pts).all((-1, -2))
    if bad.any():
        s, m = map(int, np.argwhere(bad)[0])
        raise MapInputError(f"{source}: sample {s}, map element {m}: non-finite point coordinates")
    bad = valid & ((cls < 0) | (cls >= len(classes)))
    if bad.any():
        s, m = map(int, np.argwhere(bad)[0])
        raise MapInputError(f"{source}: sample {s}, map element {m}: class index {int(cls[s, m])} outside "
                            f"{classes}")
    length = np.linalg.norm(np.diff(pts, axis=2), axis=-1).sum(-1)                 # (S, M)
    bad = valid & (length <= 0)
    if bad.any():
        s, m = map(int, np.argwhere(bad)[0])
        raise MapInputError(f"{source}: sample {s}, map element {m}: all points coincide (fewer than 2 distinct "
                            "points)")


class MapSamples:
    def __init__(self, cache_dir: str | Path, split: str, cameras: list[str], image_size: int,
                 image_cache_mb: int = 1024, dataroot: str | Path | None = None, progress: bool = False):
        self.cache = GTCacheDataset(cache_dir, split, cameras=cameras, dataroot=dataroot)
        m = self.cache.manifest
        self.classes = list(m["map_classes"])
        self.patch_size = tuple(float(v) for v in m["patch_size"])
        self.num_points = int(m["map_points"])
        self.cameras, self.image_size = list(cameras), int(image_size)
        a = self.cache.arrays
        check_map_gt(a, str(self.cache.cache_dir / split / "arrays.safetensors"), self.classes)
        valid = a["map_valid"].astype(bool)
        self.arrays = {
            "gt_points": np.where(valid[..., None, None], normalise(a["map_points"].astype(np.float64),
                                                                     self.patch_size), 0.0).astype(np.float32),
            "gt_labels": np.where(valid, a["map_class"], -1).astype(np.int64),
            "gt_closed": a["map_closed"].astype(bool) & valid,
            "gt_valid": valid,
        }
        self.metres = a["map_points"].astype(np.float64)                         # (S, M, P, 2) for scoring
        self.images = None
        if len(self) * len(cameras) * 3 * self.image_size ** 2 <= image_cache_mb * 2 ** 20:
            from tqdm import tqdm

            self.images = np.stack([self._decode(i) for i in tqdm(range(len(self)), desc=f"decode {split} images",
                                                                  disable=not progress, leave=False)])

    def __len__(self) -> int:
        return len(self.cache)

    def _decode(self, i: int) -> np.ndarray:
        meta = self.cache.samples[i]
        return np.stack([decode_resized(str(self.cache.dataroot / meta["cams"][j]), self.image_size,
                                        f"sample {i} (token {meta['token']}, scene {meta['scene']}) camera {cam}")
                         for cam, j in zip(self.cameras, self.cache._cam_idx)])   # (N, 3, S, S)

    def ground_truth(self, i: int) -> dict:
        """Sample i's GT in metres for :func:`models.mapdet.chamfer_ap.chamfer_ap`."""
        v = self.arrays["gt_valid"][i]
        return {"pts": self.metres[i][v], "labels": self.arrays["gt_labels"][i][v]}

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.arrays.items()}
        item["images"] = self.images[i] if self.images is not None else self._decode(i)
        item["index"] = np.int64(i)
        return item
