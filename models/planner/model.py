"""ViT Planner V2 (shared/seeds/planner_v2.md) in one file: RoPE, blocks, encoder, connector, decoder, head.

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
- 2-D RoPE: the head width is split in two halves; the first half is rotated by the patch row, the second by
  the patch column (rotate-half pairing, frequencies rope_theta^(-2i/half) per axis). Time has no rotation; it
  is the learnable ``time_embed`` added to every patch of a frame (and ``camera_embed`` per camera).
- All frames and cameras attend jointly (one sequence of T*N*G*G tokens per sample).
- ego status (optional, ``use_ego_status``): a (B, ego_status_dim) vector, standardised (train-split statistics
  kept as buffers), linearly projected and added to every decoder query (a memory token was tried first: the
  queries learnt to ignore it, val L2 stayed at the mean-trajectory level).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common.params import PlannerParams

# --------------------------------------------------------------------------------------------------
# 2-D rotary position embedding
# --------------------------------------------------------------------------------------------------


def rope_1d_angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """Angles (L, dim) for positions (L,): pairs (i, i + dim/2) share the frequency theta^(-2i/dim)."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)  # (dim/2,)
    ang = pos.to(torch.float32)[:, None] * inv_freq[None, :]                                      # (L, dim/2)
    return torch.cat((ang, ang), dim=-1)                                                          # (L, dim)


def rope_2d_cos_sin(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float):
    """cos, sin (L, head_dim) for token positions (row, col): first half of the head by row, second by col."""
    half = head_dim // 2
    ang = torch.cat((rope_1d_angles(rows, half, theta), rope_1d_angles(cols, half, theta)), dim=-1)  # (L, hd)
    return ang.cos(), ang.sin()


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., L, head_dim) by the per-position angles; each half of the head rotates on its own axis.

    Equal to ``cat(x1 * c1 + rotate_half(x1) * s1, x2 * c2 + rotate_half(x2) * s2)`` for the halves x1 (row) and
    x2 (col), with rotate_half applied within each half, computed in one pass over the whole head."""
    q = x.unflatten(-1, (2, 2, x.shape[-1] // 4))                  # (..., L, axis, pair half, hd/4)
    rotated = torch.stack((-q[..., 1, :], q[..., 0, :]), dim=-2).flatten(-3)   # rotate_half within each axis
    return x * cos + rotated * sin


def grid_positions(grid: int, repeats: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of each token in ``repeats`` consecutive row-major grid x grid patch grids: two (repeats*G*G,)."""
    r = torch.arange(grid, device=device).repeat_interleave(grid)  # (G*G,) 0,0,..,1,1,..
    c = torch.arange(grid, device=device).repeat(grid)             # (G*G,) 0,1,..,0,1,..
    return r.repeat(repeats), c.repeat(repeats)


# --------------------------------------------------------------------------------------------------
# Blocks (pre-LN, attention through scaled_dot_product_attention)
# --------------------------------------------------------------------------------------------------


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, n_head, c // n_head).transpose(1, 2)  # (B, heads, L, head_dim)


def _merge(y: torch.Tensor) -> torch.Tensor:
    b, h, t, d = y.shape
    return y.transpose(1, 2).reshape(b, t, h * d)             # (B, L, heads*head_dim)


def linear_stack(widths: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear(widths[0] -> widths[1]) - activation - ... - Linear(widths[-2] -> widths[-1]) (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention; with ``rope`` = (cos, sin) of shape (L, head_dim), q and k are rotated."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:        # x (B, L, D)
        q, k, v = (_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, h, L, hd) each
        if rope is not None:
            q, k = apply_rope_2d(q, *rope), apply_rope_2d(k, *rope)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))  # (B, L, D)


class CrossAttention(nn.Module):
    """Queries from x (B, S, D), keys and values from memory (B, M, D)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = _heads(self.q(x), self.n_heads)                                        # (B, h, S, hd)
        k, v = (_heads(t, self.n_heads) for t in self.kv(memory).chunk(2, dim=-1))  # (B, h, M, hd)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))          # (B, S, D)


class EncoderBlock(nn.Module):
    """``x += attn(ln1(x), rope); x += mlp(ln2(x))``."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, rope=None):
        x = x + self.attn(self.ln1(x), rope)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """``q += self_attn(ln1(q)); q += cross_attn(ln2(q), memory); q += mlp(ln3(q))``."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, n_heads)
        self.ln2 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, n_heads)
        self.ln3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, memory):
        x = x + self.self_attn(self.ln1(x))
        x = x + self.cross_attn(self.ln2(x), memory)
        return x + self.mlp(self.ln3(x))


# --------------------------------------------------------------------------------------------------
# Vision encoder
# --------------------------------------------------------------------------------------------------


class VisionEncoderV2(nn.Module):
    """(B, T, N, 3, H, W) -> patch tokens (B, T, N, G, G, D), G = img_size // patch_size."""

    def __init__(self, p: PlannerParams):
        super().__init__()
        self.p = p
        self.grid = p.img_size // p.patch_size
        self.patch_embed = nn.Conv2d(3, p.embed_dim, kernel_size=p.patch_size, stride=p.patch_size)
        self.time_embed = nn.Parameter(torch.zeros(p.frames, p.embed_dim))           # (T, D)
        self.camera_embed = nn.Parameter(torch.zeros(len(p.cameras), p.embed_dim))   # (N, D)
        # absolute spatial positions only without RoPE
        self.pos_embed = None if p.use_rope else nn.Parameter(torch.zeros(self.grid * self.grid, p.embed_dim))
        self.blocks = nn.ModuleList(EncoderBlock(p.embed_dim, p.num_heads, p.mlp_ratio) for _ in range(p.depth))
        self.norm = nn.LayerNorm(p.embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, n, c, h, w = frames.shape
        g, d = self.grid, self.p.embed_dim
        x = self.patch_embed(frames.reshape(b * t * n, c, h, w))        # (B*T*N, D, G, G)
        x = x.flatten(2).transpose(1, 2).reshape(b, t, n, g * g, d)     # (B, T, N, P, D), P = G*G row-major
        x = x + self.time_embed[None, :, None, None, :] + self.camera_embed[None, None, :, None, :]
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed                                       # (P, D) broadcast
        else:
            rows, cols = grid_positions(g, t * n, device=x.device)       # (T*N*P,)
            rope = rope_2d_cos_sin(rows, cols, d // self.p.num_heads, self.p.rope_theta)  # (L, hd) each
            rope = (rope[0].to(x.dtype), rope[1].to(x.dtype))
        x = x.reshape(b, t * n * g * g, d)                               # (B, L, D), L = T*N*P
        for block in self.blocks:
            x = block(x, rope)
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

    def __init__(self, p: PlannerParams):
        super().__init__()
        if p.use_2x2_compression:
            self.proj = PatchCompressor2x2(p.embed_dim, p.decoder_dim, p.compression_hidden_dim,
                                           p.compression_num_layers, p.odd_grid)
        else:
            self.proj = nn.Linear(p.embed_dim, p.decoder_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, g, _, d = x.shape
        y = self.proj(x.reshape(b * t * n, g, g, d))                   # (B*T*N, G', G', D_out)
        return y.reshape(b, -1, y.shape[-1])                           # (B, T*N*G'*G', D_out)


# --------------------------------------------------------------------------------------------------
# Decoder and velocity head
# --------------------------------------------------------------------------------------------------


class PlannerDecoder(nn.Module):
    """future_steps learnable queries (S, D) attend to the memory (B, M, D) -> (B, S, D)."""

    def __init__(self, p: PlannerParams):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(p.future_steps, p.decoder_dim))
        self.blocks = nn.ModuleList(DecoderBlock(p.decoder_dim, p.decoder_heads, p.mlp_ratio)
                                    for _ in range(p.decoder_layers))
        self.norm = nn.LayerNorm(p.decoder_dim)

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

    frames: (B, T, 3, H, W) with one camera, or (B, T, N, 3, H, W) with N = len(p.cameras) in p.cameras order;
    float (already normalised) or uint8 pixels, mapped to [-1, 1];
    T = p.frames (oldest first is the convention; time_embed is learnt per index), H = W = p.img_size.
    ego_status: (B, p.ego_status_dim), required when p.use_ego_status, refused otherwise.
    """

    def __init__(self, p: PlannerParams):
        super().__init__()
        p.validate()
        self.p = p
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
        p, g = self.p, self.encoder.grid
        per_frame = compressed_grid(g, p.odd_grid) ** 2 if p.use_2x2_compression else g * g
        return p.frames * len(p.cameras) * per_frame

    def forward(self, frames: torch.Tensor, ego_status: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        p = self.p
        if frames.dim() == 5:
            frames = frames.unsqueeze(2)                             # (B, T, 1, 3, H, W)
        expected = (p.frames, len(p.cameras), 3, p.img_size, p.img_size)
        if frames.dim() != 6 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must be (B, T, 3, H, W) or (B, T, N, 3, H, W) with (T, N, 3, H, W) = "
                             f"{expected} (planner.frames, cameras, img_size); got {tuple(frames.shape)}")
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
    "apply_rope_2d",
    "compressed_grid",
    "count_parameters",
    "grid_positions",
    "integrate_velocities",
    "rope_2d_cos_sin",
]
