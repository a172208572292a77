"""The netkit agent's loop without root or netkit: the in-memory slow path, unattached.

What needs the kernel (the pinned link adopted on restart, BPF_LINK_UPDATE
under traffic, unload leaving nothing) runs in the guest tier
(tests/guest/test_netkit_guest.py) and the host's refusal of netkit in the
kernel tier (tests/kernel/test_netkit_host.py); here: start, the metrics
snapshot, policy updates in place and by a new program, refused updates, stop.
"""

from __future__ import annotations

import pytest

from backends.bpf.emit import ShapeChanged
from backends.nic_profile import load_profile
from ir.conntrack import ConnTracker
from ir.interp import evaluate
from ir.model import Policy
from runtime.agent.core import AgentConfig
from runtime.agent.counters import GAUGES, check_counters
from runtime.agent.loop import AgentError
from runtime.agent.netkit_agent import NetkitAgent
from runtime.agent.slow_path_model import SlowPathModel
from runtime.bpf_loader import BpfLoadError
from tests.fixtures import AGENT_POLICY, FakeClock, compiled, udp

UPDATED = AGENT_POLICY.replace("allow udp dport 5001", "drop udp dport 5001")


class ReshapingSlowPath(SlowPathModel):
    """A program whose maps cannot take the next policy (a new one must be swapped in)."""

    def update(self, policy: Policy, *, generation: int) -> None:
        raise ShapeChanged("the new policy needs other maps")


class Hook:
    """A netkit agent over slow-path models it loads through ``kind``."""

    def __init__(self, kind: type[SlowPathModel] = SlowPathModel, **config: object) -> None:
        self.policy: Policy | Exception = compiled(AGENT_POLICY)
        self.loaded: list[SlowPathModel] = []
        self.refuse_load: Exception | None = None
        self.clock = FakeClock()

        def load(policy: Policy, generation: int) -> SlowPathModel:
            if self.refuse_load is not None:
                raise self.refuse_load
            self.loaded.append(kind(policy, generation=generation, dedup_ns=0))
            return self.loaded[-1]

        cfg = AgentConfig(
            device="nk-web", direction="egress", profile=load_profile("software"),
            **config,  # type: ignore[arg-type]
        )  # fmt: skip
        self.agent = NetkitAgent(
            cfg, self.load_policy, clock=self.clock, slow_path=load, attach=False
        )

    def load_policy(self) -> Policy:
        if isinstance(self.policy, Exception):
            raise self.policy
        return self.policy


def test_start_loads_one_program_and_snapshots_its_counters() -> None:
    hook = Hook()
    hook.agent.start()
    (program,) = hook.loaded
    deciding = [program.receive(udp(1, port)) for port in (5000, 5000, 5001, 7000)]
    hook.agent.poll()
    snap = hook.agent.snapshot
    assert snap is not None and snap.generation == 1
    check_counters(snap.stats)
    assert set(snap.gauges) <= set(GAUGES) and snap.gauges["generation"] == 1.0
    slow = [counted.packets["slow"] for *_, counted in snap.rules]
    # The rules the IR says decide them, counted once each: the default (7000) too.
    assert deciding == [
        program.policy.rules.index(evaluate(program.policy, udp(1, port)).rule)
        for port in (5000, 5000, 5001, 7000)
    ]
    assert slow == [deciding.count(rule) for rule in range(len(slow))]


def test_an_update_of_the_same_shape_stays_in_the_loaded_program() -> None:
    hook = Hook()
    hook.agent.start()
    hook.policy = compiled(UPDATED)
    assert hook.agent.reload()
    (program,) = hook.loaded
    assert program.policy == hook.policy and program.generation == 2
    assert hook.agent.generation == 2 and hook.agent.stats["policy_updates"] == 1
    assert not hook.agent.reload()  # unchanged: left alone
    assert hook.agent.stats["policy_updates"] == 1


def test_an_update_that_changes_the_maps_swaps_in_a_new_program() -> None:
    hook = Hook(ReshapingSlowPath)
    hook.agent.start()
    hook.policy = compiled(UPDATED)
    assert hook.agent.reload()
    first, second = hook.loaded
    assert first.closed and not second.closed and hook.agent.slow_path is second
    assert second.generation == 2 and hook.agent.policy == hook.policy


def test_refused_updates_leave_the_running_policy() -> None:
    hook = Hook(ReshapingSlowPath)
    hook.agent.start()
    running = hook.agent.policy
    hook.policy = ValueError("web.fw:3:5: error: bad port")
    assert not hook.agent.reload()
    hook.policy = compiled(UPDATED)
    hook.refuse_load = BpfLoadError("verifier", "the kernel refused the program")
    assert not hook.agent.reload()
    (program,) = hook.loaded
    assert not program.closed and hook.agent.slow_path is program
    assert hook.agent.policy == running and hook.agent.generation == 1
    assert hook.agent.stats["policy_update_failures"] == 2


def test_run_reloads_when_the_file_changed_and_stops_when_asked() -> None:
    hook = Hook(poll_interval=0.0)
    hook.agent.start()
    hook.policy = compiled(UPDATED)
    turns = iter(range(3))
    hook.agent.run(until=lambda: next(turns, None) is None, reload_if=lambda: True)
    assert hook.agent.generation == 2 and hook.agent.stats["policy_updates"] == 1
    hook.agent.stop()
    assert hook.loaded[-1].closed and hook.agent.slow_path is None


def test_revoke_established_without_connection_tracking_is_refused_before_anything_loads() -> None:
    hook = Hook(revoke_established=True)
    with pytest.raises(AgentError, match="revoke_established needs connection tracking"):
        hook.agent.start()
    assert hook.loaded == []


def test_revoke_established_ends_the_connections_an_update_would_not_start() -> None:
    """The table here is the reference tracker (the agent's seam); the same call
    on the host's BPF table is tests/kernel/test_agent_conntrack.py's."""
    hook = Hook(revoke_established=True, stateful=True)
    table = ConnTracker()
    hook.agent._open_connection_table = lambda: table  # type: ignore[method-assign]
    hook.agent.start()
    for port in (5000, 5001):
        assert table.step(hook.policy, udp(1, port), 0).committed  # type: ignore[arg-type]
    hook.policy = compiled(UPDATED)  # now drops udp dport 5001
    assert hook.agent.reload()
    assert [c.key.dport for c in table.connections()] == [5000]
    assert hook.agent.stats["revoked"] == 1
