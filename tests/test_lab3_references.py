"""Lab 3 in-process: the solution passes every test cell, the untouched release fails every one, each
mistake of ``tests/labs/lab3_deployment.py`` fails exactly its cells, and other correct answers (written
differently from the solution) pass. The references the hidden tests use are checked against independent
formulas in ``test_quant.py``, ``test_positional.py``, ``test_kv_cache.py``, ``test_moe.py``,
``test_flash.py`` and ``test_cascade.py``; the end-to-end grading is in ``tests/test_grading.py``."""
from __future__ import annotations

import math

import pytest
import torch

from coursekit import grading

from conftest import REPO, graded_cells, lab_spec, run_lab_in_process

LAB_PY = REPO / "solutions" / "lab3_deployment" / "lab3_deployment.py"
TEST_CELLS = {"absmax_test", "zeropoint_test", "alibi_test", "repeat_kv_test", "router_test", "tiled_test",
              "cascade_test"}
SOLUTION = grading.answers_from_solution(LAB_PY)


def _run_lab(answers: dict[str, str]) -> set[str]:
    """The grade_ids of the test cells (hidden tests included) that fail with these answers."""
    return run_lab_in_process(LAB_PY, answers, run_tests=True)[1]


def test_lab_has_the_parts_the_tests_expect():
    assert graded_cells(LAB_PY) == TEST_CELLS


def test_solution_passes_every_test_cell():
    torch.manual_seed(0)
    assert _run_lab(SOLUTION) == set()


def test_unanswered_lab_fails_every_test_cell():
    assert _run_lab({}) == TEST_CELLS


@pytest.mark.parametrize("name", sorted(lab_spec("lab3_deployment").MISTAKES))
def test_each_mistake_fails_exactly_its_test_cells(name):
    mistake = lab_spec("lab3_deployment").MISTAKES[name]
    assert _run_lab({**SOLUTION, **mistake["answers"]}) == mistake["fails"]


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated, still the reference here
def test_the_zero_point_example_is_not_on_a_rounding_tie():
    """The visible example's codes must not depend on how a half is rounded: torch's own affine
    quantizer gives the same codes as the lab's convention."""
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 2.0])
    scale = 2.5 / 255
    ratios = (x / scale).tolist()
    assert all(abs(abs(r - math.floor(r)) - 0.5) > 0.05 for r in ratios), ratios  # none near a half
    q = torch.quantize_per_tensor(x, scale, 51, torch.quint8).int_repr()
    assert q.tolist() == [0, 51, 82, 153, 255]
    source = LAB_PY.read_text()
    assert "x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 2.0])" in source and "[0, 51, 82, 153, 255]" in source


ALTERNATIVE_ANSWERS = {
    "python_scalars_and_expand": {
        "absmax_answer": '''
def absmax_quantize(x):
    x = x.to(torch.float32)
    scale = x.abs().amax() / 127
    if scale == 0:
        scale = torch.ones(())
    return torch.clamp(torch.round(x / scale), -127, 127).to(torch.int8), scale


def absmax_dequantize(q, scale):
    return q.to(torch.float32) * scale
''',
        "alibi_answer": '''
def alibi_slopes(n_heads):
    p = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * h / p) for h in range(1, p + 1)]
    slopes += [2 ** (-4 * (2 * i + 1) / p) for i in range(n_heads - p)]  # the odd slopes of 2p heads
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads, T):
    pos = torch.arange(T, dtype=torch.float32)
    return -alibi_slopes(n_heads).view(-1, 1, 1) * (pos.view(1, -1, 1) - pos.view(1, 1, -1))
''',
        "repeat_kv_answer": '''
def repeat_kv(x, n_rep):
    B, KV, T, D = x.shape
    return x[:, :, None].expand(B, KV, n_rep, T, D).reshape(B, KV * n_rep, T, D)
''',
        "cascade_answer": '''
def cascade_decision(confidence, threshold):
    return torch.ge(confidence, threshold)


def cascade_accuracy_and_cost(small_correct, large_correct, confidence, threshold, small_cost, large_cost):
    accept = cascade_decision(confidence, threshold)
    right = (small_correct & accept) | (large_correct & ~accept)
    return float(right.float().mean()), float(small_cost + large_cost * (1 - accept.float().mean()))
''',
    },
    "one_hot_and_log_space": {
        "router_answer": '''
def top_k_route(logits, k):
    import torch.nn.functional as F

    N, E = logits.shape
    probs = logits.float().softmax(dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    f = F.one_hot(indices, E).sum(dim=(0, 1)).float() / (N * k)
    return weights, indices, E * torch.dot(f, probs.mean(dim=0))
''',
        "tiled_answer": '''
def tiled_attention(q, k, v, block_size=16):
    T, D, S = q.shape[-2], q.shape[-1], k.shape[-2]
    out = torch.empty_like(q)
    for i in range(0, T, block_size):
        qi = q[..., i:i + block_size, :]
        lse = torch.full(qi.shape[:-1], float("-inf"))  # log of the running softmax denominator
        acc = torch.zeros_like(qi)  # the output so far, already normalised
        for j in range(0, S, block_size):
            s = qi @ k[..., j:j + block_size, :].transpose(-2, -1) / D ** 0.5
            block_lse = torch.logsumexp(s, dim=-1)
            new_lse = torch.logaddexp(lse, block_lse)
            acc = (acc * torch.exp(lse - new_lse)[..., None]
                   + (torch.softmax(s, dim=-1) @ v[..., j:j + block_size, :]) * torch.exp(block_lse - new_lse)[..., None])
            lse = new_lse
        out[..., i:i + block_size, :] = acc
    return out
''',
    },
    "keys_in_blocks_all_queries_at_once": {  # allowed: the (T, block) tile does not grow with S
        "tiled_answer": '''
def tiled_attention(q, k, v, block_size=16):
    scale = q.shape[-1] ** -0.5
    m = torch.full(q.shape[:-1], float("-inf"))
    l = torch.zeros(q.shape[:-1])
    acc = torch.zeros(q.shape)
    for j in range(0, k.shape[-2], block_size):
        s = (q @ k[..., j:j + block_size, :].transpose(-2, -1)) * scale  # (..., T, bk)
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(dim=-1)
        acc = acc * alpha[..., None] + p @ v[..., j:j + block_size, :]
        m = m_new
    return acc / l[..., None]
''',
    },
}


@pytest.mark.parametrize("name", sorted(ALTERNATIVE_ANSWERS))
def test_other_correct_answers_pass(name):
    assert _run_lab({**SOLUTION, **ALTERNATIVE_ANSWERS[name]}) == set()
