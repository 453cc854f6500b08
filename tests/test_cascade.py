"""Tests for llmcourse.cascade: the decision rule, cost and accuracy bookkeeping against hand
computations, the vectorised curve against a loop, threshold selection, confidence measures."""
from __future__ import annotations

import math

import pytest
import torch

from llmcourse import cascade as K


def test_cascade_decision_accepts_at_or_above_threshold():
    conf = torch.tensor([0.2, 0.5, 0.7, 0.5000001])
    assert K.cascade_decision(conf, 0.5).tolist() == [False, True, True, True]
    assert K.cascade_decision(conf, float("inf")).tolist() == [False] * 4
    assert K.cascade_decision(conf, float("-inf")).tolist() == [True] * 4
    assert K.cascade_decision(conf, 0.5).dtype == torch.bool
    with pytest.raises(ValueError, match="real numbers"):
        K.cascade_decision(torch.tensor([True]), 0.5)


def test_cascade_predict_picks_per_query():
    small, large = torch.tensor([1, 2, 3]), torch.tensor([7, 8, 9])
    assert K.cascade_predict(small, large, torch.tensor([0.9, 0.1, 0.6]), 0.5).tolist() == [1, 8, 3]
    small2, large2 = torch.zeros(3, 2), torch.ones(3, 2)
    out = K.cascade_predict(small2, large2, torch.tensor([0.9, 0.1, 0.6]), 0.5)
    assert out.tolist() == [[0, 0], [1, 1], [0, 0]]


def test_evaluate_cascade_by_hand():
    small_ok = torch.tensor([True, False, True, False])
    large_ok = torch.tensor([True, True, False, True])
    conf = torch.tensor([0.9, 0.3, 0.8, 0.6])
    r = K.evaluate_cascade(small_ok, large_ok, conf, threshold=0.7, small_cost=1.0, large_cost=10.0)
    # accepted: queries 0 and 2 (both right); escalated: 1 and 3 (large right on both)
    assert r.accuracy == 1.0 and r.accept_rate == 0.5 and r.cost == 1.0 + 0.5 * 10.0
    all_large = K.evaluate_cascade(small_ok, large_ok, conf, float("inf"), 1.0, 10.0)
    assert all_large == (0.75, 11.0, 0.0)
    all_small = K.evaluate_cascade(small_ok, large_ok, conf, float("-inf"), 1.0, 10.0)
    assert all_small == (0.5, 1.0, 1.0)


def test_cascade_curve_equals_loop_and_is_monotone_in_cost():
    torch.manual_seed(0)
    n = 57
    conf = torch.rand(n)
    small_ok, large_ok = torch.rand(n) < conf, torch.rand(n) < 0.8
    curve = K.cascade_curve(small_ok, large_ok, conf, 0.1, 2.0)
    assert curve.thresholds.numel() == n + 1 and math.isinf(curve.thresholds[-1])
    for t, acc, cost, rate in zip(*curve):
        r = K.evaluate_cascade(small_ok, large_ok, conf, float(t), 0.1, 2.0)
        assert math.isclose(r.accuracy, acc) and math.isclose(r.cost, cost) and math.isclose(r.accept_rate, rate)
    assert (curve.cost.diff() >= 0).all()  # higher threshold: more escalations, more cost
    with pytest.raises(ValueError, match="same length"):
        K.cascade_curve(small_ok[:3], large_ok, conf, 1, 2)
    with pytest.raises(ValueError, match="non-negative"):
        K.cascade_curve(small_ok, large_ok, conf, -1, 2)


def test_choose_threshold_cheapest_reaching_target():
    curve = K.CascadeCurve(torch.tensor([0.1, 0.5, 0.9, float("inf")]), torch.tensor([0.6, 0.8, 0.85, 0.84]),
                           torch.tensor([1.0, 2.0, 5.0, 11.0]), torch.tensor([1.0, 0.8, 0.4, 0.0]))
    assert K.choose_threshold(curve, 0.8) == 0.5
    assert K.choose_threshold(curve, 0.84) == pytest.approx(0.9)
    assert K.choose_threshold(curve, 0.99) == pytest.approx(0.9)  # unreachable: the most accurate point
    assert K.choose_threshold(curve, 0.0) == pytest.approx(0.1)


def test_confidences():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    conf = K.max_prob_confidence(logits)
    torch.testing.assert_close(conf, torch.tensor([math.e**2 / (math.e**2 + 2), 1 / 3]))
    torch.manual_seed(0)
    seq_logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    lp = torch.log_softmax(seq_logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(K.sequence_logprob(seq_logits, targets), lp.sum(1))
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(K.sequence_confidence(seq_logits, targets, mask),
                               torch.stack([lp[0, :2].mean().exp(), lp[1].mean().exp()]))
    with pytest.raises(ValueError, match="disagree"):
        K.sequence_logprob(seq_logits, targets[:, :4])
