"""Scaled dot-product attention and multi-head attention (with GQA/MQA and cross-attention).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D) + M) V                       (Vaswani et al., 2017, eq. 1)

Taught in ``modules/01_transformers/01_attention.py`` (the equation, masks), ``02_transformer_block.py``
(multi-head attention) and ``modules/03_deployment/04_gqa_kv_cache.py`` (GQA/MQA and the KV cache).

References:
- Vaswani et al. 2017, "Attention Is All You Need", https://arxiv.org/abs/1706.03762
- Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need" (multi-query attention, MQA),
  https://arxiv.org/abs/1911.02150
- Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
  Checkpoints", https://arxiv.org/abs/2305.13245

Shape legend: B batch, H query heads, KV key/value heads, T query length, S key length, D head dim,
C model width (= H * D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionOutput",
    "causal_mask",
    "scaled_dot_product_attention",
    "repeat_kv",
    "AttentionConfig",
    "MultiHeadAttention",
]


class AttentionOutput(NamedTuple):
    """Result of attention: ``output`` (..., T, D) and the attention ``weights`` (..., T, S) or None."""

    output: torch.Tensor
    weights: torch.Tensor | None


def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean causal mask of shape (T, S); ``True`` means "may attend".

    Query ``i`` sits at absolute position ``S - T + i`` (the queries are the *last* T of the S positions,
    as when decoding with a KV cache), and may attend to keys ``j <= S - T + i``. With ``S == T`` this is
    the usual lower-triangular matrix. Note: ``torch.nn.functional.scaled_dot_product_attention(...,
    is_causal=True)`` aligns to the top-left instead, which only differs when ``S != T``.
    """
    S = T if S is None else S
    if T < 1 or S < T:
        raise ValueError(f"causal_mask needs 1 <= T <= S, got T={T}, S={S}")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times: (B, KV, T, D) -> (B, KV * n_rep, T, D).

    Query head ``h`` then uses key/value head ``h // n_rep`` (grouped-query attention, Ainslie et al.
    2023). Same as Hugging Face's ``repeat_kv`` and ``torch.repeat_interleave(x, n_rep, dim=1)``.
    """
    if x.ndim != 4:
        raise ValueError(f"repeat_kv expects (B, KV, T, D), got shape {tuple(x.shape)}")
    if n_rep < 1:
        raise ValueError(f"n_rep must be >= 1, got {n_rep}")
    if n_rep == 1:
        return x
    B, KV, T, D = x.shape
    x = x[:, :, None, :, :].expand(B, KV, n_rep, T, D)  # (B, KV, n_rep, T, D), a view: no copy yet
    return x.reshape(B, KV * n_rep, T, D)  # (B, H, T, D)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> None:
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(
            f"q, k, v need at least 2 dims (..., T, D); got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the head dim D: q {tuple(q.shape)} vs k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must share the length S: k {tuple(k.shape)} vs v {tuple(v.shape)}")
    if enable_gqa:
        if q.ndim < 3 or k.ndim < 3 or q.shape[-3] % k.shape[-3] or k.shape[-3] != v.shape[-3]:
            raise ValueError(
                "enable_gqa needs (..., H, T, D) queries and (..., KV, S, D) keys/values with H divisible "
                f"by KV; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    enable_gqa: bool = False,
) -> AttentionOutput:
    """Reference attention: ``softmax(q k^T * scale + mask) v`` (Vaswani et al. 2017, eq. 1).

    Args:
        q: queries (..., T, D). k: keys (..., S, D). v: values (..., S, Dv). Leading dims broadcast.
        mask: boolean (``True`` = may attend) or additive float (0 or ``-inf``, or a bias such as ALiBi),
            broadcastable to (..., T, S).
        scale: defaults to ``1 / sqrt(D)``, which keeps the logits' variance near 1.
        dropout_p: dropout on the attention weights (apply only while training).
        is_causal: add :func:`causal_mask` (aligned to the end when S > T); combines with ``mask``.
        enable_gqa: keys/values have fewer heads (dim -3) than queries; they are shared by groups of
            query heads as in :func:`repeat_kv`.

    Returns:
        ``AttentionOutput(output (..., T, Dv), weights (..., T, S))``, both in q's dtype. The weights are
        those applied to ``v`` (after dropout, if any).

    The softmax runs in float32 (or float64 for float64 inputs). A query row whose keys are *all* masked
    gets all-zero weights and a zero output (instead of the NaN that ``softmax([-inf, ...])`` gives);
    PyTorch's own kernel does the same.
    """
    _check_qkv(q, k, v, enable_gqa)
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if enable_gqa:  # (..., KV, S, D) -> (..., H, S, D)
        n_rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(n_rep, dim=-3), v.repeat_interleave(n_rep, dim=-3)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    compute_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs

    scores = (q.to(compute_dtype) @ k.to(compute_dtype).transpose(-2, -1)) * scale  # (..., T, S)
    if mask is not None:
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores (..., T, S) = "
                f"{tuple(scores.shape)}"
            ) from None
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(compute_dtype)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(T, S, device=q.device), float("-inf"))

    # Rows with every key masked: softmax would return NaN. Give them zero weights instead (and zero the
    # scores first so the backward pass stays finite too).
    dead_rows = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., T, 1)
    scores = scores.masked_fill(dead_rows, 0.0)
    weights = torch.softmax(scores, dim=-1).masked_fill(dead_rows, 0.0)  # (..., T, S), rows sum to 1
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    output = weights @ v.to(compute_dtype)  # (..., T, Dv)
    return AttentionOutput(output.to(q.dtype), weights.to(q.dtype))


@dataclass
class AttentionConfig:
    """Configuration of :class:`MultiHeadAttention`."""

    d_model: int = 64  # C: model width; also the width of the cross-attention context
    n_heads: int = 4  # H: query heads; head dim D = d_model // n_heads
    n_kv_heads: int | None = None  # KV heads: None = H (MHA), 1 = MQA, in between = GQA
    dropout: float = 0.0  # dropout on attention weights and on the output projection
    bias: bool = True  # biases in the q/k/v/out projections (GPT-2: yes, Llama: no)
    causal: bool = False  # mask future positions (decoders); False for encoders and cross-attention
    impl: Literal["manual", "sdpa"] = "sdpa"  # reference code, or torch's fused kernel (same result)

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.n_heads < 1:
            raise ValueError(f"d_model ({self.d_model}) and n_heads ({self.n_heads}) must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.impl not in ("manual", "sdpa"):
            raise ValueError(f"impl must be 'manual' or 'sdpa', got {self.impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def tiny(cls, **overrides) -> AttentionConfig:
        """A small config for tests and CPU demos."""
        return cls(**{"d_model": 32, "n_heads": 4, **overrides})


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped-query heads and cross-attention.

        head_h = Attention(X W_q^h, Y W_k^h, Y W_v^h);  out = concat(head_1..head_H) W_o

    ``Y = X`` for self-attention; ``Y = context`` (e.g. the encoder output) for cross-attention.
    With ``n_kv_heads < n_heads`` several query heads share one key/value head (GQA; MQA when it is 1),
    which shrinks the KV cache by ``n_heads / n_kv_heads``.
    """

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        C, H, KV, D = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(C, H * D, bias=config.bias)
        self.k_proj = nn.Linear(C, KV * D, bias=config.bias)
        self.v_proj = nn.Linear(C, KV * D, bias=config.bias)
        self.out_proj = nn.Linear(H * D, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def qkv(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """Project and split into heads: q (B, H, T, D), k and v (B, KV, S, D)."""
        if x.ndim != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"x must be (B, T, C={self.config.d_model}), got {tuple(x.shape)}")
        context = x if context is None else context
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.config.d_model:
            raise ValueError(
                f"context must be (B={x.shape[0]}, S, C={self.config.d_model}), got {tuple(context.shape)}"
            )
        B, T, _ = x.shape
        S = context.shape[1]
        H, KV, D = self.config.n_heads, self.config.n_kv_heads, self.config.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(context).view(B, S, KV, D).transpose(1, 2)  # (B, KV, S, D)
        v = self.v_proj(context).view(B, S, KV, D).transpose(1, 2)  # (B, KV, S, D)
        return q, k, v

    def _combined_mask(self, mask, attn_bias, T: int, S: int, device) -> torch.Tensor | None:
        """Merge the causal mask, ``mask`` and ``attn_bias`` into one mask broadcastable to (B, H, T, S)."""
        if mask is not None and mask.ndim == 3:
            mask = mask[:, None]  # (B, T, S) -> (B, 1, T, S): same mask for every head
        if mask is not None and mask.ndim not in (2, 4):
            raise ValueError(f"mask must be (T, S), (B, T, S) or (B, H, T, S), got {tuple(mask.shape)}")
        if self.config.causal:
            causal = causal_mask(T, S, device=device)  # (T, S)
            mask = causal if mask is None else (mask & causal if mask.dtype == torch.bool else
                                                mask.masked_fill(~causal, float("-inf")))
        if attn_bias is not None:
            if attn_bias.ndim not in (3, 4):
                raise ValueError(f"attn_bias must be (H, T, S) or (B, H, T, S), got {tuple(attn_bias.shape)}")
            if mask is not None and mask.dtype == torch.bool:
                mask = attn_bias.masked_fill(~mask, float("-inf"))  # bool -> additive
            elif mask is not None:
                mask = attn_bias + mask
            else:
                mask = attn_bias
        return mask

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        return_weights: bool = False,
    ):
        """Attend from ``x`` (B, T, C) to itself, or to ``context`` (B, S, C) for cross-attention.

        Args:
            mask: boolean (``True`` = may attend) or additive float, shape (T, S), (B, T, S) or
                (B, 1|H, T, S); a key padding mask is ``padding[:, None, None, :]``. The causal mask of
                ``config.causal`` is added automatically.
            attn_bias: additive float bias (H, T, S) or (B, H, T, S), e.g. ALiBi.
            return_weights: also return the weights (B, H, T, S) (the ``sdpa`` impl then runs the manual
                code for this call, since the fused kernel never materialises them).

        Returns:
            the output (B, T, C), or ``AttentionOutput(output, weights)`` when ``return_weights``.
        """
        q, k, v = self.qkv(x, context)
        B, H, T, D = q.shape
        S = k.shape[2]
        n_rep = self.config.n_heads // self.config.n_kv_heads
        full_mask = self._combined_mask(mask, attn_bias, T, S, device=x.device)
        dropout_p = self.config.dropout if self.training else 0.0

        if self.config.impl == "sdpa" and not return_weights:
            if full_mask is not None and full_mask.dtype != torch.bool:
                full_mask = full_mask.to(q.dtype)  # the fused kernel wants the mask in q's dtype
            y = F.scaled_dot_product_attention(
                q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=full_mask, dropout_p=dropout_p
            )  # (B, H, T, D)
            weights = None
        else:
            y, weights = scaled_dot_product_attention(
                q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask=full_mask, dropout_p=dropout_p
            )  # (B, H, T, D), (B, H, T, S)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C): concatenate the heads
        y = self.resid_dropout(self.out_proj(y))
        return AttentionOutput(y, weights) if return_weights else y
