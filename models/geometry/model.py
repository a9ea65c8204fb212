"""``GeometryModel`` (vggt_t_mv): the temporal multi-view aggregator and VGGT's heads.

Output of ``forward(images [B, T, V, 3, H, W] in [0, 1], external_mask=None, return_tokens=False, intrinsics=None,
cam_to_ref=None)`` (calibration for the epipolar prior: :class:`~models.geometry.aggregator.Aggregator`; S = T * V
frames in (t, v) order; the reference frame is (0, 0)):

| key | shape | meaning |
| --- | --- | --- |
| ``pose_enc`` | [B, T, V, 9] | last refinement of VGGT's ``absT_quaR_FoV`` (translation, quaternion xyzw, FoV h, w) |
| ``pose_enc_list`` | list of [B, T, V, 9] | every refinement iteration (for the camera loss) |
| ``extrinsics`` | [B, T, V, 3, 4] | camera-from-world (OpenCV axes), world = the reference camera |
| ``intrinsics`` | [B, T, V, 3, 3] | principal point at the image centre |
| ``depth``, ``depth_conf`` | [B, T, V, H, W, 1], [B, T, V, H, W] | depth (exp) and confidence (1 + exp) |
| ``world_points``, ``world_points_conf`` | [B, T, V, H, W, 3], [B, T, V, H, W] | points (inv_log) and confidence |
| ``mask_logits``, ``mask`` | [B, T, V, P, 1] | M~ and the fused M (P = (H/14) (W/14) patches, row-major) |
| ``tokens`` (``return_tokens``) | dict pose / geo: lists of [B, S, N, 2C] | every layer's output per stream |

The camera head reads the pose stream, the DPT heads the geometry stream, at :attr:`GeometryConfig.dpt_layers`.
"""
from __future__ import annotations

import torch
from torch import nn

from .aggregator import Aggregator
from .config import GeometryConfig
from .heads import CameraHead, vggt_depth_head, vggt_point_head
from .pose_encoding import pose_encoding_to_extri_intri


class GeometryModel(nn.Module):
    def __init__(self, cfg: GeometryConfig):
        super().__init__()
        if not isinstance(cfg, GeometryConfig):
            raise TypeError(f"GeometryModel takes a GeometryConfig (GeometryConfig.from_params(params.geometry)), "
                            f"got {type(cfg).__name__}")
        self.cfg = cfg
        self.aggregator = Aggregator(cfg)
        dim_in = 2 * cfg.embed_dim
        self.camera_head = CameraHead(dim_in=dim_in, trunk_depth=cfg.camera_trunk_depth, num_heads=cfg.num_heads,
                                      num_iterations=cfg.camera_iterations)
        dense = dict(dim_in=dim_in, patch_size=cfg.patch_size, features=cfg.dpt_features,
                     out_channels=tuple(cfg.dpt_out_channels), intermediate_layer_idx=cfg.dpt_layers)
        self.depth_head = vggt_depth_head(**dense)
        self.point_head = vggt_point_head(**dense)

    def forward(self, images: torch.Tensor, external_mask: torch.Tensor | None = None,
                return_tokens: bool = False, intrinsics: torch.Tensor | None = None,
                cam_to_ref: torch.Tensor | None = None) -> dict:
        agg = self.aggregator(images, external_mask, intrinsics, cam_to_ref)
        B, T, V = agg["shape"]
        frames = images.reshape(B, T * V, *images.shape[-3:])                        # [B, S, 3, H, W]
        H, W = frames.shape[-2:]
        poses = [p.view(B, T, V, -1) for p in self.camera_head(agg["pose"])]        # each [B, T, V, 9]
        extri, intri = pose_encoding_to_extri_intri(poses[-1].reshape(B, T * V, -1), (H, W))
        depth, depth_conf = self.depth_head(agg["geo"], frames, agg["patch_start_idx"])
        points, points_conf = self.point_head(agg["geo"], frames, agg["patch_start_idx"])

        def grid(x):
            return x.view(B, T, V, *x.shape[2:])

        out = {"pose_enc": poses[-1], "pose_enc_list": poses, "extrinsics": grid(extri), "intrinsics": grid(intri),
               "depth": grid(depth), "depth_conf": grid(depth_conf), "world_points": grid(points),
               "world_points_conf": grid(points_conf),
               "mask_logits": None if agg["mask"] is None else agg["mask_logits"][..., None],
               "mask": None if agg["mask"] is None else agg["mask"][..., None]}
        if return_tokens:
            out["tokens"] = {"pose": agg["pose"], "geo": agg["geo"]}
        return out
