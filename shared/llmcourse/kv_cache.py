"""The KV cache: generate one token at a time without recomputing the past, and what it costs in memory.

A decoder generates token ``t`` from tokens ``0..t-1``. Without a cache every step re-runs the model on
the whole prefix, so step ``t`` costs O(t) (O(t^2) attention inside) and latency grows with the text.
But the keys and values of earlier tokens never change (causal attention: a token never sees later
ones), so we can keep them: each step then computes q, k, v for the *new* token only, appends k and v
to the cache and attends over it. Per-token latency stays nearly flat; the price is memory:

    KV cache bytes = 2 (k and v) * layers * kv_heads * head_dim * tokens * batch * bytes_per_value

which is why grouped-query attention (fewer ``kv_heads``; Ainslie et al. 2023) and multi-query attention
(one; Shazeer 2019) matter for serving: Llama-2-70B's 8 KV heads instead of 64 make its cache 8x smaller.

- :class:`KVCache`: preallocated per-layer key/value buffers (appending by ``torch.cat`` would copy the
  whole cache at every step, which is itself O(t));
- :func:`gpt_forward_cached` / :func:`generate_cached`: cached decoding for :class:`llmcourse.transformer.GPT`
  (learned, sinusoidal, ALiBi or no positions), equal to ``GPT.generate`` token for token;
- :func:`per_token_latency`: measured latency of producing token ``t`` with and without the cache;
- :class:`KVCacheSpec` and :func:`kv_cache_bytes`: the memory calculator, with SmolLM2-135M and
  Llama-2-70B presets, and :func:`kv_cache_table` comparing MHA, GQA and MQA.

Taught in ``modules/03_deployment/04_gqa_kv_cache.py``.

References:
- Pope et al. 2022, "Efficiently Scaling Transformer Inference", https://arxiv.org/abs/2211.05102
- Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need", https://arxiv.org/abs/1911.02150
- Ainslie et al. 2023, "GQA", https://arxiv.org/abs/2305.13245
- Touvron et al. 2023, "Llama 2" (70B: 80 layers, 64 heads, 8 KV heads, head dim 128, context 4096),
  https://arxiv.org/abs/2307.09288

Shape legend: B batch, T new tokens, S cached + new tokens, C model width, H query heads, KV key/value
heads, D head dim, L layers.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import causal_mask, repeat_kv
from .positional import alibi_bias, sinusoidal_encoding
from .transformer import GPT, TransformerBlock, check_sampling_args, sample_next
from .utils import synchronize, timer

__all__ = [
    "KVCache",
    "gpt_forward_cached",
    "generate_cached",
    "LatencyProfile",
    "per_token_latency",
    "KVCacheSpec",
    "SMOLLM2_135M",
    "LLAMA2_70B",
    "kv_cache_bytes",
    "spec_from_hf_config",
    "KVCacheRow",
    "kv_cache_table",
]


# ----------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer, preallocated as (B, KV, max_len, D) buffers.

    ``length`` positions are filled. :meth:`update` writes a layer's new keys/values after them and
    returns views of everything so far; :meth:`advance` moves ``length`` once all layers are done.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size), ("n_kv_heads", n_kv_heads),
                            ("max_len", max_len), ("head_dim", head_dim)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, KV, max_len, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @classmethod
    def for_model(cls, model: GPT, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache sized for ``model`` (max_len defaults to its ``block_size``)."""
        c = model.config
        weight = model.wte.weight
        return cls(c.n_layer, batch_size, c.n_kv_heads or c.n_head, max_len or c.block_size,
                   c.d_model // c.n_head, device=weight.device, dtype=weight.dtype)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes of the allocated buffers (keys and values, all layers)."""
        return self.k.numel() * self.k.element_size() * 2

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, KV, T, D) at positions ``length .. length + T - 1`` of ``layer``; return
        the keys and values of positions ``0 .. length + T - 1``, each (B, KV, S, D)."""
        B, KV, T, D = k.shape
        if k.shape != v.shape or (B, KV, D) != (self.k.shape[1], self.k.shape[2], self.k.shape[4]):
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (B={self.k.shape[1]}, "
                             f"KV={self.k.shape[2]}, T, D={self.k.shape[4]})")
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {self.length} used + {T} new")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # views: no copy

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0


# ----------------------------------------------------------------------------------------------------
# Cached decoding for our GPT
# ----------------------------------------------------------------------------------------------------
def _sublayer(block: TransformerBlock, x: torch.Tensor, ln: nn.Module, fn) -> torch.Tensor:
    """Residual + LayerNorm around ``fn``, pre- or post-norm as the block is configured."""
    if block.config.norm == "pre":
        out = fn(ln(x))
        return x + out if block.config.residual else out
    out = fn(x)
    return ln(x + out if block.config.residual else out)


def _cached_attention(block: TransformerBlock, h: torch.Tensor, cache: KVCache, layer: int,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of the T new positions over the S cached + new ones. h (B, T, C) -> (B, T, C)."""
    attn = block.attn
    q, k, v = attn.qkv(h)  # (B, H, T, D), (B, KV, T, D), (B, KV, T, D)
    k_all, v_all = cache.update(layer, k, v)  # (B, KV, S, D)
    B, H, T, D = q.shape
    KV, S = k_all.shape[1], k_all.shape[2]
    n_rep = H // KV
    if T == 1:
        # Decoding: one query per head, and it may see every cached key. Treat each group's n_rep query
        # heads as n_rep "positions" of its key/value head: GQA without copying the cache n_rep times
        # (repeat_kv would copy (B, H, S, D) at every step, a cost that grows with S).
        q_groups = q.view(B, KV, n_rep, D)  # (B, KV, n_rep, D)
        group_bias = None if bias is None else bias.view(KV, n_rep, S).to(q.dtype)  # (H, 1, S) -> (KV, n_rep, S)
        y = F.scaled_dot_product_attention(q_groups, k_all, v_all, attn_mask=group_bias)  # (B, KV, n_rep, D)
        return attn.resid_dropout(attn.out_proj(y.reshape(B, 1, H * D)))
    allowed = causal_mask(T, S, device=h.device)  # (T, S): the new queries are the last T positions
    mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
    y = F.scaled_dot_product_attention(q, repeat_kv(k_all, n_rep), repeat_kv(v_all, n_rep), attn_mask=mask)
    y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
    return attn.resid_dropout(attn.out_proj(y))


def gpt_forward_cached(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run ``model`` on the new tokens ``idx`` (B, T) that follow the ``cache.length`` cached ones;
    append their keys/values to ``cache`` and return logits (B, T, V).

    Same numbers as ``model(full_sequence).logits[:, -T:]``: positions start at ``cache.length``.
    Call it once with the prompt ("prefill"), then with one token at a time ("decode").
    """
    c = model.config
    if idx.ndim != 2 or idx.shape[0] != cache.k.shape[1]:
        raise ValueError(f"idx must be (B={cache.k.shape[1]}, T), got {tuple(idx.shape)}")
    B, T = idx.shape
    start, S = cache.length, cache.length + T
    if c.pos_encoding in ("learned", "sinusoidal") and S > c.block_size:
        raise ValueError(f"{S} positions exceed block_size {c.block_size} ({c.pos_encoding} positions)")
    x = model.wte(idx)  # (B, T, C)
    if c.pos_encoding == "learned":
        x = x + model.wpe(T, offset=start)
    elif c.pos_encoding == "sinusoidal":  # as transformer._add_positions, at positions start .. S - 1
        x = x * math.sqrt(c.d_model) + sinusoidal_encoding(S, c.d_model, device=x.device, dtype=x.dtype)[start:]
    x = model.drop(x)
    bias = alibi_bias(c.n_head, T, S, device=x.device, dtype=x.dtype) if c.pos_encoding == "alibi" else None
    for layer, block in enumerate(model.h):
        x = _sublayer(block, x, block.ln_1, lambda h: _cached_attention(block, h, cache, layer, bias))
        x = _sublayer(block, x, block.ln_2, block.mlp)
    cache.advance(T)
    return model.lm_head(model.ln_f(x))  # (B, T, V)


@torch.no_grad()
def generate_cached(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, greedy: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``GPT.generate`` with a KV cache: same arguments, same tokens (same random draws for the same
    ``generator``), but each step runs the model on one token. idx (B, T) -> (B, T + max_new_tokens).
    Learned/sinusoidal positions cannot slide, so ``T + max_new_tokens`` must fit in ``block_size``."""
    check_sampling_args(max_new_tokens, temperature, top_k, greedy)
    total = idx.shape[1] + max_new_tokens
    if model.config.pos_encoding in ("learned", "sinusoidal") and total > model.config.block_size:
        raise ValueError(f"{total} tokens exceed block_size {model.config.block_size}: a cache cannot slide a "
                         "window over learned positions (use GPT.generate, which crops)")
    was_training = model.training
    model.eval()
    try:
        cache = KVCache.for_model(model, idx.shape[0], max_len=max(total, 1))
        logits = gpt_forward_cached(model, idx, cache)[:, -1, :].float()  # prefill: the whole prompt
        for step in range(max_new_tokens):
            next_id = sample_next(logits, temperature, top_k, greedy, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if step < max_new_tokens - 1:  # decode: only the new token goes through the model
                logits = gpt_forward_cached(model, next_id, cache)[:, -1, :].float()
    finally:
        model.train(was_training)
    return idx


# ----------------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------------
class LatencyProfile(NamedTuple):
    """Median seconds to produce the token at each of ``positions`` (the prefix length before it)."""

    positions: list[int]
    seconds: list[float]
    use_cache: bool


def _timed(fn) -> float:
    clock = timer()  # CPU time of this thread inside num_threads(1): a busy machine cannot inflate it
    synchronize()
    start = clock()
    fn()
    synchronize()
    return clock() - start


@torch.no_grad()
def per_token_latency(model: GPT, positions: Sequence[int], use_cache: bool, batch_size: int = 1,
                      repeat: int = 5, window: int = 8, seed: int = 0) -> LatencyProfile:
    """Measure how long producing one more token takes once the text is ``p`` tokens long.

    Without the cache that is a full forward pass over the ``p``-token prefix (median of ``repeat``
    runs). With the cache it is one decode step: we decode from an empty cache up to ``max(positions) +
    window`` tokens, ``repeat`` times, and take the median of the steps within ``window`` tokens of
    ``p``. The tokens are random (latency does not depend on which tokens), fed in, not sampled.
    """
    positions = sorted(set(int(p) for p in positions))
    if not positions or positions[0] < 1 or repeat < 1 or window < 1:
        raise ValueError(f"need positions >= 1, repeat >= 1, window >= 1; got {positions}, {repeat}, {window}")
    device = model.wte.weight.device
    longest = positions[-1] + window
    if model.config.pos_encoding in ("learned", "sinusoidal") and longest > model.config.block_size:
        raise ValueError(f"positions up to {longest} exceed block_size {model.config.block_size}")
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(model.config.vocab_size, (batch_size, longest), generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        if not use_cache:
            model(tokens[:, : positions[0]])  # warm-up
            seconds = [statistics.median(_timed(lambda: model(tokens[:, :p])) for _ in range(repeat))
                       for p in positions]
        else:
            steps: list[list[float]] = [[] for _ in range(longest)]
            for _ in range(repeat + 1):  # the first pass warms up and is discarded
                cache = KVCache.for_model(model, batch_size, max_len=longest)
                times = [_timed(lambda t=t: gpt_forward_cached(model, tokens[:, t:t + 1], cache))
                         for t in range(longest)]
                for t, s in enumerate(times):
                    steps[t].append(s)
            steps = [s[1:] for s in steps]
            seconds = []
            for p in positions:
                near = [s for t in range(max(0, p - window // 2), min(longest, p + window // 2)) for s in steps[t]]
                seconds.append(statistics.median(near))
    finally:
        model.train(was_training)
    return LatencyProfile(positions, seconds, use_cache)


# ----------------------------------------------------------------------------------------------------
# Memory calculator
# ----------------------------------------------------------------------------------------------------
def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int = 1,
                   bytes_per_value: float = 2) -> int:
    """``2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_value``: keys and values
    of every layer for every cached token (2 bytes per value in fp16/bf16)."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("seq_len", seq_len), ("batch_size", batch_size)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if bytes_per_value <= 0:
        raise ValueError(f"bytes_per_value must be positive, got {bytes_per_value}")
    return int(2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_value)


@dataclass(frozen=True)
class KVCacheSpec:
    """What decides a model's KV-cache size."""

    name: str  # display name
    n_layers: int  # L
    n_heads: int  # H: query heads
    n_kv_heads: int  # KV: key/value heads (= H for MHA, 1 for MQA)
    head_dim: int  # D
    context_length: int  # the longest context the model supports

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")

    @property
    def kind(self) -> str:
        return "MHA" if self.n_kv_heads == self.n_heads else "MQA" if self.n_kv_heads == 1 else "GQA"

    def bytes_per_token(self, bytes_per_value: float = 2) -> int:
        return kv_cache_bytes(self.n_layers, self.n_kv_heads, self.head_dim, 1, 1, bytes_per_value)

    def nbytes(self, seq_len: int | None = None, batch_size: int = 1, bytes_per_value: float = 2) -> int:
        """Cache bytes for ``batch_size`` sequences of ``seq_len`` tokens (default: the full context)."""
        seq_len = self.context_length if seq_len is None else seq_len
        return kv_cache_bytes(self.n_layers, self.n_kv_heads, self.head_dim, seq_len, batch_size, bytes_per_value)

    def with_kv_heads(self, n_kv_heads: int) -> KVCacheSpec:
        """The same model with another number of key/value heads (MHA: n_heads, MQA: 1)."""
        return replace(self, n_kv_heads=n_kv_heads)


#: SmolLM2-135M (Allal et al. 2025): 30 layers, 9 query heads, 3 KV heads of dim 64, context 8192.
SMOLLM2_135M = KVCacheSpec("SmolLM2-135M", n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64, context_length=8192)
#: Llama-2-70B (Touvron et al. 2023): 80 layers, 64 query heads, 8 KV heads of dim 128, context 4096.
LLAMA2_70B = KVCacheSpec("Llama-2-70B", n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128, context_length=4096)


def spec_from_hf_config(config, name: str = "") -> KVCacheSpec:
    """A :class:`KVCacheSpec` from a Hugging Face Llama-style config (``num_hidden_layers``,
    ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``max_position_embeddings``)."""
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return KVCacheSpec(name or getattr(config, "name_or_path", "") or "model", config.num_hidden_layers, n_heads,
                       getattr(config, "num_key_value_heads", None) or n_heads, head_dim,
                       config.max_position_embeddings)


class KVCacheRow(NamedTuple):
    """One line of :func:`kv_cache_table`."""

    kind: str  # MHA, GQA or MQA
    n_kv_heads: int
    bytes_per_token: int
    total_bytes: int  # for seq_len tokens x batch_size sequences


def kv_cache_table(spec: KVCacheSpec, seq_len: int | None = None, batch_size: int = 1,
                   bytes_per_value: float = 2) -> list[KVCacheRow]:
    """KV-cache size of ``spec`` as MHA (KV = H), as itself, and as MQA (KV = 1), largest first."""
    counts = sorted({spec.n_heads, spec.n_kv_heads, 1}, reverse=True)
    rows = []
    for n in counts:
        s = spec.with_kv_heads(n)
        rows.append(KVCacheRow(s.kind, n, s.bytes_per_token(bytes_per_value),
                               s.nbytes(seq_len, batch_size, bytes_per_value)))
    return rows
