"""Reference values computed independently of the code under test (issue #18, first part).

Each test pins one numeric definition with a brute-force or by-hand computation on a small case, so that a
plausible wrong variant (MAE for MSE, Pearson for Kendall, a contaminated sensitivity row, ranges from the
last batch only) fails.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from mixq.emq.search import correlation
from mixq.evaluation.metrics import predict
from mixq.evoq.bitsearch import FitnessEvaluator
from mixq.evoq.sensitivity import compute_sensitivity
from mixq.quant.model import QuantModel


def _kendall_tau_b(x, y) -> float:
    """Kendall's tau-b by counting pairs: (C - D) / sqrt((n0 - n1)(n0 - n2)), ties excluded per variable."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            c += 1
        else:
            d += 1
    return (c - d) / np.sqrt((c + d + tx) * (c + d + ty))


def _average_ranks(v) -> np.ndarray:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = np.zeros(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def test_emq_fitness_correlation_is_kendall_tau_b_and_spearman_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    acc = np.round(scores * 3 + rng.normal(0, 4, 40))  # ties too
    acc[:5] = acc[5]
    assert correlation("kendall", scores, acc) == pytest.approx(_kendall_tau_b(scores, acc), abs=1e-12)
    rs, ra = _average_ranks(scores), _average_ranks(acc)
    rho = np.corrcoef(rs, ra)[0, 1]
    assert correlation("spearman", scores, acc) == pytest.approx(rho, abs=1e-12)
    # Pearson on the raw values differs here, so a Pearson fitness would fail the lines above
    assert abs(np.corrcoef(scores, acc)[0, 1] - _kendall_tau_b(scores, acc)) > 0.05


@pytest.fixture()
def small():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 5)).eval()
    x = torch.randn(20, 3, 8, 8)
    return net, x


def test_fitness_is_the_output_mse_by_hand(small):
    net, x = small
    qm = QuantModel(net, calib=x)
    ref = predict(net, x)
    genome = (3, 2, 5)
    fit = FitnessEvaluator(qm, x, ref)(genome)
    qm.set_bits_tuple(genome)
    with torch.no_grad():
        diff = (qm(x).double() - ref.double()).numpy()
    by_hand = sum(v * v for v in diff.ravel()) / diff.size
    assert fit == pytest.approx(by_hand, rel=1e-6)
    assert abs(fit - np.abs(diff).mean()) > 1e-3 * fit  # not the mean absolute error


def test_sensitivity_row_j_is_the_model_with_only_layer_j_quantized(small):
    net, x = small
    qm = QuantModel(net, calib=x)
    qm.set_bits(4)  # the current configuration must not leak into the table
    table = compute_sensitivity(qm, x, bits=(2, 3, 8), progress=False)
    assert qm.bit_config().weights == {n: 4 for n in qm.layer_names}  # restored
    fresh = QuantModel(net, calib=x)  # float weights, the same 8-bit activations
    fresh.set_bits(32)
    with torch.no_grad():
        ref = fresh(x).double()
        for j, name in enumerate(fresh.layer_names):
            for k, b in enumerate((2, 3, 8)):
                fresh.set_bits({n: (b if n == name else 32) for n in fresh.layer_names})
                want = float(((fresh(x).double() - ref) ** 2).mean())
                assert table.mse[j, k] == pytest.approx(want, rel=1e-5), (name, b)
                fresh.set_bits(32)


def test_activation_ranges_over_several_batches_equal_one_big_batch(small):
    net, x = small
    x = x.clone()
    x[0] *= 10  # the extreme sample is in the first batch only
    many = QuantModel(net, calib=x, batch_size=3)
    one = QuantModel(net, calib=x, batch_size=len(x))
    for name in one.layer_names:
        a, b = many.layers[name].input_quantizer, one.layers[name].input_quantizer
        assert torch.equal(a.min_val, b.min_val) and torch.equal(a.max_val, b.max_val), name
    last = QuantModel(net, calib=x[-2:])  # what a last-batch-only observer would see
    assert not torch.equal(last.layers[one.layer_names[0]].input_quantizer.max_val,
                           one.layers[one.layer_names[0]].input_quantizer.max_val)
