"""#15's measurements: one Pareto run against single-budget searches, and activation genes at equal BitOps.

Part ``front`` (weight bits only, cost = average weight bits, activations 8-bit): for each seed, EvoQ at
each single budget in TARGETS (default settings, 1,000 children, population 16) and one ``--pareto bits
--at TARGETS`` run with its defaults (the warm-started sweep: 1,500 children over the four budgets), whose
best front point within each target is evaluated too. Reported:
search seconds of the Pareto run over the mean single-budget search (the same machine, one job at a time),
and top-1 of the Pareto point at each target minus the single-budget search's (no calibration: the claim
is about the search).

Part ``wa`` (cost = BitOps): at each BitOps budget (the BitOps of a uniform WxAy model), EvoQ with weight
genes only (inputs 8-bit) against EvoQ with weight and activation genes (inputs from {4, 6, 8}), both
followed by the same default feature calibration.

Every run is a folder under ``results/pareto-study/MODEL/...`` (finished runs are skipped, interrupted
searches resume). Seeds draw the 50 train calibration images and seed the search; top-1 on the full
CIFAR-10 test split, FP32 beside. Nothing here is chosen by looking at test accuracy: the settings are the
defaults, fixed before the runs.

    python benchmarks/pareto_study.py --models resnet20-jpeg --parts front wa
    python benchmarks/pareto_study.py --no-run --readme README.md     # tables and plot from the run folders
"""

from __future__ import annotations

import argparse
import json
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
from mixq.evoq.pareto import SWEEP_DEFAULTS  # noqa: E402
from mixq.evoq.pipeline import ParetoOptions, RunOptions, run_evoq, run_evoq_pareto  # noqa: E402
from mixq.fileio import atomic_write_json  # noqa: E402
from mixq.provenance import versions  # noqa: E402
from mixq.quant.cost import CostModel  # noqa: E402
from mixq.quant.model import QuantModel  # noqa: E402
from mixq.reports.pareto import write_pareto_report  # noqa: E402
from mixq.reports.plots import panels  # noqa: E402
from mixq.reports.tables import grid_table, splice_between  # noqa: E402
from mixq.reports.tables import spread_text as _spread  # noqa: E402

OUT = ROOT / "results" / "pareto-study"
SEEDS = (0, 1, 2)
TARGETS = (2.5, 3.0, 3.5, 4.0)
WA_BUDGETS = {"resnet20-jpeg": ((3, 8),), "mobilenetv2-jpeg": ((3, 8),)}  # the BitOps of uniform (W, A)
MARK_FRONT = "<!-- pareto-front -->"
MARK_WA = "<!-- pareto-wa -->"


def _done(folder: Path, name: str) -> dict[str, Any] | None:
    f = folder / name
    return json.loads(f.read_text()) if f.is_file() else None


def run_front(model: str, seed: int) -> None:
    """Single-budget searches at every target, then one Pareto run over average bits."""
    task = load_task(model, samples=50, seed=seed)
    for t in TARGETS:
        out = OUT / model / f"single-{t}" / f"seed-{seed}"
        if _done(out, "result.json") is None:
            run_evoq(task, RunOptions(budget=Budget(avg_bits=t), calibrate=False, evaluate_uniform=False,
                                      progress=False), EvoQConfig(seed=seed), out)
    out = OUT / model / "pareto-bits" / f"seed-{seed}"
    if _done(out, "pareto.json") is None:
        config = EvoQConfig(population=SWEEP_DEFAULTS.population, iterations=SWEEP_DEFAULTS.iterations, seed=seed)
        run_evoq_pareto(task, RunOptions(budget=Budget(avg_bits=8), progress=False), config,
                        ParetoOptions(cost="bits", points=8, at=TARGETS, uniform_bits=(2, 3, 4, 8)), out)
        write_pareto_report(out)


def run_wa(model: str, seed: int) -> None:
    """Weight-only against weight + activation genes at each BitOps budget, calibrated."""
    task = load_task(model, samples=50, seed=seed)
    for w, a in WA_BUDGETS[model]:
        for kind, acts in (("w", ()), ("wa", (4, 6, 8))):
            out = OUT / model / f"wa-W{w}A{a}" / kind / f"seed-{seed}"
            if _done(out, "result.json") is not None:
                continue
            cost = CostModel.from_model(QuantModel(task.model, calib=task.calib[:2]), tuple(task.calib.shape[1:]))
            budget = Budget(bitops=cost.bitops(w, a))
            run_evoq(task, RunOptions(budget=budget, calibration=CalibrationConfig(seed=seed), progress=False),
                     EvoQConfig(seed=seed, act_choices=acts), out)


def summarise(models: list[str]) -> dict[str, Any]:
    """Per model: the front comparison at every target and the W/A comparison, from the run folders."""
    out: dict[str, Any] = {"models": {}, "seeds": list(SEEDS), "targets": list(TARGETS), "samples": 50,
                           "calib_split": "train", "test_split": "test", "versions": versions()}
    for model in models:
        m: dict[str, Any] = {"front": [], "wa": []}
        fronts = {s: _done(OUT / model / "pareto-bits" / f"seed-{s}", "pareto.json") for s in SEEDS}
        singles = {(t, s): _done(OUT / model / f"single-{t}" / f"seed-{s}", "result.json")
                   for t in TARGETS for s in SEEDS}
        ratios, work = [], []
        for s, f in fronts.items():
            done = [singles[t, s] for t in TARGETS if singles[t, s] is not None]
            if f is not None and done:
                ratios.append(f["seconds"]["search"] / float(np.mean([r["search_seconds"] for r in done])))
                work.append(f["prefix_cache"]["computed"] / float(np.mean([r["prefix_cache"]["computed"]
                                                                         for r in done])))
        m["search_ratio"] = ratios  # wall clock: only meaningful when nothing else ran beside (see pareto_speed.py)
        m["work_ratio"] = work  # quantized-layer forwards computed: the same on any machine
        for t in TARGETS:
            row: dict[str, Any] = {"target": t, "single": [], "pareto": [], "diff": [], "single_bits": [],
                                   "pareto_bits": []}
            for s in SEEDS:
                single, front = singles[t, s], fronts[s]
                if single is None or front is None:
                    continue
                index = next(x["index"] for x in front["targets"] if x["budget"] == t)
                point = next(p for p in front["front"] if p["front_index"] == index)
                row["single"].append(single["search_top1"])
                row["pareto"].append(point["top1"])
                row["diff"].append(point["top1"] - single["search_top1"])
                row["single_bits"].append(single["avg_bits"])
                row["pareto_bits"].append(point["avg_bits"])
            m["front"].append(row)
        for w, a in WA_BUDGETS.get(model, ()):
            for kind in ("w", "wa"):
                recs = [_done(OUT / model / f"wa-W{w}A{a}" / kind / f"seed-{s}", "result.json") for s in SEEDS]
                recs = [r for r in recs if r is not None]
                if recs:
                    m["wa"].append({"budget": f"W{w}A{a}", "kind": kind, "seeds": [r["seed"] for r in recs],
                                    "bitops": recs[0]["target_bitops"], "fp32": recs[0]["fp32_top1"],
                                    "search": [r["search_top1"] for r in recs],
                                    "calibrated": [r["quant_top1"] for r in recs],
                                    "uniform": [r.get("uniform_top1") for r in recs],
                                    "uniform_bits": recs[0]["uniform_bits"],
                                    "avg_bits": [r["avg_bits"] for r in recs],
                                    "mean_input_bits": [float(np.mean(r["input_bits"])) for r in recs],
                                    "search_seconds": [r["search_seconds"] for r in recs]})
        out["models"][model] = m
    return out


def tables(summary: dict[str, Any]) -> tuple[str, str]:
    """The README's two tables: the front against single budgets, and W/A against W-only."""
    front_rows, wa_rows = [], []
    for model, m in summary["models"].items():
        for r in m["front"]:
            if r["single"]:
                front_rows.append([model, f"{r['target']}", f"{len(r['single'])}", _spread(r["single"]),
                                   _spread(r["pareto"]), _spread(r["diff"], 2), _spread(r["pareto_bits"], 3)])
        if m["work_ratio"]:
            front_rows.append([model, "layer forwards computed, Pareto run / one single search",
                               f"{len(m['work_ratio'])}", "", "", _spread(m["work_ratio"], 2) + "x", ""])
        for r in m["wa"]:
            label = "weights only (inputs 8-bit)" if r["kind"] == "w" else "weights + inputs {4, 6, 8}"
            wa_rows.append([model, f"{r['budget']} ({r['bitops'] / 1e9:.3f} G)", label, f"{len(r['seeds'])}",
                            f"{r['fp32']:.2f}", _spread(r["search"]), _spread(r["calibrated"]),
                            _spread(r["avg_bits"], 3), _spread(r["mean_input_bits"], 2)])
    front = grid_table(["model", "avg-bits target", "seeds", "single-budget EvoQ top-1", "Pareto point top-1",
                        "difference", "Pareto point avg bits"], front_rows)
    wa = grid_table(["model", "BitOps budget (as uniform)", "genes", "seeds", "FP32 top-1", "top-1 after search",
                     "top-1 calibrated", "avg weight bits", "mean input bits"], wa_rows)
    return front, wa


def plot(summary: dict[str, Any], path: Path) -> None:
    """Seed-0 fronts (top-1 vs average bits) with the single-budget searches and uniform points."""
    models = [m for m in summary["models"] if _done(OUT / m / "pareto-bits" / "seed-0", "pareto.json")]
    if not models:
        return
    with panels(len(models), path, panel_size=(5.5, 4.0)) as axes:
        for ax, model in zip(axes, models):
            f = _done(OUT / model / "pareto-bits" / "seed-0", "pareto.json")
            pts = sorted(f["front"], key=lambda p: p["avg_bits"])
            ax.plot([p["avg_bits"] for p in pts], [p["top1"] for p in pts], "o-", ms=4, label="one Pareto run")
            single = [(_done(OUT / model / f"single-{t}" / "seed-0", "result.json"), t) for t in TARGETS]
            single = [(r, t) for r, t in single if r is not None]
            ax.plot([r["avg_bits"] for r, _ in single], [r["search_top1"] for r, _ in single], "s", ms=7,
                    mfc="none", label="single-budget searches")
            uni = [u for u in f["uniform"] if u["act_bits"] == 8]
            ax.plot([u["avg_bits"] for u in uni], [u["top1"] for u in uni], "^", color="gray", label="uniform")
            ax.axhline(f["fp32"]["top1"], color="k", lw=0.8, ls="--", label="FP32")
            ax.set_xlim(1.8, 8.2)
            ax.set_ylim(max(0, min(p["top1"] for p in pts if p["avg_bits"] >= 2.4) - 5), f["fp32"]["top1"] + 2)
            ax.set(xlabel="average weight bits", ylabel="top-1 % (no calibration)", title=f"{model}, seed 0")


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20-jpeg"], choices=sorted(WA_BUDGETS))
    p.add_argument("--parts", nargs="+", default=["front", "wa"], choices=["front", "wa"])
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--no-run", action="store_true", help="only summarise the finished runs")
    p.add_argument("--readme", type=Path, help="write the tables into this README between the markers")
    a = p.parse_args()
    os.chdir(ROOT)
    if not a.no_run:
        for model in a.models:
            for seed in a.seeds:
                if "front" in a.parts:
                    run_front(model, seed)
                if "wa" in a.parts:
                    run_wa(model, seed)
    summary = summarise(sorted(WA_BUDGETS))
    atomic_write_json(OUT / "summary.json", summary)
    plot(summary, OUT / "fronts.png")
    front, wa = tables(summary)
    print(front, "\n\n" + wa)
    if a.readme:
        splice_between(a.readme, MARK_FRONT, front)
        splice_between(a.readme, MARK_WA, wa)


if __name__ == "__main__":
    main()
