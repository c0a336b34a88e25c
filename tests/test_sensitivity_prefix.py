"""The sensitivity table replays the float reference pass up to the measured layer: same table, fewer forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixq.evoq.sensitivity as sens
from mixq.evoq.sensitivity import compute_act_sensitivity, compute_sensitivity
from mixq.models import create_model
from mixq.quant.model import QuantModel


def _qm(name: str) -> tuple[QuantModel, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(name, pretrained=False).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return QuantModel(model, calib=x), x


@pytest.mark.parametrize("name", ["resnet20-jpeg", "mobilenetv2-jpeg"])
def test_prefix_replay_gives_the_same_table_bit_for_bit(name):
    qm, x = _qm(name)
    plain = compute_sensitivity(qm, x, bits=(2, 4, 8), progress=False, prefix_mb=0)
    replayed = compute_sensitivity(qm, x, bits=(2, 4, 8), progress=False)
    np.testing.assert_array_equal(replayed.mse, plain.mse)
    acts_plain = compute_act_sensitivity(qm, x, bits=(4, 8), progress=False)  # batch 256 > 6: replayed
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sens, "_ReferencePrefix", lambda mb: None)  # no replay at all
        acts_ref = compute_act_sensitivity(qm, x, bits=(4, 8), progress=False)
    np.testing.assert_array_equal(acts_plain.mse, acts_ref.mse)


def test_prefix_replay_skips_the_layers_before_the_measured_one(monkeypatch):
    qm, x = _qm("resnet20-jpeg")
    made = []
    real = sens._ReferencePrefix

    def spy(mb):
        made.append(real(mb))
        return made[-1]

    monkeypatch.setattr(sens, "_ReferencePrefix", spy)
    bits = (2, 8)
    compute_sensitivity(qm, x, bits=bits, progress=False)
    cache = made[0].cache
    n = len(qm.layer_names)
    # two reference passes (order, then kept), then row j computes the layers from j on (execution order)
    suffixes = sum(n - p for p in range(n)) * len(bits)
    assert cache.computed == 2 * n + suffixes
    assert cache.replayed == sum(range(n)) * len(bits)


def test_prefix_replay_is_off_for_more_samples_than_a_batch_or_zero_memory(monkeypatch):
    qm, x = _qm("resnet20-jpeg")
    made = []
    monkeypatch.setattr(sens, "_ReferencePrefix", lambda mb: made.append(mb) or None)
    compute_sensitivity(qm, x, bits=(2,), batch_size=4, progress=False)
    compute_sensitivity(qm, x, bits=(2,), progress=False, prefix_mb=0)
    assert made == []
