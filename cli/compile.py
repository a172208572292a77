"""``flowc compile``: a policy to its IR, BPF C (with map contents) or flower rules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backends import bpf
from backends.bpf.emit import maps_json
from backends.flower import lowering
from backends.flower.text import to_tc_batch, to_tc_json
from cli.common import (
    ExitCode,
    Subparsers,
    UsageError,
    add_profile_options,
    compile_or_report,
    profile_from_args,
    select_policy,
    write_output,
)
from ir.model import Program
from ir.passes import PASSES, pass_names, run_passes
from ir.printer import format_program, program_to_json
from ir.state_analysis import uses_state


def add_parser(sub: Subparsers) -> None:
    """Register ``compile``."""
    p = sub.add_parser("compile", help="compile a policy and print its IR")
    p.add_argument("policy", nargs="?", metavar="POLICY", help="policy file (.fw)")
    p.add_argument(
        "--emit",
        choices=["ir", "bpf", "flower", "tc"],
        default="ir",
        help="ir: the IR; bpf: slow-path C (with -o DIR also the map contents as JSON); "
        "flower: filters as `tc -j filter show` JSON; tc: a `tc -batch` file",
    )
    add_profile_options(
        p, help_text="NIC profile for flower/tc: a bundled name or a .toml path (default software)"
    )
    p.add_argument(
        "--strategy",
        choices=["bitvec", "chain"],
        default="bitvec",
        help="BPF classifier: bitvec (map-based, default) or chain (one if per rule)",
    )
    p.add_argument(
        "--generation",
        type=int,
        default=0,
        help="policy generation written into every flower filter's cookie (flowc audit reads it)",
    )
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    p.add_argument("--hook", metavar="NAME", help="only this policy")
    p.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")
    p.add_argument("--dump-after", metavar="PASS", help="print the IR after this pass")
    p.add_argument("--list-passes", action="store_true", help="list the IR passes and exit")
    p.add_argument(
        "-O",
        "--optimize",
        action="store_true",
        help="run optimisation passes (drop unreachable rules)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``flowc compile``."""
    if args.list_passes:
        for p in PASSES:
            kind = " (with -O)" if p.optimization else ""
            print(f"{p.name:20} {p.doc.splitlines()[0]}{kind}")
        return ExitCode.OK
    if args.policy is None:
        raise UsageError("compile needs a POLICY file")
    if args.dump_after is not None and args.dump_after not in pass_names():
        raise UsageError(f"no pass named {args.dump_after!r} (passes: {', '.join(pass_names())})")
    compiled = compile_or_report(args.policy)
    if compiled is None:
        return ExitCode.FAIL
    program = run_passes(compiled, optimize=args.optimize, until=args.dump_after)
    if args.emit == "bpf":
        return _emit_bpf(program, args)
    if args.emit in ("flower", "tc"):
        return _emit_flower(program, args)
    if args.hook is not None:
        program = Program((select_policy(program, args.hook),))
    if args.format == "json":
        text = json.dumps(program_to_json(program), indent=2) + "\n"
    else:
        text = format_program(program)
    write_output(text, args.output)
    return ExitCode.OK


def _emit_bpf(program: Program, args: argparse.Namespace) -> int:
    """Write the slow-path C (and, with -o DIR, the map contents as JSON)."""
    policy = select_policy(program, args.hook)
    lowered = bpf.lower(policy, args.strategy)
    if args.output is None or args.output == "-":
        sys.stdout.write(lowered.source)
        return ExitCode.OK
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{policy.name}.bpf.c").write_text(lowered.source)
        (out_dir / f"{policy.name}.maps.json").write_text(
            json.dumps(maps_json(lowered), indent=1) + "\n"
        )
    except OSError as exc:
        raise UsageError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    print(
        f"wrote {out_dir / (policy.name + '.bpf.c')} and {policy.name}.maps.json", file=sys.stderr
    )
    return ExitCode.OK


def _emit_flower(program: Program, args: argparse.Namespace) -> int:
    """Write the flower filters as `tc -j filter show` JSON (flower) or a `tc -batch` file (tc);
    rules kept out of the device are reported on stderr."""
    policy = select_policy(program, args.hook)
    profile = profile_from_args(args)
    try:
        lowered = lowering.lower(
            policy, profile, generation=args.generation, stateful=uses_state(program)
        )
    except lowering.FlowerLoweringError as exc:
        print(f"flowc: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    for line in lowering.describe(lowered):
        print(f"flowc: note: {line}", file=sys.stderr)
    if args.emit == "flower":
        text = json.dumps(to_tc_json(lowered.filters), indent=1) + "\n"
    else:
        text = to_tc_batch(lowered.filters, policy.hook.device, policy.hook.direction)
    write_output(text, args.output)
    counts = lowered.counts()
    print(
        f"flowc: {policy.name}: {len(lowered.filters)} filters, {lowered.distinct_masks()} masks; "
        f"rules in hardware {counts['hardware']}, trapped {counts['trapped']}, "
        f"slow path only {counts['slow']} (profile {profile.name})",
        file=sys.stderr,
    )
    return ExitCode.OK
