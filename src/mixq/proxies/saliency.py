"""Bit-aware pruning saliencies: SNIP, SynFlow and Fisher, each weighted by the layer's bit-width.

EMQ's bit-aware baselines (``bsnip``, ``bsynflow``, Fisher) score ``S(b) = sum_l s_l * b_l`` with a
per-layer saliency ``s_l`` taken from the zero-cost-proxy literature (Abdelfattah et al., ICLR 2021).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from mixq.proxies.base import Proxy, capture_outputs, layer_modules, layer_names_of, linear_in_bits
from mixq.proxies.registry import register_proxy


@register_proxy("snip")
class Snip(Proxy):
    """Bit-aware SNIP (Lee et al., ICLR 2019): ``s_l = sum_i |w_i * dL/dw_i|``, ``S(b) = sum_l s_l * b_l``.

    ``L`` is the mean cross-entropy of one labelled mini-batch, ``w`` the layer's (folded) weight.
    """

    needs_labels = True
    needs_grad = True

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        weights = [m.weight for m in modules]
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights, allow_unused=True)
        sal = np.array([0.0 if g is None else float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads)])
        return linear_in_bits(sal), {"saliency": sal}


# Activation modules SynFlow's copy replaces by ReLU (their piecewise-linear, non-saturating counterpart).
LINEARISED: tuple[type[torch.nn.Module], ...] = (
    torch.nn.ReLU6, torch.nn.Hardtanh, torch.nn.SiLU, torch.nn.GELU, torch.nn.Hardswish, torch.nn.Mish,
    torch.nn.ELU, torch.nn.CELU, torch.nn.SELU, torch.nn.LeakyReLU, torch.nn.PReLU, torch.nn.Softplus,
)


def _linearise(net: torch.nn.Module) -> None:
    """Replace every :data:`LINEARISED` activation module of ``net`` by ReLU, in place."""
    for name, child in list(net.named_children()):
        if isinstance(child, LINEARISED):
            setattr(net, name, torch.nn.ReLU())
        else:
            _linearise(child)


@register_proxy("synflow")
class SynFlow(Proxy):
    """Bit-aware SynFlow (Tanaka et al., NeurIPS 2020): label- and data-free.

    On a float64 copy of the model whose parameters and floating buffers are replaced by their absolute
    values, ``R = sum(f(1))`` for an all-ones input of one sample's shape; ``s_l = sum_i w_i * dR/dw_i``
    (all terms non-negative) and ``S(b) = sum_l s_l * b_l``. float64 avoids the overflow of the
    product of absolute weights through deep networks. The model itself is not modified.

    SynFlow is defined for ReLU networks, where the all-positive copy is linear. A saturating or smooth
    activation module (ReLU6, Hardtanh, SiLU, GELU, Hardswish, ... see :data:`LINEARISED`) is replaced by
    ReLU in the copy: with positive activations ReLU6 saturates at 6 and passes no gradient, which made
    every layer before MobileNetV2's classifier score 0. ReLU networks are unchanged; activations written
    as functions inside ``forward`` are kept as they are.
    """

    needs_grad = False  # works on its own copy

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        names = layer_names_of(model, modules)
        net = copy.deepcopy(model).double()
        _linearise(net)
        with torch.no_grad():
            for t in list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]:
                t.abs_()
        mods = layer_modules(net, names)
        weights = [m.weight for m in mods]
        for w in weights:
            w.requires_grad_(True)
        ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
        grads = torch.autograd.grad(net(ones).sum(), weights, allow_unused=True)
        sal = np.array([0.0 if g is None else float((w.detach() * g).sum()) for w, g in zip(weights, grads)])
        return linear_in_bits(sal), {"saliency": sal}


@register_proxy("fisher")
class Fisher(Proxy):
    """Bit-aware Fisher (Theis et al. 2018; Turner et al., ICLR 2020): ``S(b) = sum_l s_l * b_l``.

    With ``a`` a layer's output and ``g = dL/da`` (mean cross-entropy of one labelled mini-batch),
    ``s_l = sum_c 0.5 * mean_n (sum_{h,w} a_{nchw} g_{nchw})^2``: the per-channel Fisher estimate of
    the zero-cost-proxy code, summed over the layer's output channels (for Linear, no spatial sum).
    """

    needs_labels = True
    needs_grad = True

    def _compute(self, model, modules, x, y, seed):  # noqa: D102
        with capture_outputs(modules) as outs:
            loss = F.cross_entropy(model(x), y)
        flat = [(i, a) for i, calls in enumerate(outs) for a in calls if a.requires_grad]
        grads = torch.autograd.grad(loss, [a for _, a in flat], allow_unused=True) if flat else []
        sal = np.zeros(len(modules), dtype=np.float64)
        for (i, a), g in zip(flat, grads):
            if g is None:
                continue
            prod = (a.detach() * g).double()
            per_channel = prod.sum(dim=tuple(range(2, prod.dim()))) if prod.dim() > 2 else prod
            sal[i] += float(0.5 * per_channel.pow(2).mean(0).sum())
        return linear_in_bits(sal), {"fisher": sal}
