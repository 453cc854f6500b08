# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/04_multimodal/06_beyond_attention.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 6. Beyond attention: long convolutions (Hyena) and retention (RetNet)
#
# Attention has two costs that grow with the context length $T$: computing it takes $O(T^2)$ time (every
# token against every token), and generating with it needs a KV cache that grows as $O(T)$ per layer. For
# long audio, video, DNA or million-token documents, both hurt. Two families of alternatives keep the
# "every token can use the whole past" property at lower cost:
#
# - **long convolutions** (S4, H3, Hyena): mix the sequence with a filter as long as the sequence itself,
#   computed with the FFT in $O(T \log T)$;
# - **linear recurrences** (RetNet, RWKV, Mamba): attention-like layers that can *also* run as an RNN with a
#   fixed-size state, so generation needs constant memory.
#
# We build Hyena's FFT convolution and RetNet's retention, prove their fast forms equal their definitions,
# and measure the costs.
#
# **Learning objectives.** After this notebook you can
#
# 1. compute a causal convolution with the FFT, explain the zero-padding, and measure its $O(T \log T)$ scaling;
# 2. describe a Hyena operator (implicit long filters + gating);
# 3. write retention in its parallel, recurrent and chunkwise forms and show they are identical;
# 4. measure that recurrent retention decodes with constant memory while attention's KV cache grows.
#
# **Prerequisites:** module 1 (attention, causal masks); module 3's KV cache helps. Runs within the course's
# one-minute budget on two CPU cores (the stored notebook records each cell's time).

# %%
import contextlib
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmcourse import hyena, retention
from llmcourse.attention import AttentionConfig, MultiHeadAttention, scaled_dot_product_attention
from llmcourse.utils import benchmark, claim, count_parameters, get_device, num_threads, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()

# %% [markdown]
# ## 1. Causal convolution, directly and with the FFT
#
# A causal convolution of a signal $u$ with a filter $h$ mixes each position with its past:
# $y_t = \sum_{s \le t} h_{t-s}\, u_s$. With a filter as long as the sequence, that is $T^2/2$ multiply-adds
# per channel, as expensive as attention. The **convolution theorem** says convolution in time is
# multiplication in frequency, and the FFT moves between the two in $O(T \log T)$:
#
# $$y = \operatorname{irfft}\big(\operatorname{rfft}(u, 2T) \cdot \operatorname{rfft}(h, 2T)\big)[:T].$$
#
# The $2T$ matters: the FFT computes a *circular* convolution, where the end of the sequence wraps around into
# its beginning. Zero-padding to $2T$ leaves room so nothing wraps, which also keeps the result causal.

# %%
g = torch.Generator().manual_seed(0)
u = torch.randn(2, 4, 64, generator=g, dtype=torch.float64)  # (B, D channels, T)
h = torch.randn(4, 64, generator=g, dtype=torch.float64) * torch.exp(-torch.arange(64) / 16)  # (D, T)

loops = torch.zeros_like(u)
for t in range(64):  # the definition, term by term
    loops[..., t] = (h[:, :t + 1].flip(-1) * u[..., :t + 1]).sum(-1)
n = 2 * u.shape[-1]
by_fft = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(h, n=n), n=n)[..., :64]
circular = torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(h), n=64)  # no padding: wrong

exact = dict(rtol=0.0, atol=1e-10)  # float64: the forms agree to 1e-10 (float32 would reach only ~1e-6)
assert_close(by_fft, loops, **exact)
assert_close(hyena.fft_conv(u, h), loops, **exact)
assert_close(hyena.direct_conv(u, h), loops, **exact)
wrap_error = (circular - loops).abs().max().item()
print("FFT convolution == direct (conv1d) == the definition; without zero-padding the largest error is "
      f"{wrap_error:.1f}")
assert wrap_error > 1.0
claim("m4-fft-conv-equal", f"equal to {exact['atol']:g}; error {wrap_error:.1f} without padding")

# %% [markdown]
# ## 2. Measured scaling
#
# We time both on 4 channels, for lengths up to 65,536 for the FFT and up to 8,192 for the direct method
# (median of several runs, on one CPU thread so that other programs disturb every method alike), with
# causal attention (PyTorch's fused `scaled_dot_product_attention`, one head of width 64) up to 4,096
# for reference. On log-log axes a power law $t \propto T^k$ is a straight line of
# slope $k$.

# %%
lengths = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
timings = {"FFT convolution": [], "direct convolution": [], "causal attention": []}
# On a CPU, one thread: another busy program on the machine disturbs every method alike.
with num_threads(1) if device.type == "cpu" else contextlib.nullcontext():
    for T in lengths:
        x = torch.randn(1, 4, T, device=device)
        filt = torch.randn(4, T, device=device)
        timings["FFT convolution"].append(benchmark(hyena.fft_conv, x, filt, repeat=5))
        # The quadratic methods at the largest lengths would take most of this notebook's time budget.
        timings["direct convolution"].append(
            benchmark(hyena.direct_conv, x, filt, repeat=3) if T <= 8192 else math.nan)
        q = torch.randn(1, 1, T, 64, device=device)
        timings["causal attention"].append(
            benchmark(F.scaled_dot_product_attention, q, q, q, is_causal=True, repeat=3) if T <= 4096 else math.nan)


def fitted_exponent(ts, first=1):
    """Slope of log(time) against log(T), from lengths[first] on (the smallest size measures overhead)."""
    pts = [(math.log(T), math.log(t)) for T, t in zip(lengths[first:], ts[first:]) if not math.isnan(t)]
    xs, ys = np.array(pts).T
    return float(np.polyfit(xs, ys, 1)[0])


exponents = {name: fitted_exponent(ts) for name, ts in timings.items()}
fig, ax = plt.subplots(figsize=(5.5, 3.8))
for name, ts in timings.items():
    ax.plot(lengths, [t * 1e3 for t in ts], marker="o", label=f"{name} (slope {exponents[name]:.1f})")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequence length T")
ax.set_ylabel("time (ms), median")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
plt.show()

at_8k = lengths.index(8192)
fft_8k, direct_8k = timings["FFT convolution"][at_8k], timings["direct convolution"][at_8k]
print(f"T = 8192: FFT {fft_8k * 1e3:.2f} ms, direct {direct_8k * 1e3:.1f} ms; "
      f"T = 65536: FFT {timings['FFT convolution'][-1] * 1e3:.1f} ms")
steeper = exponents["direct convolution"] > exponents["FFT convolution"] + 0.5
print(f"direct convolution's time grows with a clearly steeper exponent than the FFT's: {steeper}")
print(f"at T = 8192 the FFT is more than 10 times faster: {direct_8k > 10 * fft_8k}")
assert steeper and direct_8k > 10 * fft_8k
claim("m4-fft-conv-scaling", f"steeper fitted exponent for direct; > 10x faster FFT at T = {lengths[at_8k]} "
      f"(measured {direct_8k / fft_8k:.0f}×: FFT {fft_8k * 1e3:.2f} ms, direct {direct_8k * 1e3:.1f} ms)")

# %% [markdown]
# (The fitted slopes are in the legend and the times printed above are one run's; they vary from run to run
# and machine to machine, so the notebook asserts only the conclusions.) Direct convolution grows about
# quadratically. The FFT grows roughly as $T \log T$, with steps where its working set stops fitting in a CPU
# cache: real hardware adds constants that big-O ignores, which is why FlashFFTConv (Fu et al. 2023) exists.
# Attention also pays $O(T^2)$. It is not equal work: each pair of positions costs attention two dot products
# of width 64, the 4-channel convolution 4 multiply-adds, so compare the slopes, not the heights of the lines.
#
# ## 3. A Hyena operator
#
# A convolution alone is linear and the same for every input; attention's power comes from being
# *data-dependent*. Hyena gets data dependence from **gating**: project the input into streams
# $v, x_1, \dots, x_N$ (after a short convolution over neighbouring tokens), then alternate long convolutions
# and element-wise products,
#
# $$z_0 = v, \qquad z_i = x_i \odot (h_i * z_{i-1}), \qquad y = W_{out}\, z_N .$$
#
# The filters $h_i$ are **implicit**: a small MLP maps the position $t$ to $h_i[t]$, multiplied by an
# exponential decay. Their parameter count does not depend on $T$, unlike an explicit filter with one weight
# per position.

# %%
seed_everything(0)
op = hyena.HyenaOperator(hyena.HyenaConfig(d_model=32, order=2)).double()
x = torch.randn(2, 200, 32, dtype=torch.float64)
y_fft = op(x)
op.config.impl = "direct"
assert_close(op(x), y_fft)  # same operator, computed with direct convolutions
op.config.impl = "fft"
changed = x.clone()
changed[:, 120:] = torch.randn(2, 80, 32, dtype=torch.float64)
assert_close(op(changed)[:, :120], y_fft[:, :120])  # causal: the future never leaks backwards
print(f"Hyena operator: {count_parameters(op):,} parameters for any T; FFT == direct; causal: True")
claim("m4-hyena-parameters", f"{count_parameters(op):,} parameters at any T; future changes leave the past unchanged")

with torch.no_grad():
    filters = op.filters[0](200).float()  # (D, T)
fig, ax = plt.subplots(figsize=(6, 2.6))
for d in (0, 10, 20, 31):
    ax.plot(filters[d].numpy(), label=f"channel {d}")
ax.set_xlabel("lag t")
ax.set_title("implicit filters h[t] at initialisation (MLP(position) x decay)", fontsize=9)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 4. Retention: one layer, three ways to compute it
#
# RetNet's **retention** is attention without the softmax, with a decay $\gamma < 1$ per head:
#
# $$\text{parallel:}\quad O = (QK^\top \odot D)\,V, \qquad D_{nm} = \gamma^{n-m}\ (n \ge m),\ 0\ \text{otherwise}.$$
#
# Without the softmax the sum can be reorganised. Unroll $o_n = \sum_{m \le n} \gamma^{n-m}(q_n \cdot k_m) v_m
# = q_n \sum_{m \le n} \gamma^{n-m} k_m^\top v_m$: the sum is a matrix $S_n$ that updates in one step,
#
# $$\text{recurrent:}\quad S_n = \gamma S_{n-1} + k_n^\top v_n, \qquad o_n = q_n S_n .$$
#
# The decay multiplies the **old** state, so the newest token always enters with weight 1 and one seen $k$ steps
# ago with $\gamma^k$. The **chunkwise** form does the parallel form inside chunks and the recurrence across
# them. First the parallel form and the recurrence written out, then the package's three functions:

# %%
B, H, T, Dk, Dv = 2, 3, 50, 8, 8
g = torch.Generator().manual_seed(1)
q, k, v = (torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for d in (Dk, Dk, Dv))
gammas = retention.default_gammas(H)  # 1 - 2^-5, 1 - 2^-6, 1 - 2^-7: memories of ~32, 64, 128 tokens

D = retention.decay_mask(T, gammas)  # (H, T, T)
parallel = (q @ k.transpose(-2, -1) * D) @ v  # (B, H, T, Dv)
S = torch.zeros(B, H, Dk, Dv, dtype=torch.float64)
steps = []
for t in range(T):
    S = gammas[:, None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # decay the past, add k_t^T v_t
    steps.append(q[:, :, t, None, :] @ S)  # (B, H, 1, Dv)
recurrent = torch.cat(steps, dim=2)
assert_close(recurrent, parallel, **exact)

forms = {"parallel": retention.retention_parallel(q, k, v, gammas),
         "recurrent": retention.retention_recurrent(q, k, v, gammas),
         "chunkwise (chunks of 16)": retention.retention_chunkwise(q, k, v, gammas, chunk_size=16)}
for name, out in forms.items():
    assert_close(out.output, parallel, **exact)
    assert_close(out.state, forms["parallel"].state, **exact)
    print(f"{name:>25}: output {tuple(out.output.shape)}, final state {tuple(out.state.shape)}, == by hand")
claim("m4-retention-forms", f"outputs and final states equal to {exact['atol']:g} (float64)")

fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
for hd, ax in enumerate(axes):
    ax.imshow(D[hd, :40, :40].numpy(), cmap="magma")
    ax.set_title(f"decay mask, gamma = {gammas[hd]:.4f}", fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# The parallel form trains like attention (all positions at once, on matrix units); the recurrent form
# generates like an RNN; the chunkwise form processes long inputs in $O(T \cdot C)$ with the memory of one
# chunk. The full RetNet layer (`MultiScaleRetention`) adds projections, a different $\gamma$ per head, a
# per-head GroupNorm and a swish gate; since all of those act per token, its three modes agree too:

# %%
seed_everything(0)
layer = retention.MultiScaleRetention(retention.RetentionConfig(d_model=64, n_heads=4, chunk_size=32)).double()
x = torch.randn(1, 100, 64, dtype=torch.float64)
y_par, _ = layer(x, "parallel")
for mode in ("recurrent", "chunkwise"):
    assert_close(layer(x, mode)[0], y_par)
print(f"MultiScaleRetention ({count_parameters(layer):,} parameters): parallel == recurrent == chunkwise")

# %% [markdown]
# ## 5. Generation memory: a fixed state against a growing KV cache
#
# Generating token by token, attention must keep the keys and values of every previous token (module 3's KV
# cache); retention keeps only $S$, $H \times D_k \times D_v$ numbers per layer. We generate 2,048 steps with
# one retention layer and one attention layer of the same width (64, 4 heads) and record how many bytes each
# carries from one step to the next.

# %%
seed_everything(0)
ret_layer = retention.MultiScaleRetention(retention.RetentionConfig(d_model=64, n_heads=4)).to(device)
attn_layer = MultiHeadAttention(AttentionConfig(d_model=64, n_heads=4)).to(device)
stream = torch.randn(1, 2048, 64, device=device)  # stand-in inputs, one per generated token
checkpoints = {64, 256, 1024, 2048}
state, keys, values = None, [], []
ret_bytes, kv_bytes = {}, {}
with torch.no_grad():
    for t in range(2048):
        x_t = stream[:, t:t + 1]  # (1, 1, 64): the newest token only
        _, state = ret_layer(x_t, "recurrent", state=state)  # O(1) work and memory per step
        q_t, k_t, v_t = attn_layer.qkv(x_t)  # (1, H, 1, D) each
        keys.append(k_t)
        values.append(v_t)
        scaled_dot_product_attention(q_t, torch.cat(keys, dim=2), torch.cat(values, dim=2))  # O(t) per step
        if t + 1 in checkpoints:
            ret_bytes[t + 1] = state.numel() * state.element_size()
            kv_bytes[t + 1] = sum(c.numel() * c.element_size() for c in keys + values)

print(f"{'tokens':>7}{'retention state':>17}{'attention KV cache':>20}")
for t in sorted(checkpoints):
    print(f"{t:>7}{ret_bytes[t]:>14,} B{kv_bytes[t]:>17,} B")
assert len(set(ret_bytes.values())) == 1  # constant in T
assert kv_bytes[2048] == 32 * kv_bytes[64]  # linear in T
first, last = min(checkpoints), max(checkpoints)
claim("m4-retention-memory", f"{ret_bytes[first]:,} B at {first} to {last:,} tokens vs {kv_bytes[first]:,} B to "
      f"{kv_bytes[last]:,} B")

# %% [markdown]
# The retention state stays at 4 KiB (4 heads x 16 x 16 numbers in fp32, per layer and sequence) whatever the length;
# the KV cache grows by 512 bytes per token per layer (keys and values, 64 numbers each, fp32). For a
# 7B-parameter transformer with 32 layers of width 4096 in fp16, that is 0.5 MB per token: 2 GB for a 4,096-token
# context, per sequence in the batch. This is the practical appeal of recurrent forms for long-context
# serving.
#
# What is the catch? The state is a fixed-size summary: it must compress the past, and exact recall of
# an arbitrary old token (copying, looking up a phone number in a long document) is harder than for attention,
# which keeps everything. Studies of these models (Arora et al. 2023, "Zoology"; Jelassi et al. 2024,
# "Repeat After Me") measure exactly this recall gap; hybrids that mix a few attention layers into a recurrent
# stack (Jamba, Griffin) are the current compromise.
#
# ## Summary
#
# - **Long convolutions** mix a whole sequence in $O(T \log T)$ with the FFT (zero-padding to $2T$ makes it
#   linear and causal); we measured much slower growth than the quadratic direct convolution, and a more
#   than 10x gap at 8,192 tokens.
# - **Hyena** makes convolutions data-dependent with gating, and keeps filters cheap with an implicit MLP
#   parameterisation.
# - **Retention** drops the softmax and adds a decay, which allows a **parallel** form (training), a
#   **recurrent** form (generation) and a **chunkwise** form (long inputs); all three agree to 1e-10.
# - Recurrent generation carries a **constant-size state** (measured: 4 KiB at every length here), where
#   attention's KV cache grows linearly; the price is a compressed memory of the past.
#
# ## Try it yourself
#
# 1. Time `MultiScaleRetention` in parallel and chunkwise mode for T = 1,024 ... 16,384. Where does the
#    chunkwise form win, and how does the chunk size move that point?
# 2. Set all gammas to 1 in `retention_parallel`: what model is that (hint: Katharopoulos et al. 2020)? What
#    happens to the size of the outputs as T grows, and why does RetNet need the decay and the GroupNorm?
# 3. Train a 2-layer model with `HyenaOperator` in place of attention on module 1's character corpus and
#    compare its loss with a GPT of similar size.
# 4. Build an associative-recall task (`a 1 b 7 c 3 ... b ?`) and compare how far back attention and
#    retention can recall.
#
# ## References
#
# - Poli et al. 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models", https://arxiv.org/abs/2302.10866
# - Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
#   https://arxiv.org/abs/2307.08621
# - Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State Spaces" (S4),
#   https://arxiv.org/abs/2111.00396
# - Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", https://arxiv.org/abs/2312.00752
# - Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
#   https://arxiv.org/abs/2006.16236
# - Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
#   https://arxiv.org/abs/2312.04927
# - Jelassi et al. 2024, "Repeat After Me: Transformers are Better than State Space Models at Copying",
#   https://arxiv.org/abs/2402.01032
# - Fu et al. 2023, "FlashFFTConv: Efficient Convolutions for Long Sequences with Tensor Cores",
#   https://arxiv.org/abs/2311.05817
# - Lieber et al. 2024, "Jamba: A Hybrid Transformer-Mamba Language Model", https://arxiv.org/abs/2403.19887
