"""RLHF in miniature: a reward model trained on preference pairs, policy optimisation against it with a
KL penalty to the reference model, and DPO, which skips the reward model.

    Bradley-Terry:   P(a preferred to b) = sigmoid(r(a) - r(b)),  loss = -log sigmoid(r(chosen) - r(rejected))
    RL objective:    max_pi  E_{y~pi}[ r(y) ] - beta * KL(pi || pi_ref)
    DPO:             loss = -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

The policy optimiser here is **not PPO**: it is REINFORCE with a leave-one-out baseline (RLOO; Ahmadian
et al. 2024), one gradient step per batch of samples, with the KL penalty folded into the reward as in
InstructGPT (``r - beta * (log pi(y) - log pi_ref(y))``). PPO adds a value network, advantage estimation
(GAE) and a clipped importance ratio so that it can take several steps per batch; the KL-regularised
objective, and what happens without it, are the same.

The toy world (so that everything runs in seconds and the *true* preference is known):

- reviews of 7 word tokens ``the <noun> was <adj> and <adj> .`` (:data:`REVIEW_WORDS`);
- a hidden **gold reward** (:func:`gold_reward`): +1 per positive adjective, -1 per negative one, and -3
  for any text that is not a well-formed review (people reject broken sentences);
- simulated labellers prefer one of two samples with the Bradley-Terry probability of their gold rewards.

The reward model only ever sees well-formed samples of the reference model; it is a *proxy*. Optimised
hard enough (no KL penalty), the policy finds text the proxy over-rates and the gold reward drops:
reward hacking (Gao et al. 2022).

Taught in ``modules/04_multimodal/05_rlhf.py``.

References: Christiano et al. 2017, "Deep reinforcement learning from human preferences",
https://arxiv.org/abs/1706.03741 ; Ouyang et al. 2022, "Training language models to follow instructions
with human feedback" (InstructGPT), https://arxiv.org/abs/2203.02155 ; Schulman et al. 2017, "Proximal
Policy Optimization Algorithms", https://arxiv.org/abs/1707.06347 ; Ahmadian et al. 2024, "Back to
Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
https://arxiv.org/abs/2402.14740 ; Rafailov et al. 2023, "Direct Preference Optimization",
https://arxiv.org/abs/2305.18290 ; Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization",
https://arxiv.org/abs/2210.10760

Shape legend: B batch (samples or pairs), T tokens, V vocabulary.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import GPT, GPTConfig

__all__ = [
    "REVIEW_WORDS",
    "NOUNS",
    "POSITIVE",
    "NEGATIVE",
    "NEUTRAL",
    "ReviewTokenizer",
    "sample_reviews",
    "gold_reward",
    "bradley_terry_loss",
    "Preferences",
    "make_preferences",
    "RewardModel",
    "sequence_logprobs",
    "sample",
    "dpo_loss",
    "RLConfig",
    "RLHistory",
    "rl_train",
    "dpo_train",
    "frozen_copy",
]

NOUNS = ("movie", "food", "music", "hotel", "book", "service")
POSITIVE = ("good", "great", "lovely", "fun")
NEGATIVE = ("bad", "boring", "awful", "dull")
NEUTRAL = ("long", "short", "new", "loud")
REVIEW_WORDS = ("<bos>", "the", "was", "and", ".") + NOUNS + POSITIVE + NEGATIVE + NEUTRAL
REVIEW_LENGTH = 7  # the <noun> was <adj> and <adj> .


class ReviewTokenizer:
    """One id per word of :data:`REVIEW_WORDS` (id 0 is ``<bos>``, the prompt of every sample)."""

    BOS = 0

    def __init__(self):
        self.itos = list(REVIEW_WORDS)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        unknown = [w for w in text.split() if w not in self.stoi]
        if unknown:
            raise ValueError(f"unknown words {unknown}; the vocabulary is {self.itos}")
        return [self.stoi[w] for w in text.split()]

    def decode(self, ids) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(self.itos[i] for i in ids if i != self.BOS)


def sample_reviews(n: int, tokenizer: ReviewTokenizer, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` well-formed reviews with uniformly random nouns and adjectives, as ids (n, 1 + 7) starting
    with ``<bos>``: the pre-training text of the reference model."""
    adjectives = POSITIVE + NEGATIVE + NEUTRAL
    noun = torch.randint(0, len(NOUNS), (n,), generator=generator).tolist()
    adj = torch.randint(0, len(adjectives), (n, 2), generator=generator).tolist()
    rows = [[tokenizer.BOS] + tokenizer.encode(f"the {NOUNS[a]} was {adjectives[b]} and {adjectives[c]} .")
            for a, (b, c) in zip(noun, adj)]
    return torch.tensor(rows)


def gold_reward(tokens: torch.Tensor, tokenizer: ReviewTokenizer) -> torch.Tensor:
    """The hidden "true" preference of the simulated people, (B,) float: for a well-formed review
    ``the <noun> was <adj> and <adj> .`` the number of positive minus negative adjectives (-2..2);
    anything else scores -3. ``tokens`` (B, 1 + 7) start with ``<bos>``."""
    if tokens.ndim != 2 or tokens.shape[1] != 1 + REVIEW_LENGTH:
        raise ValueError(f"tokens must be (B, {1 + REVIEW_LENGTH}), got {tuple(tokens.shape)}")
    s = tokenizer.stoi
    words = tokens[:, 1:]
    ids = lambda names: torch.tensor([s[w] for w in names], device=tokens.device)
    adjectives = ids(POSITIVE + NEGATIVE + NEUTRAL)
    well_formed = ((words[:, 0] == s["the"]) & torch.isin(words[:, 1], ids(NOUNS)) & (words[:, 2] == s["was"])
                   & torch.isin(words[:, 3], adjectives) & (words[:, 4] == s["and"])
                   & torch.isin(words[:, 5], adjectives) & (words[:, 6] == s["."]))
    slots = words[:, [3, 5]]  # (B, 2)
    sentiment = torch.isin(slots, ids(POSITIVE)).sum(1) - torch.isin(slots, ids(NEGATIVE)).sum(1)
    return torch.where(well_formed, sentiment.float(), torch.full_like(sentiment, -3).float())


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the observed preferences under Bradley-Terry:
    ``-log sigmoid(r_chosen - r_rejected)``, averaged over pairs (B,). Only reward *differences* matter."""
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"shapes differ: {tuple(r_chosen.shape)} vs {tuple(r_rejected.shape)}")
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


class Preferences(NamedTuple):
    """Preference pairs: ``chosen`` and ``rejected`` ids (B, T)."""

    chosen: torch.Tensor
    rejected: torch.Tensor


def make_preferences(a: torch.Tensor, b: torch.Tensor, gold_a: torch.Tensor, gold_b: torch.Tensor,
                     generator: torch.Generator | None = None) -> Preferences:
    """Simulated labellers compare samples ``a[i]`` and ``b[i]`` (B, T) and prefer ``a`` with probability
    ``sigmoid(gold_a - gold_b)`` (noisy, as real people are: equal rewards give a coin flip)."""
    p_a = torch.sigmoid(gold_a - gold_b)  # (B,)
    # Drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), compared on p_a's.
    noise = torch.rand(p_a.shape, generator=generator, device=generator.device if generator is not None else p_a.device)
    a_wins = noise.to(p_a.device) < p_a
    return Preferences(torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a))


class RewardModel(nn.Module):
    """A GPT backbone (:class:`llmcourse.transformer.GPT`) with a scalar head on the last token's final
    hidden state: (B, T) ids -> (B,) rewards. InstructGPT initialises it from the SFT model; here it is
    trained from scratch on the preference pairs."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.backbone = GPT(config)
        self.head = nn.Linear(config.d_model, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gpt = self.backbone
        x = gpt.embed(tokens)  # (B, T, D)
        for block in gpt.h:
            x = block(x)
        return self.head(gpt.ln_f(x)[:, -1]).squeeze(-1)  # (B,)


def sequence_logprobs(model: GPT, tokens: torch.Tensor, prompt_len: int = 1) -> torch.Tensor:
    """log p(tokens[prompt_len:] | tokens[:prompt_len]) under ``model``: the sum over generated tokens of
    log-softmax of the logits, (B,), computed in fp32. Gradients flow when enabled."""
    if tokens.ndim != 2 or not 1 <= prompt_len < tokens.shape[1]:
        raise ValueError(f"need tokens (B, T) with 1 <= prompt_len ({prompt_len}) < T; got {tuple(tokens.shape)}")
    logits = model(tokens[:, :-1]).logits.float()  # (B, T-1, V): position t predicts token t+1
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return logp[:, prompt_len - 1:].sum(dim=1)  # (B,)


@torch.no_grad()
def sample(model: GPT, n: int, length: int = REVIEW_LENGTH, bos: int = ReviewTokenizer.BOS,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples of ``length`` tokens after ``<bos>`` at temperature 1: (n, 1 + length)."""
    device = next(model.parameters()).device
    prompt = torch.full((n, 1), bos, dtype=torch.long, device=device)
    return model.generate(prompt, length, temperature=1.0, generator=generator)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Direct Preference Optimisation (Rafailov et al. 2023, eq. 7), averaged over pairs. Inputs are
    sequence log-probabilities (B,). The implicit reward of a sample is ``beta * (log pi - log pi_ref)``;
    the loss is Bradley-Terry on these implicit rewards."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (B,)
    return -F.logsigmoid(beta * margin.float()).mean()


# ----------------------------------------------------------------------------------------------------
# Training loops
# ----------------------------------------------------------------------------------------------------
@dataclass
class RLConfig:
    """Policy optimisation with REINFORCE + leave-one-out baseline and a KL penalty (not PPO)."""

    beta: float = 0.1  # KL weight; 0 = no leash to the reference model
    steps: int = 150  # optimizer steps, one batch of fresh samples each
    batch_size: int = 64  # samples per step (the baseline of each is the mean reward of the others)
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # sampling seed

    def __post_init__(self) -> None:
        if self.beta < 0 or self.steps < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError(f"need beta >= 0, steps >= 1, batch_size >= 2, lr > 0; got {self}")


@dataclass
class RLHistory:
    """Per step: mean proxy reward (reward model), gold reward, KL(pi || pi_ref) estimate (nats per
    sample: mean of log pi(y) - log pi_ref(y)), and the fraction of distinct samples in the batch."""

    proxy: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    distinct: list[float] = field(default_factory=list)


def rl_train(policy: GPT, ref: GPT, reward_model: nn.Module, tokenizer: ReviewTokenizer,
             config: RLConfig) -> RLHistory:
    """Optimise ``policy`` in place against ``reward_model`` with a KL penalty to ``ref`` (frozen).

    Each step: sample B reviews; total reward ``R_i = r(y_i) - beta * (log pi(y_i) - log pi_ref(y_i))``
    (no gradient through R); advantage ``A_i = R_i - mean_{j != i} R_j`` (RLOO); loss
    ``-mean(A_i * log pi(y_i))``; one Adam step. The gold reward is only *logged*, never used."""
    ref = ref.eval().requires_grad_(False)
    reward_model = reward_model.eval().requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(config.seed)
    history = RLHistory()
    B = config.batch_size
    for _ in range(config.steps):
        tokens = sample(policy, B, generator=generator)  # (B, 1 + L)
        policy.train()
        logp = sequence_logprobs(policy, tokens)  # (B,), with gradients
        with torch.no_grad():
            kl = logp.detach() - sequence_logprobs(ref, tokens)  # (B,): a one-sample KL estimate
            proxy = reward_model(tokens)  # (B,)
            total = proxy - config.beta * kl
            baseline = (total.sum() - total) / (B - 1)  # leave-one-out mean
            advantage = total - baseline
        loss = -(advantage * logp).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.proxy.append(proxy.mean().item())
        history.gold.append(gold_reward(tokens, tokenizer).mean().item())
        history.kl.append(kl.mean().item())
        history.distinct.append(len({tuple(t) for t in tokens.tolist()}) / B)
    policy.eval()
    return history


def dpo_train(policy: GPT, ref: GPT, prefs: Preferences, beta: float = 0.1, steps: int = 100,
              batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Fine-tune ``policy`` in place with the DPO loss on preference pairs; returns the loss per step.
    No reward model and no sampling during training: the pairs are a fixed data set."""
    ref = ref.eval().requires_grad_(False)
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logprobs(ref, prefs.chosen), sequence_logprobs(ref, prefs.rejected)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    policy.train()
    for _ in range(steps):
        i = torch.randint(0, len(prefs.chosen), (batch_size,), generator=generator)
        loss = dpo_loss(sequence_logprobs(policy, prefs.chosen[i]), sequence_logprobs(policy, prefs.rejected[i]),
                        ref_chosen[i], ref_rejected[i], beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    policy.eval()
    return losses


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode: the reference model pi_ref."""
    return copy.deepcopy(model).eval().requires_grad_(False)

