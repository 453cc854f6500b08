# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/01_context_length.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 1. What a long context costs
#
# Every token of a prompt is compared with every other token: attention over $T$ tokens builds a
# $T \times T$ table of scores. The feed-forward network, by contrast, treats each token on its own. So
# when the context grows, attention's cost grows like $T^2$ while the rest of the layer grows like $T$.
# In this notebook we count the work, then **measure** it: time and memory of attention and of the
# feed-forward network as the sequence gets longer, on the machine in front of us.
#
# **Learning objectives.** After this notebook you can
#
# 1. count the floating-point operations of a transformer layer and say at which context length
#    attention starts to dominate ($T \approx 4C$ for the attention core against the feed-forward network);
# 2. measure time and peak memory of a computation and read a growth exponent off a log-log plot;
# 3. explain why the $T \times T$ score matrix, not the arithmetic, is what first breaks long contexts, which
#    is the problem FlashAttention (notebook 3) and the KV cache (notebook 4) address.
#
# **Prerequisites:** module 1 (attention, the transformer block). Runs within the course's one-minute
# budget on two CPU cores (the stored notebook records each cell's time).

# %%

import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcourse.flash import naive_attention, peak_memory_bytes
from llmcourse.transformer import FeedForward
from llmcourse.utils import benchmark, claim, get_device, num_threads, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU: the same code runs on each
print("device:", device.type)

# %% [markdown]
# ## 1. Counting the work
#
# Take one layer of width $C$ (the model dimension) on a sequence of $T$ tokens, with $H$ heads of size
# $D = C / H$. A matrix product of an $(m \times k)$ and a $(k \times n)$ matrix costs $2mkn$ FLOPs (a
# multiply and an add per term). Then:
#
# | part | what it computes | FLOPs |
# |---|---|---|
# | Q, K, V and output projections | four $(T \times C)(C \times C)$ products | $8TC^2$ |
# | attention core | scores $QK^\top$ and $\text{weights} \cdot V$, per head $(T\times D)(D\times T)$ and $(T\times T)(T \times D)$ | $4T^2C$ |
# | feed-forward network | $(T \times C)(C \times 4C)$ and back | $16TC^2$ |
#
# Only the attention core has a $T^2$. It matches the feed-forward network when $4T^2C = 16TC^2$, that is
# at $T = 4C$, and the whole rest of the layer at $T = 6C$. Let us tabulate the share of attention for a
# few real widths.

# %%
def layer_flops(T: int, C: int) -> dict[str, float]:
    """FLOPs of one transformer layer (forward) on T tokens of width C, by part."""
    return {"projections": 8 * T * C**2, "attention core": 4 * T**2 * C, "feed-forward": 16 * T * C**2}


widths = {"our demo (C=256)": 256, "GPT-2 small (C=768)": 768, "Llama-2-70B (C=8192)": 8192}
contexts = [1024, 4096, 32_768, 131_072]
print(f"{'share of a layer spent in the attention core':<46}" + "".join(f"{f'T={T:,}':>11}" for T in contexts))
for name, C in widths.items():
    shares = [layer_flops(T, C)["attention core"] / sum(layer_flops(T, C).values()) for T in contexts]
    print(f"{name:<46}" + "".join(f"{s:>11.1%}" for s in shares))

assert layer_flops(4 * 256, 256)["attention core"] == layer_flops(4 * 256, 256)["feed-forward"]  # T = 4C
share = {C: [layer_flops(T, C)["attention core"] / sum(layer_flops(T, C).values()) for T in contexts[:3]]
         for C in (256, 8192)}
claim("m3-attention-flop-share", "share of a layer in the attention core at T = "
      + " / ".join(f"{T // 1024}k" for T in contexts[:3]) + ": " + " / ".join(f"{s:.0%}" for s in share[256])
      + " at C=256, " + " / ".join(f"{s:.0%}" for s in share[8192]) + " at Llama-2-70B's C=8192")

# %% [markdown]
# Wide models push the crossover far out: for Llama-2-70B the attention core is under 8% of the
# arithmetic at 4k tokens and still less than half at 32k. So why is long context hard? Because of **memory**: the score matrix has $T^2$
# entries *per head*. We will see that the memory of naive attention explodes long before its FLOPs matter.

# %%
def score_matrix_bytes(T: int, n_heads: int, bytes_per_value: int = 2) -> int:
    """Bytes of the attention score matrix of one layer, one sequence (fp16 by default)."""
    return n_heads * T * T * bytes_per_value


for T in (4096, 32_768, 131_072):
    print(f"Llama-2-70B (64 heads), one layer, T={T:>7,}: score matrix {score_matrix_bytes(T, 64) / 2**30:>8,.0f} GiB")

assert score_matrix_bytes(131_072, 64) == 2 * 2**40  # 2 TiB for one layer: no GPU holds that
claim("m3-score-matrix-128k",
      f"64 heads, T = 131,072: {score_matrix_bytes(131_072, 64) / 2**40:.0f} TiB per layer (fp16)")

# %% [markdown]
# ## 2. Measuring time
#
# Now the measurement. We run the **attention core** (scores, softmax, weighted sum: `naive_attention`,
# the textbook version that builds the full score matrix) and the **feed-forward network** (`FeedForward`,
# $C \to 4C \to C$) on one sequence of width $C = 256$ with 4 heads, for $T$ from 256 to 4096 (on a GPU
# from 1024 to 16384: below that a GPU is mostly waiting for Python to launch its kernels, and time
# hardly depends on $T$). `benchmark` reports the median of several runs, so a busy machine does not
# fool us, and on a CPU we time with a single thread: several threads sharing a busy machine make
# timings jump for reasons that have nothing to do with $T$.

# %%
C, H = 256, 4
D = C // H
lengths = [256, 512, 1024, 2048, 4096] if device.type == "cpu" else [1024, 2048, 4096, 8192, 16384]
ffn = FeedForward(C, 4 * C).to(device).eval()


def inputs(T: int):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(1, T, C, generator=g).to(device)
    q, k, v = (torch.randn(1, H, T, D, generator=g).to(device) for _ in range(3))
    return x, q, k, v


attn_time, ffn_time = [], []
with num_threads(1):  # on a CPU, one thread: the timings then follow the arithmetic, not thread scheduling
    with torch.no_grad():
        for T in lengths:
            x, q, k, v = inputs(T)
            attn_time.append(benchmark(naive_attention, q, k, v, warmup=1, repeat=5))
            ffn_time.append(benchmark(ffn, x, warmup=1, repeat=5))
            print(f"T={T:>5}: attention core {attn_time[-1] * 1e3:.2f} ms, feed-forward {ffn_time[-1] * 1e3:.2f} ms")

# %% [markdown]
# On a log-log plot a power law $y = a T^p$ is a straight line of slope $p$. We fit the slope from the
# second length on, where fixed overheads (Python, kernel launches) no longer hide the growth.

# %%
def growth_exponent(xs, ys) -> float:
    """Slope of log(y) against log(x): the p in y ~ x^p (least squares)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


p_attn_time = growth_exponent(lengths[1:], attn_time[1:])
p_ffn_time = growth_exponent(lengths[1:], ffn_time[1:])
print(f"attention time grows like T^p with p in [1.5, 2.8]: {1.5 <= p_attn_time <= 2.8}")
print(f"feed-forward time grows like T^p with p in [0.6, 1.4]: {0.6 <= p_ffn_time <= 1.4}")
assert 1.5 <= p_attn_time <= 2.8, p_attn_time
assert 0.6 <= p_ffn_time <= 1.4, p_ffn_time
assert attn_time[-1] / attn_time[-3] > 2 * ffn_time[-1] / ffn_time[-3]  # attention's cost grows much faster
# Fitted from timings, the exponents vary from run to run: printed after "≈", which the notebook tests
# mask (tests/nbval_sanitize.cfg); the assertions above are what they check.
claim("m3-time-exponents", f"fitted time exponents ≈{p_attn_time:.2f} and ≈{p_ffn_time:.2f} "
      f"({'one thread' if device.type == 'cpu' else device.type}, T = {lengths[1]}-{lengths[-1]}; "
      "asserted in [1.5, 2.8] and [0.6, 1.4])")

# %% [markdown]
# The exact exponents (in the figure below) depend on the machine: caches, threads and how well the
# matrix library uses them. The shape does not: quadratic against linear.
#
# ## 3. Measuring memory
#
# Time can hide behind a fast GPU; memory cannot. `peak_memory_bytes` runs a function and reports the
# most memory its tensors held at once (on a GPU it asks the CUDA allocator; on a CPU it follows every
# tensor torch creates, from allocation to release). Unlike timings, these numbers are exact and the
# same on every machine.

# %%
attn_mem, ffn_mem = [], []
for T in lengths:
    x, q, k, v = inputs(T)
    attn_mem.append(peak_memory_bytes(naive_attention, q, k, v).peak)
    ffn_mem.append(peak_memory_bytes(ffn, x).peak)
    print(f"T={T:>5}: attention core {attn_mem[-1] / 2**20:9.2f} MiB   feed-forward {ffn_mem[-1] / 2**20:7.2f} MiB")

p_attn_mem = growth_exponent(lengths[-3:], attn_mem[-3:])
p_ffn_mem = growth_exponent(lengths[-3:], ffn_mem[-3:])
print(f"memory exponents: attention {p_attn_mem:.2f}, feed-forward {p_ffn_mem:.2f}")
assert abs(p_attn_mem - 2) < 0.05 and abs(p_ffn_mem - 1) < 0.05
if device.type == "cpu":  # (on a GPU the allocator reports the peak only, not single tensors)
    # The biggest tensor is the (H, T, T) score matrix in fp32: 4 heads * 4096^2 * 4 bytes = 256 MiB.
    assert peak_memory_bytes(naive_attention, *inputs(4096)[1:]).largest == H * 4096**2 * 4
claim("m3-memory-exponents", f"fitted exponents {p_attn_mem:.2f} vs {p_ffn_mem:.2f} "
      f"(T = {lengths[-3] // 1024}k-{lengths[-1] // 1024}k); {attn_mem[-1] / 2**20:.0f} MiB vs "
      f"{ffn_mem[-1] / 2**20:.0f} MiB at T = {lengths[-1]}, {H} heads")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, (ya, yf, pa, pf, unit, scale) in zip(axes, [
        (attn_time, ffn_time, p_attn_time, p_ffn_time, "time (ms)", 1e3),
        (attn_mem, ffn_mem, p_attn_mem, p_ffn_mem, "peak memory (MiB)", 2**-20)]):
    ax.loglog(lengths, np.array(ya) * scale, "o-", label=f"attention core (slope {pa:.2f})")
    ax.loglog(lengths, np.array(yf) * scale, "s-", label=f"feed-forward (slope {pf:.2f})")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(unit)
    ax.set_xticks(lengths, [str(t) for t in lengths])
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_title("time: quadratic vs linear")
axes[1].set_title("memory: quadratic vs linear")
plt.tight_layout()
plt.show()

# %% [markdown]
# Doubling the context multiplies the attention's memory by four and the feed-forward network's by two.
# At $T = 4096$ our small demo's attention core peaks at 516 MiB, 256 MiB of it the score matrix alone
# (asserted above); a 64-head model at 128k tokens would need terabytes per layer.
#
# ## 4. Where the crossover is on this machine
#
# The FLOP count predicts that the attention core costs as much as the feed-forward network at
# $T = 4C = 1024$. The measured ratio of their times tells us how the machine actually behaves.

# %%
measured_ratio = [a / f for a, f in zip(attn_time, ffn_time)]
flop_ratio = [layer_flops(T, C)["attention core"] / layer_flops(T, C)["feed-forward"] for T in lengths]
for T, r in zip(lengths, flop_ratio):
    print(f"T={T:>5}: FLOP ratio attention core / feed-forward = {r:.2f}")

plt.figure(figsize=(5.5, 3.8))
plt.loglog(lengths, measured_ratio, "o-", label="measured time ratio")
plt.loglog(lengths, flop_ratio, "k--", label="FLOP ratio T / 4C")
plt.axhline(1, color="grey", lw=0.8)
plt.xticks(lengths, [str(t) for t in lengths])
plt.xlabel("sequence length T")
plt.ylabel("attention core / feed-forward")
plt.legend()
plt.title(f"C = {C}: where attention takes over")
plt.show()

assert flop_ratio[-1] / flop_ratio[0] == 16  # a 16x longer sequence: a 16x larger FLOP ratio
assert measured_ratio[-1] / measured_ratio[0] > 4  # the measured share of attention grows too

# %% [markdown]
# The measured ratio climbs with $T$ like the FLOP ratio, but the two lines are not the same: the
# softmax reads and writes the whole $T \times T$ matrix (memory traffic that the FLOP count ignores),
# and small matrix products run less efficiently than large ones. That memory traffic is exactly what
# FlashAttention removes.
#
# ## Summary
#
# - A layer costs $24TC^2 + 4T^2C$ FLOPs: attention's $T^2$ term wins only beyond $T \approx 4C$ to $6C$,
#   so wide models spend most of their arithmetic in the matrices even at long contexts.
# - Naive attention stores $H \cdot T^2$ scores per layer: its **memory** grows quadratically (measured
#   exponent 1.98 against 1.00 for the feed-forward network) and is what breaks long contexts first.
# - Measured time follows the same shape: attention's fitted time exponent is roughly quadratic, the
#   feed-forward network's roughly linear (asserted in [1.5, 2.8] and [0.6, 1.4]; the printed values
#   move from run to run and machine to machine).
#
# Next: ALiBi (notebook 2) lets a model read longer contexts than it was trained on; FlashAttention
# (notebook 3) computes exact attention without ever storing the $T \times T$ matrix; the KV cache
# (notebook 4) avoids recomputing the past at every generated token.
#
# ## Try it yourself
#
# 1. Change `C` to 64 and to 1024: where does the measured time crossover move? Does it follow $T = 4C$?
# 2. Replace `naive_attention` with `torch.nn.functional.scaled_dot_product_attention`. How do its time
#    and memory grow? (On CPU it may pick a fused kernel that never stores the score matrix.)
# 3. Use `layer_flops` to compute the share of attention for a 1M-token context at Llama-2-70B width.
#
# ## References
#
# - Vaswani et al. 2017, "Attention Is All You Need", https://arxiv.org/abs/1706.03762 (section 4 compares
#   the per-layer complexity of attention, $O(n^2 d)$, with recurrent and convolutional layers)
# - Kaplan et al. 2020, "Scaling Laws for Neural Language Models", https://arxiv.org/abs/2001.08361
#   (Table 1 counts a transformer's forward FLOPs per token; only the attention term depends on the context)
# - Dao et al. 2022, "FlashAttention", https://arxiv.org/abs/2205.14135 (why memory traffic, not FLOPs,
#   limits attention)
# - Touvron et al. 2023, "Llama 2", https://arxiv.org/abs/2307.09288 (the 70B configuration)
