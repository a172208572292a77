"""The ``flowc`` command line: the parser of every subcommand, and dispatch.

Each command lives in a module of its own (``cli/<command>.py``) with an
``add_parser(sub)`` that registers it and a ``run(args)`` that returns an
:class:`cli.common.ExitCode`. Results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cli.common import ExitCode, UsageError

COMMANDS = {
    "compile": "compile",
    "check": "check",
    "eval": "evaluate",
    "load": "load",
    "unload": "load",
    "fmt": "fmt",
    "import": "importer",
    "verify": "verify",
    "diff": "diff",
    "audit": "audit",
    "simulate": "simulate",
    "agent": "agent",
    "ct": "ct",
}
"""Each subcommand and the module under ``cli/`` that defines it, in the order
``flowc --help`` lists them."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser for ``command`` alone when it names one (only its
    module is imported: a ``flowc load`` or ``flowc agent`` start does not pay
    for every other command's imports), else for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowc",
        description="Compile container network policy to BPF and tc-flower, and check it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"cli.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowc`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return int(status)
    except UsageError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
