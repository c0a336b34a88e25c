"""The ``mixq`` command line: a thin layer that parses, calls the API, prints and writes artefacts.

Every bad input ends with one ``mixq: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence

from mixq.errors import MixqError

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
    from mixq.task import load_task

    return load_task(
        args.model, samples=args.samples, seed=args.seed, data_root=args.data_root,
        model_root=args.model_root, n_test=args.n_test, checkpoint=args.checkpoint,
        dataset=args.dataset, mean=args.mean, std=args.std,
    )


def _check_bits_arg(value: int, flag: str) -> int:
    from mixq.config import VALID_BITS

    if value not in VALID_BITS:
        raise MixqError(f"{flag} {value} is out of range: expected 2..8, or 32 for float")
    return value


# -- mixq eval -------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    """FP32 and quantized top-1 of a model at a uniform bit-width or a BitConfig file."""
    from mixq.config import BitConfig
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

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Later layers (searches, benchmarks) add their subcommands here.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


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
