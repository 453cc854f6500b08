"""Number formats and weight quantization, from bit layouts to NF4 and a quantized linear layer.

Floating point numbers are ``(-1)^s * 2^(e - bias) * (1 + m / 2^M)``: the exponent bits ``E`` decide the
*range*, the mantissa bits ``M`` the *precision* (relative spacing ``2^-M``). fp32 is (E, M) = (8, 23),
fp16 (5, 10) and bf16 (8, 7): bf16 keeps fp32's range and gives up precision, fp16 the other way round.

Integer quantization maps a float tensor to ``b``-bit integers with a scale (and maybe a zero point):

    absmax (symmetric)   s = max|x| / (2^(b-1) - 1)      q = round(x / s)                x ~ s * q
    zero-point (affine)  s = (max - min) / (2^b - 1)     q = round(x / s) + z,  z = round(-min / s)
                                                                                         x ~ s * (q - z)

One scale per tensor is ruined by a single outlier; one per output channel (``dim``) or per block of 64
consecutive weights (:func:`blockwise_quantize`) keeps the error local. NF4 (Dettmers et al. 2023,
QLoRA) replaces the evenly spaced 4-bit grid with 16 quantiles of a normal distribution, because trained
weights are roughly normal: every level is then used about equally often.

:class:`QuantLinear` stores a linear layer's weight packed (int8, 4-bit pairs in a byte, NF4) and
dequantizes it on the fly in ``forward``; :func:`quantize_model` swaps a model's ``nn.Linear`` layers for
it and :func:`module_nbytes` measures the memory that results.

Taught in ``modules/03_deployment/05_quantization.py`` (formats, schemes, SmolLM2 quantized) and
``06_qlora.py`` (LoRA on a frozen :class:`NF4Linear` base).

References:
- IEEE 754-2019; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322
- Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
  Inference" (affine/zero-point quantization), arXiv:1712.05877
- Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale", arXiv:2208.07339
- Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (NF4, double quantization),
  arXiv:2305.14314

Shape legend: N output features (rows of a weight), K input features, G number of blocks, BS block size.
"""
from __future__ import annotations

import copy
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FloatFormat",
    "float_format",
    "BitFields",
    "bit_fields",
    "value_from_fields",
    "QuantizedTensor",
    "absmax_quantize",
    "absmax_dequantize",
    "zeropoint_quantize",
    "zeropoint_dequantize",
    "blockwise_quantize",
    "blockwise_dequantize",
    "pack_4bit",
    "unpack_4bit",
    "NF4_LEVELS",
    "nf4_levels",
    "NF4Tensor",
    "nf4_quantize",
    "nf4_dequantize",
    "quantization_error",
    "SCHEMES",
    "QuantLinear",
    "NF4Linear",
    "quantize_model",
    "module_nbytes",
    "bits_per_weight",
]


# ----------------------------------------------------------------------------------------------------
# Floating-point formats: bit layouts, range and precision
# ----------------------------------------------------------------------------------------------------
class FloatFormat(NamedTuple):
    """An IEEE-style binary floating-point format, with its range and precision derived from the bits."""

    name: str
    exponent_bits: int  # E
    mantissa_bits: int  # M (stored fraction bits; the leading 1 is implicit)

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def max(self) -> float:
        """Largest finite value: the largest exponent (all ones is inf/nan) with a full mantissa."""
        return (2 - 2.0 ** -self.mantissa_bits) * 2.0 ** self.bias

    @property
    def min_normal(self) -> float:
        """Smallest positive normal number, 2^(1 - bias)."""
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive number (exponent 0, mantissa 1): 2^(1 - bias - M)."""
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next number, 2^-M (relative precision)."""
        return 2.0 ** -self.mantissa_bits

    @property
    def decimal_digits(self) -> float:
        """About how many significant decimal digits the mantissa holds: (M + 1) log10(2)."""
        return (self.mantissa_bits + 1) * math.log10(2)


_FORMATS = {
    torch.float32: FloatFormat("fp32", 8, 23),
    torch.float16: FloatFormat("fp16", 5, 10),
    torch.bfloat16: FloatFormat("bf16", 8, 7),
}
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def float_format(dtype: torch.dtype) -> FloatFormat:
    """The :class:`FloatFormat` of ``torch.float32``, ``torch.float16`` or ``torch.bfloat16``."""
    if dtype not in _FORMATS:
        raise ValueError(f"dtype must be one of {list(_FORMATS)}, got {dtype}")
    return _FORMATS[dtype]


class BitFields(NamedTuple):
    """The three fields of one floating-point number, and its bits as a string ``s|eeeee|mmmmmmmmmm``."""

    sign: int
    exponent: int  # the stored (biased) exponent
    mantissa: int  # the stored fraction bits, as an integer
    bits: str


def bit_fields(value: float | torch.Tensor, dtype: torch.dtype = torch.float32) -> BitFields:
    """Split ``value`` (rounded to ``dtype`` first) into sign, biased exponent and mantissa bits.

    Reads the real bits by reinterpreting the tensor's memory as an integer (``Tensor.view(int)``)."""
    fmt = float_format(dtype)
    x = torch.as_tensor(value, dtype=torch.float32).reshape(()).to(dtype)
    raw = int(x.view(_INT_VIEW[dtype]).item()) & ((1 << fmt.bits) - 1)  # two's complement -> unsigned
    sign = raw >> (fmt.bits - 1)
    exponent = (raw >> fmt.mantissa_bits) & ((1 << fmt.exponent_bits) - 1)
    mantissa = raw & ((1 << fmt.mantissa_bits) - 1)
    b = format(raw, f"0{fmt.bits}b")
    return BitFields(sign, exponent, mantissa, f"{b[0]}|{b[1:1 + fmt.exponent_bits]}|{b[1 + fmt.exponent_bits:]}")


def value_from_fields(fields: BitFields, dtype: torch.dtype = torch.float32) -> float:
    """Rebuild the number from its fields with the IEEE formula (normal, subnormal, inf and nan)."""
    fmt = float_format(dtype)
    sign = -1.0 if fields.sign else 1.0
    if fields.exponent == 2**fmt.exponent_bits - 1:  # all ones: infinity or not-a-number
        return sign * math.inf if fields.mantissa == 0 else math.nan
    if fields.exponent == 0:  # subnormal: no implicit leading 1, exponent fixed at 1 - bias
        return sign * 2.0 ** (1 - fmt.bias) * (fields.mantissa / 2**fmt.mantissa_bits)
    return sign * 2.0 ** (fields.exponent - fmt.bias) * (1 + fields.mantissa / 2**fmt.mantissa_bits)


# ----------------------------------------------------------------------------------------------------
# Integer quantization: absmax (symmetric) and zero-point (affine), per tensor or per channel
# ----------------------------------------------------------------------------------------------------
class QuantizedTensor(NamedTuple):
    """Integer codes and what is needed to map them back to floats.

    ``q``: the codes (int8 for absmax, uint8 for zero-point; 4-bit codes still use one byte each here).
    ``scale``: fp32, broadcastable to ``q`` (a 0-d tensor per tensor, size 1 on every axis but ``dim``
    per channel, (G, 1) per block). ``zero_point``: like ``scale`` (int32), or None for absmax.
    ``bits``: code width. ``dim``: the channel axis or None. ``shape``/``block_size``: set by
    :func:`blockwise_quantize` (``q`` is then (G, BS) and ``shape`` the original shape).
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None = None
    bits: int = 8
    dim: int | None = None
    shape: torch.Size | None = None
    block_size: int | None = None


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8 (codes are stored in one byte), got {bits!r}")


def _amax_over_others(x: torch.Tensor, dim: int | None, fn) -> torch.Tensor:
    """Reduce ``x`` with ``fn`` (amax/amin) over every axis except ``dim`` (keepdim), or over all."""
    if dim is None:
        return fn(x)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim {dim} is out of range for a tensor with {x.ndim} dimensions")
    dim = dim % x.ndim
    others = [d for d in range(x.ndim) if d != dim]
    return fn(x, dim=others, keepdim=True) if others else x.clone()


def absmax_quantize(x: torch.Tensor, bits: int = 8, dim: int | None = None) -> QuantizedTensor:
    """Symmetric ("absmax") quantization to signed ``bits``-bit integers.

        s = max|x| / (2^(bits-1) - 1),   q = clamp(round(x / s), -(2^(bits-1) - 1), 2^(bits-1) - 1)

    ``dim=None``: one scale for the whole tensor. ``dim=d``: one scale per index along axis ``d`` (the
    "channel" axis, as in ``torch.quantize_per_channel(axis=d)``); for an ``nn.Linear`` weight (N, K),
    ``dim=0`` gives one scale per output row. The grid is symmetric (-127..127 for 8 bits, -128 unused),
    so 0 maps to 0 exactly. An all-zero slice gets scale 1. Scales are computed in fp32.
    Returns a :class:`QuantizedTensor` with int8 codes.
    """
    _check_bits(bits)
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    xf = x.float()
    qmax = 2 ** (bits - 1) - 1
    amax = _amax_over_others(xf.abs(), dim, torch.amax)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.round(xf / scale).clamp_(-qmax, qmax).to(torch.int8)
    return QuantizedTensor(q, scale, None, bits, dim)


def absmax_dequantize(q: QuantizedTensor | torch.Tensor, scale: torch.Tensor | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x ~ s * q``. Pass a :class:`QuantizedTensor`, or the codes and the scale separately."""
    if isinstance(q, QuantizedTensor):
        q, scale = q.q, q.scale
    if scale is None:
        raise ValueError("absmax_dequantize needs a scale (or a QuantizedTensor)")
    return (q.float() * scale.float()).to(dtype)


def zeropoint_quantize(x: torch.Tensor, bits: int = 8, dim: int | None = None) -> QuantizedTensor:
    """Asymmetric ("zero-point", affine) quantization to unsigned ``bits``-bit integers 0..2^bits - 1.

        lo = min(min x, 0),  hi = max(max x, 0),  s = (hi - lo) / (2^bits - 1),  z = round(-lo / s)
        q = clamp(round(x / s) + z, 0, 2^bits - 1)

    The whole grid covers [lo, hi] instead of a symmetric [-max|x|, max|x|], which helps skewed data
    (e.g. after a ReLU). The range is stretched to include 0 so that 0 is represented exactly (z is an
    integer code), as PyTorch's observers do. ``dim`` as in :func:`absmax_quantize`. Codes are uint8,
    the zero point an int32 tensor shaped like the scale.
    """
    _check_bits(bits)
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    xf = x.float()
    qmax = 2**bits - 1
    lo = _amax_over_others(xf, dim, torch.amin).clamp(max=0)
    hi = _amax_over_others(xf, dim, torch.amax).clamp(min=0)
    scale = torch.where(hi > lo, (hi - lo) / qmax, torch.ones_like(hi))
    zero_point = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
    q = (torch.round(xf / scale) + zero_point).clamp_(0, qmax).to(torch.uint8)
    return QuantizedTensor(q, scale, zero_point, bits, dim)


def zeropoint_dequantize(q: QuantizedTensor | torch.Tensor, scale: torch.Tensor | None = None,
                         zero_point: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x ~ s * (q - z)``. Pass a :class:`QuantizedTensor`, or codes, scale and zero point."""
    if isinstance(q, QuantizedTensor):
        q, scale, zero_point = q.q, q.scale, q.zero_point
    if scale is None or zero_point is None:
        raise ValueError("zeropoint_dequantize needs a scale and a zero_point (or a QuantizedTensor)")
    return ((q.float() - zero_point.float()) * scale.float()).to(dtype)


def _to_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten ``x`` and cut it into rows of ``block_size`` (zero-padding the last): (G, BS)."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    flat = x.reshape(-1)
    pad = (-flat.numel()) % block_size
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.view(-1, block_size)  # (G, BS)


def blockwise_quantize(x: torch.Tensor, block_size: int = 64, bits: int = 8) -> QuantizedTensor:
    """Absmax quantization with one scale per block of ``block_size`` consecutive elements (row-major).

    An outlier then only coarsens the grid of its own block. Storage: ``bits`` per weight plus one fp32
    scale per block (32 / 64 = 0.5 extra bits per weight for blocks of 64). Returns a
    :class:`QuantizedTensor` with ``q`` (G, BS), ``scale`` (G, 1), ``shape`` and ``block_size`` set.
    """
    blocks = _to_blocks(x.float(), block_size)  # (G, BS)
    qt = absmax_quantize(blocks, bits=bits, dim=0)
    return qt._replace(dim=None, shape=x.shape, block_size=block_size)


def blockwise_dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`blockwise_quantize`: the tensor in its original shape."""
    if qt.shape is None or qt.block_size is None:
        raise ValueError("not a block-wise QuantizedTensor (shape and block_size are missing)")
    flat = (qt.q.float() * qt.scale).reshape(-1)[: math.prod(qt.shape)]
    return flat.view(qt.shape).to(dtype)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (uint8 values 0..15, any shape) two per byte: (n,) -> (ceil(n / 2),) uint8.

    The first code of each pair goes into the high nibble. Odd counts are padded with a 0 code."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() and int(flat.max()) > 15:
        raise ValueError(f"4-bit codes must be in 0..15, got a maximum of {int(flat.max())}")
    if flat.numel() % 2:
        flat = F.pad(flat, (0, 1))
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_4bit`: the first ``numel`` codes as a flat uint8 tensor."""
    pairs = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)  # (2 * len(packed),)
    if numel > pairs.numel():
        raise ValueError(f"asked for {numel} codes but only {pairs.numel()} are packed")
    return pairs[:numel]


# ----------------------------------------------------------------------------------------------------
# NF4: 4-bit NormalFloat (QLoRA)
# ----------------------------------------------------------------------------------------------------
#: The 16 NF4 levels as published with QLoRA (bitsandbytes' table): 8 positive, 0, 7 negative.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


#: Both NF4 levels of every possible byte of packed codes: row b = (levels[b >> 4], levels[b & 15]).
_NF4_PAIRS = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=-1).contiguous()


def nf4_levels(offset: float = 0.9677083) -> torch.Tensor:
    """Build the NF4 levels from scratch (QLoRA, section 3; bitsandbytes ``create_normal_map``).

    Take quantiles of N(0, 1): 8 evenly spaced probabilities from ``offset`` down to 0.5 (exclusive) for
    the positive half, 7 for the negative half, plus an exact 0; divide by the largest so the levels span
    [-1, 1]. ``offset`` < 1 avoids the infinite quantile at probability 1 (its value is the average of
    the two choices of end point the paper describes). One more positive than negative level makes 0
    exactly representable with 16 = 2^4 codes. Returns 16 sorted fp32 values.
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    # torch.linspace in fp32, as the reference implementation does, so the levels agree to ~1e-7.
    pos = normal.icdf(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 positive quantiles
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 negative quantiles
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.max()).float()


class NF4Tensor(NamedTuple):
    """A tensor in NF4: packed 4-bit level indices and one absmax per block.

    ``packed`` (ceil(n / 2),) uint8. Without double quantization ``absmax`` is (G,) fp32 and
    ``absmax_q``/``absmax_scale`` are None. With it, ``absmax`` is None, ``absmax_q`` (G,) int8 codes of
    ``absmax - absmax_mean`` quantized in blocks of ``dq_block_size`` with fp32 ``absmax_scale``.
    """

    packed: torch.Tensor
    absmax: torch.Tensor | None
    shape: torch.Size
    block_size: int
    absmax_q: torch.Tensor | None = None
    absmax_scale: torch.Tensor | None = None
    absmax_mean: torch.Tensor | None = None
    dq_block_size: int | None = None


def nf4_quantize(x: torch.Tensor, block_size: int = 64, double_quant: bool = False,
                 dq_block_size: int = 256) -> NF4Tensor:
    """Quantize ``x`` to NF4 (QLoRA): per block of ``block_size`` weights, divide by the block's absmax
    (now in [-1, 1]) and store the index of the nearest of the 16 :data:`NF4_LEVELS`, two per byte.

    ``double_quant``: also quantize the fp32 absmax constants, in blocks of ``dq_block_size``, to 8 bits
    after subtracting their mean (QLoRA uses an 8-bit float; we use absmax int8, same storage). That
    cuts the scale overhead from 32 / 64 = 0.5 to 8 / 64 + 32 / (64 * 256) ~ 0.127 bits per weight.
    """
    blocks = _to_blocks(x.float(), block_size)  # (G, BS)
    absmax = blocks.abs().amax(dim=1)  # (G,)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = blocks / absmax[:, None]  # (G, BS) in [-1, 1]
    levels = NF4_LEVELS.to(x.device)
    # Nearest level: the code is the number of midpoints between consecutive levels below the value.
    midpoints = (levels[1:] + levels[:-1]) / 2  # (15,)
    codes = torch.bucketize(normed, midpoints)  # (G, BS) in 0..15
    packed = pack_4bit(codes.reshape(-1)[: x.numel()])
    if not double_quant:
        return NF4Tensor(packed, absmax, x.shape, block_size)
    mean = absmax.mean()
    aq = blockwise_quantize(absmax - mean, block_size=dq_block_size, bits=8)
    return NF4Tensor(packed, None, x.shape, block_size, aq.q.reshape(-1)[: absmax.numel()], aq.scale.reshape(-1),
                     mean, dq_block_size)


def nf4_dequantize(t: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`nf4_quantize`: ``levels[code] * absmax`` per block, in the original shape."""
    n = math.prod(t.shape)
    if t.absmax is not None:
        absmax = t.absmax
    else:  # double quantization: first recover the per-block absmax constants
        G = math.ceil(n / t.block_size)
        q = F.pad(t.absmax_q, (0, (-G) % t.dq_block_size)).view(-1, t.dq_block_size)  # (G', dq)
        absmax = (q.float() * t.absmax_scale[:, None]).reshape(-1)[:G] + t.absmax_mean
    # One lookup per packed byte gives both of its levels (high nibble first), as bitsandbytes' kernels
    # do: about 3x faster on CPU than unpacking the codes and looking each one up.
    values = _NF4_PAIRS.to(t.packed.device).index_select(0, t.packed.int()).view(-1)  # (2 * len(packed),)
    if n % t.block_size == 0 and values.numel() == n:  # the usual case: scale in place, no copies
        return values.view(-1, t.block_size).mul_(absmax[:, None]).view(t.shape).to(dtype)
    values = F.pad(values[:n], (0, (-n) % t.block_size)).view(-1, t.block_size) * absmax[:, None]
    return values.reshape(-1)[:n].view(t.shape).to(dtype)


def quantization_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Relative root-mean-square error ``||x - x_hat|| / ||x||`` (0 = exact)."""
    x, x_hat = x.detach().float(), x_hat.detach().float()
    return float((x - x_hat).norm() / x.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------------
# A quantized linear layer and whole-model quantization
# ----------------------------------------------------------------------------------------------------
Scheme = Literal["int8_tensor", "int8", "zeropoint8", "int4_tensor", "int4_block", "nf4", "nf4_dq"]
#: What each scheme stores for a weight (N, K).
SCHEMES: dict[str, str] = {
    "int8_tensor": "absmax int8, one scale for the whole matrix",
    "int8": "absmax int8, one scale per output row (per channel)",
    "zeropoint8": "zero-point uint8, one scale and zero point per output row",
    "int4_tensor": "absmax 4-bit, one scale for the whole matrix, two codes per byte",
    "int4_block": "absmax 4-bit, one fp32 scale per block of 64, two codes per byte",
    "nf4": "NF4 (QLoRA), one fp32 absmax per block of 64, two codes per byte",
    "nf4_dq": "NF4 with double quantization of the absmax constants",
}


class _DequantLinear(torch.autograd.Function):
    """``y = x W^T`` with W dequantized in forward and *again* in backward (for ``dL/dx = dL/dy W``).

    A plain ``F.linear(x, dequantized_weight)`` would make autograd keep the full-precision W alive from
    the forward to the backward pass, for every layer at once: as much memory as the unquantized
    model, which is what QLoRA must avoid. Recomputing costs a second dequantization and saves nothing
    but a reference to the (packed) layer; bitsandbytes' ``MatMul4Bit`` does the same. W is frozen, so
    it gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight(x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad_out @ ctx.layer.dequantized_weight(grad_out.dtype), None


class QuantLinear(nn.Module):
    """A frozen linear layer whose weight (N, K) is stored quantized and dequantized in ``forward``:

        y = x @ dequantize(W_q)^T + b

    The weight lives in buffers (packed codes and scales), so it has no gradient and ``state_dict``
    holds the compact form; inputs flow through in their own dtype. This "weight-only" quantization
    saves memory (and bandwidth), not arithmetic: the matmul itself still runs in floating point, and the
    backward pass dequantizes again instead of keeping the full weight (see ``_DequantLinear``).
    ``in_features``/``out_features`` are kept so LoRA can wrap it (:class:`llmcourse.lora.LoRALinear`).
    Build one with :meth:`from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, scheme: Scheme = "nf4", bias: bool = True,
                 block_size: int = 64):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features ({in_features}) and out_features ({out_features}) must be positive")
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.block_size = scheme, block_size
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: Scheme = "nf4", block_size: int = 64) -> QuantLinear:
        """Quantize an ``nn.Linear`` (its weight is copied, the original is left untouched)."""
        layer = cls(linear.in_features, linear.out_features, scheme, linear.bias is not None, block_size)
        layer.set_weight(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize ``weight`` (N, K) with this layer's scheme and store the result in buffers."""
        if weight.shape != (self.out_features, self.in_features):
            raise ValueError(f"weight {tuple(weight.shape)} must be ({self.out_features}, {self.in_features})")
        s = self.scheme
        for name in list(self._buffers):
            if name != "bias":
                del self._buffers[name]
        if s in ("int8_tensor", "int8"):
            qt = absmax_quantize(weight, 8, dim=0 if s == "int8" else None)
            self._store(q=qt.q, scale=qt.scale)
        elif s == "zeropoint8":
            qt = zeropoint_quantize(weight, 8, dim=0)
            self._store(q=qt.q, scale=qt.scale, zero_point=qt.zero_point.to(torch.uint8))
        elif s == "int4_tensor":
            qt = absmax_quantize(weight, 4)
            self._store(packed=pack_4bit((qt.q + 8).to(torch.uint8)), scale=qt.scale)  # -7..7 -> 1..15
        elif s == "int4_block":
            qt = blockwise_quantize(weight, self.block_size, 4)
            codes = (qt.q.reshape(-1)[: weight.numel()] + 8).to(torch.uint8)
            self._store(packed=pack_4bit(codes), scale=qt.scale)
        else:  # nf4, nf4_dq
            t = nf4_quantize(weight, self.block_size, double_quant=s == "nf4_dq")
            self._store(packed=t.packed, absmax=t.absmax, absmax_q=t.absmax_q, absmax_scale=t.absmax_scale,
                        absmax_mean=t.absmax_mean)

    def _store(self, **tensors) -> None:
        for name, t in tensors.items():
            if t is not None:
                self.register_buffer(name, t.contiguous())

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (N, K) rebuilt from its quantized form."""
        s, shape, n = self.scheme, (self.out_features, self.in_features), self.out_features * self.in_features
        if s in ("int8_tensor", "int8"):
            w = absmax_dequantize(self.q, self.scale)
        elif s == "zeropoint8":
            w = zeropoint_dequantize(self.q, self.scale, self.zero_point)
        elif s == "int4_tensor":
            w = (unpack_4bit(self.packed, n).float() - 8).view(shape) * self.scale
        elif s == "int4_block":
            codes = F.pad(unpack_4bit(self.packed, n).float() - 8, (0, (-n) % self.block_size))
            w = (codes.view(-1, self.block_size) * self.scale).reshape(-1)[:n].view(shape)
        else:
            dq = s == "nf4_dq"
            t = NF4Tensor(self.packed, None if dq else self.absmax, torch.Size(shape), self.block_size,
                          self.absmax_q if dq else None, self.absmax_scale if dq else None,
                          self.absmax_mean if dq else None, 256 if dq else None)
            w = nf4_dequantize(t)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) -> (..., N), computed in x's dtype."""
        y = _DequantLinear.apply(x, self)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"


class NF4Linear(QuantLinear):
    """A :class:`QuantLinear` fixed to NF4 (optionally with double quantization): QLoRA's frozen base."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = 64,
                 double_quant: bool = False):
        super().__init__(in_features, out_features, "nf4_dq" if double_quant else "nf4", bias, block_size)

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = False) -> NF4Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, block_size, double_quant)
        layer.set_weight(linear.weight.detach())
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)


def quantize_model(model: nn.Module, scheme: Scheme | Literal["fp16", "bf16"], skip: tuple[str, ...] = ("lm_head",),
                   inplace: bool = False, block_size: int = 64) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (except modules whose name ends with one of ``skip``)
    by a :class:`QuantLinear` with ``scheme``; ``"fp16"``/``"bf16"`` instead store those weights in half
    precision (cast back to the input dtype in forward). Returns the new model (a deep copy unless
    ``inplace``). The output head is skipped by default: in SmolLM2 it shares its matrix with the
    token embedding, and it is the layer most sensitive to quantization.
    """
    if scheme not in SCHEMES and scheme not in ("fp16", "bf16"):
        raise ValueError(f"scheme must be one of {list(SCHEMES) + ['fp16', 'bf16']}, got {scheme!r}")
    model = model if inplace else copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if scheme in ("fp16", "bf16"):
            new = _HalfLinear(linear, torch.float16 if scheme == "fp16" else torch.bfloat16)
        else:
            new = QuantLinear.from_linear(linear, scheme, block_size)
        setattr(parent, child, new)
    return model


class _HalfLinear(nn.Module):
    """A linear layer stored in fp16/bf16, computed in the input's dtype (for memory comparisons)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(dtype).clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def module_nbytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def bits_per_weight(scheme: Scheme | Literal["fp32", "fp16", "bf16"], block_size: int = 64,
                    dq_block_size: int = 256) -> float:
    """Storage cost per weight of a large matrix, scales included (per-row/per-tensor scales are
    negligible for large matrices and counted as 0): e.g. NF4 with blocks of 64 -> 4 + 32/64 = 4.5."""
    table = {"fp32": 32.0, "fp16": 16.0, "bf16": 16.0, "int8_tensor": 8.0, "int8": 8.0, "zeropoint8": 8.0,
             "int4_tensor": 4.0, "int4_block": 4 + 32 / block_size, "nf4": 4 + 32 / block_size,
             "nf4_dq": 4 + 8 / block_size + 32 / (block_size * dq_block_size)}
    if scheme not in table:
        raise ValueError(f"scheme must be one of {list(table)}, got {scheme!r}")
    return table[scheme]
