"""Bad input from issue #14's list: one clear ``mixq: error:`` line, exit code 2, no traceback."""

from __future__ import annotations

import pytest
import torch
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
