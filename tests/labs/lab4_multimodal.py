"""Wrong submissions for Lab 4: realistic mistakes, and the test cells each one must fail.

As for Lab 1: ``MISTAKES`` holds one mistake per entry, written as an edit of the solution's answer cell (so
the fixtures follow the solution), with the test cells that must catch it. ``WRONG`` combines mistakes in
*different* answer cells into a few submissions (each costs an autograde kernel), which also shows that
parts are graded independently: ``tests/test_grading.py`` checks that each submission loses exactly the
points of the cells in ``fails`` and keeps all others.
"""

from __future__ import annotations

from pathlib import Path

from coursekit import grading

LAB = "lab4_multimodal"
SOLUTION = grading.answers_from_solution(Path(__file__).resolve().parents[2] / "solutions" / LAB / f"{LAB}.py")


def edit(grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    """The solution's answer cell ``grade_id`` with lines replaced (see ``grading.edit_answer``)."""
    return grading.edit_answer(SOLUTION, grade_id, *replacements)


MISTAKES = {
    # Part 1: patch embedding
    "patch_plain_reshape": {  # reshape without moving the patch grid first: "patches" cross patch borders
        "answers": edit("patch_answer", ("x = images.reshape", "x = images"), ("x = x.permute", "pass")),
        "fails": {"patch_test"},
    },
    "patch_channel_last": {  # (row, col, channel) inside a patch: right for grey images only
        "answers": edit("patch_answer", ("x = x.permute", "x = x.permute(0, 2, 4, 3, 5, 1)")),
        "fails": {"patch_test"},
    },
    # Part 2: CLIP loss
    "clip_one_direction": {  # only image -> text
        "answers": edit("clip_answer", ("return (F.cross_entropy", "return F.cross_entropy(logits, targets)")),
        "fails": {"clip_test"},
    },
    "clip_no_temperature": {
        "answers": edit("clip_answer", ("logits = image_emb @", "logits = image_emb @ text_emb.T")),
        "fails": {"clip_test"},
    },
    "clip_normalise_over_batch": {  # dim=0 normalises each feature across the batch, not each embedding
        "answers": edit("clip_answer", ("image_emb = F.normalize", "image_emb = F.normalize(image_emb, dim=0)"),
                        ("text_emb = F.normalize", "text_emb = F.normalize(text_emb, dim=0)")),
        "fails": {"clip_test"},
    },
    # Part 3: zero-shot classification
    "prompts_averaged_unnormalised": {  # long prompt embeddings outvote the others
        "answers": edit("zero_shot_answer", ("return F.normalize(F.normalize(prompt_emb",
                                             "return F.normalize(prompt_emb.mean(dim=1), dim=-1)")),
        "fails": {"class_embeddings_test"},
    },
    "classify_by_raw_dot_product": {  # a long class embedding wins by its length
        "answers": edit("zero_shot_answer", ("sims = ", "sims = image_emb @ class_emb.T")),
        "fails": {"zero_shot_test"},
    },
    # Part 4: resampler block
    "resampler_attends_to_media_only": {  # Perceiver without Flamingo's concatenated latents
        "answers": edit("resampler_answer", ("kv = torch.cat", "kv = self.ln_media(media)")),
        "fails": {"resampler_test"},
    },
    "resampler_no_attention_residual": {
        "answers": edit("resampler_answer", ("latents = latents + self.out_proj", "latents = self.out_proj(attended)")),
        "fails": {"resampler_test"},
    },
    # Part 5: retention
    "decay_mask_transposed": {  # an upper-triangular mask: the future leaks in, the past is cut off
        "answers": edit("retention_answer", ("diff = n[:, None] - n[None, :]", "diff = n[None, :] - n[:, None]")),
        "fails": {"decay_mask_test"},
    },
    "decay_on_the_new_term": {  # S = S + gamma k^T v: decay applied on the wrong side
        "answers": edit("retention_answer", ("S = g * S + k", "S = S + g * k[:, :, t, :, None] * v[:, :, t, None, :]")),
        "fails": {"retention_test"},
    },
    "output_before_update": {  # o_t = q_t S_{t-1}: the current token is left out
        "answers": edit("retention_answer", ("S = g * S + k", "OUTPUT_FIRST"),
                        ("outputs.append(", "S = g * S + k[:, :, t, :, None] * v[:, :, t, None, :]"),
                        ("OUTPUT_FIRST", "outputs.append(q[:, :, t, None, :] @ S)")),
        "fails": {"retention_test"},
    },
}



SUBMISSIONS = [  # every mistake appears exactly once
    ("patch_plain_reshape", "clip_one_direction", "decay_mask_transposed"),
    ("patch_channel_last", "clip_no_temperature", "resampler_attends_to_media_only", "prompts_averaged_unnormalised"),
    ("clip_normalise_over_batch", "classify_by_raw_dot_product", "decay_on_the_new_term"),
    ("resampler_no_attention_residual", "output_before_update"),
]
WRONG = grading.combine_mistakes(MISTAKES, SUBMISSIONS)
