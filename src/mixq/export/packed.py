"""The packed native checkpoint: a quantized model in one file at its true bit-widths, loaded back exactly.

    report = save_packed(qm, "resnet20-3bit.pt", "resnet20-jpeg")   # report["ratio"]: file / ideal size
    qm2 = load_quantized("resnet20-3bit.pt")                         # torch.equal(qm2(x), qm(x))

The file is written with ``torch.save`` and read with ``torch.load(path, weights_only=True)``: plain dicts,
lists, strings, numbers and tensors only. torch's zip container spends hundreds of bytes per tensor
record, so the weights of all layers share three tensors and every float value kept shares one; per-layer
offsets, shapes and bits are plain int lists. On ResNet-20 the file is within 5 % of the ideal size.

Keys (format ``"mixq-packed"``, version 1):

- ``format`` (str ``"mixq-packed"``), ``version`` (int, 1);
- ``model`` (str): how to rebuild the architecture, a registry name (``mixq.models.list_models()``) or a
  ``package.module:function`` reference; ``checkpoint`` (str or None): the float weights the model was
  quantized from, recorded for provenance only (loading never reads it);
- ``bits`` (dict): the :class:`~mixq.bits.BitConfig` in its JSON mapping form; ``act_bits`` (int), the
  default input bits; ``weight_range`` (str), ``"minmax"``, ``"omse"`` or ``"aciq"``;
- ``fold_bn`` (bool) and ``fold_report`` (dict: ``folded``, the names of the convs a BatchNorm was folded
  into, ``unfolded``, BatchNorm name -> why it was kept in float, ``traced`` bool); ``input_shape`` (list of
  int or None): one sample's shape;
- ``versions`` (dict str -> str): :func:`mixq.provenance.versions` at save time;
- ``weights`` (dict), every layer at 2..8 bits, in model order:
  ``layers`` (list of str), ``bits`` (list of int), ``shapes`` (list of int lists),
  ``offsets`` (list of int, n + 1: byte offset of each layer's codes in ``codes``),
  ``codes`` (uint8 ``(offsets[-1],)``: each layer's integer codes ``q`` in ``[0, 2^b - 1]``, flattened in
  C order and bit-packed at exactly b bits per value, little-endian bit order, each layer padded to a
  whole byte; see :func:`pack_bits`), ``scale`` (float32 ``(sum C_out,)``) and ``zero_point`` (uint8
  ``(sum C_out,)``), the per-output-channel grids, so the weight is ``(q - zero_point) * scale``;
- ``act_ranges`` (float32 ``(L, 2)``): each quantized layer's observed input range, the ``min_val`` and
  ``max_val`` buffers of its activation quantizer, one row per layer in the order of ``bits``;
- ``floats`` (dict), every other float32 entry of the folded model's state_dict that is not a packed weight
  (biases, weights of 32-bit layers, BatchNorms kept in float): ``names`` (list of str), ``shapes`` (list of
  int lists), ``offsets`` (list of int, n + 1: element offsets in ``data``), ``data`` (float32
  ``(offsets[-1],)``);
- ``others`` (dict str -> tensor): state_dict entries of any other dtype (e.g. a BatchNorm's int64
  ``num_batches_tracked``), stored as they are.

Loading rebuilds the untrained architecture (no FP32 checkpoint needed), wraps it in a
:class:`~mixq.quant.model.QuantModel` with the same BN folding, activation bits and weight range, loads
the float state strictly, sets each packed weight to ``(q - zero_point) * scale`` and freezes the layer's
grid at the stored scale and zero point, so even a feature-calibrated model's learned scales come back and
the outputs equal the saved model's bit for bit.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.bits import FLOAT_BITS, VALID_BITS, BitConfig
from mixq.errors import MixqError
from mixq.models import get_model_spec, load_user_model
from mixq.provenance import versions
from mixq.quant.fold import FoldReport
from mixq.quant.model import QuantModel

FORMAT = "mixq-packed"
VERSION = 1
KEYS = ("format", "version", "model", "checkpoint", "bits", "act_bits", "weight_range", "fold_bn", "fold_report",
        "input_shape", "versions", "weights", "act_ranges", "floats", "others")
WEIGHT_KEYS = ("layers", "bits", "shapes", "offsets", "codes", "scale", "zero_point")
FLOAT_KEYS = ("names", "shapes", "offsets", "data")
_SHOWN = 5  # names listed in an error message


# -- bit packing -------------------------------------------------------------------------------------------
def _check_pack_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
        raise MixqError(f"bits must be an integer in 1..8 to pack codes, got {bits!r}")
    return int(bits)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values take at ``bits`` bits each: ``ceil(count * bits / 8)``.

    Args:
        count: number of values.
        bits: bits per value, 1..8.

    Returns:
        The byte count.
    """
    return (count * _check_pack_bits(bits) + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes at exactly ``bits`` bits per value, little-endian bit order.

    Value ``i`` occupies bits ``i * bits`` .. ``i * bits + bits - 1`` of the stream, least significant bit
    first, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``; the last byte is padded with zeros.

    Args:
        codes: integer array (any shape, flattened in C order) with values in ``[0, 2^bits - 1]``.
        bits: bits per value, 1..8.

    Returns:
        uint8 array of ``ceil(codes.size * bits / 8)`` bytes.

    Raises:
        MixqError: when ``bits`` is not 1..8, or the codes are not integers in range.
    """
    bits = _check_pack_bits(bits)
    flat = np.asarray(codes).reshape(-1)
    if flat.dtype.kind not in "iub":
        raise MixqError(f"codes to pack must be integers, got dtype {flat.dtype}")
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) > (1 << bits) - 1):
        raise MixqError(f"codes to pack at {bits} bits must lie in [0, {(1 << bits) - 1}], "
                        f"got [{int(flat.min())}, {int(flat.max())}]")
    flat = flat.astype(np.uint8)
    if bits == 8:
        return flat.copy()
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits), least significant first
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: uint8 array of exactly ``ceil(count * bits / 8)`` bytes.
        bits: bits per value, 1..8.
        count: number of values packed.

    Returns:
        uint8 array ``(count,)`` of the codes.

    Raises:
        MixqError: when ``bits`` is not 1..8, ``count`` is negative, or ``packed`` has another size or dtype.
    """
    bits = _check_pack_bits(bits)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise MixqError(f"count of packed values must be a non-negative integer, got {count!r}")
    packed = np.asarray(packed).reshape(-1)
    if packed.dtype != np.uint8:
        raise MixqError(f"packed codes must be uint8, got dtype {packed.dtype}")
    need = (int(count) * bits + 7) // 8
    if packed.size != need:
        raise MixqError(f"{count} values at {bits} bits take {need} bytes, got {packed.size}")
    if bits == 8:
        return packed.copy()
    planes = np.unpackbits(packed, count=int(count) * bits, bitorder="little").reshape(-1, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


# -- the architecture --------------------------------------------------------------------------------------
def _fold_setting(report: FoldReport) -> bool:
    """Whether the model was built with ``fold_bn=True`` (``False`` leaves an empty, untraced report).

    An untraceable model without BatchNorm reads as ``False``, which folds nothing either way.
    """
    return report.traced or bool(report.folded) or bool(report.unfolded)


def _report_dict(report: FoldReport, names: list[str]) -> dict[str, Any]:
    """The fold report as plain data; conv names are the layer name objects, so pickle stores each once."""
    same = {n: n for n in names}
    return {"folded": [same.get(c, c) for c, _ in report.folded], "unfolded": dict(report.unfolded),
            "traced": bool(report.traced)}


def _range_keys(layer: str) -> tuple[str, str]:
    return f"{layer}.input_quantizer.min_val", f"{layer}.input_quantizer.max_val"


def build_architecture(model: str) -> nn.Module:
    """The untrained float architecture a model reference names, in eval mode.

    A registry name is built as :func:`mixq.models.create_model` builds it (the spec's ``builder``, then its
    ``finalize``), without reading its checkpoint; a ``package.module:function`` reference is imported (never
    evaluated) and called. torch's global random state is left as it was.

    Args:
        model: a registry name or ``package.module:function``.

    Returns:
        The module, with random weights.

    Raises:
        MixqError: unknown name, bad reference, or an import / call that fails.
    """
    if not isinstance(model, str) or not model:
        raise MixqError(f"model must be a registry name or 'package.module:function', got {model!r}")
    with torch.random.fork_rng(devices=[]):
        if ":" in model:
            return load_user_model(model)
        spec = get_model_spec(model)
        net = spec.builder()
        if spec.finalize is not None:
            net = spec.finalize(net)
        return net.eval()


def _key_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any]) -> str | None:
    """What differs between two state_dicts' keys (or shapes), or None."""
    parts = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = ", ..." if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label} keys ({', '.join(keys[:_SHOWN])}{more})")
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:_SHOWN])})")
    return "; ".join(parts) or None


# -- writing -----------------------------------------------------------------------------------------------
def save_packed(qm: QuantModel, path: str | os.PathLike, model: str, *, checkpoint: str | None = None) -> dict:
    """Write a quantized model as a packed checkpoint (format in the module docstring).

    The model reference is checked first: the architecture it builds must have exactly this model's
    state_dict keys and shapes once wrapped, so a file that cannot be loaded is never written. The file is
    written to a temporary name and renamed.

    Args:
        qm: the quantized model (bits set, activation ranges observed; calibrated weights and grids are kept).
        path: output file (``.pt``).
        model: how to rebuild the architecture: a registry name or ``package.module:function``.
        checkpoint: the float checkpoint the model came from, recorded for provenance (never read back).

    Returns:
        The size report: ``path``, ``file_bytes``, ``ideal_bytes`` (packed codes at b bits + 4 bytes per
        scale + 1 per zero point + the bytes of every value kept unpacked), ``ratio`` (file / ideal),
        ``weight_bits_bytes`` (sum(params x bits) / 8 over the packed layers), ``packed_layers``,
        ``float_layers``, ``params`` and ``float_values``.

    Raises:
        MixqError: not a QuantModel, a reference that does not rebuild this model, or an unwritable path.
    """
    if not isinstance(qm, QuantModel):
        raise MixqError(f"save_packed needs a QuantModel (from mixq.quantize), got {type(qm).__name__}")
    fold_bn = _fold_setting(qm.fold_report)
    state = qm.model.state_dict()
    try:
        with warnings.catch_warnings():  # BatchNorms kept in float were reported when qm was built
            warnings.simplefilter("ignore")
            rebuilt = QuantModel(build_architecture(model), calib=None, act_bits=qm.act_bits, fold_bn=fold_bn,
                                 weight_range=qm.weight_range)
    except MixqError as exc:
        raise MixqError(f"cannot rebuild model {model!r} for the packed checkpoint: {exc}") from None
    mismatch = _key_mismatch(state, rebuilt.model.state_dict())
    if mismatch:
        raise MixqError(f"model {model!r} does not rebuild this quantized model: {mismatch}")

    config = qm.bit_config()
    packed_names = [n for n in qm.layer_names if config.weights[n] != FLOAT_BITS]
    codes, scales, zero_points, offsets, shapes, bits = [], [], [], [0], [], []
    for name in packed_names:
        m = qm.layers[name]
        b = m.weight_quantizer.bits
        q, scale, zp = m.weight_quantizer.integer_weight(m.weight)
        if int(zp.min()) < 0 or int(zp.max()) > (1 << b) - 1:
            raise MixqError(f"layer {name!r}: zero points must lie in [0, {(1 << b) - 1}] at {b} bits")
        codes.append(pack_bits(q.numpy(), b))
        scales.append(scale.detach().reshape(-1).to(torch.float32))
        zero_points.append(zp.reshape(-1).to(torch.uint8))
        offsets.append(offsets[-1] + codes[-1].size)
        shapes.append(list(m.weight.shape))
        bits.append(b)
    weights = {
        "layers": packed_names, "bits": bits, "shapes": shapes, "offsets": offsets,
        "codes": torch.from_numpy(np.concatenate(codes) if codes else np.zeros(0, np.uint8)),
        "scale": torch.cat(scales) if scales else torch.zeros(0, dtype=torch.float32),
        "zero_point": torch.cat(zero_points) if zero_points else torch.zeros(0, dtype=torch.uint8),
    }

    skip = {f"{n}.weight" for n in packed_names} | {k for n in qm.layer_names for k in _range_keys(n)}
    act_ranges = torch.stack([torch.stack([state[lo], state[hi]]).float()
                              for lo, hi in map(_range_keys, qm.layer_names)])  # (L, 2)
    names, fshapes, foffsets, chunks, others = [], [], [0], [], {}
    for key, t in state.items():
        if key in skip:
            continue
        if t.dtype == torch.float32:
            names.append(key)
            fshapes.append(list(t.shape))
            chunks.append(t.detach().reshape(-1))
            foffsets.append(foffsets[-1] + t.numel())
        else:
            others[key] = t.detach().clone()  # a fresh storage: a view would save its whole base
    floats = {"names": names, "shapes": fshapes, "offsets": foffsets,
              "data": torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float32)}

    data = {
        "format": FORMAT, "version": VERSION, "model": model,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "bits": config.to_dict(), "act_bits": int(qm.act_bits), "weight_range": qm.weight_range,
        "fold_bn": fold_bn, "fold_report": _report_dict(qm.fold_report, qm.layer_names),
        "input_shape": None if qm.input_shape is None else [int(s) for s in qm.input_shape],
        "versions": versions(), "weights": weights, "act_ranges": act_ranges, "floats": floats, "others": others,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:  # a file object: records are named archive/..., whatever the file name
            torch.save(data, fh)
        os.replace(tmp, path)
    except OSError as exc:
        raise MixqError(f"cannot write packed checkpoint {str(path)!r}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)  # only left behind when the write failed

    params = sum(math.prod(s) for s in shapes)
    ideal = (weights["offsets"][-1] + 5 * weights["scale"].numel() + 4 * (floats["data"].numel() + act_ranges.numel())
             + sum(t.numel() * t.element_size() for t in others.values()))
    file_bytes = path.stat().st_size
    return {
        "path": str(path),
        "file_bytes": file_bytes,
        "ideal_bytes": ideal,
        "ratio": file_bytes / ideal if ideal else float("inf"),
        "weight_bits_bytes": sum(math.prod(s) * b for s, b in zip(shapes, bits)) / 8,
        "packed_layers": len(packed_names),
        "float_layers": len(qm.layer_names) - len(packed_names),
        "params": params,
        "float_values": floats["data"].numel() + act_ranges.numel(),
    }


# -- reading -----------------------------------------------------------------------------------------------
def _field(data: Mapping[str, Any], key: str, kind: type, expected: str, where: str) -> Any:
    """``data[key]``, checked to be of ``kind`` (an int is never a bool)."""
    if key not in data:
        raise MixqError(f"{where} lacks the key {key!r} (expected {expected})")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MixqError(f"{where}: {key!r} is a {type(value).__name__}, expected {expected}")
    return value


def _ints(value: Any, what: str, where: str, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
        raise MixqError(f"{where}: {what} must be a list of non-negative integers")
    if length is not None and len(value) != length:
        raise MixqError(f"{where}: {what} has {len(value)} entries, expected {length}")
    return value


def _shapes(value: Any, what: str, where: str, length: int) -> list[list[int]]:
    if not isinstance(value, list) or len(value) != length:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise MixqError(f"{where}: {what} has {n} entries, expected {length} shapes")
    return [_ints(s, f"{what}[{i}]", where) for i, s in enumerate(value)]


def _strings(value: Any, what: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MixqError(f"{where}: {what} must be a list of names")
    return value


def _tensor(data: Mapping[str, Any], key: str, dtype: torch.dtype, length: int, where: str) -> torch.Tensor:
    t = _field(data, key, torch.Tensor, f"a 1-D {dtype} tensor", where)
    if t.dtype != dtype or t.dim() != 1:
        raise MixqError(f"{where}: {key!r} is a {t.dtype} tensor of shape {tuple(t.shape)}, expected 1-D {dtype}")
    if t.numel() != length:
        raise MixqError(f"{where}: {key!r} holds {t.numel()} values, expected {length} from the offsets and shapes")
    return t


def _read(path: Path) -> dict[str, Any]:
    """The checked top level of a packed file."""
    where = f"packed checkpoint {str(path)!r}"
    if not path.is_file():
        raise MixqError(f"{where} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and I/O errors all mean the same to the user
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise MixqError(f"cannot read {where}: not a torch file or damaged ({type(exc).__name__}: {first})") from None
    if not isinstance(data, Mapping):
        raise MixqError(f"{where} holds a {type(data).__name__}, expected a dict with format {FORMAT!r}")
    if data.get("format") != FORMAT:
        raise MixqError(f"{where} is not a mixq packed checkpoint: format marker {data.get('format')!r}, "
                        f"expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise MixqError(f"{where} has version {data.get('version')!r}; this mixq reads version {VERSION}")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise MixqError(f"{where} lacks the key(s) {missing} (expected {list(KEYS)})")
    return dict(data)


def load_quantized(path: str | os.PathLike, *, model_root: str | os.PathLike | None = None) -> QuantModel:
    """Rebuild the quantized model of a packed checkpoint; its outputs equal the saved model's exactly.

    Args:
        path: the file :func:`save_packed` wrote.
        model_root: accepted so callers can pass their model folder; unused, because the architecture is
            built untrained and every weight comes from the file (no FP32 checkpoint is read).

    Returns:
        The :class:`QuantModel`: same bits, activation ranges, weights and (frozen) weight grids.

    Raises:
        MixqError: naming the file, when it is missing, not a torch file, damaged, of another format or
            version, lacks keys, has inconsistent lengths, or does not fit the rebuilt architecture.
    """
    del model_root  # nothing to read there: see the docstring
    path = Path(path)
    where = f"packed checkpoint {str(path)!r}"
    data = _read(path)
    ref = _field(data, "model", str, "a registry name or 'package.module:function'", where)
    act_bits = _field(data, "act_bits", int, "the activation bits", where)
    if act_bits not in VALID_BITS:
        raise MixqError(f"{where}: act_bits is {act_bits}, expected one of {list(VALID_BITS)}")
    weight_range = _field(data, "weight_range", str, "a weight range method name", where)
    fold_bn = _field(data, "fold_bn", bool, "a bool", where)
    stored_fold = _field(data, "fold_report", dict, "a dict", where)
    input_shape = data["input_shape"]
    if input_shape is not None:
        input_shape = _ints(input_shape, "'input_shape'", where)
    config = BitConfig.from_dict(_field(data, "bits", dict, "the bit configuration mapping", where),
                                 source=f"{where} 'bits'")
    wdata = _field(data, "weights", dict, f"a dict with {list(WEIGHT_KEYS)}", where)
    fdata = _field(data, "floats", dict, f"a dict with {list(FLOAT_KEYS)}", where)
    others = _field(data, "others", dict, "a dict of name -> tensor", where)
    for section, keys, d in (("weights", WEIGHT_KEYS, wdata), ("floats", FLOAT_KEYS, fdata)):
        missing = [k for k in keys if k not in d]
        if missing:
            raise MixqError(f"{where}: {section!r} lacks the key(s) {missing} (expected {list(keys)})")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in others.items()):
        raise MixqError(f"{where}: 'others' must map names to tensors")

    # the packed weights' metadata
    layers = _strings(wdata["layers"], "'weights.layers'", where)
    n = len(layers)
    bits = _ints(wdata["bits"], "'weights.bits'", where, n)
    shapes = _shapes(wdata["shapes"], "'weights.shapes'", where, n)
    offsets = _ints(wdata["offsets"], "'weights.offsets'", where, n + 1)
    for name, b, s, lo, hi in zip(layers, bits, shapes, offsets, offsets[1:]):
        if not 2 <= b <= 8 or not s:
            raise MixqError(f"{where}: layer {name!r} has bits {b} and shape {s}, expected 2..8 bits and a shape")
        if hi - lo != packed_size(math.prod(s), b):
            raise MixqError(f"{where}: layer {name!r} has {hi - lo} bytes of codes, expected "
                            f"{packed_size(math.prod(s), b)} for {math.prod(s)} values at {b} bits")
    if offsets[0] != 0:
        raise MixqError(f"{where}: 'weights.offsets' must start at 0")
    channels = [s[0] for s in shapes]
    codes = _tensor(wdata, "codes", torch.uint8, offsets[-1], where)
    scale = _tensor(wdata, "scale", torch.float32, sum(channels), where)
    zero_point = _tensor(wdata, "zero_point", torch.uint8, sum(channels), where)
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise MixqError(f"{where}: 'weights.scale' must be finite and positive")
    # the float state's metadata
    fnames = _strings(fdata["names"], "'floats.names'", where)
    fshapes = _shapes(fdata["shapes"], "'floats.shapes'", where, len(fnames))
    foffsets = _ints(fdata["offsets"], "'floats.offsets'", where, len(fnames) + 1)
    if foffsets[0] != 0 or any(hi - lo != math.prod(s) for s, lo, hi in zip(fshapes, foffsets, foffsets[1:])):
        raise MixqError(f"{where}: 'floats.offsets' do not match 'floats.shapes'")
    fvalues = _tensor(fdata, "data", torch.float32, foffsets[-1], where)

    # the architecture, wrapped as it was
    try:
        qm = QuantModel(build_architecture(ref), calib=None, act_bits=act_bits, fold_bn=fold_bn,
                        weight_range=weight_range)
    except MixqError as exc:
        raise MixqError(f"{where}: cannot rebuild model {ref!r}: {exc}") from None
    try:
        config.validate(qm.layer_names)
    except MixqError as exc:
        raise MixqError(f"{where}: the bit configuration does not fit model {ref!r}: {exc}") from None
    if list(config.weights) != qm.layer_names:
        raise MixqError(f"{where}: the bit configuration lists the layers of model {ref!r} in another order")
    if _report_dict(qm.fold_report, qm.layer_names)["folded"] != stored_fold.get("folded"):
        raise MixqError(f"{where}: model {ref!r} folds other BatchNorms than the saved model did; "
                        "the architecture has changed since the file was written")
    act_ranges = _field(data, "act_ranges", torch.Tensor, "a float32 tensor (layers, 2)", where)
    if act_ranges.dtype != torch.float32 or tuple(act_ranges.shape) != (len(qm.layer_names), 2):
        raise MixqError(f"{where}: 'act_ranges' is a {act_ranges.dtype} tensor of shape {tuple(act_ranges.shape)}, "
                        f"expected float32 ({len(qm.layer_names)}, 2)")
    expected_layers = [name for name in qm.layer_names if config.weights[name] != FLOAT_BITS]
    if layers != expected_layers or bits != [config.weights[name] for name in layers]:
        raise MixqError(f"{where}: the packed layers and their bits do not match the bit configuration "
                        f"(expected the {len(expected_layers)} layers below 32 bits, in model order)")

    # the state: floats, others and the dequantized weights
    state: dict[str, torch.Tensor] = dict(others)
    for name, row in zip(qm.layer_names, act_ranges):
        state.update(zip(_range_keys(name), row.unbind()))
    for name, s, lo, hi in zip(fnames, fshapes, foffsets, foffsets[1:]):
        state[name] = fvalues[lo:hi].reshape(s)
    grids: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
    c0 = 0
    for name, b, s, lo, hi in zip(layers, bits, shapes, offsets, offsets[1:]):
        q = torch.from_numpy(unpack_bits(codes[lo:hi].numpy(), b, math.prod(s)).astype(np.int32)).reshape(s)
        sc = scale[c0:c0 + s[0]].clone()
        zp = zero_point[c0:c0 + s[0]].to(torch.int32)
        c0 += s[0]
        if zp.numel() and int(zp.max()) > (1 << b) - 1:
            raise MixqError(f"{where}: layer {name!r} has zero points above {(1 << b) - 1}, the {b}-bit maximum")
        view = (-1,) + (1,) * (len(s) - 1)
        state[f"{name}.weight"] = (q - zp.reshape(view)) * sc.reshape(view)
        grids[name] = (b, sc, zp)
    mismatch = _key_mismatch(qm.model.state_dict(), state)
    if mismatch:
        raise MixqError(f"{where} does not fit model {ref!r}: {mismatch}")
    qm.model.load_state_dict(state, strict=True)
    for name, (b, sc, zp) in grids.items():
        qm.layers[name].weight_quantizer.set_grids({b: (sc, zp)})
    qm.set_bits(config)
    qm.input_shape = None if input_shape is None else tuple(input_shape)
    return qm
