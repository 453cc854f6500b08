# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/01_transformers/03_architectures.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 3. Three architectures from one block
#
# The block of notebook 2 is the only building block of the transformers you know. What differs between
# BERT, GPT and the original translation model is *who may attend to whom* and *what the model is trained
# to predict*. This notebook builds all three, trains small ones on tasks where the difference shows, and
# then counts parameters: the handful of numbers that decide how big a model is, checked against the
# published sizes of GPT-1, GPT-2, GPT-3 and BERT.
#
# **Learning objectives.** After this notebook you can
#
# 1. tell encoder-only, decoder-only and encoder-decoder models apart by their attention masks and
#    training objectives;
# 2. train a tiny BERT-style encoder with the masked-token objective and show what bidirectional context buys;
# 3. train an encoder-decoder with cross-attention to solve a sequence-to-sequence task on held-out inputs;
# 4. name the variables that size a transformer and its training run (vocabulary, width, context, heads,
#    FFN width, layers, batch size, training tokens);
# 5. compute a model's parameter count from its configuration and reproduce published model sizes.
#
# **Prerequisites:** notebooks 1 and 2. Runs within the course's one-minute budget on two CPU cores (the
# stored notebook records each cell's time).

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

from llmcourse import data, params, positional
from llmcourse.attention import causal_mask
from llmcourse.train import TINY_GPT_CONFIG, TINY_GPT_TRAIN, TrainConfig, train
from llmcourse.transformer import GPT, Encoder, EncoderConfig, EncoderDecoder, GPTConfig, Seq2SeqConfig
from llmcourse.utils import claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU; the same code runs on all

# %% [markdown]
# ## 1. One block, three wirings
#
# | family | attention | trained to | examples | good at |
# |---|---|---|---|---|
# | **encoder-only** | bidirectional: every token sees every token | fill in masked tokens | BERT, MiniLM | understanding: classify, search, embed |
# | **decoder-only** | causal: a token sees itself and the past | predict the next token | GPT, Llama, SmolLM2 | generating text |
# | **encoder-decoder** | encoder bidirectional; decoder causal + *cross-attention* to the encoder | predict the output given the input | the 2017 Transformer, T5 | transforming one sequence into another |
#
# The masks say it all. In cross-attention the queries come from the decoder (the output written so far)
# and the keys and values from the encoder (the whole input), so there is no mask at all.

# %%
T_src, T_tgt = 6, 5
masks = {
    "encoder self-attention\n(bidirectional)": torch.ones(T_src, T_src, dtype=torch.bool),
    "decoder self-attention\n(causal)": causal_mask(T_tgt),
    "decoder cross-attention\n(output -> input)": torch.ones(T_tgt, T_src, dtype=torch.bool),
}
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
for ax, (title, mask) in zip(axes, masks.items()):
    ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.3)  # dark = may attend, white = masked
    ax.set(title=title, xlabel="key position", ylabel="query position")
    ax.set_xticks(range(mask.shape[1]))
    ax.set_yticks(range(mask.shape[0]))
    ax.set_xticks([i - 0.5 for i in range(1, mask.shape[1])], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, mask.shape[0])], minor=True)
    ax.grid(which="minor", color="white", lw=1.5)
    ax.tick_params(which="minor", length=0)
plt.show()

# %% [markdown]
# We can check the wiring on the package's models without training them: change the *last* input token
# and see whether the output at the *first* position moves.

# %%
torch.manual_seed(0)
encoder = Encoder(EncoderConfig.tiny()).to(device).eval()
decoder = GPT(GPTConfig.tiny()).to(device).eval()
ids = torch.tensor([[5, 6, 7, 8, 9]]).to(device)
ids_new_end = torch.tensor([[5, 6, 7, 8, 30]]).to(device)
with torch.no_grad():
    encoder_shift = (encoder(ids).hidden[0, 0] - encoder(ids_new_end).hidden[0, 0]).abs().max().item()
    decoder_shift = (decoder(ids).logits[0, 0] - decoder(ids_new_end).logits[0, 0]).abs().max().item()
assert encoder_shift > 1e-3 and decoder_shift == 0.0
print(f"change the last token -> first position moves in the encoder: {encoder_shift > 0}, in the decoder: {decoder_shift > 0}")

# %% [markdown]
# ## 2. Encoder-only: the masked-token objective
#
# A bidirectional model cannot be trained to predict the next token: it would simply look at it. BERT's
# answer (Devlin et al. 2019) is to **corrupt the input and predict the originals**: pick 15% of the
# positions; replace 80% of them by a `[MASK]` token, 10% by a random token, and leave 10% unchanged (so the
# model cannot learn that only `[MASK]` positions matter). The loss is computed at the picked positions only
# (label `-100` elsewhere). `llmcourse.data.mask_tokens` implements the rule; we check its statistics on a
# million tokens.

# %%
VOCAB, MASK_ID = 1000, 999
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, MASK_ID, (1000, 1000), generator=g)  # 1M ordinary tokens
corrupted, labels = data.mask_tokens(ids, mask_id=MASK_ID, vocab_size=VOCAB, p=0.15, generator=g)
picked = labels != -100
share_picked = picked.float().mean().item()
share_mask = (corrupted[picked] == MASK_ID).float().mean().item()
share_kept = (corrupted[picked] == ids[picked]).float().mean().item()
share_random = 1 - share_mask - share_kept
print(f"picked {share_picked:.1%} of tokens; of those [MASK] {share_mask:.1%}, random {share_random:.1%}, "
      f"unchanged {share_kept:.1%}")
assert abs(share_picked - 0.15) < 0.005 and abs(share_mask - 0.8) < 0.01
assert abs(share_random - 0.1) < 0.01 and abs(share_kept - 0.1) < 0.01  # (a random token equal to the original counts as unchanged)
assert torch.equal(corrupted[~picked], ids[~picked])  # positions that were not picked are untouched

# %% [markdown]
# ### What bidirectional context buys
#
# A task where the difference is all-or-nothing: **palindromes** of 12 symbols, the first 6 random, the last
# 6 the first 6 mirrored (`3 1 4 1 5 9 | 9 5 1 4 1 3`). A symbol in the first half can only be recovered
# from its mirror image, which lies to its *right*. We train a 2-layer encoder with the masked-token
# objective and a decoder of the same size with the next-token objective, for the same number of steps, and
# then ask both for every position: the encoder sees the sequence with that one position masked, the decoder
# sees everything before it.

# %%
PAL_VOCAB, HALF = 10, 6
PAL_MASK = PAL_VOCAB  # one extra id for [MASK]
PAL_LEN = 2 * HALF

def palindromes(n: int, generator: torch.Generator) -> torch.Tensor:
    """n palindromes (n, 12): 6 random symbols, then the same 6 mirrored."""
    first = torch.randint(0, PAL_VOCAB, (n, HALF), generator=generator)
    return torch.cat([first, first.flip(1)], dim=1)

def mlm_batch(split: str, generator: torch.Generator):
    x = palindromes(64, generator)
    inputs, labels = data.mask_tokens(x, mask_id=PAL_MASK, vocab_size=PAL_VOCAB + 1, p=0.15, generator=generator)
    return inputs, None, labels  # Encoder(idx, padding_mask, targets)

def next_token_batch(split: str, generator: torch.Generator):
    x = palindromes(64, generator)
    return x[:, :-1], x[:, 1:]  # GPT(idx, targets): predict token t+1 from tokens <= t

pal_train = TrainConfig(steps=200, batch_size=64, lr=5e-3, warmup=20, min_lr=5e-4, eval_every=50, eval_batches=2)
torch.manual_seed(0)
pal_encoder = Encoder(EncoderConfig(vocab_size=PAL_VOCAB + 1, max_len=PAL_LEN, n_layer=2, n_head=4, d_model=64))
encoder_history = train(pal_encoder, pal_train, mlm_batch, device=device)
torch.manual_seed(0)
pal_decoder = GPT(GPTConfig(vocab_size=PAL_VOCAB + 1, block_size=PAL_LEN, n_layer=2, n_head=4, d_model=64))
decoder_history = train(pal_decoder, pal_train, next_token_batch, device=device)

# %%
test_pal = palindromes(2000, torch.Generator().manual_seed(1)).to(device)
encoder_acc, decoder_acc = [], []
with torch.no_grad():
    for pos in range(PAL_LEN):
        masked = test_pal.clone()
        masked[:, pos] = PAL_MASK
        encoder_acc.append((pal_encoder(masked).logits[:, pos].argmax(-1) == test_pal[:, pos]).float().mean().item())
    decoder_pred = pal_decoder(test_pal[:, :-1]).logits.argmax(-1)  # (N, 11): predictions for positions 1..11
    decoder_acc = [float("nan")] + (decoder_pred == test_pal[:, 1:]).float().mean(0).tolist()  # nothing precedes position 0

first_half = slice(1, HALF)  # positions 1-5: the decoder has context but the answer lies to the right
print(f"{'position':>8} | " + " ".join(f"{p:>5}" for p in range(PAL_LEN)))
print(f"{'encoder':>8} | " + " ".join(f"{a:>5.2f}" for a in encoder_acc))
print(f"{'decoder':>8} | " + "   -- " + " ".join(f"{a:>5.2f}" for a in decoder_acc[1:]))
enc_first, dec_first = sum(encoder_acc[first_half]) / 5, sum(decoder_acc[first_half]) / 5
dec_second = sum(decoder_acc[HALF:]) / HALF
print(f"first half (positions 1-5): encoder {enc_first:.0%}, decoder {dec_first:.0%} (chance {1 / PAL_VOCAB:.0%});"
      f" second half: decoder {dec_second:.0%}")
assert min(encoder_acc) > 0.95  # the encoder recovers every position from its mirror
assert dec_first < 0.15 and dec_second > 0.95  # the decoder: chance before the mirror, perfect after it
claim("m1-encoder-vs-decoder", f"mirror task: encoder {min(encoder_acc):.0%} at every position; decoder "
      f"{dec_first:.0%} (chance {1 / PAL_VOCAB:.0%}) before the mirror, {dec_second:.0%} after")

fig, ax = plt.subplots(figsize=(7, 3.3), layout="constrained")
ax.plot(range(PAL_LEN), encoder_acc, "o-", label="encoder (sees both sides)")
ax.plot(range(PAL_LEN), decoder_acc, "s--", label="decoder (sees the left)")
ax.axhline(1 / PAL_VOCAB, color="gray", ls=":", label="chance")
ax.axvline(HALF - 0.5, color="gray", lw=0.8)
ax.set(xlabel="position in the palindrome", ylabel="accuracy", title="predicting each symbol of a palindrome",
       ylim=(0, 1.05))
ax.legend()
plt.show()

# %% [markdown]
# In the first half the decoder is at chance: the answer lies to its right, which a causal model never sees.
# In the second half the mirror image is to the left and it is as good as the encoder. This is why encoders
# are used to *understand* text (a word's meaning depends on both sides) and decoders to *generate* it
# (there is no right side yet when you write).
#
# ## 3. Decoder-only: the next-token objective
#
# The decoder above is a GPT: a causal stack trained to predict token $t+1$ from tokens $\le t$ at *every*
# position at once, so one sequence of length $T$ gives $T$ training examples (an encoder learns only from
# its 15% masked positions). Generating is repeated prediction: append the predicted token, predict again.
# Notebook 4 pretrains one on real text, and notebook 5 runs a real one (SmolLM2).
#
# ## 4. Encoder-decoder: cross-attention
#
# Some tasks map an input sequence to a different output sequence: translation, summarising, or here,
# **reversing a sequence** of 3 to 8 symbols (`4 7 1 9 -> 9 1 7 4`). The encoder reads the input
# bidirectionally; the decoder writes the output one token at a time, starting from a `BOS` token and ending
# with `EOS`. Each decoder block has three sub-layers: causal self-attention over the output so far,
# **cross-attention** whose queries come from the decoder and keys/values from the encoder's output, and the
# FFN. We train on 20,000 random examples and test on 1,000 others, leaving out any test input that also
# appears in the training set.

# %%
train_set = data.make_reverse_task(20_000, min_len=3, max_len=8, vocab=10, seed=0)
test_set = data.make_reverse_task(1_000, min_len=3, max_len=8, vocab=10, seed=1)
seen = {tuple(row.tolist()) for row in train_set.src}
unseen = torch.tensor([tuple(row.tolist()) not in seen for row in test_set.src])
test_set = test_set[unseen.nonzero().squeeze(1)]
print(f"held-out examples never seen in training: {len(test_set)} of 1000")
print("ids: PAD=0 BOS=1 EOS=2, symbols 3-12")
print("source           :", test_set.src[0].tolist())
print("decoder input    :", test_set.tgt_in[0].tolist())
print("decoder target   :", test_set.tgt_out[0].tolist())

# %%
s2s_config = Seq2SeqConfig(src_vocab_size=train_set.vocab_size, tgt_vocab_size=train_set.vocab_size, max_len=16,
                           n_encoder_layers=2, n_decoder_layers=2, n_head=4, d_model=64)
torch.manual_seed(0)
seq2seq = EncoderDecoder(s2s_config)

def reverse_batch(split: str, generator: torch.Generator):
    source = train_set if split == "train" else test_set
    rows = torch.randint(len(source), (32,), generator=generator)
    return source.src[rows], source.tgt_in[rows], source.tgt_out[rows]  # teacher forcing

s2s_history = train(seq2seq, TrainConfig(steps=240, batch_size=32, lr=6e-3, warmup=20, min_lr=6e-4, eval_every=40,
                                         eval_batches=4), reverse_batch, device=device)
print(f"validation loss: {s2s_history.val_loss[0]:.2f} at the start, {s2s_history.final_val_loss:.2f} at the end")

# %%
predictions = seq2seq.greedy_decode(test_set.src.to(device), max_len=test_set.tgt_out.shape[1],
                                    bos_id=test_set.bos_id, eos_id=test_set.eos_id)  # (N, L), BOS dropped
exact_match = data.exact_match_accuracy(predictions, test_set.tgt_out.to(device), pad_id=test_set.pad_id)
print(f"exact match on {len(test_set)} held-out inputs: ≈{exact_match:.1%}")
assert exact_match >= 0.95
for i in range(3):
    src = [t for t in test_set.src[i].tolist() if t != test_set.pad_id]
    out = predictions[i].tolist()
    out = out[: out.index(test_set.eos_id)] if test_set.eos_id in out else out
    print(f"  {src} -> ≈{out}")

# %% [markdown]
# Where does the decoder look? We run the decoder blocks by hand to collect their cross-attention weights.
# The decoder's input is its token embeddings scaled by $\sqrt{C}$ plus sinusoidal positions (the 2017
# recipe, `Seq2SeqConfig.pos_encoding="sinusoidal"`); running the blocks by hand must give the model's
# logits exactly.

# %%
example = test_set[[i for i in range(len(test_set)) if (test_set.src[i] != 0).sum() == 8][0]]  # a length-8 input
src, tgt_in = example.src.to(device), example.tgt_in.to(device)
seq2seq.eval()
with torch.no_grad():
    memory, src_mask = seq2seq.encode(src)  # (1, S, C), (1, 1, 1, S)
    C = s2s_config.d_model
    y = seq2seq.tgt_emb(tgt_in) * math.sqrt(C) + positional.sinusoidal_encoding(tgt_in.shape[1], C, device=device)
    cross = []
    for block in seq2seq.decoder:
        y, _, cross_weights = block(y, context=memory, context_mask=src_mask, return_weights=True)
        cross.append(cross_weights[0])  # (H, T, S)
    assert_close(seq2seq.lm_head(seq2seq.dec_ln(y)), seq2seq.decode(tgt_in, memory, src_mask))

L_in = 8
last = cross[-1].mean(0)[:L_in, :L_in]  # (T, S) averaged over heads: output position i, source position j
mirror = torch.stack([last[i, L_in - 1 - i] for i in range(L_in)]).mean().item()
print(f"last decoder layer: mean cross-attention on the mirrored source position ≈{mirror:.2f} "
      f"(uniform would be {1 / L_in:.2f})")
assert mirror > 0.5
claim("m1-seq2seq-reversal", f"≈{exact_match:.1%} exact match on {len(test_set)} held-out inputs; cross-attention "
      f"≈{mirror:.2f} on the mirrored source position")

src_labels = [str(t) for t in example.src[0, :L_in].tolist()]
out_labels = ["BOS"] + [str(t) for t in example.tgt_out[0, : L_in - 1].tolist()]
fig, axes = plt.subplots(1, len(cross), figsize=(11, 4), layout="constrained")
for layer, (ax, weights) in enumerate(zip(axes, cross)):
    ax.imshow(weights.mean(0)[:L_in, :L_in].cpu(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(L_in), src_labels)
    ax.set_yticks(range(L_in), out_labels)
    ax.set(title=f"decoder layer {layer}: cross-attention", xlabel="source token", ylabel="decoder input token")
plt.show()

# %% [markdown]
# The last layer's cross-attention is close to an anti-diagonal (≈0.83 of the weight on the mirrored
# position, against 0.12 for uniform attention): to write output token $i$, the decoder looks mostly at
# source position $L - 1 - i$. Nobody told it to; it learned the alignment from examples, as translation
# models learn which source words to look at (Bahdanau et al. 2015).
#
# ## 5. The variables that size a transformer
#
# A handful of numbers describe a transformer and its training run:
#
# * **vocabulary** $V$: rows of the token embedding, and the width of the output softmax;
# * **model width** $C$ (`d_model`): the size of every token vector in the residual stream;
# * **context length** $T$: the longest sequence the model reads; attention costs grow as $T^2$;
# * **heads** $H$: how many ways each layer attends at once (no effect on the parameter count);
# * **FFN width** $d_{ff}$, usually $4C$;
# * **layers** $L$: how many blocks are stacked;
# * **batch size**: tokens processed per optimiser step;
# * **training tokens** $D$: the total amount of text seen.
#
# The first six fix the parameter count $N$; the last two fix the training cost, about $6ND$ floating-point
# operations (2 for the forward pass and 4 for the backward pass, per parameter and token; Kaplan et al.
# 2020).

# %%
runs = {  # batch and data sizes from the papers; None where a paper does not report it
    "gpt1": dict(batch_tokens=64 * 512, train_tokens=None),  # 64 sequences of 512 tokens, 100 epochs of BooksCorpus
    "gpt2-small": dict(batch_tokens=512 * 1024, train_tokens=None),  # 512 sequences of 1024 tokens, WebText
    "gpt2-xl": dict(batch_tokens=512 * 1024, train_tokens=None),
    "gpt3-175b": dict(batch_tokens=3_200_000, train_tokens=300e9),  # Brown et al. 2020, Table 2.1 and section 2.2
    "bert-base": dict(batch_tokens=256 * 512, train_tokens=None),  # 256 sequences, 1M steps (mostly of 128 tokens)
}
course_vocab = data.CharTokenizer.fit(data.load_corpus()).vocab_size  # one token per character of the corpus
course_gpt = params.ArchSpec(vocab_size=course_vocab, context_length=TINY_GPT_CONFIG["block_size"],
                             d_model=TINY_GPT_CONFIG["d_model"], n_layers=TINY_GPT_CONFIG["n_layer"],
                             n_heads=TINY_GPT_CONFIG["n_head"], name="course tiny GPT")
course_run = dict(batch_tokens=TINY_GPT_TRAIN.batch_size * TINY_GPT_CONFIG["block_size"],
                  train_tokens=TINY_GPT_TRAIN.steps * TINY_GPT_TRAIN.batch_size * TINY_GPT_CONFIG["block_size"])

def fmt(n):
    return "n/r" if n is None else params.format_count(n)

rows = [(params.PUBLISHED_MODELS[key], runs[key]) for key in runs] + [(course_gpt, course_run)]
print(f"{'model':<16} {'V':>7} {'C':>6} {'T':>5} {'H':>3} {'d_ff':>6} {'L':>3} {'batch':>7} {'tokens':>7} | {'params':>7}")
for spec, run in rows:
    n = params.count_parameters(spec).total
    print(f"{spec.name:<16} {spec.vocab_size:>7,} {spec.d_model:>6,} {spec.context_length:>5} {spec.n_heads:>3} "
          f"{spec.d_ff:>6,} {spec.n_layers:>3} {fmt(run['batch_tokens']):>7} {fmt(run['train_tokens']):>7} | {fmt(n):>7}")
print("(batch and training tokens in tokens; n/r = not reported in the paper)")

# %% [markdown]
# The course's tiny GPT (`llmcourse.train.tiny_gpt()`, notebook 4) has the same shape as GPT-3, scaled down
# in every direction. The GPT-3 row also checks the compute rule: $6ND$ should match the 3,640
# petaflop/s-days that Brown et al. report in their Table D.1.

# %%
gpt3 = params.count_parameters(params.PUBLISHED_MODELS["gpt3-175b"]).total
course_n = params.count_parameters(course_gpt).total
print(f"GPT-3 vs the course GPT: {gpt3 / course_n:.1e} times the parameters, "
      f"{runs['gpt3-175b']['train_tokens'] / course_run['train_tokens']:.1e} times the training tokens")
flops = 6 * gpt3 * runs["gpt3-175b"]["train_tokens"]
pf_days = flops / (1e15 * 86400)
print(f"GPT-3: 6 N D = 6 x {gpt3 / 1e9:.1f}e9 x 300e9 = {flops:.3g} FLOPs = {pf_days:,.0f} petaflop/s-days (paper: 3,640)")
assert abs(pf_days / 3640 - 1) < 0.01
claim("m1-training-flops", f"GPT-3: {pf_days:,.0f} petaflop/s-days (paper: 3,640)")

# %% [markdown]
# ## 6. Counting parameters
#
# Where do the parameters of a GPT live? Per layer: attention has four $C \times C$ matrices
# ($4C^2 + 4C$ with biases), the FFN two $C \times 4C$ matrices ($8C^2 + 5C$), the two LayerNorms $4C$.
# Add the token and position embeddings $(V + T)C$ and a final LayerNorm; the output head is free when it
# shares the token embedding matrix (*weight tying*). So
#
# $$N \approx 12LC^2 + (V + T)C .$$
#
# `llmcourse.params.count_parameters` does this count exactly. First we check it on our own GPT class, for
# a few configurations:

# %%
for overrides in ({}, dict(n_layer=3, d_model=48, n_head=6), dict(tie_weights=False), dict(bias=False),
                  dict(n_kv_heads=2), dict(activation="swiglu", d_ff=96)):
    config = GPTConfig.tiny(**overrides)
    counted = params.count_parameters(params.spec_from_gpt_config(config)).total
    actual = GPT(config).num_parameters()
    assert counted == actual, (overrides, counted, actual)
    print(f"GPTConfig.tiny({', '.join(f'{k}={v!r}' for k, v in overrides.items())}): {actual:,} parameters, calculator agrees")

# %% [markdown]
# Then on the published models. We compare the calculator with the exact count of the Hugging Face
# implementation of each architecture, built from its configuration on PyTorch's `meta` device (shapes
# only, no memory, nothing downloaded), and with the size usually reported for the model.

# %%
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

hf_configs = {  # Hugging Face defaults are GPT-1, GPT-2 small and BERT-base
    "gpt1": lambda: OpenAIGPTLMHeadModel(OpenAIGPTConfig()),
    "gpt2-small": lambda: GPT2LMHeadModel(GPT2Config()),
    "gpt2-xl": lambda: GPT2LMHeadModel(GPT2Config(n_embd=1600, n_layer=48, n_head=25)),
    "gpt3-175b": lambda: GPT2LMHeadModel(GPT2Config(n_embd=12288, n_layer=96, n_head=96, n_positions=2048)),
    "bert-base": lambda: BertModel(BertConfig()),
}
print(f"{'model':<12} | {'calculator':>15} | {'Hugging Face':>15} | {'reported':>8} | {'vs reported':>11} | {'12LC^2':>6} | embeddings")
breakdowns = {}
for key, build in hf_configs.items():
    spec = params.PUBLISHED_MODELS[key]
    breakdown = params.count_parameters(spec)
    with torch.device("meta"):
        hf_count = sum(p.numel() for p in build().parameters())
    breakdowns[spec.name] = breakdown
    rel = breakdown.total / spec.reported_params - 1
    approx = 12 * spec.n_layers * spec.d_model**2 / breakdown.total
    print(f"{spec.name:<12} | {breakdown.total:>15,} | {hf_count:>15,} | {params.format_count(spec.reported_params):>8} | "
          f"{rel:>+11.1%} | {approx:>6.0%} | {breakdown.embeddings / breakdown.total:>5.1%}")
    assert breakdown.total == hf_count  # exact, parameter for parameter
    assert abs(rel) < 0.05  # the reported sizes are rounded
counts = ", ".join(f"{name} {b.total:,}" for name, b in breakdowns.items())
claim("m1-parameter-calculator", f"{counts} = Hugging Face's counts, parameter for parameter")

# %% [markdown]
# The calculator matches the reference implementations to the last parameter and the reported sizes within
# their rounding. (The GPT-2 paper called its smallest model "117M"; OpenAI later corrected it to 124M,
# which is what an exact count gives. GPT-2 XL is "1.5B" for 1.56B.) Two trends stand out in the last
# columns:
#
# * the embeddings are a third of GPT-2 small but 0.4% of GPT-3: in big models almost everything is in
#   the blocks, and $12LC^2$ alone is within 1% of the total;
# * the FFN holds twice the parameters of attention at every size.

# %%
assert abs(12 * 96 * 12288**2 / gpt3 - 1) < 0.01
names = list(breakdowns)
parts = ["embeddings", "attention", "ffn", "norms", "head"]
fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
left = torch.zeros(len(names))
for part in parts:
    share = torch.tensor([getattr(breakdowns[n], part) / breakdowns[n].total for n in names])
    ax.barh(names, share, left=left, label=part)
    left += share
ax.set(xlabel="share of parameters", title="where the parameters live", xlim=(0, 1))
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
ax.invert_yaxis()
plt.show()

# %% [markdown]
# ## Summary
#
# * Encoder-only, decoder-only and encoder-decoder models are the same block with different masks and
#   objectives. Changing the last token moves the encoder's first output, never the decoder's.
# * BERT's masked-token objective picks 15% of the tokens (80% `[MASK]`, 10% random, 10% unchanged). On
#   palindromes a 2-layer encoder recovers every symbol, while a causal decoder of the same size is at
#   chance wherever the answer lies to its right.
# * A small encoder-decoder learns to reverse sequences with over 95% exact match on inputs it never saw,
#   and its cross-attention discovers the mirror alignment.
# * Vocabulary, width, context, heads, FFN width and layers fix the parameter count; batch size and
#   training tokens fix the training cost ($6ND$ gives 3,638 petaflop/s-days for GPT-3; the paper reports
#   3,640).
# * The calculator reproduces GPT-1, GPT-2 small and XL, GPT-3 175B and BERT-base exactly; for large models
#   $N \approx 12LC^2$.
#
# ## Try it yourself
#
# 1. Train the palindrome decoder on *reversed* palindromes read right to left. Which half is hard now?
# 2. Switch the reversal task to `data.make_sort_task`. Does the cross-attention still show a clean pattern?
#    Why not?
# 3. Train the encoder-decoder with one layer on each side. How many steps does it need to reach 95%?
# 4. Use `params.ArchSpec` to size a model with $C = 4096$, $L = 32$, $V = 32000$, a gated FFN of width
#    11008, RMSNorm, no biases and untied embeddings (Llama-2 7B). Do you get 6.7B?
# 5. How many tokens would GPT-3 need by the Chinchilla rule of about 20 tokens per parameter (Hoffmann et
#    al. 2022)? How much more compute is that?
#
# ## References
#
# * Vaswani et al. 2017, *Attention Is All You Need*, https://arxiv.org/abs/1706.03762 (encoder-decoder).
# * Devlin et al. 2019, *BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding*,
#   https://arxiv.org/abs/1810.04805 (masked-token objective, BERT-base).
# * Radford et al. 2018, *Improving Language Understanding by Generative Pre-Training* (GPT-1).
# * Radford et al. 2019, *Language Models are Unsupervised Multitask Learners* (GPT-2, Table 2).
# * Brown et al. 2020, *Language Models are Few-Shot Learners*, https://arxiv.org/abs/2005.14165 (GPT-3,
#   Table 2.1 and Table D.1).
# * Raffel et al. 2020, *Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer*
#   (T5), https://arxiv.org/abs/1910.10683.
# * Kaplan et al. 2020, *Scaling Laws for Neural Language Models*, https://arxiv.org/abs/2001.08361 (the
#   $6ND$ rule and the $12LC^2$ count); Hoffmann et al. 2022, *Training Compute-Optimal Large Language
#   Models*, https://arxiv.org/abs/2203.15556 (Chinchilla).
# * Bahdanau, Cho & Bengio 2015, https://arxiv.org/abs/1409.0473 (learned alignments).
# * The course package: `llmcourse/transformer.py`, `llmcourse/params.py`, `llmcourse/data.py`.
