"""A tiny regression task for tests/test_train_loop.py, and the script its 2-process DDP test runs:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT LIVE REPORT CFG_JSON [WORK]

Each rank trains with ``models.train.train`` and writes ``REPORT/rank<r>.json`` (its summary and how
many checkpoint writes / DVCLive loggers it made) and ``REPORT/rank<r>.safetensors`` (its final weights).
With ``WORK`` it trains in that work folder and resumes from it (models/train/workdir.py).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.train import TrainConfig, TrainTask

W_TRUE = torch.tensor([1.0, -2.0, 0.5, 3.0])


class ToyData(Dataset):
    """``n`` samples ``{"x": [4], "y": []}`` with y = x . w + 0.3 + noise; fixed by ``seed``."""

    def __init__(self, n: int, seed: int, scale: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = scale * (self.x @ W_TRUE + 0.3 + 0.05 * torch.randn(n, generator=g))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class ToyTask(TrainTask):
    """MLP 4 -> 16 -> 1 (no dropout), groups "q" (first layer) and "m" (head, lr_mult 0.5), MSE."""

    monitor, mode = "loss", "min"

    def __init__(self):
        self.calls = 0  # loss() calls so far = the update number being computed

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def param_groups(self, model):
        return [{"name": "q", "params": list(model[0].parameters())},
                {"name": "m", "params": list(model[2].parameters()), "lr_mult": 0.5}]

    def loss(self, model, batch):
        self.calls += 1
        err = model(batch["x"]).squeeze(-1) - batch["y"]   # [B]
        mse = (err ** 2).mean()
        return mse, {"mae": err.abs().mean().item()}

    def evaluate(self, model, loader):
        sq, ab, n = 0.0, 0.0, 0
        for batch in loader:
            err = model(batch["x"]).squeeze(-1) - batch["y"]
            sq, ab, n = sq + (err ** 2).sum().item(), ab + err.abs().sum().item(), n + len(err)
        return {"loss": sq / n, "mae": ab / n}


def main(out_dir: str, live_dir: str, report_dir: str, cfg_json: str, work_dir: str | None = None) -> None:
    from safetensors.torch import save_file

    from models.train import loop

    counts = {"save_checkpoint": 0, "copy_checkpoint": 0, "LiveLog": 0}

    def counted(name):
        fn = getattr(loop, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    for name in counts:
        setattr(loop, name, counted(name))
    cfg = TrainConfig.from_dict(json.loads(cfg_json))
    task = ToyTask()
    summary = loop.train(task, ToyData(64, 0), ToyData(16, 1), cfg, out_dir, live_dir, resume=work_dir is not None,
                         progress=False, work_dir=work_dir)
    rank = int(os.environ["RANK"])
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in task.model.state_dict().items()}, str(report / f"rank{rank}.safetensors"))
    after = torch.distributed.is_initialized()  # the loop destroyed the group it created
    (report / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "summary": summary, "counts": counts,
                                                          "group_initialized_after": after}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
