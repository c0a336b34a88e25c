"""Uniform bit-width sweeps: the quantized top-1 of one model at several uniform weight bit-widths.

Each bit-width is one work item of an :class:`~mixq.executor.Executor`, so a sweep runs serially in this
process by default, or on a pool of Ray actors that each hold the quantized model and the test images once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mixq.errors import MixqError
from mixq.evaluation.task import Task
from mixq.executor import Executor, SerialExecutor
from mixq.quant.model import QuantModel


@dataclass(frozen=True)
class SweepRow:
    """One uniform bit-width of a sweep.

    Attributes:
        bits: the weight bits of every quantized layer (32 = float weights).
        top1: quantized top-1 (%) on the task's test images.
        size_mb: weight size in MB at these bits.
        avg_bits: parameter-weighted average weight bits.
    """

    bits: int
    top1: float
    size_mb: float
    avg_bits: float


def _sweep_item(state: tuple[QuantModel, Task, int], bits: int) -> float:
    """Top-1 of the state's model at uniform ``bits`` (a work item of the executor)."""
    qm, task, batch_size = state
    qm.set_bits(bits)
    return task.top1(qm, batch_size, progress=False)


def uniform_sweep(
    qm: QuantModel,
    task: Task,
    bits: Sequence[int],
    batch_size: int = 500,
    executor: Executor | None = None,
    progress: bool = True,
) -> list[SweepRow]:
    """Quantized top-1 of ``qm`` at each uniform weight bit-width of ``bits``.

    Args:
        qm: the quantized model (its bit configuration is restored afterwards).
        task: the task whose test images are evaluated.
        bits: weight bit-widths (2..8, or 32 for float weights); each appears once in the result, in the
            order given.
        batch_size: evaluation batch size.
        executor: where the bit-widths are evaluated (default: serially in this process).
        progress: a progress bar over the bit-widths.

    Returns:
        One :class:`SweepRow` per bit-width.

    Raises:
        MixqError: no bit-widths, or one given twice.
    """
    bits = [int(b) for b in bits]
    if not bits:
        raise MixqError("a sweep needs at least one bit-width")
    if len(set(bits)) != len(bits):
        raise MixqError(f"bit-widths of a sweep must be distinct, got {bits}")
    saved = qm.bit_config()
    try:
        with (executor or SerialExecutor()).session((qm, task, batch_size)) as pool:
            top1 = pool.map(_sweep_item, bits, progress=progress, desc="uniform sweep")
    finally:
        qm.set_bits(saved)
    return [SweepRow(b, t, qm.size_mb(b), qm.avg_bits(b)) for b, t in zip(bits, top1, strict=True)]
