"""Tokenizer training throughput and memory: the default size, the full AMPLIFY size, and the token layouts.

    python -m benchmarks.bench_tokenizer [--steps 5] [--batch 32] [--tracks 400] [--horizon 16] [--layouts-only]

``layouts``: AMPLIFY's one token per step against the quality options of docs/tokenizer.md (``point_groups``,
``track_codes``) at the default width and batch 8 (the default's), as seconds per step and the ratio to the
official layout measured in the same run, with the tokens and bits a window costs.

Times forward + backward + AdamW steps on random tracks of the data's shape (normalised (row, col),
small per-step motion), after one warm-up step; peak memory is the process's maximum RSS. Timings go to
the console (and --out JSON), never into cached outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import time

import torch

from models.common.params import TokenizerParams
from models.tokenizer.config import TokenizerConfig
from models.tokenizer.model import MotionTokenizer

LAYOUTS = {"amplify (point_groups 1)": dict(point_groups=1, track_codes=0),
           "point_groups 4": dict(point_groups=4, track_codes=0),
           "track_codes 256": dict(point_groups=1, track_codes=256),
           "point_groups 4 + track_codes 256": dict(point_groups=4, track_codes=256)}
FULL = dict(hidden_dim=768, num_heads=8, num_layers=2, codebook_size=2048, input_scale=1.0, dropout=0.1, point_groups=1,
            track_codes=0)


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
    tokens, bits = model.num_tokens, model.num_tokens * math.log2(model.num_codes)
    if model.num_track_codes:
        tokens += model.num_tracks
        bits += model.num_tracks * math.log2(model.num_track_codes)
    return {"params": int(model.num_params), "seconds_per_step": round(dt, 3), "tokens_per_window": tokens,
            "bits_per_window": round(bits),
            "samples_per_second": round(batch / dt, 1), "peak_rss_mb": round(_rss_mb())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tracks", type=int, default=400)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--out", default="")
    ap.add_argument("--layouts-only", action="store_true")
    args = ap.parse_args(argv)
    default = TokenizerParams()
    layouts = {name: measure(dataclasses.replace(default, **kw), args.steps, 8, args.tracks, args.horizon)
               for name, kw in LAYOUTS.items()}
    base = layouts["amplify (point_groups 1)"]["seconds_per_step"]
    for row in layouts.values():
        row["time_ratio_to_amplify"] = round(row["seconds_per_step"] / base, 2)
    res = {"layouts": layouts, "threads": torch.get_num_threads()}
    if args.layouts_only:
        print(json.dumps(res, indent=1))
        return res
    res["default"] = measure(default, args.steps, args.batch, args.tracks, args.horizon)
    res["amplify_full"] = measure(dataclasses.replace(default, **FULL), max(args.steps // 2, 1), args.batch,
                                  args.tracks, args.horizon)
    res["ratio_full_to_default_time"] = round(res["amplify_full"]["seconds_per_step"]
                                              / res["default"]["seconds_per_step"], 2)
    print(json.dumps(res, indent=1))
    if args.out:
        from models.common.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
