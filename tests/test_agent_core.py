"""The agent's loop without root: the NIC model as flower table, the in-memory slow path.

A :class:`Host` plays packets the way the hook would: the NIC model's chain 0
decides what it can, everything else (traps, misses) goes to the slow-path
model, whose miss events the agent turns into cache rules. Soundness is held
to the IR interpreter (whatever the NIC decides must be the policy's action);
start, events, update, reload, restart and stop are each driven here. The
kernel tier runs the same agent on the real BPF program
(tests/kernel/test_agent_events.py) and the guest tier on real flower.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backends.bpf.abi import FlowKey
from backends.bpf.emit import ShapeChanged
from backends.flower.rules import (
    ROLE_CACHE,
    ROLE_CUTOFF,
    ROLE_RULE,
    CookieRole,
    FlowerFilter,
    action_for,
)
from backends.nic_profile import load_profile
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from runtime.agent.core import CATCH_ALL_PRIO, GUARD_PRIO, Agent, AgentConfig, _point_of
from runtime.agent.counters import COUNTERS, GAUGES
from runtime.agent.metrics import SnapshotCollector
from runtime.agent.priorities import PLAN
from runtime.agent.slow_path_model import SlowPathModel
from runtime.flow_cache import CacheConfig
from runtime.nic_model import NicModel
from tests.fixtures import AGENT_POLICY, FakeClock, compiled, udp
from tests.strategies import packets

UPDATED = AGENT_POLICY.replace("allow udp dport 5001", "drop udp dport 5001")


class Host:
    """One hook: the NIC model in front, the slow-path model behind, an agent on both."""

    def __init__(
        self,
        policy: Policy,
        *,
        model: NicModel | None = None,
        slow_path: Callable[..., SlowPathModel] = SlowPathModel,
        **config: object,
    ) -> None:
        self.clock = FakeClock()
        profile = dataclasses.replace(load_profile("software"), max_rules=200)
        self.model = model or NicModel(profile, clock=self.clock)
        self.policy = policy
        self.loaded: list[SlowPathModel] = []

        def load(policy: Policy, generation: int) -> SlowPathModel:
            loaded = slow_path(policy, generation=generation, dedup_ns=0)
            self.loaded.append(loaded)
            return loaded

        settings = {"proactive": False, "cache": CacheConfig(max_insert_rate=None), **config}
        cfg = AgentConfig(
            device="lo", direction="ingress", profile=self.model.profile,
            **settings,  # type: ignore[arg-type]
        )  # fmt: skip
        self.agent = Agent(
            cfg, self.load_policy, clock=self.clock, installer=self.model, slow_path=load,
            attach=False,
        )  # fmt: skip

    def load_policy(self) -> Policy:
        return self.policy

    def send(self, packets: list[Packet]) -> list[FlowerFilter | None]:
        """Each packet through chain 0, the slow path for what it does not decide;
        then the agent takes the events. Returns the deciding filter per packet."""
        decided = []
        for p in packets:
            f = self.model.classify(p)
            if f is None:
                self.loaded[-1].receive(p)
            decided.append(f)
        assert self.agent.slow_path is not None
        self.agent.slow_path.poll_events(0)
        while self.agent.handle_events():
            pass
        return decided

    def flowc_filters(self) -> list[FlowerFilter]:
        return [i.filter for i in self.model.dump() if i.filter.cookie is not None]

    def by_role(self, role: CookieRole) -> list[FlowerFilter]:
        return [f for f in self.flowc_filters() if f.cookie is not None and f.cookie.role == role]

    def assert_sound(self, policy: Policy, packets: list[Packet]) -> None:
        for p in packets:
            f = self.model.classify(p)
            if f is not None:
                assert f.action == action_for(evaluate(policy, p).rule.action), p


TRAFFIC = [udp(i, port) for i in range(10) for port in (5000, 5001, 6000, 7000)]


def test_start_installs_the_catch_all_and_no_guard() -> None:
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    assert host.agent.generation == 1
    assert [(f.chain, f.prio) for f in host.flowc_filters()] == [(0, CATCH_ALL_PRIO)]
    assert host.loaded[-1].callback is not None  # events are open
    assert host.agent.snapshot is not None and host.agent.snapshot.generation == 1


def test_proactive_filters_sit_between_guard_and_catch_all() -> None:
    host = Host(compiled(AGENT_POLICY), proactive=True)
    host.agent.start()
    prios = sorted({f.prio for f in host.flowc_filters()})
    assert prios[0] == PLAN.proactive.first and prios[-1] == CATCH_ALL_PRIO
    assert GUARD_PRIO not in prios
    host.assert_sound(host.policy, TRAFFIC)


def test_misses_become_sound_cache_rules_and_the_nic_takes_the_rest() -> None:
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    first = host.send(TRAFFIC)
    assert all(f is None for f in first[:4])  # each verdict region's first flow misses
    assert host.agent.queue.received == sum(1 for f in first if f is None)
    cache = host.by_role(ROLE_CACHE)
    assert 4 <= len(cache) < 10  # megaflows: a handful of rules for 40 flows
    assert all(f.prio in PLAN.cache for f in cache)
    again = host.send(TRAFFIC)
    assert all(f is not None for f in again)  # every flow now decided in chain 0
    host.assert_sound(host.policy, TRAFFIC)
    assert host.agent.cache is not None
    assert host.agent.cache.stats["installs"] == len(cache)


def test_update_deletes_the_changed_regions_rules_and_keeps_the_others() -> None:
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    host.send([udp(1, 5000), udp(2, 5001)])
    before = {f.match.dst_port: f for f in host.by_role(ROLE_CACHE)}
    assert len(before) == 2
    new = compiled(UPDATED)
    host.policy = new
    assert host.agent.reload()
    assert host.agent.generation == 2 and host.agent.policy == new
    assert host.loaded[-1].generation == 2 and len(host.loaded) == 1  # updated in place
    after = host.by_role(ROLE_CACHE)
    assert len(after) == 1 and after[0] == before[after[0].match.dst_port]  # kept as it was
    assert host.model.classify(udp(2, 5001)) is None  # trapped: the slow path decides it
    assert host.agent.cache is not None
    assert host.agent.cache.stats["revalidation_deletes"] == 1
    host.send([udp(2, 5001)])
    host.assert_sound(new, [udp(i, p) for i in range(5) for p in (5000, 5001)])
    assert not host.by_role(CookieRole.TRAP) and len(host.by_role(ROLE_CUTOFF)) == 1


def test_a_stale_event_installs_nothing() -> None:
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    host.loaded[-1].receive(udp(2, 5001))  # decided under generation 1, still in the ring
    host.policy = compiled(UPDATED)
    host.agent.reload()
    host.send([])
    assert host.by_role(ROLE_CACHE) == []
    assert host.agent.cache is not None and host.agent.cache.stats["stale"] == 1


class ReshapingSlowPath(SlowPathModel):
    """A slow path whose maps cannot take the next policy (the agent must load anew)."""

    def update(self, policy: Policy, *, generation: int) -> None:
        raise ShapeChanged("the new policy needs other maps")


def test_a_policy_that_changes_the_maps_loads_a_new_slow_path() -> None:
    host = Host(compiled(AGENT_POLICY), slow_path=ReshapingSlowPath)
    host.agent.start()
    first = host.loaded[-1]
    host.policy = compiled(UPDATED)
    assert host.agent.reload()
    assert len(host.loaded) == 2 and first.closed and host.agent.slow_path is host.loaded[-1]
    assert host.loaded[-1].generation == 2
    host.send([udp(2, 5001)])  # events come from the new one
    assert [f.action.kind for f in host.by_role(ROLE_CACHE)] == ["drop"]


@pytest.mark.parametrize("broken", [True, False])
def test_reload_keeps_the_running_policy_on_errors_or_no_change(broken: bool) -> None:
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    host.send([udp(1, 5000)])
    filters = host.flowc_filters()

    def failing() -> Policy:
        raise ValueError("agent.fw:3:5: error: unknown endpoint")

    if broken:
        host.agent.load_policy = failing
    assert not host.agent.reload()
    assert host.agent.generation == 1 and host.agent.policy == host.policy
    assert host.flowc_filters() == filters
    assert host.agent.stats["policy_update_failures"] == (1 if broken else 0)
    host.send([udp(1, 5000), udp(3, 5001)])  # the loop goes on with the old policy
    host.assert_sound(host.policy, TRAFFIC)


def flowc_layout(host: Host) -> list[tuple[int, int, int, CookieRole]]:
    """(chain, prio, handle, role) of every flowc filter but the cache rules."""
    return sorted(
        (f.chain, f.prio, f.handle, f.cookie.role)
        for f in host.flowc_filters()
        if f.cookie is not None and f.cookie.role != ROLE_CACHE
    )


@pytest.mark.parametrize("proactive", [False, True])
def test_restart_adopts_sound_rules_deletes_the_rest_and_doubles_nothing(proactive: bool) -> None:
    old = Host(compiled(AGENT_POLICY))
    old.agent.start()
    old.send([udp(1, 5000), udp(2, 5001), udp(3, 6000)])
    cache = old.by_role(ROLE_CACHE)
    assert len(cache) == 3
    # 5001 turns from allow to drop: its cache rule is no longer sound.
    sound = {(f.prio, f.handle) for f in cache if not f.match.matches(udp(2, 5001))}
    assert len(sound) == 2
    # Crash (no stop); a new agent starts on the updated policy with the same table.
    new = Host(compiled(UPDATED), model=old.model, proactive=proactive)
    new.agent.start()
    assert new.agent.generation == 2 and new.agent.cache is not None
    stats = new.agent.cache.stats
    assert (stats["adopted"], stats["reconcile_deletes"]) == (2, 1)
    assert {(f.prio, f.handle) for f in new.by_role(ROLE_CACHE)} == sound
    assert {f.cookie.generation for f in new.flowc_filters() if f.cookie is not None} == {1, 2}
    # Nothing doubled: the layout of a fresh start on the updated policy, plus the cache.
    fresh = Host(compiled(UPDATED), proactive=proactive)
    fresh.agent.start()
    assert flowc_layout(new) == flowc_layout(fresh)
    new.assert_sound(new.policy, TRAFFIC)
    new.send(TRAFFIC)
    new.assert_sound(new.policy, TRAFFIC)


def test_stop_removes_every_flowc_filter_and_releases_the_slow_path() -> None:
    # A proactive budget of 20 filters (the fragment and malformed-frame traps take 13):
    # the rest of the policy traps and gets cached.
    host = Host(
        compiled(AGENT_POLICY),
        proactive=True,
        cache=CacheConfig(max_insert_rate=None, capacity=178),
    )
    host.agent.start()
    host.send(TRAFFIC)
    assert host.by_role(ROLE_CACHE) and host.by_role(ROLE_RULE)
    host.assert_sound(host.policy, TRAFFIC)
    host.agent.stop()
    assert host.flowc_filters() == []
    assert host.loaded[-1].closed and host.agent.slow_path is None and host.agent.installer is None


def test_stop_with_keep_leaves_the_rules() -> None:
    host = Host(compiled(AGENT_POLICY), keep=True)
    host.agent.start()
    host.send([udp(1, 5000)])
    filters = host.flowc_filters()
    host.agent.stop()
    assert host.flowc_filters() == filters and host.loaded[-1].closed


def test_a_fresh_agent_exports_every_declared_metric() -> None:
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: host.agent.snapshot))
    text = generate_latest(registry).decode()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert {f"flowc_agent_{c}_total" for c in COUNTERS} <= names
    assert {f"flowc_agent_{g}" for g in GAUGES} <= names
    assert {"flowc_agent_evictions_total", "flowc_rule_packets_total"} <= names


def test_poll_evicts_idle_rules_and_counts_slow_path_traffic_per_rule() -> None:
    host = Host(compiled(AGENT_POLICY), cache=CacheConfig(max_insert_rate=None, max_idle=30.0))
    host.agent.start()
    host.send([udp(1, 5000)])  # the slow path decides it and reports it
    host.send([udp(2, 5000)])  # the cache rule decides this one
    host.agent.poll()
    snap = host.agent.snapshot
    assert snap is not None
    rule, _origin, _text, counters = snap.rules[0]
    assert rule == 0 and counters.packets["slow"] == 1 and counters.packets["cache"] == 1
    host.clock.now += 31
    host.agent.poll()
    assert host.by_role(ROLE_CACHE) == []
    assert host.agent.snapshot is not None and host.agent.snapshot.stats["evictions_idle"] == 1


def test_the_slow_path_model_reports_like_the_ring_buffer() -> None:
    policy = compiled(AGENT_POLICY)
    now = [0]
    model = SlowPathModel(
        policy, generation=7, dedup_ns=100, ring_capacity=2, clock_ns=lambda: now[0]
    )
    seen: list[tuple[Packet, int, int, int]] = []
    model.open_events(lambda e: seen.append((e.key.to_packet(), e.rule, e.generation, e.ts_ns)))
    assert model.receive(udp(1, 5000)) == 0
    model.receive(udp(1, 5000))  # within dedup_ns: counted, not reported
    now[0] = 150
    model.receive(udp(1, 5000))
    model.receive(udp(2, 6000))  # the ring (2 records) is full
    model.poll_events(0)
    assert seen == [(udp(1, 5000), 0, 7, 0), (udp(1, 5000), 0, 7, 150)]
    assert model.status()["events_sent"] == 2 and model.status()["events_lost"] == 1
    assert model.rule_stats()[0] == (3, 192, 150)
    model.update(compiled(UPDATED), generation=8)
    assert model.rule_stats()[0] == (0, 0, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(4990, 5010)), min_size=1, max_size=40))
def test_flow_key_round_trips(flows: list[tuple[int, int]]) -> None:
    for i, port in flows:
        assert FlowKey.from_packet(udp(i, port)).to_packet() == udp(i, port)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from([80, 5000, 5001, 6000, 7000]), st.booleans()),
        max_size=30,
    ),
    st.integers(0, 30),
)
def test_the_nic_never_disagrees_with_the_policy_across_an_update(
    flows: list[tuple[int, int, bool]], switch_at: int
) -> None:
    """Oracle: the IR interpreter, for the policy running when the packet is sent."""
    host = Host(compiled(AGENT_POLICY))
    host.agent.start()
    for n, (i, port, tcp) in enumerate(flows):
        if n == switch_at:
            host.policy = compiled(UPDATED)
            host.agent.reload()
        packet = (
            Packet.make(
                family=4, ip_proto=6, ip4_src=0x0A010000 + i, ip4_dst=1, sport=1, dport=port
            )
            if tcp
            else udp(i, port)
        )
        decided = host.send([packet])[0]
        running = host.agent.policy
        assert running is not None
        if decided is not None:
            assert decided.action == action_for(evaluate(running, packet).rule.action)
    host.agent.stop()
    assert host.flowc_filters() == []


@settings(max_examples=200, deadline=None)
@given(packets())
def test_a_flow_key_reads_back_as_its_packet(packet: Packet) -> None:
    """The queue reads a ring-buffer key from its bytes (faster than the key's own
    conversion): the same packet, for every field of the header space."""
    key = FlowKey.from_packet(packet)
    assert _point_of(key, bytes(key)) == key.to_packet().values == packet.values


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=ctypes.sizeof(FlowKey), max_size=ctypes.sizeof(FlowKey)))
def test_the_key_reader_reads_every_field_as_its_bytes_say(raw: bytes) -> None:
    """One struct unpack per key, against the field-by-field reading of the
    key's layout (any bytes, packet or not: the check comes after)."""
    from runtime.agent.core import _key_layout, _key_reader

    layout, read = _key_layout(), _key_reader()
    assert layout is not None and read is not None
    assert read(raw) == tuple(int.from_bytes(raw[a:b], order) for a, b, order in layout)


def test_a_flow_key_that_is_no_packet_is_refused() -> None:
    key = FlowKey.from_packet(udp(1, 80))
    key.family = 5
    with pytest.raises(ValueError, match="family"):
        _point_of(key, bytes(key))
