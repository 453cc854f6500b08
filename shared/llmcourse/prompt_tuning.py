"""Soft prompts (prompt tuning) and prefix tuning: adapt a frozen language model by learning a few
vectors that it reads, instead of changing its weights.

- **Prompt tuning** (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
  https://arxiv.org/abs/2104.08691): P trainable "virtual token" embeddings (P, C) are prepended to the
  input embeddings. Only the first layer sees them directly; P * C parameters per task.
- **Prefix tuning** (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
  https://arxiv.org/abs/2101.00190; P-tuning v2, Liu et al. 2022): P trainable keys and values for *every*
  layer, which every real token can attend to. L * 2 * KV * D * P parameters per task.

Both work with this package's :class:`~llmcourse.transformer.GPT` and with Hugging Face causal LMs
(``LlamaForCausalLM``...), and reproduce peft's ``PromptTuningConfig`` / ``PrefixTuningConfig`` (same
parameter shapes; same outputs given the same vectors: see ``tests/test_prompt_tuning.py``).

Taught in ``modules/02_fine_tuning/02_prompt_tuning.py`` and ``03_prefix_tuning.py`` (and lab 2).
Shape legend: B batch, T real tokens, P virtual tokens, C model width, V vocabulary, L layers,
KV key/value heads, D head dim.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import causal_mask, repeat_kv
from .transformer import GPT

__all__ = [
    "LMOutput",
    "init_token_ids",
    "SoftPrompt",
    "token_embedding",
    "logits_from_embeddings",
    "PromptTuningLM",
    "nearest_tokens",
    "PrefixKV",
    "PrefixTuningLM",
    "kv_geometry",
    "lm_loss",
]


class LMOutput(NamedTuple):
    """``logits`` (B, T, V) for the real tokens only (virtual positions are dropped), ``loss`` or None."""

    logits: torch.Tensor
    loss: torch.Tensor | None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy (fp32) of logits (B, T, V) against next-token ``targets`` (B, T) (already shifted:
    ``targets[:, t]`` is the token after position t; -100 is ignored), or None without targets."""
    if targets is None:
        return None
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets {tuple(targets.shape)} must match logits (B, T) {tuple(logits.shape[:2])}")
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


# ----------------------------------------------------------------------------------------------------
# Soft prompts
# ----------------------------------------------------------------------------------------------------
def init_token_ids(token_ids: Sequence[int], n_virtual: int) -> list[int]:
    """Tokens whose embeddings initialise ``n_virtual`` virtual tokens from a text prompt: the text's
    tokens, repeated or truncated to length ``n_virtual`` (peft's ``PromptTuningInit.TEXT`` rule)."""
    token_ids = list(token_ids)
    if not token_ids:
        raise ValueError("the init text has no tokens")
    if n_virtual < 1:
        raise ValueError(f"n_virtual must be >= 1, got {n_virtual}")
    repeats = math.ceil(n_virtual / len(token_ids))
    return (token_ids * repeats)[:n_virtual]


class SoftPrompt(nn.Module):
    """``n_virtual`` trainable embeddings (P, C), prepended to a batch of input embeddings.

    ``init`` is a (P, C) tensor to start from (e.g. the embeddings of a text prompt, see
    :meth:`from_text`); otherwise the vectors are drawn from N(0, ``std``^2) (peft's RANDOM init uses
    std 1; matching the vocabulary's own scale, ``embedding.weight.std()``, trains better).
    Parameters are float32; :meth:`forward` casts them to the embeddings' dtype.
    """

    def __init__(self, n_virtual: int, dim: int, init: torch.Tensor | None = None, std: float = 1.0,
                 device: torch.device | str | None = None):
        super().__init__()
        if n_virtual < 1 or dim < 1:
            raise ValueError(f"n_virtual ({n_virtual}) and dim ({dim}) must be positive")
        if init is not None:
            if tuple(init.shape) != (n_virtual, dim):
                raise ValueError(f"init must have shape (n_virtual, dim) = ({n_virtual}, {dim}), got {tuple(init.shape)}")
            weight = init.detach().to(device=device or init.device, dtype=torch.float32).clone()
        else:
            if std <= 0:
                raise ValueError(f"std must be positive, got {std}")
            weight = torch.randn(n_virtual, dim, device=device) * std
        self.weight = nn.Parameter(weight)  # (P, C)

    @classmethod
    def from_text(cls, embedding: nn.Embedding, token_ids: Sequence[int], n_virtual: int) -> SoftPrompt:
        """Start from the embeddings of a text prompt (``token_ids`` repeated/truncated to ``n_virtual``)."""
        ids = torch.tensor(init_token_ids(token_ids, n_virtual), device=embedding.weight.device)
        return cls(n_virtual, embedding.embedding_dim, init=embedding.weight[ids])

    @property
    def n_virtual(self) -> int:
        return self.weight.shape[0]

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, P + T, C): the virtual tokens first."""
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"inputs_embeds must be (B, T, C={self.weight.shape[1]}), got {tuple(inputs_embeds.shape)}")
        B = inputs_embeds.shape[0]
        prompt = self.weight.to(inputs_embeds.dtype).unsqueeze(0).expand(B, -1, -1)  # (B, P, C)
        return torch.cat([prompt, inputs_embeds], dim=1)


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The input token embedding of our GPT (``wte``) or of a Hugging Face model."""
    if isinstance(model, GPT):
        return model.wte
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings()
    raise ValueError(f"cannot find the token embedding of {type(model).__name__}")


def _gpt_from_embeddings(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """Our GPT's forward pass from token embeddings x (B, T, C) instead of ids: add positions, run the
    blocks, final norm, head. Returns logits (B, T, V)."""
    c = model.config
    T = x.shape[1]
    if c.pos_encoding == "learned":
        if T > c.block_size:
            raise ValueError(f"{T} positions (virtual + real) exceed block_size {c.block_size}")
        x = x + model.wpe(T)  # (B, T, C) + (T, C)
    elif c.pos_encoding != "none":
        raise ValueError(f"prompt tuning supports learned or no positions, not {c.pos_encoding!r}")
    x = model.drop(x)
    for block in model.h:
        x = block(x)
    return model.lm_head(model.ln_f(x))  # (B, T, V)


def logits_from_embeddings(model: nn.Module, inputs_embeds: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run a causal LM on embeddings (B, T, C) rather than token ids; logits (B, T, V)."""
    if isinstance(model, GPT):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("our GPT takes no padding mask: pad on the right and ignore those targets")
        return _gpt_from_embeddings(model, inputs_embeds)
    return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits


def _freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


class PromptTuningLM(nn.Module):
    """A frozen causal LM reading a trainable :class:`SoftPrompt` before every input.

    ``forward(input_ids (B, T), targets=None, attention_mask=None)`` returns :class:`LMOutput` with the
    logits of the T real positions; ``targets`` (B, T) are next-token ids (-100 = ignore). The last virtual
    position's prediction (of the first real token) is dropped, as peft does by labelling it -100.
    Swap tasks by assigning another prompt: ``lm.prompt = prompts["task"]``.
    """

    def __init__(self, model: nn.Module, prompt: SoftPrompt):
        super().__init__()
        emb = token_embedding(model)
        if prompt.weight.shape[1] != emb.embedding_dim:
            raise ValueError(f"prompt width {prompt.weight.shape[1]} != model width {emb.embedding_dim}")
        _freeze(model)
        self.model = model
        self.prompt = prompt

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> LMOutput:
        x = self.prompt(token_embedding(self.model)(input_ids))  # (B, P + T, C)
        P = self.prompt.n_virtual
        if attention_mask is not None:
            ones = attention_mask.new_ones(attention_mask.shape[0], P)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + T)
        logits = logits_from_embeddings(self.model, x, attention_mask)[:, P:]  # (B, T, V)
        return LMOutput(logits, lm_loss(logits, targets))


@torch.no_grad()
def nearest_tokens(vectors: torch.Tensor, embedding_weight: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Indices (P, k) of the vocabulary embeddings (V, C) most cosine-similar to each vector (P, C):
    the usual way to "read" a learned soft prompt (Lester et al. 2021, section 7)."""
    if vectors.ndim != 2 or embedding_weight.ndim != 2 or vectors.shape[1] != embedding_weight.shape[1]:
        raise ValueError(f"need (P, C) vectors and a (V, C) vocabulary; got {tuple(vectors.shape)} and "
                         f"{tuple(embedding_weight.shape)}")
    sims = F.normalize(vectors.float(), dim=-1) @ F.normalize(embedding_weight.float(), dim=-1).T  # (P, V)
    return sims.topk(k, dim=-1).indices


# ----------------------------------------------------------------------------------------------------
# Prefix tuning
# ----------------------------------------------------------------------------------------------------
def kv_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(layers L, key/value heads KV, head dim D) of our GPT or of a Hugging Face decoder."""
    if isinstance(model, GPT):
        c = model.config
        return c.n_layer, c.n_kv_heads or c.n_head, c.d_model // c.n_head
    c = model.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return c.num_hidden_layers, kv, head_dim


class PrefixKV(nn.Module):
    """Trainable per-layer key/value prefixes, stored as peft's ``PrefixEncoder`` stores them (without the
    optional reparametrisation MLP): one (P, L * 2 * KV * D) matrix, row p = virtual token p's keys and
    values for every layer."""

    def __init__(self, n_virtual: int, n_layers: int, n_kv_heads: int, head_dim: int, std: float = 1.0,
                 device: torch.device | str | None = None):
        super().__init__()
        for name, v in (("n_virtual", n_virtual), ("n_layers", n_layers), ("n_kv_heads", n_kv_heads),
                        ("head_dim", head_dim)):
            if v < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        self.n_virtual, self.n_layers, self.n_kv_heads, self.head_dim = n_virtual, n_layers, n_kv_heads, head_dim
        # peft's nn.Embedding default init is N(0, 1); std scales it.
        self.weight = nn.Parameter(torch.randn(n_virtual, n_layers * 2 * n_kv_heads * head_dim, device=device) * std)

    @torch.no_grad()
    def load_kv(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set the prefixes from L pairs of (keys, values), each (1, KV, P, D) (the inverse of forward)."""
        P, L, KV, D = self.n_virtual, self.n_layers, self.n_kv_heads, self.head_dim
        if len(kv) != L or any(t.shape != (1, KV, P, D) for pair in kv for t in pair):
            raise ValueError(f"need {L} (keys, values) pairs of shape (1, {KV}, {P}, {D})")
        stacked = torch.stack([t[0] for pair in kv for t in pair])  # (2L, KV, P, D)
        self.weight.copy_(stacked.permute(2, 0, 1, 3).reshape(P, L * 2 * KV * D))

    def forward(self, batch_size: int, dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """L pairs (keys, values), each (B, KV, P, D), in peft's layout."""
        P, L, KV, D = self.n_virtual, self.n_layers, self.n_kv_heads, self.head_dim
        w = self.weight if dtype is None else self.weight.to(dtype)
        kv = w.unsqueeze(0).expand(batch_size, -1, -1).reshape(batch_size, P, L * 2, KV, D)  # (B, P, 2L, KV, D)
        kv = kv.permute(2, 0, 3, 1, 4)  # (2L, B, KV, P, D)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(L)]


class _PrefixSelfAttention(nn.Module):
    """Wraps one of our GPT's causal self-attention layers so that it also attends to P prefix keys and
    values: scores (T, P + T), every real token sees the whole prefix, then the causal part."""

    def __init__(self, attn: nn.Module, layer: int):
        super().__init__()
        self.attn = attn
        self.layer = layer
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # set by PrefixTuningLM per forward
        self.capture = False  # set by PrefixTuningLM.init_from_text: keep the keys/values of a plain call
        self.captured: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x, context=None, mask=None, attn_bias=None, return_weights=False):
        if context is not None or mask is not None or attn_bias is not None or return_weights:
            raise ValueError("prefix tuning supports plain causal self-attention only")
        if self.prefix is None:
            if self.capture:  # only then: it costs a second q/k/v projection
                _, k, v = self.attn.qkv(x)
                self.captured = (k.detach(), v.detach())
            return self.attn(x)
        a = self.attn
        q, k, v = a.qkv(x)  # (B, H, T, D), (B, KV, T, D) x 2
        pk, pv = self.prefix  # (B, KV, P, D)
        k, v = torch.cat([pk.to(k.dtype), k], dim=2), torch.cat([pv.to(v.dtype), v], dim=2)  # (B, KV, P + T, D)
        B, H, T, D = q.shape
        P = pk.shape[2]
        allowed = torch.cat([torch.ones(T, P, dtype=torch.bool, device=x.device),
                             causal_mask(T, device=x.device)], dim=1)  # (T, P + T)
        n_rep = H // k.shape[1]
        dropout_p = a.config.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=allowed,
                                           dropout_p=dropout_p)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        return a.resid_dropout(a.out_proj(y))


class PrefixTuningLM(nn.Module):
    """A frozen causal LM whose every attention layer also attends to trainable prefixes (:class:`PrefixKV`).

    For Hugging Face models the prefixes go in as ``past_key_values`` (exactly what peft does, so the real
    tokens' RoPE positions start at P); for our GPT each attention layer is wrapped (positions unchanged).
    ``forward(input_ids, targets=None, attention_mask=None)`` -> :class:`LMOutput` as
    :class:`PromptTuningLM`.
    """

    def __init__(self, model: nn.Module, n_virtual: int, std: float = 1.0):
        super().__init__()
        L, KV, D = kv_geometry(model)
        _freeze(model)
        self.model = model
        ref = next(model.parameters())
        self.prefix = PrefixKV(n_virtual, L, KV, D, std=std, device=ref.device)
        self._wrappers: list[_PrefixSelfAttention] = []
        if isinstance(model, GPT):
            if model.config.pos_encoding == "alibi":
                raise ValueError("prefix tuning of an ALiBi GPT is not supported (the bias has no prefix part)")
            for i, block in enumerate(model.h):
                wrapper = block.attn if isinstance(block.attn, _PrefixSelfAttention) else _PrefixSelfAttention(block.attn, i)
                block.attn = wrapper
                self._wrappers.append(wrapper)

    @torch.no_grad()
    def init_from_text(self, token_ids: Sequence[int]) -> None:
        """Start the prefixes from the keys and values that the frozen model itself computes for a text of
        P tokens (Li & Liang 2021, section 7.2: initialising with real words' activations trains faster and
        more stably than random vectors). The text's tokens are repeated or truncated to P, as in
        :func:`init_token_ids`. For a Hugging Face model these are the cached (post-RoPE) keys at positions
        0..P-1, so the real tokens that follow sit at positions P.. as usual."""
        ids = torch.tensor([init_token_ids(token_ids, self.prefix.n_virtual)], device=self.prefix.weight.device)
        if isinstance(self.model, GPT):
            for w in self._wrappers:
                w.capture = True
            try:
                self.model(ids)
            finally:
                for w in self._wrappers:
                    w.capture = False
            kv = [w.captured for w in self._wrappers]
            for w in self._wrappers:
                w.captured = None
        else:
            out = self.model(input_ids=ids, use_cache=True)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefix.load_kv([(k.float(), v.float()) for k, v in kv])

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> LMOutput:
        B = input_ids.shape[0]
        ref_dtype = token_embedding(self.model).weight.dtype
        kv = self.prefix(B, dtype=ref_dtype)
        if isinstance(self.model, GPT):
            if attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError("our GPT takes no padding mask: pad on the right and ignore those targets")
            for wrapper in self._wrappers:
                wrapper.prefix = kv[wrapper.layer]
            try:
                logits = self.model(input_ids).logits
            finally:
                for wrapper in self._wrappers:
                    wrapper.prefix = None
        else:
            from transformers import DynamicCache

            if attention_mask is not None:
                ones = attention_mask.new_ones(B, self.prefix.n_virtual)
                attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + T)
            cache = DynamicCache(kv)
            # transformers >= 5.20 names the argument `cache` (`past_key_values` is deprecated there).
            key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                                **{key: cache}).logits
        return LMOutput(logits, lm_loss(logits, targets))
