"""Pi3 + PAGE-4D -> the geometry model: source reading, the mapping plan, and the conversion itself.

The plan (``/work/shared/design/checkpoints.md`` §3) assigns every target tensor exactly one source row:

| target | source | transform |
| --- | --- | --- |
| ``aggregator.patch_embed.*`` (encoder) | pi3 ``encoder.*`` | copy; ``pos_embed`` resampled when the grids differ |
| ``aggregator.patch_embed.mask_token`` | page4d, same key | copy (Pi3 deletes it) |
| ``aggregator.time_blocks.k.*`` / ``view_blocks.k.*``, k < pi3_layers | pi3 ``decoder.{2k}`` / ``decoder.{2k+1}`` | copy |
| the same, k >= pi3_layers | page4d ``aggregator.frame_blocks.k`` / ``global_blocks.k`` | copy |
| ``aggregator.pose_time_blocks`` / ``pose_view_blocks`` (two_stream separate) | as the layer's time / view block | copy |
| ``aggregator.register_token`` [1, 2, R, C] | pi3 ``register_token`` [1, 1, 5, C] | slots ``register_slots``, repeated on dim 1 |
| ``aggregator.camera_token`` | page4d, same key | copy |
| ``aggregator.spatial_mask_head.*`` | page4d, same key (variant by shape) | copy |
| ``camera_head.*``, ``depth_head.*``, ``point_head.*`` | page4d, same keys | copy |
| ``aggregator.sparse_blocks.k.block.*`` (global_every) | the View-SA source block of its layer | copy |
| lambdas, ``mask_gate.*``, ``epipolar.strength``, ``sparse_blocks.k.memory_tokens`` | none | fresh (0; gate 1 / 1; memory N(0, 0.02)) |

Register slots: Pi3's 5 register tokens carry no position and its blocks are permutation-equivariant over tokens,
so no slot is special; the default keeps slots 1-4 and leaves slot 0 out, because PAGE-4D's trained camera token
takes the first special position that Pi3's slot 0 held (option (a) of checkpoints.md §4).

Source keys that are not used are either declared (:func:`is_declared_unused`: Pi3's normalisation buffers and
heads, PAGE-4D's encoder, blocks below ``pi3_layers``, registers and track head) or an error; so is a missing key, a
wrong shape or an unsupported dtype. Nothing is skipped silently.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import GeometryConfig

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PREFIXES = ("module.", "_orig_mod.")
DROPPED = {
    "pi3": (r"^image_(mean|std)$", r"^(point_decoder|conf_decoder|camera_decoder|point_head|conf_head|camera_head)\."),
    "page4d": (r"^aggregator\.patch_embed\.(?!mask_token$)", r"^aggregator\.register_token$", r"^track_head\."),
}


class ConversionError(ValueError):
    """A source checkpoint does not fit the plan (names the file, the key, the expected and the found)."""


@dataclass
class Row:
    target: str
    shape: tuple
    source: str          # "pi3", "page4d" or "fresh"
    source_key: str
    transform: str       # copy | register_slots | pos_embed_resample | fresh


# ------------------------------------------------------------------------------------------ reading
def strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for p in PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A source checkpoint as {key: tensor}: flat safetensors, or a torch zip whose state dict is the file or its
    ``model`` entry, read with ``torch.load(weights_only=True, mmap=True)`` (never unpickling code)."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    else:
        if not zipfile.is_zipfile(path):
            raise ConversionError(f"{path}: not a torch zip checkpoint (truncated, or a legacy pickle): refused")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConversionError(f"{path}: refused: the file asks for Python objects beyond tensors and plain "
                                  f"containers, which torch.load(weights_only=True) will not build (no code is "
                                  f"unpickled): {first}") from None
        except (RuntimeError, EOFError, ValueError, OSError) as exc:
            raise ConversionError(f"{path}: unreadable torch checkpoint (truncated or corrupt?): "
                                  f"{str(exc).strip().splitlines()[0]}") from None
        state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
        if not isinstance(state, dict):
            raise ConversionError(f"{path}: expected a state dict (or a dict with 'model'), got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entry {bad[0]!r} is not a tensor ({type(state[bad[0]]).__name__})")
    state = strip_prefixes(state)
    for k, v in state.items():
        if v.dtype not in DTYPES:
            raise ConversionError(f"{path}: key {k!r} has dtype {v.dtype}; float32, float16 or bfloat16 expected")
    return state


# ---------------------------------------------------------------------------------------- the plan
def _block_rows(cfg: GeometryConfig, target: dict[str, tuple]) -> list[Row]:
    rows = []
    pat = re.compile(r"^aggregator\.(pose_)?(time|view)_blocks\.(\d+)\.(.+)$")
    offset = cfg.layer_of_mask
    for key, shape in target.items():
        m = pat.match(key)
        if not m:
            continue
        pose, kind, k, suffix = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        layer = k + offset if pose else k
        if layer < cfg.pi3_layers:
            rows.append(Row(key, shape, "pi3", f"decoder.{2 * layer + (kind == 'view')}.{suffix}", "copy"))
        else:
            src = "frame_blocks" if kind == "time" else "global_blocks"
            rows.append(Row(key, shape, "page4d", f"aggregator.{src}.{layer}.{suffix}", "copy"))
    sparse = re.compile(r"^aggregator\.sparse_blocks\.(\d+)\.block\.(.+)$")
    for key, shape in target.items():                   # sparse global blocks: the layer's View-SA source block
        m = sparse.match(key)
        if not m:
            continue
        layer, suffix = cfg.global_layers[int(m.group(1))], m.group(2)
        if layer < cfg.pi3_layers:
            rows.append(Row(key, shape, "pi3", f"decoder.{2 * layer + 1}.{suffix}", "copy"))
        else:
            rows.append(Row(key, shape, "page4d", f"aggregator.global_blocks.{layer}.{suffix}", "copy"))
    return rows


def plan(cfg: GeometryConfig, target: dict[str, tuple]) -> list[Row]:
    """One row per target tensor (``target``: {key: shape} of the model's state dict), in the model's order."""
    rows = {r.target: r for r in _block_rows(cfg, target)}
    for key, shape in target.items():
        if key in rows:
            continue
        if key.startswith("aggregator.patch_embed."):
            rest = key[len("aggregator.patch_embed."):]
            if rest == "mask_token":
                rows[key] = Row(key, shape, "page4d", key, "copy")
            else:
                rows[key] = Row(key, shape, "pi3", f"encoder.{rest}",
                                "pos_embed_resample" if rest == "pos_embed" else "copy")
        elif key == "aggregator.register_token":
            rows[key] = Row(key, shape, "pi3", "register_token", "register_slots")
        elif key in ("aggregator.camera_token",) or key.startswith(("aggregator.spatial_mask_head.", "camera_head.",
                                                                      "depth_head.", "point_head.")):
            rows[key] = Row(key, shape, "page4d", key, "copy")
        elif key.startswith(("aggregator.lambda_", "aggregator.mask_gate.", "aggregator.epipolar.")) or \
                re.match(r"^aggregator\.sparse_blocks\.\d+\.memory_tokens$", key):
            rows[key] = Row(key, shape, "fresh", "", "fresh")
        else:
            raise ConversionError(f"target key {key!r} {list(shape)} has no source in the conversion plan")
    return [rows[k] for k in target]


def is_declared_unused(source: str, key: str, cfg: GeometryConfig) -> bool:
    """Source keys the plan leaves out on purpose (:data:`DROPPED`, and PAGE-4D's blocks below ``pi3_layers``)."""
    if any(re.search(p, key) for p in DROPPED[source]):
        return True
    m = re.match(r"^aggregator\.(frame|global)_blocks\.(\d+)\.", key)
    return source == "page4d" and m is not None and int(m.group(2)) < cfg.pi3_layers


MASK_KEY = "aggregator.spatial_mask_head.head0.2.weight"


def mask_head_variant(page4d: dict[str, tuple]) -> str | None:
    """PAGE-4D's mask head variant from the shape of ``head0.2.weight`` (checkpoints.md §1): depthwise [C, 1, 3, 3]
    in the evaluation release, pointwise [hidden, C, 1, 1] in the official one; None without a mask head."""
    shape = page4d.get(MASK_KEY)
    if shape is None:
        return None
    return "eval" if tuple(shape[1:]) == (1, 3, 3) else "official"


def check_sources(cfg: GeometryConfig, rows: list[Row], sources: dict[str, dict[str, tuple]],
                  names: dict[str, str]) -> None:
    """Every planned source key exists with the right shape, and every source key is used or declared unused."""
    variant = mask_head_variant(sources["page4d"])
    if variant is not None and variant != cfg.mask_head:
        raise ConversionError(f"{names['page4d']}: key {MASK_KEY!r} has shape {list(sources['page4d'][MASK_KEY])}: "
                              f"PAGE-4D's {variant} mask head; set geometry.mask_head: {variant} (it is "
                              f"{cfg.mask_head!r})")
    used: dict[str, set] = {s: set() for s in sources}
    for r in rows:
        if r.source == "fresh":
            continue
        have = sources[r.source]
        if r.source_key not in have:
            raise ConversionError(f"{names[r.source]}: missing key {r.source_key!r} (for {r.target}, expected "
                                  f"shape {list(r.shape)})")
        found = tuple(have[r.source_key])
        if r.transform == "copy" and found != tuple(r.shape):
            hint = ""
            if r.target.startswith("aggregator.spatial_mask_head."):
                hint = " (the checkpoint's PAGE-4D mask head variant differs from geometry.mask_head?)"
            raise ConversionError(f"{names[r.source]}: key {r.source_key!r} has shape {list(found)}, "
                                  f"{r.target} expects {list(r.shape)}{hint}")
        if r.transform == "register_slots" and (len(found) != 4 or found[0] != 1 or found[3] != r.shape[3]):
            raise ConversionError(f"{names[r.source]}: key {r.source_key!r} has shape {list(found)}, expected "
                                  f"[1, 1, >= {r.shape[2]}, {r.shape[3]}]")
        if r.transform == "pos_embed_resample" and (len(found) != 3 or found[2] != r.shape[2]):
            raise ConversionError(f"{names[r.source]}: key {r.source_key!r} has shape {list(found)}, expected "
                                  f"[1, 1 + g*g, {r.shape[2]}]")
        used[r.source].add(r.source_key)
    for src, have in sources.items():
        for key in have:
            if key not in used[src] and not is_declared_unused(src, key, cfg):
                raise ConversionError(f"{names[src]}: key {key!r} {list(have[key])} is not mapped to any target "
                                      f"and not a declared unused key")


def convert(cfg: GeometryConfig, target: dict[str, torch.Tensor], pi3: dict, page4d: dict,
            names: dict[str, str], register_slots: tuple = (1, 2, 3, 4)) -> tuple[dict, list[Row]]:
    """The converted state dict (fresh rows keep ``target``'s initial values) and the plan's rows."""
    from .encoder import resample_pos_embed

    rows = plan(cfg, {k: tuple(v.shape) for k, v in target.items()})
    sources = {"pi3": pi3, "page4d": page4d}
    check_sources(cfg, rows, {s: {k: tuple(v.shape) for k, v in d.items()} for s, d in sources.items()}, names)
    out = {}
    for r in rows:
        if r.source == "fresh":
            out[r.target] = target[r.target].detach().clone().float()
            continue
        t = sources[r.source][r.source_key].float()
        if r.transform == "register_slots":
            if max(register_slots) >= t.shape[2] or len(register_slots) != r.shape[2]:
                raise ConversionError(f"convert.register_slots = {list(register_slots)}: {r.shape[2]} distinct slots "
                                      f"of the {t.shape[2]} in {names['pi3']} are needed")
            t = t[:, :, list(register_slots)].expand(1, 2, -1, -1)
        elif r.transform == "pos_embed_resample":
            if tuple(t.shape) == tuple(r.shape):
                r.transform = "copy"
            else:
                g, g_src = (int(round((n - 1) ** 0.5)) for n in (r.shape[1], t.shape[1]))
                t = resample_pos_embed(t, (g, g))
                r.transform = f"pos_embed_resample {g_src}x{g_src} -> {g}x{g} (bicubic, antialiased, cls kept)"
        out[r.target] = t.contiguous().clone()
    return out, rows
