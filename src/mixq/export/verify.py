"""Check an exported ONNX file in onnxruntime against mixq's own quantized model.

Two sessions are compared with the fake-quantized PyTorch model on the same batches: onnxruntime with its
default graph optimizations (what a deployment runs; 8-bit QDQ around a Conv may be fused into an integer
``QLinearConv``) and with optimizations off (the QDQ graph as written). Quantized networks are discontinuous:
a float difference of 1e-6 between two convolution implementations moves an activation across a rounding
boundary now and then, which changes that activation by one quantization step, so logits agree to a small
tolerance and top-1 to a few images in 10,000, not bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch

from mixq.bits import FLOAT_BITS
from mixq.errors import MixqError
from mixq.progress import progress_bar
from mixq.quant.model import QuantModel

# onnxruntime (1.32) fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv without checking the weight
# type, and then rejects an INT2 weight ("Type 'tensor(int2)' ... of operator (QLinearConv) is invalid"). Such a
# file loads with the QDQ fusion off; the other graph optimizations stay on.
NO_QDQ_FUSION = "session.disable_quant_qdq"


def open_session(path: str | os.PathLike, optimized: bool = True):
    """An onnxruntime CPU session for an exported file.

    Args:
        path: the ONNX file.
        optimized: onnxruntime's default graph optimizations (False: run the graph as written).

    Returns:
        ``(session, note)``: ``note`` says how the session had to be configured (empty when it loaded with the
        default options).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MixqError("verification needs onnxruntime: pip install 'mixq[export]'") from None

    def make(extra: dict[str, str]):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if not optimized:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        for k, v in extra.items():
            so.add_session_config_entry(k, v)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    try:
        return make({}), ""
    except Exception as exc:  # onnxruntime's own exception types
        first = str(exc).splitlines()[0]
        if optimized and "tensor(int2)" in first:
            try:
                return make({NO_QDQ_FUSION: "1"}), (f"default options fail on INT2 weights (onnxruntime's QDQ "
                                                    f"fusion); loaded with {NO_QDQ_FUSION}=1")
            except Exception:  # report the original failure below
                pass
        raise MixqError(f"onnxruntime cannot load {str(path)!r}: {first}") from None


def compare_outputs(
    path: str | os.PathLike,
    qm: QuantModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    total: int | None = None,
    progress: bool = True,
) -> dict:
    """Top-1 and logits of the ONNX file in onnxruntime (optimized and not) beside mixq's quantized model.

    Args:
        path: the ONNX file.
        qm: the quantized model it was exported from.
        batches: labelled test batches ``(x (B, C, H, W), y (B,))``.
        total: number of batches, for the progress bar.
        progress: progress bar (on a terminal only).

    Returns:
        ``{"n", "mixq_top1", "ort_top1", "ort_top1_diff", "ort_argmax_agreement", "ort_max_abs_logit_diff",
        "ort_mean_abs_logit_diff", the same "ort_noopt_*" keys for the unoptimized session, and
        "ort_session_note"}`` (top-1 in percent, agreement as a fraction of images).
    """
    (opt, note), (noopt, _) = open_session(path, optimized=True), open_session(path, optimized=False)
    sessions = {"ort": opt, "ort_noopt": noopt}
    n = correct = 0
    stats = {k: {"correct": 0, "agree": 0, "max": 0.0, "sum": 0.0, "count": 0} for k in sessions}
    for x, y in progress_bar(batches, total=total, enabled=progress, desc="onnxruntime", leave=False):
        with torch.no_grad():
            ref = qm(x).numpy()
        labels = y.numpy()
        n += len(labels)
        correct += int((ref.argmax(1) == labels).sum())
        for key, sess in sessions.items():
            out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            diff = np.abs(out - ref)
            s = stats[key]
            s["correct"] += int((out.argmax(1) == labels).sum())
            s["agree"] += int((out.argmax(1) == ref.argmax(1)).sum())
            s["max"] = max(s["max"], float(diff.max()))
            s["sum"] += float(diff.sum())
            s["count"] += diff.size
    if n == 0:
        raise MixqError("verification got no test images")
    result: dict = {"n": n, "mixq_top1": 100.0 * correct / n, "ort_session_note": note}
    for key, s in stats.items():
        result[f"{key}_top1"] = 100.0 * s["correct"] / n
        result[f"{key}_top1_diff"] = result[f"{key}_top1"] - result["mixq_top1"]
        result[f"{key}_argmax_agreement"] = s["agree"] / n
        result[f"{key}_max_abs_logit_diff"] = s["max"]
        result[f"{key}_mean_abs_logit_diff"] = s["sum"] / max(s["count"], 1)
    return result


def weight_levels(path: str | os.PathLike, qm: QuantModel) -> dict[str, int]:
    """The most distinct integer values any output channel of each quantized weight holds in the file.

    Reads the initializers back with ``onnx.numpy_helper`` and fails when a layer's channel holds more than
    ``2^b`` values for its configured ``b`` bits, or when a quantized layer's weight is not an integer type.

    Args:
        path: the ONNX file.
        qm: the model it was exported from (for the configured bits).

    Returns:
        Layer name -> the largest number of distinct values in one of its output channels.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    bits = qm.bit_config().weights
    levels = {}
    for name in qm.layer_names:
        if bits[name] == FLOAT_BITS:
            continue
        init = inits.get(f"{name}.weight_quantized")
        integer_types = (onnx.TensorProto.INT2, onnx.TensorProto.INT4, onnx.TensorProto.INT8,
                         onnx.TensorProto.UINT2, onnx.TensorProto.UINT4, onnx.TensorProto.UINT8)
        if init is None or init.data_type not in integer_types:
            raise MixqError(f"{str(path)!r}: layer {name!r} has no integer weight initializer")
        w = numpy_helper.to_array(init).astype(np.int16).reshape(init.dims[0], -1)
        most = max(len(np.unique(row)) for row in w)
        if most > 1 << bits[name]:
            raise MixqError(f"{str(path)!r}: layer {name!r} holds {most} distinct values in one channel, more than "
                            f"2^{bits[name]}")
        levels[name] = most
    return levels
