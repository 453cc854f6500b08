"""Wrong submissions for Lab 1: realistic mistakes, and the test cells each one must fail.

``MISTAKES`` lists one mistake per entry: the solution's answer cell edited the way students get it wrong
(a few lines changed, written as a diff of the solution, so the fixtures stay in step with it) and the
test cells that must catch it. ``WRONG`` combines mistakes in *different* parts into submissions, which
both keeps the number of notebooks to autograde small (each costs a kernel) and shows that the parts are
graded independently: ``tests/test_grading.py`` checks that every submission loses exactly the points of
the cells in ``fails`` and keeps all the others.
"""

from __future__ import annotations

from pathlib import Path

from coursekit import grading

LAB = "lab1_transformers"
SOLUTION = grading.answers_from_solution(Path(__file__).resolve().parents[2] / "solutions" / LAB / f"{LAB}.py")


def edit(grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    """The solution's answer cell ``grade_id`` with lines replaced (see ``grading.edit_answer``)."""
    return grading.edit_answer(SOLUTION, grade_id, *replacements)


ATTENTION_TESTS = {"attention_test", "attention_mask_test"}

MISTAKES = {
    # Part 1: scaled dot-product attention
    "missing_scale": {
        "answers": edit("attention_answer", ("scores = q @ k", "scores = q @ k.transpose(-2, -1)")),
        "fails": ATTENTION_TESTS,
    },
    "softmax_over_queries": {
        "answers": edit("attention_answer", ("torch.softmax(", "weights = torch.softmax(scores, dim=-2)")),
        "fails": ATTENTION_TESTS,
    },
    "transpose_with_T": {  # .T reverses every dimension of a batched tensor (and warns)
        "answers": edit("attention_answer", ("scores = q @ k", "scores = q @ k.T / math.sqrt(D)")),
        "fails": ATTENTION_TESTS,
    },
    "mask_with_zero": {  # a masked score of 0 still gets exp(0 - max) > 0 of the weight
        "answers": edit("attention_answer", ("masked_fill(", "scores = scores.masked_fill(~mask, 0.0)")),
        "fails": {"attention_mask_test"},
    },
    "mask_after_softmax": {  # zeroing weights after the softmax leaves rows that no longer sum to 1
        "answers": edit("attention_answer",
                        ("if mask is not None:", ""),
                        ("masked_fill(", ""),
                        ("torch.softmax(", "weights = torch.softmax(scores, dim=-1)\n"
                                           "if mask is not None:\n"
                                           "    weights = weights * mask")),
        "fails": {"attention_mask_test"},
    },
    # Part 2: causal mask, off by one either way
    "causal_diagonal_excluded": {
        "answers": edit("causal_mask_answer", (".tril()", "return torch.ones(T, T, dtype=torch.bool, device=device).tril(-1)")),
        "fails": {"causal_mask_test"},
    },
    "causal_ignores_device": {  # right values, always on the CPU: a model on a GPU copies the mask every step
        "answers": edit("causal_mask_answer", (".tril()", "return torch.ones(T, T, dtype=torch.bool).tril()")),
        "fails": {"causal_mask_test"},
    },
    "causal_one_future_token": {
        "answers": edit("causal_mask_answer", (".tril()", "return torch.ones(T, T, dtype=torch.bool, device=device).tril(1)")),
        "fails": {"causal_mask_test"},
    },
    # Part 3: multi-head attention
    "heads_split_wrong": {  # runs without error, but mixes positions and channels across heads
        "answers": edit("mha_answer", *[(f"{p} = self.{p}_proj(x)", f"{p} = self.{p}_proj(x).view(B, H, T, D)")
                                        for p in "qkv"]),
        "fails": {"mha_test"},
    },
    "heads_merged_wrong": {  # (B, H, T, D) reshaped straight to (B, T, C)
        "answers": edit("mha_answer", ("y = y.transpose(1, 2)", "y = y.reshape(B, T, C)")),
        "fails": {"mha_test"},
    },
    # Part 4: transformer block
    "missing_residual": {
        "answers": edit("block_answer", ("return x + self.mlp", "return self.mlp(self.ln_2(x))")),
        "fails": {"block_test"},
    },
    "post_norm": {  # the 2017 layout, where the instructions ask for pre-norm
        "answers": edit("block_answer", ("x = x + self.attn", "x = self.ln_1(x + self.attn(x, mask))"),
                        ("return x + self.mlp", "return self.ln_2(x + self.mlp(x))")),
        "fails": {"block_test"},
    },
    # Part 5: positional encoding
    "positional_i_not_2i": {  # 10000^(i/d) instead of 10000^(2i/d): frequencies decay half as fast
        "answers": edit("positional_answer", ("angle = ", "angle = pos / base ** (two_i / 2 / d_model)")),
        "fails": {"positional_test"},
    },
    # Part 6: parameter count
    "params_no_biases": {
        "answers": edit("params_answer", ("attention = ", "attention = 4 * C * C"), ("mlp = ", "mlp = 2 * C * d_ff")),
        "fails": {"params_test"},
    },
    "params_no_layer_norms": {
        "answers": edit("params_answer", ("layer_norms = ", "layer_norms = 0"), ("final_norm = ", "final_norm = 0")),
        "fails": {"params_test"},
    },
    "params_no_positions": {
        "answers": edit("params_answer", ("embeddings = ", "embeddings = vocab_size * C")),
        "fails": {"params_test"},
    },
    "params_untied_head": {  # counts the output head as a second V x C matrix
        "answers": edit("params_answer", ("embeddings = ", "embeddings = 2 * vocab_size * C + context_length * C")),
        "fails": {"params_test"},
    },
}



SUBMISSIONS = [  # every mistake appears exactly once
    ("missing_scale",),  # alone: multi-head attention and the block must not pay for it
    ("softmax_over_queries", "causal_diagonal_excluded"),
    ("mask_with_zero", "heads_split_wrong"),
    ("missing_residual", "params_no_biases"),
    ("post_norm", "positional_i_not_2i"),
    ("mask_after_softmax", "causal_one_future_token", "heads_merged_wrong", "params_no_layer_norms"),
    ("transpose_with_T", "params_no_positions"),
    ("params_untied_head", "causal_ignores_device"),
]
WRONG = grading.combine_mistakes(MISTAKES, SUBMISSIONS)
