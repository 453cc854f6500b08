"""Hyena: replace attention by long convolutions (filters as long as the sequence) computed with the
FFT, interleaved with element-wise gates.

    y_t = sum_{s <= t} h_{t-s} u_s                       (causal convolution: O(T^2) done directly)
    y   = irfft(rfft(u, 2T) * rfft(h, 2T))[:T]           (the same with the FFT: O(T log T))

Zero-padding to 2T turns the FFT's *circular* convolution into the *linear* one (nothing wraps around
from the end of the sequence to its start), which also keeps it causal.

A Hyena operator of order N projects the input into N + 1 streams ``v, x_1 .. x_N`` (after a short
depthwise convolution) and alternates long convolutions and gates:

    z = v;  for i in 1..N:  z = x_i * (h_i conv z);   y = W_out z          (Poli et al. 2023, eq. 3)

The long filters ``h_i`` are *implicit*: a small MLP maps positional features of ``t`` to ``h_i[t]``,
then an exponential decay window favours recent inputs. Parameters do not grow with T.

- :func:`fft_conv` (fast) and :func:`direct_conv` (reference, same signature);
- :class:`HyenaFilter`, :class:`HyenaOperator` (causal; equal outputs with either convolution).

Taught in ``modules/04_multimodal/06_beyond_attention.py``.

References: Poli et al. 2023, "Hyena Hierarchy: Towards Larger Convolutional Language Models",
https://arxiv.org/abs/2302.10866 ; Fu et al. 2023, "Simple Hardware-Efficient Long Convolutions for
Sequence Modeling", https://arxiv.org/abs/2302.06646 ; Gu et al. 2022, "Efficiently Modeling Long
Sequences with Structured State Spaces" (S4), https://arxiv.org/abs/2111.00396

Shape legend: B batch, T length, D channels (model width), N order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fft_conv", "direct_conv", "HyenaFilter", "HyenaConfig", "HyenaOperator"]


def _check_conv(u: torch.Tensor, h: torch.Tensor) -> None:
    if u.ndim < 2:
        raise ValueError(f"u must be (..., D, T), got {tuple(u.shape)}")
    if h.ndim < 1 or h.shape[-1] > u.shape[-1]:
        raise ValueError(f"filter h (..., K) needs K <= T; got h {tuple(h.shape)} for u {tuple(u.shape)}")


def fft_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal convolution of signals u (..., D, T) with filters h (D, K) or broadcastable, K <= T, via
    the FFT in O(T log T): ``y[..., t] = sum_{s=0}^{min(t, K-1)} h[..., s] u[..., t - s]``. Computed in
    fp32 (fp64 for fp64 inputs), returned in u's dtype."""
    _check_conv(u, h)
    T = u.shape[-1]
    n = 2 * T  # zero-pad: linear, not circular, convolution
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_f = torch.fft.rfft(u.to(dtype), n=n)  # (..., D, T + 1) complex
    h_f = torch.fft.rfft(h.to(dtype), n=n)  # (D, T + 1)
    return torch.fft.irfft(u_f * h_f, n=n)[..., :T].to(u.dtype)  # (..., D, T)


def direct_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The same causal convolution as :func:`fft_conv`, computed directly in O(T K) with a depthwise
    ``conv1d`` (PyTorch's ``conv1d`` is a cross-correlation, hence the flipped filter and left padding).
    h must be (D, K) here."""
    _check_conv(u, h)
    if h.ndim != 2 or h.shape[0] != u.shape[-2]:
        raise ValueError(f"direct_conv needs h (D, K) with D = {u.shape[-2]}, got {tuple(h.shape)}")
    lead, (D, T), K = u.shape[:-2], u.shape[-2:], h.shape[-1]
    x = F.pad(u.reshape(-1, D, T), (K - 1, 0))  # (B', D, T + K - 1): only the past is padded
    y = F.conv1d(x, h.flip(-1).unsqueeze(1).to(u.dtype), groups=D)  # (B', D, T)
    return y.reshape(*lead, D, T)


class HyenaFilter(nn.Module):
    """Implicit long filters (D, T): ``h[:, t] = MLP(pos(t)) * exp(-rate_d * t / T)``.

    ``pos(t)`` is [t/T, sin(2 pi f t/T), cos(2 pi f t/T) for f = 1..n_freqs]; the MLP uses sine
    activations (as in Hyena, after SIREN). Each channel decays at its own rate, from slowly
    (long memory) to fast (local)."""

    def __init__(self, d_model: int, n_freqs: int = 8, hidden: int = 32, min_rate: float = 0.5, max_rate: float = 8.0):
        super().__init__()
        if min(d_model, n_freqs, hidden) < 1 or not 0 < min_rate <= max_rate:
            raise ValueError(f"bad HyenaFilter sizes: d_model={d_model}, n_freqs={n_freqs}, hidden={hidden}, "
                             f"rates=({min_rate}, {max_rate})")
        self.n_freqs = n_freqs
        self.mlp_in = nn.Linear(1 + 2 * n_freqs, hidden)
        self.mlp_hidden = nn.Linear(hidden, hidden)
        self.mlp_out = nn.Linear(hidden, d_model)
        self.register_buffer("rates", torch.linspace(min_rate, max_rate, d_model), persistent=False)

    def forward(self, T: int) -> torch.Tensor:
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        device, dtype = self.mlp_in.weight.device, self.mlp_in.weight.dtype
        t = torch.arange(T, device=device, dtype=dtype) / T  # (T,) in [0, 1)
        freqs = torch.arange(1, self.n_freqs + 1, device=device, dtype=dtype)  # (n_freqs,)
        angles = 2 * math.pi * t[:, None] * freqs  # (T, n_freqs)
        z = torch.cat([t[:, None], angles.sin(), angles.cos()], dim=-1)  # (T, 1 + 2 n_freqs)
        z = torch.sin(self.mlp_in(z))
        z = torch.sin(self.mlp_hidden(z))
        h = self.mlp_out(z).T  # (D, T)
        return h * torch.exp(-self.rates[:, None].to(dtype) * t)  # (D, T): decaying window


@dataclass
class HyenaConfig:
    """Configuration of :class:`HyenaOperator`."""

    d_model: int = 64  # D
    order: int = 2  # N: number of (long conv, gate) pairs
    short_kernel: int = 3  # width of the depthwise causal convolution on the projections
    filter_hidden: int = 32  # width of the implicit filter's MLP
    impl: Literal["fft", "direct"] = "fft"  # how the long convolutions are computed (same result)

    def __post_init__(self) -> None:
        if min(self.d_model, self.order, self.short_kernel, self.filter_hidden) < 1:
            raise ValueError(f"all HyenaConfig sizes must be >= 1, got {self}")
        if self.impl not in ("fft", "direct"):
            raise ValueError(f"impl must be 'fft' or 'direct', got {self.impl!r}")


class HyenaOperator(nn.Module):
    """A causal Hyena operator (a drop-in replacement for self-attention): (B, T, D) -> (B, T, D)."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.config = c = config
        self.in_proj = nn.Linear(c.d_model, (c.order + 1) * c.d_model)
        # Depthwise causal short convolution over all N + 1 streams (mixes a few neighbouring tokens).
        self.short_conv = nn.Conv1d((c.order + 1) * c.d_model, (c.order + 1) * c.d_model, c.short_kernel,
                                    groups=(c.order + 1) * c.d_model)
        self.filters = nn.ModuleList(HyenaFilter(c.d_model, hidden=c.filter_hidden) for _ in range(c.order))
        self.bias = nn.Parameter(torch.zeros(c.order, c.d_model, 1))  # skip term: y = h * z + bias * z
        self.out_proj = nn.Linear(c.d_model, c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 3 or x.shape[-1] != c.d_model:
            raise ValueError(f"x must be (B, T, D={c.d_model}), got {tuple(x.shape)}")
        T = x.shape[1]
        z = self.in_proj(x).transpose(1, 2)  # (B, (N + 1) D, T)
        z = self.short_conv(F.pad(z, (c.short_kernel - 1, 0)))  # causal: pad the past only
        v, *gates = z.split(c.d_model, dim=1)  # N + 1 tensors (B, D, T)
        conv = fft_conv if c.impl == "fft" else direct_conv
        for i, gate in enumerate(gates):
            h = self.filters[i](T)  # (D, T)
            v = gate * (conv(v, h) + self.bias[i] * v)  # long convolution, then element-wise gate
        return self.out_proj(v.transpose(1, 2))  # (B, T, D)
