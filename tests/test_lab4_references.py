"""Lab 4 in-process: the solution passes every test cell, the untouched release fails every one, each
mistake of ``tests/labs/lab4_multimodal.py`` fails exactly its cells, and other correct answers (written
differently from the solution) pass. The references the hidden tests use are themselves checked against
independent formulas in ``test_clip.py``, ``test_flamingo.py``, ``test_retention.py`` and ``test_vit.py``;
the end-to-end grading with nbgrader is in ``tests/test_grading.py``."""
from __future__ import annotations

import warnings

import pytest
import torch

from coursekit import grading, nbtools

from conftest import REPO, graded_cells, lab_spec, run_lab_in_process

LAB_PY = REPO / "solutions" / "lab4_multimodal" / "lab4_multimodal.py"
TEST_CELLS = {"patch_test", "clip_test", "class_embeddings_test", "zero_shot_test", "resampler_test",
              "decay_mask_test", "retention_test"}


def _mistakes() -> dict:
    return lab_spec("lab4_multimodal").MISTAKES


def _run_lab(answers: dict[str, str]) -> set[str]:
    """The grade_ids of the test cells (hidden tests included) that fail with these answers."""
    return run_lab_in_process(LAB_PY, answers, run_tests=True)[1]


SOLUTION = grading.answers_from_solution(LAB_PY)


def test_lab_has_the_parts_the_tests_expect():
    assert graded_cells(LAB_PY) == TEST_CELLS


def test_solution_passes_every_test_cell():
    torch.manual_seed(0)
    assert _run_lab(SOLUTION) == set()


def test_unanswered_lab_fails_every_test_cell():
    assert _run_lab({}) == TEST_CELLS


@pytest.mark.parametrize("name", sorted(_mistakes()))
def test_each_mistake_fails_exactly_its_test_cells(name):
    mistake = _mistakes()[name]
    assert _run_lab({**SOLUTION, **mistake["answers"]}) == mistake["fails"]


ALTERNATIVE_ANSWERS = {
    "unfold_and_manual_losses": {
        "patch_answer": '''
def patch_embed(images, weight, bias, patch_size):
    cols = F.unfold(images, kernel_size=patch_size, stride=patch_size)  # (B, C*P*P, N), same order as Conv2d
    return torch.einsum("bkn,dk->bnd", cols, weight) + bias
''',
        "clip_answer": '''
def clip_loss(image_emb, text_emb, temperature):
    i = image_emb / image_emb.norm(dim=1, keepdim=True)
    t = text_emb / text_emb.norm(dim=1, keepdim=True)
    logits = (i @ t.T) / temperature
    image_to_text = -torch.log_softmax(logits, dim=1).diagonal().mean()
    text_to_image = -torch.log_softmax(logits, dim=0).diagonal().mean()
    return 0.5 * (image_to_text + text_to_image)
''',
        "zero_shot_answer": '''
def class_embeddings(prompt_emb):
    unit = prompt_emb / prompt_emb.norm(dim=-1, keepdim=True)
    mean = unit.sum(dim=1) / unit.shape[1]
    return mean / mean.norm(dim=-1, keepdim=True)


def zero_shot_classify(image_emb, class_emb):
    return F.cosine_similarity(image_emb[:, None, :], class_emb[None, :, :], dim=-1).argmax(dim=1)
''',
    },
    "conv_and_manual_attention": {
        "patch_answer": '''
def patch_embed(images, weight, bias, patch_size):
    D = weight.shape[0]
    out = F.conv2d(images, weight.view(D, images.shape[1], patch_size, patch_size), bias, stride=patch_size)
    return out.flatten(2).transpose(1, 2)
''',
        "resampler_answer": SOLUTION["resampler_answer"].split("    def forward")[0] + '''    def forward(self, latents, media):
        B, L, D = latents.shape
        H, Dh = self.n_heads, D // self.n_heads
        z = self.ln_latents(latents)
        kv = torch.cat([self.ln_media(media), z], dim=1)
        heads = []
        for h in range(H):
            cols = slice(h * Dh, (h + 1) * Dh)
            q = self.q_proj(z)[..., cols]
            k = self.k_proj(kv)[..., cols]
            v = self.v_proj(kv)[..., cols]
            weights = torch.softmax(q @ k.transpose(1, 2) / Dh ** 0.5, dim=-1)
            heads.append(weights @ v)
        latents = latents + self.out_proj(torch.cat(heads, dim=-1))
        h = self.ln_ff(latents)
        return latents + self.ff_down(0.5 * self.ff_up(h) * (1 + torch.erf(self.ff_up(h) / 2 ** 0.5)))
''',
        "retention_answer": '''
def decay_mask(T, gamma):
    n = torch.arange(T, dtype=torch.float64)
    return (gamma ** (n[:, None] - n[None, :]) * torch.ones(T, T, dtype=torch.float64).tril()).tril()


def retention_recurrent(q, k, v, gamma):
    B, H, T, Dk = q.shape
    state = q.new_zeros(B, H, Dk, v.shape[-1])
    outs = []
    for t in range(T):
        state = gamma[None, :, None, None] * state + torch.einsum("bhk,bhv->bhkv", k[:, :, t], v[:, :, t])
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    return torch.stack(outs, dim=2), state
''',
    },
}


@pytest.mark.parametrize("name", sorted(ALTERNATIVE_ANSWERS))
def test_other_correct_answers_pass(name):
    assert _run_lab({**SOLUTION, **ALTERNATIVE_ANSWERS[name]}) == set()


def test_expect_close_messages_do_not_reveal_expected_values():
    space: dict = {}
    for cell in nbtools.read_py(LAB_PY).cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") in ("setup", "test_helpers"):
            with warnings.catch_warnings():
                exec(cell.source, space)
    with pytest.raises(AssertionError) as info:
        space["expect_close"](torch.tensor([1.0, 2.0]), torch.tensor([1.0, 123.456]), "thing")
    assert "123" not in str(info.value) and "1 of 2 values are wrong" in str(info.value)
    with pytest.raises(AssertionError, match=r"shape \(2,\), expected \(3,\)"):
        space["expect_close"](torch.zeros(2), torch.zeros(3), "thing")
