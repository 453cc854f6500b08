"""Flamingo: teach a frozen language model to see, by adding two new kinds of layers and training only
those.

1. A **perceiver resampler** turns a variable number N of visual features (patches, frames) into a fixed
   number L of visual tokens: L learned latent queries cross-attend to [features; latents].
2. **Gated cross-attention** layers are inserted between the frozen LM blocks. Text tokens attend to the
   visual tokens; the result is scaled by ``tanh(alpha)`` with ``alpha`` initialised at 0:

       y = x + tanh(alpha_attn) * CrossAttn(LN(x), visual)
       y = y + tanh(alpha_ff)   * FFN(LN(y))                          (Alayrac et al. 2022, eq. 1, fig. 4)

   At initialisation ``tanh(0) = 0``: the model computes *exactly* what the frozen LM computes, so
   training starts from the LM's abilities instead of disrupting them.

Each text token sees only the visual tokens of the image that most recently preceded it
(:func:`media_attention_mask`), which lets one sequence interleave several images and texts.

- :class:`PerceiverBlock`, :class:`PerceiverResampler`, :class:`GatedCrossAttention`;
- :class:`Flamingo`: wraps a frozen :class:`llmcourse.transformer.GPT` (any size, e.g. the course's
  ``llmcourse.train.tiny_gpt()`` or a small GPT trained in the notebook), freezes it and inserts the new layers.

Taught in ``modules/04_multimodal/04_flamingo.py``; the resampler block is part of lab 4.

References: Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning",
https://arxiv.org/abs/2204.14198 ; Jaegle et al. 2021, "Perceiver: General Perception with Iterative
Attention", https://arxiv.org/abs/2103.03206 ; Awadalla et al. 2023, "OpenFlamingo",
https://arxiv.org/abs/2308.01390

Shape legend: B batch, T text tokens, M images per sequence, N visual features per image, L latents
(visual tokens per image), D LM width, Dv vision feature width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionConfig, MultiHeadAttention
from .positional import alibi_bias
from .transformer import GPT, FeedForward

__all__ = [
    "PerceiverBlock",
    "PerceiverResampler",
    "GatedCrossAttention",
    "media_attention_mask",
    "FlamingoConfig",
    "FlamingoOutput",
    "Flamingo",
]


class PerceiverBlock(nn.Module):
    """One resampler layer: latents (B, L, D) attend to [features; latents] (B, N + L, D), then a
    feed-forward network; both with residual connections and pre-LayerNorm:

        kv = [LN_media(x); LN_latents(z)],   z = z + Attn(LN_latents(z), kv),   z = z + FFN(LN_ff(z))

    Concatenating the latents to the keys/values (Flamingo, appendix A.1.1) lets each latent also look at
    the other latents, not only at the image."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int = 4):
        super().__init__()
        if ff_mult < 1:
            raise ValueError(f"ff_mult must be >= 1, got {ff_mult}")
        self.ln_media = nn.LayerNorm(d_model)
        self.ln_latents = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(AttentionConfig(d_model, n_heads, bias=False, causal=False))
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_mult * d_model, activation="gelu", bias=False)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """latents (B, L, D), media features (B, N, D) -> new latents (B, L, D)."""
        if latents.ndim != 3 or media.ndim != 3 or latents.shape[0] != media.shape[0] \
                or latents.shape[2] != media.shape[2]:
            raise ValueError(f"need latents (B, L, D) and media (B, N, D); got {tuple(latents.shape)} and "
                             f"{tuple(media.shape)}")
        z = self.ln_latents(latents)
        kv = torch.cat([self.ln_media(media), z], dim=1)  # (B, N + L, D)
        latents = latents + self.attn(z, context=kv)  # queries: latents only -> (B, L, D)
        return latents + self.ff(self.ln_ff(latents))


class PerceiverResampler(nn.Module):
    """(B, N, Dv) visual features, any N -> (B, L, D) visual tokens: a linear map to D (when Dv != D),
    ``n_layers`` :class:`PerceiverBlock`, a final LayerNorm. The L latents are learned parameters.

    Cost: attention is L x (N + L) instead of N x N, and the LM later sees L tokens per image however
    large the image (or video) was."""

    def __init__(self, d_model: int, n_latents: int = 8, n_layers: int = 1, n_heads: int = 4,
                 media_dim: int | None = None):
        super().__init__()
        if n_latents < 1 or n_layers < 1:
            raise ValueError(f"n_latents ({n_latents}) and n_layers ({n_layers}) must be >= 1")
        media_dim = d_model if media_dim is None else media_dim
        self.input_proj = nn.Linear(media_dim, d_model) if media_dim != d_model else nn.Identity()
        self.latents = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
        self.blocks = nn.ModuleList(PerceiverBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_out = nn.LayerNorm(d_model)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        if media.ndim != 3:
            raise ValueError(f"media must be (B, N, Dv), got {tuple(media.shape)}")
        x = self.input_proj(media)  # (B, N, D)
        z = self.latents.expand(x.shape[0], -1, -1)  # (B, L, D): the same queries for every image
        for block in self.blocks:
            z = block(z, x)
        return self.ln_out(z)  # (B, L, D)


class GatedCrossAttention(nn.Module):
    """Text (B, T, D) attends to visual tokens (B, S, D); outputs are gated by ``tanh(alpha)``, alpha = 0
    at init, so the layer starts as the identity (exactly: ``x + 0 * f(x) == x``)."""

    def __init__(self, d_model: int, n_heads: int = 4, ff_mult: int = 4):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(AttentionConfig(d_model, n_heads, bias=False, causal=False))
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ln_ff = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, ff_mult * d_model, activation="gelu", bias=False)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), visual (B, S, D), mask (B, T, S) bool (True = may attend) or None.
        A token whose mask row is all False gets no visual input (zero attention output)."""
        attended = self.attn(self.ln_attn(x), context=visual, mask=mask)  # (B, T, D)
        x = x + torch.tanh(self.attn_gate) * attended
        return x + torch.tanh(self.ff_gate) * self.ff(self.ln_ff(x))


def media_attention_mask(tokens: torch.Tensor, image_token_id: int, n_images: int, n_latents: int) -> torch.Tensor:
    """Which visual tokens each text token may attend to: (B, T, M * L) bool.

    Token ``t`` sees the L visual tokens of image ``m`` iff ``m`` is the last ``<image>`` placeholder at
    or before ``t`` (Flamingo's "only the immediately preceding image"); tokens before the first image
    see none. Images are numbered in the order their placeholders appear."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (B, T), got {tuple(tokens.shape)}")
    seen = (tokens == image_token_id).cumsum(dim=1)  # (B, T): images seen so far
    if int(seen[:, -1].max()) > n_images:
        raise ValueError(f"a sequence has {int(seen[:, -1].max())} <image> tokens but only {n_images} images")
    image_of_key = torch.arange(n_images, device=tokens.device).repeat_interleave(n_latents)  # (M * L,)
    return (seen - 1)[:, :, None] == image_of_key  # (B, T, M * L)


@dataclass
class FlamingoConfig:
    """The new layers added around a frozen GPT."""

    n_latents: int = 8  # L: visual tokens per image
    resampler_layers: int = 1  # PerceiverBlocks in the resampler
    n_heads: int = 4  # heads of the resampler and of the cross-attention
    xattn_every: int = 1  # a gated cross-attention layer before every k-th LM block (Flamingo-80B: 7)
    media_dim: int | None = None  # Dv, width of the vision features; None = the LM's width
    image_token_id: int = 4  # id of the <image> placeholder (llmcourse.digits.WordTokenizer.IMAGE)

    def __post_init__(self) -> None:
        for name in ("n_latents", "resampler_layers", "n_heads", "xattn_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class FlamingoOutput(NamedTuple):
    """``logits`` (B, T, V) and ``loss`` (mean next-token cross-entropy, fp32) or None."""

    logits: torch.Tensor
    loss: torch.Tensor | None


class Flamingo(nn.Module):
    """A frozen GPT plus a perceiver resampler and gated cross-attention layers (the only trainable
    parameters). Images arrive as features of a frozen vision encoder, (B, M, N, Dv)."""

    def __init__(self, lm: GPT, config: FlamingoConfig | None = None):
        super().__init__()
        config = FlamingoConfig() if config is None else config
        if not isinstance(lm, GPT):
            raise ValueError(f"lm must be an llmcourse.transformer.GPT, got {type(lm).__name__}")
        if config.image_token_id >= lm.config.vocab_size:
            raise ValueError(f"image_token_id ({config.image_token_id}) is not in the LM's vocabulary "
                             f"({lm.config.vocab_size})")
        self.config = config
        self.lm = lm.requires_grad_(False).eval()  # frozen: no gradients, no dropout
        D = lm.config.d_model
        self.resampler = PerceiverResampler(D, config.n_latents, config.resampler_layers, config.n_heads,
                                            config.media_dim)
        self.xattn_layers = [i for i in range(lm.config.n_layer) if i % config.xattn_every == 0]
        self.xattn = nn.ModuleDict({str(i): GatedCrossAttention(D, config.n_heads) for i in self.xattn_layers})

    def train(self, mode: bool = True) -> Flamingo:
        super().train(mode)
        self.lm.eval()  # the frozen LM always runs as at inference
        return self

    def visual_tokens(self, media: torch.Tensor) -> torch.Tensor:
        """(B, M, N, Dv) vision features -> (B, M * L, D) visual tokens, image after image."""
        if media.ndim != 4:
            raise ValueError(f"media must be (B, M, N, Dv), got {tuple(media.shape)}")
        B, M, N, Dv = media.shape
        z = self.resampler(media.reshape(B * M, N, Dv))  # (B * M, L, D)
        return z.reshape(B, M * z.shape[1], z.shape[2])  # (B, M * L, D)

    def forward(self, tokens: torch.Tensor, media: torch.Tensor, targets: torch.Tensor | None = None) -> FlamingoOutput:
        """tokens (B, T) with ``<image>`` placeholders, media (B, M, N, Dv) -> FlamingoOutput.
        ``targets`` (B, T) (-100 = ignore) give the next-token loss."""
        if media.shape[0] != tokens.shape[0]:
            raise ValueError(f"tokens {tuple(tokens.shape)} and media {tuple(media.shape)} need the same batch size")
        lm = self.lm
        visual = self.visual_tokens(media)  # (B, M * L, D)
        mask = media_attention_mask(tokens, self.config.image_token_id, media.shape[1], self.config.n_latents)
        x = lm.embed(tokens)  # (B, T, D)
        bias = alibi_bias(lm.config.n_head, tokens.shape[1], device=x.device, dtype=x.dtype) \
            if lm.config.pos_encoding == "alibi" else None
        for i, block in enumerate(lm.h):
            if str(i) in self.xattn:
                x = self.xattn[str(i)](x, visual, mask)  # new, trainable, gated
            x = block(x, attn_bias=bias)  # frozen
        logits = lm.lm_head(lm.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return FlamingoOutput(logits, loss)

    def gates(self) -> dict[str, tuple[float, float]]:
        """``tanh`` of each layer's (attention, feed-forward) gate: how much vision is let in."""
        return {i: (torch.tanh(m.attn_gate).item(), torch.tanh(m.ff_gate).item()) for i, m in self.xattn.items()}
