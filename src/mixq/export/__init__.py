"""Export: a quantized model leaves mixq as an ONNX QDQ file with true low-bit weights or a packed checkpoint.

The package is callable::

    mixq.export(qm, "model.onnx")                         # ONNX QDQ: INT2 / INT4 / INT8 weights, opset 25
    mixq.export(qm, "model.pt", model="resnet20-jpeg")    # bit-packed native checkpoint
    qm2 = mixq.load_quantized("model.pt")                 # outputs equal qm's exactly

- :mod:`~mixq.export.qdq`: the ONNX writer (:func:`export_onnx`) and the opset / onnxruntime checks;
- :mod:`~mixq.export.verify`: onnxruntime against mixq's own model, and the integer levels per channel;
- :mod:`~mixq.export.packed`: the packed checkpoint (:func:`save_packed`, :func:`load_quantized`);
- :mod:`~mixq.export.run`: the quantized model of a finished run folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mixq._face import callable_package
from mixq.errors import MixqError
from mixq.export.packed import load_quantized, pack_bits, save_packed, unpack_bits
from mixq.export.qdq import (
    DEFAULT_OPSET,
    OPSETS,
    WEIGHT_TYPES,
    ExportReport,
    LayerExport,
    check_opset,
    export_onnx,
)
from mixq.export.run import model_from_run
from mixq.export.verify import compare_outputs, weight_levels
from mixq.quant.model import QuantModel

FORMATS = ("onnx", "pt")

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "OPSETS",
    "WEIGHT_TYPES",
    "ExportReport",
    "LayerExport",
    "check_opset",
    "compare_outputs",
    "export",
    "export_onnx",
    "load_quantized",
    "model_from_run",
    "pack_bits",
    "save_packed",
    "unpack_bits",
    "weight_levels",
]


def export(
    qm: QuantModel,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    input_shape: Sequence[int] | None = None,
    model: str | None = None,
    weight_type: str = "int",
) -> dict:
    """Write a quantized model as ONNX QDQ or as a packed checkpoint.

    Args:
        qm: the quantized model (bits set; activation ranges observed; calibrated weights are kept).
        path: output file.
        format: ``"onnx"`` or ``"pt"`` (default: from the file suffix).
        opset: ONNX opset, 21..25.
        input_shape: one sample's shape for the ONNX trace (default: the calibration samples' shape).
        model: for ``"pt"``: how to rebuild the architecture, a registry name or ``package.module:function``.
        weight_type: ONNX weight types, ``"int"`` (INT2/4/8) or ``"uint"`` (UINT2/4/8; see
            :func:`~mixq.export.qdq.export_onnx`).

    Returns:
        A size report (``ExportReport.to_dict()`` for ONNX; the packed checkpoint's size report for ``pt``).
    """
    if not isinstance(qm, QuantModel):
        raise MixqError(f"export needs a QuantModel (from mixq.quantize), got {type(qm).__name__}")
    fmt = format or Path(path).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise MixqError(f"unknown export format {fmt!r} for {str(path)!r}: expected one of {list(FORMATS)} "
                        "(or a .onnx / .pt file name)")
    if fmt == "onnx":
        shape = input_shape or qm.input_shape
        if shape is None:
            raise MixqError("ONNX export needs the input shape of one sample: input_shape=(3, 32, 32)")
        return export_onnx(qm, path, shape, opset=opset, weight_type=weight_type).to_dict()
    if model is None:
        raise MixqError("a packed checkpoint needs model=... (a registry name or package.module:function) to "
                        "rebuild the architecture when it is loaded")
    return save_packed(qm, path, model)


callable_package(__name__, export)
