"""Transformer models, small and readable: a GPT decoder, a BERT-like encoder and an encoder-decoder.

One :class:`TransformerBlock` (attention + feed-forward, each wrapped in a residual connection and a
LayerNorm) builds all three:

- :class:`GPT`: causal decoder-only language model (Radford et al. 2018 "Improving Language Understanding
  by Generative Pre-Training" (GPT-1); Radford et al. 2019 "Language Models are Unsupervised Multitask
  Learners" (GPT-2); Brown et al. 2020 "Language Models are Few-Shot Learners" (GPT-3)). Names and math
  allow exact weight exchange with Hugging Face ``GPT2LMHeadModel`` (see ``llmcourse.models.gpt_to_hf``).
- :class:`Encoder`: bidirectional encoder with a masked-language-model head (Devlin et al. 2019, "BERT",
  https://arxiv.org/abs/1810.04805).
- :class:`EncoderDecoder`: the original transformer for sequence-to-sequence tasks, the decoder
  cross-attending to the encoder (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762).

Taught in ``modules/01_transformers/02_transformer_block.py`` (block, pre/post-norm, residuals),
``03_architectures.py`` (encoder-only, decoder-only, encoder-decoder) and ``04_pretraining.py`` (training and
sampling a GPT).

Shape legend: B batch, T (target) length, S source length, C model width, V vocabulary, H heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionConfig, MultiHeadAttention
from .positional import LearnedPositionalEmbedding, alibi_bias, sinusoidal_encoding

__all__ = [
    "FeedForward",
    "BlockConfig",
    "BlockOutput",
    "TransformerBlock",
    "GPTConfig",
    "GPTOutput",
    "GPT",
    "EncoderConfig",
    "EncoderOutput",
    "Encoder",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
    "EncoderDecoder",
]

Activation = Literal["gelu", "gelu_tanh", "relu", "swiglu"]
PosEncoding = Literal["learned", "sinusoidal", "alibi", "none"]
_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
_POS_ENCODINGS = ("learned", "sinusoidal", "alibi", "none")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class FeedForward(nn.Module):
    """Position-wise feed-forward network: ``down(act(up(x)))``, or with SwiGLU
    ``down(silu(gate(x)) * up(x))`` (Shazeer 2020, "GLU Variants Improve Transformer"; used by Llama).

    ``gelu_tanh`` is GPT-2's ``gelu_new`` (the tanh approximation); ``gelu`` is exact (BERT).
    Shapes: (..., C) -> (..., C) through a hidden width ``d_ff`` (usually 4C).
    """

    def __init__(self, d_model: int, d_ff: int, activation: Activation = "gelu", dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        _check_choice("activation", activation, _ACTIVATIONS)
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"d_model ({d_model}) and d_ff ({d_ff}) must be positive")
        self.activation = activation
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)  # (..., d_ff)
        if self.activation == "swiglu":
            h = F.silu(self.gate_proj(x)) * h
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.relu(h)
        return self.dropout(self.down_proj(h))  # (..., C)


@dataclass
class BlockConfig:
    """Configuration of one :class:`TransformerBlock`."""

    d_model: int = 64  # C: model width
    n_heads: int = 4  # H: attention heads
    n_kv_heads: int | None = None  # key/value heads (GQA/MQA); None = n_heads
    d_ff: int | None = None  # feed-forward width; None = 4 * d_model
    dropout: float = 0.0  # dropout on attention weights and sub-layer outputs
    bias: bool = True  # biases in linear layers and LayerNorms
    causal: bool = True  # decoder (True) or encoder (False) self-attention
    cross_attention: bool = False  # add a cross-attention sub-layer (encoder-decoder's decoder)
    norm: Literal["pre", "post"] = "pre"  # LayerNorm before each sub-layer (GPT-2) or after (2017, BERT)
    residual: bool = True  # residual connections; False only for the gradient-norm experiment
    activation: Activation = "gelu_tanh"  # feed-forward non-linearity
    impl: Literal["manual", "sdpa"] = "sdpa"  # attention implementation (same result)
    norm_eps: float = 1e-5  # LayerNorm epsilon (GPT-2: 1e-5, BERT: 1e-12)

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        _check_choice("norm", self.norm, ("pre", "post"))
        _check_choice("activation", self.activation, _ACTIVATIONS)
        if self.d_ff < 1:
            raise ValueError(f"d_ff must be positive, got {self.d_ff}")
        self.attention_config()  # validates d_model, heads, dropout, impl

    def attention_config(self, causal: bool | None = None) -> AttentionConfig:
        return AttentionConfig(self.d_model, self.n_heads, self.n_kv_heads, self.dropout, self.bias,
                               self.causal if causal is None else causal, self.impl)

    @classmethod
    def tiny(cls, **overrides) -> BlockConfig:
        return cls(**{"d_model": 32, "n_heads": 4, **overrides})


class BlockOutput(NamedTuple):
    """``hidden`` (B, T, C) and, when asked, attention weights (B, H, T, T) and (B, H, T, S)."""

    hidden: torch.Tensor
    self_weights: torch.Tensor | None
    cross_weights: torch.Tensor | None


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each with a residual and a LayerNorm.

        pre-norm  (GPT-2):       x = x + f(LN(x))
        post-norm (2017, BERT):  x = LN(x + f(x))

    Pre-norm keeps an identity path from the output back to the embeddings, so deep stacks train without
    warm-up tricks (Xiong et al. 2020, https://arxiv.org/abs/2002.04745). ``residual=False`` drops the
    ``x +`` to show how gradients vanish without it.
    """

    def __init__(self, config: BlockConfig):
        super().__init__()
        self.config = c = config
        self.ln_1 = nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.bias)
        self.attn = MultiHeadAttention(c.attention_config())
        if c.cross_attention:
            self.ln_cross = nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.bias)
            self.cross_attn = MultiHeadAttention(c.attention_config(causal=False))
        self.ln_2 = nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.bias)
        self.mlp = FeedForward(c.d_model, c.d_ff, c.activation, c.dropout, c.bias)

    def _sublayer(self, x: torch.Tensor, ln: nn.LayerNorm, fn) -> torch.Tensor:
        if self.config.norm == "pre":
            out = fn(ln(x))
            return x + out if self.config.residual else out
        out = fn(x)
        return ln(x + out if self.config.residual else out)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        return_weights: bool = False,
    ):
        """x (B, T, C) -> (B, T, C). ``context`` (B, S, C) feeds the cross-attention; ``mask``/``attn_bias``
        go to self-attention, ``context_mask`` (e.g. source padding, (B, 1, 1, S)) to cross-attention.
        Returns a :class:`BlockOutput` when ``return_weights``, else the tensor."""
        if self.config.cross_attention and context is None:
            raise ValueError("this block has cross-attention: pass context (B, S, C)")
        weights = {}

        def self_attn(h):
            out = self.attn(h, mask=mask, attn_bias=attn_bias, return_weights=return_weights)
            if return_weights:
                out, weights["self"] = out
            return out

        def cross_attn(h):
            out = self.cross_attn(h, context, mask=context_mask, return_weights=return_weights)
            if return_weights:
                out, weights["cross"] = out
            return out

        x = self._sublayer(x, self.ln_1, self_attn)
        if self.config.cross_attention:
            x = self._sublayer(x, self.ln_cross, cross_attn)
        x = self._sublayer(x, self.ln_2, self.mlp)
        if return_weights:
            return BlockOutput(x, weights.get("self"), weights.get("cross"))
        return x


def _init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and residual projections scaled by
    ``1 / sqrt(2 * n_layer)`` so the residual stream's variance does not grow with depth."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("out_proj", "down_proj")) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def _check_idx(idx: torch.Tensor, name: str = "idx") -> None:
    if idx.ndim != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"{name} must be an integer tensor (B, T), got {idx.dtype} {tuple(idx.shape)}")
    if idx.shape[1] < 1:
        raise ValueError(f"{name} must contain at least one token, got shape {tuple(idx.shape)}")


def _add_positions(x: torch.Tensor, kind: str, wpe: LearnedPositionalEmbedding | None) -> torch.Tensor:
    """Add position information to token embeddings x (B, T, C) (ALiBi and "none" add nothing)."""
    T, C = x.shape[1], x.shape[2]
    if kind == "learned":
        return x + wpe(T)  # (B, T, C) + (T, C)
    if kind == "sinusoidal":
        # Vaswani et al. (section 3.4) scale the embeddings by sqrt(C) so that the fixed waves (amplitude 1)
        # do not drown the tokens' identity (embeddings are initialised with std 0.02).
        return x * math.sqrt(C) + sinusoidal_encoding(T, C, device=x.device, dtype=x.dtype)
    return x


# ----------------------------------------------------------------------------------------------------
# GPT: decoder-only language model
# ----------------------------------------------------------------------------------------------------
@dataclass
class GPTConfig:
    """Configuration of :class:`GPT`. Defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257  # V: number of tokens (GPT-2's BPE: 50257)
    block_size: int = 1024  # maximum context length T
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block
    n_kv_heads: int | None = None  # key/value heads (GQA/MQA); None = n_head
    d_model: int = 768  # C: residual stream width
    d_ff: int | None = None  # feed-forward width; None = 4 * d_model
    dropout: float = 0.0  # dropout after embeddings, on attention weights and sub-layer outputs
    bias: bool = True  # biases in linear layers and LayerNorms
    pos_encoding: PosEncoding = "learned"  # learned (GPT-2), sinusoidal, alibi, or none (NoPE)
    norm: Literal["pre", "post"] = "pre"  # GPT-1 was post-norm, GPT-2 pre-norm
    activation: Activation = "gelu_tanh"  # GPT-2's gelu_new
    tie_weights: bool = True  # share the token embedding with the output head (Press & Wolf 2017)
    residual: bool = True  # residual connections (False only for experiments)
    impl: Literal["manual", "sdpa"] = "sdpa"  # attention implementation (same result)
    norm_eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        _check_choice("pos_encoding", self.pos_encoding, _POS_ENCODINGS)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.block_config()  # validates d_model/n_head/n_kv_heads, dropout, norm, activation, impl

    def block_config(self) -> BlockConfig:
        return BlockConfig(self.d_model, self.n_head, self.n_kv_heads, self.d_ff, self.dropout, self.bias,
                           causal=True, norm=self.norm, residual=self.residual, activation=self.activation,
                           impl=self.impl, norm_eps=self.norm_eps)

    @classmethod
    def tiny(cls, **overrides) -> GPTConfig:
        """A few-thousand-parameter GPT for tests and CPU demos."""
        return cls(**{"vocab_size": 65, "block_size": 32, "n_layer": 2, "n_head": 4, "d_model": 32,
                      **overrides})


class GPTOutput(NamedTuple):
    """``logits`` (B, T, V) and ``loss`` (scalar mean cross-entropy, or None without targets)."""

    logits: torch.Tensor
    loss: torch.Tensor | None


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None, greedy: bool) -> None:
    """The argument checks shared by every ``generate``: a clear ``ValueError`` for each bad value."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (or use greedy=True), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One decoding step: logits (B, V) of the last position -> next token ids (B, 1).

    The argmax when ``greedy``; otherwise a draw from ``softmax(logits / temperature)`` restricted to the
    ``top_k`` most likely tokens (all of them when ``top_k`` is None)."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)  # (B, 1)


class GPT(nn.Module):
    """A GPT language model (Radford et al. 2018, 2019): token + position embeddings, ``n_layer`` causal
    pre-norm blocks, a final LayerNorm and a linear head tied to the token embedding.

        p(x_t | x_<t) = softmax(LN(h_t) W_e^T)

    Taught in ``modules/01_transformers/03_architectures.py`` and ``04_pretraining.py``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = LearnedPositionalEmbedding(c.block_size, c.d_model) if c.pos_encoding == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList(TransformerBlock(c.block_config()) for _ in range(c.n_layer))
        # Post-norm blocks already end with a LayerNorm (GPT-1 had no final one).
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.bias) if c.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        _init_weights(self, c.n_layer)
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight  # one (V, C) matrix both embeds and un-embeds

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token (+ position) embeddings (B, T, C), with dropout."""
        _check_idx(idx)
        T = idx.shape[1]
        if self.config.pos_encoding == "learned" and T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size} "
                             "(learned positions cannot extrapolate; crop the input)")
        x = self.wte(idx)  # (B, T, C)
        return self.drop(_add_positions(x, self.config.pos_encoding, self.wpe))

    def _attn_bias(self, T: int, x: torch.Tensor) -> torch.Tensor | None:
        if self.config.pos_encoding != "alibi":
            return None
        return alibi_bias(self.config.n_head, T, device=x.device, dtype=x.dtype)  # (H, T, T)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> GPTOutput:
        """idx (B, T) token ids -> GPTOutput(logits (B, T, V), loss). ``targets`` (B, T) are usually
        ``idx`` shifted left by one; positions with target -100 are ignored. The loss is computed in fp32."""
        x = self.embed(idx)  # (B, T, C)
        bias = self._attn_bias(idx.shape[1], x)
        for block in self.h:
            x = block(x, attn_bias=bias)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets {tuple(targets.shape)} must match idx {tuple(idx.shape)}")
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return GPTOutput(logits, loss)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Self-attention weights of every layer: a list of ``n_layer`` tensors (B, H, T, T)."""
        x = self.embed(idx)
        bias = self._attn_bias(idx.shape[1], x)
        maps = []
        for block in self.h:
            x, weights, _ = block(x, attn_bias=bias, return_weights=True)
            maps.append(weights)
        return maps

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B, T) one at a time; returns (B, T + new).

        Each step samples from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
        tokens (or takes the argmax when ``greedy``). The context is cropped to ``block_size`` for learned
        and sinusoidal positions; ALiBi and no-position models see the whole sequence. Runs in eval mode
        (no dropout) and restores the previous mode. No KV cache: simple, quadratic (module 03 adds one).
        """
        check_sampling_args(max_new_tokens, temperature, top_k, greedy)
        _check_idx(idx)
        crop = self.config.pos_encoding in ("learned", "sinusoidal")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                context = idx[:, -self.config.block_size:] if crop else idx
                logits = self(context).logits[:, -1, :].float()  # (B, V): only the last position matters
                idx = torch.cat([idx, sample_next(logits, temperature, top_k, greedy, generator)], dim=1)
        finally:
            self.train(was_training)
        return idx

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once). ``non_embedding=True`` leaves out the
        position embeddings, as in nanoGPT (the token embedding doubles as the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n


# ----------------------------------------------------------------------------------------------------
# Encoder: bidirectional, BERT-like, with a masked-language-model head
# ----------------------------------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    """Configuration of :class:`Encoder` (a BERT-like bidirectional encoder)."""

    vocab_size: int = 30522  # V (BERT's WordPiece vocabulary)
    max_len: int = 512  # maximum sequence length
    n_layer: int = 12  # number of blocks
    n_head: int = 12  # attention heads
    d_model: int = 768  # C
    d_ff: int | None = None  # None = 4 * d_model
    dropout: float = 0.0  # dropout everywhere (BERT: 0.1)
    bias: bool = True  # biases in linear layers and LayerNorms
    pos_encoding: PosEncoding = "learned"  # BERT: learned
    # BERT is post-norm; pre-norm trains more reliably at the tiny scale of the course's demos.
    norm: Literal["pre", "post"] = "pre"
    activation: Activation = "gelu"  # BERT: exact GELU
    tie_weights: bool = True  # MLM decoder shares the token embedding
    impl: Literal["manual", "sdpa"] = "sdpa"  # attention implementation
    norm_eps: float = 1e-5  # LayerNorm epsilon (BERT: 1e-12)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        _check_choice("pos_encoding", self.pos_encoding, _POS_ENCODINGS)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.block_config()

    def block_config(self) -> BlockConfig:
        return BlockConfig(self.d_model, self.n_head, None, self.d_ff, self.dropout, self.bias, causal=False,
                           norm=self.norm, activation=self.activation, impl=self.impl, norm_eps=self.norm_eps)

    @classmethod
    def tiny(cls, **overrides) -> EncoderConfig:
        return cls(**{"vocab_size": 40, "max_len": 32, "n_layer": 2, "n_head": 4, "d_model": 32, **overrides})


class EncoderOutput(NamedTuple):
    """``hidden`` (B, T, C) contextual embeddings, MLM ``logits`` (B, T, V), ``loss`` or None."""

    hidden: torch.Tensor
    logits: torch.Tensor
    loss: torch.Tensor | None


class Encoder(nn.Module):
    """A BERT-like encoder (Devlin et al. 2019): every token attends to every other (no causal mask),
    so each output sees the whole sentence. The MLM head (dense, GELU, LayerNorm, tied decoder) predicts
    the masked tokens. Taught in ``modules/01_transformers/03_architectures.py``."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.wpe = LearnedPositionalEmbedding(c.max_len, c.d_model) if c.pos_encoding == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList(TransformerBlock(c.block_config()) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.norm_eps, bias=c.bias) if c.norm == "pre" else nn.Identity()
        self.mlm_transform = nn.Sequential(nn.Linear(c.d_model, c.d_model), nn.GELU(),
                                           nn.LayerNorm(c.d_model, eps=c.norm_eps))
        self.mlm_decoder = nn.Linear(c.d_model, c.vocab_size)
        _init_weights(self, c.n_layer)
        if c.tie_weights:
            self.mlm_decoder.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, padding_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> EncoderOutput:
        """idx (B, T); ``padding_mask`` (B, T), True/1 for real tokens, False/0 for padding (keys that are
        padding are ignored); ``targets`` (B, T) original ids at masked positions, -100 elsewhere."""
        _check_idx(idx)
        B, T = idx.shape
        if self.config.pos_encoding == "learned" and T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.config.max_len}")
        mask = None
        if padding_mask is not None:
            if padding_mask.shape != idx.shape:
                raise ValueError(f"padding_mask {tuple(padding_mask.shape)} must match idx {tuple(idx.shape)}")
            mask = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, T): hide padded keys from all queries
        x = self.drop(_add_positions(self.wte(idx), self.config.pos_encoding, self.wpe))  # (B, T, C)
        bias = alibi_bias(self.config.n_head, T, device=x.device, dtype=x.dtype) \
            if self.config.pos_encoding == "alibi" else None
        for block in self.h:
            x = block(x, mask=mask, attn_bias=bias)
        hidden = self.ln_f(x)  # (B, T, C)
        logits = self.mlm_decoder(self.mlm_transform(hidden))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return EncoderOutput(hidden, logits, loss)


# ----------------------------------------------------------------------------------------------------
# Encoder-decoder (sequence to sequence)
# ----------------------------------------------------------------------------------------------------
@dataclass
class Seq2SeqConfig:
    """Configuration of :class:`EncoderDecoder` (Vaswani et al. 2017's architecture, small)."""

    src_vocab_size: int = 32  # source vocabulary (special ids included)
    tgt_vocab_size: int = 32  # target vocabulary (special ids included)
    max_len: int = 64  # maximum source/target length (learned positions)
    n_encoder_layers: int = 2  # encoder blocks
    n_decoder_layers: int = 2  # decoder blocks (self-attention + cross-attention + FFN)
    n_head: int = 4  # attention heads
    d_model: int = 64  # C
    d_ff: int | None = None  # None = 4 * d_model
    dropout: float = 0.0  # dropout everywhere
    bias: bool = True  # biases in linear layers and LayerNorms
    pos_encoding: Literal["sinusoidal", "learned"] = "sinusoidal"  # the 2017 paper: sinusoidal
    norm: Literal["pre", "post"] = "pre"  # the 2017 paper: post
    activation: Activation = "relu"  # the 2017 paper: ReLU
    pad_id: int = 0  # padding id in both vocabularies; ignored by attention and the loss
    tie_weights: bool = True  # decoder embedding shared with the output head
    impl: Literal["manual", "sdpa"] = "sdpa"  # attention implementation

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "max_len", "n_encoder_layers", "n_decoder_layers",
                     "n_head", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        _check_choice("pos_encoding", self.pos_encoding, ("sinusoidal", "learned"))
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id ({self.pad_id}) must be a valid id in both vocabularies")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.block_config(decoder=True)

    def block_config(self, decoder: bool) -> BlockConfig:
        return BlockConfig(self.d_model, self.n_head, None, self.d_ff, self.dropout, self.bias, causal=decoder,
                           cross_attention=decoder, norm=self.norm, activation=self.activation, impl=self.impl)

    @classmethod
    def tiny(cls, **overrides) -> Seq2SeqConfig:
        return cls(**{"src_vocab_size": 16, "tgt_vocab_size": 16, "max_len": 16, "n_encoder_layers": 1,
                      "n_decoder_layers": 1, "n_head": 2, "d_model": 32, **overrides})


class Seq2SeqOutput(NamedTuple):
    """``logits`` (B, T, V_tgt) and ``loss`` (mean cross-entropy over non-pad targets, or None)."""

    logits: torch.Tensor
    loss: torch.Tensor | None


class EncoderDecoder(nn.Module):
    """The original transformer (Vaswani et al. 2017): the encoder reads the source bidirectionally;
    the decoder generates the target causally, each block cross-attending to the encoder output
    (queries from the target, keys/values from the source). Padding in ``src`` (``pad_id``) is masked.
    Taught in ``modules/01_transformers/03_architectures.py``."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = c = config
        self.src_emb = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_emb = nn.Embedding(c.tgt_vocab_size, c.d_model)
        learned = c.pos_encoding == "learned"
        self.src_pos = LearnedPositionalEmbedding(c.max_len, c.d_model) if learned else None
        self.tgt_pos = LearnedPositionalEmbedding(c.max_len, c.d_model) if learned else None
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(TransformerBlock(c.block_config(decoder=False))
                                     for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(TransformerBlock(c.block_config(decoder=True))
                                     for _ in range(c.n_decoder_layers))
        # Pre-norm stacks end with a LayerNorm; post-norm blocks already end with one.
        self.enc_ln = nn.LayerNorm(c.d_model, bias=c.bias) if c.norm == "pre" else nn.Identity()
        self.dec_ln = nn.LayerNorm(c.d_model, bias=c.bias) if c.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        _init_weights(self, c.n_encoder_layers + c.n_decoder_layers)
        if c.tie_weights:
            self.lm_head.weight = self.tgt_emb.weight

    def _embed(self, ids, emb, pos_emb) -> torch.Tensor:
        T = ids.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.config.max_len}")
        return self.drop(_add_positions(emb(ids), self.config.pos_encoding, pos_emb))  # (B, T, C)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> (memory (B, S, C), source key mask (B, 1, 1, S) True for real tokens)."""
        _check_idx(src, "src")
        src_mask = (src != self.config.pad_id)[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(src, self.src_emb, self.src_pos)
        for block in self.encoder:
            x = block(x, mask=src_mask)
        return self.enc_ln(x), src_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """tgt_in (B, T) (BOS first) and the encoder's memory -> logits (B, T, V_tgt)."""
        _check_idx(tgt_in, "tgt_in")
        y = self._embed(tgt_in, self.tgt_emb, self.tgt_pos)
        for block in self.decoder:
            y = block(y, context=memory, context_mask=src_mask)
        return self.lm_head(self.dec_ln(y))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor | None = None) -> Seq2SeqOutput:
        """Teacher forcing: src (B, S), tgt_in (B, T) = BOS + target, tgt_out (B, T) = target + EOS
        (``pad_id`` positions ignored by the loss) -> Seq2SeqOutput(logits (B, T, V), loss)."""
        if src.shape[0] != tgt_in.shape[0]:
            raise ValueError(f"src {tuple(src.shape)} and tgt_in {tuple(tgt_in.shape)} need the same batch size")
        memory, src_mask = self.encode(src)
        logits = self.decode(tgt_in, memory, src_mask)
        loss = None
        if tgt_out is not None:
            if tgt_out.shape != tgt_in.shape:
                raise ValueError(f"tgt_out {tuple(tgt_out.shape)} must match tgt_in {tuple(tgt_in.shape)}")
            loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=self.config.pad_id)
        return Seq2SeqOutput(logits, loss)

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, max_len: int, bos_id: int, eos_id: int | None = None) -> torch.Tensor:
        """Generate targets for src (B, S) by repeatedly taking the most likely next token.

        Returns (B, L) ids *without* the leading BOS, L <= ``max_len``; after a row emits ``eos_id`` the
        rest of that row is ``pad_id``, and decoding stops early once every row has finished. The encoder
        runs once; the decoder re-reads its whole prefix each step (no cache, for clarity).
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        was_training = self.training
        self.eval()
        try:
            memory, src_mask = self.encode(src)
            B = src.shape[0]
            out = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
            done = torch.zeros(B, dtype=torch.bool, device=src.device)
            for _ in range(max_len):
                logits = self.decode(out, memory, src_mask)[:, -1, :]  # (B, V)
                next_id = logits.argmax(dim=-1)  # (B,)
                next_id = next_id.masked_fill(done, self.config.pad_id)
                out = torch.cat([out, next_id[:, None]], dim=1)
                if eos_id is not None:
                    done |= next_id == eos_id
                    if bool(done.all()):
                        break
        finally:
            self.train(was_training)
        return out[:, 1:]
