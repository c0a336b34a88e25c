"""run_uniform: the uniform baseline with the same calibration as an EvoQ run (#13's equal-size comparison)."""

import pytest

import mixq.evoq.pipeline as pipeline
from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.sweep import uniform_sweep
from mixq.evaluation.task import load_task
from mixq.evoq.calibrate import CalibrationConfig
from mixq.evoq.pipeline import RunOptions, run_uniform
from mixq.quant.model import QuantModel, load_calibrated


@pytest.fixture(scope="module")
def task():
    return load_task("resnet20-jpeg", samples=16, seed=0, n_test=60)


def _options(calibrate=True, epochs=2):
    return RunOptions(budget=Budget(avg_bits=8), calibrate=calibrate,
                      calibration=CalibrationConfig(epochs=epochs, batch_size=8, seed=0), progress=False)


def test_uncalibrated_top1_and_size_match_the_uniform_sweep(task, tmp_path):
    r = run_uniform(task, 3, _options(calibrate=False), tmp_path / "u3")
    qm = QuantModel(task.model, calib=task.calib)
    row = uniform_sweep(qm, task, [3], progress=False)[0]
    assert r["uncalibrated_top1"] == pytest.approx(row.top1, abs=1e-9)
    assert r["quant_top1"] == r["uncalibrated_top1"]
    qm.set_bits(3)
    assert r["avg_bits"] == pytest.approx(3.0) and r["size_mb"] == pytest.approx(qm.size_mb())
    assert r["uniform_bits"] == 3 and r["seed"] == 0 and r["samples"] == 16 and r["n_test"] == 60
    assert r["fp32_top1"] == pytest.approx(task.top1(task.model, progress=False))
    assert "calibrated.pt" not in {p.name for p in (tmp_path / "u3").iterdir()}


def test_calibrated_result_is_reproduced_from_its_saved_weights(task, tmp_path, top1_by_hand):
    r = run_uniform(task, 4, _options(), tmp_path / "u4")
    assert r["calibration"]["epochs"] == 2 and r["calibration"]["seconds"] > 0
    qm = QuantModel(task.model, calib=task.calib)
    qm.set_bits(4)
    load_calibrated(qm, tmp_path / "u4" / "calibrated.pt")
    assert top1_by_hand(qm, task) == pytest.approx(r["quant_top1"], abs=1e-9)


def test_finished_run_is_returned_and_other_settings_refused(task, tmp_path, monkeypatch):
    first = run_uniform(task, 2, _options(epochs=1), tmp_path / "u2")

    def boom(*a, **k):
        raise AssertionError("a finished run must not calibrate again")

    monkeypatch.setattr(pipeline, "calibrate", boom)
    assert run_uniform(task, 2, _options(epochs=1), tmp_path / "u2") == first
    with pytest.raises(MixqError, match=r"calibration\.epochs.*1.*3"):
        run_uniform(task, 2, _options(epochs=3), tmp_path / "u2")
    with pytest.raises(MixqError, match=r"uniform_bits"):
        run_uniform(task, 3, _options(epochs=1), tmp_path / "u2")
    monkeypatch.undo()
    again = run_uniform(task, 2, _options(epochs=3), tmp_path / "u2", overwrite=True)
    assert again["calibration"]["epochs"] == 3


@pytest.mark.parametrize("bits", [1, 9, 3.0, True, "4"])
def test_bits_outside_2_to_8_are_refused(task, tmp_path, bits):
    with pytest.raises(MixqError, match=r"uniform bits must be an integer in 2\.\.8"):
        run_uniform(task, bits, _options(calibrate=False), tmp_path / "bad")
