"""The proxy protocol, per-layer statistics, and the vectorised scorer shared by every proxy.

Sign convention: **a higher score predicts a higher post-quantization accuracy**, for every proxy
(``higher_is_better`` is always True). Proxies whose natural form is a loss (HAWQ-V3's
``sum Tr * ||Q(W) - W||^2``) are negated.

Every proxy here is additive over layers: ``score(b) = sum_l G[l, b_l]`` with a per-layer gain table
``G`` (layers x bit-widths) computed once by :meth:`Proxy.statistics` from one mini-batch. Scoring
is then a numpy gather-and-sum, and :meth:`Proxy.layer_costs` (``-G``, lower = better) is what an
integer program minimises.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mixq.bits import BitConfig
from mixq.errors import MixqError
from mixq.quant.matching import quant_class_for
from mixq.quant.model import QuantModel
from mixq.quant.modules import QuantMixin
from mixq.quant.primitives import FLOAT_BITS, MAX_BITS, MIN_BITS

BITS: tuple[int, ...] = tuple(range(MIN_BITS, MAX_BITS + 1)) + (FLOAT_BITS,)
"""Bit-widths with a column in every gain table (32 = float)."""

_COL = np.full(FLOAT_BITS + 1, -1, dtype=np.int64)
_COL[list(BITS)] = np.arange(len(BITS))
_BITS_ARR = np.array(BITS, dtype=np.float64)


def bit_columns(bits: np.ndarray | Sequence) -> np.ndarray:
    """Column index in a gain table of each bit-width.

    Args:
        bits: integer array of bit-widths (any shape).

    Returns:
        Same-shaped int array of columns of :data:`BITS`.

    Raises:
        MixqError: a bit-width outside 2..8 and 32.
    """
    b = np.asarray(bits)
    if b.size and not np.issubdtype(b.dtype, np.integer):
        if not np.all(np.isfinite(b)) or not np.all(b == np.round(b)):
            raise MixqError("bit-widths must be integers")
        b = b.astype(np.int64)
    if b.size and (b.min() < 0 or b.max() > FLOAT_BITS):
        bad = b[(b < 0) | (b > FLOAT_BITS)].ravel()[0]
        raise MixqError(f"bit-width {bad} is not one of {BITS}")
    cols = _COL[b]
    if b.size and (cols < 0).any():
        raise MixqError(f"bit-width {b[cols < 0].ravel()[0]} is not one of {BITS}")
    return cols


def bits_matrix(configs: Iterable[BitConfig], layer_names: Sequence[str]) -> np.ndarray:
    """Stack bit configurations into the ``(n_configs, L)`` array that :meth:`Proxy.score` takes.

    Args:
        configs: configurations naming every layer.
        layer_names: column order.

    Returns:
        Integer array of weight bits.
    """
    rows = []
    for c in configs:
        c.validate(layer_names)
        rows.append(c.bits_tuple(layer_names))
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(layer_names))


@dataclass(frozen=True)
class LayerStats:
    """What a proxy computes once, from which any number of configurations are scored.

    Attributes:
        proxy: name of the proxy that made it.
        layer_names: layers in score column order.
        gains: ``(L, len(BITS))`` per-layer contribution to the score at each bit-width of :data:`BITS`.
        values: raw per-layer statistics, name -> ``(L,)`` or ``(L, len(BITS))`` array (e.g. ``"trace"``).
        seconds: wall time of the statistics pass.
    """

    proxy: str
    layer_names: tuple[str, ...]
    gains: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def check_batch(x: torch.Tensor, y: torch.Tensor | None, labels_for: str | None) -> torch.Tensor | None:
    """Validate one mini-batch for statistics.

    Args:
        x: input batch ``(N, C, H, W)``.
        y: labels ``(N,)`` or None.
        labels_for: who needs the labels (for the error message), or None when they are not needed.

    Returns:
        ``y`` as int64 when needed, else ``y`` unchanged.

    Raises:
        MixqError: empty / non-float input, or missing / mis-shaped labels when needed.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise MixqError("statistics need a non-empty float input batch (N, C, H, W)")
    if labels_for is None:
        return y
    if y is None:
        raise MixqError(f"{labels_for} needs labels: pass y (the mini-batch's class indices)")
    y = torch.as_tensor(y).long()
    if y.shape != (x.shape[0],):
        raise MixqError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    return y


def layer_modules(model: nn.Module, layer_names: Sequence[str]) -> list[nn.Module]:
    """Resolve layer names to Conv2d / Linear modules (QuantModel names are those of ``qm.layer_names``).

    Args:
        model: a float model or a :class:`QuantModel`.
        layer_names: qualified names.

    Returns:
        The modules, in order.
    """
    if not layer_names:
        raise MixqError("no layers to score")
    root = model.model if isinstance(model, QuantModel) else model
    mods = []
    for n in layer_names:
        try:
            m = root.get_submodule(n)
        except AttributeError:
            raise MixqError(f"model has no layer {n!r}") from None
        if isinstance(m, nn.MultiheadAttention) or not (isinstance(m, QuantMixin) or quant_class_for(m)[0]):
            raise MixqError(f"layer {n!r} is a {type(m).__name__}, expected a convolution or Linear layer")
        mods.append(m)
    return mods


def layer_names_of(model: nn.Module, modules: Sequence[nn.Module]) -> list[str]:
    """Qualified names of ``modules`` inside ``model`` (the inverse of :func:`layer_modules`).

    Args:
        model: a float model or a :class:`QuantModel`.
        modules: its layers.

    Returns:
        Their names, in order.
    """
    root = model.model if isinstance(model, QuantModel) else model
    lookup = {id(m): n for n, m in root.named_modules()}
    return [lookup[id(m)] for m in modules]


@contextlib.contextmanager
def prepared(model: nn.Module, modules: Sequence[nn.Module], weight_grad: bool) -> Iterator[None]:
    """Eval mode, float mode for a QuantModel, and (optionally) weights requiring grad; all restored.

    Args:
        model: the model.
        modules: layers whose weights may need gradients.
        weight_grad: make the weights require grad for the duration.
    """
    was_training = model.training
    flags = [m.weight.requires_grad for m in modules]
    ctx = model.float_mode() if isinstance(model, QuantModel) else contextlib.nullcontext()
    try:
        model.eval()
        if weight_grad:
            for m in modules:
                m.weight.requires_grad_(True)
        with ctx:
            yield
    finally:
        for m, f in zip(modules, flags):
            m.weight.requires_grad_(f)
        model.train(was_training)


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module], inputs: bool = False) -> Iterator[list[list[torch.Tensor]]]:
    """Record each module's outputs (or inputs) during forwards inside the block.

    Args:
        modules: modules to hook.
        inputs: record the first positional input instead of the output.

    Yields:
        One list per module, filled with the tensors of each call.
    """
    store: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    for i, m in enumerate(modules):
        def hook(mod, args, out, i=i):
            store[i].append(args[0] if inputs else out)
        handles.append(m.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def linear_in_bits(per_layer: np.ndarray) -> np.ndarray:
    """Gain table ``G[l, b] = s_l * b`` (the hand-crafted bit-aware form).

    Args:
        per_layer: ``(L,)`` layer statistics.

    Returns:
        ``(L, len(BITS))`` table.
    """
    return np.outer(np.asarray(per_layer, dtype=np.float64), _BITS_ARR)


def _check_gains(proxy: str, layer_names: list[str], gains: np.ndarray, float_may_be_undefined: bool) -> None:
    """Refuse statistics that cannot rank: non-finite values, or the same score for every configuration.

    The float column (32 bits) is exempt from the finiteness check when ``float_may_be_undefined`` (an
    evolved formula may be undefined there; scoring a float layer then raises instead).
    """
    if float_may_be_undefined:
        gains = gains[:, _BITS_ARR < FLOAT_BITS]
    bad = [n for n, row in zip(layer_names, gains) if not np.isfinite(row).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise MixqError(
            f"proxy {proxy!r} produced non-finite statistics (overflow or NaN) for layer(s) "
            f"{', '.join(map(repr, bad[:3]))}{more}: its scores would be meaningless"
        )
    if len(layer_names) and not (np.ptp(gains, axis=1) > 0).any():
        raise MixqError(
            f"proxy {proxy!r} gives every bit configuration of these {len(layer_names)} layers the same score "
            "(no layer's statistic depends on its bit-width; e.g. all saliencies are 0): it cannot rank "
            "configurations of this model"
        )


class Proxy:
    """Base class: a training-free score of bit configurations (higher = predicted more accurate).

    Subclasses set ``needs_labels`` and implement :meth:`_compute`.

    Attributes:
        name: registry name (set by ``@register_proxy``).
        needs_labels: whether :meth:`statistics` needs labels ``y``.
        higher_is_better: always True (see the module docstring).
        additive: the score is a sum of per-layer terms, so :meth:`layer_costs` is exact.
        needs_grad: whether the statistics differentiate with respect to the weights.
        float_may_be_undefined: the 32-bit column of the gain table may be NaN/inf (evolved formulas).
    """

    name: str = ""
    needs_labels: bool = False
    higher_is_better: bool = True
    additive: bool = True
    needs_grad: bool = False
    float_may_be_undefined: bool = False

    def statistics(
        self,
        model: nn.Module,
        layer_names: Sequence[str],
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        seed: int = 0,
    ) -> LayerStats:
        """Per-layer statistics from one mini-batch (run once per model).

        Args:
            model: the float model, or a :class:`QuantModel` (run in float mode, on its folded weights).
            layer_names: layers to score, in the column order of later ``bits`` arrays.
            x: one normalised input mini-batch ``(N, C, H, W)``.
            y: integer labels ``(N,)``, required when ``needs_labels``.
            seed: seed of any random vectors or inputs.

        Returns:
            The :class:`LayerStats`.

        Raises:
            MixqError: missing labels, bad input or unknown layers.
        """
        y = check_batch(x, y, f"proxy {self.name!r}" if self.needs_labels else None)
        modules = layer_modules(model, layer_names)
        t0 = time.perf_counter()
        with prepared(model, modules, self.needs_grad):
            gains, values = self._compute(model, modules, x, y, seed)
        gains = np.asarray(gains, dtype=np.float64)
        if gains.shape != (len(modules), len(BITS)):
            raise AssertionError(f"{self.name}: gain table has shape {gains.shape}")
        _check_gains(self.name, list(layer_names), gains, self.float_may_be_undefined)
        return LayerStats(self.name, tuple(layer_names), gains, values, time.perf_counter() - t0)

    def _compute(
        self, model: nn.Module, modules: list[nn.Module], x: torch.Tensor, y: torch.Tensor | None, seed: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def _check(self, stats: LayerStats) -> None:
        if stats.proxy != self.name:
            raise MixqError(f"statistics were made by proxy {stats.proxy!r}, not {self.name!r}")

    def score(self, stats: LayerStats, bits: np.ndarray | Sequence) -> np.ndarray:
        """Score configurations (vectorised; microseconds per thousand).

        Args:
            stats: output of :meth:`statistics`.
            bits: ``(n_configs, L)`` weight bits in ``stats.layer_names`` order (a single ``(L,)`` row
                is treated as one configuration).

        Returns:
            ``(n_configs,)`` float64 scores, higher = predicted more accurate.
        """
        self._check(stats)
        b = np.asarray(bits)
        if b.ndim == 1:
            b = b[None, :]
        n_layers = len(stats.layer_names)
        if b.ndim != 2 or b.shape[1] != n_layers:
            raise MixqError(f"bits must have shape (n_configs, {n_layers}), got {np.asarray(bits).shape}")
        cols = bit_columns(b)
        return stats.gains[np.arange(n_layers), cols].sum(axis=1)

    def layer_costs(self, stats: LayerStats, bit_choices: Sequence[int]) -> np.ndarray:
        """Per-layer costs for an integer program: ``score(b) == -sum_l costs[l, k(b_l)]``.

        Args:
            stats: output of :meth:`statistics`.
            bit_choices: the K candidate bit-widths.

        Returns:
            ``(L, K)`` costs, lower = better.
        """
        self._check(stats)
        cols = bit_columns(np.asarray(list(bit_choices), dtype=np.int64))
        return -stats.gains[:, cols]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


def stats_for(
    qm: QuantModel, proxy: Proxy, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0
) -> LayerStats:
    """Statistics of ``proxy`` on a QuantModel's folded float model, with columns ``qm.layer_names``.

    Runs in ``qm.float_mode()``; weights require grad only during the pass, and the model is left as
    it was.

    Args:
        qm: the quantization-ready model.
        proxy: a proxy instance.
        x: one normalised mini-batch.
        y: its labels (for proxies that need them).
        seed: seed of random vectors / inputs.

    Returns:
        The :class:`LayerStats`.
    """
    return proxy.statistics(qm, qm.layer_names, x, y, seed)


def weight_at_bits(module: nn.Module, bits: int) -> torch.Tensor:
    """A layer's weight fake-quantized at ``bits`` with the layer's range method (min/max for float layers).

    Args:
        module: Conv2d / Linear (or their quantized versions).
        bits: 2..8, or 32 for the float weight.

    Returns:
        Detached quantized weight.
    """
    from mixq.quant.ranges import quantize_weight_with

    w = module.weight.detach()
    if bits == FLOAT_BITS:
        return w
    method = getattr(getattr(module, "weight_quantizer", None), "method", "minmax")
    axis = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
    with torch.no_grad():
        return quantize_weight_with(w, bits, method, axis)


def layer_forward(module: nn.Module, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run a convolution / Linear on ``inp`` with another weight (float arithmetic, no input quantizer).

    Args:
        module: the layer (float or quantized).
        inp: its input.
        weight: replacement weight.

    Returns:
        The layer output.
    """
    if isinstance(module, QuantMixin):
        return module.forward_with(inp, weight)
    return quant_class_for(module)[0].forward_with(module, inp, weight)
