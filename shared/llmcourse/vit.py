"""Vision Transformer (ViT): an image is cut into patches, each patch becomes a token, and a standard
transformer encoder reads the sequence.

    z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos,   z_l = Block(z_{l-1}),   y = head(LN(z_L^0))
                                                         (Dosovitskiy et al. 2021, eq. 1-4)

- :func:`patchify` / :func:`unpatchify`: (B, C, H, W) <-> (B, N, C*P*P) with N = (H/P)(W/P) patches in
  raster order, each flattened in (channel, row, column) order, the order of a ``Conv2d`` kernel;
- :class:`PatchEmbedding`: a linear map of each flattened patch (identical to a ``Conv2d`` with
  kernel = stride = P, the form most libraries use; :meth:`PatchEmbedding.as_conv2d` shows it);
- :class:`ViT`: CLS token, learned position embeddings, pre-norm encoder blocks from
  :mod:`llmcourse.transformer`, a classification head; attention maps for plots;
- :class:`SmallCNN`: the convolutional baseline of the same size;
- :func:`accuracy`, :func:`position_similarity`: evaluation and the position-embedding plot.

Taught in ``modules/04_multimodal/01_vit.py``; the ViT is also CLIP's image encoder (:mod:`llmcourse.clip`).

References: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition
at Scale", https://arxiv.org/abs/2010.11929 ; Beyer et al. 2022, "Better plain ViT baselines for
ImageNet-1k", https://arxiv.org/abs/2205.01580

Shape legend: B batch, C channels, H/W image height/width, P patch size, N patches, D model width,
L layers, h heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import BlockConfig, TransformerBlock

__all__ = [
    "patchify",
    "unpatchify",
    "PatchEmbedding",
    "ViTConfig",
    "ClassifierOutput",
    "ViT",
    "SmallCNN",
    "accuracy",
    "position_similarity",
]


def _check_images(images: torch.Tensor, patch_size: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    H, W = images.shape[-2:]
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not divisible by patch_size {patch_size}")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images (B, C, H, W) into non-overlapping P x P patches: (B, N, C*P*P), N = (H/P) * (W/P).

    Patches are in raster order (left to right, then top to bottom); each is flattened channel first,
    then row, then column, matching ``Conv2d(C, D, kernel_size=P, stride=P).weight.view(D, -1)``.
    """
    _check_images(images, patch_size)
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, H/P, P, W/P, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P)
    return x.reshape(B, (H // P) * (W // P), C * P * P)  # (B, N, C*P*P)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size: tuple[int, int], channels: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C*P*P) -> (B, C, H, W)."""
    H, W = image_size
    P = patch_size
    if patches.ndim != 3 or patches.shape[1] != (H // P) * (W // P) or patches.shape[2] != channels * P * P:
        raise ValueError(f"patches {tuple(patches.shape)} do not fit a {channels}x{H}x{W} image with P={P}")
    B = patches.shape[0]
    x = patches.reshape(B, H // P, W // P, channels, P, P)  # (B, H/P, W/P, C, P, P)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, channels, H, W)


class PatchEmbedding(nn.Module):
    """Linear patch embedding: ``patchify(images) @ W^T + b``, (B, C, H, W) -> (B, N, D)."""

    def __init__(self, in_channels: int, patch_size: int, d_model: int):
        super().__init__()
        if min(in_channels, patch_size, d_model) < 1:
            raise ValueError(f"in_channels ({in_channels}), patch_size ({patch_size}) and d_model ({d_model}) "
                             "must be positive")
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(patchify(images, self.patch_size))  # (B, N, D)

    def as_conv2d(self) -> nn.Conv2d:
        """The same map as a strided convolution (what timm and Hugging Face's ViT use):
        ``conv(images).flatten(2).transpose(1, 2)`` equals ``self(images)``."""
        D, CPP = self.proj.weight.shape
        P = self.patch_size
        conv = nn.Conv2d(CPP // (P * P), D, kernel_size=P, stride=P).to(self.proj.weight)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.view(D, CPP // (P * P), P, P))
            conv.bias.copy_(self.proj.bias)
        return conv


@dataclass
class ViTConfig:
    """Configuration of :class:`ViT`. Defaults fit the 8x8 digits: 16 patches of 2x2 pixels."""

    image_size: int = 8  # H = W, pixels
    patch_size: int = 2  # P: each token is a P x P patch
    in_channels: int = 1  # C: grey images
    n_classes: int = 10  # classification head outputs; 0 = no head (a feature encoder, as in CLIP)
    d_model: int = 64  # D: token width
    n_layer: int = 2  # encoder blocks
    n_head: int = 4  # attention heads
    d_ff: int | None = None  # feed-forward width; None = 4 * d_model (ViT-B: 3072 = 4 * 768)
    dropout: float = 0.0  # dropout in the blocks
    pool: Literal["cls", "mean"] = "cls"  # image summary: the CLS token (ViT) or the mean patch (Beyer 2022)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "d_model", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {self.n_classes}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        self.block_config()  # validates d_model / n_head / dropout

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_config(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, n_heads=self.n_head, d_ff=self.d_ff, dropout=self.dropout,
                           causal=False, norm="pre", activation="gelu")

    @classmethod
    def tiny(cls, **overrides) -> ViTConfig:
        return cls(**{"d_model": 32, "n_layer": 1, "n_head": 2, **overrides})


class ClassifierOutput(NamedTuple):
    """``logits`` (B, n_classes) or None, ``loss`` (mean cross-entropy) or None, pooled ``features``
    (B, D) and the final ``hidden`` states (B, 1 + N, D) (ViT) or None (CNN)."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None
    features: torch.Tensor
    hidden: torch.Tensor | None


def _loss(logits: torch.Tensor | None, targets: torch.Tensor | None) -> torch.Tensor | None:
    if targets is None:
        return None
    if logits is None:
        raise ValueError("this model has no classification head (n_classes=0): cannot compute a loss")
    return F.cross_entropy(logits.float(), targets)


class ViT(nn.Module):
    """A Vision Transformer (Dosovitskiy et al. 2021): patch embedding, a learned CLS token, learned
    position embeddings, pre-norm encoder blocks (bidirectional attention), a final LayerNorm and a
    linear head on the CLS token (or on the mean of the patch tokens)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbedding(c.in_channels, c.patch_size, c.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.n_patches, c.d_model))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(c.block_config()) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_classes) if c.n_classes else None

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Input sequence: [CLS; patch embeddings] + position embeddings, (B, 1 + N, D)."""
        c = self.config
        if images.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"images must be (B, {c.in_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(images.shape)}")
        x = self.patch_embed(images)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + N, D)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> ClassifierOutput:
        """images (B, C, H, W) -> ClassifierOutput; ``targets`` (B,) class ids give the loss."""
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        hidden = self.ln_f(x)  # (B, 1 + N, D)
        features = hidden[:, 0] if self.config.pool == "cls" else hidden[:, 1:].mean(dim=1)  # (B, D)
        logits = self.head(features) if self.head is not None else None  # (B, n_classes)
        return ClassifierOutput(logits, _loss(logits, targets), features, hidden)

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Self-attention weights of every block: a list of L tensors (B, h, 1 + N, 1 + N); index 0 is CLS."""
        x = self.tokens(images)
        maps = []
        for block in self.blocks:
            x, weights, _ = block(x, return_weights=True)
            maps.append(weights)
        return maps


class SmallCNN(nn.Module):
    """A small convolutional classifier, the baseline for :class:`ViT`: three 3x3 convolutions with
    ReLU (a 2x2 max-pool after the second), global average pooling, a linear head.

    Convolutions build in two assumptions the ViT must learn from data: locality (a pixel's neighbours
    matter most) and translation equivariance (the same filter everywhere)."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), n_classes: int = 10, in_channels: int = 1):
        super().__init__()
        if len(channels) != 3 or min(channels) < 1 or n_classes < 1:
            raise ValueError(f"need three positive channel counts and n_classes >= 1, got {channels}, {n_classes}")
        c1, c2, c3 = channels
        self.features_net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(c3, n_classes)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> ClassifierOutput:
        features = self.features_net(images).mean(dim=(2, 3))  # (B, c3): global average pooling
        logits = self.head(features)  # (B, n_classes)
        return ClassifierOutput(logits, _loss(logits, targets), features, None)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``images`` whose argmax logit equals the label (eval mode, no gradients)."""
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many images as labels (> 0), got {len(images)} and {len(labels)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = model(images[i:i + batch_size].to(device)).logits
        correct += (logits.argmax(dim=-1).cpu() == labels[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(labels)


def position_similarity(pos_embed: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the position embeddings of every pair of patches: (N, N) from the
    patch rows of ``pos_embed`` (1, 1 + N, D) or (N, D) (a CLS row, if given as (1, 1 + N, D), is dropped).
    Reshape a row to the patch grid to see which positions the model considers neighbours (ViT, fig. 7)."""
    if pos_embed.ndim == 3:
        pos_embed = pos_embed[0, 1:]  # (N, D): drop the CLS position
    if pos_embed.ndim != 2:
        raise ValueError(f"pos_embed must be (1, 1 + N, D) or (N, D), got {tuple(pos_embed.shape)}")
    p = F.normalize(pos_embed.float(), dim=-1)
    return p @ p.T  # (N, N)
