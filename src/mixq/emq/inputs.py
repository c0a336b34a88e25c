"""Per-layer input sources of EMQ proxy formulas, computed once per model and reused by every candidate.

Sources (one tensor per weight layer ``l``):

==========  ======================================================================  ===========
name        what                                                                    labels
==========  ======================================================================  ===========
``act``     the layer's output on the mini-batch (forward hook), ``(N, C, H, W)``    no
``grad``    weight gradient of the mean cross-entropy of the labelled mini-batch     yes
``weight``  the (BN-folded) float weight                                            no
``hessian`` Hutchinson estimate of the Hessian diagonal, ``mean_s v * (H v)``       yes
``vgrad``   "virtual gradient": weight gradient of ``sum(logits)`` for one           no
            all-ones input (label- and data-free)
``qerror``  weight quantization error ``Q_b(W) - W`` at the configuration's bits     no
``oerror``  the layer's output error from quantizing its weight alone,             no
            ``f(x; Q_b(W)) - f(x; W)`` on the layer's recorded float input
``nerror``  the network's logit error from quantizing this layer's weight alone     no
            (all else float): ``F(x; Q_b(W_l)) - F(x)``, ``(N, classes)``; its mean
            square is EvoQ's per-layer sensitivity (eq. 4)
==========  ======================================================================  ===========

``qerror``, ``oerror`` and ``nerror`` are the bit-dependent sources: a formula that reads one has a
per-layer value for every bit-width, which makes the proxy bit-aware beyond the final aggregation.
``oerror`` and ``nerror`` go beyond EMQ's published source list: ``oerror`` costs one layer call per layer
and bit-width, ``nerror`` one forward pass of the mini-batch per layer and bit-width (EvoQ's sensitivity
brought into EMQ's search space). All tensors are float32 and detached.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixq.errors import MixqError
from mixq.proxies.base import check_batch, layer_forward, layer_modules, prepared, weight_at_bits
from mixq.proxies.hessian import grads_with_graph, hessian_vector_product, rademacher
from mixq.quant.primitives import FLOAT_BITS

SOURCES: dict[str, str] = {
    "act": "A",
    "grad": "G",
    "weight": "W",
    "hessian": "H",
    "vgrad": "V",
    "qerror": "Q",
    "oerror": "E",
    "nerror": "D",
}
"""Source name -> the symbol printed in formulas."""

LABELLED = frozenset({"grad", "hessian"})
BIT_DEPENDENT = frozenset({"qerror", "oerror", "nerror"})


@dataclass
class FormulaInputs:
    """The per-layer tensors formulas read.

    Attributes:
        layer_names: layers in column order.
        tensors: source name -> one tensor per layer (bit-independent sources).
        weights: the float weights (for ``qerror``).
        modules: the layers (their range method quantizes ``qerror`` / ``oerror`` weights).
        layer_inputs: each layer's recorded float input (for ``oerror``), or None when not recorded.
        model: the model (for ``nerror``), or None when not requested.
        net_input: the mini-batch ``nerror`` runs (the first ``act_samples`` images).
        net_output: the float logits on ``net_input``.
        seconds: source name -> wall time of computing it.
        cache: (source, layer, bits) -> bit-dependent tensor, filled on demand.
    """

    layer_names: tuple[str, ...]
    tensors: dict[str, list[torch.Tensor]]
    weights: list[torch.Tensor]
    modules: list[nn.Module] = field(repr=False, default_factory=list)
    layer_inputs: list[torch.Tensor] | None = field(repr=False, default=None)
    model: nn.Module | None = field(repr=False, default=None)
    net_input: torch.Tensor | None = field(repr=False, default=None)
    net_output: torch.Tensor | None = field(repr=False, default=None)
    seconds: dict[str, float] = field(default_factory=dict)
    cache: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _out_shapes: list[tuple[int, ...]] | None = field(default=None, repr=False)

    @property
    def sources(self) -> tuple[str, ...]:
        """Available source names."""
        return (tuple(self.tensors) + ("qerror",) + (("oerror",) if self.layer_inputs is not None else ())
                + (("nerror",) if self.model is not None else ()))

    def get(self, source: str, layer: int, bits: int | None = None) -> torch.Tensor:
        """One source tensor of one layer.

        Args:
            source: source name.
            layer: layer position.
            bits: weight bits (``qerror`` only).

        Returns:
            The tensor (do not modify it).
        """
        if source in BIT_DEPENDENT:
            if bits is None:
                raise MixqError(f"source {source!r} needs a bit-width")
            key = (source, layer, int(bits))
            t = self.cache.get(key)
            if t is None:
                t = self._bit_dependent(source, layer, int(bits))
                self.cache[key] = t
            return t
        try:
            return self.tensors[source][layer]
        except KeyError:
            raise MixqError(f"formula source {source!r} was not computed; available: {self.sources}") from None

    def _bit_dependent(self, source: str, layer: int, bits: int) -> torch.Tensor:
        m, w = self.modules[layer], self.weights[layer]
        if source == "oerror" and self.layer_inputs is None:
            raise MixqError("source 'oerror' was not computed (pass it in sources)")
        if source == "nerror" and self.model is None:
            raise MixqError("source 'nerror' was not computed (pass it in sources)")
        with torch.no_grad():
            wq = w if bits == FLOAT_BITS else weight_at_bits(m, bits).float()
            if source == "qerror":
                return wq - w
            if source == "nerror":
                return self._network_error(layer, wq)
            x = self.layer_inputs[layer]
            return layer_forward(m, x, wq.to(x.dtype)).float() - layer_forward(m, x, w.to(x.dtype)).float()

    def _network_error(self, layer: int, wq: torch.Tensor) -> torch.Tensor:
        """Logits with only this layer's weight replaced by ``wq``, minus the float logits."""
        m = self.modules[layer]
        saved = m.weight.detach().clone()
        with prepared(self.model, self.modules, weight_grad=False), torch.no_grad():
            try:
                m.weight.copy_(wq.to(saved.dtype))
                out = self.model(self.net_input).float()
            finally:
                m.weight.copy_(saved)
        return out - self.net_output

    def shape(self, source: str, layer: int) -> tuple[int, ...]:
        """Shape of a source tensor (``qerror`` has the weight's shape).

        Args:
            source: source name.
            layer: layer position.

        Returns:
            The shape.
        """
        if source == "qerror":
            return tuple(self.weights[layer].shape)
        if source == "oerror":
            return tuple(self.out_shapes[layer])
        if source == "nerror":
            if self.net_output is None:
                raise MixqError("source 'nerror' was not computed (pass it in sources)")
            return tuple(self.net_output.shape)
        return tuple(self.get(source, layer).shape)

    @property
    def out_shapes(self) -> list[tuple[int, ...]]:
        """Output shape of each layer on the recorded inputs (``oerror`` shapes)."""
        if self.layer_inputs is None:
            raise MixqError("source 'oerror' was not computed (pass it in sources)")
        if self._out_shapes is None:
            self._out_shapes = [tuple(self._bit_dependent("oerror", i, FLOAT_BITS).shape)
                                for i in range(len(self.layer_names))]
        return self._out_shapes


class PerturbedInputs:
    """The sources of a :class:`FormulaInputs`, each multiplied elementwise by ``1 + rel * z``.

    ``z`` is standard normal noise drawn once per (source, layer, bit-width) from a generator seeded by a
    checksum of that key, so the perturbation is the same on every machine and in every run. A formula whose
    ranking changes under a perturbation ~100x float32 rounding measures rounding, not the network (for
    instance ``mean(znorm(X))``, which is 0 up to rounding): the search screens it out as ``unstable``.

    Args:
        base: the sources.
        rel: relative size of the perturbation.
    """

    def __init__(self, base: FormulaInputs, rel: float = 1e-5) -> None:
        self.base, self.rel = base, float(rel)
        self.cache: dict[tuple[str, int, int | None], torch.Tensor] = {}

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    def get(self, source: str, layer: int, bits: int | None = None) -> torch.Tensor:
        """One perturbed source tensor of one layer (see :meth:`FormulaInputs.get`)."""
        key = (source, int(layer), None if source not in BIT_DEPENDENT or bits is None else int(bits))
        t = self.cache.get(key)
        if t is None:
            x = self.base.get(source, layer, bits)
            gen = torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
            z = torch.randn(x.shape, generator=gen, dtype=x.dtype) if x.is_floating_point() else None
            t = x if z is None else x * (1 + self.rel * z)
            self.cache[key] = t
        return t


def compute_inputs(
    model: nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor | None,
    sources: Sequence[str] = tuple(SOURCES),
    hessian_samples: int = 16,
    act_samples: int = 32,
    seed: int = 0,
) -> FormulaInputs:
    """Compute the requested sources from one mini-batch.

    Args:
        model: float model or :class:`~mixq.quant.model.QuantModel` (run in float mode on its folded weights).
        layer_names: weight layers, in column order.
        x: normalised input mini-batch ``(N, C, H, W)``.
        y: labels ``(N,)`` (needed for ``grad`` and ``hessian``).
        sources: which sources to compute (``qerror`` is always available; bit-dependent sources are
            computed on demand, per bit-width).
        hessian_samples: Rademacher vectors of the Hessian-diagonal estimate.
        act_samples: images whose activations are kept (memory; the first ones of ``x``).
        seed: seed of the Rademacher vectors.

    Returns:
        The :class:`FormulaInputs`.

    Raises:
        MixqError: unknown source, missing labels, or bad input.
    """
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise MixqError(f"unknown formula source(s) {unknown}; expected some of {list(SOURCES)}")
    labelled = sorted(LABELLED & set(sources))
    y = check_batch(x, y, f"formula sources {labelled}" if labelled else None)
    modules = layer_modules(model, layer_names)
    tensors: dict[str, list[torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    with prepared(model, modules, weight_grad=True):
        weights = [m.weight for m in modules]
        if "weight" in sources:
            tensors["weight"] = [w.detach().float().clone() for w in weights]
        layer_inputs = None
        if "act" in sources or "oerror" in sources:
            layer_inputs = _activation_sources(model, modules, layer_names, x[:act_samples], sources, tensors,
                                               seconds)
        if "grad" in sources or "hessian" in sources:
            _gradient_sources(model, weights, x, y, sources, hessian_samples, seed, tensors, seconds)
        if "vgrad" in sources:
            t0 = time.perf_counter()
            ones = torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
            vg = torch.autograd.grad(model(ones).sum(), weights, allow_unused=True)
            tensors["vgrad"] = [torch.zeros_like(w).detach() if g is None else g.detach().float()
                                for g, w in zip(vg, weights)]
            seconds["vgrad"] = time.perf_counter() - t0
        float_weights = [w.detach().float().clone() for w in weights]
        net_input = net_output = None
        if "nerror" in sources:
            net_input = x[:act_samples]
            with torch.no_grad():
                net_output = model(net_input).float()
    return FormulaInputs(tuple(layer_names), tensors, float_weights, modules, layer_inputs,
                         model if "nerror" in sources else None, net_input, net_output, seconds)


def _activation_sources(
    model: nn.Module, modules: list[nn.Module], layer_names: Sequence[str], x: torch.Tensor, sources: Sequence[str],
    tensors: dict[str, list[torch.Tensor]], seconds: dict[str, float],
) -> list[torch.Tensor] | None:
    """Each layer's output (``act``) from one no-grad pass; returns each layer's input when ``oerror`` is asked."""
    t0 = time.perf_counter()
    outs: list[torch.Tensor | None] = [None] * len(modules)
    ins: list[torch.Tensor | None] = [None] * len(modules)
    handles = [m.register_forward_hook(_keep_first(outs, ins, i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if "act" in sources:
        tensors["act"] = [_checked(t, layer_names[i]) for i, t in enumerate(outs)]
    layer_inputs = [_checked(t, layer_names[i]) for i, t in enumerate(ins)] if "oerror" in sources else None
    seconds["act"] = time.perf_counter() - t0
    return layer_inputs


def _gradient_sources(
    model: nn.Module, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, sources: Sequence[str],
    hessian_samples: int, seed: int, tensors: dict[str, list[torch.Tensor]], seconds: dict[str, float],
) -> None:
    """The cross-entropy weight gradient (``grad``) and the Hutchinson Hessian diagonal (``hessian``)."""
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    grads = grads_with_graph(loss, weights)
    if "grad" in sources:
        tensors["grad"] = [g.detach().float().clone() for g in grads]
        seconds["grad"] = time.perf_counter() - t0
    if "hessian" in sources:
        t0 = time.perf_counter()
        tensors["hessian"] = _hessian_diagonal(weights, grads, hessian_samples, seed)
        seconds["hessian"] = time.perf_counter() - t0


def _keep_first(outs: list, ins: list, i: int):
    def hook(mod, args, out):
        if outs[i] is None:
            outs[i] = out.detach().float()
            ins[i] = args[0].detach()
    return hook


def _checked(t: torch.Tensor | None, name: str) -> torch.Tensor:
    if t is None:
        raise MixqError(f"layer {name!r} did not run in the forward pass; it cannot be scored")
    return t


def _hessian_diagonal(
    weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], n_samples: int, seed: int
) -> list[torch.Tensor]:
    """``diag(H) ~ mean_s v_s * (H v_s)`` with Rademacher ``v_s`` (Bekas et al. 2007), per weight tensor."""
    if n_samples < 1:
        raise MixqError(f"hessian_samples must be >= 1, got {n_samples}")
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    for _ in range(n_samples):
        v = [rademacher(w, gen) for w in weights]
        hv = hessian_vector_product(None, weights, v, grads=grads)
        for a, vi, h in zip(acc, v, hv):
            a += (vi * h).double()
    return [(a / n_samples).float().detach() for a in acc]


def source_summary(inputs: FormulaInputs) -> dict[str, object]:
    """Shapes and timings of the computed sources (for result files).

    Args:
        inputs: computed inputs.

    Returns:
        JSON-ready dict.
    """
    return {
        "layers": len(inputs.layer_names),
        "sources": list(inputs.sources),
        "seconds": {k: round(v, 4) for k, v in inputs.seconds.items()},
        "elements": {k: int(np.sum([t.numel() for t in ts])) for k, ts in inputs.tensors.items()},
    }
