"""``flowc simulate``: a packet trace through slow path + rule cache, megaflow vs exact.

The trace is either ``flowc eval`` packet lines or a ClassBench trace (five
numbers per line: source, destination, source port, destination port,
protocol). A bad line stops the run with file:line:col and a caret.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.common import (
    ExitCode,
    InputError,
    Subparsers,
    add_profile_options,
    compile_policy,
    packet_lines,
    profile_from_args,
    read_text,
)
from compiler.classbench import ClassBenchError, parse_trace, trace_packet_line
from compiler.diagnostics import render
from compiler.packet_syntax import parse_packet
from ir.packet import Packet
from runtime.flow_cache import CacheConfig
from runtime.simulate import simulate


class TraceError(ValueError):
    """A trace line that cannot be read (the message has file:line:col and a caret)."""


def read_trace(path: str) -> list[Packet]:
    """Every packet of the trace file at ``path``."""
    try:
        text = read_text(path)
    except InputError as err:
        raise TraceError(str(err)) from None
    lines = text.splitlines()
    first = next((line for line in lines if line.split("#", 1)[0].strip()), "")
    if first and all(tok.isdigit() for tok in first.split()):
        try:
            return [parse_packet(trace_packet_line(p)) for p in parse_trace(lines)]
        except ClassBenchError as err:
            raise TraceError(f"{path}:{err.line}: error: {err.message}") from None
    packets, problems, sources = packet_lines(text, path)
    if problems:
        raise TraceError(render(problems[0], sources))
    return [p.packet for p in packets]


def run(args: argparse.Namespace) -> int:
    """``flowc simulate``."""
    policy = compile_policy(args.policy, args.hook)
    if policy is None:
        return ExitCode.FAIL
    profile = profile_from_args(args)
    try:
        packets = read_trace(args.trace)
    except TraceError as err:
        print(f"flowc: {err}", file=sys.stderr)
        return ExitCode.FAIL
    modes = ["megaflow", "exact"] if args.mode == "both" else [args.mode]
    rows = []
    for mode in modes:
        config = CacheConfig(
            mode=mode,
            max_idle=args.max_idle,
            capacity=args.capacity,
            max_insert_rate=args.max_insert_rate,
            admit_after=args.admit_after,
            mask_slack=args.mask_slack,
        )
        rows.append(simulate(policy, packets, profile, config, pps=args.pps))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "mode": r.mode,
                        "packets": r.packets,
                        "hit_ratio": round(r.hit_ratio, 6),
                        "rules_installed": r.installs,
                        "evictions": r.evictions,
                        "refusals": r.refusals,
                        "peak_occupancy": r.peak_occupancy,
                        "distinct_masks": r.distinct_masks,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return ExitCode.OK
    print(
        f"simulate {policy.name}: {len(packets)} packets at {args.pps:g}/s, profile "
        f"{profile.name}, max idle {args.max_idle:g} s"
    )
    print(f"{'':22}" + "".join(f"{r.mode:>14}" for r in rows))
    for label, values in (
        ("hit ratio", [f"{r.hit_ratio:.4f}" for r in rows]),
        ("rules installed", [str(r.installs) for r in rows]),
        ("evictions", [str(r.evictions) for r in rows]),
        ("install refusals", [str(r.refusals) for r in rows]),
        ("peak occupancy", [str(r.peak_occupancy) for r in rows]),
        ("distinct masks (end)", [str(r.distinct_masks) for r in rows]),
    ):
        print(f"{label:22}" + "".join(f"{v:>14}" for v in values))
    return ExitCode.OK


def add_parser(sub: Subparsers) -> None:
    """Register ``simulate`` on the CLI's subcommand parser."""
    p = sub.add_parser(
        "simulate", help="replay a trace through slow path + rule cache (megaflow vs exact)"
    )
    p.add_argument("--policy", required=True, metavar="POLICY")
    p.add_argument("--trace", required=True, metavar="FILE", help="eval packet lines or ClassBench")
    p.add_argument("--hook", metavar="NAME")
    add_profile_options(p, help_text="NIC profile the cache runs on (default software)")
    p.add_argument("--mode", choices=["megaflow", "exact", "both"], default="both")
    p.add_argument("--max-idle", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--capacity", type=int, help="cache rules at most (default: profile)")
    p.add_argument("--max-insert-rate", type=float, default=1000.0, help="rules/s (default 1000)")
    p.add_argument("--admit-after", type=int, default=1, help="slow-path packets before a rule")
    p.add_argument(
        "--mask-slack", type=int, default=0, help="bits a megaflow gives up to share a mask"
    )
    p.add_argument("--pps", type=float, default=10_000.0, help="trace packets per second")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)
