"""The multiple-choice knapsack ILP behind bit allocation: one choice per layer, budgets as linear rows.

Every layer ``l`` picks exactly one candidate bit-width ``bits[k]``; the choice is a binary variable
``x[l, k]``. The ILP is::

    minimise    sum_{l,k} cost[l, k] * x[l, k]
    subject to  sum_k x[l, k] = 1                                    for every layer l
                sum_{l,k} params[l] * bits[k] * x[l, k]  <= budget_bits_params     (model size)
                sum_{l,k} macs[l] * bits[k] * act_bits * x[l, k] <= max_bitops     (optional)
                x[l, k] = 1 for the choice of every pinned ("fixed") layer

and is solved exactly with ``scipy.optimize.milp`` (HiGHS branch and bound). ``cost`` is any per-layer
additive proxy of the accuracy loss, lower is better: a sensitivity table (output MSE of quantizing only
that layer), a Hessian-trace x quantization-noise product, ...

Joint weight and input (activation) bits (:func:`allocate_pairs`): a layer's choice is then a pair
``(w_i, a_j)`` of a weight and an input bit-width, one binary variable per pair. The size row reads
``params[l] * w_i`` and the BitOps row ``macs[l] * w_i * a_j``: bilinear in the bits, but linear in the
one-hot pair variables, so the problem stays an ILP.

The solvers take arrays only (no model), so every search may use them: :mod:`mixq.allocate` turns proxies
into costs and a BitConfig; EvoQ starts its population from the optimum of its own sensitivity table.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from mixq.errors import MixqError

DEFAULT_BIT_CHOICES = (2, 3, 4, 5, 6, 7, 8)
_BUDGET_RTOL = 1e-12  # same tolerance as QuantModel.fits
_COST_SCALE = 1e3  # the largest per-layer cost spread after scaling (see _solve)
_MAX_RESOLVES = 3


@dataclass(frozen=True)
class AllocationResult:
    """The outcome of :func:`allocate_bits` or :func:`allocate_pairs`.

    Attributes:
        bits: chosen weight bit-width per layer, in input order.
        objective: ``sum_l cost[l, chosen k]`` in the units of the cost matrix (fixed layers count when
            their bits are a candidate; otherwise they add nothing).
        bit_params: ``sum_l params[l] * bits[l]`` of the choice.
        bitops: ``sum_l macs[l] * bits[l] * act_bits`` of the choice, or None when no MACs were given.
        status: ``"optimal"`` (proven optimal), ``"time_limit"`` (best solution found before the time
            limit, maybe not optimal) or ``"fixed"`` (every layer was pinned; no solve needed).
        seconds: wall time of the whole allocation (checks, model building and solving).
        acts: chosen input (activation) bit-width per layer (:func:`allocate_pairs`), or None for a
            weight-only allocation (every input at ``act_bits``).
    """

    bits: tuple[int, ...]
    objective: float
    bit_params: float
    bitops: float | None
    status: str
    seconds: float
    acts: tuple[int, ...] | None = None


# -- input checks ---------------------------------------------------------------------------------
def check_choices(bit_choices: Sequence[int], what: str = "bit_choices") -> tuple[int, ...]:
    """Candidate bit-widths as distinct positive ints.

    Args:
        bit_choices: the candidates.
        what: their name in the error message.

    Returns:
        The candidates as a tuple of ``int``.

    Raises:
        MixqError: none given, a non-positive or non-integer entry, or a repeat.
    """
    choices = tuple(bit_choices)
    if not choices:
        raise MixqError(f"{what} must name at least one bit-width, got none")
    for b in choices:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0:
            raise MixqError(f"{what} must be positive integers, got {list(choices)}")
    if len(set(choices)) != len(choices):
        raise MixqError(f"{what} must not repeat a bit-width, got {list(choices)}")
    return tuple(int(b) for b in choices)


def _check_counts(values: Sequence[float], n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise MixqError(f"{what} must have one entry per layer ({n}), got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if bad.size:
        raise MixqError(f"{what} must be finite and non-negative; layer {int(bad[0])} has {arr[bad[0]]}")
    return arr


def _check_limit(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise MixqError(f"{what} must be a positive finite number, got {value!r}")
    return v


def _check_fixed(fixed: Mapping[int, int] | None, n_layers: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for layer, bits in dict(fixed or {}).items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise MixqError(f"fixed layer index {layer!r} is out of range; expected 0..{n_layers - 1}")
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
            raise MixqError(f"fixed bits of layer {int(layer)} must be a positive integer, got {bits!r}")
        out[int(layer)] = int(bits)
    return out


def _check_fixed_pairs(fixed: Mapping[int, int | tuple[int, int]] | None, n_layers: int
                       ) -> dict[int, tuple[int, int | None]]:
    """Layer index -> (pinned weight bits, pinned input bits or None when only the weight is pinned)."""
    out: dict[int, tuple[int, int | None]] = {}
    for layer, value in dict(fixed or {}).items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layers:
            raise MixqError(f"fixed layer index {layer!r} is out of range; expected 0..{n_layers - 1}")
        pair = tuple(value) if isinstance(value, (tuple, list)) else (value, None)
        if len(pair) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0
                                 for b in pair if b is not None) or pair[0] is None:
            raise MixqError(f"fixed bits of layer {int(layer)} must be a positive weight bit-width or a (weight, "
                            f"input) pair of them, got {value!r}")
        out[int(layer)] = (int(pair[0]), None if pair[1] is None else int(pair[1]))
    return out


@contextlib.contextmanager
def _solver_chatter_silenced() -> Iterator[None]:
    """Send what C code writes to file descriptor 1 to the null device for the block.

    HiGHS (as shipped in scipy 1.17) prints debug lines such as
    ``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();`` straight to descriptor 1,
    whatever ``disp`` says; a user's progress output and tables must not be interleaved with them. Where
    descriptor 1 cannot be duplicated (an embedding without one), nothing is redirected.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _is_integral(a: np.ndarray) -> bool:
    return bool(np.all(a == np.round(a)))


def _check_finite_costs(cost_arr: np.ndarray, choices: tuple[int, ...], pinned: Mapping[int, int],
                        what: str = "cost") -> None:
    """Raise on a non-finite cost among the entries that can be chosen (a pinned layer: its pinned entry)."""
    for layer in range(cost_arr.shape[0]):
        if layer in pinned:
            cols = [choices.index(pinned[layer])] if pinned[layer] in choices else []
        else:
            cols = list(range(cost_arr.shape[1]))
        row = cost_arr[layer, cols]
        if not np.all(np.isfinite(row)):
            bad = cols[int(np.flatnonzero(~np.isfinite(row))[0])]
            raise MixqError(
                f"{what} of layer {layer} at {choices[bad]} bits is {cost_arr[layer, bad]}; costs must be finite"
            )


@dataclass(frozen=True)
class _Resources:
    """Size and BitOps of a bit choice, and the infeasible-budget messages."""

    params: np.ndarray  # (L,) weight parameters per layer
    macs: np.ndarray | None  # (L,) MACs per sample per layer, or None
    act_bits: int

    def size_of(self, bits: Sequence[int]) -> float:
        return float(np.dot(self.params, np.asarray(bits, dtype=np.float64)))

    def ops_of(self, bits: Sequence[int]) -> float | None:
        if self.macs is None:
            return None
        return float(np.dot(self.macs, np.asarray(bits, dtype=np.float64))) * self.act_bits

    def check_fits(
        self, smallest: list[int], budget: float | None, max_ops: float | None, n_free: int, n_pinned: int,
        min_bits: int,
    ) -> None:
        """Raise when the smallest configuration is over the size or the BitOps budget."""
        if budget is not None and self.size_of(smallest) > budget * (1 + _BUDGET_RTOL):
            need, total = self.size_of(smallest), float(self.params.sum())
            avg = (lambda v: v / total) if total > 0 else (lambda v: math.inf)
            raise MixqError(
                f"budget below the all-minimum-bits size: the smallest configuration ({n_free} free layer(s) "
                f"at {min_bits} bits, {n_pinned} fixed layer(s) at their bits) needs {avg(need):.4f} avg bits "
                f"({need:.0f} bit-params, {need / 8 / 2**20:.4f} MB), budget {avg(budget):.4f} avg bits "
                f"({budget:.0f} bit-params, {budget / 8 / 2**20:.4f} MB)"
            )
        need_ops = self.ops_of(smallest)
        if max_ops is not None and need_ops is not None and need_ops > max_ops * (1 + _BUDGET_RTOL):
            raise MixqError(
                f"BitOps budget below the all-minimum-bits BitOps: the smallest configuration "
                f"({n_free} free layer(s) at {min_bits} bits, {n_pinned} fixed at their bits, "
                f"{self.act_bits}-bit activations) needs {need_ops / 1e9:.6g} GBitOps, budget "
                f"{max_ops / 1e9:.6g} GBitOps"
            )


# -- the solver -----------------------------------------------------------------------------------
def allocate_bits(
    cost: np.ndarray,
    bit_choices: Sequence[int],
    params: Sequence[int],
    budget_bits_params: float | None = None,
    macs: Sequence[int] | None = None,
    max_bitops: float | None = None,
    act_bits: int = 8,
    fixed: Mapping[int, int] | None = None,
    time_limit: float | None = None,
) -> AllocationResult:
    """Choose one bit-width per layer minimising the summed cost under size and BitOps budgets (ILP).

    Infeasible budgets are detected before the solver runs: the smallest configuration (every free
    layer at the smallest candidate, fixed layers at their bits) minimises size and BitOps at the same
    time, so the problem is feasible exactly when that configuration fits both budgets.

    Args:
        cost: ``(L, K)`` cost of giving layer ``l`` the bit-width ``bit_choices[k]``; lower is better.
            Must be finite (for a fixed layer only its pinned entry is read).
        bit_choices: the ``K`` candidate bit-widths (distinct positive integers, any order).
        params: weight parameters per layer (``L`` entries).
        budget_bits_params: bound on ``sum params[l] * bits[l]`` (an average-bits budget ``a`` is
            ``a * sum(params)``; a size budget ``s`` MB is ``s * 8 * 2**20``), or None for no size limit.
        macs: multiply-accumulates per sample per layer; needed for ``max_bitops``, and when given the
            result reports the BitOps of the choice.
        max_bitops: bound on ``sum macs[l] * bits[l] * act_bits`` (see the module docstring), or None.
        act_bits: activation bits used in the BitOps count.
        fixed: layer index -> pinned bit-width (e.g. first and last layer at 8). A pinned width need not
            be a candidate; it then adds nothing to the objective.
        time_limit: solver time limit in seconds (None: no limit).

    Returns:
        The :class:`AllocationResult`.

    Raises:
        MixqError: malformed input, a non-finite cost, a budget below the smallest configuration, or a
            solver failure.
    """
    start = time.perf_counter()
    choices = check_choices(bit_choices)
    cost_arr = np.asarray(cost, dtype=np.float64)
    if cost_arr.ndim != 2 or cost_arr.shape[1] != len(choices) or cost_arr.shape[0] == 0:
        raise MixqError(
            f"cost must be an array (layers, {len(choices)}) with one column per bit choice {list(choices)}, "
            f"got shape {cost_arr.shape}"
        )
    n_layers, n_choices = cost_arr.shape
    params_arr = _check_counts(params, n_layers, "params")
    macs_arr = None if macs is None else _check_counts(macs, n_layers, "macs")
    budget = _check_limit(budget_bits_params, "budget_bits_params")
    max_ops = _check_limit(max_bitops, "max_bitops")
    if max_ops is not None and macs_arr is None:
        raise MixqError("max_bitops needs the per-layer MACs (macs=...)")
    if isinstance(act_bits, bool) or not isinstance(act_bits, (int, np.integer)) or act_bits <= 0:
        raise MixqError(f"act_bits must be a positive integer, got {act_bits!r}")
    pinned = _check_fixed(fixed, n_layers)
    free = [layer for layer in range(n_layers) if layer not in pinned]

    _check_finite_costs(cost_arr, choices, pinned)
    res = _Resources(params_arr, macs_arr, act_bits)
    bits_vec = np.asarray(choices, dtype=np.float64)
    # feasibility, before any solving: the smallest configuration minimises both resources
    smallest = [pinned.get(layer, min(choices)) for layer in range(n_layers)]
    size_limit = None if budget is None else budget * (1 + _BUDGET_RTOL)
    ops_limit = None if max_ops is None else max_ops * (1 + _BUDGET_RTOL)
    res.check_fits(smallest, budget, max_ops, len(free), len(pinned), min(choices))
    size_of, ops_of = res.size_of, res.ops_of

    def objective_of(bits: Sequence[int]) -> float:
        total = 0.0
        for layer, b in enumerate(bits):
            if layer in pinned and b not in choices:
                continue
            total += float(cost_arr[layer, choices.index(b)])
        return total

    def result(bits: list[int], status: str) -> AllocationResult:
        return AllocationResult(
            bits=tuple(bits),
            objective=objective_of(bits),
            bit_params=size_of(bits),
            bitops=ops_of(bits),
            status=status,
            seconds=time.perf_counter() - start,
        )

    if not free:
        return result(smallest, "fixed")

    rows: list[tuple[np.ndarray, float]] = []  # resource rows over the free layers, net of the pinned ones
    if size_limit is not None:
        rows.append((np.outer(params_arr[free], bits_vec),
                     size_limit - size_of([pinned.get(i, 0) for i in range(n_layers)])))
    if ops_limit is not None and macs_arr is not None:
        rows.append((np.outer(macs_arr[free] * act_bits, bits_vec),
                     ops_limit - (ops_of([pinned.get(i, 0) for i in range(n_layers)]) or 0.0)))
    chosen, status = _solve(cost_arr[free], rows, time_limit)
    bits = list(smallest)
    for layer, k in zip(free, chosen):
        bits[layer] = choices[k]
    return result(bits, status)


def allocate_pairs(
    weight_cost: np.ndarray,
    bit_choices: Sequence[int],
    act_cost: np.ndarray,
    act_choices: Sequence[int],
    params: Sequence[int],
    budget_bits_params: float | None = None,
    macs: Sequence[int] | None = None,
    max_bitops: float | None = None,
    fixed: Mapping[int, int | tuple[int, int]] | None = None,
    time_limit: float | None = None,
) -> AllocationResult:
    """Choose a weight and an input (activation) bit-width per layer under size and BitOps budgets (ILP).

    Every layer picks one pair ``(w, a)`` of ``bit_choices x act_choices``; the pair costs
    ``weight_cost[l, w] + act_cost[l, a]``. The size row is ``sum params[l] * w_l`` and the BitOps row
    ``sum macs[l] * w_l * a_l``, linear in the one-hot pair variables (see the module docstring).
    Infeasible budgets are detected before the solver runs: every layer at its smallest open weight and
    input bits is the cheapest configuration in size and in BitOps at once.

    Args:
        weight_cost: ``(L, Kw)`` cost of giving layer ``l`` the weight bits ``bit_choices[i]``; lower is better.
        bit_choices: the ``Kw`` candidate weight bit-widths (distinct positive integers).
        act_cost: ``(L, Ka)`` cost of giving layer ``l`` the input bits ``act_choices[j]``, in the units of
            ``weight_cost``.
        act_choices: the ``Ka`` candidate input bit-widths (distinct positive integers).
        params: weight parameters per layer.
        budget_bits_params: bound on ``sum params[l] * w_l`` (see :func:`allocate_bits`), or None.
        macs: multiply-accumulates per sample per layer; needed for ``max_bitops``, and when given the
            result reports the BitOps of the choice.
        max_bitops: bound on ``sum macs[l] * w_l * a_l``, or None.
        fixed: layer index -> pinned weight bits (the input bits are still chosen) or a pinned
            ``(weight, input)`` pair. A pinned width that is not a candidate adds nothing to the objective.
        time_limit: solver time limit in seconds (None: no limit).

    Returns:
        The :class:`AllocationResult`, with ``acts`` set.

    Raises:
        MixqError: malformed input, a non-finite cost, a budget below the smallest configuration, or a
            solver failure.
    """
    start = time.perf_counter()
    w_choices = check_choices(bit_choices)
    a_choices = check_choices(act_choices, "act_choices")
    wc = np.asarray(weight_cost, dtype=np.float64)
    if wc.ndim != 2 or wc.shape[1] != len(w_choices) or wc.shape[0] == 0:
        raise MixqError(f"weight_cost must be an array (layers, {len(w_choices)}) with one column per bit choice "
                        f"{list(w_choices)}, got shape {wc.shape}")
    n_layers = wc.shape[0]
    ac = np.asarray(act_cost, dtype=np.float64)
    if ac.shape != (n_layers, len(a_choices)):
        raise MixqError(f"act_cost must be an array ({n_layers}, {len(a_choices)}) with one column per act choice "
                        f"{list(a_choices)}, got shape {ac.shape}")
    params_arr = _check_counts(params, n_layers, "params")
    macs_arr = None if macs is None else _check_counts(macs, n_layers, "macs")
    budget = _check_limit(budget_bits_params, "budget_bits_params")
    max_ops = _check_limit(max_bitops, "max_bitops")
    if max_ops is not None and macs_arr is None:
        raise MixqError("max_bitops needs the per-layer MACs (macs=...)")
    pinned = _check_fixed_pairs(fixed, n_layers)
    pinned_w = {layer: w for layer, (w, _) in pinned.items()}
    pinned_a = {layer: a for layer, (_, a) in pinned.items() if a is not None}
    _check_finite_costs(wc, w_choices, pinned_w, "weight_cost")
    _check_finite_costs(ac, a_choices, pinned_a, "act_cost")

    # the columns: every candidate, then pinned widths that are not candidates (open to their layer only)
    w_all = list(w_choices) + sorted(set(pinned_w.values()) - set(w_choices))
    a_all = list(a_choices) + sorted(set(pinned_a.values()) - set(a_choices))
    w_open = np.array([[w == pinned_w[i] if i in pinned_w else w in w_choices for w in w_all]
                       for i in range(n_layers)])
    a_open = np.array([[a == pinned_a[i] if i in pinned_a else a in a_choices for a in a_all]
                       for i in range(n_layers)])
    w_term = np.zeros((n_layers, len(w_all)))
    w_term[:, :len(w_choices)] = np.where(w_open[:, :len(w_choices)], wc, 0.0)
    a_term = np.zeros((n_layers, len(a_all)))
    a_term[:, :len(a_choices)] = np.where(a_open[:, :len(a_choices)], ac, 0.0)
    w_vec, a_vec = np.asarray(w_all, dtype=np.float64), np.asarray(a_all, dtype=np.float64)
    ka = len(a_all)

    def size_of(bits: np.ndarray) -> float:
        return float(np.dot(params_arr, bits))

    def ops_of(bits: np.ndarray, acts: np.ndarray) -> float | None:
        return None if macs_arr is None else float(np.dot(macs_arr, bits * acts))

    # feasibility, before any solving: the smallest open widths minimise both resources
    small_w = np.array([w_vec[w_open[i]].min() for i in range(n_layers)])
    small_a = np.array([a_vec[a_open[i]].min() for i in range(n_layers)])
    n_pinned = len(pinned)
    _Resources(params_arr, macs_arr, 1).check_fits([int(b) for b in small_w], budget, None, n_layers - n_pinned,
                                                   n_pinned, min(w_choices))
    need_ops = ops_of(small_w, small_a)
    if max_ops is not None and need_ops is not None and need_ops > max_ops * (1 + _BUDGET_RTOL):
        raise MixqError(
            f"BitOps budget below the all-minimum BitOps: the smallest configuration ({n_layers - n_pinned} free "
            f"layer(s) at {min(w_choices)}-bit weights and {min(a_choices)}-bit inputs, {n_pinned} fixed at their "
            f"bits) needs {need_ops / 1e9:.6g} GBitOps ({need_ops:.6g} BitOps), budget {max_ops / 1e9:.6g} GBitOps "
            f"({max_ops:.6g} BitOps)"
        )

    allowed = (w_open[:, :, None] & a_open[:, None, :]).reshape(n_layers, -1)
    if np.all(allowed.sum(axis=1) == 1):
        chosen, status = [int(k) for k in np.argmax(allowed, axis=1)], "fixed"
    else:
        cost = (w_term[:, :, None] + a_term[:, None, :]).reshape(n_layers, -1)
        rows: list[tuple[np.ndarray, float]] = []
        if budget is not None:
            rows.append((np.repeat(params_arr[:, None] * w_vec[None, :], ka, axis=1), budget * (1 + _BUDGET_RTOL)))
        if max_ops is not None and macs_arr is not None:
            ops = macs_arr[:, None, None] * w_vec[None, :, None] * a_vec[None, None, :]
            rows.append((ops.reshape(n_layers, -1), max_ops * (1 + _BUDGET_RTOL)))
        chosen, status = _solve(cost, rows, time_limit, allowed)
    wi = np.asarray(chosen) // ka
    ai = np.asarray(chosen) % ka
    bits, acts = w_vec[wi], a_vec[ai]
    layers = np.arange(n_layers)
    return AllocationResult(
        bits=tuple(int(b) for b in bits),
        objective=float(w_term[layers, wi].sum() + a_term[layers, ai].sum()),
        bit_params=size_of(bits),
        bitops=ops_of(bits, acts),
        status=status,
        seconds=time.perf_counter() - start,
        acts=tuple(int(a) for a in acts),
    )


def _solve(
    cost: np.ndarray,
    resources: Sequence[tuple[np.ndarray, float]],
    time_limit: float | None,
    allowed: np.ndarray | None = None,
) -> tuple[list[int], str]:
    """Solve the one-choice-per-row ILP; returns the chosen column per row and the status.

    Row ``l`` of every matrix is a layer, column ``k`` one of its choices (a bit-width, or a weight and
    input bit-width pair); the binary variable ``x[l, k]`` picks it. Each resource is a coefficient matrix
    ``coef`` (same shape as ``cost``) and a room: ``sum coef * x <= room``.

    Numerics: each cost row is shifted by its minimum (one choice per layer, so the argmin is unchanged)
    and all rows are scaled together so the largest spread is ``_COST_SCALE``; HiGHS' absolute gap
    (1e-6) is then negligible against real cost differences, and ``mip_rel_gap`` is 0. Resource rows
    with integral coefficients get the room ``floor(room) + 0.5``; the rounded solution is checked
    against the true room and the ILP is re-solved with a tighter row in the (rare) case that the
    solver's feasibility tolerance let it through.

    Args:
        cost: ``(n, k)`` cost of each choice (entries outside ``allowed`` are not read).
        resources: ``(coef, room)`` pairs, one per budget row, in constraint order.
        time_limit: HiGHS time limit in seconds, or None.
        allowed: ``(n, k)`` booleans, the choices open to each row (None: all); closed ones get the upper
            bound 0.

    Returns:
        ``(chosen column per row, "optimal" | "time_limit")``.
    """
    n, k = cost.shape
    if allowed is None:
        reduced = cost - cost.min(axis=1, keepdims=True)
        bounds = Bounds(0.0, 1.0)
    else:
        row_min = np.where(allowed, cost, np.inf).min(axis=1, keepdims=True)
        reduced = np.where(allowed, cost - row_min, 0.0)
        bounds = Bounds(0.0, allowed.ravel().astype(np.float64))
    spread = float(reduced.max())
    c = (reduced * (_COST_SCALE / spread) if spread > 0 else reduced).ravel()

    rows = np.repeat(np.arange(n), k)
    one_hot = sparse.csr_matrix((np.ones(n * k), (rows, np.arange(n * k))), shape=(n, n * k))
    flat: list[tuple[np.ndarray, float, bool]] = []  # (coefficients, room, integral)
    for coef, room in resources:
        row = np.asarray(coef, dtype=np.float64).ravel()
        flat.append((row, float(room), _is_integral(row)))
    rhs = [math.floor(room) + 0.5 if integral else room for _, room, integral in flat]

    options: dict[str, object] = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    for _ in range(_MAX_RESOLVES):
        constraints = [LinearConstraint(one_hot, 1.0, 1.0)]
        constraints += [LinearConstraint(coef[None, :], -np.inf, r) for (coef, _, _), r in zip(flat, rhs)]
        with _solver_chatter_silenced():
            res = milp(c, integrality=np.ones(n * k), bounds=bounds, constraints=constraints, options=options)
        if res.x is None or res.status not in (0, 1):
            raise MixqError(f"the bit-allocation ILP failed: {res.message} (HiGHS status {res.status})")
        chosen = [int(i) for i in np.argmax(res.x.reshape(n, k), axis=1)]
        x = np.zeros(n * k)
        x[np.arange(n) * k + np.asarray(chosen)] = 1.0
        excess = [float(coef @ x) - room for coef, room, _ in flat]
        if all(e <= 0 for e in excess):
            return chosen, "optimal" if res.status == 0 else "time_limit"
        # tolerance slip: tighten every violated row below the rejected solution and solve again
        rhs = [
            min(r, float(coef @ x) - (1.0 if integral else max(1e-9 * abs(room), 1e-12))) if e > 0 else r
            for (coef, room, integral), r, e in zip(flat, rhs, excess)
        ]
    raise MixqError("the bit-allocation ILP returned solutions over budget (numerical trouble); "
                    "try a slightly different budget")
