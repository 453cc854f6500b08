"""Benchmark: module 3's deployment claims on this machine.

1. KV-cache decoding: per-token latency at token 512 vs token 32 with the cache (goal, issue 4: at most
   1.5x, the cache keeps decoding flat) and without it (grows with the prefix).
2. Attention memory: peak memory of tiled (online-softmax) attention vs naive attention against T
   (quadratic vs linear), and their time.

    python benchmarks/bench_deployment.py [--repeat 5]
"""
from __future__ import annotations

import argparse

import torch

from llmcourse import flash
from llmcourse import kv_cache as kc
from llmcourse.transformer import GPT, GPTConfig
from llmcourse.utils import benchmark, get_device, seed_everything

KV_GOAL = 1.5


def kv_cache_rows(device: torch.device, repeat: int) -> float:
    """Print per-token latency with and without the cache; return the cached ratio 512 / 32."""
    seed_everything(0)
    model = GPT(GPTConfig(vocab_size=96, block_size=1024, n_layer=4, n_head=8, n_kv_heads=2, d_model=256))
    model = model.to(device).eval()
    positions = [32, 128, 512]
    cached = kc.per_token_latency(model, positions, use_cache=True, repeat=repeat, window=16)
    plain = kc.per_token_latency(model, positions, use_cache=False, repeat=repeat)
    print(f"KV-cache decoding: GPT 4 layers x 256, 8 query / 2 KV heads, {device}, {torch.get_num_threads()} threads")
    print(f"  {'token':>6} {'with cache':>12} {'without':>12}")
    for p, a, b in zip(positions, cached.seconds, plain.seconds):
        print(f"  {p:>6} {a * 1e3:9.2f} ms {b * 1e3:9.2f} ms")
    ratio = cached.seconds[-1] / cached.seconds[0]
    print(f"  token 512 / token 32: with cache {ratio:.2f}x (goal <= {KV_GOAL}x: "
          f"{'ok' if ratio <= KV_GOAL else 'OVER GOAL'}), without {plain.seconds[-1] / plain.seconds[0]:.2f}x")
    return ratio


def memory_rows(device: torch.device) -> None:
    """Print peak memory and time of naive and tiled attention (causal, 4 heads of 64)."""
    print(f"\nAttention memory: naive (T x T scores) vs tiled (online softmax), causal, 4 heads of 64, {device}")
    print(f"  {'T':>6} {'naive peak':>12} {'tiled peak':>12} {'saved':>7} {'naive':>10} {'tiled':>10}")
    for T in (1024, 2048, 4096):
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(1, 4, T, 64, generator=g).to(device) for _ in range(3))
        naive = flash.peak_memory_bytes(flash.naive_attention, q, k, v, True).peak
        tiled = flash.peak_memory_bytes(flash.tiled_attention, q, k, v, True, None, 128, 128).peak
        with torch.no_grad():
            t_naive = benchmark(flash.naive_attention, q, k, v, True, repeat=3)
            t_tiled = benchmark(flash.tiled_attention, q, k, v, True, None, 128, 128, repeat=3)
        print(f"  {T:>6} {naive / 2**20:8.1f} MiB {tiled / 2**20:8.1f} MiB {naive / tiled:6.0f}x "
              f"{t_naive * 1e3:7.1f} ms {t_tiled * 1e3:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device = get_device()
    ratio = kv_cache_rows(device, args.repeat)
    memory_rows(device)
    return 0 if ratio <= KV_GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
