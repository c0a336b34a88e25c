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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError
from mixq.evaluation.metrics import predict
from mixq.evaluation.task import Task
from mixq.evoq.bitsearch import RESUME_HINT, EvoQConfig, EvoQResult, _SearchCheckpoint, evoq_search, search_signature
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.evoq.pareto import METHODS, pareto_search, sweep_search
from mixq.evoq.sensitivity import SensitivityTable, compute_act_sensitivity, compute_sensitivity
from mixq.executor import Executor, SerialExecutor
from mixq.fileio import atomic_write_json, check_signature, locked, remove_files, signature_diffs
from mixq.pareto import thin
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
        channels_last: run the quantized model in the channels-last memory format (see
            :class:`~mixq.quant.model.QuantModel`); speed only, outputs equal up to float rounding, so not
            part of the signature either (recorded in ``result.json``).
    """

    budget: Budget
    act_bits: int = 8
    weight_range: str = "minmax"
    calibrate: bool = True
    calibration: CalibrationConfig = CalibrationConfig()
    evaluate_uniform: bool = True
    progress: bool = True
    prefix_mb: float = 2048.0
    channels_last: bool = False


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
    calibration = calibration_signature(options.calibration) if options.calibrate else None
    return {"task": task.identity(), "act_bits": options.act_bits, "weight_range": options.weight_range,
            "budget": options.budget.to_dict(), "calibrate": options.calibrate, "calibration": calibration,
            "evaluate_uniform": options.evaluate_uniform}


def calibration_signature(config: CalibrationConfig) -> dict[str, Any]:
    """The calibration part of a run signature: the settings, less those at the value they had before they existed.

    Args:
        config: the calibration settings.

    Returns:
        ``asdict(config)`` without ``holdout``/``check_every``/``refit`` when there is no holdout and without
        ``lr_scaling`` when it is ``"absolute"``, so runs made before those options existed still resume.
    """
    calibration = asdict(config)
    if calibration["holdout"] == 0:
        del calibration["holdout"], calibration["check_every"], calibration["refit"]
    if calibration["lr_scaling"] == "absolute":
        del calibration["lr_scaling"]
    return calibration


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


def _cached_sensitivity(path: Path, signature: dict[str, Any]) -> tuple[SensitivityTable, float] | None:
    """The table saved at ``path`` when it was measured with ``signature``, and the seconds its measurement
    took (0 when the file predates that record); None when there is none (or it is damaged); a table of other
    settings is refused."""
    try:
        data = json.loads(path.read_text())
        table = SensitivityTable.from_dict(data, source=str(path))
    except (OSError, json.JSONDecodeError, MixqError):
        return None  # absent or damaged: measured again
    saved = data.get("signature") if isinstance(data, dict) else None
    check_signature(saved if isinstance(saved, dict) else {}, signature, f"sensitivity table {str(path)!r}",
                    RESUME_HINT)
    seconds = data.get("seconds", 0.0)
    return table, float(seconds) if isinstance(seconds, (int, float)) else 0.0


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


def _tables(qm: QuantModel, task: Task, signature: dict[str, Any], config: EvoQConfig, options: RunOptions,
            executor: Executor, out: Path) -> tuple[SensitivityTable, SensitivityTable | None, float, float]:
    """The weight table and (with activation genes) the activation table, each resumed from ``out`` when it
    was measured with the same settings; the seconds their measurement took (an earlier process's, for a
    resumed table) and the part of them spent by earlier processes (None when no table was resumed)."""
    table, seconds, earlier = _table(
        out / "sensitivity.json", sensitivity_signature(signature, qm.layer_names),
        lambda: compute_sensitivity(qm, task.calib, bits=SENSITIVITY_BITS, progress=options.progress,
                                    executor=executor, prefix_mb=options.prefix_mb))
    act_table = None
    if config.act_choices:
        act_table, act_seconds, act_earlier = _table(
            out / "act_sensitivity.json", sensitivity_signature(signature, qm.layer_names, config.act_choices),
            lambda: compute_act_sensitivity(qm, task.calib, bits=config.act_choices, progress=options.progress,
                                            executor=executor, prefix_mb=options.prefix_mb))
        seconds += act_seconds
        if act_earlier is not None:
            earlier = (earlier or 0.0) + act_earlier
    return table, act_table, seconds, earlier


def _table(path: Path, signature: dict[str, Any], measure: Callable[[], SensitivityTable]
           ) -> tuple[SensitivityTable, float, float | None]:
    """The table saved at ``path`` with this signature, else ``measure()`` saved there; with the seconds its
    measurement took and, for a saved table, the same seconds as spent by an earlier process (None: measured now)."""
    cached = _cached_sensitivity(path, signature)
    if cached is not None:
        return cached[0], cached[1], cached[1]
    t0 = time.perf_counter()
    table = measure()
    seconds = time.perf_counter() - t0
    table.save(path.parent, signature=signature, stem=path.stem, seconds=seconds)
    return table, seconds, None


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


def _calibrate_and_save(qm: QuantModel, task: Task, ccfg: CalibrationConfig, progress: bool, out: Path) -> dict:
    """Feature calibration of the searched model, its top-1 and ``calibrated.pt``; returns the record part."""
    cal = calibrate(qm, task.calib, ccfg, progress=progress)
    part = {"quant_top1": task.top1(qm, progress=progress, desc="calibrated"),
            "calibration": {**asdict(ccfg), "seconds": cal.seconds, "loss_initial": cal.initial_loss,
                            "loss_final": cal.final_loss, "best_epoch": cal.best_epoch,
                            "holdout_history": [list(h) for h in cal.holdout_history],
                            "refit_epochs": cal.refit_epochs}}
    save_calibrated(qm, out / "calibrated.pt")  # float weights and learned grids (weights_only=True)
    return part


def _on_device(task: Task, executor: Executor) -> Task:
    """The task with its model and samples where the serial executor computes (the whole run goes there)."""
    if executor.local_device.type == "cpu":
        return task
    return replace(task, model=task.model.to(executor.local_device), calib=task.calib.to(executor.local_device))


def _task_record(task: Task) -> dict[str, Any]:
    """The result-file keys naming a run's model, dataset and splits."""
    return {"model": task.name, "dataset": task.dataset,
            "calib_split": "train" if task.dataset == "cifar10" else "sample", "test_split": task.split_text()}


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
    task = _on_device(task, executor)
    qm = QuantModel(task.model, calib=task.calib, act_bits=options.act_bits, weight_range=options.weight_range,
                    channels_last=options.channels_last)
    check_feasible(qm, options.budget, config.min_bits)
    cost = CostModel.from_model(qm, tuple(task.calib.shape[1:]))
    cost.check_budget(options.budget, config.min_bits, config.act_choices)
    if overwrite:
        remove_files(out, list(RUN_FILES))
    signature = run_signature(task, options)
    limit = options.budget.max_bit_params(qm.total_params)
    # refuse a stale checkpoint or table before any work
    # (a finished run is not redone under other calibration settings: its result would be overwritten)
    finished = (out / "result.json").exists()
    _SearchCheckpoint(out / "search_state.json",
                      search_signature(qm.layer_names, limit, config, signature, options.budget.max_bitops),
                      config.iterations).load(
        f"`mixq recalibrate {out}` calibrates its search again with other settings" if finished else None)
    reference = predict(task.model, task.calib)  # float logits (N, K)
    table, act_table, table_seconds, earlier_seconds = _tables(qm, task, signature, config, options, executor, out)
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
        **_task_record(task),
        "budget": budget_text(options.budget),
        "target_bits": options.budget.avg_bits,
        "target_size_mb": options.budget.size_mb,
        "target_bitops": options.budget.bitops,
        "act_bits": options.act_bits,
        "act_choices": list(config.act_choices),
        "weight_range": options.weight_range,
        "channels_last": options.channels_last,
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
        "sensitivity_seconds": table_seconds,
        "sensitivity_resumed": earlier_seconds is not None,
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
        record.update(_calibrate_and_save(qm, task, options.calibration, options.progress, out))
    else:
        record["quant_top1"] = search_top1
    # the whole run's wall time, earlier processes' part of a resumed one included
    record["total_seconds"] = time.perf_counter() - t_start + (earlier_seconds or 0.0) + result.resumed_seconds
    atomic_write_json(out / "result.json", record)
    return record


UNIFORM_FILES = ("result.json", "calibrated.pt")


def run_uniform(task: Task, bits: int, options: RunOptions, out: str | os.PathLike, overwrite: bool = False,
                executor: Executor | None = None) -> dict:
    """The uniform baseline of a run: every layer at ``bits``, top-1 before and after the same feature calibration.

    This is what a mixed configuration must beat at equal size: the same quantizer, calibration samples,
    calibration settings and test images as :func:`run_evoq`, with no search.

    Args:
        task: model, calibration samples and test split.
        bits: weight bits of every quantized layer (2..8).
        options: quantizer and calibration options (``budget`` and ``evaluate_uniform`` are not used;
            ``calibrate=False`` measures the uncalibrated top-1 only).
        out: output folder (locked for the run); a finished run of the same settings there is returned as
            it is, one of other settings is refused unless ``overwrite``.
        overwrite: discard an earlier result in ``out``.
        executor: its local device runs the calibration and evaluation (default: this process, CPU).

    Returns:
        The ``result.json`` dict (``uncalibrated_top1``, ``quant_top1``, ``fp32_top1``, size and BitOps).

    Raises:
        MixqError: ``bits`` outside 2..8, or ``out`` holds a result of other settings.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise MixqError(f"uniform bits must be an integer in 2..8, got {bits!r}")
    out = output_folder(out)
    executor = executor or SerialExecutor()
    options = replace(options, budget=Budget(avg_bits=float(bits)), evaluate_uniform=False)
    signature = {**run_signature(task, options), "uniform_bits": bits}
    with locked(out):
        if overwrite:
            remove_files(out, list(UNIFORM_FILES))
        done = out / "result.json"
        if done.is_file():
            saved = json.loads(done.read_text())
            check_signature(saved.get("signature", {}), signature, f"uniform result {str(done)!r}", RESUME_HINT)
            return saved
        t_start = time.perf_counter()
        task = _on_device(task, executor)
        qm = QuantModel(task.model, calib=task.calib, act_bits=options.act_bits, weight_range=options.weight_range,
                    channels_last=options.channels_last)
        qm.set_bits(bits)
        cost = CostModel.from_model(qm, tuple(task.calib.shape[1:]))
        top1 = task.top1(qm, progress=options.progress, desc=f"uniform {bits}")
        record = {
            **_task_record(task), "uniform_bits": bits, "act_bits": options.act_bits,
            "weight_range": options.weight_range, "channels_last": options.channels_last,
            "fp32_top1": task.top1(task.model, progress=options.progress, desc="fp32"),
            "fp32_size_mb": qm.size_mb(32), "uncalibrated_top1": top1,
            "avg_bits": qm.avg_bits(), "size_mb": qm.size_mb(), "bitops": cost.bitops(bits),
            "fp32_bitops": cost.bitops(32, 32), "seed": task.seed, "samples": int(task.calib.shape[0]),
            "n_test": len(task.test),
            "executor": executor.describe(), "signature": signature, "versions": versions(),
        }
        if options.calibrate:
            record.update(_calibrate_and_save(qm, task, options.calibration, options.progress, out))
        else:
            record["quant_top1"] = top1
        record["total_seconds"] = time.perf_counter() - t_start
        atomic_write_json(done, record)
        return record


#: the searched (or uniform) top-1 a rebuilt model may differ from its record by (points): float rounding flips
#: a prediction now and then (one image of EfficientNet-Lite0's 950 is 0.105 points)
REBUILD_TOLERANCE = 0.25


def read_run_result(out: str | os.PathLike) -> dict[str, Any]:
    """A finished run's ``result.json``.

    Args:
        out: the run folder.

    Returns:
        The record.

    Raises:
        MixqError: no ``result.json``, unreadable JSON, or not a finished run's record.
    """
    out = Path(out)
    path = out / "result.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise MixqError(f"run folder {str(out)!r} holds no result.json (no finished run): give the --out folder "
                        "of a finished `mixq evoq` run") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise MixqError(f"cannot read run result {str(path)!r}: {exc}") from None
    if not isinstance(record, dict) or not {"quant_top1", "model", "samples", "seed", "n_test"} <= set(record):
        raise MixqError(f"{str(path)!r} is not a mixq run result (quant_top1, model, samples, seed, n_test expected)")
    return record


def _run_bits(record: dict[str, Any], out: Path) -> BitConfig | int:
    """The bit configuration a result was measured with: a mixed run's per-layer bits or a uniform width."""
    if "bits" in record:  # a mixed run: its layers, weight bits and activation bits
        try:
            layers, bits, acts = record["layers"], record["bits"], record.get("input_bits")
            act_bits = record.get("act_bits", 8)
            return BitConfig(dict(zip(layers, bits, strict=True)),
                             {n: a for n, a in zip(layers, acts or [], strict=False) if a != act_bits})
        except (KeyError, TypeError, ValueError) as exc:
            raise MixqError(f"run result {str(out / 'result.json')!r} has no usable layers/bits: {exc}") from None
    if "uniform_bits" in record:
        return int(record["uniform_bits"])
    raise MixqError(f"run result {str(out / 'result.json')!r} names no bit configuration (bits or uniform_bits)")


def _check_task(record: dict[str, Any], task: Task, out: Path) -> None:
    """Refuse a task other than the run's: another model, sample count, seed or test split."""
    wanted = {"model": record.get("model"), "samples": record.get("samples"), "n_test": record.get("n_test"),
              "seed": record.get("seed")}
    got = {"model": task.name, "samples": int(task.calib.shape[0]), "n_test": len(task.test), "seed": task.seed}
    diffs = [f"{k}: run {wanted[k]!r}, task {got[k]!r}" for k in wanted if wanted[k] != got[k]]
    saved = record.get("signature", {}).get("task")
    if isinstance(saved, dict):
        diffs += signature_diffs(saved, task.identity())
    if diffs:
        raise MixqError(f"the task is not the one run {str(out)!r} was made with: " + "; ".join(diffs[:5]))


def recalibrate_run(task: Task, calibration: CalibrationConfig, out: str | os.PathLike, progress: bool = False,
                    executor: Executor | None = None) -> dict:
    """Feature-calibrate a finished run's configuration again, with other calibration settings.

    The searched (or uniform) bit configuration of ``out/result.json`` is rebuilt on the task's model,
    checked against the recorded top-1 before calibration, calibrated with ``calibration`` and evaluated;
    ``result.json`` and ``calibrated.pt`` are rewritten, the earlier calibration's settings and top-1 are kept
    in ``previous_calibrations``. The search is not repeated: a calibration default can change without
    re-searching. A run already calibrated with ``calibration`` is returned as it is.

    Args:
        task: the run's task (same model, samples, seed and test split: checked).
        calibration: the new calibration settings.
        out: the finished run's folder (:func:`run_evoq` or :func:`run_uniform`; locked while it works).
        progress: show progress bars.
        executor: its local device runs the calibration and evaluation (default: this process, CPU).

    Returns:
        The updated ``result.json`` dict.

    Raises:
        MixqError: ``out`` holds no finished run, the task is not the run's, or the rebuilt model does not
            reproduce the recorded top-1 (another checkpoint or data than the run's).
    """
    out = Path(out)
    with locked(out):
        record = read_run_result(out)
        if "calibration" in record and CalibrationConfig.from_record(record["calibration"]) == calibration:
            return record
        _check_task(record, task, out)
        bits = _run_bits(record, out)
        t_start = time.perf_counter()
        task = _on_device(task, executor or SerialExecutor())
        qm = QuantModel(task.model, calib=task.calib, act_bits=int(record.get("act_bits", 8)),
                        weight_range=record.get("weight_range", "minmax"),
                        channels_last=bool(record.get("channels_last", False)))
        qm.set_bits(bits)
        before_key = "search_top1" if "bits" in record else "uncalibrated_top1"
        before = task.top1(qm, progress=progress, desc="rebuilt")
        if abs(before - record[before_key]) > REBUILD_TOLERANCE:
            raise MixqError(f"the rebuilt model of {str(out)!r} reaches {before:.2f} % top-1 before calibration, the "
                            f"run recorded {record[before_key]:.2f} %: another checkpoint, data or quantizer than "
                            "the run's; not recalibrated")
        previous = {"quant_top1": record["quant_top1"], "calibration": record.get("calibration")}
        old_seconds = float((record.get("calibration") or {}).get("seconds", 0.0))
        record.update(_calibrate_and_save(qm, task, calibration, progress, out))
        record["previous_calibrations"] = [*record.get("previous_calibrations", []), previous]
        record["recalibration_versions"] = versions()
        if isinstance(record.get("signature"), dict) and record["signature"].get("calibrate"):
            record["signature"]["calibration"] = calibration_signature(calibration)
        if "total_seconds" in record:  # the run as if made with these settings: search as it was, this calibration
            record["total_seconds"] += time.perf_counter() - t_start - old_seconds
        atomic_write_json(out / "result.json", record)
        return record


PARETO_FILES = ("pareto_state.json", "sensitivity.json", "sensitivity.csv", "act_sensitivity.json",
                "act_sensitivity.csv", "pareto.json", "pareto.png", "report.md")


@dataclass(frozen=True)
class ParetoOptions:
    """What a Pareto run reports beside the search.

    Attributes:
        cost: the cost axis, ``"bits"``, ``"mb"`` or ``"bitops"``.
        points: front points evaluated on the test split, spread evenly along the front in (log cost, log MSE).
        at: budgets on the cost axis whose best front point is evaluated too (e.g. single-budget targets);
            the sweep searches exactly these budgets (when none are given, ``points`` budgets spaced
            geometrically between the cheapest and the most expensive configuration).
        method: ``"sweep"`` (:func:`~mixq.evoq.pareto.sweep_search`, warm-started EvoQ per budget) or
            ``"nsga2"`` (:func:`~mixq.evoq.pareto.pareto_search`, one population over the whole range).
        calibrate: feature-calibrate every evaluated point and uniform configuration (one calibration each).
        uniform_bits: uniform weight bit-widths evaluated beside the front.
    """

    cost: str = "bitops"
    points: int = 10
    at: tuple[float, ...] = ()
    calibrate: bool = False
    uniform_bits: tuple[int, ...] = (2, 3, 4, 8)
    method: str = "sweep"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MixqError(f"Pareto method must be one of {list(METHODS)}, got {self.method!r}")
        if self.points < 2:
            raise MixqError(f"a front needs at least 2 evaluated points, got {self.points}")


def sweep_budgets(cost: CostModel, axis: str, n: int, config: EvoQConfig) -> list[float]:
    """``n`` budgets spaced geometrically strictly between the cheapest and the most expensive configuration.

    Args:
        cost: the model's cost model.
        axis: the cost axis.
        n: how many.
        config: the search's bit range and activation choices.

    Returns:
        The budgets, ascending.
    """
    lo, hi = cost.cost_range(axis, (config.min_bits, config.max_bits), config.act_choices)
    return [float(v) for v in np.geomspace(lo, hi, n + 2)[1:-1]]


def run_evoq_pareto(task: Task, options: RunOptions, config: EvoQConfig, pareto: ParetoOptions,
                    out: str | os.PathLike, overwrite: bool = False, cap: Budget | None = None,
                    executor: Executor | None = None) -> dict:
    """``mixq evoq --pareto``: the front of (output MSE, cost) in one search, evaluated and plotted.

    Writes ``pareto.json`` (the record of :mod:`mixq.reports.pareto`), ``front/NN/config.json`` for every
    evaluated point, the sensitivity tables and ``pareto_state.json`` (the resumable search).

    Args:
        task: model, calibration samples and evaluation split.
        options: quantizer and run options (``options.budget`` is ignored; see ``cap``).
        config: search settings (:data:`~mixq.evoq.pareto.PARETO_DEFAULTS` is a good start).
        pareto: cost axis, points to evaluate, calibration.
        out: output folder (locked for the run; a search of the same settings there is resumed).
        overwrite: discard an earlier run's files in ``out``.
        cap: a budget no configuration may exceed (default none).
        executor: where the sensitivity rows and the children's fitness run.

    Returns:
        The ``pareto.json`` dict.
    """
    out = output_folder(out)
    with locked(out):
        return _pareto_locked(task, options, config, pareto, out, overwrite, cap, executor or SerialExecutor())


def _pareto_locked(task: Task, options: RunOptions, config: EvoQConfig, pareto: ParetoOptions, out: Path,
                   overwrite: bool, cap: Budget | None, executor: Executor) -> dict:
    t_start = time.perf_counter()
    task = _on_device(task, executor)
    qm = QuantModel(task.model, calib=task.calib, act_bits=options.act_bits, weight_range=options.weight_range,
                    channels_last=options.channels_last)
    cost = CostModel.from_model(qm, tuple(task.calib.shape[1:]))
    if cap is not None:
        cost.check_budget(cap, config.min_bits, config.act_choices)
    if overwrite:
        remove_files(out, list(PARETO_FILES) + [p.name for p in out.glob("sweep_state_*.json")])
    signature = run_signature(task, replace(options, budget=cap or Budget(avg_bits=config.max_bits), calibrate=False))
    signature.pop("calibrate"), signature.pop("calibration"), signature.pop("evaluate_uniform")
    reference = predict(task.model, task.calib)
    table, act_table, table_seconds, _ = _tables(qm, task, signature, config, options, executor, out)
    if pareto.method == "nsga2":
        result = pareto_search(qm, task.calib, reference, cost, pareto.cost, config, sensitivity=table,
                               act_sensitivity=act_table, cap=cap, checkpoint=out / "pareto_state.json",
                               progress=options.progress, signature=signature, executor=executor,
                               prefix_mb=options.prefix_mb)
    else:
        budgets = list(pareto.at) or sweep_budgets(cost, pareto.cost, pareto.points, config)
        result = sweep_search(qm, task.calib, reference, cost, pareto.cost, budgets, config, sensitivity=table,
                              act_sensitivity=act_table, cap=cap, checkpoint_dir=out, progress=options.progress,
                              signature=signature, executor=executor, prefix_mb=options.prefix_mb)
    front = result.front
    # spread evenly along the front in (log cost, log MSE): as many points on its steep part as on its flat one
    chosen = set(thin(np.log([p[2] for p in front]), pareto.points,
                      np.log(np.maximum([p[1] for p in front], 1e-30)))) if len(front) > 1 else {0}
    targets = []
    for limit in pareto.at:
        best = result.at(limit)
        targets.append({"budget": limit, "index": None if best is None else front.index(best)})
        if best is not None:
            chosen.add(front.index(best))
    t_eval = time.perf_counter()

    def evaluate(bits, label: str) -> dict:
        """Top-1 of one configuration (and after feature calibration of a fresh copy, when asked)."""
        qm.set_bits(bits)
        row = {"top1": task.top1(qm, progress=options.progress, desc=label)}
        if pareto.calibrate:
            fresh = QuantModel(task.model, calib=task.calib, act_bits=options.act_bits,
                               weight_range=options.weight_range, channels_last=options.channels_last)
            fresh.set_bits(bits)
            calibrate(fresh, task.calib, options.calibration, progress=options.progress)
            row["top1_calibrated"] = task.top1(fresh, progress=options.progress, desc=label + " calibrated")
        return row

    points = []
    for k, i in enumerate(sorted(chosen)):
        genome, fitness, _ = front[i]
        cfg = result.config(genome)
        path = out / "front" / f"{k:02d}" / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg.save(path)
        points.append({"front_index": i, "score": fitness, **cost.of_config(cfg),
                       "act_bits_mean": float(sum(cfg.acts.get(n, options.act_bits) for n in qm.layer_names)
                                              / len(qm.layer_names)),
                       "config": str(path.relative_to(out)), **evaluate(cfg, f"front {k}")})
    uniform = []
    acts = sorted({options.act_bits, *config.act_choices})
    for b in pareto.uniform_bits:
        for a in acts:
            cfg = BitConfig({n: b for n in qm.layer_names}, {n: a for n in qm.layer_names})
            uniform.append({"weight_bits": b, "act_bits": a, **cost.of_config(cfg), **evaluate(cfg, f"W{b}A{a}")})
    record = {
        "method": "evoq", **_task_record(task), "cost": pareto.cost,
        "n_test": len(task.test), "seed": config.seed, "samples": int(task.calib.shape[0]),
        "act_bits": options.act_bits, "act_choices": list(config.act_choices), "weight_range": options.weight_range,
        "channels_last": options.channels_last, "cap": None if cap is None else cap.to_dict(),
        "settings": asdict(config), "pareto": asdict(pareto),
        "calibration": asdict(options.calibration) if pareto.calibrate else None,
        "fp32": {"top1": task.top1(task.model, progress=options.progress, desc="fp32"),
                 "size_mb": cost.size_mb(32), "bitops": cost.bitops(32, 32), "avg_bits": 32.0},
        "front": points, "uniform": uniform, "targets": targets,
        "front_size": len(front), "evaluations": result.evaluations, "iterations": result.iterations,
        "archive_front": [{"score": f, "cost": c} for _, f, c in front],
        "best_history": result.best_history, "prefix_cache": {"max_mb": options.prefix_mb, **result.layer_passes},
        "seconds": {"sensitivity": table_seconds, "search": result.seconds,
                    "evaluation": time.perf_counter() - t_eval, "total": time.perf_counter() - t_start},
        "layers": qm.layer_names, "params": qm.layer_params, "macs": list(cost.macs),
        "executor": executor.describe(), "versions": versions(),
    }
    atomic_write_json(out / "pareto.json", record)
    return record
