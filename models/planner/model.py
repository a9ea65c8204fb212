"""ViT Planner V2 (shared/seeds/planner_v2.md): encoder, connector, decoder and head on ``models/layers``.

    frames (B, T, N, 3, H, W)                       T = planner.frames, N = len(planner.cameras), H = W = img_size
      -> VisionEncoderV2: patch embed (conv, stride = patch) + time_embed (+ camera_embed) [+ abs. spatial pos]
         -> `depth` pre-LN self-attention blocks over all T*N*G*G tokens, 2-D RoPE on (row, col) of each patch
      -> ConnectorV2: per frame and camera, each 2x2 block of neighbouring patches concatenated (4D) and mapped
         by an MLP to decoder_dim (or a plain linear projection without compression)
      -> PlannerDecoder: one learnable query per future step; self-attention over the queries, cross-attention
         to the connector tokens (+ one optional ego-status token), MLP
      -> VelocityHeadUnit: per-step velocity (vx, vy) in m/s, waypoints = cumsum(velocity * dt) (ego frame, m)

Choices the seed leaves open (stated here, used everywhere):
- img_size not a multiple of patch_size: the conv patch embed drops the pixels past the last whole patch
  (128 px -> 9x9 patches covering 126 px). V1's 518 px is exactly 37x37.
- odd patch grids under 2x2 compression: ``odd_grid: pad`` (default) appends a zero row and column at the
  bottom/right (9x9 -> 10x10 -> 5x5 tokens, every patch kept; a pad slot contributes zeros to its block's
  concatenation); ``odd_grid: crop`` drops the last row and column as the seed's "9x9 -> about 4x4" (4x4 tokens).
- 2-D RoPE (``models.layers.RotaryEmbedding2D``): the first half of a head is rotated by the patch row, the
  second by the patch column (rotate-half pairing, frequencies rope_theta^(-2i/half) per axis); patch (0, 0) sits
  at position (0, 0) (there are no special tokens). Time has no rotation; it is the learnable ``time_embed``
  added to every patch of a frame (and ``camera_embed`` per camera).
- All frames and cameras attend jointly (one sequence of T*N*G*G tokens per sample).
- ego status (optional, ``use_ego_status``): a (B, ego_status_dim) vector, standardised (train-split statistics
  kept as buffers), linearly projected and added to every decoder query (a memory token was tried first: the
  queries learnt to ignore it, val L2 stayed at the mean-trajectory level).
- route (optional, ``route_dim > 0``): the honest route features (``ego_mlp.route_features``), linearly projected
  and added to every decoder query.
- ego path (``ego_path``): ``queries`` is the above alone. ``residual``: an ego-path module (the stage passes the
  trained Ego-MLP, frozen unless ``ego_path_trainable``) gives base waypoints (B, S, 2) from ego features; each
  step's base waypoint (/ 10 m) is linearly embedded and added to its query, and the head's output (zero-initialised,
  so training starts from the Ego-MLP exactly) is a correction: waypoints = base + correction. Measured on the
  synthetic world: the seed path is worse than a plain MLP on the same ego inputs (docs/planner.md).
  ``fused``: no decoder; waypoints = the ego-path module (an Ego-MLP trained with the planner) over the ego
  features concatenated with the perception head's outputs, so what the images show enters through a few values.
- perception head (``perception_dim > 0``): the current frame's connector tokens (all cameras), flattened in their
  fixed order (so absolute image position counts), -> Linear -> GELU -> Linear -> ``perception_dim`` values,
  trained towards the cache's corridor targets (models/planner/perception.py) by the auxiliary loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Block, CrossBlock, PatchEmbed, RotaryEmbedding2D, grid_positions, linear_stack
from models.planner.config import PlannerConfig


# --------------------------------------------------------------------------------------------------
# Vision encoder
# --------------------------------------------------------------------------------------------------


class VisionEncoderV2(nn.Module):
    """(B, T, N, 3, H, W) -> patch tokens (B, T, N, G, G, D), G = img_size // patch_size."""

    def __init__(self, c: PlannerConfig):
        super().__init__()
        self.c = c
        self.grid = c.grid
        self.patch_embed = PatchEmbed(c.patch_size, 3, c.embed_dim)
        self.time_embed = nn.Parameter(torch.zeros(c.frames, c.embed_dim))          # (T, D)
        self.camera_embed = nn.Parameter(torch.zeros(c.num_cameras, c.embed_dim))   # (N, D)
        # absolute spatial positions only without RoPE
        self.pos_embed = None if c.use_rope else nn.Parameter(torch.zeros(self.grid * self.grid, c.embed_dim))
        rope = RotaryEmbedding2D(c.rope_theta) if c.use_rope else None
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, rope=rope) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, n, c, h, w = frames.shape
        g, d = self.grid, self.c.embed_dim
        x = self.patch_embed(frames.reshape(b * t * n, c, h, w))        # (B*T*N, P, D), P = G*G row-major
        x = x.reshape(b, t, n, g * g, d)
        x = x + self.time_embed[None, :, None, None, :] + self.camera_embed[None, None, :, None, :]
        pos = None
        if self.pos_embed is not None:
            x = x + self.pos_embed                                       # (P, D) broadcast
        else:
            pos = grid_positions(g, g, repeats=t * n, device=x.device)   # (L, 2) (row, col)
        x = x.reshape(b, t * n * g * g, d)                               # (B, L, D), L = T*N*P
        for block in self.blocks:
            x = block(x, pos)
        return self.norm(x).reshape(b, t, n, g, g, d)                    # (B, T, N, G, G, D)


# --------------------------------------------------------------------------------------------------
# Connector
# --------------------------------------------------------------------------------------------------


def compressed_grid(grid: int, odd_grid: str) -> int:
    """Side of the token grid after 2x2 compression: ceil(G/2) with pad, floor(G/2) with crop."""
    return (grid + 1) // 2 if odd_grid == "pad" else grid // 2


class PatchCompressor2x2(nn.Module):
    """(M, G, G, D) -> (M, G', G', D_out): each 2x2 block concatenated ([a, b; c, d] -> [a, b, c, d], 4D) -> MLP."""

    def __init__(self, dim: int, out_dim: int, hidden_dim: int, num_layers: int, odd_grid: str):
        super().__init__()
        self.odd_grid = odd_grid
        self.mlp = linear_stack([4 * dim] + [hidden_dim or 4 * dim] * (num_layers - 1) + [out_dim], nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, g, _, d = x.shape
        if g % 2:
            if self.odd_grid == "pad":
                x = F.pad(x, (0, 0, 0, 1, 0, 1))                  # (M, G+1, G+1, D): zero col right, row below
            else:
                x = x[:, : g - 1, : g - 1]                         # (M, G-1, G-1, D): last row and col dropped
        h2 = x.shape[1] // 2
        x = x.reshape(m, h2, 2, h2, 2, d).permute(0, 1, 3, 2, 4, 5)  # (M, G', G', 2, 2, D)
        return self.mlp(x.reshape(m, h2, h2, 4 * d))                 # (M, G', G', D_out)


class ConnectorV2(nn.Module):
    """Encoder tokens (B, T, N, G, G, D) -> decoder memory (B, T*N*G'*G', D_out)."""

    def __init__(self, c: PlannerConfig):
        super().__init__()
        if c.use_2x2_compression:
            self.proj = PatchCompressor2x2(c.embed_dim, c.decoder_dim, c.compression_hidden_dim,
                                           c.compression_num_layers, c.odd_grid)
        else:
            self.proj = nn.Linear(c.embed_dim, c.decoder_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, g, _, d = x.shape
        y = self.proj(x.reshape(b * t * n, g, g, d))                   # (B*T*N, G', G', D_out)
        return y.reshape(b, -1, y.shape[-1])                           # (B, T*N*G'*G', D_out)


# --------------------------------------------------------------------------------------------------
# Decoder and velocity head
# --------------------------------------------------------------------------------------------------


class PlannerDecoder(nn.Module):
    """future_steps learnable queries (S, D) attend to the memory (B, M, D) -> (B, S, D).

    Each block: self-attention over the queries, cross-attention to the memory, MLP (``models.layers.CrossBlock``)."""

    def __init__(self, c: PlannerConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(c.future_steps, c.decoder_dim))
        self.blocks = nn.ModuleList(CrossBlock(c.decoder_dim, c.decoder_heads, c.mlp_ratio)
                                    for _ in range(c.decoder_layers))
        self.norm = nn.LayerNorm(c.decoder_dim)

    def forward(self, memory: torch.Tensor, query_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.queries.expand(memory.shape[0], -1, -1)   # (B, S, D)
        if query_bias is not None:                         # (B, D) for every query (the embedded ego status) or
            x = x + (query_bias[:, None] if query_bias.dim() == 2 else query_bias)  # (B, S, D) per query
        for block in self.blocks:
            x = block(x, memory)
        return self.norm(x)


class PerceptionHead(nn.Module):
    """Memory (B, M, D) -> (B, K): the last ``tokens`` memory tokens (the current frame's) flattened -> MLP -> K
    standardised values; ``target_mean`` / ``target_std`` (buffers, the training targets' statistics, saved with
    the weights) map them back with :meth:`unstandardise`."""

    def __init__(self, tokens: int, dim: int, out_dim: int):
        super().__init__()
        self.tokens = tokens
        self.mlp = linear_stack([tokens * dim, dim, out_dim], nn.GELU)
        self.register_buffer("target_mean", torch.zeros(out_dim))
        self.register_buffer("target_std", torch.ones(out_dim))

    def set_target_normalization(self, mean, std) -> None:
        self.target_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.target_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def unstandardise(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.target_std + self.target_mean

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        return self.mlp(memory[:, -self.tokens:].flatten(1))


def integrate_velocities(velocities: torch.Tensor, dt: float) -> torch.Tensor:
    """Waypoints (B, S, 2) = cumulative sum over steps of velocity (B, S, 2) * dt, starting from the ego origin."""
    return torch.cumsum(velocities * dt, dim=1)


class VelocityHeadUnit(nn.Module):
    """Per-step features (B, S, D) -> velocities (B, S, 2) m/s -> waypoints (B, S, 2) m (cumsum of v * dt)."""

    def __init__(self, dim: int, dt: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, 2)
        self.dt = dt

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        velocities = self.fc2(F.gelu(self.fc1(x)))               # (B, S, 2)
        return velocities, integrate_velocities(velocities, self.dt)


# --------------------------------------------------------------------------------------------------
# The planner
# --------------------------------------------------------------------------------------------------


class ViTPlannerV2(nn.Module):
    """forward(frames, ego_status=None, route=None, ego_features=None) -> {"waypoints": (B, S, 2),
    "velocities": (B, S, 2)} (+ "base": (B, S, 2) the ego path's waypoints with ``ego_path = residual``;
    + "perception": (B, K) with a perception head; ``ego_path = fused``: "waypoints" and "perception" only).

    frames: (B, T, 3, H, W) with one camera, or (B, T, N, 3, H, W) with N = c.num_cameras (planner.cameras order);
    float (already normalised) or uint8 pixels, mapped to [-1, 1];
    T = c.frames (oldest first is the convention; time_embed is learnt per index), H = W = c.img_size.
    ego_status: (B, c.ego_status_dim), required when c.use_ego_status, refused otherwise.
    route: (B, c.route_dim), required when c.route_dim > 0, refused otherwise.
    ego_features: the ego path module's input (B, D_ego), required with ``ego_path`` residual or fused, refused
    otherwise; fused refuses ego_status and route (they are inside ego_features).
    ``ego_path``: the residual's ego-state module, ``forward(ego_features) -> {"waypoints": (B, S, 2)}``.
    """

    def __init__(self, c: PlannerConfig, ego_path: nn.Module | None = None):
        super().__init__()
        if not isinstance(c, PlannerConfig):
            raise TypeError(f"ViTPlannerV2 takes a PlannerConfig (PlannerConfig.from_params(params)), got "
                            f"{type(c).__name__}")
        self.c = p = c
        self.fused = fused = p.ego_path == "fused"
        self.encoder = VisionEncoderV2(p)
        self.connector = ConnectorV2(p)
        self.perception = (PerceptionHead(self.num_memory_tokens // p.frames, p.decoder_dim, p.perception_dim)
                           if p.perception_dim else None)
        self.ego_proj = nn.Linear(p.ego_status_dim, p.decoder_dim) if p.use_ego_status and not fused else None
        if p.use_ego_status:  # standardisation of the ego status (train-set statistics, saved with the weights)
            self.register_buffer("ego_mean", torch.zeros(p.ego_status_dim))
            self.register_buffer("ego_std", torch.ones(p.ego_status_dim))
        self.route_proj = nn.Linear(p.route_dim, p.decoder_dim) if p.route_dim and not fused else None
        self.base_proj = nn.Linear(2, p.decoder_dim) if p.ego_path == "residual" else None
        self.decoder = None if fused else PlannerDecoder(p)
        self.head = None if fused else VelocityHeadUnit(p.decoder_dim, p.dt)
        self.apply(self._init_weights)
        for param in (self.encoder.time_embed, self.encoder.camera_embed, self.encoder.pos_embed,
                      None if fused else self.decoder.queries):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)
        if p.ego_path == "residual":  # the correction starts at 0: the planner starts as its ego path
            nn.init.zeros_(self.head.fc2.weight)
            nn.init.zeros_(self.head.fc2.bias)
        if (ego_path is not None) != (p.ego_path != "queries"):
            raise ValueError(f"ego_path = {p.ego_path!r} needs an ego path module exactly when it is 'residual' or "
                             f"'fused'; got {type(ego_path).__name__}")
        self.ego_path = ego_path  # registered after init: its own (e.g. trained) weights are kept

    def set_ego_normalization(self, mean, std) -> None:
        """Standardise the ego status by these (ego_status_dim,) statistics (use the train split's)."""
        self.ego_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.ego_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def head_dtype(self) -> torch.dtype:
        return self.encoder.time_embed.dtype

    @property
    def num_memory_tokens(self) -> int:
        p, g = self.c, self.encoder.grid
        per_frame = compressed_grid(g, p.odd_grid) ** 2 if p.use_2x2_compression else g * g
        return p.frames * p.num_cameras * per_frame

    def forward(self, frames: torch.Tensor, ego_status: torch.Tensor | None = None, route: torch.Tensor | None = None,
                ego_features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        p = self.c
        if frames.dim() == 5:
            frames = frames.unsqueeze(2)                             # (B, T, 1, 3, H, W)
        expected = (p.frames, p.num_cameras, 3, p.img_size, p.img_size)
        if frames.dim() != 6 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must be (B, T, 3, H, W) or (B, T, N, 3, H, W) with (T, N, 3, H, W) = "
                             f"{expected} (frames, cameras, img_size); got {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:                              # raw pixels -> [-1, 1]
            frames = frames.to(self.head_dtype) / 127.5 - 1.0
        memory = self.connector(self.encoder(frames))                # (B, M, D_dec)
        perceived = self.perception(memory) if self.perception is not None else None   # (B, K)
        if self.fused:
            if ego_status is not None or route is not None:
                raise ValueError("ego_path fused: ego status and route reach the planner through ego_features only")
            if ego_features is None:
                raise ValueError("ego_path fused: ego_features (the ego path's input) are required")
            fused_in = torch.cat([ego_features.to(memory.dtype), perceived], dim=1)  # (B, D_ego + K)
            waypoints = self.ego_path(fused_in)["waypoints"].to(memory.dtype)    # (B, S, 2)
            return {"waypoints": waypoints, "perception": perceived}
        query_bias = None
        if p.use_ego_status:
            if ego_status is None or tuple(ego_status.shape) != (frames.shape[0], p.ego_status_dim):
                got = None if ego_status is None else tuple(ego_status.shape)
                raise ValueError(f"use_ego_status: ego_status must be (B, {p.ego_status_dim}); got {got}")
            ego = (ego_status.to(memory.dtype) - self.ego_mean) / self.ego_std
            query_bias = self.ego_proj(ego)                          # (B, D_dec), added to every query
        elif ego_status is not None:
            raise ValueError("ego_status given but planner.use_ego_status is false")
        if p.route_dim:
            if route is None or tuple(route.shape) != (frames.shape[0], p.route_dim):
                raise ValueError(f"route_input: route must be (B, {p.route_dim}); got "
                                 f"{None if route is None else tuple(route.shape)}")
            r = self.route_proj(route.to(memory.dtype))                 # (B, D_dec)
            query_bias = r if query_bias is None else query_bias + r
        elif route is not None:
            raise ValueError("route given but planner.route_input is none")
        if p.ego_path == "residual":
            if ego_features is None:
                raise ValueError("ego_path residual: ego_features (the ego path's input) are required")
            base = self.ego_path(ego_features)["waypoints"].to(memory.dtype)       # (B, S, 2)
            per_step = self.base_proj(base / 10.0)                       # (B, S, D_dec)
            query_bias = per_step if query_bias is None else query_bias[:, None] + per_step
        elif ego_features is not None:
            raise ValueError("ego_features given but planner.ego_path is not residual")
        velocities, waypoints = self.head(self.decoder(memory, query_bias))  # (B, S, 2) each
        out = {"waypoints": waypoints, "velocities": velocities}
        if p.ego_path == "residual":
            out.update(waypoints=base + waypoints, base=base)
        if perceived is not None:
            out["perception"] = perceived
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


__all__ = [
    "ConnectorV2",
    "PatchCompressor2x2",
    "PerceptionHead",
    "PlannerDecoder",
    "VelocityHeadUnit",
    "ViTPlannerV2",
    "VisionEncoderV2",
    "compressed_grid",
    "count_parameters",
    "integrate_velocities",
]
