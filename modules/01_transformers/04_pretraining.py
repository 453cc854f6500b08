# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/01_transformers/04_pretraining.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 4. Pretraining a base model
#
# A *base model* is what pretraining produces: a network that has read a lot of text and learned one skill,
# predicting the next token. Everything else (answering questions, following instructions) is built on top of
# it later. In this notebook we pretrain a tiny GPT from scratch on two CPU cores (the training time is
# printed below): the same recipe as GPT-2 and GPT-3, on a model of 413,184 parameters. Then we run a
# small scaling experiment that shows the trend that made GPT models keep growing.
#
# **Learning objectives.** After this notebook you can
#
# 1. turn a text corpus into training batches for next-token prediction with a character tokenizer;
# 2. explain the cross-entropy loss, its value at initialisation, and perplexity;
# 3. train a GPT with AdamW and a warm-up + cosine learning-rate schedule, and read its loss curve;
# 4. generate text from a model, greedily or by seeded sampling, and compare it before and after training;
# 5. measure how the loss at a fixed training budget improves with the model's depth and width.
#
# **Prerequisites:** notebooks 1 to 3. Runs within the course's one-minute budget on two CPU cores (the stored
# notebook records each cell's time); on a GPU the same code runs unchanged.

# %%
import math
import re

import matplotlib.pyplot as plt
import torch

from llmcourse import data, params, plots
from llmcourse.train import TINY_GPT_CONFIG, TINY_GPT_TRAIN, TrainConfig, estimate_loss, perplexity, train_lm
from llmcourse.transformer import GPT, GPTConfig
from llmcourse.utils import claim, get_device, progress, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU

# %% [markdown]
# ## 1. The corpus and the tokenizer
#
# Large models are pretrained on trillions of tokens of web text. We need something that every machine has
# offline, so the course ships its own corpus: the **docstrings of Python's standard library**, about 1.6
# million characters of technical English (its data card, with source, licence and how it was built, is
# `shared/llmcourse/data/README.md`).

# %%
text = data.load_corpus()
print(f"{len(text):,} characters, {len(text.split()):,} words, {text.count(chr(10)):,} lines")
print("-" * 60)
print(text[1_000:1_400])

# %% [markdown]
# A tokenizer maps text to integers. GPT-2 uses about 50,000 sub-word tokens; we use the simplest possible
# one, a **character tokenizer**: one token per distinct character (as Karpathy's nanoGPT does for
# Shakespeare). The vocabulary is tiny and nothing is ever out of vocabulary, at the price of longer
# sequences.

# %%
tokenizer = data.CharTokenizer.fit(text)
ids = torch.tensor(tokenizer.encode(text))
V = tokenizer.vocab_size
print(f"vocabulary: {V} characters: {''.join(tokenizer.chars[1:])!r} (and newline)")
sample = "Return the value."
print(f"{sample!r} -> {tokenizer.encode(sample)}")
assert tokenizer.decode(tokenizer.encode(sample)) == sample

train_ids, val_ids = data.train_val_split(ids, val_fraction=0.1)
print(f"train: {len(train_ids):,} tokens, validation: {len(val_ids):,} tokens (the last 10% of the corpus)")

# %% [markdown]
# The split is contiguous rather than random: random windows overlap, so a shuffled split would leak
# validation text into training.
#
# A training example is a window of $T + 1$ tokens at a random place: the input is its first $T$ tokens and
# the target is the same window shifted by one. One window therefore holds $T$ predictions, one per
# position, and the causal mask makes sure that position $t$ sees only tokens $\le t$.

# %%
BLOCK = 32  # context length T (about six words; section 3 explains the choice)
x, y = data.get_batch(train_ids, block_size=BLOCK, batch_size=2, generator=torch.Generator().manual_seed(0))
print("batch shapes:", tuple(x.shape), tuple(y.shape))
print("input :", repr(tokenizer.decode(x[0])))
print("target:", repr(tokenizer.decode(y[0])))
assert torch.equal(x[0, 1:], y[0, :-1])

# %% [markdown]
# ## 2. Baselines: how good is "good"?
#
# The loss is the **cross-entropy**: the average of $-\ln p(\text{correct next token})$ in nats per
# character. Three reference points make it readable:
#
# * a model that knows nothing predicts the uniform distribution: loss $\ln V = \ln 96 \approx 4.56$;
# * a **unigram** model knows only how frequent each character is (spaces and `e` are common);
# * a **bigram** model knows the distribution of the next character given the current one (after `q`
#   comes `u`); counting pairs in the training text gives it directly.
#
# **Perplexity** $= e^{\text{loss}}$ turns the loss into "the model is as unsure as if it picked uniformly
# among this many characters".

# %%
unigram = torch.bincount(train_ids, minlength=V).float() + 1.0  # add-one smoothing
unigram /= unigram.sum()
bigram = torch.zeros(V, V)
bigram.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1), accumulate=True)
bigram = (bigram + 0.01) / (bigram + 0.01).sum(dim=1, keepdim=True)  # row c: p(next | current = c)

baselines = {
    "uniform": math.log(V),
    "unigram": -unigram.log()[val_ids].mean().item(),
    "bigram": -bigram.log()[val_ids[:-1], val_ids[1:]].mean().item(),
}
for name, loss in baselines.items():
    print(f"{name:>8}: validation loss {loss:.3f} nats/char, perplexity {perplexity(loss):5.1f}")

# %% [markdown]
# ## 3. The model, before training
#
# Our GPT has the architecture of GPT-2 (learned positions, pre-norm blocks, tied embeddings), with
# $C = 128$, 2 layers of 4 heads and a context of 32 characters. The short context is a choice for the CPU:
# early in training a model learns spelling and short words, which need little context, so we spend the
# compute on more windows (48 of 32 characters per step) rather than longer ones; this notebook does not
# measure the alternative. The parameter calculator of notebook 3 agrees with the model.

# %%
config = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=4, d_model=128)
torch.manual_seed(0)
model = GPT(config).to(device)
n_params = model.num_parameters()
assert params.count_parameters(params.spec_from_gpt_config(config)).total == n_params
print(f"{n_params:,} parameters")

init_loss = estimate_loss(model, val_ids, BLOCK, batch_size=32, n_batches=10)
print(f"validation loss at initialisation: {init_loss:.3f} (ln V = {math.log(V):.3f})")
assert abs(init_loss - math.log(V)) < 0.1
claim("m1-init-loss", f"{init_loss:.3f} vs ln {V} = {math.log(V):.3f}")

# %% [markdown]
# The initial loss is $\ln V$: small random weights give nearly equal logits, hence a nearly uniform
# prediction. (A loss far above $\ln V$ at step 0 is a classic sign of a bug or a bad initialisation.)
#
# To generate, the model predicts a distribution for the next character, we pick one, append it and repeat.
# **Greedy** decoding always picks the most likely character; **sampling** draws from the distribution
# (divided by a *temperature*; below 1 it sharpens the distribution) and is made reproducible by a seeded
# random generator.

# %%
PROMPT = "Return the "
prompt_ids = torch.tensor([tokenizer.encode(PROMPT)], device=device)

def samples(model) -> dict[str, str]:
    """A greedy and a seeded sampled continuation of PROMPT (200 characters each)."""
    greedy = model.generate(prompt_ids, 200, greedy=True)[0]
    generator = torch.Generator(device=device).manual_seed(0)
    sampled = model.generate(prompt_ids, 200, temperature=0.5, top_k=20, generator=generator)[0]
    return {"greedy": tokenizer.decode(greedy.cpu()), "sampled": tokenizer.decode(sampled.cpu())}

corpus_words = set(re.findall(r"[A-Za-z]{3,}", text))

def real_word_share(generated: str) -> float:
    """Share of the generated words (3+ letters) that occur somewhere in the corpus."""
    words = re.findall(r"[A-Za-z]{3,}", generated[len(PROMPT):])
    return sum(w in corpus_words for w in words) / max(1, len(words))

before = samples(model)
print(f"sampled, before training:\n{before['sampled']!r}")

# %% [markdown]
# ## 4. Training
#
# The loop in `llmcourse.train.train_lm` is the standard recipe (nanoGPT's, GPT-3's): each step draws a batch
# of random windows, computes the cross-entropy, backpropagates, clips the global gradient norm to 1 and
# takes an **AdamW** step. The learning rate warms up linearly for 20 steps (Adam's statistics are
# unreliable at first) and then decays along a cosine to a tenth of its peak. Weight decay applies to the
# matrices, not to biases and LayerNorm gains. We train for 250 steps of 48 windows, 384,000 characters:
# a quarter of one pass over the training text.

# %%
train_config = TrainConfig(steps=250, batch_size=48, lr=3e-3, weight_decay=0.1, warmup=20, min_lr=3e-4,
                           grad_clip=1.0, eval_every=50, eval_batches=8, seed=0)
history = train_lm(model, train_ids, val_ids, train_config, block_size=BLOCK, device=device)
seconds = history.seconds[-1]
print(f"{history.tokens_seen[-1]:,} training tokens in {seconds:.1f} s ({history.tokens_seen[-1] / seconds:.0f} tokens/s)")

# %%
final = history.final_val_loss
print(f"validation loss: {history.val_loss[0]:.2f} -> {final:.2f} nats/char; "
      f"perplexity {perplexity(history.val_loss[0]):.0f} -> {perplexity(final):.1f}")
print(f"better than the bigram baseline by {baselines['bigram'] - final:.2f} nats/char")
assert final < baselines["bigram"] - 0.1
assert abs(history.train_loss[-1] - final) < 0.15  # no overfitting: a quarter of an epoch
claim("m1-pretraining-beats-bigram", f"validation loss {history.val_loss[0]:.2f} → {final:.2f} nats/char "
      f"(perplexity {perplexity(history.val_loss[0]):.0f} → {perplexity(final):.1f}), "
      f"{baselines['bigram'] - final:.2f} below the bigram baseline")

fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
plots.plot_loss_curves(history, ax=ax, title="tiny GPT on standard-library docstrings")
ax.plot(range(len(history.step_loss)), history.step_loss, color="C0", alpha=0.25, lw=0.8, label="train (every step)")
for name, loss in baselines.items():
    ax.axhline(loss, color="gray", ls=":", lw=1)
    ax.text(train_config.steps, loss, f" {name}", va="center", fontsize=8, color="gray")
ax.legend()
plt.show()

# %% [markdown]
# The curve has the typical shape: a fast fall from $\ln V$ to the unigram level (the model learns which
# characters are common), a slower phase where it learns pairs and short words and crosses the bigram line,
# and a long tail. Train and validation losses stay together: the model has seen each character less than
# once, so it cannot memorise.
#
# ## 5. Samples after training

# %%
after = samples(model)
for name in ("greedy", "sampled"):
    print(f"{name}, after training:\n{after[name]!r}\n")
share_before, share_after = real_word_share(before["sampled"]), real_word_share(after["sampled"])
print(f"share of sampled words (3+ letters) that exist in the corpus: {share_before:.0%} before, {share_after:.0%} after")
assert share_before < 0.2 and share_after > 0.4

# %% [markdown]
# After 250 steps the model has learned the alphabet's statistics, spacing and line breaks, and the
# spelling of frequent words; the sentences do not mean anything yet. Greedy decoding shows a classic
# failure of small models: the single most likely continuation quickly falls into a loop. Sampling (here
# with temperature 0.5 among the 20 most likely characters) keeps the text varied. Module 3 studies
# decoding strategies.
#
# Longer training should help (exercise 1 below lets you check). The course ships a longer run of a
# slightly larger model,
# `llmcourse.train.tiny_gpt()`, that later modules load instead of training again. It comes trained, with
# the package: two trainings with the same recipe end a few thousandths apart (the last bits of every sum
# depend on the CPU), and every later notebook would then print other digits.
# `llmcourse.train.train_tiny_gpt(folder)` retrains it with the recipe below.
#
# ```python
# from llmcourse.train import tiny_gpt
# model, tokenizer = tiny_gpt()
# ```

# %%
tiny = GPTConfig(vocab_size=V, **TINY_GPT_CONFIG)
print(f"tiny_gpt(): {tiny.n_layer} layers, d_model {tiny.d_model}, context {tiny.block_size}, "
      f"{params.count_parameters(params.spec_from_gpt_config(tiny)).total:,} parameters, "
      f"{TINY_GPT_TRAIN.steps} steps of {TINY_GPT_TRAIN.batch_size} x {tiny.block_size} characters")

# %% [markdown]
# ## 6. Why GPT models kept getting bigger
#
# Kaplan et al. (2020) trained hundreds of language models and found that the loss falls smoothly, as a
# power law, with the number of parameters, the data and the compute. That finding is why GPT-2 (1.5B) was
# followed by GPT-3 (175B): a bigger model was a predictable improvement.
#
# We can see the start of that trend on a CPU. We train five GPTs for the same 150 steps on the same
# batches (16 windows of 64 characters): widths 32, 64 and 128 with one layer, and depths 1, 2 and 4 with
# width 32, and compare their validation losses.

# %%
SCALING_BLOCK = 64
scaling_steps = TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup=20, min_lr=3e-4, eval_every=150,
                            eval_batches=16, seed=0)
shapes = [(32, 1), (64, 1), (128, 1), (32, 2), (32, 4)]  # (width C, layers L)
results = {}
for width, layers in progress(shapes, desc="scaling runs"):
    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=V, block_size=SCALING_BLOCK, n_layer=layers, n_head=4, d_model=width))
    run = train_lm(small, train_ids, val_ids, scaling_steps, block_size=SCALING_BLOCK, device=device, progress=False)
    results[width, layers] = (small.num_parameters(), run.final_val_loss)

print(f"{'width':>5} {'layers':>6} {'parameters':>10} | validation loss after 150 steps")
for (width, layers), (n, loss) in results.items():
    print(f"{width:>5} {layers:>6} {n:>10,} | ≈{loss:.3f}")

# %%
width_series = [results[w, 1][1] for w in (32, 64, 128)]
depth_series = [results[32, l][1] for l in (1, 2, 4)]
assert width_series[0] - width_series[-1] > 0.1  # 4x wider: clearly lower loss
assert depth_series[0] - depth_series[-1] > 0.1  # 4x deeper: clearly lower loss
n_all = torch.tensor([n for n, _ in results.values()], dtype=torch.float64)
loss_all = torch.tensor([loss for _, loss in results.values()], dtype=torch.float64)
slope = torch.linalg.lstsq(torch.stack([n_all.log10(), torch.ones_like(n_all)], 1), loss_all[:, None]).solution[0].item()
print(f"width 32 -> 128: ≈{width_series[0] - width_series[-1]:.2f} nats lower; depth 1 -> 4: "
      f"≈{depth_series[0] - depth_series[-1]:.2f} nats lower")
print(f"fitted trend over all runs: ≈{slope:.2f} nats per 10x parameters")
assert slope < -0.1
claim("m1-scaling-width-depth", f"width 32 → 128: ≈{width_series[0] - width_series[-1]:.2f} nats lower; depth 1 → 4: "
      f"≈{depth_series[0] - depth_series[-1]:.2f} lower; ≈{slope:.2f} nats per 10x parameters")

fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
ax.plot([results[w, 1][0] for w in (32, 64, 128)], width_series, "o-", label="wider (1 layer, C = 32, 64, 128)")
ax.plot([results[32, l][0] for l in (1, 2, 4)], depth_series, "s-", label="deeper (C = 32, L = 1, 2, 4)")
for (width, layers), (n, loss) in results.items():
    ax.annotate(f"C{width} L{layers}", (n, loss), textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set_xscale("log")
ax.set(xlabel="parameters (log scale)", ylabel="validation loss after 150 steps",
       title="bigger models learn more from the same data")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Four times wider or four times deeper, the model reaches a clearly lower loss with the same data and the
# same number of steps: bigger models learn more from each example. At this toy scale the budget is tiny
# and the intermediate sizes are noisy (a single run each, early in training), but the direction is the one
# Kaplan et al. measured over seven orders of magnitude. Two cautions. Bigger models cost more compute per
# step (about $6N$ FLOPs per token, notebook 3), so the fair comparison is at equal *compute*. And more
# parameters need more data: Hoffmann et al. (2022, "Chinchilla") showed that GPT-3 was undertrained, and
# that for a fixed compute budget the model size and the number of training tokens should grow together
# (about 20 tokens per parameter).
#
# ## Summary
#
# * Pretraining is next-token prediction on raw text: windows of $T + 1$ tokens give $T$ (input, target)
#   pairs each; the causal mask keeps it honest.
# * At initialisation the loss is $\ln V$ (4.56 for 96 characters). Our 400k-parameter GPT beat the
#   bigram baseline after 250 steps; validation perplexity fell from 97 to 9.8.
# * Greedy decoding loops; seeded sampling gives varied, reproducible text whose words are mostly real.
# * With the same steps and data (not the same compute), wider and deeper models reached lower loss, one
#   run each: the direction of the trend behind scaling laws.
# * `llmcourse.train.tiny_gpt()` is the shipped, longer-trained version later modules use.
#
# ## Try it yourself
#
# 1. Train for 1,000 steps instead of 250. How do the samples change? When does validation loss start to
#    separate from training loss?
# 2. Set `lr=3e-2` and then `lr=3e-4`. What does a too-high and a too-low learning rate look like on the
#    loss curve?
# 3. Remove the warm-up (`warmup=0`) with a high learning rate. Is training less stable?
# 4. Generate with temperature 0.3 and 1.5. Which one invents more non-words?
# 5. Extend the scaling experiment with width 256, or with the same compute (time) for every model instead
#    of the same steps. Does the ranking change?
#
# ## References
#
# * Radford et al. 2019, *Language Models are Unsupervised Multitask Learners* (GPT-2).
# * Brown et al. 2020, *Language Models are Few-Shot Learners*, https://arxiv.org/abs/2005.14165 (GPT-3:
#   AdamW with $\beta_2 = 0.95$, warm-up, cosine decay, gradient clipping at 1).
# * Loshchilov & Hutter 2019, *Decoupled Weight Decay Regularization* (AdamW),
#   https://arxiv.org/abs/1711.05101.
# * Kaplan et al. 2020, *Scaling Laws for Neural Language Models*, https://arxiv.org/abs/2001.08361.
# * Hoffmann et al. 2022, *Training Compute-Optimal Large Language Models*, https://arxiv.org/abs/2203.15556.
# * Karpathy, *nanoGPT*, https://github.com/karpathy/nanoGPT (the character-level Shakespeare recipe).
# * The course package: `llmcourse/train.py`, `llmcourse/data.py` and its data card `llmcourse/data/README.md`.
