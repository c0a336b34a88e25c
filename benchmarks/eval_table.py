"""Uniform-bit accuracy table (the foundation issue's must-show), cross-checked by an independent quantizer.

For each model and weight bit-width B in 32, 8, 4, 3, 2 (activations 8-bit), prints and saves FP32 top-1,
mixq's quantized top-1 (the same path as `mixq eval --bits B`) and the top-1 of `mixq.quant.reference`, an
independent implementation of the same quantizer (torch's fuse_conv_bn_eval, torch.ao observers and
fake-quant ops), all on the full test split with 50 calibration samples (seed 0).

    python benchmarks/eval_table.py [--models resnet20-jpeg ...] [--out results/eval_table.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mixq.data import test_set
from mixq.evaluation.task import load_task
from mixq.provenance import versions
from mixq.quant.model import QuantModel
from mixq.quant.reference import reference_quantize

DEFAULT_MODELS = ["resnet20-jpeg", "mobilenetv2-jpeg", "shufflenetv2-x0.5"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--bits", nargs="+", type=int, default=[32, 8, 4, 3, 2])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--imagenet", action="store_true", help="also efficientnet-lite0 on the ImageNet sample")
    ap.add_argument("--out", default="results/eval_table.jsonl",
                    help="JSON Lines, one row per (model, bits), appended as measured; rows present are skipped")
    ap.add_argument("--markdown", action="store_true", help="only print the table from --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.markdown:
        print(render(out))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["model"], r["bits"]) for r in _rows(out)}
    for name in args.models + (["efficientnet-lite0"] if args.imagenet else []):
        if all((name, b) in done for b in args.bits):
            continue
        t0 = time.perf_counter()
        task = load_task(name, samples=args.samples, seed=args.seed)
        fp32 = task.top1(task.model, desc=f"{name} fp32")
        extra = {}
        if task.dataset == "imagenet":  # also FP32 on all 1000 images, as the checkpoint README measures it
            full = test_set("imagenet")
            from mixq.data import batches
            from mixq.evaluation.metrics import accuracy

            extra["fp32_top1_all_1000"] = accuracy(task.model, batches(full, task.mean, task.std, 250), progress=False)
        qm = QuantModel(task.model, calib=task.calib)
        for b in args.bits:
            if (name, b) in done:
                continue
            qm.set_bits(b)
            ours = task.top1(qm, desc=f"{name} w{b}")
            ref = task.top1(reference_quantize(task.model, task.calib, b), desc=f"{name} ref w{b}")
            row = {"model": name, "bits": b, "act_bits": 8, "fp32_top1": fp32, "quant_top1": ours,
                   "reference_top1": ref, "size_mb": qm.size_mb(), "avg_bits": qm.avg_bits(),
                   "n_test": len(task.test), "samples": args.samples, "seed": args.seed, **extra,
                   "versions": versions()}
            with open(out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{name:18} w{b:<2} fp32 {fp32:6.2f}  mixq {ours:6.2f}  reference {ref:6.2f}  "
                  f"diff {ours - ref:+.2f}  size {qm.size_mb():.4f} MB", flush=True)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(render(out))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def render(path: Path) -> str:
    """Markdown table of the results file."""
    from mixq.reports.tables import markdown_table

    return markdown_table(_rows(path), [
        ("model", "model", ""), ("bits", "weight bits", "d"), ("fp32_top1", "FP32 top-1", ".2f"),
        ("quant_top1", "mixq top-1", ".2f"), ("reference_top1", "reference top-1", ".2f"),
        ("size_mb", "weights MB", ".4f"), ("n_test", "test images", "d")])


if __name__ == "__main__":
    main()
