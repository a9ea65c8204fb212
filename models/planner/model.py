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
        if query_bias is not None:                         # (B, D), e.g. the embedded ego status
            x = x + query_bias[:, None]
        for block in self.blocks:
            x = block(x, memory)
        return self.norm(x)


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
    """forward(frames, ego_status=None) -> {"waypoints": (B, S, 2), "velocities": (B, S, 2)}.

    frames: (B, T, 3, H, W) with one camera, or (B, T, N, 3, H, W) with N = c.num_cameras (planner.cameras order);
    float (already normalised) or uint8 pixels, mapped to [-1, 1];
    T = c.frames (oldest first is the convention; time_embed is learnt per index), H = W = c.img_size.
    ego_status: (B, c.ego_status_dim), required when c.use_ego_status, refused otherwise.
    """

    def __init__(self, c: PlannerConfig):
        super().__init__()
        if not isinstance(c, PlannerConfig):
            raise TypeError(f"ViTPlannerV2 takes a PlannerConfig (PlannerConfig.from_params(params)), got "
                            f"{type(c).__name__}")
        self.c = p = c
        self.encoder = VisionEncoderV2(p)
        self.connector = ConnectorV2(p)
        self.ego_proj = nn.Linear(p.ego_status_dim, p.decoder_dim) if p.use_ego_status else None
        if p.use_ego_status:  # standardisation of the ego status (train-set statistics, saved with the weights)
            self.register_buffer("ego_mean", torch.zeros(p.ego_status_dim))
            self.register_buffer("ego_std", torch.ones(p.ego_status_dim))
        self.decoder = PlannerDecoder(p)
        self.head = VelocityHeadUnit(p.decoder_dim, p.dt)
        self.apply(self._init_weights)
        for param in (self.encoder.time_embed, self.encoder.camera_embed, self.encoder.pos_embed,
                      self.decoder.queries):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)

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
        return self.decoder.queries.dtype

    @property
    def num_memory_tokens(self) -> int:
        p, g = self.c, self.encoder.grid
        per_frame = compressed_grid(g, p.odd_grid) ** 2 if p.use_2x2_compression else g * g
        return p.frames * p.num_cameras * per_frame

    def forward(self, frames: torch.Tensor, ego_status: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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
        query_bias = None
        if p.use_ego_status:
            if ego_status is None or tuple(ego_status.shape) != (frames.shape[0], p.ego_status_dim):
                got = None if ego_status is None else tuple(ego_status.shape)
                raise ValueError(f"use_ego_status: ego_status must be (B, {p.ego_status_dim}); got {got}")
            ego = (ego_status.to(memory.dtype) - self.ego_mean) / self.ego_std
            query_bias = self.ego_proj(ego)                          # (B, D_dec), added to every query
        elif ego_status is not None:
            raise ValueError("ego_status given but planner.use_ego_status is false")
        velocities, waypoints = self.head(self.decoder(memory, query_bias))  # (B, S, 2) each
        return {"waypoints": waypoints, "velocities": velocities}


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


__all__ = [
    "ConnectorV2",
    "PatchCompressor2x2",
    "PlannerDecoder",
    "VelocityHeadUnit",
    "ViTPlannerV2",
    "VisionEncoderV2",
    "compressed_grid",
    "count_parameters",
    "integrate_velocities",
]
