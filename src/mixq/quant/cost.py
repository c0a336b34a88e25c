"""What a bit configuration costs: weight size, average weight bits and BitOps, from one traced forward.

    cost = CostModel.from_model(qm, (3, 32, 32))   # MACs per layer counted once, in float mode
    cost.size_mb(w)                 # sum(params x w) / 8 / 2^20
    cost.bitops(w, a)               # sum(MACs x w x a) per sample (HAWQ-V3); a defaults to the model's act bits

``w`` and ``a`` are per-layer weight and input-activation bit-widths in ``qm.layer_names`` order (or one
int for every layer). The searches and the ILP read every cost through this one object, so a budget means
the same thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mixq.bits import MB, BitConfig, Budget
from mixq.errors import MixqError
from mixq.quant.matching import call_macs
from mixq.quant.model import QuantModel

COSTS = ("bits", "mb", "bitops")  # what a Pareto front's cost axis may be
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def layer_macs(qm: QuantModel, x_shape: Sequence[int]) -> list[int]:
    """Multiply-accumulates per sample of every quantized layer, measured with one forward pass.

    A conv layer does ``out_elems * (in_channels / groups) * kH * kW`` MACs, where ``out_elems`` is its
    output size per sample (``C_out * H' * W'``); a linear layer ``out_elems * in_features`` (``in * out``
    for a 2-D input). A layer called several times counts every call; a layer never called counts 0.

    Args:
        qm: the model.
        x_shape: input shape, with or without the batch dimension (``(N, C, H, W)`` or ``(C, H, W)``
            for image models: a 4-entry shape is taken as batched). One zero sample of that shape is run
            in float mode.

    Returns:
        MACs per layer, in ``qm.layer_names`` order.
    """
    if not isinstance(qm, QuantModel):
        raise MixqError(f"layer_macs needs a QuantModel, got {type(qm).__name__}")
    shape = tuple(int(s) for s in x_shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise MixqError(f"x_shape must be an input shape such as (N, C, H, W), got {tuple(x_shape)}")
    sample_shape = shape[1:] if len(shape) in (2, 4) else shape
    counts = {name: 0 for name in qm.layer_names}

    def hook(name: str) -> Callable:
        def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            counts[name] += call_macs(module, inputs, output)  # the input is one sample
        return record

    ref = next(qm.parameters(), None)
    x = torch.zeros((1, *sample_shape), dtype=ref.dtype if ref is not None else torch.float32,
                    device=ref.device if ref is not None else "cpu")
    handles = [layer.register_forward_hook(hook(name)) for name, layer in qm.layers.items()]
    try:
        with torch.no_grad(), qm.float_mode():
            qm(x)
    except MixqError:
        raise
    except Exception as exc:  # a wrong shape surfaces here
        raise MixqError(f"cannot run the model on x_shape {shape} to count MACs: {exc}") from None
    finally:
        for h in handles:
            h.remove()
    return [counts[name] for name in qm.layer_names]


def parse_count(text: str | float, what: str = "value") -> float:
    """A positive count written as a number with an optional k/M/G/T suffix (``"1.5G"`` = 1.5e9).

    Args:
        text: the text (or a number).
        what: the input's name, for the error message (e.g. ``"--target-bitops"``).

    Returns:
        The count.

    Raises:
        MixqError: anything but a positive finite number with an optional suffix.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
        if m is None:
            raise MixqError(f"{what} must be a positive number with an optional k/M/G/T suffix (e.g. 1.2G), "
                            f"got {text!r}")
        value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not (value > 0 and np.isfinite(value)):
        raise MixqError(f"{what} must be a positive number, got {text!r}")
    return value


def _per_layer(bits: Sequence[int] | int, n: int, what: str) -> np.ndarray:
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
        return np.full(n, float(bits))
    arr = np.asarray(bits, dtype=np.float64)
    if arr.shape != (n,):
        raise MixqError(f"{what} bits must give one bit-width per layer ({n}), got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class CostModel:
    """Per-layer weight parameters and MACs of a model, and the costs of bit configurations.

    Attributes:
        layers: layer names, in ``QuantModel.layer_names`` order.
        params: weight parameters per layer.
        macs: multiply-accumulates per sample per layer.
        act_bits: input bits of a layer whose configuration gives none.
    """

    layers: tuple[str, ...]
    params: tuple[int, ...]
    macs: tuple[int, ...]
    act_bits: int = 8

    @classmethod
    def from_model(cls, qm: QuantModel, x_shape: Sequence[int]) -> CostModel:
        """Count a model's parameters and (with one float forward of one sample) its MACs.

        Args:
            qm: the model.
            x_shape: one input's shape, with or without the batch dimension.

        Returns:
            The cost model.
        """
        return cls(tuple(qm.layer_names), tuple(qm.layer_params), tuple(layer_macs(qm, x_shape)), qm.act_bits)

    @property
    def total_params(self) -> int:
        """Quantized weight parameters."""
        return int(sum(self.params))

    def bit_params(self, w: Sequence[int] | int) -> float:
        """``sum(params x w)``: the weights' size in bits."""
        return float(np.dot(np.asarray(self.params, dtype=np.float64), _per_layer(w, len(self.params), "weight")))

    def size_mb(self, w: Sequence[int] | int) -> float:
        """Weight size in MB (biases not included)."""
        return self.bit_params(w) / MB

    def avg_bits(self, w: Sequence[int] | int) -> float:
        """Parameter-weighted average weight bits."""
        return self.bit_params(w) / self.total_params

    def bitops(self, w: Sequence[int] | int, a: Sequence[int] | int | None = None) -> float:
        """BitOps per sample: ``sum(MACs x w x a)``; ``a`` defaults to :attr:`act_bits` for every layer."""
        n = len(self.macs)
        acts = _per_layer(self.act_bits if a is None else a, n, "activation")
        return float(np.dot(np.asarray(self.macs, dtype=np.float64), _per_layer(w, n, "weight") * acts))

    def of_config(self, config: BitConfig) -> dict[str, float]:
        """Every cost of a configuration.

        Args:
            config: names every layer (activation bits where it sets them, else :attr:`act_bits`).

        Returns:
            ``{"avg_bits", "size_mb", "bitops"}``.
        """
        config.validate(self.layers)
        w = config.bits_tuple(self.layers)
        a = [config.acts.get(n, self.act_bits) for n in self.layers]
        return {"avg_bits": self.avg_bits(w), "size_mb": self.size_mb(w), "bitops": self.bitops(w, a)}

    def cost_of(self, kind: str, w: Sequence[int] | int, a: Sequence[int] | int | None = None) -> float:
        """One cost by name: ``"bits"`` (average weight bits), ``"mb"`` or ``"bitops"``."""
        if kind == "bits":
            return self.avg_bits(w)
        if kind == "mb":
            return self.size_mb(w)
        if kind == "bitops":
            return self.bitops(w, a)
        raise MixqError(f"cost must be one of {list(COSTS)}, got {kind!r}")

    def cost_range(self, kind: str, bit_choices: Sequence[int],
                   act_choices: Sequence[int] | None = None) -> tuple[float, float]:
        """The cheapest and the dearest configuration's cost: every layer at the fewest, then the most bits.

        Args:
            kind: the cost axis (:data:`COSTS`).
            bit_choices: candidate weight bit-widths.
            act_choices: candidate input bit-widths (None: inputs at :attr:`act_bits`).

        Returns:
            ``(lowest, highest)``.
        """
        acts = list(act_choices) if act_choices else [self.act_bits]
        return (self.cost_of(kind, min(bit_choices), min(acts)), self.cost_of(kind, max(bit_choices), max(acts)))

    def check_budget(self, budget: Budget, min_bits: int, act_choices: Sequence[int] | None = None) -> None:
        """Refuse a budget that even the cheapest configuration exceeds, naming the smallest achievable value.

        Args:
            budget: the budget.
            min_bits: the lowest weight bit-width allowed.
            act_choices: activation bit-widths allowed (None: every layer at :attr:`act_bits`).

        Raises:
            MixqError: for each limit the cheapest configuration is over.
        """
        a_min = self.act_bits if not act_choices else min(act_choices)
        tol = 1 + 1e-12
        if budget.avg_bits is not None and min_bits > budget.avg_bits * tol:
            raise MixqError(f"budget is infeasible: --target-bits {budget.avg_bits} is below the smallest achievable "
                            f"{min_bits:.3f} average bits ({min_bits} bits everywhere)")
        if budget.size_mb is not None and self.size_mb(min_bits) > budget.size_mb * tol:
            raise MixqError(f"budget is infeasible: --target-mb {budget.size_mb} is below the smallest achievable "
                            f"{self.size_mb(min_bits):.4f} MB ({min_bits} bits everywhere)")
        if budget.bitops is not None and self.bitops(min_bits, a_min) > budget.bitops * tol:
            raise MixqError(f"budget is infeasible: --target-bitops {budget.bitops:.6g} is below the smallest "
                            f"achievable {self.bitops(min_bits, a_min):.6g} BitOps ({min_bits}-bit weights, "
                            f"{a_min}-bit activations everywhere)")
