"""Seeded random source checkpoints in the exact key layouts of Pi3 and PAGE-4D at a configured size.

Real Pi3 / PAGE-4D files cannot be downloaded here, so by default ``convert_weights`` writes these to a temporary
folder in the real on-disk formats (Pi3: flat safetensors; PAGE-4D: a torch zip holding ``{"model": state_dict,
"prev_epoch": ...}``) and reads them back through the same reader a real file goes through. The keys are those of
the real layouts scaled to the configuration: Pi3's ``encoder.*``, ``decoder.0 .. 2 * pi3_layers - 1``, a 5-slot
``register_token`` and its ``image_mean`` / ``image_std`` buffers; PAGE-4D's whole VGGT tree (encoder with
``mask_token``, ``frame_blocks`` / ``global_blocks`` ``0 .. depth - 1``, camera and register tokens, the mask head of
the configured variant, camera / depth / point heads). Pi3's own heads are left out (they are never used; the
full-size layout test reads them from ``pi3.json`` and checks they are declared unused).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .config import GeometryConfig
from .convert import plan

PI3_REGISTERS = 5


def source_layouts(cfg: GeometryConfig, target: dict[str, tuple]) -> dict[str, dict[str, tuple]]:
    """{"pi3": {key: shape}, "page4d": {key: shape}} at the configured size (``target``: the model's shapes)."""
    pi3: dict[str, tuple] = {}
    page4d: dict[str, tuple] = {}
    C = cfg.embed_dim
    for r in plan(cfg, target):
        if r.source == "pi3":
            shape = (1, 1, PI3_REGISTERS, C) if r.transform == "register_slots" else r.shape
            pi3[r.source_key] = tuple(shape)
        elif r.source == "page4d":
            page4d[r.source_key] = tuple(r.shape)
    pi3["image_mean"] = pi3["image_std"] = (1, 3, 1, 1)
    # PAGE-4D's own encoder, lower blocks and registers exist in its file (declared unused by the plan)
    for key, shape in target.items():
        if key.startswith("aggregator.patch_embed."):
            page4d.setdefault(key, tuple(shape))
        m = re.match(r"^aggregator\.(time|view)_blocks\.(\d+)\.(.+)$", key)
        if m:
            src = "frame_blocks" if m.group(1) == "time" else "global_blocks"
            page4d.setdefault(f"aggregator.{src}.{m.group(2)}.{m.group(3)}", tuple(shape))
    page4d["aggregator.register_token"] = (1, 2, cfg.num_register_tokens, C)
    return {"pi3": pi3, "page4d": page4d}


def random_state(layout: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Seeded N(0, 0.02) tensors (LayerNorm / LayerScale weights around 1), float32, in ``layout`` order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        t = torch.randn(shape, generator=g) * 0.02
        if re.search(r"(norm\w*|norm\d?)\.weight$", key):
            t = t + 1.0
        out[key] = t
    return out


def write_random_sources(cfg: GeometryConfig, target: dict[str, tuple], folder: str | Path,
                         seed: int) -> dict[str, Path]:
    """Write ``pi3_random.safetensors`` and ``page4d_random.pt`` into ``folder``; returns their paths."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layouts = source_layouts(cfg, target)
    pi3 = random_state(layouts["pi3"], seed)
    page4d = random_state(layouts["page4d"], seed + 1)
    paths = {"pi3": folder / "pi3_random.safetensors", "page4d": folder / "page4d_random.pt"}
    save_file(pi3, str(paths["pi3"]))
    torch.save({"model": page4d, "prev_epoch": 150, "steps": 0}, paths["page4d"])
    return paths
