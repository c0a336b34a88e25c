"""Regenerate the analogues of the EvoQ paper's tables on the shipped CIFAR-10 models.

Table "methods" (paper Tables II/III/V/VI): rows UniQ (uniform min/max), ACIQ and OMSE (uniform, with
analytical / MSE-optimal clipping), EvoQ with random mutation, EvoQ with sensitivity-guided mutation,
and EvoQ guided searched with OMSE ranges (ours), each before and after feature calibration; columns
top-1 and weight size; FP32 beside. Table "samples" (paper Table I): EvoQ guided + calibration with
50/100/200/400 calibration samples.

Every row is appended to a JSON Lines file as soon as it is measured, and rows already there are
skipped, so an interrupted run resumes. Full test split, activations 8-bit, seed 0.

    python benchmarks/evoq_tables.py --models resnet20-jpeg mobilenetv2-jpeg --target-bits 3.0
    python benchmarks/evoq_tables.py --table samples --models resnet20-jpeg
    python benchmarks/evoq_tables.py --markdown      # print the tables from the results file
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from mixq.bits import Budget
from mixq.evaluation.metrics import predict
from mixq.evaluation.task import load_task
from mixq.evoq.bitsearch import EvoQConfig, evoq_search
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.evoq.sensitivity import compute_sensitivity
from mixq.provenance import versions
from mixq.quant.model import QuantModel
from mixq.reports.tables import markdown_table

METHODS = ["uniq", "aciq", "omse", "evoq-random", "evoq-guided", "evoq-guided-omse"]
LABELS = {
    "uniq": "UniQ (uniform, min/max)",
    "aciq": "ACIQ (uniform, analytical clipping)",
    "omse": "OMSE (uniform, MSE-optimal clipping)",
    "evoq-random": "EvoQ, random mutation",
    "evoq-guided": "EvoQ, sensitivity-guided",
    "evoq-guided-omse": "EvoQ, guided, OMSE ranges (ours)",
}


def _done(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        keys.add((r["table"], r["model"], r["method"], r["target_bits"], r["samples"]))
    return keys


def run_row(name: str, method: str, target: float, samples: int, iterations: int, seed: int) -> dict:
    """Measure one row: before and after feature calibration."""
    t0 = time.perf_counter()
    task = load_task(name, samples=samples, seed=seed)
    weight_range = {"aciq": "aciq", "omse": "omse", "evoq-guided-omse": "omse"}.get(method, "minmax")
    qm = QuantModel(task.model, calib=task.calib, weight_range=weight_range)
    row = {"model": name, "method": method, "label": LABELS[method], "target_bits": target, "samples": samples,
           "seed": seed, "weight_range": weight_range, "n_test": len(task.test)}
    if method.startswith("evoq"):
        mutation = "random" if method == "evoq-random" else "guided"
        ref = predict(task.model, task.calib)
        table = compute_sensitivity(qm, task.calib, progress=False)
        res = evoq_search(qm, task.calib, ref, Budget(avg_bits=target),
                          EvoQConfig(iterations=iterations, mutation=mutation, seed=seed), table, progress=False)
        row.update(search_seconds=res.seconds, fitness=res.fitness, evaluations=res.evaluations,
                   bits=list(res.config.weights.values()), best_history=res.best_history[:: max(1, iterations // 100)])
    else:
        qm.set_bits(max(2, math.floor(target + 1e-9)))
    row.update(avg_bits=qm.avg_bits(), size_mb=qm.size_mb(), top1=task.top1(qm, progress=False))
    ccfg = CalibrationConfig(seed=seed)
    cal = calibrate(qm, task.calib, ccfg, progress=False)
    row.update(top1_calibrated=task.top1(qm, progress=False), calibration_seconds=cal.seconds,
               calibration=asdict(ccfg), seconds=time.perf_counter() - t0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", choices=["methods", "samples"], default="methods")
    ap.add_argument("--models", nargs="+", default=["resnet20-jpeg", "mobilenetv2-jpeg", "shufflenetv2-x0.5"])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--target-bits", type=float, default=3.0)
    ap.add_argument("--sample-sizes", nargs="+", type=int, default=[50, 100, 200, 400])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/evoq_tables.jsonl")
    ap.add_argument("--markdown", action="store_true", help="only print the tables from --out")
    ap.add_argument("--plot", help="only draw guided vs random best fitness per iteration (paper Fig. 5) to PNG")
    args = ap.parse_args()
    out = Path(args.out)
    if args.markdown:
        print(render(out))
        return
    if args.plot:
        plot_mutations(out, args.plot)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    jobs = []
    for name in args.models:
        jobs.append(("fp32", name, "fp32", args.target_bits, 50))
        if args.table == "methods":
            jobs += [("methods", name, m, args.target_bits, 50) for m in args.methods]
        else:
            jobs += [("samples", name, "evoq-guided", args.target_bits, n) for n in args.sample_sizes]
    for table, name, method, target, samples in jobs:
        key = (table, name, method, target, samples)
        if key in done:
            continue
        if method == "fp32":
            task = load_task(name, samples=samples, seed=args.seed)
            qm = QuantModel(task.model, act_bits=32)
            row = {"model": name, "method": "fp32", "label": "FP32", "target_bits": target, "samples": samples,
                   "seed": args.seed, "top1": task.top1(task.model, progress=False), "size_mb": qm.size_mb(32),
                   "avg_bits": 32.0, "n_test": len(task.test)}
        else:
            row = run_row(name, method, target, samples, args.iterations, args.seed)
        row.update(table=table, versions=versions())
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        done.add(key)
        print(f"{table:8} {name:18} {row['label']:38} n={samples:<4} top1 {row['top1']:6.2f}"
              + (f" -> {row['top1_calibrated']:6.2f} calibrated" if "top1_calibrated" in row else "")
              + f"  {row['avg_bits']:.3f} bits {row['size_mb']:.4f} MB", flush=True)


def plot_mutations(path: Path, png: str) -> None:
    """Guided vs random mutation: best fitness per iteration, one panel line per (model, method)."""
    from mixq.reports.plots import plot_fitness

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    hist = {}
    for r in rows:
        if r["table"] == "methods" and r["method"] in ("evoq-random", "evoq-guided") and "best_history" in r:
            hist[f"{r['model']} {r['method']}"] = r["best_history"]
    plot_fitness(hist, png, title="EvoQ: guided vs random mutation (x = iteration / 10)")


def render(path: Path) -> str:
    """Markdown tables from the results file."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    parts = []
    for model in dict.fromkeys(r["model"] for r in rows):
        fp = next((r for r in rows if r["model"] == model and r["method"] == "fp32"), None)
        mrows = [r for r in rows if r["model"] == model and r["table"] == "methods"]
        srows = [r for r in rows if r["model"] == model and r["table"] == "samples"]
        if mrows:
            order = sorted(mrows, key=lambda r: METHODS.index(r["method"]))
            body = ([{**fp, "top1_calibrated": ""}] if fp else []) + order
            parts.append(f"**{model}**, target {mrows[0]['target_bits']} average weight bits, 8-bit activations, "
                         f"{mrows[0]['samples']} calibration samples (seed {mrows[0]['seed']}), "
                         f"top-1 on the {mrows[0]['n_test']}-image test split\n\n" + markdown_table(
                             body, [("label", "method", ""), ("top1", "top-1 %", ".2f"),
                                    ("top1_calibrated", "+ feature calibration", ".2f"),
                                    ("avg_bits", "avg bits", ".3f"), ("size_mb", "weights MB", ".4f")]))
        if srows:
            parts.append(f"**{model}**, EvoQ guided + calibration by number of samples (paper Table I)\n\n"
                         + markdown_table(sorted(srows, key=lambda r: r["samples"]),
                                          [("samples", "samples", "d"), ("top1", "search top-1 %", ".2f"),
                                           ("top1_calibrated", "+ calibration", ".2f"),
                                           ("avg_bits", "avg bits", ".3f")]))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
