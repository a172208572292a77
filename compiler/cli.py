"""The ``flowc`` command line.

Exit codes: 0 success; 1 the input has errors (or ``check --strict`` found
warnings, or ``fmt --check`` found a file to reformat); 2 usage errors.
Results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from compiler import classbench
from compiler.diagnostics import WARNING, render, summary
from compiler.fmt import format_source
from compiler.frontend import Compilation, compile_file
from compiler.packet_syntax import PacketSyntaxError, parse_packet
from compiler.parser import parse
from compiler.resolve import read_source
from ir.interp import Verdict, evaluate
from ir.model import Policy, Program
from ir.packet import format_packet
from ir.passes import PASSES, pass_names, run_passes
from ir.printer import format_program, program_to_json

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with how flowc was invoked (exit 2)."""


def _print_diagnostics(result: Compilation, stream: TextIO, *, warnings: bool = True) -> None:
    for diag in result.diagnostics:
        if diag.severity == WARNING and not warnings:
            continue
        print(render(diag, result.sources), file=stream)


def _compile_or_report(path: str, *, lint: bool = False) -> tuple[Compilation, int]:
    result = compile_file(path, lint=lint)
    _print_diagnostics(result, sys.stderr)
    if not result.ok:
        print(f"flowc: {path}: {summary(result.diagnostics)}", file=sys.stderr)
        return result, EXIT_FAIL
    return result, EXIT_OK


def _select_policy(program: Program, hook: str | None) -> Policy:
    if hook is not None:
        try:
            return program.policy(hook)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
    if len(program.policies) == 1:
        return program.policies[0]
    if not program.policies:
        raise UsageError("the file defines no policy")
    names = ", ".join(p.name for p in program.policies)
    raise UsageError(f"the file defines several policies ({names}); choose one with --hook NAME")


# ---------------------------------------------------------------- compile
def cmd_compile(args: argparse.Namespace) -> int:
    """``flowc compile``."""
    if args.list_passes:
        for p in PASSES:
            kind = " (with -O)" if p.optimization else ""
            print(f"{p.name:20} {p.doc.splitlines()[0]}{kind}")
        return EXIT_OK
    if args.policy is None:
        raise UsageError("compile needs a POLICY file")
    if args.dump_after is not None and args.dump_after not in pass_names():
        raise UsageError(f"no pass named {args.dump_after!r} (passes: {', '.join(pass_names())})")
    result, status = _compile_or_report(args.policy)
    if status or result.program is None:
        return status
    program = run_passes(result.program, optimize=args.optimize, until=args.dump_after)
    if args.emit == "bpf":
        return _emit_bpf(program, args)
    if args.emit in ("flower", "tc"):
        return _emit_flower(program, args)
    if args.hook is not None:
        program = Program((_select_policy(program, args.hook),))
    if args.format == "json":
        text = json.dumps(program_to_json(program), indent=2) + "\n"
    else:
        text = format_program(program)
    _write_output(text, args.output)
    return EXIT_OK


def _emit_bpf(program: Program, args: argparse.Namespace) -> int:
    """Write the slow-path C (and, with -o DIR, the map contents as JSON)."""
    from backends.bpf_c import lower, maps_json

    policy = _select_policy(program, args.hook)
    bpf = lower(policy, args.strategy)
    if args.output is None or args.output == "-":
        sys.stdout.write(bpf.source)
        return EXIT_OK
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{policy.name}.bpf.c").write_text(bpf.source)
        (out_dir / f"{policy.name}.maps.json").write_text(
            json.dumps(maps_json(bpf), indent=1) + "\n"
        )
    except OSError as exc:
        raise UsageError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    print(
        f"wrote {out_dir / (policy.name + '.bpf.c')} and {policy.name}.maps.json", file=sys.stderr
    )
    return EXIT_OK


def profile_from_args(args: argparse.Namespace) -> Any:
    """The NIC profile named by ``--profile`` with ``--profile-set`` overrides applied."""
    from backends.nic_profile import ProfileError, load_profile

    overrides: dict[str, str] = {}
    for item in args.profile_set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--profile-set takes KEY=VALUE, not {item!r}")
        overrides[key.strip()] = value.strip()
    try:
        return load_profile(args.profile, overrides)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None


def _emit_flower(program: Program, args: argparse.Namespace) -> int:
    """Write the flower filters as `tc -j filter show` JSON (flower) or a `tc -batch` file (tc);
    rules kept out of the device are reported on stderr."""
    from backends import flower
    from backends.flower_text import to_tc_batch, to_tc_json

    policy = _select_policy(program, args.hook)
    profile = profile_from_args(args)
    try:
        lowered = flower.lower(policy, profile, generation=args.generation)
    except flower.FlowerLoweringError as exc:
        print(f"flowc: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for line in flower.describe(lowered):
        print(f"flowc: note: {line}", file=sys.stderr)
    if args.emit == "flower":
        text = json.dumps(to_tc_json(lowered.filters), indent=1) + "\n"
    else:
        text = to_tc_batch(lowered.filters, policy.hook.device, policy.hook.direction)
    _write_output(text, args.output)
    counts = lowered.counts()
    print(
        f"flowc: {policy.name}: {len(lowered.filters)} filters, {lowered.distinct_masks()} masks; "
        f"rules in hardware {counts['hardware']}, trapped {counts['trapped']}, "
        f"slow path only {counts['slow']} (profile {profile.name})",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    """``flowc load``: compile, verify, load and attach the slow path on a device."""
    from backends.bpf_c import lower
    from runtime.bpf_loader import BpfLoadError, SlowPath
    from runtime.tc_attach import AttachError, attach

    result, status = _compile_or_report(args.policy)
    if status or result.program is None:
        return status
    policy = _select_policy(result.program, args.hook)
    device = args.dev or policy.hook.device
    direction = args.direction or policy.hook.direction
    try:
        slow_path = SlowPath(lower(policy, args.strategy), peer_redirect=args.peer)
    except BpfLoadError as exc:
        line = f"{policy.origin.file}:{exc.dsl_line}: " if exc.dsl_line else ""
        print(f"flowc: {line}error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        where = attach(slow_path.fd, device, direction, mode=args.mode)
    except AttachError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        slow_path.close()  # the attached copy stays; this process's handles go
    print(
        f"loaded policy {policy.name} ({len(policy.rules)} rules, {args.strategy}) on "
        f"{where.direction} of {where.device} ({where.mode})"
    )
    return EXIT_OK


def cmd_unload(args: argparse.Namespace) -> int:
    """``flowc unload``: remove flowc's program from a device hook."""
    from runtime.tc_attach import AttachError, detach

    try:
        removed = detach(args.dev, args.direction, mode=args.mode)
    except AttachError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not removed:
        print(f"flowc: nothing attached on {args.direction} of {args.dev}", file=sys.stderr)
        return EXIT_FAIL
    print(f"unloaded {args.direction} of {args.dev}")
    return EXIT_OK


def _write_output(text: str, output: str | None) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ check
def cmd_check(args: argparse.Namespace) -> int:
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
        _print_diagnostics(result, sys.stderr)
        n_rules = sum(len(p.rules) for p in result.program.policies) if result.program else 0
        verdict = summary(result.diagnostics) or "ok"
        extra = f" ({n_rules} IR rules)" if result.program else ""
        print(f"{args.policy}: {verdict}{extra}", file=sys.stderr)
    if not result.ok:
        return EXIT_FAIL
    if args.strict and any(d.severity == WARNING for d in result.diagnostics):
        return EXIT_FAIL
    return EXIT_OK


# ------------------------------------------------------------------- eval
def _verdict_json(packet_text: str, verdict: Verdict) -> dict[str, Any]:
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


def _verdict_text(packet_text: str, verdict: Verdict) -> str:
    rule = verdict.rule
    which = "default" if rule.is_default else "rule"
    return f"{packet_text}  =>  {verdict.action}   [{which} {rule.origin}: {rule.origin.text}]"


def cmd_eval(args: argparse.Namespace) -> int:
    """``flowc eval``."""
    if (args.packet is None) == (args.packets is None):
        raise UsageError("give exactly one of --packet TEXT or --packets FILE")
    result, status = _compile_or_report(args.policy)
    if status or result.program is None:
        return status
    policy = _select_policy(result.program, args.hook)
    if args.packet is not None:
        lines: list[tuple[str, int, str]] = [("<packet>", 1, args.packet)]
    else:
        if args.packets == "-":
            text = sys.stdin.read()
        else:
            source, problem = read_source(Path(args.packets), args.packets)
            if problem is not None:
                raise UsageError(problem.message)
            assert source is not None
            text = source
        lines = [(args.packets, n, line) for n, line in enumerate(text.splitlines(), start=1)]
    failures = 0
    out = sys.stdout
    for where, lineno, raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            packet = parse_packet(line)
        except PacketSyntaxError as exc:
            failures += 1
            column = raw.find(line) + exc.column
            print(f"{where}:{lineno}:{column}: error: {exc.message}", file=sys.stderr)
            print(f"    {raw}\n    {' ' * (column - 1)}^", file=sys.stderr)
            continue
        verdict = evaluate(policy, packet)
        shown = format_packet(packet)
        if args.json:
            out.write(json.dumps(_verdict_json(shown, verdict)) + "\n")
        else:
            out.write(_verdict_text(shown, verdict) + "\n")
    return EXIT_FAIL if failures else EXIT_OK


# -------------------------------------------------------------------- fmt
def cmd_fmt(args: argparse.Namespace) -> int:
    """``flowc fmt``."""
    status = EXIT_OK
    for path in args.files:
        text, problem = read_source(Path(path), path)
        if problem is not None:
            print(render(problem, {}), file=sys.stderr)
            status = EXIT_FAIL
            continue
        assert text is not None
        source, diags = parse(text, path)
        if source is None:
            for d in diags:
                print(render(d, {path: text}), file=sys.stderr)
            status = EXIT_FAIL
            continue
        formatted = format_source(source, text)
        if args.check:
            if formatted != text:
                diff = difflib.unified_diff(
                    text.splitlines(keepends=True),
                    formatted.splitlines(keepends=True),
                    fromfile=path,
                    tofile=f"{path} (formatted)",
                )
                sys.stdout.writelines(diff)
                print(f"flowc: {path} is not formatted", file=sys.stderr)
                status = EXIT_FAIL
        elif args.write:
            if formatted != text:
                Path(path).write_text(formatted)
        else:
            sys.stdout.write(formatted)
    return status


# ----------------------------------------------------------------- import
def cmd_import(args: argparse.Namespace) -> int:
    """``flowc import classbench|classbench-trace``."""
    text, problem = read_source(Path(args.file), args.file)
    if problem is not None:
        print(render(problem, {}), file=sys.stderr)
        return EXIT_FAIL
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
        return EXIT_FAIL
    _write_output(output, args.output)
    return EXIT_OK


# ----------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowc",
        description="Compile container network policy to BPF and tc-flower, and check it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("compile", help="compile a policy and print its IR")
    p.add_argument("policy", nargs="?", metavar="POLICY", help="policy file (.fw)")
    p.add_argument(
        "--emit",
        choices=["ir", "bpf", "flower", "tc"],
        default="ir",
        help="ir: the IR; bpf: slow-path C (with -o DIR also the map contents as JSON); "
        "flower: filters as `tc -j filter show` JSON; tc: a `tc -batch` file",
    )
    p.add_argument(
        "--profile",
        default="software",
        help="NIC profile for flower/tc: a bundled name or a .toml path (default software)",
    )
    p.add_argument(
        "--profile-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a profile value (repeatable), e.g. max_rules=2000",
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
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("check", help="report errors and warnings (shadowed, redundant rules)")
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_check)

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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("load", help="compile, verify and attach the BPF slow path (root)")
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to load (needed if several)")
    p.add_argument("--dev", help="device (default: the policy's own)")
    p.add_argument("--direction", choices=["ingress", "egress"], help="default: the policy's own")
    p.add_argument("--mode", choices=["tc", "tcx"], default="tc", help="cls_bpf (tc) or tcx link")
    p.add_argument("--strategy", choices=["bitvec", "chain"], default="bitvec")
    p.add_argument("--peer", action="store_true", help="redirect with bpf_redirect_peer")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("unload", help="remove flowc's BPF program from a device (root)")
    p.add_argument("--dev", required=True)
    p.add_argument("--direction", choices=["ingress", "egress"], required=True)
    p.add_argument("--mode", choices=["tc", "tcx"], default="tc")
    p.set_defaults(func=cmd_unload)

    p = sub.add_parser("fmt", help="print policy files in canonical form")
    p.add_argument("files", nargs="+", metavar="POLICY")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 and show a diff if unformatted")
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    p.set_defaults(func=cmd_fmt)

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
    p.set_defaults(func=cmd_import)

    from compiler.agent_cmd import add_parsers as add_agent
    from compiler.simulate_cmd import add_parsers as add_simulate
    from compiler.verify_cmd import add_parsers

    add_parsers(sub)
    add_simulate(sub)
    add_agent(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowc`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except UsageError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
