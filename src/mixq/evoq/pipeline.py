"""End-to-end EvoQ run: sensitivity -> search -> feature calibration -> evaluation -> result files.

This is what ``mixq evoq`` calls; scripts and notebooks can call :func:`run_evoq` directly.
Files in the output folder: ``config.json`` (the BitConfig), ``result.json``, ``sensitivity.json/.csv``,
``search_state.json`` (the resumable search checkpoint) and ``calibrated.pt`` (the calibrated
folded weights and learned weight grids, a plain tensor dict for ``torch.load(weights_only=True)``).
:func:`mixq.reports.write_evoq_report` draws ``report.md``, ``fitness.png``, ``bits.png`` and
``sensitivity.png`` from them.

Interrupted and repeated runs: the output folder is locked for the run (a second run into it stops at
once with one error); every file is written atomically; the search checkpoints every generation. A
rerun resumes the sensitivity table and the search only when they were made with the same settings:
both files carry a signature (the task's model, checkpoint, calibration and test images as sha256
digests, samples, seed, activation bits, weight range, budget, search and calibration settings); any
difference is refused naming each setting, old and new value, unless ``overwrite`` discards the old run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.metrics import predict
from mixq.evaluation.task import Task
from mixq.evoq.bitsearch import RESUME_HINT, EvoQConfig, EvoQResult, _SearchCheckpoint, evoq_search, search_signature
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.evoq.sensitivity import SensitivityTable, compute_act_sensitivity, compute_sensitivity
from mixq.executor import Executor, SerialExecutor
from mixq.fileio import atomic_write_json, check_signature, locked, remove_files
from mixq.paths import output_folder
from mixq.provenance import versions
from mixq.quant.cost import CostModel
from mixq.quant.model import QuantModel, save_calibrated


@dataclass(frozen=True)
class RunOptions:
    """Options of an end-to-end run beside the search settings.

    Attributes:
        budget: size budget.
        act_bits: activation bits.
        weight_range: weight range method (``"minmax"``, ``"omse"``, ``"aciq"``).
        calibrate: run feature calibration after the search.
        calibration: feature calibration settings.
        evaluate_uniform: also evaluate the uniform baseline at floor(target bits).
        progress: show progress bars.
        prefix_mb: memory (MiB) of the search's prefix cache (:func:`~mixq.evoq.bitsearch.evoq_search`);
            it changes speed only, so it is not part of the run's signature.
    """

    budget: Budget
    act_bits: int = 8
    weight_range: str = "minmax"
    calibrate: bool = True
    calibration: CalibrationConfig = CalibrationConfig()
    evaluate_uniform: bool = True
    progress: bool = True
    prefix_mb: float = 2048.0


#: What a run writes into its output folder (``overwrite`` removes these, and only these).
RUN_FILES = ("search_state.json", "sensitivity.json", "sensitivity.csv", "act_sensitivity.json",
             "act_sensitivity.csv", "config.json", "result.json",
             "calibrated.pt", "report.md", "fitness.png", "bits.png", "sensitivity.png", "model.onnx",
             "model.onnx.json", "model.pt", "model.pt.json")
SENSITIVITY_BITS = (2, 3, 4, 5, 6, 7, 8)


def run_signature(task: Task, options: RunOptions) -> dict[str, Any]:
    """Every setting of a run beside the search settings that its result depends on.

    Args:
        task: the task (its :meth:`~mixq.evaluation.task.Task.identity`: model, data and their digests).
        options: budget, quantizer and run options.

    Returns:
        The signature (JSON-serialisable).
    """
    return {"task": task.identity(), "act_bits": options.act_bits, "weight_range": options.weight_range,
            "budget": options.budget.to_dict(),
            "calibrate": options.calibrate, "calibration": asdict(options.calibration) if options.calibrate else None,
            "evaluate_uniform": options.evaluate_uniform}


def sensitivity_signature(run: dict[str, Any], layers: list[str], bits: tuple[int, ...] = SENSITIVITY_BITS
                          ) -> dict[str, Any]:
    """The part of a run signature the sensitivity table depends on (not the test split, budget or search).

    Args:
        run: :func:`run_signature`'s dict.
        layers: the quantized layers.
        bits: the table's bit-widths.

    Returns:
        The table's signature.
    """
    task = {k: v for k, v in run["task"].items() if k not in ("n_test", "test_sha256", "eval_split")}
    return {"task": task, "act_bits": run["act_bits"], "weight_range": run["weight_range"],
            "bits": list(bits), "layers": list(layers)}


def _cached_sensitivity(path: Path, signature: dict[str, Any]) -> SensitivityTable | None:
    """The table saved at ``path`` when it was measured with ``signature``; None when there is none (or it is
    damaged); a table of other settings is refused."""
    try:
        data = json.loads(path.read_text())
        table = SensitivityTable.from_dict(data, source=str(path))
    except (OSError, json.JSONDecodeError, MixqError):
        return None  # absent or damaged: measured again
    saved = data.get("signature") if isinstance(data, dict) else None
    check_signature(saved if isinstance(saved, dict) else {}, signature, f"sensitivity table {str(path)!r}",
                    RESUME_HINT)
    return table


def budget_text(budget: Budget) -> str:
    """A budget in words, e.g. ``"avg bits <= 3.0"`` or ``"avg bits <= 3.0 and size <= 0.1 MB"``.

    Args:
        budget: the budget.

    Returns:
        The text (:meth:`mixq.bits.Budget.text`).
    """
    return budget.text()


def uniform_bits_within(cost: CostModel, budget: Budget, min_bits: int, max_bits: int) -> int:
    """The largest uniform weight bit-width (activations at the model's bits) within the budget, else ``min_bits``.

    Args:
        cost: the model's cost model.
        budget: the budget.
        min_bits: lowest bit-width.
        max_bits: highest bit-width.

    Returns:
        The bit-width.
    """
    tol = 1 + 1e-12
    for b in range(max_bits, min_bits - 1, -1):
        if cost.bit_params(b) <= budget.max_bit_params(cost.total_params) * tol \
                and cost.bitops(b) <= budget.max_bitops * tol:
            return b
    return min_bits


def _table(path: Path, signature: dict[str, Any], measure) -> SensitivityTable:
    """The table saved at ``path`` with this signature, else ``measure()`` saved there."""
    table = _cached_sensitivity(path, signature)
    if table is None:
        table = measure()
        table.save(path.parent, signature=signature, stem=path.stem)
    return table


def check_feasible(qm: QuantModel, budget: Budget, min_bits: int) -> None:
    """Raise when even ``min_bits`` everywhere is over the budget.

    Args:
        qm: the model.
        budget: the budget.
        min_bits: the lowest bit-width of the search.
    """
    if qm.total_params * min_bits > budget.max_bit_params(qm.total_params) * (1 + 1e-12):
        raise MixqError(
            f"budget is infeasible: {min_bits} bits everywhere already needs {qm.size_mb(min_bits):.4f} "
            f"MB ({min_bits}.0 average bits)"
        )


def _calibrate_and_save(qm: QuantModel, task: Task, options: RunOptions, out: Path) -> dict:
    """Feature calibration of the searched model, its top-1 and ``calibrated.pt``; returns the record part."""
    ccfg = options.calibration
    cal = calibrate(qm, task.calib, ccfg, progress=options.progress)
    part = {"quant_top1": task.top1(qm, progress=options.progress, desc="calibrated"),
            "calibration": {**asdict(ccfg), "seconds": cal.seconds, "loss_initial": cal.initial_loss,
                            "loss_final": cal.final_loss}}
    save_calibrated(qm, out / "calibrated.pt")  # float weights and learned grids (weights_only=True)
    return part


def run_evoq(task: Task, options: RunOptions, config: EvoQConfig, out: str | os.PathLike,
             overwrite: bool = False, executor: Executor | None = None) -> dict:
    """Run EvoQ end to end on a task and write every artefact.

    Args:
        task: model, calibration samples and test split.
        options: budget, quantizer and run options.
        config: search settings.
        out: output folder (created and locked for the run; a sensitivity table and search checkpoint there
            of the same settings are resumed, of other settings refused).
        overwrite: discard the files of an earlier run in ``out`` (:data:`RUN_FILES`) instead of resuming.
        executor: where the sensitivity table's rows are computed (default: serially in this process); the
            search and calibration run here.

    Returns:
        The ``result.json`` dict.

    Raises:
        MixqError: another run holds ``out``, or ``out`` holds a run of other settings (each named).
    """
    out = output_folder(out)
    with locked(out):
        return _run_locked(task, options, config, out, overwrite, executor or SerialExecutor())


def _run_locked(task: Task, options: RunOptions, config: EvoQConfig, out: Path, overwrite: bool,
                executor: Executor) -> dict:
    t_start = time.perf_counter()
    if executor.local_device.type != "cpu":  # the whole run where the serial executor computes
        task = replace(task, model=task.model.to(executor.local_device), calib=task.calib.to(executor.local_device))
    qm = QuantModel(task.model, calib=task.calib, act_bits=options.act_bits, weight_range=options.weight_range)
    check_feasible(qm, options.budget, config.min_bits)
    cost = CostModel.from_model(qm, tuple(task.calib.shape[1:]))
    cost.check_budget(options.budget, config.min_bits, config.act_choices)
    if overwrite:
        remove_files(out, list(RUN_FILES))
    signature = run_signature(task, options)
    limit = options.budget.max_bit_params(qm.total_params)
    # refuse a stale checkpoint or table before any work
    _SearchCheckpoint(out / "search_state.json",
                      search_signature(qm.layer_names, limit, config, signature, options.budget.max_bitops),
                      config.iterations).load()
    reference = predict(task.model, task.calib)  # float logits (N, K)
    table = _table(out / "sensitivity.json", sensitivity_signature(signature, qm.layer_names),
                   lambda: compute_sensitivity(qm, task.calib, bits=SENSITIVITY_BITS, progress=options.progress,
                                               executor=executor))
    act_table = None
    if config.act_choices:
        act_table = _table(out / "act_sensitivity.json",
                           sensitivity_signature(signature, qm.layer_names, config.act_choices),
                           lambda: compute_act_sensitivity(qm, task.calib, bits=config.act_choices,
                                                           progress=options.progress, executor=executor))
    result: EvoQResult = evoq_search(
        qm, task.calib, reference, options.budget, config, sensitivity=table,
        checkpoint=out / "search_state.json", progress=options.progress, signature=signature, executor=executor,
        prefix_mb=options.prefix_mb, cost=cost, act_sensitivity=act_table,
    )
    result.config.save(out / "config.json")
    fp32 = task.top1(task.model, progress=options.progress, desc="fp32")
    search_top1 = task.top1(qm, progress=options.progress, desc="searched")
    if options.budget.bitops is None:
        target = options.budget.max_bit_params(qm.total_params) / qm.total_params
        uniform_bits = max(config.min_bits, min(config.max_bits, math.floor(target + 1e-9)))
    else:
        uniform_bits = uniform_bits_within(cost, options.budget, config.min_bits, config.max_bits)
    record = {
        "model": task.name,
        "dataset": task.dataset,
        "calib_split": "train" if task.dataset == "cifar10" else "sample",
        "test_split": task.split_text(),
        "budget": budget_text(options.budget),
        "target_bits": options.budget.avg_bits,
        "target_size_mb": options.budget.size_mb,
        "target_bitops": options.budget.bitops,
        "act_bits": options.act_bits,
        "act_choices": list(config.act_choices),
        "weight_range": options.weight_range,
        "mutation": config.mutation,
        "fp32_top1": fp32,
        "fp32_size_mb": qm.size_mb(32),
        "search_top1": search_top1,
        "avg_bits": result.avg_bits,
        "size_mb": result.size_mb,
        "bitops": result.bitops,
        "fp32_bitops": cost.bitops(32, 32),
        "fitness": result.fitness,
        "initial_fitness": result.best_history[0],
        "search_seconds": result.seconds,
        "iterations": result.iterations,
        "evaluations": result.evaluations,
        "prefix_cache": {"max_mb": options.prefix_mb, **result.layer_passes},
        "seed": config.seed,
        "samples": int(task.calib.shape[0]),
        "n_test": len(task.test),
        "uniform_bits": uniform_bits,
        "settings": asdict(config),
        "layers": qm.layer_names,
        "bits": list(result.config.weights.values()),
        "input_bits": [result.config.acts.get(n, options.act_bits) for n in qm.layer_names],
        "params": qm.layer_params,
        "macs": list(cost.macs),
        "best_history": result.best_history,
        "mean_history": result.mean_history,
        "executor": executor.describe(),  # sensitivity table and search fitness
        "sensitivity_executor": executor.describe(),
        "versions": versions(),
    }
    if options.evaluate_uniform:
        qm.set_bits(uniform_bits)
        record["uniform_top1"] = task.top1(qm, progress=options.progress, desc=f"uniform {uniform_bits}")
        record["uniform_size_mb"] = qm.size_mb()
        record["uniform_bitops"] = cost.bitops(uniform_bits)
        qm.set_bits(result.config)
    if options.calibrate:
        record.update(_calibrate_and_save(qm, task, options, out))
    else:
        record["quant_top1"] = search_top1
    record["total_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out / "result.json", record)
    return record
