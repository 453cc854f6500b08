# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/labs/lab3_deployment/lab3_deployment.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # Lab 3: Deployment building blocks
#
# Module 3 was about making models cheap to run: smaller numbers, smaller caches, less memory traffic,
# fewer experts per token, and a big model only when a small one is unsure. In this lab you write the
# core of each idea yourself. Every part is a short function; the difficulty is in the details that the
# demos pointed out, and the hidden tests check exactly those details.
#
# | Part | You write | Points |
# |---|---|---|
# | 1 | `absmax_quantize(x)`, `absmax_dequantize(q, scale)`: symmetric int8 | 3 |
# | 2 | `zeropoint_quantize(x)`, `zeropoint_dequantize(q, scale, zero_point)`: affine uint8 | 3 |
# | 3 | `alibi_slopes(n_heads)`, `alibi_bias(n_heads, T)` | 3 |
# | 4 | `repeat_kv(x, n_rep)` for grouped-query attention | 2 |
# | 5 | `top_k_route(logits, k)`: a mixture-of-experts router with its load-balancing loss | 4 |
# | 6 | `tiled_attention(q, k, v, block_size)`: attention by online softmax | 4 |
# | 7 | `cascade_decision(...)`, `cascade_accuracy_and_cost(...)`: an LLM cascade | 3 |
#
# **How this lab works**
#
# - Write your code in the answer cells, where it says `# YOUR CODE HERE` (delete the
#   `raise NotImplementedError()`). Keep the names and signatures: the tests call them.
# - After each answer comes a test cell. Run it: no output means the visible checks passed; an
#   `AssertionError` says what to fix. When grading, the same cell also runs **hidden tests** (other
#   shapes, edge cases, comparisons with reference implementations). A part is done when it is correct in
#   general, not just on the visible example.
# - The parts are independent: each is graded on its own, in any order.
# - Use tensor operations (`torch.round`, `clamp`, `amax`, `softmax`, `topk`, `@`, ...), not the course's
#   package (`llmcourse`) or `torch.nn.functional.scaled_dot_product_attention`: writing them is the point.
# - Before you submit: *Kernel → Restart Kernel and Run All Cells*, and check that every test cell runs.
#
# The demos behind each part: `05_quantization` (parts 1-2), `02_alibi` (3), `04_gqa_kv_cache` (4),
# `07_mixture_of_experts` (5), `03_flash_attention` (6), `08_cascades` (7).

# %% [markdown]
# ## Setup
#
# Run both cells; do not edit them (they are locked and restored when grading). The second defines
# `expect_close`, a comparison with readable messages that the test cells use.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false}
import math

import torch

from llmcourse.utils import quiet, seed_everything

quiet()
seed_everything(0)

# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers for the test cells. The reference implementations imported here are only used to check
# your answers on inputs you do not see.
import torch._dynamo
from llmcourse import attention as ref_attention
from llmcourse import cascade as ref_cascade
from llmcourse import flash as ref_flash
from llmcourse import moe as ref_moe
from llmcourse import positional as ref_positional
from llmcourse import quant as ref_quant


def expect_close(actual, expected, what, atol=1e-5, rtol=1e-4):
    """Assert that `actual` has `expected`'s shape and values; the message says what differs."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if not bool(close.all()):
        n_nan = int(actual.isnan().sum())
        worst = (actual - expected).abs().nan_to_num(nan=float("inf")).max().item()
        hint = f" ({n_nan} NaN)" if n_nan else ""
        raise AssertionError(f"{what}: {int((~close).sum())} of {close.numel()} values are wrong{hint}, "
                             f"largest difference {worst:.3g}")


def expect_equal(actual, expected, what):
    """Exact equality of integer tensors (quantization codes), with the first mismatch in the message."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    diff = (actual.long() != expected.long()).reshape(-1)
    if bool(diff.any()):
        i = int(diff.nonzero()[0])
        raise AssertionError(f"{what}: {int(diff.sum())} of {diff.numel()} codes differ, e.g. "
                             f"{actual.reshape(-1)[i].item()} instead of {expected.reshape(-1)[i].item()}")


def as_scalar(value, what):
    """A scale or zero point given as a Python number, a 0-d or a one-element tensor, as a 0-d tensor."""
    value = torch.as_tensor(value).detach().double()
    assert value.numel() == 1, f"{what} must be a single number (one per tensor), got shape {tuple(value.shape)}"
    return value.reshape(())


# %% [markdown]
# ## Part 1. Absmax int8 quantization (3 points)
#
# An int8 code has 256 values. **Absmax** (symmetric) quantization maps the largest magnitude of the
# tensor to 127 and everything else proportionally:
#
# $$ s = \frac{\max |x|}{127}, \qquad q = \operatorname{clamp}\!\big(\operatorname{round}(x / s), -127, 127\big),
# \qquad \hat x = s \cdot q . $$
#
# The grid is symmetric (-128 is not used), so $0$ maps to $0$ exactly, and the rounding error of each
# value is at most $s/2$. The scale must come from the **maximum**: a scale from, say, the mean magnitude
# would send the largest values far outside the grid, where the clamp cuts them off.
#
# **Write**
#
# - `absmax_quantize(x)`: `x` a float tensor of any shape; return `(q, scale)` with `q` of dtype
#   `torch.int8` and the same shape as `x`, and `scale` one number (a 0-d tensor is best). Compute in
#   float32. If `x` is all zeros, use `scale = 1` (any scale would do, but not 0: you divide by it).
# - `absmax_dequantize(q, scale)`: the float32 tensor $s \cdot q$.

# %% nbgrader={"grade": false, "grade_id": "absmax_answer", "locked": false, "schema_version": 3, "solution": true}
def absmax_quantize(x):
    """x (any shape, float) -> (q int8 same shape, scale 0-d float32): q = round(x / s), s = max|x| / 127."""
    ### BEGIN SOLUTION
    x = x.float()
    amax = x.abs().max()
    scale = amax / 127 if amax > 0 else torch.tensor(1.0)
    q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
    return q, scale
    ### END SOLUTION


def absmax_dequantize(q, scale):
    """q (int8), scale -> float32 tensor scale * q."""
    ### BEGIN SOLUTION
    return q.float() * scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "absmax_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.27])
q, scale = absmax_quantize(x)
assert q.dtype == torch.int8, f"q must be int8, got {q.dtype}"
expect_close(as_scalar(scale, "scale"), 2.0 / 127, "scale of the example (max |x| = 2)")
# -1 / (2/127) = -63.5 rounds to -64 (torch.round rounds halves to even); 0.5 -> 31.75 -> 32
expect_equal(q, torch.tensor([-127, -64, 0, 32, 81]), "codes of the example")
x_hat = absmax_dequantize(q, scale)
assert (x_hat - x).abs().max() <= as_scalar(scale, "scale") / 2 + 1e-6, "rounding error must be at most scale / 2"
### BEGIN HIDDEN TESTS
def _check_absmax(x_, label):
    ref = ref_quant.absmax_quantize(x_)
    q_, s_ = absmax_quantize(x_)
    assert q_.dtype == torch.int8, f"{label}: q must be int8, got {q_.dtype}"
    expect_close(as_scalar(s_, "scale"), ref.scale, f"{label}: scale", rtol=1e-5)
    expect_equal(q_, ref.q, f"{label}: codes")
    expect_close(absmax_dequantize(ref.q, ref.scale), ref_quant.absmax_dequantize(ref), f"{label}: dequantized values")


torch.manual_seed(301)
_check_absmax(torch.randn(33, 17), "a (33, 17) normal tensor")
_check_absmax(torch.randn(1000) * 0.01, "small values")
_heavy = torch.randn(64, 8)
_heavy[3, 5] = 40.0  # one outlier sets the scale for everything
_check_absmax(_heavy, "a tensor with an outlier")
_check_absmax(torch.tensor([0.3]), "a single value")
_check_absmax(-torch.rand(5, 5) - 1, "all negative values")
_check_absmax(torch.randn(4, 6).to(torch.float16), "a float16 tensor")
_zq, _zs = absmax_quantize(torch.zeros(3, 4))
_zx = absmax_dequantize(_zq, _zs)
assert bool(torch.isfinite(_zx).all()) and bool((_zx == 0).all()), "an all-zero tensor must come back as zeros"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2. Zero-point (affine) quantization (3 points)
#
# Many tensors are skewed: activations after a ReLU are never negative, so a symmetric grid wastes half
# its codes. **Zero-point** quantization maps the range $[lo, hi]$ onto the unsigned codes $0..255$, with
# an integer **zero point** $z$: the code that represents the real number 0. The range is stretched to
# include 0 (so that 0, very common after a ReLU or in padding, is represented *exactly*):
#
# $$ lo = \min(\min x, 0), \quad hi = \max(\max x, 0), \quad s = \frac{hi - lo}{255}, \quad
# z = \operatorname{round}(-lo / s), $$
# $$ q = \operatorname{clamp}\!\big(\operatorname{round}(x / s) + z,\; 0,\; 255\big), \qquad \hat x = s\,(q - z). $$
#
# Two details matter. $z$ must be **rounded** to an integer: otherwise $\hat x$ of a zero is not zero, and
# the codes are not the ones other libraries produce. And the codes must be **clamped**: with $z$
# rounded, $\operatorname{round}(x/s) + z$ can come out as 256 for the largest value, and 256 stored in a
# byte wraps around to 0.
#
# **Write**
#
# - `zeropoint_quantize(x)`: return `(q, scale, zero_point)`: `q` of dtype `torch.uint8`, shaped like
#   `x`; `scale` one float; `zero_point` one integer (a 0-d int tensor or a Python int). If `x` is all
#   zeros use `scale = 1`. Compute in float32.
# - `zeropoint_dequantize(q, scale, zero_point)`: the float32 tensor $s\,(q - z)$.

# %% nbgrader={"grade": false, "grade_id": "zeropoint_answer", "locked": false, "schema_version": 3, "solution": true}
def zeropoint_quantize(x):
    """x (any shape, float) -> (q uint8, scale, zero_point): q = clamp(round(x / s) + z, 0, 255)."""
    ### BEGIN SOLUTION
    x = x.float()
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (hi - lo) / 255 if hi > lo else torch.tensor(1.0)
    zero_point = torch.round(-lo / scale).to(torch.int32)
    q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale, zero_point
    ### END SOLUTION


def zeropoint_dequantize(q, scale, zero_point):
    """q (uint8), scale, zero_point -> float32 tensor scale * (q - zero_point)."""
    ### BEGIN SOLUTION
    return (q.float() - zero_point) * scale
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "zeropoint_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 2.0])  # lo = -0.5, hi = 2: s = 2.5 / 255, z = round(51) = 51; 0.3 / s = 30.6
q, scale, zero_point = zeropoint_quantize(x)
assert q.dtype == torch.uint8, f"q must be uint8, got {q.dtype}"
expect_close(as_scalar(scale, "scale"), 2.5 / 255, "scale of the example")
assert int(as_scalar(zero_point, "zero_point")) == 51, f"zero point of the example: {zero_point}, expected 51"
expect_equal(q, torch.tensor([0, 51, 82, 153, 255]), "codes of the example")
x_hat = zeropoint_dequantize(q, scale, zero_point)
assert x_hat[1] == 0, "the real number 0 must come back exactly as 0"
expect_close(x_hat, x, "dequantized example", atol=float(as_scalar(scale, "scale")) / 2 + 1e-6)
### BEGIN HIDDEN TESTS
def _check_zeropoint(x_, label):
    ref = ref_quant.zeropoint_quantize(x_)
    q_, s_, z_ = zeropoint_quantize(x_)
    assert q_.dtype == torch.uint8, f"{label}: q must be uint8, got {q_.dtype}"
    z_ = as_scalar(z_, "zero_point")
    assert float(z_) == round(float(z_)), f"{label}: the zero point must be an integer, got {float(z_)}"
    expect_close(as_scalar(s_, "scale"), ref.scale, f"{label}: scale", rtol=1e-5)
    assert int(z_) == int(ref.zero_point), f"{label}: zero point {int(z_)}, expected {int(ref.zero_point)}"
    expect_equal(q_, ref.q, f"{label}: codes")
    expect_close(zeropoint_dequantize(ref.q, ref.scale, ref.zero_point), ref_quant.zeropoint_dequantize(ref),
                 f"{label}: dequantized values")
    if bool((x_ == 0).any()):
        assert bool((zeropoint_dequantize(q_, s_, z_)[x_ == 0] == 0).all()), f"{label}: 0 must come back as 0"


torch.manual_seed(302)
_check_zeropoint(torch.randn(40, 9), "a (40, 9) normal tensor")
_check_zeropoint(torch.relu(torch.randn(200)), "ReLU outputs (skewed, with zeros)")
_check_zeropoint(torch.rand(7, 3) + 2.0, "all values in [2, 3]")
_check_zeropoint(-torch.rand(50) * 3, "all values negative")
_check_zeropoint(torch.tensor([-1.5, 0.0, 100.25, 253.5]), "a range whose top code rounds to 256")
_check_zeropoint(torch.tensor([0.7]), "a single value")
_zq, _zs, _zz = zeropoint_quantize(torch.zeros(6))
assert bool((zeropoint_dequantize(_zq, _zs, _zz) == 0).all()), "an all-zero tensor must come back as zeros"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3. ALiBi biases (3 points)
#
# ALiBi (Press et al. 2022) replaces position embeddings by a penalty on the attention scores that grows
# linearly with the distance between query $i$ and key $j \le i$: head $h$ adds $-m_h (i - j)$. For $n$
# heads, a power of two, the slopes are the geometric sequence
#
# $$ m_h = 2^{-8h/n}, \quad h = 1, \dots, n \qquad (n = 8: \tfrac12, \tfrac14, \dots, \tfrac1{256}). $$
#
# For $n$ **not** a power of two, the paper does *not* use $2^{-8h/n}$. It takes the $p$ slopes of the
# closest power of two $p < n$, then adds the first $n - p$ of **every other** slope of the sequence for
# $2p$ heads (positions 0, 2, 4, ... of that list). For 12 heads: the 8 slopes for $n = 8$, then slopes
# 1, 3, 5, 7 (counting from 1) of the 16-head sequence.
#
# **Write**
#
# - `alibi_slopes(n_heads)`: a float32 tensor of shape `(n_heads,)`, in the order above.
# - `alibi_bias(n_heads, T)`: a float32 tensor of shape `(n_heads, T, T)` whose entry `[h, i, j]` is
#   $-m_h (i - j)$ for $j \le i$. Entries above the diagonal ($j > i$, future keys) are not tested: the
#   causal mask removes them anyway, so use what you like there. Mind the sign: far keys get a *lower*
#   score.

# %% nbgrader={"grade": false, "grade_id": "alibi_answer", "locked": false, "schema_version": 3, "solution": true}
def alibi_slopes(n_heads):
    """ALiBi slopes (n_heads,), Press et al. 2022, including the rule for non-powers of two."""
    ### BEGIN SOLUTION
    def geometric(n):
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(geometric(n_heads), dtype=torch.float32)
    p = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(geometric(p) + geometric(2 * p)[0::2][: n_heads - p], dtype=torch.float32)
    ### END SOLUTION


def alibi_bias(n_heads, T):
    """(n_heads, T, T) with bias[h, i, j] = -m_h * (i - j) for j <= i."""
    ### BEGIN SOLUTION
    distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T): i - j
    return -alibi_slopes(n_heads)[:, None, None] * distance  # (H, T, T)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "alibi_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
expect_close(alibi_slopes(4), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256]), "slopes for 4 heads")
bias = alibi_bias(4, 5)
assert bias.shape == (4, 5, 5), f"bias shape {tuple(bias.shape)}, expected (4, 5, 5)"
expect_close(bias[0, 4, :], torch.tensor([-1.0, -0.75, -0.5, -0.25, 0.0]), "head 0, query 4 (slope 1/4)")
assert bias[1, 3, 0] < bias[1, 3, 2] < 0, "a far key must be penalised more than a near one"
### BEGIN HIDDEN TESTS
for _n in (1, 2, 8, 16, 32, 12, 6, 9, 24, 3):
    expect_close(alibi_slopes(_n), ref_positional.alibi_slopes(_n), f"slopes for {_n} heads", rtol=1e-5)
_lower = torch.ones(7, 7, dtype=torch.bool).tril()
for _n, _T in ((8, 7), (12, 7), (5, 7)):
    _got = alibi_bias(_n, _T)
    assert _got.shape == (_n, _T, _T), f"bias shape {tuple(_got.shape)}, expected {(_n, _T, _T)}"
    _mask = torch.ones(_T, _T, dtype=torch.bool).tril()
    expect_close(_got[:, _mask], ref_positional.alibi_bias(_n, _T)[:, _mask], f"bias for {_n} heads, T={_T} (j <= i)")
_one = alibi_bias(3, 1)
assert _one.shape == (3, 1, 1) and bool((_one == 0).all()), "T = 1: a single zero bias per head"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4. Key/value heads for grouped-query attention (2 points)
#
# With grouped-query attention, $H$ query heads share $KV$ key/value heads ($H$ divisible by $KV$): query
# head $h$ uses key/value head $h \,/\!/\, (H / KV)$. A simple implementation repeats every key/value head
# $n_{rep} = H/KV$ times, **each head's copies next to each other**: heads `[a, b]` with `n_rep = 3` become
# `[a, a, a, b, b, b]`, not `[a, b, a, b, a, b]`.
#
# **Write** `repeat_kv(x, n_rep)`: `x` of shape `(B, KV, T, D)` -> `(B, KV * n_rep, T, D)`.

# %% nbgrader={"grade": false, "grade_id": "repeat_kv_answer", "locked": false, "schema_version": 3, "solution": true}
def repeat_kv(x, n_rep):
    """(B, KV, T, D) -> (B, KV * n_rep, T, D), each key/value head repeated n_rep times in place."""
    ### BEGIN SOLUTION
    return x.repeat_interleave(n_rep, dim=1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "repeat_kv_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
x = torch.arange(2.0).view(1, 2, 1, 1)  # two key/value heads holding 0 and 1
out = repeat_kv(x, 3)
assert out.shape == (1, 6, 1, 1), f"shape {tuple(out.shape)}, expected (1, 6, 1, 1)"
assert out.flatten().tolist() == [0, 0, 0, 1, 1, 1], f"head order {out.flatten().tolist()}, expected [0, 0, 0, 1, 1, 1]"
### BEGIN HIDDEN TESTS
torch.manual_seed(304)
for _shape, _rep in (((2, 3, 5, 4), 3), ((1, 1, 7, 8), 9), ((2, 4, 1, 2), 1), ((3, 2, 6, 5), 4)):
    _x = torch.randn(*_shape)
    expect_close(repeat_kv(_x, _rep), ref_attention.repeat_kv(_x, _rep), f"repeat_kv of {_shape}, n_rep={_rep}")
# Used for grouped-query attention, it must agree with PyTorch's own GQA.
_q, _k, _v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
_ours = torch.softmax(_q @ repeat_kv(_k, 3).transpose(-2, -1) / math.sqrt(8), dim=-1) @ repeat_kv(_v, 3)
_theirs = torch.nn.functional.scaled_dot_product_attention(_q, _k, _v, enable_gqa=True)
expect_close(_ours, _theirs, "grouped-query attention built with repeat_kv")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5. A top-k router with a load-balancing loss (4 points)
#
# A mixture-of-experts layer sends each token to $k$ of its $E$ expert networks. The router gives each
# token a logit per expert; then:
#
# 1. **softmax over all $E$ experts first** (in float32): router probabilities $p_{t,e}$;
# 2. keep the $k$ largest probabilities per token: `weights` (the probabilities themselves, *not*
#    renormalised) and `indices` (which experts), both of shape `(N, k)`.
#
# The order matters. A softmax *after* the top-k (over the $k$ chosen logits only) gives every token of a
# top-1 router the weight 1.0 exactly: the output no longer depends on the router, and the router stops
# learning.
#
# Left alone, a router sends most tokens to a few experts. The Switch Transformer's **load-balancing
# loss** pushes back:
#
# $$ \mathcal L_\text{aux} = E \sum_{e=1}^{E} f_e \, P_e, \qquad
# f_e = \frac{\#\{\text{assignments to } e\}}{N k}, \qquad P_e = \frac1N \sum_t p_{t,e}. $$
#
# $f_e$ is the share of the $N k$ (token, expert) assignments that went to expert $e$ (counted, not
# differentiable), $P_e$ the mean router probability of $e$ (differentiable). The factor $E$ makes the
# loss 1 for a perfectly balanced router whatever the number of experts.
#
# **Write** `top_k_route(logits, k)`: `logits` of shape `(N, E)`; return `(weights, indices, aux_loss)`
# with `weights` (N, k) float32, `indices` (N, k) int64, `aux_loss` a 0-d tensor. Any order of the $k$
# experts within a row is accepted.

# %% nbgrader={"grade": false, "grade_id": "router_answer", "locked": false, "schema_version": 3, "solution": true}
def top_k_route(logits, k):
    """logits (N, E) -> (weights (N, k), indices (N, k), aux_loss 0-d): softmax over E, then top-k."""
    ### BEGIN SOLUTION
    N, E = logits.shape
    probs = torch.softmax(logits.float(), dim=-1)  # (N, E): over all experts, before choosing
    weights, indices = probs.topk(k, dim=-1)  # (N, k) each
    f = torch.bincount(indices.reshape(-1), minlength=E).float() / (N * k)  # share of assignments
    P = probs.mean(dim=0)  # mean router probability per expert
    aux_loss = E * (f * P).sum()
    return weights, indices, aux_loss
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "router_test", "locked": true, "points": 4, "schema_version": 3, "solution": false}
logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
weights, indices, aux_loss = top_k_route(logits, 1)
assert indices.flatten().tolist() == [0, 2], f"chosen experts {indices.flatten().tolist()}, expected [0, 2]"
expect_close(weights.flatten(), torch.softmax(logits, dim=-1).amax(dim=-1), "top-1 weights (router probabilities)")
# f = [1/2, 0, 1/2, 0]; P = column means of the softmax; loss = 4 * (P_0 + P_2) / 2
probs = torch.softmax(logits, dim=-1)
expect_close(aux_loss, 4 * (probs[:, 0].mean() + probs[:, 2].mean()) / 2, "load-balancing loss of the example")
### BEGIN HIDDEN TESTS
def _sorted_route(weights_, indices_):
    order = indices_.argsort(dim=-1)
    return weights_.gather(-1, order), indices_.gather(-1, order)


torch.manual_seed(305)
for _N, _E, _k in ((64, 8, 1), (64, 8, 2), (1, 4, 3), (33, 5, 5), (100, 16, 2)):
    _logits = torch.randn(_N, _E) * 2
    _ref = ref_moe.top_k_route(_logits, _k)
    _w, _i, _aux = top_k_route(_logits, _k)
    assert tuple(_w.shape) == (_N, _k) and tuple(_i.shape) == (_N, _k), \
        f"weights {tuple(_w.shape)} and indices {tuple(_i.shape)} must be (N, k) = {(_N, _k)}"
    _w, _i = _sorted_route(_w, _i)
    _rw, _ri = _sorted_route(_ref.weights, _ref.indices)
    assert torch.equal(_i.long(), _ri), f"N={_N}, E={_E}, k={_k}: chosen experts differ from the reference"
    expect_close(_w, _rw, f"N={_N}, E={_E}, k={_k}: weights")
    expect_close(_aux, _ref.aux_loss, f"N={_N}, E={_E}, k={_k}: load-balancing loss")
# A balanced router scores 1, a collapsed one E (here 8).
_balanced = torch.eye(8).repeat(4, 1) * 20  # 32 tokens, each expert the clear choice of 4 of them
expect_close(top_k_route(_balanced, 1)[2], torch.tensor(1.0), "loss of a balanced router", atol=1e-3)
_collapsed = torch.zeros(32, 8)
_collapsed[:, 3] = 30.0
expect_close(top_k_route(_collapsed, 1)[2], torch.tensor(8.0), "loss of a router that picks one expert", atol=1e-3)
# Probabilities in float32 whatever the logits' dtype: a bfloat16 softmax is off by up to 0.4%.
for _dtype in (torch.bfloat16, torch.float16, torch.float64):
    _logits = (torch.randn(64, 8) * 3).to(_dtype)
    _w, _i, _aux = top_k_route(_logits, 2)
    assert _w.dtype == torch.float32 and _aux.dtype == torch.float32, (
        f"{_dtype} logits: weights and aux_loss must be float32 (softmax in float32), got {_w.dtype}, {_aux.dtype}")
    assert _i.dtype == torch.int64, f"{_dtype} logits: indices must be int64, got {_i.dtype}"
    _ref = ref_moe.top_k_route(_logits, 2)
    _w, _i = _sorted_route(_w, _i)
    _rw, _ri = _sorted_route(_ref.weights, _ref.indices)
    expect_close(_w, _rw, f"{_dtype} logits: weights", atol=1e-6, rtol=1e-5)
    expect_close(_aux, _ref.aux_loss, f"{_dtype} logits: load-balancing loss", atol=1e-6, rtol=1e-5)
# Gradients reach the router through both the weights and the loss.
_logits = torch.randn(16, 4, requires_grad=True)
_w, _i, _aux = top_k_route(_logits, 1)
(_w.sum() + _aux).backward()
_expected_grad = torch.autograd.grad((lambda r: r.weights.sum() + r.aux_loss)(ref_moe.top_k_route(_logits, 1)), _logits)[0]
expect_close(_logits.grad, _expected_grad, "gradient of weights.sum() + aux_loss with respect to the logits")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 6. Attention by online softmax (4 points)
#
# FlashAttention computes exact attention without ever storing the $T \times S$ score matrix: it walks
# over **blocks of keys**, keeping for every query a running maximum $m$, a running sum $\ell$ and an
# unnormalised output $\text{acc}$. For each block of keys/values $(K_j, V_j)$:
#
# $$ s = q K_j^\top / \sqrt D, \quad m_\text{new} = \max(m, \max_j s), \quad p = e^{s - m_\text{new}}, $$
# $$ \ell \leftarrow \ell \, e^{m - m_\text{new}} + \textstyle\sum_j p, \qquad
# \text{acc} \leftarrow \text{acc}\, e^{m - m_\text{new}} + p V_j, \qquad m \leftarrow m_\text{new}, $$
#
# and at the end $\text{output} = \text{acc} / \ell$. Start with $m = -\infty$, $\ell = 0$, $\text{acc} = 0$.
# The factor $e^{m - m_\text{new}}$ **rescales** what was accumulated relative to the old maximum: forget it
# on $\ell$ or on $\text{acc}$ and the result is wrong as soon as a later block holds a larger score.
#
# **Write** `tiled_attention(q, k, v, block_size=16)`: `q` of shape `(..., T, D)`, `k` and `v` of shape
# `(..., S, D)` (the same leading dimensions); no mask. Return the output `(..., T, D)`, equal to
# `softmax(q k^T / sqrt(D)) v`.
#
# Process keys in blocks of `block_size` rows (the last block may be shorter); queries may go in blocks
# too. **No tensor you create may grow with the number of keys $S$**: the largest may hold
# $\max(T D, T \cdot \text{block\_size})$ numbers, so no `(T, S)` score matrix, and no strip of scores
# against all $S$ keys either (not even one query row at a time). The hidden tests measure it.

# %% nbgrader={"grade": false, "grade_id": "tiled_answer", "locked": false, "schema_version": 3, "solution": true}
def tiled_attention(q, k, v, block_size=16):
    """softmax(q k^T / sqrt(D)) v by online softmax over key blocks. q (..., T, D), k, v (..., S, D)."""
    ### BEGIN SOLUTION
    T, D, S = q.shape[-2], q.shape[-1], k.shape[-2]
    out = torch.empty_like(q)
    for i in range(0, T, block_size):
        qi = q[..., i:i + block_size, :] / math.sqrt(D)  # (..., bq, D)
        m = torch.full(qi.shape[:-1], float("-inf"))  # (..., bq) running max
        l = torch.zeros(qi.shape[:-1])  # running sum
        acc = torch.zeros(qi.shape)  # running unnormalised output
        for j in range(0, S, block_size):
            s = qi @ k[..., j:j + block_size, :].transpose(-2, -1)  # (..., bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1))
            alpha = torch.exp(m - m_new)  # rescale what was accumulated so far
            p = torch.exp(s - m_new[..., None])
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ v[..., j:j + block_size, :]
            m = m_new
        out[..., i:i + block_size, :] = acc / l[..., None]
    return out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "tiled_test", "locked": true, "points": 4, "schema_version": 3, "solution": false}
# Scores that grow along the keys: every new block raises the maximum, so the rescale is needed.
q = torch.ones(1, 4)
k = torch.arange(8.0)[:, None].repeat(1, 4) / 4  # (8, 4): scores 0, 0.5, 1, ..., 3.5
v = torch.eye(8)[:, :4]  # (8, 4)
expected = torch.softmax(q @ k.T / 2, dim=-1) @ v
expect_close(tiled_attention(q, k, v, block_size=2), expected, "increasing scores, blocks of 2")
q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 13, 8), torch.randn(2, 3, 13, 8)
expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1) @ v
expect_close(tiled_attention(q, k, v, block_size=4), expected, "(2, 3, 10, 8) queries, 13 keys, blocks of 4")
### BEGIN HIDDEN TESTS
def _check_tiled(lead, T, S, D, block, spread=1.0, atol=1e-5, rtol=1e-4):
    q_, k_, v_ = torch.randn(*lead, T, D) * spread, torch.randn(*lead, S, D) * spread, torch.randn(*lead, S, D)
    ref = ref_flash.naive_attention(q_.reshape(-1, 1, T, D), k_.reshape(-1, 1, S, D), v_.reshape(-1, 1, S, D))
    expect_close(tiled_attention(q_, k_, v_, block_size=block), ref.reshape(*lead, T, D),
                 f"q {tuple(q_.shape)}, {S} keys, blocks of {block}", atol=atol, rtol=rtol)


torch.manual_seed(306)
for _args in (((), 37, 37, 16, 8), ((2,), 1, 5, 4, 16), ((3,), 9, 1, 4, 2), ((2, 2), 20, 50, 8, 7),
              ((1,), 16, 16, 8, 1), ((1,), 12, 30, 8, 64)):
    _check_tiled(*_args)
_check_tiled((2,), 40, 40, 32, 8, spread=6.0, atol=1e-4, rtol=1e-3)  # large scores: exp overflows without the max
# Memory: no tensor grows with the number of keys S; the largest may hold max(T * D, T * block) floats.
for _T, _S in ((512, 512), (16, 4096)):
    _q, _k, _v = torch.randn(_T, 8), torch.randn(_S, 8), torch.randn(_S, 8)
    _largest = ref_flash.peak_memory_bytes(tiled_attention, _q, _k, _v, 16).largest
    _limit = max(_T * 8, _T * 16)
    assert _largest <= _limit * 4, (
        f"T={_T} queries, S={_S} keys, blocks of 16: the largest tensor created has {_largest // 4} floats, more "
        f"than max(T * D, T * block) = {_limit}: scores must be computed one block of keys at a time")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 7. An LLM cascade (3 points)
#
# FrugalGPT's cascade asks a cheap model first. For each query the small model reports a confidence $c$
# (for instance its probability for its own answer). With a threshold $\tau$:
#
# - $c \ge \tau$: **accept** the small model's answer (cost: the small model only);
# - $c < \tau$: **escalate** to the large model, whose answer is used (cost: *both* models, since the
#   small one already ran).
#
# A confidence exactly equal to the threshold is accepted.
#
# **Write**
#
# - `cascade_decision(confidence, threshold)`: `confidence` a float tensor `(N,)`; return a bool tensor
#   `(N,)`, `True` where the small model's answer is accepted.
# - `cascade_accuracy_and_cost(small_correct, large_correct, confidence, threshold, small_cost, large_cost)`:
#   `small_correct` and `large_correct` are bool tensors `(N,)` saying whether each model answers each
#   query correctly. Return `(accuracy, cost)` as Python floats: the share of queries the cascade answers
#   correctly, and the mean cost per query.

# %% nbgrader={"grade": false, "grade_id": "cascade_answer", "locked": false, "schema_version": 3, "solution": true}
def cascade_decision(confidence, threshold):
    """(N,) confidences -> (N,) bool: True = accept the small model's answer (confidence >= threshold)."""
    ### BEGIN SOLUTION
    return confidence >= threshold
    ### END SOLUTION


def cascade_accuracy_and_cost(small_correct, large_correct, confidence, threshold, small_cost, large_cost):
    """Accuracy and mean cost per query of the cascade at `threshold`."""
    ### BEGIN SOLUTION
    accept = cascade_decision(confidence, threshold)
    correct = torch.where(accept, small_correct, large_correct)
    cost = small_cost + (~accept).float().mean() * large_cost  # escalated queries pay for both models
    return correct.float().mean().item(), float(cost)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "cascade_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
confidence = torch.tensor([0.9, 0.4, 0.75, 0.2])
assert cascade_decision(confidence, 0.7).tolist() == [True, False, True, False], "decisions at threshold 0.7"
small_correct = torch.tensor([True, False, False, False])
large_correct = torch.tensor([True, True, True, False])
accuracy, cost = cascade_accuracy_and_cost(small_correct, large_correct, confidence, 0.7, 1.0, 10.0)
# accepted: queries 0 (right) and 2 (wrong); escalated: 1 (large right) and 3 (large wrong)
assert math.isclose(accuracy, 0.5), f"accuracy {accuracy}, expected 0.5"
assert math.isclose(cost, 1.0 + 0.5 * 10.0), f"mean cost {cost}, expected 6.0 (every query pays 1, half pay 10 more)"
### BEGIN HIDDEN TESTS
torch.manual_seed(307)
_conf = torch.rand(200)
_conf[:5] = 0.5  # confidences exactly at the threshold are accepted
_small, _large = torch.rand(200) < _conf, torch.rand(200) < 0.9
for _tau in (0.5, 0.0, 0.93, 2.0):
    assert torch.equal(cascade_decision(_conf, _tau).bool(), ref_cascade.cascade_decision(_conf, _tau)), \
        f"decisions at threshold {_tau} differ from the reference"
    _ref = ref_cascade.evaluate_cascade(_small, _large, _conf, _tau, small_cost=0.3, large_cost=5.0)
    _acc, _cost = cascade_accuracy_and_cost(_small, _large, _conf, _tau, 0.3, 5.0)
    assert math.isclose(float(_acc), _ref.accuracy, abs_tol=1e-6), f"threshold {_tau}: accuracy {_acc}, expected {_ref.accuracy}"
    assert math.isclose(float(_cost), _ref.cost, rel_tol=1e-5), f"threshold {_tau}: cost {_cost}, expected {_ref.cost}"
### END HIDDEN TESTS

# %% [markdown]
# ## Putting it together
#
# Not graded. With your functions in place, a few numbers that connect the parts to the demos:

# %%
w = torch.randn(256, 256)
for name, (encode, decode) in {"absmax": (absmax_quantize, absmax_dequantize),
                               "zero-point": (zeropoint_quantize, zeropoint_dequantize)}.items():
    for data_name, data in (("normal weights", w), ("ReLU activations", torch.relu(w))):
        error = (decode(*encode(data)) - data).pow(2).mean().sqrt() / data.pow(2).mean().sqrt()
        print(f"{name:>10} int8 on {data_name:<16}: relative RMS error {error:.4f}")

logits = torch.randn(4096, 8)
logits[:, 0] += 2.0  # a router that favours expert 0
print(f"load-balancing loss of a biased router: {top_k_route(logits, 1)[2]:.3f} (1 = balanced, 8 = collapsed)")

# %% [markdown]
# ## Reflection
#
# Not graded, but worth five minutes each:
#
# 1. Zero-point quantization was more accurate on ReLU activations and about as accurate on normal
#    weights. Why? How many of the 256 codes does absmax use for ReLU outputs?
# 2. Your ALiBi biases are a fixed function of $i - j$. Why does that let a model read contexts longer
#    than it was trained on, when learned position embeddings cannot?
# 3. With GQA and $H / KV = 3$, by how much does the KV cache shrink? What does `repeat_kv` cost in memory
#    at inference time, and how do fused kernels avoid that cost?
# 4. In your `tiled_attention`, the largest tensor is one `(block, block)` tile. What does the block size
#    trade off on a GPU (hint: on-chip memory, and how many programs run in parallel)?
# 5. In the cascade, what happens to cost and accuracy as the threshold goes from 0 to 1?

# %% [markdown]
# *Your notes:*
