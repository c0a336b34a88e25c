"""Rebuild the quantized model of a finished run (EvoQ or allocation) from its result files.

A run folder holds ``result.json`` (model, seed, samples, activation bits, weight range), ``config.json``
(the BitConfig) and, when it was calibrated, ``calibrated.pt``; together they give back the exact model
the run evaluated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mixq.bits import BitConfig
from mixq.errors import MixqError
from mixq.evaluation.task import Task, load_task
from mixq.quant.model import QuantModel, load_calibrated


def model_from_run(
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    model_root: str | os.PathLike | None = None,
    n_test: int | None = None,
) -> tuple[Task, QuantModel, bool]:
    """The task and the (calibrated, when the run was) quantized model of a run folder.

    Args:
        run_dir: folder written by ``mixq evoq`` or ``mixq allocate``.
        data_root: data folder.
        model_root: checkpoint folder.
        n_test: evaluate on a class-balanced subset of this many test images (default all).

    Returns:
        ``(task, qm, calibrated)``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise MixqError(f"run folder {str(run)!r} does not exist")
    try:
        result = json.loads((run / "result.json").read_text())
        model = result["model"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MixqError(f"{str(run / 'result.json')!r} is missing or not a mixq result ({exc})") from None
    config = BitConfig.load(run / "config.json")
    task = load_task(model, samples=int(result.get("samples", 50)), seed=int(result.get("seed", 0)),
                     data_root=data_root, model_root=model_root, n_test=n_test)
    qm = QuantModel(task.model, calib=task.calib, act_bits=int(result.get("act_bits", 8)),
                    weight_range=result.get("weight_range", "minmax"))
    config.validate(qm.layer_names)
    qm.set_bits(config)
    calibrated = (run / "calibrated.pt").exists()
    if calibrated:
        load_calibrated(qm, run / "calibrated.pt")
    elif "calibration" in result or "calibrated_top1" in result:
        raise MixqError(f"run {str(run)!r} was feature-calibrated but its calibrated.pt is missing (it is not kept "
                        f"in git); regenerate it (python benchmarks/export_results.py --only {run.name}) or export "
                        f"the uncalibrated searched bits with --config {str(run / 'config.json')!r}")
    return task, qm, calibrated
