"""Rank agreement between a proxy's scores and measured accuracies (EMQ's metrics)."""

from __future__ import annotations

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
