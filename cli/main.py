"""The ``flowc`` command line: the parser of every subcommand, and dispatch.

Each command lives in a module of its own (``cli/<command>.py``) with an
``add_parser(sub)`` that registers it and a ``run(args)`` that returns an
:class:`cli.common.ExitCode`. Results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import (
    agent,
    audit,
    check,
    compile,
    ct,
    diff,
    evaluate,
    fmt,
    importer,
    load,
    simulate,
    verify,
)
from cli.common import ExitCode, UsageError

COMMANDS = (compile, check, evaluate, load, fmt, importer, verify, diff, audit, simulate, agent, ct)
"""The command modules, in the order ``flowc --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowc",
        description="Compile container network policy to BPF and tc-flower, and check it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowc`` console script."""
    parser = build_parser()
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
