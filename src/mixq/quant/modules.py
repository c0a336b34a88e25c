"""Quantized layers: subclasses of torch's Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear that carry
their quantizers as child modules.

``print(model)`` shows each layer's weight and input bits. Weight quantization is cached per
bit-width, so switching a layer between bit-widths is a dictionary lookup; the cache is invalidated
automatically when the float weight changes in place (e.g. by an optimizer step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import MixqError
from mixq.quant.primitives import (
    FLOAT_BITS,
    asym_qparams,
    fake_quantize,
    fake_quantize_nograd,
)
from mixq.quant.ranges import get_range_method, quantize_weight_with


class WeightQuantizer(nn.Module):
    """Per-output-channel asymmetric weight quantizer with a per-bit-width cache.

    By default the grid (scale, zero point) follows the weight: it is recomputed from the weight's
    per-channel range with ``method``. A grid can instead be *frozen* for a bit-width with
    :meth:`freeze_grid` (feature calibration does this, then learns the scale as a parameter, LSQ-style).

    Attributes:
        bits: current bit-width (2..8, or 32 for float).
        axis: the weight's output-channel axis (0; 1 for transposed convolutions).
        method: per-channel range method (``"minmax"``, ``"omse"``, ``"aciq"``; see
            :mod:`mixq.quant.ranges`).
        grids: bit-width -> frozen (scale ``(C,)``, int32 zero point ``(C,)``) overriding ``method``.
    """

    def __init__(self, bits: int = FLOAT_BITS, method: str = "minmax", axis: int = 0) -> None:
        super().__init__()
        get_range_method(method)  # validates the name
        self.bits = bits
        self.method = method
        self.axis = axis
        self.grids: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_key: tuple | None = None

    def freeze_grid(self, w: torch.Tensor, bits: int | None = None, method: str | None = None) -> torch.Tensor:
        """Fix the grid of one bit-width at the one a range method gives for ``w`` now.

        Args:
            w: the float weight.
            bits: bit-width (default: the current one).
            method: range method for the grid (default: this quantizer's ``method``).

        Returns:
            The scale tensor ``(C,)`` (make it a leaf with ``requires_grad_`` to learn it).
        """
        bits = self.bits if bits is None else bits
        lo, hi = get_range_method(method or self.method)(w.detach(), bits, self.axis)
        scale, zp = asym_qparams(lo, hi, bits)
        self.grids[bits] = (scale, zp)
        self._cache.clear()
        return scale

    def set_grids(self, grids: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Replace the frozen grids (e.g. learned by calibration and saved), dropping the cached weights.

        Args:
            grids: bit-width -> (scale ``(C,)`` float32, zero point ``(C,)`` int32).
        """
        self.grids = dict(grids)
        self._cache.clear()

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """``.to()`` / ``.cuda()`` move the frozen grids too (they are plain tensors, not buffers)."""
        super()._apply(fn, recurse)
        moved = {}
        with torch.no_grad():
            for b, (scale, zp) in self.grids.items():
                new_scale = fn(scale)
                if new_scale is not scale and scale.requires_grad:
                    new_scale.requires_grad_(True)
                moved[b] = (new_scale, fn(zp))
        self.grids = moved
        self._cache.clear()
        self._cache_key = None
        return self

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        grid = self.grids.get(self.bits)
        if grid is None:
            return quantize_weight_with(w, self.bits, self.method, self.axis)
        scale, zp = grid
        return fake_quantize(w, torch.clamp(scale, min=1e-12), zp, self.bits, axis=self.axis)

    def qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid the current bit-width uses for ``w``: the frozen one, or the range method's.

        Args:
            w: the float weight.

        Returns:
            ``(scale (C,) float32, zero_point (C,) int32)`` on the unsigned grid ``[0, 2^bits - 1]``.
        """
        if self.bits == FLOAT_BITS:
            raise MixqError("a float (32-bit) weight has no quantization grid")
        grid = self.grids.get(self.bits)
        if grid is not None:
            return torch.clamp(grid[0].detach(), min=1e-12), grid[1]
        lo, hi = get_range_method(self.method)(w.detach(), self.bits, self.axis)
        return asym_qparams(lo, hi, self.bits)

    @torch.no_grad()
    def integer_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The integer codes of the quantized weight: ``forward(w) == (q - zp) * scale`` per channel.

        Args:
            w: the float weight (channels along ``axis``).

        Returns:
            ``(q, scale, zero_point)``: int32 codes in ``[0, 2^bits - 1]`` shaped like ``w``, float32 scale
            ``(C,)`` and int32 zero point ``(C,)``.
        """
        scale, zp = self.qparams(w)
        shape = [1] * w.dim()
        shape[self.axis] = -1
        qmax = (1 << self.bits) - 1
        q = torch.clamp(torch.round(w.detach() * torch.reciprocal(scale).reshape(shape)) + zp.reshape(shape).float(),
                        0, qmax)
        return q.to(torch.int32), scale, zp

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Return the (fake-)quantized weight at the current bit-width.

        Args:
            w: the float weight parameter.

        Returns:
            Quantized weight; differentiable (straight-through) when gradients are enabled.
        """
        if self.bits == FLOAT_BITS:
            return w
        grid = self.grids.get(self.bits)
        if torch.is_grad_enabled() and (w.requires_grad or (grid is not None and grid[0].requires_grad)):
            return self._quantize(w)  # calibration: straight-through gradients, recomputed every call
        # the cache is valid while neither the weight nor any frozen scale has changed in place
        key = (w.data_ptr(), w._version, tuple((b, g[0]._version) for b, g in self.grids.items()))
        if key != self._cache_key:
            self._cache.clear()
            self._cache_key = key
        q = self._cache.get(self.bits)
        if q is None:
            with torch.no_grad():
                q = self._quantize(w.detach())
            self._cache[self.bits] = q
        return q

    def extra_repr(self) -> str:
        frozen = f", frozen grids for {sorted(self.grids)} bits" if self.grids else ""
        axis = f", axis={self.axis}" if self.axis else ""
        return f"bits={self.bits}, per_channel=True{axis}, symmetric=False, range={self.method}{frozen}"


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric quantizer for a layer's input, with a min/max range.

    The range is observed in float (``observing = True``) over the calibration samples, then frozen
    into ``scale`` / ``zero_point`` by :meth:`freeze`.

    Attributes:
        bits: bit-width (2..8, or 32 for float).
        observing: when True, forward records min/max and returns the input unchanged.
    """

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = bits
        self.observing = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        # bits -> (scale, zero_point int32, 1 / scale, zero_point as float), valid for the range of _qkey
        self._qparams: dict[int, tuple[torch.Tensor, ...]] = {}
        self._qkey: tuple[int, ...] | None = None

    def reset(self) -> None:
        """Forget the observed range."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self._qparams.clear()

    @property
    def calibrated(self) -> bool:
        """Whether a range has been observed."""
        return bool(torch.isfinite(self.min_val)) and bool(torch.isfinite(self.max_val))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid of the observed range at the current bit-width.

        Returns:
            ``(scale, zero_point)``: float32 and int32 scalars on the grid ``[0, 2^bits - 1]``.
        """
        if not self.calibrated:
            raise MixqError(
                "activation quantizer has no range: calibrate the model on samples first "
                "(QuantModel(..., calib=x) or QuantModel.calibrate_activations(x))"
            )
        return asym_qparams(self.min_val, self.max_val, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe or fake-quantize the input.

        Args:
            x: layer input.

        Returns:
            ``x`` (observing or float) or its fake-quantized version.
        """
        if self.observing:
            with torch.no_grad():
                self.min_val.copy_(torch.minimum(self.min_val, x.min()))
                self.max_val.copy_(torch.maximum(self.max_val, x.max()))
            self._qparams.clear()
            return x
        if self.bits == FLOAT_BITS:
            return x
        # the cached grids hold while min/max are neither changed in place (load_state_dict, copy_) nor moved
        key = (self.min_val.data_ptr(), self.min_val._version, self.max_val.data_ptr(), self.max_val._version)
        if key != self._qkey:
            self._qparams.clear()
            self._qkey = key
        qp = self._qparams.get(self.bits)
        if qp is None:
            scale, zp = self.qparams()
            qp = (scale, zp, torch.reciprocal(scale), zp.float())
            self._qparams[self.bits] = qp
        if torch.is_grad_enabled() and x.requires_grad:
            return fake_quantize(x, qp[0], qp[1], self.bits)  # straight-through gradient
        return fake_quantize_nograd(x, qp[0], qp[2], qp[3], self.bits)

    def extra_repr(self) -> str:
        rng = f", range=[{self.min_val.item():.4g}, {self.max_val.item():.4g}]" if self.calibrated else ""
        return f"bits={self.bits}, per_tensor=True, symmetric=False{rng}"




def _copied_state(module: nn.Module) -> dict:
    """A shallow copy of a module's state with its own dicts (parameters, children, hooks) copied too."""
    return {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}


class QuantMixin:
    """Adds ``weight_quantizer`` and ``input_quantizer`` children to a torch weight layer.

    Attributes:
        float_class: the torch class this quantized class stands for (``nn.Conv2d``, ``nn.Linear``, ...).
        kind: ``"conv"``, ``"conv_transpose"``, ``"linear"`` or ``"attention"``.
        weight_axis: output-channel axis of the weight (per-channel quantization runs along it).
    """

    float_class: type[nn.Module] = nn.Module
    kind: str = ""
    weight_axis: int = 0
    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quantizer: WeightQuantizer
    input_quantizer: ActQuantizer

    @classmethod
    def from_float(
        cls, layer: nn.Module, weight_bits: int = FLOAT_BITS, act_bits: int = 8, weight_range: str = "minmax"
    ) -> QuantMixin:
        """Wrap a float layer: the quantized one shares its parameters, buffers, hooks and attributes.

        Args:
            layer: the float layer (an instance of ``float_class`` or of a subclass that keeps its forward).
            weight_bits: initial weight bits.
            act_bits: input bits.
            weight_range: per-channel weight range method.

        Returns:
            The quantized layer.
        """
        q = cls.__new__(cls)
        # a shallow copy of the module's state; its own dicts (parameters, children, hooks) are copied so
        # adding the quantizer children leaves the float layer as it was
        q.__dict__.update(_copied_state(layer))
        q.weight_quantizer = WeightQuantizer(weight_bits, weight_range, cls.weight_axis)
        q.input_quantizer = ActQuantizer(act_bits)
        return q

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the layer currently uses it.

        Returns:
            Fake-quantized weight at the current bit-width.
        """
        return self.weight_quantizer(self.weight)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Run the layer on ``x`` with another weight, in float (no input quantizer).

        Args:
            x: the layer input.
            weight: replacement weight, shaped like ``self.weight``.

        Returns:
            The layer output.
        """
        raise NotImplementedError

    def to_float(self, weight: torch.Tensor) -> nn.Module:
        """A plain ``float_class`` layer with this layer's settings and bias and the given weight.

        Args:
            weight: the weight it should hold (e.g. the fake-quantized one).

        Returns:
            The float layer, detached from this one.
        """
        plain = self.float_class.__new__(self.float_class)
        state = _copied_state(self)
        state["_modules"] = {k: m for k, m in state["_modules"].items()
                             if not isinstance(m, (WeightQuantizer, ActQuantizer))}
        state["_parameters"] = {k: (None if v is None else nn.Parameter(v.detach().clone(), requires_grad=False))
                                for k, v in state["_parameters"].items()}
        plain.__dict__.update(state)
        plain.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        return plain


class _QuantConvNd(QuantMixin):
    """Convolution forward with quantized input and weight (Conv1d / Conv2d / Conv3d)."""

    kind = "conv"
    _conv_forward: Callable

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, *spatial) -> (N, C_out, *spatial')
        return self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_forward(x, weight, self.bias)


_TRANSPOSED: dict[int, Callable] = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _QuantConvTransposeNd(QuantMixin):
    """Transposed convolution with quantized input and weight; the weight is ``(C_in, C_out / groups, *k)``, so
    its output channels lie along axis 1 (with groups, each axis-1 slice holds that channel of every group)."""

    kind = "conv_transpose"
    weight_axis = 1
    _output_padding: Callable

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor,  # noqa: D102
                     output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise MixqError(f"{type(self).__name__} supports only padding_mode='zeros', got {self.padding_mode!r}")
        n_spatial = weight.dim() - 2
        pad = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, n_spatial,
                                   self.dilation)
        return _TRANSPOSED[n_spatial](x, weight, self.bias, self.stride, self.padding, pad, self.groups,
                                      self.dilation)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return self.forward_with(self.input_quantizer(x), self.quantized_weight(), output_size)


def _declare(mixin: type[QuantMixin], base: type[nn.Module]) -> type:
    """The quantized class of a torch layer: ``mixin``'s forward over ``base``'s state."""
    return type(f"Quant{base.__name__}", (mixin, base), {
        "float_class": base, "__module__": __name__, "__qualname__": f"Quant{base.__name__}",
        "__doc__": f"A {base.__name__} whose weight and input are fake-quantized."})


QuantConv1d = _declare(_QuantConvNd, nn.Conv1d)
QuantConv2d = _declare(_QuantConvNd, nn.Conv2d)
QuantConv3d = _declare(_QuantConvNd, nn.Conv3d)
QuantConvTranspose1d = _declare(_QuantConvTransposeNd, nn.ConvTranspose1d)
QuantConvTranspose2d = _declare(_QuantConvTransposeNd, nn.ConvTranspose2d)
QuantConvTranspose3d = _declare(_QuantConvTransposeNd, nn.ConvTranspose3d)


class QuantLinear(QuantMixin, nn.Linear):
    """A Linear whose weight and input are fake-quantized."""

    float_class = nn.Linear
    kind = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, *, in) -> (N, *, out)
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.linear(x, weight, self.bias)


QUANT_CLASSES: tuple[type[QuantMixin], ...] = (
    QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose1d, QuantConvTranspose2d, QuantConvTranspose3d,
    QuantLinear,
)
QUANT_LAYER_TYPES = (QuantMixin,)

