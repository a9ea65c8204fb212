"""``MapDetConfig``: the map detector's architecture, built from the ``mapdet`` params section.

The parts and their Hugging Face configs (the field's kept library; a real checkpoint folder loads with it):

* image encoder: BLIP-2's EVA ViT layout (``Blip2VisionModel``), run on every camera, plus a learned camera
  embedding; frozen by default (``freeze_encoder``);
* Q-Former: ``Blip2QFormerModel`` with ``num_query_tokens`` learned queries. Its cross-attention reads
  ``qformer_encoder_width`` features (1408 in BLIP-2). When the image encoder is narrower or wider, a trainable
  ``Linear(vision_width -> qformer_encoder_width)`` is added in front, so BLIP-2's pretrained cross-attention K/V are
  kept (nothing of the Q-Former is re-initialised);
* language model: ``LlamaModel`` or ``Qwen2Model`` (base model: hidden states, no LM head), frozen by default;
* map queries: ``num_instances x num_points`` (MapTR's hierarchical queries: a per-instance plus a per-point-slot
  embedding) in the language model's width; map decoder: ``decoder_layers`` transformer blocks over the query
  states, a class head per instance and a point head per slot.

``full_size()`` gives the seed's sizes (EVA ViT-g at 336 px, BLIP-2's Q-Former 768 x 12 with 32 queries,
LLaMA-2-7B, 50 x 20 queries); ``tests/test_mapdet_model.py`` instantiates it on the meta device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_KEYS = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "vision_intermediate",
              "qformer_width", "qformer_layers", "qformer_heads", "qformer_intermediate",
              "cross_attention_frequency", "qformer_encoder_width", "num_query_tokens", "lm_type", "lm_width",
              "lm_layers", "lm_heads", "lm_kv_heads", "lm_intermediate", "lm_vocab", "lm_max_positions",
              "lm_rope_theta", "lm_rms_eps", "num_instances", "num_points", "decoder_width", "decoder_layers",
              "decoder_heads", "freeze_encoder", "freeze_lm", "lm_dtype")


@dataclass(frozen=True)
class MapDetConfig:
    num_cameras: int = 6
    num_classes: int = 3
    image_size: int = 112
    patch_size: int = 14
    vision_width: int = 48
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 96
    qformer_width: int = 64
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_intermediate: int = 128
    cross_attention_frequency: int = 2
    qformer_encoder_width: int = 48
    num_query_tokens: int = 16
    lm_type: str = "llama"
    lm_width: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_kv_heads: int = 4
    lm_intermediate: int = 172
    lm_vocab: int = 256
    lm_max_positions: int = 1024
    lm_rope_theta: float = 10000.0
    lm_rms_eps: float = 1e-5
    num_instances: int = 30
    num_points: int = 20
    decoder_width: int = 64
    decoder_layers: int = 1
    decoder_heads: int = 4
    freeze_encoder: bool = True
    freeze_lm: bool = True
    lm_dtype: str = "float32"

    def __post_init__(self) -> None:
        from models.common.params import ConfigError

        def need(ok: bool, key: str, why: str):
            if not ok:
                raise ConfigError("params: mapdet", key, getattr(self, key), why)

        need(self.image_size % self.patch_size == 0, "image_size", f"must be a multiple of patch_size {self.patch_size}")
        for width, heads in (("vision_width", "vision_heads"), ("qformer_width", "qformer_heads"),
                             ("lm_width", "lm_heads"), ("decoder_width", "decoder_heads")):
            need(getattr(self, width) % getattr(self, heads) == 0, width, f"must be divisible by {heads} "
                 f"= {getattr(self, heads)}")
        need(self.lm_heads % self.lm_kv_heads == 0, "lm_kv_heads", f"must divide lm_heads = {self.lm_heads}")
        need(self.lm_type in ("llama", "qwen2"), "lm_type", "allowed: llama, qwen2")
        need(self.lm_dtype in ("float32", "bfloat16", "float16"), "lm_dtype", "allowed: float32, bfloat16, float16")
        need(1 <= self.cross_attention_frequency <= self.qformer_layers, "cross_attention_frequency",
             f"must be in 1..qformer_layers = {self.qformer_layers}")

    @classmethod
    def from_params(cls, p, num_points: int | None = None, num_classes: int | None = None) -> "MapDetConfig":
        """From the validated ``mapdet`` section; ``num_points`` and ``num_classes`` from the GT cache's manifest
        (``cache.map_points``, ``cache.map_classes``)."""
        values = {k: getattr(p, k) for k in MODEL_KEYS if k != "num_points"}
        values["num_cameras"] = len(p.cameras)
        if num_points is not None:
            values["num_points"] = int(num_points)
        if num_classes is not None:
            values["num_classes"] = int(num_classes)
        return cls(**values)

    @property
    def tokens_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1                    # patches + CLS

    def vision_config(self):
        from transformers import Blip2VisionConfig

        return Blip2VisionConfig(hidden_size=self.vision_width, intermediate_size=self.vision_intermediate,
                                 num_hidden_layers=self.vision_layers, num_attention_heads=self.vision_heads,
                                 image_size=self.image_size, patch_size=self.patch_size, layer_norm_eps=1e-6,
                                 qkv_bias=True, hidden_act="gelu", attention_dropout=0.0)

    def qformer_config(self):
        from transformers import Blip2QFormerConfig

        return Blip2QFormerConfig(hidden_size=self.qformer_width, num_hidden_layers=self.qformer_layers,
                                  num_attention_heads=self.qformer_heads, intermediate_size=self.qformer_intermediate,
                                  cross_attention_frequency=self.cross_attention_frequency,
                                  encoder_hidden_size=self.qformer_encoder_width, layer_norm_eps=1e-12,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def lm_config(self):
        from transformers import LlamaConfig, Qwen2Config

        common = dict(hidden_size=self.lm_width, num_hidden_layers=self.lm_layers,
                      num_attention_heads=self.lm_heads, num_key_value_heads=self.lm_kv_heads,
                      intermediate_size=self.lm_intermediate, vocab_size=self.lm_vocab,
                      max_position_embeddings=self.lm_max_positions, rms_norm_eps=self.lm_rms_eps,
                      tie_word_embeddings=False, hidden_act="silu")
        if self.lm_type == "llama":
            cfg = LlamaConfig(rope_theta=self.lm_rope_theta, attention_bias=False, **common)
        else:
            cfg = Qwen2Config(rope_theta=self.lm_rope_theta, use_sliding_window=False, **common)
        cfg._attn_implementation = "sdpa"
        return cfg

    @property
    def torch_lm_dtype(self):
        import torch

        return getattr(torch, self.lm_dtype)

    def sequence_length(self, prompt_tokens: int) -> int:
        """Tokens the language model reads: [visual; prompt; map queries]."""
        return self.num_query_tokens + prompt_tokens + self.num_instances * self.num_points

    def replace(self, **changes) -> "MapDetConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def full_size(cls, lm: str = "llama") -> "MapDetConfig":
        """The seed's sizes: EVA ViT-g/14 at 336 px (BLIP-2's vision model: 1408 wide, 39 blocks, 16 heads, MLP
        6144), BLIP-2's Q-Former (768 x 12, 12 heads, 3072, cross-attention every 2nd layer, 1408 K/V input,
        32 queries), LLaMA-2-7B or Qwen2-7B, 50 instances x 20 points, a 2-block 512-wide map decoder."""
        vision = dict(image_size=336, patch_size=14, vision_width=1408, vision_layers=39, vision_heads=16,
                      vision_intermediate=6144, qformer_width=768, qformer_layers=12, qformer_heads=12,
                      qformer_intermediate=3072, cross_attention_frequency=2, qformer_encoder_width=1408,
                      num_query_tokens=32, num_instances=50, num_points=20, decoder_width=512, decoder_layers=2,
                      decoder_heads=8)
        if lm == "llama":
            text = dict(lm_type="llama", lm_width=4096, lm_layers=32, lm_heads=32, lm_kv_heads=32,
                        lm_intermediate=11008, lm_vocab=32000, lm_max_positions=4096, lm_rope_theta=10000.0,
                        lm_rms_eps=1e-5)
        elif lm == "qwen2":
            text = dict(lm_type="qwen2", lm_width=3584, lm_layers=28, lm_heads=28, lm_kv_heads=4,
                        lm_intermediate=18944, lm_vocab=152064, lm_max_positions=131072, lm_rope_theta=1e6,
                        lm_rms_eps=1e-6)
        else:
            raise ValueError(f"full_size: lm must be llama or qwen2, got {lm!r}")
        return cls(**vision, **text)
