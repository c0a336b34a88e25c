"""Executors: the serial default and a local Ray pool of 2 actors give the same results, in order; a killed
actor costs only its unfinished items; errors are clear."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mixq.errors import MixqError
from mixq.executor import SerialExecutor, make_executor
from mixq.executor.base import resolve_device, to_device


def forward_seeded(state: tuple[nn.Module, torch.Tensor], seed: int) -> float:
    """A deterministic evaluation: the model on the samples plus seeded noise."""
    model, x = state
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(model(x + torch.randn(x.shape, generator=g)).square().mean())


def die_once(state: str, item: int) -> int:
    """Kills its own worker process the first time it sees item 3 (a marker file remembers)."""
    marker = Path(state) / f"died-{item}"
    if item == 3 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return item * item


def always_die(state: object, item: int) -> int:
    """Kills every worker that runs item 1."""
    if item == 1:
        os._exit(1)
    return item


def raise_on_two(state: object, item: int) -> int:
    if item == 2:
        raise MixqError("item two is bad")
    return item


def _state() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(8, 6)


def test_serial_results_and_callbacks_in_order():
    seen = []
    with SerialExecutor() as ex, ex.session(_state()) as pool:
        out = pool.map(forward_seeded, [5, 1, 3], on_result=lambda i, r: seen.append((i, r)))
    model, x = _state()
    expected = [forward_seeded((model, x), s) for s in (5, 1, 3)]
    assert out == expected and seen == list(enumerate(expected))
    assert ex.describe() == {"executor": "serial", "workers": 1}


def test_factory_errors(monkeypatch):
    with pytest.raises(MixqError, match=r"^unknown executor 'dask'; expected one of \['serial', 'ray'\]$"):
        make_executor("dask")
    with pytest.raises(MixqError, match=r"^workers must be a positive integer, got 0$"):
        make_executor("ray", workers=0)
    with pytest.raises(MixqError, match=r"^--workers and --address need --executor ray"):
        make_executor("serial", workers=2)
    with pytest.raises(MixqError, match=r"^device must be one of \['auto', 'cpu', 'cuda'\] or 'cuda:N', got 'tpu'$"):
        make_executor("serial", device="tpu")
    assert isinstance(make_executor(), SerialExecutor)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MixqError, match=r"^the Ray executor needs Ray: pip install 'mixq\[ray\]'"):
        make_executor("ray", workers=2)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MixqError, match=r"^device 'cuda' asked for, but torch sees no CUDA GPU here"):
            resolve_device("cuda")
    m, t = to_device((nn.Linear(2, 2), [torch.ones(1)]), torch.device("cpu"))[0], None
    assert isinstance(m, nn.Linear) and t is None


def test_ray_equals_serial_in_submission_order(ray_executor):
    items = list(range(12))
    seen: dict[int, float] = {}
    with ray_executor.session(_state()) as pool:
        out = pool.map(forward_seeded, items, on_result=lambda i, r: seen.setdefault(i, r))
        again = pool.map(forward_seeded, items[::-1])  # the pool is reused
        assert len(set(pool.pids())) == 2
    with SerialExecutor() as ex, ex.session(_state()) as serial:
        expected = serial.map(forward_seeded, items)
    assert out == expected and again == expected[::-1]
    assert sorted(seen) == items and [seen[i] for i in items] == expected  # each result reported exactly once
    assert ray_executor.describe() == {"executor": "ray", "workers": 2, "address": None, "device": "cpu"}


def test_killed_actor_costs_only_its_items(ray_executor, tmp_path):
    seen: list[int] = []
    with ray_executor.session(str(tmp_path)) as pool:
        before = set(pool.pids())
        out = pool.map(die_once, list(range(8)), on_result=lambda i, r: seen.append(i))
        assert pool.replaced == 1
        assert len(set(pool.pids()) - before) == 1  # one actor was started again
    assert out == [i * i for i in range(8)]
    assert sorted(seen) == list(range(8))  # nothing lost, nothing twice
    assert (tmp_path / "died-3").is_file()


def test_item_that_always_kills_stops_with_its_name(ray_executor, monkeypatch):
    monkeypatch.setattr(ray_executor, "max_retries", 1)
    with (ray_executor.session(None) as pool,
          pytest.raises(MixqError, match=r"^item 1 of 3 \(1\) was lost with its worker 2 times")):
        pool.map(always_die, [0, 1, 2])


def test_function_errors_are_raised_as_themselves(ray_executor):
    with ray_executor.session(None) as pool, pytest.raises(MixqError, match="item two is bad"):
        pool.map(raise_on_two, [0, 1, 2, 3])
