"""QuantModel: exact BN folding on every shipped architecture, cheap bit switching, size accounting."""

import copy
import importlib.util

import pytest
import torch
from torch import nn

from mixq.bits import BitConfig
from mixq.errors import MixqError
from mixq.models import create_model, list_models
from mixq.paths import resolve_model_root
from mixq.quant.fold import find_conv_bn_pairs, fold_batchnorm
from mixq.quant.model import QuantModel
from mixq.quant.primitives import quantize_weight
from mixq.quant.reference import reference_quantize

CIFAR = [n for n in list_models() if n != "efficientnet-lite0"]
HAS_EFFNET = importlib.util.find_spec("efficientnet_lite_pytorch") is not None


@pytest.fixture(scope="module")
def model_root():
    root = resolve_model_root()
    if root is None:
        pytest.skip("no model root found")
    return root


@pytest.mark.parametrize("affine", [True, False])
def test_fold_conv_bn_hard_coded_with_large_eps(affine):
    # checkpoint-free: eps = 0.5 against running_var = 0.5 makes sqrt(var + eps) = 1 vs sqrt(var) = 0.707
    from mixq.quant.fold import fold_conv_bn

    conv = nn.Conv2d(1, 2, 1, bias=True)
    bn = nn.BatchNorm2d(2, eps=0.5, affine=affine).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -3.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, 0.5]))
        bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
        bn.running_var.copy_(torch.tensor([0.5, 3.5]))  # + eps: 1.0 and 4.0
        if affine:
            bn.weight.copy_(torch.tensor([3.0, 2.0]))
            bn.bias.copy_(torch.tensor([-1.0, 0.25]))
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        want = bn(conv(x))
    fold_conv_bn(conv, bn)
    gamma, beta = ([3.0, 2.0], [-1.0, 0.25]) if affine else ([1.0, 1.0], [0.0, 0.0])
    # W' = W * gamma / sqrt(var + eps); b' = (b - mean) * gamma / sqrt(var + eps) + beta, by hand
    w_want = [2.0 * gamma[0] / 1.0, -3.0 * gamma[1] / 2.0]
    b_want = [(1.0 - 0.5) * gamma[0] / 1.0 + beta[0], (0.5 + 1.0) * gamma[1] / 2.0 + beta[1]]
    torch.testing.assert_close(conv.weight.detach().view(2), torch.tensor(w_want), atol=1e-6, rtol=0)
    torch.testing.assert_close(conv.bias.detach(), torch.tensor(b_want), atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), want, atol=1e-5, rtol=1e-5)


def test_fold_exact_checkpoint_free_with_small_variances():
    # BN variances near eps (one BN with eps 1e-3): a fold that drops or changes eps is far off
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 * m.eps)  # var ~ eps
    model.eval()
    x = torch.randn(4, 3, 8, 8, generator=g)
    qm = QuantModel(model, calib=x)
    assert qm.fold_report.folded and not qm.fold_report.unfolded
    with torch.no_grad(), qm.float_mode():
        out, ref = qm(x), model(x)
    assert (out - ref).norm() <= 1e-5 * ref.norm()


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("name", CIFAR)
def test_fold_exact_on_shipped_models(name, model_root):
    model = create_model(name, model_root=model_root)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    qm = QuantModel(model, calib=x)
    assert len(qm.fold_report.folded) == n_bn and not qm.fold_report.unfolded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qm.modules())
    with torch.no_grad(), qm.float_mode():
        torch.testing.assert_close(qm(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not HAS_EFFNET, reason="efficientnet-lite packages not installed")
def test_fold_exact_on_efficientnet():
    model = create_model("efficientnet-lite0")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    report = find_conv_bn_pairs(model)
    assert report.traced and len(report.folded) >= 49
    folded = copy.deepcopy(model)
    fold_batchnorm(folded, warn=False)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


class Toy(nn.Module):
    """Residual, depthwise and a BN that cannot be folded (fed by a concat)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.bcat = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        z = self.b2(self.dw(y)) + y
        z = self.bcat(torch.cat([y, z], 1))
        return self.fc(z.mean([2, 3]))


def _toy():
    m = Toy().eval()
    _randomize_bn(m)
    return m


def test_fold_fallback_keeps_unfoldable_bn_in_float():
    m = _toy()
    x = torch.randn(5, 3, 8, 8)
    with pytest.warns(UserWarning, match="kept in float"):
        qm = QuantModel(m, calib=x)
    assert set(qm.fold_report.unfolded) == {"bcat"}
    assert isinstance(qm.model.bcat, nn.BatchNorm2d)
    with torch.no_grad(), qm.float_mode():
        torch.testing.assert_close(qm(x), m(x), atol=1e-5, rtol=1e-5)


class Untraceable(Toy):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = x * 1.0
        return super().forward(x)


def test_untraceable_model_keeps_all_bn():
    m = Untraceable().eval()
    _randomize_bn(m)
    x = torch.randn(3, 3, 8, 8)
    with pytest.warns(UserWarning, match="not traceable"):
        qm = QuantModel(m, calib=x)
    assert not qm.fold_report.traced and len(qm.fold_report.unfolded) == 3
    with torch.no_grad(), qm.float_mode():
        torch.testing.assert_close(qm(x), m(x), atol=1e-5, rtol=1e-5)


def test_set_bits_is_cheap_and_cached():
    qm = QuantModel(_toy(), calib=torch.randn(4, 3, 8, 8))
    layer = qm.layers["c1"]
    qm.set_bits(3)
    w3 = layer.quantized_weight()
    qm.set_bits(5)
    w5 = layer.quantized_weight()
    qm.set_bits(3)
    assert layer.quantized_weight() is w3  # cached, not recomputed
    assert not torch.equal(w3, w5)
    torch.testing.assert_close(w3, quantize_weight(layer.weight, 3), atol=0, rtol=0)
    # an in-place weight update invalidates the cache
    with torch.no_grad():
        layer.weight.mul_(2)
    torch.testing.assert_close(layer.quantized_weight(), quantize_weight(layer.weight, 3), atol=0, rtol=0)


def test_size_and_avg_bits():
    qm = QuantModel(_toy(), calib=torch.randn(4, 3, 8, 8))
    params = {"c1": 8 * 3 * 9, "dw": 8 * 9, "fc": 16 * 10}
    assert qm.layer_params == list(params.values())
    cfg = BitConfig({"c1": 8, "dw": 2, "fc": 4})
    bits = 8 * params["c1"] + 2 * params["dw"] + 4 * params["fc"]
    assert qm.size_mb(cfg) == bits / 8 / 2**20
    assert qm.avg_bits(cfg) == pytest.approx(bits / sum(params.values()))
    assert qm.bias_size_mb() == (8 + 8 + 10) * 32 / 8 / 2**20  # folded dw conv gained a bias
    qm.set_bits(cfg)
    assert qm.bit_config() == cfg


def test_set_bits_validation():
    qm = QuantModel(_toy(), calib=torch.randn(4, 3, 8, 8))
    with pytest.raises(MixqError, match="unknown layer"):
        qm.set_bits({"c1": 4, "dw": 4, "fc": 4, "nope": 4})
    with pytest.raises(MixqError, match="lacks layer"):
        qm.set_bits({"c1": 4})
    with pytest.raises(MixqError, match="9"):
        qm.set_bits(9)


def test_uncalibrated_activation_error_and_bad_calib():
    qm = QuantModel(_toy())
    with pytest.raises(MixqError, match="calibrate"):
        qm(torch.randn(1, 3, 8, 8))
    with pytest.raises(MixqError, match="calibration data"):
        qm.calibrate_activations(torch.zeros(0, 3, 8, 8))
    with pytest.raises(MixqError, match="float"):
        qm.calibrate_activations(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_matches_independent_reference(bits, model_root):
    model = create_model("resnet20-jpeg", model_root=model_root)
    g = torch.Generator().manual_seed(3)
    calib, x = torch.randn(16, 3, 32, 32, generator=g), torch.randn(64, 3, 32, 32, generator=g)
    qm = QuantModel(model, calib=calib)
    qm.set_bits(bits)
    ref = reference_quantize(model, calib, bits)
    with torch.no_grad():
        ours, theirs = qm(x), ref(x)
    # torch.ao observers nudge qparams slightly differently (eps, zero-point rounding): same decisions
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0)
    assert cos > 0.995
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.95


class _EveryUnfoldableCase(nn.Module):
    """One BatchNorm per reason find_conv_bn_pairs gives for not folding it, plus one that folds."""

    def __init__(self):
        super().__init__()
        self.ok, self.bn_ok = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.tied_a, self.tied_b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.tied_b.weight = self.tied_a.weight
        self.bn_tied = nn.BatchNorm2d(4)
        self.users, self.bn_users = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.twice, self.bn_twice = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.nostats, self.bn_nostats = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)
        self.wrong, self.bn_wrong_kind = nn.Conv2d(4, 4, 1), nn.BatchNorm1d(4)  # traced, never run
        self.bn_after_relu = nn.BatchNorm2d(4)
        self.bn_unused = nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.bn_ok(self.ok(x))
        b = self.bn_tied(self.tied_a(a)) + self.tied_b(a)
        u = self.users(b)
        c = self.bn_users(u) + u
        d = self.bn_twice(self.twice(self.twice(c)))
        e = self.bn_nostats(self.nostats(d))
        f = self.bn_wrong_kind(self.wrong(e))
        return self.bn_after_relu(torch.relu(f))


def test_fold_report_names_the_reason_for_every_unfolded_batchnorm():
    report = find_conv_bn_pairs(_EveryUnfoldableCase().eval())
    assert report.traced is True
    assert report.folded == [("ok", "bn_ok")]
    assert report.unfolded == {
        "bn_tied": "conv 'tied_a' shares its weight with ['tied_a', 'tied_b'] (tied weights)",
        "bn_users": "conv 'users' output has other users",
        "bn_twice": "conv or BatchNorm is called more than once",
        "bn_nostats": "BatchNorm has no running statistics",
        "bn_wrong_kind": "a BatchNorm1d after a Conv2d is not folded",
        "bn_after_relu": "input is not the output of a convolution mixq quantizes",
        "bn_unused": "not called in the traced forward",
    }


def test_fold_report_of_an_untraceable_model_gives_the_exception():
    report = find_conv_bn_pairs(Untraceable().eval())
    assert report.traced is False and report.folded == []
    reason = next(iter(report.unfolded.values()))
    assert reason.startswith("model is not traceable by torch.fx (TraceError: symbolically traced variables")
    assert set(report.unfolded.values()) == {reason} and len(report.unfolded) == 3
