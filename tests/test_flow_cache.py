"""The rule cache against the in-memory NIC model, on a fake clock.

Soundness is held to the IR interpreter: after any sequence of misses, any
packet the NIC model decides with a cache rule gets the policy's action.
Eviction (idle, capacity), the insertion rate limit, the negative cache,
revalidation on a policy update and reconciliation after a crash are each
driven to their edge.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backends.flower.dissector import MALFORMED_VIEWS
from backends.flower.rules import ROLE_CACHE, FlowerAction, FlowerFilter, FlowerMatch, action_for
from backends.nic_profile import load_profile
from compiler.frontend import compile_source
from ir.interp import evaluate
from ir.model import Action, Match, Policy
from ir.packet import Packet
from runtime.flow_cache import CacheConfig, FlowCache, MissOutcome, mask_view, packed_masks
from runtime.nic_model import NicModel
from tests.fixtures import FakeClock
from tests.strategies import make_policy, packets, rules

WEB = Path(__file__).resolve().parent.parent / "examples" / "web-tier.fw"


def web_policy(text: str | None = None) -> Policy:
    result = compile_source(text if text is not None else WEB.read_text(), str(WEB))
    assert result.program is not None
    return result.program.policies[0]


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x10) -> Packet:
    def ip(text: str) -> int:
        a, b, c, d = (int(x) for x in text.split("."))
        return a << 24 | b << 16 | c << 8 | d

    return Packet.make(
        family=4,
        ip_proto=6,
        ip4_src=ip(src),
        ip4_dst=ip(dst),
        sport=sport,
        dport=dport,
        tcp_flags=flags,
    )


def setup(
    policy: Policy | None = None,
    *,
    profile_overrides: dict[str, str] | None = None,
    **config: Any,
) -> tuple[FlowCache, NicModel, FakeClock]:
    clock = FakeClock()
    profile = load_profile("software", profile_overrides or {})
    model = NicModel(profile, clock=clock)
    cache = FlowCache(
        policy or web_policy(),
        profile,
        model,
        CacheConfig(**config),
        clock=clock,
    )
    return cache, model, clock


def assert_sound(cache: FlowCache, model: NicModel, probes: list[Packet]) -> None:
    for packet in probes:
        f = model.classify(packet)
        if f is not None:
            assert f.action == action_for(evaluate(cache.policy, packet).action), packet


# --------------------------------------------------------------- soundness
@settings(max_examples=60, deadline=None)
@given(
    st.lists(rules(), min_size=1, max_size=8),
    st.sampled_from(["allow", "drop"]),
    st.lists(packets(), min_size=1, max_size=12),
    st.lists(packets(), min_size=1, max_size=30),
    st.sampled_from(["megaflow", "exact"]),
)
def test_whatever_misses_arrive_the_cache_stays_sound(
    specs: list[tuple[Match, Action]],
    default: str,
    misses: list[Packet],
    probes: list[Packet],
    mode: str,
) -> None:
    policy = make_policy(specs, default)
    cache, model, _clock = setup(policy, mode=mode, max_insert_rate=None)
    for packet in misses:
        outcome = cache.on_miss(packet.values)
        rule = evaluate(policy, packet).rule
        if outcome == MissOutcome.UNEXPRESSIBLE:
            # Left uncached: a fragment (flower reads none of its transport
            # header); a packet that looks to flower like a malformed frame
            # (which the slow path drops) under a rule that does not drop; or,
            # where the policy tells fragment states apart, a megaflow whose
            # states need two ip_flags keys (one cache rule holds one).
            tells_fragments = any(not r.match.get("frag").is_full() for r in policy.rules)
            assert (
                packet.get("frag") != 0
                or tells_fragments
                or (
                    rule.action.kind != "drop"
                    and any(v.cube.contains(packet.values) for v in MALFORMED_VIEWS)
                )
            )
            continue
        # The packet that caused the miss is now decided by the cache.
        assert cache.lookup(packet.values) is not None
        assert model.classify(packet) is not None
    assert_sound(cache, model, probes + misses)
    # The cache's own index and the model's first-match agree on every probe.
    for packet in probes:
        entry = cache.lookup(packet.values)
        hit = model.classify(packet)
        assert (entry is None) == (hit is None)


def assert_index_is_whole(cache: FlowCache) -> None:
    """The per-rule index is the mask index split by each entry's rule: every
    entry in its own slot of both, nothing else in either."""
    slots = {(m, masked, key) for m, t in cache.by_mask.items() for masked, key in t.items()}
    per_rule = {
        (m, masked, key)
        for tables in cache.by_rule.values()
        for m, t in tables.items()
        for masked, key in t.items()
    }
    assert slots == per_rule
    assert len(slots) == len(cache.entries)
    for key, entry in cache.entries.items():
        masked = mask_view(entry.flow.masks)(entry.flow.point)
        assert cache.by_rule[entry.flow.rule][entry.flow.masks][masked] == key
    assert all(cache.by_rule.values()) and all(t for t in cache.by_mask.values())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(rules(), min_size=1, max_size=8),
    st.lists(rules(), min_size=1, max_size=8),
    st.lists(packets(), min_size=1, max_size=16),
    st.integers(0, 16),
    st.sampled_from(["megaflow", "exact"]),
)
def test_misses_with_the_slow_paths_rule_keep_the_per_rule_index_whole(
    specs: list[tuple[Match, Action]],
    later: list[tuple[Match, Action]],
    misses: list[Packet],
    update_at: int,
    mode: str,
) -> None:
    """The agent's misses name their rule, and the look-up then searches that
    rule's cache rules only: across installs, evictions and a policy update
    (which relabels kept rules), the index stays whole, a packet whose rule is
    cached is found by its rule, and the cache stays sound."""
    policy = make_policy(specs, "drop")
    cache, model, clock = setup(policy, mode=mode, max_insert_rate=None, capacity=6)
    for n, packet in enumerate(misses):
        if n == update_at:
            # Rules in front shift every index: the kept cache rules are relabelled.
            policy = make_policy(later + specs, "drop")
            cache.update_policy(policy, generation=2)
            assert_index_is_whole(cache)
        rule = evaluate(policy, packet).rule
        index = policy.rules.index(rule)
        outcome = cache.on_miss(packet.values, rule=index, generation=cache.generation)
        assert_index_is_whole(cache)
        if outcome in (MissOutcome.INSTALLED, MissOutcome.COVERED):
            assert cache.lookup(packet.values) is not None
        if outcome == MissOutcome.INSTALLED:
            assert cache.lookup(packet.values, index) is not None
        clock.now += 1.0
    cache.expire()
    assert_index_is_whole(cache)
    assert_sound(cache, model, misses)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(rules(), min_size=1, max_size=8),
    st.sampled_from(["allow", "drop"]),
    st.lists(packets(), min_size=1, max_size=12),
)
def test_exact_modes_direct_rule_is_what_expand_gives_and_is_decided_whole(
    specs: list[tuple[Match, Action]], default: str, probes: list[Packet]
) -> None:
    """Exact mode builds its common rule directly (no obstacle search, no
    ``expand``): the match must be exactly the one ``expand`` gives for the
    cube, every packet it covers decided by the packet's rule, and the packet
    in it."""
    from backends.flower.lowering import expand
    from ir.algebra import intersect, is_feasible
    from ir.fields import HEADER_SPACE
    from ir.megaflow import PolicyRegions, decides_whole

    policy = make_policy(specs, default)
    cache, _model, _clock = setup(policy, mode="exact", max_insert_rate=None)
    regions = PolicyRegions(cache.regions.space, [r.match.cube for r in policy.rules])
    built = 0
    for packet in probes:
        index = policy.rules.index(evaluate(policy, packet).rule)
        direct = cache._exact_flow(packet.values, index)
        if direct is None:
            continue
        built += 1
        flow, match = direct
        assert flow.rule == index and flow.cube.contains(packet.values)
        expansion = expand(flow.cube, cache.profile)
        assert not expansion.problem
        assert list(expansion.matches) == [match]
        covered = match.cubes()
        assert covered and all(decides_whole(regions, c, index) for c in covered)
        if policy.rules[index].action.kind != "drop":
            # Cache rules sit above the malformed frames' traps: none may meet a view.
            for view in MALFORMED_VIEWS:
                for c in covered:
                    both = intersect(c, view.cube)
                    assert both is None or not is_feasible(HEADER_SPACE, both), view.name
    # And a wrong rule is never taken: the first match decides.
    for packet in probes:
        index = policy.rules.index(evaluate(policy, packet).rule)
        for other in range(len(policy.rules)):
            direct = cache._exact_flow(packet.values, other)
            assert direct is None or direct[0].rule == index


def test_exact_mode_takes_the_direct_rule_for_a_plain_tcp_flow() -> None:
    """The direct construction is the one that runs for the common case (not
    only a path the general one would mask)."""
    cache, model, _clock = setup(mode="exact", max_insert_rate=None)
    api = tcp("10.10.1.11", "10.10.2.20", 40000, 9000)
    index = cache.policy.rules.index(evaluate(cache.policy, api).rule)
    assert cache._exact_flow(api.values, index) is not None
    assert cache.on_miss(api.values, rule=index) == MissOutcome.INSTALLED
    (entry,) = cache.entries.values()
    assert entry.filter.match.src_port is not None and entry.filter.match.dst_port is not None
    assert model.classify(api) is not None
    assert model.classify(tcp("10.10.1.11", "10.10.2.20", 40001, 9000)) is None  # exact
    # Where an earlier rule looks at the flags (the web tier's half-open scans),
    # the tuple alone is not decided whole: the general construction cuts it.
    health = tcp("10.10.0.2", "10.10.1.12", 40000, 8080)
    index = cache.policy.rules.index(evaluate(cache.policy, health).rule)
    assert cache._exact_flow(health.values, index) is None
    assert cache.on_miss(health.values, rule=index) == MissOutcome.INSTALLED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1))
def test_packed_masks_hold_each_fields_bits_and_count(pairs: list[tuple[int, int]]) -> None:
    """Against the per-field definition the mask sharing used before."""
    from ir.fields import HEADER_SPACE

    widths = [f.width for f in HEADER_SPACE.fields]
    a = tuple(x & ((1 << w) - 1) for (x, _), w in zip(pairs * len(widths), widths, strict=False))
    b = tuple(y & ((1 << w) - 1) for (_, y), w in zip(pairs * len(widths), widths, strict=False))
    a, b = a[: len(widths)], b[: len(widths)]
    holds = all(m & o == o for m, o in zip(a, b, strict=True))
    assert (packed_masks(a) & packed_masks(b) == packed_masks(b)) == holds
    assert packed_masks(a).bit_count() == sum(m.bit_count() for m in a)


def test_a_flow_installs_one_rule_and_its_megaflow_covers_its_neighbours() -> None:
    cache, model, _clock = setup()
    first = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)  # office -> web: mirror
    assert cache.on_miss(first.values) == "installed"
    assert cache.on_miss(first.values) == "covered"
    neighbour = tcp("198.51.100.9", "10.10.1.11", 40001, 8080)
    assert cache.lookup(neighbour.values) is not None
    (entry,) = cache.entries.values()
    assert entry.filter.cookie is not None and entry.filter.cookie.role == ROLE_CACHE
    assert cache.policy.rules[entry.flow.rule].origin.line == entry.filter.origin.line  # type: ignore[union-attr]
    assert model.occupancy == 1


def test_megaflow_needs_far_fewer_rules_than_exact_5tuple() -> None:
    flows = [tcp(f"198.51.100.{i % 200}", "10.10.1.11", 30000 + i, 8080) for i in range(300)]
    counts = {}
    for mode in ("megaflow", "exact"):
        cache, model, _clock = setup(mode=mode, max_insert_rate=None)
        for f in flows:
            cache.on_miss(f.values)
        counts[mode] = model.occupancy
    assert counts["exact"] == 300
    assert counts["megaflow"] * 10 <= counts["exact"]


# ----------------------------------------------------------------- eviction
def test_idle_rules_are_evicted_and_busy_ones_kept() -> None:
    cache, model, clock = setup(max_idle=30.0)
    busy = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)
    quiet = tcp("10.10.0.2", "10.10.1.12", 40000, 8080)  # lb -> web health check
    cache.on_miss(busy.values)
    cache.on_miss(quiet.values)
    assert model.occupancy == 2
    installed_at = clock.now
    for _ in range(4):
        clock.now += 10
        model.classify(busy)
        # quiet is idle longer than 30 s only on the fourth round (40 s), and goes then
        quiet_expired = clock.now - installed_at > 30
        assert cache.expire() == (1 if quiet_expired else 0)
        assert model.occupancy == (1 if quiet_expired else 2)
    assert model.occupancy == 1
    assert cache.lookup(busy.values) is not None and cache.lookup(quiet.values) is None
    assert cache.stats["evictions_idle"] == 1
    clock.now += 31
    assert cache.expire() == 1 and model.occupancy == 0


def test_capacity_evicts_the_least_recently_used() -> None:
    cache, model, clock = setup(capacity=2, max_insert_rate=None)
    a = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)
    b = tcp("10.10.0.2", "10.10.1.12", 40000, 8080)
    c = tcp("10.10.1.11", "10.10.2.20", 40000, 9000)
    cache.on_miss(a.values)
    clock.now += 1
    cache.on_miss(b.values)
    clock.now += 1
    model.classify(a)
    cache.expire()  # reads a's recent hit
    cache.on_miss(c.values)
    assert model.occupancy == 2
    assert cache.lookup(b.values) is None and cache.lookup(a.values) is not None
    assert cache.stats["evictions_lru"] == 1


def test_insertion_rate_limit() -> None:
    cache, _model, clock = setup(max_insert_rate=2.0)
    flows = [
        tcp("198.51.100.7", "10.10.1.11", 40000, 8080),
        tcp("10.10.0.2", "10.10.1.12", 1, 8080),
    ]
    flows.append(tcp("10.10.1.11", "10.10.2.20", 40000, 9000))
    outcomes = [cache.on_miss(f.values) for f in flows]
    assert outcomes == ["installed", "installed", "rate"]
    clock.now += 1
    assert cache.on_miss(flows[2].values) == "installed"


def test_refusals_go_to_the_negative_cache_not_a_retry_storm() -> None:
    cache, model, clock = setup(
        profile_overrides={"max_rules": "1"}, capacity=10, max_insert_rate=None, negative_ttl=5.0
    )
    first = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)
    second = tcp("10.10.1.11", "10.10.2.20", 40000, 9000)
    assert cache.on_miss(first.values) == "installed"
    assert cache.on_miss(second.values) == "refused"
    inserts = model.inserts + sum(model.refusals.values())
    for _ in range(1000):
        assert cache.on_miss(second.values) == "negative"
    assert model.inserts + sum(model.refusals.values()) == inserts  # the device was not asked
    clock.now += 6
    assert cache.on_miss(second.values) == "refused"
    assert cache.stats["install_failures"] == 2


def test_admission_after_n_packets() -> None:
    cache, _model, _clock = setup(admit_after=3)
    flow = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)
    assert [cache.on_miss(flow.values) for _ in range(3)] == ["admission", "admission", "installed"]


def test_event_storm_of_one_flow_installs_once() -> None:
    cache, model, _clock = setup()
    flow = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)
    outcomes = [cache.on_miss(flow.values) for _ in range(10_000)]
    assert outcomes.count(MissOutcome.INSTALLED) == 1 and model.inserts == 1


def test_events_of_an_older_generation_are_dropped() -> None:
    cache, model, _clock = setup()
    flow = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)
    assert cache.on_miss(flow.values, generation=cache.generation - 1) == "stale"
    assert model.occupancy == 0


# ------------------------------------------------------------- revalidation
V2 = WEB.read_text().replace(
    "allow tcp from lb to webs dport 8080", "drop tcp from lb to webs dport 8080"
)


def test_policy_update_deletes_exactly_the_changed_rules() -> None:
    cache, model, _clock = setup(max_insert_rate=None)
    health = tcp("10.10.0.2", "10.10.1.12", 40000, 8080)  # changes: allow -> drop
    office = tcp("198.51.100.7", "10.10.1.11", 40000, 8080)  # unchanged (mirror)
    api = tcp("10.10.1.11", "10.10.2.20", 40000, 9000)  # unchanged (allow)
    for p in (health, office, api):
        cache.on_miss(p.values)
    new = web_policy(V2)
    kept, deleted = cache.update_policy(new, generation=2)
    assert (kept, deleted) == (2, 1)
    assert cache.lookup(health.values) is None
    assert model.classify(health) is None  # back to the slow path
    assert_sound(cache, model, [health, office, api])
    assert cache.on_miss(health.values) == "installed"
    assert model.classify(health).action == FlowerAction("drop")  # type: ignore[union-attr]


# ----------------------------------------------------------- reconciliation
def test_restart_adopts_sound_rules_and_deletes_the_rest() -> None:
    cache, model, clock = setup(max_insert_rate=None)
    flows = [
        tcp("10.10.0.2", "10.10.1.12", 40000, 8080),
        tcp("198.51.100.7", "10.10.1.11", 40000, 8080),
        tcp("10.10.1.11", "10.10.2.20", 40000, 9000),
    ]
    for p in flows:
        cache.on_miss(p.values)
    foreign = FlowerFilter(0, 500, 7, FlowerMatch(0x0800), FlowerAction("trap", chain=1))
    model.add([foreign])
    # The agent dies (no cleanup); a new one starts on the updated policy.
    restarted = FlowCache(web_policy(V2), model.profile, model, CacheConfig(), clock=clock)
    adopted, deleted = restarted.reconcile()
    assert (adopted, deleted) == (2, 1)
    assert {(f.filter.prio, f.filter.handle) for f in model.dump()} == {
        *restarted.entries,
        (500, 7),
    }
    assert_sound(restarted, model, flows)
    # New rules do not collide with adopted handles.
    assert restarted.on_miss(flows[0].values) == "installed"
    assert len({e.filter.handle for e in restarted.entries.values()}) == 3
    assert restarted.remove_all() == 3
    assert [f.filter for f in model.dump()] == [foreign]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        setup(mode="turbo")


# ----------------------------------------------------------------- simulate
def test_simulate_cli_compares_megaflow_and_exact(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cli.main import main

    trace = tmp_path / "trace.txt"
    lines = [
        f"tcp 198.51.100.{i % 50}:{30000 + i} -> 10.10.1.11:8080 flags ack" for i in range(400)
    ]
    trace.write_text("\n".join(lines * 3) + "\n")
    code = main(["simulate", "--policy", str(WEB), "--trace", str(trace), "--json"])
    rows = {r["mode"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert rows["exact"]["rules_installed"] == 400
    assert rows["megaflow"]["rules_installed"] * 10 <= rows["exact"]["rules_installed"]
    assert rows["megaflow"]["hit_ratio"] >= rows["exact"]["hit_ratio"]
    trace.write_text("tcp 198.51.100.1:1 -> 10.10.1.11:8080\ntcp 1.2.3:4 -> 5.6.7.8:9\n")
    code = main(["simulate", "--policy", str(WEB), "--trace", str(trace)])
    err = capsys.readouterr().err
    assert code == 1 and f"{trace}:2:" in err and "^" in err


def test_restart_deletes_a_cache_rule_that_is_not_one_mask_block() -> None:
    """A rule with a cache cookie but a port range (not one value/mask block)
    cannot join the mask index: it is deleted, not adopted, and the restart
    does not fail."""
    from backends.flower.rules import Cookie, Masked, PortRange

    cache, model, clock = setup()
    rule = next(i for i, r in enumerate(cache.policy.rules) if "9000-9099" in (r.origin.text or ""))
    ranged = FlowerFilter(
        0,
        1,
        1,
        FlowerMatch(
            0x0800,
            ip_proto=6,
            src_ip=Masked(0x0A0A010B, 0xFFFFFFFF),
            dst_ip=Masked(0x0A0A0214, 0xFFFFFFFF),
            dst_port=PortRange(9000, 9099),
        ),
        FlowerAction("pass"),
        cookie=Cookie(ROLE_CACHE, 1, rule, 1),
    )
    model.add([ranged])
    restarted = FlowCache(cache.policy, model.profile, model, CacheConfig(), clock=clock)
    assert restarted.reconcile() == (0, 1)
    assert model.occupancy == 0


# --------------------------------------------------------------- priorities
def test_cache_rules_take_the_plans_cache_priorities() -> None:
    from runtime.agent.priorities import PLAN

    cache, model, _clock = setup(max_insert_rate=None)
    assert cache.on_miss(tcp("198.51.100.7", "10.10.1.11", 40000, 8080).values) == "installed"
    assert {f.filter.prio for f in model.dump()} == {PLAN.cache.first}


def test_restart_moves_no_ethertype_onto_an_adopted_priority() -> None:
    """A previous run left IPv4 rules at the cache's second priority (its IPv6
    rules at the first have since gone). They are adopted, and the first new
    IPv6 rule must not join their priority (flower holds one protocol per
    priority): it takes the first free one."""
    from runtime.agent.priorities import PLAN

    text = (
        "policy p ingress on eth0 {\n    default drop\n"
        "    allow tcp to 10.0.0.1 dport 80\n    allow tcp to fd00::1 dport 80\n}\n"
    )
    policy = web_policy(text)
    cache, model, clock = setup(policy, max_insert_rate=None)
    assert cache.on_miss(tcp("192.0.2.1", "10.0.0.1", 40000, 80).values) == "installed"
    (entry,) = cache.entries.values()
    moved = dataclasses.replace(entry.filter, prio=PLAN.cache.at(1))
    model.delete([entry.filter])
    model.add([moved])
    restarted = FlowCache(policy, model.profile, model, CacheConfig(), clock=clock)
    assert restarted.reconcile() == (1, 0)
    # (An ACK: a TCP packet with no flags looks like a truncated header, never cached.)
    v6 = Packet.make(
        family=6, ip_proto=6, ip6_dst=0xFD00 << 112 | 1, sport=40000, dport=80, tcp_flags=0x10
    )
    assert restarted.on_miss(v6.values) == "installed"
    prios = {(f.filter.match.protocol, f.filter.prio) for f in model.dump()}
    assert prios == {(0x0800, PLAN.cache.at(1)), (0x86DD, PLAN.cache.first)}


def test_restart_deletes_cache_rules_outside_the_cache_priorities() -> None:
    from runtime.agent.priorities import PLAN

    cache, model, clock = setup(max_insert_rate=None)
    cache.on_miss(tcp("198.51.100.7", "10.10.1.11", 40000, 8080).values)
    (entry,) = cache.entries.values()
    at_guard = dataclasses.replace(entry.filter, prio=PLAN.guard)
    model.delete([entry.filter])
    model.add([at_guard])
    restarted = FlowCache(cache.policy, model.profile, model, CacheConfig(), clock=clock)
    assert restarted.reconcile() == (0, 1)
    assert model.occupancy == 0


def test_an_ethertype_past_the_cache_range_is_an_error() -> None:
    from runtime.agent.priorities import PLAN, PriorityExhausted

    cache, _model, _clock = setup()
    cache.prio_of.update({0x1000 + i: prio for i, prio in enumerate(PLAN.cache)})
    with pytest.raises(PriorityExhausted):
        cache.on_miss(tcp("198.51.100.7", "10.10.1.11", 40000, 8080).values)


@settings(max_examples=300, deadline=None)
@example(fields=[(5, 0), (7, 0)])  # no field kept
@example(fields=[(5, 0), (7, 3)])  # one
@given(
    fields=st.lists(
        st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1)), min_size=1, max_size=12
    )
)
def test_mask_view_keeps_the_masked_bits_of_the_fields_a_signature_looks_at(
    fields: list[tuple[int, int]],
) -> None:
    """Against the plain definition (zero, one and many fields kept)."""
    point = tuple(value for value, _ in fields)
    masks = tuple(mask for _, mask in fields)
    want = tuple(point[i] & m for i, m in enumerate(masks) if m)
    assert mask_view(masks)(point) == want
