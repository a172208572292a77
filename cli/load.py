"""``flowc load`` and ``flowc unload``: the BPF slow path on a device hook (root)."""

from __future__ import annotations

import argparse
import sys

from backends import bpf
from backends.bpf.conntrack import CtSpec
from backends.targets import TARGETS
from cli.common import ExitCode, Subparsers, compile_host_policy
from ir.model import MIRROR, REDIRECT
from runtime import netkit
from runtime.bpf_loader import BpfLoadError, SlowPath
from runtime.tc_attach import MODES, AttachError, HookUnavailable, attach, check_hook, detach


def add_parser(sub: Subparsers) -> None:
    """Register ``load`` and ``unload``."""
    p = sub.add_parser("load", help="compile, verify and attach the BPF slow path (root)")
    p.add_argument("policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to load (needed if several)")
    p.add_argument("--dev", help="device (default: the policy's own)")
    p.add_argument("--direction", choices=["ingress", "egress"], help="default: the policy's own")
    p.add_argument(
        "--mode",
        choices=list(TARGETS),
        default="tc",
        help="cls_bpf (tc), a tcx link, or a netkit link (the device must be a netkit primary)",
    )
    p.add_argument("--strategy", choices=["bitvec", "chain"], default="bitvec")
    p.add_argument(
        "--peer",
        action="store_true",
        help="redirect with bpf_redirect_peer to every target (default: decided per target "
        "from the device kinds)",
    )
    p.set_defaults(func=run_load)

    p = sub.add_parser("unload", help="remove flowc's BPF program from a device (root)")
    p.add_argument("--dev", required=True)
    p.add_argument("--direction", choices=["ingress", "egress"], required=True)
    p.add_argument("--mode", choices=list(MODES), default="tc")
    p.set_defaults(func=run_unload)


def run_load(args: argparse.Namespace) -> int:
    """``flowc load``: compile, verify, load and attach the slow path on a device."""
    compiled = compile_host_policy(args.policy, args.hook)
    policy, stateful = compiled if compiled is not None else (None, False)
    if policy is None:
        return ExitCode.FAIL
    device = args.dev or policy.hook.device
    direction = args.direction or policy.hook.direction
    if args.peer and (args.mode == "netkit" or direction != "ingress"):
        print(
            "flowc: error: --peer needs a tc or tcx ingress hook (the kernel drops a "
            "bpf_redirect_peer from anywhere else)",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        # Before the compile: a kernel without the hook, or the wrong kind of
        # device, is known in a millisecond.
        check_hook(device, args.mode)
        diversions = {
            (r.action.kind, r.action.device)
            for r in policy.rules
            if r.action.kind in (REDIRECT, MIRROR) and r.action.device is not None
        }
        peer_devices = netkit.peer_redirect_targets(
            sorted(d for kind, d in diversions if kind == REDIRECT),
            mode=args.mode,
            direction=direction,
        )
        if args.mode == "netkit":
            netkit.check_diversion_targets(device, direction, netkit.diversion_targets(policy))
    except HookUnavailable as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except (AttachError, netkit.NetkitError) as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    try:
        # On a host that tracks connections every hook commits, this one too.
        program = bpf.lower(
            policy,
            args.strategy,
            target=TARGETS[args.mode],
            conntrack=CtSpec() if stateful else None,
        )
        slow_path = SlowPath(program, peer_redirect=args.peer, peer_devices=peer_devices)
    except BpfLoadError as exc:
        line = f"{policy.origin.file}:{exc.dsl_line}: " if exc.dsl_line else ""
        print(f"flowc: {line}error: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    try:
        where = attach(slow_path.fd, device, direction, mode=args.mode)
    except HookUnavailable as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except AttachError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        return ExitCode.FAIL
    finally:
        slow_path.close()  # the attached copy stays; this process's handles go
    peer = f"; bpf_redirect_peer to {', '.join(sorted(peer_devices))}" if peer_devices else ""
    print(
        f"loaded policy {policy.name} ({len(policy.rules)} rules, {args.strategy}) on "
        f"{where.direction} of {where.device} ({where.mode}{peer})"
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
