"""AMPLIFY's motion tokenizer (amplify/models/motion_tokenizer.py): encoder -> FSQ -> per-step class decoder.

Official layout by default (``per_view=false``): one token per velocity step, its features the flattened
``(view, track, (row, col))`` velocities; a causal pre-LN transformer encoder; FSQ from vector-quantize-pytorch
with :func:`~models.tokenizer.fsq.fsq_levels`; a decoder whose queries are zeros plus a learned positional
embedding, ``num_layers // 2`` blocks of self-attention -> MLP -> cross-attention(codes) -> MLP; then per view,
step and track a residual ReLU MLP over ``[x, track_emb, view_emb]`` and a projection to the ``R*C`` relative
displacement classes. With ``per_view`` every (view, step) is a token (view-major).

Module and parameter names mirror the official ones (``encoder.encoder_proj``, ``quantize``,
``decoder.decoder_mlp`` ...). The decoder's first MLP layer is applied to the three parts of the concatenation
separately and broadcast (the same Linear, the same numbers up to summation order), so the ``(B, V, T-1, N, 3D)``
concatenation is never materialised.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from models.tokenizer.config import TokenizerConfig
from models.tokenizer.fsq import fsq_levels
from models.tokenizer.labels import (center_class, logits_to_displacements, points_to_velocities,
                                     tracks_to_labels, velocities_to_points)
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


class VAEEncoder(nn.Module):
    def __init__(self, in_dim, hidden_dim, num_heads, num_layers, dropout, views, num_timesteps, per_view, causal,
                 input_scale=1.0):
        super().__init__()
        self.input_scale = float(input_scale)  # a constant, not a parameter: checkpoints are unchanged
        self.per_view = per_view
        self.views = views
        self.seq_len = num_timesteps * (views if per_view else 1)
        self.encoder_proj = nn.Linear(in_dim, hidden_dim)  # default PyTorch init, as the official
        self.encoder = TransformerEncoder(self.seq_len, hidden_dim, num_layers, num_heads, dropout=dropout,
                                          attn_mask=causal_mask(self.seq_len) if causal else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            x = x * self.input_scale  # tokenizer.input_scale (AMPLIFY 1.0: raw normalised velocities)
        if self.per_view:
            x = rearrange(x, "b v t n d -> b (v t) (n d)")
        else:
            x = rearrange(x, "b v t n d -> b t (v n d)")
        return self.encoder(self.encoder_proj(x))


class VAEDecoder(nn.Module):
    def __init__(self, hidden_dim, mlp_hidden_dim, num_heads, num_layers, dropout, views, num_timesteps, num_tracks,
                 out_dim, per_view):
        super().__init__()
        self.per_view = per_view
        self.views = views
        self.num_timesteps = num_timesteps
        self.num_tracks = num_tracks
        self.hidden_dim = hidden_dim
        self.seq_len = num_timesteps * (views if per_view else 1)
        self.track_pos_emb = nn.Embedding(num_tracks, hidden_dim)
        self.view_emb = nn.Embedding(views, hidden_dim)
        self.decoder_mlp = nn.Sequential(
            nn.Linear(3 * hidden_dim, mlp_hidden_dim),
            nn.ReLU(),
            nn.Linear(mlp_hidden_dim, hidden_dim),
        )
        self.decoder_proj = nn.Linear(hidden_dim, out_dim)
        self.decoder = TransformerDecoder(self.seq_len, hidden_dim, num_layers, num_heads, dropout=dropout)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``(B, L, D)`` -> logits ``(B, V, T-1, N, R*C)``."""
        x = self.decoder(torch.zeros_like(codes), codes)  # zero queries; the positional embedding is added inside
        if self.per_view:
            x = rearrange(x, "b (v t) h -> b v t h", v=self.views)
        else:
            x = x.unsqueeze(1)  # (B, 1, T-1, D), the same for every view
        dev = codes.device
        track = self.track_pos_emb(torch.arange(self.num_tracks, device=dev))  # (N, D)
        view = self.view_emb(torch.arange(self.views, device=dev))  # (V, D)
        first, act, second = self.decoder_mlp
        w_x, w_track, w_view = first.weight.split(self.hidden_dim, dim=1)
        # Linear(cat[x, track, view]) == x W_x^T + track W_t^T + view W_v^T + b, broadcast over (B, V, T-1, N)
        h = (F.linear(x, w_x)[:, :, :, None, :]
             + F.linear(track, w_track)[None, None, None, :, :]
             + F.linear(view, w_view, first.bias)[None, :, None, None, :])
        h = second(act(h))  # (B, V, T-1, N, D)
        return self.decoder_proj(x[:, :, :, None, :] + h)


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

        in_dim = num_tracks * 2 * (1 if cfg.per_view else num_views)
        self.quantize = _build_fsq(self.levels, cfg.hidden_dim)
        self.encoder = VAEEncoder(in_dim, cfg.hidden_dim, cfg.num_heads, cfg.num_layers, cfg.dropout, num_views,
                                  self.num_timesteps, cfg.per_view, cfg.causal_encoder, cfg.input_scale)
        self.decoder = VAEDecoder(cfg.hidden_dim, cfg.decoder_mlp_hidden_dim, cfg.num_heads, cfg.num_layers // 2,
                                  cfg.dropout, num_views, self.num_timesteps, num_tracks, self.num_classes,
                                  cfg.per_view)

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

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Quantised codes ``(B, L, D)`` (FSQ ``project_out`` output) -> logits ``(B, V, T-1, N, R*C)``."""
        return self.decoder(codes)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
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
        return self.decode_codes(codes)

    def forward(self, velocities: torch.Tensor, labels: torch.Tensor | None = None,
                static: torch.Tensor | None = None) -> dict[str, Any]:
        """Velocities ``(B, V, T-1, N, 2)`` -> ``dict(logits, indices, codes, z)``; with ``labels`` also the loss.

        ``logits`` ``(B, V, T-1, N, R*C)``; ``indices`` ``(B, L)`` long; ``codes`` ``(B, L, D)`` quantised and
        projected; ``z`` ``(B, L, D)`` the encoder output before FSQ. (The official ``forward`` returns
        ``(x_recon, indices, rel_logits)`` with logits flattened ``(B, V*(T-1)*N, C)`` in (v, t, n) order, i.e.
        ``logits.flatten(1, 3)`` here; ``x_recon`` is ``logits_to_displacements(logits)``.)
        With ``labels`` ``(B, V, T-1, N)`` (from :meth:`inputs`) and optional ``static`` flags ``(B, N)``: ``loss``
        (scalar, see :meth:`loss_terms`), ``view_loss`` ``(V,)`` and ``logs`` (floats, see :meth:`loss`). The loss
        is computed inside forward so that a DDP wrapper synchronises its gradients with one call.
        """
        z = self._encode(velocities)
        codes, indices = self._quantize(z)
        out = dict(logits=self.decode_codes(codes), indices=indices, codes=codes, z=z)
        if labels is not None:
            loss, view_loss, ce = self._loss(out["logits"], labels, static)
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

    def loss_terms(self, logits: torch.Tensor, labels: torch.Tensor, static: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The configured loss from logits ``(B, V, T-1, N, C)`` and labels ``(B, V, T-1, N)``: ``(loss, (V,))``.

        Per element (b, v, t, n): ``relative_ce`` is the cross-entropy against the class from
        :func:`tracks_to_labels`; ``focal`` is ``w * (1 - p)^gamma * CE`` with ``p = softmax(logits)[label]``,
        ``w = focal_center_weight`` where the label is the centre (zero motion) class and 1 elsewhere. Each view's
        loss is the mean over (b, t, n); with ``mask_static`` only points whose ``static`` flag is False count
        (a view where every point is static contributes 0). The views are summed with weight 1.0 each (AMPLIFY
        weights its LIBERO views 0.9 / 0.1, and every other view 1.0, unnormalised).
        """
        return self._loss(logits, labels, static)[:2]

    def _loss(self, logits, labels, static):
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
        if self.cfg.mask_static:
            if static is None:
                raise ValueError("tokenizer.mask_static is on but the batch has no 'static' flags (B, N)")
            keep = (~self._static_5d(static, b)).to(per.dtype)  # (B, V, 1, N)
            keep = keep.expand(b, v, t, n)
            view_loss = (per * keep).sum(dim=(0, 2, 3)) / keep.sum(dim=(0, 2, 3)).clamp_min(1.0)
        else:
            view_loss = per.mean(dim=(0, 2, 3))
        return view_loss.sum(), view_loss, ce

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
        ``visible`` is not used (AMPLIFY trains on every point). NaN or infinite tracks raise ``ValueError``.
        ``logs`` (floats): ``loss``; ``ce`` (plain cross-entropy over every element, whatever the loss);
        ``label_accuracy`` (argmax == label); ``centre_label_fraction`` / ``centre_pred_fraction`` (zero-motion
        share of labels / argmax predictions); ``perplexity`` / ``perplexity_norm`` of this batch's indices
        (:func:`codebook_perplexity` with the nominal codebook size); ``loss_view{i}`` when V > 1;
        ``static_fraction`` when the batch has ``static``.
        """
        out = self(*self.inputs(batch["tracks"]), static=batch.get("static"))
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
        out = self(*self.inputs(tracks), static=batch.get("static"))
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
