"""The sensor rig: nuScenes-like camera and LIDAR_TOP calibration, scaled to the rendered resolution, and the
camera's sensor noise (per-pixel Gaussian, seeded per image so the same params give the same bytes)."""
from __future__ import annotations

import hashlib
import math

import numpy as np
from pyquaternion import Quaternion

# channel: (translation sensor->ego [m], yaw [deg], focal length at 1600 px width)
CAMERAS = {
    "CAM_FRONT": ([1.70, 0.016, 1.51], 0.0, 1266.4),
    "CAM_FRONT_RIGHT": ([1.55, -0.49, 1.50], -55.0, 1260.9),
    "CAM_FRONT_LEFT": ([1.52, 0.49, 1.51], 55.0, 1272.6),
    "CAM_BACK": ([0.03, 0.0, 1.57], 180.0, 809.2),
    "CAM_BACK_LEFT": ([1.04, 0.48, 1.56], 110.0, 1256.7),
    "CAM_BACK_RIGHT": ([1.03, -0.48, 1.56], -110.0, 1259.5),
}
CAMERA_ORDER = tuple(CAMERAS)
LIDAR_TRANSLATION = [0.943713, 0.0, 1.84023]
LIDAR_ROTATION = Quaternion(axis=[0, 0, 1], angle=-math.pi / 2)  # LIDAR_TOP: x right, y forward
# per-camera trigger offsets after the LiDAR key frame time, microseconds (real rigs fire in sequence)
CAMERA_OFFSET_US = {c: 12_000 + 8_000 * k for k, c in enumerate(CAMERA_ORDER)}

_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # R_ego<-cam at yaw 0


def camera_rotation(yaw_deg: float) -> Quaternion:
    """sensor->ego rotation of a camera looking along ``yaw_deg`` (x right, y down, z forward)."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Quaternion(matrix=rz @ _CAM_AXES)


def intrinsics(focal_1600: float, width: int, height: int) -> np.ndarray:
    """K for a ``width x height`` image, scaled from the real 1600 x 900 focal length."""
    f = focal_1600 * width / 1600.0
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def transform(translation, rotation: Quaternion) -> np.ndarray:
    """4x4 homogeneous transform from a translation and a pyquaternion."""
    T = np.eye(4)
    T[:3, :3] = rotation.rotation_matrix
    T[:3, 3] = translation
    return T


def ego_pose_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """ego->global for a flat world (z = 0, as in real nuScenes)."""
    return transform([x, y, 0.0], Quaternion(axis=[0, 0, 1], angle=yaw))


def camera_calibration(width: int, height: int) -> dict:
    """channel -> dict(translation, rotation (Quaternion), K (3, 3), sensor2ego (4, 4))."""
    out = {}
    for ch, (t, yaw, f) in CAMERAS.items():
        q = camera_rotation(yaw)
        out[ch] = {"translation": list(t), "rotation": q, "K": intrinsics(f, width, height),
                   "sensor2ego": transform(t, q)}
    return out


def lidar_calibration() -> dict:
    return {"translation": list(LIDAR_TRANSLATION), "rotation": LIDAR_ROTATION,
            "sensor2ego": transform(LIDAR_TRANSLATION, LIDAR_ROTATION)}


def add_camera_noise(rgb: np.ndarray, std: float, rng: np.random.Generator | None) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 plus independent Gaussian noise of ``std`` grey levels on every pixel and channel,
    rounded and clipped to uint8 (a new array). ``std == 0`` returns ``rgb`` itself and draws nothing (``rng``
    may then be None)."""
    std = float(std)
    if not (std >= 0.0 and math.isfinite(std)):
        raise ValueError(f"camera noise std must be finite and >= 0, got {std!r}")
    if std == 0.0:
        return rgb
    noisy = rgb.astype(np.float32) + rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(std)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def image_noise_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one image's sensor noise: from the world ``seed`` and the image's identity ``key`` (its
    file name), through sha256 (stable across processes and Python versions, unlike ``hash()``)."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), 0x6E6F697365, digest])


def camera_noise(rgb: np.ndarray, std: float, seed: int, key: str) -> np.ndarray:
    """:func:`add_camera_noise` seeded by :func:`image_noise_rng` (``seed``, ``key``): deterministic per image."""
    if float(std) == 0.0:
        return add_camera_noise(rgb, 0.0, None)
    return add_camera_noise(rgb, std, image_noise_rng(seed, key))
