"""Tests for llmcourse.hyena: FFT convolution equals direct convolution (and the defining sum), it is
causal, and the Hyena operator gives the same result with either convolution."""
from __future__ import annotations

import pytest
import torch

from llmcourse.hyena import HyenaConfig, HyenaFilter, HyenaOperator, direct_conv, fft_conv

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _loop_conv(u, h):
    """y[..., t] = sum_{s=0}^{min(t, K-1)} h[:, s] u[..., t - s]: the definition."""
    y = torch.zeros_like(u, dtype=torch.float64)
    for t in range(u.shape[-1]):
        for s in range(min(t + 1, h.shape[-1])):
            y[..., t] += h[:, s].double() * u[..., t - s].double()
    return y


def test_convolution_by_hand():
    u = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])  # (B=1, D=1, T=4)
    h = torch.tensor([[1.0, 10.0]])  # y_t = u_t + 10 u_{t-1}
    expected = torch.tensor([[[1.0, 12.0, 23.0, 34.0]]])
    torch.testing.assert_close(direct_conv(u, h), expected)
    torch.testing.assert_close(fft_conv(u, h), expected)


@pytest.mark.parametrize("T,K", [(1, 1), (9, 9), (33, 5), (64, 64)])
def test_both_equal_the_definition(T, K):
    g = torch.Generator().manual_seed(0)
    u, h = torch.randn(2, 3, T, generator=g, dtype=torch.float64), torch.randn(3, K, generator=g, dtype=torch.float64)
    reference = _loop_conv(u, h)
    torch.testing.assert_close(direct_conv(u, h), reference, **TOL[torch.float64])
    torch.testing.assert_close(fft_conv(u, h), reference, **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [2, 100, 1000])
def test_fft_equals_direct(T, dtype, device):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 4, T, generator=g, dtype=dtype).to(device)
    h = (torch.randn(4, T, generator=g, dtype=dtype) * torch.exp(-torch.arange(T, dtype=dtype) / 50)).to(device)
    out = fft_conv(u, h)
    assert out.dtype == dtype and out.shape == u.shape
    torch.testing.assert_close(out, direct_conv(u, h), **TOL[dtype])


def test_fft_conv_is_not_circular():
    """Without zero-padding to 2T, the end of the signal would wrap around into its start."""
    u = torch.zeros(1, 1, 8, dtype=torch.float64)
    u[..., -1] = 1.0  # an impulse at the last step
    h = torch.ones(1, 8, dtype=torch.float64)
    y = fft_conv(u, h)
    torch.testing.assert_close(y[..., :-1], torch.zeros(1, 1, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    circular = torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(h), n=8)
    assert circular[..., 0].abs() > 0.5  # the bug the padding prevents


def test_causality():
    g = torch.Generator().manual_seed(2)
    u, h = torch.randn(1, 2, 50, generator=g), torch.randn(2, 50, generator=g)
    changed = u.clone()
    changed[..., 30:] += 1.0
    for conv in (fft_conv, direct_conv):
        torch.testing.assert_close(conv(u, h)[..., :30], conv(changed, h)[..., :30])
        assert not torch.allclose(conv(u, h)[..., 30:], conv(changed, h)[..., 30:])


def test_errors():
    with pytest.raises(ValueError, match="K <= T"):
        fft_conv(torch.zeros(1, 2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"h \(D, K\) with D = 2"):
        direct_conv(torch.zeros(1, 2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="impl"):
        HyenaConfig(impl="winograd")


def test_filter_parameters_do_not_grow_with_length():
    torch.manual_seed(0)
    filt = HyenaFilter(8)
    n_params = sum(p.numel() for p in filt.parameters())
    short, long = filt(16), filt(4096)
    assert short.shape == (8, 16) and long.shape == (8, 4096)
    assert n_params == sum(p.numel() for p in HyenaFilter(8).parameters())
    # The decay window: late taps are much smaller than early ones.
    assert long[:, -512:].abs().mean() < 0.3 * long[:, :512].abs().mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 17, 128])
def test_operator_fft_equals_direct_and_is_causal(T, device):
    torch.manual_seed(0)
    op = HyenaOperator(HyenaConfig(d_model=16, order=2)).double().to(device)
    x = torch.randn(2, T, 16, dtype=torch.float64, device=device)
    y_fft = op(x)
    op.config.impl = "direct"
    torch.testing.assert_close(op(x), y_fft, **TOL[torch.float64])
    assert y_fft.shape == (2, T, 16)
    if T > 1:
        changed = x.clone()
        changed[:, T // 2:] += 1.0
        y_changed = op(changed)
        torch.testing.assert_close(y_changed[:, :T // 2], y_fft[:, :T // 2], **TOL[torch.float64])
        assert not torch.allclose(y_changed[:, T // 2:], y_fft[:, T // 2:])
    with pytest.raises(ValueError, match=r"\(B, T, D=16\)"):
        op(torch.randn(2, T, 8, dtype=torch.float64, device=device))
