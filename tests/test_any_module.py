"""mixq on models it does not ship: every weight layer is quantized for real or named in one warning.

Each model below is small and user-defined. For each one, independently of mixq's own bookkeeping:
- FP32 after BN folding equals the original model within 1e-5 (relative L2);
- every module that directly owns a weight of two or more dimensions is a quantized layer, an alias or
  tied partner of one, or named in the single "left in float" warning, exactly as the model expects;
- every quantized layer really runs quantized: its recorded output changes when only it goes to 2 bits
  (a layer bypassed by a fused kernel records nothing and fails);
- parameter count and size equal a count of the unique weight tensors of the quantized modules;
- feature calibration (the default, per-layer features) runs and keeps the output finite.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixq import MixqError, QuantModel
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.quant.primitives import FLOAT_BITS

torch.manual_seed(0)


def _bn(c: int, dims: int = 2) -> nn.Module:
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](c)
    with torch.no_grad():  # non-trivial running statistics so folding is really tested
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    bn.eps = 1e-3
    return bn


class ConcatNet(nn.Module):
    """Two conv branches concatenated; a BN after the concat cannot be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn_a, self.bn_cat = _bn(4), _bn(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.cat([F.relu(self.bn_a(self.a(x))), self.b(x)], 1)
        return self.head(F.relu(self.bn_cat(y)).mean((2, 3)))


class HandAttention(nn.Module):
    """Self-attention written out with Linear q/k/v/o."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # (N, L, d)
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(x.shape[-1]), -1)
        return self.head(self.o(att @ self.v(x)).mean(1))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.token1, self.token2 = nn.Linear(tokens, 2 * tokens), nn.Linear(2 * tokens, tokens)
        self.chan1, self.chan2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):  # (N, T, d)
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token2(F.gelu(self.token1(y))).transpose(1, 2)
        return x + self.chan2(F.gelu(self.chan1(self.norm2(x))))


class MLPMixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)  # 8x8 -> 2x2 = 4 tokens
        self.blocks = nn.Sequential(MixerBlock(4, 8), MixerBlock(4, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(t).mean(1))


class WeightReuse(nn.Module):
    """One conv block applied twice (the same module, two calls per forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.head(x.mean((2, 3)))


class GroupedDilatedDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=2, dilation=2, bias=False), _bn(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), _bn(8)
        self.c3, self.bn3 = nn.Conv2d(8, 8, 1, groups=4), _bn(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.c2(x)))
        return self.head(self.bn3(self.c3(x)).mean((2, 3)))


class DataDependent(nn.Module):
    """Python control flow on the data (not fx-traceable): each sample takes one of two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = _bn(4)
        self.pos, self.neg = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.pos(x) if float(x.mean()) > 0.35 else self.neg(x)
        return self.head(x.mean((2, 3)))


class ScaledLinear(nn.Linear):
    """A Linear subclass that keeps nn.Linear's forward: quantized as a Linear."""

    def extra_repr(self) -> str:
        return "scaled " + super().extra_repr()


class WSConv2d(nn.Conv2d):
    """Weight-standardised conv: its forward transforms the weight, so mixq must not quantize the raw one."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Subclassed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ws = WSConv2d(3, 6, 3, padding=1)
        self.bn = _bn(6)  # after a forward-overriding conv: must not be folded into its raw weight
        self.fc = ScaledLinear(6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.ws(x))).mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(3, 6, 5, padding=2), _bn(6, 1)
        self.c2 = nn.Conv1d(6, 6, 3, dilation=2, groups=3)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):  # (N, 3, L)
        return self.fc(self.c2(F.relu(self.bn1(self.c1(x)))).mean(2))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.bn = nn.Conv3d(2, 4, 3, padding=1), _bn(4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):  # (N, 2, D, H, W)
        return self.fc(F.relu(self.bn(self.c(x))).mean((2, 3, 4)))


class Decoder(nn.Module):
    """Conv -> ConvTranspose2d (grouped) -> ConvTranspose1d-free decoder head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)
        self.out = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.out(F.relu(self.up(F.relu(self.enc(x)))))


class Decoder1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv1d(3, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(F.relu(self.enc(x)), output_size=[x.shape[-1]])


class FunctionalConv(nn.Module):
    """A module with its own weight used through F.conv2d: mixq cannot wrap it and must say so."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(F.conv2d(x, self.weight, padding=1)).mean((2, 3)))


class MHANet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (N, L, 5)
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


class TransformerNet(nn.Module):
    """nn.TransformerEncoder of two layers: in eval mode torch's fused fast path would bypass every Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class EncoderLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (N, L, 8)
        return self.head(self.layer(x).mean(1))


class TiedConvs(nn.Module):
    """Two convs sharing one weight tensor, each followed by its own BN (which therefore cannot be folded)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a, self.b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.b.weight = self.a.weight
        self.bn_a, self.bn_b = _bn(6), _bn(6)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([self.bn_a(self.a(x)), self.bn_b(self.b(x))], 1)
        return self.head(F.relu(y).mean((2, 3)))


class TiedLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 2)

    def forward(self, x):  # (N, 6)
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class Aliased(nn.Module):
    """One conv module reachable under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.also_conv = self.conv
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.also_conv(x)).mean((2, 3)))


# name -> (factory, input shape of one sample, modules expected in the "left in float" warning)
CASES: dict[str, tuple] = {
    "concat": (ConcatNet, (3, 8, 8), set()),
    "hand_attention": (HandAttention, (6, 8), set()),
    "mlp_mixer": (MLPMixer, (3, 8, 8), set()),
    "weight_reuse": (WeightReuse, (3, 8, 8), set()),
    "grouped_dilated_depthwise": (GroupedDilatedDepthwise, (3, 8, 8), set()),
    "data_dependent": (DataDependent, (3, 8, 8), set()),
    "subclassed": (Subclassed, (3, 8, 8), {"ws"}),
    "conv1d": (Conv1dNet, (3, 16), set()),
    "conv3d": (Conv3dNet, (2, 4, 6, 6), set()),
    "conv_transpose2d": (Decoder, (3, 8, 8), set()),
    "conv_transpose1d": (Decoder1d, (3, 12), set()),
    "functional_conv": (FunctionalConv, (3, 8, 8), {""}),
    "multihead_attention": (MHANet, (6, 5), set()),
    "transformer_encoder": (TransformerNet, (6, 5), set()),
    "transformer_encoder_layer": (EncoderLayerNet, (6, 8), set()),
    "tied_convs": (TiedConvs, (3, 8, 8), set()),
    "tied_linears": (TiedLinears, (6,), set()),
    "aliased": (Aliased, (3, 8, 8), set()),
}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, shape, _ = CASES[name]
    torch.manual_seed(1)
    model = factory().eval()
    x = torch.randn(32, *shape)
    if name == "data_dependent":  # half the samples take each branch (batches of one)
        x[::2] += 1.5
    return model, x


def _quant_model(model: nn.Module, x: torch.Tensor, **kw) -> tuple[QuantModel, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qm = QuantModel(model, calib=x, batch_size=1, **kw)
    left = [str(w.message) for w in caught if "left in float" in str(w.message) or "in float, not counted" in
            str(w.message)]
    return qm, left


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _forward(m: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([m(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def _weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every (first-named) module owning a parameter of two or more dimensions directly."""
    return {n: m for n, m in model.named_modules()
            if any(p.dim() >= 2 for p in m.parameters(recurse=False))}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_after_folding_equals_original(case):
    model, x = _build(case)
    qm, _ = _quant_model(model, x, act_bits=FLOAT_BITS)
    with torch.no_grad():
        assert _rel(_forward(qm, x, 1), _forward(model, x, 1)) < 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_every_weight_layer_is_quantized_or_named(case):
    model, x = _build(case)
    qm, left = _quant_model(model, x)
    expected_left = CASES[case][2]
    assert set(qm.skipped) == expected_left
    assert len(left) == (1 if expected_left else 0)  # one warning, naming each module and its type
    for name in expected_left:
        assert repr(name) in left[0] and type(model.get_submodule(name)).__name__ in left[0]
    covered = set(qm.layer_names) | set(qm.aliases) | set(qm.tied) | set(qm.skipped)
    for name, m in _weight_modules(model).items():
        if isinstance(m, nn.MultiheadAttention) or name.endswith("self_attn"):
            assert name in covered
        else:
            assert name in covered, f"{name} ({type(m).__name__}) neither quantized nor named"


@pytest.mark.parametrize("case", list(CASES))
def test_each_layer_really_runs_quantized(case):
    model, x = _build(case)
    qm, _ = _quant_model(model, x, act_bits=FLOAT_BITS)
    xb = x[:2] if case != "data_dependent" else x
    for name in qm.layer_names:
        layer = qm.layers[name]
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(
            lambda m, i, o, seen=seen: seen.append((o[0] if isinstance(o, tuple) else o).clone()))
        try:
            with torch.no_grad():
                qm.set_bits(FLOAT_BITS)
                _forward(qm, xb, 1)
                ref = list(seen)
                seen.clear()
                qm.set_bits({**{n: FLOAT_BITS for n in qm.layer_names}, name: 2})
                _forward(qm, xb, 1)
        finally:
            handle.remove()
        assert ref, f"layer {name!r} never ran as a module: it is bypassed"
        assert any(not torch.equal(a, b) for a, b in zip(ref, seen, strict=True)), f"{name!r} unchanged at 2 bits"


@pytest.mark.parametrize("case", list(CASES))
def test_size_counts_each_weight_tensor_once(case):
    model, x = _build(case)
    qm, _ = _quant_model(model, x)
    unique: dict[int, torch.Tensor] = {}
    for name, m in _weight_modules(model).items():
        if name in CASES[case][2]:
            continue
        if isinstance(m, nn.MultiheadAttention):
            unique[id(m.in_proj_weight)] = m.in_proj_weight
        else:
            unique[id(m.weight)] = m.weight
    n_params = sum(t.numel() for t in unique.values())
    assert qm.total_params == n_params
    assert len(qm.layer_names) == len(unique)
    assert qm.size_mb(4) == pytest.approx(n_params * 4 / 8 / 2**20, rel=1e-12)
    assert qm.avg_bits(4) == pytest.approx(4.0)


@pytest.mark.parametrize("case", list(CASES))
def test_feature_calibration_runs(case):
    model, x = _build(case)
    qm, _ = _quant_model(model, x)
    qm.set_bits(4)
    batch = 1 if case == "data_dependent" else 16
    if case == "data_dependent":  # a different branch per batch: per-layer features cannot be aligned
        with pytest.raises(MixqError, match="features='output'"):
            calibrate(qm, x, CalibrationConfig(epochs=2, batch_size=batch, augment=False), progress=False)
        config = CalibrationConfig(epochs=2, batch_size=batch, augment=False, features="output")
    else:
        config = CalibrationConfig(epochs=2, batch_size=batch, augment=False)
    result = calibrate(qm, x, config, progress=False)
    assert math.isfinite(result.final_loss)
    with torch.no_grad():
        assert torch.isfinite(_forward(qm, x, 1)).all()


def test_tied_weights_share_one_gene_and_fold_nothing_twice():
    model, x = _build("tied_convs")
    qm, _ = _quant_model(model, x)
    assert qm.tied == {"b": "a"} and "b" not in qm.layer_names
    assert {bn for _, bn in qm.fold_report.folded}.isdisjoint({"bn_a", "bn_b"})
    a, b = qm.model.get_submodule("a"), qm.model.get_submodule("b")
    assert a.weight is b.weight and a.weight_quantizer is b.weight_quantizer
    qm.set_bits({**{n: 8 for n in qm.layer_names}, "a": 3})
    assert b.weight_quantizer.bits == 3
    assert torch.equal(a.quantized_weight(), b.quantized_weight())
    assert torch.equal(model.a.weight, model.b.weight)  # the user's model is untouched


def test_alias_is_quantized_under_both_names():
    model, x = _build("aliased")
    qm, _ = _quant_model(model, x)
    assert qm.layer_names == ["conv", "fc"] and qm.aliases == {"also_conv": "conv"}
    assert qm.model.also_conv is qm.model.conv


def test_transformer_fast_path_is_restored_after_forward():
    model, x = _build("transformer_encoder")
    qm, _ = _quant_model(model, x)
    assert torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad():
        qm(x[:2])
    assert torch.backends.mha.get_fastpath_enabled()


def test_branch_never_taken_is_refused_naming_the_layer():
    model, x = _build("data_dependent")
    x = x[1::2]  # only samples of one branch
    with pytest.raises(MixqError, match=r"saw no calibration data.*'pos'"):
        QuantModel(model, calib=x, batch_size=1)


def test_forward_overriding_subclass_keeps_its_bn_in_float():
    model, x = _build("subclassed")
    qm, _ = _quant_model(model, x)
    assert "bn" in qm.fold_report.unfolded and qm.layer_names == ["fc"]
    assert type(qm.layers["fc"]).__name__ == "QuantScaledLinear" and isinstance(qm.layers["fc"], ScaledLinear)


def test_conv_transpose_quantizes_per_output_channel():
    model, x = _build("conv_transpose2d")
    qm, _ = _quant_model(model, x)
    up = qm.layers["up"]
    assert up.weight_quantizer.axis == 1
    qm.set_bits(3)
    w = up.quantized_weight()
    for c in range(w.shape[1]):  # each output channel slice holds at most 2^3 levels
        assert torch.unique(w[:, c]).numel() <= 8


EXPORTABLE = ["concat", "hand_attention", "mlp_mixer", "grouped_dilated_depthwise", "conv1d", "conv3d",
              "conv_transpose2d", "conv_transpose1d", "weight_reuse", "tied_convs", "tied_linears", "aliased"]


@pytest.mark.parametrize("case", EXPORTABLE)
def test_onnx_export_runs_in_onnxruntime_like_mixq(case, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    from mixq.export.qdq import export_onnx
    from mixq.export.verify import open_session

    model, x = _build(case)
    qm, _ = _quant_model(model, x)
    qm.set_bits({n: (3 if i % 2 else 4) for i, n in enumerate(qm.layer_names)})
    report = export_onnx(qm, tmp_path / "m.onnx", x.shape[1:], opset=21)
    assert sorted(r.name for r in report.layers) == sorted(qm.layer_names)  # one integer weight per tensor
    session, _ = open_session(tmp_path / "m.onnx", optimized=False)
    xb = x[:4] if case != "conv_transpose1d" else x[:4]
    got = session.run(None, {session.get_inputs()[0].name: xb.numpy()})[0]
    with torch.no_grad():
        want = qm(xb).numpy()
    scale = float(abs(want).max())
    assert abs(got - want).max() <= 1e-3 * scale + 1e-5, abs(got - want).max()


def test_onnx_export_of_attention_is_refused_by_name(tmp_path):
    from mixq.export.qdq import export_onnx

    model, x = _build("multihead_attention")
    qm, _ = _quant_model(model, x)
    with pytest.raises(MixqError, match="layer 'attn'"):
        export_onnx(qm, tmp_path / "m.onnx", x.shape[1:], opset=21)
