"""`mixq evoq` end to end on the embedded demo: artefacts, resume, bad input."""

import json

import pytest

from mixq.cli import main


def test_evoq_writes_artefacts(demo_only, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["evoq", "--iterations", "15", "--samples", "16", "--n-test", "100", "--no-calibrate",
            "--no-progress", "--out", str(out), "--target-bits", "3.5"]
    assert main(argv) == 0
    for name in ("config.json", "result.json", "report.md", "fitness.png", "bits.png", "sensitivity.png",
                 "sensitivity.json", "sensitivity.csv", "search_state.json"):
        assert (out / name).exists(), name
    r = json.loads((out / "result.json").read_text())
    for key in ("model", "fp32_top1", "search_top1", "quant_top1", "avg_bits", "size_mb", "search_seconds",
                "seed", "samples", "versions"):
        assert key in r
    assert r["avg_bits"] <= 3.5 and len(r["best_history"]) == 16
    cfg = json.loads((out / "config.json").read_text())
    assert list(cfg) == r["layers"] and list(cfg.values()) == r["bits"]
    assert "EvoQ search" in capsys.readouterr().out
    # running again resumes the finished search instead of searching anew
    assert main(argv) == 0
    assert json.loads((out / "result.json").read_text())["bits"] == r["bits"]


def test_evoq_bad_budget(demo_only, capsys):
    assert main(["evoq", "--target-bits", "1.5", "--no-progress", "--iterations", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixq: error:") and "infeasible" in err


def test_evoq_with_calibration(demo_only, tmp_path, top1_by_hand):
    import mixq
    from mixq.export.run import model_from_run

    out = tmp_path / "cal"
    argv = ["evoq", "--iterations", "5", "--samples", "8", "--n-test", "50", "--calib-epochs", "2",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["calibration"]["epochs"] == 2 and r["calibration"]["learn_scale"]
    assert (out / "calibrated.pt").exists()
    # the reported numbers belong to the files saved: calibrated model, searched bits, FP32
    task, qm, calibrated = model_from_run(out, n_test=50)
    assert calibrated and r["quant_top1"] == pytest.approx(top1_by_hand(qm, task), abs=1e-6)
    searched = mixq.quantize(task.model, mixq.BitConfig.load(out / "config.json"), task.calib)
    assert r["search_top1"] == pytest.approx(top1_by_hand(searched, task), abs=1e-6)
    assert r["fp32_top1"] == pytest.approx(top1_by_hand(task.model, task), abs=1e-6)
