"""Feature-calibration speed, as ratios measured in one run on this machine.

One calibration epoch on the N samples (an augmented batch through the frozen float teacher, the fake-quant
student forward with its layer features, the feature loss, backward and an Adam step) against one plain
FP32 training step of the original model on the same samples (forward, MSE on the logits, backward, Adam
step): the overhead that the quantizers, the teacher and the feature loss add to ordinary training. Also
the default calibration's whole length in plain steps, and the share of an epoch spent outside the
student's forward and backward (teacher, feature tap, loss).

    python benchmarks/calibration_speed.py [--model efficientnet-lite0] [--epochs 5] [--target-bits 4]
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace

import torch
from torch.nn import functional as F

from mixq.evaluation.task import load_task
from mixq.evoq.calibrate import CalibrationConfig, calibrate
from mixq.provenance import versions
from mixq.quant.model import QuantModel
from mixq.timing import median_seconds


def _plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.mse_loss(model(x), target).backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20-jpeg")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5, help="calibration epochs timed (after one untimed)")
    ap.add_argument("--repeats", type=int, default=5, help="plain training steps timed")
    ap.add_argument("--target-bits", type=int, default=4, help="uniform weight bits of the calibrated model")
    args = ap.parse_args()
    task = load_task(args.model, samples=args.samples, n_test=10)
    x = task.calib
    plain = copy.deepcopy(task.model).train(False)
    with torch.no_grad():
        target = plain(x)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-6)  # made once, as calibration makes its own once
    t_plain = median_seconds(lambda: _plain_step(plain, opt, x, target), args.repeats)

    qm = QuantModel(task.model, calib=x)
    qm.set_bits({name: args.target_bits for name in qm.layer_names})
    config = CalibrationConfig()
    calibrate(qm, x, replace(config, epochs=1))  # warm-up: caches, allocator
    qm.set_bits({name: args.target_bits for name in qm.layer_names})
    res = calibrate(qm, x, replace(config, epochs=args.epochs))
    t_epoch = res.seconds / args.epochs  # includes the fixed start (targets, grids), spread over the epochs
    out = {
        "model": args.model, "samples": args.samples, "threads": torch.get_num_threads(),
        "target_bits": args.target_bits, "epochs_timed": args.epochs,
        "plain_step_s": t_plain, "calibration_epoch_s": t_epoch, "ratio": t_epoch / t_plain,
        "default_epochs": config.epochs, "default_calibration_s_estimate": t_epoch * config.epochs,
        "versions": versions(),
    }
    print(f"calibration epoch / plain FP32 training step ({args.samples} samples, {args.model}, "
          f"{torch.get_num_threads()} threads) = {t_epoch / t_plain:.2f}x ({t_epoch:.2f} s vs {t_plain:.2f} s)")
    print(f"default calibration ({config.epochs} epochs) ~ {t_epoch * config.epochs / 60:.1f} min here")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
