"""SHA-256 digests that every safetensors file the pipeline loads as weights carries in its metadata.

The digest sits inside the file's one JSON metadata value (a second metadata key would make the bytes depend on
the process: safetensors writes its metadata map in Rust HashMap order) under ``sha256``:
``{"metadata": <hex of the rest of the JSON value, sorted keys>, "tensors": {name: <hex of dtype, shape, bytes>}}``.
Writers: ``models.train.checkpoint`` (training checkpoints, ``train_state``) and the ``convert_weights`` stage
(``weights_info``); the checks are in ``models.train.checkpoint``. Hashing runs at about 1.5 GB/s (SHA-NI).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST_FIELD = "sha256"
STATE_KEY = "train_state"       # metadata key of a training checkpoint
WEIGHTS_KEY = "weights_info"    # metadata key of a plain weights file (state_dict keys as they are)


def tensor_sha256(t) -> str:
    """SHA-256 of a CPU tensor's dtype, shape and raw (native, little-endian) bytes."""
    import torch

    h = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def canonical(obj: dict) -> str:
    """The JSON text a digest covers: sorted keys, json's default separators."""
    return json.dumps(obj, sort_keys=True)


def metadata_sha256(obj: dict) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def seal(tensors: dict, info: dict[str, Any]) -> str:
    """``info`` as the one metadata JSON value, with the digest of itself and of every tensor (CPU, contiguous)
    added under ``sha256``."""
    info = json.loads(json.dumps(info))          # what a reader will parse: tuples -> lists, int keys -> str
    if DIGEST_FIELD in info:
        raise ValueError(f"metadata field '{DIGEST_FIELD}' is reserved for the digest")
    digest = {"metadata": metadata_sha256(info),
              "tensors": {k: tensor_sha256(t) for k, t in sorted(tensors.items())}}
    return canonical(dict(info, **{DIGEST_FIELD: digest}))
