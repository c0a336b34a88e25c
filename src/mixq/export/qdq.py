"""ONNX QDQ export of a :class:`~mixq.quant.model.QuantModel` with true low-bit integer weights.

The graph is the BN-folded model as torch's TorchScript-based exporter writes it (opset 18, then converted
to the target opset with ``onnx.version_converter``), rewritten in the QDQ form:

- every quantized weight becomes an integer initializer in the smallest ONNX type that holds its bits
  (``INT2`` for 2 bits at opset >= 25, ``INT4`` for 2..4 bits, ``INT8`` for 5..8 bits) with a per-output-
  channel ``DequantizeLinear`` (``axis=0``) in front of its Conv / Gemm. mixq's grid is unsigned
  (``q`` in ``[0, 2^b - 1]``, zero point ``zp``); the file stores ``q - 2^(b-1)`` and ``zp - 2^(b-1)`` in the
  signed type, so ``(q_s - zp_s) * scale == (q - zp) * scale`` exactly and the dequantized weights equal
  mixq's fake-quantized weights bit for bit (``weight_type="uint"`` stores ``q`` and ``zp`` in
  ``UINT2``/``UINT4``/``UINT8`` as they are);
- the input of every quantized layer gets ``QuantizeLinear -> DequantizeLinear`` (``UINT8`` per tensor) with
  the layer's calibrated range; an activation below 8 bits adds a ``Clip`` to ``[0, 2^b - 1]`` between them;
- layers left in float (32 bits) keep their float initializer; the model's input and output stay FP32.

ONNX's ``QuantizeLinear`` divides by the scale where mixq multiplies by its reciprocal, so an activation
exactly halfway between two grid points can round the other way: outputs agree to float tolerance, not
bit for bit (the verification reports the largest logit difference).
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixq.bits import FLOAT_BITS, MAX_BITS, MIN_BITS
from mixq.errors import MixqError
from mixq.quant.model import QuantModel
from mixq.quant.modules import QuantMixin

OPSETS = (21, 22, 23, 24, 25)  # INT4 DequantizeLinear needs 21; INT2 needs 25
DEFAULT_OPSET = 25
BASE_OPSET = 18  # what torch's exporter writes before the conversion
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _onnx():
    try:
        import onnx
        import onnx.version_converter  # noqa: F401
    except ImportError:
        raise MixqError("ONNX export needs the onnx package: pip install 'mixq[export]'") from None
    return onnx


WEIGHT_TYPES = ("int", "uint")


def container(bits: int, opset: int, weight_type: str = "int") -> str:
    """The ONNX integer type that stores a ``bits``-bit weight at ``opset``.

    Args:
        bits: weight bits, 2..8.
        opset: target opset.
        weight_type: ``"int"`` (signed types, the codes shifted by ``2^(b-1)``) or ``"uint"`` (unsigned types,
            the codes as they are).

    Returns:
        ``"INT2"``, ``"INT4"`` or ``"INT8"`` (``"UINT..."`` for ``weight_type="uint"``).
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise MixqError(f"weight bits {bits} cannot be exported: expected {MIN_BITS}..{MAX_BITS} or 32 (float)")
    if weight_type not in WEIGHT_TYPES:
        raise MixqError(f"unknown weight type {weight_type!r}: expected one of {list(WEIGHT_TYPES)}")
    prefix = "INT" if weight_type == "int" else "UINT"
    if bits <= 2 and opset >= 25:
        return prefix + "2"
    return prefix + ("4" if bits <= 4 else "8")


CONTAINER_BITS = {"INT2": 2, "INT4": 4, "INT8": 8, "UINT2": 2, "UINT4": 4, "UINT8": 8}


def ir_version_for(opset: int) -> int:
    """The lowest ONNX IR version that carries ``opset`` (what onnxruntime is asked to load).

    Args:
        opset: the default-domain opset.

    Returns:
        The IR version.
    """
    onnx = _onnx()
    return int(onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))


def check_opset(opset: int) -> None:
    """Fail before any work when ``opset`` cannot hold the QDQ weights or the installed onnxruntime cannot load it.

    A small model (per-axis ``DequantizeLinear`` of ``INT4`` and ``UINT4``, at opset >= 25 also ``INT2`` and
    ``UINT2``) is built at the opset's IR version and run in onnxruntime.

    Args:
        opset: the target opset.
    """
    if opset not in OPSETS:
        raise MixqError(f"--opset {opset} is not supported: expected one of {list(OPSETS)} (INT4 weights need "
                        f"opset 21, INT2 weights opset 25)")
    onnx = _onnx()
    if opset > onnx.defs.onnx_opset_version():
        raise MixqError(f"the installed onnx {onnx.__version__} knows opsets up to {onnx.defs.onnx_opset_version()}, "
                        f"not {opset}; upgrade onnx or pass --opset {onnx.defs.onnx_opset_version()}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise MixqError("ONNX export checks its output with onnxruntime: pip install 'mixq[export]'") from None
    from onnx import TensorProto, helper

    types = [TensorProto.INT4, TensorProto.UINT4] + ([TensorProto.INT2, TensorProto.UINT2] if opset >= 25 else [])
    nodes, inits, outs = [], [], []
    for t in types:
        nm = TensorProto.DataType.Name(t)
        inits += [helper.make_tensor(f"q{nm}", t, [2, 2], [1, 1, 0, 1]),
                  helper.make_tensor(f"s{nm}", TensorProto.FLOAT, [2], [0.5, 0.25]),
                  helper.make_tensor(f"z{nm}", t, [2], [0, 1])]
        nodes.append(helper.make_node("DequantizeLinear", [f"q{nm}", f"s{nm}", f"z{nm}"], [f"y{nm}"], axis=0))
        outs.append(helper.make_tensor_value_info(f"y{nm}", TensorProto.FLOAT, [2, 2]))
    probe = helper.make_model(helper.make_graph(nodes, "probe", [], outs, inits),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version_for(opset))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise MixqError(f"the installed onnxruntime {ort.__version__} cannot run opset {opset} (IR version "
                        f"{ir_version_for(opset)}) low-bit DequantizeLinear: {str(exc).splitlines()[0]}; try "
                        f"--opset 21 or upgrade onnxruntime") from None
    for t, y in zip(types, got):
        if not np.array_equal(y, [[0.5, 0.5], [-0.25, 0.0]]):
            raise MixqError(f"onnxruntime {ort.__version__} dequantizes {TensorProto.DataType.Name(t)} weights "
                            f"wrongly at opset {opset}")


@dataclass
class LayerExport:
    """How one layer was written.

    Attributes:
        name: layer name.
        bits: weight bits (32 = float).
        act_bits: input bits (32 = float).
        container: ONNX type of the weight (``"INT2"``, ``"INT4"``, ``"INT8"`` or ``"FLOAT"``).
        params: weight parameters.
        weight_bytes: bytes of the stored weight initializer (packed integers, or float32).
    """

    name: str
    bits: int
    act_bits: int
    container: str
    params: int
    weight_bytes: int


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        opset: default-domain opset.
        ir_version: IR version.
        layers: one :class:`LayerExport` per quantized layer.
        file_bytes: size of the file.
    """

    path: str
    opset: int
    ir_version: int
    layers: list[LayerExport] = field(default_factory=list)
    file_bytes: int = 0

    @property
    def weight_bytes(self) -> int:
        """Bytes of the integer weight initializers (the quantized layers only)."""
        return sum(x.weight_bytes for x in self.layers if x.container != "FLOAT")

    @property
    def container_bytes(self) -> float:
        """The size the container types imply: sum(params x container bits) / 8 over quantized layers."""
        return sum(x.params * CONTAINER_BITS[x.container] for x in self.layers if x.container != "FLOAT") / 8

    @property
    def ideal_bytes(self) -> float:
        """The ideal packed size at the configured bits: sum(params x bits) / 8 over quantized layers."""
        return sum(x.params * x.bits for x in self.layers if x.container != "FLOAT") / 8

    def to_dict(self) -> dict:
        """JSON-ready summary.

        Returns:
            The report as a dict (sizes in bytes).
        """
        return {"path": self.path, "opset": self.opset, "ir_version": self.ir_version,
                "file_bytes": self.file_bytes, "weight_bytes": self.weight_bytes,
                "container_bytes": self.container_bytes, "ideal_packed_bytes": self.ideal_bytes,
                "layers": [vars(x) for x in self.layers]}


def _plain_copy(qm: QuantModel) -> nn.Module:
    """A copy of the folded model with each quantized layer replaced by its plain torch layer holding the
    (fake-)quantized weight, so the traced graph has one named weight initializer per layer. Aliases get the
    same plain layer and tied layers one shared weight, so each weight tensor is written once."""
    model = copy.deepcopy(qm.model)
    plain_of: dict[int, nn.Module] = {}
    weight_of: dict[int, nn.Parameter] = {}  # one weight per weight quantizer: tied layers share both
    for name, q in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(q, QuantMixin):
            continue
        if id(q) not in plain_of:
            with torch.no_grad():
                w = q.quantized_weight().detach()
            try:
                plain = q.to_float(w)
            except MixqError as exc:
                raise MixqError(f"layer {name!r}: {exc}") from None
            shared = weight_of.setdefault(id(q.weight_quantizer), plain.weight)
            plain.weight = shared
            plain_of[id(q)] = plain
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain_of[id(q)])
    return model.eval()


def _trace(model: nn.Module, input_shape: Sequence[int]):
    onnx = _onnx()
    buf = io.BytesIO()
    x = torch.zeros((1, *input_shape))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=BASE_OPSET, do_constant_folding=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # torch's exporter raises many types
        raise MixqError(f"torch.onnx.export could not trace the model: {str(exc).splitlines()[0]}") from None
    return onnx.load_from_string(buf.getvalue())


def _consumers(graph, tensor: str) -> list:
    return [n for n in graph.node if tensor in n.input]


def _weight_users(graph, name: str) -> list[tuple]:
    """``(operator, index of its data input)`` for every Conv / ConvTranspose / Gemm / MatMul that uses layer
    ``name``'s weight, directly or through a Transpose (how the exporter writes shared or 3-D Linear weights)."""
    w = f"{name}.weight"
    users = []
    for op in _consumers(graph, w):
        if op.op_type == "Transpose":
            users += [(o, _data_index(o, op.output[0], name)) for o in _consumers(graph, op.output[0])]
        else:
            users.append((op, _data_index(op, w, name)))
    return users


def _data_index(op, weight: str, name: str) -> int:
    if op.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or list(op.input[:2]).count(weight) != 1:
        raise MixqError(f"layer {name!r}: the exported graph feeds its weight to a {op.op_type} node; mixq writes "
                        "activation QDQ for Conv, ConvTranspose, Gemm and MatMul only")
    return 1 - list(op.input[:2]).index(weight)


def _weight_qdq(graph, name: str, m: QuantMixin, ctype: str, bits: int) -> int:
    """Swap the float weight initializer of layer ``name`` for integers + a per-channel DequantizeLinear."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    w_name = f"{name}.weight"
    init = next((i for i in graph.initializer if i.name == w_name), None)
    if init is None or not _consumers(graph, w_name):
        raise MixqError(f"the exported graph has no weight initializer {w_name!r} feeding an operator; the layer "
                        "cannot be written as QDQ")
    q, scale, zp = m.weight_quantizer.integer_weight(m.weight)
    signed = not ctype.startswith("U")
    shift = 1 << (bits - 1) if signed else 0  # unsigned grid [0, 2^b - 1] -> signed [-2^(b-1), 2^(b-1) - 1]
    np_type = {"INT2": ml_dtypes.int2, "INT4": ml_dtypes.int4, "INT8": np.int8, "UINT2": ml_dtypes.uint2,
               "UINT4": ml_dtypes.uint4, "UINT8": np.uint8}[ctype]
    small = np.int8 if signed else np.uint8
    q_s = (q.numpy().astype(np.int16) - shift).astype(small).astype(np_type)
    zp_s = (zp.numpy().astype(np.int16) - shift).astype(small).astype(np_type)
    q_init = numpy_helper.from_array(q_s, f"{name}.weight_quantized")
    graph.initializer.remove(init)
    graph.initializer.extend([
        q_init,
        numpy_helper.from_array(scale.detach().numpy().astype(np.float32), f"{name}.weight_scale"),
        numpy_helper.from_array(zp_s, f"{name}.weight_zero_point"),
    ])
    dq = helper.make_node("DequantizeLinear", [q_init.name, f"{name}.weight_scale", f"{name}.weight_zero_point"],
                          [w_name], name=f"{name}.weight_dequantize", axis=m.weight_quantizer.axis)
    graph.node.insert(0, dq)
    return len(q_init.raw_data)


def _act_qdq(graph, name: str, m: QuantMixin, bits: int) -> None:
    """Put QuantizeLinear -> (Clip) -> DequantizeLinear on the data input of every operator using ``name``'s
    weight (a layer called twice, or tied layers, share one input grid)."""
    from onnx import TensorProto, helper

    scale, zp = m.input_quantizer.qparams()  # export_onnx has checked that every range was observed
    s_name, z_name = f"{name}.input_scale", f"{name}.input_zero_point"
    graph.initializer.extend([helper.make_tensor(s_name, TensorProto.FLOAT, [], [float(scale)]),
                              helper.make_tensor(z_name, TensorProto.UINT8, [], [int(zp)])])
    if bits < 8:  # UINT8 saturates at 255; the layer's grid ends at 2^b - 1
        lo, hi = f"{name}.input_qmin", f"{name}.input_qmax"
        graph.initializer.extend([helper.make_tensor(lo, TensorProto.UINT8, [], [0]),
                                  helper.make_tensor(hi, TensorProto.UINT8, [], [(1 << bits) - 1])])
    for k, (op, data) in enumerate(_weight_users(graph, name)):
        tag = name if k == 0 else f"{name}.call{k}"
        q_out, dq_out = f"{tag}.input_quantized", f"{tag}.input_dequantized"
        nodes = [helper.make_node("QuantizeLinear", [op.input[data], s_name, z_name], [q_out],
                                  name=f"{tag}.input_quantize")]
        if bits < 8:
            nodes.append(helper.make_node("Clip", [q_out, lo, hi], [f"{tag}.input_clipped"], name=f"{tag}.input_clip"))
            q_out = f"{tag}.input_clipped"
        nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                      name=f"{tag}.input_dequantize"))
        position = list(graph.node).index(op)
        for j, n in enumerate(nodes):
            graph.node.insert(position + j, n)
        op.input[data] = dq_out


def export_onnx(
    qm: QuantModel, path: str | os.PathLike, input_shape: Sequence[int], opset: int = DEFAULT_OPSET,
    weight_type: str = "int",
) -> ExportReport:
    """Write a quantized model as an ONNX QDQ file with integer weights (see the module docstring).

    Args:
        qm: the quantized model (bits set, activation ranges calibrated; calibrated weights are used as
            they are).
        path: the ``.onnx`` file to write (its folder is created).
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``; the batch dimension is dynamic.
        opset: target opset, 21..25 (2-bit weights are stored as INT2 from 25, as INT4 below).
        weight_type: ``"int"`` (INT2/INT4/INT8) or ``"uint"`` (UINT2/UINT4/UINT8). onnxruntime's fused
            integer kernels for uint8 activations x int8 weights can saturate on x86 CPUs without VNNI; unsigned
            weights take its uint8 x uint8 kernels, which do not.

    Returns:
        The :class:`ExportReport`.
    """
    onnx = _onnx()
    check_opset(opset)
    bits = qm.bit_config()
    layers = {n: qm.layers[n] for n in qm.layer_names}
    for n, m in layers.items():
        if bits.weights[n] != FLOAT_BITS:
            container(bits.weights[n], opset, weight_type)  # validates the bit-width and the type
        if m.input_quantizer.bits != FLOAT_BITS and not m.input_quantizer.calibrated:
            raise MixqError(f"layer {n!r} has no activation range: calibrate the model on samples before export")
    proto = onnx.version_converter.convert_version(_trace(_plain_copy(qm), input_shape), opset)
    graph = proto.graph
    report = ExportReport(path=str(path), opset=opset, ir_version=ir_version_for(opset))
    for n, m in layers.items():
        b, a = bits.weights[n], m.input_quantizer.bits
        params = int(m.weight.numel())
        if b == FLOAT_BITS:
            report.layers.append(LayerExport(n, b, a, "FLOAT", params, 4 * params))
        else:
            ctype = container(b, opset, weight_type)
            report.layers.append(LayerExport(n, b, a, ctype, params, _weight_qdq(graph, n, m, ctype, b)))
        if a != FLOAT_BITS:
            _act_qdq(graph, n, m, a)
    proto.ir_version = report.ir_version
    proto.producer_name, proto.producer_version = "mixq", _version()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise MixqError(f"the QDQ graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, out)
    report.file_bytes = out.stat().st_size
    return report


def _version() -> str:
    from mixq.provenance import versions

    return versions().get("mixq", "unknown")
