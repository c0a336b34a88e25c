"""An independent reference implementation of mixq's quantizer, used only to cross-check it.

It shares no code with :mod:`mixq.quant`: BatchNorm is folded with torch's own
``torch.nn.utils.fusion.fuse_conv_bn_eval`` (pairs found by module registration order, which holds
for the shipped models), quantization parameters come from torch's ``torch.ao`` min/max observers,
and weights / activations go through ``torch.fake_quantize_per_channel_affine`` /
``torch.fake_quantize_per_tensor_affine`` applied with hooks on the float model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_by_order(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    named = list(model.named_modules())
    for (name_a, a), (name_b, b) in zip(named, named[1:], strict=False):
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
            fused = fuse_conv_bn_eval(a, b)
            for nm, new in ((name_a, fused), (name_b, nn.Identity())):
                parent, _, child = nm.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def reference_quantize(
    model: nn.Module, calib: torch.Tensor, weight_bits: dict[str, int] | int, act_bits: int = 8
) -> nn.Module:
    """Build a fake-quantized copy of ``model`` the independent way.

    Args:
        model: float model (eval mode).
        calib: normalised calibration inputs ``(N, C, H, W)``.
        weight_bits: bits per Conv2d/Linear name, or one bit-width for all (32 = float).
        act_bits: per-tensor input bits of every Conv2d/Linear (32 = float).

    Returns:
        The fake-quantized model.
    """
    qmodel = _fold_by_order(model)
    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    # activation ranges: min/max observers on every layer input, float pass
    observers = {n: MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine) for n in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: observers[n](inp[0])) for n, m in layers.items()]
    with torch.no_grad():
        qmodel(calib)
    for h in hooks:
        h.remove()
    for name, layer in layers.items():
        b = weight_bits if isinstance(weight_bits, int) else weight_bits[name]
        if b != 32:
            obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                                           quant_min=0, quant_max=2**b - 1)
            obs(layer.weight.detach())
            scale, zp = obs.calculate_qparams()
            with torch.no_grad():
                layer.weight.copy_(torch.fake_quantize_per_channel_affine(
                    layer.weight, scale.float(), zp.int(), 0, 0, 2**b - 1))
        if act_bits != 32:
            aobs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                  quant_min=0, quant_max=2**act_bits - 1)
            aobs.min_val, aobs.max_val = observers[name].min_val, observers[name].max_val
            s, z = aobs.calculate_qparams()
            layer.register_forward_pre_hook(
                lambda mod, inp, s=float(s), z=int(z), q=2**act_bits - 1: (
                    torch.fake_quantize_per_tensor_affine(inp[0], s, z, 0, q),
                )
            )
    return qmodel
