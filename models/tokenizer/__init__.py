"""The AMPLIFY motion tokenizer: model, loss, labels and metrics (official definitions; see
/work/shared/design/amplify.md).

* :mod:`models.tokenizer.labels`: ``tracks_to_labels``, ``logits_to_displacements``, ``velocities_to_points`` ...
* :mod:`models.tokenizer.metrics`: ``trajectory_metrics``, ``codebook_perplexity``
* :mod:`models.tokenizer.model`: ``MotionTokenizer``
* :func:`fsq_levels`: AMPLIFY's codebook-size -> FSQ levels table

Only :mod:`models.tokenizer.fsq` (no torch) is imported eagerly, so the params loader can validate
``tokenizer.codebook_size`` cheaply; the rest loads on first use.
"""
from __future__ import annotations

from models.tokenizer.fsq import fsq_levels, fsq_num_codes

__all__ = ["fsq_levels", "fsq_num_codes", "MotionTokenizer", "labels", "metrics", "model", "transformer"]


def __getattr__(name: str):
    import importlib

    if name == "MotionTokenizer":
        return importlib.import_module("models.tokenizer.model").MotionTokenizer
    if name in ("labels", "metrics", "model", "transformer"):
        return importlib.import_module(f"models.tokenizer.{name}")
    raise AttributeError(f"module 'models.tokenizer' has no attribute {name!r}")
