"""The mixq command: JSON output on the embedded demo, and one clear error line for bad input."""

import json
import subprocess
import sys

import pytest
import torch

from mixq.cli import main
from mixq.paths import resolve_data_root


def test_eval_json_on_demo(demo_only, capsys, top1_by_hand):
    import mixq

    assert main(["eval", "--bits", "4", "--json", "--no-progress", "--samples", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "resnet20-jpeg" and out["bits"] == 4 and out["n_test"] == 500
    assert 80 <= out["fp32_top1"] <= 95 and 60 <= out["quant_top1"] <= out["fp32_top1"] + 2
    # the reported numbers are those of the model the options describe, recomputed through the API
    task = mixq.load_task("resnet20-jpeg", samples=32, seed=0)
    assert out["fp32_top1"] == pytest.approx(top1_by_hand(task.model, task), abs=1e-3)
    assert out["quant_top1"] == pytest.approx(top1_by_hand(mixq.quantize(task.model, 4, task.calib), task), abs=1e-3)
    assert out["avg_bits"] == 4 and out["size_mb"] == pytest.approx(out["fp32_size_mb"] / 8)
    assert "torch" in out["versions"]


def test_eval_with_config_file(demo_only, tmp_path, capsys, top1_by_hand):
    import mixq
    from mixq.models import create_model
    from mixq.quant.model import QuantModel

    names = QuantModel(create_model("resnet20-jpeg"), act_bits=32).layer_names
    cfg = {n: (8 if i in (0, len(names) - 1) else 3) for i, n in enumerate(names)}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["eval", "--config", str(tmp_path / "c.json"), "--json", "--no-progress", "--n-test", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 3 < out["avg_bits"] < 3.2 and out["n_test"] == 100
    task = mixq.load_task("resnet20-jpeg", samples=50, seed=0, n_test=100)
    qm = mixq.quantize(task.model, cfg, task.calib)
    assert out["quant_top1"] == pytest.approx(top1_by_hand(qm, task), abs=1e-3)
    assert out["quant_top1"] != pytest.approx(top1_by_hand(mixq.quantize(task.model, 2, task.calib), task))


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("mixq: error:") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_bad_inputs(capsys, tmp_path):
    assert "is not a folder" in _error(capsys, ["eval", "--bits", "4", "--data-root", str(tmp_path / "nope")])
    assert "unknown" in _error(capsys, ["eval", "--bits", "4", "--model", "resnet99"]).lower()
    assert "--bits 9" in _error(capsys, ["eval", "--bits", "9"])
    assert "exactly one" in _error(capsys, ["eval"])
    (tmp_path / "bad.json").write_text("{oops")
    assert "not valid JSON" in _error(capsys, ["eval", "--config", str(tmp_path / "bad.json")])


def test_corrupt_checkpoint(capsys, tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "resnet20-jpeg-0e7622d0.pt").write_bytes(b"\x00garbage" * 100)
    err = _error(capsys, ["eval", "--bits", "4", "--model-root", str(tmp_path)])
    assert "corrupt" in err


def test_user_model_from_cli(tmp_path, monkeypatch, capsys):
    if resolve_data_root() is None:
        pytest.skip("needs CIFAR-10 data")
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n"
    )
    torch.manual_seed(0)
    import importlib
    monkeypatch.syspath_prepend(str(tmp_path))
    net = importlib.import_module("mynet").build()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--model", "mynet:build", "--checkpoint", "w.pt", "--bits", "4", "--json",
            "--no-progress", "--n-test", "50", "--samples", "8"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "mynet:build" and out["bn_folded"] == 1


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "mixq.cli", "eval", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--bits" in res.stdout and "MIXQ_DATA" in res.stdout


def test_eval_on_the_validation_split(capsys, top1_by_hand):
    import mixq

    if resolve_data_root() is None:
        pytest.skip("shared CIFAR-10 data not found")
    assert main(["eval", "--bits", "4", "--json", "--no-progress", "--eval-split", "val", "--n-test", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_test"] == 200 and out["split"].startswith("val (200 of the train images")
    task = mixq.load_task("resnet20-jpeg", samples=50, seed=0, n_test=200, eval_split="val")
    assert task.test.split == "val" and task.identity()["eval_split"] == "val"
    assert "eval_split" not in mixq.load_task("resnet20-jpeg", samples=5, n_test=10).identity()  # old signatures
    assert not set(task.test.indices.tolist()) & set(task.calib_set.indices.tolist())
    assert out["fp32_top1"] == pytest.approx(top1_by_hand(task.model, task), abs=1e-3)
    with pytest.raises(mixq.MixqError, match="evaluation split must be"):
        mixq.load_task("resnet20-jpeg", samples=5, eval_split="train")


def test_eval_split_val_on_the_demo_is_one_clear_error(demo_only, capsys):
    assert main(["eval", "--bits", "4", "--eval-split", "val", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "no validation split" in err and "Traceback" not in err
