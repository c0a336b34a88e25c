"""EMQ where it pays: ILP bit allocation from the validation-chosen proxy against EvoQ and HAWQ-V2 + ILP.

Step 1 (``choice.json``): for each model, every evolved formula of the README's studies
(``results/emq-study-*/genotype.json``) and every registered hand-crafted proxy is scored on the
*validation* part of that model's MQ benchmark (split seed 0, 50 / 25 / 25 %, as in ``mixq emq study``);
the evolved formula with the highest validation Kendall is the EMQ proxy, and the best hand-crafted one
is reported beside it. No test part, fresh benchmark or accuracy below is looked at for the choice.

Step 2 (``MODEL/METHOD/seed-S/result.json``): at a 3.0 average-weight-bit budget (activations 8-bit,
weights 2..8 bits), for seeds 0 1 2 (the seed draws the 50 train calibration images and the proxy's
random vectors):

* ``ilp-emq``: ILP (scipy milp) on the chosen evolved formula's per-layer costs;
* ``ilp-hawq-v2``: ILP on HAWQ-V2's costs (the EMQ paper's baseline);
* ``ilp-best-handcrafted``: ILP on the best hand-crafted proxy on validation;
* ``evoq``: EvoQ, sensitivity-guided, default settings (1,000 children);

each evaluated on the full CIFAR-10 test split before and after the same feature calibration (default
settings), FP32 beside. Every run is a folder; finished runs are skipped and an EvoQ run resumes from its
search checkpoint, so the script can be stopped and rerun. ILP runs go first (all seeds), then EvoQ.

    python benchmarks/emq_allocation.py                 # choose, then run what is missing
    python benchmarks/emq_allocation.py --readme README.md   # also write the table between the markers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.allocate.run import run_allocation  # noqa: E402
from mixq.bits import Budget  # noqa: E402
from mixq.emq.genotype import Genotype  # noqa: E402
from mixq.emq.search import correlation  # noqa: E402
from mixq.emq.study import StudyConfig, load_bench  # noqa: E402
from mixq.evaluation.task import load_task  # noqa: E402
from mixq.evoq.bitsearch import EvoQConfig  # noqa: E402
from mixq.evoq.pipeline import RunOptions, run_evoq  # noqa: E402
from mixq.fileio import atomic_write_json  # noqa: E402
from mixq.provenance import versions  # noqa: E402
from mixq.proxies import get_proxy, list_proxies  # noqa: E402
from mixq.proxies.cache import StatsCache, cached_stats  # noqa: E402
from mixq.reports.tables import grid_table, splice_between  # noqa: E402
from mixq.reports.tables import spread_text as _spread  # noqa: E402

RES = ROOT / "results"
OUT = RES / "emq-allocation"
MODELS = ("mobilenetv2-jpeg", "resnet18-jpeg")
METHODS = ("ilp-emq", "ilp-best-handcrafted", "ilp-hawq-v2", "evoq")
SEEDS = (0, 1, 2)
TARGET = 3.0
MARK = "<!-- emq-allocation -->"


def _val_kendall(scores: np.ndarray, acc: np.ndarray) -> float:
    if not (np.all(np.isfinite(scores)) and np.ptp(scores) > 0):
        return float("nan")
    return float(correlation("kendall", scores, acc))


def choose(model: str) -> dict[str, Any]:
    """Validation Kendall of every evolved formula and hand-crafted proxy on ``model``'s benchmark.

    Args:
        model: a model with ``results/mqbench-MODEL.sqlite``.

    Returns:
        ``{"bench", "val_n", "evolved": {study: {...}}, "handcrafted": {name: kendall}, "emq", "handcrafted_best"}``.
    """
    config = StudyConfig()
    b = load_bench(RES / f"mqbench-{model}.sqlite", config)
    val = b.parts["val"]
    evolved = {}
    for path in sorted(RES.glob("emq-study-*/genotype.json")):
        g = Genotype.load(path)
        evolved[path.parent.name] = {"genotype": str(path.relative_to(ROOT)), "formula": g.formula(),
                                     "val_kendall": _val_kendall(b.formula_scores(g, "val"), b.acc[val])}
    cache = StatsCache(RES / "proxy-stats" / f"{model}.npz", b.checkpoint, b.qm.layer_names)
    hand = {}
    for name in list_proxies():
        proxy = get_proxy(name)
        stats = cached_stats(b.qm, proxy, b.x, b.y, config.split_seed, cache)
        hand[name] = _val_kendall(proxy.score(stats, b.bits[val]), b.acc[val])
    ok_e = {k: v["val_kendall"] for k, v in evolved.items() if np.isfinite(v["val_kendall"])}
    ok_h = {k: v for k, v in hand.items() if np.isfinite(v)}
    emq = max(ok_e, key=ok_e.get)
    return {"bench": b.path, "sha256": b.digest, "val_n": int(len(val)), "split_seed": config.split_seed,
            "fractions": list(config.fractions), "evolved": evolved, "handcrafted": hand, "emq": emq,
            "emq_genotype": evolved[emq]["genotype"], "handcrafted_best": max(ok_h, key=ok_h.get)}


def proxy_of(method: str, choice: dict[str, Any]) -> str:
    """The ``--proxy`` of an ILP method."""
    return {"ilp-emq": choice["emq_genotype"], "ilp-hawq-v2": "hawq-v2",
            "ilp-best-handcrafted": choice["handcrafted_best"]}[method]


def run_one(model: str, method: str, seed: int, choice: dict[str, Any]) -> dict[str, Any]:
    """One run (skipped when its ``result.json`` exists); returns its record."""
    out = OUT / model / method / f"seed-{seed}"
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    t0 = time.perf_counter()
    task = load_task(model, samples=50, seed=seed)
    if method == "evoq":
        run_evoq(task, RunOptions(budget=Budget(avg_bits=TARGET), progress=False), EvoQConfig(seed=seed), out)
    else:
        # a genotype path in choice.json is relative to ROOT, which main() makes the working directory
        run_allocation(task, proxy_of(method, choice), Budget(avg_bits=TARGET), calibrate_after=True,
                       progress=False, out=out)
    print(f"{model} {method} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads((out / "result.json").read_text())


def _before_after(method: str, r: dict[str, Any]) -> tuple[float, float]:
    """(top-1 before calibration, after) of a run record."""
    if method == "evoq":
        return r["search_top1"], r["quant_top1"]
    return r["quant_top1"], r["calibrated_top1"]


def summarise(choices: dict[str, dict]) -> dict[str, Any]:
    """Per (model, method): top-1 before/after calibration over the finished seeds, avg bits, seconds."""
    rows = []
    for model in MODELS:
        for method in METHODS:
            recs = []
            for seed in SEEDS:
                f = OUT / model / method / f"seed-{seed}" / "result.json"
                if f.is_file():
                    recs.append(json.loads(f.read_text()))
            if not recs:
                continue
            ba = [_before_after(method, r) for r in recs]
            extra = {}
            if method == "evoq":
                extra["uniform3_top1"] = [r["uniform_top1"] for r in recs]
                secs = [r["search_seconds"] for r in recs]
            else:
                secs = [r["proxy_seconds"] for r in recs]
            label = {"ilp-emq": f"ILP, evolved ({choices[model]['emq'].removeprefix('emq-study-')})",
                     "ilp-best-handcrafted": f"ILP, {choices[model]['handcrafted_best']}",
                     "ilp-hawq-v2": "ILP, hawq-v2", "evoq": "EvoQ (guided)"}[method]
            rows.append({"model": model, "method": method, "label": label, "seeds": [r["seed"] for r in recs],
                         "fp32_top1": recs[0]["fp32_top1"], "avg_bits": [r["avg_bits"] for r in recs],
                         "top1": [a for a, _ in ba], "top1_calibrated": [b for _, b in ba],
                         "allocation_seconds": secs, **extra})
    return {"target_bits": TARGET, "act_bits": 8, "samples": 50, "calib_split": "train", "test_split": "test",
            "rows": rows, "versions": versions()}


def markdown(summary: dict[str, Any]) -> str:
    """The README table: mean [min, max] over seeds."""
    body = []
    for r in summary["rows"]:
        body.append([r["model"], r["label"], f"{len(r['seeds'])}", f"{r['fp32_top1']:.2f}",
                     f"{np.mean(r['avg_bits']):.3f}", _spread(r["top1"]), _spread(r["top1_calibrated"]),
                     f"{np.mean(r['allocation_seconds']):.0f}"])
    uni = [[r["model"], "uniform 3-bit (no calibration)", f"{len(r['seeds'])}", f"{r['fp32_top1']:.2f}", "3.000",
            _spread(r["uniform3_top1"]), "-", "-"] for r in summary["rows"] if "uniform3_top1" in r]
    head = ["model", "allocation", "seeds", "FP32 top-1", "avg bits", "top-1", "top-1 calibrated",
            "allocation s"]
    return grid_table(head, body + uni)


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--no-run", action="store_true", help="only choose and summarise")
    p.add_argument("--readme", type=Path, help="write the table into this README between the markers")
    a = p.parse_args()
    os.chdir(ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    choice_file = OUT / "choice.json"
    choices = json.loads(choice_file.read_text()) if choice_file.is_file() else {}
    for model in MODELS:
        if model not in choices:
            choices[model] = choose(model)
            atomic_write_json(choice_file, choices)
        c = choices[model]
        print(f"{model}: evolved {c['emq']} (val Kendall {c['evolved'][c['emq']]['val_kendall']:.3f}), "
              f"best hand-crafted {c['handcrafted_best']} ({c['handcrafted'][c['handcrafted_best']]:.3f})")
    if not a.no_run:
        order = [m for m in a.methods if m != "evoq"] + (["evoq"] if "evoq" in a.methods else [])
        for method in order:
            for seed in SEEDS:
                for model in a.models:
                    run_one(model, method, seed, choices[model])
    summary = summarise(choices)
    atomic_write_json(OUT / "summary.json", summary)
    table = markdown(summary)
    print(table)
    if a.readme:
        splice_between(a.readme, MARK, table)


if __name__ == "__main__":
    main()
