"""EvoQ's weight sensitivity table (EvoQ eq. 4) as an additive proxy, for the ILP and for ranking.

``S[l, b]`` is the output MSE on the mini-batch when only layer ``l``'s weights are quantized to ``b`` bits,
every other weight in float and every input at the model's activation bits, against the same model with all
weights in float. The gain table is ``-S`` (0 for a float layer), so :meth:`Proxy.layer_costs` is ``S``
itself: an integer program on it minimises the summed single-layer output MSE, and per-layer input costs of
the same kind (``mixq.evoq.sensitivity.compute_act_sensitivity``) are in the same units, which is what lets
the ILP choose weight and input bits together.

The numbers are those of :func:`mixq.evoq.sensitivity.compute_sensitivity` on the same samples; the table
is measured here again (proxies sit below ``mixq.evoq`` in the import order) with the same forwards.
"""

from __future__ import annotations

import numpy as np
import torch

from mixq.evaluation.metrics import output_mse, predict
from mixq.proxies.base import BITS, Proxy, layer_names_of
from mixq.proxies.registry import register_proxy
from mixq.quant.model import QuantModel
from mixq.quant.modules import QuantMixin
from mixq.quant.primitives import FLOAT_BITS

QUANT_BITS: tuple[int, ...] = tuple(b for b in BITS if b != FLOAT_BITS)


@torch.no_grad()
def weight_sensitivity(qm: QuantModel, layers: list[QuantMixin], x: torch.Tensor, bits: tuple[int, ...],
                       batch_size: int = 256) -> np.ndarray:
    """Output MSE with only one layer's weights quantized, for each layer and bit-width.

    Args:
        qm: the model, with its activation ranges observed; every quantizer's bits are restored afterwards.
        layers: its quantized layers to measure (modules of ``qm``).
        x: input batch.
        bits: weight bit-widths.
        batch_size: forward batch size.

    Returns:
        ``(len(layers), len(bits))`` MSE.
    """
    saved = [(m.weight_quantizer.bits, m.input_quantizer.bits) for m in qm.layers.values()]
    try:
        for m in qm.layers.values():
            m.weight_quantizer.bits = FLOAT_BITS
            m.input_quantizer.bits = qm.act_bits
        ref = predict(qm, x, batch_size)
        mse = np.zeros((len(layers), len(bits)))
        for i, layer in enumerate(layers):
            for k, b in enumerate(bits):
                layer.weight_quantizer.bits = b
                mse[i, k] = output_mse(predict(qm, x, batch_size), ref)
            layer.weight_quantizer.bits = FLOAT_BITS
    finally:
        for m, (w, a) in zip(qm.layers.values(), saved, strict=True):
            m.weight_quantizer.bits, m.input_quantizer.bits = w, a
    return mse


@register_proxy("sensitivity")
class Sensitivity(Proxy):
    """EvoQ's sensitivity: minus the output MSE of quantizing only that layer's weights (module docstring).

    No labels and no gradients; ``7 x layers`` forwards of the mini-batch. On a :class:`QuantModel` the
    inputs are quantized at its ``act_bits`` (its observed ranges); a plain float model is wrapped in one
    calibrated on the mini-batch.

    Args:
        act_bits: input bits of a wrapped float model (default 8; a QuantModel keeps its own).
        batch_size: forward batch size.
    """

    def __init__(self, act_bits: int = 8, batch_size: int = 256) -> None:
        self.act_bits = act_bits
        self.batch_size = batch_size

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        if isinstance(model, QuantModel):
            qm, layers = model, list(modules)
        else:
            qm = QuantModel(model, calib=x, act_bits=self.act_bits)
            layers = [qm.model.get_submodule(n) for n in layer_names_of(model, modules)]
        mse = weight_sensitivity(qm, layers, x, QUANT_BITS, self.batch_size)
        gains = np.zeros((len(layers), len(BITS)))
        gains[:, [BITS.index(b) for b in QUANT_BITS]] = -mse
        return gains, {"mse": mse}
