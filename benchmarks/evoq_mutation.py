"""#13's mutation ablation: EvoQ with sensitivity-guided mutation against random mutation, 3 seeds.

The guided arm is the headline run itself (``results/headline/MODEL/mixed-ilp-T/seed-S``, made by
``benchmarks/headline.py``): EvoQ at T average weight bits with the ILP start, default settings (1,000
children, population 16). The random arm is the same run with ``mutation="random"`` and nothing else
changed: the same 50 train calibration images (drawn by the seed), the same seed, the same start and the
same sensitivity table (copied from the guided run's folder; its signature is checked on load, and it does
not depend on the mutation). The random arm stops after the search: the claim is about the search, so the
comparison is top-1 after the search (before calibration) on the full CIFAR-10 test split, and the fitness
(output MSE on the 50 samples) the search reached.

Reported per model: each arm's fitness and top-1 (mean and min-max over seeds), the paired differences
random - guided per seed (same samples, same start), and a plot of the best fitness per iteration relative
to the start (mean line, min-max band) to ``results/mutation-ablation/curves.png``. Settings are the
library defaults, fixed before the runs; no test image chooses anything.

    python benchmarks/headline.py --models shufflenetv2-x0.5 --parts headline   # the guided arm first
    python benchmarks/evoq_mutation.py --models mobilenetv2-jpeg shufflenetv2-x0.5
    python benchmarks/evoq_mutation.py --no-run --readme README.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.bits import Budget  # noqa: E402
from mixq.evaluation.task import load_task  # noqa: E402
from mixq.evoq.bitsearch import EvoQConfig  # noqa: E402
from mixq.evoq.pipeline import RunOptions, run_evoq  # noqa: E402
from mixq.fileio import atomic_write_json  # noqa: E402
from mixq.reports.plots import panels  # noqa: E402
from mixq.reports.tables import grid_table, seed_stats, splice_between  # noqa: E402
from mixq.reports.tables import spread_text as _spread  # noqa: E402

OUT = ROOT / "results" / "mutation-ablation"
HEADLINE = ROOT / "results" / "headline"
SEEDS = (0, 1, 2)
TARGET = 3.0
MARK = "<!-- mutation-ablation -->"


def guided_dir(model: str, seed: int, target: float = TARGET) -> Path:
    """The headline run that is the guided arm."""
    return HEADLINE / model / f"mixed-ilp-{target}" / f"seed-{seed}"


def random_dir(model: str, seed: int, target: float = TARGET) -> Path:
    """The random-mutation run of the same seed."""
    return OUT / model / f"random-ilp-{target}" / f"seed-{seed}"


def run_random(model: str, seed: int, target: float = TARGET) -> None:
    """The random arm of one seed (skipped when done; needs the guided run's sensitivity table)."""
    out = random_dir(model, seed, target)
    if (out / "result.json").is_file():
        return
    table = guided_dir(model, seed, target) / "sensitivity.json"
    if not table.is_file():
        print(f"{model} seed {seed}: no guided run at {table.parent} yet; run benchmarks/headline.py first",
              flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "sensitivity.json").is_file():
        shutil.copyfile(table, out / "sensitivity.json")
    task = load_task(model, samples=50, seed=seed)
    options = RunOptions(budget=Budget(avg_bits=target), calibrate=False, evaluate_uniform=False, progress=False)
    run_evoq(task, options, EvoQConfig(seed=seed, init="ilp", mutation="random"), out)
    print(f"{model} random mutation {target} seed {seed} done", flush=True)


def summarise(models: list[str], target: float = TARGET) -> dict[str, Any]:
    """Per model: the seeds with both arms finished, each arm's numbers and the paired differences."""
    summary: dict[str, Any] = {"target_bits": target, "models": {}}
    for model in models:
        pairs = []
        for seed in SEEDS:
            g, r = guided_dir(model, seed, target) / "result.json", random_dir(model, seed, target) / "result.json"
            if g.is_file() and r.is_file():
                pairs.append((seed, json.loads(g.read_text()), json.loads(r.read_text())))
        if not pairs:
            continue
        arms = {}
        for i, arm in ((1, "guided"), (2, "random")):
            rs = [p[i] for p in pairs]
            hist = np.array([np.asarray(x["best_history"]) / x["best_history"][0] for x in rs])
            arms[arm] = {"fitness": seed_stats([x["fitness"] for x in rs]),
                         "top1": seed_stats([x["search_top1"] for x in rs]),
                         "avg_bits": seed_stats([x["avg_bits"] for x in rs]),
                         "search_seconds": seed_stats([x["search_seconds"] for x in rs]),
                         "relative_curve": {"mean": hist.mean(0).tolist(), "min": hist.min(0).tolist(),
                                            "max": hist.max(0).tolist()}}
        summary["models"][model] = {
            "seeds": [p[0] for p in pairs], "fp32_top1": pairs[0][1]["fp32_top1"], "n_test": pairs[0][1]["n_test"],
            "test_split": pairs[0][1]["test_split"], "arms": arms,
            "random_minus_guided": {"fitness": [p[2]["fitness"] - p[1]["fitness"] for p in pairs],
                                    "top1": [p[2]["search_top1"] - p[1]["search_top1"] for p in pairs]}}
    return summary


def _verdict(diffs: list[float], lower_is_better: bool) -> str:
    """Which arm wins on every seed, else 'no difference' (the paired differences change sign)."""
    if len(diffs) < 3:
        return f"{len(diffs)} of 3 seeds"
    random_better = [(d < 0) if lower_is_better else (d > 0) for d in diffs]
    if all(random_better):
        return "random better on every seed"
    if not any(random_better) and all(d != 0 for d in diffs):
        return "guided better on every seed"
    return "no difference (sign changes across seeds)"


def tables(summary: dict[str, Any]) -> str:
    """One markdown table per model."""
    parts = []
    for model, s in summary["models"].items():
        rows = []
        for arm in ("guided", "random"):
            a = s["arms"][arm]
            rows.append([f"{arm} mutation", _spread(a["fitness"], 4), _spread(a["top1"]),
                         f"{a['avg_bits']['mean']:.3f}", f"{a['search_seconds']['mean']:.0f}"])
        d = s["random_minus_guided"]
        rows.append(["random - guided, per seed", ", ".join(f"{x:+.4f}" for x in d["fitness"])
                     + f" ({_verdict(d['fitness'], True)})",
                     ", ".join(f"{x:+.2f}" for x in d["top1"]) + f" ({_verdict(d['top1'], False)})", "", ""])
        head = (f"**{model}** at {summary['target_bits']} average weight bits (ILP start, 1,000 children), seeds "
                f"{', '.join(map(str, s['seeds']))}; top-1 after the search, before calibration, on {s['n_test']} "
                f"images ({s['test_split']}); FP32 {s['fp32_top1']:.2f}")
        parts.append(head + "\n\n" + grid_table(
            ["arm", "fitness (output MSE, 50 samples)", "top-1 after search", "avg bits", "search s"], rows))
    return "\n\n".join(parts) if parts else "(no finished pairs yet)"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Best fitness relative to the start per iteration: mean line and min-max band per arm, one panel per model."""
    models = list(summary["models"])
    if not models:
        return
    with panels(len(models), path, panel_size=(5.2, 3.8)) as axes:
        for ax, model in zip(axes, models):
            s = summary["models"][model]
            for arm, color in (("guided", "tab:blue"), ("random", "tab:orange")):
                c = s["arms"][arm]["relative_curve"]
                x = np.arange(len(c["mean"]))
                ax.plot(x, c["mean"], color=color, label=f"{arm} mutation (mean of {len(s['seeds'])} seeds)")
                ax.fill_between(x, c["min"], c["max"], color=color, alpha=0.2, lw=0)
            ax.set(xlabel="iteration (child)", ylabel="best fitness / start fitness",
                   title=f"{model}, {summary['target_bits']} bits")


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = ["mobilenetv2-jpeg", "shufflenetv2-x0.5"]
    p.add_argument("--models", nargs="+", default=models, choices=models + ["resnet20-jpeg", "resnet18-jpeg"])
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--no-run", action="store_true", help="only summarise the finished runs")
    p.add_argument("--readme", type=Path, help="write the tables into this README between the markers")
    a = p.parse_args()
    os.chdir(ROOT)
    if not a.no_run:
        for model in a.models:
            for seed in a.seeds:
                run_random(model, seed)
    summary = summarise(a.models)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "summary.json", summary)
    plot(summary, OUT / "curves.png")
    table = tables(summary)
    print(table)
    if a.readme:
        splice_between(a.readme, MARK, table)


if __name__ == "__main__":
    main()
