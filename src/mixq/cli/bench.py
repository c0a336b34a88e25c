"""``mixq bench`` subcommands: build, export, info, query.

Wire into the main parser with ``add_bench_commands(sub)`` inside :func:`mixq.cli.build_parser`.
Every handler raises :class:`~mixq.errors.MixqError` for bad input, which ``mixq.cli.app`` turns into
one ``mixq: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mixq.bench.build import build_benchmark
from mixq.bench.store import MQBench
from mixq.bits import BitConfig
from mixq.cli.common import add_executor_args, executor_from_args
from mixq.errors import MixqError


def _parse_choices(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit-widths such as 2,3,4, got {text!r}") from None


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise MixqError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    return (i, n)


def cmd_bench_build(args: argparse.Namespace) -> int:
    """Create or resume a benchmark file."""
    pinned = None if args.pinned_bits == 0 else args.pinned_bits
    shard = _parse_shard(args.shard)
    with executor_from_args(args) as executor:
        bench = build_benchmark(
            args.file, args.model, args.n, seed=args.seed, mode=args.mode, samples=args.samples,
            data_root=args.data_root, model_root=args.model_root, n_test=args.n_test,
            progress=not args.no_progress, choices=args.choices, pinned_bits=pinned, checkpoint=args.checkpoint,
            batch_size=args.batch_size, shard=shard, executor=executor,
        )
    with bench:
        s = bench.summary()
        print(f"{args.file}: {s['entries']} configurations of {bench.model}; top-1 {s['top1_min']:.2f}.."
              f"{s['top1_max']:.2f} %, avg bits {s['avg_bits_min']:.3f}..{s['avg_bits_max']:.3f}")
    return 0


def cmd_bench_export(args: argparse.Namespace) -> int:
    """Export a benchmark to JSON Lines."""
    with MQBench.open(args.file, readonly=True) as bench:
        if args.out == "-":
            for e in bench.entries():
                sys.stdout.write(json.dumps(e.to_dict()) + "\n")
            return 0
        out = args.out or str(Path(args.file).with_suffix(".jsonl"))
        if Path(out).resolve() == Path(args.file).resolve():
            raise MixqError(f"--out {out!r} would overwrite the benchmark itself")
        count = bench.to_jsonl(out)
    print(f"wrote {count} lines to {out}")
    return 0


def cmd_bench_info(args: argparse.Namespace) -> int:
    """Print a benchmark's metadata and summary."""
    with MQBench.open(args.file, readonly=True) as bench:
        meta: dict[str, Any] = bench.meta
        summary = bench.summary()
    if args.json:
        print(json.dumps({"meta": meta, "summary": summary}, indent=2, sort_keys=True))
        return 0
    print(f"file            {args.file}")
    print(f"format          {meta['format']} v{meta['schema_version']}")
    print(f"model           {meta['model']} ({len(meta['layer_names'])} quantized layers)")
    print(f"checkpoint      {meta.get('checkpoint_file')} sha256 {meta.get('checkpoint_sha256')}")
    for key in ("quantizer", "data", "calibration", "sampling"):
        print(f"{key:15} {json.dumps(meta.get(key), sort_keys=True)}")
    print(f"created         {meta.get('created')} ({len(meta.get('sessions') or [])} build session(s))")
    if summary["entries"]:
        print(f"entries         {summary['entries']}; top-1 {summary['top1_min']:.2f}..{summary['top1_max']:.2f} "
              f"(mean {summary['top1_mean']:.2f}) %, avg bits {summary['avg_bits_min']:.3f}.."
              f"{summary['avg_bits_max']:.3f}, {summary['seconds_total'] or 0:.0f} s of evaluation")
    else:
        print("entries         0")
    return 0


def cmd_bench_query(args: argparse.Namespace) -> int:
    """Look up entries by index or by configuration file."""
    if (args.index is None) == (args.config is None):
        raise MixqError("give exactly one of --index I or --config FILE")
    with MQBench.open(args.file, readonly=True) as bench:
        entry = bench.get(args.index) if args.index is not None else bench.query(BitConfig.load(args.config))
    print(json.dumps(entry.to_dict()))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench build`` / ``bench export`` / ``bench info`` / ``bench query``.

    Args:
        subparsers: the object returned by ``parser.add_subparsers()`` of the ``mixq`` parser.

    Returns:
        The ``bench`` parser.
    """
    bench = subparsers.add_parser(
        "bench", help="MQ benchmark: label sampled bit configurations with quantized top-1",
        description="Build, inspect and export MQ benchmarks: SQLite files (format mixq-mqbench, schema v1) of "
                    "bit configurations labelled with their quantized top-1.",
    )
    bench.set_defaults(func=lambda _args: (bench.print_help(), 0)[1])
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")

    p = sub.add_parser(
        "build", help="create or resume a benchmark file",
        description="Sample bit configurations (default EMQ convention: first and last layer 8-bit, the others "
                    "from {2,3,4}) and label each with its top-1 on the test split, quantized by the foundation "
                    "PTQ: per-channel asymmetric min/max weights, per-tensor 8-bit activations calibrated on "
                    "--samples train images, BN folded, no reconstruction. Each label is committed at once; "
                    "rerunning the same command resumes an interrupted build.",
    )
    p.add_argument("file", help="benchmark file (SQLite), created or resumed")
    p.add_argument("--model", default="resnet20-jpeg", help="registry name or package.module:function "
                                                            "(default %(default)s)")
    p.add_argument("--checkpoint", help="state_dict file for a package.module:function model")
    p.add_argument("-n", "--n", type=int, default=100, help="number of configurations (default %(default)s)")
    p.add_argument("--mode", choices=["emq", "size-spread"], default="emq",
                   help="uniform per-layer draws (emq) or an even spread over model size (default %(default)s)")
    p.add_argument("--choices", type=_parse_choices, default=(2, 3, 4),
                   help="bit-widths of the free layers, comma-separated (default 2,3,4)")
    p.add_argument("--pinned-bits", type=int, default=8,
                   help="bits of the first and last layer; 0 = not pinned (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and calibration (default %(default)s)")
    p.add_argument("--samples", type=int, default=50, help="calibration images (default %(default)s)")
    p.add_argument("--data-root", help="data folder (default $MIXQ_DATA, ../shared/data, or the demo)")
    p.add_argument("--model-root", help="checkpoint folder (default $MIXQ_MODELS or ../shared/models)")
    p.add_argument("--n-test", type=int, default=None, help="evaluate on this many test images (default: all)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default %(default)s)")
    p.add_argument("--shard", metavar="I/N",
                   help="label only every N-th pending configuration from the I-th; run N processes with "
                        "0/N .. N-1/N on one file (e.g. OMP_NUM_THREADS=1 each)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_executor_args(p, "the labelling")
    p.set_defaults(func=cmd_bench_build)

    p = sub.add_parser("export", help="export a benchmark to JSON Lines")
    p.add_argument("file", help="benchmark file")
    p.add_argument("--out", help="output .jsonl (default: FILE with suffix .jsonl; '-' = stdout)")
    p.set_defaults(func=cmd_bench_export)

    p = sub.add_parser("info", help="show a benchmark's metadata and summary")
    p.add_argument("file", help="benchmark file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench_info)

    p = sub.add_parser("query", help="print one entry (by index or by BitConfig file) as JSON")
    p.add_argument("file", help="benchmark file")
    p.add_argument("--index", type=int, help="entry index")
    p.add_argument("--config", help="BitConfig JSON file (layer name -> bits)")
    p.set_defaults(func=cmd_bench_query)
    return bench
