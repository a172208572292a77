"""The agent's connection collector and commit rate (runtime/agent/ct_watch.py),
on the reference tracker as the table and a hand-set clock and status."""

from __future__ import annotations

from compiler.packet_syntax import parse_packet
from ir.conntrack import NS_PER_S, ConnTracker, CtConfig
from runtime.agent.counters import Counters
from runtime.agent.ct_watch import ConnectionWatch


def tracker_with(ports: list[int], at: float, capacity: int = 16) -> ConnTracker:
    """A table holding one unreplied UDP connection (timeout 30 s) per port, made at ``at``."""
    table = ConnTracker(CtConfig(capacity=capacity))
    commit(table, ports, at)
    return table


def commit(table: ConnTracker, ports: list[int], at: float) -> None:
    """Open one UDP connection per port at ``at`` (seconds)."""
    now_ns = int(at * NS_PER_S)
    for port in ports:
        packet = parse_packet(f"udp 10.0.0.1:{port} -> 10.0.0.2:53")
        observation = table.observe(packet, now_ns)
        table.commit(observation, now_ns, hook="h", packet=packet)


def test_collects_on_its_interval_and_never_before() -> None:
    table = tracker_with([1000, 1001], at=0.0)
    watch = ConnectionWatch(table, interval=5.0, now=0.0)
    assert watch.poll(4.9, {}) == 0  # not due
    assert watch.poll(5.0, {}) == 0 and len(table) == 2  # due, nothing expired yet
    assert watch.poll(29.0, {}) == 0  # due (a late poll), nothing expired: next at 34 s
    assert watch.poll(31.0, {}) == 0 and len(table) == 2  # expired, but not due
    assert watch.poll(34.0, {}) == 2
    assert len(table) == 0 and watch.collected == 2


def test_a_refused_commit_collects_at_once() -> None:
    table = tracker_with([1000, 1001], at=0.0, capacity=2)
    watch = ConnectionWatch(table, interval=3600.0, now=0.0)
    assert watch.poll(40.0, {"ct_untracked": 0}) == 0  # full of expired entries, not due
    assert watch.poll(40.5, {"ct_untracked": 3}) == 2  # the table refused: room now
    assert watch.poll(41.0, {"ct_untracked": 3}) == 0  # no new refusal: back to the interval


def test_a_live_entry_is_never_collected() -> None:
    table = tracker_with([1000], at=0.0)
    commit(table, [2000], at=20.0)
    watch = ConnectionWatch(table, interval=1.0, now=0.0)
    assert watch.poll(35.0, {}) == 1  # the first one's 30 s are over, the second's are not
    assert [c.key.sport for c in table.connections()] == [2000]


def test_commit_rate_over_the_last_interval_and_a_reset_counter() -> None:
    watch = ConnectionWatch(ConnTracker(), interval=60.0, now=0.0)
    watch.poll(1.0, {"ct_commits": 100})
    assert watch.commit_rate == 0.0  # one sample: no rate yet
    watch.poll(3.0, {"ct_commits": 700})
    assert watch.commit_rate == 300.0
    watch.poll(4.0, {"ct_commits": 5})  # a new program counts from 0
    assert watch.commit_rate == 0.0
    watch.poll(6.0, {"ct_commits": 25})
    assert watch.commit_rate == 10.0


def test_counts_go_into_the_snapshot() -> None:
    watch = ConnectionWatch(tracker_with([1], at=0.0), interval=1.0, now=0.0)
    watch.poll(100.0, {})
    stats = Counters()
    watch.count_into(stats, {"ct_commits": 4, "ct_new": 4, "ct_expired": 1, "ct_closed": 2})
    assert stats["ct_commits"] == 4 and stats["ct_new"] == 4 and stats["ct_collected"] == 1
    assert stats["ct_expired"] == 1 and stats["ct_closed"] == 2 and stats["ct_untracked"] == 0
