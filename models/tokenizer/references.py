"""No-learning references for the motion tokenizer: what simple motion models reach on the same windows.

Each reference knows the whole ground-truth window (it is an oracle of a given form, not a predictor) and
returns continuous velocities ``(Nw, T-1, N, 2)``; :func:`as_whole_pixel_tracks` then decodes them the way the
tokenizer's output is decoded (whole-pixel relative classes integrated from the ground-truth first point), so
the references, the model and the perfect-label ceiling differ only in what motion they can express:

* :func:`affine_flow_velocities`: one affine map of the image per step, fitted by least squares to every point's
  step (what a single token per step can carry at best if it encodes a global camera motion);
* :func:`mean_velocity_velocities`: each point moves with its own constant velocity, the mean of its steps
  (what a per-point code of two numbers per window carries).

With ``weights`` (a step's visibility) both fit only the steps that are evidence of motion.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from models.tokenizer.labels import labels_to_displacements, tracks_to_labels, velocities_to_points


def affine_flow_velocities(tracks: torch.Tensor, weights: torch.Tensor | None = None, ridge: float = 1e-6
                           ) -> torch.Tensor:
    """Tracks ``(Nw, T, N, 2)`` -> per-step affine fits ``(Nw, T-1, N, 2)``: ``v = [p_t, 1] @ A_t`` with ``A_t``
    ``(3, 2)`` the weighted least-squares solution over the N points (``weights`` ``(Nw, T-1, N)``, default 1)."""
    p = tracks[:, :-1].double()                                          # (Nw, T-1, N, 2)
    v = (tracks[:, 1:] - tracks[:, :-1]).double()                        # (Nw, T-1, N, 2)
    x = torch.cat([p, torch.ones_like(p[..., :1])], dim=-1)              # (Nw, T-1, N, 3)
    w = torch.ones_like(p[..., 0]) if weights is None else weights.double()
    xtw = (x * w[..., None]).transpose(-1, -2)                           # (Nw, T-1, 3, N)
    a = torch.linalg.solve(xtw @ x + ridge * torch.eye(3, dtype=x.dtype), xtw @ v)  # (Nw, T-1, 3, 2)
    return (x @ a).to(tracks.dtype)


def mean_velocity_velocities(tracks: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Tracks ``(Nw, T, N, 2)`` -> every step of a point equal to its mean (weighted) step ``(Nw, T-1, N, 2)``."""
    v = tracks[:, 1:] - tracks[:, :-1]                                   # (Nw, T-1, N, 2)
    w = torch.ones_like(v[..., 0]) if weights is None else weights.to(v.dtype)
    mean = (v * w[..., None]).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)[..., None]
    return mean.expand_as(v)


def as_whole_pixel_tracks(velocities: torch.Tensor, tracks: torch.Tensor, img_size: Sequence[int],
                          grid_size: Sequence[int]) -> torch.Tensor:
    """Continuous velocities ``(Nw, T-1, N, 2)`` -> tracks ``(Nw, T, N, 2)`` as a perfect tokenizer of them decodes:
    the velocities integrated from the GT first point, their relative classes (:func:`tracks_to_labels`), those
    classes decoded to whole-pixel steps and integrated from the GT first point again."""
    first = tracks[:, :1]
    continuous = velocities_to_points(velocities, init_points=first, time_dim=1)
    steps = labels_to_displacements(tracks_to_labels(continuous, img_size, grid_size), img_size, grid_size)
    return velocities_to_points(steps, init_points=first, time_dim=1)
