# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/07_mixture_of_experts.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 7. Mixture of experts
#
# A dense transformer runs every parameter on every token. A **mixture-of-experts** (MoE) layer replaces
# the feed-forward network with E copies ("experts") and a small **router** that sends each token to
# only k of them. The model then *holds* the parameters of E feed-forward networks but *spends* the
# compute of k: Mixtral 8x7B has 46.7B parameters and uses 12.9B per token.
#
# **Learning objectives**
#
# - Build top-k routing (softmax over experts, then top-k) and the Switch Transformer's load-balancing
#   loss, and check them against `llmcourse.moe`.
# - Understand expert capacity and dropped tokens, and dispatch tokens to experts without a per-token loop.
# - Count total vs active parameters (Mixtral's 46.7B / 12.9B).
# - Train a tiny MoE decoder against a dense one with the same compute per token, and look at how the
#   router spreads the load with and without the balancing loss.

# %%
import time

import matplotlib.pyplot as plt
import torch

from llmcourse import moe
from llmcourse.data import CharTokenizer, load_corpus, train_val_split
from llmcourse.train import TrainConfig, train_lm
from llmcourse.transformer import GPT, FeedForward, GPTConfig
from llmcourse.utils import benchmark, claim, get_device, num_threads, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## Routing: softmax first, then top-k
#
# The router is one linear layer, C → E. For each token it gives E logits; a softmax turns them into a
# probability per expert, and the token goes to the k most probable experts. The token's output is the
# sum of those experts' outputs weighted by their probabilities, so the router gets a gradient through
# the weights. (Mixtral renormalises the k weights to sum to 1; Switch keeps them as they are.)

# %%
N, E, k = 6, 4, 2
logits = torch.randn(N, E)
probs = torch.softmax(logits, dim=-1)  # (N, E): every expert gets a probability
weights, indices = probs.topk(k, dim=-1)  # (N, k): the k best experts per token
print("router probabilities:\n", probs.round(decimals=3))
print("chosen experts:", indices.tolist())
route = moe.top_k_route(logits, k=k)
torch.testing.assert_close(route.weights, weights)
assert torch.equal(route.indices, indices)

# %% [markdown]
# ## The load-balancing loss
#
# Left alone, a router tends to collapse: the experts that win early get more tokens, learn faster, and
# win more. The Switch Transformer adds an auxiliary loss
#
# $$\mathcal{L}_{aux} = E \sum_{i=1}^{E} f_i P_i,$$
#
# where $f_i$ is the fraction of token assignments that went to expert $i$ and $P_i$ the router's mean
# probability for expert $i$. With a uniform router both are $1/E$ and the loss is 1; if every token
# goes to one expert with certainty it is $E$. Only $P$ has a gradient ($f$ comes from an argmax), and
# it pushes probability away from overloaded experts.

# %%
counts = torch.bincount(indices.reshape(-1), minlength=E)
f = counts.float() / indices.numel()
P = probs.mean(dim=0)
aux = E * (f * P).sum()
print(f"tokens per expert {counts.tolist()}, aux loss {aux:.4f}")
torch.testing.assert_close(route.aux_loss, aux)

balanced = moe.top_k_route(torch.zeros(64, 8) + torch.eye(8).repeat(8, 1) * 1e-3, k=1).aux_loss
collapsed = moe.top_k_route(torch.tensor([[20.0] + [0.0] * 7]).repeat(64, 1), k=1).aux_loss
print(f"8 experts: balanced router {balanced:.3f}, collapsed router {collapsed:.3f}")
assert abs(balanced - 1) < 0.01 and abs(collapsed - 8) < 0.01
claim("m3-balancing-loss-range", f"{balanced:.3f} / {collapsed:.3f} for 8 experts")

# %% [markdown]
# ## Capacity and dispatch
#
# To run experts as fixed-size batched matmuls, each expert gets a **capacity**: at most
# capacity_factor × N·k / E token slots. Assignments beyond it are dropped: that token skips the FFN
# (the residual connection carries it on unchanged). First choices are served before second choices,
# earlier tokens before later ones.
#
# Dispatching without a Python loop over tokens: number each assignment within its expert's queue with
# a cumulative sum over a one-hot matrix, keep those with a position below the capacity, and scatter
# the kept tokens into an (E, capacity, C) buffer. Then all experts run as two batched matmuls.

# %%
torch.manual_seed(0)
expert_of = torch.tensor([0, 1, 0, 0, 2, 0, 1, 0])  # top-1 choices of 8 tokens, 3 experts
capacity = moe.expert_capacity(n_tokens=8, n_experts=3, k=1, capacity_factor=1.0)
one_hot = torch.nn.functional.one_hot(expert_of, 3)  # (N, E)
position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1) - 1  # place of each token in its expert's queue
keep = position < capacity
print(f"capacity {capacity}; queue positions {position.tolist()}; kept {keep.int().tolist()}")
assert capacity == 3 and keep.tolist() == [True, True, True, True, True, False, True, False]

# %% [markdown]
# `llmcourse.moe` has three dispatch implementations with the same signature: `loop` (a loop over
# experts: the readable specification), `batched` (the static-shape buffer above, as on TPUs and in
# GShard) and `grouped` (sort the tokens by expert and run each expert on exactly its tokens, the idea
# behind grouped-GEMM kernels such as MegaBlocks; the default). They agree, gradients included:

# %%
layer = moe.MoEFeedForward(moe.MoEConfig(d_model=32, d_ff=64, n_experts=4, top_k=2, capacity_factor=1.0))
x = torch.randn(3, 20, 32)
outputs = {}
for impl in ("loop", "batched", "grouped"):
    layer.config.impl = impl
    outputs[impl] = layer(x)
    print(f"{impl:<8} output norm {outputs[impl].y.norm():.4f}, tokens per expert {outputs[impl].tokens_per_expert.tolist()}")
torch.testing.assert_close(outputs["batched"].y, outputs["loop"].y)
torch.testing.assert_close(outputs["grouped"].y, outputs["loop"].y)
dropped = (outputs["loop"].tokens_per_expert - moe.expert_capacity(60, 4, 2, 1.0)).clamp(min=0).sum()
print(f"assignments dropped at capacity factor 1.0: {int(dropped)} of {60 * 2}")

# %% [markdown]
# Compute per token stays that of one expert-sized FFN. Timing one MoE layer (8 experts, top-1) against
# one dense FFN of the same width on 4096 tokens (as `benchmarks/bench_moe.py` does), on one thread so
# that other programs on a shared machine disturb both measurements alike:

# %%
C = 256
dense_ffn = FeedForward(C, 4 * C)
moe_ffn = moe.MoEFeedForward(moe.MoEConfig(d_model=C, d_ff=4 * C, n_experts=8, top_k=1, capacity_factor=1.25))
tokens = torch.randn(4096, C)
with num_threads(1):
    with torch.no_grad():
        t_dense = benchmark(dense_ffn, tokens, warmup=2, repeat=7)
        t_moe = benchmark(moe_ffn, tokens, warmup=2, repeat=7)
n_dense = sum(p.numel() for p in dense_ffn.parameters())
print(f"dense FFN {t_dense * 1e3:.1f} ms, {n_dense / 1e6:.2f}M parameters")
print(f"MoE layer {t_moe * 1e3:.1f} ms, {moe_ffn.num_parameters() / 1e6:.2f}M parameters "
      f"({moe_ffn.num_parameters(active=True) / 1e6:.2f}M active)")
print("MoE layer within 2x the dense time:", t_moe < 2 * t_dense)
assert moe_ffn.num_parameters() > 7.9 * n_dense and moe_ffn.num_parameters(active=True) < 1.01 * n_dense
assert t_moe < 2 * t_dense  # ~8x the parameters for ~1x the time (bench goal: 1.5x on an idle machine)
claim("m3-moe-layer-cost", f"{moe_ffn.num_parameters() / 1e6:.2f}M total / "
      f"{moe_ffn.num_parameters(active=True) / 1e6:.2f}M active ({moe_ffn.config.n_experts} experts, "
      f"top-{moe_ffn.config.top_k}); on {tokens.shape[0]} tokens, one thread, {t_moe / t_dense:.2f}× the dense "
      "FFN's time (asserted < 2×)")

# %% [markdown]
# ## Total vs active parameters
#
# The same counting at scale, for a Llama-style decoder whose every FFN is an MoE of SwiGLU experts.
# Mixtral 8x7B: d_model 4096, 32 layers, expert width 14336, 8 experts, top-2, 32 query and 8 key/value
# heads, vocabulary 32000.

# %%
mixtral = moe.moe_param_counts(d_model=4096, n_layers=32, d_ff=14336, n_experts=8, top_k=2, vocab_size=32000,
                               n_heads=32, n_kv_heads=8)
print(f"Mixtral 8x7B: {mixtral.total / 1e9:.1f}B total, {mixtral.active / 1e9:.1f}B active per token")
assert round(mixtral.total / 1e9, 1) == 46.7 and round(mixtral.active / 1e9, 1) == 12.9
claim("m3-mixtral-params", f"Mixtral 8x7B: {mixtral.total / 1e9:.1f}B total / {mixtral.active / 1e9:.1f}B active")
# "8x7B" is not 56B: attention and embeddings are shared, only the FFNs are replicated.
dense_7b = moe.moe_param_counts(4096, 32, 14336, 1, 1, 32000, 32, 8)
print(f"the same model with one expert (Mistral 7B): {dense_7b.total / 1e9:.2f}B")

# %% [markdown]
# ## A tiny MoE decoder against a dense one
#
# `moe.MoEGPT` takes the course's GPT and swaps each block's FFN for an MoE layer. We train three
# character-level models on the course corpus (standard-library docstrings) with the same data, steps
# and optimizer:
#
# - **dense**: 2 layers, d_model 64, FFN width 256, context 32 characters, 150 steps of 16 sequences;
# - **MoE**: the same, with 8 experts of width 128 per layer and top-2 routing with the two weights
#   renormalised (Mixtral's recipe): each token passes through 2 × 128 = 256 hidden units, the same
#   compute as the dense FFN, while the layer holds 4× its parameters; load-balancing loss weighted 0.01.
#   (Switch's top-1 with unnormalised weights scales each expert's output by its router probability,
#   about 1/8 at the start, and learns too slowly for a 150-step run.)
# - **MoE without the balancing loss**, to see what the loss is for.

# %%
text = load_corpus()[:600_000]
tokenizer = CharTokenizer.fit(text)
train_tokens, val_tokens = train_val_split(tokenizer.encode(text), 0.1)
gpt_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, d_model=64, d_ff=256)
moe_config = moe.MoEConfig(d_model=64, d_ff=128, n_experts=8, top_k=2, capacity_factor=1.25, normalize_weights=True)
train_config = TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup=15, min_lr=3e-4, eval_every=50,
                           eval_batches=8, seed=0)


def train_model(name):
    seed_everything(0)
    if name == "dense":
        model = GPT(gpt_config)
    else:
        model = moe.MoEGPT(gpt_config, moe_config, aux_loss_coef=0.0 if name == "MoE, no balancing loss" else 0.01)
    loads = []  # tokens per expert (layers, E) at every training step

    def loss_fn(m, batch):
        out = m(*batch)
        if isinstance(out, moe.MoEGPTOutput) and m.training:  # not the evaluation batches
            loads.append(out.tokens_per_expert)
        return out.loss

    start = time.perf_counter()
    history = train_lm(model, train_tokens, val_tokens, train_config, gpt_config.block_size, device=device,
                       loss_fn=loss_fn)
    return model, history, torch.stack(loads).cpu() if loads else None, time.perf_counter() - start


# Models this small gain nothing from several threads (each matmul is tiny), and one thread does not
# fight other programs for the cores.
with num_threads(1):
    runs = {name: train_model(name) for name in ("dense", "MoE", "MoE, no balancing loss")}
for name, (model, history, _loads, seconds) in runs.items():
    active = model.num_parameters(active=True) if isinstance(model, moe.MoEGPT) else model.num_parameters()
    print(f"{name:<24} parameters {model.num_parameters() / 1e3:6.1f}k (active {active / 1e3:6.1f}k)  "
          f"val loss ≈{history.final_val_loss:.3f}  ({seconds:.1f} s)")  # ≈: the last digits depend on the CPU

# %% [markdown]
# At this tiny budget the dense model wins (validation loss ≈2.840 against ≈3.178, one seed each). Every
# expert sees only a quarter of the tokens (2 of 8 experts per token), so after 150 steps the experts
# are undertrained, while the dense FFN has learned from every token. MoE pays off when there are far
# more tokens than a dense model of the same compute can absorb: Switch Transformers reached the quality
# of a dense T5 up to 7× faster, measured over hundreds of thousands of steps. (Try it yourself, below: train longer and watch the gap.)

# %%
dense_loss, moe_loss = runs["dense"][1].final_val_loss, runs["MoE"][1].final_val_loss
start_loss = runs["MoE"][1].val_loss[0]
print(f"validation loss: dense ≈{dense_loss:.3f}, MoE ≈{moe_loss:.3f} (MoE started at {start_loss:.3f})")
assert dense_loss < moe_loss < start_loss - 1.0  # the MoE learns, but less than dense in 150 steps
claim("m3-moe-vs-dense-loss", f"validation loss after {train_config.steps} steps: MoE ≈{moe_loss:.3f} "
      f"vs dense ≈{dense_loss:.3f}")

# %% [markdown]
# ## Where the tokens go
#
# Each MoE layer's load per expert over training, as a share of its tokens (1/8 = perfectly even):

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True, sharey=True)
for col, name in enumerate(("MoE", "MoE, no balancing loss")):
    loads = runs[name][2].float()  # (steps, layers, E)
    share = loads / loads.sum(dim=-1, keepdim=True)
    for layer_index in range(share.shape[1]):
        ax = axes[layer_index, col]
        ax.stackplot(range(share.shape[0]), share[:, layer_index].T.numpy(), labels=[f"expert {i}" for i in range(8)])
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: layer {layer_index}")
        ax.set_ylabel("share of tokens")
for ax in axes[-1]:
    ax.set_xlabel("training step")
axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
plt.tight_layout()
plt.show()


def imbalance(loads):
    """max load / mean load over the last 30 steps, per layer (1 = perfectly even)."""
    last = loads[-30:].float().sum(dim=0)  # (layers, E)
    return (last.max(dim=-1).values / last.mean(dim=-1)).tolist()


for name in ("MoE", "MoE, no balancing loss"):
    print(f"{name:<24} busiest expert / average, per layer: " + ", ".join(f"≈{v:.2f}" for v in imbalance(runs[name][2])))
assert max(imbalance(runs["MoE"][2])) < max(imbalance(runs["MoE, no balancing loss"][2]))
claim("m3-balancing-evens-load", "busiest expert ÷ average: "
      + " / ".join(f"≈{v:.2f}" for v in imbalance(runs["MoE"][2])) + " with it, "
      + " / ".join(f"≈{v:.2f}" for v in imbalance(runs["MoE, no balancing loss"][2])) + " without")

# %% [markdown]
# With the balancing loss the experts share the work more evenly; without it some experts take far more
# than their share, and at a capacity factor of 1.25 the overflow is dropped. In this short run that does
# not show in the loss: the two MoE models end close (validation loss ≈3.178 with the balancing loss,
# ≈3.145 without, one seed each). At scale, where idle experts and dropped tokens waste real compute,
# the balance matters far more (Fedus et al. 2021).
#
# ## Summary
#
# - A router turns each token's logits into a probability per expert (softmax), keeps the top k and
#   weights their outputs by those probabilities.
# - The load-balancing loss $E\sum_i f_i P_i$ is 1 when balanced and E when collapsed; it keeps the
#   experts evenly loaded and, with a capacity limit, fewer tokens dropped (here it did not change the
#   short run's loss).
# - Dispatch is vectorised: a one-hot cumulative sum gives each token its slot, and all experts run as
#   batched (or grouped) matmuls; the MoE layer costs about one dense FFN of the same width.
# - Parameters and compute come apart: Mixtral holds 46.7B parameters and uses 12.9B per token; our tiny
#   MoE held 4× the FFN parameters at the same compute per token, but in a 150-step CPU run its
#   undertrained experts lost to the dense model: MoE is a way to use many more tokens, not a shortcut.
#
# ## Try it yourself
#
# 1. Train both models for 2000 steps: does the MoE catch up with the dense model, and when?
#    Then try Switch's recipe (`top_k=1`, `d_ff=256`, `normalize_weights=False`).
# 2. Lower `capacity_factor` to 0.5 and count the dropped tokens during training. What happens to the loss?
# 3. Replace every second FFN only (`moe_every=2`, as in Switch and GShard).
# 4. Time `impl="batched"` against `impl="grouped"` as the number of experts grows from 4 to 64.
#
# ## References
#
# - Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538
# - Lepikhin et al. 2020, "GShard: Scaling Giant Models with Conditional Computation and Automatic Sharding", arXiv:2006.16668
# - Fedus, Zoph & Shazeer 2021, "Switch Transformers: Scaling to Trillion Parameter Models with Simple and Efficient Sparsity", arXiv:2101.03961
# - Gale et al. 2022, "MegaBlocks: Efficient Sparse Training with Mixture-of-Experts", arXiv:2211.15841
# - Jiang et al. 2024, "Mixtral of Experts", arXiv:2401.04088
