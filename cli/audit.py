"""``flowc audit``: judge every flower filter installed on a device (or in a saved
``tc -j`` dump) against a policy: sound, stale, unsound or unchecked.

Exit codes as for verify: 0 every filter sound (stale ones do no harm), 1 an
unsound filter (or the policy has errors), 2 usage or input error, 3 filters
that could not be read or judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from backends.flower.rules import FlowerFilter
from cli.common import ExitCode, InputError, Subparsers, compile_policy
from cli.reports import (
    flower_counterexample_json,
    kernel_choices_line,
    read_tc_json,
    status_word,
)
from ir.model import Policy
from ir.packet import format_packet
from runtime.flower_installer import FlowerInstaller, FlowerInstallError
from verify.flower import SOUND, STALE, UNCHECKED, UNSOUND, FilterAudit, audit, describe_action


def add_parser(sub: Subparsers) -> None:
    """Register ``audit``."""
    p = sub.add_parser(
        "audit",
        help="prove every flower filter on a device sound against the policy; list stale ones",
    )
    p.add_argument("--policy", required=True, metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to audit against (if several)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dev", help="dump the filters installed on this device")
    source.add_argument(
        "--filters", metavar="FILE", help="audit a saved `tc -j filter show` dump instead"
    )
    p.add_argument("--direction", choices=["ingress", "egress"], help="default: the policy's own")
    p.add_argument(
        "--generation",
        type=int,
        help="the current policy generation (default: the newest on the device); "
        "sound filters of other generations are listed as stale",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def _installed_filters(
    args: argparse.Namespace, policy: Policy
) -> tuple[list[FlowerFilter], list[str], str]:
    """The filters to audit (from the device, or a tc JSON file), the reasons
    some could not be read, and where they came from in words."""
    if args.filters:
        return read_tc_json(args.filters), [], args.filters
    direction = args.direction or policy.hook.direction
    unreadable: list[str] = []
    try:
        with FlowerInstaller(args.dev, direction) as installer:
            installed = installer.dump(unreadable=unreadable)
    except FlowerInstallError as err:
        raise InputError(str(err)) from None
    return [i.filter for i in installed], unreadable, f"{args.dev} {direction}"


def run(args: argparse.Namespace) -> int:
    """``flowc audit``."""
    policy = compile_policy(args.policy, args.hook)
    if policy is None:
        return ExitCode.FAIL
    try:
        filters, unreadable, where = _installed_filters(args, policy)
    except InputError as err:
        print(f"flowc: error: {err}", file=sys.stderr)
        return ExitCode.USAGE
    generation = args.generation
    if generation is None:
        # An agent-managed device: the newest generation flowc installed is current.
        gens = [f.cookie.generation for f in filters if f.cookie is not None]
        generation = max(gens) if gens else None
    start = time.perf_counter()
    found = audit(policy, filters, generation=generation)
    elapsed = time.perf_counter() - start
    counts = {s: len(found.with_status(s)) for s in (SOUND, STALE, UNSOUND, UNCHECKED)}
    if counts[UNSOUND]:
        code = ExitCode.FAIL
    elif counts[UNCHECKED] or unreadable or not found.settled:
        code = ExitCode.UNAVAILABLE
    else:
        code = ExitCode.OK
    problems = [a for a in found.findings if a.status != SOUND]
    if args.json:
        report: dict[str, Any] = {
            "policy": policy.name,
            "source": where,
            "generation": generation,
            "sound": code == ExitCode.OK,
            "equivalent": code == ExitCode.OK,
            "settled": found.settled,
            "counts": counts | {"unreadable": len(unreadable), "other_chains": found.ignored},
            "filters": [_finding_json(a) for a in problems],
            "unreadable": unreadable,
            "seconds": round(elapsed, 3),
        }
        first = next((a.counterexample for a in problems if a.counterexample is not None), None)
        if first is not None:
            report["counterexample"] = flower_counterexample_json(first)
        print(json.dumps(report, indent=2))
    else:
        gen = "" if generation is None else f", generation {generation}"
        print(
            f"audit {where} against {policy.name}{gen}: {len(found.findings)} filters on "
            f"chain 0, {found.ignored} on other chains not judged ({elapsed:.2f} s)"
        )
        for a in problems:
            print(f"  {a.status.upper():9} {a.filter.label()}: {describe_action(a.filter.action)}")
            if a.note:
                print(f"            {a.note}")
            ce = a.counterexample
            if ce is not None:
                print(f"            packet:  {format_packet(ce.packet)}")
                print(
                    f"            policy:  {ce.policy_verdict}   [{ce.rule.origin}: "
                    f"{ce.rule.origin.text}]"
                )
                if kernel_choices_line(ce):
                    print(f"            kernel:  {kernel_choices_line(ce)}")
        for reason in unreadable:
            print(f"  UNREADABLE {reason}")
        if not found.settled:
            print("audit: gave up before the end; filters not listed are not proven sound")
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if unreadable:
            summary += f", {len(unreadable)} unreadable"
        word = "OK" if code == ExitCode.OK else status_word(code)
        print(f"audit {policy.name}: {summary or 'no filters'} -> {word}")
    return code


def _finding_json(a: FilterAudit) -> dict[str, Any]:
    f = a.filter
    out: dict[str, Any] = {
        "status": a.status,
        "chain": f.chain,
        "prio": f.prio,
        "handle": f.handle,
        "action": describe_action(f.action),
        "note": a.note,
    }
    if f.cookie is not None:
        out["cookie"] = {"generation": f.cookie.generation, "rule": f.cookie.rule}
    if a.counterexample is not None:
        out["counterexample"] = flower_counterexample_json(a.counterexample)
    return out
