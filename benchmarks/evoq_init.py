"""Why EvoQ falls short on MobileNetV2, measured without test images: its search over-fits its 50 samples.

For each seed (the seed draws the 50 train calibration images and seeds the search), at one average-bit
budget, three configurations are compared on images the search never saw, the fixed validation part of
CIFAR-10 train (``--n-val`` class-balanced images; never drawn for calibration):

* ``ilp``: the exact optimum of the sensitivity table's per-layer MSEs taken as additive (no search);
* ``evoq-ilp-start``: EvoQ (default settings) whose first population is built around that optimum
  (``init="ilp"``);
* ``evoq-uniform-start``: EvoQ as in the paper (first population around the uniform policy).

Reported per configuration: ``fit50`` (the search's fitness, output MSE on its own 50 samples), ``val_mse``
(output MSE against FP32 on the validation images), ``val_acc`` (top-1 % there; FP32 is printed first).
A search that lowers ``fit50`` while ``val_mse`` rises is fitting its samples, not the model. Rows go to
``results/evoq-init/MODEL-TARGET-val.jsonl`` (one per seed, appended as measured; seeds already there are
skipped). No test image is read.

    python benchmarks/evoq_init.py --model mobilenetv2-jpeg --target-bits 3.0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.bits import Budget  # noqa: E402
from mixq.evaluation.metrics import output_mse, predict  # noqa: E402
from mixq.evaluation.task import load_task  # noqa: E402
from mixq.evoq.bitsearch import BitSpace, EvoQConfig, evoq_search  # noqa: E402
from mixq.evoq.sensitivity import compute_sensitivity  # noqa: E402
from mixq.provenance import versions  # noqa: E402
from mixq.quant.model import QuantModel  # noqa: E402

OUT = ROOT / "results" / "evoq-init"


def measure(model: str, target: float, seed: int, x_val: torch.Tensor, y_val: torch.Tensor,
            ref_val: torch.Tensor) -> dict:
    """One seed's three configurations, each scored on its own samples and on the validation images."""
    task = load_task(model, samples=50, seed=seed, n_test=10)
    qm = QuantModel(task.model, calib=task.calib)
    ref = predict(task.model, task.calib)
    table = compute_sensitivity(qm, task.calib, progress=False)
    budget = Budget(avg_bits=target)

    def score(genome: tuple[int, ...]) -> dict:
        qm.set_bits_tuple(genome)
        out = predict(qm, x_val)
        return {"fit50": output_mse(predict(qm, task.calib), ref), "val_mse": output_mse(out, ref_val),
                "val_acc": 100.0 * float((out.argmax(1) == y_val).float().mean()), "avg_bits": qm.avg_bits()}

    row = {"model": model, "target_bits": target, "seed": seed, "samples": 50, "n_val": len(y_val),
           "ilp": score(BitSpace(qm.layer_params, budget, EvoQConfig(), table).ilp_start())}
    for name, init in (("evoq-ilp-start", "ilp"), ("evoq-uniform-start", "uniform")):
        t0 = time.perf_counter()
        res = evoq_search(qm, task.calib, ref, budget, EvoQConfig(seed=seed, init=init), table, progress=False)
        row[name] = {**score(tuple(res.config.weights.values())), "search_fitness": res.fitness,
                     "seconds": time.perf_counter() - t0,
                     "best_history": [res.best_history[i] for i in np.linspace(0, len(res.best_history) - 1, 11,
                                                                               dtype=int)]}
    row["versions"] = versions()
    return row


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenetv2-jpeg")
    p.add_argument("--target-bits", type=float, default=3.0)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-val", type=int, default=1000)
    a = p.parse_args()
    path = OUT / f"{a.model}-{a.target_bits}-val.jsonl"
    done = {json.loads(line)["seed"] for line in path.read_text().splitlines()} if path.exists() else set()
    val = load_task(a.model, samples=50, seed=0, eval_split="val", n_test=a.n_val)
    batches = list(val.test_batches(500))
    x_val, y_val = torch.cat([b for b, _ in batches]), torch.cat([y for _, y in batches])
    ref_val = predict(val.model, x_val)
    fp32 = 100 * float((ref_val.argmax(1) == y_val).float().mean())
    print(f"FP32 top-1 on {len(y_val)} validation images: {fp32:.2f}")
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        if seed in done:
            continue
        row = measure(a.model, a.target_bits, seed, x_val, y_val, ref_val)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    seeds = [r["seed"] for r in rows]
    print(f"{'configuration':<20} {'fit50':>8} {'val MSE':>8} {'val top-1':>9}   (mean over seeds {seeds})")
    for name in ("ilp", "evoq-ilp-start", "evoq-uniform-start"):
        m = {k: np.mean([r[name][k] for r in rows]) for k in ("fit50", "val_mse", "val_acc")}
        print(f"{name:<20} {m['fit50']:8.4f} {m['val_mse']:8.4f} {m['val_acc']:9.2f}")


if __name__ == "__main__":
    main()
