"""Quantization core: pure primitives, weight ranges, quantized modules, BN folding, model wrapping.

    from mixq.quant import QuantModel
    qm = QuantModel(model, calib=x)      # fold BN, wrap Conv2d / Linear, observe activation ranges
    qm.set_bits(4)                       # or a BitConfig / {layer name: bits}

Layers: :mod:`~mixq.quant.primitives` (tensor functions, exact to torch's fake-quant ops) ->
:mod:`~mixq.quant.ranges` (min/max, OMSE, ACIQ) -> :mod:`~mixq.quant.modules` (QuantConv2d, QuantLinear)
-> :mod:`~mixq.quant.fold` (BN folding through torch.fx) -> :mod:`~mixq.quant.model` (QuantModel).
:mod:`~mixq.quant.reference` is an independent re-implementation used to cross-check the pipeline.
"""

from mixq.quant.fold import FoldReport, fold_batchnorm
from mixq.quant.model import LayerInfo, QuantModel

__all__ = ["FoldReport", "LayerInfo", "QuantModel", "fold_batchnorm"]
