"""Forward passes of a QuantModel that reuse an earlier pass's layer outputs up to the first changed layer.

A search evaluates many bit configurations on the same inputs, and a child differs from its parent in a
few layers. Every quantized layer that runs before the first layer whose bits differ sees exactly the
same input as in the parent's pass, so its output is the parent's: :class:`PrefixCache` keeps the output
of every quantized layer of recent passes and, for a new configuration, replays the stored outputs of the
longest matching prefix (in execution order) instead of computing those layers::

    cache = PrefixCache(qm, x, max_mb=2048)
    y = cache(bits_tuple)          # == qm.set_bits_tuple(bits_tuple); qm(x), bit for bit

Exactness: the replayed layers would compute the same tensors from the same inputs; the float ops
between layers still run on them. Outputs are stored and handed back as they are; modules with an
``inplace`` flag (``ReLU(inplace=True)``) run out of place during the pass (same values), and an output
the model still writes into (``out += shortcut`` in a forward) shows in its tensor version counter: every
stored pass holding it is dropped, and that layer's outputs are copied from then on. A model that calls
a quantized layer more than once per pass, skips one, or changes its execution order with the bits, is
run in full every time (:attr:`PrefixCache.enabled` turns False).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from mixq.errors import MixqError
from mixq.quant.model import QuantModel


class PrefixCache:
    """Evaluate bit configurations of one QuantModel on fixed inputs, reusing shared layer prefixes.

    Args:
        qm: the model (its layers' bits are set by every call).
        x: the fixed inputs.
        max_mb: memory for stored passes, in MiB; the least recently used pass is dropped first.

    Attributes:
        order: layer indices (into ``qm.layer_names``) in execution order, or ``None`` before the first pass.
        enabled: whether prefixes are reused.
        copied: layers whose output the model changes in place (``out += shortcut``, ``ReLU(inplace=True)``
            on it): those outputs are stored and replayed as copies; the others as they are.
        computed: layer forwards computed so far; replayed: layer forwards answered from the store.
    """

    def __init__(self, qm: QuantModel, x: torch.Tensor, max_mb: float = 2048.0) -> None:
        if not max_mb >= 0:
            raise MixqError(f"prefix cache size must be >= 0 MiB, got {max_mb!r}")
        self.qm, self.x, self.max_bytes = qm, x, int(max_mb * 2**20)
        self.order: list[int] | None = None
        self.enabled = max_mb > 0
        self.copied: set[int] = set()
        # genome -> (layer outputs in execution order, model output, bytes)
        self._store: OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], torch.Tensor, int]] = OrderedDict()
        self._bytes = 0
        self.computed = self.replayed = 0

    def _best(self, key: tuple[int, ...]) -> tuple[tuple[int, ...] | None, int]:
        """The stored pass with the longest prefix (in execution order) equal to ``key``'s, and its length."""
        best, best_k = None, 0
        n = len(self.qm.layer_names)
        joint = len(key) == 2 * n  # weight bits, then input bits: layer j's output depends on both
        for stored in self._store:
            k = 0
            for j in self.order:
                if stored[j] != key[j] or (joint and stored[n + j] != key[n + j]):
                    break
                k += 1
            if k > best_k:
                best, best_k = stored, k
        return best, best_k

    @torch.no_grad()
    def __call__(self, bits: Sequence[int], keep: bool = True) -> torch.Tensor:
        """The model output on the fixed inputs with these weight bits (layer order of ``qm.layer_names``).

        Args:
            bits: one weight bit-width per layer, optionally followed by one input bit-width per layer.
            keep: store this pass for later configurations to replay (False: a one-off pass, e.g. a
                sensitivity measurement, that would only push the passes worth keeping out of the store).

        Returns:
            The output, equal to ``qm.set_bits_tuple(bits); qm(x)``.
        """
        key = tuple(int(b) for b in bits)
        self.qm.set_bits_tuple(key)
        n = len(self.qm.layer_names)
        if not self.enabled:
            self.computed += n
            return self.qm(self.x)
        if key in self._store:  # the same configuration again: its output as stored
            self._store.move_to_end(key)
            self.replayed += n
            return self._store[key][1].clone()
        prefix, k = (None, 0) if self.order is None else self._best(key)
        replay: list[torch.Tensor] = []
        if prefix is not None:
            self._store.move_to_end(prefix)
            replay = self._store[prefix][0][:k]
        outputs, out = self._run(replay)
        if outputs is not None and keep:
            self._keep(key, outputs, out)
        return out

    def _run(self, replay: list[torch.Tensor]) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """One pass: the first ``len(replay)`` layers (execution order) answered from ``replay``, the rest
        computed and recorded. Returns the layer outputs in execution order (None: nothing to store) and the
        model output."""
        layers = [self.qm.layers[n] for n in self.qm.layer_names]
        calls: list[int] = []
        record: dict[int, torch.Tensor] = {}
        first = self.order is None
        position = {} if first else {j: p for p, j in enumerate(self.order)}
        handed: list[tuple[int, torch.Tensor, int]] = []  # (layer, tensor given to the model as is, its version)

        def wrap(j: int, module: torch.nn.Module):
            real = type(module).forward.__get__(module)

            def forward(*args, **kwargs):
                calls.append(j)
                p = position.get(j)
                if p is not None and p < len(replay):
                    self.replayed += 1
                    t = replay[p]
                    if j in self.copied:
                        return t.clone()
                    handed.append((j, t, t._version))
                    return t
                y = real(*args, **kwargs)
                self.computed += 1
                if isinstance(y, torch.Tensor):
                    if j in self.copied:
                        record[j] = y.clone()
                    else:
                        record[j] = y
                        handed.append((j, y, y._version))
                return y

            return forward

        for j, m in enumerate(layers):
            m.forward = wrap(j, m)
        # activations like ReLU(inplace=True) run out of place (the same values): stored outputs stay as they are
        inplace = [m for m in self.qm.model.modules() if getattr(m, "inplace", None) is True]
        for m in inplace:
            m.inplace = False
        try:
            out = self.qm(self.x)
        finally:
            for m in layers:
                del m.forward
            for m in inplace:
                m.inplace = True
        changed = {j for j, t, v in handed if t._version != v}  # the model wrote into these outputs
        if changed:
            self.copied |= changed
            self._drop({id(t) for j, t, _ in handed if j in changed})
        if first:
            if sorted(calls) != list(range(len(layers))) or len(record) != len(layers):
                self.enabled = False  # a layer ran twice, not at all, or returned a non-tensor
                return None, out
            self.order = calls
            return None, out  # the first pass only learns the order and which outputs change in place
        if calls != self.order:
            self.enabled = False  # the execution order depends on the configuration
            self._drop(None)
            return None, out
        if changed:
            return None, out
        return [replay[p] if p < len(replay) else record[j] for p, j in enumerate(self.order)], out

    def _drop(self, ids: set[int] | None) -> None:
        """Forget every stored pass holding one of these tensors (all passes for ``None``)."""
        for key in list(self._store):
            if ids is None or any(id(t) in ids for t in self._store[key][0]):
                self._bytes -= self._store.pop(key)[2]

    def _keep(self, key: tuple[int, ...], outputs: list[torch.Tensor], out: torch.Tensor) -> None:
        size = sum(t.numel() * t.element_size() for t in outputs) + out.numel() * out.element_size()
        if size > self.max_bytes:
            return
        self._store[key] = (outputs, out.clone(), size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, _, dropped) = self._store.popitem(last=False)
            self._bytes -= dropped
