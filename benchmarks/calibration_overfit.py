"""Does feature calibration over-fit its 50 samples? Output error on the samples and on held-out images.

For each finished headline run folder that kept its ``calibrated.pt`` (``results/headline/MODEL/ROW/seed-S``,
written by ``benchmarks/headline.py`` or ``benchmarks/export_results.py`` on this machine), the run's
quantized model is built twice, as searched (uncalibrated) and calibrated, and compared with the FP32
model: output MSE on the run's 50 calibration samples (what calibration minimises) and on held-out images
of the CIFAR-10 validation split (carved from train, disjoint from every calibration draw; never the test
split), plus top-1 on those validation images. Calibration that lowers the samples' error but raises the
held-out error is over-fitting.

    python benchmarks/calibration_overfit.py headline/resnet18-jpeg/mixed-ilp-2.5/seed-0 \\
        headline/shufflenetv2-x0.5/mixed-ilp-3.0/seed-0 [--n-val 2000]

``--grid-init minmax`` recalibrates with another initial weight grid, ``--lr`` / ``--lr-scaling relative`` with
another learning rate or its scaling by each tensor's size (rows keyed ``RUN (setting value, ...)``).
``--holdout H`` instead recalibrates the searched model with the run's calibration settings and H of its
50 samples held out for early stopping (``CalibrationConfig.holdout``), and measures that model the same way
(rows keyed ``RUN (holdout H)``).

Rows go to ``results/calibration-overfit.json`` (merged by run folder).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from mixq.bits import BitConfig
from mixq.evaluation.metrics import output_mse, predict
from mixq.evaluation.task import load_task
from mixq.evoq.calibrate import LR_SCALINGS, CalibrationConfig, calibrate
from mixq.fileio import atomic_write_json
from mixq.provenance import versions
from mixq.quant.model import QuantModel, load_calibrated
from mixq.reports.tables import grid_table, splice_between

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "calibration-overfit.json"


def _val_outputs(model: torch.nn.Module, task, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    outs, labels = [], []
    with torch.no_grad():
        for x, y in task.test_batches(batch_size):
            outs.append(model(x))
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def measure(run: str, n_val: int, batch_size: int, changes: dict | None = None) -> dict:
    """Uncalibrated vs calibrated against FP32, on the calibration samples and on validation images.

    Args:
        run: run folder under results/.
        n_val: validation images.
        batch_size: evaluation batch size.
        changes: calibration settings that differ from the run's (empty: use the run's calibrated model).

    Returns:
        The row.
    """
    changes = dict(changes or {})
    folder = RESULTS / run
    result = json.loads((folder / "result.json").read_text())
    # without a calibrated.pt (not kept for every run) the run's calibration is redone with its recorded settings:
    # it is deterministic (seeded), the export reproduces the recorded top-1 exactly
    recal = bool(changes) or not (folder / "calibrated.pt").is_file()
    task = load_task(result["model"], samples=int(result["samples"]), seed=int(result["seed"]), n_test=n_val,
                     eval_split="val")
    bits = BitConfig.load(folder / "config.json") if (folder / "config.json").is_file() else int(
        result["uniform_bits"])
    ref_calib = predict(task.model, task.calib)
    ref_val, labels = _val_outputs(task.model, task, batch_size)
    tags = [f"{k} {v}" for k, v in changes.items()]
    recorded = CalibrationConfig.from_record(result["calibration"]) if result.get("calibration") else None
    row = {"run": f"{run} ({', '.join(tags)})" if tags else run, **changes,
           # the settings of the model measured (the run's own, when nothing changes)
           "calibration_settings": None if recorded is None else asdict(replace(recorded, **changes)),
           "model": result["model"], "seed": result["seed"], "samples": result["samples"],
           "val_images": len(labels), "fp32_val_top1": 100.0 * float((ref_val.argmax(1) == labels).float().mean())}
    for name, calibrated in (("searched", False), ("calibrated", True)):
        qm = QuantModel(task.model, calib=task.calib, act_bits=int(result.get("act_bits", 8)),
                        weight_range=result.get("weight_range", "minmax"),
                        channels_last=bool(result.get("channels_last", False)))
        qm.set_bits(bits)
        if calibrated and recal:
            cal = calibrate(qm, task.calib, replace(recorded, **changes), progress=False)
            row["best_epoch"], row["holdout_history"] = cal.best_epoch, cal.holdout_history
            row["refit_epochs"] = cal.refit_epochs
        elif calibrated:
            load_calibrated(qm, folder / "calibrated.pt")
        with torch.no_grad():
            out_calib = predict(qm, task.calib)
        out_val, _ = _val_outputs(qm, task, batch_size)
        row[name] = {"calib_mse": output_mse(out_calib, ref_calib), "val_mse": output_mse(out_val, ref_val),
                     "val_top1": 100.0 * float((out_val.argmax(1) == labels).float().mean())}
    s, c = row["searched"], row["calibrated"]
    row["calib_mse_ratio"] = c["calib_mse"] / s["calib_mse"]
    row["val_mse_ratio"] = c["val_mse"] / s["val_mse"]
    row["overfits"] = row["calib_mse_ratio"] < 1 <= row["val_mse_ratio"]
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    body = [[r["run"], f"{r['searched']['calib_mse']:.4g} -> {r['calibrated']['calib_mse']:.4g}",
             f"{r['searched']['val_mse']:.4g} -> {r['calibrated']['val_mse']:.4g}",
             f"{r['fp32_val_top1']:.2f}", f"{r['searched']['val_top1']:.2f} -> {r['calibrated']['val_top1']:.2f}",
             str(r["val_images"]), "yes" if r["overfits"] else "no",
             str(r.get("best_epoch", "-"))] for r in rows]
    return grid_table(["run", "output MSE, 50 samples (searched -> calibrated)",
                       "output MSE, validation", "FP32 val top-1", "val top-1", "val images", "over-fits",
                       "epoch kept"], body)


def compare(rows: list[dict], tag: str, baseline: str | None = None) -> str:
    """Markdown table: each run's calibration (or ``baseline``'s settings) against the same run recalibrated
    with ``tag``'s settings.

    Args:
        rows: the results file's rows.
        tag: the settings as they appear in a row key, e.g. ``"lr 0.0025, lr_scaling relative"``.
        baseline: the settings of the rows compared against, as ``tag`` (None: the run's own calibrated model,
            rows keyed by the bare run folder).

    Returns:
        The table, with a last line giving the geometric mean of the validation-MSE ratios and the mean
        validation top-1 difference over the runs that have both rows.
    """
    by_run = {r["run"]: r for r in rows}
    runs = sorted({r["run"].split(" (")[0] for r in rows})
    body, ratios, diffs = [], [], []
    for run in runs:
        base = by_run.get(run if baseline is None else f"{run} ({baseline})")
        other = by_run.get(f"{run} ({tag})")
        if base is None or other is None:
            continue
        b, o = base["calibrated"], other["calibrated"]
        ratios.append(o["val_mse"] / b["val_mse"])
        diffs.append(o["val_top1"] - b["val_top1"])
        body.append([run, f"{base['searched']['val_mse']:.4g}", f"{b['val_mse']:.4g}", f"{o['val_mse']:.4g}",
                     f"{ratios[-1]:.2f}", f"{base['searched']['val_top1']:.2f}", f"{b['val_top1']:.2f}",
                     f"{o['val_top1']:.2f}"])
    base_name = "run's calibration" if baseline is None else baseline
    if not body:
        return f"no run has both the ({base_name}) and the ({tag}) row"
    gmean = float(np.exp(np.mean(np.log(ratios))))
    text = grid_table(["run", "val MSE searched", base_name, tag, "ratio", "val top-1 searched", base_name, tag],
                      body)
    return (f"{text}\n\n{len(body)} runs: validation output MSE ratio ({tag} / {base_name}), geometric mean "
            f"{gmean:.2f}; validation top-1 difference, mean {np.mean(diffs):+.2f} points "
            f"[{min(diffs):+.2f}, {max(diffs):+.2f}]")


def _load() -> dict:
    """The results file's content."""
    return json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}


def _merge(row: dict) -> dict:
    """Add a row to the results file (a row of the same key replaced) and return its content; the file is read
    just before writing, so rows another run of this script added meanwhile stay."""
    data = _load()
    rows = {r["run"]: r for r in data["rows"]} | {row["run"]: row}
    data = {"rows": sorted(rows.values(), key=lambda r: r["run"]), "split": "CIFAR-10 validation (from train)",
            "versions": versions()}
    atomic_write_json(OUT, data)
    return data


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders under results/ (none: only print the table)")
    p.add_argument("--n-val", type=int, default=2000, help="validation images (class-balanced subset)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--holdout", type=int, default=0,
                   help="recalibrate with this many of the samples held out for early stopping (0: the run's model)")
    p.add_argument("--grid-init", choices=["minmax", "omse", "aciq"],
                   help="recalibrate with this initial weight grid instead of the run's (default: the run's model)")
    p.add_argument("--refit", action="store_true",
                   help="with --holdout: choose the epochs on the held-out samples, then recalibrate on all of them")
    p.add_argument("--lr", type=float, help="recalibrate with this learning rate")
    p.add_argument("--lr-scaling", choices=list(LR_SCALINGS),
                   help="recalibrate with this learning-rate scaling (relative: lr x each tensor's RMS; step: lr x "
                        "its layer's quantization-step RMS)")
    p.add_argument("--compare", metavar="TAG",
                   help='also compare the default calibration with the rows of these settings, e.g. '
                        '"lr 0.0025, lr_scaling relative" (README markers <!-- calibration-compare -->)')
    p.add_argument("--baseline", metavar="TAG",
                   help="with --compare: compare against the rows of these settings instead of each run's own "
                        "calibrated model (whose settings change when the default does)")
    p.add_argument("--marker", default="calibration-compare",
                   help="README marker name of the --compare table (default %(default)s)")
    p.add_argument("--readme", type=Path, help="write the table(s) into this README between the markers")
    a = p.parse_args()
    changes = {k: v for k, v in (("holdout", a.holdout), ("refit", a.refit), ("grid_init", a.grid_init),
                                 ("lr", a.lr), ("lr_scaling", a.lr_scaling)) if v}
    data = _load()
    for run in a.runs:
        data = _merge(measure(run, a.n_val, a.batch_size, changes))  # saved at once: a stop loses one run
        print(f"{run} done", flush=True)
    text = table(data["rows"])
    print(text)
    if a.readme:
        splice_between(a.readme, "<!-- calibration-overfit -->", text)
    if a.compare:
        comparison = compare(data["rows"], a.compare, a.baseline)
        print(comparison)
        if a.readme:
            splice_between(a.readme, f"<!-- {a.marker} -->", comparison)


if __name__ == "__main__":
    main()
