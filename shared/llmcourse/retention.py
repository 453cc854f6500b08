"""Retention (RetNet): attention without the softmax, with an exponential decay, so that the same
layer can be computed in three equivalent ways.

    parallel:   O = (Q K^T  *  D) V,           D[n, m] = gamma^(n - m) if n >= m else 0     (training)
    recurrent:  S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n                          (inference)
    chunkwise:  parallel inside chunks of size C, recurrent across chunks                  (long inputs)
                                                                       (Sun et al. 2023, eq. 5-7)

Unrolling the recurrence gives ``o_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m``, exactly the parallel
form. The recurrent state S is (Dk, Dv) per head *whatever the length*: generation needs O(1) memory
per step, where attention's KV cache grows linearly with the context.

The decay multiplies the *old* state (``gamma * S_{n-1}``), never the new key-value product: the newest
token always enters with weight 1, a token seen k steps ago with weight gamma^k.

- :func:`decay_mask`, :func:`retention_parallel`, :func:`retention_recurrent`, :func:`retention_chunkwise`
  (same signature, same result; each also returns the final state);
- :class:`MultiScaleRetention`: the RetNet layer (a different gamma per head, GroupNorm, swish gate).
  RetNet also rotates q and k by their position (xPos); that is left out here, the decay alone already
  tells the layer how far back a token is.

Taught in ``modules/04_multimodal/06_beyond_attention.py``; the recurrent form is part of lab 4.

References: Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
https://arxiv.org/abs/2307.08621 ; Katharopoulos et al. 2020, "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", https://arxiv.org/abs/2006.16236

Shape legend: B batch, H heads, T length, C chunk size, Dk key/query dim, Dv value dim, D model width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RetentionOutput",
    "default_gammas",
    "decay_mask",
    "retention_parallel",
    "retention_recurrent",
    "retention_chunkwise",
    "RetentionConfig",
    "MultiScaleRetention",
]


class RetentionOutput(NamedTuple):
    """``output`` (B, H, T, Dv) and the recurrent ``state`` (B, H, Dk, Dv) after the last token."""

    output: torch.Tensor
    state: torch.Tensor


def default_gammas(n_heads: int) -> torch.Tensor:
    """RetNet's multi-scale decays ``1 - 2^(-5 - h)`` for h = 0..H-1: 0.969, 0.984, 0.992, ... Head h
    remembers roughly the last ``1 / (1 - gamma) = 2^(5 + h)`` tokens."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    return 1 - 2.0 ** (-5 - torch.arange(n_heads, dtype=torch.float64))


def _gamma(gamma: float | torch.Tensor, H: int, like: torch.Tensor) -> torch.Tensor:
    """Decay as a (H, 1, 1) tensor in fp64 (powers up to T are then exact enough), on like's device."""
    g = torch.as_tensor(gamma, dtype=torch.float64, device=like.device)
    if g.ndim == 0:
        g = g.expand(H)
    if g.shape != (H,):
        raise ValueError(f"gamma must be a float or have shape (H={H},), got {tuple(g.shape)}")
    if bool(((g <= 0) | (g > 1)).any()):
        raise ValueError(f"every gamma must be in (0, 1], got {g.tolist()}")
    return g[:, None, None]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or q.shape != k.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"need q, k (B, H, T, Dk) and v (B, H, T, Dv); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")


def decay_mask(T: int, gamma: float | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """D (H, T, T) fp64 with ``D[h, n, m] = gamma_h^(n - m)`` for n >= m, else 0 (causal + decay).
    A float gamma gives H = 1."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    g = torch.as_tensor(gamma, dtype=torch.float64, device=device)
    g = _gamma(g, 1 if g.ndim == 0 else len(g), g)  # (H, 1, 1)
    n = torch.arange(T, device=g.device)
    diff = (n[:, None] - n[None, :]).to(torch.float64)  # (T, T): n - m
    return torch.where(diff >= 0, g ** diff.clamp(min=0), torch.zeros((), dtype=torch.float64, device=g.device))


def _final_state(k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
    """S_T = gamma^T S_0 + sum_m gamma^(T-1-m) k_m^T v_m, in fp64: (B, H, Dk, Dv)."""
    T = k.shape[2]
    weights = g ** torch.arange(T - 1, -1, -1, device=k.device, dtype=torch.float64)[:, None]  # (H, T, 1)
    S = k.double().transpose(-2, -1) @ (v.double() * weights)  # (B, H, Dk, Dv)
    if state is not None:
        S = S + g ** T * state.double()
    return S


def retention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float | torch.Tensor,
                       state: torch.Tensor | None = None) -> RetentionOutput:
    """Parallel form: ``(q k^T * D) v`` with the decay mask D; O(T^2), like attention, for training.

    q, k (B, H, T, Dk), v (B, H, T, Dv); gamma a float or (H,); ``state`` (B, H, Dk, Dv) from earlier
    tokens, or None. Computed in fp64 (the reference), returned in q's dtype."""
    _check_qkv(q, k, v)
    B, H, T, _ = q.shape
    g = _gamma(gamma, H, q)
    scores = q.double() @ k.double().transpose(-2, -1)  # (B, H, T, T): no softmax
    out = (scores * decay_mask(T, g.flatten(), device=q.device)) @ v.double()  # (B, H, T, Dv)
    if state is not None:  # earlier tokens: o_n += gamma^(n+1) q_n S_0
        out = out + (q.double() @ state.double()) * g ** torch.arange(1, T + 1, device=q.device)[:, None]
    return RetentionOutput(out.to(q.dtype), _final_state(k, v, g, state).to(q.dtype))


def retention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float | torch.Tensor,
                        state: torch.Tensor | None = None) -> RetentionOutput:
    """Recurrent form, one token at a time: ``S = gamma S + k_t^T v_t``, ``o_t = q_t S``. O(T) time and
    a constant-size state (B, H, Dk, Dv), for generation. Same inputs and outputs as
    :func:`retention_parallel` (computed in fp32, or fp64 for fp64 inputs)."""
    _check_qkv(q, k, v)
    B, H, T, Dk = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    g = _gamma(gamma, H, q).to(dtype)  # (H, 1, 1)
    S = torch.zeros(B, H, Dk, v.shape[-1], device=q.device, dtype=dtype) if state is None else state.to(dtype)
    outputs = []
    for t in range(T):
        kv = k[:, :, t, :, None].to(dtype) * v[:, :, t, None, :].to(dtype)  # (B, H, Dk, Dv): k_t^T v_t
        S = g * S + kv  # decay the past, add the present
        outputs.append(q[:, :, t, None, :].to(dtype) @ S)  # (B, H, 1, Dv)
    return RetentionOutput(torch.cat(outputs, dim=2).to(q.dtype), S.to(q.dtype))


def retention_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float | torch.Tensor,
                        state: torch.Tensor | None = None, chunk_size: int = 64) -> RetentionOutput:
    """Chunkwise form: the parallel form inside chunks of ``chunk_size`` tokens, the recurrent form
    across chunks (RetNet eq. 7). O(T C) time, memory of one chunk; the last chunk may be shorter.

        R_i = K_i^T (V_i * zeta) + gamma^C R_{i-1},  zeta_j = gamma^(C-1-j)
        O_i = (Q_i K_i^T * D) V_i + (Q_i R_{i-1}) * xi,  xi_j = gamma^(j+1)

    Computed in fp32 (fp64 for fp64 inputs)."""
    _check_qkv(q, k, v)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, H, T, Dk = q.shape
    dtype = torch.promote_types(q.dtype, torch.float32)
    g64 = _gamma(gamma, H, q)  # (H, 1, 1) fp64
    R = torch.zeros(B, H, Dk, v.shape[-1], device=q.device, dtype=dtype) if state is None else state.to(dtype)
    outputs = []
    for start in range(0, T, chunk_size):
        qc, kc, vc = (x[:, :, start:start + chunk_size].to(dtype) for x in (q, k, v))  # (B, H, C', .)
        C = qc.shape[2]
        j = torch.arange(C, device=q.device, dtype=torch.float64)[:, None]  # (C', 1)
        inner = ((qc @ kc.transpose(-2, -1)) * decay_mask(C, g64.flatten(), q.device).to(dtype)) @ vc
        cross = (qc @ R) * (g64 ** (j + 1)).to(dtype)  # (B, H, C', Dv): everything before the chunk
        outputs.append(inner + cross)
        R = kc.transpose(-2, -1) @ (vc * (g64 ** (C - 1 - j)).to(dtype)) + (g64 ** C).to(dtype) * R
    return RetentionOutput(torch.cat(outputs, dim=2).to(q.dtype), R.to(q.dtype))


_FORMS = {"parallel": retention_parallel, "recurrent": retention_recurrent, "chunkwise": retention_chunkwise}


@dataclass
class RetentionConfig:
    """Configuration of :class:`MultiScaleRetention`."""

    d_model: int = 64  # D
    n_heads: int = 4  # H; head h decays with gamma_h = 1 - 2^(-5 - h)
    chunk_size: int = 64  # chunk length of the chunkwise form

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.n_heads < 1 or self.chunk_size < 1:
            raise ValueError(f"d_model, n_heads and chunk_size must be >= 1, got {self}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class MultiScaleRetention(nn.Module):
    """RetNet's multi-scale retention layer (Sun et al. 2023, eq. 8), without xPos:

        head_h = Retention(X W_q^h, X W_k^h / sqrt(Dk), X W_v^h; gamma_h)
        Y      = W_o( swish(X W_g) * GroupNorm_h(concat(head_1 .. head_H)) )

    The GroupNorm normalises each head per token, so it is the same whichever form computed the heads."""

    def __init__(self, config: RetentionConfig):
        super().__init__()
        self.config = c = config
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.g_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.out_proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.norm = nn.GroupNorm(c.n_heads, c.d_model)
        self.register_buffer("gammas", default_gammas(c.n_heads), persistent=False)

    def forward(self, x: torch.Tensor, mode: Literal["parallel", "recurrent", "chunkwise"] = "parallel",
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (y (B, T, D), state (B, H, Dk, Dv)). Pass the returned state back in to continue
        a sequence (e.g. generation one token at a time with ``mode="recurrent"``)."""
        c = self.config
        if x.ndim != 3 or x.shape[-1] != c.d_model:
            raise ValueError(f"x must be (B, T, D={c.d_model}), got {tuple(x.shape)}")
        if mode not in _FORMS:
            raise ValueError(f"mode must be one of {tuple(_FORMS)}, got {mode!r}")
        B, T, _ = x.shape
        H, Dh = c.n_heads, c.head_dim
        split = lambda t: t.view(B, T, H, Dh).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)) * Dh ** -0.5, split(self.v_proj(x))
        kwargs = {"chunk_size": c.chunk_size} if mode == "chunkwise" else {}
        out, state = _FORMS[mode](q, k, v, self.gammas, state=state, **kwargs)  # (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(B * T, c.d_model)  # (B*T, D): heads side by side
        compute = torch.promote_types(x.dtype, torch.float32)  # normalise in fp32 at least
        out = F.group_norm(out.to(compute), H, self.norm.weight.to(compute), self.norm.bias.to(compute),
                           self.norm.eps).to(x.dtype).view(B, T, c.d_model)  # per head, per token
        return self.out_proj(F.silu(self.g_proj(x)) * out), state
