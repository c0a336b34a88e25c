"""Rank agreement between a proxy's scores and measured accuracies (EMQ's metrics)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from mixq.errors import MixqError

TOP_FRACTIONS = (1.0, 0.5, 0.2)


def rank_metrics(scores: np.ndarray, accuracy: np.ndarray) -> dict[str, float]:
    """Kendall tau, Spearman rho and Pearson r, plus Spearman on the proxy's top 100/50/20 %.

    "Top k %" keeps the configurations the proxy ranks highest (largest scores) and correlates their
    scores with their accuracies, as EMQ reports it.

    Args:
        scores: proxy scores ``(n,)`` (higher = predicted more accurate).
        accuracy: measured accuracies ``(n,)``.

    Returns:
        ``{"kendall", "spearman", "pearson", "spearman_top100", "spearman_top50", "spearman_top20"}``
        (NaN where a subset is constant or has fewer than 3 entries).
    """
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    if s.shape != a.shape or s.ndim != 1 or s.size < 3:
        raise MixqError(f"need two equal-length 1-D arrays of at least 3 values, got {s.shape} and {a.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(a))):
        raise MixqError("scores and accuracies must be finite")

    def safe(fn, x, y) -> float:
        if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return float("nan")
        return float(fn(x, y)[0])

    out = {
        "kendall": safe(stats.kendalltau, s, a),
        "spearman": safe(stats.spearmanr, s, a),
        "pearson": safe(stats.pearsonr, s, a),
    }
    order = np.argsort(-s, kind="stable")
    for frac in TOP_FRACTIONS:
        keep = order[: max(1, int(round(frac * s.size)))]
        out[f"spearman_top{int(frac * 100)}"] = safe(stats.spearmanr, s[keep], a[keep])
    return out


CORRELATIONS = {"kendall": stats.kendalltau, "spearman": stats.spearmanr}


def bootstrap_interval(
    scores: np.ndarray,
    accuracy: np.ndarray,
    metric: str = "kendall",
    baseline: np.ndarray | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a rank correlation, or of its gain over a baseline proxy.

    Configurations are resampled with replacement (``scipy.stats.bootstrap``, paired), so the interval
    says how much the figure would move on another sample of configurations of the same benchmark.

    Args:
        scores: proxy scores ``(n,)``.
        accuracy: measured accuracies ``(n,)``.
        metric: ``"kendall"`` or ``"spearman"``.
        baseline: another proxy's scores on the same configurations: the interval is then of
            ``corr(scores) - corr(baseline)`` (paired: both on each resample).
        n_resamples: bootstrap resamples.
        confidence: confidence level in (0, 1).
        seed: resampling seed (the same seed gives the same interval).

    Returns:
        ``(low, high)``; NaN when the correlation is undefined on too many resamples.

    Raises:
        MixqError: unknown metric, mismatched or non-finite arrays, fewer than 3 configurations.
    """
    if metric not in CORRELATIONS:
        raise MixqError(f"metric must be one of {sorted(CORRELATIONS)}, got {metric!r}")
    arrays = [np.asarray(scores, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)]
    if baseline is not None:
        arrays.append(np.asarray(baseline, dtype=np.float64))
    if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays) or arrays[0].size < 3:
        raise MixqError(f"need equal-length 1-D arrays of at least 3 values, got {[a.shape for a in arrays]}")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise MixqError("scores and accuracies must be finite")
    if not 0 < confidence < 1:
        raise MixqError(f"confidence must be in (0, 1), got {confidence}")
    fn = CORRELATIONS[metric]

    def corr(s: np.ndarray, a: np.ndarray) -> float:
        return float(fn(s, a)[0]) if np.ptp(s) > 0 and np.ptp(a) > 0 else float("nan")

    def statistic(s, a, b=None):
        return corr(s, a) if b is None else corr(s, a) - corr(b, a)

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # undefined intervals come back as NaN
        res = stats.bootstrap(tuple(arrays), statistic, paired=True, vectorized=False, n_resamples=n_resamples,
                              confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
