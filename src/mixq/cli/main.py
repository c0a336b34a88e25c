"""The ``mixq`` command line: a thin layer that parses, calls the API, prints and writes artefacts.

Every bad input ends with one ``mixq: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence

from mixq.errors import MixqError
from mixq.evoq.calibrate import CalibrationConfig

CALIB_DEFAULTS = CalibrationConfig()

EPILOG_DATA = (
    "Data and checkpoints: --data-root / $MIXQ_DATA (a folder holding cifar10-jpeg/ and imagenet-sample/) "
    "and --model-root / $MIXQ_MODELS (holding cifar10/ and imagenet/); by default ../shared/data and "
    "../shared/models are used when present, else the embedded demo (ResNet-20-jpeg, 200 train and 500 "
    "test CIFAR-10 images)."
)


def _add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="resnet20-jpeg",
                   help="registry name (see `mixq models`) or package.module:function returning an "
                        "nn.Module (default: %(default)s)")
    g.add_argument("--checkpoint", help="state_dict file for a package.module:function model")
    g.add_argument("--dataset", choices=["cifar10", "imagenet"],
                   help="dataset of a package.module:function model (default cifar10)")
    g.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                   help="normalisation mean for a user model (pixels in [0,1]; default ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                   help="normalisation std for a user model (default ImageNet's)")
    g.add_argument("--data-root", help="data folder (default $MIXQ_DATA, ../shared/data, or the demo)")
    g.add_argument("--model-root", help="checkpoint folder (default $MIXQ_MODELS or ../shared/models)")
    g.add_argument("--samples", type=int, default=50,
                   help="calibration samples drawn from the train split (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of the calibration draw (default %(default)s)")
    g.add_argument("--n-test", type=int, default=None,
                   help="evaluate on a class-balanced subset of this many test images (default: all)")
    g.add_argument("--act-bits", type=int, default=8,
                   help="input (activation) bits of every quantized layer, 32 = float (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _load_task(args: argparse.Namespace):
    from mixq.evaluation.task import load_task

    return load_task(
        args.model, samples=args.samples, seed=args.seed, data_root=args.data_root,
        model_root=args.model_root, n_test=args.n_test, checkpoint=args.checkpoint,
        dataset=args.dataset, mean=args.mean, std=args.std,
    )


def _check_bits_arg(value: int, flag: str) -> int:
    from mixq.bits import VALID_BITS

    if value not in VALID_BITS:
        raise MixqError(f"{flag} {value} is out of range: expected 2..8, or 32 for float")
    return value


# -- mixq eval -------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    """FP32 and quantized top-1 of a model at a uniform bit-width or a BitConfig file."""
    from mixq.bits import BitConfig
    from mixq.provenance import versions
    from mixq.quant.model import QuantModel

    if (args.bits is None) == (args.config is None):
        raise MixqError("give exactly one of --bits B or --config FILE")
    if args.bits is not None:
        _check_bits_arg(args.bits, "--bits")
    _check_bits_arg(args.act_bits, "--act-bits")
    config = BitConfig.load(args.config) if args.config else None
    t0 = time.perf_counter()
    task = _load_task(args)
    progress = not args.no_progress
    fp32 = task.top1(task.model, args.batch_size, progress, desc="fp32")
    qm = QuantModel(task.model, calib=task.calib, act_bits=args.act_bits)
    qm.set_bits(config if config is not None else args.bits)
    quant = task.top1(qm, args.batch_size, progress, desc="quantized")
    result = {
        "model": task.name,
        "dataset": task.dataset,
        "split": "test" if task.dataset == "cifar10" else "sample (calibration images excluded)",
        "bits": args.bits,
        "config": args.config,
        "act_bits": args.act_bits,
        "fp32_top1": round(fp32, 3),
        "quant_top1": round(quant, 3),
        "size_mb": qm.size_mb(),
        "fp32_size_mb": qm.size_mb(32),
        "bias_size_mb": qm.bias_size_mb(),
        "avg_bits": qm.avg_bits(),
        "n_test": len(task.test),
        "samples": args.samples,
        "seed": args.seed,
        "bn_folded": len(qm.fold_report.folded),
        "bn_unfolded": len(qm.fold_report.unfolded),
        "seconds": round(time.perf_counter() - t0, 2),
        "versions": versions(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        what = f"{args.bits}-bit weights" if args.bits is not None else f"config {args.config}"
        print(f"model      {task.name}  ({task.dataset}, {len(task.test)} test images, "
              f"{args.samples} calibration samples, seed {args.seed})")
        print(f"quantizer  {what}, {args.act_bits}-bit activations; "
              f"{len(qm.fold_report.folded)} BatchNorm folded")
        print(f"{'':10} {'top-1 %':>8} {'size MB':>9} {'avg bits':>9}")
        print(f"{'FP32':10} {fp32:8.2f} {qm.size_mb(32):9.4f} {32:9.2f}")
        print(f"{'quantized':10} {quant:8.2f} {qm.size_mb():9.4f} {qm.avg_bits():9.2f}")
    return 0


# -- mixq evoq -------------------------------------------------------------------------------------
def cmd_evoq(args: argparse.Namespace) -> int:
    """EvoQ end to end: sensitivity, evolutionary search, feature calibration, report."""
    from mixq.bits import Budget
    from mixq.evoq.run import RunOptions, run_evoq
    from mixq.evoq.search import EvoQConfig

    _check_bits_arg(args.act_bits, "--act-bits")
    if args.target_bits is None and args.size_mb is None:
        args.target_bits = 3.0
    budget = Budget(avg_bits=args.target_bits, size_mb=args.size_mb)
    config = EvoQConfig(
        population=args.population, sample=args.sample_size, iterations=args.iterations,
        mutation_prob=args.mutation_prob, min_bits=args.min_bits, max_bits=args.max_bits,
        mutation=args.mutation, seed=args.seed,
    )
    out = args.out or f"runs/evoq-{args.model.replace(':', '_')}-{args.target_bits or args.size_mb}"
    task = _load_task(args)
    calibration = CalibrationConfig(
        epochs=args.calib_epochs, lr=args.calib_lr, alpha=args.calib_alpha, beta=args.calib_beta,
        optimizer=args.calib_optimizer, augment=not args.calib_no_augment, batch_size=args.calib_batch_size,
        seed=args.seed,
    )
    options = RunOptions(budget=budget, act_bits=args.act_bits, weight_range=args.weight_range,
                         calibrate=not args.no_calibrate, calibration=calibration,
                         evaluate_uniform=not args.no_uniform, progress=not args.no_progress)
    r = run_evoq(task, options, config, out)
    print(f"model      {r['model']}  ({r['n_test']} test images, {r['samples']} calibration samples, "
          f"seed {r['seed']})")
    print(f"budget     {r['budget']}; found {r['avg_bits']:.3f} avg bits, {r['size_mb']:.4f} MB "
          f"in {r['search_seconds']:.1f} s ({r['evaluations']} evaluations)")
    print(f"{'':28} {'top-1 %':>8}")
    print(f"{'FP32':28} {r['fp32_top1']:8.2f}")
    if "uniform_top1" in r:
        print(f"{'uniform ' + str(r['uniform_bits']) + '-bit':28} {r['uniform_top1']:8.2f}")
    print(f"{'EvoQ search':28} {r['search_top1']:8.2f}")
    if not args.no_calibrate:
        print(f"{'EvoQ + feature calibration':28} {r['quant_top1']:8.2f}")
    print(f"wrote {out}/config.json, result.json, report.md and plots")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered models."""
    from mixq.models import get_model_spec, list_models

    print(f"{'name':20} {'dataset':9} {'input':>5} {'fp32 top-1':>10}")
    for name in list_models(args.pattern):
        s = get_model_spec(name)
        print(f"{name:20} {s.dataset:9} {s.input_size:5d} {s.reference_top1:10.1f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mixq`` command.

    Returns:
        The parser with all subcommands.
    """
    parser = argparse.ArgumentParser(
        prog="mixq",
        description="Mixed-precision post-training quantization for PyTorch models.",
        epilog=EPILOG_DATA,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "eval", help="FP32 vs quantized top-1 at a uniform bit-width or a BitConfig file",
        description="Measure FP32 top-1 and quantized top-1 on the test split (per-channel asymmetric "
                    "min/max weights, per-tensor 8-bit activations calibrated on --samples train images).",
        epilog=EPILOG_DATA,
    )
    _add_task_args(p)
    p.add_argument("--bits", type=int, help="uniform weight bits for every layer (2..8, 32 = float)")
    p.add_argument("--config", help="BitConfig JSON file (layer name -> bits)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "evoq", help="EvoQ: sensitivity-guided evolutionary bit search + feature calibration",
        description="Search per-layer weight bit-widths under a budget by tournament evolution (fitness: "
                    "output MSE against the float model on --samples images), then calibrate the quantized "
                    "weights on the same images. Writes config.json, result.json, report.md and plots to "
                    "--out; an interrupted search resumes from --out/search_state.json.",
        epilog=EPILOG_DATA,
    )
    _add_task_args(p)
    b = p.add_argument_group("budget (default: --target-bits 3.0)")
    b.add_argument("--target-bits", type=float, help="parameter-weighted average weight bits")
    b.add_argument("--size-mb", type=float, help="weight size in MB (sum params x bits / 8 / 2^20)")
    s = p.add_argument_group("search")
    s.add_argument("--iterations", type=int, default=1000, help="children T (default %(default)s)")
    s.add_argument("--population", type=int, default=16, help="population P (default %(default)s)")
    s.add_argument("--sample-size", type=int, default=8, help="tournament sample S (default %(default)s)")
    s.add_argument("--mutation-prob", type=float, default=0.1, help="per-layer mutation p (default %(default)s)")
    s.add_argument("--mutation", choices=["guided", "random"], default="guided",
                   help="sensitivity-guided or random +-1 mutation (default %(default)s)")
    s.add_argument("--min-bits", type=int, default=2, help="lowest weight bits (default %(default)s)")
    s.add_argument("--max-bits", type=int, default=8, help="highest weight bits (default %(default)s)")
    s.add_argument("--weight-range", choices=["minmax", "omse", "aciq"], default="minmax",
                   help="per-channel weight range: min/max (paper), MSE-optimal, or ACIQ (default %(default)s)")
    c = p.add_argument_group("feature calibration")
    c.add_argument("--no-calibrate", action="store_true", help="skip feature calibration")
    c.add_argument("--calib-epochs", type=int, default=CALIB_DEFAULTS.epochs,
                   help="steps over the calibration samples (default %(default)s)")
    c.add_argument("--calib-lr", type=float, default=CALIB_DEFAULTS.lr, help="learning rate (default %(default)s)")
    c.add_argument("--calib-alpha", type=float, default=CALIB_DEFAULTS.alpha,
                   help="weight of the output MSE (default %(default)s)")
    c.add_argument("--calib-beta", type=float, default=CALIB_DEFAULTS.beta,
                   help="weight of the intermediate-feature MSE (default %(default)s)")
    c.add_argument("--calib-optimizer", choices=["adam", "sgd"], default=CALIB_DEFAULTS.optimizer,
                   help="optimizer; the paper uses sgd with momentum 0.9 (default %(default)s)")
    c.add_argument("--calib-batch-size", type=int, default=CALIB_DEFAULTS.batch_size,
                   help="samples per step; lower it to save memory on large models (default %(default)s)")
    c.add_argument("--calib-no-augment", action="store_true",
                   help="show the calibration images as they are (no random shifts/flips)")
    p.add_argument("--no-uniform", action="store_true", help="skip evaluating the uniform-bit baseline")
    p.add_argument("--out", help="output folder (default runs/evoq-MODEL-BUDGET)")
    p.set_defaults(func=cmd_evoq)

    from mixq.cli.bench import add_bench_commands

    add_bench_commands(sub)
    from mixq.cli.proxies import add_proxy_commands

    add_proxy_commands(sub, _add_task_args, EPILOG_DATA)
    from mixq.cli.emq import add_emq_commands

    add_emq_commands(sub, _add_task_args, EPILOG_DATA)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixq`` console script.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit code (0 ok, 2 bad input).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.func(args) or 0)
    except MixqError as exc:
        print(f"mixq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
