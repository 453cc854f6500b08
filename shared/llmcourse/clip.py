"""CLIP: an image encoder and a text encoder trained so that matching image-caption pairs have similar
embeddings, with the symmetric contrastive (InfoNCE) loss; then zero-shot classification by comparing an
image with the embeddings of prompts such as "a handwritten seven".

    logits = (I / |I|) (T / |T|)^T / temperature                      (B, B): cosine similarities / tau
    loss   = (CE(logits, diag) + CE(logits^T, diag)) / 2              (Radford et al. 2021, fig. 3)

Row ``i`` of ``logits`` asks "which of the B captions belongs to image i?", column ``j`` "which image
belongs to caption j?"; the answer is always the diagonal.

- :func:`clip_logits`, :func:`clip_loss`: the pure functions;
- :class:`ImageEncoder` (a :class:`~llmcourse.vit.ViT` without head + a projection), :class:`TextEncoder`
  (a causal transformer pooled at the end-of-text token, as in CLIP), :class:`CLIP` with a learned
  temperature;
- :func:`class_embeddings` (prompt templates averaged: "prompt ensembling"), :func:`zero_shot_predict`,
  :func:`linear_probe` (the supervised baseline on frozen image features).

Taught in ``modules/04_multimodal/03_clip.py``; practised in lab 4.

References: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision",
https://arxiv.org/abs/2103.00020 ; van den Oord et al. 2018, "Representation Learning with Contrastive
Predictive Coding" (InfoNCE), https://arxiv.org/abs/1807.03748 ; Zhai et al. 2023, "Sigmoid Loss for
Language Image Pre-Training" (SigLIP), https://arxiv.org/abs/2303.15343

Shape legend: B batch (pairs), T caption tokens, D encoder width, E shared embedding width, K classes,
P prompt templates.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .digits import NUMBER_WORDS, WordTokenizer
from .positional import LearnedPositionalEmbedding
from .transformer import BlockConfig, TransformerBlock
from .vit import ViT, ViTConfig

__all__ = [
    "clip_logits",
    "clip_loss",
    "CLIPConfig",
    "CLIPOutput",
    "ImageEncoder",
    "TextEncoder",
    "CLIP",
    "ZERO_SHOT_TEMPLATES",
    "class_embeddings",
    "zero_shot_predict",
    "linear_probe",
]


def clip_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every image with every caption, divided by ``temperature``: (B, B).

    image_emb (B, E), text_emb (B, E); both are L2-normalised here along E (in fp32)."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb must both be (B, E); got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    if not torch.is_tensor(temperature) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    return image_emb @ text_emb.T / temperature  # (B, B): row i = image i against every caption


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float | torch.Tensor = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE loss of B matching pairs (row ``i`` of each input belongs together):
    the mean of image->text and text->image cross-entropies with the diagonal as targets. Scalar, fp32.

    Lower temperature = sharper softmax; CLIP learns it (initialised at 0.07, clipped at 0.01)."""
    logits = clip_logits(image_emb, text_emb, temperature)  # (B, B)
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@dataclass
class CLIPConfig:
    """Configuration of :class:`CLIP` (sizes for the 8x8 digits and their short captions)."""

    vision: ViTConfig = field(default_factory=lambda: ViTConfig(n_classes=0, d_model=32, n_layer=2, n_head=4))
    vocab_size: int = 64  # text tokens (see llmcourse.digits.caption_tokenizer)
    max_len: int = 16  # longest caption, EOS included
    text_d_model: int = 32  # text transformer width
    text_n_layer: int = 1  # text transformer blocks
    text_n_head: int = 4  # text attention heads
    embed_dim: int = 32  # E: width of the shared image-text space
    init_temperature: float = 0.07  # CLIP's initial temperature (logit scale 1/0.07 = 14.3)
    min_temperature: float = 0.01  # CLIP clips the logit scale at 100

    def __post_init__(self) -> None:
        if self.vision.n_classes != 0:
            raise ValueError(f"the image encoder has no classifier head: vision.n_classes must be 0, "
                             f"got {self.vision.n_classes}")
        for name in ("vocab_size", "max_len", "text_d_model", "text_n_layer", "text_n_head", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.min_temperature <= self.init_temperature:
            raise ValueError(f"need 0 < min_temperature ({self.min_temperature}) <= init_temperature "
                             f"({self.init_temperature})")
        self.text_block_config()

    def text_block_config(self) -> BlockConfig:
        # Causal, as CLIP's text transformer: the end-of-text token sees the whole caption.
        return BlockConfig(d_model=self.text_d_model, n_heads=self.text_n_head, causal=True, norm="pre",
                           activation="gelu")


class CLIPOutput(NamedTuple):
    """``loss`` (scalar) or None, ``logits`` (B, B) image-by-text, normalised ``image_emb`` and
    ``text_emb`` (B, E)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    image_emb: torch.Tensor
    text_emb: torch.Tensor


class ImageEncoder(nn.Module):
    """A ViT without classifier head, then a linear projection into the shared space: (B, 1, H, W) -> (B, E)."""

    def __init__(self, config: ViTConfig, embed_dim: int):
        super().__init__()
        self.vit = ViT(config)
        self.proj = nn.Linear(config.d_model, embed_dim, bias=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's pooled features (B, D), before the projection (what a linear probe reads)."""
        return self.vit(images).features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(images))  # (B, E)


class TextEncoder(nn.Module):
    """Token + learned position embeddings, causal pre-norm blocks, LayerNorm, then the hidden state at
    the end-of-text token (the last non-padding token) projected to E: (B, T) ids -> (B, E)."""

    def __init__(self, config: CLIPConfig, pad_id: int = WordTokenizer.PAD):
        super().__init__()
        c = config
        self.pad_id = pad_id
        self.max_len = c.max_len
        self.wte = nn.Embedding(c.vocab_size, c.text_d_model)
        self.wpe = LearnedPositionalEmbedding(c.max_len, c.text_d_model)
        self.blocks = nn.ModuleList(TransformerBlock(c.text_block_config()) for _ in range(c.text_n_layer))
        self.ln_f = nn.LayerNorm(c.text_d_model)
        self.proj = nn.Linear(c.text_d_model, c.embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise ValueError(f"tokens must be (B, T <= {self.max_len}), got {tuple(tokens.shape)}")
        lengths = (tokens != self.pad_id).sum(dim=1)  # (B,): right padding
        if bool((lengths == 0).any()):
            raise ValueError("every caption needs at least one token")
        x = self.wte(tokens) + self.wpe(tokens.shape[1])  # (B, T, D)
        for block in self.blocks:
            x = block(x)  # causal: padding after the end-of-text token cannot leak into it
        x = self.ln_f(x)
        eot = x[torch.arange(len(tokens), device=tokens.device), lengths - 1]  # (B, D)
        return self.proj(eot)  # (B, E)


class CLIP(nn.Module):
    """Two encoders and a learned temperature (stored as ``log(1 / temperature)``, CLIP's logit scale)."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.vision, config.embed_dim)
        self.text_encoder = TextEncoder(config)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    @property
    def temperature(self) -> torch.Tensor:
        max_scale = math.log(1.0 / self.config.min_temperature)
        return torch.exp(-self.log_logit_scale.clamp(max=max_scale))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(images), dim=-1)  # (B, E), unit length

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_encoder(tokens), dim=-1)  # (B, E), unit length

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, return_loss: bool = True) -> CLIPOutput:
        image_emb, text_emb = self.encode_image(images), self.encode_text(tokens)
        logits = clip_logits(image_emb, text_emb, self.temperature)  # (B, B)
        loss = clip_loss(image_emb, text_emb, self.temperature) if return_loss else None
        return CLIPOutput(loss, logits, image_emb, text_emb)


# ----------------------------------------------------------------------------------------------------
# Zero-shot classification and the linear-probe baseline
# ----------------------------------------------------------------------------------------------------
# Prompts for zero-shot classification: three of the training templates and one the model never saw
# as a whole ("a picture of the digit {}" mixes words from different training templates).
ZERO_SHOT_TEMPLATES = ("a handwritten {}", "the digit {}", "an image of a {}", "a picture of the digit {}")


@torch.no_grad()
def class_embeddings(model: CLIP, tokenizer: WordTokenizer, class_names: Sequence[str] = NUMBER_WORDS,
                     templates: Sequence[str] = ZERO_SHOT_TEMPLATES) -> torch.Tensor:
    """One unit vector per class (K, E): each class name is put into every template, the P caption
    embeddings are normalised, averaged and normalised again (CLIP's prompt ensembling, section 3.1.4).
    These K vectors are the weights of a zero-shot linear classifier."""
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    was_training = model.training
    model.eval()
    device = model.log_logit_scale.device
    prompts = [t.format(name) for name in class_names for t in templates]  # K * P captions
    tokens = tokenizer.batch_encode(prompts, max_len=model.config.max_len).to(device)
    emb = model.encode_text(tokens).view(len(class_names), len(templates), -1)  # (K, P, E), unit rows
    model.train(was_training)
    return F.normalize(emb.mean(dim=1), dim=-1)  # (K, E)


def zero_shot_predict(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Class of each image (B,): the class embedding (K, E) with the highest cosine similarity to the
    image embedding (B, E). Both are normalised here, so raw encoder outputs are fine."""
    if image_emb.ndim != 2 or class_emb.ndim != 2 or image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(f"need image_emb (B, E) and class_emb (K, E); got {tuple(image_emb.shape)} and "
                         f"{tuple(class_emb.shape)}")
    sims = F.normalize(image_emb.float(), dim=-1) @ F.normalize(class_emb.float(), dim=-1).T  # (B, K)
    return sims.argmax(dim=-1)


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, C: float = 1.0) -> float:
    """Test accuracy of an L2-regularised logistic regression trained on frozen features (N, D), the
    evaluation CLIP's paper uses (scikit-learn, L-BFGS). Features are standardised with training
    statistics first."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    xtr = ((train_features - mean) / std).double().numpy()
    xte = ((test_features - mean) / std).double().numpy()
    clf = LogisticRegression(C=C, max_iter=2000).fit(xtr, train_labels.numpy())
    return float((clf.predict(xte) == test_labels.numpy()).mean())
