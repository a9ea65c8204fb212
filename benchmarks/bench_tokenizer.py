"""Tokenizer training throughput and memory: the default size and the full AMPLIFY size, one process.

    python -m benchmarks.bench_tokenizer [--steps 5] [--batch 32] [--tracks 400] [--horizon 16]

Times forward + backward + AdamW steps on random tracks of the data's shape (normalised (row, col),
small per-step motion), after one warm-up step; peak memory is the process's maximum RSS. Timings go to
the console (and --out JSON), never into cached outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time

import torch

from models.common.params import TokenizerParams
from models.tokenizer.config import TokenizerConfig
from models.tokenizer.model import MotionTokenizer

FULL = dict(hidden_dim=768, num_heads=8, num_layers=2, codebook_size=2048, input_scale=1.0, dropout=0.1)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(params: TokenizerParams, steps: int, batch: int, tracks: int, horizon: int) -> dict:
    torch.manual_seed(0)
    model = MotionTokenizer(TokenizerConfig.from_params(params), num_tracks=tracks, track_horizon=horizon)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr)
    start = torch.rand(batch, 1, tracks, 2) * 1.6 - 0.8
    step = (torch.rand(batch, 1, tracks, 2) - 0.5) * 0.05
    data = {"tracks": start + step * torch.arange(horizon).view(1, horizon, 1, 1)}  # (B, T, N, 2)

    def one():
        loss, _ = model.loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        one()
    dt = (time.perf_counter() - t) / steps
    return {"params": int(model.num_params), "seconds_per_step": round(dt, 3),
            "samples_per_second": round(batch / dt, 1), "peak_rss_mb": round(_rss_mb())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tracks", type=int, default=400)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    default = TokenizerParams()
    res = {"default": measure(default, args.steps, args.batch, args.tracks, args.horizon)}
    res["amplify_full"] = measure(dataclasses.replace(default, **FULL), max(args.steps // 2, 1), args.batch,
                                  args.tracks, args.horizon)
    res["ratio_full_to_default_time"] = round(res["amplify_full"]["seconds_per_step"]
                                              / res["default"]["seconds_per_step"], 2)
    res["threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=1))
    if args.out:
        from models.common.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
