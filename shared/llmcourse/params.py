"""Where the parameters of a transformer live: a calculator checked against published models.

For a GPT-style decoder with width C, L layers, vocabulary V and context T_max (biases included):

    embeddings  V*C + T_max*C
    per layer   attention 4*C^2 + 4*C,  feed-forward 2*C*d_ff + d_ff + C,  two LayerNorms 4*C
    final       LayerNorm 2*C, output head 0 when tied to the embedding

so the total is about 12*L*C^2 when d_ff = 4C: the matrices, not the embeddings, dominate large models.
Taught in ``modules/01_transformers/03_architectures.py`` (and used by lab 1). The published sizes come from Radford
et al. 2018 (GPT-1), Radford et al. 2019 (GPT-2), Brown et al. 2020 (GPT-3, Table 2.1) and Devlin et al.
2019 (BERT).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["ArchSpec", "ParamBreakdown", "count_parameters", "spec_from_gpt_config", "PUBLISHED_MODELS",
           "format_count"]


@dataclass
class ArchSpec:
    """Architecture hyper-parameters that decide the parameter count."""

    vocab_size: int  # V
    context_length: int  # T_max: rows of the learned position table
    d_model: int  # C
    n_layers: int  # L
    n_heads: int  # H (parameters do not depend on H, only on C and the KV heads)
    d_ff: int | None = None  # feed-forward width; None = 4 * d_model
    n_kv_heads: int | None = None  # key/value heads (GQA/MQA); None = n_heads
    kind: Literal["decoder", "encoder"] = "decoder"  # decoder (GPT) or encoder (BERT)
    bias: bool = True  # biases in linear layers (and LayerNorms, unless norm == "rmsnorm")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # LayerNorm: scale + shift; RMSNorm: scale only
    ffn: Literal["mlp", "gated"] = "mlp"  # two matrices (GPT/BERT) or three (SwiGLU, Llama)
    pos_encoding: Literal["learned", "sinusoidal", "alibi", "rope", "none"] = "learned"
    tied_embeddings: bool = True  # output head shares the token embedding
    final_norm: bool = True  # a LayerNorm after the last block (pre-norm models)
    embedding_norm: bool = False  # a LayerNorm on the embeddings (BERT)
    type_vocab_size: int = 0  # segment (token type) embeddings (BERT: 2)
    pooler: bool = False  # BERT's pooler: a C x C dense layer on the [CLS] token
    name: str = ""  # display name
    reported_params: float | None = None  # the size the paper reports, for comparison

    def __post_init__(self) -> None:
        for f in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        for f, choices in (("kind", ("decoder", "encoder")), ("norm", ("layernorm", "rmsnorm")),
                           ("ffn", ("mlp", "gated")),
                           ("pos_encoding", ("learned", "sinusoidal", "alibi", "rope", "none"))):
            if getattr(self, f) not in choices:
                raise ValueError(f"{f} must be one of {choices}, got {getattr(self, f)!r}")


@dataclass
class ParamBreakdown:
    """Parameter counts by component; ``total`` is their sum."""

    embeddings: int  # token, position and segment embeddings (+ embedding LayerNorm)
    attention: int  # q, k, v and output projections of all layers
    ffn: int  # feed-forward layers of all layers
    norms: int  # LayerNorms inside the blocks and the final one
    head: int  # output head (0 when tied) and BERT's pooler
    total: int = 0

    def __post_init__(self) -> None:
        self.total = self.embeddings + self.attention + self.ffn + self.norms + self.head

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _norm_params(spec: ArchSpec) -> int:
    return spec.d_model * (2 if spec.norm == "layernorm" and spec.bias else 1)


def count_parameters(spec: ArchSpec) -> ParamBreakdown:
    """Count the parameters of ``spec`` component by component (tied weights counted once)."""
    C, L, V, F = spec.d_model, spec.n_layers, spec.vocab_size, spec.d_ff
    D = C // spec.n_heads
    kv_width = spec.n_kv_heads * D  # GQA shrinks the k and v projections
    b = 1 if spec.bias else 0

    embeddings = V * C
    embeddings += spec.context_length * C if spec.pos_encoding == "learned" else 0
    embeddings += spec.type_vocab_size * C
    embeddings += _norm_params(spec) if spec.embedding_norm else 0

    attention_per_layer = (C * C + b * C) * 2 + (C * kv_width + b * kv_width) * 2  # q, out; k, v
    n_mats = 3 if spec.ffn == "gated" else 2
    ffn_per_layer = n_mats * C * F + b * ((n_mats - 1) * F + C)  # up (+ gate): F biases each; down: C
    norms = L * 2 * _norm_params(spec) + (_norm_params(spec) if spec.final_norm else 0)

    head = 0 if spec.tied_embeddings else V * C
    head += C * C + C if spec.pooler else 0
    return ParamBreakdown(embeddings, L * attention_per_layer, L * ffn_per_layer, norms, head)


def spec_from_gpt_config(config) -> ArchSpec:
    """The :class:`ArchSpec` of ``llmcourse.transformer.GPT(config)``."""
    return ArchSpec(
        vocab_size=config.vocab_size, context_length=config.block_size, d_model=config.d_model,
        n_layers=config.n_layer, n_heads=config.n_head, d_ff=config.d_ff, n_kv_heads=config.n_kv_heads,
        bias=config.bias, ffn="gated" if config.activation == "swiglu" else "mlp",
        pos_encoding=config.pos_encoding, tied_embeddings=config.tie_weights,
        final_norm=config.norm == "pre",
    )


def format_count(n: float) -> str:
    """Human-readable parameter count: 124439808 -> '124.4M', 1.5576e9 -> '1.56B'."""
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


_GPT2 = dict(vocab_size=50257, context_length=1024, kind="decoder")
PUBLISHED_MODELS: dict[str, ArchSpec] = {
    # Radford et al. 2018: 12 post-norm layers, C=768, BPE vocabulary of 40478, 512 positions; no final LN.
    "gpt1": ArchSpec(vocab_size=40478, context_length=512, d_model=768, n_layers=12, n_heads=12,
                     final_norm=False, name="GPT-1", reported_params=117e6),
    # Radford et al. 2019, Table 2 (the paper's "117M" is 124M once counted exactly).
    "gpt2-small": ArchSpec(**_GPT2, d_model=768, n_layers=12, n_heads=12, name="GPT-2 small",
                           reported_params=124e6),
    "gpt2-medium": ArchSpec(**_GPT2, d_model=1024, n_layers=24, n_heads=16, name="GPT-2 medium",
                            reported_params=355e6),
    "gpt2-large": ArchSpec(**_GPT2, d_model=1280, n_layers=36, n_heads=20, name="GPT-2 large",
                           reported_params=774e6),
    "gpt2-xl": ArchSpec(**_GPT2, d_model=1600, n_layers=48, n_heads=25, name="GPT-2 XL", reported_params=1.5e9),
    # Brown et al. 2020, Table 2.1: 96 layers, C=12288, 96 heads of 128, context 2048.
    "gpt3-175b": ArchSpec(vocab_size=50257, context_length=2048, d_model=12288, n_layers=96, n_heads=96,
                          name="GPT-3 175B", reported_params=175e9),
    # Devlin et al. 2019: post-norm encoder, WordPiece 30522, 2 segments, embedding LayerNorm, pooler.
    "bert-base": ArchSpec(vocab_size=30522, context_length=512, d_model=768, n_layers=12, n_heads=12,
                          kind="encoder", final_norm=False, embedding_norm=True, type_vocab_size=2,
                          pooler=True, name="BERT-base", reported_params=110e6),
}
