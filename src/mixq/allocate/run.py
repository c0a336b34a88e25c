"""Bit allocation as a library call: a proxy's per-layer costs -> ILP -> BitConfig; and the evaluated run.

    bits = allocate(model, "hawq-v3", samples=x, labels=y, target_bits=3.0)      # a BitConfig
    bits = allocate(model, "sensitivity", samples=x, bitops="1.2G", act_choices=(4, 6, 8))   # weights and inputs
    record = run_allocation(task, "runs/emq/genotype.json", Budget(avg_bits=3), calibrate=True, out="runs/a")

Weight and input (activation) bits are chosen together (``act_choices``) only with the ``sensitivity`` proxy:
its weight costs are output MSE, and EvoQ's activation table
(:func:`mixq.evoq.sensitivity.compute_act_sensitivity`, the output MSE of quantizing only a layer's input)
gives the input costs in the same units. Any other proxy has no input costs to add to its weight costs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.allocate.ilp import DEFAULT_BIT_CHOICES, allocate_config
from mixq.bits import MAX_BITS, MIN_BITS, BitConfig, Budget
from mixq.emq.proxy import proxy_stats_on, resolve_proxy
from mixq.errors import MixqError
from mixq.evaluation.task import Task
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.evoq.sensitivity import compute_act_sensitivity
from mixq.fileio import atomic_write_json, locked
from mixq.paths import output_folder
from mixq.provenance import versions
from mixq.proxies.base import stats_for
from mixq.quant.cost import CostModel, parse_count
from mixq.quant.model import QuantModel, save_calibrated

WA_PROXY = "sensitivity"  # the one proxy whose weight costs share units with the input costs


def check_act_choices(proxy: str, act_choices: Sequence[int] | None) -> tuple[int, ...] | None:
    """Validate input (activation) bit choices and refuse them with any proxy but ``sensitivity``.

    Args:
        proxy: the ``--proxy`` value (a registered name or a genotype file).
        act_choices: candidate input bit-widths, or None / empty for a weight-only allocation.

    Returns:
        The choices, ascending, or None for a weight-only allocation.

    Raises:
        MixqError: choices outside 2..8 or repeated, or a proxy other than ``sensitivity``.
    """
    if not act_choices:
        return None
    choices = tuple(act_choices)
    if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not MIN_BITS <= b <= MAX_BITS
           for b in choices) or len(set(choices)) != len(choices):
        raise MixqError(f"act choices must be distinct input bit-widths in {MIN_BITS}..{MAX_BITS}, got {list(choices)}")
    if proxy != WA_PROXY:
        raise MixqError(f"W/A allocation (--act-choices {' '.join(map(str, choices))}) needs --proxy {WA_PROXY}: "
                        f"only its weight costs (output MSE) share units with the input costs; got --proxy {proxy}")
    return tuple(sorted(int(b) for b in choices))


def act_costs(qm: QuantModel, x: torch.Tensor, act_choices: tuple[int, ...], progress: bool = True) -> np.ndarray:
    """Input costs for the ILP: EvoQ's activation table, output MSE with only one layer's input quantized.

    Args:
        qm: the model (activation ranges observed; its bits are restored afterwards).
        x: the samples (the proxy's mini-batch, so both tables see the same images).
        act_choices: input bit-widths, ascending.
        progress: progress bar.

    Returns:
        ``(layers, len(act_choices))`` costs.
    """
    return compute_act_sensitivity(qm, x, bits=act_choices, progress=progress).mse


def with_bitops(budget: Budget, *limits: float | None) -> Budget:
    """``budget`` with its BitOps limit lowered to the smallest of the given ones (None: no limit).

    Args:
        budget: the budget.
        *limits: further BitOps limits per sample.

    Returns:
        The combined budget.
    """
    values = [v for v in (budget.bitops, *limits) if v is not None]
    return dataclasses.replace(budget, bitops=min(values)) if values else budget


def _solve(qm: QuantModel, costs: np.ndarray, budget: Budget, bit_choices: Sequence[int], x_shape: tuple[int, ...],
           fixed: Mapping[str, int] | None = None, act_cost: np.ndarray | None = None,
           act_choices: tuple[int, ...] | None = None) -> BitConfig:
    """The ILP on per-layer costs; MACs are counted (one traced forward) only when a BitOps budget is set."""
    return allocate_config(qm, costs, budget, bit_choices=bit_choices, fixed=fixed,
                           x_shape=x_shape if budget.bitops is not None else None, act_cost=act_cost,
                           act_choices=act_choices)


def allocate(
    model: nn.Module | QuantModel,
    proxy: str = "hawq-v3",
    samples: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    target_bits: float | None = None,
    size_mb: float | None = None,
    max_gbitops: float | None = None,
    bitops: float | str | None = None,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
    act_choices: Sequence[int] | None = None,
    fixed: Mapping[str, int] | None = None,
    act_bits: int = 8,
    seed: int = 0,
) -> BitConfig:
    """Choose one weight bit-width (and, with ``act_choices``, one input bit-width) per layer with an ILP.

    Args:
        model: a float model (wrapped with ``samples`` as calibration data) or a :class:`QuantModel`.
        proxy: a registered proxy name (``mixq.proxies.list_proxies()``) or an evolved ``genotype.json``.
        samples: one normalised mini-batch ``(N, C, H, W)`` for the proxy statistics (and the activation
            ranges when ``model`` is a float model).
        labels: its labels ``(N,)``, for proxies that need them.
        target_bits: parameter-weighted average weight bits budget.
        size_mb: weight size budget in MB.
        max_gbitops: BitOps budget per sample, in GBitOps.
        bitops: BitOps budget per sample (a number, or text with a k/M/G suffix such as ``"1.2G"``); with
            ``max_gbitops`` too, the smaller applies. A BitOps-only budget sets no size limit.
        bit_choices: candidate weight bit-widths.
        act_choices: candidate input (activation) bit-widths, e.g. ``(4, 6, 8)``; needs ``proxy="sensitivity"``.
            None (default): every input at the model's activation bits.
        fixed: layer name -> pinned weight bits.
        act_bits: activation bits when ``model`` is a float model (the inputs of layers not chosen by the ILP).
        seed: seed of the proxy's random vectors.

    Returns:
        The optimal :class:`BitConfig` under the budget (with input bits of every layer when ``act_choices``).
    """
    if samples is None:
        raise MixqError("allocate needs samples: one normalised mini-batch (N, C, H, W) for the proxy statistics")
    limits = [v for v in (None if bitops is None else parse_count(bitops, "bitops"),
                          None if max_gbitops is None else max_gbitops * 1e9) if v is not None]
    if target_bits is None and size_mb is None and not limits:
        raise MixqError("allocate needs a budget: target_bits=..., size_mb=..., bitops=... and/or max_gbitops=...")
    acts = check_act_choices(proxy, act_choices)
    budget = Budget(avg_bits=target_bits, size_mb=size_mb, bitops=min(limits) if limits else None)
    qm = model if isinstance(model, QuantModel) else QuantModel(model, calib=samples, act_bits=act_bits)
    p = resolve_proxy(proxy)
    if p.needs_labels and labels is None:
        raise MixqError(f"proxy {proxy!r} needs labels for its statistics (labels=...)")
    stats = stats_for(qm, p, samples, labels if p.needs_labels else None, seed=seed)
    a_cost = None if acts is None else act_costs(qm, samples, acts, progress=False)
    return _solve(qm, p.layer_costs(stats, bit_choices), budget, bit_choices, tuple(samples.shape[1:]), fixed,
                  a_cost, acts)


def run_allocation(
    task: Task,
    proxy: str,
    budget: Budget,
    *,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
    max_gbitops: float | None = None,
    bitops: float | str | None = None,
    act_choices: Sequence[int] | None = None,
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
        budget: average bits, MB and/or BitOps.
        bit_choices: candidate weight bit-widths.
        max_gbitops: optional BitOps budget per sample, in GBitOps.
        bitops: optional BitOps budget per sample (a number or ``"1.2G"``); the smallest BitOps limit of
            ``budget``, ``bitops`` and ``max_gbitops`` applies.
        act_choices: candidate input (activation) bit-widths chosen per layer with the weight bits (needs
            ``proxy="sensitivity"``); None: every input at ``act_bits``.
        proxy_batch: images for the proxy statistics (and the activation table).
        act_bits: activation bits (of every input when ``act_choices`` is None; the reference of the tables).
        calibrate_after: run feature calibration on the allocated model and report it too.
        progress: progress bars (shown on a terminal only).
        out: output folder for ``config.json`` and ``result.json`` (locked for the run; files written atomically).

    Returns:
        The ``result.json`` dict (``bitops`` from :class:`~mixq.quant.cost.CostModel`, ``input_bits`` per layer).

    Raises:
        MixqError: bad input, or another run holding ``out``.
    """
    acts = check_act_choices(proxy, act_choices)
    ops = None if bitops is None else parse_count(bitops, "bitops")
    budget = with_bitops(budget, ops, None if max_gbitops is None else max_gbitops * 1e9)
    out = output_folder(out)
    with locked(out):
        return _allocate_locked(task, proxy, budget, bit_choices, max_gbitops, acts, proxy_batch, act_bits,
                                calibrate_after, progress, out)


def _allocate_locked(task: Task, proxy: str, budget: Budget, bit_choices: Sequence[int], max_gbitops: float | None,
                     acts: tuple[int, ...] | None, proxy_batch: int, act_bits: int, calibrate_after: bool,
                     progress: bool, out: Path) -> dict[str, Any]:
    qm = QuantModel(task.model, calib=task.calib, act_bits=act_bits)
    x_shape = tuple(task.calib.shape[1:])
    t0 = time.perf_counter()
    p, stats = proxy_stats_on(task, qm, proxy, proxy_batch, task.seed)
    n = min(proxy_batch, task.calib.shape[0])
    a_cost = None if acts is None else act_costs(qm, task.calib[:n], acts, progress)
    proxy_seconds = time.perf_counter() - t0
    cfg = _solve(qm, p.layer_costs(stats, bit_choices), budget, bit_choices, x_shape, act_cost=a_cost,
                 act_choices=acts)
    qm.set_bits(cfg)
    costs = CostModel.from_model(qm, x_shape).of_config(cfg)
    r = {"model": task.name, "proxy": proxy, "proxy_name": p.name, "budget_avg_bits": budget.avg_bits,
         "budget_size_mb": budget.size_mb, "budget_bitops": budget.bitops, "max_gbitops": max_gbitops,
         "avg_bits": qm.avg_bits(), "size_mb": qm.size_mb(), "bitops": costs["bitops"],
         "proxy_seconds": stats.seconds if acts is None else proxy_seconds, "samples": int(task.calib.shape[0]),
         "seed": task.seed, "test_split": task.split_text(), "n_test": len(task.test),
         "fp32_top1": task.top1(task.model, progress=progress, desc="fp32"),
         "quant_top1": task.top1(qm, progress=progress, desc="allocated")}
    if calibrate_after:
        calibrate(qm, task.calib, CalibrationConfig(seed=task.seed), progress=progress)
        r["calibrated_top1"] = task.top1(qm, progress=progress, desc="calibrated")
        save_calibrated(qm, out / "calibrated.pt")
    r["bits"] = dict(cfg.weights)
    r["act_bits"] = act_bits
    r["act_choices"] = None if acts is None else list(acts)
    r["input_bits"] = {name: cfg.acts.get(name, act_bits) for name in qm.layer_names}
    r["versions"] = versions()
    cfg.save(out / "config.json")
    atomic_write_json(out / "result.json", r)
    return r
