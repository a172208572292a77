"""``flowc agent``: run the flow cache agent on a hook; ``flowc agent status``: read it.

The agent runs until SIGINT or SIGTERM, then removes its rules and its
program (unless ``--keep``). SIGHUP, or a change to the policy file, makes it
recompile and switch to the new policy; a policy with errors is reported
(file:line:col and a caret, in the log) and the running one stays.

``--attach tc`` (the default) runs the flow cache: flower in chain 0 of a tc
hook in front of the slow path. ``--attach netkit`` runs the slow path as a
netkit device's own program behind flowc's pinned link, with no cache (a
netkit device has no qdisc; the cache belongs on the uplink), adopting the
link a previous run left (runtime/agent/netkit_agent.py).

Exit codes: 0 stopped cleanly; 1 the policy has errors or the agent could not
start (the kernel's own words); 2 usage errors; 3 ``status`` found no agent,
or the kernel lacks the hook (netkit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from backends.flower.rules import InstallFlags
from cli.common import (
    ExitCode,
    Subparsers,
    UsageError,
    add_profile_options,
    profile_from_args,
    select_policy,
)
from compiler.diagnostics import render, summary
from compiler.frontend import compile_file
from ir.model import Policy
from ir.state_analysis import uses_state
from runtime.agent.core import Agent, AgentConfig, structured
from runtime.agent.counters import CT_EXPIRIES, CT_STATES
from runtime.agent.loop import AgentError
from runtime.agent.metrics import read_status, serve
from runtime.agent.netkit_agent import NetkitAgent
from runtime.bpf_loader import BpfLoadError
from runtime.flow_cache import CacheConfig
from runtime.tc_attach import HookUnavailable

DEFAULT_METRICS = "127.0.0.1:9468"


class PolicyLoadError(Exception):
    """The policy file does not compile (the message is the rendered diagnostics)."""


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(structured(record), sort_keys=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = structured(record)
        head = f"{time.strftime('%H:%M:%S', time.localtime(fields.pop('ts')))} "
        head += f"{fields.pop('level')}: {fields.pop('event')}"
        return head + "".join(f" {k}={v}" for k, v in fields.items())


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    logger = logging.getLogger("flowc")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def policy_loader(path: str, hook: str | None) -> Callable[[], Policy]:
    """A callable compiling ``path`` and returning the selected IR policy, or
    raising PolicyLoadError with the rendered diagnostics."""

    def load() -> Policy:
        result = compile_file(path)
        if not result.ok or result.program is None:
            text = "\n".join(render(d, result.sources) for d in result.diagnostics)
            raise PolicyLoadError(f"{text}\n{path}: {summary(result.diagnostics)}")
        try:
            return select_policy(result.program, hook)
        except UsageError as exc:
            raise PolicyLoadError(str(exc)) from None

    return load


def _tracks_connections(path: str) -> bool:
    """Whether the host of the policy file tracks connections (some policy of it
    matches on state; then every hook commits, and the agent caches connections)."""
    result = compile_file(path)
    return result.program is not None and uses_state(result.program)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def run(args: argparse.Namespace) -> int:
    """``flowc agent [status]``."""
    if args.action == "status":
        return run_status(args)
    if args.policy is None:
        print("flowc: error: agent needs --policy POLICY", file=sys.stderr)
        return ExitCode.USAGE

    _setup_logging(args.log_format, args.log_level)
    log = logging.getLogger("flowc.agent")
    if args.offload is not None:
        args.profile_set = [*(args.profile_set or []), f"install_flags={args.offload}"]
    profile = profile_from_args(args)
    compile_policy = policy_loader(args.policy, args.hook)
    seen = 0.0

    def load() -> Policy:
        # Remember the version read, so a SIGHUP for an edit is not followed by
        # a second reload when the loop notices the same edit's mtime.
        nonlocal seen
        seen = _mtime(args.policy)
        return compile_policy()

    if args.attach == "netkit" and args.offload:
        print(
            "flowc: error: --attach netkit runs no flower cache (no --offload)",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        first = load()
    except PolicyLoadError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.FAIL
    config = AgentConfig(
        device=args.dev or first.hook.device,
        direction=args.direction or first.hook.direction,
        profile=profile,
        cache=CacheConfig(
            mode=args.mode,
            max_idle=args.max_idle,
            capacity=args.capacity,
            max_insert_rate=args.max_insert_rate or None,
            admit_after=args.admit_after,
            negative_ttl=args.negative_ttl,
            mask_slack=args.mask_slack,
        ),
        proactive=not args.no_proactive,
        keep=args.keep,
        strategy=args.strategy,
        poll_interval=args.poll_interval,
        queue_size=args.queue_size,
        revoke_established=args.revoke_established,
        ct_gc_interval=args.ct_gc_interval,
        stateful=_tracks_connections(args.policy),
    )
    agent: Agent | NetkitAgent = (
        NetkitAgent(config, load) if args.attach == "netkit" else Agent(config, load)
    )

    def on_stop(_signum: int, _frame: object) -> None:
        agent.stop_requested = True

    def on_hup(_signum: int, _frame: object) -> None:
        agent.reload_requested = True

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        agent.start()
    except HookUnavailable as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        agent.stop()
        return ExitCode.UNAVAILABLE
    except (AgentError, BpfLoadError) as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        agent.stop()
        return ExitCode.FAIL
    if args.metrics_addr != "none":
        try:
            host, port = serve(lambda: agent.snapshot, args.metrics_addr)
        except (OSError, ValueError) as exc:
            print(f"flowc: error: metrics on {args.metrics_addr}: {exc}", file=sys.stderr)
            agent.stop()
            return ExitCode.FAIL
        log.info("metrics", extra={"fields": {"url": f"http://{host}:{port}/metrics"}})

    def policy_changed() -> bool:
        return _mtime(args.policy) != seen

    try:
        agent.run(reload_if=policy_changed)
    except AgentError as exc:
        print(f"flowc: error: {exc}", file=sys.stderr)
        agent.stop()
        return ExitCode.FAIL
    agent.stop()
    return ExitCode.OK


def run_status(args: argparse.Namespace) -> int:
    """``flowc agent status``: scrape the agent's metrics and show them."""
    address = args.metrics_addr if args.metrics_addr != "none" else DEFAULT_METRICS
    url = address if address.startswith("http") else f"http://{address}/metrics"
    try:
        status = read_status(url)
    except OSError as exc:
        print(f"flowc: no agent answers at {url}: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    rules = sorted(status.rules.values(), key=lambda r: (-r.total_packets, r.rule))
    if args.json:
        print(
            json.dumps(
                {
                    "agent": status.agent,
                    "evictions": status.evictions,
                    "connections": status.connections,
                    "rules": [
                        {
                            "rule": r.rule,
                            "line": r.line,
                            "text": r.text,
                            "packets": r.packets,
                            "bytes": r.bytes,
                            "last_hit": r.last_hit,
                        }
                        for r in rules
                    ],
                },
                indent=2,
            )
        )
        return ExitCode.OK
    a = status.agent
    print(
        f"generation {a.get('generation', 0):.0f}: {a.get('occupancy', 0):.0f} cache rules "
        f"(peak {a.get('peak_occupancy', 0):.0f}, capacity {a.get('capacity', 0):.0f}, "
        f"{a.get('distinct_masks', 0):.0f} masks), {a.get('proactive_filters', 0):.0f} "
        f"proactive filters"
    )
    print(
        f"misses {a.get('misses', 0):.0f}, installs {a.get('installs', 0):.0f}, "
        f"install failures {a.get('install_failures', 0):.0f}, event drops "
        f"{a.get('event_drops', 0):.0f}, revalidations {a.get('revalidations', 0):.0f}, "
        f"policy updates {a.get('policy_updates', 0):.0f}"
    )
    print(
        "evictions "
        + ", ".join(f"{reason} {count:.0f}" for reason, count in sorted(status.evictions.items()))
    )
    c = status.connections
    if a.get("ct_entries") or c.get("commits"):
        print(
            f"connections {a.get('ct_entries', 0):.0f} in the table "
            f"({a.get('ct_cached', 0):.0f} cached), commits {c.get('commits', 0):.0f} "
            f"({a.get('ct_commits_per_second', 0):.0f}/s), untracked {c.get('untracked', 0):.0f}; "
            "packets "
            + ", ".join(f"{s} {c.get(f'packets_{s}', 0):.0f}" for s in CT_STATES.values())
            + "; expiries "
            + ", ".join(f"{r} {c.get(f'expiries_{r}', 0):.0f}" for r in CT_EXPIRIES.values())
        )
    now = time.time()
    print(f"{'line':24} {'slow':>10} {'cache':>10} {'flower':>10} {'last hit':>10}  rule")
    shown = rules if args.all else [r for r in rules if r.total_packets][: args.top]
    for r in shown:
        last = f"{now - r.last_hit:.0f}s ago" if r.last_hit else "never"
        counts = "".join(f" {r.packets.get(t, 0):>10.0f}" for t in ("slow", "cache", "flower"))
        print(f"{r.line:24}{counts} {last:>10}  {r.text}")
    return ExitCode.OK


def add_parser(sub: Subparsers) -> None:
    """Register ``agent`` on the CLI's subcommand parser."""
    p = sub.add_parser(
        "agent",
        help="run the flow cache agent on a hook (root); 'agent status' reads a running one",
    )
    p.add_argument("action", nargs="?", choices=["run", "status"], default="run")
    p.add_argument("--policy", metavar="POLICY")
    p.add_argument("--hook", metavar="NAME", help="the policy to run (needed if several)")
    p.add_argument("--dev", help="device (default: the policy's own)")
    p.add_argument("--direction", choices=["ingress", "egress"], help="default: the policy's own")
    p.add_argument(
        "--attach",
        choices=["tc", "netkit"],
        default="tc",
        help="tc: the flow cache (flower in front of the slow path, default); netkit: the "
        "slow path as a netkit primary's own program behind a pinned link, no cache",
    )
    add_profile_options(p, help_text="NIC profile of the hook's device (default software)")
    p.add_argument(
        "--offload",
        choices=[f.value for f in (InstallFlags.SKIP_SW, InstallFlags.SKIP_HW, InstallFlags.NONE)],
        help="flower flags of every rule (default: the profile's)",
    )
    p.add_argument(
        "--no-proactive",
        action="store_true",
        help="install no partitioned filters: every flow starts in the slow path",
    )
    p.add_argument("--keep", action="store_true", help="leave rules and program on stop")
    p.add_argument(
        "--revoke-established",
        action="store_true",
        help="on a policy update, end connections the new policy would not let start "
        "(default: they survive, as with the kernel's conntrack)",
    )
    p.add_argument(
        "--ct-gc-interval",
        type=float,
        default=5.0,
        help="seconds between the connection collector's passes (stateful hosts; default 5)",
    )
    p.add_argument("--mode", choices=["megaflow", "exact"], default="megaflow")
    p.add_argument("--max-idle", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--capacity", type=int, help="cache rules at most (default: profile share)")
    p.add_argument("--max-insert-rate", type=float, default=1000.0, help="rules/s (0: unlimited)")
    p.add_argument("--admit-after", type=int, default=1, help="slow-path packets before a rule")
    p.add_argument("--negative-ttl", type=float, default=5.0, help="seconds a refusal is kept")
    p.add_argument(
        "--mask-slack", type=int, default=0, help="bits a megaflow gives up to share a mask"
    )
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--queue-size", type=int, default=4096, help="miss events held at most")
    p.add_argument("--strategy", choices=["bitvec", "chain"], default="bitvec")
    p.add_argument(
        "--metrics-addr",
        default=DEFAULT_METRICS,
        help=f"HOST:PORT for Prometheus metrics, or 'none' (default {DEFAULT_METRICS})",
    )
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.add_argument("--log-level", choices=["debug", "info", "warning"], default="info")
    p.add_argument("--json", action="store_true", help="status: JSON")
    p.add_argument("--top", type=int, default=20, help="status: rules with traffic shown")
    p.add_argument("--all", action="store_true", help="status: every rule")
    p.set_defaults(func=run)
