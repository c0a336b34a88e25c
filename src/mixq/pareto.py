"""Non-dominated fronts of (error, cost) points: sorting, crowding and thinning (NSGA-II's tools).

Every objective is minimised. A point ``p`` dominates ``q`` when it is no worse in every objective and
better in one. torch-free; the searches (:mod:`mixq.evoq.pareto`) and the ILP sweep
(:mod:`mixq.allocate.pareto`) share it::

    ranks = nondominated_ranks(F)          # 0 = the front, 1 = the front once 0 is removed, ...
    front = pareto_indices(F)              # indices of rank 0, by the first objective
    dist = crowding_distance(F[front])     # NSGA-II's spread measure (ends: inf)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixq.errors import MixqError


def _matrix(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    f = np.asarray(points, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] < 1:
        raise MixqError(f"objective values must be a matrix (points, objectives), got shape {f.shape}")
    if np.isnan(f).any():
        raise MixqError("objective values hold NaN")
    return f


def nondominated_ranks(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """The non-domination rank of every point (Deb et al.'s fast non-dominated sort).

    Args:
        points: ``(N, M)`` objective values, all minimised.

    Returns:
        ``(N,)`` integer ranks: 0 for the non-dominated points, 1 for those dominated only by rank 0, ...
        Equal points share a rank.
    """
    f = _matrix(points)
    n = len(f)
    le = (f[:, None, :] <= f[None, :, :]).all(axis=2)
    lt = (f[:, None, :] < f[None, :, :]).any(axis=2)
    dominates = le & lt  # dominates[i, j]: i dominates j
    count = dominates.sum(axis=0)  # how many points dominate each point
    ranks = np.full(n, -1, dtype=np.int64)
    current = np.flatnonzero(count == 0)
    rank = 0
    while len(current):
        ranks[current] = rank
        count = count - dominates[current].sum(axis=0)
        count[ranks >= 0] = -1
        current = np.flatnonzero(count == 0)
        rank += 1
    return ranks


def pareto_indices(points: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Indices of the non-dominated points, sorted by the first objective (then the second, ...).

    Args:
        points: ``(N, M)`` objective values, all minimised.

    Returns:
        The indices (of equal points, only the first).
    """
    f = _matrix(points)
    if len(f) == 0:
        return []
    front = np.flatnonzero(nondominated_ranks(f) == 0)
    seen: set[tuple[float, ...]] = set()
    out = []
    for i in sorted(front, key=lambda i: (tuple(f[i]), i)):
        key = tuple(f[i])
        if key not in seen:
            seen.add(key)
            out.append(int(i))
    return out


def crowding_distance(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within its set (larger = lonelier).

    Per objective, the points are sorted; the two ends get ``inf`` and every other point the gap between
    its neighbours divided by the objective's range; the distances are summed over objectives.

    Args:
        points: ``(N, M)`` objective values of one front.

    Returns:
        ``(N,)`` distances.
    """
    f = _matrix(points)
    n, m = f.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(f[:, k], kind="stable")
        lo, hi = f[order[0], k], f[order[-1], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if hi > lo and np.isfinite(hi - lo):
            dist[order[1:-1]] += (f[order[2:], k] - f[order[:-2], k]) / (hi - lo)
    return dist


def thin(costs: Sequence[float], keep: int, scores: Sequence[float] | None = None) -> list[int]:
    """At most ``keep`` positions of a front sorted by cost, spread evenly along it (both ends kept).

    Without ``scores`` the points are spread evenly over the cost range; with them, evenly along the
    front's length in the plane of (cost, score), each axis scaled to its range, so the steep part of a
    front (where a little cost buys a lot of accuracy) gets as many points as the flat part. Pass
    logarithms to spread them on log axes.

    Args:
        costs: the front's costs, ascending.
        keep: how many to keep (>= 2).
        scores: the front's scores, in the same order (optional).

    Returns:
        Positions into ``costs``, ascending.
    """
    c = np.asarray(costs, dtype=np.float64)
    if keep < 2:
        raise MixqError(f"a thinned front keeps at least 2 points, got {keep}")
    if len(c) <= keep:
        return list(range(len(c)))

    def unit(v: np.ndarray) -> np.ndarray:
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)

    if scores is None:
        along = unit(c)
    else:
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != c.shape:
            raise MixqError(f"scores must match costs ({len(c)}), got shape {s.shape}")
        steps = np.hypot(np.diff(unit(c)), np.diff(unit(s)))
        along = unit(np.concatenate([[0.0], np.cumsum(steps)]))
    chosen: set[int] = set()
    for t in np.linspace(0.0, 1.0, keep):
        order = np.argsort(np.abs(along - t), kind="stable")
        chosen.add(int(next((i for i in order if int(i) not in chosen), order[0])))
    return sorted(chosen)
