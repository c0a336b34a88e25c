"""EvoQ speed, as ratios measured in one run on this machine.

Prints: one fitness evaluation (quantized forward + MSE on the N calibration samples) / one plain FP32
forward of the original model on the same samples; the time of a full T-iteration search, with the
prefix cache (children replay their parent's unchanged leading layers) and without it, which must give
the same search bit for bit; the fraction of layer forwards the prefix cache answered; and the fraction of
children answered from the fitness cache.

    python benchmarks/evoq_speed.py [--model resnet20-jpeg] [--iterations 1000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mixq.bits import Budget
from mixq.evaluation.metrics import predict
from mixq.evaluation.task import load_task
from mixq.evoq.bitsearch import EvoQConfig, FitnessEvaluator, evoq_search
from mixq.evoq.sensitivity import compute_sensitivity
from mixq.provenance import versions
from mixq.quant.model import QuantModel
from mixq.timing import median_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20-jpeg")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--target-bits", type=float, default=3.0)
    args = ap.parse_args()
    task = load_task(args.model, samples=args.samples, n_test=10)
    x = task.calib
    qm = QuantModel(task.model, calib=x)
    ref = predict(task.model, x)
    fitness = FitnessEvaluator(qm, x, ref)
    rng = np.random.default_rng(0)
    genomes = [tuple(int(b) for b in rng.integers(2, 9, len(qm.layer_names))) for _ in range(8)]
    for g in genomes:  # fill the per-bit weight caches, as a running search has
        fitness(g)
    with torch.no_grad():
        t_plain = median_seconds(lambda: task.model(x), args.repeats)
    it = iter(range(10**9))
    t_fit = median_seconds(lambda: fitness(genomes[next(it) % len(genomes)]), args.repeats)
    t0 = time.perf_counter()
    table = compute_sensitivity(qm, x, progress=False)
    t_sens = time.perf_counter() - t0
    res = evoq_search(qm, x, ref, Budget(avg_bits=args.target_bits), EvoQConfig(iterations=args.iterations),
                      table, progress=False)
    plain = evoq_search(qm, x, ref, Budget(avg_bits=args.target_bits), EvoQConfig(iterations=args.iterations),
                        table, progress=False, prefix_mb=0)
    if plain.best_history != res.best_history or plain.config != res.config:
        raise SystemExit("the prefix cache changed the search: it must not")
    lp = res.layer_passes
    replayed = lp["replayed"] / max(1, lp["replayed"] + lp["computed"])
    out = {
        "model": args.model, "samples": args.samples, "threads": torch.get_num_threads(),
        "plain_forward_ms": 1e3 * t_plain, "fitness_eval_ms": 1e3 * t_fit, "ratio": t_fit / t_plain,
        "sensitivity_s": t_sens, "search_s": res.seconds, "search_no_prefix_s": plain.seconds,
        "prefix_speedup": plain.seconds / res.seconds, "layer_forwards_replayed": replayed,
        "search_per_evaluation_over_plain": res.seconds / res.evaluations / t_plain, "iterations": res.iterations,
        "evaluations": res.evaluations, "versions": versions(),
    }
    print(f"fitness eval / plain FP32 forward ({args.samples} samples) = {t_fit / t_plain:.2f}x "
          f"({1e3 * t_fit:.1f} ms vs {1e3 * t_plain:.1f} ms)")
    print(f"sensitivity table: {t_sens:.1f} s; {args.iterations}-iteration search: {res.seconds:.1f} s "
          f"= {res.seconds / t_plain:.0f} plain forwards; {res.evaluations} evaluations "
          f"({1 - res.evaluations / (res.iterations + 16):.0%} of individuals from the cache)")
    print(f"prefix cache: search {res.seconds:.1f} s vs {plain.seconds:.1f} s without = "
          f"{plain.seconds / res.seconds:.2f}x faster, same search; {replayed:.0%} of layer forwards replayed; "
          f"search time per evaluation / plain forward = {res.seconds / res.evaluations / t_plain:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
