# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/labs/lab1_transformers/lab1_transformers.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # Lab 1: Build a transformer from scratch
#
# In the Module 1 demos you watched attention and the transformer block at work. In this lab you write
# them yourself, one tested piece at a time, and end by counting the parameters of GPT-2 with your own
# formula. Every piece is a few lines of PyTorch; the thinking is in getting the shapes, the axes and the
# masks exactly right.
#
# | Part | You write | Points |
# |---|---|---|
# | 1 | `scaled_dot_product_attention(q, k, v, mask=None)` | 3 + 2 |
# | 2 | `causal_mask(T)` | 2 |
# | 3 | `MultiHeadAttention(d_model, n_heads)` | 4 |
# | 4 | `TransformerBlock(d_model, n_heads, d_ff=None)`, pre-norm | 4 |
# | 5 | `sinusoidal_encoding(T, d_model)` | 2 |
# | 6 | `count_gpt_parameters(vocab_size, context_length, d_model, n_layers, d_ff=None)` | 3 |
#
# **How this lab works**
#
# - Write your code in the answer cells, where it says `# YOUR CODE HERE` (delete the
#   `raise NotImplementedError()`). Keep the names, signatures and attribute names the instructions give:
#   the tests call them.
# - After each answer come one or two test cells. Run them: no output means the visible checks passed;
#   an `AssertionError` says what to fix. When grading, the same cells also run **hidden tests**: other
#   shapes, a single token (T = 1), odd sizes, masks, and comparisons with reference implementations. A
#   part is done when it is correct in general, not just on the visible examples.
# - **Each part is graded on its own.** Where a part builds on an earlier one (multi-head attention
#   calls your attention function, the block uses your multi-head attention), its tests swap in the
#   course's version of the earlier part (`with reference_parts(...)` below). A mistake costs the points
#   of one part, never two.
# - Use tensor operations (`@`, `torch.softmax`, `masked_fill`, `view`, `transpose`, `nn.Linear`,
#   `nn.LayerNorm`, ...) but not the finished products (`F.scaled_dot_product_attention`,
#   `nn.MultiheadAttention`, `nn.TransformerEncoderLayer`, `llmcourse`): writing them is the point.
# - Before you submit: *Kernel → Restart Kernel and Run All Cells*, and check that every test cell runs.
#
# Shape letters used throughout: `B` batch, `T` query positions, `S` key positions, `H` heads,
# `D` head dimension, `C` model width (`d_model`, equal to `H * D`).

# %% [markdown]
# ## Setup
#
# The first cell imports what you need. The second defines the helpers the test cells use: a comparison
# with readable messages, and the course's versions of the parts that stand in for yours while a later
# part is tested. Run both; do not edit them (they are locked and restored when grading).

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false}
import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.utils import quiet, seed_everything

quiet()
seed_everything(0)

# %% nbgrader={"grade": false, "grade_id": "test_helpers", "locked": true, "schema_version": 3, "solution": false}
# Helpers for the test cells. Nothing here gives away an answer: the reference implementations only
# ever stand in for *earlier* parts while a later part is being tested.
import contextlib

from llmcourse import attention as ref_attention
from llmcourse import transformer as ref_transformer


def expect_close(actual, expected, what, atol=1e-5, rtol=1e-4):
    """Assert that tensor `actual` has `expected`'s shape and values; the message says what differs."""
    assert isinstance(actual, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if not bool(close.all()):
        n_nan = int(actual.isnan().sum())
        worst = (actual - expected).abs().nan_to_num(nan=float("inf")).max().item()
        hint = f" ({n_nan} NaN)" if n_nan else ""
        raise AssertionError(f"{what}: {int((~close).sum())} of {close.numel()} values are wrong{hint}, "
                             f"largest difference {worst:.3g}")


def attention_output(result):
    """Part 1 may return `(output, weights)` or just `output`; this gives the output either way."""
    return result[0] if isinstance(result, (tuple, list)) else result


def attention_weights(result):
    """The attention weights when Part 1 returns them, else None."""
    return result[1] if isinstance(result, (tuple, list)) and len(result) > 1 else None


def load_parameters(module, params):
    """Copy `params` ({name: tensor}, named as in the instructions) into `module`, checking the layout."""
    own = dict(module.named_parameters())
    for name, value in params.items():
        assert name in own, (f"{type(module).__name__} has no parameter '{name}' of shape {tuple(value.shape)}: "
                             "follow the attribute names given in the instructions")
        assert own[name].shape == value.shape, (
            f"parameter '{name}' has shape {tuple(own[name].shape)}, expected {tuple(value.shape)}")
        with torch.no_grad():
            own[name].copy_(value)


def _randomize(module, seed):
    """Give every parameter a random value. LayerNorms start at exactly 1 and 0, which would hide a
    swapped ln_1/ln_2; random biases make a forgotten bias visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 2:  # a weight matrix (out, in): keep activations of order 1
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif name.startswith("ln") and name.endswith("weight"):  # a LayerNorm scale
                p.copy_(1.0 + 0.3 * noise)
            else:  # a bias or a LayerNorm shift
                p.copy_(0.3 * noise)
    return module


class ReferenceMultiHeadAttention(ref_attention.MultiHeadAttention):
    """The course's multi-head attention with this lab's signature and layout (q_proj, ..., out_proj)."""

    def __init__(self, d_model, n_heads):
        super().__init__(ref_attention.AttentionConfig(d_model=d_model, n_heads=n_heads, bias=True,
                                                       causal=False, impl="manual"))

    def forward(self, x, mask=None):
        return super().forward(x, mask=mask)


def reference_mha(d_model, n_heads, seed=0):
    """A reference multi-head attention with random weights, and those weights in Part 3's layout."""
    module = _randomize(ReferenceMultiHeadAttention(d_model, n_heads), seed)
    return module, {name: p.detach().clone() for name, p in module.named_parameters()}


class ReferenceTransformerBlock(ref_transformer.TransformerBlock):
    """The course's pre-norm block with this lab's signature (its MLP is `mlp.up_proj`, `mlp.down_proj`)."""

    def __init__(self, d_model, n_heads, d_ff=None):
        super().__init__(ref_transformer.BlockConfig(d_model=d_model, n_heads=n_heads, d_ff=d_ff, causal=False,
                                                     norm="pre", activation="gelu", impl="manual"))

    def forward(self, x, mask=None):
        return super().forward(x, mask=mask)


def reference_block(d_model, n_heads, d_ff=None, seed=0):
    """A reference pre-norm block with random weights, and those weights in Part 4's layout."""
    module = _randomize(ReferenceTransformerBlock(d_model, n_heads, d_ff), seed)
    rename = {"mlp.up_proj.": "mlp.0.", "mlp.down_proj.": "mlp.2."}  # FeedForward -> nn.Sequential indices
    params = {}
    for name, p in module.named_parameters():
        for old, new in rename.items():
            name = name.replace(old, new)
        params[name] = p.detach().clone()
    return module, params


def _reference_attention_like(student_fn):
    """The reference attention, returning what your Part 1 returns: `(output, weights)` or `output`."""
    pair = True  # the specification, and the choice when Part 1 is not written yet
    if callable(student_fn):
        probe = torch.zeros(1, 2, 2)
        try:
            pair = isinstance(student_fn(probe, probe, probe), (tuple, list))
        except Exception:  # noqa: BLE001 - an unfinished Part 1 must not break the other parts' tests
            pass

    def scaled_dot_product_attention(q, k, v, mask=None):
        output, weights = ref_attention.scaled_dot_product_attention(q, k, v, mask=mask)
        return (output, weights) if pair else output

    return scaled_dot_product_attention


def _reference_causal_mask(T, device=None):
    return ref_attention.causal_mask(T, device=device)


@contextlib.contextmanager
def reference_parts(*names):
    """Inside this block, the named earlier parts are the course's versions (yours come back after)."""
    space = globals()  # the notebook's namespace, where your answers live
    makers = {"scaled_dot_product_attention": _reference_attention_like,
              "causal_mask": lambda yours: _reference_causal_mask,
              "MultiHeadAttention": lambda yours: ReferenceMultiHeadAttention}
    saved = {name: space[name] for name in names if name in space}
    for name in names:
        space[name] = makers[name](saved.get(name))
    try:
        yield
    finally:
        for name in names:
            if name in saved:
                space[name] = saved[name]
            else:
                space.pop(name, None)


# %% [markdown]
# ## Part 1. Scaled dot-product attention (5 points)
#
# Attention lets every position look things up in every other position. Each query `q` says what a
# position is looking for, each key `k` says what a position offers, and each value `v` is what it hands
# over. A query's score against a key is their dot product; a softmax turns a query's row of scores into
# weights that sum to 1, and the output is the weighted average of the values:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{D}} + M\right) V$$
#
# Why divide by $\sqrt{D}$? For random queries and keys with unit variance, $q \cdot k$ is a sum of $D$
# terms and has variance $D$. Without the scale, wide heads produce large scores, the softmax saturates
# (one weight near 1, the others near 0) and its gradients vanish. Dividing by $\sqrt{D}$ brings the
# variance back to 1 at any width.
#
# **Write** `scaled_dot_product_attention(q, k, v, mask=None)`:
#
# - `q` has shape `(..., T, D)`, `k` has shape `(..., S, D)`, `v` has shape `(..., S, Dv)`. The leading
#   dimensions `...` are batch and heads: there may be none (`(T, D)`), one or several, and the same code
#   must handle them all. `T` and `S` may differ (a query attends to keys of another sequence), and so
#   may `D` and `Dv`.
# - Scores: `q` times the transpose of `k` over the **last two** dimensions, divided by `sqrt(D)`
#   (`D = q.shape[-1]`): shape `(..., T, S)`. (`k.T` reverses *all* dimensions of a batched tensor.)
# - `mask` is `None` or a boolean tensor that broadcasts to `(..., T, S)`; `True` means "this query may
#   attend to this key". Set the masked scores to $-\infty$ *before* the softmax, so they get a weight of
#   exactly 0 and the remaining weights still sum to 1. (In the tests every query can see at least one key.)
# - Softmax over the keys, so that each query's weights sum to 1. Use `torch.softmax`: it subtracts the
#   row maximum first, so large scores cannot overflow.
# - Return `(output, weights)`: `output` has shape `(..., T, Dv)`, `weights` shape `(..., T, S)`.
#   (Returning only `output` passes the tests too, but the weights are what you plot at the end.)

# %% nbgrader={"grade": false, "grade_id": "attention_answer", "locked": false, "schema_version": 3, "solution": true}
def scaled_dot_product_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D), with masked scores at -inf) v.

    q (..., T, D), k (..., S, D), v (..., S, Dv); mask: bool, broadcastable to (..., T, S), True = may attend.
    Returns (output (..., T, Dv), weights (..., T, S)).
    """
    ### BEGIN SOLUTION
    D = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # masked keys get exactly zero weight
    weights = torch.softmax(scores, dim=-1)  # (..., T, S): each query's row sums to 1
    return weights @ v, weights  # (..., T, Dv), (..., T, S)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "attention_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
# A tiny example you can check by hand: one query, two keys, D = 4 (so the scale is 1/2).
q = torch.tensor([[1.0, 1.0, 1.0, 1.0]])  # (T=1, D=4)
k = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # (S=2, D=4)
v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (S=2, Dv=2)
# Scores q.k = [4, 0]; scaled: [2, 0]; softmax: [sigmoid(2), sigmoid(-2)] = [0.8808, 0.1192].
result = scaled_dot_product_attention(q, k, v)
expect_close(attention_output(result), torch.tensor([[0.8808, 0.1192]]), "output of the tiny example", atol=1e-4)

# Batch and head dimensions, T != S and Dv != D.
q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 6)
result = scaled_dot_product_attention(q, k, v)
assert attention_output(result).shape == (2, 3, 5, 6), (
    f"output shape {tuple(attention_output(result).shape)}, expected (..., T, Dv) = (2, 3, 5, 6)")
weights = attention_weights(result)
if weights is not None:
    assert weights.shape == (2, 3, 5, 7), f"weights shape {tuple(weights.shape)}, expected (..., T, S) = (2, 3, 5, 7)"
    expect_close(weights.sum(-1), torch.ones(2, 3, 5), "sum of each query's weights over the keys")
### BEGIN HIDDEN TESTS
def _check_attention(lead, T, S, D, Dv, spread=1.0, atol=1e-5, rtol=1e-4):
    """Compare with PyTorch's fused attention (output) and the course's reference (weights)."""
    q_, k_, v_ = torch.randn(*lead, T, D) * spread, torch.randn(*lead, S, D) * spread, torch.randn(*lead, S, Dv)
    label = f"q {tuple(q_.shape)}, k {tuple(k_.shape)}, v {tuple(v_.shape)}"
    got = scaled_dot_product_attention(q_, k_, v_)
    expect_close(attention_output(got), F.scaled_dot_product_attention(q_, k_, v_), f"output for {label}",
                 atol=atol, rtol=rtol)
    if attention_weights(got) is not None:
        reference_weights = ref_attention.scaled_dot_product_attention(q_, k_, v_).weights
        expect_close(attention_weights(got), reference_weights, f"weights for {label}", atol=atol, rtol=rtol)


torch.manual_seed(101)
for _lead, _T, _S, _D, _Dv in [((), 4, 6, 8, 8), ((3,), 5, 5, 16, 4), ((2, 4), 7, 3, 5, 9),
                               ((2, 3), 1, 1, 2, 3), ((1, 2), 1, 9, 7, 7), ((2, 1, 3), 6, 4, 3, 2)]:
    _check_attention(_lead, _T, _S, _D, _Dv)
# Wide heads and large scores: the 1/sqrt(D) scale matters most here, and a softmax that does not
# subtract the row maximum overflows.
_check_attention((2,), 4, 5, 64, 8, spread=8.0, atol=1e-4, rtol=1e-3)
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "attention_mask_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
# The tiny example again, with the second key masked out: all the weight goes to the first key.
q = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
k = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
mask = torch.tensor([[True, False]])  # (T=1, S=2): the query may attend to key 0 only
expect_close(attention_output(scaled_dot_product_attention(q, k, v, mask)), torch.tensor([[1.0, 0.0]]),
             "output of the tiny example with key 1 masked")
# One (T, S) mask shared by the batch and head dimensions.
q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
mask = torch.tensor([[True, False, False, False], [True, True, False, False],
                     [True, True, True, False], [True, True, True, True]])
result = scaled_dot_product_attention(q, k, v, mask)
expect_close(attention_output(result)[..., 0, :], v[..., 0, :], "output of query 0, which sees only key 0")
weights = attention_weights(result)
if weights is not None:
    assert bool((weights[..., ~mask] == 0).all()), "masked keys must get a weight of exactly 0"
    expect_close(weights.sum(-1), torch.ones(2, 3, 4), "sum of each query's weights over the visible keys")
### BEGIN HIDDEN TESTS
def _check_masked(lead, T, S, D, mask_):
    """Compare with PyTorch's fused attention given the same boolean mask."""
    q_, k_, v_ = torch.randn(*lead, T, D), torch.randn(*lead, S, D), torch.randn(*lead, S, D + 1)
    label = f"q {tuple(q_.shape)}, k {tuple(k_.shape)} and a mask of shape {tuple(mask_.shape)}"
    got = scaled_dot_product_attention(q_, k_, v_, mask_)
    expect_close(attention_output(got), F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask_),
                 f"output for {label}")
    if attention_weights(got) is not None:
        hidden_keys = ~mask_.expand(*lead, T, S)
        assert bool((attention_weights(got)[hidden_keys] == 0).all()), f"masked weights are not 0 for {label}"


torch.manual_seed(102)
_random_mask = torch.rand(5, 7) < 0.5
_random_mask[:, 2] = True  # every query sees at least one key
_check_masked((2, 3), 5, 7, 8, _random_mask)  # (T, S) broadcast over batch and heads
_padding = torch.ones(2, 1, 1, 6, dtype=torch.bool)
_padding[1, ..., 4:] = False  # the second sequence has two padding tokens at the end
_check_masked((2, 3), 6, 6, 4, _padding)  # (B, 1, 1, S): a key padding mask
_check_masked((3,), 6, 6, 5, torch.ones(6, 6, dtype=torch.bool).tril())  # causal, 3 dims
_check_masked((), 1, 4, 3, torch.tensor([[False, True, False, True]]))  # a single query
_check_masked((2, 2), 3, 5, 6, torch.ones(3, 5, dtype=torch.bool))  # nothing masked
_per_head = torch.rand(2, 3, 4, 4) < 0.6
_per_head[..., 0] = True
_check_masked((2, 3), 4, 4, 7, _per_head)  # a different mask for every batch element and head
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2. The causal mask (2 points)
#
# A decoder such as GPT predicts each token from the tokens before it. During training it processes the
# whole sequence at once, so something must stop position `i` from reading positions after `i` (the
# answer it is supposed to predict): the causal mask. Query `i` may attend to key `j` exactly when
# `j <= i`, itself included.
#
# **Write** `causal_mask(T, device=None)`: a boolean tensor of shape `(T, T)` on `device`, `True` where
# query `i` may attend to key `j`. It is the `mask` of Part 1 for self-attention in a decoder.

# %% nbgrader={"grade": false, "grade_id": "causal_mask_answer", "locked": false, "schema_version": 3, "solution": true}
def causal_mask(T, device=None):
    """Boolean (T, T) mask: entry [i, j] is True when query i may attend to key j, i.e. when j <= i."""
    ### BEGIN SOLUTION
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T), lower triangle and diagonal
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "causal_mask_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
mask = causal_mask(4)
assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, "causal_mask must return a boolean tensor"
assert mask.shape == (4, 4), f"causal_mask(4) has shape {tuple(mask.shape)}, expected (4, 4)"
assert bool(mask[-1].all()), "the last position may attend to every position"
assert not bool(mask[0, 1:].any()), "the first position may not attend to any later position"
### BEGIN HIDDEN TESTS
for _T in (1, 2, 3, 5, 8, 13):
    _got = causal_mask(_T)
    assert isinstance(_got, torch.Tensor) and _got.dtype == torch.bool and _got.shape == (_T, _T), (
        f"causal_mask({_T}) must be a boolean (T, T) tensor")
    _wrong = int((_got != torch.ones(_T, _T).tril().bool()).sum())
    assert _wrong == 0, (f"causal_mask({_T}) has {_wrong} wrong entries: a position may attend to itself and to "
                         "earlier positions, never to later ones")
assert causal_mask(3, device=torch.device("cpu")).device.type == "cpu", "causal_mask must accept device="
# The mask is made on the device asked for (a "meta" tensor has a device and a shape but no data: free to make).
for _device in ("meta", torch.device("meta")):
    _got = causal_mask(5, device=_device)
    assert _got.device.type == "meta" and _got.shape == (5, 5) and _got.dtype == torch.bool, (
        f"causal_mask(5, device={_device!r}) is on {_got.device}: create the mask on `device` (pass device= "
        "when you make the tensor), so that a model on a GPU does not copy it there at every step")

# End to end with the reference attention: changing future tokens leaves every earlier output unchanged.
torch.manual_seed(103)
_x = torch.randn(2, 4, 9, 8)
_x_future = _x.clone()
_x_future[:, :, 6:] = torch.randn(2, 4, 3, 8)
_before = ref_attention.scaled_dot_product_attention(_x, _x, _x, mask=causal_mask(9)).output
_after = ref_attention.scaled_dot_product_attention(_x_future, _x_future, _x_future, mask=causal_mask(9)).output
expect_close(_after[:, :, :6], _before[:, :, :6], "outputs before position 6 once positions 6.. change")
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3. Multi-head attention (4 points)
#
# One attention pattern per layer is limiting: a token may need to look at the previous word, at the
# subject of its sentence and at a matching bracket, all at once. Multi-head attention runs `H`
# attentions side by side, each on its own `D = C / H` channels, then concatenates their outputs and
# mixes them with an output projection:
#
# $$\mathrm{head}_h = \mathrm{Attention}(X W_q^h, X W_k^h, X W_v^h), \qquad
#   \mathrm{MHA}(X) = [\mathrm{head}_1, \dots, \mathrm{head}_H]\, W_o$$
#
# The `H` small projections are computed as one `C x C` projection whose output is cut into heads.
#
# **Write** `MultiHeadAttention(d_model, n_heads)`, an `nn.Module` with exactly this layout (the tests
# copy weights into your module by these names):
#
# - `self.q_proj`, `self.k_proj`, `self.v_proj`, `self.out_proj`: each `nn.Linear(d_model, d_model)`,
#   with a bias (the default).
# - `forward(x, mask=None)`: `x` has shape `(B, T, C)`; `mask` is `None` or a boolean mask that
#   broadcasts to `(B, H, T, T)`, such as a `(T, T)` causal mask or a `(B, 1, 1, T)` padding mask.
#   Returns `(B, T, C)`.
# - Head `h` owns channels `h*D` to `(h+1)*D - 1` of each projection: reshape `(B, T, C)` to
#   `(B, T, H, D)`, then move the head dimension forward to get `(B, H, T, D)`.
# - Attend with your `scaled_dot_product_attention` from Part 1 (during these tests it is replaced by the
#   reference version). Then undo the split, back to `(B, T, H, D)` and `(B, T, C)`, and apply `out_proj`.
#
# Watch the order of dimensions: `view(B, H, T, D)` runs without error but mixes positions and channels.

# %% nbgrader={"grade": false, "grade_id": "mha_answer", "locked": false, "schema_version": 3, "solution": true}
class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: x (B, T, C) -> (B, T, C) with H heads of D = C // H channels."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        ### BEGIN SOLUTION
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        ### END SOLUTION

    def forward(self, x, mask=None):
        """x (B, T, C); mask bool, broadcastable to (B, H, T, T), True = may attend. Returns (B, T, C)."""
        ### BEGIN SOLUTION
        B, T, C = x.shape
        H, D = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        y, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, H, D) -> (B, T, C): heads side by side
        return self.out_proj(y)
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "mha_test", "locked": true, "points": 4, "schema_version": 3, "solution": false}
torch.manual_seed(3)
with reference_parts("scaled_dot_product_attention", "causal_mask"):
    mha = MultiHeadAttention(d_model=12, n_heads=3)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer = getattr(mha, name, None)
        assert isinstance(layer, nn.Linear) and layer.weight.shape == (12, 12) and layer.bias is not None, (
            f"self.{name} must be nn.Linear(d_model, d_model), with a bias")
    x = torch.randn(2, 5, 12)
    assert mha(x).shape == (2, 5, 12), f"output shape {tuple(mha(x).shape)}, expected (B, T, C) = (2, 5, 12)"
    # The same weights as the course's version must give the same output, with and without a mask.
    reference, params = reference_mha(d_model=12, n_heads=3)
    load_parameters(mha, params)
    expect_close(mha(x), reference(x), "output for x of shape (2, 5, 12) with 3 heads")
    mask = ref_attention.causal_mask(5)
    expect_close(mha(x, mask), reference(x, mask), "output for x of shape (2, 5, 12) with a causal mask")
### BEGIN HIDDEN TESTS
def _check_mha(B, T, C, H, seed):
    """Same weights as the reference, several masks; gradients reach every projection."""
    ours, weights_ = reference_mha(C, H, seed=seed)
    theirs = MultiHeadAttention(C, H)
    load_parameters(theirs, weights_)
    x_ = torch.randn(B, T, C)
    padding_ = torch.ones(B, 1, 1, T, dtype=torch.bool)
    padding_[0, ..., T // 2 + 1:] = False
    masks_ = {"no mask": None, "a causal mask": ref_attention.causal_mask(T), "a padding mask": padding_}
    for label, m in masks_.items():
        expect_close(theirs(x_, m), ours(x_, m), f"output for x {tuple(x_.shape)}, {H} heads, {label}")
    if T == 1:
        return  # a single key gets weight 1 whatever the scores: q_proj and k_proj rightly get no gradient
    theirs(x_, masks_["a causal mask"]).square().sum().backward()
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        grad = getattr(theirs, proj).weight.grad
        assert grad is not None and bool(grad.abs().sum() > 0), f"{proj} receives no gradient: is it used?"


torch.manual_seed(104)
with reference_parts("causal_mask", "scaled_dot_product_attention"):
    for _args in [(2, 6, 16, 4, 1), (1, 1, 8, 2, 2), (3, 7, 10, 5, 3), (2, 4, 6, 1, 4), (1, 9, 16, 16, 5)]:
        _check_mha(*_args)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4. The transformer block (4 points)
#
# A transformer block lets the positions talk to each other (attention), then lets each position think on
# its own (a two-layer MLP applied to every position separately). Two details make deep stacks of blocks
# trainable:
#
# - **Residual connections.** Each sub-layer *adds* its result to its input, `x + f(x)`, instead of
#   replacing it. The sum gives gradients a direct path from the loss to every layer, and a block that has
#   nothing useful to add can stay close to the identity.
# - **Layer normalisation.** Each position's vector is normalised to zero mean and unit variance (then
#   scaled and shifted by learned parameters). The 2017 transformer normalised *after* the sum,
#   `LN(x + f(x))` (post-norm); GPT-2 and nearly every model since normalise the sub-layer's *input*,
#   `x + f(LN(x))` (pre-norm), which keeps the residual path a clean identity and trains more stably.
#
# **Write** a pre-norm `TransformerBlock(d_model, n_heads, d_ff=None)` (`d_ff` defaults to `4 * d_model`):
#
# $$h = x + \mathrm{MHA}(\mathrm{LN}_1(x)), \qquad \mathrm{out} = h + \mathrm{MLP}(\mathrm{LN}_2(h))$$
#
# with exactly these attributes (the tests copy weights by name):
#
# - `self.ln_1 = nn.LayerNorm(d_model)` and `self.ln_2 = nn.LayerNorm(d_model)`;
# - `self.attn = MultiHeadAttention(d_model, n_heads)`, your class from Part 3 (replaced by the reference
#   version during these tests);
# - `self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))`.
#
# `forward(x, mask=None)` takes `x` of shape `(B, T, C)` and passes `mask` on to the attention.

# %% nbgrader={"grade": false, "grade_id": "block_answer", "locked": false, "schema_version": 3, "solution": true}
class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN_1(x)), then + MLP(LN_2(.)). x (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model, n_heads, d_ff=None):
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        ### BEGIN SOLUTION
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        ### END SOLUTION

    def forward(self, x, mask=None):
        """x (B, T, C); mask as in MultiHeadAttention. Returns (B, T, C)."""
        ### BEGIN SOLUTION
        x = x + self.attn(self.ln_1(x), mask)  # positions exchange information
        return x + self.mlp(self.ln_2(x))  # each position is processed on its own
        ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "block_test", "locked": true, "points": 4, "schema_version": 3, "solution": false}
torch.manual_seed(4)
with reference_parts("scaled_dot_product_attention", "causal_mask", "MultiHeadAttention"):
    block = TransformerBlock(d_model=16, n_heads=4)
    for name in ("ln_1", "ln_2"):
        assert isinstance(getattr(block, name, None), nn.LayerNorm), f"self.{name} must be nn.LayerNorm(d_model)"
    assert isinstance(getattr(block, "mlp", None), nn.Sequential) and len(block.mlp) == 3, (
        "self.mlp must be nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))")
    assert block.mlp[0].weight.shape == (64, 16), "d_ff must default to 4 * d_model"
    x = torch.randn(2, 6, 16)
    assert block(x).shape == (2, 6, 16), f"output shape {tuple(block(x).shape)}, expected (B, T, C) = (2, 6, 16)"

    # Residuals: when both sub-layers output zero, a pre-norm block returns its input unchanged.
    with torch.no_grad():
        for layer in (block.attn.out_proj, block.mlp[2]):
            layer.weight.zero_()
            layer.bias.zero_()
    expect_close(block(x), x, "output of a block whose sub-layers output zero (it should be x itself)")

    # The same weights as the course's pre-norm block must give the same output.
    reference, params = reference_block(d_model=16, n_heads=4)
    load_parameters(block, params)
    expect_close(block(x), reference(x), "output for x of shape (2, 6, 16) with 4 heads")
    expect_close(block(x, ref_attention.causal_mask(6)), reference(x, ref_attention.causal_mask(6)),
                 "output for x of shape (2, 6, 16) with a causal mask")
### BEGIN HIDDEN TESTS
def _check_block(B, T, C, H, d_ff, seed):
    """Same weights as the reference block (random LayerNorm scales too), with and without masks."""
    ours, weights_ = reference_block(C, H, d_ff, seed=seed)
    theirs = TransformerBlock(C, H) if d_ff is None else TransformerBlock(C, H, d_ff)
    load_parameters(theirs, weights_)
    x_ = torch.randn(B, T, C)
    padding_ = torch.ones(B, 1, 1, T, dtype=torch.bool)
    if T > 1:
        padding_[-1, ..., -1] = False  # the last sequence ends with a padding token
    for label, m in {"no mask": None, "a causal mask": ref_attention.causal_mask(T), "a padding mask": padding_}.items():
        expect_close(theirs(x_, m), ours(x_, m), f"block output for x {tuple(x_.shape)}, d_ff={d_ff}, {label}")


torch.manual_seed(105)
with reference_parts("MultiHeadAttention", "causal_mask", "scaled_dot_product_attention"):
    for _args in [(2, 5, 8, 2, None, 11), (1, 1, 12, 3, None, 12), (3, 7, 10, 5, 7, 13), (2, 3, 6, 1, 30, 14)]:
        _check_block(*_args)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 5. Sinusoidal positional encoding (2 points)
#
# Nothing in your block knows where a token is. Attention compares every query with every key regardless
# of their positions, and the MLP treats each position alike, so shuffling the input tokens just shuffles
# the outputs: "dog bites man" and "man bites dog" look the same. The next cell shows it with your block.

# %%
torch.manual_seed(5)
block = TransformerBlock(d_model=16, n_heads=4).eval()
x = torch.randn(1, 6, 16)
perm = torch.randperm(6)
shuffled_then_block = block(x[:, perm])
block_then_shuffled = block(x)[:, perm]
print(f"largest difference between block(shuffled x) and shuffled block(x): "
      f"{(shuffled_then_block - block_then_shuffled).abs().max().item():.1e}")

# %% [markdown]
# The difference is rounding error: the block is *permutation-equivariant*. The original transformer
# fixes this by adding a position signal to each token's embedding before the first block. Position
# `pos` gets a vector of sines and cosines at `d_model / 2` frequencies, from one cycle every $2\pi$
# positions down to one every $2\pi \cdot 10000$ positions, like the hands of a clock that turn at
# different speeds:
#
# $$PE[pos, 2i] = \sin\!\left(\frac{pos}{10000^{2i/d}}\right), \qquad
#   PE[pos, 2i + 1] = \cos\!\left(\frac{pos}{10000^{2i/d}}\right), \qquad i = 0, 1, \dots, d/2 - 1$$
#
# Sines and cosines interleave: even channels hold sines, odd channels cosines. Because
# $PE[pos + k]$ is a rotation of $PE[pos]$ that depends only on $k$, attention can learn to look a fixed
# distance back. Learned position embeddings (GPT-2) and rotary embeddings (Llama) are later answers to
# the same problem.
#
# **Write** `sinusoidal_encoding(T, d_model, base=10000.0)`: a float tensor of shape `(T, d_model)` for
# positions `0 .. T-1`, with `base` in place of 10000. `d_model` is even.

# %% nbgrader={"grade": false, "grade_id": "positional_answer", "locked": false, "schema_version": 3, "solution": true}
def sinusoidal_encoding(T, d_model, base=10000.0):
    """(T, d_model) float tensor: PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] = cos(same angle)."""
    ### BEGIN SOLUTION
    pos = torch.arange(T, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d/2,): 0, 2, 4, ...
    angle = pos / base ** (two_i / d_model)  # (T, d/2)
    pe = torch.zeros(T, d_model)
    pe[:, 0::2] = torch.sin(angle)  # even channels
    pe[:, 1::2] = torch.cos(angle)  # odd channels
    return pe
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "positional_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
pe = sinusoidal_encoding(5, 8)
assert isinstance(pe, torch.Tensor) and pe.shape == (5, 8), "sinusoidal_encoding(5, 8) must be a (5, 8) tensor"
# With d = 8 the frequencies are 1 / 10000^(2i/8) = 1, 0.1, 0.01, 0.001: easy to check by hand.
expect_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]), "position 0 (sin 0 = 0, cos 0 = 1)")
angles = torch.tensor([1.0, 0.1, 0.01, 0.001])
expect_close(pe[1], torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(), "position 1")
### BEGIN HIDDEN TESTS
from llmcourse.positional import sinusoidal_encoding as _reference_encoding

for _T, _d, _base in [(1, 2, 10000.0), (7, 6, 10000.0), (33, 32, 10000.0), (128, 64, 10000.0), (9, 10, 100.0)]:
    _got = sinusoidal_encoding(_T, _d, base=_base) if _base != 10000.0 else sinusoidal_encoding(_T, _d)
    expect_close(_got, _reference_encoding(_T, _d, base=_base),
                 f"sinusoidal_encoding({_T}, {_d}, base={_base:g})", atol=1e-4)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 6. Counting parameters (3 points)
#
# How big is a GPT? Almost all of its parameters sit in a few matrices whose sizes follow from a handful
# of numbers: the vocabulary `V`, the context length `T_max`, the width `C`, the number of blocks `L` and
# the MLP width `d_ff`. Counting them by hand is the best way to see where the parameters live, and why
# "12 L C²" is a good rule of thumb for large models.
#
# **Write** `count_gpt_parameters(vocab_size, context_length, d_model, n_layers, d_ff=None)` (`d_ff`
# defaults to `4 * d_model`), the exact number of parameters of a GPT-2-style model:
#
# - a token embedding (one `d_model` vector per vocabulary entry) and a learned position embedding (one
#   vector per position, `context_length` of them);
# - `n_layers` of your pre-norm blocks from Part 4 (every `nn.Linear` has a bias; an
#   `nn.LayerNorm(d_model)` has a scale and a shift per channel);
# - a final `nn.LayerNorm(d_model)` after the last block;
# - an output head that maps back to the vocabulary, whose weight is **shared** with the token embedding
#   (GPT-2 ties them), so it adds nothing.
#
# An `nn.Linear(a, b)` holds a `(b, a)` weight and `b` biases. The number of heads does not appear: why?

# %% nbgrader={"grade": false, "grade_id": "params_answer", "locked": false, "schema_version": 3, "solution": true}
def count_gpt_parameters(vocab_size, context_length, d_model, n_layers, d_ff=None):
    """Exact parameter count of a GPT-2-style model (tied output head, learned positions, biases)."""
    d_ff = 4 * d_model if d_ff is None else d_ff
    ### BEGIN SOLUTION
    C = d_model
    embeddings = vocab_size * C + context_length * C
    attention = 4 * (C * C + C)  # q, k, v and output projections, with biases
    mlp = (C * d_ff + d_ff) + (d_ff * C + C)  # up and down projections, with biases
    layer_norms = 2 * (2 * C)  # ln_1 and ln_2: a scale and a shift each
    final_norm = 2 * C
    return embeddings + n_layers * (attention + mlp + layer_norms) + final_norm
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "params_test", "locked": true, "points": 3, "schema_version": 3, "solution": false}
n = count_gpt_parameters(vocab_size=50257, context_length=1024, d_model=768, n_layers=12)
assert n == 124_439_808, f"GPT-2 small (V=50257, T_max=1024, C=768, L=12) has 124,439,808 parameters, not {n}"
### BEGIN HIDDEN TESTS
from llmcourse.params import PUBLISHED_MODELS as _published
from llmcourse.params import count_parameters as _count_reference


def _check_count(V, T_max, C, L, d_ff, n_head, what):
    """Compare with the parameters of an actual model built from the same configuration."""
    model = ref_transformer.GPT(ref_transformer.GPTConfig(vocab_size=V, block_size=T_max, d_model=C, n_layer=L,
                                                          n_head=n_head, d_ff=d_ff, activation="gelu"))
    got = count_gpt_parameters(V, T_max, C, L) if d_ff is None else count_gpt_parameters(V, T_max, C, L, d_ff)
    assert got == sum(p.numel() for p in model.parameters()), f"{what}: your formula gives {got}"


_check_count(65, 32, 32, 2, None, 4, "a tiny GPT (V=65, T_max=32, C=32, L=2)")
_check_count(101, 7, 12, 3, 20, 3, "V=101, T_max=7, C=12, L=3, d_ff=20")
_check_count(11, 1, 6, 1, 5, 2, "V=11, T_max=1, C=6, L=1, d_ff=5")
_check_count(3, 5, 10, 4, None, 5, "V=3, T_max=5, C=10, L=4")
for _key in ("gpt2-medium", "gpt2-xl", "gpt3-175b"):
    _spec = _published[_key]
    _got = count_gpt_parameters(_spec.vocab_size, _spec.context_length, _spec.d_model, _spec.n_layers)
    assert _got == _count_reference(_spec).total, f"{_spec.name}: your formula gives {_got}"
### END HIDDEN TESTS

# %% [markdown]
# ## Putting it together
#
# Your parts make a GPT. The next cells stack them into a tiny one (token and position embeddings,
# causal blocks, a final LayerNorm, a tied output head), check two properties you can now reason about,
# and look inside an attention head. Nothing here is graded.

# %%
class TinyGPT(nn.Module):
    """A GPT from the lab's parts: idx (B, T) token ids -> logits (B, T, V)."""

    def __init__(self, vocab_size, context_length, d_model, n_heads, n_layers):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)  # token embedding
        self.wpe = nn.Embedding(context_length, d_model)  # learned position embedding (GPT-2)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied: one matrix embeds and un-embeds

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        mask = causal_mask(T, device=idx.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))  # (B, T, V)


torch.manual_seed(6)
config = dict(vocab_size=100, context_length=16, d_model=32, n_layers=2)
model = TinyGPT(n_heads=4, **config).eval()
counted = sum(p.numel() for p in model.parameters())  # shared weights are counted once
print(f"TinyGPT: {counted:,} parameters counted, {count_gpt_parameters(**config):,} by your formula")

# Causality end to end: changing the last token changes no earlier prediction.
idx = torch.randint(0, 100, (1, 16))
idx_changed = idx.clone()
idx_changed[0, -1] = (idx[0, -1] + 1) % 100
with torch.no_grad():
    change = (model(idx)[:, :-1] - model(idx_changed)[:, :-1]).abs().max().item()
print(f"largest change in the first 15 positions' logits after changing token 16: {change:.1e}")

# %% [markdown]
# Finally, a look inside attention. With sinusoidal encodings, $PE[a] \cdot PE[b]$ depends only on the
# distance $a - b$ and is largest when $a = b$. So if the query at position `p` is the encoding of
# position `p - 1` and the keys are the encodings of the positions themselves, every query "asks for"
# its predecessor: a *previous-token head*, built by hand rather than trained. The factor 16 sharpens
# the softmax; the causal mask keeps each position from looking ahead.

# %%
import matplotlib.pyplot as plt

T = 12
pe = sinusoidal_encoding(T + 1, 64)  # (T + 1, 64)
queries, keys = 16.0 * pe[:-1], pe[1:]  # query p . key j depends on p - 1 - j only: largest for j = p - 1
output, weights = scaled_dot_product_attention(queries, keys, keys, causal_mask(T))
print("each position attends most to position:", weights.argmax(dim=-1).tolist())
print(f"weight on the previous position: {weights.diagonal(offset=-1).min().item():.2f} or more")

fig, ax = plt.subplots(figsize=(4.2, 3.6))
image = ax.imshow(weights.detach(), cmap="viridis")
ax.set(xlabel="key position", ylabel="query position", title="A previous-token head")
fig.colorbar(image, ax=ax, label="attention weight")
plt.show()

# %% [markdown]
# ## Reflection
#
# Not graded, but worth five minutes each (write your thoughts in the cell below if you like):
#
# 1. `count_gpt_parameters` does not take the number of heads. Why not? What *does* change when a layer
#    has more, smaller heads?
# 2. Use your function to find the share of GPT-2 small's parameters that sit in the embeddings, then do
#    the same for GPT-3 175B (`V=50257, T_max=2048, C=12288, L=96`). Why does the share fall?
# 3. The weights in Part 1 have shape `(..., T, S)`. How does the memory of attention grow with the
#    context length, and what does that mean for a model that reads 100,000 tokens?
# 4. What would go wrong, during training, if the causal mask also hid the diagonal (each position sees
#    only strictly earlier ones)? And if it let each position see one step into the future?
# 5. In the previous-token head, why does position 0 attend to itself?
#
# **Next:** the pretraining demo of Module 1 trains a model like `TinyGPT` on real text.

# %% [markdown]
# *Your notes:*
