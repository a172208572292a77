"""``flowc eval``: what a policy does to packets written in the packet syntax."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.common import (
    ExitCode,
    InputError,
    Subparsers,
    UsageError,
    compile_or_report,
    compile_policy,
    packet_lines,
    read_text,
)
from compiler.diagnostics import render
from compiler.packet_syntax import read_stateful_lines
from ir.conntrack import (
    NS_PER_S,
    ON_FULL_CHOICES,
    ConnTracker,
    CtConfig,
    CtTimeouts,
    StatefulVerdict,
)
from ir.interp import Verdict, evaluate
from ir.packet import format_packet


def add_parser(sub: Subparsers) -> None:
    """Register ``eval``."""
    p = sub.add_parser(
        "eval",
        help="what the policy does to a packet",
        description="Packet syntax: PROTO SRC -> DST [flags F] [type T] [code C] [vlan V] "
        "[dscp D], e.g. 'tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags syn' or "
        "'udp [fd00::1]:5353 -> [fd00::53]:53'.",
    )
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to use (needed if several)")
    p.add_argument("--packet", metavar="TEXT", help="one packet")
    p.add_argument("--packets", metavar="FILE", help="one packet per line ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    add_ct_options(p)
    p.add_argument(
        "--stateful",
        action="store_true",
        help="the lines are one host's traffic in order, '[@SECONDS] HOOK PACKET', "
        "through one connection table (README, 'Connection tracking')",
    )
    p.set_defaults(func=run)


def add_ct_options(p: argparse.ArgumentParser) -> None:
    """The connection tracker's settings, as every stateful command spells them."""
    p.add_argument(
        "--ct-timeout",
        metavar="NAME=DURATION,...",
        default="",
        help="idle timeouts, e.g. tcp=1h,udp=30s,icmp=10 (README lists the names and defaults)",
    )
    p.add_argument(
        "--ct-capacity", type=int, default=CtConfig().capacity, help="connection table entries"
    )
    p.add_argument(
        "--ct-tcp-loose",
        action="store_true",
        help="a mid-stream TCP packet of no known connection is new (default: invalid)",
    )
    p.add_argument(
        "--ct-full",
        choices=ON_FULL_CHOICES,
        default="allow",
        help="a new packet the full table cannot track keeps its verdict (allow) or is dropped",
    )


def ct_config_from_args(args: argparse.Namespace) -> CtConfig:
    """The tracker settings ``add_ct_options`` read (UsageError when malformed)."""
    try:
        return CtConfig(
            CtTimeouts.parse(args.ct_timeout),
            tcp_loose=args.ct_tcp_loose,
            capacity=args.ct_capacity,
            on_full=args.ct_full,
        )
    except ValueError as exc:
        raise UsageError(f"connection tracking: {exc}") from None


def stateful_json(
    hook: str, time_ns: int, packet_text: str, result: StatefulVerdict
) -> dict[str, Any]:
    """One packet of ``eval --stateful --json``: the verdict's keys, and the state."""
    out = verdict_json(packet_text, result.verdict)
    out["action"] = result.action.kind
    out.update(
        hook=hook,
        time=time_ns / NS_PER_S,
        state=result.observation.state_name,
        committed=result.committed,
        untracked=result.untracked,
        direction=None
        if result.observation.direction is None
        else result.observation.direction.name.lower(),
    )
    if result.observation.reason:
        out["reason"] = result.observation.reason
    return out


def verdict_json(packet_text: str, verdict: Verdict) -> dict[str, Any]:
    """One evaluated packet as ``eval --json`` prints it."""
    rule, action = verdict.rule, verdict.action
    return {
        "packet": packet_text,
        "action": action.kind,
        "target": action.target,
        "device": action.device,
        "mark": action.mark,
        "file": rule.origin.file,
        "line": rule.origin.line,
        "rule": rule.origin.text,
        "priority": rule.priority,
        "default": rule.is_default,
    }


def verdict_text(packet_text: str, verdict: Verdict) -> str:
    """One evaluated packet as ``eval`` prints it."""
    rule = verdict.rule
    which = "default" if rule.is_default else "rule"
    return f"{packet_text}  =>  {verdict.action}   [{which} {rule.origin}: {rule.origin.text}]"


def run(args: argparse.Namespace) -> int:
    """``flowc eval``."""
    if (args.packet is None) == (args.packets is None):
        raise UsageError("give exactly one of --packet TEXT or --packets FILE")
    if args.stateful:
        return run_stateful(args)
    policy = compile_policy(args.policy, args.hook)
    if policy is None:
        return ExitCode.FAIL
    if args.packet is not None:
        where, text = "<packet>", args.packet
    else:
        where = args.packets
        try:
            text = read_text(args.packets)
        except InputError as err:
            raise UsageError(str(err)) from None
    lines, problems, sources = packet_lines(text, where)
    for problem in problems:
        print(render(problem, sources), file=sys.stderr)
    out = sys.stdout
    for line in lines:
        verdict = evaluate(policy, line.packet)
        shown = format_packet(line.packet)
        if args.json:
            out.write(json.dumps(verdict_json(shown, verdict)) + "\n")
        else:
            out.write(verdict_text(shown, verdict) + "\n")
    return ExitCode.FAIL if problems else ExitCode.OK


def run_stateful(args: argparse.Namespace) -> int:
    """``flowc eval --stateful``: every line through one connection table."""
    if args.packet is not None:
        raise UsageError("--stateful reads a host's traffic: give --packets FILE")
    if args.hook is not None:
        raise UsageError("--stateful names the hook on every line; drop --hook")
    config = ct_config_from_args(args)
    program = compile_or_report(args.policy)
    if program is None:
        return ExitCode.FAIL
    try:
        text = read_text(args.packets)
    except InputError as err:
        raise UsageError(str(err)) from None
    hooks = tuple(p.name for p in program.policies)
    lines, problems = read_stateful_lines(text, args.packets, hooks)
    for problem in problems:
        print(render(problem, {args.packets: text}), file=sys.stderr)
    if problems:
        # A line left out would change every later line's state: decide none.
        return ExitCode.FAIL
    tracker = ConnTracker(config)
    out = sys.stdout
    for line in lines:
        if len(tracker) >= config.capacity:
            tracker.gc(line.time_ns)  # as the agent's collector would, before refusing
        result = tracker.step(program.policy(line.hook), line.packet, line.time_ns)
        shown = format_packet(line.packet)
        if args.json:
            out.write(json.dumps(stateful_json(line.hook, line.time_ns, shown, result)) + "\n")
            continue
        committed = "  committed" if result.committed else ""
        untracked = "  untracked (table full)" if result.untracked else ""
        rule = result.verdict.rule
        which = "default" if rule.is_default else "rule"
        out.write(
            f"@{line.time_ns / NS_PER_S:g} {line.hook} {shown}  [{result.observation.state_name}]"
            f"  =>  {result.action}   [{which} {rule.origin}: {rule.origin.text}]"
            f"{committed}{untracked}\n"
        )
    return ExitCode.OK
