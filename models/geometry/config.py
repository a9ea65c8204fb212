"""The geometry model's architecture (as nanoGPT's ``GPTConfig``): ``GeometryConfig.from_params(params.geometry)``.

Defaults are the pipeline's tiny CPU size; :func:`full_size` gives the seeds' size (DINOv2 ViT-L/14 reg4 encoder,
24 Time-SA + 24 View-SA blocks of width 1024 with 16 heads, 518 px, VGGT heads), which the tests build on the
``meta`` device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from models.common.params import ConfigError, config_from_section

ATTENTION_KINDS = ("time", "view")
TWO_STREAM = ("shared", "separate", "off")
VGGT_HEAD_LAYERS = (4, 11, 17, 23)     # the DPT heads' layers in a 24-layer VGGT
PI3_PAIRS = 18                          # of 24: Time-SA / View-SA layers initialised from Pi3's decoder


@dataclass(frozen=True)
class GeometryConfig:
    img_size: int = 112                 # the encoder's built size (pos_embed grid); other inputs interpolate
    patch_size: int = 14
    embed_dim: int = 64                 # encoder and aggregator width (VGGT: 1024)
    num_heads: int = 4                  # (VGGT: 16)
    mlp_ratio: float = 4.0
    encoder_depth: int = 2              # DINOv2 blocks (ViT-L: 24)
    depth: int = 4                      # Time-SA + View-SA layers (VGGT: 24)
    num_register_tokens: int = 4
    rope_theta: float = 100.0
    time_rope: bool = False             # relative time rotation in Time-SA (off: the sources never saw it)
    time_rope_theta: float = 100.0
    aa_order: tuple = ("time", "view")  # Pi3 runs frame (-> time) before global (-> view)
    pi3_layers: int = 3                 # layers whose blocks come from Pi3 (LayerNorm eps 1e-6); the rest PAGE-4D
    mask_layer: int | None = None       # first two-stream layer; the mask head reads Time-SA of the layer before
    mask_head: str = "eval"             # PAGE-4D mask head variant: eval | official
    mask_hidden_dim: int = 16           # official variant's pointwise width (PAGE-4D: 256)
    mask_gating: str = "scalar"         # scalar | mlp
    two_stream: str = "shared"          # shared | separate | off
    head_layers: tuple | None = None    # layers the DPT heads read; None = VGGT's [4, 11, 17, 23] scaled to depth
    camera_trunk_depth: int = 2         # VGGT: 4
    camera_iterations: int = 2          # VGGT: 4
    dpt_features: int = 32              # VGGT: 256
    dpt_out_channels: tuple = (16, 32, 64, 64)   # VGGT: 256, 512, 1024, 1024
    global_every: int = 0               # a sparse global attention block after every k-th layer (0 = off)
    global_strategy: str = "landmarks"  # landmarks (top-K patches by the mask) | dilated (strided grid) | memory
    global_landmarks: int = 8           # landmarks: patches per frame (full: 64)
    global_stride: int = 2              # dilated: every stride-th patch row and column
    global_memory: int = 16             # memory: learnable memory tokens (full: 256)
    use_mask: bool = True               # run the mask head and bias the streams with M
    epipolar: bool = False              # epipolar prior in View-SA when calibration is given (strength init 0)
    epipolar_sigma: float = 0.0         # pixels; 0 = the patch size
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        def fail(key: str, why: str):
            raise ConfigError("GeometryConfig", key, getattr(self, key), why)

        for key in ("img_size", "patch_size", "embed_dim", "num_heads", "encoder_depth", "depth",
                    "num_register_tokens", "mask_hidden_dim", "camera_trunk_depth", "camera_iterations",
                    "dpt_features"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        if self.img_size % self.patch_size:
            fail("img_size", f"must be a multiple of geometry.patch_size = {self.patch_size}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            fail("num_heads", f"embed_dim / num_heads = {self.embed_dim / self.num_heads:g} must be an integer "
                              "divisible by 4 (2-D RoPE)")
        if sorted(self.aa_order) != sorted(ATTENTION_KINDS):
            fail("aa_order", f"must order both of {ATTENTION_KINDS} once each")
        if not 0 <= self.pi3_layers <= self.depth:
            fail("pi3_layers", f"must be within 0..geometry.depth = {self.depth}")
        if not 1 <= self.layer_of_mask <= self.depth - 1:
            fail("mask_layer", f"must be within 1..{self.depth - 1} (geometry.depth = {self.depth}): the mask head "
                               f"reads Time-SA of layer mask_layer - 1 and two streams run from mask_layer on")
        if self.mask_head not in ("eval", "official"):
            fail("mask_head", "must be eval or official (PAGE-4D's two mask heads)")
        if self.mask_gating not in ("scalar", "mlp"):
            fail("mask_gating", "must be scalar or mlp")
        if self.two_stream not in TWO_STREAM:
            fail("two_stream", f"must be one of {TWO_STREAM}")
        if self.epipolar_sigma < 0:
            fail("epipolar_sigma", "must be >= 0 pixels (0 = the patch size)")
        if self.global_every < 0:
            fail("global_every", "must be >= 0 (0 = no sparse global attention)")
        if self.global_strategy not in ("landmarks", "dilated", "memory"):
            fail("global_strategy", "must be landmarks, dilated or memory")
        for key in ("global_landmarks", "global_stride", "global_memory"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        if len(self.dpt_out_channels) != 4 or any(c < 1 for c in self.dpt_out_channels):
            fail("dpt_out_channels", "must be four positive widths")
        layers = self.dpt_layers
        if len(layers) != 4 or any(not 0 <= i < self.depth for i in layers) or list(layers) != sorted(layers):
            fail("head_layers", f"must be four non-decreasing layer indices within 0..{self.depth - 1}")

    @property
    def global_layers(self) -> tuple[int, ...]:
        """Layers followed by a sparse global block: every ``global_every``-th (1-based), none when 0."""
        return tuple(i for i in range(self.depth) if self.global_every and (i + 1) % self.global_every == 0)

    @property
    def layer_of_mask(self) -> int:
        return self.mask_layer if self.mask_layer is not None else max(1, self.depth // 3)

    @property
    def dpt_layers(self) -> tuple[int, ...]:
        """VGGT reads layers 4, 11, 17, 23 of 24: the same fractions of ``depth`` (the last layer always)."""
        if self.head_layers is not None:
            return tuple(int(i) for i in self.head_layers)
        return tuple(max(0, round((i + 1) * self.depth / 24) - 1) for i in VGGT_HEAD_LAYERS)

    def layer_norm_eps(self, layer: int) -> float:
        """Pi3's blocks were trained with LayerNorm eps 1e-6, VGGT/PAGE-4D's with 1e-5 (checkpoints.md §4)."""
        return 1e-6 if layer < self.pi3_layers else 1e-5

    @classmethod
    def from_params(cls, params) -> "GeometryConfig":
        return config_from_section(cls, "geometry", params)


def full_size(**overrides) -> GeometryConfig:
    """The seeds' size: ViT-L/14 reg4 at 518 px, 24 + 24 blocks of 1024 / 16 heads, VGGT's heads."""
    base = dict(img_size=518, embed_dim=1024, num_heads=16, encoder_depth=24, depth=24, pi3_layers=PI3_PAIRS,
                mask_layer=8, mask_hidden_dim=256, camera_trunk_depth=4, camera_iterations=4, dpt_features=256,
                dpt_out_channels=(256, 512, 1024, 1024))
    return dataclasses.replace(GeometryConfig(), **{**base, **overrides})
