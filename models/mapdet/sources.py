"""Where the map detector's pretrained parts come from: real checkpoint folders, or seeded random ones.

``mapdet.blip2_checkpoint`` (a BLIP-2 folder: ``vision_model.*`` + ``query_tokens`` + ``qformer.*``) and
``mapdet.lm_checkpoint`` (a LLaMA / Qwen2 folder with its tokenizer) load through :mod:`.checkpoints` with every
key accounted for. When a folder is not given (real checkpoints cannot be downloaded here), seeded random tensors
are written in the exact real key layouts for the configured sizes (the LM over two shards with an index) into a
temporary folder and pushed through the same loaders; the provenance says ``random_source: true`` and the stage
logs say so. The prompt is tokenised by the folder's tokenizer, or byte-level (UTF-8 bytes as ids) for the random
LM, whose vocabulary is 256.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from . import checkpoints as C
from .config import MapDetConfig


def vision_layout(cfg: MapDetConfig) -> dict[str, tuple[int, ...]]:
    from transformers import Blip2VisionModel

    with torch.device("meta"):
        vm = Blip2VisionModel(cfg.vision_config())
    return {f"vision_model.{k}": tuple(v.shape) for k, v in vm.state_dict().items()}


def load_vision_model(index: C.SafetensorsIndex, vision_model: nn.Module) -> dict:
    """``vision_model.*`` of a BLIP-2 folder into a ``Blip2VisionModel``, strictly (missing, unexpected and wrongly
    shaped keys are one error naming them), as float32."""
    target = {f"vision_model.{k}": tuple(v.shape) for k, v in vision_model.state_dict().items()}
    found = {k: tuple(e.shape) for k, e in index.entries.items() if k.startswith("vision_model.")}
    missing = sorted(set(target) - set(found))
    unexpected = sorted(set(found) - set(target))
    pos = "vision_model.embeddings.position_embedding"
    resample = (pos in target and pos in found and target[pos] != found[pos]
                and target[pos][::2] == found[pos][::2] and _square(found[pos][1] - 1) and _square(target[pos][1] - 1))
    shape = sorted(k for k in set(target) & set(found) if target[k] != found[k] and not (resample and k == pos))
    if missing or unexpected or shape:
        parts = [f"missing {missing[:8]}" if missing else "", f"unexpected {unexpected[:8]}" if unexpected else "",
                 "wrong shape " + ", ".join(f"{k} {list(found[k])} (model {list(target[k])})" for k in shape[:8])
                 if shape else ""]
        raise C.CheckpointFolderError(f"{index.folder}: the image encoder (vision_model.*) does not match "
                                      f"mapdet's vision_* params: {'; '.join(p for p in parts if p)}")
    state = {k[len("vision_model."):]: t for k, t in index.read(sorted(target), dtype=torch.float32)}
    note = {}
    if resample:
        key = pos[len("vision_model."):]
        state[key] = resample_positions(state[key], target[pos][1] - 1)
        note = {"resampled": f"{pos} {list(found[pos])} -> {list(target[pos])} (bicubic, CLS kept)"}
    vision_model.load_state_dict(state, strict=True)
    return {"tensors": len(state), "params": int(sum(t.numel() for t in state.values())), **note}


def _square(n: int) -> bool:
    return n > 0 and round(n ** 0.5) ** 2 == n


def resample_positions(pos: torch.Tensor, patches: int) -> torch.Tensor:
    """[1, 1 + g*g, D] -> [1, 1 + patches, D]: the patch grid resized bicubically (HF's interpolate_pos_encoding), the
    CLS entry kept as is. For a BLIP-2 ViT (224 px, 16 x 16) run at another image size, e.g. the seed's 336 px."""
    import torch.nn.functional as F

    g, n = round((pos.shape[1] - 1) ** 0.5), round(patches ** 0.5)
    grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)                  # [1, D, g, g]
    grid = F.interpolate(grid, size=(n, n), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n * n, -1)], 1)


def build_detector(cfg: MapDetConfig, p, seed: int):
    """``(MapDetector, provenance dict)``: the model with its BLIP-2 parts and language model loaded from
    ``p.blip2_checkpoint`` / ``p.lm_checkpoint``, or from seeded random folders in the real layouts."""
    from .model import MapDetector

    provenance: dict = {}
    with tempfile.TemporaryDirectory(prefix="mapdet_sources_") as tmp:
        lm_folder = Path(p.lm_checkpoint) if p.lm_checkpoint else Path(tmp) / "lm"
        if not p.lm_checkpoint:
            C.write_random_checkpoint(cfg.lm_config(), lm_folder, seed=seed + 1, shards=2)
        lm, tokenizer, lm_report = C.load_language_model(lm_folder, cfg.torch_lm_dtype, freeze=cfg.freeze_lm)
        _check_lm_matches(cfg, lm, lm_folder)
        lm_report.random_source = not p.lm_checkpoint
        prompt_ids, tokenizer_name = tokenize_prompt(cfg, p.prompt, tokenizer)
        model = MapDetector(cfg, prompt_ids, language_model=lm)

        blip_folder = Path(p.blip2_checkpoint) if p.blip2_checkpoint else Path(tmp) / "blip2"
        if not p.blip2_checkpoint:
            layout = {**vision_layout(cfg), **C.random_blip2_qformer_layout(cfg.qformer_config(),
                                                                            cfg.num_query_tokens)}
            C.write_random_checkpoint(layout, blip_folder, seed=seed + 2, shards=1,
                                      config=C.blip2_qformer_config_json(cfg.qformer_config(), cfg.num_query_tokens))
        index = C.resolve_folder(blip_folder)
        q_report = C.load_qformer(blip_folder, model.qformer, model.query_tokens, index=index)
        q_report.random_source = not p.blip2_checkpoint
        vision = load_vision_model(index, model.encoder.vision_model)
        model.set_frozen(cfg.freeze_encoder, cfg.freeze_lm)
        provenance = {
            "random_sources": not (p.lm_checkpoint and p.blip2_checkpoint),
            "language_model": {**lm_report.to_dict(), "source": str(p.lm_checkpoint) if p.lm_checkpoint
                               else f"seeded random (seed {seed + 1}) in the real layout, two shards"},
            "qformer": {**q_report.to_dict(), "source": str(p.blip2_checkpoint) if p.blip2_checkpoint
                        else f"seeded random (seed {seed + 2}) in BLIP-2's layout"},
            "vision_model": vision,
            "new": ["encoder.camera_embed", "language_projection", "instance_queries", "point_queries", "decoder.*"]
                   + (["vision_proj"] if cfg.vision_width != cfg.qformer_encoder_width else []),
            "tokenizer": tokenizer_name, "prompt_tokens": len(prompt_ids),
        }
    return model, provenance


def tokenize_prompt(cfg: MapDetConfig, prompt: str, tokenizer=None) -> tuple[list[int], str]:
    """The prompt's ids by the LM folder's tokenizer, or byte-level when there is none (the random LM)."""
    if tokenizer is None:
        return C.ByteTokenizer(cfg.lm_vocab).encode(prompt), "bytes (UTF-8 bytes as ids; the random LM has none)"
    return list(tokenizer(prompt)["input_ids"]), type(tokenizer).__name__


def prompt_ids_for(cfg: MapDetConfig, p) -> list[int]:
    """The prompt ids a trained detector was built with (its tokenizer read again from ``p.lm_checkpoint``)."""
    tokenizer = None
    if p.lm_checkpoint:
        from transformers import AutoTokenizer

        folder = Path(p.lm_checkpoint)
        if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return tokenize_prompt(cfg, p.prompt, tokenizer)[0]


def _check_lm_matches(cfg: MapDetConfig, lm: nn.Module, folder: Path) -> None:
    """A real LM folder decides the LM; the ``lm_*`` params must describe it (they size the queries' width)."""
    c = lm.config
    pairs = {"lm_width": c.hidden_size, "lm_layers": c.num_hidden_layers, "lm_heads": c.num_attention_heads,
             "lm_kv_heads": c.num_key_value_heads, "lm_intermediate": c.intermediate_size, "lm_vocab": c.vocab_size,
             "lm_type": c.model_type}
    wrong = {k: (getattr(cfg, k), v) for k, v in pairs.items() if getattr(cfg, k) != v}
    if wrong:
        from models.common.params import ParamsError

        raise ParamsError(f"params: mapdet {', '.join(f'{k} = {a!r}' for k, (a, _) in wrong.items())} disagree with "
                          f"{folder}/config.json ({', '.join(f'{k[3:]} {b!r}' for k, (_, b) in wrong.items())}); set "
                          "the lm_* keys to the checkpoint's")
