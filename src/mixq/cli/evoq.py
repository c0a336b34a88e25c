"""``mixq evoq``: sensitivity-guided evolutionary bit search, feature calibration and its report."""

from __future__ import annotations

import argparse

from mixq.bits import Budget
from mixq.cli.common import (
    EPILOG_DATA,
    add_budget_args,
    add_calibration_args,
    add_executor_args,
    add_task_args,
    budget_from_args,
    budget_label,
    calibration_from_args,
    check_bits_arg,
    executor_from_args,
    task_from_args,
)
from mixq.errors import MixqError
from mixq.evoq.bitsearch import EvoQConfig
from mixq.evoq.calibrate import CalibrationConfig
from mixq.evoq.pareto import PARETO_DEFAULTS, SWEEP_DEFAULTS
from mixq.evoq.pipeline import ParetoOptions, RunOptions, run_evoq, run_evoq_pareto
from mixq.fileio import locked
from mixq.paths import output_folder
from mixq.quant.cost import parse_count
from mixq.reports.evoq import write_evoq_report
from mixq.reports.pareto import pareto_table, write_pareto_report


def cmd_evoq(args: argparse.Namespace) -> int:
    """EvoQ end to end: sensitivity, evolutionary search, feature calibration, report."""
    check_bits_arg(args.act_bits, "--act-bits")
    if args.pareto:
        return _pareto(args)
    budget = budget_from_args(args)
    config = EvoQConfig(
        population=args.population or 16, sample=args.sample_size, iterations=args.iterations or 1000,
        mutation_prob=args.mutation_prob, min_bits=args.min_bits, max_bits=args.max_bits,
        mutation=args.mutation, seed=args.seed, offspring=args.offspring,
        act_choices=tuple(args.act_choices or ()), init=args.init,
    )
    out = args.out or f"runs/evoq-{args.model.replace(':', '_')}-{budget_label(budget)}"
    with locked(output_folder(out)):  # a bad or busy --out fails before the model and data are loaded
        return _run(args, budget, config, out)


def _calibration(args: argparse.Namespace) -> CalibrationConfig:
    return calibration_from_args(args, args.seed)


def _pareto(args: argparse.Namespace) -> int:
    """``--pareto``: one search for the whole front, its points evaluated, pareto.json and the plot."""
    cap = None
    if args.target_bits is not None or args.size_mb is not None or args.target_bitops is not None:
        cap = budget_from_args(args)
    defaults = SWEEP_DEFAULTS if args.pareto_method == "sweep" else PARETO_DEFAULTS
    config = EvoQConfig(
        population=args.population or defaults.population,
        sample=args.sample_size if args.pareto_method == "sweep" else min(args.sample_size, 2),
        iterations=args.iterations or defaults.iterations, mutation_prob=args.mutation_prob,
        min_bits=args.min_bits, max_bits=args.max_bits, mutation=args.mutation, seed=args.seed,
        offspring=args.offspring, act_choices=tuple(args.act_choices or ()), init=args.init,
    )
    if args.front_points < 2:
        raise MixqError(f"--front-points must be at least 2, got {args.front_points}")
    at = tuple(parse_count(v, "--at") for v in (args.at or ()))
    pareto = ParetoOptions(cost=args.pareto, points=args.front_points, at=at, calibrate=args.calibrate_front,
                           method=args.pareto_method)
    out = args.out or f"runs/evoq-pareto-{args.model.replace(':', '_')}-{args.pareto}"
    with locked(output_folder(out)):
        task = task_from_args(args)
        options = RunOptions(budget=Budget(avg_bits=config.max_bits), act_bits=args.act_bits,
                             weight_range=args.weight_range, calibration=_calibration(args),
                             progress=not args.no_progress, prefix_mb=args.prefix_mb,
                             channels_last=args.channels_last)
        with executor_from_args(args) as executor:
            r = run_evoq_pareto(task, options, config, pareto, out, overwrite=args.overwrite, cap=cap,
                                executor=executor)
    write_pareto_report(out)
    print(f"model      {r['model']}  ({r['n_test']} images of {r['test_split']}, {r['samples']} calibration samples, "
          f"seed {r['seed']})")
    print(f"front      {r['front_size']} non-dominated configurations of (output MSE, {r['cost']}) from "
          f"{r['evaluations']} evaluations in {r['seconds']['search']:.1f} s; {len(r['front'])} evaluated")
    print(pareto_table(r))
    print(f"wrote {out}/pareto.json, report.md, pareto.png and front/*/config.json")
    return 0


def _run(args: argparse.Namespace, budget: Budget, config: EvoQConfig, out: str) -> int:
    """Load the task, run EvoQ into the (locked) output folder, write the report, print the summary."""
    task = task_from_args(args)
    calibration = _calibration(args)
    options = RunOptions(budget=budget, act_bits=args.act_bits, weight_range=args.weight_range,
                         calibrate=not args.no_calibrate, calibration=calibration,
                         evaluate_uniform=not args.no_uniform, progress=not args.no_progress,
                         prefix_mb=args.prefix_mb, channels_last=args.channels_last)
    with executor_from_args(args) as executor:
        r = run_evoq(task, options, config, out, overwrite=args.overwrite, executor=executor)
    write_evoq_report(out)
    print(f"model      {r['model']}  ({r['n_test']} test images, {r['samples']} calibration samples, "
          f"seed {r['seed']})")
    print(f"budget     {r['budget']}; found {r['avg_bits']:.3f} avg bits, {r['size_mb']:.4f} MB, "
          f"{r['bitops'] / 1e9:.4g} GBitOps in {r['search_seconds']:.1f} s ({r['evaluations']} evaluations)")
    print(f"{'':28} {'top-1 %':>8}")
    print(f"{'FP32':28} {r['fp32_top1']:8.2f}")
    if "uniform_top1" in r:
        print(f"{'uniform ' + str(r['uniform_bits']) + '-bit':28} {r['uniform_top1']:8.2f}")
    print(f"{'EvoQ search':28} {r['search_top1']:8.2f}")
    if not args.no_calibrate:
        print(f"{'EvoQ + feature calibration':28} {r['quant_top1']:8.2f}")
    print(f"wrote {out}/config.json, result.json, report.md and plots")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``evoq``.

    Args:
        sub: the main parser's subparsers.
    """
    p = sub.add_parser(
        "evoq", help="EvoQ: sensitivity-guided evolutionary bit search + feature calibration",
        description="Search per-layer weight bit-widths under a budget by tournament evolution (fitness: "
                    "output MSE against the float model on --samples images), then calibrate the quantized "
                    "weights on the same images. Writes config.json, result.json, report.md and plots to "
                    "--out; an interrupted run resumes from --out (sensitivity.json, search_state.json, "
                    "checkpointed every generation) when rerun with the same settings; other settings are "
                    "refused unless --overwrite.",
        epilog=EPILOG_DATA,
    )
    add_task_args(p)
    add_executor_args(p, "the sensitivity table and the search's fitness evaluations")
    add_budget_args(p)
    s = p.add_argument_group("search")
    s.add_argument("--act-choices", type=int, nargs="+", metavar="B",
                   help="also search each layer's input (activation) bits among these, e.g. 4 6 8 (default: "
                        "weights only, every input at --act-bits)")
    s.add_argument("--iterations", type=int,
                   help="children T (default 1000; with --pareto: 1500 over all budgets, 2000 for nsga2)")
    s.add_argument("--population", type=int, help="population P (default 16; 32 with --pareto-method nsga2)")
    s.add_argument("--sample-size", type=int, default=8, help="tournament sample S (default %(default)s)")
    s.add_argument("--offspring", type=int, default=1,
                   help="children per generation, evaluated as one batch: 1 is the paper's steady state; set it "
                        "to --workers so a Ray pool evaluates a generation in parallel (default %(default)s)")
    s.add_argument("--mutation-prob", type=float, default=0.1, help="per-layer mutation p (default %(default)s)")
    s.add_argument("--mutation", choices=["guided", "random"], default="guided",
                   help="sensitivity-guided or random +-1 mutation (default %(default)s)")
    s.add_argument("--init", choices=["uniform", "ilp"], default="uniform",
                   help="first population around the uniform policy (paper) or around the exact optimum of the "
                        "sensitivity table's per-layer MSEs taken as additive (ILP) (default %(default)s)")
    s.add_argument("--min-bits", type=int, default=2, help="lowest weight bits (default %(default)s)")
    s.add_argument("--max-bits", type=int, default=8, help="highest weight bits (default %(default)s)")
    s.add_argument("--weight-range", choices=["minmax", "omse", "aciq"], default="minmax",
                   help="per-channel weight range: min/max (paper), MSE-optimal, or ACIQ (default %(default)s)")
    add_calibration_args(p, skip=True)
    f = p.add_argument_group("Pareto front (--pareto): every budget in one run")
    f.add_argument("--pareto", choices=["bits", "mb", "bitops"],
                   help="search the non-dominated front of (output MSE, this cost) in one run instead of one budget; "
                        "a --target-* budget given too caps every configuration. Writes pareto.json, pareto.png, "
                        "report.md and front/NN/config.json")
    f.add_argument("--pareto-method", choices=["sweep", "nsga2"], default="sweep",
                   help="sweep: EvoQ at each --at budget (or --front-points budgets spread over the cost range), "
                        "loosest first, each warm-started from the last one's population, one fitness cache for all "
                        "(1,500 children in all by default); nsga2: one population (P 32, 2,000 children) under "
                        "NSGA-II selection over the whole range (default %(default)s)")
    f.add_argument("--front-points", type=int, default=10,
                   help="front points evaluated on the test split, spread evenly over its cost (default %(default)s)")
    f.add_argument("--at", nargs="+", metavar="COST",
                   help="budgets on the --pareto axis whose best front point is evaluated too, and which the sweep "
                        "searches (e.g. --pareto bits --at 2.5 3 3.5 4; BitOps accept k/M/G suffixes)")
    f.add_argument("--calibrate-front", action="store_true",
                   help="feature-calibrate every evaluated point and uniform configuration (one calibration each; "
                        "about a minute apiece for ResNet-20 on 2 cores)")
    p.add_argument("--no-uniform", action="store_true", help="skip evaluating the uniform-bit baseline")
    p.add_argument("--prefix-mb", type=float, default=2048.0,
                   help="memory (MiB) for recent configurations' layer outputs: a child replays its parent's "
                        "unchanged leading layers instead of recomputing them, same search bit for bit; "
                        "0 = off (default %(default)s; serial executor only)")
    p.add_argument("--channels-last", action="store_true",
                   help="run the quantized model in the channels-last memory format: the same model (results "
                        "differ only by float rounding), faster on CPU for some networks (EfficientNet-Lite0 "
                        "1.5-2.8x, not ShuffleNetV2): benchmarks/channels_last.py measures yours")
    p.add_argument("--out", help="output folder (default runs/evoq-MODEL-BUDGET)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an earlier run's files in --out instead of resuming it")
    p.set_defaults(func=cmd_evoq)

