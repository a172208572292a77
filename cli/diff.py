"""``flowc diff``: the packets whose verdict changes between two versions of a policy.

Exits 1 when any packet changes verdict (unless ``--allow-change``) or a
version has errors, 2 on usage errors, 3 when the comparison gave up.
"""

from __future__ import annotations

import argparse
import json

from cli.common import ExitCode, Subparsers, compile_policy
from ir.diff import diff_policies
from ir.model import Match
from ir.packet import format_packet


def add_parser(sub: Subparsers) -> None:
    """Register ``diff``."""
    p = sub.add_parser("diff", help="the packets whose verdict changes between two versions")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--hook", metavar="NAME", help="the policy to compare (needed if several)")
    p.add_argument("--allow-change", action="store_true", help="exit 0 even when packets change")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``flowc diff``."""
    old = compile_policy(args.old, args.hook)
    new = compile_policy(args.new, args.hook)
    if old is None or new is None:
        return ExitCode.FAIL
    d = diff_policies(old, new)
    if args.json:
        print(
            json.dumps(
                {
                    "changed": not d.empty,
                    "settled": d.settled,
                    "changes": [
                        {
                            "match": str(Match.from_cube(c.region)),
                            "example": format_packet(c.example),
                            "old": {
                                "action": str(c.old.action),
                                "file": c.old.origin.file,
                                "line": c.old.origin.line,
                            },
                            "new": {
                                "action": str(c.new.action),
                                "file": c.new.origin.file,
                                "line": c.new.origin.line,
                            },
                        }
                        for c in d.changes
                    ],
                },
                indent=2,
            )
        )
    else:
        if d.empty:
            print(f"diff {old.name}: no packet changes verdict")
        for c in d.changes:
            print(c.summary())
            print(f"    e.g. {format_packet(c.example)}")
            print(f"    old: {c.old.origin}: {c.old.origin.text or c.old.action}")
            print(f"    new: {c.new.origin}: {c.new.origin.text or c.new.action}")
        if not d.settled:
            print("diff: gave up before the end; the list above may be partial")
    if not d.settled:
        return ExitCode.UNAVAILABLE
    return ExitCode.OK if d.empty or args.allow_change else ExitCode.FAIL
