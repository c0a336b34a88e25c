"""Does the search's weight range matter once the model is calibrated? Measured on CIFAR-10 validation only.

Why this study: the EvoQ search scores configurations with the paper's min/max weight ranges, but feature
calibration restarts every layer's grid from its OMSE (MSE-optimal clipping) range before learning it. At 2 and
3 bits the two ranges quantize very differently, so the search may prefer or avoid low widths for reasons that
vanish after calibration: its fitness ranks configurations by an error the final model never has. Where mixing
did not beat uniform + calibration (ResNet-20 at 3.0 bits) or missed its goal (ResNet-18 at 2.5 bits), this
mismatch is a candidate cause (#13: "find out why ... and fix what is wrong").

For each model, target, seed and search range (``minmax``, the default, against ``omse``), one full EvoQ run
(ILP start, default search and calibration, 50 train calibration images drawn by the seed) evaluated on the
fixed validation part of CIFAR-10 train (5,000 images, never drawn for calibration): top-1 of the searched
model before calibration and after it. No test image is read. Runs are folders
``results/search-range/MODEL/TARGET/RANGE/seed-S`` (finished runs are skipped, an interrupted one resumes);
the summary goes to ``results/search-range/summary.json`` and ``results/search-range/README.md``.

The mismatch can also be removed from the other side: arm ``minmax-own-grid`` keeps the ``minmax`` run's search
and calibrates it again with its learned grids initialised at the search's own (min/max) ranges
(``CalibrationConfig(grid_init=None)``) instead of OMSE (:func:`~mixq.evoq.pipeline.recalibrate_run` on a copy
of the run; the OMSE-initialised calibration stays in its ``previous_calibrations``). This arm was added after
the first two ResNet-20 seeds of the other two had been seen (they showed OMSE ranges hurt at 2 bits), before
any of its own runs.

Decision rules, fixed before any run of the arm they judge: the default search range becomes ``omse`` only if,
over 3 seeds, the paired difference (omse - minmax, same seed) of calibrated validation top-1 is above 0 on every
seed in at least two of the rows and its mean is not below -0.1 on any row; otherwise ``minmax`` (the paper's)
stays. The same rule on (minmax-own-grid - minmax) decides whether calibration's default ``grid_init`` becomes
the search's own range. Caveat: the validation images are training images of the checkpoints (FP32 97.2 % on
ResNet-20, 99.9 % on ResNet-18), so top-1 there is compressed near the top.

    python benchmarks/search_range.py                                   # every row, cheapest first
    python benchmarks/search_range.py --models resnet20-jpeg --targets 2.5
    python benchmarks/search_range.py --no-run                          # summary only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.bits import Budget  # noqa: E402
from mixq.evaluation.task import load_task  # noqa: E402
from mixq.evoq.bitsearch import EvoQConfig  # noqa: E402
from mixq.evoq.calibrate import CalibrationConfig  # noqa: E402
from mixq.evoq.pipeline import RunOptions, recalibrate_run, run_evoq  # noqa: E402
from mixq.fileio import atomic_write_json  # noqa: E402
from mixq.provenance import versions  # noqa: E402
from mixq.reports.tables import grid_table, seed_stats  # noqa: E402
from mixq.reports.tables import spread_text as _spread  # noqa: E402

OUT = ROOT / "results" / "search-range"
SEEDS = (0, 1, 2)
RANGES = ("minmax", "omse")
ARMS = (*RANGES, "minmax-own-grid")
#: arm -> (arm it is compared with, key of its paired difference, what the rule decides)
COMPARISONS = {"omse": ("minmax", "omse_minus_minmax", "search range"),
               "minmax-own-grid": ("minmax", "own_grid_minus_minmax", "calibration grid_init")}
#: (model, target average bits), cheapest first: the rows where mixing did not beat uniform or missed its goal,
#: and ShuffleNetV2 at 3.0 where it did.
ROWS = (("resnet20-jpeg", 2.5), ("resnet20-jpeg", 3.0), ("shufflenetv2-x0.5", 3.0), ("resnet18-jpeg", 2.5))


def _folder(model: str, target: float, arm: str, seed: int) -> Path:
    return OUT / model / str(target) / arm / f"seed-{seed}"


def run_one(model: str, target: float, weight_range: str, seed: int) -> Path:
    """One EvoQ run evaluated on validation (skipped when its result exists).

    Args:
        model: registry name.
        target: average weight bits.
        weight_range: the search's weight range method.
        seed: draws the calibration images, seeds the search and the calibration.

    Returns:
        The run folder.
    """
    out = _folder(model, target, weight_range, seed)
    if not (out / "result.json").is_file():
        task = load_task(model, samples=50, seed=seed, eval_split="val")
        options = RunOptions(budget=Budget(avg_bits=target), weight_range=weight_range,
                             calibration=CalibrationConfig(seed=seed), evaluate_uniform=False, progress=False)
        run_evoq(task, options, EvoQConfig(seed=seed, init="ilp"), out)
        print(f"{model} {target} {weight_range} seed {seed} done", flush=True)
    return out


def run_own_grid(model: str, target: float, seed: int) -> Path:
    """The ``minmax`` run's search calibrated again with grids initialised at its min/max ranges (skipped when
    done).

    Args:
        model: registry name.
        target: average weight bits.
        seed: the seed of the ``minmax`` run (which must be finished).

    Returns:
        The run folder.
    """
    source = run_one(model, target, "minmax", seed)
    out = _folder(model, target, "minmax-own-grid", seed)
    if _result(model, target, "minmax-own-grid", seed) is None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("result.json", "config.json"):
            shutil.copyfile(source / name, out / name)
        task = load_task(model, samples=50, seed=seed, eval_split="val")
        recalibrate_run(task, CalibrationConfig(seed=seed, grid_init=None), out)
        print(f"{model} {target} minmax-own-grid seed {seed} done", flush=True)
    return out


def _result(model: str, target: float, weight_range: str, seed: int) -> dict[str, Any] | None:
    f = _folder(model, target, weight_range, seed) / "result.json"
    record = json.loads(f.read_text()) if f.is_file() else None
    if record is not None and weight_range == "minmax-own-grid" and not record.get("previous_calibrations"):
        return None  # copied from the minmax run, not calibrated again yet
    return record


def summarise() -> dict[str, Any]:
    """Per row and range: validation top-1 before and after calibration over seeds, and the paired difference.

    Returns:
        ``{"rows": [...], "decisions": {arm: str}, "versions": {...}}``.
    """
    rows = []
    for model, target in ROWS:
        by = {r: {s: x for s in SEEDS if (x := _result(model, target, r, s)) is not None} for r in ARMS}
        if not any(by.values()):
            continue
        row: dict[str, Any] = {"model": model, "target": target}
        for r in ARMS:
            rs = list(by[r].values())
            row[r] = {"seeds": sorted(by[r]), "fp32": seed_stats([x["fp32_top1"] for x in rs]),
                      "avg_bits": seed_stats([x["avg_bits"] for x in rs]),
                      "before": seed_stats([x["search_top1"] for x in rs]),
                      "after": seed_stats([x["quant_top1"] for x in rs]),
                      "fitness": seed_stats([x["fitness"] for x in rs]),
                      "split": rs[0]["test_split"] if rs else None, "n_eval": rs[0]["n_test"] if rs else None}
        for arm, (base, key, _) in COMPARISONS.items():
            paired = sorted(set(by[base]) & set(by[arm]))
            diffs = [by[arm][s]["quant_top1"] - by[base][s]["quant_top1"] for s in paired]
            row[key] = {"seeds": paired, "diff": seed_stats(diffs),
                        "all_seeds_up": len(diffs) == len(SEEDS) and min(diffs) > 0}
        rows.append(row)
    return {"rows": rows, "decisions": {arm: decide(rows, key, what) for arm, (_, key, what) in COMPARISONS.items()},
            "versions": versions()}


def decide(rows: list[dict[str, Any]], key: str, what: str) -> str:
    """The rule fixed in the module docstring for one comparison, on the rows with all seeds paired; a row whose
    mean is below -0.1 decides it ("stays") before the other rows are complete.

    Args:
        rows: :func:`summarise`'s rows.
        key: the row key of the paired difference (e.g. ``"omse_minus_minmax"``).
        what: the setting the rule decides, for the text.

    Returns:
        The decision, in words.
    """
    complete = [r for r in rows if len(r[key]["seeds"]) == len(SEEDS)]
    if not complete:
        return f"{what}: undecided, no row has all {len(SEEDS)} seeds"
    up = sum(r[key]["all_seeds_up"] for r in complete)
    worst = min(r[key]["diff"]["mean"] for r in complete)
    counts = (f"every seed gains on {up} of {len(complete)} complete rows (2 needed), worst row mean {worst:+.2f} "
              "(-0.1 allowed)")
    if worst < -0.1:  # no further row can undo a failed row: decided early
        return f"{what} stays: {counts}"
    if len(complete) < len(ROWS):
        return f"{what}: undecided, {len(complete)} of {len(ROWS)} rows have all {len(SEEDS)} seeds; {counts}"
    return f"{what} {'changes' if up >= 2 else 'stays'}: {counts}"


def table(summary: dict[str, Any]) -> str:
    """Markdown: one line per row and arm, with the arm's paired difference against its baseline."""
    lines = []
    for row in summary["rows"]:
        for r in ARMS:
            s = row[r]
            if not s["seeds"]:
                continue
            diff = _spread(row[COMPARISONS[r][1]]["diff"]) if r in COMPARISONS else ""
            lines.append([row["model"], f"{row['target']}", r, str(len(s["seeds"])), _spread(s["fp32"]),
                          _spread(s["before"]), _spread(s["after"]), diff])
    head = ["model", "avg bits", "arm", "seeds", "FP32", "searched (before calibration)", "calibrated",
            "calibrated, arm - minmax (paired)"]
    split = next((row[r]["split"] for row in summary["rows"] for r in ARMS if row[r]["split"]), "val")
    decisions = "\n".join(f"- {d}" for d in summary["decisions"].values())
    return (f"Top-1 % on CIFAR-10 {split} (mean [min, max] over seeds); 50 train calibration images per seed.\n\n"
            + grid_table(head, lines) + f"\n\nDecisions (rules in `benchmarks/search_range.py`):\n{decisions}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="only these models (default: every row)")
    parser.add_argument("--targets", nargs="+", type=float, default=None, help="only these average-bit targets")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (default all)")
    parser.add_argument("--no-run", action="store_true", help="only write the summary of the finished runs")
    args = parser.parse_args()
    if not args.no_run:
        for model, target in ROWS:
            if (args.models and model not in args.models) or (args.targets and target not in args.targets):
                continue
            for seed in args.seeds:
                for r in args.arms:
                    if r == "minmax-own-grid":
                        run_own_grid(model, target, seed)
                    else:
                        run_one(model, target, r, seed)
    summary = summarise()
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "summary.json", summary)
    text = table(summary)
    (OUT / "README.md").write_text("# Search weight range: min/max against OMSE, on validation\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
