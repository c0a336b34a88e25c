"""Quantized layers: Conv2d / Linear subclasses that carry their quantizers as child modules.

``print(model)`` shows each layer's weight and input bits. Weight quantization is cached per
bit-width, so switching a layer between bit-widths is a dictionary lookup; the cache is invalidated
automatically when the float weight changes in place (e.g. by an optimizer step).
"""

from __future__ import annotations

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
        method: per-channel range method (``"minmax"``, ``"omse"``, ``"aciq"``; see
            :mod:`mixq.quant.ranges`).
        grids: bit-width -> frozen (scale ``(C,)``, int32 zero point ``(C,)``) overriding ``method``.
    """

    def __init__(self, bits: int = FLOAT_BITS, method: str = "minmax") -> None:
        super().__init__()
        get_range_method(method)  # validates the name
        self.bits = bits
        self.method = method
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
        lo, hi = get_range_method(method or self.method)(w.detach(), bits)
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

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        grid = self.grids.get(self.bits)
        if grid is None:
            return quantize_weight_with(w, self.bits, self.method)
        scale, zp = grid
        return fake_quantize(w, torch.clamp(scale, min=1e-12), zp, self.bits, axis=0)

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
        lo, hi = get_range_method(self.method)(w.detach(), self.bits, 0)
        return asym_qparams(lo, hi, self.bits)

    @torch.no_grad()
    def integer_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The integer codes of the quantized weight: ``forward(w) == (q - zp) * scale`` per channel.

        Args:
            w: the float weight ``(C_out, ...)``.

        Returns:
            ``(q, scale, zero_point)``: int32 codes in ``[0, 2^bits - 1]`` shaped like ``w``, float32 scale
            ``(C_out,)`` and int32 zero point ``(C_out,)``.
        """
        scale, zp = self.qparams(w)
        shape = (-1,) + (1,) * (w.dim() - 1)
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
        return f"bits={self.bits}, per_channel=True, symmetric=False, range={self.method}{frozen}"


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
        # bits -> (scale, zero_point int32, 1 / scale, zero_point as float)
        self._qparams: dict[int, tuple[torch.Tensor, ...]] = {}

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


class QuantMixin:
    """Adds ``weight_quantizer`` and ``input_quantizer`` children to a Conv2d / Linear subclass."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quantizer: WeightQuantizer
    input_quantizer: ActQuantizer

    def _init_quantizers(self, weight_bits: int, act_bits: int, weight_range: str = "minmax") -> None:
        self.weight_quantizer = WeightQuantizer(weight_bits, weight_range)
        self.input_quantizer = ActQuantizer(act_bits)

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the layer currently uses it.

        Returns:
            Fake-quantized weight at the current bit-width.
        """
        return self.weight_quantizer(self.weight)


class QuantConv2d(QuantMixin, nn.Conv2d):
    """A Conv2d whose weight and input are fake-quantized."""

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, weight_bits: int = FLOAT_BITS, act_bits: int = 8, weight_range: str = "minmax"
    ) -> QuantConv2d:
        """Wrap a float Conv2d (weights are shared, not copied).

        Args:
            conv: the float layer.
            weight_bits: initial weight bits.
            act_bits: input bits.
            weight_range: per-channel weight range method.

        Returns:
            The quantized layer.
        """
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                     "transposed", "output_padding", "groups", "padding_mode"):
            setattr(q, attr, getattr(conv, attr))
        q._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        q.weight = conv.weight
        q.bias = conv.bias
        q._init_quantizers(weight_bits, act_bits, weight_range)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, C_out, H', W')
        return self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    """A Linear whose weight and input are fake-quantized."""

    @classmethod
    def from_float(
        cls, linear: nn.Linear, weight_bits: int = FLOAT_BITS, act_bits: int = 8, weight_range: str = "minmax"
    ) -> QuantLinear:
        """Wrap a float Linear (weights are shared, not copied).

        Args:
            linear: the float layer.
            weight_bits: initial weight bits.
            act_bits: input bits.
            weight_range: per-channel weight range method.

        Returns:
            The quantized layer.
        """
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = linear.in_features, linear.out_features
        q.weight = linear.weight
        q.bias = linear.bias
        q._init_quantizers(weight_bits, act_bits, weight_range)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, *, in) -> (N, *, out)
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)


QUANT_LAYER_TYPES = (QuantConv2d, QuantLinear)
