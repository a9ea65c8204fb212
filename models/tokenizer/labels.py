"""Tracks <-> relative-displacement classes, exactly as official AMPLIFY (amplify/utils/data_utils.py).

Conventions (shared by every function here):

* points are **normalised (row, col)**: ``n = (p - H/2) / (H/2)`` per axis, so ``-1`` is pixel 0 and ``+1`` is
  pixel ``H`` (one past the last pixel centre); rows use ``img_size[0]`` = H, columns ``img_size[1]`` = W;
* time is the axis just before the points: tracks are ``(..., T, N, 2)``;
* the relative grid ``grid_size = (R, C)`` (15 x 15 in AMPLIFY) holds the integer pixel displacements
  ``-(R//2)..R//2`` x ``-(C//2)..C//2``; class ``(d_row + R//2) * C + (d_col + C//2)`` (row first); the centre
  (zero motion) is ``(R//2) * C + C//2`` = 112 for 15 x 15.

All arithmetic follows the official code step for step, in float32 as it does (``unnormalize_traj`` calls
``.float()``), so half-pixel cases round the same way (``torch.round``: half to even).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _pair(value: Sequence[int], name: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two integers (rows, cols), got {value!r}") from None
    if (a, b) != tuple(value):
        raise ValueError(f"{name} must be two integers (rows, cols), got {value!r}")
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return a, b


def _grid(grid_size: Sequence[int]) -> tuple[int, int]:
    rows, cols = _pair(grid_size, "grid_size")
    if rows % 2 == 0 or cols % 2 == 0:
        # the official formula overflows the class range for even sizes (R=C=4 gives index 20 >= 16)
        raise ValueError(f"grid_size must be odd in both axes (the class layout is centred), got {grid_size!r}")
    return rows, cols


def _check_finite(x: torch.Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contain {bad} NaN or infinite value(s); refusing to use them")


def num_classes(grid_size: Sequence[int] = (15, 15)) -> int:
    """Number of relative-displacement classes, ``R * C`` (225 for 15 x 15)."""
    rows, cols = _grid(grid_size)
    return rows * cols


def center_class(grid_size: Sequence[int] = (15, 15)) -> int:
    """The zero-motion class ``(R//2) * C + C//2`` (112 for 15 x 15)."""
    rows, cols = _grid(grid_size)
    return (rows // 2) * cols + cols // 2


def points_to_pixels(points: torch.Tensor, img_size: Sequence[int]) -> torch.Tensor:
    """Normalised (row, col) points -> integer pixels as the label code sees them (long, same shape).

    ``p = n * H / 2 + H / 2`` in float32, clamped to ``[0, H-1]`` (``[0, W-1]`` for columns) **before** rounding,
    then ``torch.round`` (half to even: 63.5 -> 64, 64.5 -> 64, 0.5 -> 0).
    """
    height, width = _pair(img_size, "img_size")
    if points.shape[-1] != 2:
        raise ValueError(f"points must end in a (row, col) axis of size 2, got shape {tuple(points.shape)}")
    _check_finite(points, "points")
    p = points.float().clone()
    p[..., 0] = (p[..., 0] * float(height) / 2) + float(height) / 2
    p[..., 1] = (p[..., 1] * float(width) / 2) + float(width) / 2
    p[..., 0] = torch.clamp(p[..., 0], 0, height - 1)
    p[..., 1] = torch.clamp(p[..., 1], 0, width - 1)
    return p.round().long()


def tracks_to_labels(tracks: torch.Tensor, img_size: Sequence[int], grid_size: Sequence[int] = (15, 15)
                     ) -> torch.Tensor:
    """Tracks ``(..., T, N, 2)`` -> relative-displacement classes ``(..., T-1, N)`` (long).

    Official ``get_autoregressive_indices_efficient(gt[:, :, :-1], gt[:, :, 1:], img_size, grid_size)``: each
    point goes to pixels (:func:`points_to_pixels`: unnormalise, clamp to the image, round half to even), the
    integer step ``next - prev`` is clamped to ``+-(R//2)`` rows and ``+-(C//2)`` columns, and the class is
    ``(d_row + R//2) * C + (d_col + C//2)``. A point outside the image is clamped to the border first, so a track
    leaving the frame reads as stationary at the border. NaN or infinite values raise ``ValueError``.
    """
    rows, cols = _grid(grid_size)
    if tracks.dim() < 3 or tracks.shape[-1] != 2:
        raise ValueError(f"tracks must be (..., T, N, 2), got shape {tuple(tracks.shape)}")
    if tracks.shape[-3] < 2:
        raise ValueError(f"tracks need at least 2 time steps, got shape {tuple(tracks.shape)}")
    _check_finite(tracks, "tracks")
    pixels = points_to_pixels(tracks, img_size)
    step = pixels[..., 1:, :, :] - pixels[..., :-1, :, :]
    d_row = torch.clamp(step[..., 0], -(rows // 2), rows // 2)
    d_col = torch.clamp(step[..., 1], -(cols // 2), cols // 2)
    return (d_row + rows // 2) * cols + (d_col + cols // 2)


def labels_to_displacements(labels: torch.Tensor, img_size: Sequence[int], grid_size: Sequence[int] = (15, 15)
                            ) -> torch.Tensor:
    """Classes ``(...)`` -> normalised (row, col) displacements ``(..., 2)`` (float32).

    Official ``rel_indices_to_diffs``: ``row = floor(idx / C) - R//2``, ``col = idx % C - C//2`` (integer pixels),
    then ``row / H * 2`` and ``col / W * 2`` (one pixel is ``2 / H``, not ``2 / (H - 1)``).
    """
    rows, cols = _grid(grid_size)
    height, width = _pair(img_size, "img_size")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= rows * cols):
        raise ValueError(f"labels must lie in [0, {rows * cols}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    idx = labels.float()
    out = torch.stack([torch.floor(idx / cols), idx % cols], dim=-1)
    out[..., 0] = (out[..., 0] - rows // 2) / height * 2
    out[..., 1] = (out[..., 1] - cols // 2) / width * 2
    return out


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """``argmax(softmax(logits))`` over the last axis (long): ties go to the **first** index, as the official."""
    _check_finite(logits, "logits")
    return torch.argmax(F.softmax(logits, dim=-1), dim=-1)


def logits_to_displacements(logits: torch.Tensor, img_size: Sequence[int], grid_size: Sequence[int] = (15, 15)
                            ) -> torch.Tensor:
    """Class logits ``(..., R*C)`` -> normalised (row, col) displacements ``(..., 2)`` (float32, no gradient).

    Official ``rel_cls_logits_to_diffs`` without its unused options: the class is the **argmax** of the softmax
    (not an expectation; ties go to the first index, so all-equal logits decode to class 0 = (-7, -7) px), then
    :func:`labels_to_displacements`. Decoded steps are whole pixels within ``+-(R//2)``, ``+-(C//2)``.
    NaN or infinite logits raise ``ValueError``.
    """
    rows, cols = _grid(grid_size)
    if logits.dim() < 1 or logits.shape[-1] != rows * cols:
        raise ValueError(f"logits must end in {rows * cols} classes for grid {tuple(grid_size)}, "
                         f"got shape {tuple(logits.shape)}")
    with torch.no_grad():
        return labels_to_displacements(logits_to_labels(logits.detach()), img_size, grid_size)


def points_to_velocities(points: torch.Tensor, time_dim: int) -> torch.Tensor:
    """Per-step differences along ``time_dim`` (official ``points_to_velocities``: ``torch.diff``); one step fewer."""
    return torch.diff(points, dim=time_dim)


def velocities_to_points(velocities: torch.Tensor, init_points: torch.Tensor, time_dim: int) -> torch.Tensor:
    """Integrate velocities from ``init_points`` (official ``velocities_to_points``; note the argument order here).

    ``points = init_points + cumsum(cat([0, velocities], time_dim), time_dim)``: the result has one more step than
    ``velocities`` and its first step equals ``init_points``, which must broadcast against one time step (keep the
    time axis with size 1, e.g. ``tracks[:, [0]]``).
    """
    zero = torch.zeros_like(velocities.select(time_dim, 0).unsqueeze(time_dim))
    return init_points + torch.cumsum(torch.cat([zero, velocities], dim=time_dim), dim=time_dim)


def visible_steps(visible: torch.Tensor) -> torch.Tensor:
    """Visibility ``(..., T, N)`` bool -> ``(..., T-1, N)``: the step t -> t+1 is visible at both ends.

    A lost LK point is frozen at its last position (zero motion, visible False) for the rest of its window, an
    occluded CoTracker point is guessed: neither step is evidence of the motion a code should carry.
    """
    if visible.dtype != torch.bool:
        raise ValueError(f"visible must be a bool tensor, got {visible.dtype}")
    return visible[..., 1:, :] & visible[..., :-1, :]
