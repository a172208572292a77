"""The agent's metrics: a snapshot rendered as Prometheus text reads back as the same status."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.agent.core import RuleCounters, Snapshot
from runtime.agent.counters import (
    COUNTERS,
    CT_COUNTERS,
    CT_EXPIRIES,
    CT_STATES,
    EVICTION_REASONS,
    GAUGES,
    TIERS,
    Counters,
    UndeclaredMetric,
)
from runtime.agent.metrics import SnapshotCollector, parse_status


def snapshot() -> Snapshot:
    allow = RuleCounters()
    allow.hit("slow", 1, 60, 1_700_000_000.0)
    allow.hit("cache", 41, 2460, 1_700_000_005.0)
    idle = RuleCounters()
    return Snapshot(
        taken=1_700_000_006.0,
        generation=3,
        stats={"misses": 7, "installs": 2, "evictions_idle": 1, "revalidation_deletes": 4},
        gauges={"occupancy": 1.0, "generation": 3.0},
        rules=(
            (0, "edge.fw:3", 'allow udp dport 5000 "web"', allow),
            (1, "edge.fw:2", "default drop", idle),
        ),
    )


def render(snap: Snapshot | None) -> str:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snap))
    return generate_latest(registry).decode()


def test_round_trip() -> None:
    status = parse_status(render(snapshot()))
    assert status.agent["misses"] == 7 and status.agent["installs"] == 2
    assert status.agent["occupancy"] == 1 and status.agent["generation"] == 3
    assert status.evictions == {
        "idle": 1,
        "capacity": 0,
        "revalidation": 4,
        "reconcile": 0,
        "connection ended": 0,
    }
    rule = status.rules[0]
    assert rule.text == 'allow udp dport 5000 "web"'  # label escaping survives
    assert rule.line == "edge.fw:3"
    assert rule.packets == {"slow": 1, "cache": 41, "flower": 0}
    assert rule.bytes["cache"] == 2460
    assert rule.last_hit == 1_700_000_005.0
    assert status.rules[1].total_packets == 0 and status.rules[1].last_hit is None


def test_no_snapshot_yet_is_empty() -> None:
    assert parse_status(render(None)).rules == {}


def declared_names() -> set[str]:
    """Every sample name the declaration table promises (the oracle)."""
    names = {f"flowc_agent_{c}_total" for c in COUNTERS} | {f"flowc_agent_{g}" for g in GAUGES}
    names |= {f"flowc_{c}_total" for c in CT_COUNTERS}
    return names | {
        "flowc_agent_evictions_total",
        "flowc_ct_packets_total",
        "flowc_ct_expiries_total",
    }


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_every_declared_metric_is_exported_at_zero_before_anything_counts() -> None:
    for snap in (None, Snapshot(0.0, 1, {}, {}, ())):
        found = samples(render(snap))
        assert {name for name, _ in found} >= declared_names()
        assert all(value == 0 for value in found.values())
        reasons = {dict(labels)["reason"] for name, labels in found if "evictions" in name}
        assert reasons == set(EVICTION_REASONS.values())
        states = {dict(labels)["state"] for name, labels in found if "ct_packets" in name}
        assert states == set(CT_STATES.values())
        ends = {dict(labels)["reason"] for name, labels in found if "ct_expiries" in name}
        assert ends == set(CT_EXPIRIES.values())


def test_a_rule_lists_every_tier_at_zero() -> None:
    snap = Snapshot(0.0, 1, {}, {}, ((0, "a.fw:2", "default drop", RuleCounters()),))
    found = samples(render(snap))
    for metric in ("flowc_rule_packets_total", "flowc_rule_bytes_total"):
        tiers = {dict(labels)["tier"] for name, labels in found if name == metric}
        assert tiers == set(TIERS)


def test_an_undeclared_name_cannot_become_a_metric() -> None:
    with pytest.raises(UndeclaredMetric, match="instals"):
        Snapshot(0.0, 1, {"instals": 1}, {}, ())
    with pytest.raises(UndeclaredMetric, match="ocupancy"):
        Snapshot(0.0, 1, {}, {"ocupancy": 1.0}, ())
    counters = Counters()
    counters["installs"] += 1
    assert counters["misses"] == 0  # reading an uncounted name is fine
    with pytest.raises(UndeclaredMetric):
        counters["instals"] += 1
    with pytest.raises(UndeclaredMetric):
        counters.update({"evictions_idel": 1})


def test_connection_counters_read_back_by_state_and_reason() -> None:
    stats = {"ct_commits": 9, "ct_untracked": 2, "ct_established": 40, "ct_new": 11}
    stats |= {"ct_expired": 3, "ct_collected": 5, "revoked": 1}
    snap = Snapshot(0.0, 1, stats, {"ct_entries": 4.0, "ct_commits_per_second": 2.5}, ())
    status = parse_status(render(snap))
    assert status.connections == {
        "commits": 9,
        "untracked": 2,
        "packets_new": 11,
        "packets_established": 40,
        "packets_related": 0,
        "packets_invalid": 0,
        "expiries_timeout": 3,
        "expiries_collected": 5,
        "expiries_reopened": 0,
        "expiries_revoked": 1,
    }
    assert status.agent["ct_entries"] == 4 and status.agent["ct_commits_per_second"] == 2.5
    assert status.agent["revoked"] == 1  # the agent's own counter too
