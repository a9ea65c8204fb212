"""``MapDetector``: six cameras -> image encoder -> Q-Former -> frozen language model -> map decoder.

    images [B, N, 3, S, S] in [0, 1]
      -> encoder (BLIP-2's EVA ViT layout per camera, + camera embedding)    [B, N * (1 + (S/14)^2), Dv]
      -> (Linear Dv -> qformer_encoder_width when they differ)
      -> Q-Former (query_tokens [1, Nq, Dq] cross-attending the camera tokens) [B, Nq, Dq]
      -> language_projection                                                 [B, Nq, Dlm]
      -> language model over [visual tokens; prompt embeddings; map queries]  [B, Nq + Lp + I * P, Dlm]
      -> hidden states at the I * P map-query positions -> MapDecoder
      -> logits [B, I, C], points [B, I, P, 2] in [0, 1] of the patch (x right, y forward)

The language model is causal, so every map query reads all visual and prompt tokens and the queries before it.
Frozen parts keep ``requires_grad`` off (no gradient, no optimiser state) while gradients still flow through the
language model's activations to the Q-Former. A frozen encoder runs under ``no_grad`` (nothing upstream needs its
gradient).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import MapDetConfig
from .decoder import MapDecoder

# BLIP-2's image processor normalises with OpenAI CLIP's statistics
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MultiCameraEncoder(nn.Module):
    """``Blip2VisionModel`` applied to each camera, its tokens tagged with a learned per-camera embedding."""

    def __init__(self, cfg: MapDetConfig):
        super().__init__()
        from transformers import Blip2VisionModel

        self.vision_model = Blip2VisionModel(cfg.vision_config())
        self.camera_embed = nn.Parameter(torch.randn(cfg.num_cameras, cfg.vision_width) * 0.02)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, N = images.shape[:2]
        pixels = (images.flatten(0, 1) - self.mean) / self.std                    # [B*N, 3, S, S]
        frozen = not any(p.requires_grad for p in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            tokens = self.vision_model(pixel_values=pixels).last_hidden_state    # [B*N, L, Dv]
        tokens = tokens.view(B, N, *tokens.shape[1:]) + self.camera_embed[None, :, None]
        return tokens.flatten(1, 2)                                              # [B, N*L, Dv]


def build_language_model(cfg: MapDetConfig) -> nn.Module:
    from transformers import LlamaModel, Qwen2Model

    return (LlamaModel if cfg.lm_type == "llama" else Qwen2Model)(cfg.lm_config())


class MapDetector(nn.Module):
    def __init__(self, cfg: MapDetConfig, prompt_ids: list[int], language_model: nn.Module | None = None):
        """``prompt_ids``: the tokenised prompt; ``language_model``: a loaded ``LlamaModel`` / ``Qwen2Model`` (else a
        fresh one from ``cfg``, to be loaded later)."""
        super().__init__()
        from transformers import Blip2QFormerModel

        if not prompt_ids:
            raise ValueError("mapdet: the prompt tokenised to no tokens")
        total = cfg.sequence_length(len(prompt_ids))
        if total > cfg.lm_max_positions:
            raise ValueError(f"params: mapdet.prompt: {len(prompt_ids)} prompt tokens make a sequence of {total} "
                             f"(visual {cfg.num_query_tokens} + prompt + queries {cfg.num_instances * cfg.num_points}), "
                             f"longer than the language model's context lm_max_positions = {cfg.lm_max_positions}")
        if max(prompt_ids) >= cfg.lm_vocab or min(prompt_ids) < 0:
            raise ValueError(f"mapdet: prompt token id {max(prompt_ids)} outside the vocabulary of {cfg.lm_vocab}")
        self.cfg = cfg
        self.encoder = MultiCameraEncoder(cfg)
        self.vision_proj = (nn.Identity() if cfg.vision_width == cfg.qformer_encoder_width
                            else nn.Linear(cfg.vision_width, cfg.qformer_encoder_width))
        self.qformer = Blip2QFormerModel(cfg.qformer_config())
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_query_tokens, cfg.qformer_width) * 0.02)
        self.language_projection = nn.Linear(cfg.qformer_width, cfg.lm_width)
        self.language_model = (language_model if language_model is not None
                               else build_language_model(cfg).to(cfg.torch_lm_dtype))
        I, P, D = cfg.num_instances, cfg.num_points, cfg.lm_width
        self.instance_queries = nn.Parameter(torch.randn(I, D) * 0.02)
        self.point_queries = nn.Parameter(torch.randn(I * P, D) * 0.02)
        self.decoder = MapDecoder(cfg)
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)
        self.set_frozen(cfg.freeze_encoder, cfg.freeze_lm)

    def set_frozen(self, encoder: bool, lm: bool) -> None:
        self.encoder.vision_model.requires_grad_(not encoder)
        self.language_model.requires_grad_(not lm)

    def map_queries(self) -> torch.Tensor:
        I, P = self.cfg.num_instances, self.cfg.num_points
        q = self.point_queries.view(I, P, -1) + self.instance_queries[:, None]      # [I, P, D]
        return q.flatten(0, 1)                                                    # [I*P, D]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        B = images.shape[0]
        vis = self.vision_proj(self.encoder(images))                             # [B, N*L, Denc]
        q = self.query_tokens.expand(B, -1, -1)
        q = self.qformer(query_embeds=q, encoder_hidden_states=vis).last_hidden_state   # [B, Nq, Dq]
        visual = self.language_projection(q)                                     # [B, Nq, Dlm]
        prompt = self.language_model.get_input_embeddings()(self.prompt_ids)      # [Lp, Dlm]
        queries = self.map_queries()
        lm_dtype = prompt.dtype                                                  # the LM's weights' dtype
        seq = torch.cat([visual.to(lm_dtype), prompt[None].expand(B, -1, -1),
                         queries.to(lm_dtype)[None].expand(B, -1, -1)], 1)      # [B, Nq+Lp+I*P, Dlm]
        hidden = self.language_model(inputs_embeds=seq).last_hidden_state.to(visual.dtype)
        n = queries.shape[0]
        states = hidden[:, -n:].reshape(B, self.cfg.num_instances, self.cfg.num_points, -1)
        return self.decoder(states)

    def groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by optimiser group: ``qformer`` (camera embedding, input projection, Q-Former, query
        tokens, language projection), ``queries`` (map queries), ``decoder``, ``lm`` and ``encoder`` (trainable
        only when unfrozen)."""
        out: dict[str, list] = {"qformer": [], "queries": [], "decoder": [], "lm": [], "encoder": []}
        for name, p in self.named_parameters():
            if name.startswith("language_model."):
                out["lm"].append((name, p))
            elif name.startswith("encoder.vision_model."):
                out["encoder"].append((name, p))
            elif name in ("instance_queries", "point_queries"):
                out["queries"].append((name, p))
            elif name.startswith("decoder."):
                out["decoder"].append((name, p))
            else:
                out["qformer"].append((name, p))
        return out
