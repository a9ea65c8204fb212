"""The planner's architecture, apart from training, data and report settings (as nanoGPT's ``GPTConfig``).

``PlannerConfig.from_params(params.planner)`` is the only place the params section reaches the model; training
keys (epochs, lr, ...), loader keys (num_workers, image_cache_mb) and report keys (figure_samples) never do.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.common.params import ConfigError, config_from_section


@dataclass(frozen=True)
class PlannerConfig:
    num_cameras: int = 1            # cameras per frame (planner.cameras)
    frames: int = 4                 # current + previous key frames
    img_size: int = 128             # square input side; pixels past the last whole patch are dropped
    patch_size: int = 14
    embed_dim: int = 128
    depth: int = 2
    num_heads: int = 2
    mlp_ratio: float = 4.0
    use_rope: bool = True           # 2-D RoPE (row, col) in the encoder; false: learnt absolute embeddings
    rope_theta: float = 100.0
    use_2x2_compression: bool = True
    compression_hidden_dim: int = 0  # 0 = 4 * embed_dim
    compression_num_layers: int = 2
    odd_grid: str = "pad"           # pad | crop
    decoder_dim: int = 128
    decoder_heads: int = 2
    decoder_layers: int = 2
    future_steps: int = 6
    dt: float = 0.5
    use_ego_status: bool = True
    ego_status_dim: int = 5
    route_dim: int = 0              # width of the route features added to the queries (0 = none)
    ego_path: str = "queries"       # queries | residual (waypoints = an ego path module's + a decoded correction)
    #                                 | fused (waypoints = an ego path module over [ego features, perceived corridor])
    perception_dim: int = 0         # outputs of the perception head (models/planner/perception.py); 0 = no head

    def __post_init__(self) -> None:
        def fail(key: str, why: str):
            raise ConfigError("PlannerConfig", key, getattr(self, key), why)

        for key in ("num_cameras", "frames", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
                    "compression_num_layers", "decoder_dim", "decoder_heads", "decoder_layers", "future_steps",
                    "ego_status_dim"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        if self.route_dim < 0:
            fail("route_dim", "must be >= 0")
        if self.ego_path not in ("queries", "residual", "fused"):
            fail("ego_path", "must be queries, residual or fused")
        if self.perception_dim < 0:
            fail("perception_dim", "must be >= 0")
        if self.ego_path == "fused" and not self.perception_dim:
            fail("ego_path", "fused reads the perception head's outputs: perception_dim must be >= 1")
        if self.compression_hidden_dim < 0:
            fail("compression_hidden_dim", "must be >= 0 (0 = 4 * embed_dim)")
        if self.img_size < self.patch_size:
            fail("img_size", f"smaller than planner.patch_size = {self.patch_size}: not one patch fits")
        if self.embed_dim % self.num_heads:
            fail("embed_dim", f"must be divisible by planner.num_heads = {self.num_heads}")
        if self.use_rope and (self.embed_dim // self.num_heads) % 4:
            fail("num_heads", f"2-D RoPE needs a head width (embed_dim / num_heads = "
                              f"{self.embed_dim // self.num_heads}) divisible by 4")
        if self.decoder_dim % self.decoder_heads:
            fail("decoder_dim", f"must be divisible by planner.decoder_heads = {self.decoder_heads}")
        if self.odd_grid not in ("pad", "crop"):
            fail("odd_grid", "must be pad or crop")
        if self.use_2x2_compression and self.odd_grid == "crop" and self.grid < 2:
            fail("odd_grid", "crop leaves no token of a 1x1 patch grid (use pad or a larger img_size)")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @classmethod
    def from_params(cls, p, route_points: int = 0) -> "PlannerConfig":
        """The architecture keys of a ``PlannerParams`` section (errors name ``planner.<key>``); ``route_points``:
        points per sample of the cache's route_points (sizes the route input of ``planner.route_input``).
        The perception head exists with ``perception_weight > 0`` or ``ego_path = fused``."""
        from models.planner.ego_mlp import route_dim
        from models.planner.perception import PERCEPTION_TARGETS

        head = p.perception_weight > 0 or p.ego_path == "fused"
        return config_from_section(cls, "planner", p, num_cameras=len(p.cameras),
                                   route_dim=route_dim(p.route_input, route_points),
                                   perception_dim=len(PERCEPTION_TARGETS) if head else 0)
