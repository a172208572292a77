"""``flowc import``: foreign rule sets and traces (ClassBench) as flowc DSL and packet lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import ExitCode, Subparsers, write_output
from compiler import classbench
from compiler.diagnostics import render
from compiler.resolve import read_source


def add_parser(sub: Subparsers) -> None:
    """Register ``import``."""
    p = sub.add_parser("import", help="turn foreign rule sets into flowc DSL")
    p.add_argument("format", choices=["classbench", "classbench-trace"])
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--actions",
        choices=list(classbench.ACTION_MODES),
        default="mark",
        help="mark: filter i gets 'mark i'; allow-drop: random allow/drop from --seed",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --actions allow-drop")
    p.add_argument("--dev", default="eth0", help="device of the imported policy's hook")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``flowc import classbench|classbench-trace``."""
    text, problem = read_source(Path(args.file), args.file)
    if problem is not None:
        print(render(problem, {}), file=sys.stderr)
        return ExitCode.FAIL
    assert text is not None
    try:
        if args.format == "classbench":
            filters = classbench.parse_filters(text.splitlines())
            output = classbench.filters_to_policy(
                filters,
                source_name=Path(args.file).name,
                actions=args.actions,
                seed=args.seed,
                device=args.dev,
            )
        else:
            output = "".join(
                classbench.trace_packet_line(p) + "\n"
                for p in classbench.parse_trace(text.splitlines())
            )
    except classbench.ClassBenchError as exc:
        print(f"{args.file}:{exc.line}: error: {exc.message}", file=sys.stderr)
        return ExitCode.FAIL
    write_output(output, args.output)
    return ExitCode.OK
