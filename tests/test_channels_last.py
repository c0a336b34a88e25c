"""QuantModel(channels_last=True): the same model in the channels-last memory format (a speed option)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.evoq.calibrate import CalibrationConfig
from mixq.evoq.pipeline import RunOptions, run_uniform
from mixq.models import create_model
from mixq.quant.model import QuantModel, load_calibrated
from mixq.quant.replay import PrefixCache


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = create_model("resnet20-jpeg", pretrained=False)
    x = torch.randn(8, 3, 32, 32)
    return QuantModel(model, calib=x), QuantModel(model, calib=x, channels_last=True), x


def test_weights_and_input_run_channels_last(pair):
    _, qm, x = pair
    convs = [m for m in qm.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    seen = []
    hook = convs[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(
        memory_format=torch.channels_last)))
    with torch.no_grad():
        qm(x)
    hook.remove()
    assert seen == [True]


def test_float_outputs_equal_the_default_layout_up_to_float_rounding(pair):
    a, b, x = pair
    for qm in (a, b):
        qm.set_bits(32)
    with torch.no_grad(), a.float_weights(), b.float_weights():
        for qm in (a, b):
            for m in qm.layers.values():
                m.input_quantizer.bits = 32
        ya, yb = a(x), b(x)
        for qm in (a, b):
            for m in qm.layers.values():
                m.input_quantizer.bits = 8
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5)


def test_quantized_weights_are_identical_and_ranges_equal_up_to_float_rounding(pair):
    a, b, _ = pair
    a.set_bits(3)
    b.set_bits(3)
    for name in a.layer_names:
        la, lb = a.layers[name], b.layers[name]
        for key in ("min_val", "max_val"):  # observed on float activations: summation order differs
            assert torch.allclose(getattr(la.input_quantizer, key), getattr(lb.input_quantizer, key), rtol=1e-5,
                                  atol=1e-6)
        assert torch.equal(la.weight_quantizer(la.weight), lb.weight_quantizer(lb.weight))


def test_quantized_outputs_agree(pair):
    a, b, x = pair
    a.set_bits(4)
    b.set_bits(4)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    # float rounding can flip an activation quantizer's rounding: close, not equal
    assert torch.allclose(ya, yb, atol=0.05 * float(ya.abs().max()))
    assert (ya.argmax(1) == yb.argmax(1)).float().mean() >= 0.75


def test_prefix_replay_stays_exact(pair):
    _, qm, x = pair
    cache = PrefixCache(qm, x)
    n = len(qm.layer_names)
    for bits in ([4] * n, [4] * (n - 1) + [2], [4] * 5 + [3] * (n - 5)):
        qm.set_bits_tuple(tuple(bits))
        with torch.no_grad():
            plain = qm(x)
        assert torch.equal(cache(bits), plain)
    assert cache.replayed > 0


class _Views(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))  # needs the default layout


def test_a_model_that_views_activations_is_refused_with_one_clear_error():
    x = torch.randn(4, 3, 8, 8)
    QuantModel(_Views(), calib=x)  # fine in the default layout
    with pytest.raises(MixqError, match="channels-last memory format.*leave channels_last off"):
        QuantModel(_Views(), calib=x, channels_last=True)


def test_run_records_the_option_and_its_calibrated_weights_load_into_either_layout(tmp_path):
    task = load_task("resnet20-jpeg", samples=16, seed=0, n_test=60)
    opts = RunOptions(budget=Budget(avg_bits=8), calibration=CalibrationConfig(epochs=1, batch_size=8, seed=0),
                      progress=False, channels_last=True)
    r = run_uniform(task, 4, opts, tmp_path / "u4")
    assert r["channels_last"] is True
    for cl in (True, False):
        qm = QuantModel(task.model, calib=task.calib, channels_last=cl)
        qm.set_bits(4)
        load_calibrated(qm, tmp_path / "u4" / "calibrated.pt")
        top1 = task.top1(qm, progress=False)
        if cl:
            assert top1 == pytest.approx(r["quant_top1"], abs=1e-9)
        else:
            assert top1 == pytest.approx(r["quant_top1"], abs=100 * 2 / 60 + 1e-9)  # two images may flip
