"""FlashAttention: exact attention without the T x S score matrix, in PyTorch and in Triton.

Naive attention writes the whole score matrix ``S = Q K^T`` (T x S per head) to memory, softmaxes it and
multiplies by V: memory grows with T^2 and, on a GPU, the time goes into moving that matrix to and from
slow memory. FlashAttention (Dao et al. 2022) computes the *same* result block by block with the
**online softmax** (Milakov & Gimelshein 2018): for each block of queries it streams over blocks of
keys/values and keeps, per query row, a running maximum ``m``, a running sum ``l`` and an unnormalised
output ``acc``. When a new block raises the maximum, the old sum and output are rescaled:

    m_new = max(m, rowmax(s))                  s = q k_j^T * scale  (one block of scores)
    p     = exp(s - m_new)
    l     = l * exp(m - m_new) + rowsum(p)     <- the rescale that makes one pass possible
    acc   = acc * exp(m - m_new) + p v_j
    out   = acc / l,   lse = m + log(l)        (lse: the log-sum-exp, all the backward pass needs)

Memory is then O(T * block) instead of O(T * S). The backward pass recomputes each block of scores
from ``q, k`` and the saved ``lse`` instead of storing them (FlashAttention-2, Dao 2023).

Three implementations with one signature ``f(q, k, v, causal=False, scale=None)``:

- :func:`naive_attention`: the specification (materialises the scores; fp32 softmax);
- :func:`tiled_attention`: the online-softmax algorithm in plain PyTorch, with a tiled backward
  (a custom ``torch.autograd.Function``), readable and device-agnostic;
- :func:`flash_attention_triton`: a FlashAttention-2 Triton kernel (forward and backward). Causal
  attention skips key blocks that are fully masked and applies the mask only on the blocks that cross
  the diagonal. On CPU tensors it runs through Triton's interpreter automatically (NumPy, slow: small
  shapes only; ``TRITON_INTERPRET=1`` forces the interpreter for CUDA tensors too); on CUDA it compiles.
  ``triton`` is imported on first use only.

Queries ``q`` are (B, H, T, D); keys/values (B, KV, S, D) with ``H % KV == 0`` (grouped-query attention:
query head h reads key/value head ``h // (H // KV)``). With ``causal=True`` query i sits at position
``S - T + i`` and sees keys ``j <= S - T + i`` (bottom-right alignment, as in
:func:`llmcourse.attention.causal_mask` and FlashAttention 2; equal to SDPA's ``is_causal`` when T == S).

Also here: :func:`peak_memory_bytes` (peak memory of a call, on CPU or CUDA), :func:`attention_flops`
and :func:`causal_block_counts` (how much work block skipping saves).

Taught in ``modules/03_deployment/03_flash_attention.py`` (and measured in ``01_context_length.py``).

References:
- Dao et al. 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness",
  https://arxiv.org/abs/2205.14135
- Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
  https://arxiv.org/abs/2307.08691
- Milakov & Gimelshein 2018, "Online normalizer calculation for softmax", https://arxiv.org/abs/1805.02867
- Rabe & Staats 2021, "Self-attention Does Not Need O(n^2) Memory", https://arxiv.org/abs/2112.05682
- Triton's fused-attention tutorial, https://triton-lang.org/main/getting-started/tutorials/06-fused-attention.html

Shape legend: B batch, H query heads, KV key/value heads, T query length, S key length, D head dim,
BM/BN query/key block sizes.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .attention import causal_mask, repeat_kv

__all__ = [
    "AttentionResult",
    "naive_attention",
    "online_softmax",
    "tiled_attention",
    "tiled_attention_forward",
    "triton_available",
    "triton_attention_forward",
    "flash_attention_triton",
    "BlockCounts",
    "causal_block_counts",
    "attention_flops",
    "MemoryReport",
    "peak_memory_bytes",
]

_LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e)), and exp2 is the fast instruction


class AttentionResult(NamedTuple):
    """``out`` (B, H, T, D) in the input dtype and ``lse`` (B, H, T) fp32, the log-sum-exp of each row of
    scores (``log sum_j exp(s_ij)``): the softmax's normaliser, saved for the backward pass."""

    out: torch.Tensor
    lse: torch.Tensor


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[int, int, int, int, int, int]:
    """Validate shapes; return (B, H, KV, T, S, D)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be (B, H, T, D), (B, KV, S, D), (B, KV, S, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B={B}, KV, S, D={D})")
    KV, S = k.shape[1], k.shape[2]
    if H % KV:
        raise ValueError(f"query heads H ({H}) must be divisible by key/value heads KV ({KV})")
    if T < 1 or S < 1:
        raise ValueError(f"need T >= 1 and S >= 1, got T={T}, S={S}")
    if causal and S < T:
        raise ValueError(f"causal attention needs S >= T (queries are the last T positions), got T={T}, S={S}")
    if not (q.device == k.device == v.device) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share device and dtype; got {q.device}/{q.dtype}, {k.device}/{k.dtype}, "
                         f"{v.device}/{v.dtype}")
    return B, H, KV, T, S, D


# ----------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------
def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """The specification: ``softmax(q k^T * scale [+ causal mask]) v`` with the full (B, H, T, S) score
    matrix in memory. q (B, H, T, D), k/v (B, KV, S, D) -> (B, H, T, D) in q's dtype; softmax in fp32."""
    B, H, KV, T, S, D = _check(q, k, v, causal)
    scale = D ** -0.5 if scale is None else scale
    k, v = repeat_kv(k, H // KV), repeat_kv(v, H // KV)  # (B, H, S, D)
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, S): the T x S matrix
    if causal:
        scores = scores.masked_fill(~causal_mask(T, S, device=q.device), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S)
    return (weights @ v.float()).to(q.dtype)  # (B, H, T, D)


# ----------------------------------------------------------------------------------------------------
# Online softmax and tiled attention in PyTorch
# ----------------------------------------------------------------------------------------------------
def online_softmax(x: torch.Tensor, block: int) -> torch.Tensor:
    """Softmax over the last dim of ``x`` (..., N), reading it in chunks of ``block`` columns and keeping
    only a running max ``m`` and running sum ``l`` per row (Milakov & Gimelshein 2018): one pass for the
    statistics, one to normalise. Equal to ``torch.softmax(x, -1)``; computed in fp32."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    xf = x.float()
    m = torch.full(xf.shape[:-1], float("-inf"), device=x.device)  # (...,) running max
    l = torch.zeros(xf.shape[:-1], device=x.device)  # (...,) running sum of exp(x - m)
    for start in range(0, xf.shape[-1], block):
        chunk = xf[..., start:start + block]  # (..., block)
        m_new = torch.maximum(m, chunk.amax(dim=-1))
        # A row that has seen only -inf so far (masked entries) would compute exp(-inf - (-inf)) = nan:
        # subtract 0 instead; its sum stays 0 until a finite entry arrives.
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        # exp(m - m_new) rescales the old sum to the new maximum; exp(-inf) = 0 on the first chunk
        l = l * torch.exp(m - m_safe) + torch.exp(chunk - m_safe[..., None]).sum(dim=-1)
        m = m_new
    return (torch.exp(xf - m[..., None]) / l[..., None]).to(x.dtype)


def _diag_mask(i0: int, i1: int, j0: int, j1: int, offset: int, device) -> torch.Tensor:
    """Causal mask of one (query block, key block) tile: True where key j <= query i + offset."""
    rows = torch.arange(i0, i1, device=device)[:, None] + offset  # (BM, 1) absolute query positions
    cols = torch.arange(j0, j1, device=device)[None, :]  # (1, BN)
    return cols <= rows  # (BM, BN)


def _key_end(i1: int, S: int, offset: int, causal: bool) -> int:
    """Keys at or after this index are masked for every query < i1 (causal), so the loop stops there."""
    return min(S, i1 + offset) if causal else S


def tiled_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                            scale: float | None = None, block_q: int = 64, block_k: int = 64) -> AttentionResult:
    """Online-softmax tiled attention (FlashAttention's forward) in PyTorch, without autograd.

    Loops over blocks of ``block_q`` queries and, inside, over blocks of ``block_k`` keys; the largest
    temporary is one (B, H, block_q, block_k) tile of scores, never (T, S). With ``causal``, key blocks
    entirely in the future are skipped and the mask is applied only on the tiles that cross the diagonal.
    Returns :class:`AttentionResult` ``(out (B, H, T, D), lse (B, H, T))``.
    """
    B, H, KV, T, S, D = _check(q, k, v, causal)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    scale = D ** -0.5 if scale is None else scale
    n_rep, offset = H // KV, S - T
    out = torch.empty_like(q)  # (B, H, T, D)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)  # (B, H, T)
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        qi = q[:, :, i0:i1].float() * scale  # (B, H, BM, D)
        m = torch.full((B, H, i1 - i0), float("-inf"), device=q.device)  # running max per row
        l = torch.zeros(B, H, i1 - i0, device=q.device)  # running sum of exp(s - m)
        acc = torch.zeros(B, H, i1 - i0, D, device=q.device)  # running unnormalised output
        for j0 in range(0, _key_end(i1, S, offset, causal), block_k):
            j1 = min(j0 + block_k, S)
            kj = repeat_kv(k[:, :, j0:j1], n_rep).float()  # (B, H, BN, D)
            vj = repeat_kv(v[:, :, j0:j1], n_rep).float()  # (B, H, BN, D)
            s = qi @ kj.transpose(-2, -1)  # (B, H, BM, BN): one tile of scores
            if causal and j1 - 1 > i0 + offset:  # the tile crosses the diagonal: mask the future
                s = s.masked_fill(~_diag_mask(i0, i1, j0, j1, offset, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))  # (B, H, BM)
            alpha = torch.exp(m - m_new)  # rescale factor of everything accumulated so far
            p = torch.exp(s - m_new[..., None])  # (B, H, BM, BN)
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ vj
            m = m_new
        out[:, :, i0:i1] = (acc / l[..., None]).to(q.dtype)
        lse[:, :, i0:i1] = m + torch.log(l)
    return AttentionResult(out, lse)


def _tiled_backward(q, k, v, out, lse, dout, causal: bool, scale: float, block_q: int, block_k: int):
    """FlashAttention-2's backward, tile by tile: recompute p = exp(s - lse) from q, k and the saved
    lse, then dv += p^T do, dp = do v^T, ds = p * (dp - delta), dq += ds k, dk += ds^T q (times scale),
    where delta = rowsum(do * out). Returns fp32 (dq, dk, dv) with k/v summed over grouped heads."""
    B, H, T, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    n_rep, offset = H // KV, S - T
    delta = (dout.float() * out.float()).sum(dim=-1)  # (B, H, T)
    dq = torch.zeros(B, H, T, D, device=q.device)
    dk = torch.zeros(B, H, S, D, device=q.device)  # per query head; summed over groups at the end
    dv = torch.zeros(B, H, S, D, device=q.device)
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        qi, doi = q[:, :, i0:i1].float(), dout[:, :, i0:i1].float()  # (B, H, BM, D)
        lse_i, delta_i = lse[:, :, i0:i1, None], delta[:, :, i0:i1, None]  # (B, H, BM, 1)
        for j0 in range(0, _key_end(i1, S, offset, causal), block_k):
            j1 = min(j0 + block_k, S)
            kj = repeat_kv(k[:, :, j0:j1], n_rep).float()  # (B, H, BN, D)
            vj = repeat_kv(v[:, :, j0:j1], n_rep).float()
            s = (qi @ kj.transpose(-2, -1)) * scale  # (B, H, BM, BN), recomputed
            if causal and j1 - 1 > i0 + offset:
                s = s.masked_fill(~_diag_mask(i0, i1, j0, j1, offset, q.device), float("-inf"))
            p = torch.exp(s - lse_i)  # the softmax weights of this tile, exactly
            dv[:, :, j0:j1] += p.transpose(-2, -1) @ doi
            ds = p * (doi @ vj.transpose(-2, -1) - delta_i)  # (B, H, BM, BN)
            dq[:, :, i0:i1] += (ds @ kj) * scale
            dk[:, :, j0:j1] += (ds.transpose(-2, -1) @ qi) * scale
    dk = dk.view(B, KV, n_rep, S, D).sum(dim=2)  # (B, KV, S, D): a shared head gets every user's gradient
    dv = dv.view(B, KV, n_rep, S, D).sum(dim=2)
    return dq, dk, dv


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_q, block_k):
        out, lse = tiled_attention_forward(q, k, v, causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (causal, scale, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _tiled_backward(q, k, v, out, lse, dout, *ctx.config)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None, block_q: int = 64, block_k: int = 64) -> torch.Tensor:
    """Exact attention by online softmax over tiles, with gradients, in plain PyTorch.

    Same signature and result as :func:`naive_attention` (q (B, H, T, D), k/v (B, KV, S, D) ->
    (B, H, T, D)), but memory O(T * block) instead of O(T * S) in the forward *and* the backward pass
    (which recomputes the scores tile by tile from the saved log-sum-exp). See the module docstring.
    """
    _check(q, k, v, causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _TiledAttention.apply(q, k, v, causal, scale, block_q, block_k)


# ----------------------------------------------------------------------------------------------------
# Work saved by skipping masked blocks
# ----------------------------------------------------------------------------------------------------
class BlockCounts(NamedTuple):
    """Tiles of the (T, S) score matrix in blocks of (BM, BN): ``full`` ones need no mask, ``diagonal``
    ones cross the causal diagonal (or the end of the sequence) and are masked, ``skipped`` ones are
    entirely in the future and never computed. ``total = full + diagonal + skipped``."""

    full: int
    diagonal: int
    skipped: int

    @property
    def total(self) -> int:
        return self.full + self.diagonal + self.skipped

    @property
    def computed_fraction(self) -> float:
        return (self.full + self.diagonal) / self.total


def causal_block_counts(T: int, S: int | None = None, block_m: int = 64, block_n: int = 64,
                        causal: bool = True) -> BlockCounts:
    """Count the tiles the Triton kernel computes without mask, with mask, or skips (same schedule as
    :func:`flash_attention_triton`): for query block ``[m0, m0 + BM)`` the unmasked key blocks end at
    ``floor((m0 + offset + 1) / BN) * BN`` and the masked ones at ``min(m0 + BM + offset, S)``."""
    S = T if S is None else S
    if T < 1 or S < T or block_m < 1 or block_n < 1:
        raise ValueError(f"need 1 <= T <= S and positive blocks, got T={T}, S={S}, block_m={block_m}, "
                         f"block_n={block_n}")
    offset = S - T
    n_key_blocks = -(-S // block_n)
    full = diagonal = skipped = 0
    for m0 in range(0, T, block_m):
        if causal:
            full_end = (m0 + offset + 1) // block_n * block_n
            edge_end = min(m0 + block_m + offset, S)
        else:
            full_end, edge_end = S // block_n * block_n, S
        n_full = full_end // block_n
        n_edge = -(-(edge_end - full_end) // block_n) if edge_end > full_end else 0
        full += n_full
        diagonal += n_edge
        skipped += n_key_blocks - n_full - n_edge
    return BlockCounts(full, diagonal, skipped)


def attention_flops(B: int, H: int, T: int, S: int | None = None, D: int = 64, causal: bool = False,
                    backward: bool = False) -> float:
    """Matmul FLOPs of attention: ``4 * B * H * T * S * D`` (two matmuls, 2 FLOPs per multiply-add),
    halved for causal attention (T == S) as FlashAttention's benchmarks count it; the backward pass
    does 2.5x the forward's matmuls (5 instead of 2)."""
    S = T if S is None else S
    flops = 4.0 * B * H * T * S * D
    if causal:
        flops /= 2
    return flops * 2.5 if backward else flops


# ----------------------------------------------------------------------------------------------------
# Triton: FlashAttention-2 forward and backward kernels
# ----------------------------------------------------------------------------------------------------
# The kernel bodies below are plain functions until first use, when ``_kernels`` imports triton, binds
# the module-level name ``tl`` to ``triton.language`` (the kernels look it up there) and wraps them with
# ``triton.jit`` (CUDA) or Triton's interpreter (CPU tensors, or TRITON_INTERPRET=1).
tl = None  # triton.language, bound by _kernels()


def triton_available() -> bool:
    """True when ``import triton`` works (Linux x86-64 wheels; Colab's CUDA torch ships it)."""
    try:
        import triton  # noqa: F401 - imported only to see whether it loads
    except ImportError:
        return False
    return True


def _fwd_kernel(Q, K, V, O, LSE,
                stride_qb, stride_qh, stride_qt, stride_qd,
                stride_kb, stride_kh, stride_kt, stride_kd,
                stride_vb, stride_vh, stride_vt, stride_vd,
                stride_ob, stride_oh, stride_ot, stride_od,
                H, N_REP, T, S, OFFSET, qk_scale,
                CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    # One program = one block of BLOCK_M queries of one (batch, head). It streams over the keys in two
    # stages: blocks every row may see entirely (no mask), then the edge blocks (masked).
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    off_kvh = off_h // N_REP  # grouped-query attention: N_REP query heads share one key/value head
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BM,) query rows
    offs_n = tl.arange(0, BLOCK_N)  # (BN,) key columns within a block
    offs_d = tl.arange(0, HEAD_DIM)  # (D,)
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)  # (BM, D), stays in registers/SRAM
    k_base = K + off_b * stride_kb + off_kvh * stride_kh
    v_base = V + off_b * stride_vb + off_kvh * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running unnormalised output

    if CAUSAL:
        # Row i sees keys j <= i + OFFSET. Blocks ending at or before the block's first row's limit are
        # fully visible; blocks starting after its last row's limit are fully masked and skipped.
        full_end = (start_m + OFFSET + 1) // BLOCK_N * BLOCK_N
        edge_end = tl.minimum(start_m + BLOCK_M + OFFSET, S)
    else:
        full_end = S // BLOCK_N * BLOCK_N
        edge_end = S

    # Stage 1: fully visible key blocks, no mask at all (the bulk of the work).
    for start_n in range(0, full_end, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None] * stride_kd)  # (D, BN): K^T
        s = tl.dot(q, k) * qk_scale  # (BM, BN) scores, times log2(e) so that exp2 gives exp
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)  # rescale of the old statistics
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :] * stride_vd)  # (BN, D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    # Stage 2: the edge. Blocks that cross the causal diagonal or the end of the sequence: mask them.
    for start_n in range(full_end, edge_end, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                    mask=cols[None, :] < S, other=0.0)
        s = tl.dot(q, k) * qk_scale
        keep = cols[None, :] < S
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + OFFSET)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every row sees key 0 by now
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                    mask=cols[:, None] < S, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < T)
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # back to natural log: the log-sum-exp
    tl.store(LSE + off_bh * T + offs_m, lse, mask=offs_m < T)


def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     stride_qb, stride_qh, stride_qt, stride_qd,
                     stride_kb, stride_kh, stride_kt, stride_kd,
                     stride_vb, stride_vh, stride_vt, stride_vd,
                     H, N_REP, T, S, OFFSET, sm_scale,
                     CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    # One program = one block of BLOCK_N keys of one (batch, query head); it streams over the queries
    # that can see them. DO, LSE, DELTA, DK, DV are contiguous: (B, H, T, D), (B, H, T), (B, H, S, D).
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    off_kvh = off_h // N_REP
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_mask = offs_n[:, None] < S
    k = tl.load(K + off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)  # (BN, D)
    v = tl.load(V + off_b * stride_vb + off_kvh * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    lo = 0
    if CAUSAL:  # the first query that sees key start_n is start_n - OFFSET
        lo = tl.maximum(start_n - OFFSET, 0) // BLOCK_M * BLOCK_M
    for start_m in range(lo, T, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_mask = offs_m < T
        q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                    mask=row_mask[:, None], other=0.0)  # (BM, D)
        do = tl.load(DO + off_bh * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                     mask=row_mask[:, None], other=0.0)
        lse = tl.load(LSE + off_bh * T + offs_m, mask=row_mask, other=0.0)
        delta = tl.load(DELTA + off_bh * T + offs_m, mask=row_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BM, BN)
        keep = row_mask[:, None] & (offs_n[None, :] < S)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + OFFSET)
        p = tl.where(keep, tl.math.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)  # softmax weights
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))  # (BM, BN)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    out_off = off_bh * S * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_off, dk * sm_scale, mask=kv_mask)
    tl.store(DV + out_off, dv, mask=kv_mask)


def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   stride_qb, stride_qh, stride_qt, stride_qd,
                   stride_kb, stride_kh, stride_kt, stride_kd,
                   stride_vb, stride_vh, stride_vt, stride_vd,
                   H, N_REP, T, S, OFFSET, sm_scale,
                   CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    # One program = one block of BLOCK_M queries; it streams over the keys they see, like the forward.
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    off_kvh = off_h // N_REP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_mask = offs_m < T
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_mask[:, None], other=0.0)
    do = tl.load(DO + off_bh * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                 mask=row_mask[:, None], other=0.0)
    lse = tl.load(LSE + off_bh * T + offs_m, mask=row_mask, other=0.0)
    delta = tl.load(DELTA + off_bh * T + offs_m, mask=row_mask, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    hi = S
    if CAUSAL:
        hi = tl.minimum(start_m + BLOCK_M + OFFSET, S)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = offs_n[:, None] < S
        k = tl.load(K + off_b * stride_kb + off_kvh * stride_kh + offs_n[:, None] * stride_kt
                    + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)  # (BN, D)
        v = tl.load(V + off_b * stride_vb + off_kvh * stride_vh + offs_n[:, None] * stride_vt
                    + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        keep = row_mask[:, None] & (offs_n[None, :] < S)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + OFFSET)
        p = tl.where(keep, tl.math.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + off_bh * T * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :], dq * sm_scale,
             mask=row_mask[:, None])


# Forward configurations tried on CUDA (autotuned once per shape); the interpreter uses small blocks.
_CUDA_FWD_CONFIGS = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4),
    (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 4, 4), (128, 128, 8, 2),
]
_INTERPRET_BLOCK = 16


def _use_interpreter(x: torch.Tensor) -> bool:
    return x.device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels(interpret: bool):
    """Wrap the kernel bodies once per mode: compiled (``triton.jit`` + autotuning) or interpreted."""
    global tl
    try:
        import triton
        import triton.language as language
    except ImportError as err:  # pragma: no cover - depends on the platform
        raise ImportError("the Triton kernels need `pip install triton` (Linux x86-64; Colab has it); "
                          "use tiled_attention for a pure-PyTorch version") from err
    tl = language
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_fwd_kernel), InterpretedFunction(_bwd_dkdv_kernel), \
            InterpretedFunction(_bwd_dq_kernel)
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
               for bm, bn, w, st in _CUDA_FWD_CONFIGS]
    fwd = triton.autotune(configs, key=["T", "S", "HEAD_DIM", "CAUSAL"])(triton.jit(_fwd_kernel))
    return fwd, triton.jit(_bwd_dkdv_kernel), triton.jit(_bwd_dq_kernel)


@contextlib.contextmanager
def _interpreter_mode(interpret: bool):
    """Run Triton's interpreter even if triton was imported without ``TRITON_INTERPRET=1``.

    That variable is read when triton is imported: the helpers of ``triton.language`` written in Triton
    itself (``tl.zeros``, ``tl.max``, ``tl.sum``...) then become interpretable functions instead of
    compiled ones. Libraries such as transformers import triton early, so we cannot rely on being first:
    for the duration of an interpreted launch, compiled helpers are interpreted too (and the interpreter
    flag is on), and everything is restored afterwards. A no-op for compiled launches.
    """
    if not interpret:
        yield
        return
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    original_call, original_flag = JITFunction.__call__, os.environ.get("TRITON_INTERPRET")

    def interpreted_call(self, *args, **kwargs):
        return InterpretedFunction(self.fn)(*args, **kwargs)

    with _INTERPRETER_LOCK:
        JITFunction.__call__ = interpreted_call
        os.environ["TRITON_INTERPRET"] = "1"  # triton.knobs reads it on every access
        try:
            yield
        finally:
            JITFunction.__call__ = original_call
            if original_flag is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = original_flag


_INTERPRETER_LOCK = threading.Lock()


def _check_triton(q, k, v, causal) -> tuple[int, int, int, int, int, int]:
    B, H, KV, T, S, D = _check(q, k, v, causal)
    if D < 16 or D & (D - 1):
        raise ValueError(f"the Triton kernel needs a power-of-two head dim >= 16, got D={D}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton kernel supports fp16, bf16 and fp32, got {q.dtype}")
    return B, H, KV, T, S, D


def triton_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                             scale: float | None = None, block_m: int | None = None,
                             block_n: int | None = None) -> AttentionResult:
    """Run the FlashAttention-2 forward kernel; returns :class:`AttentionResult` ``(out, lse)``.

    Block sizes: autotuned on CUDA unless both ``block_m`` and ``block_n`` are given; 16 x 16 in the
    interpreter (CPU tensors or ``TRITON_INTERPRET=1``) unless given. The interpreter runs on NumPy,
    which has no bf16, so bf16 inputs are computed in fp32 there (on CUDA they stay bf16). No autograd:
    see :func:`flash_attention_triton`.
    """
    B, H, KV, T, S, D = _check_triton(q, k, v, causal)
    scale = D ** -0.5 if scale is None else scale
    interpret = _use_interpreter(q)
    if interpret and q.dtype == torch.bfloat16:  # the interpreter (NumPy) has no bf16 arithmetic
        out, lse = triton_attention_forward(q.float(), k.float(), v.float(), causal, scale, block_m, block_n)
        return AttentionResult(out.to(q.dtype), lse)
    fwd, _, _ = _kernels(interpret)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    args = (q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            H, H // KV, T, S, S - T, scale * _LOG2E)
    if interpret or (block_m and block_n):
        bm, bn = (block_m or _INTERPRET_BLOCK), (block_n or _INTERPRET_BLOCK)
        kernel = fwd.fn if hasattr(fwd, "configs") else fwd  # bypass the autotuner when blocks are given
        with _interpreter_mode(interpret):
            kernel[(_cdiv(T, bm), B * H)](*args, CAUSAL=causal, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn)
    else:
        grid = lambda meta: (_cdiv(T, meta["BLOCK_M"]), B * H)
        fwd[grid](*args, CAUSAL=causal, HEAD_DIM=D)
    return AttentionResult(out, lse)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _triton_backward(q, k, v, out, lse, dout, causal: bool, scale: float):
    B, H, T, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    interpret = _use_interpreter(q)
    if interpret and q.dtype == torch.bfloat16:  # no bf16 arithmetic in the interpreter: use fp32 there
        return _triton_backward(q.float(), k.float(), v.float(), out.float(), lse, dout.float(), causal, scale)
    _, dkdv_kernel, dq_kernel = _kernels(interpret)
    bm = bn = _INTERPRET_BLOCK if interpret else 64
    warps = {} if interpret else {"num_warps": 4, "num_stages": 2}
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(dim=-1).contiguous()  # (B, H, T): rowsum(dO * O)
    dq = torch.empty(B, H, T, D, device=q.device, dtype=torch.float32)
    dk = torch.empty(B, H, S, D, device=q.device, dtype=torch.float32)  # per query head
    dv = torch.empty(B, H, S, D, device=q.device, dtype=torch.float32)
    strides = (*q.stride(), *k.stride(), *v.stride())
    common = (H, H // KV, T, S, S - T, scale)
    meta = dict(CAUSAL=causal, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, **warps)
    with _interpreter_mode(interpret):
        dkdv_kernel[(_cdiv(S, bn), B * H)](q, k, v, dout, lse, delta, dk, dv, *strides, *common, **meta)
        dq_kernel[(_cdiv(T, bm), B * H)](q, k, v, dout, lse, delta, dq, *strides, *common, **meta)
    n_rep = H // KV
    dk = dk.view(B, KV, n_rep, S, D).sum(dim=2)
    dv = dv.view(B, KV, n_rep, S, D).sum(dim=2)
    return dq, dk, dv


class _TritonFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        out, lse = triton_attention_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (causal, scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _triton_backward(q, k, v, out, lse, dout, *ctx.config)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           scale: float | None = None) -> torch.Tensor:
    """FlashAttention-2 in Triton, forward and backward: same signature and result as
    :func:`naive_attention` (q (B, H, T, D), k/v (B, KV, S, D) -> (B, H, T, D)).

    D must be a power of two >= 16; dtypes fp16, bf16, fp32 (on CUDA, fp32 matmuls use TF32).
    CUDA tensors run the compiled kernel; CPU tensors run Triton's interpreter (NumPy, slow: keep the
    shapes small). See the module docstring for the algorithm.
    """
    _check_triton(q, k, v, causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _TritonFlashAttention.apply(q, k, v, causal, scale)


# ----------------------------------------------------------------------------------------------------
# Measuring memory
# ----------------------------------------------------------------------------------------------------
class MemoryReport(NamedTuple):
    """``peak``: the most bytes held at once by tensors created during the call; ``largest``: the biggest
    single tensor it created. Both exclude the inputs."""

    peak: int
    largest: int


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of every tensor created by an aten op while active: a storage counts from the
    op that creates it until the last Python tensor that uses it is garbage-collected (CPython frees
    immediately, so this follows the real lifetime). Views share their base's storage and add nothing."""

    def __init__(self):
        super().__init__()
        self.users: dict[int, list[int]] = {}  # storage address -> [live tensors, bytes]
        self.current = self.peak = self.largest = 0

    def _release(self, key: int) -> None:
        entry = self.users.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.current -= entry[1]
                del self.users[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        input_ids = {id(t) for t in inputs}
        input_storages = {t.untyped_storage().data_ptr() for t in inputs if t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in input_ids or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key in self.users:
                self.users[key][0] += 1
            elif key in input_storages:  # a view of memory allocated before the call (e.g. q[:, :, :64])
                continue
            else:
                self.users[key] = [1, nbytes]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                self.largest = max(self.largest, nbytes)
            weakref.finalize(t, self._release, key)
        return out


def peak_memory_bytes(fn: Callable, *args, **kwargs) -> MemoryReport:
    """Peak memory of ``fn(*args, **kwargs)`` (run under ``torch.no_grad``) beyond its inputs.

    On CUDA it reads the caching allocator (``torch.cuda.max_memory_allocated``). On other devices torch
    keeps no allocator statistics, so every tensor an operator creates is tracked (a
    ``TorchDispatchMode``) from creation until it is freed: deterministic, and exact for the tensors
    themselves (it ignores an operator's hidden scratch space). ``largest`` is the biggest single tensor
    (on CUDA, equal to ``peak``).
    """
    device = next((a.device for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return MemoryReport(peak, peak)
    tracker = _LiveTensorBytes()
    with torch.no_grad(), tracker:
        result = fn(*args, **kwargs)
    del result
    return MemoryReport(tracker.peak, tracker.largest)
