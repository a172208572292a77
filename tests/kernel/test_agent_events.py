"""The agent's loop on this machine's kernel: real slow path, real ring buffer.

This kernel has no cls_flower, so the flower table is the NIC model (the
named stand-in the cache's unit tests use) and the program is fed with
BPF_PROG_TEST_RUN instead of a hook; everything between (the program's
events, the ring buffer, the bounded queue, megaflows, installs, updates and
restarts) is the real code. The guest tier runs the same agent on a real
hook with real flower (tests/guest/test_agent_guest.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from backends.flower.rules import ROLE_CACHE, ROLE_CUTOFF, action_for
from backends.nic_profile import load_profile
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from runtime.agent.core import CATCH_ALL_PRIO, GUARD_PRIO, Agent, AgentConfig
from runtime.flow_cache import CacheConfig
from runtime.nic_model import NicModel
from runtime.testrun import test_run as run_frame
from tests.fixtures import AGENT_POLICY, FakeClock, compiled, udp
from verify.frames import frame

pytestmark = pytest.mark.kernel


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeAgent = Callable[..., Agent]


@pytest.fixture
def make_agent() -> Iterator[MakeAgent]:
    """A factory of started agents (``make_agent(policy, model, clock, **config)``);
    teardown closes the slow path of every agent it made, whatever the test did,
    so a failing test leaks no loaded program."""
    made: list[Agent] = []

    def make(policy: Policy, model: NicModel, clock: FakeClock, **config: object) -> Agent:
        settings = {"proactive": False, "dedup_ns": 0, **config}
        cfg = AgentConfig(
            device="lo", direction="ingress", profile=model.profile,
            cache=CacheConfig(max_insert_rate=None), **settings,  # type: ignore[arg-type]
        )  # fmt: skip
        holder = {"policy": policy}
        agent = Agent(cfg, lambda: holder["policy"], clock=clock, installer=model, attach=False)
        made.append(agent)
        agent.start()
        return agent

    yield make
    for agent in made:
        if agent.slow_path is not None:
            agent.slow_path.close()
            agent.slow_path = None


def feed(agent: Agent, packets: list[Packet]) -> None:
    """Run each packet through the loaded program, then let the agent take the events."""
    assert agent.slow_path is not None
    for p in packets:
        run_frame(agent.slow_path.fd, frame(p))
    agent.slow_path.poll_events(0)
    while agent.handle_events():
        pass


def flowc_filters(model: NicModel) -> list[object]:
    return [i.filter for i in model.dump() if i.filter.cookie is not None]


def test_events_become_sound_cache_rules(clock: FakeClock, make_agent: MakeAgent) -> None:
    policy = compiled(AGENT_POLICY)
    model = NicModel(load_profile("software"), clock=clock)
    agent = make_agent(policy, model, clock)
    packets = [udp(i, port) for i in range(20) for port in (5000, 5001, 6000, 7000)]
    feed(agent, packets)
    assert agent.queue.received == len(packets)
    assert agent.cache is not None
    assert agent.cache.stats["installs"] >= 4  # one megaflow per verdict region at least
    for p in packets:
        decided = model.classify(p)
        assert decided is not None
        assert decided.action == action_for(evaluate(policy, p).rule.action)
    cache = [f for f in flowc_filters(model) if f.cookie.role == ROLE_CACHE]  # type: ignore[attr-defined]
    assert all(f.prio < GUARD_PRIO for f in cache)  # type: ignore[attr-defined]
    # The megaflows are wide: 80 flows, a handful of rules.
    assert len(cache) < 10
    agent.stop()
    assert flowc_filters(model) == []


def test_event_storm_is_cut_and_counted(clock: FakeClock, make_agent: MakeAgent) -> None:
    policy = compiled(AGENT_POLICY)
    model = NicModel(load_profile("software"), clock=clock)
    agent = make_agent(policy, model, clock, queue_size=8)
    assert agent.slow_path is not None
    storm = [udp(i, 5000) for i in range(50)]
    for p in [*storm, storm[0]]:
        run_frame(agent.slow_path.fd, frame(p))
    agent.slow_path.poll_events(0)
    assert agent.queue.received == 51
    assert len(agent.queue) == 8
    assert agent.queue.duplicates == 1  # the repeat of flow 0, still queued
    assert agent.queue.dropped == 42
    assert agent.handle_events() == 8
    agent.poll()
    assert agent.snapshot is not None and agent.snapshot.stats["event_drops"] == 42
    agent.stop()


def test_update_revalidates_and_restart_adopts(clock: FakeClock, make_agent: MakeAgent) -> None:
    policy = compiled(AGENT_POLICY)
    model = NicModel(load_profile("software"), clock=clock)
    agent = make_agent(policy, model, clock)
    feed(agent, [udp(1, 5000), udp(2, 5001)])
    assert agent.cache is not None and agent.cache.occupancy == 2
    new = compiled(AGENT_POLICY.replace("allow udp dport 5001", "drop udp dport 5001"))
    agent.update(new)
    assert agent.generation == 2
    assert agent.cache.stats["revalidation_deletes"] == 1
    assert model.classify(udp(2, 5001)) is None  # trapped: the slow path decides it now
    kept = model.classify(udp(1, 5000))
    assert kept is not None and kept.cookie is not None and kept.cookie.role == ROLE_CACHE
    # A stale event (decided under generation 1) does not install.
    assert agent.cache.on_miss(udp(3, 5001).values, rule=2, generation=1) == "stale"
    feed(agent, [udp(2, 5001)])
    after = model.classify(udp(2, 5001))
    assert after is not None and after.action == action_for(new.rules[2].action)
    before_crash = flowc_filters(model)
    # Crash: no stop. A new agent on the same table adopts and cleans up.
    again = make_agent(new, model, clock)
    assert again.generation == 3
    assert again.cache is not None and again.cache.stats["adopted"] == 2
    now = flowc_filters(model)
    assert len(now) == len(before_crash)  # two cache rules and one catch-all, nothing doubled
    assert [f.prio for f in now if f.cookie.role == ROLE_CUTOFF] == [CATCH_ALL_PRIO]  # type: ignore[attr-defined]
    again.stop()
    assert flowc_filters(model) == []


def test_proactive_filters_sit_between_guard_and_catch_all(
    clock: FakeClock, make_agent: MakeAgent
) -> None:
    policy = compiled(AGENT_POLICY)
    profile = dataclasses.replace(load_profile("software"), max_rules=1000)
    model = NicModel(profile, clock=clock)
    agent = make_agent(policy, model, clock, proactive=True)
    prios = sorted({f.prio for f in flowc_filters(model)})  # type: ignore[attr-defined]
    assert prios[0] > GUARD_PRIO and prios[-1] == CATCH_ALL_PRIO
    assert agent.cache is not None and agent.cache.capacity == (1000 - 2) // 2
    for port in (5000, 5001, 6000, 7000):
        decided = model.classify(udp(1, port))
        assert decided is not None
        assert decided.action == action_for(evaluate(policy, udp(1, port)).rule.action)
    agent.stop()
    assert flowc_filters(model) == []
