"""Bit allocation by integer linear programming (scipy ``milp`` / HiGHS) from per-layer costs.

The package is callable: ``mixq.allocate(model, "hawq-v3", samples=x, labels=y, target_bits=3.0)`` returns
a :class:`~mixq.bits.BitConfig` (see :func:`mixq.allocate.run.allocate`).

- :mod:`~mixq.allocate.ilp`: the solvers (:func:`allocate_bits` for weight bits, :func:`allocate_pairs` for
  weight and input bits together), MACs and BitOps counting, and :func:`allocate_config` (a QuantModel + cost
  tables -> a BitConfig);
- :mod:`~mixq.allocate.run`: :func:`allocate` (proxy -> costs -> ILP) and :func:`run_allocation` (the
  evaluated, optionally calibrated run behind ``mixq allocate``);
- :mod:`~mixq.allocate.pareto`: :func:`sweep_front` (the ILP over a sweep of budgets, the non-dominated
  configurations) and :func:`run_allocation_pareto` (the evaluated front behind ``mixq allocate --pareto``).
"""

from mixq._face import callable_package
from mixq.allocate.ilp import (
    DEFAULT_BIT_CHOICES,
    AllocationResult,
    allocate_bits,
    allocate_config,
    allocate_pairs,
    bitops,
    layer_macs,
    uniform_bitops,
)
from mixq.allocate.pareto import SweepPoint, run_allocation_pareto, sweep_front
from mixq.allocate.run import allocate, run_allocation

__all__ = [
    "DEFAULT_BIT_CHOICES",
    "AllocationResult",
    "SweepPoint",
    "allocate",
    "allocate_bits",
    "allocate_config",
    "allocate_pairs",
    "bitops",
    "layer_macs",
    "run_allocation",
    "run_allocation_pareto",
    "sweep_front",
    "uniform_bitops",
]

callable_package(__name__, allocate)
