"""``flowc verify``: prove a policy's lowerings mean the policy, as a CI job runs it.

Exit codes: 0 every check that ran proved equivalence, 1 a counterexample (or
the policy has errors), 2 usage or input error, 3 a check could not run (no
root for the BPF part, a rule list the IR cannot express exactly).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from backends.flower import lowering
from backends.flower.conformance import profile_violations
from backends.flower.rules import FlowerFilter
from backends.nic_profile import NicProfile
from cli.common import (
    ExitCode,
    InputError,
    Subparsers,
    add_profile_options,
    compile_host_policy,
    profile_from_args,
)
from cli.reports import (
    first_failure,
    flower_counterexample_json,
    kernel_choices_line,
    read_tc_json,
    rule_json,
    status_word,
)
from ir.model import Policy
from ir.packet import format_packet
from runtime.bpf_loader import BpfLoadError
from verify.bpf import BpfCheckUnavailable, check_bpf
from verify.flower import FlowerCheckError, check


def add_parser(sub: Subparsers) -> None:
    """Register ``verify``."""
    p = sub.add_parser(
        "verify",
        help="prove the lowerings mean the policy (exit 0 yes, 1 counterexample, 3 incomplete)",
    )
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to check (needed if several)")
    p.add_argument("--flower", metavar="FILE", help="check this tc -j filter show JSON instead")
    add_profile_options(p, help_text="NIC profile for flowc's own lowering (default software)")
    p.add_argument(
        "--bpf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the BPF program in the kernel (root; default on)",
    )
    p.add_argument("--strategy", choices=["bitvec", "chain"], default="bitvec")
    p.add_argument("--random", type=int, default=2000, help="random packets for the BPF check")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def _flower_filters(
    args: argparse.Namespace, policy: Policy, stateful: bool
) -> tuple[list[FlowerFilter], str, NicProfile | None]:
    """The rule list to check, what it is in words, and the NIC profile that
    produced it: a tc JSON file (no profile), or flowc's own lowering."""
    if args.flower:
        return read_tc_json(args.flower), f"{args.flower}", None
    profile = profile_from_args(args)
    program = lowering.lower(policy, profile, stateful=stateful)
    counts = program.counts()
    where = (
        f"flowc's lowering for {profile.name} ({counts['hardware']} rules in hardware, "
        f"{counts['trapped']} trapped, {counts['slow']} slow path)"
    )
    return list(program.filters), where, profile


def run(args: argparse.Namespace) -> int:
    """``flowc verify``."""
    compiled = compile_host_policy(args.policy, args.hook)
    if compiled is None:
        return ExitCode.FAIL
    policy, stateful = compiled
    report: dict[str, Any] = {"policy": policy.name, "checks": []}
    lines: list[str] = []
    worst = ExitCode.OK
    try:
        filters, where, profile = _flower_filters(args, policy, stateful)
    except InputError as err:
        print(f"flowc: error: {err}", file=sys.stderr)
        return ExitCode.USAGE
    start = time.perf_counter()
    try:
        flower_result = check(policy, filters, stateful=stateful)
    except FlowerCheckError as err:
        lines.append(f"flower: could not check: {err}")
        report["checks"].append({"check": "flower", "ran": False, "reason": str(err)})
        worst = ExitCode.UNAVAILABLE
        flower_result = None
    if flower_result is not None:
        elapsed = time.perf_counter() - start
        entry: dict[str, Any] = {
            "check": "flower",
            "ran": True,
            "rules": where,
            "filters": flower_result.filters,
            "equivalent": flower_result.equivalent,
            "seconds": round(elapsed, 3),
        }
        if flower_result.counterexample is not None:
            ce = flower_result.counterexample
            entry["counterexample"] = flower_counterexample_json(ce)
            lines += [
                f"flower: NOT EQUIVALENT ({where})",
                f"  packet:  {format_packet(ce.packet)}",
                f"  policy:  {ce.policy_verdict}   [{ce.rule.origin}: {ce.rule.origin.text}]",
                f"  flower:  {ce.flower_verdict}   [{ce.filter.label()}]",
                f"  why:     {ce.reason}",
            ]
            if kernel_choices_line(ce):
                lines.append(f"  kernel:  {kernel_choices_line(ce)}")
            worst = first_failure(worst, ExitCode.FAIL)
        elif not flower_result.settled:
            lines.append(f"flower: gave up after {flower_result.steps} regions ({where})")
            worst = first_failure(worst, ExitCode.UNAVAILABLE)
        else:
            lines.append(
                f"flower: equivalent ({where}; {flower_result.filters} filters, {elapsed:.2f} s)"
            )
        report["checks"].append(entry)
    if profile is not None:
        violations = profile_violations(filters, profile)
        report["checks"].append(
            {
                "check": "partition",
                "ran": True,
                "violations": [str(v) for v in violations],
                "equivalent": flower_result is not None
                and flower_result.equivalent
                and not violations,
            }
        )
        if violations:
            lines.append(f"partition: {len(violations)} filters exceed {args.profile}:")
            lines += [f"  {v}" for v in violations[:10]]
            worst = first_failure(worst, ExitCode.FAIL)
        else:
            lines.append(
                f"partition: sound (hardware rules, then the slow path for trapped "
                f"packets, equals the policy; every filter fits {args.profile})"
            )
    if args.bpf:
        worst = _verify_bpf(args, policy, report, lines, worst)
    equivalent = worst == ExitCode.OK
    report["equivalent"] = equivalent
    for check_entry in report["checks"]:
        if "counterexample" in check_entry and "counterexample" not in report:
            report["counterexample"] = check_entry["counterexample"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
        print(f"verify {policy.name}: " + ("OK" if equivalent else status_word(worst)))
    return worst


def _verify_bpf(
    args: argparse.Namespace,
    policy: Policy,
    report: dict[str, Any],
    lines: list[str],
    worst: ExitCode,
) -> ExitCode:

    try:
        result = check_bpf(policy, strategy=args.strategy, random_count=args.random)
    except BpfCheckUnavailable as err:
        lines.append(f"bpf: could not run: {err}")
        report["checks"].append({"check": "bpf", "ran": False, "reason": str(err)})
        return first_failure(worst, ExitCode.UNAVAILABLE)
    except BpfLoadError as err:
        lines.append(f"bpf: the program did not load: {err}")
        report["checks"].append(
            {"check": "bpf", "ran": True, "equivalent": False, "reason": str(err)}
        )
        return ExitCode.FAIL
    entry: dict[str, Any] = {
        "check": "bpf",
        "ran": True,
        "packets": result.packets,
        "equivalent": result.equivalent,
        "settled": result.settled,
        "rules": {
            "witnessed": result.witnessed,
            "shadowed": result.shadowed,
            "unsendable": result.unsendable,
            "gave_up": [rule_json(r) for r in result.gave_up],
        },
        "boundary_packets": result.boundary,
        "random_packets": result.random,
        "seconds": {p.name: round(p.seconds, 3) for p in result.phases},
    }
    if result.counterexample is not None:
        ce = result.counterexample
        entry["counterexample"] = {
            "packet": format_packet(ce.packet),
            "policy": str(ce.rule.action),
            "bpf": ce.bpf_verdict,
            "rule": rule_json(ce.rule),
        }
        lines += [
            "bpf: NOT EQUIVALENT",
            f"  packet:  {format_packet(ce.packet)}",
            f"  policy:  {ce.rule.action}   [{ce.rule.origin}: {ce.rule.origin.text}]",
            f"  bpf:     {ce.bpf_verdict}",
        ]
        worst = first_failure(worst, ExitCode.FAIL)
    else:
        seconds = sum(p.seconds for p in result.phases)
        lines.append(
            f"bpf: agrees on {result.packets} packets ({seconds:.1f} s): a packet each of "
            f"{result.witnessed} rules decide, {result.boundary} at the bounds of every "
            f"prefix and range, {result.random} random"
        )
        covered = f"bpf: {result.shadowed} rules shadowed (need no packet)"
        if result.unsendable:
            covered += f", {result.unsendable} decide only packets no frame carries"
        lines.append(covered)
    if result.gave_up:
        lines.append(
            f"bpf: gave up finding a packet for {len(result.gave_up)} rules "
            "(too fragmented); they were not checked:"
        )
        lines += [f"  {r.origin}: {r.origin.text}" for r in result.gave_up[:10]]
        worst = first_failure(worst, ExitCode.UNAVAILABLE)
    report["checks"].append(entry)
    return worst
