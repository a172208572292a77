"""``flowc fmt``: policy files in canonical form (print, check, or rewrite)."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from cli.common import ExitCode, Subparsers
from compiler.diagnostics import render
from compiler.fmt import format_source
from compiler.parser import parse
from compiler.resolve import read_source


def add_parser(sub: Subparsers) -> None:
    """Register ``fmt``."""
    p = sub.add_parser("fmt", help="print policy files in canonical form")
    p.add_argument("files", nargs="+", metavar="POLICY")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 and show a diff if unformatted")
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``flowc fmt``."""
    status = ExitCode.OK
    for path in args.files:
        text, problem = read_source(Path(path), path)
        if problem is not None:
            print(render(problem, {}), file=sys.stderr)
            status = ExitCode.FAIL
            continue
        assert text is not None
        source, diags = parse(text, path)
        if source is None:
            for d in diags:
                print(render(d, {path: text}), file=sys.stderr)
            status = ExitCode.FAIL
            continue
        formatted = format_source(source, text)
        if args.check:
            if formatted != text:
                diff = difflib.unified_diff(
                    text.splitlines(keepends=True),
                    formatted.splitlines(keepends=True),
                    fromfile=path,
                    tofile=f"{path} (formatted)",
                )
                sys.stdout.writelines(diff)
                print(f"flowc: {path} is not formatted", file=sys.stderr)
                status = ExitCode.FAIL
        elif args.write:
            if formatted != text:
                Path(path).write_text(formatted)
        else:
            sys.stdout.write(formatted)
    return status
