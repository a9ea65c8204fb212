"""Training / evaluation windows of the temporal multi-view geometry model: T consecutive frames x V cameras.

Two sources, one item layout (numpy, torch-free; :func:`collate_windows` stacks items into torch tensors):

* :class:`NuScenesWindows` over one split of the GT cache (``models.nuscenes.cache``) and its dataroot: T
  consecutive key frames of one scene, a window starting every ``stride`` key frames; depth from LIDAR_TOP, and
  the synthetic world's exact depth and dynamic masks when its ``extras/`` are there.
* :class:`SequenceWindows` over a multi-view sequence folder (``models.sequences.MultiViewSequence``).

Item keys (T frames, V cameras, H x W the resized image, ``image_hw``; H and W multiples of 14, the patch size):

    images        [T, V, 3, H, W] float32  RGB in [0, 1], resized with cv2.INTER_AREA (aspect ratio not kept)
    intrinsics    [T, V, 3, 3]    float32  K of the resized image, OpenCV pixel-centre convention (pixel centres
                                           at integer coordinates): x' = (x + 0.5) * sx - 0.5, i.e.
                                           fx' = fx * sx, cx' = (cx + 0.5) * sx - 0.5 (likewise y with sy)
    extrinsics    [T, V, 3, 4]    float32  world-to-camera [R | t] (OpenCV axes: x right, y down, z forward);
                                           WORLD = the camera frame of the reference camera (t=0, v=0), so
                                           extrinsics[0, 0] = [I | 0]; metres
    cam_to_ref    [V, 4, 4]       float32  camera v at time 0 -> reference camera (X_ref = R X_v + t): the inverse
                                           of extrinsics[0, v] (the rig is fixed to the ego; see below)
    depth         [T, V, H, W]    float32  z-depth in metres at the resized resolution, 0 = invalid
    depth_exact   [T, V, H, W]    float32  exact z-depth (synthetic truth), 0 = invalid (sky)
    dynamic       [T, V, H, W]    bool     the pixel shows a moving object
    has_depth, has_exact, has_dynamic, has_intrinsics, has_extrinsics   bool   what is real (arrays of a missing
                                           source are zeros of the same shape, so batches of mixed items collate)
    scene (str), start (int), tokens (list of T str)               metadata

Resampling of per-pixel truth (depth of a sequence folder, exact depth, masks): nearest neighbour at the
resized pixel centres, source pixel ``floor((i + 0.5) * H_src / H)`` (the pixel containing the centre), never
interpolated across depth edges.

nuScenes poses: the cache's ``cam2lidar`` maps a camera into the CURRENT LIDAR_TOP frame through the camera's
own ego pose (``inv(lidar2ego) inv(ego2global_lidar) ego2global_cam cam2ego``), so
``ego2global @ lidar2ego @ cam2lidar = ego2global_cam @ cam2ego`` is the camera's pose in the global frame at
the camera's own trigger time (the cameras fire tens of milliseconds apart). ``cam_to_ref`` is therefore the
relative pose of the images at time 0, which includes the ego motion between trigger times; it differs from the
pure rig calibration ``inv(cam2ego_0) cam2ego_v`` by that motion (``ego speed x trigger offset``).

LiDAR depth: the key frame's LIDAR_TOP points (nuScenes ``.pcd.bin``: float32 x, y, z, intensity, ring) into
each camera through ``inv(cam2lidar)``, kept where z > 0.1 m and the nearest pixel (``round(u)``, ``round(v)``)
lies inside the resized image, nearest z per pixel. The points are taken at the LiDAR time: moving objects are
where they were then (a few pixels off in the images of a fast object), and points seen by the LiDAR but hidden
from the camera (parallax between the sensors) are not removed.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from models.nuscenes.dataset import GTCacheDataset
from models.nuscenes.geometry import invert_transform

PATCH = 14
MIN_DEPTH_M = 0.1
ROTATION_TOL = 1e-3                                    # |R R^T - I| and |det R - 1|
LIDAR_FIELDS = 5                                       # x, y, z, intensity, ring (float32)
ARRAY_KEYS = ("images", "intrinsics", "extrinsics", "cam_to_ref", "depth", "depth_exact", "dynamic")
FLAG_KEYS = ("has_depth", "has_exact", "has_dynamic", "has_intrinsics", "has_extrinsics")
META_KEYS = ("scene", "start", "tokens")


class WindowInputError(ValueError):
    """An input file or calibration a window needs is missing or broken; the message names it and the sample."""


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def check_image_hw(image_hw) -> tuple[int, int]:
    """(H, W) as ints; ``ValueError`` naming the value unless both are positive multiples of 14."""
    try:
        h, w = (int(x) for x in image_hw)
        ok = (h, w) == tuple(image_hw) and h > 0 and w > 0 and h % PATCH == 0 and w % PATCH == 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"image_hw = {image_hw!r}: height and width must be positive multiples of {PATCH} "
                         f"(the patch size), e.g. (42, 84) or (518, 518)")
    return h, w


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} = {value!r}: must be an integer >= 1")
    return int(value)


def resize_intrinsics(K: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """K (..., 3, 3) of a ``src_hw`` image -> K of the image resized to ``dst_hw`` (pixel centres at integers):
    ``x' = (x + 0.5) * sx - 0.5``, so ``K' = A K`` with
    ``A = [[sx, 0, sx/2 - 1/2], [0, sy, sy/2 - 1/2], [0, 0, 1]]``."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    A = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return A @ np.asarray(K, dtype=np.float64)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """(dst,) source pixel containing each resized pixel centre: ``floor((i + 0.5) * src / dst)``."""
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def sample_nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(..., Hs, Ws) -> (..., H, W) nearest neighbour at the resized pixel centres."""
    rows, cols = nearest_indices(a.shape[-2], hw[0]), nearest_indices(a.shape[-1], hw[1])
    return a[..., rows[:, None], cols[None, :]]


def resize_image(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(Hs, Ws, 3) uint8 RGB -> (3, H, W) float32 in [0, 1] (cv2.INTER_AREA)."""
    out = cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def splat_depth(points_cam: np.ndarray, K: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-z splat of camera-frame points into depth maps.

    points_cam (C, N, 3) float64 in C cameras; K (C, 3, 3) of the (resized) image of size hw. Returns
    (C, H, W) float32 z-depth, 0 where no point lands. Points with z <= 0.1 m or whose nearest pixel
    (round(u), round(v)) falls outside the image are dropped."""
    H, W = hw
    C = points_cam.shape[0]
    z = points_cam[..., 2]
    front = z > MIN_DEPTH_M
    zs = np.where(front, z, 1.0)
    uvw = np.einsum("cij,cnj->cni", K, points_cam)
    u = np.floor(uvw[..., 0] / zs + 0.5)
    v = np.floor(uvw[..., 1] / zs + 0.5)
    ok = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    cam = np.broadcast_to(np.arange(C)[:, None], ok.shape)[ok]
    flat = (cam * H + v[ok].astype(np.int64)) * W + u[ok].astype(np.int64)
    zk = z[ok]
    order = np.lexsort((zk, flat))                     # by pixel, nearest first
    flat, zk = flat[order], zk[order]
    first = np.ones(len(flat), bool)
    first[1:] = flat[1:] != flat[:-1]
    out = np.zeros(C * H * W, np.float32)
    out[flat[first]] = zk[first]
    return out.reshape(C, H, W)


def _rotation_error(T: np.ndarray) -> np.ndarray:
    """(...,) max(|R R^T - I|, |det R - 1|) of the rotation blocks of (..., 4, 4) or (..., 3, 4); inf if not finite."""
    R = T[..., :3, :3]
    finite = np.isfinite(T).all(axis=(-1, -2))
    Rf = np.where(finite[..., None, None], R, 0.0)
    err = np.abs(Rf @ np.swapaxes(Rf, -1, -2) - np.eye(3)).max(axis=(-1, -2))
    err = np.maximum(err, np.abs(np.linalg.det(Rf) - 1.0))
    return np.where(finite, err, np.inf)


def _relative_extrinsics(cam2world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cam2world (T, V, 4, 4) in any common frame -> (extrinsics (T, V, 3, 4) world-to-camera with WORLD = camera
    (0, 0), cam_to_ref (V, 4, 4) camera v at time 0 -> camera (0, 0)), float64."""
    ref = cam2world[0, 0]
    R0, t0 = ref[:3, :3], ref[:3, 3]
    R, t = cam2world[..., :3, :3], cam2world[..., :3, 3]
    # camera (t, v) -> ref, with the translation difference taken first (global coordinates are large)
    to_ref = np.zeros(cam2world.shape)
    to_ref[..., :3, :3] = R0.T @ R
    to_ref[..., :3, 3] = (t - t0) @ R0
    to_ref[..., 3, 3] = 1.0
    extr = invert_transform(to_ref)[..., :3, :]
    extr[0, 0] = np.eye(4)[:3]
    return extr, to_ref[0].copy()


def collate_windows(items: list[dict]) -> dict:
    """Items of :class:`NuScenesWindows` / :class:`SequenceWindows` -> one batch: arrays stacked into torch tensors
    with a leading batch dimension (flags as bool tensors (B,)); ``scene``, ``start``, ``tokens`` kept as lists."""
    import torch

    if not items:
        raise ValueError("collate_windows: no items")
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in META_KEYS:
            out[key] = list(values)
        elif isinstance(values[0], np.ndarray):
            shapes = {v.shape for v in values}
            if len(shapes) != 1:
                raise ValueError(f"collate_windows: {key!r} has different shapes {sorted(shapes)} across items "
                                 "(use one frames / image_hw / camera count per batch)")
            out[key] = torch.from_numpy(np.stack(values))
        else:
            out[key] = torch.as_tensor(np.asarray(values))
    return out


# --------------------------------------------------------------------------------------------------
# nuScenes (GT cache + dataroot)
# --------------------------------------------------------------------------------------------------


class NuScenesWindows:
    """Windows of T consecutive key frames x V cameras of one split of the GT cache (see the module docstring).

    cache_dir: the GT cache folder; split: ``train`` / ``val``; frames: T; cameras: names (order kept; None = all
    six); image_hw: (H, W) multiples of 14; stride: key frames between window starts; dataroot: where the
    sensor files resolve (default: the cache manifest's); exact: read the synthetic world's exact depth and dynamic
    masks (``<dataroot>/extras``) where present; progress: a bar over the up-front file check.

    Scenes with fewer than T key frames are skipped (``skipped["short_scenes"]``); ``ValueError`` if no window
    is left. Construction checks every calibration (orthonormal rotations, a pinhole K) and that every camera
    image and LiDAR file of every window exists (a LiDAR file's size must be a multiple of 5 float32); decoding
    errors and non-finite LiDAR values are raised by ``__getitem__``. Errors name the sample token and file."""

    def __init__(self, cache_dir: str | Path, split: str, frames: int, cameras: list[str] | None,
                 image_hw: tuple[int, int], stride: int = 1, dataroot: str | Path | None = None,
                 exact: bool = True, progress: bool = False):
        self.frames = _check_count("frames", frames)
        self.stride = _check_count("stride", stride)
        self.image_hw = check_image_hw(image_hw)
        self.cache = GTCacheDataset(cache_dir, split, cameras=cameras, dataroot=dataroot)
        self.split = split
        self.cameras = list(self.cache.cameras)
        self.dataroot = self.cache.dataroot
        a = self.cache.arrays
        cam_idx = self.cache._cam_idx
        self.intrinsics_raw = a["cam_intrinsic"][:, cam_idx].astype(np.float64)      # (S, V, 3, 3)
        self.cam2lidar = a["cam2lidar"][:, cam_idx].astype(np.float64)                # (S, V, 4, 4)
        self.cam2global = (a["ego2global"] @ a["lidar2ego"])[:, None].astype(np.float64) @ self.cam2lidar
        self.samples = self.cache.samples
        self._check_calibration()

        # scenes in cache order, each's sample indices by key-frame index (must run 0..n-1)
        scenes: dict[str, list[tuple[int, int]]] = {}
        for i, meta in enumerate(self.samples):
            scenes.setdefault(meta["scene"], []).append((int(meta["frame"]), i))
        self.windows: list[tuple[str, int, np.ndarray]] = []
        short: dict[str, int] = {}
        for name, entries in scenes.items():
            entries.sort()
            idx = np.array([i for _, i in entries], np.int64)
            got = [f for f, _ in entries]
            if got != list(range(len(entries))):
                raise ValueError(f"{self.cache.cache_dir / split}: scene {name!r} has key-frame indices {got}, not "
                                 f"0..{len(entries) - 1} without gaps (a partial cache); rebuild the cache")
            if len(idx) < self.frames:
                short[name] = len(idx)
                continue
            for s in range(0, len(idx) - self.frames + 1, self.stride):
                self.windows.append((name, s, idx[s:s + self.frames]))
        self.skipped = {"short_scenes": sorted(short)}
        if not self.windows:
            counts = ", ".join(f"{n}: {k} key frames" for n, k in short.items())
            raise ValueError(f"{self.cache.cache_dir / split}: split {split!r} has no window of frames = "
                             f"{self.frames} key frames: every scene is shorter ({counts}); lower frames")

        self.exact = bool(exact)
        self._extras_files, self._extras_order = self._find_extras() if self.exact else ({}, None)
        self._extras: tuple[str, dict] | None = None                                  # one scene's truth, loaded
        self._check_files(progress)

    # ------------------------------------------------------------------------------------------ checks
    def _check_calibration(self) -> None:
        source = self.cache.cache_dir / self.split / "arrays.safetensors"
        a = self.cache.arrays
        for name, mats in (("cam2lidar", self.cam2lidar), ("ego2global", a["ego2global"][:, None]),
                           ("lidar2ego", a["lidar2ego"][:, None])):
            err = _rotation_error(np.asarray(mats, np.float64))                       # (S, V or 1)
            bad = np.argwhere(~(err <= ROTATION_TOL))
            if len(bad):
                i, v = (int(x) for x in bad[0])
                cam = f" camera {self.cameras[v]}" if name == "cam2lidar" else ""
                raise WindowInputError(
                    f"{source}: sample {self.samples[i]['token']} (scene {self.samples[i]['scene']}){cam}: the "
                    f"rotation block of {name} is not orthonormal with det +1 (error {err[i, v]:.3g} > "
                    f"{ROTATION_TOL}); rebuild the cache from a valid calibration")
        K = self.intrinsics_raw
        bad = np.argwhere(~(np.isfinite(K).all(axis=(-1, -2)) & (K[..., 0, 0] > 0) & (K[..., 1, 1] > 0)
                            & (np.abs(K[..., 2, :] - [0, 0, 1]).max(axis=-1) < 1e-6)))
        if len(bad):
            i, v = (int(x) for x in bad[0])
            raise WindowInputError(f"{source}: sample {self.samples[i]['token']} camera {self.cameras[v]}: "
                                   f"cam_intrinsic {K[i, v].tolist()} is not a pinhole matrix with fx, fy > 0")

    def _find_extras(self) -> tuple[dict[str, Path], list[str] | None]:
        path = self.dataroot / "extras" / "manifest.json"
        if not path.is_file():
            return {}, None
        manifest = json.loads(path.read_text())
        order = list(manifest.get("camera_order") or [])
        if not order:
            from models.world.sensors import CAMERA_ORDER
            order = list(CAMERA_ORDER)
        missing = [c for c in self.cameras if c not in order]
        if missing:
            raise WindowInputError(f"{path}: camera_order {order} lacks camera(s) {missing}")
        files = {}
        for scene, _, _ in self.windows:
            entry = manifest.get("scenes", {}).get(scene)
            if entry is None:
                continue
            rel = entry["file"] if isinstance(entry, dict) else entry
            f = self.dataroot / rel
            if not f.is_file():
                raise WindowInputError(f"{path}: scene {scene!r} lists {rel}, but {f} does not exist")
            files[scene] = f
        return files, order

    def _check_files(self, progress: bool) -> None:
        from tqdm import tqdm

        needed = sorted({int(i) for _, _, idx in self.windows for i in idx})
        for i in tqdm(needed, desc=f"check {self.split} files", disable=not progress, leave=False):
            meta = self.samples[i]
            for cam, rel in zip(self.cameras, self._cam_paths(i)):
                if not rel.is_file():
                    raise WindowInputError(f"{rel}: camera image of sample {meta['token']} (scene {meta['scene']}, "
                                           f"camera {cam}) not found")
            lidar = self.dataroot / meta["lidar"]
            if not lidar.is_file():
                raise WindowInputError(f"{lidar}: LiDAR file of sample {meta['token']} (scene {meta['scene']}) "
                                       "not found")
            size = lidar.stat().st_size
            if size % (4 * LIDAR_FIELDS):
                raise WindowInputError(f"{lidar}: LiDAR file of sample {meta['token']} has {size} bytes, not a "
                                       f"multiple of {LIDAR_FIELDS} float32 per point ({4 * LIDAR_FIELDS} bytes); "
                                       "truncated or not a nuScenes .pcd.bin")

    # ------------------------------------------------------------------------------------------ reading
    def _cam_paths(self, i: int) -> list[Path]:
        cams = self.samples[i]["cams"]
        return [self.dataroot / cams[j] for j in self.cache._cam_idx]

    def _read_image(self, i: int, v: int) -> np.ndarray:
        path = self._cam_paths(i)[v]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            meta = self.samples[i]
            raise WindowInputError(f"{path}: missing or unreadable camera image of sample {meta['token']} "
                                   f"(scene {meta['scene']}, camera {self.cameras[v]})")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _read_lidar(self, i: int) -> np.ndarray:
        meta = self.samples[i]
        path = self.dataroot / meta["lidar"]
        try:
            raw = np.fromfile(path, dtype=np.float32)
        except OSError as exc:
            raise WindowInputError(f"{path}: cannot read the LiDAR file of sample {meta['token']}: {exc}") from exc
        if raw.size % LIDAR_FIELDS:
            raise WindowInputError(f"{path}: LiDAR file of sample {meta['token']} holds {raw.size} float32, not a "
                                   f"multiple of {LIDAR_FIELDS} (x, y, z, intensity, ring); truncated or not a "
                                   "nuScenes .pcd.bin")
        pts = raw.reshape(-1, LIDAR_FIELDS)
        bad = int((~np.isfinite(pts)).any(axis=1).sum())
        if bad:
            raise WindowInputError(f"{path}: LiDAR file of sample {meta['token']} has {bad} point(s) with NaN or "
                                   "inf values")
        return pts[:, :3].astype(np.float64)

    def _scene_truth(self, scene: str) -> dict:
        if self._extras is None or self._extras[0] != scene:
            path = self._extras_files[scene]
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("keyframe_depth", "keyframe_dynamic", "keyframe_timestamps") if k not in z]
                if missing:
                    raise WindowInputError(f"{path}: exact truth of scene {scene!r} lacks {missing}")
                truth = {k: z[k] for k in ("keyframe_depth", "keyframe_dynamic", "keyframe_timestamps")}
            d, m = truth["keyframe_depth"], truth["keyframe_dynamic"]
            n = len(truth["keyframe_timestamps"])
            if d.ndim != 4 or m.shape != d.shape or d.shape[0] != n or d.shape[1] != len(self._extras_order):
                raise WindowInputError(f"{path}: keyframe_depth {d.shape} / keyframe_dynamic {m.shape} do not have "
                                       f"the shape [{n} key frames, {len(self._extras_order)} cameras, H, W]")
            self._extras = (scene, truth)
        return self._extras[1]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"window {k} out of range for {len(self)} windows")
        scene, start, idx = self.windows[k]
        T, V, (H, W) = self.frames, len(self.cameras), self.image_hw
        images = np.empty((T, V, 3, H, W), np.float32)
        K = np.empty((T, V, 3, 3), np.float64)
        src_hw = np.empty((T, V, 2), np.int64)
        for t, i in enumerate(idx):
            for v in range(V):
                rgb = self._read_image(int(i), v)
                src_hw[t, v] = rgb.shape[:2]
                images[t, v] = resize_image(rgb, (H, W))
                K[t, v] = resize_intrinsics(self.intrinsics_raw[i, v], rgb.shape[:2], (H, W))

        extr, cam_to_ref = _relative_extrinsics(self.cam2global[idx])                    # (T, V, 3, 4), (V, 4, 4)
        depth = self._lidar_depth(idx, K)

        item = {"images": images, "intrinsics": K.astype(np.float32), "extrinsics": extr.astype(np.float32),
                "cam_to_ref": cam_to_ref.astype(np.float32), "depth": depth}
        has_exact = scene in self._extras_files
        if has_exact:
            item["depth_exact"], item["dynamic"] = self._exact(scene, idx, src_hw)
        else:
            item["depth_exact"] = np.zeros((T, V, H, W), np.float32)
            item["dynamic"] = np.zeros((T, V, H, W), bool)
        item.update(has_depth=True, has_exact=has_exact, has_dynamic=has_exact, has_intrinsics=True,
                    has_extrinsics=True, scene=scene, start=int(start),
                    tokens=[self.samples[int(i)]["token"] for i in idx])
        return item

    def _lidar_depth(self, idx: np.ndarray, K: np.ndarray) -> np.ndarray:
        """LiDAR z-depth [T, V, H, W] of the key frames ``idx`` in cameras of (resized) intrinsics K [T, V, 3, 3]."""
        depth = np.empty((len(idx), len(self.cameras), *self.image_hw), np.float32)
        lidar2cam = invert_transform(self.cam2lidar[idx])                               # (T, V, 4, 4)
        for t, i in enumerate(idx):
            pts = self._read_lidar(int(i))                                              # (N, 3) LIDAR frame
            cam_pts = np.einsum("vij,nj->vni", lidar2cam[t, :, :3, :3], pts) + lidar2cam[t, :, None, :3, 3]
            depth[t] = splat_depth(cam_pts, K[t], self.image_hw)
        return depth

    def depth(self, k: int) -> np.ndarray:
        """``self[k]["depth"]`` without decoding the images (their sizes come from the JPEG headers): what the
        mean-depth baseline reads from every training window."""
        from PIL import Image

        _, _, idx = self.windows[k]
        K = np.empty((len(idx), len(self.cameras), 3, 3), np.float64)
        for t, i in enumerate(idx):
            for v, path in enumerate(self._cam_paths(int(i))):
                try:
                    with Image.open(path) as img:
                        w, h = img.size
                except (OSError, ValueError) as exc:
                    meta = self.samples[int(i)]
                    raise WindowInputError(f"{path}: missing or unreadable camera image of sample {meta['token']} "
                                           f"(scene {meta['scene']}, camera {self.cameras[v]}): {exc}") from exc
                K[t, v] = resize_intrinsics(self.intrinsics_raw[i, v], (h, w), self.image_hw)
        return self._lidar_depth(idx, K)

    def _exact(self, scene: str, idx: np.ndarray, src_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        truth = self._scene_truth(scene)
        path = self._extras_files[scene]
        cols = [self._extras_order.index(c) for c in self.cameras]
        frames = np.array([int(self.samples[int(i)]["frame"]) for i in idx])
        n = len(truth["keyframe_timestamps"])
        if frames.max() >= n:
            raise WindowInputError(f"{path}: {n} key frames of exact truth, but scene {scene!r} has key frame "
                                   f"{int(frames.max())} in the cache")
        for t, i in enumerate(idx):
            meta = self.samples[int(i)]
            ts = meta.get("timestamp")
            if ts is not None and int(truth["keyframe_timestamps"][frames[t]]) != int(ts):
                raise WindowInputError(f"{path}: key frame {frames[t]} has timestamp "
                                       f"{int(truth['keyframe_timestamps'][frames[t]])}, but sample {meta['token']} "
                                       f"has {int(ts)}; the extras belong to another build of the world")
        hs, ws = truth["keyframe_depth"].shape[-2:]
        wrong = np.argwhere((src_hw != [hs, ws]).any(axis=-1))
        if len(wrong):
            t, v = (int(x) for x in wrong[0])
            meta = self.samples[int(idx[t])]
            raise WindowInputError(f"{path}: exact depth of {hs} x {ws} pixels, but the image of sample "
                                   f"{meta['token']} camera {self.cameras[v]} is {src_hw[t, v, 0]} x "
                                   f"{src_hw[t, v, 1]}")
        d = sample_nearest(truth["keyframe_depth"][frames][:, cols], self.image_hw).astype(np.float32)
        d[~np.isfinite(d) | (d <= 0)] = 0.0
        m = sample_nearest(truth["keyframe_dynamic"][frames][:, cols], self.image_hw).astype(bool)
        return np.ascontiguousarray(d), np.ascontiguousarray(m)


# --------------------------------------------------------------------------------------------------
# Multi-view sequence folder
# --------------------------------------------------------------------------------------------------


class SequenceWindows:
    """Windows of T consecutive times x all views of a multi-view sequence folder (a moving rig is accepted).

    root: the folder (``images/``, optional ``depths/``, ``intrs/``, ``extrs/``, ``<masks>/``, see
    ``models.sequences.reader``); depth_unit: metres per stored depth unit. Items as in the module docstring:
    depth from ``depths/`` (``has_depth``), intrinsics and extrinsics from ``intrs/`` / ``extrs/`` re-expressed
    relative to the window's reference camera (t=0, v=0), ``dynamic`` from the masks; a missing source gives zeros
    and its flag False. ``depth_exact`` is zeros (``has_exact`` False): a folder's depth is not known to be exact.
    ``tokens`` are ``<folder name>/t<time>``."""

    def __init__(self, root: str | Path, frames: int, image_hw: tuple[int, int], depth_unit: float = 1.0,
                 stride: int = 1, masks: str = "masks"):
        from models.sequences.reader import MultiViewSequence

        self.frames = _check_count("frames", frames)
        self.stride = _check_count("stride", stride)
        self.image_hw = check_image_hw(image_hw)
        self.root = Path(root)
        self.seq = MultiViewSequence(self.root, depth_unit=depth_unit, masks=masks, fixed_rig=False)
        n = self.seq.num_times
        if n < self.frames:
            raise ValueError(f"{self.root}: {n} time(s) in the sequence, fewer than frames = {self.frames}; lower "
                             "frames or add times")
        self.starts = list(range(0, n - self.frames + 1, self.stride))
        self.skipped = {"short_scenes": []}
        self._E4 = None                                                               # (n, V, 4, 4) world-to-camera
        if self.seq.extrs is not None:
            self._E4 = np.tile(np.eye(4), (n, self.seq.num_views, 1, 1))
            for t in range(n):
                for v in range(self.seq.num_views):
                    self._E4[t, v, :3] = self.seq.extrinsics(t, v)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"window {k} out of range for {len(self)} windows")
        seq, start = self.seq, self.starts[k]
        T, V, (H, W) = self.frames, seq.num_views, self.image_hw
        times = range(start, start + T)
        images = np.empty((T, V, 3, H, W), np.float32)
        for t, ts in enumerate(times):
            for v in range(V):
                images[t, v] = resize_image(seq.image(ts, v), (H, W))
        item = {"images": images}
        if seq.intrs is not None:
            K = np.stack([np.stack([resize_intrinsics(seq.intrinsics(ts, v), (seq.sizes[v].height, seq.sizes[v].width),
                                                      (H, W)) for v in range(V)]) for ts in times])
            item["intrinsics"] = K.astype(np.float32)
        else:
            item["intrinsics"] = np.zeros((T, V, 3, 3), np.float32)
        if self._E4 is not None:
            cam2world = invert_transform(self._E4[start:start + T])
            extr, cam_to_ref = _relative_extrinsics(cam2world)
            item["extrinsics"], item["cam_to_ref"] = extr.astype(np.float32), cam_to_ref.astype(np.float32)
        else:
            item["extrinsics"] = np.zeros((T, V, 3, 4), np.float32)
            item["cam_to_ref"] = np.zeros((V, 4, 4), np.float32)
        if seq.depths is not None:
            item["depth"] = np.stack([np.stack([sample_nearest(seq.depth(ts, v), (H, W)) for v in range(V)])
                                      for ts in times]).astype(np.float32)
        else:
            item["depth"] = np.zeros((T, V, H, W), np.float32)
        item["depth_exact"] = np.zeros((T, V, H, W), np.float32)
        if seq.masks is not None:
            item["dynamic"] = np.stack([np.stack([sample_nearest(seq.dynamic_mask(ts, v), (H, W)) for v in range(V)])
                                        for ts in times]).astype(bool)
        else:
            item["dynamic"] = np.zeros((T, V, H, W), bool)
        item.update(has_depth=seq.depths is not None, has_exact=False, has_dynamic=seq.masks is not None,
                    has_intrinsics=seq.intrs is not None, has_extrinsics=self._E4 is not None,
                    scene=self.root.name, start=int(start),
                    tokens=[f"{self.root.name}/t{seq.grid.times[ts]}" for ts in times])
        return item


# --------------------------------------------------------------------------------------------------
# In-memory window cache
# --------------------------------------------------------------------------------------------------


class WindowCache:
    """A window dataset whose items are kept in memory after their first read (``train_geometry.image_cache_mb``).

    Training reads every window once per epoch and evaluates the val windows after each epoch; without a cache each
    read decodes 12 JPEGs, projects two LiDAR sweeps and samples the exact truth again (a quarter of a default
    training step, docs/performance.md). Items are kept until ``budget_mb`` MiB are used; later ones are read each
    time. Images that are exact ``uint8 / 255`` values (every JPEG source) are kept as uint8 (a quarter of the
    memory) and divided again on each read, which gives back the same float32 bytes. ``budget_mb = 0`` keeps none.
    Any other attribute is the wrapped dataset's."""

    def __init__(self, windows, budget_mb: int):
        self.dataset = windows
        self.budget = int(budget_mb) * 2 ** 20
        self.used = 0
        self._items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":                      # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"window {k} out of range for {len(self)} windows")
        k = k % len(self)
        kept = self._items.get(k)
        if kept is not None:
            return _restore(kept)
        item = self.dataset[k]
        if self.budget:
            kept = _compact(item)
            size = sum(v.nbytes for v in kept.values() if isinstance(v, np.ndarray))
            if self.used + size <= self.budget:
                self._items[k] = kept
                self.used += size
        return item


def _copy(item: dict) -> dict:
    """Arrays and lists copied (whoever receives the item may change it), images left to the caller."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else list(v) if isinstance(v, list) else v)
            for k, v in item.items() if k != "images"}


def _compact(item: dict) -> dict:
    """The item with its images as uint8 when that loses nothing."""
    images = item["images"]
    if images.dtype == np.float32:
        u8 = np.rint(images * np.float32(255.0)).clip(0, 255).astype(np.uint8)
        if np.array_equal(u8.astype(np.float32) / np.float32(255.0), images):
            return {**_copy(item), "images": u8}
    return {**_copy(item), "images": images.copy()}


def _restore(kept: dict) -> dict:
    images = kept["images"]
    return {**_copy(kept), "images": images.astype(np.float32) / np.float32(255.0) if images.dtype == np.uint8
            else images.copy()}
