"""Prometheus metrics of ``flowc agent``, and reading them back (``flowc agent status``).

The agent's loop takes a :class:`runtime.agent.Snapshot` once per poll; the
collector here turns the latest snapshot into metric families when scraped,
so the HTTP server's thread never reads the cache while the loop changes it.

Names (all prefixed ``flowc_``):

* ``agent_<counter>_total``: misses, installs, evictions (``reason`` label),
  install failures, event drops, revalidations, ... (every name of
  :data:`runtime.agent.counters.COUNTERS`, at 0 before it is first counted);
* ``agent_<gauge>``: occupancy, capacity, distinct masks, queue depth, generation, ...
  (every name of :data:`runtime.agent.counters.GAUGES`);
* ``ct_commits_total``, ``ct_untracked_total``, ``ct_packets_total`` (``state``
  label) and ``ct_expiries_total`` (``reason`` label): the connection table's,
  from the slow path's counters and the agent's collector;
* ``rule_packets_total`` / ``rule_bytes_total`` with ``rule``, ``line`` and
  ``tier`` (slow, cache, flower) labels, ``rule_last_hit_timestamp_seconds``,
  and ``rule_info`` carrying each rule's DSL text.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from runtime.agent.core import Snapshot
from runtime.agent.counters import (
    COUNTERS,
    CT_COUNTERS,
    CT_EXPIRIES,
    CT_STATES,
    EVICTION_REASONS,
    GAUGES,
    TIERS,
)

PREFIX = "flowc"


class SnapshotCollector(Collector):
    """Metric families from whatever snapshot ``current()`` returns."""

    def __init__(self, current: Callable[[], Snapshot | None]) -> None:
        self.current = current

    def collect(self) -> Iterator[Metric]:
        """Yield every declared family from the latest snapshot (counters and gauges
        at 0 and no rules before the first)."""
        snap = self.current()
        stats = snap.stats if snap is not None else {}
        gauges = snap.gauges if snap is not None else {}
        evictions = CounterMetricFamily(
            f"{PREFIX}_agent_evictions", "Cache rules deleted, by reason", labels=["reason"]
        )
        for name, reason in EVICTION_REASONS.items():
            evictions.add_metric([reason], stats.get(name, 0))
        yield evictions
        yield from _connection_families(stats)
        for name in sorted(COUNTERS):
            yield CounterMetricFamily(
                f"{PREFIX}_agent_{name}", COUNTERS[name], value=stats.get(name, 0)
            )
        for name in sorted(GAUGES):
            yield GaugeMetricFamily(
                f"{PREFIX}_agent_{name}", GAUGES[name], value=gauges.get(name, 0.0)
            )
        if snap is None:
            return
        info = GaugeMetricFamily(
            f"{PREFIX}_rule_info", "A policy rule and its DSL text", labels=["rule", "line", "text"]
        )
        packets = CounterMetricFamily(
            f"{PREFIX}_rule_packets", "Packets a rule decided", labels=["rule", "line", "tier"]
        )
        nbytes = CounterMetricFamily(
            f"{PREFIX}_rule_bytes", "Bytes a rule decided", labels=["rule", "line", "tier"]
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_rule_last_hit_timestamp_seconds",
            "When a rule last decided a packet (any tier)",
            labels=["rule", "line"],
        )
        for index, origin, text, counters in snap.rules:
            info.add_metric([str(index), origin, text], 1)
            for tier in TIERS:
                packets.add_metric([str(index), origin, tier], counters.packets[tier])
                nbytes.add_metric([str(index), origin, tier], counters.bytes[tier])
            if counters.last_hit is not None:
                last.add_metric([str(index), origin], counters.last_hit)
        yield from (info, packets, nbytes, last)


def _connection_families(stats: dict[str, int]) -> Iterator[Metric]:
    """``flowc_ct_*``: the slow path's connection counters and the collector's
    (0 on a host that does not track connections)."""
    for name in sorted(CT_COUNTERS):
        yield CounterMetricFamily(f"{PREFIX}_{name}", CT_COUNTERS[name], value=stats.get(name, 0))
    packets = CounterMetricFamily(
        f"{PREFIX}_ct_packets",
        "Packets the slow path at this hook saw, by connection state",
        labels=["state"],
    )
    for name, state in CT_STATES.items():
        packets.add_metric([state], stats.get(name, 0))
    yield packets
    expiries = CounterMetricFamily(
        f"{PREFIX}_ct_expiries", "Connection-table entries removed, by reason", labels=["reason"]
    )
    for name, reason in CT_EXPIRIES.items():
        expiries.add_metric([reason], stats.get(name, 0))
    yield expiries


def serve(current: Callable[[], Snapshot | None], address: str) -> tuple[str, int]:
    """Serve the metrics on ``address`` (HOST:PORT; port 0 picks one) in a
    background thread; returns the (host, port) bound."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(current))
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)


@dataclass(slots=True)
class RuleStatus:
    """One rule as ``flowc agent status`` shows it."""

    rule: int
    line: str
    text: str = ""
    packets: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, float] = field(default_factory=dict)
    last_hit: float | None = None

    @property
    def total_packets(self) -> float:
        """Packets over every tier."""
        return sum(self.packets.values())


@dataclass(slots=True)
class Status:
    """What a running agent's metrics say."""

    agent: dict[str, float] = field(default_factory=dict)
    evictions: dict[str, float] = field(default_factory=dict)
    connections: dict[str, float] = field(default_factory=dict)
    """``commits``, ``untracked``, ``packets_<state>`` and ``expiries_<reason>``."""
    rules: dict[int, RuleStatus] = field(default_factory=dict)


def parse_status(text: str) -> Status:
    """A :class:`Status` from Prometheus text exposition."""
    status = Status()

    def rule(labels: dict[str, str]) -> RuleStatus:
        index = int(labels["rule"])
        return status.rules.setdefault(index, RuleStatus(index, labels.get("line", "")))

    agent_prefix = f"{PREFIX}_agent_"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name.endswith("_created"):
                continue
            if name == f"{PREFIX}_agent_evictions_total":
                status.evictions[labels["reason"]] = value
            elif name == f"{PREFIX}_ct_packets_total":
                status.connections[f"packets_{labels['state']}"] = value
            elif name == f"{PREFIX}_ct_expiries_total":
                status.connections[f"expiries_{labels['reason']}"] = value
            elif name.startswith(f"{PREFIX}_ct_"):
                key = name[len(f"{PREFIX}_ct_") :]
                status.connections[key.removesuffix("_total")] = value
            elif name.startswith(agent_prefix):
                key = name[len(agent_prefix) :]
                status.agent[key.removesuffix("_total")] = value
            elif name == f"{PREFIX}_rule_info":
                rule(labels).text = labels["text"]
            elif name == f"{PREFIX}_rule_packets_total":
                rule(labels).packets[labels["tier"]] = value
            elif name == f"{PREFIX}_rule_bytes_total":
                rule(labels).bytes[labels["tier"]] = value
            elif name == f"{PREFIX}_rule_last_hit_timestamp_seconds":
                rule(labels).last_hit = value
    return status


def read_status(url: str, timeout: float = 5.0) -> Status:
    """Scrape a running agent's metrics endpoint (OSError when nothing answers)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: Any = response.read()
    return parse_status(body.decode("utf-8", "replace"))
