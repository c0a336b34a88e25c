"""Bit allocation as a library call: a proxy's per-layer costs -> ILP -> BitConfig; and the evaluated run.

    bits = allocate(model, "hawq-v3", samples=x, labels=y, target_bits=3.0)      # a BitConfig
    record = run_allocation(task, "runs/emq/genotype.json", Budget(avg_bits=3), calibrate=True, out="runs/a")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.allocate.ilp import DEFAULT_BIT_CHOICES, allocate_config
from mixq.bits import BitConfig, Budget
from mixq.emq.proxy import proxy_stats_on, resolve_proxy
from mixq.errors import MixqError
from mixq.evaluation.task import Task
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.fileio import atomic_write_json, locked
from mixq.paths import output_folder
from mixq.provenance import versions
from mixq.proxies.base import stats_for
from mixq.quant.model import QuantModel, save_calibrated


def _solve(qm: QuantModel, costs, budget: Budget, bit_choices: Sequence[int], max_gbitops: float | None,
           x_shape: tuple[int, ...], fixed: Mapping[str, int] | None = None) -> BitConfig:
    """The ILP on per-layer costs; MACs are counted (one traced forward) only when a BitOps budget is set."""
    max_bitops = max_gbitops * 1e9 if max_gbitops is not None else None
    return allocate_config(qm, costs, budget, bit_choices=bit_choices, max_bitops=max_bitops, fixed=fixed,
                           x_shape=x_shape if max_bitops is not None else None)


def allocate(
    model: nn.Module | QuantModel,
    proxy: str = "hawq-v3",
    samples: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    target_bits: float | None = None,
    size_mb: float | None = None,
    max_gbitops: float | None = None,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
    fixed: Mapping[str, int] | None = None,
    act_bits: int = 8,
    seed: int = 0,
) -> BitConfig:
    """Choose one weight bit-width per layer with an integer program on a proxy's per-layer costs.

    Args:
        model: a float model (wrapped with ``samples`` as calibration data) or a :class:`QuantModel`.
        proxy: a registered proxy name (``mixq.proxies.list_proxies()``) or an evolved ``genotype.json``.
        samples: one normalised mini-batch ``(N, C, H, W)`` for the proxy statistics (and the activation
            ranges when ``model`` is a float model).
        labels: its labels ``(N,)``, for proxies that need them.
        target_bits: parameter-weighted average weight bits budget.
        size_mb: weight size budget in MB.
        max_gbitops: BitOps budget per sample, in GBitOps.
        bit_choices: candidate weight bit-widths.
        fixed: layer name -> pinned bits.
        act_bits: activation bits when ``model`` is a float model.
        seed: seed of the proxy's random vectors.

    Returns:
        The optimal :class:`BitConfig` under the budget.
    """
    if samples is None:
        raise MixqError("allocate needs samples: one normalised mini-batch (N, C, H, W) for the proxy statistics")
    if target_bits is None and size_mb is None:
        raise MixqError("allocate needs a budget: target_bits=... and/or size_mb=...")
    qm = model if isinstance(model, QuantModel) else QuantModel(model, calib=samples, act_bits=act_bits)
    p = resolve_proxy(proxy)
    if p.needs_labels and labels is None:
        raise MixqError(f"proxy {proxy!r} needs labels for its statistics (labels=...)")
    stats = stats_for(qm, p, samples, labels if p.needs_labels else None, seed=seed)
    return _solve(qm, p.layer_costs(stats, bit_choices), Budget(avg_bits=target_bits, size_mb=size_mb), bit_choices,
                  max_gbitops, tuple(samples.shape[1:]), fixed)


def run_allocation(
    task: Task,
    proxy: str,
    budget: Budget,
    *,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
    max_gbitops: float | None = None,
    proxy_batch: int = 64,
    act_bits: int = 8,
    calibrate_after: bool = False,
    progress: bool = True,
    out: str | os.PathLike,
) -> dict[str, Any]:
    """Allocate bits with a proxy + ILP on a task, evaluate (and optionally calibrate), write the results.

    Args:
        task: model, calibration samples (the first ``proxy_batch`` feed the proxy) and test split.
        proxy: registered name or ``genotype.json``.
        budget: size budget.
        bit_choices: candidate weight bit-widths.
        max_gbitops: optional BitOps budget per sample, in GBitOps.
        proxy_batch: images for the proxy statistics.
        act_bits: activation bits.
        calibrate_after: run feature calibration on the allocated model and report it too.
        progress: progress bars (shown on a terminal only).
        out: output folder for ``config.json`` and ``result.json`` (locked for the run; files written atomically).

    Returns:
        The ``result.json`` dict.

    Raises:
        MixqError: bad input, or another run holding ``out``.
    """
    out = output_folder(out)
    with locked(out):
        return _allocate_locked(task, proxy, budget, bit_choices, max_gbitops, proxy_batch, act_bits, calibrate_after,
                                progress, out)


def _allocate_locked(task: Task, proxy: str, budget: Budget, bit_choices: Sequence[int], max_gbitops: float | None,
                     proxy_batch: int, act_bits: int, calibrate_after: bool, progress: bool, out: Path
                     ) -> dict[str, Any]:
    qm = QuantModel(task.model, calib=task.calib, act_bits=act_bits)
    p, stats = proxy_stats_on(task, qm, proxy, proxy_batch, task.seed)
    cfg = _solve(qm, p.layer_costs(stats, bit_choices), budget, bit_choices, max_gbitops, tuple(task.calib.shape[1:]))
    qm.set_bits(cfg)
    r = {"model": task.name, "proxy": proxy, "proxy_name": p.name, "budget_avg_bits": budget.avg_bits,
         "budget_size_mb": budget.size_mb, "max_gbitops": max_gbitops, "avg_bits": qm.avg_bits(),
         "size_mb": qm.size_mb(), "proxy_seconds": stats.seconds, "samples": int(task.calib.shape[0]),
         "seed": task.seed, "test_split": task.split_text(), "n_test": len(task.test),
         "fp32_top1": task.top1(task.model, progress=progress, desc="fp32"),
         "quant_top1": task.top1(qm, progress=progress, desc="allocated")}
    if calibrate_after:
        calibrate(qm, task.calib, CalibrationConfig(seed=task.seed), progress=progress)
        r["calibrated_top1"] = task.top1(qm, progress=progress, desc="calibrated")
        save_calibrated(qm, out / "calibrated.pt")
    r["bits"] = dict(cfg.weights)
    r["act_bits"] = act_bits
    r["versions"] = versions()
    cfg.save(out / "config.json")
    atomic_write_json(out / "result.json", r)
    return r
