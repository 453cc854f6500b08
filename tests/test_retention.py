"""Tests for llmcourse.retention: the parallel, recurrent and chunkwise forms give identical outputs and
states, match the unrolled sum, continue across calls, are causal; the multi-scale retention layer."""
from __future__ import annotations

import pytest
import torch

from llmcourse.retention import (
    MultiScaleRetention,
    RetentionConfig,
    decay_mask,
    default_gammas,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _qkv(B=2, H=3, T=9, Dk=4, Dv=5, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype).to(device)
    return make(B, H, T, Dk), make(B, H, T, Dk), make(B, H, T, Dv)


def _unrolled(q, k, v, gamma):
    """o_n = sum_{m <= n} gamma^(n-m) (q_n . k_m) v_m, written as loops (the definition)."""
    B, H, T, _ = q.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for h in range(H):
        g = float(gamma[h]) if torch.is_tensor(gamma) else gamma
        for n in range(T):
            for m in range(n + 1):
                w = g ** (n - m) * (q[:, h, n].double() * k[:, h, m].double()).sum(-1, keepdim=True)  # (B, 1)
                out[:, h, n] += w * v[:, h, m].double()
    return out


def test_decay_mask_by_hand():
    D = decay_mask(3, 0.5)
    expected = torch.tensor([[[1.0, 0, 0], [0.5, 1, 0], [0.25, 0.5, 1]]], dtype=torch.float64)
    assert torch.equal(D, expected)
    per_head = decay_mask(2, torch.tensor([0.5, 0.9]))
    assert per_head.shape == (2, 2, 2) and per_head[1, 1, 0] == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        decay_mask(3, 1.5)
    with pytest.raises(ValueError, match="T must be"):
        decay_mask(0, 0.5)


@pytest.mark.parametrize("T", [1, 5, 23])
@pytest.mark.parametrize("gamma", [0.9, torch.tensor([0.5, 0.97, 1.0])])
def test_parallel_equals_unrolled_sum(T, gamma):
    q, k, v = _qkv(T=T)
    torch.testing.assert_close(retention_parallel(q, k, v, gamma).output, _unrolled(q, k, v, gamma), **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T,chunk", [(1, 4), (7, 1), (16, 4), (37, 8), (20, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_three_forms_identical(T, chunk, with_state, dtype, device):
    q, k, v = _qkv(T=T, dtype=dtype, device=device)
    gamma = default_gammas(3)
    state = torch.randn(2, 3, 4, 5, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device) \
        if with_state else None
    par = retention_parallel(q, k, v, gamma, state)
    rec = retention_recurrent(q, k, v, gamma, state)
    chk = retention_chunkwise(q, k, v, gamma, state, chunk_size=chunk)
    for out in (rec, chk):
        assert out.output.dtype == dtype and out.output.shape == (2, 3, T, 5) and out.state.shape == (2, 3, 4, 5)
        torch.testing.assert_close(out.output, par.output, **TOL[dtype])
        torch.testing.assert_close(out.state, par.state, **TOL[dtype])


def test_split_sequence_continues_exactly():
    """Process 30 tokens at once, or 11 in parallel then 19 recurrently from the returned state: same."""
    q, k, v = _qkv(T=30)
    gamma = torch.tensor([0.8, 0.9, 0.99])
    full = retention_parallel(q, k, v, gamma)
    first = retention_parallel(q[:, :, :11], k[:, :, :11], v[:, :, :11], gamma)
    rest = retention_recurrent(q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], gamma, first.state)
    torch.testing.assert_close(torch.cat([first.output, rest.output], dim=2), full.output)
    torch.testing.assert_close(rest.state, full.state)


def test_decay_is_applied_to_the_past_not_the_present():
    """With one token the output is q.k v whatever gamma is (the newest token enters with weight 1);
    a wrong recurrence S = S + gamma k^T v would scale it by gamma."""
    q, k, v = _qkv(T=1)
    for gamma in (0.1, 0.5, 1.0):
        torch.testing.assert_close(retention_recurrent(q, k, v, gamma).output, (q * k).sum(-1, keepdim=True) * v)
    q, k, v = _qkv(T=6)
    assert not torch.allclose(retention_recurrent(q, k, v, 0.5).output, retention_recurrent(q, k, v, 0.9).output)


def test_causal():
    q, k, v = _qkv(T=12)
    changed = [t.clone() for t in (q, k, v)]
    for t in changed:
        t[:, :, 8:] += 1.0
    for form in (retention_parallel, retention_recurrent, retention_chunkwise):
        a, b = form(q, k, v, 0.9).output, form(*changed, 0.9).output
        torch.testing.assert_close(a[:, :, :8], b[:, :, :8])
        assert not torch.allclose(a[:, :, 8:], b[:, :, 8:])


def test_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"shape \(H=3,\)"):
        retention_parallel(q, k, v, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="need q, k"):
        retention_recurrent(q, k[:, :, :3], v, 0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        retention_chunkwise(q, k, v, 0.5, chunk_size=0)
    assert torch.allclose(default_gammas(3), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------
# The multi-scale retention layer
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 13, 40])
def test_layer_modes_identical(T, device):
    torch.manual_seed(0)
    layer = MultiScaleRetention(RetentionConfig(d_model=32, n_heads=4, chunk_size=6)).double().to(device)
    x = torch.randn(2, T, 32, dtype=torch.float64, device=device)
    y_par, s_par = layer(x, "parallel")
    for mode in ("recurrent", "chunkwise"):
        y, s = layer(x, mode)
        torch.testing.assert_close(y, y_par, **TOL[torch.float64])
        torch.testing.assert_close(s, s_par, **TOL[torch.float64])
    assert y_par.shape == (2, T, 32) and s_par.shape == (2, 4, 8, 8)


def test_layer_token_by_token_generation_matches_parallel():
    torch.manual_seed(0)
    layer = MultiScaleRetention(RetentionConfig(d_model=16, n_heads=2))
    x = torch.randn(1, 10, 16)
    full, _ = layer(x)
    state, outs = None, []
    for t in range(10):
        y, state = layer(x[:, t:t + 1], "recurrent", state=state)
        outs.append(y)
        assert state.shape == (1, 2, 8, 8)  # constant size, whatever t
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-4, atol=1e-5)


def test_layer_errors():
    layer = MultiScaleRetention(RetentionConfig(d_model=16, n_heads=2))
    with pytest.raises(ValueError, match="mode"):
        layer(torch.randn(1, 3, 16), "fast")
    with pytest.raises(ValueError, match=r"\(B, T, D=16\)"):
        layer(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="divisible"):
        RetentionConfig(d_model=10, n_heads=3)
