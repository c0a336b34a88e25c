"""recalibrate_run: a finished run calibrated again with other settings, without searching again."""

import json
from dataclasses import replace

import pytest
import torch

import mixq.evoq.pipeline as pipeline
from mixq.bits import Budget
from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.evoq.bitsearch import EvoQConfig
from mixq.evoq.calibrate import LEGACY_DEFAULTS, CalibrationConfig
from mixq.evoq.pipeline import RunOptions, recalibrate_run, run_evoq, run_uniform

OLD = CalibrationConfig(epochs=1, batch_size=8, seed=0, lr=3e-4, lr_scaling="absolute")
NEW = CalibrationConfig(epochs=2, batch_size=8, seed=0, lr=2.5e-3, lr_scaling="relative")


@pytest.fixture(scope="module")
def task():
    return load_task("resnet20-jpeg", samples=16, seed=0, n_test=60)


def _options(calibration: CalibrationConfig, bits: float = 3.0) -> RunOptions:
    return RunOptions(budget=Budget(avg_bits=bits), calibration=calibration, evaluate_uniform=False, progress=False)


def test_uniform_run_recalibrated_equals_a_fresh_run_with_the_new_settings(task, tmp_path):
    old = run_uniform(task, 3, _options(OLD), tmp_path / "old")
    r = recalibrate_run(task, NEW, tmp_path / "old")
    fresh = run_uniform(task, 3, _options(NEW), tmp_path / "fresh")
    assert r["quant_top1"] == pytest.approx(fresh["quant_top1"], abs=1e-9)
    assert r["uncalibrated_top1"] == old["uncalibrated_top1"]
    assert r["calibration"]["epochs"] == 2 and r["calibration"]["lr_scaling"] == "relative"
    assert r["previous_calibrations"] == [{"quant_top1": old["quant_top1"], "calibration": old["calibration"]}]
    assert r["signature"] == fresh["signature"]  # so run_uniform with the new settings resumes it
    assert run_uniform(task, 3, _options(NEW), tmp_path / "old") == r
    assert json.loads((tmp_path / "old" / "result.json").read_text()) == r
    a = torch.load(tmp_path / "old" / "calibrated.pt", weights_only=True)
    b = torch.load(tmp_path / "fresh" / "calibrated.pt", weights_only=True)
    assert json.dumps(sorted(a)) == json.dumps(sorted(b))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_mixed_run_recalibrated_equals_a_fresh_run_and_keeps_its_search(task, tmp_path, monkeypatch):
    config = EvoQConfig(population=4, sample=2, iterations=3, seed=0)
    old = run_evoq(task, _options(OLD), config, tmp_path / "old")
    fresh = run_evoq(task, _options(NEW), config, tmp_path / "fresh")
    assert fresh["bits"] == old["bits"]  # same seed, same search: only the calibration differs

    def no_search(*a, **k):
        raise AssertionError("recalibration must not search")

    monkeypatch.setattr(pipeline, "evoq_search", no_search)
    r = recalibrate_run(task, NEW, tmp_path / "old")
    assert r["quant_top1"] == pytest.approx(fresh["quant_top1"], abs=1e-9)
    assert (r["search_top1"], r["bits"], r["fitness"]) == (old["search_top1"], old["bits"], old["fitness"])
    assert r["previous_calibrations"][-1]["quant_top1"] == old["quant_top1"]
    assert r["total_seconds"] > 0


def test_a_run_calibrated_with_these_settings_is_returned_as_it_is(task, tmp_path, monkeypatch):
    first = run_uniform(task, 4, _options(NEW), tmp_path / "u4")

    def boom(*a, **k):
        raise AssertionError("already calibrated with these settings")

    monkeypatch.setattr(pipeline, "calibrate", boom)
    assert recalibrate_run(task, NEW, tmp_path / "u4") == first


def test_wrong_task_missing_or_corrupt_result_and_a_changed_model_are_refused(task, tmp_path):
    with pytest.raises(MixqError, match="no finished run"):
        recalibrate_run(task, NEW, tmp_path / "nothing")
    run_uniform(task, 3, _options(OLD), tmp_path / "u3")
    other = load_task("resnet20-jpeg", samples=16, seed=1, n_test=60)
    with pytest.raises(MixqError, match="seed: run 0, task 1"):
        recalibrate_run(other, NEW, tmp_path / "u3")
    path = tmp_path / "u3" / "result.json"
    record = json.loads(path.read_text())
    record["uncalibrated_top1"] += 5.0  # as if the run had been made on another checkpoint
    record.pop("signature")
    path.write_text(json.dumps(record))
    with pytest.raises(MixqError, match="rebuilt model"):
        recalibrate_run(task, NEW, tmp_path / "u3")
    path.write_text("{not json")
    with pytest.raises(MixqError, match="cannot read run result"):
        recalibrate_run(task, NEW, tmp_path / "u3")


def test_calibration_record_without_newer_keys_means_their_old_values():
    record = {**{k: v for k, v in OLD.__dict__.items() if k not in LEGACY_DEFAULTS}, "seconds": 3.0,
              "loss_final": 0.1}
    assert CalibrationConfig.from_record(record) == OLD  # lr_scaling missing: absolute, as before it existed
    assert CalibrationConfig.from_record({**record, "lr_scaling": "relative"}).lr_scaling == "relative"
    with pytest.raises(MixqError, match="calibration record"):
        CalibrationConfig.from_record([1, 2])
    with pytest.raises(MixqError, match="calibration lr"):
        CalibrationConfig.from_record({**record, "lr": -1.0})


def test_cli_recalibrates_a_run_folder_and_names_bad_input(tmp_path, capsys):
    from mixq.cli import main

    small = load_task("resnet20-jpeg", samples=16, seed=2, n_test=60)
    old = run_uniform(small, 4, _options(replace(OLD, seed=2)), tmp_path / "u4")
    assert main(["recalibrate", str(tmp_path / "u4"), "--calib-epochs", "2", "--calib-batch-size", "8",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "u4" / "result.json").read_text())
    assert r["calibration"]["epochs"] == 2 and r["calibration"]["seed"] == 2  # the run's seed
    assert f"{old['quant_top1']:8.2f}" in out and f"{r['quant_top1']:8.2f}" in out
    assert main(["recalibrate", str(tmp_path / "missing")]) == 2
    assert "holds no result.json" in capsys.readouterr().err
    (tmp_path / "u4" / "result.json").write_text("[]")
    assert main(["recalibrate", str(tmp_path / "u4")]) == 2
    assert "is not a mixq run result" in capsys.readouterr().err


def test_calib_grid_init_flag_maps_search_to_the_runs_own_range(capsys):
    import argparse

    from mixq.cli.common import add_calibration_args, calibration_from_args

    p = argparse.ArgumentParser()
    add_calibration_args(p)
    assert calibration_from_args(p.parse_args([]), seed=0).grid_init == "omse"  # the default
    assert calibration_from_args(p.parse_args(["--calib-grid-init", "search"]), seed=0).grid_init is None
    assert calibration_from_args(p.parse_args(["--calib-grid-init", "minmax"]), seed=0).grid_init == "minmax"
    with pytest.raises(SystemExit):
        p.parse_args(["--calib-grid-init", "nearest"])
    assert "invalid choice: 'nearest'" in capsys.readouterr().err
