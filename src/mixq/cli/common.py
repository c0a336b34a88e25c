"""What the command modules share: the model/data arguments, task loading, bit and budget arguments.

Every command module imports this one and the library, never another command module.
"""

from __future__ import annotations

import argparse

from mixq.allocate.run import check_act_choices, run_allocation
from mixq.bits import VALID_BITS, BitConfig, Budget
from mixq.errors import MixqError
from mixq.evaluation.task import Task, load_task
from mixq.evoq.calibrate import LR_SCALINGS, CalibrationConfig
from mixq.executor import EXECUTORS, Executor, make_executor
from mixq.fileio import locked
from mixq.paths import output_folder
from mixq.quant.cost import parse_count
from mixq.quant.ranges import RANGE_METHODS

EPILOG_DATA = (
    "Data and checkpoints: --data-root / $MIXQ_DATA (a folder holding cifar10-jpeg/ and imagenet-sample/) "
    "and --model-root / $MIXQ_MODELS (holding cifar10/ and imagenet/); by default ../shared/data and "
    "../shared/models are used when present, else the embedded demo (ResNet-20-jpeg, 200 train and 500 "
    "test CIFAR-10 images)."
)


def add_task_args(p: argparse.ArgumentParser) -> None:
    """The model, data, calibration and evaluation arguments of every command that loads a task.

    Args:
        p: the parser.
    """
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
    g.add_argument("--eval-split", choices=["test", "val"], default="test",
                   help="images to evaluate on: test (default), or val, CIFAR-10's fixed validation part of "
                        "train (500 per class, never drawn for calibration), for choosing settings without "
                        "touching the test split")
    g.add_argument("--act-bits", type=int, default=8,
                   help="input (activation) bits of every quantized layer, 32 = float (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def task_from_args(args: argparse.Namespace) -> Task:
    """Load the task named by :func:`add_task_args` arguments.

    Args:
        args: parsed arguments.

    Returns:
        The :class:`~mixq.evaluation.task.Task`.
    """
    if args.batch_size < 1:
        raise MixqError(f"--batch-size must be at least 1, got {args.batch_size}")
    return load_task(
        args.model, samples=args.samples, seed=args.seed, data_root=args.data_root,
        model_root=args.model_root, n_test=args.n_test, checkpoint=args.checkpoint,
        dataset=args.dataset, mean=args.mean, std=args.std, eval_split=getattr(args, "eval_split", "test"),
    )


def check_bits_arg(value: int, flag: str) -> int:
    """Check a bit-width argument.

    Args:
        value: the value given.
        flag: the flag, for the message.

    Returns:
        The value.
    """
    if value not in VALID_BITS:
        raise MixqError(f"{flag} {value} is out of range: expected 2..8, or 32 for float")
    return value


def bits_from_args(args: argparse.Namespace, neither_or_both: str) -> BitConfig | int:
    """The weight bits of ``--bits B`` or ``--config FILE`` (exactly one), with ``--act-bits`` checked too.

    Args:
        args: parsed arguments with ``bits``, ``config`` and ``act_bits``.
        neither_or_both: the message when neither or both are given.

    Returns:
        The uniform bit-width, or the loaded :class:`~mixq.bits.BitConfig`.
    """
    if (args.bits is None) == (args.config is None):
        raise MixqError(neither_or_both)
    if args.bits is not None:
        check_bits_arg(args.bits, "--bits")
    check_bits_arg(args.act_bits, "--act-bits")
    return BitConfig.load(args.config) if args.config else args.bits


def add_budget_args(p: argparse.ArgumentParser, default_bits: float = 3.0) -> None:
    """``--target-bits``, ``--target-mb`` (alias ``--size-mb``) and ``--target-bitops``: any of them, or several.

    Args:
        p: the parser.
        default_bits: the average-bits budget when none is given.
    """
    g = p.add_argument_group(f"budget (any of them; default --target-bits {default_bits})")
    g.add_argument("--target-bits", type=float, help="parameter-weighted average weight bits")
    g.add_argument("--target-mb", "--size-mb", dest="size_mb", type=float,
                   help="weight size in MB (sum params x bits / 8 / 2^20; biases not counted)")
    g.add_argument("--target-bitops", metavar="N",
                   help="BitOps per sample: sum over layers of MACs x weight bits x activation bits, MACs counted "
                        "from one traced forward; a number with an optional k/M/G suffix, e.g. 1.2G")


def budget_from_args(args: argparse.Namespace, default_bits: float = 3.0) -> Budget:
    """The budget of :func:`add_budget_args` arguments (``default_bits`` average bits when none is given).

    Args:
        args: parsed arguments.
        default_bits: the default average-bits budget.

    Returns:
        The :class:`~mixq.bits.Budget`.
    """
    bitops = None if args.target_bitops is None else parse_count(args.target_bitops, "--target-bitops")
    if args.target_bits is None and args.size_mb is None and bitops is None:
        args.target_bits = default_bits
    return Budget(avg_bits=args.target_bits, size_mb=args.size_mb, bitops=bitops)


def budget_label(budget: Budget) -> str:
    """A short folder-name label of a budget, e.g. ``"3.0"``, ``"0.1MB"`` or ``"1.2GBitOps"``."""
    if budget.avg_bits is not None:
        return f"{budget.avg_bits}"
    if budget.size_mb is not None:
        return f"{budget.size_mb}MB"
    return f"{budget.bitops / 1e9:.4g}GBitOps"


def add_allocate_args(p: argparse.ArgumentParser) -> None:
    """The budget and solver arguments shared by ``mixq allocate`` and ``mixq emq allocate``.

    Args:
        p: the parser.
    """
    add_budget_args(p)
    p.add_argument("--max-gbitops", type=float,
                   help="BitOps budget per sample, in GBitOps (as --target-bitops NG; the smaller one applies)")
    p.add_argument("--bit-choices", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    p.add_argument("--act-choices", type=int, nargs="+", metavar="B",
                   help="also choose each layer's input (activation) bits among these, e.g. 4 6 8 (needs --proxy "
                        "sensitivity; default: weights only, every input at --act-bits)")
    p.add_argument("--proxy-batch", type=int, default=64, help="images for the proxy statistics")
    p.add_argument("--out", help="output folder (default runs/allocate-PROXY-BUDGET)")


def allocate_command(args: argparse.Namespace, calibrate_after: bool) -> int:
    """Run an allocation from parsed ``add_allocate_args`` arguments and print its summary.

    Args:
        args: parsed arguments.
        calibrate_after: also run feature calibration.

    Returns:
        Exit code 0.
    """
    budget = budget_from_args(args)  # --target-bits 3.0 unless a budget is given (--max-gbitops alone: as before)
    act_choices = check_act_choices(args.proxy, args.act_choices)  # before the model and data are loaded
    label = "emq" if args.proxy.endswith(".json") else args.proxy
    size_label = args.target_bits or args.size_mb
    out = output_folder(args.out or f"runs/allocate-{label}-{size_label or budget_label(budget)}")
    with locked(out):  # a busy --out fails before the model and data are loaded
        task = task_from_args(args)
        r = run_allocation(task, args.proxy, budget, bit_choices=args.bit_choices, max_gbitops=args.max_gbitops,
                           act_choices=act_choices, proxy_batch=args.proxy_batch, act_bits=args.act_bits,
                           calibrate_after=calibrate_after, progress=not args.no_progress, out=out)
    inputs = sorted(set(r["input_bits"].values()))
    print(f"{task.name}, {args.proxy} + ILP: {r['avg_bits']:.3f} avg bits, {r['size_mb']:.4f} MB, "
          f"{r['bitops'] / 1e9:.4g} GBitOps (inputs at {'/'.join(map(str, inputs))} bits); "
          f"top-1 FP32 {r['fp32_top1']:.2f}, allocated {r['quant_top1']:.2f}"
          + (f", calibrated {r['calibrated_top1']:.2f}" if "calibrated_top1" in r else ""))
    print(f"wrote {out}/config.json and result.json")
    return 0


def add_executor_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--executor``, ``--workers``, ``--address`` and ``--device``: where the evaluations run.

    Args:
        p: the parser.
        what: the work they place, for the group title (e.g. "the labelling").
    """
    g = p.add_argument_group(f"where {what} runs")
    g.add_argument("--executor", choices=list(EXECUTORS), default="serial",
                   help="serial: in this process (default); ray: a pool of Ray actors, each holding the model "
                        "and data once (pip install 'mixq[ray]')")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray actors in the pool, one CPU each (default 2; --executor ray only)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray that stops "
                        "with the command; --executor ray only)")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA when present), cpu, cuda or cuda:N; with Ray, resolved on each worker and "
                        "a CUDA device asks Ray for one GPU per worker (default %(default)s)")


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor named by :func:`add_executor_args` arguments (close it when done).

    Args:
        args: parsed arguments.

    Returns:
        The :class:`~mixq.executor.Executor`.
    """
    return make_executor(args.executor, workers=args.workers, address=args.address, device=args.device)


CALIB_DEFAULTS = CalibrationConfig()


def calibration_from_args(args: argparse.Namespace, seed: int) -> CalibrationConfig:
    """The feature-calibration settings of :func:`add_calibration_args` arguments.

    Args:
        args: parsed arguments.
        seed: seed of the calibration's batch order and augmentation.

    Returns:
        The configuration.
    """
    return CalibrationConfig(
        epochs=args.calib_epochs, lr=args.calib_lr, alpha=args.calib_alpha, beta=args.calib_beta,
        optimizer=args.calib_optimizer, augment=not args.calib_no_augment, batch_size=args.calib_batch_size,
        seed=seed, holdout=args.calib_holdout, refit=args.calib_refit,
        lr_scaling=args.calib_lr_scaling,
        grid_init=None if args.calib_grid_init == "search" else args.calib_grid_init,
    )


def add_calibration_args(p: argparse.ArgumentParser, skip: bool = False) -> None:
    """The feature-calibration arguments (``--calib-*``; defaults are :class:`CalibrationConfig`'s).

    Args:
        p: the parser.
        skip: also offer ``--no-calibrate``.
    """
    c = p.add_argument_group("feature calibration")
    if skip:
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
    c.add_argument("--calib-holdout", type=int, default=CALIB_DEFAULTS.holdout,
                   help="calibration samples held out of training: every 10 epochs the output error on them is "
                        "checked and the best weights kept, so calibration stops where it starts to over-fit its "
                        "samples (e.g. 10 of 50; default %(default)s = off)")
    c.add_argument("--calib-refit", action="store_true",
                   help="with --calib-holdout: use the held-out check only to choose the epochs (or no "
                        "calibration), then calibrate again on all samples for that many epochs (twice the time)")
    c.add_argument("--calib-grid-init", choices=[*RANGE_METHODS, "search"], default=CALIB_DEFAULTS.grid_init,
                   help="range that each layer's learned weight grid starts from: omse (MSE-optimal clipping), "
                        "minmax, aciq, or search (the run's own --weight-range). Measured on CIFAR-10 validation "
                        "(results/search-range): starting minmax-searched models from their min/max grids gains "
                        "0.37 on ShuffleNetV2 at 3.0 bits and loses 0.31 / 0.51 on ResNet-20 at 3.0 / 2.5 "
                        "(default %(default)s)")
    c.add_argument("--calib-lr-scaling", choices=list(LR_SCALINGS), default=CALIB_DEFAULTS.lr_scaling,
                   help="relative: each tensor's learning rate is --calib-lr times its RMS, so wide layers with "
                        "small weights move as far, relative to their size, as narrow ones; step: a layer's "
                        "weights at --calib-lr times its quantization step's RMS, so low-bit layers move further "
                        "(default %(default)s)")
