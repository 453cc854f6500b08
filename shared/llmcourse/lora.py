"""LoRA: low-rank adaptation of a frozen linear layer, from scratch, compatible with peft.

A frozen weight W (out, in) is adapted by a trainable low-rank update:

    h = W x + (alpha / r) * B A x,      A (r, in), B (out, r),  r << min(in, out)

A starts random (Kaiming-uniform as ``nn.Linear``, or Gaussian), B starts at zero, so at step 0 the model
is exactly the pretrained one and the first gradients reach B only. ``alpha / r`` keeps the update's size
roughly independent of the rank, so a learning rate tuned at one rank still works at another. After
training, ``W + (alpha / r) B A`` can be *merged* into W: the adapted model then costs nothing extra at
inference, and ``unmerge`` recovers the base weights to swap adapters.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685
(eq. 3 and section 4.1); Aghajanyan et al. 2020, "Intrinsic Dimensionality Explains the Effectiveness of
Language Model Fine-Tuning", https://arxiv.org/abs/2012.13255; peft's ``LoraConfig``/``lora.Linear``
(the same parametrisation, so adapters load into each other: see :func:`to_peft_state_dict`).

Taught in ``modules/02_fine_tuning/04_lora.py`` (and lab 2); module 3's QLoRA wraps a 4-bit base layer
with :class:`LoRALinear`. Shape legend: B batch, T length, I in_features, O out_features, R rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "inject_lora",
    "mark_only_lora_trainable",
    "lora_state_dict",
    "load_lora_state_dict",
    "to_peft_state_dict",
    "from_peft_state_dict",
    "merge_lora",
    "unmerge_lora",
    "lora_parameter_count",
    "low_rank_approximation",
]

_PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    """What to adapt and how (the fields mirror peft's ``LoraConfig``)."""

    r: int = 8  # rank of the update B A
    alpha: float = 16  # scaling numerator: the update is multiplied by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # names (last component) of the linears to adapt
    init: Literal["kaiming", "gaussian"] = "kaiming"  # A's initialisation; B always starts at zero

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be a positive int, got {self.r!r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"target_modules must be non-empty module names, got {self.target_modules!r}")
        if self.init not in ("kaiming", "gaussian"):
            raise ValueError(f"init must be 'kaiming' or 'gaussian', got {self.init!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    return None


class LoRALinear(nn.Module):
    """A frozen linear-like ``base`` plus a trainable low-rank update: ``base(x) + (alpha/r) B(A(drop(x)))``.

    ``base`` is any module with ``in_features``/``out_features`` and a forward (``nn.Linear``, or a
    quantized linear in module 3). ``lora_A`` (R, I) and ``lora_B`` (O, R) are bias-free ``nn.Linear``
    layers kept in float32 whatever the base dtype; the update is computed in float32, added to the base
    output and cast back to its dtype (as peft does). Shapes: x (..., I) -> (..., O).

    :meth:`merge` folds the update into ``base.weight`` (then ``forward`` is just ``base``), :meth:`unmerge`
    takes it out again; both need a base with a ``.weight``.
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 init: Literal["kaiming", "gaussian"] = "kaiming"):
        super().__init__()
        for attr in ("in_features", "out_features"):
            if not isinstance(getattr(base, attr, None), int):
                raise ValueError(f"base must have an int attribute {attr!r} (got {type(base).__name__})")
        LoRAConfig(r=r, alpha=alpha, dropout=dropout, init=init)  # validates the numbers
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        ref = _first_tensor(base)
        device = ref.device if ref is not None else None
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=torch.float32)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters(init)

    def reset_lora_parameters(self, init: Literal["kaiming", "gaussian"] = "kaiming") -> None:
        """A random (so the B gradient is not zero), B zero (so the adapted model starts as the base)."""
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's default
        elif init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.r)  # peft's "gaussian"
        else:
            raise ValueError(f"init must be 'kaiming' or 'gaussian', got {init!r}")
        nn.init.zeros_(self.lora_B.weight)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution (alpha/r) B A drop(x) in float32: (..., I) -> (..., O)."""
        return self.lora_B(self.lora_A(self.lora_dropout(x.to(torch.float32)))) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # (..., O)
        if self.merged:
            return result
        # fp32 + the base's dtype promotes to fp32: one rounding at the end, as in peft.
        return (result + self.delta(x)).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense update (alpha/r) B A as an (O, I) float32 matrix."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (O, R) @ (R, I)

    def _base_weight(self) -> torch.Tensor:
        weight = getattr(self.base, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (self.out_features, self.in_features) \
                or not weight.is_floating_point():
            raise ValueError(
                f"merge needs a base with a floating-point .weight of shape ({self.out_features}, "
                f"{self.in_features}); {type(self.base).__name__} has none (e.g. a quantized layer): "
                "keep the adapter unmerged, or dequantize the base first"
            )
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (alpha/r) B A (added in float32, stored in W's dtype). Raises if already merged."""
        weight = self._base_weight()
        if self.merged:
            raise ValueError("this LoRALinear is already merged")
        weight.copy_((weight.to(torch.float32) + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (alpha/r) B A: the base weight again (exactly in fp32 up to rounding)."""
        weight = self._base_weight()
        if not self.merged:
            raise ValueError("this LoRALinear is not merged")
        weight.copy_((weight.to(torch.float32) - self.delta_weight()).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, " \
               f"alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    """peft's rule: a module matches a target when its name is the target or ends with ``.target``."""
    return any(name == t or name.endswith("." + t) for t in targets)


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze every parameter except the LoRA ``lora_A``/``lora_B`` weights; return the trainable count."""
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in f".{name}" or ".lora_B." in f".{name}")
        n += p.numel() if p.requires_grad else 0
    return n


def inject_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace, in place, every module whose name matches ``config.target_modules`` (e.g. ``q_proj``
    matches ``model.layers.0.self_attn.q_proj``) by a :class:`LoRALinear` around it, then freeze every
    other parameter. Returns the replaced names, in model order.

    Raises ``ValueError`` when nothing matches, when a match has no ``in_features``/``out_features``,
    or when the model already contains LoRA layers.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA layers; inject once (or start from a fresh model)")
    targets = [(name, module) for name, module in model.named_modules() if name and _matches(name, config.target_modules)]
    if not targets:
        some = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no module matches target_modules={config.target_modules}; linear layers are named {some}")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, config.r, config.alpha, config.dropout, config.init))
    mark_only_lora_trainable(model)
    return [name for name, _ in targets]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: every ``...lora_A.weight``/``...lora_B.weight`` tensor (what gets saved and
    shipped per task; a few MB instead of the whole model). Keys as in ``model.state_dict()``."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by :func:`lora_state_dict` into a model with the same LoRA layers.
    Every LoRA weight of ``model`` must be present (a partial adapter would silently be half-trained)."""
    expected = set(lora_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"adapter keys do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(state, strict=False)



def to_peft_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our adapter keys -> peft's saved-adapter keys (``peft.set_peft_model_state_dict`` format):
    ``model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``base_model.model.model.layers.0...lora_A.weight``.
    (Our LoRALinear keeps the wrapped layer under ``.base``; peft calls it ``.base_layer``, but adapters
    do not store the frozen weights.)"""
    return {_PEFT_PREFIX + k: v for k, v in state.items()}


def from_peft_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's saved-adapter keys (``peft.get_peft_model_state_dict``) -> ours; the inverse of
    :func:`to_peft_state_dict`. Adapter names (``.default``) are dropped if present."""
    out = {}
    for k, v in state.items():
        if not k.startswith(_PEFT_PREFIX):
            raise ValueError(f"not a peft adapter key (expected prefix {_PEFT_PREFIX!r}): {k!r}")
        k = k[len(_PEFT_PREFIX):].replace(".default.", ".")
        out[k] = v
    return out


def merge_lora(model: nn.Module) -> int:
    """Merge every (unmerged) LoRA layer of ``model``; return how many were merged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and not m.merged]
    for m in layers:
        m.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Unmerge every merged LoRA layer of ``model``; return how many were unmerged."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear) and m.merged]
    for m in layers:
        m.unmerge()
    return len(layers)


def lora_parameter_count(shapes: list[tuple[int, int]], r: int) -> int:
    """Trainable parameters of LoRA on linears of the given (out, in) shapes: sum of r (in + out)."""
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    return sum(r * (o + i) for o, i in shapes)


def low_rank_approximation(W: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-``r`` approximation of a matrix W (O, I) in Frobenius and spectral norm
    (Eckart-Young): keep the ``r`` largest singular values of the SVD ``W = U S V^T``. Computed in fp32."""
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {tuple(W.shape)}")
    if not 0 <= r <= min(W.shape):
        raise ValueError(f"r must be in 0..{min(W.shape)} for a {tuple(W.shape)} matrix, got {r}")
    U, S, Vh = torch.linalg.svd(W.to(torch.float32), full_matrices=False)  # (O, K), (K,), (K, I)
    return ((U[:, :r] * S[:r]) @ Vh[:r]).to(W.dtype)
