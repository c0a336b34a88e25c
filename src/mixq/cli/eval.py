"""``mixq eval`` and ``mixq models``: FP32 vs quantized top-1, and the model registry."""

from __future__ import annotations

import argparse
import json
import time

from mixq.cli.common import (
    EPILOG_DATA,
    add_executor_args,
    add_task_args,
    bits_from_args,
    check_bits_arg,
    executor_from_args,
    task_from_args,
)
from mixq.errors import MixqError
from mixq.evaluation.sweep import uniform_sweep
from mixq.evaluation.task import Task
from mixq.executor.base import resolve_device
from mixq.models import get_model_spec, list_models
from mixq.provenance import versions
from mixq.quant.model import QuantModel


def cmd_eval(args: argparse.Namespace) -> int:
    """FP32 and quantized top-1 of a model at a uniform bit-width or a BitConfig file."""
    if args.bits is not None and len(args.bits) > 1:
        return _sweep(args)
    if args.bits is not None:
        args.bits = args.bits[0]
    if args.executor != "serial" or args.workers is not None or args.address is not None:
        raise MixqError("--executor, --workers and --address spread a sweep (--bits B1 B2 ...); one "
                        "evaluation runs here")
    bits = bits_from_args(args, "give exactly one of --bits B or --config FILE")
    t0 = time.perf_counter()
    task = task_from_args(args)
    progress = not args.no_progress
    device = resolve_device(args.device)
    fp32 = task.top1(task.model.to(device), args.batch_size, progress, desc="fp32")
    qm = QuantModel(task.model, calib=task.calib.to(device), act_bits=args.act_bits)
    qm.set_bits(bits)
    quant = task.top1(qm, args.batch_size, progress, desc="quantized")
    result = {
        **_task_fields(task),
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
        "device": str(device),
        "bn_folded": len(qm.fold_report.folded),
        "bn_unfolded": len(qm.fold_report.unfolded),
        "seconds": round(time.perf_counter() - t0, 2),
        "versions": versions(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        what = f"{args.bits}-bit weights" if args.bits is not None else f"config {args.config}"
        print(f"model      {task.name}  ({task.dataset}, {len(task.test)} {task.eval_split} images, "
              f"{args.samples} calibration samples, seed {args.seed})")
        print(f"quantizer  {what}, {args.act_bits}-bit activations; "
              f"{len(qm.fold_report.folded)} BatchNorm folded")
        print(f"{'':10} {'top-1 %':>8} {'size MB':>9} {'avg bits':>9}")
        print(f"{'FP32':10} {fp32:8.2f} {qm.size_mb(32):9.4f} {32:9.2f}")
        print(f"{'quantized':10} {quant:8.2f} {qm.size_mb():9.4f} {qm.avg_bits():9.2f}")
    return 0


def _task_fields(task: Task) -> dict[str, str]:
    """The first keys of both result objects of ``mixq eval``: model, dataset and split."""
    return {"model": task.name, "dataset": task.dataset, "split": task.split_text()}


def _sweep(args: argparse.Namespace) -> int:
    """``mixq eval --bits B1 B2 ...``: FP32 and the quantized top-1 at each uniform bit-width, one table."""
    for b in args.bits:
        check_bits_arg(b, "--bits")
    check_bits_arg(args.act_bits, "--act-bits")
    if args.config is not None:
        raise MixqError("give exactly one of --bits B ... or --config FILE")
    t0 = time.perf_counter()
    task = task_from_args(args)
    progress = not args.no_progress
    with executor_from_args(args) as executor:
        fp32 = task.top1(task.model, args.batch_size, progress, desc="fp32")
        qm = QuantModel(task.model, calib=task.calib, act_bits=args.act_bits)
        rows = uniform_sweep(qm, task, args.bits, args.batch_size, executor=executor, progress=progress)
        where = executor.describe()
    result = {
        **_task_fields(task),
        "act_bits": args.act_bits,
        "fp32_top1": round(fp32, 3),
        "fp32_size_mb": qm.size_mb(32),
        "rows": [{"bits": r.bits, "quant_top1": round(r.top1, 3), "size_mb": r.size_mb, "avg_bits": r.avg_bits}
                 for r in rows],
        "n_test": len(task.test),
        "samples": args.samples,
        "seed": args.seed,
        "executor": where,
        "seconds": round(time.perf_counter() - t0, 2),
        "versions": versions(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"model      {task.name}  ({task.dataset}, {len(task.test)} {task.eval_split} images, "
          f"{args.samples} calibration samples, seed {args.seed}); {args.act_bits}-bit activations")
    print(f"{'weights':10} {'top-1 %':>8} {'size MB':>9} {'avg bits':>9}")
    print(f"{'FP32':10} {fp32:8.2f} {qm.size_mb(32):9.4f} {32:9.2f}")
    for r in rows:
        print(f"{f'{r.bits}-bit':10} {r.top1:8.2f} {r.size_mb:9.4f} {r.avg_bits:9.2f}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the registered models."""
    print(f"{'name':20} {'dataset':9} {'input':>5} {'fp32 top-1':>10}")
    for name in list_models(args.pattern):
        s = get_model_spec(name)
        print(f"{name:20} {s.dataset:9} {s.input_size:5d} {s.reference_top1:10.1f}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` and ``models``.

    Args:
        sub: the main parser's subparsers.
    """
    p = sub.add_parser(
        "eval", help="FP32 vs quantized top-1 at a uniform bit-width or a BitConfig file",
        description="Measure FP32 top-1 and quantized top-1 on the test split (per-channel asymmetric "
                    "min/max weights, per-tensor 8-bit activations calibrated on --samples train images).",
        epilog=EPILOG_DATA,
    )
    add_task_args(p)
    p.add_argument("--bits", type=int, nargs="+", metavar="B",
                   help="uniform weight bits for every layer (2..8, 32 = float); several (e.g. 2 3 4 8) "
                        "give a sweep, one row each, which --executor ray spreads over workers")
    p.add_argument("--config", help="BitConfig JSON file (layer name -> bits)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_executor_args(p, "the evaluation")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)
