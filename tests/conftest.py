"""Shared fixtures."""

import pytest

import mixq.paths as paths


@pytest.fixture
def demo_only(monkeypatch, tmp_path):
    """No ../shared anywhere and no environment variables: the embedded demo is used."""
    monkeypatch.setattr(paths, "_shared_candidates", lambda: [])
    monkeypatch.delenv("MIXQ_DATA", raising=False)
    monkeypatch.delenv("MIXQ_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)


def _top1_by_hand(model, task) -> float:
    """Top-1 (%) counted directly from argmax over the task's test batches (not through Task.top1)."""
    import torch

    right = total = 0
    with torch.no_grad():
        for x, y in task.test_batches(200):
            right += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    return 100.0 * right / total


@pytest.fixture
def top1_by_hand():
    """A function ``(model, task) -> top-1 %`` that CLI tests use to recompute a reported accuracy."""
    return _top1_by_hand


@pytest.fixture(scope="session")
def ray_executor():
    """One local Ray instance with a pool of 2 actors for every Ray test of the run (it takes seconds to start)."""
    pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'mixq[ray]')")
    from mixq.executor import make_executor

    ex = make_executor("ray", workers=2)
    yield ex
    ex.close()
