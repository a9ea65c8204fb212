"""Fitting a source frame into the tracks' ``image_size``: ``tracks.resize`` stretch (AMPLIFY's convention, the
default: each axis scaled on its own, a 4:3 frame squashed into a square), pad (scaled to fit, aspect kept, centred,
black bars) or crop (scaled to cover, aspect kept, centre cut).

Every mode is ``x_resized = (x_source + 0.5) * s_x - 0.5 + o_x`` (the same for y), pixel centres as cv2.resize
maps them; :func:`to_resized` and :func:`to_source` use it for exact truth and query points.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MODES = ("stretch", "pad", "crop")


@dataclass(frozen=True)
class Fit:
    scale: tuple[float, float]     # s_x, s_y
    offset: tuple[int, int]        # o_x, o_y: where the scaled frame's top-left lands (negative when cropped)
    scaled_wh: tuple[int, int]     # size of the scaled source before padding / cropping


def fit(source_wh: tuple[int, int], size_hw: tuple[int, int], mode: str = "stretch") -> Fit:
    ws, hs = source_wh
    H, W = size_hw
    if mode == "stretch":
        return Fit((W / ws, H / hs), (0, 0), (W, H))
    if mode not in MODES:
        raise ValueError(f"resize mode must be one of {MODES}, got {mode!r}")
    s = min(W / ws, H / hs) if mode == "pad" else max(W / ws, H / hs)
    sw, sh = max(1, round(ws * s)), max(1, round(hs * s))
    return Fit((sw / ws, sh / hs), ((W - sw) // 2, (H - sh) // 2), (sw, sh))


def resize_frame(bgr: np.ndarray, size_hw: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """A BGR frame -> (H, W, 3) uint8 RGB in ``image_size`` (cv2 INTER_AREA)."""
    H, W = size_hw
    f = fit((bgr.shape[1], bgr.shape[0]), size_hw, mode)
    scaled = bgr if (bgr.shape[1], bgr.shape[0]) == f.scaled_wh else cv2.resize(bgr, f.scaled_wh,
                                                                                   interpolation=cv2.INTER_AREA)
    if f.offset != (0, 0) or f.scaled_wh != (W, H):
        out = np.zeros((H, W, 3), np.uint8)
        ox, oy = f.offset
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + f.scaled_wh[0], W), min(oy + f.scaled_wh[1], H)
        out[y0:y1, x0:x1] = scaled[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        scaled = out
    return cv2.cvtColor(scaled, cv2.COLOR_BGR2RGB)


def to_resized(uv: np.ndarray, source_wh: tuple[int, int], size_hw: tuple[int, int],
               mode: str = "stretch") -> np.ndarray:
    """(x, y) pixels of the source image -> the resized image."""
    f = fit(source_wh, size_hw, mode)
    return (np.asarray(uv, np.float64) + 0.5) * np.array(f.scale) - 0.5 + np.array(f.offset)


def to_source(xy: np.ndarray, source_wh: tuple[int, int], size_hw: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Inverse of :func:`to_resized`."""
    f = fit(source_wh, size_hw, mode)
    return (np.asarray(xy, np.float64) - np.array(f.offset) + 0.5) / np.array(f.scale) - 0.5
