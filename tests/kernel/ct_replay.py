"""Replaying a host's packet sequence through its BPF slow paths and the
reference tracker at once (the kernel tier's connection-tracking tests): each
packet's state, verdict, rule, mark and commit, then the table and counters,
must be equal. A helper module, so the test modules that replay share it
without importing one another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backends.bpf import abi
from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import lower
from compiler.frontend import compile_source
from ir.conntrack import NS_PER_S, ConnTracker
from ir.model import MARK, Policy
from ir.packet import Packet
from runtime.bpf_loader import SlowPath
from runtime.conntrack import CtTable
from runtime.testrun import test_run as kernel_run
from tests.netns import inside
from verify.bpf import retval
from verify.frames import frame

# The test clock's zero: flowc_config.ct_now_ns = 0 means "the kernel's clock",
# so both the reference and the kernel run at reference time + this.
EPOCH_NS = 1000 * NS_PER_S


@dataclass
class Host:
    """A host's programs sharing one table, and the reference for the same config."""

    policies: dict[str, Policy]
    paths: dict[str, SlowPath]
    spec: CtSpec

    def reset(self) -> ConnTracker:
        """An empty table and zero counters; the fresh reference tracker."""
        with CtTable(self.spec.pin) as table:
            table.flush()
        for slow_path in self.paths.values():
            slow_path.table(abi.STATUS_MAP).clear()
        return ConnTracker(self.spec.config)

    def counters(self) -> dict[str, int]:
        """The tracker counters summed over the host's programs."""
        total: dict[str, int] = {}
        for slow_path in self.paths.values():
            for name, value in slow_path.status().items():
                if name.startswith("ct_"):
                    total[name[3:]] = total.get(name[3:], 0) + value
        return total


def load_host(text: str, spec: CtSpec) -> Host:
    """Compile ``text`` and load every policy of it on the table ``spec`` names."""
    result = compile_source(text, "host.fw")
    assert result.program is not None, result.diagnostics
    policies = {p.name: p for p in result.program.policies}
    paths = {
        name: SlowPath(lower(p, conntrack=spec), ifindex_of=lambda _dev: 1)
        for name, p in policies.items()
    }
    return Host(policies, paths, spec)


def replay(
    host: Host,
    netns: str,
    lines: Sequence[tuple[float, str, Packet]],
    *,
    frames: list[bytes] | None = None,
) -> list[str]:
    """Run ``lines`` (seconds, hook, packet) through the kernel and the reference;
    assert they agree packet by packet and on the table and counters at the end.
    ``frames`` replaces the frame of each packet (to send cut-short frames). The
    states, for the caller's own expectations."""
    tracker = host.reset()
    seen: list[str] = []
    for i, (seconds, hook, packet) in enumerate(lines):
        now = EPOCH_NS + int(seconds * NS_PER_S)
        policy = host.policies[hook]
        want = tracker.step(policy, packet, now)
        slow_path = host.paths[hook]
        slow_path.set_clock(now)
        data = frames[i] if frames is not None else frame(packet)
        with inside(netns):
            got = kernel_run(slow_path.fd, data)
        kind = want.action.kind
        mark = want.verdict.rule.action.mark if kind == MARK else 0
        where = f"line {i}: {hook} {packet} at {seconds}s"
        assert got.state == want.state, (where, want.observation)
        assert (got.retval, got.rule, got.mark) == (
            retval(kind),
            want.verdict.rule.priority,
            mark or 0,
        ), where
        assert (got.committed, got.untracked) == (want.committed, want.untracked), where
        seen.append(want.observation.state_name)
    with CtTable(host.spec.pin) as table:
        kernel = sorted(table.connections(), key=lambda c: str(c.key))
    # The BPF entry records the committing hook by its id, not its name; the
    # rest, the hook id and the committing TCP flags included, must be equal.
    reference = sorted(
        (c._replace(hook="") for c in tracker.connections()), key=lambda c: str(c.key)
    )
    assert kernel == reference
    counters = host.counters()
    for name, value in counters.items():
        assert value == tracker.counters[name], name
    return seen
