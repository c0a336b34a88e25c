"""Quantization primitives against torch's own fake-quant ops (exact, atol=0)."""

import pytest
import torch

from mixq.quant.primitives import (
    asym_qparams,
    fake_quantize,
    fake_quantize_nograd,
    per_channel_minmax,
    qrange,
    quantize_weight,
)

BITS = list(range(2, 9))


@pytest.mark.parametrize("bits", BITS, ids=lambda b: f"w{b}")
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (32, 1, 3, 3), (10, 64)], ids=["conv", "depthwise", "linear"])
def test_weight_equals_torch_per_channel(bits, shape):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], *[1] * (len(shape) - 1), generator=g)
    w[0] = w[0].abs() + 0.1  # a channel with min > 0: the range must still include 0
    w[1] = 0.0  # an all-zero channel
    lo, hi = per_channel_minmax(w)
    scale, zp = asym_qparams(lo, hi, bits)
    qmin, qmax = qrange(bits)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    ours = quantize_weight(w, bits)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    torch.testing.assert_close(fake_quantize(w, scale, zp, bits, axis=0), ref, atol=0, rtol=0)


@pytest.mark.parametrize("bits", BITS, ids=lambda b: f"a{b}")
def test_activation_equals_torch_per_tensor(bits):
    g = torch.Generator().manual_seed(100 + bits)
    x = torch.randn(4, 8, 5, 5, generator=g) * 3 + 1
    scale, zp = asym_qparams(x.min(), x.max(), bits)
    qmin, qmax = qrange(bits)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    torch.testing.assert_close(fake_quantize(x, scale, zp, bits), ref, atol=0, rtol=0)
    # values outside the calibrated range are clamped like torch does
    y = x * 2
    torch.testing.assert_close(
        fake_quantize(y, scale, zp, bits), torch.fake_quantize_per_tensor_affine(y, scale, zp, qmin, qmax),
        atol=0, rtol=0,
    )


@pytest.mark.parametrize("bits", BITS)
def test_grid_contains_zero_and_levels(bits):
    w = torch.randn(6, 50) + torch.linspace(-2, 2, 6)[:, None]
    q = quantize_weight(w, bits)
    lo, hi = per_channel_minmax(w)
    scale, zp = asym_qparams(lo, hi, bits)
    codes = q / scale[:, None] + zp[:, None]
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= -1e-3 and codes.max() <= 2**bits - 1 + 1e-3
    # zero is exactly representable in every channel
    zero = fake_quantize(torch.zeros(6, 1), scale, zp, bits, axis=0)
    assert torch.equal(zero, torch.zeros(6, 1))
    assert all(torch.unique(q[i]).numel() <= 2**bits for i in range(6))


def test_quantize_weight_32_is_identity_and_ste_gradient():
    w = torch.randn(4, 3, requires_grad=True)
    assert quantize_weight(w, 32) is w
    quantize_weight(w, 3).sum().backward()
    # min/max range: nothing is clamped; d/dw = scale * (1 / scale) = 1 up to float rounding
    torch.testing.assert_close(w.grad, torch.ones_like(w), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits", BITS, ids=lambda b: f"a{b}")
def test_nograd_fast_path_is_identical(bits):
    x = torch.randn(8, 16, 7, 7) * 2 - 0.3
    scale, zp = asym_qparams(x.min() * 0.8, x.max() * 0.8, bits)  # some values clamp
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, *qrange(bits))
    fast = fake_quantize_nograd(x, scale, torch.reciprocal(scale), zp.float(), bits)
    torch.testing.assert_close(fast, ref, atol=0, rtol=0)
