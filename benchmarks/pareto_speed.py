"""Cost of one Pareto run against one single-budget EvoQ search, measured back to back in one process.

The sensitivity table is measured once and shared (both kinds of run need it); then, for each target,
a single-budget search with default settings (P 16, 1,000 children); then the two Pareto methods over
average bits with their defaults: the warm-started sweep over the same targets (``sweep_search``, P 16,
1,500 children in all; ``mixq evoq --pareto`` default) and NSGA-II (``pareto_search``, P 32, 2,000
children). Printed: the seconds and fitness evaluations of each, each front's fitness at the targets
beside the single searches', and the ratio of each Pareto search to the mean single search. Run it on an
otherwise idle machine (other jobs on the same cores distort the ratio).

    python benchmarks/pareto_speed.py --model resnet20-jpeg --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mixq.bits import Budget  # noqa: E402
from mixq.evaluation.metrics import predict  # noqa: E402
from mixq.evaluation.task import load_task  # noqa: E402
from mixq.evoq.bitsearch import EvoQConfig, evoq_search  # noqa: E402
from mixq.evoq.pareto import PARETO_DEFAULTS, SWEEP_DEFAULTS, pareto_search, sweep_search  # noqa: E402
from mixq.evoq.sensitivity import compute_sensitivity  # noqa: E402
from mixq.fileio import atomic_write_json  # noqa: E402
from mixq.provenance import versions  # noqa: E402
from mixq.quant.cost import CostModel  # noqa: E402
from mixq.quant.model import QuantModel  # noqa: E402

TARGETS = (2.5, 3.0, 3.5, 4.0)


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20-jpeg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="times each search is timed (the minimum is kept)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "pareto-speed.json")
    a = p.parse_args()
    task = load_task(a.model, samples=50, seed=a.seed)
    qm = QuantModel(task.model, calib=task.calib)
    reference = predict(task.model, task.calib)
    cost = CostModel.from_model(qm, tuple(task.calib.shape[1:]))
    table = compute_sensitivity(qm, task.calib, progress=False)

    def timed(run):
        best, result = float("inf"), None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            result = run()
            best = min(best, time.perf_counter() - t0)
        return best, result

    single = {}
    for t in TARGETS:
        s, r = timed(lambda t=t: evoq_search(qm, task.calib, reference, Budget(avg_bits=t), EvoQConfig(seed=a.seed),
                                             sensitivity=table, progress=False))
        single[t] = {"seconds": s, "evaluations": r.evaluations, "fitness": r.fitness}
        print(f"single {t:.1f} bits: {s:6.1f} s, {r.evaluations} evaluations, fitness {r.fitness:.5f}")
    methods = {
        "sweep": lambda: sweep_search(qm, task.calib, reference, cost, "bits", list(TARGETS),
                                      EvoQConfig(population=SWEEP_DEFAULTS.population,
                                                 iterations=SWEEP_DEFAULTS.iterations, seed=a.seed),
                                      sensitivity=table, progress=False),
        "nsga2": lambda: pareto_search(qm, task.calib, reference, cost, "bits",
                                       EvoQConfig(population=PARETO_DEFAULTS.population,
                                                  iterations=PARETO_DEFAULTS.iterations, seed=a.seed),
                                       sensitivity=table, progress=False),
    }
    mean_single = float(np.mean([v["seconds"] for v in single.values()]))
    mean_evals = float(np.mean([v["evaluations"] for v in single.values()]))
    record = {"model": a.model, "seed": a.seed, "threads": torch.get_num_threads(), "repeats": a.repeats,
              "single": {str(t): v for t, v in single.items()}, "versions": versions()}
    for name, run in methods.items():
        s, r = timed(run)
        at = {t: r.at(t) for t in TARGETS}
        print(f"pareto {name:6}: {s:6.1f} s, {r.evaluations} evaluations, {len(r.front)} front points; "
              f"/ mean single search = {s / mean_single:.2f}x (evaluations {r.evaluations / mean_evals:.2f}x)")
        for t in TARGETS:
            print(f"  at {t:.1f} bits: fitness {at[t][1]:.5f} (single {single[t]['fitness']:.5f})")
        record[name] = {"seconds": s, "evaluations": r.evaluations, "front": len(r.front), "ratio": s / mean_single,
                        "fitness_at": {str(t): at[t][1] for t in TARGETS}}
    atomic_write_json(a.out, record)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
