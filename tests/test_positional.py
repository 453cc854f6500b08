"""Tests for llmcourse.positional."""
from __future__ import annotations

import math

import pytest
import torch

from llmcourse.positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_cache,
    rotate_half,
    sinusoidal_encoding,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("T,d", [(1, 4), (7, 6), (50, 33)])
def test_sinusoidal_matches_formula(T, d):
    pe = sinusoidal_encoding(T, d, dtype=torch.float64)
    assert pe.shape == (T, d)
    for pos in {0, T // 2, T - 1}:
        for i in range(d):
            angle = pos / 10000 ** (2 * (i // 2) / d)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(pe[pos, i].item() - expected) < 1e-5


def test_sinusoidal_relative_offsets_are_rotations():
    # PE[pos + k] is a fixed rotation of PE[pos] (for each frequency pair), whatever pos is.
    pe = sinusoidal_encoding(20, 8, dtype=torch.float64)
    d0 = pe[3] @ pe[5]
    d1 = pe[11] @ pe[13]
    assert abs(d0 - d1) < 1e-5  # computed in fp32
    assert abs(pe[3] @ pe[4] - pe[3] @ pe[9]) > 1e-3  # but it does depend on the offset
    with pytest.raises(ValueError, match=r"T \(0\)"):
        sinusoidal_encoding(0, 8)


def test_learned_positional_embedding_range():
    emb = LearnedPositionalEmbedding(5, 3)
    assert emb(4).shape == (4, 3)
    torch.testing.assert_close(emb(2, offset=3), emb.weight[3:5], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"positions 3\.\.5 are outside the learned range 0\.\.4"):
        emb(3, offset=3)


def test_alibi_slopes_power_of_two_and_paper_rule():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # Non-power of two (paper's rule): the 4-head slopes, then every other slope of the 8-head sequence.
    expected = [2.0 ** (-2 * (i + 1)) for i in range(4)] + [2.0 ** -1, 2.0 ** -3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected))
    assert alibi_slopes(1).tolist() == [2.0 ** -8]
    with pytest.raises(ValueError, match="0"):
        alibi_slopes(0)


@pytest.mark.parametrize("device", DEVICES)
def test_alibi_bias_values_and_kv_alignment(device):
    bias = alibi_bias(4, 5, device=device)
    assert bias.shape == (4, 5, 5) and bias.device.type == device
    slopes = alibi_slopes(4).to(device)
    assert torch.equal(bias.diagonal(dim1=1, dim2=2), torch.zeros(4, 5, device=device))
    torch.testing.assert_close(bias[:, 4, 1], -3 * slopes)
    # Two queries at the end of 5 positions = the last two rows of the full bias.
    torch.testing.assert_close(alibi_bias(4, 2, 5, device=device), bias[:, 3:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="T=3, S=2"):
        alibi_bias(4, 3, 2)


@pytest.mark.parametrize("T,D", [(1, 4), (7, 8), (9, 64)])
def test_rope_matches_hf_llama(T, D):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, T, D, generator=g)
    k = torch.randn(2, 3, T, D, generator=g)
    cos, sin = rope_cache(T, D, base=10000.0)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos[None].expand(2, T, D), sin[None].expand(2, T, D))
    torch.testing.assert_close(apply_rope(q, cos, sin), hf_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos, sin), hf_k, rtol=1e-6, atol=1e-6)


def test_rope_cache_matches_hf_rotary_embedding():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=100000.0)
    rotary = LlamaRotaryEmbedding(config)
    x = torch.zeros(1, 6, 16)
    hf_cos, hf_sin = rotary(x, torch.arange(6)[None])
    cos, sin = rope_cache(6, 16, base=100000.0)
    torch.testing.assert_close(cos, hf_cos[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sin, hf_sin[0], rtol=1e-6, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    D = 16
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    cos, sin = rope_cache(20, D, dtype=torch.float64)

    def score(m, n):  # query at position m, key at position n
        q_m = apply_rope(q[None], cos[m : m + 1], sin[m : m + 1])
        k_n = apply_rope(k[None], cos[n : n + 1], sin[n : n + 1])
        return (q_m @ k_n.T).item()

    assert abs(score(5, 2) - score(15, 12)) < 1e-9
    assert abs(score(5, 2) - score(5, 4)) > 1e-3
    x = torch.randn(3, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(apply_rope(x, cos[:3], sin[:3]).norm(dim=-1), x.norm(dim=-1))  # a rotation
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x)


def test_rope_offset_and_errors():
    full = rope_cache(10, 8)
    part = rope_cache(3, 8, offset=7)
    torch.testing.assert_close(part.cos, full.cos[7:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="7"):
        rope_cache(4, 7)
    with pytest.raises(ValueError, match=r"\(5, 8\)"):
        apply_rope(torch.randn(1, 5, 8), full.cos, full.sin)
