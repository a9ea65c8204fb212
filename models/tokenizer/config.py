"""The tokenizer's architecture and loss, apart from training settings (as nanoGPT's ``GPTConfig``).

``TokenizerConfig.from_params(params.tokenizer)`` is the only place the params section reaches the model:
epochs, batch size, learning rate, weight decay, warm-up, clipping and seed stay with the training loop. The loss
options are here because the loss is part of the model's forward (``forward(velocities, labels=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass

from models.common.params import ConfigError, config_from_section
from models.tokenizer.fsq import fsq_levels


@dataclass(frozen=True)
class TokenizerConfig:
    hidden_dim: int = 128                      # AMPLIFY 768
    num_heads: int = 4                         # AMPLIFY 8
    num_layers: int = 2                        # encoder blocks; the decoder gets num_layers // 2
    decoder_mlp_hidden_dim: int = 256
    codebook_size: int = 512                   # nominal; FSQ levels from AMPLIFY's table
    per_view: bool = False
    causal_encoder: bool = True
    input_scale: float = 64.0                  # encoder input velocities x this (AMPLIFY 1.0)
    dropout: float = 0.0
    loss: str = "relative_ce"                  # relative_ce | focal
    focal_gamma: float = 2.0
    focal_center_weight: float = 0.25
    mask_static: bool = False
    loss_steps: str = "all"                    # all (AMPLIFY) | visible
    point_groups: int = 4                      # groups per side of the track grid; AMPLIFY 1
    track_codes: int = 256                     # nominal codebook of one extra token per track; AMPLIFY 0 (off)
    rel_cls_img_size: tuple[int, int] = (15, 15)
    img_size: tuple[int, int] = (128, 128)

    def __post_init__(self) -> None:
        def fail(key: str, why: str):
            raise ConfigError("TokenizerConfig", key, getattr(self, key), why)

        if self.hidden_dim % self.num_heads:
            fail("hidden_dim", f"must be divisible by tokenizer.num_heads = {self.num_heads}")
        if self.num_layers < 2:
            fail("num_layers", "must be >= 2 (the decoder gets num_layers // 2 blocks, and 0 would ignore the codes)")
        if not 0 < self.input_scale < float("inf"):
            fail("input_scale", "must be a finite number > 0 (AMPLIFY 1.0)")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must lie in [0, 1)")
        if self.loss not in ("relative_ce", "focal"):
            fail("loss", "must be relative_ce or focal")
        if self.loss_steps not in ("all", "visible"):
            fail("loss_steps", "must be all or visible")
        if self.track_codes:
            try:
                fsq_levels(self.track_codes)
            except ValueError as exc:
                fail("track_codes", f"0 (off) or a codebook size: {exc}")
        if self.point_groups < 1:
            fail("point_groups", "must be >= 1 (1 = one token per step, as AMPLIFY)")
        try:
            fsq_levels(self.codebook_size)
        except ValueError as exc:
            fail("codebook_size", str(exc))
        for key in ("rel_cls_img_size", "img_size"):
            if len(getattr(self, key)) != 2:
                fail(key, "must be two integers [rows, cols]")
        if any(v % 2 == 0 for v in self.rel_cls_img_size):
            fail("rel_cls_img_size", "must be odd (an even grid overflows the class range, as in AMPLIFY)")

    @classmethod
    def from_params(cls, p) -> "TokenizerConfig":
        """The architecture and loss keys of a ``TokenizerParams`` section (errors name ``tokenizer.<key>``)."""
        return config_from_section(cls, "tokenizer", p)
