"""Feature calibration: the loss falls, bits stay, weights change and are re-quantized, runs repeat."""

import pytest
import torch
from torch import nn

from mixq.errors import MixqError
from mixq.evoq.calibrate import CalibrationConfig, CalibrationResult, calibrate
from mixq.quant.model import QuantModel
from mixq.quant.primitives import quantize_weight


def _tiny_model(c: int = 16) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture()
def setup():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 8, 8, generator=g)
    qm = QuantModel(_tiny_model(), calib=x)
    qm.set_bits({"0": 8, "3": 3, "7": 3})
    return qm, x


# the plain Algorithm 2 (no learned scale, no augmentation) keeps the min/max grid checks exact
FAST = CalibrationConfig(epochs=15, lr=1e-4, learn_scale=False, augment=False, schedule="constant", seed=0)


def test_loss_decreases_and_bits_kept(setup):
    qm, x = setup
    bits_before = qm.bit_config()
    result = calibrate(qm, x, FAST, progress=False)
    assert isinstance(result, CalibrationResult)
    assert len(result.history) == FAST.epochs
    assert result.final_loss < result.initial_loss
    assert result.history[-1] < result.history[0]
    assert result.seconds > 0
    assert qm.bit_config() == bits_before


def test_weights_change_and_cache_requantizes(setup):
    qm, x = setup
    before = {n: m.weight.detach().clone() for n, m in qm.layers.items()}
    stale = {n: m.quantized_weight().clone() for n, m in qm.layers.items()}  # fills the cache
    calibrate(qm, x, FAST, progress=False)
    changed = False
    for name, m in qm.layers.items():
        assert not m.weight.requires_grad
        assert m.bias is None or not m.bias.requires_grad
        changed |= not torch.equal(m.weight, before[name])
        fresh = quantize_weight(m.weight.detach(), m.weight_quantizer.bits)
        assert torch.equal(m.quantized_weight(), fresh)
    assert changed
    assert any(not torch.equal(qm.layers[n].quantized_weight(), stale[n]) for n in qm.layer_names)
    assert not any(p.requires_grad for p in qm.parameters())


def test_same_seed_same_result():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 8, 8, generator=g)
    config = CalibrationConfig(epochs=4, lr=1e-3, batch_size=5, seed=3)  # several shuffled batches
    weights = []
    for _ in range(2):
        qm = QuantModel(_tiny_model(), calib=x)
        qm.set_bits(3)
        r = calibrate(qm, x, config, progress=False)
        weights.append(([m.weight.clone() for m in qm.layers.values()], r.history))
    (w1, h1), (w2, h2) = weights
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))


def test_sgd_and_output_only(setup):
    qm, x = setup
    r = calibrate(qm, x, CalibrationConfig(epochs=3, optimizer="sgd", lr=1e-3, features="output"), progress=False)
    assert len(r.history) == 3 and r.final_loss <= r.initial_loss * 1.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"epochs": True}, "epochs must be an integer, got True"),
        ({"batch_size": "8"}, "batch_size must be an integer, got '8'"),
        ({"seed": 1.0}, "seed must be an integer, got 1.0"),
        ({"lr": 0}, "lr must be positive, got 0"),
        ({"lr": -1e-3}, "lr must be positive, got -0.001"),
        ({"lr": float("nan")}, "lr must be a finite number, got nan"),
        ({"lr": "1e-3"}, "lr must be a finite number, got '1e-3'"),
        ({"momentum": True}, "momentum must be a finite number, got True"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\), got -0.1"),
        ({"alpha": -1}, "alpha and beta must be >= 0, got alpha=-1, beta="),
        ({"beta": -0.5}, "alpha and beta must be >= 0, got alpha=.*, beta=-0.5"),
        ({"beta": float("inf")}, "beta must be a finite number, got inf"),
        ({"alpha": 0, "beta": 0}, "loss is empty: alpha is 0 and there is no feature term"),
        ({"alpha": 0, "features": "output"}, "loss is empty"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam, got 'rmsprop'"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0, got -0.0001"),
        ({"weight_decay": float("-inf")}, "weight_decay must be a finite number"),
        ({"features": "blocks?"}, "features must be one of layers, output, got 'blocks\\?'"),
        ({"grid_init": "percentile"}, "percentile"),
        ({"schedule": "step"}, "schedule must be one of constant, cosine, got 'step'"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(MixqError, match=message):
        CalibrationConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 1, "batch_size": 1, "seed": 0},
        {"lr": 1e-12},
        {"momentum": 0.0},
        {"momentum": 0.999},
        {"alpha": 0, "beta": 1.0, "features": "layers"},
        {"alpha": 1.0, "beta": 0, "features": "output"},
        {"alpha": 0.0, "beta": 0.5},
        {"weight_decay": 0},
        {"lr": 1, "momentum": 0, "alpha": 1, "beta": 0, "weight_decay": 0},  # ints are numbers
        {"optimizer": "sgd", "schedule": "constant", "features": "output", "grid_init": None},
    ],
)
def test_boundary_configs_are_accepted(kwargs):
    config = CalibrationConfig(**kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value


def test_bad_inputs_raise(setup):
    qm, x = setup
    with pytest.raises(MixqError):
        calibrate(qm, torch.zeros(0, 3, 8, 8), FAST, progress=False)
    with pytest.raises(MixqError):
        calibrate(qm, x.to(torch.uint8), FAST, progress=False)
    with pytest.raises(MixqError):
        calibrate(nn.Linear(2, 2), x, FAST, progress=False)  # type: ignore[arg-type]


def test_augmented_cosine_calibration(setup):
    qm, x = setup
    teacher_weights = {n: m.weight.detach().clone() for n, m in qm.layers.items()}
    cfg = CalibrationConfig(epochs=15, lr=1e-4, augment=True, schedule="cosine", seed=0)
    result = calibrate(qm, x, cfg, progress=False)
    assert result.final_loss < result.initial_loss
    assert any(not torch.equal(m.weight, teacher_weights[n]) for n, m in qm.layers.items())
    assert all(not m.weight.requires_grad for m in qm.layers.values())


def test_augment_batch_shifts_and_flips():
    from mixq.evoq.calibrate import augment_batch

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    # every output pixel value comes from the same image and channel
    for i in range(2):
        for c in range(3):
            assert set(out[i, c].flatten().tolist()) <= set(x[i, c].flatten().tolist())


def test_learned_scale_is_kept_and_used(setup):
    qm, x = setup
    cfg = CalibrationConfig(epochs=15, lr=1e-4, learn_scale=True, seed=0)
    layer = qm.layers["3"]
    result = calibrate(qm, x, cfg, progress=False)
    assert result.final_loss < result.initial_loss
    scale, zp = layer.weight_quantizer.grids[3]
    assert not scale.requires_grad
    expected = torch.fake_quantize_per_channel_affine(layer.weight, scale, zp, 0, 0, 7)
    torch.testing.assert_close(layer.quantized_weight(), expected, atol=1e-6, rtol=0)
    # other bit-widths still follow the weight's range
    qm.set_bits({"0": 8, "3": 4, "7": 3})
    torch.testing.assert_close(layer.quantized_weight(), quantize_weight(layer.weight, 4), atol=0, rtol=0)


def test_augmented_teacher_does_not_keep_student_hooks(setup, monkeypatch):
    import copy

    import mixq.evoq.calibrate as cal

    copies = []
    real = copy.deepcopy
    monkeypatch.setattr(cal.copy, "deepcopy", lambda obj, *a: copies.append(real(obj, *a)) or copies[-1])
    qm, x = setup
    calibrate(qm, x, CalibrationConfig(epochs=2, augment=True, seed=0), progress=False)
    # no hook is left on the student or on its teacher copy (a copied student hook once kept a store
    # that grew every step and exhausted memory on MobileNetV2)
    teacher = next(c for c in copies if isinstance(c, QuantModel))
    assert all(not m._forward_hooks for m in qm.layers.values())
    assert all(not m._forward_hooks for m in teacher.layers.values())


def test_calibration_leaves_the_model_in_eval_mode():
    """A QuantModel starts in eval mode and calibration keeps it there, so dropout stays off afterwards."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(8, 3, 8, 8)
    qm = QuantModel(net, calib=x)
    qm.set_bits(4)
    assert not qm.training
    calibrate(qm, x, CalibrationConfig(epochs=2, seed=0), progress=False)
    assert not qm.training and not any(m.training for m in qm.modules())
    with torch.no_grad():
        assert torch.equal(qm(x), qm(x))  # dropout would make two passes differ


def _loss_by_hand(qm, x, alpha, beta, normalize):
    """alpha * MSE(logits) + beta * mean over layers of MSE(feature) [/ mean square of the float feature]."""
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o.detach().clone()))
             for n, m in qm.layers.items()]
    try:
        with torch.no_grad():
            with qm.float_mode():
                t_logits = qm(x)
                t_feats = dict(outs)
            s_logits = qm(x)
            s_feats = dict(outs)
    finally:
        for h in hooks:
            h.remove()
    loss = alpha * float(((s_logits - t_logits) ** 2).mean())
    terms = []
    for n in qm.layer_names:
        mse = float(((s_feats[n] - t_feats[n]) ** 2).mean())
        terms.append(mse / float((t_feats[n] ** 2).mean()) if normalize else mse)
    return loss + beta * sum(terms) / len(terms)


@pytest.mark.parametrize("alpha,beta,normalize", [(1.0, 1.0, True), (0.5, 2.0, False), (1.0, 0.0, True)])
def test_initial_loss_is_the_documented_formula(setup, alpha, beta, normalize):
    qm, x = setup
    want = _loss_by_hand(qm, x, alpha, beta, normalize)
    cfg = CalibrationConfig(epochs=1, lr=1e-4, learn_scale=False, augment=False, schedule="constant", seed=0,
                            alpha=alpha, beta=beta, normalize_features=normalize, batch_size=64)
    result = calibrate(qm, x, cfg, progress=False)
    assert result.initial_loss == pytest.approx(want, rel=1e-5)


def test_feature_term_changes_the_result(setup):
    qm, x = setup
    state = {k: v.clone() for k, v in qm.state_dict().items()}
    weights = {}
    for key, kwargs in {"output": {"features": "output"}, "beta0": {"features": "layers", "beta": 0.0},
                        "layers": {"features": "layers", "beta": 1.0}}.items():
        qm.load_state_dict(state)
        cfg = CalibrationConfig(epochs=5, lr=1e-3, learn_scale=False, augment=False, schedule="constant", seed=0,
                                **kwargs)
        calibrate(qm, x, cfg, progress=False)
        weights[key] = torch.cat([m.weight.detach().reshape(-1) for m in qm.layers.values()])
    # with beta = 0 the layer features contribute nothing: the same updates as logits only
    torch.testing.assert_close(weights["beta0"], weights["output"], atol=1e-7, rtol=0)
    # with the feature term the updates differ
    assert (weights["layers"] - weights["output"]).abs().max() > 1e-5
