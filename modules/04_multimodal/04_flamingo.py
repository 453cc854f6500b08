# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/04_multimodal/04_flamingo.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 4. Flamingo: teaching a frozen language model to see
#
# Training a multimodal model from scratch is expensive, and a good language model already knows a lot about
# the world. Flamingo (Alayrac et al. 2022) keeps a pretrained LM **frozen** and a pretrained vision encoder
# **frozen**, and trains only two kinds of new layers between them:
#
# 1. a **perceiver resampler**, which turns however many visual features an image (or video) produces into a
#    fixed, small number of *visual tokens*;
# 2. **gated cross-attention** layers inserted between the LM's blocks, through which text tokens read the
#    visual tokens. Their output is multiplied by $\tanh(\alpha)$ with $\alpha = 0$ at the start, so on day
#    one the model is *exactly* the original LM.
#
# Flamingo-80B trained 10B new parameters around a frozen 70B Chinchilla LM and learned to answer questions
# about images from a handful of examples in its prompt. We build the same machinery around a tiny GPT and a
# tiny ViT, verify the exact-identity property, and train the new layers on interleaved image-text sequences.
#
# **Learning objectives.** After this notebook you can
#
# 1. build a perceiver resampler and explain how it turns N visual features into a fixed number of tokens;
# 2. build gated cross-attention and prove that, at initialisation, the model equals the frozen LM exactly;
# 3. build the per-image attention mask that lets text and images interleave;
# 4. train only the new layers and measure what the frozen LM gained.
#
# **Prerequisites:** notebooks 1 (ViT) and 3 (CLIP) of this module, module 1 (GPT, cross-attention).
# Runs within the course's one-minute budget on two CPU cores (the stored notebook records each cell's time).

# %%
import time

import matplotlib.pyplot as plt
import torch
from torch.testing import assert_close

from llmcourse import digits, flamingo, vit
from llmcourse.train import TrainConfig, train
from llmcourse.transformer import GPT, GPTConfig
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
split = digits.load_digits_split()
tokenizer = digits.caption_tokenizer()

# %% [markdown]
# ## 1. The task: interleaved images and text
#
# Each training sequence interleaves two digit images with short sentences, like a web page with pictures:
#
# `<bos> <image> this is the digit seven . <image> this is the digit two .`
#
# `<image>` is a placeholder token; the picture itself reaches the model only through cross-attention. A
# language model that cannot see can learn everything here except the number words, which it can only guess.

# %%
example = digits.make_interleaved(split.train_x, split.train_y, 1, tokenizer, generator=torch.Generator().manual_seed(0))
print(tokenizer.decode(example.tokens[0]))
print("tokens", tuple(example.tokens.shape), "| images", tuple(example.images.shape),
      "| number words at positions", example.digit_positions[0].tolist())

# %% [markdown]
# ## 2. The frozen parts
#
# **Vision encoder.** Flamingo used a contrastively pre-trained NFNet; we train the ViT of notebook 1 as a digit
# classifier for 300 steps and freeze it. Its final hidden states, 17 vectors of width 32 per image (CLS +
# 16 patches), are the visual features. Because the encoder is frozen, we compute them once for every image.

# %%
seed_everything(0)
encoder = vit.ViT(vit.ViTConfig(d_model=32, n_layer=2, n_head=4))
start = time.perf_counter()
train(encoder, TrainConfig(steps=300, batch_size=128, lr=3e-3, weight_decay=0.05, warmup=20, min_lr=1e-4,
                           eval_every=1000, eval_batches=1),
      digits.digit_batch_fn(split, 128), device=device, progress_bar=False, has_val=False)
encoder.requires_grad_(False).eval()
with torch.no_grad():
    train_features = encoder(split.train_x.to(device)).hidden  # (1437, 17, 32): frozen, computed once
    test_features = encoder(split.test_x.to(device)).hidden  # (360, 17, 32)
print(f"vision encoder: test accuracy {vit.accuracy(encoder, split.test_x, split.test_y):.1%} "
      f"(trained in {time.perf_counter() - start:.1f} s); features per image {tuple(train_features.shape[1:])}")

# %% [markdown]
# **Language model.** A small GPT from module 1 (2 blocks, width 64), pre-trained on text, then frozen. Half
# of its text is our sequences with the images removed: it learns their grammar, but the number
# words are random to it. The other half is counting ("four five six seven ..."), so that, like any real LM,
# it has met the number words in contexts where they differ. (Without that, the ten number words are
# interchangeable in its training text, it gives them nearly identical output embeddings, and the frozen
# output layer can never express a confident choice between them: in a first version of this demo built
# that way, the number-word loss stayed high even when the argmax was right; exercise 1 below lets you
# measure it. A frozen LM can only say what it already knows how to say.)

# %%
def lm_batches(split_name, generator, n=64):
    pool_x, pool_y = (train_features, split.train_y) if split_name == "train" else (test_features, split.test_y)
    batch = digits.make_interleaved(pool_x, pool_y, n, tokenizer, generator=generator)
    targets = torch.cat([batch.tokens[:, 1:], torch.full((n, 1), -100)], dim=1)  # next token; -100 = none
    return batch.tokens, batch.images, targets


NUMBER_IDS = torch.tensor([tokenizer.stoi[w] for w in digits.NUMBER_WORDS])


def text_batches(split_name, generator):
    tokens, _, targets = lm_batches(split_name, generator, n=32)  # the images are dropped: text only
    first = torch.randint(0, 10, (32, 1), generator=generator)
    counting = torch.cat([torch.full((32, 1), tokenizer.BOS), NUMBER_IDS[(first + torch.arange(14)) % 10]], dim=1)
    count_targets = torch.cat([counting[:, 1:], torch.full((32, 1), -100)], dim=1)
    return torch.cat([tokens, counting]), torch.cat([targets, count_targets])  # (64, 15) each


seed_everything(0)
lm = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=4, d_model=64))
start = time.perf_counter()
train(lm, TrainConfig(steps=200, batch_size=64, lr=3e-3, weight_decay=0.1, warmup=20, min_lr=1e-4,
                      eval_every=1000, eval_batches=1),
      text_batches, device=device, progress_bar=False, has_val=False)
lm.requires_grad_(False).eval()
number_embeddings = torch.nn.functional.normalize(lm.wte.weight[NUMBER_IDS].detach().cpu(), dim=-1)  # (10, 64)
off_diagonal = (number_embeddings @ number_embeddings.T)[~torch.eye(10, dtype=torch.bool)]
print(f"language model: {count_parameters(lm):,} parameters, pre-trained in {time.perf_counter() - start:.1f} s; "
      f"mean cosine similarity between number-word embeddings {off_diagonal.mean():.2f}")
assert off_diagonal.mean() < 0.5

# %% [markdown]
# We score any model on 500 held-out sequences built from *test* images: the loss and accuracy at the number
# words only (everything else is easy), for the first and second image.

# %%
eval_tokens, eval_media, eval_targets = lm_batches("val", torch.Generator().manual_seed(123), n=500)
eval_batch = digits.make_interleaved(test_features, split.test_y, 500, tokenizer,
                                     generator=torch.Generator().manual_seed(123))
assert torch.equal(eval_batch.tokens, eval_tokens)


@torch.no_grad()
def number_word_scores(logits):
    pos = eval_batch.digit_positions.to(logits.device) - 1  # the logits at t predict token t + 1
    at_digits = logits.gather(1, pos[:, :, None].expand(-1, -1, logits.shape[-1]))  # (B, 2, V)
    gold = eval_batch.tokens.to(logits.device).gather(1, eval_batch.digit_positions.to(logits.device))  # (B, 2)
    loss = torch.nn.functional.cross_entropy(at_digits.flatten(0, 1).float(), gold.flatten()).item()
    return loss, (at_digits.argmax(-1) == gold).float().mean(dim=0).tolist()


with torch.no_grad():
    lm_logits = lm(eval_tokens.to(device)).logits
text_loss, text_acc = number_word_scores(lm_logits)
print(f"text-only LM at the number words: loss {text_loss:.2f} nats (ln 10 = 2.30), "
      f"accuracy {text_acc[0]:.0%} / {text_acc[1]:.0%} (first / second image)")
assert max(text_acc) < 0.2 and abs(text_loss - 2.30) < 0.15
claim("m4-flamingo-text-only", f"number-word loss {text_loss:.2f} nats (ln 10 = 2.30), accuracy {text_acc[0]:.0%} / "
      f"{text_acc[1]:.0%} (first / second image)")

# %% [markdown]
# ## 3. The perceiver resampler
#
# An image may give 17 features (our ViT), 256 (a ViT-L/14 at 224 px), or thousands (a video). The resampler
# fixes the number of visual tokens: $L$ learned **latent** vectors act as queries and cross-attend to the
# features. Flamingo's twist: the keys and values are the features *and* the latents, concatenated, so the
# latents can also coordinate among themselves:
#
# $$z \leftarrow z + \operatorname{Attn}\big(q = \operatorname{LN}(z),\; kv = [\operatorname{LN}(x); \operatorname{LN}(z)]\big),
# \qquad z \leftarrow z + \operatorname{FFN}(\operatorname{LN}(z)).$$
#
# One block by hand, against the package:

# %%
seed_everything(0)
block = flamingo.PerceiverBlock(d_model=32, n_heads=4)
latents = torch.randn(2, 4, 32)  # (B, L, D): 4 latents
features = train_features[:2].cpu()  # (B, N, D): 17 visual features per image
z = block.ln_latents(latents)
kv = torch.cat([block.ln_media(features), z], dim=1)  # (B, N + L, D) = (2, 21, 32)
by_hand = latents + block.attn(z, context=kv)  # queries: the latents only
by_hand = by_hand + block.ff(block.ln_ff(by_hand))
assert_close(by_hand, block(latents, features))
print("keys/values", tuple(kv.shape), "-> latents", tuple(by_hand.shape), "| by hand == PerceiverBlock")

resampler = flamingo.PerceiverResampler(d_model=64, n_latents=4, media_dim=32)
feature_counts = (1, 17, 256)
for N in feature_counts:
    out = resampler(torch.randn(2, N, 32))
    print(f"{N:>4} visual features -> {tuple(out.shape)} visual tokens")
    assert out.shape == (2, 4, 64)
claim("m4-flamingo-resampler", f"{feature_counts[0]}, {feature_counts[1]} or {feature_counts[2]} features -> "
      f"{out.shape[1]} visual tokens")

# %% [markdown]
# ## 4. Gated cross-attention, and exact identity at initialisation
#
# Before every LM block we insert
#
# $$y = x + \tanh(\alpha_{attn})\,\operatorname{CrossAttn}(\operatorname{LN}(x), v), \qquad
# y \leftarrow y + \tanh(\alpha_{ff})\,\operatorname{FFN}(\operatorname{LN}(y)),$$
#
# with $\alpha = 0$ at initialisation. $\tanh(0) = 0$, so each new layer adds exactly zero and the whole
# model computes what the frozen LM computes, bit for bit. Training then opens the gates only as far as the
# images help. (Adding randomly initialised layers *without* the gate would perturb every hidden state and
# throw away part of what the LM knows; Flamingo's ablation found the gate improves results and stability.)

# %%
seed_everything(0)
model = flamingo.Flamingo(lm, flamingo.FlamingoConfig(n_latents=4, resampler_layers=1, n_heads=4,
                                                      xattn_every=1, media_dim=32)).to(device)
with torch.no_grad():
    at_init = model(eval_tokens.to(device), eval_media.to(device)).logits
max_diff = (at_init - lm_logits).abs().max().item()
print(f"largest |Flamingo - frozen LM| logit difference at initialisation: {max_diff}")
assert torch.equal(at_init, lm_logits)
print("gates tanh(alpha) per LM block (attention, feed-forward):", model.gates())
claim("m4-flamingo-init-identity", f"largest logit difference {max_diff} (torch.equal)")

# %% [markdown]
# ## 5. Which image may each token see?
#
# In `<image> this is the digit seven . <image> this is the digit two .` the word "two" must describe the *second* image.
# Flamingo lets each text token cross-attend only to the visual tokens of the **last image before it**
# (tokens before any image see none). Through the LM's own self-attention, later tokens can still use
# earlier images indirectly. The mask for our example, rows = text tokens, columns = 2 images x 4 visual tokens:

# %%
mask = flamingo.media_attention_mask(example.tokens, tokenizer.IMAGE, n_images=2, n_latents=4)[0]  # (T, 8)
fig, ax = plt.subplots(figsize=(3.4, 4.2))
ax.imshow(mask.numpy(), cmap="Greens", aspect="auto")
ax.set_yticks(range(len(example.tokens[0])), tokenizer.decode(example.tokens[0]).split(), fontsize=8)
ax.set_xticks(range(8), [f"img{m} v{l}" for m in range(2) for l in range(4)], rotation=90, fontsize=7)
ax.set_title("text token may attend to", fontsize=9)
plt.tight_layout()
plt.show()
assert mask[:2].sum() == 4 and mask[1, :4].all() and not mask[0].any()  # <bos> sees nothing, <image> sees img0

# %% [markdown]
# ## 6. Training only the new layers
#
# The optimiser receives the resampler and the gated cross-attention layers; the LM and the vision encoder do
# not change. Same loss as pre-training (next-token cross-entropy over the whole sequence), 200 steps.

# %%
n_trainable = count_parameters(model, trainable_only=True)
n_frozen = count_parameters(model) - n_trainable
print(f"trainable (resampler + 2 gated cross-attention layers): {n_trainable:,}; frozen LM: {n_frozen:,}")
lm_before = {k: v.clone() for k, v in lm.state_dict().items()}

start = time.perf_counter()
history = train(model, TrainConfig(steps=200, batch_size=64, lr=3e-3, weight_decay=0.0, warmup=20, min_lr=1e-4,
                                   eval_every=50, eval_batches=2),
                lm_batches, device=device, progress_bar=False)
model.eval()
with torch.no_grad():
    trained_logits = model(eval_tokens.to(device), eval_media.to(device)).logits
vision_loss, vision_acc = number_word_scores(trained_logits)
print(f"trained in {time.perf_counter() - start:.1f} s")
print(f"number words, text-only LM: loss {text_loss:.2f}, accuracy {text_acc[0]:.0%} / {text_acc[1]:.0%}")
print(f"number words, with vision:  loss {vision_loss:.2f}, accuracy {vision_acc[0]:.0%} / {vision_acc[1]:.0%}")
print("gates after training:", {k: (round(a, 2), round(f, 2)) for k, (a, f) in model.gates().items()})
assert min(vision_acc) > 0.8 and vision_loss < text_loss - 1.0
assert all(torch.equal(v, lm.state_dict()[k]) for k, v in lm_before.items())  # the LM did not move
claim("m4-flamingo-trained", f"number words: loss {text_loss:.2f} -> {vision_loss:.2f} nats, accuracy "
      f"{text_acc[0]:.0%} / {text_acc[1]:.0%} -> {vision_acc[0]:.0%} / {vision_acc[1]:.0%} (first / second image); "
      f"trainable {n_trainable:,} vs frozen {n_frozen:,}; LM weights bit-identical after training")

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(history.steps, history.val_loss, marker="o")
ax.set_xlabel("step")
ax.set_ylabel("held-out loss (all tokens)")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The frozen LM, which could only guess, now names both digits in most held-out sequences, including the
# second one: the per-image mask routed the right picture to the right sentence. Its accuracy is close to
# the frozen vision encoder's own test accuracy (printed in section 2): it can only name digits that the
# encoder's features tell apart. The gates moved off 0, but only to a few hundredths, some of them negative;
# how far each one opens is learned. Note that the new layers have more parameters than the frozen LM here
# (printed above), unlike Flamingo-80B's 10B new around 70B frozen. Let us look at a few predictions,
# decoding greedily after `this is the digit`:

# %%
prompt = torch.tensor([tokenizer.encode("<bos> <image> this is the digit")] * 6)  # (6, 6)
with torch.no_grad():
    media = test_features[:6, None]  # (6, 1 image, 17, 32)
    next_word = model(prompt.to(device), media.to(device)).logits[:, -1].argmax(-1).cpu()  # (6,)
fig, axes = plt.subplots(1, 6, figsize=(9, 1.9))
for ax, image, word in zip(axes, split.test_x[:6], next_word):
    ax.imshow(image[0], cmap="gray_r")
    ax.set_title(f"the digit {tokenizer.itos[word]}", fontsize=8)
    ax.axis("off")
plt.show()
print("predicted:", [tokenizer.itos[w] for w in next_word], "| true:", split.test_y[:6].tolist())

# %% [markdown]
# ## Summary
#
# - Flamingo connects a **frozen** vision encoder to a **frozen** LM with two trainable parts: a **perceiver
#   resampler** (L learned latents cross-attend to any number of visual features, giving L visual tokens) and
#   **gated cross-attention** layers inserted before the LM blocks.
# - With $\tanh$ gates at 0 the model equals the frozen LM **exactly** (checked with `torch.equal`), so
#   training starts from everything the LM knows.
# - A per-image mask lets images and text interleave: each token sees the visual tokens of the latest image.
# - Training only the new layers took the frozen LM from chance (10%) to naming held-out digits in most
#   sequences, while its own weights stayed bit-identical.
#
# ## Try it yourself
#
# 1. Pre-train the LM without the counting half, then measure the number-word embeddings' similarity and the
#    loss Flamingo reaches.
# 2. Remove the gates (replace `torch.tanh(self.attn_gate)` by 1 in a copy of `GatedCrossAttention`). How far
#    from the LM's logits is the model at initialisation, and how does training go?
# 3. Let every token attend to *all* images (mask of ones). Does accuracy on the second image drop?
# 4. Insert cross-attention before every second block only (`xattn_every=2`), or use 1 or 16 latents.
# 5. Put the course's pretrained character-level model `llmcourse.train.tiny_gpt()` in place of our word-level
#    GPT (with a character tokenizer and an `<image>` character of your choice).
#
# ## References
#
# - Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning", https://arxiv.org/abs/2204.14198
# - Jaegle et al. 2021, "Perceiver: General Perception with Iterative Attention", https://arxiv.org/abs/2103.03206
# - Awadalla et al. 2023, "OpenFlamingo: An Open-Source Framework for Training Large Autoregressive
#   Vision-Language Models", https://arxiv.org/abs/2308.01390 ; code: https://github.com/mlfoundations/open_flamingo
# - Liu et al. 2023, "Visual Instruction Tuning" (LLaVA: a simpler design that feeds projected visual tokens
#   straight into the LM's input), https://arxiv.org/abs/2304.08485
