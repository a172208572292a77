"""The agent's metrics: a snapshot rendered as Prometheus text reads back as the same status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from runtime.agent.core import RuleCounters, Snapshot
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
    assert status.evictions == {"idle": 1, "capacity": 0, "revalidation": 4, "reconcile": 0}
    rule = status.rules[0]
    assert rule.text == 'allow udp dport 5000 "web"'  # label escaping survives
    assert rule.line == "edge.fw:3"
    assert rule.packets == {"slow": 1, "cache": 41, "flower": 0}
    assert rule.bytes["cache"] == 2460
    assert rule.last_hit == 1_700_000_005.0
    assert status.rules[1].total_packets == 0 and status.rules[1].last_hit is None


def test_no_snapshot_yet_is_empty() -> None:
    assert parse_status(render(None)).rules == {}
