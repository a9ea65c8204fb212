"""VGGT's 9-D camera encoding ``absT_quaR_FoV`` and the quaternion <-> rotation-matrix conversions.

Conventions (VGGT's, kept exactly so that encodings from a VGGT / PAGE-4D camera head decode here):

- **extrinsics** ``(..., 3, 4)`` = ``[R | t]``, **camera from world** (``x_cam = R x_world + t``), OpenCV camera
  axes (x right, y down, z forward).
- **intrinsics** ``(..., 3, 3)`` in pixels, ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``. The encoding keeps only the
  two fields of view, so decoding puts the principal point at the image centre ``(W / 2, H / 2)`` and no skew.
- **encoding** ``(..., 9)`` = ``[t (3), q (4), fov_h, fov_w]``: ``t`` the translation of the extrinsics as it is
  (not the camera centre); ``q`` the rotation ``R`` as a quaternion in **scalar-last** order ``(x, y, z, w)`` (VGGT's
  ``ijkr``, the same order as ``scipy.spatial.transform.Rotation.as_quat``), standardised to ``w >= 0``;
  ``fov_h = 2 atan(H / (2 fy))`` and ``fov_w = 2 atan(W / (2 fx))`` in radians. ``image_size_hw`` is
  ``(H, W)``: height first.

Leading dimensions are free (VGGT uses ``(B, S, ...)``). Deviation from VGGT: VGGT casts the encoding to float32 and
builds decoded intrinsics in the default dtype; here both keep the input's dtype (float64 in, float64 out).
"""
from __future__ import annotations

import torch

POSE_ENCODING_TYPES = ("absT_quaR_FoV",)


def _check_type(pose_encoding_type: str) -> None:
    if pose_encoding_type not in POSE_ENCODING_TYPES:
        raise ValueError(f"pose_encoding_type {pose_encoding_type!r} is not supported; allowed: {POSE_ENCODING_TYPES}")


def standardize_quaternion(quaternions: torch.Tensor) -> torch.Tensor:
    """Scalar-last quaternions ``(..., 4)`` with the sign flipped where needed so that ``w >= 0``."""
    return torch.where(quaternions[..., 3:4] < 0, -quaternions, quaternions)


def quat_to_mat(quaternions: torch.Tensor) -> torch.Tensor:
    """Scalar-last quaternions ``(..., 4)`` ``(x, y, z, w)`` -> rotation matrices ``(..., 3, 3)``.

    The quaternion need not be unit: the formula divides by its squared norm (as VGGT / PyTorch3D).
    """
    x, y, z, w = torch.unbind(quaternions, -1)
    two_s = 2.0 / (quaternions * quaternions).sum(-1)
    m = torch.stack((
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ), -1)
    return m.reshape(quaternions.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a zero (not infinite) gradient where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def mat_to_quat(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> scalar-last quaternions ``(..., 4)`` ``(x, y, z, w)`` with ``w >= 0``.

    PyTorch3D's method (VGGT's ``mat_to_quat``): four candidate quaternions, each computed by dividing by one of
    ``2|w|, 2|x|, 2|y|, 2|z|``; the best-conditioned one (largest denominator) is kept.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"expected rotation matrices (..., 3, 3), got {tuple(matrix.shape)}")
    lead = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(lead + (9,)), -1)
    q_abs = _sqrt_positive_part(torch.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                                             1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], -1))  # |w|,|x|,|y|,|z| * 2
    # row i: the quaternion (w, x, y, z) multiplied by 2 * q_abs[i]
    by_wxyz = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ], -2)                                                                                    # (..., 4, 4)
    candidates = by_wxyz / (2.0 * q_abs[..., None].clamp_min(0.1))  # floor only matters for rows never picked
    best = q_abs.argmax(-1)[..., None, None].expand(lead + (1, 4))
    wxyz = candidates.gather(-2, best).squeeze(-2)                                            # (..., 4)
    return standardize_quaternion(wxyz[..., [1, 2, 3, 0]])                                    # -> (x, y, z, w)


def extri_intri_to_pose_encoding(extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: tuple[int, int],
                                 pose_encoding_type: str = "absT_quaR_FoV") -> torch.Tensor:
    """Extrinsics ``(..., 3, 4)`` (camera from world) and intrinsics ``(..., 3, 3)`` -> encoding ``(..., 9)``.

    ``image_size_hw = (H, W)`` in pixels. Only ``fx`` and ``fy`` of the intrinsics are read.
    """
    _check_type(pose_encoding_type)
    height, width = image_size_hw
    t = extrinsics[..., :3, 3]                                                      # (..., 3)
    quat = mat_to_quat(extrinsics[..., :3, :3])                                      # (..., 4)
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([t, quat, fov_h[..., None], fov_w[..., None]], dim=-1)         # (..., 9)


def pose_encoding_to_extri_intri(pose_encoding: torch.Tensor, image_size_hw: tuple[int, int] | None = None,
                                 pose_encoding_type: str = "absT_quaR_FoV", build_intrinsics: bool = True
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encoding ``(..., 9)`` -> (extrinsics ``(..., 3, 4)``, intrinsics ``(..., 3, 3)`` or None).

    Intrinsics need ``image_size_hw = (H, W)``; their principal point is ``(W / 2, H / 2)``. With
    ``build_intrinsics=False`` only the extrinsics are built and the second item is None.
    """
    _check_type(pose_encoding_type)
    t = pose_encoding[..., :3]
    rot = quat_to_mat(pose_encoding[..., 3:7])                                       # (..., 3, 3)
    extrinsics = torch.cat([rot, t[..., None]], dim=-1)                              # (..., 3, 4)
    if not build_intrinsics:
        return extrinsics, None
    if image_size_hw is None:
        raise ValueError("image_size_hw=(H, W) is needed to build intrinsics from fields of view")
    height, width = image_size_hw
    fy = (height / 2.0) / torch.tan(pose_encoding[..., 7] / 2.0)
    fx = (width / 2.0) / torch.tan(pose_encoding[..., 8] / 2.0)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    intrinsics = torch.stack([fx, zero, zero + width / 2,
                              zero, fy, zero + height / 2,
                              zero, zero, one], dim=-1).reshape(fx.shape + (3, 3))   # (..., 3, 3)
    return extrinsics, intrinsics
