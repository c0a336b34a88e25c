"""Rank metrics against brute-force definitions."""

import itertools

import numpy as np
import pytest

from mixq.errors import MixqError
from mixq.proxies.rank import rank_metrics


def _kendall_brute(x, y):
    conc = disc = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        conc += s > 0
        disc += s < 0
    return (conc - disc) / (len(x) * (len(x) - 1) / 2)


def _spearman_brute(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    n = len(x)
    return 1 - 6 * np.sum((rx - ry) ** 2) / (n * (n * n - 1))


def test_against_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)  # no ties
    m = rank_metrics(x, y)
    assert m["kendall"] == pytest.approx(_kendall_brute(x, y), abs=1e-12)
    assert m["spearman"] == pytest.approx(_spearman_brute(x, y), abs=1e-12)
    assert m["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert m["spearman_top100"] == pytest.approx(m["spearman"])
    top = np.argsort(-x)[:8]
    assert m["spearman_top20"] == pytest.approx(_spearman_brute(x[top], y[top]), abs=1e-12)


def test_perfect_and_degenerate():
    x = np.arange(10.0)
    assert rank_metrics(x, 2 * x + 1)["kendall"] == pytest.approx(1.0)
    assert np.isnan(rank_metrics(np.ones(10), x)["spearman"])
    with pytest.raises(MixqError):
        rank_metrics(x, x[:5])
    with pytest.raises(MixqError):
        rank_metrics(np.array([1.0, np.nan, 2.0]), np.arange(3.0))
