"""Benchmark: a mixture-of-experts layer (8 experts, top-1) against one dense FFN as wide as one expert,
forward pass on 4096 tokens. Goal (issue 4): the MoE layer takes at most 1.5x the dense time, since each
token still passes through one expert-sized FFN and only the routing is extra.

    python benchmarks/bench_moe.py [--tokens 4096] [--d-model 256] [--repeat 20]
"""
from __future__ import annotations

import argparse

import torch

from llmcourse.moe import MoEConfig, MoEFeedForward
from llmcourse.transformer import FeedForward
from llmcourse.utils import benchmark, get_device, seed_everything

GOAL = 1.5


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    seed_everything(0)
    device = get_device()
    C, Fh, N = args.d_model, 4 * args.d_model, args.tokens
    x = torch.randn(N, C, device=device)
    dense = FeedForward(C, Fh).to(device)
    print(f"MoE ({args.experts} experts, top-1) vs dense FFN, {N} tokens, d_model {C}, d_ff {Fh}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"  {'layer':<36} {'median':>10} {'ratio':>8}")
    rows = []
    with torch.no_grad():
        t_dense = benchmark(dense, x, warmup=3, repeat=args.repeat)
        print(f"  {'dense FFN':<36} {t_dense * 1e3:8.2f} ms {1:7.2f}x")
        for impl, cf in [("grouped", 1.25), ("grouped", None), ("batched", 1.25), ("batched", 1.0)]:
            layer = MoEFeedForward(MoEConfig(C, Fh, args.experts, 1, cf, impl=impl)).to(device)
            t = benchmark(layer, x, warmup=3, repeat=args.repeat)
            rows.append((impl, cf, t))
            print(f"  {f'MoE {impl}, capacity factor {cf}':<36} {t * 1e3:8.2f} ms {t / t_dense:7.2f}x", flush=True)
    ratio = rows[0][2] / t_dense
    status = "ok" if ratio <= GOAL else "OVER GOAL"
    print(f"  default layer (grouped, capacity factor 1.25): {ratio:.2f}x the dense time, goal <= {GOAL}x: {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
