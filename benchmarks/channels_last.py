"""Channels-last memory format: quantized forward time with and without it, as ratios measured in one run.

For each model, a :class:`~mixq.quant.model.QuantModel` at uniform 4-bit weights (8-bit activations) is
built twice, in the default layout and with ``channels_last=True``; the script prints the median time of one
forward of the N calibration samples for each, their ratio, the same ratio for the feature calibration's
unit of work (one forward + backward), and the largest logit difference between the two (the quantized
weights are identical; float summation order differs, which can flip an activation quantizer's rounding).
``mixq evoq --channels-last`` and ``RunOptions(channels_last=True)`` switch it on; it is off by default
because it is slower on some networks (ShuffleNetV2) and changes results at float-rounding level.

    python benchmarks/channels_last.py                       # the CIFAR-10 models and EfficientNet-Lite0
    python benchmarks/channels_last.py --models resnet18-jpeg --threads 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mixq.errors import MixqError
from mixq.evaluation.task import load_task
from mixq.provenance import versions
from mixq.quant.model import QuantModel
from mixq.timing import median_seconds

MODELS = ["resnet20-jpeg", "mobilenetv2-jpeg", "shufflenetv2-x0.5", "resnet18-jpeg", "efficientnet-lite0"]
OUT = Path(__file__).resolve().parents[1] / "results" / "channels-last.json"


def _times(qm: QuantModel, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of one no-grad forward and of one forward + backward to the input."""
    with torch.no_grad():
        fwd = median_seconds(lambda: qm(x), repeats)
    xg = x.clone().requires_grad_(True)

    def step() -> None:
        qm(xg).square().mean().backward()

    return fwd, median_seconds(step, max(1, repeats // 2))


def measure(model: str, samples: int, repeats: int) -> dict:
    """Both layouts of one model: times, ratios and the largest logit difference."""
    task = load_task(model, samples=samples, seed=0, n_test=10)
    x = task.calib
    row: dict = {"model": model, "samples": samples}
    outs = {}
    for cl in (False, True):
        qm = QuantModel(task.model, calib=x, weight_bits=4, channels_last=cl)
        with torch.no_grad():
            outs[cl] = qm(x)
        row["channels_last" if cl else "default"] = dict(zip(("forward_s", "forward_backward_s"),
                                                            _times(qm, x, repeats), strict=True))
    d, c = row["default"], row["channels_last"]
    row["forward_ratio"] = d["forward_s"] / c["forward_s"]
    row["forward_backward_ratio"] = d["forward_backward_s"] / c["forward_backward_s"]
    row["max_abs_logit_diff"] = float((outs[True] - outs[False]).abs().max())
    return row


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    print(f"{'model':20s} {'forward default/channels-last':>30s} {'fwd+bwd':>8s} {'max |logit diff|':>17s}")
    for model in a.models:
        try:
            r = measure(model, a.samples, a.repeats)
        except MixqError as exc:
            print(f"{model:20s} skipped: {exc}")
            continue
        rows.append(r)
        print(f"{model:20s} {r['forward_ratio']:29.2f}x {r['forward_backward_ratio']:7.2f}x "
              f"{r['max_abs_logit_diff']:17.2e}", flush=True)
    OUT.write_text(json.dumps({"threads": a.threads, "rows": rows, "versions": versions()}, indent=1))
    print(f"wrote {OUT.relative_to(OUT.parents[1])} (ratio > 1: channels-last is faster)")


if __name__ == "__main__":
    main()
