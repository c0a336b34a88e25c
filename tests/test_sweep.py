"""Uniform sweeps: each row is the top-1 of that uniform bit-width computed by hand; Ray equals serial."""

from __future__ import annotations

import json

import pytest

import mixq
from mixq.cli import main
from mixq.errors import MixqError
from mixq.evaluation.sweep import uniform_sweep
from mixq.quant.model import QuantModel


@pytest.fixture
def demo_task(demo_only):
    return mixq.load_task("resnet20-jpeg", samples=16, seed=0, n_test=100)


def test_rows_are_the_top1_of_each_uniform_width(demo_task, top1_by_hand):
    qm = QuantModel(demo_task.model, calib=demo_task.calib)
    qm.set_bits(5)
    rows = uniform_sweep(qm, demo_task, [8, 2, 32], progress=False)
    assert [r.bits for r in rows] == [8, 2, 32]
    for r in rows:
        ref = mixq.quantize(demo_task.model, r.bits, demo_task.calib)  # a fresh model per width
        assert r.top1 == pytest.approx(top1_by_hand(ref, demo_task), abs=1e-9)
        assert r.avg_bits == r.bits and r.size_mb == pytest.approx(qm.size_mb(32) * r.bits / 32)
    assert rows[1].top1 < rows[0].top1  # 2-bit ResNet-20 without calibration is far below 8-bit
    assert qm.avg_bits() == 5  # the model's own configuration is restored


def test_bad_sweeps(demo_task):
    qm = QuantModel(demo_task.model, calib=demo_task.calib)
    with pytest.raises(MixqError, match=r"^a sweep needs at least one bit-width$"):
        uniform_sweep(qm, demo_task, [])
    with pytest.raises(MixqError, match=r"^bit-widths of a sweep must be distinct, got \[4, 4\]$"):
        uniform_sweep(qm, demo_task, [4, 4])


def test_ray_sweep_equals_serial(demo_task, ray_executor):
    qm = QuantModel(demo_task.model, calib=demo_task.calib)
    serial = uniform_sweep(qm, demo_task, [8, 4, 3, 2], progress=False)
    assert uniform_sweep(qm, demo_task, [8, 4, 3, 2], executor=ray_executor, progress=False) == serial


def test_cli_sweep_json_matches_single_evaluations(demo_only, capsys):
    base = ["eval", "--json", "--no-progress", "--samples", "16", "--n-test", "100"]
    assert main([*base, "--bits", "8", "3"]) == 0
    sweep = json.loads(capsys.readouterr().out)
    assert [r["bits"] for r in sweep["rows"]] == [8, 3]
    assert sweep["executor"] == {"executor": "serial", "workers": 1}
    for row in sweep["rows"]:
        assert main([*base, "--bits", str(row["bits"])]) == 0
        single = json.loads(capsys.readouterr().out)
        assert single["quant_top1"] == row["quant_top1"] and single["fp32_top1"] == sweep["fp32_top1"]
        assert single["size_mb"] == row["size_mb"] and single["avg_bits"] == row["avg_bits"]


def test_cli_errors(demo_only, capsys):
    assert main(["eval", "--bits", "8", "9", "--no-progress"]) == 2
    assert "--bits 9 is out of range" in capsys.readouterr().err
    assert main(["eval", "--bits", "4", "--workers", "2", "--no-progress"]) == 2
    assert "spread a sweep (--bits B1 B2 ...)" in capsys.readouterr().err
