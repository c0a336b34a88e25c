"""The ``mixq`` command line: a thin layer over the library, one module per command group.

:mod:`~mixq.cli.app` builds the parser and runs a command; :mod:`~mixq.cli.common` holds the shared
arguments and task loading. Command modules import the library, never one another.
"""

from mixq.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
