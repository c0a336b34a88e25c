"""``mixq allocate``: ILP bit allocation from a proxy's per-layer costs, then evaluation (``--pareto``: a sweep)."""

from __future__ import annotations

import argparse

from mixq.allocate.pareto import run_allocation_pareto
from mixq.allocate.run import check_act_choices
from mixq.cli.common import EPILOG_DATA, add_allocate_args, add_task_args, allocate_command, task_from_args
from mixq.errors import MixqError
from mixq.fileio import locked
from mixq.paths import output_folder
from mixq.quant.cost import COSTS
from mixq.reports.pareto import pareto_table, write_pareto_report


def cmd_allocate(args: argparse.Namespace) -> int:
    """ILP bit allocation with a proxy's per-layer costs, then evaluation (or a budget sweep with --pareto)."""
    if args.pareto:
        return pareto_command(args)
    return allocate_command(args, calibrate_after=args.calibrate)


def pareto_command(args: argparse.Namespace) -> int:
    """``mixq allocate --pareto``: the ILP over a sweep of budgets, the front evaluated, pareto.json and a report.

    Args:
        args: parsed arguments.

    Returns:
        Exit code 0.
    """
    given = [flag for flag, value in (("--target-bits", args.target_bits), ("--target-mb", args.size_mb),
                                      ("--target-bitops", args.target_bitops), ("--max-gbitops", args.max_gbitops))
             if value is not None]
    if given:
        raise MixqError(f"--pareto sweeps the whole cost range and takes no budget; drop {' '.join(given)}")
    act_choices = check_act_choices(args.proxy, args.act_choices)  # before the model and data are loaded
    label = "emq" if args.proxy.endswith(".json") else args.proxy
    out = output_folder(args.out or f"runs/allocate-pareto-{label}-{args.cost}")
    with locked(out):
        task = task_from_args(args)
        record = run_allocation_pareto(
            task, args.proxy, cost=args.cost, points=args.pareto_budgets, front_points=args.front_points,
            bit_choices=args.bit_choices, act_choices=act_choices, proxy_batch=args.proxy_batch,
            act_bits=args.act_bits, calibrate_points=args.calibrate, progress=not args.no_progress, out=out)
        write_pareto_report(out)
    s = record["seconds"]
    print(f"{task.name}, {args.proxy} + ILP over {len(record['budgets'])} {args.cost} budgets: "
          f"{record['configs_distinct']} distinct configurations, {record['front_size']} non-dominated, "
          f"{len(record['front'])} evaluated (proxy {s['proxy']:.1f} s, ILP {s['ilp']:.1f} s, "
          f"evaluation {s['evaluation']:.1f} s)")
    print(pareto_table(record))
    print(f"wrote {out}/pareto.json, pareto.png, report.md and front/NN/config.json")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``allocate``.

    Args:
        sub: the main parser's subparsers.
    """
    epilog = EPILOG_DATA
    p = sub.add_parser("allocate", help="ILP bit allocation from a proxy's per-layer costs (scipy milp)",
                       epilog=epilog)
    add_task_args(p)
    p.add_argument("--proxy", default="hawq-v3",
                   help="additive proxy for the costs, a registered name or a genotype.json (default %(default)s); "
                        "sensitivity (EvoQ's single-layer output MSE) also prices input bits for --act-choices")
    add_allocate_args(p)
    p.add_argument("--calibrate", action="store_true",
                   help="also run feature calibration and report it (with --pareto: on every evaluated point)")
    g = p.add_argument_group("accuracy-cost front (--pareto)")
    g.add_argument("--pareto", action="store_true",
                   help="solve the ILP for a sweep of budgets from the cheapest to the dearest configuration, "
                        "evaluate the non-dominated ones, uniform W2/W3/W4/W8 and FP32; writes pareto.json, "
                        "pareto.png, report.md and front/NN/config.json")
    g.add_argument("--cost", choices=list(COSTS), default="bitops",
                   help="the swept cost axis: bits (average weight bits), mb or bitops (default %(default)s)")
    g.add_argument("--pareto-budgets", type=int, default=24, metavar="N",
                   help="evenly spaced budgets of the sweep, swept with the cost of every uniform configuration "
                        "of the search space (default %(default)s)")
    g.add_argument("--front-points", type=int, default=10, metavar="N",
                   help="at most this many front points are evaluated (default %(default)s)")
    p.set_defaults(func=cmd_allocate)
