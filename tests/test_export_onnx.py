"""ONNX QDQ export: integer weight types, exact dequantized weights, onnxruntime agreement, sizes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import mixq
from mixq.cli import main
from mixq.errors import MixqError
from mixq.export import check_opset, compare_outputs, export_onnx, weight_levels

onnx = pytest.importorskip("onnx", reason="the export extra (pip install 'mixq[export]') is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install 'mixq[export]') is not installed")
from onnx import TensorProto, numpy_helper  # noqa: E402

MIXED = (2, 3, 4, 5, 6, 7, 8, 32)


@pytest.fixture(scope="module")
def task():
    import mixq.paths as paths

    saved = paths._shared_candidates
    paths._shared_candidates = lambda: []  # the embedded demo, whatever is beside the checkout
    try:
        yield mixq.load_task("resnet20-jpeg", samples=32, seed=0, n_test=200)
    finally:
        paths._shared_candidates = saved


def _mixed(task, act_bits=8):
    qm = mixq.quantize(task.model, 8, task.calib, act_bits=act_bits)
    qm.set_bits({n: MIXED[i % len(MIXED)] for i, n in enumerate(qm.layer_names)})
    return qm


def _inits(path):
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


def _run(path, x, optimized=False):
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("opset, two_bit", [(25, TensorProto.INT2), (21, TensorProto.INT4)], ids=["opset25", "opset21"])
def test_weights_are_integers_in_the_smallest_type(task, tmp_path, opset, two_bit):
    qm = _mixed(task)
    path = tmp_path / "m.onnx"
    export_onnx(qm, path, (3, 32, 32), opset=opset)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset and proto.ir_version == (10 if opset == 21 else 13)
    inits = _inits(path)
    expected = {2: two_bit, 3: TensorProto.INT4, 4: TensorProto.INT4, 5: TensorProto.INT8, 6: TensorProto.INT8,
                7: TensorProto.INT8, 8: TensorProto.INT8}
    for name, bits in qm.bit_config().weights.items():
        if bits == 32:
            assert f"{name}.weight" in inits and inits[f"{name}.weight"].data_type == TensorProto.FLOAT
            continue
        assert f"{name}.weight" not in inits  # the float weight is gone
        assert inits[f"{name}.weight_quantized"].data_type == expected[bits], name
    levels = weight_levels(path, qm)
    assert all(levels[n] <= 2 ** b for n, b in qm.bit_config().weights.items() if b != 32)
    assert max(levels.values()) > 8  # the 5..8-bit layers use more than 3 bits' worth of levels


@pytest.mark.parametrize("weight_type", ["int", "uint"])
def test_dequantized_weights_equal_mixq_bit_for_bit(task, tmp_path, weight_type):
    """(q_s - zp_s) * scale, computed from the file alone, is mixq's fake-quantized weight exactly."""
    qm = _mixed(task)
    path = tmp_path / "m.onnx"
    export_onnx(qm, path, (3, 32, 32), weight_type=weight_type)
    inits = _inits(path)
    unsigned = {TensorProto.UINT2, TensorProto.UINT4, TensorProto.UINT8}
    for name, bits in qm.bit_config().weights.items():
        if bits == 32:
            continue
        assert (inits[f"{name}.weight_quantized"].data_type in unsigned) == (weight_type == "uint")
        assert weight_levels(path, qm)[name] <= 2 ** bits
        q = numpy_helper.to_array(inits[f"{name}.weight_quantized"]).astype(np.float32)
        s = numpy_helper.to_array(inits[f"{name}.weight_scale"]).astype(np.float32)
        z = numpy_helper.to_array(inits[f"{name}.weight_zero_point"]).astype(np.float32)
        shape = (-1,) + (1,) * (q.ndim - 1)
        deq = (q - z.reshape(shape)) * s.reshape(shape)
        np.testing.assert_array_equal(deq, qm.layers[name].quantized_weight().detach().numpy(), err_msg=name)


def test_weight_only_model_matches_in_onnxruntime(task, tmp_path):
    """With float activations only the convolution arithmetic differs: logits agree to 1e-4."""
    qm = _mixed(task, act_bits=32)
    path = tmp_path / "w.onnx"
    export_onnx(qm, path, (3, 32, 32))
    assert not [n for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"]
    x, _ = next(task.test_batches(64))
    with torch.no_grad():
        ref = qm(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("act_bits", [8, 6])
def test_quantized_activations_match_in_onnxruntime(task, tmp_path, act_bits):
    qm = _mixed(task, act_bits=act_bits)
    path = tmp_path / "a.onnx"
    export_onnx(qm, path, (3, 32, 32))
    nodes = onnx.load(str(path)).graph.node
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) == len(qm.layer_names)
    assert sum(n.op_type == "Clip" and n.name.endswith(".input_clip") for n in nodes) == (
        len(qm.layer_names) if act_bits < 8 else 0)
    v = compare_outputs(path, qm, task.test_batches(100), progress=False)
    assert v["n"] == 200
    # the unoptimized graph is the QDQ semantics: only rare rounding ties differ
    assert abs(v["ort_noopt_top1_diff"]) <= 1.0 and v["ort_noopt_argmax_agreement"] >= 0.98
    assert v["ort_noopt_mean_abs_logit_diff"] < 0.02 and v["ort_noopt_max_abs_logit_diff"] < 1.0
    assert v["ort_argmax_agreement"] >= 0.95  # onnxruntime's fused integer kernels round differently
    # a wrong activation range would show: quantizing with 4 bits instead of act_bits is far off
    qm4 = _mixed(task, act_bits=4)
    x, _ = next(task.test_batches(100))
    with torch.no_grad():
        assert np.abs(qm4(x).numpy() - _run(path, x)).mean() > 10 * v["ort_noopt_mean_abs_logit_diff"]


def test_weight_bytes_match_the_container_size(task, tmp_path):
    qm = _mixed(task)
    path = tmp_path / "m.onnx"
    report = export_onnx(qm, path, (3, 32, 32))
    inits = _inits(path)
    stored = sum(len(inits[f"{n}.weight_quantized"].raw_data) for n, b in qm.bit_config().weights.items() if b != 32)
    bits_of = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
    container = sum(qm.layers[n].weight.numel() * bits_of[b] for n, b in qm.bit_config().weights.items()
                    if b != 32) / 8
    assert stored == report.weight_bytes
    assert abs(stored - container) / container < 0.02
    ideal = sum(qm.layers[n].weight.numel() * b for n, b in qm.bit_config().weights.items() if b != 32) / 8
    assert report.ideal_bytes == ideal < stored
    assert report.file_bytes == path.stat().st_size


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_face_export_of_a_user_model(tmp_path):
    x = torch.randn(16, 3, 10, 10)
    qm = mixq.quantize(_tiny(), 2, x)
    report = mixq.export(qm, tmp_path / "tiny.onnx")
    assert report["opset"] == 25 and {layer["container"] for layer in report["layers"]} == {"INT2"}
    with torch.no_grad():
        ref = qm(x).numpy()
    out = _run(tmp_path / "tiny.onnx", x)
    assert np.abs(out - ref).max() < 0.05 and (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_bad_input_gives_one_clear_error(task, tmp_path):
    with pytest.raises(MixqError, match="--opset 20 is not supported: expected one of"):
        check_opset(20)
    qm = mixq.quantize(task.model, 4, task.calib)
    with pytest.raises(MixqError, match="--opset 26 is not supported"):
        export_onnx(qm, tmp_path / "m.onnx", (3, 32, 32), opset=26)
    with pytest.raises(MixqError, match="unknown export format 'txt'"):
        mixq.export(qm, tmp_path / "m.txt")
    with pytest.raises(MixqError, match="export needs a QuantModel"):
        mixq.export(task.model, tmp_path / "m.onnx")
    bare = mixq.QuantModel(task.model)  # activation ranges never observed
    bare.set_bits(4)
    with pytest.raises(MixqError, match="has no activation range"):
        export_onnx(bare, tmp_path / "m.onnx", (3, 32, 32))
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_verify_and_bad_config(demo_only, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--bits", "3", "--out", str(out), "--verify", "--n-test", "100", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "verified on 100 test images" in text and "every weight channel holds <= 2^b values" in text
    rec = json.loads((tmp_path / "m.onnx.json").read_text())
    assert rec["verify"]["n"] == 100
    assert rec["weight_bytes"] == rec["container_bytes"] == pytest.approx(rec["size_mb"] * 2**20 * 4 / 3)  # INT4
    (tmp_path / "bad.json").write_text(json.dumps({"nosuchlayer": 4}))
    assert main(["export", "--config", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown layer(s) ['nosuchlayer']" in err
    assert main(["export", "--bits", "9", "--out", str(out)]) == 2
    assert "--bits 9 is out of range" in capsys.readouterr().err
    assert main(["export", "--bits", "4", "--opset", "19", "--out", str(out)]) == 2
    assert "--opset 19 is not supported" in capsys.readouterr().err


def test_cli_export_of_a_calibrated_run_rebuilds_the_run_model(demo_only, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["evoq", "--iterations", "12", "--population", "6", "--sample-size", "3", "--calib-epochs", "2",
                 "--samples", "16", "--no-uniform", "--no-progress", "--out", str(run)]) == 0
    result = json.loads((run / "result.json").read_text())
    assert main(["export", str(run), "--verify", "--no-progress"]) == 0
    rec = json.loads((run / "model.onnx.json").read_text())
    assert rec["calibrated"] is True
    # the rebuilt model is the run's calibrated model: same top-1 on the same test images
    assert rec["verify"]["mixq_top1"] == pytest.approx(result["quant_top1"], abs=1e-9)
    assert rec["verify"]["n"] == result["n_test"]


def test_cli_export_packed_checkpoint_loads_back_exactly(demo_only, tmp_path, capsys):
    out = tmp_path / "m.pt"
    names = mixq.QuantModel(mixq.create_model("resnet20-jpeg")).layer_names
    (tmp_path / "bits.json").write_text(json.dumps({n: (2, 3, 5, 8)[i % 4] for i, n in enumerate(names)}))
    assert main(["export", "--config", str(tmp_path / "bits.json"), "--format", "pt", "--out", str(out)]) == 0
    assert "file / ideal packed size" in capsys.readouterr().out
    loaded = mixq.load_quantized(out)
    task = mixq.load_task("resnet20-jpeg", samples=50, seed=0, n_test=20)
    qm = mixq.quantize(task.model, mixq.BitConfig.load(tmp_path / "bits.json"), task.calib)
    x, _ = next(task.test_batches(20))
    with torch.no_grad():
        assert torch.equal(loaded(x), qm(x))
    rec = json.loads((tmp_path / "m.pt.json").read_text())
    assert rec["format"] == "pt" and rec["ratio"] <= 1.05
    assert main(["export", "--bits", "4", "--format", "pt", "--verify", "--out", str(out)]) == 2
    assert "--verify runs the ONNX file" in capsys.readouterr().err


def test_cli_export_refuses_a_calibrated_run_without_its_weights(demo_only, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"model": "resnet20-jpeg", "seed": 0, "samples": 8,
                                                 "calibrated_top1": 80.0}))
    names = mixq.QuantModel(mixq.create_model("resnet20-jpeg")).layer_names
    mixq.BitConfig.uniform(names, 4).save(run / "config.json")
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "was feature-calibrated but its calibrated.pt is missing" in err and err.count("\n") == 1
