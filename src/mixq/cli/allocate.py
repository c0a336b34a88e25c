"""``mixq allocate``: ILP bit allocation from a proxy's per-layer costs, then evaluation."""

from __future__ import annotations

import argparse

from mixq.cli.common import EPILOG_DATA, add_allocate_args, add_task_args, allocate_command


def cmd_allocate(args: argparse.Namespace) -> int:
    """ILP bit allocation with a proxy's per-layer costs, then evaluation."""
    return allocate_command(args, calibrate_after=args.calibrate)


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
                   help="additive proxy for the costs, a registered name or a genotype.json (default %(default)s)")
    add_allocate_args(p)
    p.add_argument("--calibrate", action="store_true", help="also run feature calibration and report it")
    p.set_defaults(func=cmd_allocate)
