"""Integer-linear-programming bit allocation (HAWQ-V3 / EMQ style): costs per layer -> a BitConfig.

The solvers, :func:`allocate_bits` (weight bits) and :func:`allocate_pairs` (weight and input bits), live in
:mod:`mixq.knapsack` (its docstring states the ILP) and are re-exported here; this module adds MACs and
BitOps counting and :func:`allocate_config` (a QuantModel + cost tables -> a BitConfig).

BitOps (HAWQ-V3): the number of bit operations of one forward pass of one sample,
``sum_l MACs_l * w_bits_l * a_bits_l``, where ``MACs_l`` counts the multiply-accumulates of layer ``l``
per sample, ``w_bits_l`` its weight bits and ``a_bits_l`` its input (activation) bits. A uniform 8/8
model has ``64 x MACs`` BitOps.

    cfg = allocate_config(qm, table.value, Budget(avg_bits=4), fixed={"conv1": 8, "fc": 8})
    cfg = allocate_config(qm, w_table.mse, Budget(bitops=1.2e9), bit_choices=w_table.bits, x_shape=(3, 32, 32),
                          act_cost=a_table.mse, act_choices=a_table.bits)     # weights and inputs
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mixq.bits import BitConfig, Budget
from mixq.errors import MixqError
from mixq.knapsack import (  # noqa: F401  (re-exported: the solvers live in mixq.knapsack)
    DEFAULT_BIT_CHOICES,
    AllocationResult,
    allocate_bits,
    allocate_pairs,
    check_choices,
)
from mixq.quant.cost import layer_macs  # noqa: F401  (re-exported: mixq.allocate.ilp.layer_macs)
from mixq.quant.model import QuantModel


# -- MACs and BitOps ------------------------------------------------------------------------------
def bitops(
    qm_or_macs: QuantModel | Sequence[int],
    bits: BitConfig | Mapping[str, int] | Sequence[int] | int,
    act_bits: int = 8,
    x_shape: Sequence[int] | None = None,
) -> float:
    """Total BitOps of a configuration: ``sum_l MACs_l * w_bits_l * a_bits_l`` per sample (HAWQ-V3).

    Args:
        qm_or_macs: a :class:`QuantModel` (then ``x_shape`` is needed to count MACs) or MACs per layer.
        bits: weight bits: a uniform int, a per-layer sequence (model order), or, with a model, a
            ``BitConfig`` / name mapping (a ``BitConfig``'s per-layer activation bits override ``act_bits``).
        act_bits: activation bits of layers without an override.
        x_shape: input shape for :func:`layer_macs` when a model is given.

    Returns:
        BitOps (divide by 1e9 for GBitOps).
    """
    acts: Mapping[str, int] = {}
    if isinstance(qm_or_macs, QuantModel):
        if x_shape is None:
            raise MixqError("bitops of a QuantModel needs x_shape to count MACs")
        macs = layer_macs(qm_or_macs, x_shape)
        names = qm_or_macs.layer_names
        if isinstance(bits, (BitConfig, Mapping)):
            config = bits if isinstance(bits, BitConfig) else BitConfig(bits)
            config.validate(names)
            acts = config.acts
            bits = config.bits_tuple(names)
    else:
        macs = list(qm_or_macs)
        names = [str(i) for i in range(len(macs))]
        if isinstance(bits, (BitConfig, Mapping)):
            raise MixqError("bitops with a MACs list needs bits as an int or a per-layer sequence")
    w = [bits] * len(macs) if isinstance(bits, (int, np.integer)) else list(bits)
    if len(w) != len(macs):
        raise MixqError(f"bits must give one bit-width per layer ({len(macs)}), got {len(w)}")
    return float(sum(m * int(b) * acts.get(n, act_bits) for m, b, n in zip(macs, w, names)))


def uniform_bitops(macs: Sequence[int], bits: int, act_bits: int = 8) -> float:
    """BitOps of a uniform ``bits``-bit configuration: a convenient BitOps budget (e.g. "as cheap as 4/8").

    Args:
        macs: MACs per layer.
        bits: the weight bit-width of every layer.
        act_bits: activation bits.

    Returns:
        ``sum(macs) * bits * act_bits``.
    """
    return bitops(macs, bits, act_bits)


# -- model-level convenience ----------------------------------------------------------------------
def allocate_config(
    qm: QuantModel,
    layer_cost: Callable[[int, int], float] | np.ndarray,
    budget: Budget,
    bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
    max_bitops: float | None = None,
    fixed: Mapping[str, int | tuple[int, int]] | None = None,
    x_shape: Sequence[int] | None = None,
    act_bits: int | None = None,
    time_limit: float | None = None,
    *,
    act_cost: Callable[[int, int], float] | np.ndarray | None = None,
    act_choices: Sequence[int] | None = None,
) -> BitConfig:
    """Optimal bit configuration of a model under size and BitOps budgets, weights only or weights and inputs.

    Args:
        qm: the model (its ``layer_names`` order indexes the cost).
        layer_cost: ``f(layer_index, bits) -> cost`` (e.g. ``SensitivityTable.value``) or an array
            ``(layers, len(bit_choices))``.
        budget: average bits, MB and/or BitOps (a BitOps-only budget sets no size limit).
        bit_choices: candidate weight bit-widths.
        max_bitops: optional BitOps bound (per sample; see :func:`bitops`), combined with ``budget.bitops``
            (the smaller one applies); a BitOps bound needs ``x_shape``.
        fixed: layer name -> pinned weight bits (e.g. ``{"conv1": 8, "fc": 8}``); with ``act_choices`` also
            a pinned ``(weight, input)`` pair.
        x_shape: model input shape, for counting MACs when a BitOps bound is set.
        act_bits: activation bits for BitOps of a weight-only allocation (default: the model's ``act_bits``).
        time_limit: solver time limit in seconds.
        act_cost: with ``act_choices``: ``f(layer_index, input_bits) -> cost`` or an array
            ``(layers, len(act_choices))`` in the units of ``layer_cost`` (e.g. an activation sensitivity table).
        act_choices: candidate input (activation) bit-widths; None (default) allocates weight bits only.

    Returns:
        The :class:`BitConfig`: weight bits, and with ``act_choices`` the input bits of every layer.
    """
    if not isinstance(budget, Budget):
        raise MixqError(f"budget must be a Budget, got {type(budget).__name__}")
    choices = check_choices(bit_choices)
    names = qm.layer_names

    def table(f: Callable[[int, int], float] | np.ndarray, cols: tuple[int, ...]) -> np.ndarray:
        if callable(f):
            return np.array([[float(f(i, b)) for b in cols] for i in range(len(names))])
        return np.asarray(f, dtype=np.float64)

    cost = table(layer_cost, choices)
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in (fixed or {}) if n not in index]
    if unknown:
        raise MixqError(f"fixed names unknown layer(s) {unknown[:5]}; the model's layers are {names[:5]}"
                        f"{' ...' if len(names) > 5 else ''}")
    pinned = {index[n]: b for n, b in (fixed or {}).items()}
    limits = [v for v in (max_bitops, budget.bitops) if v is not None]
    ops_limit = min(limits) if limits else None
    macs = None
    if ops_limit is not None:
        if x_shape is None:
            raise MixqError("a BitOps budget needs x_shape (the model input shape) to count MACs")
        macs = layer_macs(qm, x_shape)
    size_limit = budget.max_bit_params(qm.total_params)
    size_limit = None if math.isinf(size_limit) else size_limit
    if act_choices is None:
        if act_cost is not None:
            raise MixqError("act_cost needs act_choices (the candidate input bit-widths)")
        a_bits = qm.act_bits if act_bits is None else act_bits
        res = allocate_bits(cost, choices, qm.layer_params, size_limit, macs=macs, max_bitops=ops_limit,
                            act_bits=a_bits, fixed=pinned, time_limit=time_limit)
        return BitConfig(dict(zip(names, res.bits)))
    if act_cost is None:
        raise MixqError("act_choices needs act_cost (a cost per layer and input bit-width)")
    a_choices = check_choices(act_choices, "act_choices")
    res = allocate_pairs(cost, choices, table(act_cost, a_choices), a_choices, qm.layer_params, size_limit,
                         macs=macs, max_bitops=ops_limit, fixed=pinned, time_limit=time_limit)
    return BitConfig(dict(zip(names, res.bits)), dict(zip(names, res.acts or ())))
