"""The references behind Lab 1's hidden tests are right, and its test helpers behave.

Lab 1 grades students against ``llmcourse`` (attention, causal mask, multi-head attention, block,
sinusoidal encoding, parameter count) and PyTorch's fused attention. Here each of those references is
checked against an independent one (hand formulas in float64, ``torch.nn.MultiheadAttention``, Hugging
Face ``GPT2LMHeadModel``), and the helper cell the test cells rely on (``reference_parts``,
``load_parameters``, ``expect_close``, the reference modules) is run on its own. The end-to-end grading
of the lab (solution, release, wrong submissions) is in ``tests/test_grading.py``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coursekit import grading
from llmcourse import attention, params, positional, transformer

from conftest import REPO, graded_cells, lab_spec, run_lab_in_process

LAB_PY = REPO / "solutions" / "lab1_transformers" / "lab1_transformers.py"


def _mistakes() -> dict:
    return lab_spec("lab1_transformers").MISTAKES


def _lab_namespace(answers: dict[str, str], run_tests: bool = False) -> tuple[dict, set[str]]:
    return run_lab_in_process(LAB_PY, answers, run_tests)


@pytest.fixture(scope="module")
def lab() -> dict:
    """The lab's setup and helper cells plus the solution's answers, executed in one namespace."""
    return _lab_namespace(grading.answers_from_solution(LAB_PY))[0]


def _naive_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D)) v in float64, written out with exp and sums."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("...td,...sd->...ts", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(-math.inf, dtype=torch.float64))
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = e / e.sum(-1, keepdim=True)
    return torch.einsum("...ts,...sd->...td", weights, v), weights


# ----------------------------------------------------------------------------- attention references
@pytest.mark.parametrize("lead, T, S, D, Dv", [((), 4, 6, 8, 8), ((3,), 1, 1, 2, 3), ((2, 4), 7, 3, 5, 9),
                                               ((2, 1, 3), 6, 4, 3, 2), ((2,), 4, 5, 64, 8)])
def test_attention_references_agree_with_the_formula(lead, T, S, D, Dv):
    torch.manual_seed(0)
    q, k, v = torch.randn(*lead, T, D), torch.randn(*lead, S, D), torch.randn(*lead, S, Dv)
    want_out, want_w = _naive_attention(q, k, v)
    ref = attention.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v).double(), want_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ref.output.double(), want_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ref.weights.double(), want_w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 1, 7), (2, 3, 5, 7), (1, 7)])
def test_masked_attention_references_agree_with_the_formula(mask_shape):
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    mask = torch.rand(mask_shape) < 0.5
    mask[..., 0] = True  # no query without a visible key
    assert not mask.all(), "the mask must hide something for the comparison to mean anything"
    want_out, want_w = _naive_attention(q, k, v, mask)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double(), want_out,
                               atol=1e-5, rtol=1e-4)
    ref = attention.scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(ref.weights.double(), want_w, atol=1e-6, rtol=1e-5)
    assert (ref.weights[~mask.expand(2, 3, 5, 7)] == 0).all()


@pytest.mark.parametrize("T", [1, 2, 5, 13])
def test_reference_causal_mask_is_lower_triangular(T):
    expected = torch.tensor([[j <= i for j in range(T)] for i in range(T)])
    assert torch.equal(attention.causal_mask(T), expected)


# ----------------------------------------------------------------------------- module references
def _torch_mha(reference: nn.Module, d_model: int, n_heads: int) -> nn.MultiheadAttention:
    """torch.nn.MultiheadAttention holding the weights of the lab's reference multi-head attention."""
    mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([reference.q_proj.weight, reference.k_proj.weight, reference.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([reference.q_proj.bias, reference.k_proj.bias, reference.v_proj.bias]))
        mha.out_proj.weight.copy_(reference.out_proj.weight)
        mha.out_proj.bias.copy_(reference.out_proj.bias)
    return mha.eval()


@pytest.mark.parametrize("B, T, C, H", [(2, 6, 16, 4), (1, 1, 8, 2), (3, 7, 10, 5), (2, 4, 6, 1), (1, 9, 16, 16)])
def test_reference_mha_equals_torch_multihead_attention(lab, B, T, C, H):
    reference, weights = lab["reference_mha"](C, H, seed=3)
    assert set(weights) == {f"{p}_proj.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")}
    torch_mha = _torch_mha(reference, C, H)
    x = torch.randn(B, T, C)
    causal = attention.causal_mask(T)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), torch_mha(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-4)
        # torch's boolean attn_mask means "may NOT attend": the opposite of the course's convention.
        torch.testing.assert_close(reference(x, causal), torch_mha(x, x, x, attn_mask=~causal, need_weights=False)[0],
                                   atol=1e-5, rtol=1e-4)


def _hand_block(x, w, n_heads, mask=None):
    """The pre-norm block written with torch primitives from the lab-layout weights ``w``."""
    C = x.shape[-1]
    mha = nn.MultiheadAttention(C, n_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w[f"attn.{p}_proj.weight"] for p in "qkv"]))
        mha.in_proj_bias.copy_(torch.cat([w[f"attn.{p}_proj.bias"] for p in "qkv"]))
        mha.out_proj.weight.copy_(w["attn.out_proj.weight"])
        mha.out_proj.bias.copy_(w["attn.out_proj.bias"])
    h = F.layer_norm(x, (C,), w["ln_1.weight"], w["ln_1.bias"])
    x = x + mha(h, h, h, attn_mask=None if mask is None else ~mask, need_weights=False)[0]
    h = F.layer_norm(x, (C,), w["ln_2.weight"], w["ln_2.bias"])
    h = F.linear(F.gelu(F.linear(h, w["mlp.0.weight"], w["mlp.0.bias"])), w["mlp.2.weight"], w["mlp.2.bias"])
    return x + h


@pytest.mark.parametrize("B, T, C, H, d_ff", [(2, 5, 8, 2, None), (1, 1, 12, 3, None), (3, 7, 10, 5, 7)])
def test_reference_block_is_the_pre_norm_formula(lab, B, T, C, H, d_ff):
    reference, weights = lab["reference_block"](C, H, d_ff, seed=4)
    d_ff = 4 * C if d_ff is None else d_ff
    assert weights["mlp.0.weight"].shape == (d_ff, C) and weights["mlp.2.weight"].shape == (C, d_ff)
    assert not torch.allclose(weights["ln_1.weight"], weights["ln_2.weight"]), "LayerNorms must differ to catch a swap"
    x = torch.randn(B, T, C)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), _hand_block(x, weights, H), atol=1e-5, rtol=1e-4)
        causal = attention.causal_mask(T)
        torch.testing.assert_close(reference(x, causal), _hand_block(x, weights, H, causal), atol=1e-5, rtol=1e-4)


def test_solution_modules_load_the_reference_layout(lab):
    """The layout the instructions give is exactly the reference's: copying weights gives the same outputs."""
    torch.manual_seed(5)
    x = torch.randn(2, 5, 12)
    reference, weights = lab["reference_mha"](12, 3)
    ours = lab["MultiHeadAttention"](12, 3)
    lab["load_parameters"](ours, weights)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=1e-5)
    reference, weights = lab["reference_block"](12, 3)
    block = lab["TransformerBlock"](12, 3)
    assert set(dict(block.named_parameters())) == set(weights)
    lab["load_parameters"](block, weights)
    torch.testing.assert_close(block(x), reference(x), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- positions and parameters
@pytest.mark.parametrize("T, d, base", [(1, 2, 10000.0), (7, 6, 10000.0), (33, 32, 10000.0), (9, 10, 100.0)])
def test_reference_sinusoidal_encoding_is_the_formula(T, d, base):
    expected = torch.tensor([[math.sin(p / base ** (c / d)) if c % 2 == 0 else math.cos(p / base ** ((c - 1) / d))
                              for c in range(d)] for p in range(T)], dtype=torch.float64)
    torch.testing.assert_close(positional.sinusoidal_encoding(T, d, base=base).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("V, T_max, C, L, d_ff, H", [(65, 32, 32, 2, None, 4), (101, 7, 12, 3, 20, 3),
                                                     (11, 1, 6, 1, 5, 2), (3, 5, 10, 4, None, 5)])
def test_reference_count_equals_hugging_face_gpt2(V, T_max, C, L, d_ff, H):
    """ArchSpec, llmcourse's GPT and Hugging Face's GPT-2 agree on the parameter count."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T_max, n_embd=C, n_layer=L, n_head=H, n_inner=d_ff))
    ours = transformer.GPT(transformer.GPTConfig(vocab_size=V, block_size=T_max, d_model=C, n_layer=L, n_head=H,
                                                 d_ff=d_ff, activation="gelu"))
    spec = params.ArchSpec(vocab_size=V, context_length=T_max, d_model=C, n_layers=L, n_heads=H, d_ff=d_ff)
    n_hf = sum(p.numel() for p in hf.parameters())
    assert n_hf == sum(p.numel() for p in ours.parameters()) == params.count_parameters(spec).total


def test_reference_count_of_published_models(lab):
    """GPT-2 small is 124,439,808 parameters (Hugging Face's count); the solution agrees with ArchSpec on
    every model the hidden tests use."""
    assert params.count_parameters(params.PUBLISHED_MODELS["gpt2-small"]).total == 124_439_808
    for key in ("gpt2-small", "gpt2-medium", "gpt2-xl", "gpt3-175b"):
        spec = params.PUBLISHED_MODELS[key]
        got = lab["count_gpt_parameters"](spec.vocab_size, spec.context_length, spec.d_model, spec.n_layers)
        assert got == params.count_parameters(spec).total, key


# ----------------------------------------------------------------------------- helper behaviour
def test_reference_parts_swaps_and_restores(lab):
    mine, my_mask = lab["scaled_dot_product_attention"], lab["causal_mask"]
    had_mha = lab.pop("MultiHeadAttention")
    try:
        with lab["reference_parts"]("scaled_dot_product_attention", "MultiHeadAttention"):
            assert lab["scaled_dot_product_attention"] is not mine
            assert lab["MultiHeadAttention"] is lab["ReferenceMultiHeadAttention"]
        assert lab["scaled_dot_product_attention"] is mine
        assert "MultiHeadAttention" not in lab, "a part the student never defined must be removed again"
        with pytest.raises(AssertionError), lab["reference_parts"]("causal_mask"):
            raise AssertionError("a failing test inside the block")
        assert lab["causal_mask"] is my_mask, "the student's function must come back after a failing test"
    finally:
        lab["MultiHeadAttention"] = had_mha


@pytest.mark.parametrize("returns", ["pair", "output", "not written"])
def test_reference_attention_follows_the_students_return_convention(lab, returns):
    def student(q, k, v, mask=None):
        if returns == "not written":
            raise NotImplementedError()
        out = attention.scaled_dot_product_attention(q, k, v, mask=mask)
        return tuple(out) if returns == "pair" else out.output

    reference = lab["_reference_attention_like"](student)
    q = torch.randn(2, 3, 4)
    result = reference(q, q, q, attention.causal_mask(3))
    assert isinstance(result, tuple) == (returns != "output")  # the specification (a pair) by default
    expected = attention.scaled_dot_product_attention(q, q, q, mask=attention.causal_mask(3)).output
    torch.testing.assert_close(lab["attention_output"](result), expected)


def test_load_parameters_explains_a_wrong_layout(lab):
    _, weights = lab["reference_block"](8, 2)
    wrong_names = nn.Module()
    wrong_names.ln1 = nn.LayerNorm(8)
    with pytest.raises(AssertionError, match="has no parameter 'ln_1.weight'"):
        lab["load_parameters"](wrong_names, weights)
    wrong_shape = nn.Module()
    wrong_shape.ln_1 = nn.LayerNorm(4)
    with pytest.raises(AssertionError, match=r"'ln_1.weight' has shape \(4,\), expected \(8,\)"):
        lab["load_parameters"](wrong_shape, {"ln_1.weight": weights["ln_1.weight"]})


def test_expect_close_messages_do_not_reveal_expected_values(lab):
    expect_close = lab["expect_close"]
    expected = torch.tensor([0.123456, 0.654321])
    expect_close(expected + 1e-7, expected, "close enough")
    with pytest.raises(AssertionError) as err:
        expect_close(torch.tensor([0.5, 0.654321]), expected, "the output")
    assert "1 of 2 values are wrong" in str(err.value) and "0.1234" not in str(err.value)
    with pytest.raises(AssertionError, match=r"1 NaN"):
        expect_close(torch.tensor([math.nan, 0.654321]), expected, "the output")
    with pytest.raises(AssertionError, match=r"shape \(3,\), expected \(2,\)"):
        expect_close(torch.zeros(3), expected, "the output")
    with pytest.raises(AssertionError, match="expected a torch.Tensor, got list"):
        expect_close([0.1, 0.2], expected, "the output")


# ----------------------------------------------------------------------------- the test cells, in-process
# A quick version of tests/test_grading.py (no kernels, no nbgrader) that checks every mistake on its own.
def test_solution_passes_every_test_cell():
    _, failed = _lab_namespace(grading.answers_from_solution(LAB_PY), run_tests=True)
    assert not failed


def test_unanswered_lab_fails_every_test_cell():
    _, failed = _lab_namespace({}, run_tests=True)
    assert failed == graded_cells(LAB_PY)


@pytest.mark.parametrize("name", sorted(_mistakes()))
def test_each_mistake_fails_exactly_its_test_cells(name):
    mistake = _mistakes()[name]
    answers = {**grading.answers_from_solution(LAB_PY), **mistake["answers"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k.T on a batched tensor warns
        _, failed = _lab_namespace(answers, run_tests=True)
    assert failed == mistake["fails"]


# Other correct answers, written the ways students do: the tests must accept every one of them.
ALTERNATIVE_ANSWERS = {
    "einsum_output_only": {  # no weights returned; the MHA that uses it expects a tensor
        "attention_answer": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    q = q / q.shape[-1] ** 0.5
    scores = torch.einsum("...td,...sd->...ts", q, k)
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(-1e9))
    return torch.einsum("...ts,...sd->...td", F.softmax(scores, dim=-1), v)
''',
        "mha_answer": '''
class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        b, t, c = x.shape
        heads = [p(x).reshape(b, t, self.h, c // self.h).permute(0, 2, 1, 3) for p in (self.q_proj, self.k_proj, self.v_proj)]
        out = scaled_dot_product_attention(*heads, mask=mask)
        return self.out_proj(out.permute(0, 2, 1, 3).contiguous().view(b, t, c))
''',
    },
    "mT_and_where": {
        "attention_answer": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = (q @ k.mT) * (1.0 / math.sqrt(k.size(-1)))
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    attn = scores.softmax(dim=-1)
    return attn @ v, attn
''',
        "causal_mask_answer": '''
def causal_mask(T, device=None):
    i = torch.arange(T, device=device)
    return i[:, None] >= i[None, :]
''',
        "block_answer": '''
class TransformerBlock(nn.Module):
    def __init__(self, d_model, n_heads, d_ff=None):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads)
        hidden = d_ff or 4 * d_model
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x, mask=None):
        h = x + self.attn(self.ln_1(x), mask=mask)
        out = h + self.mlp(self.ln_2(h))
        return out
''',
        "positional_answer": '''
def sinusoidal_encoding(T, d_model, base=10000.0):
    position = torch.arange(T).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(base) / d_model))
    return torch.stack([torch.sin(position * div_term), torch.cos(position * div_term)], dim=-1).reshape(T, d_model)
''',
        "params_answer": '''
def count_gpt_parameters(vocab_size, context_length, d_model, n_layers, d_ff=None):
    d_ff = d_ff or 4 * d_model
    per_block = 4 * d_model * d_model + 2 * d_model * d_ff + d_ff + 9 * d_model
    return (vocab_size + context_length) * d_model + n_layers * per_block + 2 * d_model
''',
    },
    "numpy_and_triu": {
        "causal_mask_answer": '''
def causal_mask(T, device=None):
    return ~torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), diagonal=1)
''',
        "positional_answer": '''
import numpy as np

def sinusoidal_encoding(T, d_model, base=10000.0):
    pe = np.zeros((T, d_model))
    for pos in range(T):
        for i in range(0, d_model, 2):
            pe[pos, i] = np.sin(pos / base ** (i / d_model))
            pe[pos, i + 1] = np.cos(pos / base ** (i / d_model))
    return torch.from_numpy(pe)
''',
        "mha_answer": '''
class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(d_model, d_model))

    def forward(self, x, mask=None):
        B, T, C = x.shape
        split = lambda t: t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)
        out = scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), mask)[0]
        return self.out_proj(out.transpose(1, 2).flatten(2))
''',
    },
}


@pytest.mark.parametrize("name", sorted(ALTERNATIVE_ANSWERS))
def test_other_correct_answers_pass(name):
    answers = {**grading.answers_from_solution(LAB_PY), **ALTERNATIVE_ANSWERS[name]}
    _, failed = _lab_namespace(answers, run_tests=True)
    assert not failed
