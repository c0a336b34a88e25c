"""What checkpointing EvoQ's search every generation costs: search wall time with a checkpoint after every
child against one every 50 children and none, on the same search (ResNet-20-jpeg, 50 calibration samples,
seed 0, 3 average bits). The runs alternate, and each setting's fastest repeat is compared, so other jobs
on the machine bias no setting.

    python benchmarks/checkpoint_overhead.py [--model resnet20-jpeg] [--iterations 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mixq.bits import Budget
from mixq.evaluation.metrics import predict
from mixq.evaluation.task import load_task
from mixq.evoq.bitsearch import EvoQConfig, evoq_search
from mixq.evoq.sensitivity import compute_sensitivity
from mixq.quant.model import QuantModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20-jpeg")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    task = load_task(args.model, samples=args.samples, seed=0, n_test=10)
    qm = QuantModel(task.model, calib=task.calib)
    reference = predict(task.model, task.calib)
    table = compute_sensitivity(qm, task.calib, progress=False)
    config = EvoQConfig(iterations=args.iterations, seed=0)
    settings = {"every generation": 1, "every 50": 50, "none": None}
    best: dict[str, float] = {}
    state_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for label, every in settings.items():
                ckpt = Path(tmp) / f"state-{r}-{every}.json" if every is not None else None
                t0 = time.perf_counter()
                evoq_search(qm, task.calib, reference, Budget(avg_bits=3.0), config, sensitivity=table,
                            checkpoint=ckpt, checkpoint_every=every or 1, progress=False)
                best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
                if ckpt is not None:
                    state_bytes = ckpt.stat().st_size
    base = best["none"]
    print(f"{args.model}, {args.samples} samples, {args.iterations} iterations, {torch.get_num_threads()} threads; "
          f"final state file {state_bytes / 1024:.0f} KiB")
    for label, seconds in best.items():
        print(f"checkpoint {label:17} {seconds:7.2f} s  ({seconds / base:.3f}x of no checkpoint)")
    print(json.dumps({k: round(v, 3) for k, v in best.items()}))


if __name__ == "__main__":
    main()
