"""Every hand-crafted proxy against its paper formula, computed independently on a tiny model (#18).

The reference side never calls mixq's proxy code: Hessians are exact (``torch.autograd.functional.hessian``
of a ``functional_call``), eigenvalues and traces come from numpy, quantized weights from a by-hand
per-channel min/max quantizer, CKA from its feature-space definition, Fisher from per-sample channel masks,
SynFlow from its closed form on a two-layer network, and MACs and sizes are counted by hand. Tolerances are
stated per test: 1e-6 relative where the two sides do the same arithmetic in another order, a
statistical bound where the proxy estimates (Hutchinson) and a convergence bound for power iteration.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mixq.errors import MixqError
from mixq.proxies import BITS, get_proxy

B = np.array(BITS, dtype=np.float64)
QBITS = [b for b in BITS if b != 32]


class _Net(nn.Module):
    """conv (2->3, 3x3) -> tanh -> flatten -> linear (12 -> 4); float64, inputs (N, 2, 4, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


NAMES = ["conv", "fc"]


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = _Net().double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=g)
    return net, x, y


def _stats(name, net, x, y, seed=0, **opts):
    return get_proxy(name, **opts).statistics(net, NAMES, x, y, seed=seed)


def _full_hessian(net, x, y):
    """Exact Hessian of the mean cross-entropy over both weight tensors (biases fixed), and flat sizes."""
    params = dict(net.named_parameters())
    keys = [f"{n}.weight" for n in NAMES]
    shapes = [params[k].shape for k in keys]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = torch.cat([params[k].detach().reshape(-1) for k in keys])

    def loss(v):
        parts = {k: p.reshape(s) for k, p, s in zip(keys, torch.split(v, sizes), shapes)}
        return F.cross_entropy(functional_call(net, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy(), sizes


def _blocks(h, sizes):
    edges = np.cumsum([0, *sizes])
    return [(edges[i], edges[i + 1]) for i in range(len(sizes))]


def _quantize_by_hand(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-channel asymmetric min/max quantization, range widened to contain 0 (float64)."""
    flat = w.reshape(w.shape[0], -1)
    out = np.empty_like(flat)
    levels = 2**bits - 1
    for c, row in enumerate(flat):
        lo, hi = min(row.min(), 0.0), max(row.max(), 0.0)
        s = (hi - lo) / levels
        zp = np.clip(np.round(-lo / s), 0, levels)
        out[c] = (np.clip(np.round(row / s) + zp, 0, levels) - zp) * s
    return out.reshape(w.shape)


def _weights(net):
    return [getattr(net, n).weight.detach().numpy() for n in NAMES]


# -- Hessian proxies -----------------------------------------------------------------------------------
def test_hawq_v1_is_top_eigenvalue_times_bits(case):
    net, x, y = case
    h, sizes = _full_hessian(net, x, y)
    stats = _stats("hawq-v1", net, x, y, iters=3000, tol=1e-12)
    for i, (a, b) in enumerate(_blocks(h, sizes)):
        ev = np.linalg.eigvalsh(h[a:b, a:b])
        top = ev[np.argmax(np.abs(ev))]
        assert stats.values["eigenvalue"][i] == pytest.approx(top, rel=1e-4), NAMES[i]
        # S(b) = sum_l |lambda_l| * b_l: the gain table is |lambda| x bits, exactly
        np.testing.assert_allclose(stats.gains[i], abs(stats.values["eigenvalue"][i]) * B, rtol=1e-12)
        np.testing.assert_allclose(stats.gains[i], abs(top) * B, rtol=1e-4)


def _hutchinson_bound(h, sizes, n):
    """4 standard deviations of the per-block Hutchinson estimate with n Rademacher vectors.

    ``v_p^T (H v)_p = v_p^T H_pp v_p + sum_q v_p^T H_pq v_q`` has variance
    ``2 (||H_pp||_F^2 - ||diag H_pp||^2) + ||H_p,rest||_F^2`` for Rademacher ``v``.
    """
    out = []
    for a, b in _blocks(h, sizes):
        blk = h[a:b, a:b]
        rest = np.delete(h[a:b], np.s_[a:b], axis=1)
        var = 2 * ((blk**2).sum() - (np.diag(blk) ** 2).sum()) + (rest**2).sum()
        out.append(4 * np.sqrt(var / n))
    return np.array(out)


def test_hawq_v2_is_trace_times_bits(case):
    net, x, y = case
    h, sizes = _full_hessian(net, x, y)
    n = 8000  # the cross-block terms are large on this model: many vectors for a tight bound (~3 s)
    stats = _stats("hawq-v2", net, x, y, n_samples=n)
    exact = np.array([np.trace(h[a:b, a:b]) for a, b in _blocks(h, sizes)])
    bound = _hutchinson_bound(h, sizes, n)
    assert np.all(np.abs(stats.values["trace"] - exact) <= bound), (stats.values["trace"], exact, bound)
    assert np.all(bound < 0.3 * np.abs(exact))  # the check has teeth: the bound is small against the trace
    assert exact[0] < 0 < exact[1]  # a negative trace: the score must use |Tr|
    np.testing.assert_allclose(stats.gains, np.abs(stats.values["trace"])[:, None] * B[None], rtol=1e-12)


def test_hawq_v3_is_average_trace_times_quantization_perturbation(case):
    net, x, y = case
    stats = _stats("hawq-v3", net, x, y, n_samples=50, seed=2)
    # the trace is HAWQ-V2's estimator (checked against the exact trace above), same vectors, same value
    v2 = _stats("hawq-v2", net, x, y, n_samples=50, seed=2)
    np.testing.assert_array_equal(stats.values["trace"], v2.values["trace"])
    sizes = [w.size for w in _weights(net)]
    counts = np.array(sizes, dtype=np.float64)  # n_l: weights of the layer
    for i, w in enumerate(_weights(net)):
        for k, b in enumerate(BITS):
            pert = 0.0 if b == 32 else float(((_quantize_by_hand(w, b) - w) ** 2).sum())
            assert stats.values["perturbation"][i, k] == pytest.approx(pert, rel=1e-5, abs=1e-12), (NAMES[i], b)
            # S = -sum_l Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2, with the proxy's own trace estimate
            want = -abs(stats.values["trace"][i]) / counts[i] * pert
            assert stats.gains[i, k] == pytest.approx(want, rel=1e-5, abs=1e-15), (NAMES[i], b)
    # the 1/n_l factor matters here: the layers have different weight counts
    assert sizes[0] != sizes[1]


# -- gradient saliencies --------------------------------------------------------------------------------
def _ce_grads(net, x, y):
    params = {k: v.detach().clone() for k, v in net.named_parameters()}

    def loss(ws):
        return F.cross_entropy(functional_call(net, {**params, **ws}, (x,)), y)

    ws = {f"{n}.weight": params[f"{n}.weight"] for n in NAMES}
    grads = torch.func.grad(loss)(ws)
    return [grads[f"{n}.weight"].numpy() for n in NAMES]


def test_snip_is_sum_of_abs_weight_times_gradient(case):
    net, x, y = case
    stats = _stats("snip", net, x, y)
    for i, (w, g) in enumerate(zip(_weights(net), _ce_grads(net, x, y))):
        s = np.abs(w * g).sum()
        assert np.abs((w * g).sum()) < 0.9 * s  # mixed signs: |sum| would differ from sum |.|
        np.testing.assert_allclose(stats.gains[i], s * B, rtol=1e-9)


def test_fisher_is_half_mean_squared_channel_sensitivity(case):
    net, x, y = case
    stats = _stats("fisher", net, x, y)
    n = len(x)
    # sum_{hw} a * dL/da of channel c, sample j == d(L_j / N) / d m_c for a mask m on that channel
    per = {name: np.zeros((n, c)) for name, c in (("conv", 3), ("fc", 4))}
    for j in range(n):
        m1 = torch.ones(3, dtype=torch.float64, requires_grad=True)
        m2 = torch.ones(4, dtype=torch.float64, requires_grad=True)
        a = net.conv(x[j : j + 1]) * m1[None, :, None, None]
        out = net.fc(torch.tanh(a).flatten(1)) * m2[None, :]
        g1, g2 = torch.autograd.grad(F.cross_entropy(out, y[j : j + 1]) / n, [m1, m2])
        per["conv"][j], per["fc"][j] = g1.numpy(), g2.numpy()
    for i, name in enumerate(NAMES):
        s = 0.5 * (per[name] ** 2).mean(axis=0).sum()
        np.testing.assert_allclose(stats.gains[i], s * B, rtol=1e-9)


def test_synflow_matches_its_closed_form_on_two_layers():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    w1, b1 = net[0].weight.detach().double().abs().numpy(), net[0].bias.detach().double().abs().numpy()
    w2 = net[2].weight.detach().double().abs().numpy()
    # all-positive weights: the ReLU passes everything, R = 1^T (|W2| (|W1| 1 + |b1|) + |b2|)
    hidden = w1.sum(axis=1) + b1  # dR/d|W2_ki| = hidden_i
    colsum = w2.sum(axis=0)  # dR/d|W1_ij| = colsum_i (input all ones)
    s1 = float((w1 * colsum[:, None]).sum())
    s2 = float((w2 * hidden[None, :]).sum())
    stats = get_proxy("synflow").statistics(net, ["0", "2"], torch.randn(7, 4))
    np.testing.assert_allclose(stats.gains, np.outer([s1, s2], B), rtol=1e-10)
    assert torch.all(net[0].weight < 0).item() is False  # the model itself was not made absolute
    assert (net[0].weight.detach() < 0).any()


@pytest.mark.parametrize("act", [nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.GELU])
def test_synflow_linearises_saturating_activations(act):
    """With all-positive weights ReLU6 saturates (here every hidden unit exceeds 6) and passes no gradient:
    SynFlow would score the first layer 0. It is computed on the ReLU form, by the same closed form."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        net[0].weight.mul_(20)
    w1, b1 = net[0].weight.detach().double().abs().numpy(), net[0].bias.detach().double().abs().numpy()
    w2 = net[2].weight.detach().double().abs().numpy()
    assert (w1.sum(axis=1) + b1).min() > 6  # saturated in the original
    s1 = float((w1 * w2.sum(axis=0)[:, None]).sum())
    s2 = float((w2 * (w1.sum(axis=1) + b1)[None, :]).sum())
    stats = get_proxy("synflow").statistics(net, ["0", "2"], torch.randn(7, 4))
    np.testing.assert_allclose(stats.gains, np.outer([s1, s2], B), rtol=1e-10)
    assert isinstance(net[1], act)  # the model keeps its activation


# -- data-dependent, label-free -------------------------------------------------------------------------
def _linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA in feature space: ||B_c^T A_c||_F^2 / (||A_c^T A_c||_F ||B_c^T B_c||_F)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def test_ompq_is_orthogonality_importance_times_bits(case):
    net, x, y = case
    beta = 2.5
    stats = _stats("ompq", net, x, None, beta=beta)
    with torch.no_grad():
        f1 = net.conv(x)
        f2 = net.fc(torch.tanh(f1).flatten(1))
    feats = [f1.flatten(1).numpy(), f2.numpy()]
    cka = _linear_cka(feats[0], feats[1])
    assert 0.05 < cka < 0.95  # neither orthogonal nor identical: beta and gamma both show
    imp = np.exp(-beta * np.array([cka, cka]))  # gamma_l = sum over the other layer(s)
    np.testing.assert_allclose(stats.values["gamma"], [cka, cka], rtol=1e-9)
    np.testing.assert_allclose(stats.gains, np.outer(imp / 2, B), rtol=1e-9)


def test_qe_is_gaussian_information_of_the_quantized_output(case):
    net, x, y = case
    seed = 5
    stats = _stats("qe", net, x, None, seed=seed)
    # data-free: a standard Gaussian batch of x's shape, drawn from the seed
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    with torch.no_grad():
        inputs = [z, torch.tanh(net.conv(z)).flatten(1)]
    ops = [lambda a, w: F.conv2d(a, w, net.conv.bias), lambda a, w: F.linear(a, w, net.fc.bias)]
    for i, (w, a, op) in enumerate(zip(_weights(net), inputs, ops)):
        with torch.no_grad():
            ref = op(a, torch.from_numpy(w)).numpy()
        var_y = ref.var(ddof=1)
        for k, b in enumerate(BITS):
            if b == 32:
                noise = 1e-12 * var_y  # the noise floor of float weights
            else:
                with torch.no_grad():
                    out = op(a, torch.from_numpy(_quantize_by_hand(w, b))).numpy()
                noise = ((out - ref) ** 2).mean()
            want = 0.5 * np.log1p(var_y / noise)
            assert stats.gains[i, k] == pytest.approx(want, rel=1e-6), (NAMES[i], b)
    assert np.all(np.diff(stats.gains[:, :-1], axis=1) > 0)  # more bits, more information


# -- cost models ------------------------------------------------------------------------------------------
def test_bops_is_macs_times_weight_and_activation_bits(case):
    net, x, y = case
    stats = _stats("bops", net, x, None, act_bits=6)
    macs = np.array([3 * 2 * 3 * 3 * 2 * 2, 12 * 4], dtype=np.float64)  # C_out C_in k k H W; in x out
    np.testing.assert_array_equal(stats.values["macs"], macs)
    np.testing.assert_allclose(stats.gains, np.outer(macs * 6, B), rtol=1e-12)


def test_bparams_is_weight_bits_in_megabytes(case):
    net, x, y = case
    stats = _stats("bparams", net, x, None)
    params = np.array([3 * 2 * 3 * 3, 12 * 4], dtype=np.float64)  # weights only, no biases
    np.testing.assert_allclose(stats.gains, np.outer(params / (8 * 2**20), B), rtol=1e-12)


@pytest.mark.parametrize("name", ["bops", "bparams", "fisher", "hawq-v1", "hawq-v2", "hawq-v3", "ompq", "qe",
                                  "snip", "synflow"])
def test_score_is_the_sum_of_the_chosen_gains(name, case):
    net, x, y = case
    proxy = get_proxy(name)
    stats = proxy.statistics(net, NAMES, x, y)
    rng = np.random.default_rng(0)
    bits = rng.choice(BITS, size=(20, 2))
    want = [sum(stats.gains[i, BITS.index(int(b))] for i, b in enumerate(row)) for row in bits]
    np.testing.assert_allclose(proxy.score(stats, bits), want, rtol=1e-12)
    costs = proxy.layer_costs(stats, QBITS)
    np.testing.assert_array_equal(costs, -stats.gains[:, : len(QBITS)])


def test_linear_cka_matrix_against_feature_space_formula_with_a_dead_layer():
    """Off-diagonal entries equal the feature-space CKA; the diagonal is 1, and a layer whose features are
    constant over the batch (a dead layer) gets a zero row, column and diagonal instead of NaN."""
    from mixq.proxies.ompq import linear_cka_matrix

    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g)
    b = a @ torch.randn(4, 3, generator=g) + 0.5 * torch.randn(6, 3, generator=g)
    dead = torch.full((6, 5), 2.0)
    cka = linear_cka_matrix([a, b, dead])
    ref = _linear_cka(a.double().numpy(), b.double().numpy())
    expected = np.array([[1.0, ref, 0.0], [ref, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(cka, expected, rtol=1e-10, atol=1e-12)


class _SharedFc(nn.Module):
    """A one-feature input and a Linear called twice: OMPQ joins the two calls' features per sample."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


def test_ompq_default_beta_shared_layer_and_two_samples():
    torch.manual_seed(5)
    net = _SharedFc().double().eval()
    for x in (torch.tensor([[0.3], [-1.2]], dtype=torch.float64),
              torch.tensor([[0.3], [-1.2], [0.8], [2.0]], dtype=torch.float64)):
        stats = get_proxy("ompq").statistics(net, ["fc", "head"], x)  # default beta = 1
        with torch.no_grad():
            h1 = net.fc(x)
            h2 = net.fc(torch.tanh(h1))
            out = net.head(torch.tanh(h2))
        fc = torch.cat([h1, h2], dim=1).numpy()  # (N, 2): both calls of one layer, side by side
        cka = _linear_cka(fc, out.numpy())
        np.testing.assert_allclose(stats.values["gamma"], [cka, cka], rtol=1e-9)
        np.testing.assert_allclose(stats.gains, np.outer(np.exp(-np.array([cka, cka])) / 2, B), rtol=1e-9)
    with pytest.raises(MixqError, match=r"OMPQ proxy needs a batch of at least 2 samples \(CKA compares"):
        get_proxy("ompq").statistics(net, ["fc", "head"], torch.ones(1, 1, dtype=torch.float64))
