"""The packed checkpoint: b-bit packing against a per-bit reference, exact round trips, file size, bad files."""

import ast
import math
import random
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mixq.export.packed as packed
import mixq.models.loading as loading
from mixq.bits import BitConfig
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.export.packed import load_quantized, pack_bits, save_packed, unpack_bits
from mixq.quant.model import QuantModel

NET_MODULE = "mixq_packed_testnet"
NET_SOURCE = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv + BN + relu, a conv whose BN follows an add (kept in float), a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y) + y))
        return self.fc(y.mean((2, 3)))


def build():
    return Net()
'''
UNFOLDED = pytest.mark.filterwarnings("ignore:1 BatchNorm layer")  # bn2 follows an add: kept in float


# -- bit packing -------------------------------------------------------------------------------------------
def _reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Bit by bit: bit j of value i is stream bit i * bits + j, stream bit k is bit k % 8 of byte k // 8."""
    out = np.zeros((codes.size * bits + 7) // 8, dtype=np.uint8)
    for i, v in enumerate(codes.tolist()):
        for j in range(bits):
            if (v >> j) & 1:
                k = i * bits + j
                out[k // 8] |= 1 << (k % 8)
    return out


@pytest.mark.parametrize("bits", range(1, 9), ids=lambda b: f"{b}bit")
@pytest.mark.parametrize("count", [0, 1, 5, 8, 13, 64, 1001])
def test_pack_matches_per_bit_reference(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    codes = rng.integers(0, 1 << bits, size=count, dtype=np.int32)
    if count:
        codes[0] = (1 << bits) - 1  # the extremes are present
    out = pack_bits(codes, bits)
    assert out.dtype == np.uint8 and out.size == math.ceil(count * bits / 8)
    np.testing.assert_array_equal(out, _reference_pack(codes, bits))
    back = unpack_bits(out, bits, count)
    np.testing.assert_array_equal(back, codes)
    np.testing.assert_array_equal(unpack_bits(_reference_pack(codes, bits), bits, count), codes)


def test_pack_rejects_bad_input():
    with pytest.raises(MixqError, match=r"lie in \[0, 7\]"):
        pack_bits(np.array([0, 8]), 3)
    with pytest.raises(MixqError, match=r"lie in \[0, 3\]"):
        pack_bits(np.array([-1, 2]), 2)
    with pytest.raises(MixqError, match="integers"):
        pack_bits(np.array([0.5]), 4)
    for bad in (0, 9, True):
        with pytest.raises(MixqError, match="1..8"):
            pack_bits(np.array([0]), bad)
    with pytest.raises(MixqError, match="take 2 bytes, got 3"):
        unpack_bits(np.zeros(3, np.uint8), 3, 5)
    with pytest.raises(MixqError, match="uint8"):
        unpack_bits(np.zeros(2, np.int32), 3, 5)


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task():
    return load_task("resnet20-jpeg", samples=16, seed=0, n_test=50)


@pytest.fixture(scope="module")
def calib(task):
    return task.calib[:8]  # (8, 3, 32, 32): enough for the activation ranges, fast on two cores


@pytest.fixture
def net_ref(tmp_path, monkeypatch):
    """A ``package.module:function`` reference to the small test net, importable from tmp_path."""
    (tmp_path / f"{NET_MODULE}.py").write_text(textwrap.dedent(NET_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{NET_MODULE}:build"
    sys.modules.pop(NET_MODULE, None)


def _trained_net(ref: str) -> nn.Module:
    """The test net with seeded random weights and BatchNorm statistics ("trained")."""
    net = loading.load_user_model(ref)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def _mixed(qm: QuantModel, choices: tuple[int, ...], seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    return {n: rng.choice(choices) for n in qm.layer_names}


def _assert_same_model(loaded: QuantModel, qm: QuantModel, x: torch.Tensor) -> None:
    x2 = torch.randn((1,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(5)) * 2  # beyond the range
    with torch.no_grad():
        for inputs in (x[:2], x2):
            assert torch.equal(loaded(inputs), qm(inputs))
    assert loaded.bit_config() == qm.bit_config()
    assert (loaded.act_bits, loaded.weight_range, loaded.input_shape) == (qm.act_bits, qm.weight_range,
                                                                          qm.input_shape)
    assert loaded.fold_report.folded == qm.fold_report.folded
    assert loaded.fold_report.unfolded == qm.fold_report.unfolded
    for name, m in qm.layers.items():
        with torch.no_grad():
            assert torch.equal(loaded.layers[name].quantized_weight(), m.quantized_weight()), name


# -- exact round trips -------------------------------------------------------------------------------------
CASES = {  # id: (weight range, act bits, bits: "uniform3" | weight-bit choices | per-layer activation bits)
    "minmax-3bit-a8": ("minmax", 8, "uniform3"),
    "omse-mixed-with-float-a8": ("omse", 8, (2, 3, 4, 5, 6, 7, 8, 32)),
    "aciq-mixed-with-float-a8": ("aciq", 8, (2, 3, 4, 5, 6, 7, 8, 32)),
    "minmax-mixed-a32": ("minmax", 32, (2, 3, 4, 5, 6, 7, 8)),
    "minmax-mixed-layer-act-bits": ("minmax", 8, "acts"),
}


@pytest.mark.parametrize("case", CASES)
def test_roundtrip_exact_resnet20(case, task, calib, tmp_path):
    weight_range, act_bits, bits = CASES[case]
    qm = QuantModel(task.model, calib=calib, act_bits=act_bits, weight_range=weight_range)
    if bits == "uniform3":
        qm.set_bits(3)
    elif bits == "acts":
        mixed = _mixed(qm, (2, 4, 6, 8), seed=3)
        qm.set_bits(BitConfig(mixed, {n: 4 + i % 5 for i, n in enumerate(qm.layer_names[::3])}))
    else:
        qm.set_bits(_mixed(qm, bits, seed=1))
        assert {2, 8, *bits[-1:]}.issubset(qm.bit_config().weights.values())  # both ends, and 32 where chosen
    assert bool(qm.bit_config().acts) == (bits == "acts")
    path = tmp_path / "q.pt"
    save_packed(qm, path, "resnet20-jpeg")
    _assert_same_model(load_quantized(path), qm, calib)


@UNFOLDED
@pytest.mark.parametrize("fold_bn", [True, False], ids=["folded", "bn-in-float"])
def test_roundtrip_exact_user_model_omse(fold_bn, net_ref, tmp_path):
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    qm = QuantModel(_trained_net(net_ref), calib=x, fold_bn=fold_bn, weight_range="omse")
    qm.set_bits({"conv1": 3, "conv2": 5, "fc": 2})
    assert len(qm.fold_report.folded) == (1 if fold_bn else 0)
    report = save_packed(qm, tmp_path / "net.pt", net_ref, checkpoint="weights.pt")
    data = torch.load(tmp_path / "net.pt", weights_only=True)
    assert data["model"] == net_ref and data["checkpoint"] == "weights.pt" and data["fold_bn"] is fold_bn
    assert "bn2.num_batches_tracked" in data["others"]  # int64: stored as it is
    assert report["packed_layers"] == 3
    loaded = load_quantized(tmp_path / "net.pt")
    _assert_same_model(loaded, qm, x)
    assert int(loaded.model.bn2.num_batches_tracked) == 7


@UNFOLDED
def test_roundtrip_exact_after_feature_calibration_user_model(net_ref, tmp_path):
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    qm = QuantModel(_trained_net(net_ref), calib=x)
    qm.set_bits({"conv1": 3, "conv2": 4, "fc": 32})
    calibrate(qm, x, CalibrationConfig(epochs=3), progress=False)  # default grid: OMSE, learned scales
    qm.eval()  # calibrate restores the wrapper's training flag, True for a new QuantModel: bn2 would update
    save_packed(qm, tmp_path / "net.pt", net_ref)
    _assert_same_model(load_quantized(tmp_path / "net.pt"), qm, x)


def test_roundtrip_exact_after_feature_calibration_resnet20(task, calib, tmp_path):
    qm = QuantModel(task.model, calib=calib)
    qm.set_bits(_mixed(qm, (2, 3, 4), seed=2))
    before = {n: m.weight.clone() for n, m in qm.layers.items()}
    calibrate(qm, calib, CalibrationConfig(epochs=3, grid_init="minmax"), progress=False)
    name = qm.layer_names[5]
    m = qm.layers[name]
    learned = m.weight_quantizer.grids[m.weight_quantizer.bits][0]
    # calibration moved the weights and learned scales that no range method gives: the grids must travel
    assert any(not torch.equal(before[n], layer.weight) for n, layer in qm.layers.items())
    fresh = type(m.weight_quantizer)(m.weight_quantizer.bits, "minmax")
    assert not torch.equal(fresh.qparams(m.weight)[0], learned)
    save_packed(qm, tmp_path / "cal.pt", "resnet20-jpeg")
    _assert_same_model(load_quantized(tmp_path / "cal.pt"), qm, calib)


# -- the file ----------------------------------------------------------------------------------------------
def _ideal_bytes(qm: QuantModel) -> int:
    """Packed codes at b bits, 4 bytes per scale, 1 per zero point, 4 per float value kept."""
    ideal, packed_keys = 0, set()
    for name, m in qm.layers.items():
        b = m.weight_quantizer.bits
        if b != 32:
            ideal += math.ceil(m.weight.numel() * b / 8) + 5 * m.weight.shape[0]
            packed_keys.add(f"{name}.weight")
    return ideal + sum(4 * t.numel() for k, t in qm.model.state_dict().items() if k not in packed_keys)


@pytest.mark.parametrize("bits", ["uniform3", "mixed"])
def test_file_within_5_percent_of_ideal(bits, task, calib, tmp_path):
    qm = QuantModel(task.model, calib=calib)
    qm.set_bits(3 if bits == "uniform3" else _mixed(qm, (2, 3, 4, 5, 6, 7, 8), seed=4))
    path = tmp_path / "a-long-file-name-does-not-grow-the-records-resnet20-jpeg.pt"
    report = save_packed(qm, path, "resnet20-jpeg")
    assert report["file_bytes"] == path.stat().st_size
    assert report["ideal_bytes"] == _ideal_bytes(qm)
    assert report["weight_bits_bytes"] == qm.bit_params() / 8
    assert report["ratio"] == report["file_bytes"] / report["ideal_bytes"]
    assert report["ratio"] <= 1.05, report


def test_weights_only_load_reads_b_bit_codes(task, calib, tmp_path):
    qm = QuantModel(task.model, calib=calib)
    qm.set_bits(3)
    save_packed(qm, tmp_path / "q.pt", "resnet20-jpeg")
    data = torch.load(tmp_path / "q.pt", weights_only=True)
    assert data["format"] == "mixq-packed" and data["version"] == 1 and data["model"] == "resnet20-jpeg"
    assert BitConfig.from_dict(data["bits"]) == qm.bit_config()
    assert data["act_bits"] == 8 and data["weight_range"] == "minmax" and data["input_shape"] == [3, 32, 32]
    assert {"torch", "mixq", "numpy"} <= set(data["versions"])
    w = data["weights"]
    assert w["codes"].dtype == torch.uint8
    assert w["codes"].numel() == sum(math.ceil(p * 3 / 8) for p in qm.layer_params)  # 3 bits a weight
    assert w["scale"].dtype == torch.float32 and w["zero_point"].dtype == torch.uint8
    # one layer's codes, unpacked by hand, are the quantizer's integer weight
    i = 4
    name, m = qm.layer_names[i], qm.layers[qm.layer_names[i]]
    q, scale, zp = m.weight_quantizer.integer_weight(m.weight)
    lo, hi = w["offsets"][i], w["offsets"][i + 1]
    codes = unpack_bits(w["codes"][lo:hi].numpy(), 3, q.numel())
    assert w["layers"][i] == name and np.array_equal(codes, q.reshape(-1).numpy())
    c0 = sum(s[0] for s in w["shapes"][:i])
    assert torch.equal(w["scale"][c0:c0 + scale.numel()], scale)
    assert torch.equal(w["zero_point"][c0:c0 + zp.numel()].int(), zp)


def test_load_needs_no_fp32_checkpoint_and_keeps_rng(task, calib, tmp_path, monkeypatch):
    qm = QuantModel(task.model, calib=calib)
    qm.set_bits(4)
    save_packed(qm, tmp_path / "q.pt", "resnet20-jpeg")

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("a checkpoint was read")

    monkeypatch.setattr(loading, "load_state_dict_file", no_checkpoint)
    monkeypatch.setattr(loading, "checkpoint_path", no_checkpoint)
    monkeypatch.setenv("MIXQ_MODELS", str(tmp_path / "nowhere"))
    rng = torch.get_rng_state()
    loaded = load_quantized(tmp_path / "q.pt", model_root=tmp_path / "nowhere")
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.no_grad():
        assert torch.equal(loaded(calib[:2]), qm(calib[:2]))


def test_save_checks_the_model_reference(task, calib, tmp_path):
    qm = QuantModel(task.model, calib=calib)
    qm.set_bits(4)
    with pytest.raises(MixqError, match=r"'resnet32' does not rebuild this quantized model: 48 unexpected keys"):
        save_packed(qm, tmp_path / "q.pt", "resnet32")
    with pytest.raises(MixqError, match="unknown model 'no-such-net'"):
        save_packed(qm, tmp_path / "q.pt", "no-such-net")
    with pytest.raises(MixqError, match="not of the form"):
        save_packed(qm, tmp_path / "q.pt", "bad ref:")
    with pytest.raises(MixqError, match="needs a QuantModel"):
        save_packed(task.model, tmp_path / "q.pt", "resnet20-jpeg")
    with pytest.raises(MixqError, match="cannot write packed checkpoint"):
        save_packed(qm, tmp_path / "missing-dir" / "q.pt", "resnet20-jpeg")
    assert not list(tmp_path.rglob("*.pt*"))


# -- bad files ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(task, calib, tmp_path_factory):
    qm = QuantModel(task.model, calib=calib)
    qm.set_bits(_mixed(qm, (2, 4, 8, 32), seed=5))
    path = tmp_path_factory.mktemp("packed") / "good.pt"
    save_packed(qm, path, "resnet20-jpeg")
    return path


def _edited(good: Path, tmp_path: Path, edit) -> Path:
    data = torch.load(good, weights_only=True)
    edit(data)
    path = tmp_path / "edited.pt"
    torch.save(data, path)
    return path


def _set(*keys, value):
    def edit(data):
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value(data[keys[-1]]) if callable(value) else value
    return edit


def _drop(*keys):
    def edit(data):
        for k in keys[:-1]:
            data = data[k]
        del data[keys[-1]]
    return edit


EDITS = {
    "format": (_set("format", value="mixq-emq-genotype"), r"format marker 'mixq-emq-genotype', expected 'mixq-packed'"),
    "version": (_set("version", value=2), "has version 2; this mixq reads version 1"),
    "missing-key": (_drop("floats"), r"lacks the key\(s\) \['floats'\]"),
    "missing-weights-key": (_drop("weights", "zero_point"), r"'weights' lacks the key\(s\) \['zero_point'\]"),
    "short-scale": (_set("weights", "scale", value=lambda t: t[:-1].clone()), "'scale' holds .* values, expected"),
    "short-codes": (_set("weights", "codes", value=lambda t: t[:-3].clone()), "'codes' holds .* values, expected"),
    "bad-offsets": (_set("weights", "offsets", value=lambda o: [0] + [v + 1 for v in o[1:]]),
                    "bytes of codes, expected"),
    "bits-list": (_set("weights", "bits", value=lambda b: b[:-1]), r"'weights.bits' has \d+ entries, expected"),
    "float-shapes": (_set("floats", "shapes", value=lambda s: [[7]] + s[1:]),
                     "'floats.offsets' do not match 'floats.shapes'"),
    "act-ranges": (_set("act_ranges", value=lambda t: t[:-1].clone()), "'act_ranges' .* expected float32"),
    "bit-config": (_set("bits", value=lambda b: {**b, "conv1": 5}), "do not match the bit configuration"),
    "scale-dtype": (_set("weights", "scale", value=lambda t: t.double()), "'scale' is a torch.float64 tensor"),
    "other-model": (_set("model", value="resnet32"), "configuration does not fit model 'resnet32': .*lacks layer"),
    "fold-setting": (_set("fold_bn", value=False), "folds other BatchNorms than the saved model did"),
    "unknown-model": (_set("model", value="no-such-net"), "cannot rebuild model 'no-such-net'"),
    "act-bits": (_set("act_bits", value=1), "act_bits is 1"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_inconsistent_file_is_one_mixq_error(edit, good_file, tmp_path):
    fn, message = EDITS[edit]
    path = _edited(good_file, tmp_path, fn)
    with pytest.raises(MixqError, match=message) as info:
        load_quantized(path)
    assert str(path) in str(info.value)


def test_unreadable_files_are_one_mixq_error(good_file, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "state_dict.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, other)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    truncated = tmp_path / "truncated.pt"
    raw = good_file.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    cases = {
        text: "cannot read packed checkpoint .*not a torch file or damaged",
        truncated: "cannot read packed checkpoint .*not a torch file or damaged",
        other: "is not a mixq packed checkpoint: format marker None, expected 'mixq-packed'",
        listing: "holds a list, expected a dict with format 'mixq-packed'",
        tmp_path / "absent.pt": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(MixqError, match=message) as info:
            load_quantized(path)
        assert str(path) in str(info.value)
        assert info.value.__context__ is None or info.value.__suppress_context__  # no chained traceback


def test_packed_imports_only_the_layers_below():
    """The export package sits above quant/models: packed.py must not reach the searches or the CLI."""
    tree = ast.parse(Path(packed.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    mixq = {m for m in imported if m.split(".")[0] == "mixq"}
    allowed = ("mixq.quant", "mixq.models", "mixq.bits", "mixq.errors", "mixq.provenance")
    assert mixq and all(any(m == a or m.startswith(a + ".") for a in allowed) for m in mixq), mixq
