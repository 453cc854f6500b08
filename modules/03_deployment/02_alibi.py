# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/02_alibi.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 2. ALiBi: train short, test long
#
# Training cost grows with the context length (notebook 1), so models are trained on contexts shorter
# than we would like to use them with. Can a model trained on 32 tokens read 128? With learned position
# embeddings the answer is no: position 100 has no embedding the model ever trained. **ALiBi** (Attention
# with Linear Biases, Press et al. 2022) drops position embeddings altogether and instead subtracts from
# every attention score a penalty proportional to the distance between query and key. Nothing in the
# model then depends on absolute positions, and it keeps working on longer inputs.
#
# We build the biases from scratch, then train two tiny decoders on 32-character windows, one with learned
# positions and one with ALiBi, and evaluate both on windows up to 4x longer.
#
# **Learning objectives.** After this notebook you can
#
# 1. compute ALiBi's head slopes (including the rule for a number of heads that is not a power of two) and
#    its bias matrix, and match the package's `alibi_slopes` / `alibi_bias`;
# 2. explain why learned absolute positions cannot extrapolate and why a distance penalty can;
# 3. measure extrapolation: perplexity against evaluation length, and loss against position.
#
# **Prerequisites:** module 1 (attention, positional encodings, training a tiny GPT). Runs within the
# course's one-minute budget on two CPU cores (the stored notebook records each cell's time).

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmcourse.data import CharTokenizer, load_corpus, train_val_split
from llmcourse.positional import alibi_bias, alibi_slopes
from llmcourse.train import TrainConfig, train_lm
from llmcourse.transformer import GPT, GPTConfig
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## 1. The bias
#
# For query position $i$, key position $j \le i$ and head $h$, ALiBi adds to the score
#
# $$ s_{ij} = \frac{q_i \cdot k_j}{\sqrt{D}} \; - \; m_h \,(i - j). $$
#
# The slope $m_h$ differs per head. For $H$ heads, a power of two, the paper uses the geometric sequence
# $m_h = 2^{-8h/H}$ for $h = 1, \dots, H$: for 8 heads, $\tfrac12, \tfrac14, \dots, \tfrac1{256}$. Steep heads
# look only at the last few tokens, gentle heads far back.

# %%
def slopes_power_of_two(n: int) -> torch.Tensor:
    """m_h = 2^(-8h/n) for h = 1..n."""
    return torch.tensor([2 ** (-8 * h / n) for h in range(1, n + 1)])


print("8 heads:", [f"1/{1 / m:.0f}" for m in slopes_power_of_two(8).tolist()])
assert_close(slopes_power_of_two(8), alibi_slopes(8))
assert_close(slopes_power_of_two(16), alibi_slopes(16))

# %% [markdown]
# When $H$ is not a power of two (12 heads, or SmolLM2's 9), the paper takes the slopes of the closest
# smaller power of two $p$ and fills in the missing $H - p$ heads with every other slope of the sequence
# for $2p$ heads, which interleaves between the first ones. The naive shortcut, $2^{-8h/H}$ with $H = 12$,
# gives different slopes: a classic bug when porting ALiBi.

# %%
def slopes(n: int) -> torch.Tensor:
    if math.log2(n).is_integer():
        return slopes_power_of_two(n)
    p = 2 ** math.floor(math.log2(n))
    return torch.cat([slopes_power_of_two(p), slopes_power_of_two(2 * p)[0::2][: n - p]])


for n in (12, 9, 6, 1):
    assert_close(slopes(n), alibi_slopes(n))
print("12 heads:", [f"{m:.4f}" for m in slopes(12).tolist()])
naive = torch.tensor([2 ** (-8 * h / 12) for h in range(1, 13)])
print("naive 2^(-8h/12) differs:", not torch.allclose(naive, slopes(12)))
assert not torch.allclose(naive, slopes(12))
claim("m3-alibi-slopes", "equal to alibi_slopes for 1, 6, 8, 9, 12, 16 heads; the naive 2^(-8h/12) differs")

# %% [markdown]
# The bias matrix for one head is $-m_h$ times the distance $i - j$. Above the diagonal (future keys) the
# causal mask removes the scores anyway. The package's `alibi_bias(H, T)` returns all heads at once
# (as $-m_h\,|i - j|$, which is the same below the diagonal).

# %%
H, T = 4, 8
distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T): i - j
bias = -slopes(H)[:, None, None] * distance  # (H, T, T)
causal = torch.ones(T, T, dtype=torch.bool).tril()
assert_close(bias.masked_fill(~causal, 0), alibi_bias(H, T).masked_fill(~causal, 0))

fig, axes = plt.subplots(1, H, figsize=(12, 3))
for h, ax in enumerate(axes):
    ax.imshow(bias[h].masked_fill(~causal, float("nan")), cmap="viridis")
    ax.set_title(f"head {h + 1}: m = 1/{1 / slopes(H)[h].item():.0f}")
    ax.set_xlabel("key j")
axes[0].set_ylabel("query i")
plt.suptitle("ALiBi bias $-m_h (i - j)$: darker = stronger penalty")
plt.tight_layout()
plt.show()

# %% [markdown]
# A useful way to read a slope: the score penalty reaches $-1$ (a factor $e^{-1}$ on the attention
# weight) at distance $1/m_h$. With 4 heads the slopes are $\tfrac14, \tfrac1{16}, \tfrac1{64}, \tfrac1{256}$,
# so the heads' reach is 4, 16, 64 and 256 tokens. Nothing here depends on *where* in the text the query
# is, only on how far back a key is: that is why the same model can be run on any length.

# %%
print("distance at which the penalty reaches -1, per head:", [int(1 / m) for m in slopes(H).tolist()])
assert [int(1 / m) for m in slopes(H).tolist()] == [4, 16, 64, 256]

# %% [markdown]
# ## 2. Two tiny decoders, trained on 32 characters
#
# We use the course corpus (docstrings of Python's standard library) at the character level. Both
# models are the package's `GPT` with the same width, depth and training recipe; only `pos_encoding`
# differs. The learned model gets a position table for 128 positions (`block_size=128`), but it only ever
# sees the first 32 during training: rows 32..127 keep their random initial values.

# %%
text = load_corpus()[:600_000]
tokenizer = CharTokenizer.fit(text)
train_ids, val_ids = train_val_split(torch.tensor(tokenizer.encode(text)), val_fraction=0.1)
TRAIN_LEN, EVAL_LEN = 32, 128
print(f"{len(train_ids):,} training and {len(val_ids):,} validation characters, vocabulary {tokenizer.vocab_size}")

recipe = TrainConfig(steps=400, batch_size=32, lr=3e-3, warmup=20, min_lr=3e-4, eval_every=400, eval_batches=2)
models, train_seconds = {}, {}
for kind in ("learned", "alibi"):
    seed_everything(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=EVAL_LEN, n_layer=2, n_head=4, d_model=64,
                       pos_encoding=kind)
    models[kind] = GPT(config)
    if kind == "learned":
        initial_table = models[kind].wpe.weight.detach().clone()  # to see later which rows training moved
    start = time.perf_counter()
    train_lm(models[kind], train_ids, None, recipe, block_size=TRAIN_LEN, device=device, progress=False)
    train_seconds[kind] = time.perf_counter() - start
    print(f"{kind:>7}: {count_parameters(models[kind]):,} parameters, trained in {train_seconds[kind]:.1f} s")

# %% [markdown]
# The learned model has 8,192 more parameters: its $128 \times 64$ position table. ALiBi has none.
#
# ## 3. Evaluating on longer contexts
#
# We cut the validation text into windows of 128 characters and compute each model's loss at every
# position of every window. Then "perplexity at context length $L$" is $\exp$ of the mean loss over the
# first $L$ positions: the same windows for every $L$, so the comparison is not blurred by sampling.

# %%
@torch.no_grad()
def loss_per_position(model: GPT, ids: torch.Tensor, length: int, n_windows: int = 256) -> torch.Tensor:
    """Mean next-token loss at each position 0..length-1 over non-overlapping validation windows."""
    n = min(n_windows, (len(ids) - 1) // length)
    x = torch.stack([ids[i * length:(i + 1) * length] for i in range(n)]).to(device)  # (N, L)
    y = torch.stack([ids[i * length + 1:(i + 1) * length + 1] for i in range(n)]).to(device)
    logits = model.eval()(x).logits  # (N, L, V)
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=0).cpu()  # (L,)


per_position = {kind: loss_per_position(m, val_ids, EVAL_LEN) for kind, m in models.items()}
lengths = [TRAIN_LEN, 2 * TRAIN_LEN, 3 * TRAIN_LEN, 4 * TRAIN_LEN]
ppl = {kind: [math.exp(loss[:L].mean()) for L in lengths] for kind, loss in per_position.items()}
print(f"{'context length':<16}" + "".join(f"{L:>8}" for L in lengths))
for kind in models:
    print(f"{kind:<16}" + "".join(f"{p:>8.3g}" for p in ppl[kind]))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for kind, marker in (("learned", "o"), ("alibi", "s")):
    axes[0].plot(lengths, ppl[kind], marker + "-", label=kind)
    smooth = F.avg_pool1d(per_position[kind][None, None], 4, 4)[0, 0]  # mean over 4 positions
    axes[1].plot(torch.arange(2, EVAL_LEN, 4), smooth.exp(), label=kind)
for ax in axes:
    ax.axvline(TRAIN_LEN, color="grey", ls="--", lw=1)
    ax.legend()
    ax.grid(alpha=0.3)
axes[0].set(xlabel="evaluation context length L", ylabel="perplexity over the first L characters",
            title="ALiBi extrapolates, learned positions do not", xticks=lengths)
axes[1].set(xlabel="position in the window", ylabel="perplexity at that position",
            title="where it breaks: right after the training length")
axes[1].text(TRAIN_LEN + 1, axes[1].get_ylim()[1] * 0.9, "training length", color="grey")
plt.tight_layout()
plt.show()

# %% [markdown]
# The claims, measured:
#
# - at the training length the two models are close, ALiBi a little ahead (10.1 against 11.1 in the
#   table above);
# - at 2x and 4x the training length, ALiBi's perplexity stays within a few percent of its training-length
#   value (it extrapolates), while the learned model's perplexity jumps as soon as it meets a position it
#   never trained.

# %%
alibi_growth = ppl["alibi"][-1] / ppl["alibi"][0]
learned_growth = ppl["learned"][1] / ppl["learned"][0]
beyond = {kind: math.exp(loss[TRAIN_LEN:].mean()) for kind, loss in per_position.items()}
print(f"ALiBi: perplexity at 4x the training length / at the training length = {alibi_growth:.3f}")
print(f"learned: perplexity at 2x the training length / at the training length = {learned_growth:.3f}")
print(f"positions 32-127 only: learned {beyond['learned']:.3g}, ALiBi {beyond['alibi']:.3g}")
assert alibi_growth < 1.05, "ALiBi should extrapolate: its perplexity must stay flat"
assert learned_growth > 1.2, "learned positions should fail beyond the training length"
assert beyond["learned"] > 1.5 * beyond["alibi"]
ppl_alibi, ppl_learned = ppl["alibi"], ppl["learned"]
claim("m3-alibi-extrapolates", f"perplexity {ppl_alibi[0]:.3g} at {lengths[0]}, {ppl_alibi[1]:.3g} at {lengths[1]}, "
      f"{ppl_alibi[3]:.3g} at {lengths[3]} (ratio {alibi_growth:.3f}, asserted < 1.05)")
claim("m3-learned-positions-fail", f"perplexity {ppl_learned[0]:.3g} at {lengths[0]}, "
      f"{ppl_learned[1]:.3g} at {lengths[1]} (ratio {learned_growth:.2f}), {ppl_learned[3]:.3g} at {lengths[3]}; "
      f"{beyond['learned']:.3g} vs ALiBi's "
      f"{beyond['alibi']:.3g} on positions {TRAIN_LEN}-{EVAL_LEN - 1}")

# %% [markdown]
# ## 4. Why the learned model fails
#
# Look at the position table it learned. Rows 0..31 were trained; rows 32..127 never received a
# gradient (no training window reached them), only weight decay, which shrinks them without turning them.
# We compare each row with its random initial value: the cosine similarity is 1 when a row kept its
# direction.

# %%
table = models["learned"].wpe.weight.detach().cpu()  # (128, 64)
similarity = F.cosine_similarity(table, initial_table.cpu(), dim=1)  # (128,)
print(f"cosine(final, initial) of trained rows 0-31: {similarity[:TRAIN_LEN].mean():.3f}; "
      f"of untrained rows 32-127: {similarity[TRAIN_LEN:].mean():.3f}")
assert similarity[TRAIN_LEN:].min() > 0.999  # untouched directions: random vectors the model never saw
assert similarity[:TRAIN_LEN].mean() < 0.5  # the trained rows moved far from their initial values
claim("m3-untrained-positions", f"cosine(final, initial) {similarity[TRAIN_LEN:].mean():.3f} for rows "
      f"{TRAIN_LEN}-{EVAL_LEN - 1} vs {similarity[:TRAIN_LEN].mean():.3f} for trained rows 0-{TRAIN_LEN - 1}")

plt.figure(figsize=(6, 3))
plt.plot(similarity.numpy())
plt.axvline(TRAIN_LEN, color="grey", ls="--", lw=1)
plt.xlabel("position")
plt.ylabel("cosine(final row, initial row)")
plt.title("learned position table: only the trained rows moved")
plt.show()

# %% [markdown]
# From position 32 on, every token arrives with a position vector the network has never seen, and its
# predictions degrade. ALiBi has no such table to run out of.
#
# ## Summary
#
# - ALiBi adds $-m_h (i - j)$ to the attention scores, with geometric slopes per head (and the
#   interleaving rule when the number of heads is not a power of two). It has no parameters.
# - Trained on 32 characters, our ALiBi decoder keeps its perplexity within 5% of its training-length
#   value on 128-character windows; the learned-position decoder, already a little worse at the training
#   length (11.1 against 10.1), gets much worse from position 32 on (21.8 against ALiBi's 10.4 on
#   positions 32-127), where its position table is untrained. (One training seed per model.)
# - ALiBi's penalty keeps far-away keys out of the way, so a longer context looks locally like the
#   training data. It does not make the model *use* the extra context well: that still takes training on
#   long documents. RoPE models (Llama, SmolLM2) extend their context with position interpolation instead
#   (Chen et al. 2023).
#
# ## Try it yourself
#
# 1. Train with `pos_encoding="sinusoidal"` (the fixed waves of the original transformer). Does it
#    extrapolate better than learned positions? (Press et al. found: somewhat, but far less than ALiBi.)
# 2. Train on 16 characters instead of 32 (`TRAIN_LEN = 16`, and `EVAL_LEN = 64`): is the learned
#    model's failure at 2x the same? Does ALiBi still hold?
# 3. Evaluate at 8x the training length (set `EVAL_LEN = 256` before training the learned model).
#
# ## References
#
# - Press, Smith & Lewis 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
#   Length Extrapolation", ICLR, https://arxiv.org/abs/2108.12409 (slopes: section 3; extrapolation:
#   figure 1)
# - Reference implementation of the slopes: https://github.com/ofirpress/attention_with_linear_biases
# - Chen et al. 2023, "Extending Context Window of Large Language Models via Positional Interpolation",
#   https://arxiv.org/abs/2306.15595
# - BLOOM (BigScience 2022, https://arxiv.org/abs/2211.05100) and MPT were trained with ALiBi.
