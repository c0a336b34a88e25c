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


class TinyNet:
    """conv 3->4 k3 on 8x8 inputs (6x6 out), conv 4->6 k3 (4x4 out), linear 6->5: MACs known by hand."""

    MACS = [4 * 6 * 6 * 3 * 9, 6 * 4 * 4 * 4 * 9, 6 * 5]
    PARAMS = [4 * 3 * 9, 6 * 4 * 9, 5 * 6]

    @staticmethod
    def build():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.c1 = nn.Conv2d(3, 4, 3)
                self.c2 = nn.Conv2d(4, 6, 3)
                self.fc = nn.Linear(6, 5)

            def forward(self, x):
                x = torch.relu(self.c1(x))
                x = torch.relu(self.c2(x))
                return self.fc(x.mean(dim=(2, 3)))

        return Net().eval()


@pytest.fixture(scope="module")
def tiny():
    """``(float model, QuantModel, 16 inputs (3, 8, 8), float logits)`` of :class:`TinyNet`."""
    import torch

    from mixq.evaluation.metrics import predict
    from mixq.quant.model import QuantModel

    torch.manual_seed(1)
    x = torch.randn(16, 3, 8, 8)
    model = TinyNet.build()
    return model, QuantModel(model, calib=x), x, predict(model, x)
