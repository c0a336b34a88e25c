"""An evolved formula as a :class:`~mixq.proxies.base.Proxy`, so ranking, scoring and the ILP take it as-is.

    proxy = FormulaProxy(Genotype.load("runs/emq/genotype.json"))
    stats = stats_for(qm, proxy, x, y)
    proxy.score(stats, bits); proxy.layer_costs(stats, [2, 3, 4])

:func:`resolve_proxy` turns a command-line ``--proxy`` value into a proxy: a registered name, or the
path of a genotype file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.bits import BitConfig
from mixq.emq.genotype import Genotype
from mixq.emq.inputs import compute_inputs
from mixq.emq.interpret import check_shapes, gain_table, layer_values
from mixq.errors import MixqError
from mixq.evaluation.task import Task
from mixq.proxies.base import BITS, LayerStats, Proxy, bit_columns, bits_matrix, layer_names_of, stats_for
from mixq.proxies.cache import StatsCache, cached_stats
from mixq.proxies.registry import get_proxy
from mixq.quant.model import QuantModel


class FormulaProxy(Proxy):
    """A proxy defined by an EMQ genotype (additive over layers).

    Args:
        genotype: the formula.
        hessian_samples: Rademacher vectors of the Hessian-diagonal source.
        act_samples: images kept for the activation source.
    """

    additive = True
    float_may_be_undefined = True

    def __init__(self, genotype: Genotype, hessian_samples: int = 16, act_samples: int = 32) -> None:
        self.genotype = genotype
        self.hessian_samples = hessian_samples
        self.act_samples = act_samples
        self.name = "emq:" + genotype.formula()
        self.needs_labels = genotype.needs_labels
        self.needs_grad = True

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        names = layer_names_of(model, modules)
        sources = sorted(set(self.genotype.inputs))
        inputs = compute_inputs(model, names, x, y, sources=sources, hessian_samples=self.hessian_samples,
                                act_samples=self.act_samples, seed=seed)
        from mixq.emq.interpret import FormulaError

        try:
            check_shapes(self.genotype, inputs)
        except FormulaError as exc:
            raise MixqError(f"the formula cannot run on this model: {exc}") from None
        values = layer_values(self.genotype, inputs, BITS)
        gains = gain_table(self.genotype, values, BITS)
        # the float column (32 bits) may be undefined (e.g. log of a zero quantization error): NaN there
        # makes scoring a float layer an error instead of a silent wrong number.
        return gains, {"values": values}

    def score(self, stats, bits) -> np.ndarray:  # noqa: D102
        scores = super().score(stats, bits)
        if not np.all(np.isfinite(scores)):
            raise MixqError(f"proxy {self.name!r} is undefined (NaN/inf) for some of these bit-widths")
        return scores

    def layer_costs(self, stats, bit_choices) -> np.ndarray:  # noqa: D102
        costs = super().layer_costs(stats, bit_choices)
        if not np.all(np.isfinite(costs)):
            cols = bit_columns(np.asarray(list(bit_choices)))
            bad = sorted({BITS[c] for c in cols if not np.all(np.isfinite(stats.gains[:, c]))})
            raise MixqError(f"proxy {self.name!r} is undefined at bit-width(s) {bad}; choose other --bit-choices")
        return costs


def resolve_proxy(spec: str, **options: Any) -> Proxy:
    """A proxy from a registered name or a genotype file path.

    Args:
        spec: registry name (``mixq proxies list``) or path of a ``genotype.json``.
        **options: constructor options of a registered proxy.

    Returns:
        The proxy.

    Raises:
        MixqError: neither a registered proxy nor a readable genotype file.
    """
    if spec.endswith(".json") or os.sep in spec or Path(spec).is_file():
        return FormulaProxy(Genotype.load(spec))
    return get_proxy(spec, **options)


def proxy_stats_on(
    task: Task, qm: QuantModel, spec: str, batch: int, seed: int, cache: StatsCache | None = None
) -> tuple[Proxy, LayerStats]:
    """A proxy (name or genotype file) and its statistics on the first ``batch`` calibration samples of a task.

    Args:
        task: the task (its calibration images and labels are the mini-batch).
        qm: the task's :class:`~mixq.quant.model.QuantModel`.
        spec: registry name or ``genotype.json`` path (:func:`resolve_proxy`).
        batch: images for the statistics (at most the task's calibration samples).
        seed: seed of random vectors.
        cache: optional statistics cache.

    Returns:
        ``(proxy, stats)``; ``stats.seconds`` is the time the statistics took.
    """
    proxy = resolve_proxy(spec)
    n = min(batch, task.calib.shape[0])
    return proxy, cached_stats(qm, proxy, task.calib[:n], task.calib_set.labels[:n], seed, cache)


def score_configs(
    proxy: str | Proxy,
    model: nn.Module | QuantModel,
    samples: torch.Tensor,
    configs: Sequence[BitConfig | Mapping[str, int]],
    labels: torch.Tensor | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Score bit configurations with a proxy (higher = predicted more accurate), without evaluating them.

    Args:
        proxy: a registered name, a ``genotype.json`` path, or a :class:`Proxy`.
        model: a float model (wrapped with ``samples`` as calibration data) or a :class:`QuantModel`.
        samples: one normalised mini-batch ``(N, C, H, W)`` for the statistics.
        configs: bit configurations (BitConfig or ``{layer name: bits}``), each naming every layer.
        labels: labels ``(N,)`` for proxies that need them.
        seed: seed of random vectors.

    Returns:
        ``(len(configs),)`` scores.
    """
    p = resolve_proxy(proxy) if isinstance(proxy, str) else proxy
    if p.needs_labels and labels is None:
        raise MixqError(f"proxy {p.name!r} needs labels for its statistics (labels=...)")
    qm = model if isinstance(model, QuantModel) else QuantModel(model, calib=samples)
    stats = stats_for(qm, p, samples, labels if p.needs_labels else None, seed=seed)
    parsed = [c if isinstance(c, BitConfig) else BitConfig.from_dict(dict(c)) for c in configs]
    for c in parsed:
        c.validate(qm.layer_names)
    return p.score(stats, bits_matrix(parsed, qm.layer_names))
