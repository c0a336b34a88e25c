"""Bit allocation by integer linear programming (scipy ``milp`` / HiGHS) from per-layer costs.

The package is callable: ``mixq.allocate(model, "hawq-v3", samples=x, labels=y, target_bits=3.0)`` returns
a :class:`~mixq.bits.BitConfig` (see :func:`mixq.allocate.run.allocate`).

- :mod:`~mixq.allocate.ilp`: the solver (:func:`allocate_bits`), MACs and BitOps counting, and
  :func:`allocate_config` (a QuantModel + a cost table -> a BitConfig);
- :mod:`~mixq.allocate.run`: :func:`allocate` (proxy -> costs -> ILP) and :func:`run_allocation` (the
  evaluated, optionally calibrated run behind ``mixq allocate``).
"""

from mixq._face import callable_package
from mixq.allocate.ilp import (
    DEFAULT_BIT_CHOICES,
    AllocationResult,
    allocate_bits,
    allocate_config,
    bitops,
    layer_macs,
    uniform_bitops,
)
from mixq.allocate.run import allocate, run_allocation

__all__ = [
    "DEFAULT_BIT_CHOICES",
    "AllocationResult",
    "allocate",
    "allocate_bits",
    "allocate_config",
    "bitops",
    "layer_macs",
    "run_allocation",
    "uniform_bitops",
]

callable_package(__name__, allocate)
