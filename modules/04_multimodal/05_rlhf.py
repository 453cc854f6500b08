# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown] tags=["colab"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llm-course/llm-course/blob/main/modules/04_multimodal/05_rlhf.ipynb)

# %% tags=["colab"]
# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.
import importlib.util, subprocess, sys

if importlib.util.find_spec("llmcourse") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llmcourse @ git+https://github.com/llm-course/llm-course@main#subdirectory=shared"], check=True)

# %% [markdown]
# # 5. RLHF: reward models, KL penalties, reward hacking, and DPO
#
# A pretrained language model imitates its training text; people want something more specific: helpful,
# honest, harmless, on topic. Writing that down as a loss function is hopeless, but people can *compare* two
# answers and say which is better. **Reinforcement learning from human feedback** (Christiano et al. 2017;
# InstructGPT, Ouyang et al. 2022) turns such comparisons into a training signal in three stages:
#
# 1. a **reference model** (the supervised fine-tuned LM) generates answers;
# 2. a **reward model** is trained on human preferences between pairs of answers;
# 3. the LM is optimised to get high reward, with a **KL penalty** that keeps it close to the reference.
#
# **DPO** (Rafailov et al. 2023) later showed that stages 2 and 3 can be merged into one supervised loss.
#
# Real RLHF needs real people and a real LM. To see every moving part on a laptop, and to know the *true*
# preference (which in real life nobody does), we use a toy world: 7-word reviews, simulated labellers with a
# hidden gold reward, and tiny GPTs from module 1.
#
# **Learning objectives.** After this notebook you can
#
# 1. train a reward model with the Bradley-Terry loss and evaluate it on held-out preferences;
# 2. optimise a policy against it with a KL penalty (here REINFORCE with a leave-one-out baseline, a simpler
#    relative of PPO), and plot reward and KL;
# 3. show **reward hacking**: without the KL penalty the policy exploits the reward model and the true
#    reward collapses;
# 4. derive and run DPO on the same preferences, and compare.
#
# **Prerequisites:** module 1 (GPT, sampling). Runs within the course's one-minute budget on two CPU cores (the
# stored notebook records each cell's time).

# %%
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llmcourse import rlhf
from llmcourse.train import TrainConfig, train
from llmcourse.transformer import GPTConfig, GPT
from llmcourse.utils import claim, count_parameters, get_device, quiet, seed_everything

quiet()
seed_everything(0)
device = get_device()  # CUDA, then Apple MPS, then CPU; the models, tensors and generators made below live on it

# %% [markdown]
# ## 1. The toy world
#
# Every review has the form `the <noun> was <adjective> and <adjective> .` with 6 nouns and 12 adjectives: 4
# positive (good, great, lovely, fun), 4 negative (bad, boring, awful, dull), 4 neutral (long, short, new,
# loud). The simulated people have a hidden **gold reward**: +1 per positive adjective, -1 per negative one,
# and -3 for anything that is not a well-formed review. When they compare two reviews they prefer one with
# probability $\sigma(r_a - r_b)$: usually the better one, sometimes not (people are noisy too).

# %%
tokenizer = rlhf.ReviewTokenizer()
for text in ("the food was great and fun .", "the movie was long and awful .", "great great great and fun . ."):
    ids = torch.tensor([[tokenizer.BOS] + tokenizer.encode(text)], device=device)
    print(f"gold reward {rlhf.gold_reward(ids, tokenizer).item():+.0f}: {text}")

# %% [markdown]
# ## 2. The reference model
#
# Our "supervised fine-tuned" starting point is a small GPT trained on random well-formed reviews: it writes
# grammatical reviews of random sentiment, so its average gold reward is about 0.

# %%
config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=2, n_head=4, d_model=64)
seed_everything(0)
reference = GPT(config)


def review_batches(split_name, generator):
    reviews = rlhf.sample_reviews(64, tokenizer, generator)  # (64, 8) with <bos> first
    return reviews[:, :-1], reviews[:, 1:]  # inputs, next-token targets


start = time.perf_counter()
train(reference, TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup=10, min_lr=1e-4, eval_every=1000,
                             eval_batches=1), review_batches, device=device, progress_bar=False, has_val=False)
reference.eval().requires_grad_(False)
g = torch.Generator(device=device).manual_seed(0)
ref_samples = rlhf.sample(reference, 1000, generator=g)
ref_gold = rlhf.gold_reward(ref_samples, tokenizer)
print(f"reference: {count_parameters(reference):,} parameters, trained in {time.perf_counter() - start:.1f} s; "
      f"samples well-formed {(ref_gold > -3).float().mean().item():.0%}, "
      f"mean gold reward {ref_gold.mean().item():+.2f}")
for row in ref_samples[:3]:
    print("  ", tokenizer.decode(row))
assert (ref_gold > -3).float().mean() > 0.9

# %% [markdown]
# ## 3. Preference data and the reward model
#
# We sample 2,000 pairs of reviews from the reference model and let the simulated people choose. A fifth of
# the pairs are held out to evaluate the reward model.

# %%
a, b = rlhf.sample(reference, 2000, generator=g), rlhf.sample(reference, 2000, generator=g)
prefs = rlhf.make_preferences(a, b, rlhf.gold_reward(a, tokenizer), rlhf.gold_reward(b, tokenizer), generator=g)
gold_chosen, gold_rejected = rlhf.gold_reward(prefs.chosen, tokenizer), rlhf.gold_reward(prefs.rejected, tokenizer)
print("example pair: chosen  :", tokenizer.decode(prefs.chosen[0]))
print("              rejected:", tokenizer.decode(prefs.rejected[0]))
print(f"label noise: the chosen review has the lower gold reward in "
      f"{(gold_chosen < gold_rejected).float().mean().item():.0%} "
      f"of pairs, equal in {(gold_chosen == gold_rejected).float().mean().item():.0%}")
n_train = 1600

# %% [markdown]
# The reward model $r_\phi$ is a GPT with a scalar head on the last token. The **Bradley-Terry** model says
# $P(a \succ b) = \sigma(r(a) - r(b))$; maximising the likelihood of the observed choices gives the loss
#
# $$\mathcal L_{RM} = -\log \sigma\big(r_\phi(y_{chosen}) - r_\phi(y_{rejected})\big),$$
#
# a logistic regression on the *difference* of two scores (only differences are identifiable: adding a
# constant to every reward changes nothing).

# %%
seed_everything(0)
reward_model = rlhf.RewardModel(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=4,
                                          d_model=32)).to(device)
r_c, r_r = reward_model(prefs.chosen[:4]), reward_model(prefs.rejected[:4])
assert_close(rlhf.bradley_terry_loss(r_c, r_r), -torch.log(torch.sigmoid(r_c - r_r)).mean())
assert_close(rlhf.bradley_terry_loss(r_c, r_r),
             F.binary_cross_entropy_with_logits(r_c - r_r, torch.ones(4, device=device)))
print("Bradley-Terry loss == -log sigmoid(difference) == BCE with logits on the difference")

optimizer = torch.optim.AdamW(reward_model.parameters(), lr=3e-3)
rm_generator = torch.Generator(device=device).manual_seed(1)
for _ in range(300):
    i = torch.randint(0, n_train, (64,), generator=rm_generator, device=device)
    loss = rlhf.bradley_terry_loss(reward_model(prefs.chosen[i]), reward_model(prefs.rejected[i]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
reward_model.eval().requires_grad_(False)

held_c, held_r = prefs.chosen[n_train:], prefs.rejected[n_train:]
rm_accuracy = (reward_model(held_c) > reward_model(held_r)).float().mean().item()
g_c, g_r = gold_chosen[n_train:], gold_rejected[n_train:]
oracle = ((g_c > g_r).float() + 0.5 * (g_c == g_r).float()).mean().item()  # the gold reward itself, ties = coin
print(f"held-out preference accuracy: reward model {rm_accuracy:.1%}, gold reward {oracle:.1%} "
      "(the ceiling set by noisy labels)")
assert rm_accuracy > oracle - 0.06
claim("m4-rlhf-rm-accuracy", f"held-out preference accuracy {rm_accuracy:.1%} vs {oracle:.1%} for the gold reward "
      "(noisy labels)")

# %% [markdown]
# The reward model agrees with the held-out (simulated) choices nearly as often as the gold reward itself
# does, a few points below that ceiling: it has learned what people like, *on the kind of text it was shown*. Because our world is tiny we can score every
# one of the $6 \times 12 \times 12 = 864$ well-formed reviews and see what the best review is worth to it.

# %%
adjectives = rlhf.POSITIVE + rlhf.NEGATIVE + rlhf.NEUTRAL
all_reviews = torch.tensor([[tokenizer.BOS] + tokenizer.encode(f"the {n} was {x} and {y} .")
                            for n in rlhf.NOUNS for x in adjectives for y in adjectives], device=device)
all_scores = reward_model(all_reviews)
best_in_distribution = all_scores.max().item()
corr = torch.corrcoef(torch.stack([all_scores, rlhf.gold_reward(all_reviews, tokenizer)]))[0, 1].item()
# ≈: the reward model's scores move in the second decimal from one CPU to another (training amplifies rounding)
print(f"{len(all_reviews)} well-formed reviews: reward-model scores from ≈{all_scores.min().item():.2f} to "
      f"≈{best_in_distribution:.2f}; correlation with the gold reward ≈{corr:.2f}")
print("its favourite:", tokenizer.decode(all_reviews[all_scores.argmax()]))
assert corr > 0.9
claim("m4-rlhf-rm-correlation", f"correlation with gold ≈{corr:.2f} over all {len(all_reviews)} reviews")

# %% [markdown]
# ## 4. Policy optimisation with a KL penalty
#
# Now we fine-tune a copy of the reference model, the **policy** $\pi_\theta$, to maximise
#
# $$\mathbb E_{y \sim \pi_\theta}\big[r_\phi(y)\big] - \beta\, \mathrm{KL}(\pi_\theta \,\|\, \pi_{ref}).$$
#
# **Algorithm (clearly not PPO).** We use REINFORCE with a leave-one-out baseline (RLOO, Ahmadian et al. 2024):
# sample 64 reviews, give each the reward $R_i = r_\phi(y_i) - \beta(\log\pi_\theta(y_i) - \log\pi_{ref}(y_i))$
# (the KL penalty folded into the reward, as in InstructGPT), subtract the mean reward of the *other* 63
# samples, and take one gradient step on $-\frac1B\sum_i A_i \log\pi_\theta(y_i)$. PPO adds a learned value
# function, clipped importance ratios and several steps per batch of samples; the objective and the role of
# $\beta$ are the same. We track the reward model's score (the **proxy**), the **gold** reward (which the
# optimiser never sees) and the KL.

# %%
runs = {}
for beta in (0.1, 0.0):
    seed_everything(0)
    policy = rlhf.frozen_copy(reference).requires_grad_(True)
    start = time.perf_counter()
    history = rlhf.rl_train(policy, reference, reward_model, tokenizer,
                            rlhf.RLConfig(beta=beta, steps=100, batch_size=64, lr=1e-3, seed=0))
    samples = rlhf.sample(policy, 500, generator=torch.Generator(device=device).manual_seed(2))
    runs[beta] = (policy, history, samples)
    print(f"beta={beta}: {time.perf_counter() - start:.1f} s; last 10 steps: proxy ≈{sum(history.proxy[-10:]) / 10:.2f}, "
          f"gold ≈{sum(history.gold[-10:]) / 10:.2f}, KL ≈{sum(history.kl[-10:]) / 10:.1f} nats, "
          f"distinct samples ≈{sum(history.distinct[-10:]) / 10:.0%}")
    for row in samples[:3]:
        print("    ", tokenizer.decode(row), f"(gold {rlhf.gold_reward(row[None], tokenizer).item():+.0f})")

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for beta, (_, h, _) in runs.items():
    axes[0].plot(h.proxy, label=f"beta={beta}")
    axes[1].plot(h.gold, label=f"beta={beta}")
    axes[2].plot(h.kl, label=f"beta={beta}")
axes[0].axhline(best_in_distribution, color="gray", ls=":", label="best well-formed review")
for ax, title in zip(axes, ("proxy reward (reward model)", "gold reward (hidden)", "KL(policy || reference), nats")):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Reward hacking
#
# With $\beta = 0.1$ both rewards rise together: the policy writes positive, well-formed reviews and stays a
# few nats from the reference. With $\beta = 0$ the proxy climbs *above the best score any well-formed review
# gets*, while the gold reward falls to -3: the policy found word salad that the reward model over-rates. The
# reward model was never shown such text, so its scores there are arbitrary, and an optimiser free to go
# anywhere goes exactly there. This is **reward hacking** or over-optimisation (Gao et al. 2022 measured it
# for real reward models: gold reward first rises, then falls as the KL grows).

# %%
samples_kl, samples_free = runs[0.1][2], runs[0.0][2]
proxy_kl, proxy_free = reward_model(samples_kl).mean().item(), reward_model(samples_free).mean().item()
gold_kl = rlhf.gold_reward(samples_kl, tokenizer).mean().item()
gold_free = rlhf.gold_reward(samples_free, tokenizer).mean().item()
print(f"beta=0.1: proxy ≈{proxy_kl:.2f}, gold ≈{gold_kl:.2f}")
print(f"beta=0  : proxy ≈{proxy_free:.2f} (best well-formed review: ≈{best_in_distribution:.2f}), gold ≈{gold_free:.2f}")
assert proxy_free > best_in_distribution and proxy_free > proxy_kl
assert gold_free < ref_gold.mean().item() - 1.0 < gold_kl - 1.0
claim("m4-rlhf-hacking", f"beta = 0: proxy ≈{proxy_free:.2f} > ≈{best_in_distribution:.2f} (best score of any "
      f"well-formed review), gold ≈{gold_free:.2f}")

# %% [markdown]
# The KL penalty is the leash: it keeps the policy where the reward model's judgement was learned, trading a
# little proxy reward for a lot of gold reward. In practice one also watches the KL, refreshes the reward
# model on new samples (InstructGPT), or ensembles reward models.
#
# ## 6. DPO: preferences without a reward model
#
# For the KL-regularised objective the optimal policy is known in closed form,
# $\pi^*(y) \propto \pi_{ref}(y)\, e^{r(y)/\beta}$. Solving for $r$ gives $r(y) = \beta \log\frac{\pi^*(y)}{\pi_{ref}(y)} + \text{const}$:
# every policy *implies* a reward. Put that into the Bradley-Terry loss and the constant cancels:
#
# $$\mathcal L_{DPO} = -\log\sigma\Big(\beta\Big[\log\frac{\pi_\theta(y_w)}{\pi_{ref}(y_w)} - \log\frac{\pi_\theta(y_l)}{\pi_{ref}(y_l)}\Big]\Big).$$
#
# No reward model, no sampling: a supervised loss on the preference pairs, with the reference model's
# log-probabilities as the anchor.

# %%
pc, pr = (torch.tensor(x, device=device) for x in ([-3.0, -6.0], [-5.0, -4.0]))  # policy log-probs: chosen, rejected
rc, rr = (torch.tensor(x, device=device) for x in ([-4.0, -5.0], [-4.0, -5.0]))  # reference log-probs
implicit = 0.1 * ((pc - rc) - (pr - rr))  # difference of implicit rewards
assert_close(rlhf.dpo_loss(pc, pr, rc, rr, beta=0.1), -F.logsigmoid(implicit).mean())
print("DPO loss == Bradley-Terry on the implicit rewards beta * log(pi / pi_ref)")

train_prefs = rlhf.Preferences(prefs.chosen[:n_train], prefs.rejected[:n_train])


def evaluate(policy, samples):
    """Mean gold reward, share of well-formed reviews, gold among the well-formed, KL to the reference."""
    gold = rlhf.gold_reward(samples, tokenizer)
    with torch.no_grad():
        kl = (rlhf.sequence_logprobs(policy, samples) - rlhf.sequence_logprobs(reference, samples)).mean().item()
    well_formed = gold > -3
    gold_wf = gold[well_formed].mean().item() if well_formed.any() else float("nan")
    return gold.mean().item(), well_formed.float().mean().item(), gold_wf, kl


dpo = {}
for beta in (0.1, 1.0):
    seed_everything(0)
    dpo_policy = rlhf.frozen_copy(reference).requires_grad_(True)
    start = time.perf_counter()
    losses = rlhf.dpo_train(dpo_policy, reference, train_prefs, beta=beta, steps=100, batch_size=64, lr=3e-4)
    dpo_samples = rlhf.sample(dpo_policy, 500, generator=torch.Generator(device=device).manual_seed(2))
    dpo[beta] = evaluate(dpo_policy, dpo_samples)
    print(f"DPO beta={beta}: {time.perf_counter() - start:.1f} s, loss {losses[0]:.3f} -> {sum(losses[-10:]) / 10:.3f}")

# %%
table = {"reference": evaluate(reference, ref_samples[:500])}
for beta, label in ((0.1, "RLOO + KL, beta=0.1"), (0.0, "RLOO, beta=0")):
    table[label] = evaluate(runs[beta][0], runs[beta][2])
table.update({"DPO, beta=0.1": dpo[0.1], "DPO, beta=1": dpo[1.0]})
print(f"{'policy':<21}{'gold':>7}{'well-formed':>13}{'gold if well-formed':>21}{'KL (nats)':>11}")
for name, (gold, wf, gold_wf, kl) in table.items():
    gold_wf = "n/a" if wf == 0 else f"{gold_wf:+.2f}"
    print(f"{name:<21}{gold:>+7.2f}{wf:>13.0%}{gold_wf:>21}{kl:>11.1f}")
ref_row, low_beta, high_beta = table["reference"], dpo[0.1], dpo[1.0]
assert high_beta[1] > 0.9 and high_beta[0] > ref_row[0] + 0.5  # DPO, beta=1: better and still well-formed
assert low_beta[1] < 0.8 and low_beta[2] > 1.0  # DPO, beta=0.1: positive reviews, but many broken ones
kl_row, free_row = table["RLOO + KL, beta=0.1"], table["RLOO, beta=0"]
claim("m4-rlhf-kl-penalty", f"beta = 0.1: gold reward {ref_row[0]:+.2f} -> {kl_row[0]:+.2f}, {kl_row[1]:.0%} "
      f"well-formed, KL {kl_row[3]:.1f} nats")
claim("m4-rlhf-hacking-kl", f"beta = 0: {free_row[1]:.0%} well-formed, KL {free_row[3]:.1f} nats")
claim("m4-rlhf-dpo", f"beta = 1: gold {high_beta[0]:+.2f}, {high_beta[1]:.0%} well-formed, KL {high_beta[3]:.1f}; "
      f"beta = 0.1: {low_beta[1]:.0%} well-formed (gold {low_beta[2]:+.2f} among those), KL {low_beta[3]:.1f}")

# %% [markdown]
# Both DPO runs learned the sentiment (look at the gold reward among well-formed reviews), from the same 1,600
# preferences, with no reward model and no sampling during training; that simplicity is why DPO became
# widely used for open models. But with $\beta = 0.1$ many of its samples are broken sentences. DPO only pushes
# the chosen review's likelihood *up relative to* the rejected one's; both can go down, and the probability
# mass that leaves them lands on sequences no pair ever covered ("likelihood displacement", Razin et al.
# 2024). Nothing in the loss looks at those sequences, and, unlike RL, DPO never samples from the policy, so
# it never sees the damage. A larger $\beta$ (a tighter leash to the reference) avoids it here at the price of
# a smaller gain among the well-formed reviews. Measure your policy's samples, not only its loss.
#
# ## Summary
#
# - RLHF learns from **comparisons**: a reward model fit with the **Bradley-Terry** loss predicts held-out
#   (simulated) choices nearly as well as the hidden gold reward does, on the distribution it was trained on.
# - Policy optimisation maximises reward minus $\beta \cdot$ KL to the reference. We used REINFORCE with a
#   leave-one-out baseline, a simpler cousin of PPO; the KL term is what matters here.
# - Without the KL penalty the policy **hacks the reward model**: proxy reward above anything a well-formed
#   review gets, gold reward -3, KL about 20 nats.
# - **DPO** turns the same objective into a supervised loss on preference pairs and improves the gold reward
#   without a reward model, but with a weak leash ($\beta = 0.1$) it moved probability onto broken text that
#   no preference pair covered.
#
# ## Try it yourself
#
# 1. Sweep $\beta \in \{0.01, 0.03, 0.3, 1\}$ and plot final gold reward against final KL (Gao et al.'s
#    over-optimisation curve).
# 2. Train the reward model on only 200 pairs. Does hacking start earlier, even with $\beta = 0.1$?
# 3. Add 50 preference pairs in which a broken sentence is compared with a good review. Does the $\beta = 0$
#    policy still hack, or does it find another hole?
# 4. Implement PPO's clipped objective: store $\log\pi_{old}$, take 4 gradient steps per batch on
#    $-\min(\rho A, \operatorname{clip}(\rho, 1-\epsilon, 1+\epsilon) A)$ with $\rho = \pi_\theta / \pi_{old}$.
#
# ## References
#
# - Christiano et al. 2017, "Deep reinforcement learning from human preferences", https://arxiv.org/abs/1706.03741
# - Stiennon et al. 2020, "Learning to summarize from human feedback", https://arxiv.org/abs/2009.01325
# - Ouyang et al. 2022, "Training language models to follow instructions with human feedback" (InstructGPT),
#   https://arxiv.org/abs/2203.02155
# - Schulman et al. 2017, "Proximal Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347
# - Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
#   Feedback in LLMs" (RLOO), https://arxiv.org/abs/2402.14740
# - Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
#   https://arxiv.org/abs/2305.18290
# - Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization", https://arxiv.org/abs/2210.10760
# - Rafailov et al. 2024, "Scaling Laws for Reward Model Overoptimization in Direct Alignment Algorithms",
#   https://arxiv.org/abs/2406.02900
# - Razin et al. 2024, "Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization",
#   https://arxiv.org/abs/2410.08847
# - Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs: I. The Method of Paired Comparisons",
#   Biometrika 39(3/4)
