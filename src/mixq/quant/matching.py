"""Which modules of a model mixq quantizes, which it cannot, and how shared modules and weights are grouped.

A module is quantized when it is an instance of a supported torch layer (``nn.Conv1d/2d/3d``,
``nn.ConvTranspose1d/2d/3d``, ``nn.Linear``, ``nn.MultiheadAttention`` with equal query/key/value dims),
matched with ``isinstance``: a subclass that keeps the base class's forward is quantized as its base; a
subclass that overrides the forward (e.g. a weight-standardised conv) may transform its weight before use,
so it is left in float and named. Any other module that owns a parameter of two or more dimensions (a
weight used through ``F.conv2d`` / ``F.linear`` in its own forward, an embedding table) is left in float and
named too. Left-out modules are not counted in size or bits.

One module reachable under several names is one layer (the first name; the others are *aliases*). Distinct
modules sharing one weight tensor are *tied*: they share that layer's weight and input quantizers, so the
tensor is quantized once, counted once and has one bit-width (one gene in a search).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mixq.errors import MixqError
from mixq.quant.attention import QuantMultiheadAttention, call_macs_attention
from mixq.quant.modules import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
    QuantLinear,
    QuantMixin,
)

# torch base class -> quantized class, and the methods a subclass must not override to be quantized as its base
SUPPORTED: dict[type[nn.Module], tuple[type[QuantMixin], tuple[str, ...]]] = {
    nn.Conv1d: (QuantConv1d, ("forward", "_conv_forward")),
    nn.Conv2d: (QuantConv2d, ("forward", "_conv_forward")),
    nn.Conv3d: (QuantConv3d, ("forward", "_conv_forward")),
    nn.ConvTranspose1d: (QuantConvTranspose1d, ("forward",)),
    nn.ConvTranspose2d: (QuantConvTranspose2d, ("forward",)),
    nn.ConvTranspose3d: (QuantConvTranspose3d, ("forward",)),
    nn.Linear: (QuantLinear, ("forward",)),
    nn.MultiheadAttention: (QuantMultiheadAttention, ("forward",)),
}
_SUBCLASSES: dict[tuple[type, type], type] = {}


def _subclass_quant(qcls: type[QuantMixin], sub: type[nn.Module]) -> type[QuantMixin]:
    """A quantized class for a subclass that keeps its base's forward (its other methods stay available)."""
    key = (qcls, sub)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Quant{sub.__name__}", (qcls, sub), {"__module__": qcls.__module__,
                                                                      "__doc__": qcls.__doc__})
    return _SUBCLASSES[key]


def quant_class_for(module: nn.Module) -> tuple[type[QuantMixin] | None, str]:
    """The quantized class for ``module``, or why it has none.

    Args:
        module: any module.

    Returns:
        ``(class, "")`` when it can be quantized; ``(None, reason)`` when it is a supported kind of layer that
        cannot be; ``(None, "")`` when it is not a weight layer at all.
    """
    base = next((b for b in SUPPORTED if isinstance(module, b)), None)
    if base is None:
        return None, ""
    qcls, methods = SUPPORTED[base]
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters(recurse=False)):
        return None, "lazy layer not initialised yet: run one forward before quantizing"
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        return None, "separate key/value sizes (kdim/vdim) are not supported"
    if type(module) is base:
        return qcls, ""
    overridden = [m for m in methods if getattr(type(module), m) is not getattr(base, m)]
    if overridden:
        return None, (f"subclass of {base.__name__} overriding {'/'.join(overridden)}(), which may transform "
                      "the weight before use")
    return _subclass_quant(qcls, type(module)), ""


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The weight tensor a supported layer quantizes (``in_proj_weight`` for attention).

    Args:
        module: a supported layer, float or quantized.

    Returns:
        The weight parameter.
    """
    return module.in_proj_weight if isinstance(module, nn.MultiheadAttention) else module.weight


@dataclass
class LayerPlan:
    """The outcome of :func:`plan_layers`.

    Attributes:
        layers: layer name -> quantized class, in model order (one entry per quantized weight tensor).
        aliases: other name of a quantized module -> its layer name.
        tied: name of a module sharing a layer's weight tensor -> that layer's name.
        skipped: name -> ``"Type: reason"`` for every weight-holding module left in float.
    """

    layers: dict[str, type[QuantMixin]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def plan_layers(model: nn.Module) -> LayerPlan:
    """Decide, without changing ``model``, which modules are quantized and how they are grouped.

    Args:
        model: a float model.

    Returns:
        The :class:`LayerPlan`.
    """
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
        modules[id(m)] = m
    plan = LayerPlan()
    weight_owner: dict[int, str] = {}
    for key, m in modules.items():
        first, *others = names[key]
        if isinstance(m, QuantMixin):
            raise MixqError(f"layer {first!r} is already quantized: pass the float model")
        qcls, reason = quant_class_for(m)
        if qcls is None:
            own = [k for k, p in m.named_parameters(recurse=False) if p is not None and p.dim() >= 2]
            if reason or own:
                plan.skipped[first] = f"{type(m).__name__}: " + (reason or (
                    f"holds parameter(s) {own} used by its own forward, not through a layer mixq can wrap"))
            continue
        w = layer_weight(m)
        owner = weight_owner.get(id(w))
        if owner is None:
            weight_owner[id(w)] = first
            plan.layers[first] = qcls
        elif plan.layers[owner].weight_axis == qcls.weight_axis:
            plan.tied[first] = owner
        else:
            plan.skipped[first] = f"{type(m).__name__}: shares its weight with {owner!r}, a layer of another kind"
            continue
        for other in others:
            plan.aliases[other] = first
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) and name in plan.skipped:  # its forward never calls out_proj
            child = f"{name}.out_proj" if name else "out_proj"
            if plan.layers.pop(child, None) is not None:
                plan.skipped[child] = (f"{type(m.out_proj).__name__}: output projection of {name!r}, which is not "
                                       "quantized")
    return plan


def call_macs(module: nn.Module, inputs: tuple, output: object) -> int:
    """Multiply-accumulates of one call of a supported layer (float or quantized).

    Args:
        module: the layer.
        inputs: the call's positional inputs.
        output: its output.

    Returns:
        MACs of the call, over the whole batch.
    """
    if isinstance(module, nn.MultiheadAttention):
        return call_macs_attention(module, inputs)
    w = module.weight
    per_element = w.numel() // w.shape[0]
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return inputs[0].numel() * per_element  # every input element meets C_out/g x k weights
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.numel() * per_element  # every output element costs C_in/g x k MACs
    return output.numel() * w.shape[-1]
