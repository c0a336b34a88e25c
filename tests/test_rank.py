"""Rank metrics against brute-force definitions."""

import itertools

import numpy as np
import pytest
from scipy import stats

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


def test_three_values_are_enough_and_two_are_refused():
    """The smallest defined case (n = 3) is computed; n = 2 is one clear error, naming the shapes."""
    x, y = np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 1.0])
    m = rank_metrics(x, y)
    assert m["kendall"] == pytest.approx(_kendall_brute(x, y)) and m["kendall"] == pytest.approx(1 / 3)
    assert m["spearman"] == pytest.approx(0.5) and m["spearman_top100"] == pytest.approx(0.5)
    with pytest.raises(MixqError, match=r"at least 3 values, got \(2,\) and \(2,\)"):
        rank_metrics(x[:2], y[:2])
    with pytest.raises(MixqError, match=r"got \(1, 3\) and \(1, 3\)"):
        rank_metrics(x[None], y[None])
    with pytest.raises(MixqError, match="scores and accuracies must be finite"):
        rank_metrics(x, np.array([0.0, np.inf, 1.0]))


def test_a_spread_of_exactly_one_is_not_constant():
    """Scores and accuracies whose range is exactly 1 are ranked (only a zero range gives NaN)."""
    x, y = np.array([0.0, 0.25, 1.0, 0.5]), np.array([0.0, 1.0, 0.75, 0.5])
    m = rank_metrics(x, y)
    assert m["kendall"] == pytest.approx(_kendall_brute(x, y))
    assert m["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_top_fraction_breaks_score_ties_by_position():
    """Among tied scores the earlier configuration ranks higher (a stable sort), so the top-k subset is
    reproducible; checked on 200 configurations with heavy ties against a by-hand ordering."""
    rng = np.random.default_rng(1)
    s = rng.integers(0, 30, 200).astype(float)
    a = rng.normal(size=200)
    order = sorted(range(200), key=lambda i: (-s[i], i))
    for frac, key in ((0.5, "spearman_top50"), (0.2, "spearman_top20")):
        keep = order[: int(round(frac * 200))]
        assert s[order[len(keep) - 1]] == s[order[len(keep)]]  # the cut falls inside a group of ties
        assert rank_metrics(s, a)[key] == pytest.approx(stats.spearmanr(s[keep], a[keep])[0], abs=1e-12)
