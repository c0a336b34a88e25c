"""Edge cases of the quantized layers, the weight range search and BatchNorm folding.

References are computed independently: torch's own ``fake_quantize_per_{tensor,channel}_affine`` and
``torch.nn.functional`` ops, hand-computed numbers, and a plain-python version of the OMSE stages.
"""

from __future__ import annotations

import inspect
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import MixqError
from mixq.quant.fold import find_conv_bn_pairs, fold_batchnorm
from mixq.quant.modules import (
    QUANT_CLASSES,
    ActQuantizer,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    WeightQuantizer,
)
from mixq.quant.ranges import laplace_expected_mse, omse_search, quantize_weight_with

NOT_A_CONV = "input is not the output of a convolution mixq quantizes"


# --------------------------------------------------------------------------------------------------
# independent quantization references (torch's fake-quant ops)
# --------------------------------------------------------------------------------------------------


def _ref_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric grid of a range, by the textbook formula (range widened to hold 0)."""
    qmax = 2**bits - 1
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    scale = (hi - lo) / float(qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.clamp(-torch.round(lo / scale), 0, qmax).to(torch.int32)
    return scale, zp


def _ref_weight(w: torch.Tensor, bits: int, axis: int) -> torch.Tensor:
    """Per-channel min/max fake quantization of ``w`` along ``axis`` with torch's reference op."""
    dims = [d for d in range(w.dim()) if d != axis]
    scale, zp = _ref_qparams(w.amin(dim=dims), w.amax(dim=dims), bits)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, axis, 0, 2**bits - 1)


def _ref_act(x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Per-tensor fake quantization of ``x`` on the range ``[lo, hi]`` with torch's reference op."""
    scale, zp = _ref_qparams(torch.tensor(lo), torch.tensor(hi), bits)
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), 0, 2**bits - 1)


def _calibrated(aq: ActQuantizer, lo: float, hi: float) -> ActQuantizer:
    """Observe the range ``[lo, hi]`` with ``aq`` and return it, no longer observing."""
    aq.observing = True
    aq(torch.tensor([lo, hi]))
    aq.observing = False
    return aq


# --------------------------------------------------------------------------------------------------
# ranges: laplace_expected_mse, quantize_weight_with
# --------------------------------------------------------------------------------------------------


def test_laplace_expected_mse_with_a_non_unit_scale() -> None:
    """``2 b^2 exp(-alpha/b) + alpha^2 / (3 * 4^M)`` at b = 2, alpha = 3, M = 2, computed by hand."""
    expected = 2.0 * 4.0 * math.exp(-1.5) + 9.0 / 48.0
    assert laplace_expected_mse(3.0, 2, b=2.0) == pytest.approx(expected, rel=1e-12)
    assert laplace_expected_mse(3.0, 2, b=0.5) == pytest.approx(2.0 * 0.25 * math.exp(-6.0) + 9.0 / 48.0, rel=1e-12)


def test_quantize_weight_with_a_range_function() -> None:
    """A callable range method is used as given (a fixed per-channel range), not looked up by name."""
    w = torch.tensor([[-1.0, -0.2, 0.3, 2.0], [0.5, 0.1, -0.6, 0.9]])
    lo, hi = torch.tensor([-0.5, -0.6]), torch.tensor([1.0, 0.3])
    calls = []

    def fixed(t: torch.Tensor, bits: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((tuple(t.shape), bits, axis))
        return lo, hi

    got = quantize_weight_with(w, 3, fixed)
    scale, zp = _ref_qparams(lo, hi, 3)
    torch.testing.assert_close(got, torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 7), atol=0, rtol=0)
    assert calls == [((2, 4), 3, 0)]


# --------------------------------------------------------------------------------------------------
# ranges: the OMSE stages
# --------------------------------------------------------------------------------------------------


def _linspace(a: float, b: float, n: int) -> list[float]:
    """torch.linspace's values: ``[a]`` for one point, else evenly spaced from a to b."""
    return [a] if n == 1 else [a + (b - a) * i / (n - 1) for i in range(n)]


def _ref_omse(x: torch.Tensor, bits: int, n_grid: int, min_alpha: float, n_fine: int, n_asym: int,
              span: float) -> tuple[float, float, float]:
    """The documented OMSE stages for one channel in plain python; returns ``(lo, hi, error)``."""
    lo0, hi0 = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    qmax = 2**bits - 1

    def err(lo: float, hi: float) -> float:
        scale, zp = _ref_qparams(torch.tensor(lo), torch.tensor(hi), bits)
        q = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), 0, qmax)
        return (q.double() - x.double()).pow(2).sum().item()

    best = [lo0, hi0, err(lo0, hi0)]

    def offer(cands: list[tuple[float, float]]) -> None:
        errs = [err(lo, hi) for lo, hi in cands]
        i = min(range(len(cands)), key=errs.__getitem__)
        if errs[i] < best[2]:
            best[:] = [cands[i][0], cands[i][1], errs[i]]

    offer([(a * lo0, a * hi0) for a in _linspace(min_alpha, 1.0, n_grid)])
    step = (1.0 - min_alpha) / max(n_grid - 1, 1)
    if n_fine > 0:
        a_best = (best[1] - best[0]) / (hi0 - lo0)
        offer([(f * lo0, f * hi0) for f in (min(max(a_best + d, 1e-3), 1.0)
                                            for d in _linspace(-step, step, n_fine))])
    if n_asym > 0:
        a_best = (best[1] - best[0]) / (hi0 - lo0)
        sides = [min(max(a_best + d, 1e-3), 1.0) for d in _linspace(-span, span, n_asym)]
        offer([(s * lo0, best[1]) for s in sides])
        offer([(best[0], s * hi0) for s in sides])
    return best[0], best[1], best[2]


def _omse_err(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-channel squared error of ``w`` quantized on ``[lo, hi]`` (torch's reference op)."""
    scale, zp = _ref_qparams(lo, hi, bits)
    q = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 2**bits - 1)
    return (q.double() - w.double()).pow(2).sum(dim=1)


# (n_grid, min_alpha, n_fine, n_asym, asym_span) and the stage each exercises: single-candidate stages
# (n_fine = 1 from a best alpha at the grid's low end, n_asym = 1), one- and two-point coarse grids
KNOBS = [
    ((2, 0.3, 5, 0, 0.1), "fine"),
    ((1, 0.4, 4, 0, 0.1), "fine"),
    ((2, 0.9, 1, 0, 0.1), "fine"),
    ((1, 1.0, 0, 1, 0.3), "asym"),
    ((4, 0.5, 0, 1, 0.6), "asym"),
    ((3, 0.3, 3, 5, 0.2), None),
]


@pytest.mark.parametrize(("knobs", "stage"), KNOBS)
def test_omse_small_knobs_match_the_python_reference(knobs: tuple, stage: str | None) -> None:
    """Single-candidate stages (n_fine = 1, n_asym = 1), a one/two-point coarse grid, and channels whose range
    is below 1 (the shrink factor is relative to the channel's own range), against the python stages; the
    stage under test does improve some channel (so skipping it would be seen)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 64, generator=g)
    w = torch.stack([base[0] * 0.05, base[1].pow(3) * 0.1, torch.where(base[2] > 0, base[2] * 0.02, base[2] * 0.2),
                     base[3], torch.where(base[4] > 1.5, base[4] * 4, base[4] * 0.3)])
    skipped = list(knobs)
    skipped[2 if stage == "fine" else 3] = 0
    improved = False
    for bits in (2, 3):
        lo, hi = omse_search(w, bits, 0, *knobs)
        got = _omse_err(w, lo, hi, bits)
        for c in range(w.shape[0]):
            rlo, rhi, rerr = _ref_omse(w[c], bits, *knobs)
            assert got[c].item() == pytest.approx(rerr, rel=1e-5, abs=1e-12), (bits, c, knobs)
            assert lo[c].item() == pytest.approx(rlo, rel=1e-4, abs=1e-7), (bits, c, knobs)
            assert hi[c].item() == pytest.approx(rhi, rel=1e-4, abs=1e-7), (bits, c, knobs)
            improved |= rerr < _ref_omse(w[c], bits, *skipped)[2] * (1 - 1e-6)
    assert improved or stage is None


def _integer_bulk_with_outlier() -> torch.Tensor:
    """One channel: 0, 1, 2, 3 repeated 10000 times and one value 310 (min/max range [0, 310])."""
    return torch.cat([torch.arange(4.0).repeat(10000), torch.tensor([310.0])])[None]


def test_omse_fine_stage_factors_stay_positive() -> None:
    """The fine stage around a small best alpha (0.01, step 0.99) clamps its factors to >= 1e-3: the range never
    leaves ``lo <= 0 <= hi``, and the coarse winner alpha = 0.01 ([0, 3.1]) stays the answer."""
    w = _integer_bulk_with_outlier()
    lo, hi = omse_search(w, 2, n_grid=2, min_alpha=0.01, n_fine=2, n_asym=0)
    a = torch.tensor(0.01)  # float32 like the search's own linspace
    assert lo.item() == 0.0
    assert hi.item() == pytest.approx((a * 310.0).item(), rel=1e-6)
    assert hi.item() > 0


def test_omse_one_sided_factors_stay_positive() -> None:
    """Same channel, one-sided stage with a window reaching below 0 (best 0.01, span 0.99): factors clamp to
    >= 1e-3, so ``hi`` stays the coarse winner's positive 3.1."""
    w = _integer_bulk_with_outlier()
    lo, hi = omse_search(w, 2, n_grid=2, min_alpha=0.01, n_fine=0, n_asym=2, asym_span=0.99)
    assert lo.item() == 0.0
    assert hi.item() == pytest.approx((torch.tensor(0.01) * 310.0).item(), rel=1e-6)


def test_omse_one_sided_window_below_zero_clamps_lo() -> None:
    """A one-sided window reaching below 0 (span 2) clamps the factor to 1e-3: lo becomes -1e-3 (<= 0), which
    beats min/max on a channel of many 2-bit grid values and one -1."""
    w = torch.cat([torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).repeat(100), torch.tensor([-1.0])])[None]
    lo, hi = omse_search(w, 2, n_grid=1, min_alpha=1.0, n_fine=0, n_asym=1, asym_span=2.0)
    assert lo.item() == pytest.approx(-1e-3, rel=1e-5)
    assert hi.item() == 1.0


def test_omse_keeps_min_max_when_every_error_overflows() -> None:
    """Errors of 1e20-sized weights overflow to inf for every candidate; an equal (inf) error is no
    improvement, so the min/max range is kept."""
    w = torch.tensor([[-1e20, 1e20, 0.0]])
    lo, hi = omse_search(w, 2, n_grid=1, min_alpha=0.5, n_fine=0, n_asym=0)
    assert torch.equal(lo, w[:, 0]) and torch.equal(hi, w[:, 1])


# --------------------------------------------------------------------------------------------------
# modules: class declaration
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", QUANT_CLASSES[:6])
def test_declared_classes(cls: type) -> None:
    """Each declared class names its torch base, documents itself and adds only ``float_class`` to its bases."""
    base = cls.float_class
    assert base in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    assert cls.__bases__[1] is base
    assert cls.__name__ == cls.__qualname__ == f"Quant{base.__name__}"
    assert cls.__module__ == "mixq.quant.modules"
    assert cls.__doc__ == f"A {base.__name__} whose weight and input are fake-quantized."
    assert sorted(vars(cls)) == ["__doc__", "__module__", "float_class"]


# --------------------------------------------------------------------------------------------------
# modules: WeightQuantizer
# --------------------------------------------------------------------------------------------------


def test_weight_quantizer_defaults() -> None:
    """Default: float bits, min/max range, axis 0, no frozen grids; repr says so exactly."""
    wq = WeightQuantizer()
    assert (wq.bits, wq.method, wq.axis, wq.grids) == (32, "minmax", 0, {})
    assert repr(wq) == "WeightQuantizer(bits=32, per_channel=True, symmetric=False, range=minmax)"


def test_weight_quantizer_extra_repr() -> None:
    """The axis appears when not 0, the frozen bit-widths (sorted) when there are any."""
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    wq = WeightQuantizer(4, "omse", axis=1)
    assert wq.extra_repr() == "bits=4, per_channel=True, axis=1, symmetric=False, range=omse"
    wq.freeze_grid(w, bits=6)
    wq.freeze_grid(w, bits=3)
    assert wq.extra_repr() == ("bits=4, per_channel=True, axis=1, symmetric=False, range=omse, "
                               "frozen grids for [3, 6] bits")
    wq0 = WeightQuantizer(2)
    wq0.freeze_grid(w)
    assert wq0.extra_repr() == "bits=2, per_channel=True, symmetric=False, range=minmax, frozen grids for [2] bits"


def test_weight_quantizer_float_has_no_grid() -> None:
    """qparams at 32 bits raises with the exact message."""
    with pytest.raises(MixqError) as exc:
        WeightQuantizer().qparams(torch.ones(2, 2))
    assert str(exc.value) == "a float (32-bit) weight has no quantization grid"


def test_freeze_grid_bits_and_method_arguments() -> None:
    """freeze_grid(bits=b, method=m) freezes the grid of ``b`` (not the current bits) from method ``m``."""
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) ** 3
    wq = WeightQuantizer(8, "minmax")
    scale = wq.freeze_grid(w, bits=3, method="omse")
    assert sorted(wq.grids) == [3]
    lo, hi = omse_search(w, 3)
    ref_scale, ref_zp = _ref_qparams(lo, hi, 3)
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=0)
    torch.testing.assert_close(wq.grids[3][1], ref_zp, atol=0, rtol=0)
    # and the minmax one differs on this heavy-tailed weight
    mm_scale, _ = _ref_qparams(w.amin(dim=1), w.amax(dim=1), 3)
    assert not torch.allclose(scale, mm_scale)


def test_frozen_scale_learned_with_a_fixed_weight() -> None:
    """A frozen scale that requires grad gets a gradient even when the weight itself does not (LSQ-style)."""
    w = torch.tensor([[-1.0, 0.4, 0.9], [0.3, -0.2, 0.7]])
    wq = WeightQuantizer(2)
    scale = wq.freeze_grid(w).clone().requires_grad_()
    wq.grids[2] = (scale, wq.grids[2][1])
    out = wq(w)
    assert out.requires_grad
    out.sum().backward()
    assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_weight_cache_follows_in_place_scale_change() -> None:
    """Under no_grad the quantized weight is cached; scaling the frozen scale in place invalidates it."""
    w = torch.tensor([[-1.0, 0.4, 0.9], [0.3, -0.2, 0.7]])
    wq = WeightQuantizer(2)
    wq.freeze_grid(w)
    scale, zp = wq.grids[2]
    with torch.no_grad():
        first = wq(w)
        torch.testing.assert_close(first, torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 3))
        scale.mul_(0.5)
        second = wq(w)
    torch.testing.assert_close(second, torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 3))
    assert not torch.equal(first, second)


# --------------------------------------------------------------------------------------------------
# modules: ActQuantizer
# --------------------------------------------------------------------------------------------------


def test_act_quantizer_defaults_and_repr() -> None:
    """Default 8 bits, not observing, not calibrated; repr adds the range (4 significant digits) once observed."""
    aq = ActQuantizer()
    assert aq.bits == 8 and aq.observing is False and not aq.calibrated
    assert repr(aq) == "ActQuantizer(bits=8, per_tensor=True, symmetric=False)"
    _calibrated(aq, -1.234567, 2.5)
    assert aq.extra_repr() == "bits=8, per_tensor=True, symmetric=False, range=[-1.235, 2.5]"
    aq.reset()
    assert aq.extra_repr() == "bits=8, per_tensor=True, symmetric=False"
    assert aq.min_val.item() == math.inf and aq.max_val.item() == -math.inf


def test_act_quantizer_uncalibrated_message() -> None:
    """Using an uncalibrated activation quantizer raises the exact guidance message."""
    with pytest.raises(MixqError) as exc:
        ActQuantizer(4)(torch.ones(3))
    assert str(exc.value) == ("activation quantizer has no range: calibrate the model on samples first "
                              "(QuantModel(..., calib=x) or QuantModel.calibrate_activations(x))")


def test_act_quantizer_caches_qparams_per_bits() -> None:
    """The grid is computed once per bit-width and cached as (scale, zp, 1/scale, zp float)."""
    aq = _calibrated(ActQuantizer(4), -1.0, 3.0)
    calls: list[int] = []
    real = aq.qparams

    def counting() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(aq.bits)
        return real()

    aq.qparams = counting
    x = torch.linspace(-2, 4, 13)
    for _ in range(3):
        torch.testing.assert_close(aq(x), _ref_act(x, -1.0, 3.0, 4), atol=0, rtol=0)
    aq.bits = 2
    torch.testing.assert_close(aq(x), _ref_act(x, -1.0, 3.0, 2), atol=0, rtol=0)
    aq.bits = 4
    aq(x)
    assert calls == [4, 2]
    scale, zp, inv, zpf = aq._qparams[4]
    ref_scale, ref_zp = _ref_qparams(torch.tensor(-1.0), torch.tensor(3.0), 4)
    assert torch.equal(scale, ref_scale) and torch.equal(zp, ref_zp)
    assert torch.equal(inv, torch.reciprocal(ref_scale)) and torch.equal(zpf, ref_zp.float())


def test_act_quantizer_grid_follows_a_loaded_range() -> None:
    """After a forward cached the grid of [-1, 1], loading the state of a quantizer that observed [-3, 3]
    quantizes on [-3, 3] (the cache must not outlive the range it was computed from)."""
    aq = _calibrated(ActQuantizer(4), -1.0, 1.0)
    x = torch.linspace(-3, 3, 25)
    with torch.no_grad():
        torch.testing.assert_close(aq(x), _ref_act(x, -1.0, 1.0, 4), atol=0, rtol=0)
        aq.load_state_dict(_calibrated(ActQuantizer(4), -3.0, 3.0).state_dict())
        torch.testing.assert_close(aq(x), _ref_act(x, -3.0, 3.0, 4), atol=0, rtol=0)
        aq.max_val.fill_(2.0)  # an in-place edit of the range invalidates the cache too
        torch.testing.assert_close(aq(x), _ref_act(x, -3.0, 2.0, 4), atol=0, rtol=0)


def test_weight_quantizer_to_moves_frozen_grids() -> None:
    """``.to(dtype)`` converts the frozen grids with the module (they are plain tensors, not buffers), keeps a
    learnable scale learnable, and drops the quantized-weight cache."""
    w = torch.tensor([[-1.0, 0.4, 0.9], [0.3, -0.2, 0.7]])
    wq = WeightQuantizer(2)
    scale = wq.freeze_grid(w).clone().requires_grad_()
    wq.grids[2] = (scale, wq.grids[2][1])
    with torch.no_grad():
        wq(w)
    wq.to(torch.float64)
    new_scale, zp = wq.grids[2]
    assert new_scale.dtype == torch.float64 and new_scale.requires_grad
    assert zp.dtype == torch.int32  # integer zero points keep their dtype under a float conversion
    torch.testing.assert_close(new_scale, scale.double(), atol=0, rtol=0)
    assert wq._cache == {} and wq._cache_key is None
    w64 = w.double()
    s64, z64 = new_scale.detach()[:, None], zp.double()[:, None]  # torch's op takes float32 scales only
    ref = (torch.clamp(torch.round(w64 / s64) + z64, 0, 3) - z64) * s64
    torch.testing.assert_close(wq(w64), ref, atol=0, rtol=0)


def test_act_quantizer_straight_through_path() -> None:
    """With an input requiring grad, the output equals torch's per-tensor fake quantization and the
    gradient is 1 inside the range and 0 where clipped."""
    aq = _calibrated(ActQuantizer(3), -0.7, 1.9)
    x = torch.linspace(-1.5, 2.5, 21).requires_grad_()
    out = aq(x)
    assert out.requires_grad
    torch.testing.assert_close(out, _ref_act(x.detach(), -0.7, 1.9, 3), atol=0, rtol=0)
    out.sum().backward()
    ref = torch.linspace(-1.5, 2.5, 21).requires_grad_()
    scale, zp = _ref_qparams(torch.tensor(-0.7), torch.tensor(1.9), 3)
    torch.fake_quantize_per_tensor_affine(ref, float(scale), int(zp), 0, 7).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# modules: from_float, to_float
# --------------------------------------------------------------------------------------------------


def test_from_float_defaults_leave_the_float_layer_alone() -> None:
    """from_float's defaults are float weights, 8-bit inputs, min/max range; the float layer gains no child."""
    conv = nn.Conv2d(2, 3, 3, bias=True)
    q = QuantConv2d.from_float(conv)
    assert q.weight_quantizer.bits == 32 and q.weight_quantizer.method == "minmax"
    assert q.input_quantizer.bits == 8
    assert q.weight is conv.weight and q.bias is conv.bias
    assert dict(conv.named_children()) == {}
    assert sorted(dict(q.named_children())) == ["input_quantizer", "weight_quantizer"]


def test_to_float_is_a_detached_plain_layer() -> None:
    """to_float gives a plain Conv2d without quantizer children, with frozen copies of bias and given weight."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
    q = QuantConv2d.from_float(conv, weight_bits=4)
    wq = q.quantized_weight()
    plain = q.to_float(wq)
    assert type(plain) is nn.Conv2d
    assert dict(plain.named_children()) == {}
    assert sorted(n for n, _ in plain.named_parameters()) == ["bias", "weight"]
    assert plain.bias is not conv.bias and plain.weight is not conv.weight
    assert not plain.bias.requires_grad and not plain.weight.requires_grad
    torch.testing.assert_close(plain.bias, conv.bias, atol=0, rtol=0)
    torch.testing.assert_close(plain.weight, _ref_weight(conv.weight.detach(), 4, 0), atol=0, rtol=0)
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(plain(x), F.conv2d(x, plain.weight, conv.bias, padding=1))
    assert sorted(dict(q.named_children())) == ["input_quantizer", "weight_quantizer"]


def test_linear_to_float_without_bias() -> None:
    """A bias-free Linear stays bias-free."""
    q = QuantLinear.from_float(nn.Linear(3, 2, bias=False), weight_bits=8)
    plain = q.to_float(q.weight * 2)
    assert type(plain) is nn.Linear and plain.bias is None
    assert dict(plain.named_children()) == {}
    torch.testing.assert_close(plain.weight, q.weight.detach() * 2)


# --------------------------------------------------------------------------------------------------
# modules: transposed convolution
# --------------------------------------------------------------------------------------------------


def _quant_convt() -> tuple[nn.ConvTranspose2d, QuantConvTranspose2d]:
    """A stride-2, dilation-2 transposed conv and its 4-bit quantized version calibrated on [-1, 2]."""
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, dilation=2, bias=True)
    q = QuantConvTranspose2d.from_float(layer, weight_bits=4, act_bits=8)
    _calibrated(q.input_quantizer, -1.0, 2.0)
    return layer, q


def test_conv_transpose_output_size_and_dilation() -> None:
    """forward(x, output_size) matches F.conv_transpose2d on torch-fake-quantized input and weight (axis 1) with
    the output padding worked out by hand: min size (5-1)*2 - 2 + 2*(3-1) + 1 = 11, so 12 needs padding 1."""
    layer, q = _quant_convt()
    x = torch.rand(2, 3, 5, 5) * 3 - 1
    xq = _ref_act(x, -1.0, 2.0, 8)
    wq = _ref_weight(layer.weight.detach(), 4, 1)
    with torch.no_grad():
        for size, pad in (([12, 11], (1, 0)), ([2, 4, 11, 12], (0, 1))):
            ref = F.conv_transpose2d(xq, wq, layer.bias, stride=2, padding=1, output_padding=pad, dilation=2)
            got = q(x, output_size=size)
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(q.forward_with(xq, wq, size), ref, atol=1e-5, rtol=1e-5)
        ref = F.conv_transpose2d(xq, wq, layer.bias, stride=2, padding=1, dilation=2)
        assert ref.shape[-2:] == (11, 11)
        torch.testing.assert_close(q(x), ref, atol=1e-5, rtol=1e-5)


def test_conv_transpose_padding_mode_message() -> None:
    """A padding mode other than zeros (set after construction) is refused with the exact message."""
    _, q = _quant_convt()
    q.padding_mode = "reflect"
    with pytest.raises(MixqError) as exc:
        q.forward_with(torch.zeros(1, 3, 4, 4), q.weight)
    assert str(exc.value) == "QuantConvTranspose2d supports only padding_mode='zeros', got 'reflect'"


# --------------------------------------------------------------------------------------------------
# fold
# --------------------------------------------------------------------------------------------------


class _OverridingConv(nn.Conv2d):
    """A conv subclass with its own forward (mixq leaves it in float)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class _Seq(nn.Module):
    """``bn(first(x))``, with the BN called positionally or by keyword."""

    def __init__(self, first: nn.Module, bn: nn.Module, keyword: bool = False) -> None:
        super().__init__()
        self.first, self.bn, self.keyword = first, bn, keyword

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        return self.bn(input=y) if self.keyword else self.bn(y)


class _ConvNamedInput(nn.Module):
    """The BN is fed the forward's input, which is named like the conv submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, conv: torch.Tensor) -> torch.Tensor:
        return self.bn(conv) + self.conv(conv)


class _Untraceable(nn.Module):
    """Tracing raises an error whose first line is 200 characters long."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            raise RuntimeError("E" * 200 + "\nsecond line")
        return self.bn(self.conv(x))


@pytest.mark.parametrize("model", [
    _Seq(_OverridingConv(2, 2, 1), nn.BatchNorm2d(2)),
    _Seq(nn.LazyConv2d(2, 1), nn.BatchNorm2d(2)),
    _Seq(nn.Linear(2, 2), nn.BatchNorm1d(2)),
    _Seq(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), keyword=True),
    _ConvNamedInput(),
], ids=["overriding-conv", "lazy-conv", "linear", "bn-keyword-input", "input-named-like-conv"])
def test_bn_not_fed_by_a_quantized_conv(model: nn.Module) -> None:
    """A BN after a forward-overriding conv, a not yet initialised (lazy) conv, a Linear, an unknown (keyword)
    input or the model's input is not folded, with the exact reason."""
    report = find_conv_bn_pairs(model.eval())
    assert report.traced
    assert report.folded == []
    assert report.unfolded == {"bn": NOT_A_CONV}


def test_bn_without_tracked_statistics_is_not_folded() -> None:
    """A BN that stopped tracking running stats (its buffers still exist) uses batch statistics: not folded."""
    bn = nn.BatchNorm2d(2)
    bn.track_running_stats = False
    report = find_conv_bn_pairs(_Seq(nn.Conv2d(2, 2, 1), bn).eval())
    assert report.folded == [] and report.unfolded == {"bn": "BatchNorm has no running statistics"}
    ok = find_conv_bn_pairs(_Seq(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)).eval())
    assert ok.folded == [("first", "bn")] and ok.unfolded == {}


def test_untraceable_reason_keeps_120_characters() -> None:
    """The reason quotes the exception type and the first 120 characters of its first line."""
    report = find_conv_bn_pairs(_Untraceable().eval())
    assert not report.traced and report.folded == []
    assert report.unfolded == {"bn": f"model is not traceable by torch.fx (RuntimeError: {'E' * 120})"}


def test_fold_warning_names_the_first_unfolded_bn_at_the_caller() -> None:
    """The warning counts the unfolded BNs, quotes the first one's name and reason, and points at the caller."""
    model = _Seq(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
    with pytest.warns(UserWarning) as rec:
        line = inspect.currentframe().f_lineno + 1
        report = fold_batchnorm(model)
    assert report.unfolded == {"bn": NOT_A_CONV}
    assert len(rec) == 1
    assert str(rec[0].message) == f"1 BatchNorm layer(s) kept in float (not folded), e.g. 'bn': {NOT_A_CONV}"
    assert isinstance(model.bn, nn.BatchNorm1d)
    if any("__mutmut_" in name for name in vars(sys.modules[fold_batchnorm.__module__])):
        return  # mutmut calls through a trampoline, one frame more: the stacklevel is checked outside mutmut
    assert rec[0].filename == __file__
    assert rec[0].lineno == line
