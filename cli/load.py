"""``flowc load`` and ``flowc unload``: the BPF slow path on a device hook (root)."""

from __future__ import annotations

import argparse
import sys

from backends import bpf
from backends.targets import TARGETS
from cli.common import ExitCode, Subparsers, compile_policy
from runtime.bpf_loader import BpfLoadError, SlowPath
from runtime.tc_attach import AttachError, attach, detach


def add_parser(sub: Subparsers) -> None:
    """Register ``load`` and ``unload``."""
    p = sub.add_parser("load", help="compile, verify and attach the BPF slow path (root)")
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to load (needed if several)")
    p.add_argument("--dev", help="device (default: the policy's own)")
    p.add_argument("--direction", choices=["ingress", "egress"], help="default: the policy's own")
    p.add_argument("--mode", choices=list(TARGETS), default="tc", help="cls_bpf (tc) or tcx link")
    p.add_argument("--strategy", choices=["bitvec", "chain"], default="bitvec")
    p.add_argument("--peer", action="store_true", help="redirect with bpf_redirect_peer")
    p.set_defaults(func=run_load)

    p = sub.add_parser("unload", help="remove flowc's BPF program from a device (root)")
    p.add_argument("--dev", required=True)
    p.add_argument("--direction", choices=["ingress", "egress"], required=True)
    p.add_argument("--mode", choices=["tc", "tcx"], default="tc")
    p.set_defaults(func=run_unload)


def run_load(args: argparse.Namespace) -> int:
    """``flowc load``: compile, verify, load and attach the slow path on a device."""
    policy = compile_policy(args.policy, args.hook)
    if policy is None:
        return ExitCode.FAIL
    device = args.dev or policy.hook.device
    direction = args.direction or policy.hook.direction
    try:
        program = bpf.lower(policy, args.strategy, target=TARGETS[args.mode])
        slow_path = SlowPath(program, peer_redirect=args.peer)
    except BpfLoadError as exc:
        line = f"{policy.origin.file}:{exc.dsl_line}: " if exc.dsl_line else ""
        print(f"flowc: {line}error: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    try:
        where = attach(slow_path.fd, device, direction, mode=args.mode)
    except AttachError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    finally:
        slow_path.close()  # the attached copy stays; this process's handles go
    print(
        f"loaded policy {policy.name} ({len(policy.rules)} rules, {args.strategy}) on "
        f"{where.direction} of {where.device} ({where.mode})"
    )
    return ExitCode.OK


def run_unload(args: argparse.Namespace) -> int:
    """``flowc unload``: remove flowc's program from a device hook."""
    try:
        removed = detach(args.dev, args.direction, mode=args.mode)
    except AttachError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    if not removed:
        print(f"flowc: nothing attached on {args.direction} of {args.dev}", file=sys.stderr)
        return ExitCode.FAIL
    print(f"unloaded {args.direction} of {args.dev}")
    return ExitCode.OK
