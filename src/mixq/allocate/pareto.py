"""The accuracy-cost trade-off of a proxy + ILP: one sweep of budgets, a non-dominated front, each point evaluated.

The proxy statistics (and, with input choices, the activation table) are computed once; the ILP is then
solved for a grid of budgets on one cost axis (average weight bits, MB or BitOps;
:class:`~mixq.quant.cost.CostModel`) from the cheapest configuration (every layer at its smallest bits) to
the dearest (every layer at its largest), evenly spaced, plus the cost of every uniform configuration in
the search space, so that each uniform point is matched or beaten. Repeated configurations are dropped, the
non-dominated (cost, proxy objective) ones kept (:func:`mixq.pareto.pareto_indices`) and thinned to a few
points spread over the cost range (:func:`mixq.pareto.thin`); only those are evaluated.

    front, budgets = sweep_front(costs, (2, 3, 4, 8), cost_model, "bitops", points=24)
    record = run_allocation_pareto(task, "sensitivity", cost="bitops", act_choices=(4, 6, 8), out="runs/p")

The record is ``OUT/pareto.json`` in the shape :mod:`mixq.reports.pareto` reads (method ``"allocate"``);
``mixq allocate --pareto`` then draws ``pareto.png`` and ``report.md`` from it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixq.allocate.ilp import DEFAULT_BIT_CHOICES, allocate_bits, allocate_pairs
from mixq.allocate.run import act_costs, check_act_choices
from mixq.bits import MB, VALID_BITS, BitConfig
from mixq.emq.proxy import proxy_stats_on
from mixq.errors import MixqError
from mixq.evaluation.task import Task
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.fileio import atomic_write_json, locked
from mixq.pareto import pareto_indices, thin
from mixq.paths import output_folder
from mixq.provenance import versions
from mixq.quant.cost import COSTS, CostModel
from mixq.quant.model import QuantModel

UNIFORM_BITS = (2, 3, 4, 8)  # the uniform weight bit-widths evaluated beside the front


@dataclass(frozen=True)
class SweepPoint:
    """One configuration the budget sweep found.

    Attributes:
        bits: weight bits per layer (model order).
        acts: input bits per layer, or None when only weights were allocated (inputs at the model's bits).
        objective: the proxy's summed cost of the configuration (lower = predicted more accurate).
        cost: its cost on the swept axis.
        budget: the smallest budget of the sweep that gave it.
    """

    bits: tuple[int, ...]
    acts: tuple[int, ...] | None
    objective: float
    cost: float
    budget: float

    def config(self, layers: Sequence[str]) -> BitConfig:
        """The :class:`BitConfig` (input bits of every layer when they were allocated)."""
        return BitConfig(dict(zip(layers, self.bits)), {} if self.acts is None else dict(zip(layers, self.acts)))


def _check_count(value: int, what: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise MixqError(f"{what} must be an integer of at least {least}, got {value!r}")
    return int(value)


def sweep_budgets(cost_model: CostModel, cost: str, points: int, bit_choices: Sequence[int],
                  act_choices: Sequence[int] | None = None) -> list[float]:
    """The budgets of a sweep: ``points`` evenly spaced from the cheapest to the dearest configuration, plus
    the cost of every uniform configuration of the search space, ascending and without repeats.

    Args:
        cost_model: the model's parameters and MACs.
        cost: the axis, one of :data:`~mixq.quant.cost.COSTS`.
        points: evenly spaced budgets (at least 2).
        bit_choices: candidate weight bit-widths.
        act_choices: candidate input bit-widths (None: inputs at ``cost_model.act_bits``).

    Returns:
        The budgets.
    """
    if cost not in COSTS:
        raise MixqError(f"cost must be one of {list(COSTS)}, got {cost!r}")
    points = _check_count(points, "the number of budgets", 2)
    acts = list(act_choices) if act_choices else [cost_model.act_bits]
    lo, hi = cost_model.cost_range(cost, bit_choices, act_choices)
    uniform = [cost_model.cost_of(cost, w, a) for w in bit_choices for a in acts]
    return sorted(set(np.linspace(lo, hi, points).tolist()) | set(uniform))


def sweep_front(
    weight_cost: np.ndarray,
    bit_choices: Sequence[int],
    cost_model: CostModel,
    cost: str = "bitops",
    points: int = 24,
    act_cost: np.ndarray | None = None,
    act_choices: Sequence[int] | None = None,
    time_limit: float | None = None,
) -> tuple[list[SweepPoint], list[float], int]:
    """Solve the ILP for every budget of :func:`sweep_budgets` and keep the non-dominated configurations.

    Args:
        weight_cost: ``(layers, len(bit_choices))`` proxy costs (lower = better).
        bit_choices: candidate weight bit-widths.
        cost_model: parameters and MACs of the layers (their order is that of the cost rows).
        cost: the swept axis: ``"bits"`` (average weight bits), ``"mb"`` or ``"bitops"``.
        points: evenly spaced budgets.
        act_cost: ``(layers, len(act_choices))`` input costs in the units of ``weight_cost``, with ``act_choices``.
        act_choices: candidate input bit-widths (None: weights only, inputs at ``cost_model.act_bits``).
        time_limit: solver time limit per budget, in seconds.

    Returns:
        ``(front, budgets, distinct)``: the non-dominated points, cheapest first (each within the budget that
        gave it); the budgets swept; how many distinct configurations the sweep found.
    """
    if (act_choices is None) != (act_cost is None):
        raise MixqError("act_cost and act_choices go together: give both for a W/A sweep, or neither")
    budgets = sweep_budgets(cost_model, cost, points, bit_choices, act_choices)
    params, macs = list(cost_model.params), list(cost_model.macs)
    found: dict[tuple, SweepPoint] = {}
    for b in budgets:
        limits = {"bits": {"budget_bits_params": b * cost_model.total_params},
                  "mb": {"budget_bits_params": b * MB}, "bitops": {"max_bitops": b}}[cost]
        if act_choices is None:
            res = allocate_bits(weight_cost, bit_choices, params, macs=macs, act_bits=cost_model.act_bits,
                                time_limit=time_limit, **limits)
        else:
            res = allocate_pairs(weight_cost, bit_choices, act_cost, act_choices, params, macs=macs,
                                 time_limit=time_limit, **limits)
        key = (res.bits, res.acts)
        if key not in found:
            value = cost_model.cost_of(cost, res.bits, res.acts)
            found[key] = SweepPoint(res.bits, res.acts, res.objective, value, b)
    points_found = list(found.values())
    keep = pareto_indices([[p.cost, p.objective] for p in points_found])
    return [points_found[i] for i in keep], budgets, len(points_found)


def run_allocation_pareto(
    task: Task,
    proxy: str,
    *,
    cost: str = "bitops",
    points: int = 24,
    front_points: int = 10,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
    act_choices: Sequence[int] | None = None,
    proxy_batch: int = 64,
    act_bits: int = 8,
    uniform_bits: Sequence[int] = UNIFORM_BITS,
    calibrate_points: bool = False,
    calibration: CalibrationConfig | None = None,
    progress: bool = True,
    out: str | os.PathLike,
) -> dict[str, Any]:
    """Sweep the ILP's budgets on a task, evaluate the thinned front, uniform configurations and FP32.

    Writes ``OUT/front/NN/config.json`` for every front point (``NN`` counts from the cheapest) and
    ``OUT/pareto.json`` (module docstring); the report is drawn from it by
    :func:`mixq.reports.pareto.write_pareto_report`.

    Args:
        task: model, calibration samples (the first ``proxy_batch`` feed the proxy) and evaluation split.
        proxy: registered name or ``genotype.json``; ``"sensitivity"`` for input choices.
        cost: the cost axis: ``"bitops"`` (default), ``"mb"`` or ``"bits"``.
        points: evenly spaced budgets of the sweep (at least 2).
        front_points: at most this many front points are evaluated (at least 2).
        bit_choices: candidate weight bit-widths.
        act_choices: candidate input bit-widths chosen with the weights (needs ``proxy="sensitivity"``).
        proxy_batch: images for the proxy statistics and the activation table.
        act_bits: activation bits of every input when ``act_choices`` is None, of the uniform points and of
            the tables' reference.
        uniform_bits: weight bit-widths of the uniform points evaluated beside the front.
        calibrate_points: also feature-calibrate every front and uniform point, each from a fresh copy of the
            uncalibrated model, and report ``top1_calibrated``.
        calibration: calibration settings (default ``CalibrationConfig(seed=task.seed)``).
        progress: progress bars.
        out: output folder (locked for the run).

    Returns:
        The ``pareto.json`` dict.

    Raises:
        MixqError: bad input, or another run holding ``out``.
    """
    acts = check_act_choices(proxy, act_choices)
    if cost not in COSTS:
        raise MixqError(f"cost must be one of {list(COSTS)}, got {cost!r}")
    points = _check_count(points, "the number of budgets (--pareto-budgets)", 2)
    front_points = _check_count(front_points, "the number of front points (--front-points)", 2)
    bad = [b for b in uniform_bits if b not in VALID_BITS or b == 32]
    if bad:
        raise MixqError(f"uniform bit-widths must be in 2..8, got {list(uniform_bits)}")
    out = output_folder(out)
    with locked(out):
        return _pareto_locked(task, proxy, cost, points, front_points, tuple(bit_choices), acts, proxy_batch,
                              act_bits, tuple(uniform_bits), calibrate_points, calibration, progress, out)


def _pareto_locked(task: Task, proxy: str, cost: str, points: int, front_points: int, bit_choices: tuple[int, ...],
                   acts: tuple[int, ...] | None, proxy_batch: int, act_bits: int, uniform_bits: tuple[int, ...],
                   calibrate_points: bool, calibration: CalibrationConfig | None, progress: bool, out: Path
                   ) -> dict[str, Any]:
    qm = QuantModel(task.model, calib=task.calib, act_bits=act_bits)
    names = qm.layer_names
    cost_model = CostModel.from_model(qm, tuple(task.calib.shape[1:]))

    t0 = time.perf_counter()
    p, stats = proxy_stats_on(task, qm, proxy, proxy_batch, task.seed)
    n = min(proxy_batch, task.calib.shape[0])
    weight_cost = p.layer_costs(stats, bit_choices)
    a_cost = None if acts is None else act_costs(qm, task.calib[:n], acts, progress)
    t_proxy = time.perf_counter() - t0

    t0 = time.perf_counter()
    front, budgets, distinct = sweep_front(weight_cost, bit_choices, cost_model, cost, points, a_cost, acts)
    # spread along the front in (log cost, log objective), as mixq evoq --pareto does
    scores = np.array([pt.objective for pt in front])
    kept = [front[i] for i in thin(np.log([pt.cost for pt in front]), front_points,
                                   np.log(scores) if (scores > 0).all() else scores)]
    t_ilp = time.perf_counter() - t0

    def objective(config: BitConfig) -> float | None:
        """The proxy's summed cost of a configuration, when it lies in the search space."""
        w = config.bits_tuple(names)
        a = [config.acts.get(name, act_bits) for name in names]
        if any(b not in bit_choices for b in w) or (acts is not None and any(b not in acts for b in a)):
            return None
        total = float(weight_cost[np.arange(len(names)), [bit_choices.index(b) for b in w]].sum())
        if a_cost is not None:
            total += float(a_cost[np.arange(len(names)), [acts.index(b) for b in a]].sum())
        return total

    calib_config = calibration or CalibrationConfig(seed=task.seed)

    def evaluate(config: BitConfig, desc: str) -> dict[str, Any]:
        costs = cost_model.of_config(config)
        qm.set_bits(config)
        row = {"avg_bits": costs["avg_bits"], "size_mb": costs["size_mb"], "bitops": costs["bitops"],
               "top1": task.top1(qm, progress=progress, desc=desc)}
        if calibrate_points:
            fresh = copy.deepcopy(qm)  # qm itself is never calibrated: each point starts from the same weights
            calibrate(fresh, task.calib, calib_config, progress=progress)
            row["top1_calibrated"] = task.top1(fresh, progress=progress, desc=f"{desc} + calibration")
        return row

    t0 = time.perf_counter()
    fp32 = {"top1": task.top1(task.model, progress=progress, desc="fp32"), "size_mb": cost_model.size_mb(32),
            "bitops": cost_model.bitops(32, 32)}
    uniform = []
    for b in uniform_bits:
        for a in sorted({act_bits, *(acts or ())}):  # every input choice too, as mixq evoq --pareto does
            config = BitConfig(dict.fromkeys(names, b), dict.fromkeys(names, a))
            uniform.append({"weight_bits": b, "act_bits": a, **evaluate(config, f"uniform W{b}A{a}"),
                            "score": objective(config)})
    front_dir = out / "front"
    if front_dir.exists():
        shutil.rmtree(front_dir)  # a previous run's points must not linger beside this run's
    rows = []
    for i, pt in enumerate(kept):
        config = pt.config(names)
        rel = f"front/{i:02d}/config.json"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        config.save(out / rel)
        rows.append({"score": pt.objective, **evaluate(config, f"front {i}"), "budget": pt.budget,
                     "config": rel, "bits": config.to_dict()})
    t_eval = time.perf_counter() - t0

    record = {
        "method": "allocate", "model": task.name, "cost": cost, "proxy": proxy, "proxy_name": p.name,
        "seed": task.seed, "samples": int(task.calib.shape[0]), "proxy_batch": int(n),
        "test_split": task.split_text(), "n_test": len(task.test),
        "bit_choices": list(bit_choices), "act_choices": None if acts is None else list(acts), "act_bits": act_bits,
        "budgets": budgets, "budget_points": points, "configs_distinct": distinct, "front_size": len(front),
        "fp32": fp32, "uniform": uniform, "front": rows,
        "calibration": dataclasses.asdict(calib_config) if calibrate_points else None,
        "seconds": {"proxy": t_proxy, "ilp": t_ilp, "evaluation": t_eval},
        "versions": versions(),
    }
    atomic_write_json(out / "pareto.json", record)
    return record
