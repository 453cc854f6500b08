"""Tests for llmcourse.attention: the reference attention against torch's SDPA, masks, GQA, the module."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcourse.attention import (
    AttentionConfig,
    MultiHeadAttention,
    causal_mask,
    repeat_kv,
    scaled_dot_product_attention,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _qkv(B, H, T, S, D, dtype=torch.float32, device="cpu", seed=0, KV=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=dtype).to(device)
    k = torch.randn(B, KV or H, S, D, generator=g, dtype=dtype).to(device)
    v = torch.randn(B, KV or H, S, D, generator=g, dtype=dtype).to(device)
    return q, k, v


def test_causal_mask_values():
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3), expected)
    # Two new queries attending to five cached positions: aligned to the end.
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)
    with pytest.raises(ValueError, match="T=4, S=2"):
        causal_mask(4, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,H,T,S,D", [(2, 3, 5, 5, 8), (1, 1, 1, 1, 4), (3, 2, 1, 7, 5), (2, 4, 7, 3, 16)])
def test_matches_torch_sdpa_unmasked(B, H, T, S, D, dtype, device):
    q, k, v = _qkv(B, H, T, S, D, dtype, device)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    assert out.dtype == dtype and weights.shape == (B, H, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T, dtype=dtype, device=device), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1, 6, 9])
def test_matches_torch_sdpa_causal_and_scale(T, dtype, device):
    q, k, v = _qkv(2, 3, T, T, 8, dtype, device)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3).output
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_sdpa_with_masks(dtype):
    q, k, v = _qkv(2, 3, 5, 7, 8, dtype)
    g = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(2, 1, 5, 7, generator=g) > 0.3
    bool_mask[..., 0] = True  # no fully masked rows here (tested separately)
    float_mask = torch.randn(3, 5, 7, generator=g, dtype=dtype)
    for mask in (bool_mask, float_mask):
        ours = scaled_dot_product_attention(q, k, v, mask=mask).output
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL[dtype])
    # The mask actually matters (otherwise the comparison above proves little).
    assert not torch.allclose(scaled_dot_product_attention(q, k, v, mask=bool_mask).output,
                              scaled_dot_product_attention(q, k, v).output)


def test_causal_with_cache_equals_slice_of_full_attention():
    # Queries = the last 2 of 6 positions: must equal the last 2 rows of full causal attention.
    q, k, v = _qkv(1, 2, 6, 6, 4)
    full = scaled_dot_product_attention(q, k, v, is_causal=True).output
    tail = scaled_dot_product_attention(q[:, :, -2:], k, v, is_causal=True).output
    torch.testing.assert_close(tail, full[:, :, -2:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("H,KV", [(4, 2), (6, 3), (4, 1), (3, 3)])
def test_gqa_matches_torch_enable_gqa(H, KV):
    q, k, v = _qkv(2, H, 5, 5, 8, KV=KV)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).output
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                               rtol=1e-5, atol=1e-5)
    repeated = scaled_dot_product_attention(q, repeat_kv(k, H // KV), repeat_kv(v, H // KV), is_causal=True).output
    torch.testing.assert_close(ours, repeated, rtol=1e-6, atol=1e-6)


def test_repeat_kv_matches_repeat_interleave():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(repeat_kv(x, 2), torch.repeat_interleave(x, 2, dim=1))
    assert repeat_kv(x, 1) is x
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        repeat_kv(torch.randn(2, 3, 4), 2)


def test_fully_masked_rows_give_zeros_not_nan():
    q, k, v = _qkv(1, 2, 3, 4, 8)
    q.requires_grad_(True)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False  # query 1 may attend to nothing
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    assert torch.equal(weights[:, :, 1], torch.zeros_like(weights[:, :, 1]))
    assert (out[:, :, 0].abs() > 0).any()  # other rows are untouched
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    additive = torch.zeros(3, 4).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=additive).output, out, rtol=0, atol=0)


def test_errors_name_shapes():
    q, k, v = _qkv(1, 2, 3, 4, 8)
    with pytest.raises(ValueError, match=r"q \(1, 2, 3, 8\) vs k \(1, 2, 4, 6\)"):
        scaled_dot_product_attention(q, k[..., :6], v)
    with pytest.raises(ValueError, match=r"k \(1, 2, 4, 8\) vs v \(1, 2, 3, 8\)"):
        scaled_dot_product_attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match=r"mask of shape \(5, 4\)"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="enable_gqa"):
        scaled_dot_product_attention(q, k[:, :1], v, enable_gqa=True)  # k has 1 head, v 2


def test_config_validation_names_values():
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by n_heads \(4\)"):
        AttentionConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        AttentionConfig(d_model=16, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="'flash'"):
        AttentionConfig(impl="flash")
    with pytest.raises(ValueError, match="1.5"):
        AttentionConfig(dropout=1.5)
    assert AttentionConfig.tiny().n_kv_heads == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [1, 7])
def test_module_manual_equals_sdpa(T, causal, n_kv_heads, device):
    torch.manual_seed(0)
    config = AttentionConfig(d_model=24, n_heads=4, n_kv_heads=n_kv_heads, causal=causal, impl="manual")
    manual = MultiHeadAttention(config).to(device)
    fast = MultiHeadAttention(AttentionConfig(**{**config.__dict__, "impl": "sdpa"})).to(device)
    fast.load_state_dict(manual.state_dict())
    x = torch.randn(3, T, 24, device=device)
    padding = torch.ones(3, T, dtype=torch.bool, device=device)
    if T > 1:
        padding[0, -1] = False  # a padded key (not for T=1: that would mask every key)
    mask = padding[:, None, None, :]  # (B, 1, 1, T)
    bias = torch.randn(4, T, T, device=device)
    for kwargs in ({}, {"mask": mask}, {"attn_bias": bias}, {"mask": mask, "attn_bias": bias}):
        y_manual, weights = manual(x, return_weights=True, **kwargs)
        y_fast = fast(x, **kwargs)
        assert y_fast.shape == (3, T, 24) and weights.shape == (3, 4, T, T)
        torch.testing.assert_close(y_fast, y_manual, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, T, device=device), rtol=1e-5, atol=1e-5)
        # return_weights with the sdpa impl falls back to the reference code: same output
        torch.testing.assert_close(fast(x, return_weights=True, **kwargs).output, y_manual, rtol=1e-5, atol=1e-5)


def test_module_equals_torch_multihead_attention():
    """Our module with torch's weights reproduces nn.MultiheadAttention (batch_first)."""
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = MultiHeadAttention(AttentionConfig(d_model=16, n_heads=4, causal=True, impl="manual"))
    wq, wk, wv = ref.in_proj_weight.chunk(3)
    bq, bk, bv = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for proj, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    x = torch.randn(2, 5, 16)
    expected, expected_w = ref(x, x, x, attn_mask=~causal_mask(5), average_attn_weights=False)
    y, w = ours(x, return_weights=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, expected_w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_causality_future_tokens_do_not_change_the_past(impl):
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(d_model=16, n_heads=2, causal=True, impl=impl))
    x = torch.randn(2, 6, 16)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)  # change the last two tokens
    y, y2 = attn(x), attn(x2)
    assert not torch.allclose(y[:, 4:], y2[:, 4:])  # the change is visible where it may be
    torch.testing.assert_close(y[:, :4], y2[:, :4], rtol=0, atol=0)


def test_cross_attention_uses_context():
    torch.manual_seed(0)
    attn = MultiHeadAttention(AttentionConfig(d_model=16, n_heads=2, n_kv_heads=1))
    x, context = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    y, w = attn(x, context=context, return_weights=True)
    assert y.shape == (2, 3, 16) and w.shape == (2, 2, 3, 7)
    assert not torch.allclose(y, attn(x, context=context + 1.0))
    with pytest.raises(ValueError, match=r"context must be \(B=2, S, C=16\), got \(3, 7, 16\)"):
        attn(x, context=torch.randn(3, 7, 16))


def test_module_mask_shapes_rejected():
    attn = MultiHeadAttention(AttentionConfig(d_model=8, n_heads=2))
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        attn(x, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x must be \(B, T, C=8\)"):
        attn(torch.randn(1, 3, 6))
