"""llmcourse.flash: online softmax, tiled attention (values and gradients), the Triton FlashAttention-2
kernel (through Triton's interpreter on CPU; compiled on CUDA), block counting and memory measurement."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse import flash
from llmcourse.attention import causal_mask, scaled_dot_product_attention

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TRITON = pytest.mark.skipif(not flash.triton_available(), reason="triton is not installed")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.gpu])]


def qkv(B, H, KV, T, S, D, dtype=torch.float32, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    k = torch.randn(B, KV, S, D, generator=g).to(device, dtype)
    v = torch.randn(B, KV, S, D, generator=g).to(device, dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def grads(fn, q, k, v, causal, seed=1):
    """Output and gradients of sum(out * g) for a fixed random g."""
    out = fn(q, k, v, causal=causal)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return (out, *torch.autograd.grad(out, (q, k, v), g))


# ----------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
def test_naive_equals_sdpa(causal, H, KV):
    q, k, v = qkv(2, H, KV, 13, 13, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(flash.naive_attention(q, k, v, causal), expected, atol=1e-5, rtol=1e-5)


def test_naive_causal_with_cache_aligns_bottom_right():
    q, k, v = qkv(1, 2, 2, 3, 10, 8)  # 3 new queries after 7 cached positions
    expected = scaled_dot_product_attention(q, k, v, mask=causal_mask(3, 10)).output
    torch.testing.assert_close(flash.naive_attention(q, k, v, causal=True), expected)


def test_shape_errors_name_the_values():
    q, k, v = qkv(1, 4, 4, 5, 5, 8)
    with pytest.raises(ValueError, match="divisible"):
        flash.naive_attention(q, k[:, :3], v[:, :3])
    with pytest.raises(ValueError, match="S >= T"):
        flash.tiled_attention(q, k[:, :, :2], v[:, :, :2], causal=True)
    with pytest.raises(ValueError, match="D=8"):
        flash.tiled_attention(q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match="power-of-two head dim"):
        flash.flash_attention_triton(*qkv(1, 2, 2, 5, 5, 24))


# ----------------------------------------------------------------------------------------------------
# Online softmax and tiled attention
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_online_softmax_equals_softmax(block):
    x = torch.randn(5, 17) * 10
    x[0, :4] = float("-inf")  # masked entries at the start: the running max starts at -inf
    torch.testing.assert_close(flash.online_softmax(x, block), torch.softmax(x, dim=-1))


def test_online_softmax_needs_the_rescale():
    """The running sum must be rescaled when the max grows: an increasing sequence exposes it."""
    x = torch.arange(8.0)[None] * 3
    m, l = float("-inf"), 0.0
    for chunk in x[0].split(2):  # the same loop as online_softmax, without the rescale
        m = max(m, chunk.max().item())
        l = l + torch.exp(chunk - m).sum().item()
    assert not math.isclose(l, torch.exp(x - x.max()).sum().item(), rel_tol=1e-3)
    torch.testing.assert_close(flash.online_softmax(x, 2), torch.softmax(x, dim=-1))


SHAPES = [  # B, H, KV, T, S, D, causal, block_q, block_k
    (2, 4, 4, 37, 37, 16, True, 8, 16),
    (2, 4, 4, 37, 37, 16, False, 16, 8),
    (1, 4, 2, 33, 33, 8, True, 32, 32),  # GQA, T just above a block
    (1, 3, 1, 20, 45, 8, True, 8, 8),  # MQA, queries after a cache (T < S)
    (1, 2, 2, 19, 50, 8, False, 16, 16),
    (1, 2, 2, 1, 1, 8, True, 64, 64),  # T = 1
    (1, 2, 1, 1, 30, 8, True, 4, 4),  # one query over a cache
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tiled_equals_naive_with_gradients(shape, device):
    B, H, KV, T, S, D, causal, bq, bk = shape
    q, k, v = qkv(B, H, KV, T, S, D, device=device, requires_grad=True)
    expected = grads(flash.naive_attention, q, k, v, causal)
    got = grads(lambda *a, **kw: flash.tiled_attention(*a, block_q=bq, block_k=bk, **kw), q, k, v, causal)
    assert expected[3].abs().sum() > 0  # gradients are not trivially zero (dq is 0 with a single key)
    assert S == 1 or expected[1].abs().sum() > 0
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_tiled_half_precision(dtype, atol):
    q, k, v = qkv(1, 2, 2, 40, 40, 16, dtype=dtype)
    out = flash.tiled_attention(q, k, v, causal=True, block_q=16, block_k=16)
    assert out.dtype == dtype
    expected = flash.naive_attention(q.float(), k.float(), v.float(), causal=True)
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


def test_tiled_lse_is_the_log_sum_exp():
    q, k, v = qkv(1, 2, 2, 21, 21, 8)
    _, lse = flash.tiled_attention_forward(q, k, v, causal=True, block_q=8, block_k=8)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(~causal_mask(21), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))


@pytest.mark.parametrize("fn", ["tiled", pytest.param("triton", marks=TRITON)])
def test_causal_outputs_ignore_the_future(fn):
    attend = {"tiled": lambda *a: flash.tiled_attention(*a, causal=True, block_q=8, block_k=8),
              "triton": lambda *a: flash.flash_attention_triton(*a, causal=True)}[fn]
    q, k, v = qkv(1, 2, 2, 24, 24, 16)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 15:] += 5.0
    v2[:, :, 15:] -= 3.0
    before, after = attend(q, k, v), attend(q, k2, v2)
    torch.testing.assert_close(before[:, :, :15], after[:, :, :15])
    assert not torch.allclose(before[:, :, 15:], after[:, :, 15:])  # the change does reach later rows


# ----------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------
def test_peak_memory_counts_live_tensors():
    def two_at_once(n):
        a = torch.ones(n)
        b = torch.ones(n)
        return a + b

    def one_at_a_time(n):
        for _ in range(3):
            a = torch.ones(n)
            del a
        return torch.zeros(1)

    both, single = flash.peak_memory_bytes(two_at_once, 1000), flash.peak_memory_bytes(one_at_a_time, 1000)
    assert both.largest == single.largest == 4000
    assert both.peak == 3 * 4000  # a, b and the sum are alive together
    assert 4000 <= single.peak < 2 * 4000


def test_tiled_never_materialises_the_score_matrix():
    T, block = 512, 64
    q, k, v = qkv(1, 1, 1, T, T, 16)
    naive = flash.peak_memory_bytes(flash.naive_attention, q, k, v, True)
    tiled = flash.peak_memory_bytes(flash.tiled_attention, q, k, v, True, None, block, block)
    assert naive.largest >= T * T * 4  # the fp32 score matrix
    assert tiled.largest <= T * 16 * 4  # nothing bigger than the (T, D) output
    assert tiled.peak < naive.peak / 8


def test_memory_grows_quadratically_for_naive_and_linearly_for_tiled():
    """Peak memory minus a constant (the tiles): growth from T to 2T doubles for linear memory and
    quadruples for quadratic memory."""
    def growth(fn):
        peaks = [flash.peak_memory_bytes(fn, *qkv(1, 2, 2, T, T, 16)).peak for T in (256, 512, 1024)]
        return (peaks[2] - peaks[1]) / (peaks[1] - peaks[0])

    assert growth(flash.naive_attention) == pytest.approx(4.0, rel=0.05)
    assert growth(flash.tiled_attention) == pytest.approx(2.0, rel=0.05)


# ----------------------------------------------------------------------------------------------------
# Block schedule and FLOPs
# ----------------------------------------------------------------------------------------------------
def brute_force_counts(T, S, bm, bn, causal):
    allowed = causal_mask(T, S) if causal else torch.ones(T, S, dtype=torch.bool)
    full = diagonal = skipped = 0
    for m0 in range(0, T, bm):
        for n0 in range(0, S, bn):
            tile = allowed[m0:m0 + bm, n0:n0 + bn]
            whole = tile.shape[1] == bn  # rows past T are discarded, so a short last query block is fine
            if not tile.any():
                skipped += 1
            elif tile.all() and whole:
                full += 1
            else:
                diagonal += 1
    return flash.BlockCounts(full, diagonal, skipped)


@pytest.mark.parametrize("T,S,bm,bn", [(64, 64, 16, 16), (100, 100, 16, 32), (37, 90, 8, 16), (50, 50, 32, 8),
                                       (1, 1, 16, 16), (130, 130, 64, 64)])
@pytest.mark.parametrize("causal", [True, False])
def test_block_counts_match_the_mask(T, S, bm, bn, causal):
    counts = flash.causal_block_counts(T, S, bm, bn, causal=causal)
    assert counts == brute_force_counts(T, S, bm, bn, causal)
    assert counts.total == -(-T // bm) * -(-S // bn)


def test_causal_skipping_halves_the_work():
    counts = flash.causal_block_counts(4096, block_m=64, block_n=64)
    assert counts == (2016, 64, 2016)
    assert counts.computed_fraction == pytest.approx(0.5 + 0.5 / 64)
    assert flash.attention_flops(1, 1, 1024, D=64, causal=True) == 4 * 1024 * 1024 * 64 / 2


# ----------------------------------------------------------------------------------------------------
# Triton kernel: interpreter on CPU (small shapes), compiled on CUDA
# ----------------------------------------------------------------------------------------------------
TRITON_SHAPES = [  # B, H, KV, T, S, D, causal
    (1, 2, 2, 33, 33, 16, True),  # odd T, a partial last block
    (1, 2, 2, 33, 33, 16, False),
    (2, 4, 2, 20, 20, 32, True),  # GQA
    (1, 2, 1, 10, 37, 16, True),  # queries after a cache, MQA
    (1, 1, 1, 1, 1, 16, True),  # T = 1
]


@TRITON
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
def test_triton_interpreter_equals_reference_with_gradients(shape):
    B, H, KV, T, S, D, causal = shape
    q, k, v = qkv(B, H, KV, T, S, D, requires_grad=True)
    got = grads(flash.flash_attention_triton, q, k, v, causal)
    expected = grads(flash.naive_attention, q, k, v, causal)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    if T == S:
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        torch.testing.assert_close(got[0], sdpa, atol=2e-5, rtol=1e-4)


@TRITON
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_triton_interpreter_half_precision_and_lse(dtype, atol):
    q, k, v = qkv(1, 2, 2, 25, 25, 16, dtype=dtype)
    out, lse = flash.triton_attention_forward(q, k, v, causal=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)
    _, tiled_lse = flash.tiled_attention_forward(q, k, v, causal=True)
    torch.testing.assert_close(lse, tiled_lse, atol=atol, rtol=0)


@CUDA
@TRITON
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,D", [(1024, 64), (1000, 64), (257, 128), (4096, 64)])
def test_triton_cuda_equals_sdpa(dtype, causal, T, D):
    q, k, v = qkv(2, 8, 8, T, T, D, dtype=dtype, device="cuda", requires_grad=True)
    got = grads(flash.flash_attention_triton, q, k, v, causal)
    expected = grads(lambda *a, causal: F.scaled_dot_product_attention(*a, is_causal=causal), q, k, v, causal)
    tol = {torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


@CUDA
@TRITON
@pytest.mark.gpu
def test_triton_cuda_gqa_and_cache_alignment():
    q, k, v = qkv(1, 8, 2, 100, 300, 64, dtype=torch.float16, device="cuda")
    got = flash.flash_attention_triton(q, k, v, causal=True)
    expected = flash.naive_attention(q, k, v, causal=True)
    torch.testing.assert_close(got.float(), expected.float(), atol=1e-2, rtol=1e-2)
