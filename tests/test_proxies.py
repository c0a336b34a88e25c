"""Proxies: registry, Hessian estimators against exact Hessians, every proxy on a tiny model, speed."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mixq.errors import MixqError
from mixq.proxies import BITS, bits_matrix, get_proxy, list_proxies, register_proxy, stats_for
from mixq.proxies.base import Proxy
from mixq.proxies.hessian import hessian_vector_product, hutchinson_trace, top_eigenvalue, top_eigenvalues
from mixq.quant.model import QuantModel

ALL = ["bops", "bparams", "fisher", "hawq-v1", "hawq-v2", "hawq-v3", "ompq", "qe", "sensitivity", "snip",
       "synflow"]
LABELLED = {"fisher", "hawq-v1", "hawq-v2", "hawq-v3", "snip"}
LINEAR_IN_BITS = ["bparams", "bops", "hawq-v1", "hawq-v2", "ompq", "snip", "synflow", "fisher"]


# -- tiny models -------------------------------------------------------------------------------------
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _mlp_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return x, y


def _exact_hessian(model, x, y):
    """Full Hessian of the mean CE over the two weight matrices (biases fixed), and the flat sizes."""
    names = ["0.weight", "2.weight"]
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    sizes = [int(np.prod(s)) for s in shapes]
    flat0 = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])

    def loss(flat):
        parts = torch.split(flat, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0), sizes


@pytest.fixture(scope="module")
def mlp_case():
    model = _mlp()
    x, y = _mlp_data()
    h, sizes = _exact_hessian(model, x, y)
    weights = [model[0].weight, model[2].weight]
    return model, x, y, h, sizes, weights


class _TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = _TinyConv().eval()
    g = torch.Generator().manual_seed(3)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    x = torch.randn(8, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    qm = QuantModel(model, calib=x)
    return model, qm, x, y


@pytest.fixture(scope="module")
def tiny_stats(tiny):
    _, qm, x, y = tiny
    return {name: stats_for(qm, get_proxy(name), x, y, seed=0) for name in ALL}


def _random_bits(n, n_layers, seed=0):
    return np.random.default_rng(seed).integers(2, 9, size=(n, n_layers))


# -- registry ----------------------------------------------------------------------------------------
def test_registry_lists_all_proxies():
    assert list_proxies() == ALL
    assert list_proxies("hawq*") == ["hawq-v1", "hawq-v2", "hawq-v3"]
    for name in ALL:
        p = get_proxy(name)
        assert isinstance(p, Proxy) and p.name == name and p.higher_is_better
        assert p.needs_labels == (name in LABELLED)


def test_registry_errors():
    with pytest.raises(MixqError, match="unknown proxy 'nope'.*hawq-v2"):
        get_proxy("nope")
    with pytest.raises(MixqError, match="already registered"):
        register_proxy("snip")(type("Dup", (Proxy,), {}))
    with pytest.raises(MixqError, match="bad option"):
        get_proxy("hawq-v2", bogus=1)
    assert get_proxy("hawq-v2", n_samples=4).n_samples == 4


# -- Hessian utilities against exact Hessians -------------------------------------------------------
def test_hvp_matches_exact_hessian(mlp_case):
    model, x, y, h, sizes, weights = mlp_case
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in weights]
    loss = F.cross_entropy(model(x), y)
    hv = hessian_vector_product(loss, weights, v)
    expect = h @ torch.cat([t.reshape(-1) for t in v])
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in hv]), expect, atol=1e-10, rtol=1e-8)


def test_hvp_with_basis_gives_exact_trace(mlp_case):
    # H e_i for every basis vector rebuilds each diagonal block, so its trace is exact
    model, x, y, h, sizes, weights = mlp_case
    w = weights[0]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [w], create_graph=True)
    diag = []
    for i in range(w.numel()):
        e = torch.zeros(w.numel(), dtype=w.dtype)
        e[i] = 1
        diag.append(float(hessian_vector_product(None, [w], [e.reshape(w.shape)], grads=grads)[0].reshape(-1)[i]))
    assert sum(diag) == pytest.approx(float(h[: sizes[0], : sizes[0]].trace()), rel=1e-10)


def test_hutchinson_trace_matches_exact(mlp_case):
    model, x, y, h, sizes, weights = mlp_case
    n = 3000
    est = hutchinson_trace(lambda: F.cross_entropy(model(x), y), weights, n_samples=n, seed=0)
    off = np.cumsum([0] + sizes)
    hn = h.numpy()
    for i in range(len(weights)):
        rows = slice(off[i], off[i + 1])
        block = hn[rows, rows]
        exact = np.trace(block)
        # variance of v_l^T (H v)_l with Rademacher v: 2 * off-diagonal of the block + cross blocks
        var = 2 * (np.sum(block**2) - np.sum(np.diag(block) ** 2)) + np.sum(hn[rows, :] ** 2) - np.sum(block**2)
        se = np.sqrt(var / n)
        assert abs(est[i] - exact) < 4 * se + 1e-12
        assert est[i] == pytest.approx(exact, rel=0.05)


def test_hutchinson_trace_is_seeded(mlp_case):
    model, x, y, _, _, weights = mlp_case
    f = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    np.testing.assert_array_equal(hutchinson_trace(f, weights, 5, seed=3), hutchinson_trace(f, weights, 5, seed=3))


def test_top_eigenvalue_matches_exact(mlp_case):
    model, x, y, h, sizes, weights = mlp_case
    f = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    off = np.cumsum([0] + sizes)
    eigs = top_eigenvalues(f, weights, iters=5000, tol=1e-10, seed=0)
    for i in range(len(weights)):
        ev = np.linalg.eigvalsh(h.numpy()[off[i]:off[i + 1], off[i]:off[i + 1]])
        exact = ev[np.argmax(np.abs(ev))]
        assert eigs[i] == pytest.approx(exact, rel=1e-3)
    assert top_eigenvalue(f, weights[1], iters=5000, tol=1e-10) == pytest.approx(eigs[1], rel=1e-3)


# -- every proxy on a tiny model ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_proxy_scores_finite(name, tiny, tiny_stats):
    _, qm, _, _ = tiny
    stats = tiny_stats[name]
    assert stats.layer_names == tuple(qm.layer_names) and stats.gains.shape == (3, len(BITS))
    bits = _random_bits(50, 3)
    s = get_proxy(name).score(stats, bits)
    assert s.shape == (50,) and np.all(np.isfinite(s))
    assert np.ptp(s) > 0, "proxy cannot rank configurations"
    assert get_proxy(name).score(stats, bits[0]).shape == (1,)


@pytest.mark.parametrize("name", ALL)
def test_layer_costs_consistent_with_score(name, tiny_stats):
    stats = tiny_stats[name]
    proxy = get_proxy(name)
    choices = [2, 3, 4, 8]
    costs = proxy.layer_costs(stats, choices)
    assert costs.shape == (3, len(choices))
    idx = np.random.default_rng(1).integers(0, len(choices), size=(20, 3))
    bits = np.array(choices)[idx]
    expect = -costs[np.arange(3), idx].sum(axis=1)
    np.testing.assert_allclose(proxy.score(stats, bits), expect, rtol=1e-12)


@pytest.mark.parametrize("name", LINEAR_IN_BITS + ["hawq-v3", "qe"])
def test_more_bits_never_lower_score(name, tiny_stats):
    stats = tiny_stats[name]
    proxy = get_proxy(name)
    uniform = np.array([[b] * 3 for b in range(2, 9)])
    s = proxy.score(stats, uniform)
    assert np.all(np.diff(s) > 0), s
    # raising one layer's bits never lowers the score
    base = _random_bits(30, 3, seed=5)
    up = base.copy()
    up[:, 1] = np.minimum(up[:, 1] + 1, 8)
    assert np.all(proxy.score(stats, up) >= proxy.score(stats, base) - 1e-12)


@pytest.mark.parametrize("name", LINEAR_IN_BITS)
def test_linear_in_bits_form(name, tiny_stats):
    g = tiny_stats[name].gains
    np.testing.assert_allclose(g, g[:, :1] / 2 * np.array(BITS)[None, :], rtol=1e-12)


def test_bparams_is_size_in_mb(tiny, tiny_stats):
    _, qm, _, _ = tiny
    bits = _random_bits(5, 3)
    s = get_proxy("bparams").score(tiny_stats["bparams"], bits)
    np.testing.assert_allclose(s, [qm.size_mb(dict(zip(qm.layer_names, map(int, b)))) for b in bits], rtol=1e-12)


def test_bops_macs(tiny_stats):
    # conv1: 8x8 out, 4 ch, 3*3*3 fan-in; conv2: 4x4 out, 6 ch, 4*3*3; fc: 10 out, 6 in
    np.testing.assert_array_equal(tiny_stats["bops"].values["macs"], [64 * 4 * 27, 16 * 6 * 36, 60])


@pytest.mark.parametrize("name", sorted(LABELLED))
def test_labels_required(name, tiny):
    _, qm, x, _ = tiny
    with pytest.raises(MixqError, match="needs labels"):
        stats_for(qm, get_proxy(name), x, None)


def test_bad_bits_and_foreign_stats(tiny_stats):
    p = get_proxy("bparams")
    with pytest.raises(MixqError, match="not one of"):
        p.score(tiny_stats["bparams"], [[2, 9, 4]])
    with pytest.raises(MixqError, match="shape"):
        p.score(tiny_stats["bparams"], [[2, 4]])
    with pytest.raises(MixqError, match="made by proxy"):
        p.score(tiny_stats["snip"], [[2, 4, 4]])


def test_model_left_unchanged(tiny):
    _, qm, x, y = tiny
    qm.set_bits(4)
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    for name in ALL:
        stats_for(qm, get_proxy(name), x, y)
    assert all(not m.weight.requires_grad for m in qm.layers.values())
    assert all(m.weight_quantizer.bits == 4 and m.input_quantizer.bits == 8 for m in qm.layers.values())
    for k, v in qm.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)


def test_float_model_accepted(tiny):
    # a plain float model works too; its conv outputs are pre-BN, so only size/MAC proxies must agree
    model, qm, x, y = tiny
    for name in ALL:
        a = get_proxy(name).statistics(model, qm.layer_names, x, y)
        assert np.all(np.isfinite(a.gains))
        if name in ("bops", "bparams"):
            np.testing.assert_array_equal(a.gains, stats_for(qm, get_proxy(name), x, y).gains)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_statistics_are_seeded(tiny):
    _, qm, x, y = tiny
    for name in ["hawq-v1", "hawq-v2", "qe"]:
        a = stats_for(qm, get_proxy(name), x, y, seed=7)
        b = stats_for(qm, get_proxy(name), x, y, seed=7)
        np.testing.assert_array_equal(a.gains, b.gains)


def test_bits_matrix(tiny):
    from mixq.bits import BitConfig

    _, qm, _, _ = tiny
    m = bits_matrix([BitConfig.uniform(qm.layer_names, 3), BitConfig.uniform(qm.layer_names, 8)], qm.layer_names)
    np.testing.assert_array_equal(m, [[3, 3, 3], [8, 8, 8]])


def _best_time(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.mark.parametrize("name", ALL)
def test_scoring_1000_configs_cheaper_than_3_forward_backward(name, tiny, tiny_stats):
    _, qm, x, y = tiny
    proxy = get_proxy(name)
    bits = _random_bits(1000, 3)

    def fwd_bwd():
        with qm.float_mode():
            w = qm.layers["conv1"].weight
            w.requires_grad_(True)
            try:
                torch.autograd.grad(F.cross_entropy(qm(x), y), [w])
            finally:
                w.requires_grad_(False)

    t_fb = _best_time(fwd_bwd)
    t_score = _best_time(lambda: proxy.score(tiny_stats[name], bits))
    assert t_score < 3 * t_fb, (t_score, t_fb)


class _FixedGains(Proxy):
    """A proxy whose per-layer saliencies are given (to test the checks on what ``_compute`` returns)."""

    def __init__(self, saliency, name="fixed"):
        self.saliency = np.asarray(saliency, dtype=np.float64)
        self.name = name

    def _compute(self, model, modules, x, y, seed):
        from mixq.proxies.base import linear_in_bits

        return linear_in_bits(self.saliency), {}


def test_proxy_with_constant_scores_is_one_clear_error(tiny):
    _, qm, x, _ = tiny
    names = qm.layer_names[:3]
    with pytest.raises(MixqError, match="'fixed' gives every bit configuration of these 3 layers the same score"):
        _FixedGains([0.0, 0.0, 0.0]).statistics(qm, names, x)
    # one layer that depends on its bits is enough to rank
    stats = _FixedGains([0.0, 2.0, 0.0]).statistics(qm, names, x)
    assert np.ptp(_FixedGains([0.0, 2.0, 0.0]).score(stats, [[2, 2, 2], [2, 3, 2]])) == 2.0


@pytest.mark.parametrize("bad", [np.inf, np.nan, -np.inf])
def test_proxy_with_non_finite_statistics_is_one_clear_error(tiny, bad):
    _, qm, x, _ = tiny
    names = qm.layer_names[:3]
    with pytest.raises(MixqError, match=r"non-finite statistics \(overflow or NaN\) for layer\(s\) '"
                       + names[1] + "'"):
        _FixedGains([1.0, bad, 3.0]).statistics(qm, names, x)
