"""``flowc check``: errors and warnings of a policy file."""

from __future__ import annotations

import argparse
import json
import sys

from cli.common import ExitCode, Subparsers, print_diagnostics
from compiler.diagnostics import WARNING, summary
from compiler.frontend import compile_file


def add_parser(sub: Subparsers) -> None:
    """Register ``check``."""
    p = sub.add_parser("check", help="report errors and warnings (shadowed, redundant rules)")
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``flowc check``."""
    result = compile_file(args.policy, lint=True)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "file": args.policy,
                    "ok": result.ok,
                    "diagnostics": [d.as_dict() for d in result.diagnostics],
                },
                indent=2,
            )
        )
    else:
        print_diagnostics(result, sys.stderr)
        n_rules = sum(len(p.rules) for p in result.program.policies) if result.program else 0
        verdict = summary(result.diagnostics) or "ok"
        extra = f" ({n_rules} IR rules)" if result.program else ""
        print(f"{args.policy}: {verdict}{extra}", file=sys.stderr)
    if not result.ok:
        return ExitCode.FAIL
    if args.strict and any(d.severity == WARNING for d in result.diagnostics):
        return ExitCode.FAIL
    return ExitCode.OK
