"""``mixq recalibrate``: a finished EvoQ or uniform run calibrated again with other settings, search kept."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixq.cli.common import (
    EPILOG_DATA,
    add_calibration_args,
    add_executor_args,
    calibration_from_args,
    executor_from_args,
)
from mixq.evaluation.task import load_task
from mixq.evoq.pipeline import read_run_result, recalibrate_run
from mixq.reports.evoq import write_evoq_report


def cmd_recalibrate(args: argparse.Namespace) -> int:
    """Rebuild the run's configuration, calibrate it with the given settings, rewrite its result and report."""
    run = Path(args.run)
    record = read_run_result(run)
    task = load_task(record["model"], samples=int(record["samples"]), seed=int(record["seed"]),
                     data_root=args.data_root, model_root=args.model_root, n_test=int(record["n_test"]),
                     checkpoint=args.checkpoint, dataset=args.dataset, mean=args.mean, std=args.std)
    calibration = calibration_from_args(args, int(record["seed"]))
    with executor_from_args(args) as executor:
        r = recalibrate_run(task, calibration, run, progress=not args.no_progress, executor=executor)
    if "bits" in r and (run / "config.json").is_file():
        write_evoq_report(run)
    before = r.get("search_top1", r.get("uncalibrated_top1"))
    previous = r.get("previous_calibrations", [])
    print(f"model      {r['model']}  ({r['n_test']} test images, {r['samples']} calibration samples, "
          f"seed {r['seed']})")
    print(f"{'':28} {'top-1 %':>8}")
    print(f"{'FP32':28} {r['fp32_top1']:8.2f}")
    print(f"{'before calibration':28} {before:8.2f}")
    if previous:
        print(f"{'earlier calibration':28} {previous[-1]['quant_top1']:8.2f}")
    print(f"{'this calibration':28} {r['quant_top1']:8.2f}")
    print(f"wrote {run}/result.json and calibrated.pt" if previous else "already calibrated with these settings")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``recalibrate``.

    Args:
        sub: the main parser's subparsers.
    """
    p = sub.add_parser(
        "recalibrate", help="calibrate a finished run again with other settings (no new search)",
        description="Rebuild the bit configuration of a finished `mixq evoq` run (or a uniform run), check that it "
                    "reproduces the recorded top-1 before calibration, run feature calibration with the --calib-* "
                    "settings given here (default: today's defaults), evaluate it and rewrite the run's "
                    "result.json and calibrated.pt. The earlier calibration's settings and top-1 stay in "
                    "result.json under previous_calibrations. The model, samples, seed and test split are the "
                    "run's own; a run already calibrated with these settings is left as it is.",
        epilog=EPILOG_DATA,
    )
    p.add_argument("run", help="the folder of a finished run (its result.json and, for EvoQ, config.json)")
    g = p.add_argument_group("model and data (the model name, samples, seed and test split come from the run)")
    g.add_argument("--data-root", help="data folder (default $MIXQ_DATA, ../shared/data, or the demo)")
    g.add_argument("--model-root", help="checkpoint folder (default $MIXQ_MODELS or ../shared/models)")
    g.add_argument("--checkpoint", help="state_dict file for a package.module:function model")
    g.add_argument("--dataset", choices=["cifar10", "imagenet"], help="dataset of a package.module:function model")
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean of a user model")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std of a user model")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_executor_args(p, "the calibration and evaluation")
    add_calibration_args(p)
    p.set_defaults(func=cmd_recalibrate)
