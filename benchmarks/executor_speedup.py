"""Speedup of the Ray executor over the serial one on benchmark labelling, and its per-task overhead.

Labels the same sampled configurations of one model (its quantized top-1 on a class-balanced test subset,
exactly what ``mixq bench build`` stores) three ways, all in one run so the ratios share the machine state:

* serial: in this process, torch using every core it is given (the default of ``mixq bench build``);
* Ray with 1 and with 2 (or ``--workers``) actors, one CPU and one torch thread each.

Start-up (``ray.init`` and sending the model and images to the actors) is timed apart from the labelling.
The per-task overhead is the time of a no-op item through each backend (200 of them). Every backend must give
the same labels; the script stops if one differs.

    python benchmarks/executor_speedup.py                         # resnet20-jpeg, 12 configurations
    python benchmarks/executor_speedup.py --model mobilenetv2-jpeg --configs 8 --n-test 500

Writes ``results/executor_speedup.json`` (timings, ratios, machine, versions).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from mixq.bench.build import ACT_BITS, WEIGHT_RANGE, _label_item
from mixq.bench.sampling import sample_configs
from mixq.evaluation.task import load_task
from mixq.executor import make_executor
from mixq.fileio import atomic_write_json
from mixq.provenance import versions
from mixq.quant.model import QuantModel

REPO = Path(__file__).resolve().parents[1]


def _noop(state: object, item: int) -> int:
    """A task that does nothing: what remains of its time is the executor's overhead."""
    return item


def _time_backend(name: str, workers: int | None, state: tuple, configs: list, n_noop: int) -> dict:
    """Start-up, labelling and no-op timings of one backend; its labels."""
    t0 = time.perf_counter()
    ex = make_executor(name, workers=workers)
    with ex:
        pool = ex.session(state)
        with pool:
            pool.map(_noop, [0] * len(ex.actors) if name == "ray" else [0])  # every actor has the state now
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            labels = pool.map(_label_item, configs)
            label_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            pool.map(_noop, list(range(n_noop)))
            noop_s = time.perf_counter() - t2
    return {"backend": name, "workers": ex.workers, "startup_s": startup, "label_s": label_s,
            "per_config_s": label_s / len(configs), "noop_per_task_ms": 1000 * noop_s / n_noop,
            "top1": [t for t, _ in labels]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20-jpeg")
    ap.add_argument("--configs", type=int, default=12, help="configurations labelled by each backend")
    ap.add_argument("--n-test", type=int, default=1000, help="class-balanced test images per label")
    ap.add_argument("--workers", type=int, default=2, help="actors of the larger Ray pool (default 2)")
    ap.add_argument("--noop", type=int, default=200, help="no-op tasks for the overhead (default 200)")
    ap.add_argument("--out", default=str(REPO / "results" / "executor_speedup.json"))
    args = ap.parse_args()

    task = load_task(args.model, samples=50, seed=0, n_test=args.n_test)
    qm = QuantModel(task.model, calib=task.calib, act_bits=ACT_BITS, weight_range=WEIGHT_RANGE)
    qm.to(memory_format=torch.channels_last)
    configs = sample_configs(qm.layer_names, qm.layer_params, args.configs, seed=0)
    state = (qm, task, 500)

    runs = [_time_backend("serial", None, state, configs, args.noop)]
    for w in sorted({1, args.workers}):
        runs.append(_time_backend("ray", w, state, configs, args.noop))
    for r in runs[1:]:
        if r["top1"] != runs[0]["top1"]:
            raise SystemExit(f"ray with {r['workers']} worker(s) gave other labels than serial: "
                             f"{r['top1']} vs {runs[0]['top1']}")
    serial = runs[0]
    print(f"{args.model}: {args.configs} configurations x {len(task.test)} test images, "
          f"{os.cpu_count()} CPU(s), torch {torch.get_num_threads()} thread(s) in the serial run")
    print(f"{'backend':10} {'workers':>7} {'start-up s':>10} {'s / config':>10} {'speedup':>8} "
          f"{'no-op ms/task':>13} {'overhead / label':>16}")
    for r in runs:
        r["speedup_vs_serial"] = serial["label_s"] / r["label_s"]
        r["overhead_over_label"] = r["noop_per_task_ms"] / 1000 / r["per_config_s"]
        print(f"{r['backend']:10} {r['workers']:7d} {r['startup_s']:10.1f} {r['per_config_s']:10.2f} "
              f"{r['speedup_vs_serial']:7.2f}x {r['noop_per_task_ms']:13.2f} {r['overhead_over_label']:15.4f}x")
    print("labels identical across backends: yes")
    atomic_write_json(args.out, {
        "model": args.model, "configs": args.configs, "n_test": len(task.test), "cpus": os.cpu_count(),
        "serial_torch_threads": torch.get_num_threads(), "runs": runs, "versions": versions(),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
