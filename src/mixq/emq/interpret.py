"""Interpreter of EMQ genotypes: static shape check, per-layer values, gain tables.

``layer_values(g, inputs, bits)`` walks the genotype's operations (looked up by name in
:mod:`mixq.emq.ops`) over every layer's source tensors and returns the per-layer scalars
``s[l, k]`` for each bit-width ``bits[k]`` (a bit-independent formula is computed once per layer and
repeated). ``gain_table`` applies the bit-aware aggregation, so that ``score(b) = sum_l G[l, b_l]``
like every additive proxy of :mod:`mixq.proxies`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mixq.emq.genotype import Genotype
from mixq.emq.inputs import BIT_DEPENDENT, FormulaInputs
from mixq.emq.ops import AGGREGATE, BINARY, REDUCE, UNARY, ShapeError, binary_shape, unary_shape


class FormulaError(ValueError):
    """A formula that cannot be evaluated: ``reason`` is ``"shape"``, ``"nonfinite"`` or ``"source"``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_shapes(g: Genotype, inputs: FormulaInputs) -> None:
    """Static compatibility check on every layer's shapes; touches no tensor data.

    Args:
        g: genotype.
        inputs: computed sources (only their shapes are read).

    Raises:
        FormulaError: reason ``"source"`` (a source that was not computed) or ``"shape"``.
    """
    for src in g.inputs:
        if src not in inputs.sources:
            raise FormulaError("source", f"source {src!r} is not available ({inputs.sources})")
    for layer in range(len(inputs.layer_names)):
        shapes = []
        for src, chain in zip(g.inputs, g.unary):
            s = inputs.shape(src, layer)
            for op in chain:
                s = unary_shape(op, s)
            shapes.append(s)
        try:
            if g.structure == "tree":
                binary_shape(g.binary, shapes[0], shapes[1])
        except ShapeError as exc:
            raise FormulaError("shape", f"layer {inputs.layer_names[layer]!r}: {exc}") from None


def _branch(src: str, chain: Sequence[str], inputs: FormulaInputs, layer: int, bits: int | None) -> torch.Tensor:
    t = inputs.get(src, layer, bits)
    for op in chain:
        t = UNARY[op].fn(t)
    return t


def layer_value(g: Genotype, inputs: FormulaInputs, layer: int, bits: int | None = None) -> float:
    """The formula's scalar for one layer (at ``bits`` when the formula reads a bit-dependent source).

    Args:
        g: genotype.
        inputs: computed sources.
        layer: layer position.
        bits: weight bits (bit-dependent formulas only).

    Returns:
        The per-layer value (may be NaN or inf: the caller screens it).
    """
    with torch.no_grad():
        parts = [_branch(s, c, inputs, layer, bits) for s, c in zip(g.inputs, g.unary)]
        out = BINARY[g.binary].fn(parts[0], parts[1]) if g.structure == "tree" else parts[0]
        if out.dim() > 0:
            out = REDUCE[g.reduce].fn(out)
        return float(out)


def layer_values(
    g: Genotype, inputs: FormulaInputs, bits: Sequence[int], layers: Sequence[int] | None = None
) -> np.ndarray:
    """Per-layer values for each bit-width.

    Args:
        g: genotype.
        inputs: computed sources.
        bits: bit-widths (columns).
        layers: layer positions (default all).

    Returns:
        ``(len(layers), len(bits))`` float64 array; columns are equal for a bit-independent formula.
    """
    layers = range(len(inputs.layer_names)) if layers is None else layers
    out = np.empty((len(layers), len(bits)), dtype=np.float64)
    dep = any(s in BIT_DEPENDENT for s in g.inputs)
    for i, layer in enumerate(layers):
        if dep:
            for k, b in enumerate(bits):
                out[i, k] = layer_value(g, inputs, layer, int(b))
        else:
            out[i, :] = layer_value(g, inputs, layer)
    return out


def gain_table(g: Genotype, values: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """Apply the aggregation and sign: ``G[l, k] = sign * agg(values[l, k], bits[k])``.

    Args:
        g: genotype.
        values: output of :func:`layer_values`.
        bits: the bit-widths of the columns.

    Returns:
        ``(L, len(bits))`` gains; ``score(b) = sum_l G[l, col(b_l)]``.
    """
    fn = AGGREGATE[g.aggregate][0]
    out = np.empty_like(values)
    for k, b in enumerate(bits):
        out[:, k] = fn(values[:, k], int(b))
    return g.sign * out
