"""LLM cascades (FrugalGPT): ask a cheap model first and pay for the expensive one only when needed.

For each query the small model answers and reports a confidence ``c`` (its probability for the answer,
or exp(-loss) = 1 / perplexity of its output). A threshold ``tau`` decides:

    c >= tau   accept the small model's answer            cost = cost_small
    c <  tau   escalate: the large model answers           cost = cost_small + cost_large

Sweeping ``tau`` from +inf (always escalate: the large model's accuracy at a bit more than its cost) to
-inf (never escalate: the small model's accuracy and cost) traces a cost-vs-accuracy curve. When the
small model's confidence is informative, the curve bends above the straight line between the two
models: a cascade reaches the large model's accuracy at a fraction of its cost. The threshold is a
hyper-parameter, so it is chosen on held-out queries (:func:`choose_threshold`) and then reported on
fresh ones.

Taught in ``modules/03_deployment/08_cascades.py``.

References:
- Chen, Zaharia & Zou 2023, "FrugalGPT: How to Use Large Language Models While Reducing Cost and
  Improving Performance", arXiv:2305.05176
- Viola & Jones 2001, "Rapid Object Detection using a Boosted Cascade of Simple Features" (cascades)

Shape legend: N queries, M thresholds, T tokens, V vocabulary.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "cascade_decision",
    "cascade_predict",
    "CascadeResult",
    "evaluate_cascade",
    "CascadeCurve",
    "cascade_curve",
    "choose_threshold",
    "max_prob_confidence",
    "sequence_logprob",
    "sequence_confidence",
]


def cascade_decision(confidence: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Which queries the small model keeps: ``confidence >= threshold`` (a BoolTensor shaped like
    ``confidence``; True = accept the small model's answer, False = escalate to the large model).
    A confidence exactly at the threshold is accepted."""
    confidence = torch.as_tensor(confidence)
    if confidence.dtype == torch.bool or confidence.is_complex():
        raise ValueError(f"confidence must be real numbers, got {confidence.dtype}")
    return confidence >= threshold


def cascade_predict(small_pred: torch.Tensor, large_pred: torch.Tensor, confidence: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """The cascade's answers (N, ...): the small model's where accepted, the large model's elsewhere."""
    accept = cascade_decision(confidence, threshold)
    while accept.ndim < small_pred.ndim:
        accept = accept[..., None]
    return torch.where(accept, small_pred, large_pred)


class CascadeResult(NamedTuple):
    """``accuracy`` and mean ``cost`` per query of a cascade, and ``accept_rate``: the share of queries
    the small model answered alone."""

    accuracy: float
    cost: float
    accept_rate: float


def _check(small_correct, large_correct, confidence):
    small_correct, large_correct = torch.as_tensor(small_correct).bool(), torch.as_tensor(large_correct).bool()
    confidence = torch.as_tensor(confidence, dtype=torch.float64)
    if not small_correct.shape == large_correct.shape == confidence.shape or confidence.ndim != 1:
        raise ValueError(f"small_correct {tuple(small_correct.shape)}, large_correct {tuple(large_correct.shape)} "
                         f"and confidence {tuple(confidence.shape)} must be 1-D of the same length")
    if confidence.numel() == 0:
        raise ValueError("need at least one query")
    return small_correct, large_correct, confidence


def evaluate_cascade(small_correct: torch.Tensor, large_correct: torch.Tensor, confidence: torch.Tensor,
                     threshold: float, small_cost: float, large_cost: float) -> CascadeResult:
    """Accuracy and cost of the cascade at one ``threshold``. ``small_correct``/``large_correct`` (N,)
    say whether each model answers each query correctly; ``confidence`` (N,) is the small model's.
    The small model always runs; the large one only on escalated queries."""
    curve = cascade_curve(small_correct, large_correct, confidence, small_cost, large_cost,
                          thresholds=torch.tensor([float(threshold)]))
    return CascadeResult(float(curve.accuracy[0]), float(curve.cost[0]), float(curve.accept_rate[0]))


class CascadeCurve(NamedTuple):
    """One operating point per threshold (M,): ``accuracy``, mean ``cost`` and ``accept_rate``."""

    thresholds: torch.Tensor
    accuracy: torch.Tensor
    cost: torch.Tensor
    accept_rate: torch.Tensor


def cascade_curve(small_correct: torch.Tensor, large_correct: torch.Tensor, confidence: torch.Tensor,
                  small_cost: float, large_cost: float, thresholds: torch.Tensor | None = None) -> CascadeCurve:
    """The cascade at every threshold at once (an (M, N) accept matrix, no loop).

    By default the thresholds are every distinct confidence plus +inf (escalate everything), sorted
    ascending: every operating point the data allows. Costs are per query, in any unit (FLOPs, dollars).
    """
    if small_cost < 0 or large_cost < 0:
        raise ValueError(f"costs must be non-negative, got small_cost={small_cost}, large_cost={large_cost}")
    small_correct, large_correct, confidence = _check(small_correct, large_correct, confidence)
    if thresholds is None:
        thresholds = torch.cat([confidence.unique(), torch.tensor([float("inf")], dtype=torch.float64)])
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
    accept = cascade_decision(confidence[None, :], thresholds[:, None])  # (M, N)
    correct = torch.where(accept, small_correct[None, :], large_correct[None, :])  # (M, N)
    accept_rate = accept.double().mean(dim=1)
    cost = small_cost + (1 - accept_rate) * large_cost
    return CascadeCurve(thresholds, correct.double().mean(dim=1), cost, accept_rate)


def choose_threshold(curve: CascadeCurve, target_accuracy: float) -> float:
    """The cheapest threshold whose accuracy reaches ``target_accuracy`` on the curve (computed on
    held-out data); if none does, the most accurate one (the cheaper on ties)."""
    ok = curve.accuracy >= target_accuracy - 1e-12
    if ok.any():
        cost = torch.where(ok, curve.cost, torch.full_like(curve.cost, float("inf")))
        return float(curve.thresholds[int(cost.argmin())])
    best = curve.accuracy.max()
    cost = torch.where(curve.accuracy == best, curve.cost, torch.full_like(curve.cost, float("inf")))
    return float(curve.thresholds[int(cost.argmin())])


def max_prob_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Confidence of a classifier or a multiple-choice scorer: the largest softmax probability.
    logits (..., K) -> (...,), computed in fp32."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total log-probability of ``targets`` (B, T) under next-token ``logits`` (B, T, V), summed over
    the positions where ``mask`` (B, T) is True (all by default). Returns (B,) in fp32."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on (B, T)")
    logp = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)
    if mask is not None:
        logp = logp * mask.to(logp.dtype)
    return logp.sum(dim=1)


def sequence_confidence(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Perplexity-based confidence of a generated answer: exp(mean token log-probability) = 1 / perplexity,
    in (0, 1]. Same arguments as :func:`sequence_logprob`; returns (B,)."""
    n = targets.new_ones(targets.shape, dtype=torch.float32) if mask is None else mask.float()
    return torch.exp(sequence_logprob(logits, targets, mask) / n.sum(dim=1).clamp_min(1))
