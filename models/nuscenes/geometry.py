"""Batched rigid-transform helpers (numpy, float64).

Quaternions are nuScenes/pyquaternion order [w, x, y, z]. Every function takes leading batch dimensions.
"""
from __future__ import annotations

import numpy as np


def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """Rotation matrices from quaternions: (..., 4) [w, x, y, z] -> (..., 3, 3). Normalises first."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    r = np.empty(q.shape[:-1] + (3, 3), dtype=np.float64)
    r[..., 0, 0] = 1 - 2 * (y * y + z * z)
    r[..., 0, 1] = 2 * (x * y - w * z)
    r[..., 0, 2] = 2 * (x * z + w * y)
    r[..., 1, 0] = 2 * (x * y + w * z)
    r[..., 1, 1] = 1 - 2 * (x * x + z * z)
    r[..., 1, 2] = 2 * (y * z - w * x)
    r[..., 2, 0] = 2 * (x * z - w * y)
    r[..., 2, 1] = 2 * (y * z + w * x)
    r[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return r


def make_transform(translation: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Homogeneous transforms from (..., 3) translations and (..., 4) quaternions -> (..., 4, 4)."""
    translation = np.asarray(translation, dtype=np.float64)
    out = np.zeros(translation.shape[:-1] + (4, 4), dtype=np.float64)
    out[..., :3, :3] = quat_to_rot(rotation)
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def invert_transform(t: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) without a general matrix inverse."""
    rt = np.swapaxes(t[..., :3, :3], -1, -2)
    out = np.zeros_like(t)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, t[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def yaw_of(rot: np.ndarray) -> np.ndarray:
    """Yaw (rad) of rotation matrices (..., 3, 3): heading of the rotated x axis in the xy plane.

    Equals ``pyquaternion.Quaternion.yaw_pitch_roll[0]`` and ``nuscenes.eval.common.utils.quaternion_yaw``.
    """
    return np.arctan2(rot[..., 1, 0], rot[..., 0, 0])


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi
