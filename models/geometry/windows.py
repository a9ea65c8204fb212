"""Which windows a geometry stage reads: ``open_windows(params.train_geometry, split, cfg, cache_dir)``.

The GT cache's key frames (the synthetic world by default, a real nuScenes dataroot unchanged): windows of
``frames`` consecutive key frames x ``cameras`` resized to ``image_size`` (:class:`models.geometry.data.NuScenesWindows`).
"""
from __future__ import annotations

from .config import GeometryConfig
from .data import NuScenesWindows, collate_windows

__all__ = ["collate_windows", "open_windows"]


def open_windows(p, split: str, cfg: GeometryConfig, cache_dir: str) -> NuScenesWindows:
    H, W = p.image_size
    if H % cfg.patch_size or W % cfg.patch_size:
        raise ValueError(f"params: train_geometry.image_size = {list(p.image_size)}: both sides must be multiples of "
                         f"geometry.patch_size = {cfg.patch_size}")
    return NuScenesWindows(cache_dir, split, frames=p.frames, cameras=list(p.cameras), image_hw=(H, W),
                           stride=p.window_stride if split == "train" else p.frames)
