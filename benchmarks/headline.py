"""#13's headline: at equal size, mixed precision against uniform bits with the same calibration.

For each model and seed (the seed draws the 50 calibration images, seeds the search and the calibration's
batch order):

* ``mixed-T``: ``mixq evoq`` at T average weight bits (weights 2..8, activations 8-bit), default search
  (1,000 children, sensitivity-guided) and default feature calibration; top-1 before and after it;
* ``uniform-B``: every layer at B bits, the same default feature calibration (:func:`run_uniform`).

Targets: 2.5 / 3.0 / 3.5 / 4.0 average bits on the CIFAR-10 models, 3.5 / 4.0 / 5.0 / 6.0 on
EfficientNet-Lite0; uniform 2 / 3 / 4 / 8 bits. Runs go headline targets first (the issue's goals), then
the uniform points, then the other targets, each over all seeds, so a stopped session leaves whole rows.
Every run is a folder ``results/headline/MODEL/{mixed-T,uniform-B}/seed-S``; finished runs are skipped
and an interrupted search resumes from its checkpoint.

Part ``samples`` is the paper's Table I on MobileNetV2 at 3.0 bits: the same mixed run with 100 / 200 / 400
calibration images (``mixed-ilp-3.0-nN``; the 50-image row is the headline run). Fitness and calibration both
see all N images (calibration keeps its 200 epochs of 64-image batches), so a run costs about N / 50 times
the 50-image one.

Splits: calibration images from the CIFAR-10 train split (never the validation part), top-1 on the full
test split (10,000 images); EfficientNet-Lite0: 50 calibration images from the ImageNet sample, top-1 on
the other 950. FP32 of the same evaluation beside every row. Settings are the library defaults, chosen on
CIFAR-10 validation (``results/calibration-tuning.md``, ``results/calibration-overfit.json``); nothing here
is chosen by test accuracy. A finished run calibrated with other settings than today's defaults is calibrated
again, its search kept (:func:`recalibrate_run`; the earlier result stays in ``previous_calibrations``).

    python benchmarks/headline.py --models shufflenetv2-x0.5              # run what is missing
    python benchmarks/headline.py --models shufflenetv2-x0.5 --parts headline
    python benchmarks/headline.py --models mobilenetv2-jpeg --parts samples --seeds 0
    python benchmarks/headline.py --no-run --readme README.md              # tables and plot from the folders
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.bits import Budget  # noqa: E402
from mixq.evaluation.task import load_task  # noqa: E402
from mixq.evoq.bitsearch import EvoQConfig  # noqa: E402
from mixq.evoq.calibrate import CalibrationConfig  # noqa: E402
from mixq.evoq.pipeline import RunOptions, recalibrate_run, run_evoq, run_uniform  # noqa: E402
from mixq.fileio import atomic_write_json  # noqa: E402
from mixq.reports.plots import panels  # noqa: E402
from mixq.reports.tables import grid_table, seed_stats, splice_between  # noqa: E402
from mixq.reports.tables import spread_text as _spread  # noqa: E402

OUT = ROOT / "results" / "headline"
SEEDS = (0, 1, 2)
UNIFORM = (2, 3, 4, 8)
CIFAR_TARGETS = (2.5, 3.0, 3.5, 4.0)
TARGETS = {"resnet20-jpeg": CIFAR_TARGETS, "mobilenetv2-jpeg": CIFAR_TARGETS, "shufflenetv2-x0.5": CIFAR_TARGETS,
           "resnet18-jpeg": CIFAR_TARGETS, "efficientnet-lite0": (3.5, 4.0, 5.0, 6.0)}
HEADLINE = {"resnet20-jpeg": (2.5, 3.0), "mobilenetv2-jpeg": (3.0,), "shufflenetv2-x0.5": (3.0,),
            "resnet18-jpeg": (2.5,), "efficientnet-lite0": (4.0, 5.0, 6.0)}
#: The issue's goals: top-1 after calibration at least this (a float), or at most this many points below FP32.
GOALS: dict[tuple[str, float], tuple[str, float]] = {
    ("mobilenetv2-jpeg", 3.0): ("at least", 87.9), ("shufflenetv2-x0.5", 3.0): ("at least", 80.0),
    ("resnet18-jpeg", 2.5): ("at least", 90.2), ("efficientnet-lite0", 4.0): ("below FP32 by at most", 1.5)}
#: The library's calibration defaults over time, oldest first, by the settings that changed: the per-row change
#: table shows each row's top-1 under every one of them that it was calibrated with.
DEFAULT_HISTORY: tuple[tuple[str, dict[str, Any]], ...] = (
    ("absolute lr 3e-4", {"lr": 3e-4, "lr_scaling": "absolute"}),
    ("relative lr 2.5e-3", {"lr": 2.5e-3, "lr_scaling": "relative"}),
    ("step lr 4e-3", {"lr": 4e-3, "lr_scaling": "step"}),
)
MARK = "<!-- headline -->"
#: The paper's Table I, as #13 asks for it: calibration sample counts of the mixed run of this model and target.
SAMPLE_SIZES = (50, 100, 200, 400)
SAMPLES_MODEL, SAMPLES_TARGET = "mobilenetv2-jpeg", 3.0
SAMPLES_MARK = "<!-- headline-samples -->"
INITS = ("uniform", "ilp")
INIT_LABEL = {"uniform": "paper's uniform start", "ilp": "ILP start"}


#: models run in the channels-last memory format (speed only: 1.5-2.8x on EfficientNet-Lite0's forwards,
#: benchmarks/channels_last.py; results equal up to float rounding); recorded in each result.json
CHANNELS_LAST = {"efficientnet-lite0"}


def _options(model: str, seed: int, budget: Budget) -> RunOptions:
    return RunOptions(budget=budget, calibration=CalibrationConfig(seed=seed), evaluate_uniform=False,
                      progress=False, channels_last=model in CHANNELS_LAST)


def _mixed_name(init: str, target: float, samples: int = 50) -> str:
    name = f"mixed-{target}" if init == "uniform" else f"mixed-{init}-{target}"
    return name if samples == 50 else f"{name}-n{samples}"


def run_mixed(model: str, target: float, seed: int, init: str, samples: int = 50) -> None:
    """EvoQ at ``target`` average bits with ``samples`` calibration images, then calibration (skipped when its
    result exists)."""
    out = OUT / model / _mixed_name(init, target, samples) / f"seed-{seed}"
    if not (out / "result.json").is_file():
        task = load_task(model, samples=samples, seed=seed)
        run_evoq(task, _options(model, seed, Budget(avg_bits=target)), EvoQConfig(seed=seed, init=init), out)
        print(f"{model} mixed ({init} start) {target} seed {seed} ({samples} samples) done", flush=True)
    else:
        _recalibrate_stale(model, seed, out)


def _recalibrate_stale(model: str, seed: int, out: Path) -> None:
    """A finished run calibrated with settings other than today's defaults is calibrated again (search kept)."""
    record = json.loads((out / "result.json").read_text())
    if "calibration" in record and not _current(record):
        task = load_task(model, samples=record.get("samples", 50), seed=seed)
        r = recalibrate_run(task, CalibrationConfig(seed=seed), out)
        print(f"{out.relative_to(OUT)} recalibrated: {r['previous_calibrations'][-1]['quant_top1']:.2f} -> "
              f"{r['quant_top1']:.2f}", flush=True)


def run_uni(model: str, bits: int, seed: int) -> None:
    """Uniform ``bits`` with the same calibration (skipped when its result exists)."""
    out = OUT / model / f"uniform-{bits}" / f"seed-{seed}"
    if not (out / "result.json").is_file():
        task = load_task(model, samples=50, seed=seed)
        run_uniform(task, bits, _options(model, seed, Budget(avg_bits=float(bits))), out)
        print(f"{model} uniform {bits} seed {seed} done", flush=True)
    else:
        _recalibrate_stale(model, seed, out)


def _results(model: str, row: str) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted((OUT / model / row).glob("seed-*/result.json"))]


def _row_stats(rs: list[dict[str, Any]], before: str) -> dict[str, Any]:
    """What every summary row holds: seeds, bits, FP32, top-1 before (``before``) and after calibration, the
    seeds calibrated with outdated settings, and the test split (each statistic mean, min, max over seeds)."""
    return {"seeds": sorted(r["seed"] for r in rs),
            "avg_bits": seed_stats([r["avg_bits"] for r in rs]),
            "fp32": seed_stats([r["fp32_top1"] for r in rs]),
            "before": seed_stats([r[before] for r in rs]),
            "after": seed_stats([r["quant_top1"] for r in rs]),
            "stale_calibration": sorted(r["seed"] for r in rs if not _current(r)),
            "n_test": rs[0]["n_test"], "test_split": rs[0]["test_split"]}


def summarise(models: list[str]) -> dict[str, Any]:
    """Per model and row: seeds, size, FP32, top-1 before and after calibration (mean, min, max)."""
    summary: dict[str, Any] = {"models": {}}
    for model in models:
        rows = []
        names = [(f"uniform-{b}", "uniform", "", float(b)) for b in UNIFORM]
        names += [(_mixed_name(i, t), "mixed", i, t) for i in INITS for t in TARGETS[model]]
        for name, kind, init, value in names:
            rs = _results(model, name)
            if not rs:
                continue
            before = "search_top1" if kind == "mixed" else "uncalibrated_top1"
            rows.append({"row": name, "kind": kind, "init": init, "value": value, **_row_stats(rs, before),
                         "size_mb": seed_stats([r["size_mb"] for r in rs]),
                         "below_fp32": seed_stats([r["fp32_top1"] - r["quant_top1"] for r in rs]),
                         "seconds": seed_stats([r["total_seconds"] for r in rs]),
                         "after_by_default": _by_default(rs)})
        if rows:
            summary["models"][model] = rows
    samples = []
    for n in SAMPLE_SIZES:
        rs = _results(SAMPLES_MODEL, _mixed_name("ilp", SAMPLES_TARGET, n))
        if rs:
            samples.append({"samples": n, **_row_stats(rs, "search_top1"),
                            "search_seconds": seed_stats([r["search_seconds"] for r in rs]),
                            "calibration_seconds": seed_stats([r["calibration"]["seconds"] for r in rs])})
    if samples:
        summary["samples"] = {"model": SAMPLES_MODEL, "target_bits": SAMPLES_TARGET, "rows": samples}
    return summary


def _default_label(config: CalibrationConfig) -> str | None:
    """The name of the library default (:data:`DEFAULT_HISTORY`) these settings are (any seed), or None."""
    for label, settings in DEFAULT_HISTORY:
        if config == CalibrationConfig(seed=config.seed, **settings):
            return label
    return None


def _by_default(rs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per earlier or current library default: top-1 after calibration per seed calibrated with it (the run's
    current calibration or one kept in ``previous_calibrations``), ``{label: {seed: top-1}}``."""
    values: dict[str, dict[str, float]] = {}
    for r in rs:
        records = [*r.get("previous_calibrations", []), {"quant_top1": r["quant_top1"],
                                                         "calibration": r.get("calibration")}]
        for c in records:
            label = _default_label(CalibrationConfig.from_record(c["calibration"])) if c.get("calibration") else None
            if label is not None:
                values.setdefault(label, {})[str(r["seed"])] = c["quant_top1"]
    return {label: values[label] for label, _ in DEFAULT_HISTORY if label in values}


def _current(record: dict[str, Any]) -> bool:
    """Whether a run was calibrated with today's default settings (those of its seed)."""
    return "calibration" in record and (
        CalibrationConfig.from_record(record["calibration"]) == CalibrationConfig(seed=record["seed"]))


def _goal(model: str, row: dict[str, Any]) -> str:
    if row["kind"] != "mixed":
        return ""
    goal = GOALS.get((model, row["value"]))
    if goal is None or row["after"] is None:
        return ""
    kind, value = goal
    if kind == "at least":
        met = row["after"]["mean"] >= value
        text = f">= {value}"
    else:
        gap = row["below_fp32"]  # per seed: its own FP32 minus its calibrated top-1 (each seed has its own test images)
        met = gap["mean"] <= value
        text = f"FP32 - {value}"
        if gap["max"] > value >= gap["mean"]:
            text += f" (mean {gap['mean']:.2f} below; worst seed {gap['max']:.2f} below)"
    if row["after"]["n"] < 3:
        return f"{text}: {'met' if met else 'not met'} so far ({row['after']['n']} of 3 seeds)"
    return f"{text}: **{'met' if met else 'not met'}**"


def _gain(rows: dict[str, dict[str, Any]], m: dict[str, Any]) -> str:
    """Mixed at an integer target minus uniform at that width, after calibration; 'no difference' on overlap."""
    target = m["value"]
    if target != math.floor(target):
        return ""
    u = rows.get(f"uniform-{int(target)}")
    if m is None or u is None or m["after"] is None or u["after"] is None:
        return ""
    d = m["after"]["mean"] - u["after"]["mean"]
    overlap = m["after"]["min"] <= u["after"]["max"] and u["after"]["min"] <= m["after"]["max"]
    return f"{d:+.2f} vs uniform {int(target)}" + (" (ranges overlap: no difference)" if overlap else "")


def tables(summary: dict[str, Any]) -> str:
    """One markdown table per model."""
    parts = []
    for model, rows in summary["models"].items():
        by_name = {r["row"]: r for r in rows}
        fp32 = max(rows, key=lambda r: r["fp32"]["n"])["fp32"]  # the same for every seed; the most seeds
        lines = []
        for r in rows:
            if r["kind"] == "uniform":
                label, note, gain = f"uniform {int(r['value'])}-bit", "", ""
            else:
                label = f"EvoQ mixed ({INIT_LABEL[r['init']]}), target {r['value']}"
                note, gain = _goal(model, r), _gain(by_name, r)
            after = _spread(r["after"]) + (" †" if r.get("stale_calibration") else "")
            lines.append([label, f"{r['avg_bits']['mean']:.3f}", f"{r['size_mb']['mean']:.4f}", _spread(r["before"]),
                          after, "; ".join(x for x in (gain, note) if x), str(len(r["seeds"]))])
        head = (f"**{model}**: FP32 {_spread(fp32)} on {rows[0]['n_test']} images ({rows[0]['test_split']}); "
                "50 calibration images per seed")
        table = grid_table(["configuration", "avg bits", "weights MB", "top-1 before calibration", "top-1 calibrated",
                            "mixed - uniform (calibrated); goal", "seeds"], lines)
        if any(r.get("stale_calibration") for r in rows):
            table += ("\n\n† some seeds still calibrated with an earlier default; "
                      "`python benchmarks/headline.py` recalibrates them")
        parts.append(head + "\n\n" + table)
    return "\n\n".join(parts) if parts else "(no finished runs yet)"


def samples_table(summary: dict[str, Any]) -> str:
    """The paper's Table I: the mixed run by number of calibration images (mean [min, max] over seeds)."""
    part = summary.get("samples")
    if not part:
        return "(no finished runs yet)"
    rows = part["rows"]
    lines = [[str(r["samples"]), f"{r['avg_bits']['mean']:.3f}", _spread(r["before"]),
              _spread(r["after"]) + (" †" if r["stale_calibration"] else ""),
              f"{r['search_seconds']['mean'] / 60:.1f}", f"{r['calibration_seconds']['mean'] / 60:.1f}",
              str(len(r["seeds"]))] for r in rows]
    head = (f"**{part['model']}**, EvoQ mixed (ILP start) at {part['target_bits']} average weight bits by number of "
            f"calibration images (search fitness and calibration both use them); FP32 {_spread(rows[0]['fp32'])} on "
            f"{rows[0]['n_test']} images ({rows[0]['test_split']})")
    return head + "\n\n" + grid_table(["calibration images", "avg bits", "top-1 before calibration",
                                         "top-1 calibrated", "search min", "calibration min", "seeds"], lines)


def calibration_change(summary: dict[str, Any]) -> str:
    """Per row: top-1 under each calibration default it was calibrated with (mean [min, max] over the seeds of
    each), and the change from the previous default to today's over the seeds calibrated with both."""
    today = _default_label(CalibrationConfig())
    labels = [label for label, _ in DEFAULT_HISTORY]
    shown = labels[:labels.index(today) + 1] if today in labels else labels
    body = []
    for model, rows in summary["models"].items():
        for r in rows:
            by = r.get("after_by_default", {})
            if r.get("stale_calibration") or len(by) < 2:
                continue
            earlier = [label for label in shown[:-1] if label in by]
            change = ""
            if today in by and earlier:
                both = sorted(set(by[today]) & set(by[earlier[-1]]))
                diffs = [by[today][k] - by[earlier[-1]][k] for k in both]
                change = f"{np.mean(diffs):+.2f} ({len(both)} seed{'s' * (len(both) > 1)})" if both else ""
            body.append([model, r["row"], str(len(r["seeds"])), _spread(r["before"]),
                         *[_spread(seed_stats(list(by[label].values()))) if label in by else "-" for label in shown],
                         change])
    if not body:
        return "(no row recalibrated yet)"
    return grid_table(["model", "row", "seeds", "before calibration",
                       *[f"{label}{' (default)' if label == today else ''}" for label in shown],
                       "change from the previous default (paired seeds)"], body)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Calibrated top-1 against weight MB per model: uniform and mixed, mean with min-max bars, FP32 line."""
    models = list(summary["models"])
    if not models:
        return
    with panels(len(models), path, legend_size=7) as axes:
        for ax, model in zip(axes, models):
            rows = summary["models"][model]
            for kind, init, style, color in (("uniform", "", "^-", "tab:gray"),
                                              ("mixed", "uniform", "s-", "tab:orange"),
                                              ("mixed", "ilp", "o-", "tab:blue")):
                rs = [r for r in rows if r["kind"] == kind and r["init"] == init and r["after"] is not None]
                if not rs:
                    continue
                name = "uniform bits" if kind == "uniform" else f"mixed, {INIT_LABEL[init]}"
                x = [r["size_mb"]["mean"] for r in rs]
                for key, alpha, label in (("after", 1.0, "calibrated"), ("before", 0.35, "before calibration")):
                    y = np.array([r[key]["mean"] for r in rs])
                    err = np.maximum(0.0, np.array([[r[key]["mean"] - r[key]["min"] for r in rs],
                                                    [r[key]["max"] - r[key]["mean"] for r in rs]]))
                    ax.errorbar(x, y, yerr=err, fmt=style, ms=4, capsize=3, alpha=alpha, label=f"{name}, {label}",
                                color=color)
            ax.axhline(rows[0]["fp32"]["mean"], color="k", lw=0.8, ls="--", label="FP32")
            lows = [r["after"]["min"] for r in rows if r["after"] is not None and r["avg_bits"]["mean"] >= 2.4]
            ax.set_ylim(max(0.0, min(lows) - 8), rows[0]["fp32"]["mean"] + 2)
            ax.set(xlabel="weights MB", ylabel="top-1 %", title=model)


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shufflenetv2-x0.5"], choices=sorted(TARGETS))
    parts = ["headline", "uniform", "rest", "samples"]
    p.add_argument("--parts", nargs="+", default=parts, choices=parts)
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--uniform", nargs="+", type=int, default=list(UNIFORM), choices=UNIFORM,
                   help="uniform widths to run (default all; the headline ones first is e.g. --uniform 3)")
    p.add_argument("--init", nargs="+", default=["ilp"], choices=INITS,
                   help="EvoQ start(s) of the mixed rows (default: ilp, chosen on validation; see README)")
    p.add_argument("--targets", nargs="+", type=float,
                   help="only these mixed targets (average bits) of the chosen parts (default: all of them)")
    p.add_argument("--no-run", action="store_true", help="only summarise the finished runs")
    p.add_argument("--readme", type=Path, help="write the tables into this README between the markers")
    a = p.parse_args()
    os.chdir(ROOT)
    if not a.no_run:
        for model in a.models:
            wanted = [t for t in TARGETS[model] if a.targets is None or t in a.targets]
            if "headline" in a.parts:
                for t in (t for t in HEADLINE[model] if t in wanted):
                    for init in a.init:
                        for seed in a.seeds:
                            run_mixed(model, t, seed, init)
            if "uniform" in a.parts:
                for b in a.uniform:
                    for seed in a.seeds:
                        run_uni(model, b, seed)
            if "rest" in a.parts:
                for t in wanted:
                    if t not in HEADLINE[model]:
                        for init in a.init:
                            for seed in a.seeds:
                                run_mixed(model, t, seed, init)
            if "samples" in a.parts and model == SAMPLES_MODEL:
                for n in SAMPLE_SIZES[1:]:
                    for seed in a.seeds:
                        run_mixed(model, SAMPLES_TARGET, seed, "ilp", n)
    summary = summarise(list(TARGETS))
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "summary.json", summary)
    plot(summary, OUT / "headline.png")
    table = tables(summary)
    print(table)
    change = calibration_change(summary)
    print(change)
    samples = samples_table(summary)
    print(samples)
    if a.readme:
        splice_between(a.readme, MARK, table)
        splice_between(a.readme, "<!-- headline-calibration -->", change)
        if SAMPLES_MARK in a.readme.read_text():
            splice_between(a.readme, SAMPLES_MARK, samples)


if __name__ == "__main__":
    main()
