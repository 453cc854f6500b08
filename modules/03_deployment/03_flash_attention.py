# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/03_flash_attention.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 3. FlashAttention: exact attention without the $T \times T$ matrix
#
# Notebook 1 measured the problem: naive attention stores a $T \times T$ matrix of scores per head, so
# its memory grows like $T^2$. FlashAttention (Dao et al. 2022) computes **exactly** the same output
# without ever storing that matrix. It splits queries and keys into blocks, and computes the softmax
# *online*: one block of keys at a time, fixing up earlier partial results when a new block changes the
# maximum. On a GPU the blocks live in fast on-chip memory (SRAM) and the big matrix never travels to the
# slow memory (HBM): that, not fewer FLOPs, is where the speed comes from.
#
# We derive the online softmax step by step, build tiled attention in plain PyTorch and check it against
# naive attention (values and gradients), measure its memory, and then read a Triton kernel that does the
# same thing on a GPU, checked here on the CPU through Triton's interpreter.
#
# **Learning objectives.** After this notebook you can
#
# 1. derive the online softmax: a running maximum and a running sum, rescaled when the maximum changes;
# 2. write tiled attention that equals `softmax(QK^T/√D) V` to floating-point precision, with a backward
#    pass that recomputes the scores instead of storing them;
# 3. measure peak memory of naive and tiled attention against $T$ (quadratic against linear);
# 4. read a FlashAttention-2 Triton kernel block by block: programs, tiles, the unmasked main loop, the
#    masked diagonal blocks, and skipped blocks for causal attention.
#
# **Prerequisites:** notebook 1 of this module; module 1 (attention). Runs within the course's one-minute
# budget on two CPU cores (the stored notebook records each cell's time).

# %%
import inspect
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmcourse import flash
from llmcourse.utils import benchmark, claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## 1. The online softmax
#
# ### Safe softmax needs the maximum first
#
# $\operatorname{softmax}(x)_i = e^{x_i} / \sum_j e^{x_j}$ overflows as soon as a score is large:
# $e^{100}$ is beyond float32. Every implementation therefore subtracts the maximum $m = \max_j x_j$
# first, which changes nothing mathematically ($e^{-m}$ cancels) and keeps every exponent $\le 0$.

# %%
x = torch.tensor([3.0, 100.0, 98.0, 1.0])
print("exp(x) / sum(exp(x)):", (x.exp() / x.exp().sum()).tolist())
safe = (x - x.max()).exp() / (x - x.max()).exp().sum()
print("with the max subtracted:", [round(v, 4) for v in safe.tolist()])
assert torch.isnan(x.exp() / x.exp().sum()).any() and torch.allclose(safe, torch.softmax(x, 0))

# %% [markdown]
# So the textbook safe softmax reads the scores three times: once for the max, once for the sum of
# exponentials, once to normalise. To read the scores of a long row *in chunks*, we would like to get the
# max and the sum in a single pass.
#
# ### One pass: rescale when the maximum changes
#
# Keep, after reading chunks $1..k$, the running maximum $m_k$ and the running sum
# $\ell_k = \sum_{j \text{ seen}} e^{x_j - m_k}$. When chunk $k+1$ arrives with its own maximum, the new
# maximum is $m_{k+1} = \max(m_k, \max \text{chunk})$, and the old sum was computed relative to the old
# maximum. Since $e^{x - m_{k+1}} = e^{x - m_k} \cdot e^{m_k - m_{k+1}}$, fixing it is one multiplication:
#
# $$ \ell_{k+1} = \ell_k \, e^{m_k - m_{k+1}} + \sum_{j \in \text{chunk}} e^{x_j - m_{k+1}} . $$
#
# (Milakov & Gimelshein 2018.) Here it is on a row of 12 scores in chunks of 4, with the trace printed.

# %%
row = torch.tensor([0.5, 1.0, -2.0, 0.3, 4.0, 2.0, 1.5, 0.0, 3.0, 6.5, -1.0, 2.5])
m, l = torch.tensor(float("-inf")), torch.tensor(0.0)
for k, chunk in enumerate(row.split(4)):
    m_new = torch.maximum(m, chunk.max())
    l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new).sum()  # rescale the old sum, add the new chunk
    m = m_new
    print(f"after chunk {k + 1}: running max {m.item():4.1f}, running sum {l.item():.4f}")
online = torch.exp(row - m) / l
assert_close(online, torch.softmax(row, 0))
assert_close(flash.online_softmax(row[None], block=4)[0], torch.softmax(row, 0))  # the package version
print("equal to torch.softmax: True")

# %% [markdown]
# The rescale factor $e^{m_k - m_{k+1}}$ is the whole trick. Forget it, and every chunk read before the
# maximum moved is counted at the wrong scale: the sum, and therefore every probability, is wrong. This is
# the most common bug when writing FlashAttention by hand (lab 3 tests for it).

# %%
m, l_bug = torch.tensor(float("-inf")), torch.tensor(0.0)
for chunk in row.split(4):
    m = torch.maximum(m, chunk.max())
    l_bug = l_bug + torch.exp(chunk - m).sum()  # BUG: the old sum is not rescaled
print(f"sum without the rescale {l_bug.item():.4f} vs correct {torch.exp(row - row.max()).sum().item():.4f}")
assert not torch.allclose(l_bug, torch.exp(row - row.max()).sum())
claim("m3-online-softmax", f"equal to torch.softmax; running sum {l_bug.item():.4f} instead of "
      f"{torch.exp(row - row.max()).sum().item():.4f} without the rescale")

# %% [markdown]
# ### From softmax to attention
#
# Attention never needs the probabilities themselves, only the weighted sum of values
# $o = \sum_j p_j v_j = \frac{1}{\ell} \sum_j e^{s_j - m} v_j$. So we keep an unnormalised output
# $\text{acc}$ next to $m$ and $\ell$ and rescale it the same way:
#
# $$ \text{acc}_{k+1} = \text{acc}_k \, e^{m_k - m_{k+1}} + \sum_{j \in \text{block}} e^{s_j - m_{k+1}} v_j,
# \qquad o = \text{acc} / \ell \text{ at the end.} $$
#
# For a block of queries at once everything becomes a matrix: $S = Q_i K_j^\top$ is a
# $B_q \times B_k$ tile, $m$ and $\ell$ are vectors with one entry per query row. Below is the whole
# algorithm for one head: an outer loop over query blocks, an inner loop over key blocks.

# %%
def tiled_attention_one_head(q, k, v, block=16):
    """q (T, D), k and v (S, D): FlashAttention's forward for one head, no T x S tensor anywhere."""
    T, D = q.shape
    out = torch.empty_like(q)
    for i in range(0, T, block):
        qi = q[i:i + block] / math.sqrt(D)  # (Bq, D)
        m = torch.full((qi.shape[0],), float("-inf"))  # running max per query row
        l = torch.zeros(qi.shape[0])  # running sum
        acc = torch.zeros(qi.shape[0], D)  # running unnormalised output
        for j in range(0, k.shape[0], block):
            s = qi @ k[j:j + block].T  # (Bq, Bk): one tile of scores
            m_new = torch.maximum(m, s.max(dim=1).values)
            alpha = torch.exp(m - m_new)  # rescale what we accumulated so far
            p = torch.exp(s - m_new[:, None])
            l = l * alpha + p.sum(dim=1)
            acc = acc * alpha[:, None] + p @ v[j:j + block]
            m = m_new
        out[i:i + block] = acc / l[:, None]
    return out


T, D = 100, 32  # T is not a multiple of the block: the last blocks are shorter
q, k, v = torch.randn(3, T, D).unbind(0)
naive = torch.softmax(q @ k.T / math.sqrt(D), dim=-1) @ v  # the T x T way
ours = tiled_attention_one_head(q, k, v)
assert_close(ours, naive)
assert_close(flash.tiled_attention(q[None, None], k[None, None], v[None, None], block_q=16, block_k=16)[0, 0], naive)
print(f"largest difference to naive attention below 1e-5 (float32 rounding): {(ours - naive).abs().max().item() < 1e-5}")

# %% [markdown]
# ## 2. The package version: batches, heads, GQA, causal masks and gradients
#
# `llmcourse.flash.tiled_attention(q, k, v, causal, ...)` is the same loop for (B, H, T, D) tensors. It
# also handles grouped-query attention (fewer key/value heads, notebook 4) and causal masking, and it
# skips work there: a key block entirely in the future of a query block is never computed, and the mask is
# applied only on the tiles that cross the diagonal.
#
# **The backward pass.** Autograd through the loop above would store every tile for the backward pass:
# $T^2$ memory again. FlashAttention-2's backward instead keeps only the output $O$ and the
# log-sum-exp $\text{lse} = m + \log \ell$ of each row, and **recomputes** each tile's probabilities
# $P = e^{S - \text{lse}}$ from $Q$ and $K$. With $\delta_i = \sum_d dO_{id} O_{id}$ (from the softmax's
# Jacobian), the gradients tile by tile are
#
# $$ dV \mathrel{+}= P^\top dO, \quad dP = dO\, V^\top, \quad dS = P \circ (dP - \delta), \quad
# dQ \mathrel{+}= dS\, K / \sqrt{D}, \quad dK \mathrel{+}= dS^\top Q / \sqrt{D}. $$
#
# A custom `torch.autograd.Function` wires this in. We check values **and** gradients against naive
# attention on awkward shapes: odd lengths, grouped heads, a causal mask, and queries that come after a
# cache of earlier keys (T < S).

# %%
def values_and_grads(fn, q, k, v, causal):
    out = fn(q, k, v, causal=causal)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return (out, *torch.autograd.grad(out, (q, k, v), g))


cases = [  # B, H, KV, T, S, D, causal
    (2, 4, 4, 77, 77, 32, True),
    (1, 6, 2, 50, 50, 16, False),  # grouped-query attention: 3 query heads per key/value head
    (1, 4, 1, 13, 60, 16, True),  # 13 new queries after 47 cached positions, one shared key/value head
]
for B, H, KV, T, S, D, causal in cases:
    q = torch.randn(B, H, T, D, requires_grad=True)
    k, v = (torch.randn(B, KV, S, D, requires_grad=True) for _ in range(2))
    expected = values_and_grads(flash.naive_attention, q, k, v, causal)
    got = values_and_grads(lambda *a, causal: flash.tiled_attention(*a, causal=causal, block_q=16, block_k=16),
                           q, k, v, causal)
    for _name, a, b in zip(("output", "dQ", "dK", "dV"), got, expected):
        assert_close(a, b, atol=2e-5, rtol=1e-4)
    print(f"B={B} H={H} KV={KV} T={T} S={S} causal={causal}: output, dQ, dK, dV equal to naive attention")
claim("m3-tiled-attention-exact", f"dQ, dK, dV and output within 2e-5 on {len(cases)} awkward shapes "
      "(odd lengths, GQA, causal, T < S)")

# %% [markdown]
# ## 3. Memory: quadratic against linear, measured
#
# `peak_memory_bytes` reports the most memory the call's tensors held at once (notebook 1). We run both
# versions, causal, with 4 heads of size 64, from 256 to 4096 tokens.

# %%
lengths = [256, 512, 1024, 2048, 4096]
H, D = 4, 64
naive_mem, tiled_mem, tiled_largest = [], [], []
for T in lengths:
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(1, H, T, D, generator=g).to(device) for _ in range(3))
    naive_mem.append(flash.peak_memory_bytes(flash.naive_attention, q, k, v, True).peak)
    report = flash.peak_memory_bytes(flash.tiled_attention, q, k, v, True, None, 128, 128)
    tiled_mem.append(report.peak)
    tiled_largest.append(report.largest)
    print(f"T={T:>5}: naive {naive_mem[-1] / 2**20:8.2f} MiB   tiled {tiled_mem[-1] / 2**20:6.2f} MiB")


def growth_exponent(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


p_naive, p_tiled = growth_exponent(lengths[-3:], naive_mem[-3:]), growth_exponent(lengths[-3:], tiled_mem[-3:])
print(f"growth exponents from T=1024 to 4096: naive {p_naive:.2f}, tiled {p_tiled:.2f}")
print(f"at T=4096 tiled attention needs {naive_mem[-1] / tiled_mem[-1]:.0f} times less memory")
assert abs(p_naive - 2) < 0.1 and p_tiled < 1.1
if device.type == "cpu":  # the largest single tensor is the output itself, never T x T
    assert max(tiled_largest) == H * 4096 * D * 4
claim("m3-tiled-memory", f"exponents {p_tiled:.2f} vs {p_naive:.2f} (T = {lengths[-3] // 1024}k-{lengths[-1] // 1024}k, "
      f"causal, {H} heads of {D}); {tiled_mem[-1] / 2**20:.1f} MiB vs {naive_mem[-1] / 2**20:.0f} MiB at "
      f"T = {lengths[-1]} ({naive_mem[-1] / tiled_mem[-1]:.0f}x less)"
      + ("; largest tensor = the output" if device.type == "cpu" else ""))

plt.figure(figsize=(6, 4))
plt.loglog(lengths, np.array(naive_mem) / 2**20, "o-", label=f"naive (slope {p_naive:.2f})")
plt.loglog(lengths, np.array(tiled_mem) / 2**20, "s-", label=f"tiled (slope {p_tiled:.2f})")
plt.xticks(lengths, [str(t) for t in lengths])
plt.xlabel("sequence length T")
plt.ylabel("peak memory (MiB)")
plt.title("attention memory, 4 heads of 64, causal")
plt.legend()
plt.grid(True, which="both", alpha=0.3)
plt.show()

# %% [markdown]
# The tiled version's memory is a constant (a few $128 \times 128$ tiles) plus the output: linear in
# $T$. Its slope between 1024 and 4096 is still below 1 because the constant part is not yet negligible.
#
# What about speed? The cell below times both, causal, at $T = 1024$ on the CPU (three timed runs each, so
# the printed times move from run to run). The tiled loop can come out ahead there, but not for
# FlashAttention's reason: it skips the key blocks in the future (about half the tiles), while naive
# attention computes the whole matrix and then masks it. A CPU's caches already hide much of the memory
# traffic, and every tile costs a handful of small operations dispatched one by one from Python. The
# point of FlashAttention is to fuse the whole loop into **one GPU kernel** that keeps the tiles in
# on-chip memory. That is what Triton lets us write.

# %%
q, k, v = (torch.randn(1, H, 1024, D, generator=torch.Generator().manual_seed(i)) for i in range(3))
t_naive = benchmark(flash.naive_attention, q, k, v, True, repeat=3)
t_tiled = benchmark(flash.tiled_attention, q, k, v, True, None, 128, 128, repeat=3)
print(f"T=1024 on the CPU: naive {t_naive * 1e3:.1f} ms, tiled PyTorch loop {t_tiled * 1e3:.1f} ms")

# %% [markdown]
# ## 4. The Triton kernel
#
# [Triton](https://triton-lang.org) is a Python-like language for GPU kernels: you write what **one
# program** does to **blocks** of data, and Triton maps blocks onto the GPU's threads and fast memory. Our
# kernel, `llmcourse.flash._fwd_kernel`, is FlashAttention-2's forward pass. Its source:

# %%
print(inspect.getsource(flash._fwd_kernel))

# %% [markdown]
# Block by block:
#
# 1. **One program per (query block, batch × head).** The launch grid is
#    `(ceil(T / BLOCK_M), B * H)`. `tl.program_id(0)` says which `BLOCK_M` queries this program owns,
#    `tl.program_id(1)` which batch and head. With grouped-query attention, head `h` reads key/value head
#    `h // N_REP`. FlashAttention-2 parallelises over query blocks like this (the first version parallelised
#    only over batch and heads), which keeps the GPU busy even with small batches.
# 2. **Pointers and one load of Q.** `offs_m`, `offs_n`, `offs_d` are index vectors; adding
#    `offs[:, None] * stride + offs[None, :] * stride` to a base pointer gives a 2-D block of addresses,
#    and `tl.load` brings that block into registers. The query block is loaded once and reused against
#    every key block. Rows past the end of the sequence are masked (`mask=offs_m[:, None] < T`).
# 3. **Running statistics.** `m_i`, `l_i`, `acc` are exactly the $m$, $\ell$, acc of section 1, in fp32.
#    The scores are multiplied by $\log_2 e$ so that the kernel can use `exp2`, the GPU's native
#    exponential ($e^x = 2^{x \log_2 e}$).
# 4. **Stage 1: key blocks that every query row may see.** No mask, no bounds check: the bulk of the work
#    and the fastest loop. `tl.dot(q, k)` runs on the tensor cores; `acc` is rescaled by `alpha` and the
#    new `p @ v` is accumulated in the same `tl.dot` call.
# 5. **Stage 2: the edge.** Key blocks that cross the causal diagonal, or the end of the sequence, get
#    the mask (`tl.where(keep, s, -inf)`). For causal attention the loop stops at the diagonal: key blocks
#    entirely in the future of the query block are **skipped**, never loaded. Splitting the loop this way
#    (rather than masking every block) lets the causal kernel do about half the work of the non-causal
#    one, with the masking cost paid on the diagonal blocks only.
# 6. **Epilogue.** Divide by $\ell$, store the output block, and store the log-sum-exp
#    $\text{lse} = m + \log \ell$ (back in natural-log units) for the backward pass.
#
# How much work does the block skipping save? `causal_block_counts` follows the same schedule:

# %%
for T in (1024, 4096, 16_384):
    c = flash.causal_block_counts(T, block_m=128, block_n=64)
    print(f"T={T:>6}: {c.full:>6} unmasked + {c.diagonal:>4} diagonal tiles computed, {c.skipped:>6} skipped "
          f"({c.computed_fraction:.1%} of the full matrix)")
assert flash.causal_block_counts(4096, block_m=128, block_n=64).computed_fraction < 0.52
at_4k, at_16k = (flash.causal_block_counts(T, block_m=128, block_n=64) for T in (4096, 16_384))
claim("m3-causal-block-skipping", f"{at_4k.computed_fraction:.1%} of the tiles at T = 4096 (blocks 128 x 64), "
      f"{at_16k.computed_fraction:.1%} at 16k")

# %% [markdown]
# The backward pass is two more kernels (`_bwd_dkdv_kernel`: one program per key block, looping over
# query blocks; `_bwd_dq_kernel`: one program per query block, looping over key blocks), implementing
# the formulas of section 2.
#
# ### Checking the kernel on a CPU
#
# Triton kernels normally need a GPU. Triton also ships an **interpreter** that runs the same kernel with
# NumPy, block by block; `flash_attention_triton` uses it automatically for CPU tensors (and you can force
# it on a GPU with `TRITON_INTERPRET=1`). It is slow, so we use small shapes, with a block size of 16 and
# lengths that are not multiples of it. The reference is PyTorch's own fused attention,
# `scaled_dot_product_attention` (SDPA).

# %%
for T, causal in ((50, True), (50, False), (33, True)):
    q, k, v = (torch.randn(2, 4, T, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = flash.flash_attention_triton(q, k, v, causal=causal)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert_close(out, sdpa, atol=2e-5, rtol=1e-4)
    print(f"T={T}, causal={causal}: Triton kernel (interpreted) equals SDPA, "
          f"max difference below 1e-5: {(out - sdpa).abs().max().item() < 1e-5}")
claim("m3-triton-forward", "equal to SDPA within 1e-5 (interpreter, fp32, T = 33 and 50, causal and not)")

# %%
# Gradients through the two backward kernels, with grouped-query heads (4 query heads, 2 key/value heads)
q = torch.randn(1, 4, 37, 16, requires_grad=True)
k, v = (torch.randn(1, 2, 37, 16, requires_grad=True) for _ in range(2))
got = values_and_grads(flash.flash_attention_triton, q, k, v, True)
expected = values_and_grads(flash.naive_attention, q, k, v, True)
for _name, a, b in zip(("output", "dQ", "dK", "dV"), got, expected):
    assert_close(a, b, atol=2e-5, rtol=1e-4)
out, lse = flash.triton_attention_forward(q.detach(), k.detach(), v.detach(), causal=True)
assert_close(lse, flash.tiled_attention_forward(q.detach(), k.detach(), v.detach(), causal=True).lse)
print("Triton forward and backward (interpreted) equal naive attention; its log-sum-exp equals the tiled one")
claim("m3-triton-backward", "gradients equal naive attention; LSE equal to the tiled version")

# %% [markdown]
# ### On a GPU
#
# On a CUDA machine the same function compiles the kernel (with a small autotuning search over block
# sizes and pipeline depths). The course's `make gpu-check` benchmarks it against SDPA in bf16 and fp16,
# causal and not, at 1k, 4k and 16k tokens, and records the table in this module's README. The cell below
# runs a small version of that comparison when a GPU is present.

# %%
if device.type == "cuda":
    for dtype in (torch.bfloat16, torch.float16):
        for causal in (False, True):
            q, k, v = (torch.randn(4, 16, 4096, 64, device=device, dtype=dtype) for _ in range(3))
            t_triton = benchmark(flash.flash_attention_triton, q, k, v, causal, warmup=3, repeat=10)
            t_sdpa = benchmark(F.scaled_dot_product_attention, q, k, v, is_causal=causal, warmup=3, repeat=10)
            flops = flash.attention_flops(4, 16, 4096, D=64, causal=causal)
            print(f"{str(dtype):>14} causal={causal!s:<5}: Triton {flops / t_triton / 1e12:.1f} TFLOP/s, "
                  f"SDPA {flops / t_sdpa / 1e12:.1f} TFLOP/s")
else:
    print("no CUDA device here: `make gpu-check` benchmarks the kernel against SDPA on a GPU")

# %% [markdown]
# ## Summary
#
# - The **online softmax** keeps a running max $m$ and sum $\ell$ and rescales them by $e^{m_\text{old} -
#   m_\text{new}}$ when the max grows; with an unnormalised output rescaled the same way, attention can be
#   computed block by block, **exactly** (equal to naive attention within float rounding, gradients too).
# - Tiled attention's memory grows at most linearly in $T$ (measured exponent 0.61 from 1k to 4k tokens,
#   a constant for the tiles plus the output, against 2.00 for naive attention), and at $T = 4096$ with 4
#   heads it needs 99 times less. The backward pass recomputes
#   scores from the saved log-sum-exp instead of storing them.
# - The speed comes from fusion on a GPU: a Triton kernel keeps tiles on chip, runs the unmasked blocks
#   without any bounds checks, masks only the diagonal blocks and skips the future ones for causal
#   attention (51.6% of the tiles computed at 4k tokens).
#
# ## Try it yourself
#
# 1. Change the block size of `tiled_attention_one_head` to 1 and to 200: still equal? What is the
#    largest tensor it creates in each case?
# 2. In the online softmax, process the chunks in reverse order. Does the result change? Why not?
# 3. Make the Triton kernel mask every block (move everything into stage 2) and check it is still correct
#    in the interpreter. On a GPU, `make gpu-check` would show what that costs.
# 4. Write `causal_block_counts` for a sliding-window mask (each query sees the last 256 keys only).
#
# ## References
#
# - Dao, Fu, Ermon, Rudra & Ré 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with
#   IO-Awareness", https://arxiv.org/abs/2205.14135
# - Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
#   https://arxiv.org/abs/2307.08691 (algorithm 1: the forward pass above; algorithm 2: the backward)
# - Milakov & Gimelshein 2018, "Online normalizer calculation for softmax", https://arxiv.org/abs/1805.02867
# - Rabe & Staats 2021, "Self-attention Does Not Need $O(n^2)$ Memory", https://arxiv.org/abs/2112.05682
# - Tillet, Kung & Cox 2019, "Triton: an intermediate language and compiler for tiled neural network
#   computations"; the fused-attention tutorial,
#   https://triton-lang.org/main/getting-started/tutorials/06-fused-attention.html
