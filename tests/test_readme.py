"""README's Python API example runs as written, and the public face has what the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import mixq

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_readme_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_api_example(), "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert re.search(r"FP32 \d+\.\d\d %, W4A8 \d+\.\d\d %", out), out
    assert re.search(r"searched 2\.\d{3} avg bits|searched 3\.000 avg bits", out), out
    assert (tmp_path / "config.json").is_file()
    saved = mixq.BitConfig.load(tmp_path / "config.json")
    assert sum(saved.weights.values()) > 0


def test_face_verbs_agree_with_the_layers_beneath(demo_only):
    task = mixq.load_task("resnet20-jpeg", samples=8, seed=0, n_test=40)
    qm = mixq.quantize(task.model, 3, task.calib)
    direct = mixq.QuantModel(task.model, calib=task.calib)
    direct.set_bits(3)
    x = task.calib
    assert torch.equal(qm(x), direct(x))
    # one accuracy, three ways of passing the data
    a = mixq.evaluate(qm, task, progress=False)
    xs, ys = next(task.test_batches(40))
    assert mixq.evaluate(qm, (xs, ys), batch_size=7, progress=False) == a
    assert mixq.evaluate(qm, [(xs[:20], ys[:20]), (xs[20:], ys[20:])], progress=False) == a
    # a mapping sets bits per layer; a QuantModel is re-quantized in place
    bits = {n: (8 if i == 0 else 2) for i, n in enumerate(qm.layer_names)}
    assert mixq.quantize(qm, bits) is qm and qm.bit_config().weights[qm.layer_names[1]] == 2


def test_face_bad_input_is_one_clear_error():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(mixq.MixqError, match="quantize needs samples"):
        mixq.quantize(net, 4)
    with pytest.raises(mixq.MixqError, match="calibrate needs a QuantModel"):
        mixq.calibrate(net, torch.zeros(2, 12))
    with pytest.raises(mixq.MixqError, match="2 inputs but 3 labels"):
        mixq.evaluate(net, (torch.zeros(2, 12), torch.zeros(3, dtype=torch.long)))
    with pytest.raises(mixq.MixqError, match="batch_size must be at least 1"):
        mixq.evaluate(net, (torch.zeros(2, 12), torch.zeros(2, dtype=torch.long)), batch_size=0)


def test_callable_packages_keep_their_modules():
    import importlib

    ilp = importlib.import_module("mixq.allocate.ilp")
    assert callable(mixq.allocate)
    assert mixq.allocate.ilp is ilp and ilp.allocate_bits is mixq.allocate.allocate_bits
    assert callable(mixq.evoq.search) and callable(mixq.evoq.run)
    assert callable(mixq.emq.score) and callable(mixq.emq.evolve)
