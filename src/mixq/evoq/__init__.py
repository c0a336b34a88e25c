"""EvoQ: evolutionary mixed-precision search with 50-sample output-MSE fitness, then feature calibration.

    import mixq
    result = mixq.evoq.search(model, samples, target_bits=3.0, seed=0)   # bits, fitness history, timings
    record = mixq.evoq.run(task, "runs/evoq", target_bits=3.0)          # the whole ``mixq evoq`` pipeline
    result = mixq.evoq.search(model, samples, bitops=1e9, act_choices=(4, 6, 8))  # weight and input bits
    front = mixq.evoq.front(model, samples, cost="bitops")               # every budget in one run

Modules: :mod:`~mixq.evoq.sensitivity` (the per-layer table, eq. 4), :mod:`~mixq.evoq.evolution` (a
generic, torch-free tournament evolution), :mod:`~mixq.evoq.bitsearch` (the bit genome: budget repair,
sensitivity-guided mutation, fitness, the search loop), :mod:`~mixq.evoq.calibrate` (feature
calibration, Alg. 2), :mod:`~mixq.evoq.pareto` (the (MSE, cost) front by NSGA-II selection) and
:mod:`~mixq.evoq.pipeline` (sensitivity -> search -> calibration -> evaluation -> result files).
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from mixq.bits import Budget
from mixq.evaluation.metrics import predict
from mixq.evaluation.task import Task
from mixq.evoq.bitsearch import MUTATIONS, BitSpace, EvoQConfig, EvoQResult, FitnessEvaluator, evoq_search
from mixq.evoq.calibrate import CalibrationConfig, CalibrationResult
from mixq.evoq.evolution import EvolutionConfig, EvolutionState, TournamentEvolution
from mixq.evoq.pareto import PARETO_DEFAULTS, ParetoResult, pareto_search
from mixq.evoq.pipeline import RunOptions, check_feasible, run_evoq
from mixq.evoq.sensitivity import SensitivityTable, compute_act_sensitivity, compute_sensitivity
from mixq.executor import Executor
from mixq.quant.cost import CostModel
from mixq.quant.model import QuantModel

__all__ = [
    "MUTATIONS",
    "BitSpace",
    "CalibrationConfig",
    "CalibrationResult",
    "EvoQConfig",
    "EvoQResult",
    "EvolutionConfig",
    "EvolutionState",
    "FitnessEvaluator",
    "RunOptions",
    "SensitivityTable",
    "TournamentEvolution",
    "compute_sensitivity",
    "evoq_search",
    "run",
    "run_evoq",
    "search",
    "front",
    "pareto_search",
    "ParetoResult",
    "compute_act_sensitivity",
]


def search(
    model: nn.Module | QuantModel,
    samples: torch.Tensor,
    *,
    target_bits: float | None = None,
    size_mb: float | None = None,
    bitops: float | None = None,
    seed: int = 0,
    act_bits: int = 8,
    weight_range: str = "minmax",
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    **settings: object,
) -> EvoQResult:
    """Search per-layer weight bits under a budget: sensitivity table, then EvoQ's tournament evolution.

    Args:
        model: the float model (wrapped with ``samples`` as calibration data), or a :class:`QuantModel`
            (its activation ranges and weight ranges are used as they are; left at the best bits).
        samples: normalised calibration inputs ``(N, C, H, W)``; the fitness is the output MSE against the
            float model on them.
        target_bits: parameter-weighted average weight bits budget (default 3.0 when no size is given).
        size_mb: weight size budget in MB.
        bitops: BitOps budget per sample (``sum MACs x weight bits x input bits``).
        seed: seed of the evolution.
        act_bits: activation bits when ``model`` is a float model.
        weight_range: ``"minmax"``, ``"omse"`` or ``"aciq"`` when ``model`` is a float model.
        checkpoint: JSON file to save the search to and resume it from.
        progress: progress bars (on a terminal only).
        executor: where the sensitivity table and the search's fitness evaluations run (default here; e.g.
            ``mixq.executor.make_executor("ray", workers=4)``, with ``offspring=4`` so that each generation
            gives every worker a child to evaluate).
        **settings: other :class:`EvoQConfig` fields (``iterations``, ``population``, ``sample``,
            ``mutation_prob``, ``mutation``, ``min_bits``, ``max_bits``, ``offspring``, ``act_choices`` to
            search input bits too, e.g. ``(4, 6, 8)``, ``init="ilp"`` to start from the sensitivity table's
            additive optimum instead of the uniform policy).

    Returns:
        The :class:`EvoQResult`: ``bits`` (a BitConfig), ``fitness``, ``best_history``, ``avg_bits``,
        ``size_mb``, ``bitops``, ``seconds`` and ``sensitivity_seconds``.
    """
    if target_bits is None and size_mb is None and bitops is None:
        target_bits = 3.0
    budget = Budget(avg_bits=target_bits, size_mb=size_mb, bitops=bitops)
    config = EvoQConfig(seed=seed, **settings)  # type: ignore[arg-type]
    qm, reference, cost = _prepare(model, samples, act_bits, weight_range)
    check_feasible(qm, budget, config.min_bits)
    cost.check_budget(budget, config.min_bits, config.act_choices)
    t0 = time.perf_counter()
    table, act_table = _tables(qm, samples, config, progress, executor)
    table_seconds = time.perf_counter() - t0
    result = evoq_search(qm, samples, reference, budget, config, sensitivity=table, checkpoint=checkpoint,
                         progress=progress, executor=executor, cost=cost, act_sensitivity=act_table)
    result.sensitivity_seconds = table_seconds
    return result


def _prepare(model: nn.Module | QuantModel, samples: torch.Tensor, act_bits: int, weight_range: str
             ) -> tuple[QuantModel, torch.Tensor, CostModel]:
    """The QuantModel, the float logits on the samples and the cost model of a search."""
    qm = model if isinstance(model, QuantModel) else QuantModel(model, calib=samples, act_bits=act_bits,
                                                                weight_range=weight_range)
    if isinstance(model, QuantModel):
        with qm.float_mode():
            reference = predict(qm, samples)  # float logits (N, K) of the folded model
    else:
        reference = predict(model, samples)  # float logits (N, K), as the pipeline computes them
    return qm, reference, CostModel.from_model(qm, tuple(samples.shape[1:]))


def _tables(qm: QuantModel, samples: torch.Tensor, config: EvoQConfig, progress: bool, executor: Executor | None
            ) -> tuple[SensitivityTable, SensitivityTable | None]:
    table = compute_sensitivity(qm, samples, progress=progress, executor=executor)
    acts = None
    if config.act_choices:
        acts = compute_act_sensitivity(qm, samples, bits=config.act_choices, progress=progress, executor=executor)
    return table, acts


def front(
    model: nn.Module | QuantModel,
    samples: torch.Tensor,
    *,
    cost: str = "bitops",
    seed: int = 0,
    act_bits: int = 8,
    weight_range: str = "minmax",
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    **settings: object,
) -> ParetoResult:
    """The whole (output MSE, cost) trade-off in one search (:func:`~mixq.evoq.pareto.pareto_search`).

    Args:
        model: the float model, or a :class:`QuantModel`.
        samples: normalised calibration inputs; the fitness is the output MSE against the float model on them.
        cost: the cost axis: ``"bits"`` (average weight bits), ``"mb"`` or ``"bitops"``.
        seed: seed of the evolution.
        act_bits: activation bits when ``model`` is a float model (and of inputs without genes).
        weight_range: weight range method when ``model`` is a float model.
        checkpoint: JSON file to save the search to and resume it from.
        progress: progress bars.
        executor: where the sensitivity rows and the children's fitness run.
        **settings: other :class:`EvoQConfig` fields (default population 32 and 2,000 children;
            ``act_choices=(4, 6, 8)`` searches input bits too).

    Returns:
        The :class:`~mixq.evoq.pareto.ParetoResult`: ``front`` as ``(genome, mse, cost)`` cheapest first,
        ``config(genome)`` for its :class:`~mixq.bits.BitConfig`, ``at(limit)`` for the best point in a budget.
    """
    config = EvoQConfig(**{"population": PARETO_DEFAULTS.population, "iterations": PARETO_DEFAULTS.iterations,
                           "seed": seed, **settings})  # type: ignore[arg-type]
    qm, reference, cost_model = _prepare(model, samples, act_bits, weight_range)
    table, act_table = _tables(qm, samples, config, progress, executor)
    return pareto_search(qm, samples, reference, cost_model, cost, config, sensitivity=table,
                         act_sensitivity=act_table, checkpoint=checkpoint, progress=progress, executor=executor)


def run(
    task: Task,
    out: str | os.PathLike,
    *,
    target_bits: float | None = None,
    size_mb: float | None = None,
    config: EvoQConfig | None = None,
    calibration: CalibrationConfig | None = None,
    act_bits: int = 8,
    weight_range: str = "minmax",
    calibrate_after: bool = True,
    evaluate_uniform: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """The ``mixq evoq`` pipeline: sensitivity, search, feature calibration, evaluation, result files.

    Args:
        task: model, calibration samples and test split (:func:`mixq.load_task`).
        out: output folder, locked for the run (a sensitivity table and search checkpoint there of the same
            settings are resumed; of other settings refused, naming them).
        target_bits: average weight bits budget (default 3.0 when no size is given).
        size_mb: weight size budget in MB.
        config: search settings (default :class:`EvoQConfig` with the task's seed).
        calibration: feature calibration settings (default :class:`CalibrationConfig` with the task's seed).
        act_bits: activation bits.
        weight_range: per-channel weight range method.
        calibrate_after: run feature calibration after the search.
        evaluate_uniform: also evaluate uniform bits at floor(target).
        progress: progress bars (on a terminal only).
        overwrite: discard an earlier run's files in ``out`` instead of resuming it.

    Returns:
        The ``result.json`` dict; :func:`mixq.reports.write_evoq_report` draws the report from ``out``.
    """
    if target_bits is None and size_mb is None:
        target_bits = 3.0
    options = RunOptions(budget=Budget(avg_bits=target_bits, size_mb=size_mb), act_bits=act_bits,
                         weight_range=weight_range, calibrate=calibrate_after,
                         calibration=calibration or CalibrationConfig(seed=task.seed),
                         evaluate_uniform=evaluate_uniform, progress=progress)
    return run_evoq(task, options, config or EvoQConfig(seed=task.seed), out, overwrite=overwrite)
