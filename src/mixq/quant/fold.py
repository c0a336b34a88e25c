"""Fold BatchNorm into the convolution that feeds it, found generically from the traced graph.

A ``conv -> bn`` pair (Conv1d -> BatchNorm1d, Conv2d -> BatchNorm2d, Conv3d -> BatchNorm3d) is folded when
``torch.fx`` shows the BatchNorm's only input is the conv's output, that output has no other user, each
module is called exactly once, the conv is one mixq quantizes (a subclass overriding its forward is not)
and its weight belongs to no other module (tied weights would be scaled twice). The BatchNorm module
is then replaced by ``nn.Identity`` so the model's own ``forward`` code keeps working unchanged.

Fallback (documented): a BatchNorm that does not match this pattern (fed by a concat, an add, a
Linear, a conv with tied weights, or used twice) or a model that ``torch.fx`` cannot trace keeps its
BatchNorm layers in float, evaluated with running statistics after the quantized conv. Results stay
correct; the BN is simply not part of the quantized weight. :func:`fold_batchnorm` returns what it
folded and what it left.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from mixq.quant.matching import quant_class_for

_BN_OF_CONV: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did.

    Attributes:
        folded: (conv name, bn name) pairs that were folded.
        unfolded: BatchNorm names left in float, with the reason.
        traced: whether the model could be traced.
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    unfolded: dict[str, str] = field(default_factory=dict)
    traced: bool = True


def _conv_base(m: nn.Module | None) -> type[nn.Module] | None:
    """The plain convolution class ``m`` is quantized as, or None (not a conv, or a forward-overriding one)."""
    if m is None or quant_class_for(m)[0] is None:
        return None
    return next((c for c in _BN_OF_CONV if isinstance(m, c)), None)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> names of the distinct modules that own it directly, for parameters owned by several."""
    owners: dict[int, dict[int, str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), {})[id(m)] = name
    return {k: list(v.values()) for k, v in owners.items() if len(v) > 1}


def find_conv_bn_pairs(model: nn.Module) -> FoldReport:
    """Find foldable ``conv -> BatchNorm`` pairs without changing the model.

    Args:
        model: any module.

    Returns:
        A :class:`FoldReport` with the pairs and the BatchNorms that cannot be folded.
    """
    modules = dict(model.named_modules())
    bns = [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    report = FoldReport()
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # any tracing failure means: fold nothing, keep BN in float
        report.traced = False
        reason = f"model is not traceable by torch.fx ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        report.unfolded = {n: reason for n in bns}
        return report
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    shared = _shared_weights(model)
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in bns:
            continue
        bn_name = node.target
        src = node.args[0] if node.args else None
        conv = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
        base = _conv_base(conv)
        reason = None
        if base is None:
            reason = "input is not the output of a convolution mixq quantizes"
        elif type(modules[bn_name]) is not _BN_OF_CONV[base]:
            reason = f"a {type(modules[bn_name]).__name__} after a {base.__name__} is not folded"
        elif id(conv.weight) in shared:
            reason = f"conv {src.target!r} shares its weight with {shared[id(conv.weight)]} (tied weights)"
        elif len(src.users) != 1:
            reason = f"conv {src.target!r} output has other users"
        elif calls[src.target] != 1 or calls[bn_name] != 1:
            reason = "conv or BatchNorm is called more than once"
        elif not modules[bn_name].track_running_stats or modules[bn_name].running_var is None:
            reason = "BatchNorm has no running statistics"
        if reason is None:
            report.folded.append((src.target, bn_name))
        else:
            report.unfolded[bn_name] = reason
    for name in bns:  # BNs never called in the traced graph
        if name not in report.unfolded and all(bn != name for _, bn in report.folded):
            report.unfolded[name] = "not called in the traced forward"
    return report


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into ``conv`` in place (weights and a new/updated bias).

    Args:
        conv: the convolution (Conv1d/2d/3d, any groups, including depthwise).
        bn: the BatchNorm applied to its output.
    """
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std  # (C_out,)
    conv.weight.mul_(factor.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_bias.detach().clone())


def fold_batchnorm(model: nn.Module, warn: bool = True) -> FoldReport:
    """Fold every foldable BatchNorm2d of an eval-mode model in place.

    Args:
        model: the model (modified in place; pass a copy to keep the original).
        warn: emit a warning listing BatchNorms kept in float.

    Returns:
        The :class:`FoldReport`.
    """
    report = find_conv_bn_pairs(model)
    for conv_name, bn_name in report.folded:
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_submodule(model, bn_name, nn.Identity())
    if warn and report.unfolded:
        first = next(iter(report.unfolded.items()))
        warnings.warn(
            f"{len(report.unfolded)} BatchNorm layer(s) kept in float (not folded), e.g. "
            f"{first[0]!r}: {first[1]}",
            stacklevel=2,
        )
    return report
