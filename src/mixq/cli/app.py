"""The ``mixq`` command line: a thin layer that parses, calls the API, prints and writes artefacts.

Every bad input ends with one ``mixq: error: ...`` line on stderr and exit code 2; ``mixq --debug ...`` (or
``MIXQ_DEBUG=1``) shows the traceback behind it instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from mixq.cli import allocate as allocate_cmds
from mixq.cli import bench as bench_cmds
from mixq.cli import emq as emq_cmds
from mixq.cli import eval as eval_cmds
from mixq.cli import evoq as evoq_cmds
from mixq.cli import export as export_cmds
from mixq.cli import proxies as proxies_cmds
from mixq.cli import recalibrate as recalibrate_cmds
from mixq.cli.common import EPILOG_DATA
from mixq.errors import MixqError


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
    parser.add_argument("--debug", action="store_true",
                        help="on bad input, show the full traceback instead of one error line (also $MIXQ_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for module in (eval_cmds, evoq_cmds, recalibrate_cmds, bench_cmds, proxies_cmds, allocate_cmds, emq_cmds,
                   export_cmds):
        module.add_commands(sub)
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
        if args.debug or os.environ.get("MIXQ_DEBUG", "") not in ("", "0"):
            raise
        print(f"mixq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`mixq models | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

