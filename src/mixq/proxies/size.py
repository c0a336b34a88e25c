"""Cost-model proxies: BParams (model size) and BOPs (bit operations).

Both rank a configuration by how many bits it spends: more bits, more predicted accuracy. They need no
labels and no gradients; BOPs runs one forward of a single sample to count multiply-accumulates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mixq.proxies.base import Proxy, linear_in_bits
from mixq.proxies.registry import register_proxy
from mixq.quant.matching import call_macs
from mixq.quant.model import MB


@register_proxy("bparams")
class BParams(Proxy):
    """Model size in MB, ``S(b) = sum_l P_l * b_l / 8 / 2^20`` (EMQ baseline "BParams").

    ``P_l`` is layer l's weight count. Higher = more bits = predicted more accurate.
    """

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        params = np.array([m.weight.numel() for m in modules], dtype=np.float64)
        return linear_in_bits(params / MB), {"params": params}


def layer_macs(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> np.ndarray:
    """Multiply-accumulates per sample of each layer, from one forward of ``x[:1]``.

    Args:
        model: the model.
        modules: its layers.
        x: an input batch (only the first sample is used).

    Returns:
        ``(L,)`` MACs per sample (summed over calls if a layer is called more than once).
    """
    macs = np.zeros(len(modules), dtype=np.float64)
    index = {id(m): i for i, m in enumerate(modules)}

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        macs[index[id(module)]] += call_macs(module, inputs, output)  # the input is one sample

    handles = [m.register_forward_hook(record) for m in modules]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return macs


@register_proxy("bops")
class BOPs(Proxy):
    """Bit operations ``S(b) = sum_l MACs_l * b_l * a_l`` (EMQ baseline "BOPs"), activation bits fixed.

    MACs per sample come from forward hooks on one sample.

    Args:
        act_bits: activation bit-width ``a_l`` of every layer (default 8).
    """

    def __init__(self, act_bits: int = 8) -> None:
        self.act_bits = act_bits

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        macs = layer_macs(model, modules, x)
        return linear_in_bits(macs * self.act_bits), {"macs": macs}
