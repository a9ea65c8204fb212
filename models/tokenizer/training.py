"""Glue between the motion tokenizer, the ``tracks`` stage's windows and the shared training loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.common.params import TokenizerParams
from models.tokenizer.config import TokenizerConfig
from models.tokenizer.model import MotionTokenizer
from models.train import TrainConfig, TrainTask

TRACK_ARRAYS = ("tracks", "visible", "static")


class TrackWindows:
    """One split of the ``tracks`` output: item i = {"tracks" (T, N, 2), "visible" (T, N), "static" (N,)}.

    Tracks are normalised (row, col) in [-1, 1] (AMPLIFY). All arrays are loaded once (safetensors).
    Windows with non-finite values never reach the file (the tracks stage drops and counts them); a file
    that has them anyway is refused here, naming the window.
    """

    def __init__(self, tracks_dir: str | Path, split: str):
        from safetensors.numpy import load_file

        self.path = Path(tracks_dir) / f"{split}.safetensors"
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no '{split}' windows (run `python -m stages.tracks`)")
        self.manifest = json.loads((Path(tracks_dir) / "manifest.json").read_text())
        arrays = load_file(str(self.path))
        if len(arrays["tracks"]) == 0:
            raise ValueError(f"{self.path}: the '{split}' split has no windows; rebuild it with the tracks stage "
                             "(which names the clips and what would keep them) or choose other clips")
        self.arrays = {k: arrays[k] for k in TRACK_ARRAYS}
        self.window_time_us = arrays["window_time_us"]  # (Nw,) first-frame timestamps, for figures
        bad = np.flatnonzero(~np.isfinite(self.arrays["tracks"]).reshape(len(self.arrays["tracks"]), -1).all(1))
        if len(bad):
            raise ValueError(f"{self.path}: window {int(bad[0])} has non-finite track values "
                             f"({len(bad)} such windows); rebuild with the tracks stage")
        self.T, self.N = self.arrays["tracks"].shape[1:3]

    def __len__(self) -> int:
        return len(self.arrays["tracks"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.arrays.items()}


def train_config(p: TokenizerParams) -> TrainConfig:
    """The shared loop's settings from the tokenizer section (AMPLIFY: AdamW betas 0.9 / 0.95)."""
    return TrainConfig.from_dict({
        "epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr, "weight_decay": p.weight_decay,
        "betas": [0.9, 0.95], "warmup_steps": p.warmup_steps, "grad_clip": p.grad_clip, "seed": p.seed,
        "log_every": 10, "eval_every_epochs": p.eval_every_epochs}, section="tokenizer")


class TokenizerTask(TrainTask):
    """The tokenizer on the shared loop: its own loss, AMPLIFY's param groups, reconstruction metrics."""

    monitor, mode = "loss", "min"

    def __init__(self, params: TokenizerParams, num_tracks: int, track_horizon: int):
        self.params = params
        self.shape = dict(num_tracks=num_tracks, track_horizon=track_horizon, num_views=1)

    def build_model(self) -> MotionTokenizer:
        return MotionTokenizer(TokenizerConfig.from_params(self.params), **self.shape)

    def param_groups(self, model: MotionTokenizer) -> list[dict]:
        decay, no_decay = model.param_groups(self.params.weight_decay)
        return [{"name": "decay", "params": decay["params"], "weight_decay": decay["weight_decay"]},
                {"name": "no_decay", "params": no_decay["params"], "weight_decay": 0.0}]

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """One forward call (through the DDP wrapper when there is one, so gradients are synchronised)."""
        inner = model.module if hasattr(model, "module") else model
        out = model(*inner.inputs(batch["tracks"]), static=batch.get("static"), visible=batch.get("visible"))
        return out["loss"], out["logs"]

    def evaluate(self, model: MotionTokenizer, loader) -> dict[str, float]:
        """Per-window means of the loss logs and the official trajectory metrics."""
        sums, count = {}, 0
        for batch in loader:
            n = len(batch["tracks"])
            for k, v in model.evaluate(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        return {k: v / max(count, 1) for k, v in sums.items()}
