"""Position information for transformers: sinusoidal, learned, ALiBi and rotary (RoPE).

Attention is permutation-invariant, so without position information "dog bites man" and "man bites dog"
look the same. Four answers: sinusoidal and learned are taught in
``modules/01_transformers/02_transformer_block.py``; ALiBi, RoPE and length extrapolation in
``modules/03_deployment/01_context_length.py``:

- sinusoidal: add fixed sin/cos waves to the embeddings (Vaswani et al. 2017, section 3.5);
- learned: add a trained vector per position (GPT-1/2, BERT);
- ALiBi: no embedding; add ``-m_h * distance`` to the attention logits (Press et al. 2022,
  "Train Short, Test Long", https://arxiv.org/abs/2108.12409);
- RoPE: rotate query/key pairs by a position-dependent angle, so q.k depends only on the offset
  (Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864; Llama, SmolLM2).

Shape legend: T query positions, S key positions, H heads, D head dim, C model width (d_model).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "sinusoidal_encoding",
    "LearnedPositionalEmbedding",
    "alibi_slopes",
    "alibi_bias",
    "RopeCache",
    "rope_cache",
    "rotate_half",
    "apply_rope",
]


def sinusoidal_encoding(
    T: int,
    d_model: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fixed sinusoidal position encodings, shape (T, d_model) (Vaswani et al. 2017, section 3.5):

        PE[pos, 2i] = sin(pos / base^(2i / d_model)),   PE[pos, 2i + 1] = cos(pos / base^(2i / d_model))

    Each pair of channels is a clock at its own frequency; ``PE[pos + k]`` is a rotation of ``PE[pos]``,
    which lets attention read relative offsets. An odd ``d_model`` drops the last cosine channel.
    """
    if T < 1 or d_model < 1:
        raise ValueError(f"T ({T}) and d_model ({d_model}) must be positive")
    if base <= 1.0:
        raise ValueError(f"base must be > 1, got {base}")
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, device=device, dtype=torch.float32)  # (ceil(C/2),)
    angle = pos / base ** (two_i / d_model)  # (T, ceil(C/2))
    pe = torch.zeros(T, d_model, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.to(dtype or torch.get_default_dtype())  # (T, C)


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position, ``weight`` of shape (max_len, d_model) (GPT-2's ``wpe``).

    Cannot go beyond ``max_len``: the model has never seen those positions.
    """

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        if max_len < 1 or d_model < 1:
            raise ValueError(f"max_len ({max_len}) and d_model ({d_model}) must be positive")
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, T: int, offset: int = 0) -> torch.Tensor:
        """Embeddings of positions ``offset .. offset + T - 1``: (T, d_model)."""
        if T < 1 or offset < 0 or offset + T > self.max_len:
            raise ValueError(
                f"positions {offset}..{offset + T - 1} are outside the learned range 0..{self.max_len - 1}"
            )
        return self.weight[offset : offset + T]  # (T, C)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes ``m_h`` (H,) (Press et al. 2022, section 3).

    For ``n`` a power of two the slopes are the geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^-8``.
    Otherwise (the paper's rule, as in its reference code): take the slopes for the closest power of two
    ``p < n``, then add every other slope of the sequence for ``2p`` until there are ``n``.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two_slopes(n_heads)
    else:
        p = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two_slopes(p) + power_of_two_slopes(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)  # (H,)


def alibi_bias(
    n_heads: int,
    T: int,
    S: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Additive ALiBi attention bias (H, T, S): ``bias[h, i, j] = -m_h * |pos_i - j|``.

    Queries are the last T of S positions (``pos_i = S - T + i``), as with a KV cache. For causal
    attention (``j <= pos_i``) this is exactly the paper's bias; for bidirectional encoders the absolute
    distance makes it symmetric (as in MosaicBERT). Add it to the attention logits (``attn_bias=``).
    """
    S = T if S is None else S
    if T < 1 or S < T:
        raise ValueError(f"alibi_bias needs 1 <= T <= S, got T={T}, S={S}")
    q_pos = torch.arange(S - T, S, device=device, dtype=torch.float32)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device, dtype=torch.float32)[None, :]  # (1, S)
    distance = (q_pos - k_pos).abs()  # (T, S)
    slopes = alibi_slopes(n_heads).to(device)[:, None, None]  # (H, 1, 1)
    return (-slopes * distance).to(dtype or torch.get_default_dtype())  # (H, T, S)


class RopeCache(NamedTuple):
    """``cos`` and ``sin`` tables for RoPE, each (T, D)."""

    cos: torch.Tensor
    sin: torch.Tensor


def rope_cache(
    T: int,
    head_dim: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    offset: int = 0,
) -> RopeCache:
    """RoPE tables for positions ``offset .. offset + T - 1`` (Su et al. 2021), each (T, head_dim).

    Pair ``(x_i, x_{i + D/2})`` rotates by angle ``pos * theta_i`` with ``theta_i = base^(-2i / D)``;
    channels are paired "rotate-half" style, as in Hugging Face Llama (and SmolLM2). Computed in fp32
    (fp64 when ``dtype`` is float64), then cast to ``dtype``.
    """
    if T < 1 or offset < 0:
        raise ValueError(f"need T >= 1 and offset >= 0, got T={T}, offset={offset}")
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be even and >= 2 for RoPE, got {head_dim}")
    dtype = dtype or torch.get_default_dtype()
    compute = torch.promote_types(dtype, torch.float32)  # fp32 (fp64 if asked): angles need precision
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=compute) / head_dim)
    pos = torch.arange(offset, offset + T, device=device, dtype=compute)  # (T,)
    freqs = torch.outer(pos, inv_freq)  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, D): the same angle for channel i and i + D/2
    return RopeCache(emb.cos().to(dtype), emb.sin().to(dtype))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90 degree turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` (..., T, D) by their positions: ``x * cos + rotate_half(x) * sin``.

    ``cos``/``sin`` come from :func:`rope_cache` (T, D) and broadcast over the leading dims. Computed in
    fp32 (or fp64) and cast back to ``x.dtype``. After rotation ``q_m . k_n`` depends only on ``m - n``.
    """
    if cos.shape != sin.shape or cos.shape[-1] != x.shape[-1] or cos.shape[-2] != x.shape[-2]:
        raise ValueError(
            f"cos/sin {tuple(cos.shape)}/{tuple(sin.shape)} must end with (T, D) = {tuple(x.shape[-2:])}"
        )
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    out = xf * cos.to(compute) + rotate_half(xf) * sin.to(compute)
    return out.to(x.dtype)
