"""Bad input from issue #14's list: one clear ``mixq: error:`` line, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bad_input_cases import CASES, error_lines, run_case, table_row
from torch import nn

from mixq.bits import Budget
from mixq.cli import main
from mixq.errors import MixqError
from mixq.paths import output_folder
from mixq.quant.model import QuantModel


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mixq: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", [["eval", "--bits", "4"], ["evoq", "--iterations", "2"],
                                  ["allocate", "--proxy", "bops"]], ids=["eval", "evoq", "allocate"])
def test_batch_size_zero(demo_only, capsys, argv):
    assert main([*argv, "--batch-size", "0", "--no-progress"]) == 2
    assert "--batch-size must be at least 1, got 0" in _one_error_line(capsys)


@pytest.mark.parametrize("command", ["evoq", "allocate"])
def test_out_is_a_file_or_under_a_file(demo_only, tmp_path, capsys, command):
    afile = tmp_path / "taken"
    afile.write_text("x")
    extra = ["--proxy", "bops"] if command == "allocate" else ["--iterations", "2"]
    assert main([command, *extra, "--out", str(afile), "--no-progress"]) == 2
    assert f"--out {str(afile)!r} is a file; give a folder" in _one_error_line(capsys)
    assert main([command, *extra, "--out", str(afile / "sub"), "--no-progress"]) == 2
    assert f"lies under the file {str(afile)!r}" in _one_error_line(capsys)
    assert afile.read_text() == "x"  # nothing the user had is touched


def test_output_folder_creates_nested_folders(tmp_path):
    out = output_folder(tmp_path / "a" / "b")
    assert out.is_dir()


def test_budget_above_the_maximum_bits_is_refused(demo_only, capsys):
    with pytest.raises(MixqError, match="above the maximum of 8 bits per quantized weight"):
        Budget(avg_bits=8.5)
    assert Budget(avg_bits=8.0).avg_bits == 8.0
    assert main(["evoq", "--target-bits", "9", "--no-progress"]) == 2
    assert "budget of 9.0 average bits is above the maximum of 8" in _one_error_line(capsys)


@pytest.mark.parametrize("where", ["first conv weight", "classifier bias"])
def test_non_finite_weights_are_refused_by_name(where):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    with torch.no_grad():
        if where == "first conv weight":
            net[0].weight[0, 0, 0, 0] = float("nan")
        else:
            net[3].bias[1] = float("inf")
    name = "0.weight" if where == "first conv weight" else "3.bias"
    with pytest.raises(MixqError, match=rf"model tensor '{name}' holds 1 non-finite value"):
        QuantModel(net, calib=torch.randn(4, 3, 6, 6))


def test_benchmark_rows_with_impossible_labels_are_refused(tmp_path):
    import sqlite3

    from mixq.bench import MQBench

    names, params = ["a", "b"], [10, 20]
    path = tmp_path / "b.mqbench"
    with MQBench.create(path, {"model": "tiny", "layer_names": names, "layer_params": params,
                               "quantizer": {"act_bits": 8}, "sampling": {"mode": "emq"}}) as bench:
        bench.add((2, 3), top1=50.0)
        bench.add((3, 4), top1=60.0)
    with MQBench.open(path, readonly=True) as bench:
        assert [e.top1 for e in bench.entries()] == [50.0, 60.0]
    for column, value in (("top1", 1e9), ("top1", -50.0), ("avg_bits", float("inf"))):
        con = sqlite3.connect(path)
        con.execute(f"UPDATE configs SET {column} = ? WHERE idx = 1", (value,))
        con.commit()
        con.close()
        with MQBench.open(path, readonly=True) as bench, pytest.raises(MixqError, match="is corrupt: entry 1 has"):
            bench.entries()
        con = sqlite3.connect(path)
        con.execute("UPDATE configs SET top1 = 60.0, avg_bits = 3.6666 WHERE idx = 1")
        con.commit()
        con.close()


def test_search_checkpoint_with_a_malformed_population(tmp_path):
    import json

    from mixq.evaluation.metrics import predict
    from mixq.evoq.bitsearch import EvoQConfig, evoq_search

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    x = torch.randn(8, 3, 6, 6)
    qm = QuantModel(net, calib=x)
    ckpt = tmp_path / "search_state.json"
    cfg = EvoQConfig(iterations=6, population=4, sample=2, mutation="random", seed=0)
    evoq_search(qm, x, predict(net, x), Budget(avg_bits=4.0), cfg, checkpoint=ckpt, progress=False)
    saved = json.loads(ckpt.read_text())
    saved["state"]["population"] = [1, 2, 3]
    ckpt.write_text(json.dumps(saved))
    with pytest.raises(MixqError, match="matches this search but its state is malformed"):
        evoq_search(qm, x, predict(net, x), Budget(avg_bits=4.0), cfg, checkpoint=ckpt, progress=False)


def test_images_of_the_wrong_size_for_the_model(demo_only, tmp_path, capsys, monkeypatch):
    import mixq.evaluation.task as task_module
    from mixq.data import ImageSet

    real = task_module.calibration_set

    def small(*args, **kwargs):
        s = real(*args, **kwargs)
        return ImageSet(s.images[:, :, :8, :8].contiguous(), s.labels, s.name, s.split, s.indices)

    monkeypatch.setattr(task_module, "calibration_set", small)
    assert main(["eval", "--bits", "4", "--no-progress"]) == 2
    assert "model 'resnet20-jpeg' expects 32x32 images, but the train images found are 8x8" in _one_error_line(capsys)


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> dict[str, str]:
    text = README.read_text()
    start, end = text.find("<!-- bad-input-table -->"), text.find("<!-- /bad-input-table -->")
    assert 0 <= start < end, "README lost its bad-input table markers"
    rows = [row for row in text[start:end].splitlines() if row.startswith("| ") and "`mixq" in row]
    return {row.split(" | ")[0][2:]: row for row in rows}


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_table(case, tmp_path):
    """Each case: exit code 2, one error line, no traceback, and exactly the message README shows."""
    code, stderr = run_case(case, tmp_path)
    assert code == 2, stderr
    assert len(error_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == error_lines(stderr)[0]
    row = table_row(case, stderr)
    assert _readme_table().get(case.what) == row, f"README row differs; it should be:\n{row}"


def test_debug_shows_the_traceback(demo_only):
    with pytest.raises(MixqError, match="out of range"):
        main(["--debug", "eval", "--bits", "1", "--no-progress"])
