"""Cost of EvoQ's sensitivity table, as ratios measured in one run on this machine.

The table needs ``L x B`` forwards of the N calibration samples (L quantized layers, B bit-widths, each a
model with one layer quantized). Row ``j`` only differs from the float reference pass from layer ``j`` on,
so by default the reference pass's layer outputs are replayed up to it (``prefix_mb``; the same table bit
for bit, checked here). Prints, per model: the table's time with and without the replay, each over the time
of ``L x B`` plain FP32 forwards of the original model (the issue's goal: at most 1.1x), and the speed-up.
Results go to ``results/sensitivity-speed.json``.

    python benchmarks/sensitivity_speed.py [--models resnet20-jpeg mobilenetv2-jpeg] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mixq.evaluation.task import load_task
from mixq.evoq.sensitivity import compute_sensitivity
from mixq.fileio import atomic_write_json
from mixq.provenance import versions
from mixq.quant.model import QuantModel
from mixq.timing import median_seconds

OUT = Path(__file__).resolve().parents[1] / "results" / "sensitivity-speed.json"
BITS = (2, 3, 4, 5, 6, 7, 8)


def measure(model: str, samples: int, repeats: int) -> dict:
    """Time one model's table with and without the prefix replay.

    Args:
        model: registry name.
        samples: calibration samples.
        repeats: repeats of the plain forward (median).

    Returns:
        The result row.
    """
    task = load_task(model, samples=samples, n_test=10)
    x = task.calib
    qm = QuantModel(task.model, calib=x)
    with torch.no_grad():
        t_plain = median_seconds(lambda: task.model(x), repeats)
    times, tables = {}, {}
    for label, mb in (("replay", 2048.0), ("no_replay", 0.0)):
        t0 = time.perf_counter()
        tables[label] = compute_sensitivity(qm, x, bits=BITS, progress=False, prefix_mb=mb)
        times[label] = time.perf_counter() - t0
    if not np.array_equal(tables["replay"].mse, tables["no_replay"].mse):
        raise SystemExit(f"{model}: the replayed table differs from the computed one: it must not")
    forwards = len(qm.layer_names) * len(BITS)
    row = {"model": model, "samples": samples, "layers": len(qm.layer_names), "bits": list(BITS),
           "plain_forward_ms": 1e3 * t_plain, "sensitivity_s": times["replay"],
           "sensitivity_no_replay_s": times["no_replay"],
           "over_plain_forwards": times["replay"] / (forwards * t_plain),
           "no_replay_over_plain_forwards": times["no_replay"] / (forwards * t_plain),
           "replay_speedup": times["no_replay"] / times["replay"], "threads": torch.get_num_threads()}
    print(f"{model}: table {times['replay']:.1f} s with replay, {times['no_replay']:.1f} s without "
          f"({row['replay_speedup']:.2f}x faster, same table); over {forwards} plain forwards: "
          f"{row['over_plain_forwards']:.2f}x with replay, {row['no_replay_over_plain_forwards']:.2f}x without",
          flush=True)
    return row


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20-jpeg", "mobilenetv2-jpeg"])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = [measure(m, args.samples, args.repeats) for m in args.models]
    atomic_write_json(OUT, {"rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
