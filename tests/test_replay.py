"""PrefixCache: replaying unchanged leading layers gives the plain forward's output bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.metrics import predict
from mixq.evoq.bitsearch import EvoQConfig, FitnessEvaluator, evoq_search
from mixq.models import create_model
from mixq.quant.model import QuantModel
from mixq.quant.replay import PrefixCache


def _plain(qm: QuantModel, x: torch.Tensor, bits) -> torch.Tensor:
    qm.set_bits_tuple(tuple(bits))
    with torch.no_grad():
        return qm(x)


def _children(n_layers: int, n: int, seed: int = 0):
    """A chain of EvoQ-like children: each mutates ~10 % of its parent's layers; half become parents."""
    rng = np.random.default_rng(seed)
    g = [int(b) for b in rng.integers(2, 9, n_layers)]
    for _ in range(n):
        child = [int(rng.integers(2, 9)) if rng.random() < 0.1 else b for b in g]
        yield tuple(child)
        if rng.random() < 0.5:
            g = child


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = create_model("resnet20-jpeg", pretrained=False)
    x = torch.randn(8, 3, 32, 32)
    return QuantModel(model, calib=x), x


def test_replay_is_exact_on_resnet20(resnet20) -> None:
    qm, x = resnet20
    cache = PrefixCache(qm, x)
    for bits in _children(len(qm.layer_names), 25):
        assert torch.equal(cache(bits), _plain(qm, x, bits))
    assert cache.enabled and cache.order == list(range(len(qm.layer_names)))
    assert cache.replayed > 0 and cache.computed > 0


def test_only_the_changed_suffix_is_computed(resnet20) -> None:
    qm, x = resnet20
    n = len(qm.layer_names)
    cache = PrefixCache(qm, x)
    base = tuple([4] * n)
    cache(base)  # first pass: learns the order, stores nothing
    cache(base)
    before = (cache.computed, cache.replayed)
    last = base[:-1] + (3,)
    assert torch.equal(cache(last), _plain(qm, x, last))
    assert (cache.computed - before[0], cache.replayed - before[1]) == (1, n - 1)
    before = (cache.computed, cache.replayed)
    cache(last)  # the same configuration again: answered whole
    assert (cache.computed, cache.replayed - before[1]) == (before[0], n)


class _InPlace(nn.Module):
    """A quantized layer's output written into by the forward (``y += x``), and an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.c = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = self.a(x)
        y += x  # in place on a's output
        y = self.relu(self.b(y))
        return self.c(y.flatten(1))


def test_outputs_written_in_place_are_copied() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, 8, 8)
    qm = QuantModel(_InPlace(), calib=x)
    cache = PrefixCache(qm, x)
    for bits in [(8, 8, 8), (8, 8, 8), (8, 4, 8), (8, 4, 2), (8, 8, 2), (3, 8, 2), (3, 8, 5), (3, 8, 5)]:
        assert torch.equal(cache(bits), _plain(qm, x, bits))
    assert cache.copied == {0} and cache.replayed > 0
    assert qm.model.relu.inplace is True  # restored after every pass


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))  # a runs twice


def test_a_layer_called_twice_disables_replay() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    qm = QuantModel(_Shared(), calib=x)
    cache = PrefixCache(qm, x)
    for bits in [(8, 8), (8, 4), (8, 4), (2, 4)]:
        assert torch.equal(cache(bits), _plain(qm, x, bits))
    assert not cache.enabled and cache.replayed == 0


def test_memory_cap(resnet20) -> None:
    qm, x = resnet20
    tiny = PrefixCache(qm, x, max_mb=1e-3)  # no pass fits: everything computed
    off = PrefixCache(qm, x, max_mb=0)
    for bits in _children(len(qm.layer_names), 6):
        assert torch.equal(tiny(bits), _plain(qm, x, bits)) and torch.equal(off(bits), _plain(qm, x, bits))
    assert tiny.replayed == 0 and off.replayed == 0 and not off.enabled
    pass_mb = sum(o.numel() * o.element_size() for o in _layer_outputs(qm, x)) / 2**20
    one = PrefixCache(qm, x, max_mb=1.2 * pass_mb)  # room for one pass, not two
    for bits in _children(len(qm.layer_names), 8):
        one(bits)
    assert len(one._store) == 1 and one._bytes <= one.max_bytes
    with pytest.raises(MixqError, match="prefix cache size"):
        PrefixCache(qm, x, max_mb=-1)


def _layer_outputs(qm: QuantModel, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    handles = [qm.layers[n].register_forward_hook(lambda m, i, o: outs.append(o)) for n in qm.layer_names]
    with torch.no_grad():
        qm(x)
    for h in handles:
        h.remove()
    return outs


def test_search_is_the_same_with_and_without_the_prefix_cache(resnet20) -> None:
    qm, x = resnet20
    ref = predict(qm.model, x)  # any fixed reference
    budget, cfg = Budget(avg_bits=3.0), EvoQConfig(iterations=40, mutation="random", seed=3)
    a = evoq_search(qm, x, ref, budget, cfg, progress=False)
    b = evoq_search(qm, x, ref, budget, cfg, progress=False, prefix_mb=0)
    assert a.best_history == b.best_history and a.mean_history == b.mean_history and a.config == b.config
    assert a.layer_passes["replayed"] > 0 and b.layer_passes["replayed"] == 0
    genome = tuple(a.config.weights.values())
    assert FitnessEvaluator(qm, x, ref, prefix_mb=64)(genome) == a.fitness == FitnessEvaluator(qm, x, ref)(genome)
