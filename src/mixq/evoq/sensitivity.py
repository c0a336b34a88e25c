"""Per-layer, per-bit quantization sensitivity (EvoQ eq. 4).

``S[j, b]`` is the output MSE on the N calibration samples when only layer ``j``'s weights are quantized
to ``b`` bits and every other layer's weights stay in float. The reference output is the same model
with all weights in float and the activations quantized as configured, so the table isolates the weight
error of layer ``j`` (with 8-bit activations the activation error is common to every configuration).

The activation table (:func:`compute_act_sensitivity`, for searches with activation genes) is the same
idea for inputs: ``A[j, a]`` is the output MSE when only layer ``j``'s input is quantized to ``a`` bits,
every other input at the run's activation bits and every weight in float, against the same reference.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixq.errors import MixqError
from mixq.evaluation.metrics import output_mse, predict
from mixq.executor import Executor, SerialExecutor
from mixq.fileio import atomic_write_json, atomic_write_text
from mixq.quant.model import QuantModel
from mixq.quant.primitives import FLOAT_BITS
from mixq.quant.replay import PrefixCache


@dataclass(frozen=True)
class SensitivityTable:
    """Output MSE per (layer, bit-width).

    Attributes:
        layers: layer names, in model order.
        bits: bit-widths of the columns, ascending.
        mse: array ``(len(layers), len(bits))``.
        params: weight parameters per layer.
    """

    layers: tuple[str, ...]
    bits: tuple[int, ...]
    mse: np.ndarray
    params: tuple[int, ...]

    def value(self, layer_index: int, bits: int) -> float:
        """MSE of one layer at one bit-width.

        Args:
            layer_index: position in ``layers``.
            bits: a bit-width in ``bits``.

        Returns:
            The MSE.
        """
        return float(self.mse[layer_index, self.bits.index(bits)])

    def to_dict(self) -> dict:
        """JSON form: ``{"bits": [...], "layers": {name: {"params": n, "mse": [...]}}}``."""
        return {
            "bits": list(self.bits),
            "layers": {n: {"params": p, "mse": [float(v) for v in row]}
                       for n, p, row in zip(self.layers, self.params, self.mse)},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "sensitivity table") -> SensitivityTable:
        """Parse :meth:`to_dict` output.

        Args:
            data: parsed JSON.
            source: name for error messages.

        Returns:
            The table.
        """
        try:
            layers = tuple(data["layers"])
            return cls(
                layers=layers,
                bits=tuple(int(b) for b in data["bits"]),
                mse=np.array([data["layers"][n]["mse"] for n in layers], dtype=np.float64),
                params=tuple(int(data["layers"][n]["params"]) for n in layers),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MixqError(f"{source} is not a mixq sensitivity table: {exc}") from None

    def save(self, directory: str | os.PathLike, signature: dict | None = None, stem: str = "sensitivity",
             seconds: float | None = None) -> None:
        """Write ``STEM.json`` and ``STEM.csv`` (one row per layer) into a folder, atomically.

        Args:
            directory: output folder (created if missing).
            signature: the settings the table was measured with (stored under ``"signature"`` in the JSON
                file; a cache is reused only by a run with the same signature).
            stem: file name stem (``"act_sensitivity"`` for the activation table, whose CSV columns read
                ``mse_a4`` ...).
            seconds: the wall time it took to measure (stored under ``"seconds"``, so that a run resumed
                from the file can still report it).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        rows = io.StringIO(newline="")
        w = csv.writer(rows)
        tag = "a" if stem.startswith("act") else "w"
        w.writerow(["layer", "params", *[f"mse_{tag}{b}" for b in self.bits]])
        for n, p, row in zip(self.layers, self.params, self.mse):
            w.writerow([n, p, *[f"{v:.6g}" for v in row]])
        atomic_write_text(d / f"{stem}.csv", rows.getvalue())
        data = self.to_dict() if signature is None else {"signature": signature, **self.to_dict()}
        if seconds is not None:
            data["seconds"] = float(seconds)
        atomic_write_json(d / f"{stem}.json", data)


class _ReferencePrefix:
    """Replays the reference pass (every weight in float) up to the measured layer, which is where a
    one-layer configuration first differs from it: layer ``j``'s row then costs only the layers from ``j`` on.

    Built lazily in the process that computes the rows (a pickled copy, as a Ray worker gets, starts empty).
    """

    def __init__(self, max_mb: float) -> None:
        self.max_mb = max_mb
        self.cache: PrefixCache | None = None

    def __getstate__(self) -> dict:
        return {"max_mb": self.max_mb, "cache": None}

    @staticmethod
    def _key(qm: QuantModel) -> tuple[int, ...]:
        layers = [qm.layers[n] for n in qm.layer_names]
        return (*(m.weight_quantizer.bits for m in layers), *(m.input_quantizer.bits for m in layers))

    def output(self, qm: QuantModel, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x`` with the bits now set (equal to ``qm(x)``)."""
        key = self._key(qm)
        if self.cache is None:  # two reference passes: the first learns the execution order, the second is kept
            n = len(qm.layer_names)
            reference = (FLOAT_BITS,) * n + (qm.act_bits,) * n  # what set_bits(FLOAT_BITS) sets
            self.cache = PrefixCache(qm, x, self.max_mb)
            self.cache(reference)
            self.cache(reference)
        return self.cache(key, keep=False)


@torch.no_grad()
def _sensitivity_row(state: tuple[QuantModel, torch.Tensor, torch.Tensor, tuple[int, ...], int, str,
                                  _ReferencePrefix | None], j: int) -> list[float]:
    """Row ``j`` of the table (a work item of the executor): layer ``j``'s weight (or input) at each bit-width,
    every weight in float and every other input at the model's activation bits."""
    qm, x, ref, bits, batch_size, what, prefix = state
    qm.set_bits(FLOAT_BITS)
    layer = qm.layers[qm.layer_names[j]]
    quantizer = layer.weight_quantizer if what == "weight" else layer.input_quantizer
    restore = quantizer.bits
    row = []
    for b in bits:
        quantizer.bits = b
        out = predict(qm, x, batch_size) if prefix is None else prefix.output(qm, x)
        row.append(output_mse(out, ref))
    quantizer.bits = restore
    return row


@torch.no_grad()
def compute_sensitivity(
    qm: QuantModel,
    x: torch.Tensor,
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
    batch_size: int = 256,
    progress: bool = True,
    executor: Executor | None = None,
    what: str = "weight",
    prefix_mb: float = 2048.0,
) -> SensitivityTable:
    """Measure EvoQ's per-layer sensitivity table.

    Args:
        qm: the quantized model (its current bit configuration is restored afterwards).
        x: calibration inputs ``(N, C, H, W)``.
        bits: bit-widths to measure.
        batch_size: forward batch size.
        progress: show a progress bar (one step per layer).
        executor: where the rows are computed (default: serially in this process). With a Ray executor
            the model, the samples and the float reference go to the workers once and each worker
            computes whole rows; the table is the same as the serial one.
        what: ``"weight"`` (EvoQ eq. 4) or ``"act"`` (each layer's input instead; see the module docstring).
        prefix_mb: memory (MiB) for the reference pass's layer outputs: row ``j`` replays them up to layer
            ``j`` (:class:`~mixq.quant.replay.PrefixCache`; the same table bit for bit) instead of recomputing
            the float prefix for every bit-width. 0, or more samples than ``batch_size``, turns it off.

    Returns:
        The :class:`SensitivityTable`.
    """
    if not bits or any(b == FLOAT_BITS for b in bits):
        raise MixqError(f"sensitivity bit-widths must be quantized bit-widths, got {bits}")
    if what not in ("weight", "act"):
        raise MixqError(f"sensitivity of 'weight' or 'act' bits, got {what!r}")
    bits = tuple(sorted(set(bits)))
    saved = qm.bit_config()
    names = qm.layer_names
    try:
        qm.set_bits(FLOAT_BITS)
        ref = predict(qm, x, batch_size)
        prefix = _ReferencePrefix(prefix_mb) if prefix_mb > 0 and x.shape[0] <= batch_size else None
        with (executor or SerialExecutor()).session((qm, x, ref, bits, batch_size, what, prefix)) as pool:
            rows = pool.map(_sensitivity_row, list(range(len(names))), progress=progress,
                            desc="sensitivity" if what == "weight" else "act sensitivity")
    finally:
        qm.set_bits(saved)
    mse = np.array(rows, dtype=np.float64).reshape(len(names), len(bits))
    return SensitivityTable(tuple(names), bits, mse, tuple(qm.layer_params))


def compute_act_sensitivity(qm: QuantModel, x: torch.Tensor, bits: tuple[int, ...] = (4, 6, 8),
                            batch_size: int = 256, progress: bool = True,
                            executor: Executor | None = None, prefix_mb: float = 2048.0) -> SensitivityTable:
    """The activation table: output MSE with only layer ``j``'s input at ``b`` bits (module docstring).

    Args:
        qm: the quantized model with its activation ranges observed (restored afterwards).
        x: calibration inputs.
        bits: input bit-widths to measure.
        batch_size: forward batch size.
        progress: show a progress bar.
        executor: where the rows are computed.
        prefix_mb: memory for replaying the reference pass (see :func:`compute_sensitivity`).

    Returns:
        The :class:`SensitivityTable` (its ``params`` are the layers' weight parameters).
    """
    return compute_sensitivity(qm, x, bits, batch_size, progress, executor, what="act", prefix_mb=prefix_mb)
