"""AMPLIFY's motion tokenizer (amplify/models/motion_tokenizer.py): encoder -> FSQ -> per-step class decoder.

Official layout by default (``per_view=false``): one token per velocity step, its features the flattened
``(view, track, (row, col))`` velocities; a causal pre-LN transformer encoder; FSQ from vector-quantize-pytorch
with :func:`~models.tokenizer.fsq.fsq_levels`; a decoder whose queries are zeros plus a learned positional
embedding, ``num_layers // 2`` blocks of self-attention -> MLP -> cross-attention(codes) -> MLP; then per view,
step and track a residual ReLU MLP over ``[x, track_emb, view_emb]`` and a projection to the ``R*C`` relative
displacement classes. With ``per_view`` every (view, step) is a token (view-major).

Not AMPLIFY (``tokenizer.point_groups = g > 1``, docs/tokenizer.md): the query grid's tracks are split into g x g
blocks of neighbours and every (step, block) is a token of its block's velocities, time-major, block-causal in
the encoder; the decoder's queries start from each token's own code and every track reads its block's output.

Module and parameter names mirror the official ones (``encoder.encoder_proj``, ``quantize``,
``decoder.decoder_mlp`` ...). The decoder's first MLP layer is applied to the three parts of the concatenation
separately and broadcast (the same Linear, the same numbers up to summation order), so the ``(B, V, T-1, N, 3D)``
concatenation is never materialised.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from models.tokenizer.config import TokenizerConfig
from models.tokenizer.fsq import fsq_levels
from models.tokenizer.labels import (center_class, logits_to_displacements, points_to_velocities,
                                     tracks_to_labels, velocities_to_points, visible_steps)
from models.tokenizer.metrics import codebook_perplexity, trajectory_metrics
from models.tokenizer.transformer import TransformerDecoder, TransformerEncoder, causal_mask


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contain {bad} NaN or infinite value(s): clean or drop these tracks before "
                         "training (the tokenizer never trains on them)")


def _build_fsq(levels: list[int], dim: int) -> nn.Module:
    """``FSQ(levels, dim)``; under a ``meta`` default device it is built on the CPU and moved (FSQ calls .item())."""
    from vector_quantize_pytorch import FSQ

    if torch.empty(0).device.type == "meta":
        with torch.device("cpu"):
            fsq = FSQ(levels=levels, dim=dim)
        return fsq.to("meta")
    return FSQ(levels=levels, dim=dim)


def point_group_index(num_tracks: int, groups: int) -> torch.Tensor:
    """Row-major query grid of ``num_tracks = g * g`` tracks -> ``(groups^2,)`` blocks of neighbouring tracks.

    Track ``n = i * g + j`` (AMPLIFY's grid order, the tracks stage's ``query_grid``) belongs to block
    ``(i * groups // g, j * groups // g)``. Returns ``(G, M)`` long track indices, blocks in row-major order, each
    padded with ``num_tracks`` (a zero pad point) to the largest block's size M.
    """
    side = int(round(num_tracks ** 0.5))
    cpu = torch.device("cpu")  # an index table, built on the CPU even under a meta default device
    if groups == 1:
        return torch.arange(num_tracks, device=cpu)[None]
    if side * side != num_tracks:
        raise ValueError(f"tokenizer.point_groups = {groups} needs the tracks on a square query grid (N = g * g), "
                         f"got N = {num_tracks}; use point_groups 1")
    if groups > side:
        raise ValueError(f"tokenizer.point_groups = {groups} is more than the {side} tracks per side of the grid")
    n = torch.arange(num_tracks, device=cpu)
    block = (n // side * groups // side) * groups + (n % side * groups // side)  # (N,)
    members = [n[block == b] for b in range(groups * groups)]
    width = max(len(m) for m in members)
    return torch.stack([F.pad(m, (0, width - len(m)), value=num_tracks) for m in members])  # (G, M)


def block_causal_mask(steps: int, block: int) -> torch.Tensor:
    """Causal over blocks of ``block`` tokens (one step's groups): a token sees its own step's tokens and earlier
    steps'. ``block = 1`` is the official ``causal_mask``."""
    return causal_mask(steps).repeat_interleave(block, 0).repeat_interleave(block, 1)


class VAEEncoder(nn.Module):
    def __init__(self, in_dim, hidden_dim, num_heads, num_layers, dropout, views, num_timesteps, per_view, causal,
                 input_scale=1.0, group_index=None):
        super().__init__()
        self.input_scale = float(input_scale)  # a constant, not a parameter: checkpoints are unchanged
        self.per_view = per_view
        self.views = views
        groups = 1 if group_index is None else len(group_index)
        self.grouped = groups > 1
        # (G, M) track indices per token of a step (padding index N = a zero point); not saved in checkpoints
        self.register_buffer("group_index", group_index, persistent=False)
        steps = num_timesteps * (views if per_view else 1)
        self.seq_len = steps * groups
        self.encoder_proj = nn.Linear(in_dim, hidden_dim)  # default PyTorch init, as the official
        self.encoder = TransformerEncoder(self.seq_len, hidden_dim, num_layers, num_heads, dropout=dropout,
                                          attn_mask=block_causal_mask(steps, groups) if causal else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            x = x * self.input_scale  # tokenizer.input_scale (AMPLIFY 1.0: raw normalised velocities)
        if self.grouped:
            x = F.pad(x, (0, 0, 0, 1))[:, :, :, self.group_index]  # (B, V, T-1, G, M, 2), pads are zero
            pattern = "b v t g m d -> b (v t g) (m d)" if self.per_view else "b v t g m d -> b (t g) (v m d)"
            return self.encoder(self.encoder_proj(rearrange(x, pattern)))
        if self.per_view:
            x = rearrange(x, "b v t n d -> b (v t) (n d)")
        else:
            x = rearrange(x, "b v t n d -> b t (v n d)")
        return self.encoder(self.encoder_proj(x))


class TrackEncoder(nn.Module):
    """One token per track and window (``tokenizer.track_codes``, not AMPLIFY): a track's T-1 steps
    ``(B, V, T-1, N, 2)`` -> ``(B, V*N, D)`` through a two-layer GELU MLP, before its own FSQ. The per-step tokens
    carry the motion every track shares in time; this carries what is a track's own for the whole window (its mean
    motion, when it stops), which a few tokens per step cannot."""

    def __init__(self, num_timesteps: int, hidden_dim: int, input_scale: float):
        super().__init__()
        self.input_scale = float(input_scale)
        self.track_proj = nn.Sequential(nn.Linear(num_timesteps * 2, hidden_dim), nn.GELU(),
                                        nn.Linear(hidden_dim, hidden_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.track_proj(rearrange(x * self.input_scale, "b v t n d -> b (v n) (t d)"))


class VAEDecoder(nn.Module):
    def __init__(self, hidden_dim, mlp_hidden_dim, num_heads, num_layers, dropout, views, num_timesteps, num_tracks,
                 out_dim, per_view, track_group=None, groups=1, track_codes=False):
        super().__init__()
        self.per_view = per_view
        self.views = views
        self.num_timesteps = num_timesteps
        self.num_tracks = num_tracks
        self.hidden_dim = hidden_dim
        self.groups = groups
        # (N,) the token group each track reads its step's feature from (grouped layout only; not saved)
        self.register_buffer("track_group", track_group, persistent=False)
        self.seq_len = num_timesteps * (views if per_view else 1) * groups
        self.track_pos_emb = nn.Embedding(num_tracks, hidden_dim)
        self.view_emb = nn.Embedding(views, hidden_dim)
        self.decoder_mlp = nn.Sequential(
            nn.Linear(3 * hidden_dim, mlp_hidden_dim),
            nn.ReLU(),
            nn.Linear(mlp_hidden_dim, hidden_dim),
        )
        self.decoder_proj = nn.Linear(hidden_dim, out_dim)
        self.decoder = TransformerDecoder(self.seq_len, hidden_dim, num_layers, num_heads, dropout=dropout)
        # a fourth part of the per-track MLP's input: the track's own code (tokenizer.track_codes)
        self.track_code_mlp = nn.Linear(hidden_dim, mlp_hidden_dim, bias=False) if track_codes else None

    def _to_tracks(self, y: torch.Tensor) -> torch.Tensor:
        """Per-group features ``(B, V', T-1, G, C)`` -> each track its group's ``(B, V', T-1, N, C)``.

        When the grid side is a multiple of the groups per side, blocks are expanded and reshaped (track
        ``n = (gi * b + bi) * side + gj * b + bj`` reads group ``gi * g + gj``), whose backward is a sum over each
        block; otherwise a gather (its scatter backward measured 1.5x slower per training step)."""
        g = round(self.groups ** 0.5)
        side = round(self.num_tracks ** 0.5)
        if side % g:
            return y[:, :, :, self.track_group]
        b = side // g
        batch, views, steps, _, c = y.shape
        y = y.view(batch, views, steps, g, 1, g, 1, c).expand(batch, views, steps, g, b, g, b, c)
        return y.reshape(batch, views, steps, self.num_tracks, c)

    def forward(self, codes: torch.Tensor, track_codes: torch.Tensor | None = None) -> torch.Tensor:
        """codes ``(B, L, D)`` [and per-track codes ``(B, V*N, D)``] -> logits ``(B, V, T-1, N, R*C)``."""
        # AMPLIFY's queries are zeros (plus the positional embedding, added inside); grouped tokens start from their
        # own code, so a (step, group) query need not first find its code among T * G by attention (measured: a
        # tiny model fits per-quadrant motion to 99.7 % label accuracy this way, 38 % from zero queries)
        queries = codes if self.groups > 1 else torch.zeros_like(codes)
        x = self.decoder(queries, codes)
        if self.per_view:
            x = rearrange(x, "b (v t g) h -> b v t g h", v=self.views, g=self.groups)
        else:
            x = rearrange(x, "b (t g) h -> b 1 t g h", g=self.groups)  # the same for every view
        dev = codes.device
        track = self.track_pos_emb(torch.arange(self.num_tracks, device=dev))  # (N, D)
        view = self.view_emb(torch.arange(self.views, device=dev))  # (V, D)
        first, act, second = self.decoder_mlp
        w_x, w_track, w_view = first.weight.split(self.hidden_dim, dim=1)
        # Linear(cat[x, track, view]) == x W_x^T + track W_t^T + view W_v^T + b, broadcast over (B, V, T-1, N);
        # a step's one token (G = 1) broadcasts over the tracks, grouped tokens are gathered per track
        hx = F.linear(x, w_x)  # (B, V', T-1, G, H)
        if self.groups > 1:
            x, hx = self._to_tracks(x), self._to_tracks(hx)  # (B, V', T-1, N, .)
        # the step-independent terms are summed at their own size first, so that the (B, V, T-1, N, H) tensor is
        # made by one broadcast add (and its backward reduces over the steps once), not three
        static = (F.linear(track, w_track)[None, None, :, :]
                  + F.linear(view, w_view, first.bias)[None, :, None, :])  # (1, V, N, H)
        if self.track_code_mlp is not None:  # the track's own code, the same at every step
            static = static + self.track_code_mlp(track_codes).view(len(codes), self.views, self.num_tracks, -1)
        h = second(act(hx + static[:, :, None]))  # (B, V, T-1, N, D)
        return self.decoder_proj(x + h)


class MotionTokenizer(nn.Module):
    """The AMPLIFY motion tokenizer.

    ``MotionTokenizer(cfg, num_tracks=400, track_horizon=16, num_views=1)``: the shape arguments come from the
    data (N points per window, T frames per window, V camera views); ``cfg`` is a :class:`TokenizerConfig`
    (``TokenizerConfig.from_params(params.tokenizer)``).
    Tensors: tracks ``(B, T, N, 2)`` or ``(B, V, T, N, 2)`` normalised (row, col); velocities the per-step
    differences ``(B, V, T-1, N, 2)`` (``(B, T-1, N, 2)`` is accepted when V = 1); indices ``(B, L)`` long with
    ``L = T-1`` (``V*(T-1)`` with ``per_view``); logits ``(B, V, T-1, N, R*C)``.
    """

    def __init__(self, cfg: TokenizerConfig, num_tracks: int = 400, track_horizon: int = 16, num_views: int = 1):
        super().__init__()
        if not isinstance(cfg, TokenizerConfig):
            raise TypeError(f"MotionTokenizer takes a TokenizerConfig (TokenizerConfig.from_params(params)), got "
                            f"{type(cfg).__name__}")
        for name, value, low in (("num_tracks", num_tracks, 1), ("track_horizon", track_horizon, 2),
                                 ("num_views", num_views, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.cfg = cfg
        self.num_tracks = num_tracks
        self.track_horizon = track_horizon
        self.num_views = num_views
        self.num_timesteps = track_horizon - 1
        self.num_tokens = self.num_timesteps * (num_views if cfg.per_view else 1)
        self.img_size = tuple(cfg.img_size)
        self.grid_size = tuple(cfg.rel_cls_img_size)
        self.num_classes = self.grid_size[0] * self.grid_size[1]
        self.center_class = center_class(self.grid_size)
        self.levels = fsq_levels(cfg.codebook_size)
        self.num_codes = 1
        for level in self.levels:
            self.num_codes *= level

        groups = cfg.point_groups
        group_index = point_group_index(num_tracks, groups) if groups > 1 else None  # (G, M)
        track_group = None
        if group_index is not None:
            track_group = torch.full((num_tracks + 1,), -1, dtype=torch.long, device="cpu")
            track_group[group_index] = torch.arange(len(group_index), device="cpu")[:, None]
            track_group = track_group[:num_tracks]  # (N,)
        self.num_groups = groups * groups
        self.num_tokens *= self.num_groups
        points_per_token = num_tracks if group_index is None else group_index.shape[1]
        in_dim = points_per_token * 2 * (1 if cfg.per_view else num_views)
        self.quantize = _build_fsq(self.levels, cfg.hidden_dim)
        self.encoder = VAEEncoder(in_dim, cfg.hidden_dim, cfg.num_heads, cfg.num_layers, cfg.dropout, num_views,
                                  self.num_timesteps, cfg.per_view, cfg.causal_encoder, cfg.input_scale,
                                  group_index=group_index)
        self.decoder = VAEDecoder(cfg.hidden_dim, cfg.decoder_mlp_hidden_dim, cfg.num_heads, cfg.num_layers // 2,
                                  cfg.dropout, num_views, self.num_timesteps, num_tracks, self.num_classes,
                                  cfg.per_view, track_group=track_group, groups=self.num_groups,
                                  track_codes=bool(cfg.track_codes))
        self.track_levels = fsq_levels(cfg.track_codes) if cfg.track_codes else []
        self.num_track_codes = math.prod(self.track_levels) if cfg.track_codes else 0
        if cfg.track_codes:
            self.track_encoder = TrackEncoder(self.num_timesteps, cfg.hidden_dim, cfg.input_scale)
            self.track_quantize = _build_fsq(self.track_levels, cfg.hidden_dim)

    # ------------------------------------------------------------------------------------------ shapes
    @property
    def shape_kwargs(self) -> dict:
        """The constructor's shape arguments (store them with a checkpoint to rebuild the model)."""
        return dict(num_tracks=self.num_tracks, track_horizon=self.track_horizon, num_views=self.num_views)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _as_5d(self, x: torch.Tensor, steps: int, what: str) -> torch.Tensor:
        if x.dim() == 4 and self.num_views == 1:
            x = x.unsqueeze(1)
        expected = (self.num_views, steps, self.num_tracks, 2)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{what} must be (B, V={expected[0]}, {expected[1]}, N={expected[2]}, 2)"
                             f"{' or (B, %d, %d, 2)' % expected[1:3] if self.num_views == 1 else ''}, "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{what} must be floating point, got {x.dtype}")
        return x

    def tracks_to_velocities(self, tracks: torch.Tensor) -> torch.Tensor:
        """Tracks ``(B, [V,] T, N, 2)`` -> velocities ``(B, V, T-1, N, 2)`` (normalised units, not quantised)."""
        tracks = self._as_5d(tracks, self.track_horizon, "tracks")
        _check_finite(tracks, "tracks")
        return points_to_velocities(tracks, time_dim=2)

    # ------------------------------------------------------------------------------------------ model
    def encode(self, velocities: torch.Tensor) -> torch.Tensor:
        """Velocities -> codebook indices ``(B, L)`` (long)."""
        return self._quantize(self._encode(velocities))[1]

    def _encode(self, velocities: torch.Tensor) -> torch.Tensor:
        velocities = self._as_5d(velocities, self.num_timesteps, "velocities")
        _check_finite(velocities, "velocities")
        return self.encoder(velocities.to(self.encoder.encoder_proj.weight.dtype))

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, indices = self.quantize(z)
        return codes, indices.long()

    def decode_codes(self, codes: torch.Tensor, track_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Quantised codes ``(B, L, D)`` (FSQ ``project_out`` output) [and per-track codes ``(B, V*N, D)`` with
        ``track_codes``] -> logits ``(B, V, T-1, N, R*C)``."""
        if self.cfg.track_codes and track_codes is None:
            raise ValueError("tokenizer.track_codes is on: decoding needs the per-track codes too")
        return self.decoder(codes, track_codes)

    def decode(self, indices: torch.Tensor, track_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Codebook indices ``(B, L)`` -> logits ``(B, V, T-1, N, R*C)``.

        Indices in ``[num_codes, codebook_size)`` (e.g. 1920..2047 for the nominal 2048) wrap onto other codes, as
        in the official FSQ ``indices_to_codes``; anything outside ``[0, codebook_size)`` raises ``ValueError``.
        """
        if indices.dim() != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(f"indices must be (B, {self.num_tokens}), got {tuple(indices.shape)}")
        if indices.is_floating_point():
            raise ValueError(f"indices must be integers, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.cfg.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.cfg.codebook_size}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        codes = self.quantize.indices_to_codes(indices.to(torch.int32))
        track_codes = None
        if self.cfg.track_codes:
            shape = (len(indices), self.num_views * self.num_tracks)
            if track_indices is None or tuple(track_indices.shape) != shape or track_indices.is_floating_point():
                raise ValueError(f"track_indices must be integers (B, V*N) = {shape}, got "
                                 f"{None if track_indices is None else tuple(track_indices.shape)}")
            if int(track_indices.min()) < 0 or int(track_indices.max()) >= self.cfg.track_codes:
                raise ValueError(f"track_indices must lie in [0, {self.cfg.track_codes})")
            track_codes = self.track_quantize.indices_to_codes(track_indices.to(torch.int32))
        return self.decode_codes(codes, track_codes)

    def forward(self, velocities: torch.Tensor, labels: torch.Tensor | None = None,
                static: torch.Tensor | None = None, visible: torch.Tensor | None = None) -> dict[str, Any]:
        """Velocities ``(B, V, T-1, N, 2)`` -> ``dict(logits, indices, codes, z)``; with ``labels`` also the loss.

        ``logits`` ``(B, V, T-1, N, R*C)``; ``indices`` ``(B, L)`` long; ``codes`` ``(B, L, D)`` quantised and
        projected; ``z`` ``(B, L, D)`` the encoder output before FSQ. (The official ``forward`` returns
        ``(x_recon, indices, rel_logits)`` with logits flattened ``(B, V*(T-1)*N, C)`` in (v, t, n) order, i.e.
        ``logits.flatten(1, 3)`` here; ``x_recon`` is ``logits_to_displacements(logits)``.)
        With ``labels`` ``(B, V, T-1, N)`` (from :meth:`inputs`), optional ``static`` flags ``(B, N)`` and the
        tracks' ``visible`` flags ``(B, [V,] T, N)`` (needed by ``loss_steps: visible``): ``loss``
        (scalar, see :meth:`loss_terms`), ``view_loss`` ``(V,)`` and ``logs`` (floats, see :meth:`loss`). The loss
        is computed inside forward so that a DDP wrapper synchronises its gradients with one call.
        """
        z = self._encode(velocities)
        codes, indices = self._quantize(z)
        track_codes = track_indices = None
        if self.cfg.track_codes:  # (B, V*N, D) and (B, V*N)
            velocities = self._as_5d(velocities, self.num_timesteps, "velocities")
            track_codes, track_indices = self.track_quantize(
                self.track_encoder(velocities.to(self.encoder.encoder_proj.weight.dtype)))
            track_indices = track_indices.long()
        out = dict(logits=self.decode_codes(codes, track_codes), indices=indices, codes=codes, z=z,
                   track_indices=track_indices, track_codes=track_codes)
        if labels is not None:
            loss, view_loss, ce = self._loss(out["logits"], labels, static, visible)
            out.update(loss=loss, view_loss=view_loss, logs=self._logs(out, labels, loss, view_loss, ce))
            if static is not None:
                out["logs"]["static_fraction"] = float(static.float().mean())
        return out

    def inputs(self, tracks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tracks ``(B, [V,] T, N, 2)`` -> (velocities ``(B, V, T-1, N, 2)``, labels ``(B, V, T-1, N)``)."""
        tracks = self._as_5d(tracks, self.track_horizon, "tracks")
        return self.tracks_to_velocities(tracks), tracks_to_labels(tracks, self.img_size, self.grid_size)

    # ------------------------------------------------------------------------------------------ loss
    def labels(self, tracks: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, V, T-1, N)`` for tracks ``(B, [V,] T, N, 2)`` (:func:`tracks_to_labels`)."""
        tracks = self._as_5d(tracks, self.track_horizon, "tracks")
        return tracks_to_labels(tracks, self.img_size, self.grid_size)

    def loss_terms(self, logits: torch.Tensor, labels: torch.Tensor, static: torch.Tensor | None = None,
                   visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The configured loss from logits ``(B, V, T-1, N, C)`` and labels ``(B, V, T-1, N)``: ``(loss, (V,))``.

        Per element (b, v, t, n): ``relative_ce`` is the cross-entropy against the class from
        :func:`tracks_to_labels`; ``focal`` is ``w * (1 - p)^gamma * CE`` with ``p = softmax(logits)[label]``,
        ``w = focal_center_weight`` where the label is the centre (zero motion) class and 1 elsewhere. Each view's
        loss is the mean over (b, t, n); with ``mask_static`` only points whose ``static`` flag is False count
        (a view where every point is static contributes 0); with ``loss_steps: visible`` only steps whose track is
        visible at both ends (:func:`visible_steps` of ``visible``) count. The views are summed with weight 1.0 each (AMPLIFY
        weights its LIBERO views 0.9 / 0.1, and every other view 1.0, unnormalised).
        """
        return self._loss(logits, labels, static, visible)[:2]

    def _loss(self, logits, labels, static, visible=None):
        if logits.dim() != 5 or tuple(logits.shape[:-1]) != tuple(labels.shape) or logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match "
                             f"(B, V, T-1, N, {self.num_classes}) / (B, V, T-1, N)")
        b, v, t, n, c = logits.shape
        ce = F.cross_entropy(logits.reshape(-1, c).float(), labels.reshape(-1), reduction="none").view(b, v, t, n)
        if self.cfg.loss == "focal":
            p_true = torch.exp(-ce)
            per = (1.0 - p_true).clamp_min(1e-12).pow(self.cfg.focal_gamma) * ce
            weight = torch.where(labels == self.center_class, self.cfg.focal_center_weight, 1.0)
            per = per * weight
        else:
            per = ce
        keep = None
        if self.cfg.mask_static:
            if static is None:
                raise ValueError("tokenizer.mask_static is on but the batch has no 'static' flags (B, N)")
            keep = (~self._static_5d(static, b)).expand(b, v, t, n)
        if self.cfg.loss_steps == "visible":
            if visible is None:
                raise ValueError("tokenizer.loss_steps is visible but the batch has no 'visible' flags (B, T, N)")
            seen = visible_steps(self._as_5d_flags(visible, b))  # (B, V, T-1, N)
            keep = seen if keep is None else keep & seen
        if keep is not None:
            keep = keep.to(per.dtype)
            view_loss = (per * keep).sum(dim=(0, 2, 3)) / keep.sum(dim=(0, 2, 3)).clamp_min(1.0)
        else:
            view_loss = per.mean(dim=(0, 2, 3))
        return view_loss.sum(), view_loss, ce

    def _as_5d_flags(self, visible: torch.Tensor, batch: int) -> torch.Tensor:
        """Visibility ``(B, [V,] T, N)`` bool -> ``(B, V, T, N)``."""
        if visible.dtype != torch.bool:
            raise ValueError(f"visible must be a bool tensor, got {visible.dtype}")
        if visible.dim() == 3 and self.num_views == 1:
            visible = visible[:, None]
        expected = (batch, self.num_views, self.track_horizon, self.num_tracks)
        if tuple(visible.shape) != expected:
            raise ValueError(f"visible must be (B, [V,] T, N) = {expected}, got {tuple(visible.shape)}")
        return visible

    def _static_5d(self, static: torch.Tensor, batch: int) -> torch.Tensor:
        if static.dtype != torch.bool:
            raise ValueError(f"static must be a bool tensor, got {static.dtype}")
        if static.dim() == 2:
            static = static[:, None].expand(batch, self.num_views, self.num_tracks)
        if tuple(static.shape) != (batch, self.num_views, self.num_tracks):
            raise ValueError(f"static must be (B, N) or (B, V, N) = ({batch}, {self.num_views}, {self.num_tracks}), "
                             f"got {tuple(static.shape)}")
        return static[:, :, None, :]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """``batch = {"tracks": (B, [V,] T, N, 2), "static": (B, N) bool (optional), ...}`` -> ``(loss, logs)``.

        Velocities of the tracks go through the model; targets come from the tracks (:func:`tracks_to_labels`).
        ``visible`` ``(B, [V,] T, N)`` is used by ``loss_steps: visible`` only (AMPLIFY trains on every step). NaN or infinite tracks raise ``ValueError``.
        ``logs`` (floats): ``loss``; ``ce`` (plain cross-entropy over every element, whatever the loss);
        ``label_accuracy`` (argmax == label); ``centre_label_fraction`` / ``centre_pred_fraction`` (zero-motion
        share of labels / argmax predictions); ``perplexity`` / ``perplexity_norm`` of this batch's indices
        (:func:`codebook_perplexity` with the nominal codebook size); ``loss_view{i}`` when V > 1;
        ``static_fraction`` when the batch has ``static``.
        """
        out = self(*self.inputs(batch["tracks"]), static=batch.get("static"), visible=batch.get("visible"))
        return out["loss"], out["logs"]

    @torch.no_grad()
    def _logs(self, out, labels, loss, view_loss, ce) -> dict[str, float]:
        pred = out["logits"].argmax(dim=-1)
        perplexity, perplexity_norm = codebook_perplexity(out["indices"], self.cfg.codebook_size)
        logs = dict(loss=float(loss.detach()), ce=float(ce.detach().mean()),
                    label_accuracy=float((pred == labels).float().mean()),
                    centre_label_fraction=float((labels == self.center_class).float().mean()),
                    centre_pred_fraction=float((pred == self.center_class).float().mean()),
                    perplexity=perplexity, perplexity_norm=perplexity_norm)
        if view_loss.numel() > 1:
            logs.update({f"loss_view{i}": float(x) for i, x in enumerate(view_loss.detach())})
        return logs

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Any] | torch.Tensor) -> torch.Tensor:
        """Predicted tracks, the shape of ``batch["tracks"]``, as the official reconstruction.

        Decoded displacements (argmax class -> whole pixels, :func:`logits_to_displacements`) integrated with
        :func:`velocities_to_points` from the **ground-truth** first point (neither rounded nor quantised).
        Uses the module's current train/eval mode (call ``.eval()`` first to switch dropout off).
        """
        tracks = batch["tracks"] if isinstance(batch, dict) else batch
        was_4d = tracks.dim() == 4
        tracks = self._as_5d(tracks, self.track_horizon, "tracks")
        logits = self(self.tracks_to_velocities(tracks))["logits"]
        steps = logits_to_displacements(logits, self.img_size, self.grid_size)
        points = velocities_to_points(steps, init_points=tracks[:, :, :1].float(), time_dim=2)
        return points[:, 0] if was_4d else points

    @torch.no_grad()
    def evaluate(self, batch: dict[str, Any]) -> dict[str, float]:
        """Loss logs plus :func:`trajectory_metrics` of :meth:`reconstruct` against the tracks (one forward pass)."""
        tracks = self._as_5d(batch["tracks"], self.track_horizon, "tracks")
        out = self(*self.inputs(tracks), static=batch.get("static"), visible=batch.get("visible"))
        logs = out["logs"]
        steps = logits_to_displacements(out["logits"], self.img_size, self.grid_size)
        pred = velocities_to_points(steps, init_points=tracks[:, :, :1].float(), time_dim=2)
        logs.update(trajectory_metrics(pred, tracks.float(), self.img_size))
        return logs

    # ------------------------------------------------------------------------------------------ optimiser
    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on Linear weight matrices; none on biases, LayerNorm weights and embeddings.

        (AMPLIFY: weight decay 0.0 on every parameter, betas (0.9, 0.95).)
        """
        wd = weight_decay
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
        return [dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)]
