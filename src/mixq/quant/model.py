"""QuantModel: a float model with folded BatchNorm and quantized Conv2d / Linear layers.

    qm = QuantModel(model, calib=x_calib)          # fold BN, wrap layers, observe activation ranges
    qm.set_bits(BitConfig.uniform(qm.layer_names, 4))   # cheap: cached per-bit weights swapped in
    logits = qm(x)

Activation ranges: each quantized layer's input range is the min/max over all calibration samples,
observed in one float pass of the folded model (weights and activations in float), and frozen.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mixq.bits import MB, BitConfig, Budget
from mixq.errors import MixqError
from mixq.quant.attention import disable_fast_path
from mixq.quant.fold import FoldReport, fold_batchnorm
from mixq.quant.matching import LayerPlan, plan_layers, quant_class_for
from mixq.quant.modules import QuantMixin
from mixq.quant.primitives import FLOAT_BITS
from mixq.quant.ranges import get_range_method


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one quantized layer.

    Attributes:
        name: qualified module name.
        kind: "conv", "conv_transpose", "linear" or "attention".
        params: number of weight parameters.
        bias_params: number of bias parameters (0 if none).
        weight_shape: weight tensor shape.
        macs: multiply-accumulates per sample (filled once a forward has run; 0 before).
    """

    name: str
    kind: str
    params: int
    bias_params: int
    weight_shape: tuple[int, ...]
    macs: int = 0


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _wrap_layers(model: nn.Module, weight_bits: int, act_bits: int, weight_range: str) -> LayerPlan:
    """Swap every planned layer for its quantized class in place (aliases get the same object, tied modules
    share the owner's quantizers) and warn once about what stays in float."""
    plan = plan_layers(model)
    if not plan.layers:
        detail = f"; left in float: {_skipped_text(plan.skipped)}" if plan.skipped else ""
        raise MixqError("model has no convolution, linear or attention layer mixq can quantize" + detail)
    wrapped: dict[str, nn.Module] = {}
    for name, qcls in plan.layers.items():
        wrapped[name] = qcls.from_float(model.get_submodule(name), weight_bits, act_bits, weight_range)
    for name, owner in plan.tied.items():
        float_layer = model.get_submodule(name)
        q = _quant_class(float_layer).from_float(float_layer, weight_bits, act_bits, weight_range)
        q.weight_quantizer = wrapped[owner].weight_quantizer
        q.input_quantizer = wrapped[owner].input_quantizer
        wrapped[name] = q
    for alias, name in plan.aliases.items():
        wrapped[alias] = wrapped[name]
    for name in sorted(wrapped, key=lambda n: n.count(".")):  # parents before their children
        _set_module(model, name, wrapped[name])
    disable_fast_path(model)
    if plan.skipped:
        warnings.warn(f"mixq leaves {len(plan.skipped)} module(s) in float, not counted in size or bits: "
                      f"{_skipped_text(plan.skipped)}", stacklevel=3)
    return plan


def _quant_class(module: nn.Module) -> type[QuantMixin]:
    qcls, reason = quant_class_for(module)
    if qcls is None:
        raise MixqError(f"a {type(module).__name__} cannot be quantized: {reason}")
    return qcls


def _skipped_text(skipped: Mapping[str, str]) -> str:
    return "; ".join(f"{n!r} ({r})" for n, r in skipped.items())


class QuantModel(nn.Module):
    """A quantization-ready copy of a float model.

    Args:
        model: any float model; its convolution, linear and attention layers are quantized, anything else
            holding a weight is named in one warning and left in float (see :mod:`mixq.quant.matching`).
            It is deep-copied, not changed.
        calib: calibration inputs ``(N, C, H, W)`` (already normalised) used to observe activation
            ranges; may be omitted when ``act_bits == 32`` or given later to
            :meth:`calibrate_activations`.
        weight_bits: initial weight bits of every layer (32 = float).
        act_bits: input bits of every quantized layer (32 = float).
        fold_bn: fold BatchNorm into the preceding conv (see :mod:`mixq.quant.fold`).
        weight_range: per-channel weight range: ``"minmax"`` (default), ``"omse"`` (MSE-optimal
            clipping) or ``"aciq"`` (analytical Laplace clipping); see :mod:`mixq.quant.ranges`.
        batch_size: batch size for the calibration pass.
        channels_last: run the model in the channels-last memory format (4-D weights and inputs). The
            same model: quantized weights are identical, float results differ by summation order, which
            can flip an activation quantizer's rounding (logits then differ slightly). Faster on CPU where
            time goes to memory-bound ops (EfficientNet-Lite0, MobileNetV2), not on ShuffleNetV2:
            ``benchmarks/channels_last.py`` measures it. A model whose forward needs the default layout
            (``.view`` of a 4-D activation) is refused with a clear error.
    """

    def __init__(
        self,
        model: nn.Module,
        calib: torch.Tensor | None = None,
        weight_bits: int = FLOAT_BITS,
        act_bits: int = 8,
        fold_bn: bool = True,
        weight_range: str = "minmax",
        batch_size: int = 256,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise MixqError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = copy.deepcopy(model).eval()
        _check_finite(self.model)
        self.fold_report: FoldReport = fold_batchnorm(self.model) if fold_bn else FoldReport(traced=False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        get_range_method(weight_range)  # validate before the expensive part
        self.weight_range = weight_range
        plan = _wrap_layers(self.model, weight_bits, act_bits, weight_range)
        self.layer_names: list[str] = list(plan.layers)
        self.layers: dict[str, QuantMixin] = {n: self.model.get_submodule(n) for n in self.layer_names}
        self.aliases: dict[str, str] = plan.aliases  # other name of a layer -> its name
        self.tied: dict[str, str] = plan.tied  # module sharing a layer's weight and quantizers -> the layer
        self.skipped: dict[str, str] = plan.skipped  # weight-holding module left in float -> "Type: reason"
        self.act_bits = act_bits
        self._infos = {n: self._layer_info(n, m) for n, m in self.layers.items()}
        self.input_shape: tuple[int, ...] | None = None
        self.eval()  # the wrapper too: calibration restores the mode it found, and train mode would wake dropout
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if calib is not None:
            self.calibrate_activations(calib, batch_size=batch_size)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # -- static facts ------------------------------------------------------------------------------
    @staticmethod
    def _layer_info(name: str, m: nn.Module) -> LayerInfo:
        return LayerInfo(
            name=name,
            kind=m.kind,
            params=m.weight.numel(),
            bias_params=0 if m.bias is None else m.bias.numel(),
            weight_shape=tuple(m.weight.shape),
        )

    @property
    def layer_info(self) -> list[LayerInfo]:
        """Per-layer static facts, in model order."""
        return [self._infos[n] for n in self.layer_names]

    @property
    def layer_params(self) -> list[int]:
        """Weight parameter count per layer, in model order."""
        return [self._infos[n].params for n in self.layer_names]

    @property
    def total_params(self) -> int:
        """Number of quantized weight parameters."""
        return sum(self.layer_params)

    # -- bits --------------------------------------------------------------------------------------
    def _as_config(self, bits: BitConfig | Mapping[str, int] | int) -> BitConfig:
        if isinstance(bits, int):
            return BitConfig.uniform(self.layer_names, bits)
        if isinstance(bits, BitConfig):
            return bits
        if isinstance(bits, Mapping):
            return BitConfig(bits)
        raise MixqError(f"bits must be an int, a mapping or a BitConfig, got {type(bits).__name__}")

    def set_bits(self, bits: BitConfig | Mapping[str, int] | int) -> None:
        """Set every layer's weight bits (and activation bits where the config has them), in place.

        Args:
            bits: a uniform bit-width, a name -> bits mapping, or a :class:`BitConfig` naming every layer.
        """
        config = self._as_config(bits)
        config.validate(self.layer_names)
        for name, layer in self.layers.items():
            layer.weight_quantizer.bits = config.weights[name]
            layer.input_quantizer.bits = config.acts.get(name, self.act_bits)

    def set_bits_tuple(self, bits: tuple[int, ...] | list[int]) -> None:
        """Fast path for searches: weight bits in ``layer_names`` order, no validation beyond length.

        Args:
            bits: one weight bit-width per layer, or the weight bits followed by one input (activation)
                bit-width per layer (a search genome with activation genes).
        """
        n = len(self.layer_names)
        if len(bits) not in (n, 2 * n):
            raise MixqError(f"expected {n} bit-widths (or {2 * n} with activation bits), got {len(bits)}")
        for layer, b in zip(self.layers.values(), bits[:n], strict=False):
            layer.weight_quantizer.bits = int(b)
        if len(bits) == 2 * n:
            for layer, a in zip(self.layers.values(), bits[n:], strict=False):
                layer.input_quantizer.bits = int(a)

    def bit_config(self) -> BitConfig:
        """The configuration currently set.

        Returns:
            A :class:`BitConfig` with weight bits (and activation bits that differ from the default).
        """
        weights = {n: m.weight_quantizer.bits for n, m in self.layers.items()}
        acts = {n: m.input_quantizer.bits for n, m in self.layers.items()
                if m.input_quantizer.bits != self.act_bits}
        return BitConfig(weights, acts)

    # -- size --------------------------------------------------------------------------------------
    def bit_params(self, bits: BitConfig | Mapping[str, int] | int | None = None) -> int:
        """Sum of params x weight bits.

        Args:
            bits: configuration to measure (default: the one currently set).

        Returns:
            Total weight bits.
        """
        config = self.bit_config() if bits is None else self._as_config(bits)
        config.validate(self.layer_names)
        return sum(self._infos[n].params * config.weights[n] for n in self.layer_names)

    def size_mb(self, bits: BitConfig | Mapping[str, int] | int | None = None) -> float:
        """Quantized weight size in MB: sum(params x bits) / 8 / 2^20 (biases not included).

        Args:
            bits: configuration to measure (default: the one currently set).

        Returns:
            Size in MB.
        """
        return self.bit_params(bits) / MB

    def avg_bits(self, bits: BitConfig | Mapping[str, int] | int | None = None) -> float:
        """Parameter-weighted average weight bit-width (EvoQ eq. 1).

        Args:
            bits: configuration to measure (default: the one currently set).

        Returns:
            Average bits.
        """
        return self.bit_params(bits) / self.total_params

    def bias_size_mb(self) -> float:
        """Size of all biases of quantized layers at 32 bits, in MB."""
        return sum(i.bias_params for i in self._infos.values()) * 32 / MB

    def fits(self, budget: Budget, bits: BitConfig | Mapping[str, int] | int | None = None) -> bool:
        """Whether a configuration fits a budget.

        Args:
            budget: the budget.
            bits: configuration (default: current).

        Returns:
            True when within the budget (a tiny tolerance absorbs float rounding).
        """
        return self.bit_params(bits) <= budget.max_bit_params(self.total_params) * (1 + 1e-12)

    # -- calibration and modes ---------------------------------------------------------------------
    @torch.no_grad()
    def calibrate_activations(self, x: torch.Tensor, batch_size: int = 256) -> None:
        """Observe each quantized layer's input range (min/max over all of ``x``) in float.

        Args:
            x: calibration inputs ``(N, C, H, W)``, normalised as the model expects.
            batch_size: batch size of the observing pass.
        """
        _check_input(x)
        self.input_shape = tuple(x.shape[1:])  # one sample's shape, e.g. (3, 32, 32), for export
        quantizers = [m.input_quantizer for m in self.layers.values()]
        for q in quantizers:
            q.reset()
        with self.float_weights():
            for q in quantizers:
                q.observing = True
            try:
                for i in range(0, x.shape[0], batch_size):
                    self._run(x[i:i + batch_size])
            except RuntimeError as exc:
                if not self.channels_last:
                    raise
                raise MixqError(f"this model cannot run in the channels-last memory format "
                                f"({str(exc).splitlines()[0]}); leave channels_last off") from None
            finally:
                for q in quantizers:
                    q.observing = False
        unseen = [n for n, q in zip(self.layer_names, quantizers, strict=True)
                  if q.bits != FLOAT_BITS and not q.calibrated]
        if unseen:
            raise MixqError(f"{len(unseen)} layer(s) saw no calibration data, so their activation range is unknown: "
                            f"{unseen[:8]}; the {x.shape[0]} samples never reach them (a data-dependent branch?). "
                            "Calibrate with more or other samples that do, or keep activations in float (act_bits=32)")

    @contextlib.contextmanager
    def float_weights(self) -> Iterator[None]:
        """Temporarily run every layer with float weights (activation bits unchanged)."""
        saved = [m.weight_quantizer.bits for m in self.layers.values()]
        try:
            for m in self.layers.values():
                m.weight_quantizer.bits = FLOAT_BITS
            yield
        finally:
            for m, b in zip(self.layers.values(), saved, strict=False):
                m.weight_quantizer.bits = b

    @contextlib.contextmanager
    def float_mode(self) -> Iterator[None]:
        """Temporarily run the folded model fully in float (weights and activations)."""
        saved = [m.input_quantizer.bits for m in self.layers.values()]
        try:
            for m in self.layers.values():
                m.input_quantizer.bits = FLOAT_BITS
            with self.float_weights():
                yield
        finally:
            for m, b in zip(self.layers.values(), saved, strict=False):
                m.input_quantizer.bits = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the quantized model.

        Args:
            x: inputs ``(N, C, H, W)``.

        Returns:
            The model output (logits).
        """
        return self._run(x)


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MixqError(f"calibration data must be a non-empty tensor (N, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise MixqError(f"calibration data must be float (normalised), got dtype {x.dtype}")


def save_calibrated(qm: QuantModel, path: str | os.PathLike) -> None:
    """Write a calibrated model's folded float weights and learned weight grids (``calibrated.pt``).

    The file is a plain tensor dict, ``{"state_dict": ..., "weight_grids": {layer: {bits: {"scale",
    "zero_point"}}}}``, readable with ``torch.load(weights_only=True)``; it is written to a temporary name
    and renamed, so an interrupted write leaves no half file.

    Args:
        qm: the model after feature calibration.
        path: output file.
    """
    grids = {n: {str(b): {"scale": g[0].detach().cpu(), "zero_point": g[1].cpu()}
                 for b, g in m.weight_quantizer.grids.items()} for n, m in qm.layers.items()}
    state = {k: v.cpu() for k, v in qm.model.state_dict().items()}  # loadable on a machine without the GPU
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "weight_grids": grids}, tmp)
    os.replace(tmp, path)


def load_calibrated(qm: QuantModel, path: str | os.PathLike) -> None:
    """Restore :func:`save_calibrated`'s weights and grids into a QuantModel of the same model and bits.

    Args:
        qm: a QuantModel built from the same float model (same layers).
        path: the ``calibrated.pt`` file.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        state, grids = data["state_dict"], data["weight_grids"]
    except Exception as exc:  # torch raises many types for a bad file
        raise MixqError(f"cannot read calibrated weights {str(path)!r}: {str(exc).splitlines()[0]}") from None
    try:
        qm.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MixqError(f"calibrated weights {str(path)!r} do not fit this model: "
                        f"{str(exc).splitlines()[0]}") from None
    unknown = sorted(set(grids) - set(qm.layers))
    if unknown:
        raise MixqError(f"calibrated weights {str(path)!r} name unknown layer(s) {unknown[:5]}")
    for name, per_bits in grids.items():
        qm.layers[name].weight_quantizer.set_grids(
            {int(b): (g["scale"].detach(), g["zero_point"]) for b, g in per_bits.items()})


def _check_finite(model: nn.Module) -> None:
    """Refuse NaN / inf in any float parameter or buffer, naming the first such tensor."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise MixqError(f"model tensor {name!r} holds {bad} non-finite value(s) (NaN or inf); a model with "
                            "non-finite weights cannot be quantized")
