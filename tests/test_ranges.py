"""Weight clipping-range methods: OMSE optimality, ACIQ's analytical alphas, range invariants."""

from functools import cache

import pytest
import torch
from scipy.special import lambertw

from mixq.errors import MixqError
from mixq.paths import DEMO_DIR
from mixq.quant.primitives import asym_qparams, fake_quantize, quantize_weight
from mixq.quant.ranges import (
    RANGE_METHODS,
    aciq_alpha,
    aciq_range,
    get_range_method,
    laplace_expected_mse,
    minmax_range,
    omse_range,
    omse_search,
    quantize_weight_with,
)

BITS = list(range(2, 9))
CKPT = DEMO_DIR / "resnet20-jpeg.pt"  # the embedded demo checkpoint ships with the package: never skipped
# Banner et al. (2019), optimal clipping for a Laplace(0, b) prior, in units of b
PAPER_LAPLACE_ALPHA = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.2, 6: 7.41, 7: 8.64, 8: 9.89}


def _weights(kind: str, seed: int = 0) -> torch.Tensor:
    """A conv-shaped weight with per-channel scales and offsets, plus two awkward channels."""
    g = torch.Generator().manual_seed(seed)
    shape = (24, 16, 3, 3)
    if kind == "gauss":
        w = torch.randn(shape, generator=g)
    else:  # Laplace: difference of two exponentials
        e = torch.empty(2, *shape).exponential_(generator=g)
        w = e[0] - e[1]
    w = w * torch.rand(shape[0], 1, 1, 1, generator=g) * 0.2 + 0.02 * torch.randn(shape[0], 1, 1, 1, generator=g)
    w[0] = w[0].abs() + 0.01  # all-positive channel
    w[1] = 0.0  # all-zero channel
    return w


def _channel_mse(w: torch.Tensor, bits: int, method: str, axis: int = 0) -> torch.Tensor:
    d = quantize_weight_with(w, bits, method, axis) - w
    return d.transpose(0, axis).reshape(w.shape[axis], -1).pow(2).sum(dim=1)


@cache
def _load_resnet20_layers() -> tuple[torch.Tensor, ...]:
    sd = torch.load(CKPT, map_location="cpu", weights_only=True)
    return tuple(v.float() for k, v in sd.items() if k.endswith("weight") and v.dim() >= 2)


def _resnet20_layers() -> tuple[torch.Tensor, ...]:
    assert CKPT.is_file(), f"the embedded demo checkpoint {CKPT} is missing from the package"
    return _load_resnet20_layers()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind", ["gauss", "laplace"])
def test_omse_not_worse_than_minmax(kind, bits):
    w = _weights(kind, seed=bits)
    mm = _channel_mse(w, bits, "minmax")
    om = _channel_mse(w, bits, "omse")
    # per channel (the min/max range is a candidate; tiny slack for summation order only)
    assert torch.all(om <= mm * (1 + 1e-5) + 1e-12)
    if bits <= 4:  # clipping clearly pays at low bit-widths on heavy-ish tails
        assert om.sum() < 0.95 * mm.sum()


@pytest.mark.parametrize("bits", BITS)
def test_omse_not_worse_than_minmax_real_layers(bits):
    for w in _resnet20_layers():
        mm = _channel_mse(w, bits, "minmax")
        om = _channel_mse(w, bits, "omse")
        assert torch.all(om <= mm * (1 + 1e-5) + 1e-12)


def _brute_symmetric(w: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Per channel, the best symmetric shrink of the min/max range over a fine 1-D grid (python loops)."""
    best = []
    for c in range(w.shape[0]):
        x = w[c : c + 1]
        lo0, hi0 = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
        errs = []
        for i in range(n):
            a = 0.2 + 0.8 * i / (n - 1)
            scale, zp = asym_qparams(torch.tensor([a * lo0]), torch.tensor([a * hi0]), bits)
            errs.append((fake_quantize(x, scale, zp, bits, axis=0) - x).pow(2).sum().item())
        best.append(min(errs))
    return torch.tensor(best)


@pytest.mark.parametrize("bits", [2, 4])
def test_omse_matches_bruteforce(bits):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(4, 96, generator=g) * torch.tensor([[0.1], [1.0], [0.5], [2.0]])
    w[2] = torch.sign(w[2]) * w[2].pow(2)  # heavier tails
    brute = _brute_symmetric(w, bits, n=801)
    # symmetric search only: same family as the brute force, within a small tolerance
    lo, hi = omse_search(w, bits, n_asym=0)
    scale, zp = asym_qparams(lo, hi, bits)
    sym = (fake_quantize(w, scale, zp, bits, axis=0) - w).pow(2).sum(dim=1)
    assert torch.all(sym <= brute * 1.005)
    # the full search (also one-sided shrinks) is at least as good, up to the same tolerance
    full = _channel_mse(w, bits, "omse")
    assert torch.all(full <= sym * (1 + 1e-5))
    assert torch.all(full <= brute * 1.005)


def test_omse_axis_and_vectorisation_consistent():
    w = _weights("laplace", seed=3)
    lo, hi = omse_range(w, 3)
    lo1, hi1 = omse_range(w.transpose(0, 1).contiguous(), 3, axis=1)
    torch.testing.assert_close(lo1, lo, atol=0, rtol=0)
    torch.testing.assert_close(hi1, hi, atol=0, rtol=0)
    # each channel searched alone gives the same range as all channels together
    for c in [0, 5, 17]:
        lc, hc = omse_range(w[c : c + 1], 3)
        assert lc.item() == lo[c].item() and hc.item() == hi[c].item()


def test_aciq_alpha_matches_paper_and_closed_form():
    for bits, paper in PAPER_LAPLACE_ALPHA.items():
        a = aciq_alpha(bits)
        assert abs(a - paper) < 0.05, (bits, a, paper)
        # stationary point of 2 e^{-a} + a^2 / (3 * 4^M):  a e^a = 3 * 4^M  ->  a = W(3 * 4^M)
        assert abs(a - float(lambertw(3.0 * 4.0**bits).real)) < 1e-4
        # and it is a minimum of the expected MSE
        assert laplace_expected_mse(a, bits) <= min(laplace_expected_mse(a * f, bits) for f in (0.9, 1.1))


def test_aciq_range_formula():
    g = torch.Generator().manual_seed(1)
    e = torch.empty(2, 3, 4000).exponential_(generator=g)
    w = (e[0] - e[1]) * torch.tensor([[0.5], [1.0], [2.0]]) + torch.tensor([[0.1], [0.0], [-0.3]])
    lo, hi = aciq_range(w, 2)
    mu = w.mean(dim=1)
    b = (w - mu[:, None]).abs().mean(dim=1)
    a = aciq_alpha(2) * b
    # at 2 bits the clip (2.83 b) is well inside the data's range of 4000 Laplace samples
    torch.testing.assert_close(lo, torch.clamp(mu - a, max=0.0))
    torch.testing.assert_close(hi, torch.clamp(mu + a, min=0.0))
    # at 8 bits the clip (9.89 b) exceeds the data: the range falls back to min/max
    lo8, hi8 = aciq_range(w, 8)
    mlo, mhi = minmax_range(w, 8)
    assert torch.all(lo8 >= mlo) and torch.all(hi8 <= mhi)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("method", sorted(RANGE_METHODS))
def test_ranges_contain_zero_and_lie_within_data(method, bits):
    for axis, w in [(0, _weights("gauss", seed=bits)), (1, _weights("laplace", seed=bits).transpose(0, 1))]:
        lo, hi = get_range_method(method)(w, bits, axis)
        c = w.shape[axis]
        assert lo.shape == (c,) and hi.shape == (c,)
        mlo, mhi = minmax_range(w, bits, axis)
        assert torch.all(lo <= 0) and torch.all(hi >= 0)
        assert torch.all(lo >= mlo) and torch.all(hi <= mhi)
        q = quantize_weight_with(w, bits, method, axis)
        assert torch.isfinite(q).all()
        # the all-zero channel stays exactly zero
        assert torch.all(q.select(axis, 1) == 0)


def test_unknown_method_and_bad_bits():
    with pytest.raises(MixqError, match="aciq, minmax, omse"):
        get_range_method("percentile")
    with pytest.raises(MixqError, match="unknown weight range method"):
        quantize_weight_with(torch.randn(3, 4), 4, "nope")
    with pytest.raises(MixqError, match="bits"):
        omse_range(torch.randn(3, 4), 1)


@pytest.mark.parametrize("bits", BITS + [32])
def test_minmax_equals_quantize_weight(bits):
    w = _weights("gauss", seed=11)
    torch.testing.assert_close(quantize_weight_with(w, bits, "minmax"), quantize_weight(w, bits), atol=0, rtol=0)
    lin = torch.randn(10, 64)
    torch.testing.assert_close(quantize_weight_with(lin, bits, "minmax"), quantize_weight(lin, bits), atol=0, rtol=0)


def test_float_bits_and_straight_through_gradient():
    w = _weights("laplace", seed=5).requires_grad_(True)
    assert quantize_weight_with(w, 32, "omse") is w
    q = quantize_weight_with(w, 2, "omse")
    q.sum().backward()
    lo, hi = omse_range(w.detach(), 2)
    scale, zp = asym_qparams(lo, hi, 2)
    codes = torch.round(w.detach() * torch.reciprocal(scale)[:, None, None, None]) + zp[:, None, None, None]
    inside = (codes >= 0) & (codes <= 3)
    # gradient 1 (scale * 1/scale) where the weight's code is on the grid, 0 for clipped weights
    torch.testing.assert_close(w.grad, inside.float(), atol=1e-6, rtol=0)
    assert 0 < (~inside).sum() < 0.2 * w.numel()


def _stagewise_reference(x: torch.Tensor, bits: int, n_grid=64, min_alpha=0.2, n_fine=16, n_asym=21, span=0.1):
    """omse_search's documented stages for one channel ``x`` (1-D), in plain python; returns the error after
    the start, the coarse, the fine and the one-sided stage. A candidate wins only if strictly better."""
    lo0, hi0 = min(x.min().item(), 0.0), max(x.max().item(), 0.0)

    def err(lo, hi):
        scale, zp = asym_qparams(torch.tensor(lo), torch.tensor(hi), bits)
        return (fake_quantize(x, scale, zp, bits) - x).pow(2).sum().item()

    best = [lo0, hi0, err(lo0, hi0)]
    trail = [best[2]]

    def offer(lo, hi):
        e = err(lo, hi)
        if e < best[2]:
            best[:] = [lo, hi, e]

    for i in range(n_grid):
        a = min_alpha + (1.0 - min_alpha) * i / (n_grid - 1)
        offer(a * lo0, a * hi0)
    trail.append(best[2])
    step = (1.0 - min_alpha) / (n_grid - 1)
    a_best = (best[1] - best[0]) / (hi0 - lo0)
    for i in range(n_fine):
        a = min(max(a_best - step + 2 * step * i / (n_fine - 1), 1e-3), 1.0)
        offer(a * lo0, a * hi0)
    trail.append(best[2])
    a_best = (best[1] - best[0]) / (hi0 - lo0)
    sides = [min(max(a_best - span + 2 * span * i / (n_asym - 1), 1e-3), 1.0) for i in range(n_asym)]
    hi_fixed = best[1]
    for a in sides:
        offer(a * lo0, hi_fixed)
    lo_fixed = best[0]
    for a in sides:
        offer(lo_fixed, a * hi0)
    trail.append(best[2])
    return trail


def test_omse_stages_each_match_a_plain_python_reference():
    """Every stage of the search (coarse, fine, one-sided) against a per-channel python version of its
    documented rule: the vectorised search reaches the reference's error (rtol 1e-5) on skewed and
    heavy-tailed channels, and each stage does improve on the previous one for some channel (so a broken
    stage cannot hide behind the others)."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(6, 200, generator=g)
    w = torch.stack([base[0], base[1].pow(3), base[2].abs() * 2 - 0.3, base[3] * 0.01,
                     torch.where(base[4] > 0, base[4] * 3, base[4] * 0.5), base[5].sign() * base[5].pow(2)])
    for bits in (2, 4):
        trails = [_stagewise_reference(w[c], bits) for c in range(w.shape[0])]
        got = _channel_mse(w, bits, "omse")
        for c, trail in enumerate(trails):
            assert got[c].item() == pytest.approx(trail[-1], rel=1e-5), (bits, c, trail)
        for stage in (1, 2, 3):
            assert any(t[stage] < t[stage - 1] * (1 - 1e-4) for t in trails), (bits, stage)
        # and the knobs: skipping the fine and one-sided stages gives the coarse-stage error
        lo, hi = omse_search(w, bits, n_fine=0, n_asym=0)
        scale, zp = asym_qparams(lo, hi, bits)
        coarse = (fake_quantize(w, scale, zp, bits, axis=0) - w).pow(2).sum(dim=1)
        for c, trail in enumerate(trails):
            assert coarse[c].item() == pytest.approx(trail[1], rel=1e-5)
