"""Checkpoint folders of the map detector's pretrained parts: BLIP-2's Q-Former and a frozen LLaMA / Qwen2 LM.

Facts and checks: ``/work/shared/design/mapdet_checkpoints.md`` (layouts §1-3, loader checks §4). A folder is a
Hugging Face checkpoint folder: ``config.json`` plus either ``model.safetensors`` or ``model.safetensors.index.json``
with its shards (tokenizer files optional). Only safetensors are read, header first, tensor by tensor.

Checks, each raising :class:`CheckpointFolderError` with the file and/or the keys named:

- :func:`resolve_folder` (§4.1-2): no checkpoint file; the index names a missing shard; a key is mapped twice or sits
  in two shard headers; a header key is not in ``weight_map``, or is mapped to a shard whose header lacks it;
  ``metadata.total_size`` is not the sum of numel x itemsize from the headers.
- :func:`load_qformer` (§1, §4.3-6): the module's / folder's Q-Former config or the query-token count disagrees with
  the tensor shapes; missing, unexpected or wrongly shaped keys.
- :func:`load_language_model` (§2, §4.3-8): ``model_type`` not llama/qwen2; the config disagrees with the tensor
  shapes; missing, unexpected or wrongly shaped keys; an untied head absent while the head is kept.

Declared ignores (recorded in :class:`LoadReport` ``declared_skipped``, never silent): ``vision_model.*``,
``language_model.*``, ``language_projection.*`` and the stray Q-Former text FFN ``qformer.encoder.layer.N.
{intermediate,output}.*`` when only the Q-Former is taken; legacy ``*.rotary_emb.inv_freq``; ``lm_head.weight`` when the
LM is used as a feature extractor (hidden states only). Q-Former and query tokens are loaded as float32 whatever the
header dtype (HF ``_keep_in_fp32_modules``); the LM is cast to the caller's dtype (bf16 on GPU, fp32 on CPU tests).

Real checkpoints cannot be downloaded by the pipeline, so :func:`write_random_checkpoint` writes seeded random tensors
in a real layout (a ``shared/checkpoint_layouts`` JSON, or one derived from a config by
:func:`random_blip2_qformer_layout` / :func:`random_language_model_layout`); the caller sets
``LoadReport.random_source`` for them.
"""
from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
            "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
LM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

QFORMER_IGNORES = (
    ("vision_model.* (BLIP-2 image encoder: ours replaces it)", r"^vision_model\."),
    ("language_model.* (BLIP-2's own LM: ours is loaded separately)", r"^language_model\."),
    ("language_projection.* (BLIP-2's LM-specific projection: ours is new)", r"^language_projection\."),
    ("qformer.encoder.layer.N.intermediate/output.* (stray text-branch FFN, unused by the query path)",
     r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\."),
)
INV_FREQ_IGNORE = ("*.rotary_emb.inv_freq (legacy persistent buffer; recomputed)", r"(^|\.)rotary_emb\.inv_freq$")
LM_HEAD_SKIP = "lm_head.weight (feature extractor: hidden states only, the LM head is never used)"
LM_HEAD_TIED_SKIP = "lm_head.weight (config ties it: aliased to embed_tokens, the file copy is not used)"

# The public config.json files (design note §2), for the full-size meta counts when no layout folder is at hand.
LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True, "vocab_size": 32000}
QWEN2_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064}
BLIP2_NUM_QUERY_TOKENS = 32
BLIP2_ENCODER_HIDDEN_SIZE = 1408


class CheckpointFolderError(ValueError):
    """A checkpoint folder is unreadable or does not fit the model (names the file and/or the keys)."""


def _listed(items: list[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


# ---------------------------------------------------------------------------------------------- the files
@dataclass(frozen=True)
class TensorEntry:
    file: str                  # shard file name, relative to the folder
    dtype: str                 # safetensors header dtype: "F32", "F16", "BF16", ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


@dataclass
class SafetensorsIndex:
    """A resolved checkpoint folder: ``{key: (file, dtype, shape)}`` from the headers, no tensor data read."""
    folder: Path
    index_file: Path | None
    entries: dict[str, TensorEntry]
    total_size: int
    _sha256: dict[str, str] = field(default_factory=dict, repr=False)

    def keys(self) -> list[str]:
        return list(self.entries)

    def files(self) -> list[str]:
        return sorted({e.file for e in self.entries.values()})

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.entries.items()}

    def where(self, key: str) -> str:
        return self.entries[key].file

    def sha256(self, file: str) -> str:
        """SHA-256 of one shard (computed on first use, cached; shards can be GBs)."""
        if file not in self._sha256:
            h = hashlib.sha256()
            with open(self.folder / file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 23), b""):
                    h.update(chunk)
            self._sha256[file] = h.hexdigest()
        return self._sha256[file]

    def read(self, keys: Iterable[str], dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """``(key, tensor)`` for ``keys``, shard by shard (each shard opened once), cast to ``dtype`` if given."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.entries[k].file, []).append(k)
        for file in sorted(by_file):
            with safe_open(str(self.folder / file), framework="pt") as f:
                for k in by_file[file]:
                    t = f.get_tensor(k)
                    yield k, (t.to(dtype) if dtype is not None and t.dtype != dtype else t)


def _read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (str(sl.get_dtype()), tuple(int(s) for s in sl.get_shape()))
            return out
    except Exception as exc:  # safetensors raises its own error type for a corrupt header
        raise CheckpointFolderError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def _entry(path: Path, key: str, dtype: str, shape: tuple[int, ...]) -> TensorEntry:
    if dtype not in ITEMSIZE:
        raise CheckpointFolderError(f"{path}: key {key!r} has unknown safetensors dtype {dtype!r}")
    return TensorEntry(path.name, dtype, shape)


def _read_index(path: Path) -> tuple[dict[str, str], Any]:
    duplicates: list[str] = []

    def pairs(items):
        out: dict = {}
        for k, v in items:
            if k in out and isinstance(v, str):
                duplicates.append(f"{k!r} (to {out[k]} and {v})")
            out[k] = v
        return out

    try:
        data = json.loads(path.read_text(), object_pairs_hook=pairs)
    except (OSError, ValueError) as exc:
        raise CheckpointFolderError(f"{path}: not a readable JSON index: {exc}") from None
    if duplicates:
        raise CheckpointFolderError(f"{path}: weight_map maps a key twice (a key may sit in one file only): "
                                    f"{_listed(duplicates)}")
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise CheckpointFolderError(f"{path}: 'weight_map' must be a flat {{tensor name: shard file}} object")
    meta = data.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    return wmap, total


def resolve_folder(folder: str | Path) -> SafetensorsIndex:
    """The folder's checkpoint: ``model.safetensors.index.json`` if present, else ``model.safetensors`` (§4.1-2).

    Index checks (one error listing every problem): every shard named exists; no key is mapped twice or sits in two
    shard headers; the header keys equal the ``weight_map`` keys (a header key not in the map, or a key mapped to a
    shard whose header lacks it, is named with its file); ``metadata.total_size`` = Σ numel × itemsize."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointFolderError(f"{folder}: checkpoint folder not found")
    index_path, single = folder / INDEX_NAME, folder / SINGLE_NAME
    if not index_path.is_file():
        if not single.is_file():
            present = sorted(p.name for p in folder.iterdir())
            hint = " (only safetensors checkpoints are read; .bin pickles are refused)" if any(
                n.endswith(".bin") for n in present) else ""
            raise CheckpointFolderError(f"{folder}: neither {INDEX_NAME} nor {SINGLE_NAME} found; the folder holds "
                                        f"{_listed(present) or 'nothing'}{hint}")
        entries = {k: _entry(single, k, d, s) for k, (d, s) in _read_header(single).items()}
        return SafetensorsIndex(folder, None, entries, sum(e.nbytes for e in entries.values()))

    wmap, total = _read_index(index_path)
    bad_names = sorted({f for f in wmap.values() if Path(f).is_absolute() or ".." in Path(f).parts})
    if bad_names:
        raise CheckpointFolderError(f"{index_path}: weight_map names files outside the folder: {_listed(bad_names)}")
    files = sorted(set(wmap.values()))
    missing_files = [f for f in files if not (folder / f).is_file()]
    if missing_files:
        detail = [f"{f} ({sum(v == f for v in wmap.values())} keys, e.g. "
                  f"{next(k for k, v in wmap.items() if v == f)!r})" for f in missing_files]
        raise CheckpointFolderError(f"{index_path}: weight_map names shard files that do not exist in {folder}: "
                                    f"{_listed(detail)}")
    headers = {f: _read_header(folder / f) for f in files}
    problems: list[str] = []
    holders: dict[str, list[str]] = {}
    for f, header in headers.items():
        for k in header:
            holders.setdefault(k, []).append(f)
    in_two = [f"{k!r} in {' and '.join(fs)}" for k, fs in holders.items() if len(fs) > 1]
    if in_two:
        problems.append(f"keys stored in more than one shard: {_listed(in_two)}")
    not_mapped = [f"{k!r} (in {fs[0]})" for k, fs in holders.items() if len(fs) == 1 and k not in wmap]
    if not_mapped:
        problems.append(f"shard header keys missing from weight_map: {_listed(not_mapped)}")
    misrouted = [f"{k!r} (weight_map says {f}, whose header lacks it"
                 + (f"; it is in {', '.join(holders[k])})" if k in holders else ")")
                 for k, f in wmap.items() if k not in headers[f]]
    if misrouted:
        problems.append(f"weight_map keys not in their shard's header: {_listed(misrouted)}")
    entries = {k: _entry(folder / f, k, *headers[f][k]) for k, f in wmap.items() if k in headers[f]}
    size = sum(e.nbytes for e in entries.values())
    if isinstance(total, bool) or not isinstance(total, int):
        problems.append(f"metadata.total_size is {total!r}, expected an integer byte count ({size})")
    elif total != size and not misrouted:
        problems.append(f"metadata.total_size = {total} but the shard headers hold {size} bytes "
                        f"(sum of numel x itemsize over {len(entries)} tensors)")
    if problems:
        raise CheckpointFolderError(f"{index_path}: " + "; ".join(problems))
    return SafetensorsIndex(folder, index_path, entries, size)


def read_config(folder: str | Path) -> dict | None:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointFolderError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointFolderError(f"{path}: expected a JSON object")
    return data


# -------------------------------------------------------------------------------------------- the report
@dataclass
class LoadReport:
    """What a loader took from a folder (§4.10 provenance): JSON-able via :meth:`to_dict`."""
    source: str                                    # the folder
    kind: str                                      # "blip2_qformer", "llama" or "qwen2"
    index_file: str | None
    target_dtype: str
    loaded: dict[str, dict[str, int]] = field(default_factory=dict)      # file-key prefix -> {"tensors", "params"}
    header_dtypes: dict[str, list[str]] = field(default_factory=dict)   # prefix -> dtypes in the headers
    declared_skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> file keys not loaded
    reinitialised: list[str] = field(default_factory=list)              # target keys left at their fresh init
    aliased: dict[str, str] = field(default_factory=dict)               # target key -> the key it shares
    facts: dict[str, Any] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)
    random_source: bool = False                                         # set by the caller

    @property
    def num_tensors(self) -> int:
        return sum(v["tensors"] for v in self.loaded.values())

    @property
    def num_params(self) -> int:
        return sum(v["params"] for v in self.loaded.values())

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def _new_report(index: SafetensorsIndex, kind: str, dtype: torch.dtype) -> LoadReport:
    return LoadReport(str(index.folder), kind, index.index_file.name if index.index_file else None,
                      str(dtype).replace("torch.", ""))


def _record_loaded(report: LoadReport, index: SafetensorsIndex, keys: Iterable[str], hash_files: bool) -> None:
    dtypes: dict[str, set] = {}
    files = set()
    for k in keys:
        e = index.entries[k]
        prefix = k.split(".", 1)[0]
        slot = report.loaded.setdefault(prefix, {"tensors": 0, "params": 0})
        slot["tensors"] += 1
        slot["params"] += e.numel
        dtypes.setdefault(prefix, set()).add(e.dtype)
        files.add(e.file)
    report.header_dtypes = {p: sorted(d) for p, d in dtypes.items()}
    if hash_files:
        report.file_sha256 = {f: index.sha256(f) for f in sorted(files)}


@dataclass
class _Plan:
    load: dict[str, str]                       # file key -> target key
    skipped: dict[str, list[str]]              # reason -> file keys


def _account(index: SafetensorsIndex, target: Mapping[str, tuple], to_target, ignores: Iterable[tuple[str, str]],
             what: str, reinitialise: Iterable[str] = (), aliased: Iterable[str] = (),
             hints: Iterable[str] = (), to_file=None) -> _Plan:
    """Strict accounting (§4.4): every file key is loaded or declared ignored, every target key is loaded, declared
    re-initialised or aliased, and the shapes agree. One error names every culprit."""
    reinit, alias = set(reinitialise), set(aliased)
    load, skipped, unexpected = {}, {}, []
    for k in index.entries:
        t = to_target(k)
        if t is not None and t in target and t not in reinit and t not in alias:
            load[k] = t
            continue
        reason = next((r for r, pat in ignores if re.search(pat, k)), None)
        if reason is None and t in reinit:
            reason = "declared re-initialised (file tensor not used)"
        if reason is None:
            unexpected.append(f"{k} ({index.where(k)})")
        else:
            skipped.setdefault(reason, []).append(k)
    covered = set(load.values()) | reinit | alias
    missing = [to_file(t) if to_file else t for t in target if t not in covered]
    shapes = [f"{k} ({index.where(k)}): file {list(index.entries[k].shape)} vs model {list(target[t])}"
              for k, t in load.items() if tuple(index.entries[k].shape) != tuple(target[t])]
    problems = [f"shape mismatch: {_listed(shapes)}"] if shapes else []
    problems += [f"missing in file: {_listed(missing)}"] if missing else []
    problems += [f"unexpected in file: {_listed(unexpected)}"] if unexpected else []
    if problems:
        hint = "".join(f" ({h})" for h in hints)
        raise CheckpointFolderError(f"{index.folder}: checkpoint does not fit {what}; " + "; ".join(problems) + hint)
    return _Plan(load, skipped)


# ---------------------------------------------------------------------------------------------- Q-Former
def qformer_config_from_folder(folder: str | Path):
    """A ``Blip2QFormerConfig`` from the folder's ``config.json``: its ``qformer_config`` section (a BLIP-2 config;
    ``encoder_hidden_size`` = ``vision_config.hidden_size`` as ``Blip2Config`` forces it, 1408 by default) or a
    top-level ``blip_2_qformer`` config. None when the folder has no such config."""
    from transformers import Blip2QFormerConfig

    cfg = read_config(folder)
    if cfg is None:
        return None
    if cfg.get("model_type") == Blip2QFormerConfig.model_type:
        section = dict(cfg)
    elif isinstance(cfg.get("qformer_config"), dict):
        section = dict(cfg["qformer_config"])
        if isinstance(cfg.get("vision_config"), dict):
            section["encoder_hidden_size"] = cfg["vision_config"].get("hidden_size", BLIP2_ENCODER_HIDDEN_SIZE)
    else:
        return None
    section.pop("model_type", None)
    try:
        return Blip2QFormerConfig(**section)
    except (TypeError, ValueError) as exc:
        raise CheckpointFolderError(f"{Path(folder) / CONFIG_NAME}: invalid qformer_config: {exc}") from None


def num_query_tokens_from_folder(folder: str | Path) -> int | None:
    """``num_query_tokens`` of the folder's BLIP-2 ``config.json`` (None when absent)."""
    cfg = read_config(folder) or {}
    n = cfg.get("num_query_tokens")
    return int(n) if isinstance(n, int) else None


def _qformer_config_problems(config, where: str, shapes: Mapping[str, tuple], index: SafetensorsIndex,
                             num_query_tokens: int | None, tokens_where: str,
                             reinitialise: Iterable[str] = ()) -> list[str]:
    """Disagreements between a Q-Former config (``where`` names it) and the tensor shapes, each naming the field and
    the tensor (§4.8)."""
    out, fresh = [], set(reinitialise)

    def field_vs(name: str, value, key: str, found, how: str):
        if value is not None and found != value and key not in fresh:   # a re-initialised tensor may differ
            label = name if " " in name else f"{where}.{name}"
            out.append(f"{label} = {value} but {key} ({index.where(key)}) has shape {list(shapes[key])} "
                       f"-> {how} {found}")

    if "qformer.layernorm.weight" in shapes:
        field_vs("hidden_size", config.hidden_size, "qformer.layernorm.weight",
                 shapes["qformer.layernorm.weight"][0], "hidden size")
    if "query_tokens" in shapes and len(shapes["query_tokens"]) == 3:
        field_vs("hidden_size", config.hidden_size, "query_tokens", shapes["query_tokens"][2], "hidden size")
        field_vs(tokens_where, num_query_tokens, "query_tokens", shapes["query_tokens"][1], "query tokens")
    pat = re.compile(r"^qformer\.encoder\.layer\.(\d+)\.")
    layers = sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})
    if layers:
        first = f"qformer.encoder.layer.{layers[-1]}.attention.attention.query.weight"
        if layers != list(range(layers[-1] + 1)):
            out.append(f"{index.folder}: Q-Former layer indices are not contiguous: {layers}")
        elif layers[-1] + 1 != config.num_hidden_layers:
            key = first if first in shapes else next(k for k in shapes if k.startswith(
                f"qformer.encoder.layer.{layers[-1]}."))
            out.append(f"{where}.num_hidden_layers = {config.num_hidden_layers} but the file has "
                       f"{layers[-1] + 1} layers (last: {key}, {index.where(key)})")
        cross = sorted({int(m.group(1)) for k in shapes if (m := pat.match(k)) and ".crossattention." in k})
        expect = [i for i in layers if i % config.cross_attention_frequency == 0]
        if cross != expect:
            diff = sorted(set(cross) ^ set(expect))[0]
            out.append(f"{where}.cross_attention_frequency = {config.cross_attention_frequency} puts "
                       f"cross-attention in layers {expect}, but the file has qformer.encoder.layer.N.crossattention.* "
                       f"in layers {cross} (e.g. layer {diff}: qformer.encoder.layer.{diff}.crossattention."
                       f"attention.key.weight {'absent' if diff in expect else 'present'})")
        for i in cross[:1]:
            key = f"qformer.encoder.layer.{i}.crossattention.attention.key.weight"
            if key in shapes:
                field_vs("encoder_hidden_size", config.encoder_hidden_size, key, shapes[key][1],
                         "cross-attention key input width")
        key = f"qformer.encoder.layer.{layers[0]}.intermediate_query.dense.weight"
        if key in shapes:
            field_vs("intermediate_size", config.intermediate_size, key, shapes[key][0], "query FFN width")
    if config.hidden_size % config.num_attention_heads:
        out.append(f"{where}.num_attention_heads = {config.num_attention_heads} does not divide hidden_size "
                   f"{config.hidden_size}")
    return out


def load_qformer(folder: str | Path, qformer: nn.Module, query_tokens: nn.Parameter, *,
                 reinitialise: Iterable[str] = (), hash_files: bool = True,
                 index: SafetensorsIndex | None = None) -> LoadReport:
    """Load ``query_tokens`` + ``qformer.*`` of a BLIP-2 folder (HF ``Blip2ForConditionalGeneration`` naming, or a
    folder holding just those keys) into a ``transformers.Blip2QFormerModel`` and the ``[1, Nq, hidden]`` query
    Parameter, in place, as float32 (whatever the header dtype; a non-fp32 module is converted to fp32 first).

    Checks, each a :class:`CheckpointFolderError`: the module's config (and the folder's ``qformer_config``) against
    the tensor shapes — hidden size, layer count, cross-attention frequency, ``encoder_hidden_size`` (cross-attention
    key input width), intermediate size — and the query-token count; then missing / unexpected / wrongly shaped keys
    (all named in one error). ``reinitialise``: target keys (``qformer.…`` / ``query_tokens``) declared to keep their
    fresh init (none in our wiring: a projection in front keeps BLIP-2's cross-attention K/V)."""
    index = index or resolve_folder(folder)
    shapes = index.shapes()
    if query_tokens.device.type == "meta":
        raise CheckpointFolderError(f"{index.folder}: query_tokens is on the meta device; materialise it first")
    problems = _qformer_config_problems(qformer.config, f"{type(qformer).__name__}.config", shapes, index,
                                        query_tokens.shape[1] if query_tokens.dim() == 3 else None,
                                        f"the query_tokens Parameter {list(query_tokens.shape)}: token count",
                                        reinitialise)
    folder_cfg = qformer_config_from_folder(index.folder)
    if folder_cfg is not None:
        problems += _qformer_config_problems(folder_cfg, f"{CONFIG_NAME} qformer_config", shapes, index,
                                             num_query_tokens_from_folder(index.folder),
                                             f"{CONFIG_NAME} num_query_tokens")
    if problems:
        raise CheckpointFolderError(f"{index.folder}: Q-Former config disagrees with the tensor shapes: "
                                    + "; ".join(problems))
    target = {"query_tokens": tuple(query_tokens.shape),
              **{f"qformer.{k}": tuple(v.shape) for k, v in qformer.state_dict().items()}}
    hints = []
    if "qformer.embeddings.layernorm.weight" in shapes:
        hints.append("qformer.embeddings.* is InstructBLIP naming: its query LayerNorm is qformer.embeddings.layernorm")
    if any(k.startswith("Qformer.bert.") for k in shapes):
        hints.append("Qformer.bert.* is LAVIS naming: convert to HF names first")
    plan = _account(index, target, lambda k: k if k == "query_tokens" or k.startswith("qformer.") else None,
                    QFORMER_IGNORES, f"query_tokens + {type(qformer).__name__}", reinitialise, (), hints)

    cast = any(p.dtype != torch.float32 for p in qformer.parameters()) or query_tokens.dtype != torch.float32
    if cast:
        qformer.float()
        query_tokens.data = query_tokens.data.float()
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, t in index.read(plan.load, dtype=torch.float32):
            if k == "query_tokens":
                query_tokens.copy_(t)
            else:
                state[plan.load[k][len("qformer."):]] = t
    on_meta = any(p.device.type == "meta" for p in qformer.parameters())
    result = qformer.load_state_dict(state, strict=False, assign=on_meta)
    reinit_q = {k[len("qformer."):] for k in reinitialise if k.startswith("qformer.")}
    if result.unexpected_keys or set(result.missing_keys) - reinit_q:
        raise CheckpointFolderError(f"{index.folder}: Q-Former load_state_dict disagrees with the accounting: "
                                    f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    _no_meta(qformer, index.folder)

    report = _new_report(index, "blip2_qformer", torch.float32)
    _record_loaded(report, index, plan.load, hash_files)
    report.declared_skipped = plan.skipped
    report.reinitialised = sorted(reinitialise)
    report.facts = {"hidden_size": qformer.config.hidden_size, "num_hidden_layers": qformer.config.num_hidden_layers,
                    "cross_attention_frequency": qformer.config.cross_attention_frequency,
                    "encoder_hidden_size": qformer.config.encoder_hidden_size,
                    "num_query_tokens": int(query_tokens.shape[1]), "module_cast_to_fp32": cast}
    return report


def _no_meta(module: nn.Module, folder: Path) -> None:
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.device.type == "meta"]
    if left:
        raise CheckpointFolderError(f"{folder}: tensors left on the meta device after loading: {_listed(left)}")


# ------------------------------------------------------------------------------------------ language model
def lm_config_from_dict(data: Mapping[str, Any], where: str = CONFIG_NAME):
    """``LlamaConfig`` / ``Qwen2Config`` from a ``config.json`` dict (``model_type`` llama or qwen2)."""
    from transformers import LlamaConfig, Qwen2Config

    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    model_type = data.get("model_type")
    if model_type not in classes:
        raise CheckpointFolderError(f"{where}: model_type = {model_type!r}; llama or qwen2 expected")
    try:
        return classes[model_type](**{k: v for k, v in data.items() if k != "model_type"})
    except (TypeError, ValueError) as exc:
        raise CheckpointFolderError(f"{where}: invalid {model_type} config: {exc}") from None


def _lm_classes(model_type: str):
    from transformers import LlamaForCausalLM, LlamaModel, Qwen2ForCausalLM, Qwen2Model

    return {"llama": (LlamaModel, LlamaForCausalLM), "qwen2": (Qwen2Model, Qwen2ForCausalLM)}[model_type]


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _lm_config_problems(config, where: str, shapes: Mapping[str, tuple], index: SafetensorsIndex,
                        prefix: str) -> tuple[list[str], dict[str, int]]:
    """§4.8: hidden size, layer count, heads, KV heads (k_proj rows / head_dim), vocab and intermediate size derived
    from the shapes, compared with the config; each disagreement names the field and the tensor."""
    out, derived = [], {}

    def field_vs(name: str, value, key: str, found, how: str):
        derived[name] = found
        if found != value:
            out.append(f"{where}: {name} = {value} but {key} ({index.where(key)}) has shape {list(shapes[key])} "
                       f"-> {how}")

    emb = f"{prefix}embed_tokens.weight"
    if emb in shapes and len(shapes[emb]) == 2:
        field_vs("vocab_size", config.vocab_size, emb, shapes[emb][0], f"{shapes[emb][0]} rows")
        field_vs("hidden_size", config.hidden_size, emb, shapes[emb][1], f"width {shapes[emb][1]}")
    pat = re.compile(rf"^{re.escape(prefix)}layers\.(\d+)\.")
    layers = sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})
    if layers:
        derived["num_hidden_layers"] = layers[-1] + 1
        if layers != list(range(layers[-1] + 1)):
            out.append(f"{index.folder}: {prefix}layers.N indices are not contiguous: {layers}")
        elif layers[-1] + 1 != config.num_hidden_layers:
            key = next(k for k in shapes if k.startswith(f"{prefix}layers.{layers[-1]}."))
            out.append(f"{where}: num_hidden_layers = {config.num_hidden_layers} but the file has {layers[-1] + 1} "
                       f"layers (last: {key}, {index.where(key)})")
    hd = head_dim_of(config)
    attn = f"{prefix}layers.0.self_attn."
    q, k, gate = f"{attn}q_proj.weight", f"{attn}k_proj.weight", f"{prefix}layers.0.mlp.gate_proj.weight"
    for key, name, value in ((q, "num_attention_heads", config.num_attention_heads),
                             (k, "num_key_value_heads", config.num_key_value_heads)):
        if key in shapes and len(shapes[key]) == 2:
            rows = shapes[key][0]
            if rows % hd:
                out.append(f"{where}: head_dim {hd} does not divide the {rows} rows of {key} ({index.where(key)})")
            else:
                field_vs(name, value, key, rows // hd, f"{rows} rows = {rows // hd} heads of head_dim {hd}")
            if shapes[key][1] != config.hidden_size:
                out.append(f"{where}: hidden_size = {config.hidden_size} but {key} ({index.where(key)}) has shape "
                           f"{list(shapes[key])} -> input width {shapes[key][1]}")
    if gate in shapes and len(shapes[gate]) == 2:
        field_vs("intermediate_size", config.intermediate_size, gate, shapes[gate][0], f"{shapes[gate][0]} rows")
    if config.model_type == "llama":
        has_bias = f"{attn}q_proj.bias" in shapes
        if layers and has_bias != bool(config.attention_bias):
            out.append(f"{where}: attention_bias = {config.attention_bias} but {attn}q_proj.bias is "
                       f"{'present' if has_bias else 'absent'}")
    return out, derived


def load_language_model(folder: str | Path, dtype: torch.dtype = torch.float32, *, keep_lm_head: bool = False,
                        attn_implementation: str = "sdpa", freeze: bool = True, hash_files: bool = True,
                        load_tokenizer: bool = True, index: SafetensorsIndex | None = None):
    """A frozen decoder-only LM (``LlamaModel`` / ``Qwen2Model``, base model only; with ``keep_lm_head`` the
    ``*ForCausalLM``) from a folder, streamed shard by shard into a module built on the meta device.

    Returns ``(model, tokenizer_or_None, LoadReport)``; the tokenizer is ``AutoTokenizer.from_pretrained(folder)``
    when tokenizer files are present (else None: use :class:`ByteTokenizer`). Errors (:class:`CheckpointFolderError`):
    no ``config.json`` or a ``model_type`` other than llama/qwen2; config fields disagreeing with the tensor shapes;
    missing / unexpected / wrongly shaped keys; with ``keep_lm_head``, an untied head absent from the file (§4.5: a
    tied absent head is aliased to ``embed_tokens``). Declared skips: legacy ``*.rotary_emb.inv_freq``; without
    ``keep_lm_head``, ``lm_head.weight``. Non-persistent rotary buffers are recomputed on CPU. ``dtype`` policy:
    float32 (CPU), bfloat16 (GPU), float16 refused for qwen2 (bf16-native, overflows in fp16)."""
    if dtype not in LM_DTYPES:
        raise ValueError(f"dtype {dtype}: one of {LM_DTYPES} expected")
    index = index or resolve_folder(folder)
    cfg_path = index.folder / CONFIG_NAME
    data = read_config(index.folder)
    if data is None:
        raise CheckpointFolderError(f"{cfg_path}: not found (the LM's config.json is needed)")
    config = lm_config_from_dict(data, str(cfg_path))
    if config.model_type == "qwen2" and dtype == torch.float16:
        raise CheckpointFolderError(f"{cfg_path}: qwen2 is bf16-native and must not run in float16 (overflow risk); "
                                    f"use bfloat16 or float32")
    config._attn_implementation = attn_implementation
    shapes = index.shapes()
    file_prefix = "model." if any(k.startswith("model.") for k in shapes) else ""
    problems, derived = _lm_config_problems(config, CONFIG_NAME, shapes, index, file_prefix)
    if problems:
        raise CheckpointFolderError(f"{cfg_path}: the config disagrees with the tensor shapes: " + "; ".join(problems))
    tied = bool(config.tie_word_embeddings)
    head_in_file = "lm_head.weight" in shapes
    if keep_lm_head and not tied and not head_in_file:
        raise CheckpointFolderError(f"{index.folder}: lm_head.weight is absent and {cfg_path} says "
                                    f"tie_word_embeddings = false: the head would stay random (§4.5)")

    base_cls, causal_cls = _lm_classes(config.model_type)
    with torch.device("meta"):
        model = (causal_cls if keep_lm_head else base_cls)(config)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    target_prefix = "model." if keep_lm_head else ""

    def to_target(k: str) -> str | None:
        if k == "lm_head.weight":
            return k if keep_lm_head else None
        return target_prefix + k[len(file_prefix):] if k.startswith(file_prefix) else None

    ignores = [INV_FREQ_IGNORE]
    aliased = []
    if keep_lm_head and tied:
        aliased = ["lm_head.weight"]
        if head_in_file:
            ignores.append((LM_HEAD_TIED_SKIP, r"^lm_head\.weight$"))
    elif not keep_lm_head:
        ignores.append((LM_HEAD_SKIP, r"^lm_head\.weight$"))
    def to_file(t: str) -> str:
        return t if t == "lm_head.weight" else file_prefix + t[len(target_prefix):]

    plan = _account(index, target, to_target, ignores, type(model).__name__, aliased=aliased, to_file=to_file)

    by_file: dict[str, list[str]] = {}
    for k in plan.load:
        by_file.setdefault(index.where(k), []).append(k)
    for file in sorted(by_file):                       # stream: one shard's tensors in memory at a time
        shard = {plan.load[k]: t for k, t in index.read(by_file[file], dtype=dtype)}
        result = model.load_state_dict(shard, strict=False, assign=True)
        if result.unexpected_keys:
            raise CheckpointFolderError(f"{index.folder / file}: load_state_dict found unexpected keys "
                                        f"{_listed(result.unexpected_keys)}")
        del shard
    base = model.model if keep_lm_head else model
    if keep_lm_head and tied:
        model.lm_head.weight = base.embed_tokens.weight
    base.rotary_emb = type(base.rotary_emb)(config=config)   # non-persistent inv_freq: recomputed, never loaded
    _no_meta(model, index.folder)
    model.eval()
    if freeze:
        model.requires_grad_(False)

    tokenizer = None
    if load_tokenizer and any((index.folder / n).is_file() for n in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(index.folder))
        if len(tokenizer) > config.vocab_size:
            raise CheckpointFolderError(f"{index.folder}: the tokenizer has {len(tokenizer)} tokens but "
                                        f"{file_prefix}embed_tokens.weight has {config.vocab_size} rows")

    report = _new_report(index, config.model_type, dtype)
    _record_loaded(report, index, plan.load, hash_files)
    report.declared_skipped = plan.skipped
    if keep_lm_head and tied:
        report.aliased = {"lm_head.weight": "model.embed_tokens.weight"}
    report.facts = {
        "model_class": type(model).__name__, "file_prefix": file_prefix, "attn_implementation": attn_implementation,
        "tie_word_embeddings": tied, "lm_head_in_file": head_in_file, "lm_head_kept": keep_lm_head,
        "head_dim": head_dim_of(config), **derived, "tokenizer": type(tokenizer).__name__ if tokenizer else None,
    }
    if not tied and not head_in_file:
        report.facts["lm_head_note"] = ("untied lm_head absent from the file: fine for hidden-state features, "
                                        "unusable for text generation")
    return model, tokenizer, report


class ByteTokenizer:
    """The fallback tokenizer when a folder ships no tokenizer files (the random tiny LM of the default pipeline):
    a text's UTF-8 bytes are its ids (0-255), so the LM's vocabulary must have at least 256 rows."""

    def __init__(self, vocab_size: int = 256):
        if vocab_size < 256:
            raise ValueError(f"ByteTokenizer needs a vocabulary of >= 256 ids, the LM has {vocab_size}")
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------ random real-layout sources
@dataclass
class Layout:
    """A checkpoint layout: ``{key: shape}`` in state-dict order (keys stored in the file only) and its config."""
    tensors: dict[str, tuple[int, ...]]
    config: dict | None


def read_layout(layout: str | Path | Mapping) -> Layout:
    """A layout JSON of ``shared/checkpoint_layouts`` (path or parsed dict: ``tensors`` list + ``config_json``),
    or a plain ``{key: shape}`` mapping (no config). Tensors marked ``in_checkpoint_file: false`` (a tied head) are
    left out, as HF's files leave them out."""
    if isinstance(layout, (str, Path)):
        layout = json.loads(Path(layout).read_text())
    if isinstance(layout, Mapping) and isinstance(layout.get("tensors"), list):
        tensors = {t["key"]: tuple(int(s) for s in t["shape"]) for t in layout["tensors"]
                   if t.get("in_checkpoint_file", True)}
        return Layout(tensors, layout.get("config_json"))
    return Layout({str(k): tuple(int(s) for s in v) for k, v in layout.items()}, None)


def random_blip2_qformer_layout(qformer_config, num_query_tokens: int) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``query_tokens`` + ``qformer.*`` in BLIP-2's naming for any ``Blip2QFormerConfig``
    (from ``Blip2QFormerModel(config).state_dict()`` built on meta)."""
    from transformers import Blip2QFormerModel

    with torch.device("meta"):
        qformer = Blip2QFormerModel(qformer_config)
    return {"query_tokens": (1, int(num_query_tokens), qformer_config.hidden_size),
            **{f"qformer.{k}": tuple(v.shape) for k, v in qformer.state_dict().items()}}


def blip2_qformer_config_json(qformer_config, num_query_tokens: int) -> dict:
    """A ``config.json`` for a Q-Former-only folder that :func:`qformer_config_from_folder` reads back."""
    section = {k: v for k, v in qformer_config.to_dict().items() if not k.startswith("_") and k not in (
        "transformers_version", "architectures")}
    return {"model_type": "blip-2", "num_query_tokens": int(num_query_tokens), "qformer_config": section}


def random_language_model_layout(config) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a ``LlamaConfig`` / ``Qwen2Config`` LM as HF files store it: ``model.*`` + ``lm_head.weight``
    (left out when the config ties it, as in HF's files)."""
    _, causal_cls = _lm_classes(config.model_type)
    with torch.device("meta"):
        model = causal_cls(config)
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def lm_config_json(config) -> dict:
    """A ``config.json`` dict for a ``LlamaConfig`` / ``Qwen2Config`` (read back by :func:`lm_config_from_dict`)."""
    return json.loads(config.to_json_string(use_diff=False))


_NORM = re.compile(r"(^|\.)[A-Za-z_]*(norm|Norm)[A-Za-z_0-9]*\.(weight|bias)$")


def _random_tensor(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Normal * 0.02, norm weights 1 and norm biases 0; seeded per key, so a tensor does not depend on which other
    keys are written or on the shard split."""
    if len(shape) == 1 and _NORM.search(key):
        t = torch.ones(shape) if key.endswith(".weight") else torch.zeros(shape)
    else:
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2 ** 63))
        t = torch.randn(shape, generator=g) * 0.02
    return t.to(dtype)


def write_random_checkpoint(layout, folder: str | Path, seed: int, shards: int = 1,
                            dtype: torch.dtype = torch.float32, drop_keys: Iterable[str] = (),
                            keys: Iterable[str] | None = None, config: Mapping | Any | None = None) -> Path:
    """Write seeded random tensors in an exact key layout into ``folder`` (deterministic bytes for one seed).

    ``layout``: a layout JSON of ``shared/checkpoint_layouts`` (path or dict), a ``{key: shape}`` mapping, or a
    ``LlamaConfig`` / ``Qwen2Config`` (its :func:`random_language_model_layout`). ``config``: the ``config.json`` to
    write (a dict or a transformers config), default the layout's ``config_json`` / the given config. ``keys``: keep
    only these keys or prefixes (``"qformer"`` keeps ``qformer.*``); ``drop_keys``: exact keys left out (each must be in
    the layout). ``shards > 1`` splits the keys in order over ``model-0000i-of-0000n.safetensors`` with a
    ``model.safetensors.index.json`` (total_size = tensor bytes); one shard is ``model.safetensors``. Stale
    ``model*.safetensors`` / index files in ``folder`` are removed first. Returns ``folder``."""
    from safetensors.torch import save_file

    if hasattr(layout, "model_type") and hasattr(layout, "to_json_string"):
        config = layout if config is None else config
        lay = Layout(random_language_model_layout(layout), None)
    else:
        lay = read_layout(layout)
    tensors = dict(lay.tensors)
    drop = list(drop_keys)
    unknown = [k for k in drop if k not in tensors]
    if unknown:
        raise ValueError(f"drop_keys not in the layout: {_listed(unknown)}")
    if keys is not None:
        wanted = list(keys)
        tensors = {k: s for k, s in tensors.items()
                   if any(k == p or k.startswith(p if p.endswith(".") else p + ".") for p in wanted)}
    for k in drop:
        tensors.pop(k, None)
    if not tensors:
        raise ValueError("no tensors left to write")
    if shards < 1 or shards > len(tensors):
        raise ValueError(f"shards = {shards}: between 1 and the {len(tensors)} tensors")
    if config is None:
        config = lay.config
    elif not isinstance(config, Mapping):
        config = json.loads(config.to_json_string(use_diff=False))

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = sum(itemsize * int(torch.Size(s).numel()) for s in tensors.values())
    names = list(tensors)                              # contiguous runs in layout order, every shard non-empty
    groups = [names[i * len(names) // shards:(i + 1) * len(names) // shards] for i in range(shards)]
    files = [SINGLE_NAME] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                                               for i in range(shards)]
    weight_map = {}
    for file, group in zip(files, groups):
        save_file({k: _random_tensor(k, tensors[k], seed, dtype) for k in group}, str(folder / file),
                  metadata={"format": "pt"})
        weight_map.update({k: file for k in group})
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    if config is not None:
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


# ------------------------------------------------------------------------------------------ full-size counts
def full_size_parameter_counts(layouts: str | Path | None = None) -> dict[str, int]:
    """Parameter counts of the full-size parts, instantiated on meta: BLIP-2's Q-Former (768 x 12, encoder width
    1408) + 32 query tokens, and LLaMA-2-7B / Qwen2-7B with head (``*_7b``) and base only (``*_7b_base``). The LM
    configs are the ``config_json`` of ``llama2_7b.json`` / ``qwen2_7b.json`` in ``layouts`` when given, else the
    public configs copied into this module."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    configs = {"llama2_7b": LLAMA2_7B_CONFIG, "qwen2_7b": QWEN2_7B_CONFIG}
    if layouts is not None:
        configs = {name: read_layout(Path(layouts) / f"{name}.json").config for name in configs}
    counts = {}
    with torch.device("meta"):
        q = Blip2QFormerModel(Blip2QFormerConfig(encoder_hidden_size=BLIP2_ENCODER_HIDDEN_SIZE))
        counts["blip2_qformer"] = sum(p.numel() for p in q.parameters())
        counts["blip2_query_tokens"] = BLIP2_NUM_QUERY_TOKENS * q.config.hidden_size
        counts["blip2_qformer_with_query_tokens"] = counts["blip2_qformer"] + counts["blip2_query_tokens"]
        for name, data in configs.items():
            config = lm_config_from_dict(data, name)
            _, causal_cls = _lm_classes(config.model_type)
            lm = causal_cls(config)
            counts[name] = sum(p.numel() for p in lm.parameters())
            counts[f"{name}_base"] = sum(p.numel() for p in lm.model.parameters())
    return counts
