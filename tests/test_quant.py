"""Tests for llmcourse.quant: float formats against torch.finfo, quantizers against their equations
and known values, NF4 against the published table, QuantLinear against the dequantized weight."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcourse import quant as Q

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))
DEVICES = ["cpu", CUDA]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_format_matches_finfo(dtype):
    fmt, info = Q.float_format(dtype), torch.finfo(dtype)
    assert fmt.bits == info.bits
    assert fmt.max == info.max and fmt.min_normal == info.tiny and fmt.eps == info.eps
    assert fmt.min_subnormal == info.smallest_normal * info.eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [1.0, -6.5, 0.1, 3.0e-5, 65504.0, 1e-7, 0.0, -0.0])
def test_bit_fields_roundtrip(dtype, value):
    fields = Q.bit_fields(value, dtype)
    expected = torch.tensor(value).to(dtype).item()
    rebuilt = Q.value_from_fields(fields, dtype)
    assert rebuilt == expected and math.copysign(1, rebuilt) == math.copysign(1, expected)
    assert len(fields.bits.replace("|", "")) == Q.float_format(dtype).bits


def test_bit_fields_known_values():
    assert Q.bit_fields(1.0, torch.float32).bits == "0|01111111|" + "0" * 23
    assert Q.bit_fields(-2.0, torch.float16) == (1, 16, 0, "1|10000|0000000000")
    assert Q.bit_fields(70000.0, torch.float16).exponent == 31  # fp16 overflows to inf
    assert Q.value_from_fields(Q.bit_fields(70000.0, torch.float16), torch.float16) == math.inf
    assert Q.value_from_fields(Q.bit_fields(70000.0, torch.bfloat16), torch.bfloat16) == 70144.0


def test_float_format_rejects_other_dtypes():
    with pytest.raises(ValueError, match="dtype must be one of"):
        Q.float_format(torch.int8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [8, 4])
def test_absmax_matches_equation(device, bits):
    torch.manual_seed(0)
    x = torch.randn(7, 13, device=device)
    qt = Q.absmax_quantize(x, bits=bits)
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().max() / qmax
    torch.testing.assert_close(qt.scale, scale)
    assert torch.equal(qt.q, torch.round(x / scale).to(torch.int8))
    assert qt.q.dtype == torch.int8 and int(qt.q.abs().max()) == qmax
    x_hat = Q.absmax_dequantize(qt)
    assert (x - x_hat).abs().max() <= scale / 2 + 1e-6  # rounding error at most half a step
    torch.testing.assert_close(Q.absmax_dequantize(qt.q, qt.scale), x_hat)


def test_absmax_per_channel_scales_each_row():
    x = torch.tensor([[1.0, -2.0, 0.5], [100.0, 3.0, -50.0]])
    qt = Q.absmax_quantize(x, dim=0)
    assert qt.scale.shape == (2, 1)
    torch.testing.assert_close(qt.scale.squeeze(1), torch.tensor([2.0, 100.0]) / 127)
    per_tensor = Q.absmax_quantize(x)
    err_row0_channel = (Q.absmax_dequantize(qt) - x)[0].abs().max()
    err_row0_tensor = (Q.absmax_dequantize(per_tensor) - x)[0].abs().max()
    assert err_row0_channel < err_row0_tensor / 10  # the outlier row no longer ruins row 0
    assert Q.absmax_quantize(x, dim=1).scale.shape == (1, 3)
    assert Q.absmax_quantize(x, dim=-1).scale.shape == (1, 3)


def test_absmax_zero_tensor_and_errors():
    qt = Q.absmax_quantize(torch.zeros(4))
    assert torch.equal(Q.absmax_dequantize(qt), torch.zeros(4))
    with pytest.raises(ValueError, match="bits"):
        Q.absmax_quantize(torch.ones(3), bits=9)
    with pytest.raises(ValueError, match="floating-point"):
        Q.absmax_quantize(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        Q.absmax_quantize(torch.ones(3, 3), dim=2)
    with pytest.raises(ValueError, match="scale"):
        Q.absmax_dequantize(torch.ones(3, dtype=torch.int8))


@pytest.mark.parametrize("device", DEVICES)
def test_zeropoint_matches_equation_and_beats_absmax_on_skewed_data(device):
    torch.manual_seed(0)
    x = torch.rand(64, 33, device=device) * 3 + 0.5  # all positive: absmax wastes the negative half
    qt = Q.zeropoint_quantize(x)
    lo, hi = 0.0, float(x.max())  # the range is stretched to include 0
    scale = torch.tensor((hi - lo) / 255, device=device)
    torch.testing.assert_close(qt.scale, scale)
    assert int(qt.zero_point) == 0 and qt.q.dtype == torch.uint8
    assert torch.equal(qt.q, (torch.round(x / scale) + qt.zero_point).clamp(0, 255).to(torch.uint8))
    y = torch.relu(torch.randn(64, 33, device=device)) - 0.3  # skewed: [-0.3, ~3]
    zp_err = Q.quantization_error(y, Q.zeropoint_dequantize(Q.zeropoint_quantize(y)))
    am_err = Q.quantization_error(y, Q.absmax_dequantize(Q.absmax_quantize(y)))
    assert zp_err < 0.7 * am_err


def test_zeropoint_represents_zero_exactly_and_per_channel():
    torch.manual_seed(1)
    x = torch.randn(5, 9)
    x[:, 3] = 0.0
    qt = Q.zeropoint_quantize(x, dim=0)
    assert qt.scale.shape == (5, 1) and qt.zero_point.shape == (5, 1)
    x_hat = Q.zeropoint_dequantize(qt.q, qt.scale, qt.zero_point)
    assert torch.equal(x_hat[:, 3], torch.zeros(5))
    assert (x - x_hat).abs().max() <= qt.scale.max() / 2 + 1e-6
    with pytest.raises(ValueError, match="zero_point"):
        Q.zeropoint_dequantize(qt.q, qt.scale)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 50), (64, 64), (5, 7, 11)])
def test_blockwise_roundtrip_odd_shapes(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    qt = Q.blockwise_quantize(x, block_size=16)
    assert qt.q.shape == (math.ceil(x.numel() / 16), 16)
    x_hat = Q.blockwise_dequantize(qt)
    assert x_hat.shape == x.shape
    blocks_scale = qt.scale.reshape(-1).repeat_interleave(16)[: x.numel()].view(shape)
    assert ((x - x_hat).abs() <= blocks_scale / 2 + 1e-6).all()


def test_blockwise_contains_outliers():
    torch.manual_seed(0)
    x = torch.randn(4096)
    x[5] = 80.0  # one outlier
    tensor_err = Q.quantization_error(x, Q.absmax_dequantize(Q.absmax_quantize(x, bits=4)))
    block_err = Q.quantization_error(x, Q.blockwise_dequantize(Q.blockwise_quantize(x, 64, bits=4)))
    assert block_err < tensor_err / 3
    with pytest.raises(ValueError, match="block_size"):
        Q.blockwise_quantize(x, block_size=0)
    with pytest.raises(ValueError, match="not a block-wise"):
        Q.blockwise_dequantize(Q.absmax_quantize(x))


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_pack_4bit_roundtrip(n):
    codes = torch.randint(0, 16, (n,), dtype=torch.uint8)
    packed = Q.pack_4bit(codes)
    assert packed.numel() == math.ceil(n / 2) and packed.dtype == torch.uint8
    assert torch.equal(Q.unpack_4bit(packed, n), codes)
    with pytest.raises(ValueError, match="0..15"):
        Q.pack_4bit(torch.tensor([16]))


def test_nf4_levels_from_scratch_match_published_table():
    levels = Q.nf4_levels()
    torch.testing.assert_close(levels, Q.NF4_LEVELS, atol=1e-6, rtol=0)
    assert levels.numel() == 16 and levels[0] == -1 and levels[-1] == 1 and (levels == 0).sum() == 1
    assert ((levels > 0).sum(), (levels < 0).sum()) == (8, 7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 5), (64, 128), (1, 1)])
def test_nf4_roundtrip_picks_nearest_level(device, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    t = Q.nf4_quantize(x, block_size=64)
    x_hat = Q.nf4_dequantize(t)
    assert x_hat.shape == x.shape and t.packed.dtype == torch.uint8
    # brute force: the nearest of the 16 levels times the block absmax
    blocks = torch.nn.functional.pad(x.reshape(-1), (0, (-x.numel()) % 64)).view(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    levels = Q.NF4_LEVELS.to(device)
    nearest = levels[(blocks / absmax)[..., None].sub(levels).abs().argmin(-1)] * absmax
    torch.testing.assert_close(x_hat, nearest.reshape(-1)[: x.numel()].view(shape))


def test_nf4_beats_int4_on_normal_weights_and_double_quant_saves_memory():
    torch.manual_seed(0)
    w = torch.randn(512, 512) * 0.02
    nf4_err = Q.quantization_error(w, Q.nf4_dequantize(Q.nf4_quantize(w)))
    int4_err = Q.quantization_error(w, Q.blockwise_dequantize(Q.blockwise_quantize(w, 64, bits=4)))
    assert nf4_err < 0.92 * int4_err
    dq = Q.nf4_quantize(w, double_quant=True)
    assert dq.absmax is None and dq.absmax_q.dtype == torch.int8
    assert Q.quantization_error(w, Q.nf4_dequantize(dq)) < nf4_err * 1.01
    assert Q.bits_per_weight("nf4") == 4.5 and abs(Q.bits_per_weight("nf4_dq") - 4.127) < 1e-3


@pytest.mark.parametrize("scheme", list(Q.SCHEMES))
def test_quant_linear_equals_dequantized_weight(scheme):
    torch.manual_seed(0)
    linear = nn.Linear(70, 33)
    layer = Q.QuantLinear.from_linear(linear, scheme)
    assert (layer.in_features, layer.out_features) == (70, 33)
    assert not list(layer.parameters())  # frozen: everything lives in buffers
    x = torch.randn(2, 5, 70)
    w = layer.dequantized_weight()
    torch.testing.assert_close(layer(x), x @ w.T + linear.bias.detach())
    err = Q.quantization_error(linear.weight, w)
    assert 0 < err < (0.02 if "8" in scheme else 0.2)
    bits = Q.module_nbytes(layer) * 8 / linear.weight.numel()
    assert bits < (10 if "8" in scheme else 6)  # stored compactly (bias and scales included)


def test_quant_linear_backward_recomputes_instead_of_saving_the_weight():
    torch.manual_seed(0)
    layer = Q.QuantLinear.from_linear(nn.Linear(96, 80), "nf4")
    x = torch.randn(3, 96, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = layer(x)
    assert sum(saved) < 96 * 80 / 10  # no dequantized (80, 96) weight kept for backward
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = x2 @ layer.dequantized_weight().T + layer.bias
    (grad2,) = torch.autograd.grad(y2.square().sum(), x2)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(grad, grad2)


def test_quant_linear_state_dict_roundtrip_and_errors():
    torch.manual_seed(0)
    layer = Q.NF4Linear.from_linear(nn.Linear(64, 16, bias=False), double_quant=True)
    clone = Q.NF4Linear(64, 16, bias=False, double_quant=True)
    clone.set_weight(torch.zeros(16, 64))
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(3, 64)
    torch.testing.assert_close(clone(x), layer(x))
    with pytest.raises(ValueError, match="scheme must be one of"):
        Q.QuantLinear(4, 4, scheme="int3")
    with pytest.raises(ValueError, match=r"weight \(4, 4\) must be \(3, 4\)"):
        Q.QuantLinear(4, 3).set_weight(torch.zeros(4, 4))


def test_quantize_model_replaces_linears_and_saves_memory():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
    model.lm_head = nn.Linear(256, 10)
    x = torch.randn(4, 256)
    for scheme, max_ratio in [("fp16", 0.51), ("int8", 0.27), ("nf4", 0.16), ("nf4_dq", 0.14)]:
        qmodel = Q.quantize_model(model, scheme)
        assert isinstance(model[0], nn.Linear)  # the original is untouched (deep copy)
        assert isinstance(qmodel.lm_head, nn.Linear)  # skipped by default
        body = Q.module_nbytes(qmodel[0]) + Q.module_nbytes(qmodel[2])
        assert body / (Q.module_nbytes(model[0]) + Q.module_nbytes(model[2])) < max_ratio
        y = qmodel[2](qmodel[1](qmodel[0](x)))
        assert 0 < Q.quantization_error(model[2](model[1](model[0](x))), y) < 0.2
    with pytest.raises(ValueError, match="scheme must be one of"):
        Q.quantize_model(model, "int2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quant_linear_on_cuda_bf16_inputs():
    layer = Q.NF4Linear.from_linear(nn.Linear(64, 32).cuda())
    x = torch.randn(3, 64, device="cuda", dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.device.type == "cuda"
