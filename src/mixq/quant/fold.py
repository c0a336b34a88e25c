"""Fold BatchNorm2d into the convolution that feeds it, found generically from the traced graph.

A ``conv -> bn`` pair is folded when ``torch.fx`` shows the BatchNorm's only input is the conv's
output, that output has no other user, and each module is called exactly once. The BatchNorm module
is then replaced by ``nn.Identity`` so the model's own ``forward`` code keeps working unchanged.

Fallback (documented): a BatchNorm that does not match this pattern (fed by a concat, an add, a
Linear, or used twice) or a model that ``torch.fx`` cannot trace keeps its BatchNorm layers in float,
evaluated with running statistics after the quantized conv. Results stay correct; the BN is simply not
part of the quantized weight. :func:`fold_batchnorm` returns what it folded and what it left.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn


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


def find_conv_bn_pairs(model: nn.Module) -> FoldReport:
    """Find foldable ``Conv2d -> BatchNorm2d`` pairs without changing the model.

    Args:
        model: any module.

    Returns:
        A :class:`FoldReport` with the pairs and the BatchNorms that cannot be folded.
    """
    modules = dict(model.named_modules())
    bns = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
    report = FoldReport()
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # any tracing failure means: fold nothing, keep BN in float
        report.traced = False
        reason = f"model is not traceable by torch.fx ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        report.unfolded = {n: reason for n in bns}
        return report
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn_name = node.target
        src = node.args[0] if node.args else None
        reason = None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or not isinstance(
            modules.get(src.target), nn.Conv2d
        ):
            reason = "input is not a Conv2d module output"
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
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into ``conv`` in place (weights and a new/updated bias).

    Args:
        conv: the convolution (any groups, including depthwise).
        bn: the BatchNorm2d applied to its output.
    """
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std  # (C_out,)
    conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
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
