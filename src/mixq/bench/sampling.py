"""Sampling the bit configurations that an MQ benchmark labels.

Two modes, both deterministic for a given seed (numpy ``default_rng``, PCG64) and both returning
*unique* configurations as tuples of weight bits in the model's layer order:

``"emq"`` (default, the EMQ / MQ-Bench-101 convention)
    The first and the last quantized layer are pinned at ``pinned_bits`` (8); every other layer draws
    its bit-width uniformly and independently from ``choices`` ({2, 3, 4}). Duplicates are redrawn.
    Uniform per-layer draws concentrate the model size around its mean (a sum of independent
    draws), so the smallest and largest models are rare.

``"size-spread"``
    Same pinning and choices, but the configurations are spread evenly over model size. The range of
    achievable parameter-weighted average bits ``[lo, hi]`` (all free layers at ``min(choices)`` /
    ``max(choices)``) is cut into ``n`` equal-width bins, and one configuration is made per bin:

    1. draw a target ``t`` uniformly inside the bin;
    2. draw a start configuration whose per-layer bits are tilted towards ``t`` (each layer picks the
       choice level ``k ~ Binomial(len(choices) - 1, q)`` with ``q = (t - lo) / (hi - lo)``), so the
       layers that end up low or high are random, not always the same ones;
    3. repair: while the average bits lie outside the bin, move a random free layer one choice level
       towards ``t``.

    Up to 50 attempts are made per bin to land inside it with a configuration not yet taken; if none
    does (a bin narrower than the smallest one-layer step, or too few distinct configurations), the
    unused configuration seen closest to the bin centre is taken. The final list is shuffled with the
    same generator, so a benchmark whose build was interrupted still covers the whole size range.

Average bits always count every layer, pinned ones included: ``sum(params * bits) / sum(params)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from mixq.errors import MixqError
from mixq.quant.primitives import MAX_BITS, MIN_BITS

MODES = ("emq", "size-spread")
DEFAULT_CHOICES = (2, 3, 4)
_ENUMERATE_LIMIT = 200_000  # enumerate the whole space when it is this small and n is a large part of it
_ATTEMPTS_PER_BIN = 50


def _check_inputs(
    layer_names: Sequence[str],
    layer_params: Sequence[int],
    n: int,
    mode: str,
    choices: Sequence[int],
    pinned_bits: int | None,
) -> tuple[tuple[int, ...], list[int]]:
    """Validate the arguments of :func:`sample_configs`; return sorted choices and free layer positions."""
    if mode not in MODES:
        raise MixqError(f"unknown sampling mode {mode!r}; expected one of {list(MODES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MixqError(f"number of configurations must be a positive integer, got {n!r}")
    names = list(layer_names)
    if not names:
        raise MixqError("cannot sample bit configurations for a model with no quantized layers")
    if len(set(names)) != len(names):
        raise MixqError("layer names must be unique")
    if len(layer_params) != len(names):
        raise MixqError(f"got {len(layer_params)} layer parameter counts for {len(names)} layers")
    if any(isinstance(p, bool) or int(p) != p or p <= 0 for p in layer_params):
        raise MixqError("layer parameter counts must be positive integers")
    chs = tuple(sorted(set(int(c) for c in choices))) if choices else ()
    if not chs or any(c < MIN_BITS or c > MAX_BITS for c in chs):
        raise MixqError(f"bit choices must be a non-empty set of bit-widths in {MIN_BITS}..{MAX_BITS}, got "
                        f"{list(choices) if choices else choices!r}")
    if pinned_bits is not None and not (MIN_BITS <= pinned_bits <= MAX_BITS):
        raise MixqError(f"pinned bits must be in {MIN_BITS}..{MAX_BITS} (or None for no pinning), got {pinned_bits}")
    pinned = {0, len(names) - 1} if pinned_bits is not None else set()
    free = [i for i in range(len(names)) if i not in pinned]
    space = len(chs) ** len(free)
    if n > space:
        raise MixqError(
            f"cannot draw {n} distinct configurations: with {len(free)} free layer(s) and bit choices "
            f"{list(chs)} only {space} exist"
        )
    return chs, free


def _base(n_layers: int, pinned_bits: int | None, fill: int) -> list[int]:
    bits = [fill] * n_layers
    if pinned_bits is not None:
        bits[0] = bits[-1] = pinned_bits
    return bits


def _sample_emq(
    n_layers: int, free: list[int], n: int, rng: np.random.Generator, chs: tuple[int, ...], pinned_bits: int | None
) -> list[tuple[int, ...]]:
    space = len(chs) ** len(free)
    out: list[tuple[int, ...]] = []
    if space <= _ENUMERATE_LIMIT and n > space // 2:
        # rejection sampling would crawl: enumerate the space and take a random subset
        picks = rng.permutation(space)[:n]
        for code in picks:
            bits = _base(n_layers, pinned_bits, chs[0])
            c = int(code)
            for i in free:
                bits[i] = chs[c % len(chs)]
                c //= len(chs)
            out.append(tuple(bits))
        return out
    seen: set[tuple[int, ...]] = set()
    arr = np.asarray(chs)
    while len(out) < n:
        bits = _base(n_layers, pinned_bits, chs[0])
        for i, b in zip(free, rng.choice(arr, size=len(free)), strict=True):
            bits[i] = int(b)
        t = tuple(bits)
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _sample_size_spread(
    params: np.ndarray, free: list[int], n: int, rng: np.random.Generator, chs: tuple[int, ...],
    pinned_bits: int | None,
) -> list[tuple[int, ...]]:
    n_layers = len(params)
    total = float(params.sum())

    def avg(bits: list[int]) -> float:
        return float(np.dot(params, bits)) / total

    lo = avg(_base(n_layers, pinned_bits, chs[0]))
    hi = avg(_base(n_layers, pinned_bits, chs[-1]))
    edges = np.linspace(lo, hi, n + 1)
    taken: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    k_max = len(chs) - 1
    for b in range(n):
        left, right = float(edges[b]), float(edges[b + 1])
        centre = 0.5 * (left + right)
        tol = 1e-12 * max(1.0, hi)
        best: tuple[float, tuple[int, ...]] | None = None
        for _ in range(_ATTEMPTS_PER_BIN):
            target = float(rng.uniform(left, right)) if right > left else left
            q = (target - lo) / (hi - lo) if hi > lo else 0.5
            levels = _base(n_layers, None, 0)
            for i, k in zip(free, rng.binomial(k_max, q, size=len(free)), strict=True):
                levels[i] = int(k)
            bits = [chs[k] for k in levels]
            if pinned_bits is not None:
                bits[0] = bits[-1] = pinned_bits
            # repair towards the target until inside the bin; give up after a bounded number of steps
            for _step in range(len(free) * (k_max + 1) + 1):
                a = avg(bits)
                if left - tol <= a <= right + tol:
                    break
                up = a < target
                movable = [i for i in free if (levels[i] < k_max if up else levels[i] > 0)]
                if not movable:
                    break
                i = movable[int(rng.integers(len(movable)))]
                levels[i] += 1 if up else -1
                bits[i] = chs[levels[i]]
            t = tuple(bits)
            if t in taken:
                continue
            a = avg(bits)
            if left - tol <= a <= right + tol:
                best = (0.0, t)
                break
            dist = abs(a - centre)
            if best is None or dist < best[0]:
                best = (dist, t)
        if best is None:
            # every attempt hit a taken configuration: fall back to any unused one (space is tiny)
            best = _fallback_unused(n_layers, free, chs, pinned_bits, taken, centre, avg)
        taken.add(best[1])
        out.append(best[1])
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]


def _fallback_unused(
    n_layers: int, free: list[int], chs: tuple[int, ...], pinned_bits: int | None,
    taken: set[tuple[int, ...]], centre: float, avg: Callable[[list[int]], float],
) -> tuple[float, tuple[int, ...]]:
    """The unused configuration closest to ``centre`` (only reached for small spaces)."""
    best: tuple[float, tuple[int, ...]] | None = None
    for combo in itertools.islice(itertools.product(chs, repeat=len(free)), _ENUMERATE_LIMIT):
        bits = _base(n_layers, pinned_bits, chs[0])
        for i, b in zip(free, combo, strict=True):
            bits[i] = b
        t = tuple(bits)
        if t in taken:
            continue
        d = abs(avg(bits) - centre)
        if best is None or d < best[0]:
            best = (d, t)
    if best is None:  # pragma: no cover - guarded by the capacity check
        raise MixqError("ran out of distinct bit configurations")
    return best


def sample_configs(
    layer_names: Sequence[str],
    layer_params: Sequence[int],
    n: int,
    seed: int = 0,
    mode: str = "emq",
    choices: Sequence[int] = DEFAULT_CHOICES,
    pinned_bits: int | None = 8,
) -> list[tuple[int, ...]]:
    """Draw ``n`` distinct bit configurations (see the module docstring for the two modes).

    Args:
        layer_names: quantized layer names in model order (only their number and uniqueness matter).
        layer_params: weight parameter count of each layer (used for model size).
        n: number of configurations.
        seed: generator seed; the same arguments always give the same list.
        mode: ``"emq"`` (uniform per-layer draws) or ``"size-spread"`` (even spread over model size).
        choices: bit-widths the free layers draw from.
        pinned_bits: bit-width of the first and last layer; ``None`` lets them draw from ``choices``.

    Returns:
        ``n`` unique tuples of bits, one entry per layer in ``layer_names`` order.

    Raises:
        MixqError: unknown mode, bad counts or choices, or more configurations asked than exist.
    """
    chs, free = _check_inputs(layer_names, layer_params, n, mode, choices, pinned_bits)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MixqError(f"sampling seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    n_layers = len(layer_names)
    if mode == "emq":
        return _sample_emq(n_layers, free, n, rng, chs, pinned_bits)
    params = np.asarray([int(p) for p in layer_params], dtype=np.float64)
    return _sample_size_spread(params, free, n, rng, chs, pinned_bits)


def average_bits(bits: Sequence[int], layer_params: Sequence[int]) -> float:
    """Parameter-weighted average bit-width of a configuration.

    Args:
        bits: one bit-width per layer.
        layer_params: weight parameter count per layer.

    Returns:
        ``sum(params * bits) / sum(params)``.
    """
    total = sum(int(p) for p in layer_params)
    return math.fsum(int(p) * int(b) for p, b in zip(layer_params, bits, strict=True)) / total
