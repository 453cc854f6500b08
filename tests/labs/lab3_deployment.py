"""Wrong submissions for Lab 3: realistic mistakes, and the test cells each one must fail.

As for lab 1: ``MISTAKES`` lists one mistake per entry (the solution's answer cell with a line or two
changed, so the fixtures follow the solution) and the test cells that must catch it; ``WRONG`` combines
mistakes in *different* parts into a few submissions, and ``tests/test_grading.py`` checks that each
loses exactly the points of the cells in ``fails`` and keeps all the others.
"""

from __future__ import annotations

from pathlib import Path

from coursekit import grading

LAB = "lab3_deployment"
SOLUTION = grading.answers_from_solution(Path(__file__).resolve().parents[2] / "solutions" / LAB / f"{LAB}.py")


def edit(grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    """The solution's answer cell ``grade_id`` with lines replaced (see ``grading.edit_answer``)."""
    return grading.edit_answer(SOLUTION, grade_id, *replacements)


FULL_SCORE_ATTENTION = '''def tiled_attention(q, k, v, block_size=16):
    """Correct values, but the whole (T, S) score matrix in memory: not what the part asks for."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v
'''

ROW_AT_A_TIME_ATTENTION = '''def tiled_attention(q, k, v, block_size=16):
    """Exact softmax one query row at a time: right values, but each row's scores span all S keys."""
    out = torch.empty_like(q)
    for i in range(q.shape[-2]):
        s = q[..., i:i + 1, :] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., 1, S)
        out[..., i:i + 1, :] = torch.softmax(s, dim=-1) @ v
    return out
'''

MISTAKES = {
    # Part 1: absmax
    "absmax_scale_from_mean": {  # the largest values fall off the grid and are clamped
        "answers": edit("absmax_answer", ("amax = x.abs().max()", "amax = x.abs().mean()")),
        "fails": {"absmax_test"},
    },
    "absmax_truncates": {  # .to(int8) rounds towards zero
        "answers": edit("absmax_answer", ("q = torch.round(", "q = (x / scale).clamp(-127, 127).to(torch.int8)")),
        "fails": {"absmax_test"},
    },
    # Part 2: zero-point
    "zeropoint_not_rounded": {  # a fractional zero point: 0 no longer comes back as 0
        "answers": edit("zeropoint_answer", ("zero_point = torch.round(", "zero_point = -lo / scale")),
        "fails": {"zeropoint_test"},
    },
    "zeropoint_not_clamped": {  # the top code can round to 256, which wraps to 0 in a byte
        "answers": edit("zeropoint_answer", ("q = (torch.round(", "q = (torch.round(x / scale) + zero_point).to(torch.uint8)")),
        "fails": {"zeropoint_test"},
    },
    # Part 3: ALiBi
    "alibi_geometric_for_any_n": {  # 2^(-8h/n) also for 12 or 9 heads: not the paper's slopes
        "answers": edit("alibi_answer", ("if math.log2(n_heads).is_integer():", "if True:")),
        "fails": {"alibi_test"},
    },
    "alibi_sign_flipped": {  # far keys get a bonus instead of a penalty
        "answers": edit("alibi_answer", ("return -alibi_slopes(", "return alibi_slopes(n_heads)[:, None, None] * distance")),
        "fails": {"alibi_test"},
    },
    # Part 4: repeat_kv
    "repeat_kv_tiles_heads": {  # [a, b] -> [a, b, a, b, ...]: query heads read the wrong key/value head
        "answers": edit("repeat_kv_answer", ("repeat_interleave", "return x.repeat(1, n_rep, 1, 1)")),
        "fails": {"repeat_kv_test"},
    },
    # Part 5: router
    "router_softmax_after_topk": {  # top-1 weights become exactly 1: the router gets no gradient
        "answers": edit("router_answer", ("weights, indices = probs.topk(",
                                          "top_logits, indices = logits.float().topk(k, dim=-1)\n"
                                          "weights = torch.softmax(top_logits, dim=-1)")),
        "fails": {"router_test"},
    },
    "router_loss_not_scaled": {  # without the factor E a balanced router scores 1/E
        "answers": edit("router_answer", ("aux_loss = E *", "aux_loss = (f * P).sum()")),
        "fails": {"router_test"},
    },
    "router_softmax_in_input_dtype": {  # bf16 logits give a bf16 softmax: probabilities off by up to 0.4%
        "answers": edit("router_answer", ("probs = torch.softmax(logits.float(), dim=-1)",
                                          "probs = torch.softmax(logits, dim=-1).float()")),
        "fails": {"router_test"},
    },
    "router_fraction_over_tokens": {  # dividing by N, not N * k: f sums to k for top-k routing
        "answers": edit("router_answer", ("f = torch.bincount(", "f = torch.bincount(indices.reshape(-1), minlength=E).float() / N")),
        "fails": {"router_test"},
    },
    # Part 6: tiled attention
    "tiled_sum_not_rescaled": {  # the running sum keeps the scale of an old maximum
        "answers": edit("tiled_answer", ("l = l * alpha", "l = l + p.sum(dim=-1)")),
        "fails": {"tiled_test"},
    },
    "tiled_output_not_rescaled": {
        "answers": edit("tiled_answer", ("acc = acc * alpha", "acc = acc + p @ v[..., j:j + block_size, :]")),
        "fails": {"tiled_test"},
    },
    "tiled_exact_row_at_a_time": {  # right values, and small for T = S, but a (1, S) row grows with the keys
        "answers": {"tiled_answer": ROW_AT_A_TIME_ATTENTION},
        "fails": {"tiled_test"},
    },
    "tiled_full_score_matrix": {  # right values, quadratic memory: caught by the hidden memory check
        "answers": {"tiled_answer": FULL_SCORE_ATTENTION},
        "fails": {"tiled_test"},
    },
    # Part 7: cascade
    "cascade_escalates_the_confident": {
        "answers": edit("cascade_answer", ("return confidence >= threshold", "return confidence < threshold")),
        "fails": {"cascade_test"},
    },
    "cascade_strict_threshold": {  # a confidence equal to the threshold must be accepted
        "answers": edit("cascade_answer", ("return confidence >= threshold", "return confidence > threshold")),
        "fails": {"cascade_test"},
    },
    "cascade_escalation_skips_small_cost": {  # an escalated query still paid for the small model
        "answers": edit("cascade_answer", ("cost = small_cost +",
                                           "cost = (accept.float() * small_cost + (~accept).float() * large_cost).mean()")),
        "fails": {"cascade_test"},
    },
}



SUBMISSIONS = [  # every mistake appears exactly once
    ("absmax_scale_from_mean",),  # alone: every other part keeps its points
    ("absmax_truncates", "zeropoint_not_rounded", "alibi_geometric_for_any_n", "repeat_kv_tiles_heads"),
    ("zeropoint_not_clamped", "alibi_sign_flipped", "router_softmax_after_topk", "tiled_sum_not_rescaled"),
    ("router_loss_not_scaled", "tiled_full_score_matrix", "cascade_escalates_the_confident"),
    ("router_fraction_over_tokens", "tiled_output_not_rescaled", "cascade_strict_threshold"),
    ("router_softmax_in_input_dtype", "tiled_exact_row_at_a_time", "cascade_escalation_skips_small_cost"),
]
WRONG = grading.combine_mistakes(MISTAKES, SUBMISSIONS)
