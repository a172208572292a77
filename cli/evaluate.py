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
    compile_policy,
    packet_lines,
    read_text,
)
from compiler.diagnostics import render
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
    p.set_defaults(func=run)


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
