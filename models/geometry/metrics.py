"""Evaluation metrics of the geometry model: multi-view camera pose, depth and masks.

Every function follows ``/work/shared/design/metrics_conventions_2.md`` to the letter, so that numbers reported under
these names are comparable with the published VGGT / Pi3 ones:

* **Section 4** (multi-view camera pose, VGGT ``evaluation/test_co3d.py`` at ``4b8be14``):
  :func:`relative_pose_errors`, :func:`pose_accuracy`, :func:`pose_auc`; plus the camera-centre ATE after a Sim(3)
  alignment (:func:`camera_centres`, :func:`umeyama_sim3`, :func:`ate_sim3`), which section 4 does not define
  (VGGT's CO3D metric needs no alignment) and which is documented here.
* **Section 5** (depth, Pi3 ``utils/depth.py: depth_evaluation``): :func:`depth_metrics`, :func:`weighted_mean`.
* Masks (no section; convention documented in :func:`mask_iou_f1`).

Conventions
-----------
* Extrinsics are **OpenCV world-to-camera** (w2c): ``X_cam = R X_world + t``; ``[S, 3, 4]`` or ``[S, 4, 4]``.
  Never pass camera-to-world matrices (section 4, pitfall 1).
* Everything is computed in **float64** numpy (inputs may be numpy arrays or torch tensors of any float dtype; they
  are promoted). Only the depth ``delta`` ratios are float32 means, as upstream (section 5, step 6), and ``lad2`` runs
  ``torch.optim.Adam`` on float64 parameters (section 5, step 3).
* Vectorised over pairs (pose) and pixels (depth); the only Python loops are the fixed iteration counts of the
  iterative alignments (10 reweighting steps, at most 1000 Adam steps).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "ROT_FLOOR_EPS", "NONFINITE_ERR_RAD", "DEPTH_KEYS",
    "pair_indices", "rotmat_to_quat", "relative_pose_errors", "pose_accuracy", "pose_auc",
    "camera_centres", "umeyama_sim3", "ate_sim3",
    "lower_median", "depth_metrics", "weighted_mean",
    "mask_iou_f1",
]

#: The floor of both per-pair losses (section 4): ``loss = max(1 - dot^2, 1e-15)``, and the ``|t| + 1e-15`` guard.
ROT_FLOOR_EPS = 1e-15
#: Replacement, in **radians**, of a non-finite translation angle (section 4), before the conversion to degrees.
NONFINITE_ERR_RAD = 1e6
#: Keys of :func:`depth_metrics` (section 5, step 6), in this order.
DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1.25", "delta_1.25^2", "delta_1.25^3", "valid_pixels")


def _np64(x) -> np.ndarray:
    """numpy float64 copy-free view of a numpy array / torch tensor / sequence (torch: detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _npbool(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool)


# ----------------------------------------------------------------------------------------------------------------
# Section 4: multi-view camera pose
# ----------------------------------------------------------------------------------------------------------------

def pair_indices(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, in lexicographic order ``(0,1), (0,2), ..., (0,S-1), (1,2), ...``
    (section 4, "Pairs"; VGGT's ``torch.combinations``). Returns ``(i [P], j [P])`` with ``P = S(S-1)/2``."""
    i, j = np.triu_indices(int(num_frames), k=1)   # row-major upper triangle == lexicographic order
    return i.astype(np.int64), j.astype(np.int64)


def rotmat_to_quat(R) -> np.ndarray:
    """Unit quaternions ``(w, x, y, z)`` ``[..., 4]`` of rotation matrices ``[..., 3, 3]`` (float64).

    Section 4 accepts any correct conversion (the sign of ``q`` does not matter, the error uses ``(q_pred . q_gt)^2``).
    This one is the well-conditioned branch selection of Shepperd / PyTorch3D / VGGT ``mat_to_quat``: the four
    candidate quaternions are built from ``|q_k| = sqrt(1 +- m00 +- m11 +- m22) / 2`` and the one with the largest
    ``|q_k|`` is kept, then normalised to unit length.
    """
    m = _np64(R)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    q_abs = np.sqrt(np.maximum(np.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                                         1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], axis=-1), 0.0))
    cand = np.stack([
        np.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], axis=-1),
        np.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], axis=-1),
        np.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], axis=-1),
        np.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], axis=-1),
    ], axis=-2)                                                                     # [..., 4 candidates, 4]
    cand = cand / (2.0 * np.maximum(q_abs, 0.1))[..., None]
    best = np.argmax(q_abs, axis=-1)
    q = np.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _split_w2c(E) -> tuple[np.ndarray, np.ndarray]:
    E = _np64(E)
    if E.ndim != 3 or E.shape[-2] not in (3, 4) or E.shape[-1] != 4:
        raise ValueError(f"extrinsics must be [S, 3, 4] or [S, 4, 4], got {tuple(E.shape)}")
    return E[:, :3, :3], E[:, :3, 3]


def _relative_w2c(R: np.ndarray, t: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Rel_ij = E_i E_j^-1`` with the closed-form inverse ``[R^T | -R^T t]``: ``R_rel = R_i R_j^T``,
    ``t_rel = t_i - R_rel t_j`` (section 4, "Relative pose")."""
    R_rel = R[i] @ np.swapaxes(R[j], -1, -2)
    t_rel = t[i] - np.einsum("pab,pb->pa", R_rel, t[j])
    return R_rel, t_rel


def relative_pose_errors(pred_w2c, gt_w2c) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair relative rotation and translation angle errors in degrees (section 4, VGGT current ``4b8be14``).

    Args:
        pred_w2c, gt_w2c: OpenCV world-to-camera extrinsics ``[S, 3, 4]`` or ``[S, 4, 4]`` (numpy or torch; promoted to
            float64). No alignment is done: the relative poses are invariant to a common similarity change of the
            prediction's world frame.

    Returns:
        ``(rot_err_deg [P], trans_err_deg [P])`` float64, over the pairs ``i < j`` in lexicographic order
        (:func:`pair_indices`), ``P = S(S-1)/2``.

    Rules (section 4, "Per-pair errors"):
        * ``Rel_ij = E_i E_j^-1`` for pred and GT separately.
        * Rotation: ``loss = max(1 - (q_pred . q_gt)^2, 1e-15)``, ``err = degrees(arccos(1 - 2 loss))``. Identical
          rotations give the floor ``degrees(arccos(1 - 2e-15)) ~ 3.6e-6`` deg, not 0. A non-finite rotation stays
          non-finite (upstream replaces only the translation angle), and then fails every threshold and AUC bin.
        * Translation: ``u = t / (|t| + 1e-15)``, ``loss = max(1 - (u_pred . u_gt)^2, 1e-15)``,
          ``e = arccos(sqrt(1 - loss))`` radians; non-finite ``e`` -> ``1e6`` rad; then degrees and
          ``min(e, |180 - e|)``. Sign-blind, in ``[0, 90]``; a zero relative translation (pred or GT) gives 90 deg.
    """
    R_p, t_p = _split_w2c(pred_w2c)
    R_g, t_g = _split_w2c(gt_w2c)
    if R_p.shape != R_g.shape:
        raise ValueError(f"pred and gt must hold the same number of frames, got {R_p.shape[0]} and {R_g.shape[0]}")
    i, j = pair_indices(R_p.shape[0])
    Rr_p, tr_p = _relative_w2c(R_p, t_p, i, j)
    Rr_g, tr_g = _relative_w2c(R_g, t_g, i, j)

    with np.errstate(invalid="ignore", over="ignore"):
        # rotation (VGGT rotation_angle)
        q_p, q_g = rotmat_to_quat(Rr_p), rotmat_to_quat(Rr_g)
        loss_q = np.maximum(1.0 - np.sum(q_p * q_g, axis=-1) ** 2, ROT_FLOOR_EPS)
        rot_deg = np.arccos(1.0 - 2.0 * loss_q) * 180.0 / np.pi

        # translation (VGGT compare_translation_by_angle + translation_angle with ambiguity=True)
        u_p = tr_p / (np.linalg.norm(tr_p, axis=-1, keepdims=True) + ROT_FLOOR_EPS)
        u_g = tr_g / (np.linalg.norm(tr_g, axis=-1, keepdims=True) + ROT_FLOOR_EPS)
        loss_t = np.maximum(1.0 - np.sum(u_p * u_g, axis=-1) ** 2, ROT_FLOOR_EPS)
        err_t = np.arccos(np.sqrt(1.0 - loss_t))
        err_t = np.where(np.isfinite(err_t), err_t, NONFINITE_ERR_RAD)
        trans_deg = err_t * 180.0 / np.pi
        trans_deg = np.minimum(trans_deg, np.abs(180.0 - trans_deg))
    return rot_deg, trans_deg


def pose_accuracy(rot_err, trans_err, thresholds: Iterable[float] = (5, 15, 30), *,
                  float32: bool = False) -> dict[str, float]:
    """RRA@k and RTA@k (section 4, "Accuracy"): ``mean over pairs of [err < k]``, **strict**.

    Returns ``{"rra@5": ..., "rta@5": ..., "rra@15": ..., ...}`` (keys formatted with ``f"{k:g}"``), fractions in
    ``[0, 1]`` (papers print them x100). The mean is float64 by default; ``float32=True`` reproduces VGGT's printed
    per-sequence value ``(err < k).float().mean()``. NaN errors count as failures. No pairs -> NaN.
    """
    rot, trans = _np64(rot_err).reshape(-1), _np64(trans_err).reshape(-1)
    if rot.shape != trans.shape:
        raise ValueError("rot_err and trans_err must have the same length")

    def frac(hit: np.ndarray) -> float:
        if hit.size == 0:
            return float("nan")
        if float32:
            return float(torch.from_numpy(hit).float().mean().item())
        return float(np.count_nonzero(hit) / hit.size)

    out: dict[str, float] = {}
    for k in thresholds:
        out[f"rra@{k:g}"] = frac(rot < k)
        out[f"rta@{k:g}"] = frac(trans < k)
    return out


def pose_auc(rot_err, trans_err, max_threshold: int = 30) -> float:
    """AUC@T of ``m = max(rot_err, trans_err)`` (section 4, "AUC"; VGGT ``calculate_auc_np``).

    Histogram of ``m`` over the ``T`` integer bins ``[0,1), [1,2), ..., [T-2, T-1)`` and the **closed** last bin
    ``[T-1, T]`` (numpy ``histogram`` with edges ``0..T``). Values outside ``[0, T]`` (and NaN) fall in no bin but
    count in the denominator ``P``. ``AUC = mean_k cumsum(hist / P)_k``, i.e.
    ``(1/T) sum_{k=1..T} frac(m < k)`` with the ``k = T`` term ``frac(m <= T)``. A step function on integer
    thresholds, not a trapezoid. Returns a float in ``[0, 1]`` (NaN for no pairs).
    """
    T = int(max_threshold)
    if T != max_threshold or T < 1:
        raise ValueError(f"max_threshold must be a positive integer, got {max_threshold}")
    rot, trans = _np64(rot_err).reshape(-1), _np64(trans_err).reshape(-1)
    if rot.shape != trans.shape:
        raise ValueError("rot_err and trans_err must have the same length")
    m = np.maximum(rot, trans)                       # NaN propagates and falls in no bin
    P = float(m.size)
    if m.size == 0:
        return float("nan")
    inside = (m >= 0) & (m <= T)
    idx = np.minimum(np.floor(m[inside]).astype(np.int64), T - 1)   # m == T goes to the closed last bin
    hist = np.bincount(idx, minlength=T)
    normalized = hist.astype(float) / P
    return float(np.mean(np.cumsum(normalized)))


def camera_centres(w2c) -> np.ndarray:
    """Camera centres ``C = -R^T t`` ``[S, 3]`` (float64) of OpenCV world-to-camera extrinsics ``[S, 3|4, 4]``."""
    R, t = _split_w2c(w2c)
    return -np.einsum("sba,sb->sa", R, t)


def umeyama_sim3(src, dst) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991), ``src``/``dst`` ``[N, 3]``.

    Minimises ``sum_n |dst_n - (s R src_n + t)|^2`` over ``s > 0``, ``R in SO(3)`` (reflections excluded by the
    ``diag(1, 1, det(U V^T))`` correction) and ``t``. Returns ``(s, R [3, 3], t [3])`` in float64. A degenerate
    ``src`` without spread (all points equal) returns ``s = 1``, ``R = I`` and the centroid offset.
    """
    X, Y = _np64(src), _np64(dst)
    if X.ndim != 2 or X.shape != Y.shape or X.shape[1] != 3:
        raise ValueError(f"src and dst must both be [N, 3], got {X.shape} and {Y.shape}")
    mu_x, mu_y = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - mu_x, Y - mu_y
    var_x = float(np.mean(np.sum(Xc ** 2, axis=1)))
    if var_x <= 0.0:
        return 1.0, np.eye(3), mu_y - mu_x
    cov = Yc.T @ Xc / X.shape[0]                     # Sigma_xy of Umeyama: (1/n) sum (y - mu_y)(x - mu_x)^T
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.sum(D * np.diag(S)) / var_x)
    t = mu_y - s * R @ mu_x
    return s, R, t


def ate_sim3(pred_centres, gt_centres) -> float:
    """Absolute trajectory error: RMSE of camera centres after the optimal Sim(3) alignment of pred onto GT.

    ``ATE = sqrt(mean_n |s R p_n + t - g_n|^2)`` with ``(s, R, t) = umeyama_sim3(pred, gt)``; in GT units, invariant
    to any similarity applied to the prediction. Centres from w2c extrinsics: :func:`camera_centres`. (Section 4
    defines no ATE; this is the usual evo ``ape --align --correct_scale`` translation RMSE.)
    """
    p, g = _np64(pred_centres), _np64(gt_centres)
    s, R, t = umeyama_sim3(p, g)
    res = s * p @ R.T + t - g
    return float(np.sqrt(np.mean(np.sum(res ** 2, axis=1))))


# ----------------------------------------------------------------------------------------------------------------
# Section 5: depth
# ----------------------------------------------------------------------------------------------------------------

def lower_median(x) -> float:
    """The **lower** median (section 5, step 3 and pitfall 1): element ``(n - 1) // 2`` of the sorted values, as
    ``torch.median``; not numpy's average of the two middle values."""
    x = _np64(x).reshape(-1)
    if x.size == 0:
        raise ValueError("median of an empty set")
    k = (x.size - 1) // 2
    return float(np.partition(x, k)[k])


def _lad2_adam(p: np.ndarray, g: np.ndarray, s_init: float, t_init: float = 0.0, lr: float = 1e-4,
               max_iters: int = 1000, tol: float = 1e-6) -> tuple[float, float]:
    """Pi3 ``absolute_value_scaling2`` (section 5, step 3, ``align_with_lad2``): Adam on ``sum |s p + t - g|``.

    Each iteration: zero the gradients, ``loss = sum |s p + t - g|``, backward (``d|x|/dx = sign(x)``, 0 at 0), step;
    then stop if ``|prev_loss - loss| < tol`` where ``loss`` is this iteration's (pre-step) loss. ``torch.optim.Adam``
    (betas 0.9 / 0.999, eps 1e-8, no weight decay) on float64 ``s``, ``t``.
    """
    pt, gt = torch.from_numpy(p), torch.from_numpy(g)
    s = torch.tensor([s_init], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([t_init], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([s, t], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    prev_loss = None
    with torch.enable_grad():
        for _ in range(int(max_iters)):
            opt.zero_grad()
            loss = torch.sum(torch.abs(s * pt + t - gt))
            loss.backward()
            opt.step()
            cur = loss.item()
            if prev_loss is not None and abs(prev_loss - cur) < tol:
                break
            prev_loss = cur
    return float(s.detach().item()), float(t.detach().item())


_ALIGNS = ("none", "median", "scale", "lstsq", "lad2")


def depth_metrics(pred, gt, max_depth: float | None = 80.0, align: str = "none", *,
                  pre_clip_min: float | None = None, pre_clip_max: float | None = None,
                  post_clip_min: float | None = None, post_clip_max: float | None = None,
                  custom_mask=None, lr: float = 1e-4, max_iters: int = 1000,
                  return_alignment: bool = False) -> dict[str, float]:
    """Depth metrics of Pi3 ``utils/depth.py: depth_evaluation`` (section 5).

    Args:
        pred, gt: depth maps of identical shape ``[..., H, W]`` (numpy or torch; float64 inside). A stack is evaluated
            as **one** pixel set with a single alignment (videodepth: one call per sequence).
        max_depth: valid pixels are ``gt > 0`` and, unless None, ``gt < max_depth`` (**strict**). Default 80.
        align: ``"none"`` (``metric_scale``), ``"median"`` (``p * median(g) / median(p)``, lower medians),
            ``"scale"`` (``align_with_scale``: reweighted-L1 scale, 10 iterations from ``mean(g)/mean(p)``,
            ``w = 1/(|s p - g| + 1e-8)``, ``s = sum w p g / sum w p^2``, then ``s = max(s, 1e-3)``),
            ``"lstsq"`` (least-squares scale and shift ``min sum (s p + t - g)^2``), ``"lad2"`` (L1 scale and shift by
            Adam from ``s = median(g)/median(p)``, ``t = 0``; see :func:`_lad2_adam`). Fitted on all valid pixels.
            Note Pi3's callers: monodepth ``median-scale`` means ``"scale"``, videodepth ``scale&shift`` means
            ``"lad2"``.
        pre_clip_min / pre_clip_max: clamp the prediction on valid pixels before alignment.
        post_clip_min / post_clip_max: clamp the aligned prediction.
        custom_mask: optional boolean map (same shape) restricting the evaluated pixels **after** alignment (the
            alignment still uses all valid pixels).
        lr, max_iters: ``lad2`` Adam settings (defaults 1e-4, 1000).
        return_alignment: also return ``"align_scale"`` / ``"align_shift"`` (1 / 0 for ``"none"``).

    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "log_rmse", "delta_1.25", "delta_1.25^2", "delta_1.25^3", "valid_pixels"}``
        (:data:`DEPTH_KEYS`): ``mean(|p-g|/g)``, ``mean((p-g)^2/g)``, ``sqrt(mean((p-g)^2))`` on the aligned,
        post-clipped ``p``; then ``p = max(p, 1e-5)`` and ``sqrt(mean((ln p - ln g)^2))`` and
        ``mean(max(p/g, g/p) < 1.25^k)`` (**strict**, each a **float32** mean as upstream); ``valid_pixels`` = number of
        evaluated pixels (int). Upstream's ``delta < 1.`` key (always 0) is not returned. **Empty case**: no valid
        (or no evaluated) pixel gives every metric 0 and ``valid_pixels = 0`` (not NaN).
    """
    if align not in _ALIGNS:
        raise ValueError(f"align must be one of {_ALIGNS}, got {align!r}")
    P, G = _np64(pred), _np64(gt)
    if P.shape != G.shape:
        raise ValueError(f"pred and gt must have the same shape, got {P.shape} and {G.shape}")
    valid = G > 0
    if max_depth is not None:
        valid &= G < max_depth
    cmask = None
    if custom_mask is not None:
        cmask = _npbool(custom_mask)
        if cmask.shape != G.shape:
            raise ValueError(f"custom_mask must have shape {G.shape}, got {cmask.shape}")

    def empty() -> dict[str, float]:
        out = {k: 0.0 for k in DEPTH_KEYS}
        out["valid_pixels"] = 0
        if return_alignment:
            out.update(align_scale=float("nan"), align_shift=float("nan"))
        return out

    p, g = P[valid], G[valid]
    if p.size == 0:
        return empty()
    if pre_clip_min is not None:
        p = np.maximum(p, pre_clip_min)
    if pre_clip_max is not None:
        p = np.minimum(p, pre_clip_max)

    s, t = 1.0, 0.0
    if align == "none":
        pass
    elif align == "lstsq":
        A = np.stack([p, np.ones_like(p)], axis=1)
        (s, t), *_ = np.linalg.lstsq(A, g, rcond=None)
        s, t = float(s), float(t)
        p = s * p + t
    elif align == "lad2":
        s_init = lower_median(g) / lower_median(p)
        s, t = _lad2_adam(p, g, s_init, 0.0, lr=lr, max_iters=max_iters)
        p = s * p + t
    elif align == "scale":
        s = float(np.mean(g) / np.mean(p))
        for _ in range(10):
            w = 1.0 / (np.abs(s * p - g) + 1e-8)
            s = float(np.sum(w * p * g) / np.sum(w * p ** 2))
        s = max(s, 1e-3)
        p = s * p
    else:  # "median"
        s = lower_median(g) / lower_median(p)
        p = p * s

    if post_clip_min is not None:
        p = np.maximum(p, post_clip_min)
    if post_clip_max is not None:
        p = np.minimum(p, post_clip_max)
    if cmask is not None:
        keep = cmask[valid]
        p, g = p[keep], g[keep]
        if p.size == 0:
            return empty()

    diff = p - g
    out: dict[str, float] = {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff ** 2 / g)),
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
    }
    p = np.maximum(p, 1e-5)
    out["log_rmse"] = float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)))
    ratio = np.maximum(p / g, g / p)
    for key, thr in (("delta_1.25", 1.25), ("delta_1.25^2", 1.25 ** 2), ("delta_1.25^3", 1.25 ** 3)):
        out[key] = float(torch.from_numpy(ratio < thr).float().mean().item())   # float32 mean, as upstream
    out["valid_pixels"] = int(p.size)
    if return_alignment:
        out.update(align_scale=float(s), align_shift=float(t))
    return out


def weighted_mean(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Dataset value of Pi3's callers (section 5, "Aggregation"): ``np.average`` of each metric over the per-image
    (monodepth) or per-sequence (videodepth) dicts, **weighted by** ``valid_pixels``; ``valid_pixels`` of the result is
    the total. Keys are those of the first dict (``valid_pixels`` required in all). If the total weight is 0 (or the
    list is empty) every metric is 0 and ``valid_pixels`` 0, like the empty case of :func:`depth_metrics` (upstream
    would raise ``ZeroDivisionError``).
    """
    metrics = list(metrics)
    if not metrics:
        return {k: (0 if k == "valid_pixels" else 0.0) for k in DEPTH_KEYS}
    keys = [k for k in metrics[0] if k != "valid_pixels"]
    w = np.array([float(m["valid_pixels"]) for m in metrics], dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        out = {k: 0.0 for k in keys}
    else:
        out = {k: float(np.average(np.array([float(m[k]) for m in metrics]), weights=w)) for k in keys}
    out["valid_pixels"] = int(round(total))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------

def mask_iou_f1(pred_prob, gt_bool, threshold: float = 0.5) -> dict[str, float]:
    """IoU and F1 of a thresholded probability mask against a boolean GT mask (any identical shapes, pooled).

    ``pred = pred_prob > threshold`` (**strict**). ``iou = |pred & gt| / |pred | gt|``,
    ``f1 = 2 |pred & gt| / (|pred| + |gt|)`` (= Dice). Convention: when the union is empty (nothing predicted and
    nothing in the GT) both are **1.0** (a perfect empty prediction). ``pixels`` = number of pixels evaluated (the
    weight for a pixel-weighted average over images).
    """
    prob = _np64(pred_prob)
    gtm = _npbool(gt_bool)
    if prob.shape != gtm.shape:
        raise ValueError(f"pred_prob and gt_bool must have the same shape, got {prob.shape} and {gtm.shape}")
    pm = prob > threshold
    inter = int(np.count_nonzero(pm & gtm))
    union = int(np.count_nonzero(pm | gtm))
    denom = int(np.count_nonzero(pm)) + int(np.count_nonzero(gtm))
    if union == 0:
        iou = f1 = 1.0
    else:
        iou, f1 = inter / union, 2.0 * inter / denom
    return {"iou": float(iou), "f1": float(f1), "pixels": int(prob.size)}
