"""How much memory a model needs to serve and to train: a calculator, and a meter that checks it.

Serving needs the weights (parameters x bytes per parameter: 7B x 2 bytes = 14 GB in fp16) plus the KV
cache (2 x layers x KV heads x head dim x tokens x bytes). Training needs, per *trainable* parameter,

    weights + gradient + optimizer state        fp32 + AdamW: 4 + 4 + 8          = 16 bytes
                                                mixed precision (ZeRO paper):
                                                2 + 2 + (4 master + 4 + 4 Adam)  = 16 bytes

plus the **activations** saved for the backward pass, which grow with batch x sequence length and, for
a Llama-style decoder layer, are about ``14C + 2 KV D + 4F`` values per token (see
:func:`activation_memory`; plus ``H T`` per token when attention materialises its T x T scores).

:func:`measure_training_memory` measures the same four parts on a real model and a real step: the
bytes of the parameters, of their ``.grad``, of the optimizer's state tensors, and of every tensor
autograd saves for backward (recorded with ``torch.autograd.graph.saved_tensors_hooks``, parameters
excluded, shared storages counted once). That works on any device, CPU included, where torch's
allocator statistics do not exist; on CUDA the notebook also compares with ``max_memory_allocated``.

Taught in ``modules/03_deployment/09_gpu_memory_scale_out.py``.

References:
- Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models"
  (the 16 bytes per parameter), arXiv:1910.02054
- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (activation memory per layer), arXiv:2205.05198
- Kaplan et al. 2020 / the "Transformer Math 101" post by EleutherAI (rules of thumb)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "BYTES_PER_PARAM",
    "bytes_per_param",
    "serving_memory",
    "kv_cache_bytes",
    "activation_memory",
    "TrainingMemory",
    "training_memory",
    "tensor_bytes",
    "measure_training_memory",
    "format_bytes",
]

#: Bytes per value of each storage format (4-bit formats pack two values per byte).
BYTES_PER_PARAM: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1, "int4": 0.5, "nf4": 0.5}
#: Optimizer state per trainable parameter, in bytes (fp32 states).
_OPTIMIZER_BYTES = {"adamw": 8, "adam": 8, "sgd_momentum": 4, "sgd": 0}


def bytes_per_param(dtype: str | torch.dtype) -> float:
    """Bytes per value for a format name (``"fp16"``) or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"dtype must be a torch.dtype or one of {list(BYTES_PER_PARAM)}, got {dtype!r}")
    return BYTES_PER_PARAM[dtype]


def serving_memory(n_params: float, dtype: str | torch.dtype = "fp16", kv_cache: float = 0.0) -> float:
    """Bytes to hold a model for inference: ``n_params * bytes_per_param(dtype) + kv_cache``.
    E.g. ``serving_memory(7e9, "fp16") == 14e9`` (14 GB)."""
    if n_params < 0 or kv_cache < 0:
        raise ValueError(f"n_params ({n_params}) and kv_cache ({kv_cache}) must be non-negative")
    return n_params * bytes_per_param(dtype) + kv_cache


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int = 1,
                   dtype: str | torch.dtype = "fp16") -> float:
    """Bytes of a KV cache: keys and values (2) for every layer, KV head, position and sequence."""
    for name, v in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                    ("seq_len", seq_len), ("batch_size", batch_size)):
        if v < 0:
            raise ValueError(f"{name} must be non-negative, got {v}")
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_param(dtype)


def activation_memory(batch_size: int, seq_len: int, d_model: int, n_layers: int, n_heads: int, d_ff: int,
                      vocab_size: int, n_kv_heads: int | None = None, gated: bool = True,
                      norm: str = "rmsnorm", attention_scores: bool = False,
                      dtype: str | torch.dtype = "fp32") -> float:
    """Estimated bytes of the activations a decoder saves for backward (no dropout, no recomputation).

    Counting, per token and layer, the tensors the backward pass needs (C width, F FFN width, KV D the
    key/value width, H heads, T length):

    - each of the two norms: its input and its output (which the next matmul keeps), 2C for a fused
      LayerNorm; Hugging Face's RMSNorm, written as separate operations, also keeps the normalised
      input before the gain: 3C;
    - attention: the rotated q (C), k and v (KV D each) and the output (C), which the output
      projection keeps too; plus the H T softmax weights per token only when attention materialises
      them (``attention_scores``: eager attention; SDPA and flash kernels keep a log-sum-exp instead);
    - FFN: SwiGLU ``down(silu(gate(x)) * up(x))`` keeps gate, silu(gate), up and their product (4F);
      a plain MLP the hidden layer before and after the activation (2F).

    So ``6C + 2C + 2 KV D + 4F`` for a Llama layer and ``4C + 2C + 2 KV D + 2F`` for GPT-2. The head adds the final norm and the log-softmax of
    the logits (V per token). Korthikanti et al. (2022) count the same way for GPT in fp16 with dropout
    (34 C + 5 H T bytes per token and layer). Small per-row statistics (means, log-sum-exps) are left out.
    """
    if min(batch_size, seq_len, d_model, n_layers, n_heads, d_ff, vocab_size) < 1:
        raise ValueError("all sizes must be positive")
    if norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
    kv = n_heads if n_kv_heads is None else n_kv_heads
    kv_width = kv * (d_model // n_heads)
    norm_values = (2 if norm == "layernorm" else 3) * d_model
    per_layer = 2 * norm_values + 2 * d_model + 2 * kv_width + (4 if gated else 2) * d_ff
    if attention_scores:
        per_layer += n_heads * seq_len
    head = norm_values + vocab_size
    tokens = batch_size * seq_len
    return tokens * (n_layers * per_layer + head) * bytes_per_param(dtype)


class TrainingMemory(NamedTuple):
    """Bytes of the four parts of training memory."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(n_params: float, activations: float = 0.0, trainable_params: float | None = None,
                    weight_dtype: str | torch.dtype = "fp32", grad_dtype: str | torch.dtype | None = None,
                    optimizer: str = "adamw", master_weights: bool = False) -> TrainingMemory:
    """Calculator: the memory of a training step.

    ``n_params`` weights in ``weight_dtype``; gradients (``grad_dtype``, default the weights' dtype) and
    optimizer state only for the ``trainable_params`` (default all; e.g. LoRA trains a tiny fraction).
    ``optimizer``: "adamw"/"adam" (two fp32 moments, 8 bytes), "sgd_momentum" (4), "sgd" (0).
    ``master_weights``: mixed precision keeps an fp32 copy of the trainable weights (+4 bytes, counted
    with the optimizer). ``activations``: bytes, e.g. from :func:`activation_memory`.
    """
    if optimizer not in _OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {list(_OPTIMIZER_BYTES)}, got {optimizer!r}")
    trainable = n_params if trainable_params is None else trainable_params
    if n_params < 0 or not 0 <= trainable <= n_params or activations < 0:
        raise ValueError(f"need 0 <= trainable_params ({trainable}) <= n_params ({n_params}) and activations >= 0")
    grad_bytes = bytes_per_param(weight_dtype if grad_dtype is None else grad_dtype)
    opt = trainable * (_OPTIMIZER_BYTES[optimizer] + (4 if master_weights else 0))
    return TrainingMemory(n_params * bytes_per_param(weight_dtype), trainable * grad_bytes, opt, activations)


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors`` (an iterable; None entries are skipped). The tensors
    must all be alive at once (pass a list, not a generator of temporaries, whose freed memory could be
    reused at the same address)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure_training_memory(model: nn.Module, loss_fn: Callable[[], torch.Tensor],
                            optimizer: torch.optim.Optimizer) -> TrainingMemory:
    """Run one real training step (``loss_fn()`` -> scalar, backward, ``optimizer.step()``) and measure
    what it held: parameters, gradients, optimizer state, and the activations autograd saved for
    backward (each distinct storage once, the parameters themselves excluded). Returns bytes.
    The step really updates the model."""
    params = [p for p in model.parameters()]
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs and storage.nbytes() > 0:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    optimizer.step()
    grads = tensor_bytes(p.grad for p in params)
    states = tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                          if isinstance(v, torch.Tensor) and v.ndim > 0)  # skip scalar step counters
    return TrainingMemory(tensor_bytes(params), grads, states, sum(saved.values()))


def format_bytes(n: float) -> str:
    """Human-readable size with decimal units: 14e9 -> '14.0 GB', 2.5e6 -> '2.50 MB'."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"
    return f"{n:.0f} B"
