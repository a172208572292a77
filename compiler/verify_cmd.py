"""``flowc verify``, ``flowc diff`` and ``flowc audit``: the checks a CI job
(or an operator) runs on a policy.

Exit codes (verify, audit): 0 every check that ran proved equivalence (every
installed filter sound), 1 a counterexample, 2 usage or input error, 3 a
check could not run (no root for the BPF part, a rule list the IR cannot
express exactly). Diff exits 1 when any packet changes verdict, unless
``--allow-change``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ir.diff import diff_policies
from ir.model import Match, Policy
from ir.packet import format_packet

EXIT_OK = 0
EXIT_COUNTEREXAMPLE = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 3


def _flower_filters(args: argparse.Namespace, policy: Policy) -> tuple[list[Any], str, Any]:
    """The rule list to check, what it is in words, and the NIC profile that
    produced it: a tc JSON file (no profile), or flowc's own lowering."""
    from backends import flower

    if args.flower:
        return _read_tc_json(args.flower), f"{args.flower}", None
    from compiler.cli import profile_from_args

    profile = profile_from_args(args)
    program = flower.lower(policy, profile)
    counts = program.counts()
    where = (
        f"flowc's lowering for {profile.name} ({counts['hardware']} rules in hardware, "
        f"{counts['trapped']} trapped, {counts['slow']} slow path)"
    )
    return list(program.filters), where, profile


class _InputError(Exception):
    pass


def _read_tc_json(path: str) -> list[Any]:
    """The filters of a `tc -j filter show` file; _InputError says precisely why not."""
    from backends.flower_text import FlowerTextError, parse_tc_json

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise _InputError(f"{path}: {err.strerror}") from None
    try:
        return parse_tc_json(json.loads(text))
    except json.JSONDecodeError as err:
        raise _InputError(f"{path}:{err.lineno}:{err.colno}: {err.msg}") from None
    except FlowerTextError as err:
        raise _InputError(f"{path}: {err}") from None


def _rule_json(rule: Any) -> dict[str, Any]:
    """The DSL rule a verdict came from, for JSON reports."""
    return {"file": rule.origin.file, "line": rule.origin.line, "text": rule.origin.text}


def _flower_counterexample_json(ce: Any) -> dict[str, Any]:
    """A flower counterexample (verify's or an audit finding's) for JSON reports."""
    return {
        "packet": format_packet(ce.packet),
        "policy": ce.policy_verdict,
        "flower": ce.flower_verdict,
        "rule": _rule_json(ce.rule),
        "filter": {"chain": ce.filter.chain, "prio": ce.filter.prio, "handle": ce.filter.handle},
        "reason": ce.reason,
    }


def cmd_verify(args: argparse.Namespace) -> int:
    """``flowc verify``."""
    from backends.flower_verify import FlowerCheckError, check, profile_violations
    from compiler.cli import _compile_or_report, _select_policy

    result, status = _compile_or_report(args.policy)
    if status or result.program is None:
        return EXIT_USAGE
    policy = _select_policy(result.program, args.hook)
    report: dict[str, Any] = {"policy": policy.name, "checks": []}
    lines: list[str] = []
    worst = EXIT_OK
    try:
        filters, where, profile = _flower_filters(args, policy)
    except _InputError as err:
        print(f"flowc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    try:
        flower_result = check(policy, filters)
    except FlowerCheckError as err:
        lines.append(f"flower: could not check: {err}")
        report["checks"].append({"check": "flower", "ran": False, "reason": str(err)})
        worst = EXIT_CANNOT_RUN
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
            entry["counterexample"] = _flower_counterexample_json(ce)
            lines += [
                f"flower: NOT EQUIVALENT ({where})",
                f"  packet:  {format_packet(ce.packet)}",
                f"  policy:  {ce.policy_verdict}   [{ce.rule.origin}: {ce.rule.origin.text}]",
                f"  flower:  {ce.flower_verdict}   [{ce.filter.label()}]",
                f"  why:     {ce.reason}",
            ]
            worst = _first_failure(worst, EXIT_COUNTEREXAMPLE)
        elif not flower_result.settled:
            lines.append(f"flower: gave up after {flower_result.steps} regions ({where})")
            worst = _first_failure(worst, EXIT_CANNOT_RUN)
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
            worst = _first_failure(worst, EXIT_COUNTEREXAMPLE)
        else:
            lines.append(
                f"partition: sound (hardware rules, then the slow path for trapped "
                f"packets, equals the policy; every filter fits {args.profile})"
            )
    if args.bpf:
        worst = _verify_bpf(args, policy, report, lines, worst)
    equivalent = worst == EXIT_OK
    report["equivalent"] = equivalent
    for check_entry in report["checks"]:
        if "counterexample" in check_entry and "counterexample" not in report:
            report["counterexample"] = check_entry["counterexample"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
        print(f"verify {policy.name}: " + ("OK" if equivalent else _status_word(worst)))
    return worst


def _first_failure(worst: int, status: int) -> int:
    """The exit status so far, after a check ended with ``status``: the first
    check that failed (counterexample or could not run) decides."""
    return status if worst == EXIT_OK else worst


def _status_word(code: int) -> str:
    return {EXIT_COUNTEREXAMPLE: "COUNTEREXAMPLE FOUND", EXIT_CANNOT_RUN: "INCOMPLETE"}.get(
        code, "FAILED"
    )


def _verify_bpf(
    args: argparse.Namespace, policy: Policy, report: dict[str, Any], lines: list[str], worst: int
) -> int:
    from runtime.bpf_loader import BpfLoadError
    from runtime.bpf_verify import BpfCheckUnavailable, check_bpf

    try:
        result = check_bpf(policy, strategy=args.strategy, random_count=args.random)
    except BpfCheckUnavailable as err:
        lines.append(f"bpf: could not run: {err}")
        report["checks"].append({"check": "bpf", "ran": False, "reason": str(err)})
        return _first_failure(worst, EXIT_CANNOT_RUN)
    except BpfLoadError as err:
        lines.append(f"bpf: the program did not load: {err}")
        report["checks"].append(
            {"check": "bpf", "ran": True, "equivalent": False, "reason": str(err)}
        )
        return EXIT_COUNTEREXAMPLE
    entry: dict[str, Any] = {
        "check": "bpf",
        "ran": True,
        "packets": result.packets,
        "equivalent": result.equivalent,
    }
    if result.counterexample is not None:
        ce = result.counterexample
        entry["counterexample"] = {
            "packet": format_packet(ce.packet),
            "policy": str(ce.rule.action),
            "bpf": ce.bpf_verdict,
            "rule": _rule_json(ce.rule),
        }
        lines += [
            "bpf: NOT EQUIVALENT",
            f"  packet:  {format_packet(ce.packet)}",
            f"  policy:  {ce.rule.action}   [{ce.rule.origin}: {ce.rule.origin.text}]",
            f"  bpf:     {ce.bpf_verdict}",
        ]
        worst = _first_failure(worst, EXIT_COUNTEREXAMPLE)
    else:
        lines.append(
            f"bpf: agrees on {result.packets} packets (every region's witness, the bounds "
            "of every prefix and range, random packets)"
        )
    report["checks"].append(entry)
    return worst


def cmd_diff(args: argparse.Namespace) -> int:
    """``flowc diff``."""
    from compiler.cli import _compile_or_report, _select_policy

    policies = []
    for path in (args.old, args.new):
        result, status = _compile_or_report(path)
        if status or result.program is None:
            return EXIT_USAGE
        policies.append(_select_policy(result.program, args.hook))
    old, new = policies
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
        return EXIT_CANNOT_RUN
    return EXIT_OK if d.empty or args.allow_change else EXIT_COUNTEREXAMPLE


def _installed_filters(
    args: argparse.Namespace, policy: Policy
) -> tuple[list[Any], list[str], str]:
    """The filters to audit (from the device, or a tc JSON file), the reasons
    some could not be read, and where they came from in words."""
    if args.filters:
        return _read_tc_json(args.filters), [], args.filters
    from runtime.flower_installer import FlowerInstaller, FlowerInstallError

    direction = args.direction or policy.hook.direction
    unreadable: list[str] = []
    try:
        with FlowerInstaller(args.dev, direction) as installer:
            installed = installer.dump(unreadable=unreadable)
    except FlowerInstallError as err:
        raise _InputError(str(err)) from None
    return [i.filter for i in installed], unreadable, f"{args.dev} {direction}"


def cmd_audit(args: argparse.Namespace) -> int:
    """``flowc audit``."""
    from backends.flower_verify import SOUND, STALE, UNCHECKED, UNSOUND, audit, describe_action
    from compiler.cli import _compile_or_report, _select_policy

    result, status = _compile_or_report(args.policy)
    if status or result.program is None:
        return EXIT_USAGE
    policy = _select_policy(result.program, args.hook)
    try:
        filters, unreadable, where = _installed_filters(args, policy)
    except _InputError as err:
        print(f"flowc: error: {err}", file=sys.stderr)
        return EXIT_USAGE
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
        code = EXIT_COUNTEREXAMPLE
    elif counts[UNCHECKED] or unreadable or not found.settled:
        code = EXIT_CANNOT_RUN
    else:
        code = EXIT_OK
    problems = [a for a in found.findings if a.status != SOUND]
    if args.json:
        report: dict[str, Any] = {
            "policy": policy.name,
            "source": where,
            "generation": generation,
            "sound": code == EXIT_OK,
            "equivalent": code == EXIT_OK,
            "settled": found.settled,
            "counts": counts | {"unreadable": len(unreadable), "other_chains": found.ignored},
            "filters": [_finding_json(a) for a in problems],
            "unreadable": unreadable,
            "seconds": round(elapsed, 3),
        }
        first = next((a.counterexample for a in problems if a.counterexample is not None), None)
        if first is not None:
            report["counterexample"] = _flower_counterexample_json(first)
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
        for reason in unreadable:
            print(f"  UNREADABLE {reason}")
        if not found.settled:
            print("audit: gave up before the end; filters not listed are not proven sound")
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        if unreadable:
            summary += f", {len(unreadable)} unreadable"
        word = "OK" if code == EXIT_OK else _status_word(code)
        print(f"audit {policy.name}: {summary or 'no filters'} -> {word}")
    return code


def _finding_json(a: Any) -> dict[str, Any]:
    from backends.flower_verify import describe_action

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
        out["counterexample"] = _flower_counterexample_json(a.counterexample)
    return out


def add_parsers(sub: Any) -> None:
    """Register ``verify``, ``diff`` and ``audit`` on the CLI's subcommand parser."""
    p = sub.add_parser(
        "verify",
        help="prove the lowerings mean the policy (exit 0 yes, 1 counterexample, 3 incomplete)",
    )
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to check (needed if several)")
    p.add_argument("--flower", metavar="FILE", help="check this tc -j filter show JSON instead")
    p.add_argument("--profile", default="software", help="NIC profile for flowc's own lowering")
    p.add_argument("--profile-set", action="append", metavar="KEY=VALUE")
    p.add_argument(
        "--bpf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the BPF program in the kernel (root; default on)",
    )
    p.add_argument("--strategy", choices=["bitvec", "chain"], default="bitvec")
    p.add_argument("--random", type=int, default=2000, help="random packets for the BPF check")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="the packets whose verdict changes between two versions")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--hook", metavar="NAME", help="the policy to compare (needed if several)")
    p.add_argument("--allow-change", action="store_true", help="exit 0 even when packets change")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)

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
    p.set_defaults(func=cmd_audit)
