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


# -- hard-coded expected values: nothing below is taken from the code under test -----------------------
@pytest.mark.parametrize("bits,grid", [(2, (0, 3)), (3, (0, 7)), (4, (0, 15)), (8, (0, 255))])
def test_qrange_is_the_unsigned_grid(bits, grid):
    assert qrange(bits) == grid


@pytest.mark.parametrize("lo,hi,bits,scale,zp", [
    (-1.0, 3.0, 2, 4 / 3, 1),  # round(0.75) = 1
    (-1.0, 2.0, 8, 3 / 255, 85),  # 1 / (3 / 255) = 85
    (-0.25, 0.75, 2, 1 / 3, 1),  # round(0.75) = 1
    (-0.5, 1.0, 4, 0.1, 5),  # round(5.0) = 5
    (0.5, 2.0, 8, 2 / 255, 0),  # min > 0: the range is widened to [0, 2]
    (-2.0, -1.0, 4, 2 / 15, 15),  # max < 0: the range is widened to [-2, 0]
    (-0.3, 0.9, 3, 1.2 / 7, 2),  # round(1.75) = 2
    (0.0, 0.0, 4, 1.0, 0),  # an empty range: any positive scale represents 0 exactly
])
def test_qparams_hard_coded(lo, hi, bits, scale, zp):
    s, z = asym_qparams(torch.tensor(lo), torch.tensor(hi), bits)
    assert s.dtype == torch.float32 and z.dtype == torch.int32
    assert s.item() == pytest.approx(scale, rel=1e-6)
    assert z.item() == zp


def test_fake_quantize_levels_hard_coded():
    # range [-1, 3] at 2 bits: scale 4/3, zero point 1, levels {-4/3, 0, 4/3, 8/3}
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.6, 0.67, 1.9, 3.0, 5.0])
    s, z = torch.tensor(4 / 3), torch.tensor(1, dtype=torch.int32)
    want = torch.tensor([-4 / 3, -4 / 3, 0.0, 0.0, 0.0, 4 / 3, 4 / 3, 8 / 3, 8 / 3])
    torch.testing.assert_close(fake_quantize(x, s, z, 2), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(fake_quantize_nograd(x, s, 1 / s, z.float(), 2), want, atol=1e-6, rtol=0)


def test_quantize_weight_hard_coded_per_channel():
    w = torch.tensor([[-1.0, 0.2, 3.0], [0.5, 1.0, 2.0], [0.0, 0.0, 0.0]])
    # channel 0: range [-1, 3], scale 4/3, zp 1 -> codes 0, 1, 3 -> -4/3, 0, 8/3
    # channel 1: range [0, 2], scale 2/3, zp 0 -> codes 1 (0.75 rounds to 1), 2 (1.5 rounds to 2), 3
    # channel 2: all zero, stays zero
    want = torch.tensor([[-4 / 3, 0.0, 8 / 3], [2 / 3, 4 / 3, 2.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(quantize_weight(w, 2), want, atol=1e-6, rtol=0)
    lo, hi = per_channel_minmax(w)
    torch.testing.assert_close(lo, torch.tensor([-1.0, 0.5, 0.0]), atol=0, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([3.0, 2.0, 0.0]), atol=0, rtol=0)
    # per channel along axis 1 (transposed convolutions): the columns are the channels
    torch.testing.assert_close(quantize_weight(w.T.contiguous(), 2, axis=1), want.T, atol=1e-6, rtol=0)


def test_round_half_to_even_on_the_grid():
    # scale 1, zero point 0: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (torch.round, as torch's fake-quant ops)
    x = torch.tensor([0.5, 1.5, 2.5])
    out = fake_quantize(x, torch.tensor(1.0), torch.tensor(0, dtype=torch.int32), 2)
    torch.testing.assert_close(out, torch.tensor([0.0, 2.0, 2.0]), atol=0, rtol=0)
