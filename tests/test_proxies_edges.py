"""Edge cases of the proxies: Hessian utilities, power-iteration stopping, defaults, unused layers, keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq.proxies.hessian as hessian
from mixq.errors import MixqError
from mixq.proxies import BITS, get_proxy
from mixq.proxies.hawq import HawqV1, HawqV2, HawqV3
from mixq.proxies.hessian import (
    grads_with_graph,
    hessian_vector_product,
    hutchinson_trace,
    rademacher,
    top_eigenvalue,
    top_eigenvalues,
)
from mixq.proxies.rank import rank_metrics
from mixq.proxies.size import BOPs

B = np.array(BITS, dtype=np.float64)


class _Stop(Exception):
    """Raised by test hooks to stop a computation once what they watch has been seen."""


# -- helpers -------------------------------------------------------------------------------------------
def _quadratic(a: torch.Tensor, seed: int = 7) -> tuple[torch.Tensor, hessian.LossFn]:
    """A parameter ``w`` and ``loss_fn = 0.5 w^T A w`` whose Hessian is exactly the symmetric ``A``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(a.shape[0], generator=g, dtype=a.dtype).requires_grad_(True)
    return w, lambda: 0.5 * (w @ (a @ w))


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[list[torch.Tensor]]:
    """Record the vectors of every Hessian-vector product the hessian module makes (delegating to the real one)."""
    calls: list[list[torch.Tensor]] = []
    real = hessian.hessian_vector_product

    def spy(loss, params, v, grads=None):
        calls.append([t.detach().clone() for t in v])
        return real(loss, params, v, grads=grads)

    monkeypatch.setattr(hessian, "hessian_vector_product", spy)
    return calls


def _power_reference(a: np.ndarray, v0: np.ndarray, iters: int, tol: float) -> tuple[float, int]:
    """The documented power iteration on an explicit matrix: (eigenvalue estimate, number of products)."""
    v = v0 / np.linalg.norm(v0)
    eig = None
    for k in range(iters):
        hv = a @ v
        new = float(v @ hv)
        norm = float(np.linalg.norm(hv))
        if norm == 0.0:
            return 0.0, k + 1
        v = hv / norm
        if eig is not None and abs(new - eig) <= tol * (abs(eig) + 1e-12):
            return new, k + 1
        eig = new
    return (0.0 if eig is None else eig), iters


def _slow_matrix(n: int = 4, r: float = 0.999, seed: int = 0) -> torch.Tensor:
    """``A = u u^T - r q q^T`` with seed ``seed``'s start vector equal to ``(u + q) / sqrt(2)``.

    Eigenvalues 1 and -r of nearly equal magnitude: the power iteration started there is still far from
    converged (relative changes > 1e-3) after 100 steps.
    """
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v0 = v0 / v0.norm()
    z = torch.arange(1.0, n + 1, dtype=torch.float64)
    z = z - (z @ v0) * v0
    z = z / z.norm()
    u, q = (v0 + z) / math.sqrt(2), (v0 - z) / math.sqrt(2)
    return torch.outer(u, u) - r * torch.outer(q, q)


def _fast_matrix(scale: float) -> torch.Tensor:
    """A dense symmetric 4x4 matrix with eigenvalues ``scale * (3, 1, 0.5, 0.2)``."""
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64))
    return scale * (q @ torch.diag(torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=torch.float64)) @ q.T)


# -- grads_with_graph / hessian_vector_product ---------------------------------------------------------
def test_grads_with_graph_gives_zeros_for_unused_parameters() -> None:
    """An unused parameter gets a zero gradient of its own shape, the used one its differentiable gradient."""
    a = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    b = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    ga, gb = grads_with_graph((a**2).sum(), [a, b])
    torch.testing.assert_close(ga, 2 * a.detach(), rtol=0, atol=0)
    assert ga.requires_grad
    assert isinstance(gb, torch.Tensor) and gb.shape == (2, 2)
    assert torch.equal(gb, torch.zeros(2, 2, dtype=torch.float64))


def test_hvp_of_a_loss_linear_in_the_parameters_is_zero() -> None:
    """``loss = c . w``: the gradient is constant, so ``H v = 0`` (no second backward is possible)."""
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    (hv,) = hessian_vector_product((w * c).sum(), [w], [torch.ones(3, dtype=torch.float64)])
    assert isinstance(hv, torch.Tensor) and hv.shape == (3,)
    assert torch.equal(hv, torch.zeros(3, dtype=torch.float64))


def test_hvp_with_one_parameter_entering_linearly() -> None:
    """``sum a^3 + c . b``: ``H v = (6 a v_a, 0)``; the linear parameter's block is zero."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    cb = torch.tensor([3.0, -4.0], dtype=torch.float64)
    va = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    vb = torch.tensor([5.0, 6.0], dtype=torch.float64)
    ha, hb = hessian_vector_product((a**3).sum() + (b * cb).sum(), [a, b], [va, vb])
    torch.testing.assert_close(ha, 6 * a.detach() * va, rtol=1e-15, atol=0)
    assert not ha.requires_grad
    assert torch.equal(hb, torch.zeros(2, dtype=torch.float64))


def test_hvp_without_loss_or_grads_message() -> None:
    """Neither a loss nor gradients: a ValueError with the exact message."""
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError) as e:
        hessian_vector_product(None, [w], [torch.ones(2)])
    assert str(e.value) == "hessian_vector_product needs a loss or precomputed grads"


# -- rademacher ----------------------------------------------------------------------------------------
def test_rademacher_takes_shape_dtype_and_device_of_the_tensor() -> None:
    """+-1 entries, the parameter's dtype, shape and device (checked on the meta device)."""
    r = rademacher(torch.empty(6, 5, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert r.dtype == torch.float64 and r.shape == (6, 5)
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    m = rademacher(torch.empty(3, 2, dtype=torch.float64, device="meta"), torch.Generator().manual_seed(0))
    assert m.device.type == "meta" and m.dtype == torch.float64 and m.shape == (3, 2)


# -- hutchinson_trace ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_samples", [1, 2, 5])
def test_hutchinson_is_exact_for_diagonal_hessians(n_samples: int) -> None:
    """With a diagonal Hessian ``v^T H v = Tr H`` for every +-1 vector, so even one sample is exact."""
    w1 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    c1 = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    c2 = torch.tensor([[3.0, 0.25], [1.5, 2.0]], dtype=torch.float64)
    tr = hutchinson_trace(lambda: (c1 * w1**2).sum() + (c2 * w2**2).sum(), [w1, w2], n_samples=n_samples)
    assert tr.dtype == np.float64
    np.testing.assert_allclose(tr, [2 * 2.5, 2 * 6.75], rtol=1e-14)


def test_hutchinson_rejects_zero_samples_with_message() -> None:
    """``n_samples=0`` raises ValueError naming the bad value."""
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError) as e:
        hutchinson_trace(lambda: (w**2).sum(), [w], n_samples=0)
    assert str(e.value) == "n_samples must be >= 1, got 0"


def test_hutchinson_defaults_are_32_samples_and_seed_0() -> None:
    """Calling without ``n_samples``/``seed`` equals the explicit documented defaults (32, 0)."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    w, loss_fn = _quadratic(q @ torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)) @ q.T)
    default = hutchinson_trace(loss_fn, [w])
    np.testing.assert_array_equal(default, hutchinson_trace(loss_fn, [w], n_samples=32, seed=0))
    # the estimate does depend on both (so the comparison above can tell them apart)
    assert hutchinson_trace(loss_fn, [w], n_samples=33, seed=0)[0] != default[0]
    assert hutchinson_trace(loss_fn, [w], n_samples=32, seed=1)[0] != default[0]


# -- top_eigenvalues: defaults -------------------------------------------------------------------------
def test_top_eigenvalues_default_runs_100_iterations_with_tol_1e3_seed_0(monkeypatch) -> None:
    """Defaults: iters=100, tol=1e-3, seed=0 (a slowly converging case uses all 100 products)."""
    w, loss_fn = _quadratic(_slow_matrix())
    calls = _spy(monkeypatch)
    default = top_eigenvalues(loss_fn, [w])
    assert len(calls) == 100
    np.testing.assert_array_equal(default, top_eigenvalues(loss_fn, [w], iters=100, tol=1e-3, seed=0))
    for other in ({"iters": 101}, {"tol": 1.001}, {"seed": 1}):
        assert top_eigenvalues(loss_fn, [w], **other)[0] != default[0], other
    assert float(top_eigenvalue(loss_fn, w)) == default[0]


def test_top_eigenvalue_passes_iters_and_seed_through() -> None:
    """The single-tensor wrapper honours ``iters`` and ``seed`` (unconverged case: both change the result)."""
    w, loss_fn = _quadratic(_slow_matrix())
    for kw in ({"iters": 3}, {"iters": 3, "seed": 4}, {"seed": 4}, {"tol": 0.5}):
        assert top_eigenvalue(loss_fn, w, **kw) == top_eigenvalues(loss_fn, [w], **kw)[0], kw
    assert top_eigenvalue(loss_fn, w, iters=3) != top_eigenvalue(loss_fn, w)
    assert top_eigenvalue(loss_fn, w, seed=4) != top_eigenvalue(loss_fn, w)


def test_top_eigenvalues_of_a_real_model_match_exact_blocks() -> None:
    """Converged power iteration on a tiny MLP equals the largest-magnitude eigenvalue of each exact block."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (10,), generator=g)
    weights = [model[0].weight, model[2].weight]
    eig = top_eigenvalues(lambda: F.cross_entropy(model(x), y), weights, iters=2000, tol=1e-12)
    for i, w in enumerate(weights):
        w0 = w.detach().clone()

        def loss(flat: torch.Tensor, i: int = i, w0: torch.Tensor = w0) -> torch.Tensor:
            ws = [weights[0].detach(), weights[1].detach()]
            ws[i] = flat.reshape(w0.shape)
            h = torch.tanh(F.linear(x, ws[0], model[0].bias.detach()))
            return F.cross_entropy(F.linear(h, ws[1], model[2].bias.detach()), y)

        ev = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w0.reshape(-1)))
        want = float(ev[ev.abs().argmax()])
        assert eig[i] == pytest.approx(want, rel=1e-6)


# -- top_eigenvalues: the stopping rule against an explicit-matrix reference ---------------------------
@pytest.mark.parametrize("scale", [1e-13, 1e-3, 1.0, 100.0])
def test_power_iteration_stops_where_the_documented_rule_says(monkeypatch, scale: float) -> None:
    """Value and number of products equal the documented rule ``|new - old| <= tol (|old| + 1e-12)``."""
    a = _fast_matrix(scale)
    w, loss_fn = _quadratic(a)
    calls = _spy(monkeypatch)
    (eig,) = top_eigenvalues(loss_fn, [w], iters=200, tol=1e-3, seed=3)
    want, n = _power_reference(a.numpy(), calls[0][0].numpy(), 200, 1e-3)
    assert 2 < n < 200  # converged, after a few steps
    assert len(calls) == n
    assert eig == pytest.approx(want, rel=1e-9)
    assert abs(eig - 3 * scale) <= 1e-2 * scale


def test_power_iteration_starts_from_a_unit_vector_of_the_parameter_dtype(monkeypatch) -> None:
    """One iteration returns the Rayleigh quotient of the normalised start vector, drawn in float64."""
    a = _fast_matrix(1.0)
    w, loss_fn = _quadratic(a)
    calls = _spy(monkeypatch)
    (eig,) = top_eigenvalues(loss_fn, [w], iters=1, seed=2)
    (v0,) = calls[0]
    assert v0.dtype == torch.float64
    assert float(v0.norm()) == pytest.approx(1.0, abs=1e-14)
    assert eig == pytest.approx(float(v0 @ a @ v0) / float(v0 @ v0), rel=1e-13)


def test_power_iteration_start_vector_is_on_the_parameter_device(monkeypatch) -> None:
    """The start vector lives on the parameter's device (meta here)."""
    p = torch.zeros(3, dtype=torch.float64, device="meta", requires_grad=True)
    seen = []

    def stop(loss, params, v, grads=None):
        seen.append(v[0].device.type)
        raise _Stop

    monkeypatch.setattr(hessian, "hessian_vector_product", stop)
    with pytest.raises(_Stop):
        top_eigenvalues(lambda: (p**3).sum(), [p], iters=2)
    assert seen == ["meta"]


@pytest.mark.parametrize("h", [1.0, 2.5])
def test_power_iteration_with_tol_zero_stops_at_an_exact_repeat(monkeypatch, h: float) -> None:
    """A 1x1 Hessian repeats its estimate exactly: with ``tol=0`` it stops after 2 products, at ``h``."""
    w = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    calls = _spy(monkeypatch)
    (eig,) = top_eigenvalues(lambda: 0.5 * h * (w**2).sum(), [w], iters=50, tol=0.0)
    assert eig == h
    assert len(calls) == 2


def test_power_iteration_zero_hessian_block_and_zero_iterations(monkeypatch) -> None:
    """``(a.b) + |c|^2``: the blocks of a and b are 0 (one product each, H v = 0), that of c is 2."""
    a = torch.randn(2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, dtype=torch.float64, requires_grad=True)
    calls = _spy(monkeypatch)
    eig = top_eigenvalues(lambda: (a * b).sum() + (c**2).sum(), [a, b, c])
    assert isinstance(eig, np.ndarray) and eig.dtype == np.float64
    np.testing.assert_allclose(eig, [0.0, 0.0, 2.0], rtol=1e-12, atol=0)
    assert eig[0] == 0.0 and eig[1] == 0.0
    assert len(calls) == 1 + 1 + 2
    calls.clear()
    none = top_eigenvalues(lambda: (c**2).sum(), [c], iters=0)
    assert none.tolist() == [0.0] and not calls


# -- HAWQ ----------------------------------------------------------------------------------------------
def test_hawq_defaults() -> None:
    """Documented defaults: HAWQ-V1 100 iterations at tol 1e-3; HAWQ-V2/V3 32 Hutchinson samples."""
    v1 = HawqV1()
    assert (v1.iters, v1.tol) == (100, 1e-3)
    assert HawqV2().n_samples == 32
    assert HawqV3().n_samples == 32
    assert get_proxy("hawq-v1").iters == 100 and get_proxy("hawq-v2").n_samples == 32


def _mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    return model, x, y


def test_hawq_v1_uses_the_statistics_seed() -> None:
    """HAWQ-V1's eigenvalues are those of power iteration started from the statistics' seed."""
    model, x, y = _mlp()
    stats = HawqV1(iters=2).statistics(model, ["0", "2"], x, y, seed=3)
    weights = [model[0].weight, model[2].weight]
    loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    want = top_eigenvalues(loss_fn, weights, iters=2, tol=1e-3, seed=3)
    np.testing.assert_allclose(stats.values["eigenvalue"], want, rtol=1e-12)
    assert not np.allclose(top_eigenvalues(loss_fn, weights, iters=2, tol=1e-3, seed=0), want, rtol=1e-6)
    np.testing.assert_allclose(stats.gains, np.outer(np.abs(want), B), rtol=1e-12)


# -- saliency proxies on a model with unused layers ----------------------------------------------------
class _DeadBranch(nn.Module):
    """``dead`` is computed and thrown away, ``unused`` never called; output ``fc2(relu(fc1(x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.dead = nn.Linear(4, 5)
        self.unused = nn.Linear(4, 5)
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dead(x)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def dead() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = _DeadBranch().double().eval()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return model, x, y


NAMES = ["dead", "unused", "fc1", "fc2"]


def test_snip_scores_unused_layers_zero(dead) -> None:
    """SNIP: ``sum |w dL/dw|`` per layer, exactly 0 for layers the loss does not reach."""
    model, x, y = dead
    stats = get_proxy("snip").statistics(model, NAMES, x, y)
    assert set(stats.values) == {"saliency"}
    ws = [model.fc1.weight, model.fc2.weight]
    gs = torch.autograd.grad(F.cross_entropy(model(x), y), ws)
    want = [0.0, 0.0] + [float((w.detach() * g).abs().sum()) for w, g in zip(ws, gs)]
    np.testing.assert_allclose(stats.values["saliency"], want, rtol=1e-12, atol=0)
    assert stats.values["saliency"][0] == 0.0 and stats.values["saliency"][1] == 0.0


def test_synflow_scores_unused_layers_zero(dead) -> None:
    """SynFlow's closed form on the positive 2-layer path; layers off the path score 0."""
    model, x, y = dead
    stats = get_proxy("synflow").statistics(model, NAMES, x, None)
    assert set(stats.values) == {"saliency"}
    w1, b1 = model.fc1.weight.detach().abs(), model.fc1.bias.detach().abs()
    w2 = model.fc2.weight.detach().abs()
    h = w1 @ torch.ones(4, dtype=torch.float64) + b1
    back = w2.T @ torch.ones(3, dtype=torch.float64)
    want = [0.0, 0.0, float(back @ w1 @ torch.ones(4, dtype=torch.float64)), float(w2.sum(0) @ h)]
    np.testing.assert_allclose(stats.values["saliency"], want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["synflow", "qe"])
def test_generated_input_is_on_the_batch_device(name: str) -> None:
    """SynFlow's all-ones input and QE's Gaussian input are made on the device of ``x`` (meta here)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).to("meta")
    seen = []

    def pre(mod, args):
        seen.append(args[0].device.type)
        raise _Stop

    model.register_forward_pre_hook(pre)
    with pytest.raises(_Stop):
        get_proxy(name).statistics(model, ["0"], torch.empty(2, 4, device="meta"))
    assert seen == ["meta"]


def _fisher_reference(outputs: list[torch.Tensor], loss: torch.Tensor) -> list[float]:
    """``0.5 sum_c mean_n (sum_spatial a g)^2`` of each output tensor."""
    grads = torch.autograd.grad(loss, outputs)
    out = []
    for a, g in zip(outputs, grads):
        prod = a.detach() * g
        per_channel = prod.sum(dim=tuple(range(2, prod.dim()))) if prod.dim() > 2 else prod
        out.append(float(0.5 * per_channel.pow(2).mean(0).sum()))
    return out


def test_fisher_skips_discarded_and_uncalled_layers(dead) -> None:
    """Fisher: 0 for a discarded output and an uncalled layer, listed before the live ones."""
    model, x, y = dead
    stats = get_proxy("fisher").statistics(model, NAMES, x, y)
    assert set(stats.values) == {"fisher"}
    a1 = model.fc1(x)
    a2 = model.fc2(torch.relu(a1))
    want = [0.0, 0.0] + _fisher_reference([a1, a2], F.cross_entropy(a2, y))
    np.testing.assert_allclose(stats.values["fisher"], want, rtol=1e-12, atol=0)
    assert min(want[2:]) > 0


def test_fisher_with_only_an_uncalled_layer_cannot_rank(dead) -> None:
    """No captured output at all: every saliency is 0, so the proxy refuses the model (a MixqError)."""
    model, x, y = dead
    with pytest.raises(MixqError, match=r"^proxy 'fisher' gives every bit configuration of these 1 layers"):
        get_proxy("fisher").statistics(model, ["unused"], x, y)


class _Conv1dNet(nn.Module):
    """conv1d (2 -> 3, k 3) -> relu -> flatten -> linear (18 -> 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.fc = nn.Linear(18, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_fisher_sums_conv1d_outputs_over_length() -> None:
    """A 3-D (N, C, L) output is summed over L per channel before squaring."""
    torch.manual_seed(0)
    model = _Conv1dNet().double().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)
    stats = get_proxy("fisher").statistics(model, ["conv", "fc"], x, y)
    a1 = model.conv(x)
    a2 = model.fc(torch.relu(a1).flatten(1))
    want = _fisher_reference([a1, a2], F.cross_entropy(a2, y))
    np.testing.assert_allclose(stats.values["fisher"], want, rtol=1e-12)


class _Shared(nn.Module):
    """``fc2(fc1(tanh(fc1(x))))``: fc1 (4 -> 4) is called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(torch.tanh(self.fc1(x))))


def test_fisher_sums_over_the_calls_of_a_shared_layer() -> None:
    """A layer called twice scores the sum of both calls' Fisher terms."""
    torch.manual_seed(0)
    model = _Shared().double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    stats = get_proxy("fisher").statistics(model, ["fc1", "fc2"], x, y)
    a1 = model.fc1(x)
    a2 = model.fc1(torch.tanh(a1))
    a3 = model.fc2(a2)
    s1, s2, s3 = _fisher_reference([a1, a2, a3], F.cross_entropy(a3, y))
    np.testing.assert_allclose(stats.values["fisher"], [s1 + s2, s3], rtol=1e-12)
    assert min(s1, s2) > 0


# -- OMPQ -----------------------------------------------------------------------------------------------
def test_ompq_keys_and_single_sample_message() -> None:
    """OMPQ reports ``gamma`` and ``importance = exp(-gamma)``; one sample is refused with the exact message."""
    model, x, y = _mlp()
    stats = get_proxy("ompq").statistics(model, ["0", "2"], x)
    assert set(stats.values) == {"gamma", "importance"}
    np.testing.assert_allclose(stats.values["importance"], np.exp(-stats.values["gamma"]), rtol=1e-14)
    np.testing.assert_allclose(stats.gains, np.outer(stats.values["importance"] / 2, B), rtol=1e-14)
    with pytest.raises(MixqError) as e:
        get_proxy("ompq").statistics(model, ["0", "2"], x[:1])
    assert str(e.value) == "the OMPQ proxy needs a batch of at least 2 samples (CKA compares samples)"


# -- QE ---------------------------------------------------------------------------------------------------
class _Parallel(nn.Module):
    """``zero(x) + fc(x)``: ``zero`` has all-zero weight and bias (a constant, zero-variance output)."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = nn.Linear(4, 3)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.zero.weight.zero_()
            self.zero.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.zero(x) + self.fc(x)


def test_qe_output_std_keys_and_constant_layer() -> None:
    """``output_std`` is the std of each layer's output on the Gaussian input; a constant layer scores 0."""
    torch.manual_seed(0)
    model = _Parallel().double().eval()
    seen: dict[str, torch.Tensor] = {}
    for n in ("zero", "fc"):
        getattr(model, n).register_forward_hook(lambda m, a, o, n=n: seen.setdefault(n, a[0].detach().clone()))
    x = torch.randn(16, 4, dtype=torch.float64)
    stats = get_proxy("qe").statistics(model, ["zero", "fc"], x, None, seed=2)
    assert set(stats.values) == {"output_std", "entropy"}
    np.testing.assert_array_equal(stats.values["entropy"], stats.gains)
    z = seen["fc"]
    assert torch.equal(seen["zero"], z) and not torch.equal(z, x)  # data-free: not the batch itself
    std_fc = float(F.linear(z, model.fc.weight, model.fc.bias).detach().std())
    np.testing.assert_allclose(stats.values["output_std"], [0.0, std_fc], rtol=1e-12, atol=0)
    assert stats.values["output_std"].dtype == np.float64
    assert stats.gains[0].tolist() == [0.0] * len(BITS)
    assert np.all(np.diff(stats.gains[1]) > 0)


# -- size / BOPs -------------------------------------------------------------------------------------------
def test_bops_counts_transposed_conv_by_input_and_shared_layers_twice() -> None:
    """Transposed conv: input elements x C_out k k; a layer called twice counts both calls; default 8 bits."""
    torch.manual_seed(0)
    tconv = nn.Sequential(nn.ConvTranspose2d(2, 3, 3)).double()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    stats = get_proxy("bops").statistics(tconv, ["0"], x)
    assert stats.values["macs"].tolist() == [2 * 4 * 4 * 3 * 3 * 3]
    shared = _Shared().double()
    stats = BOPs().statistics(shared, ["fc1", "fc2"], torch.randn(3, 4, dtype=torch.float64))
    macs = np.array([2 * 4 * 4, 4 * 3], dtype=np.float64)
    np.testing.assert_array_equal(stats.values["macs"], macs)
    np.testing.assert_allclose(stats.gains, np.outer(macs * 8, B), rtol=1e-15)
    assert BOPs().act_bits == 8


def test_bparams_values_are_float_weight_counts() -> None:
    """BParams reports ``params`` as float64 weight counts."""
    model, x, _ = _mlp()
    stats = get_proxy("bparams").statistics(model, ["0", "2"], x)
    assert set(stats.values) == {"params"}
    assert stats.values["params"].dtype == np.float64
    assert stats.values["params"].tolist() == [20.0, 15.0]


# -- rank metrics -------------------------------------------------------------------------------------------
def test_rank_metrics_non_finite_message() -> None:
    """A NaN score is refused with the exact message."""
    with pytest.raises(MixqError) as e:
        rank_metrics(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert str(e.value) == "scores and accuracies must be finite"
