"""Every counter and gauge the agent exports, declared once.

The cache and the agent count into :class:`Counters`, which refuses a name
this table does not declare, and the metrics collector exports exactly the
declared names (at 0 until counted), so a misspelt name fails where it is
written instead of quietly becoming a new metric, and a dashboard sees every
series from the agent's first scrape on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

COUNTERS: dict[str, str] = {
    "misses": "Miss events the cache handled",
    "installs": "Cache rules installed",
    "covered": "Misses an installed cache rule already covered",
    "stale": "Misses decided under another generation or rule, dropped",
    "admission": "Misses of flows that had not earned a rule yet",
    "negative": "Misses whose cube the device refused recently",
    "rate": "Misses over the agent's insertion rate",
    "unexpressible": "Misses no single flower match could hold",
    "install_failures": "Cache rules the device refused",
    "delete_failures": "Delete requests the device refused",
    "removed": "Cache rules removed on a clean stop",
    "revalidations": "Cache rules revalidated on policy updates",
    "adopted": "Cache rules a previous run left and this one adopted",
    "policy_updates": "Policy updates applied",
    "policy_update_failures": "Policy updates refused (the running policy stayed)",
    "events_received": "Miss events read from the ring buffer",
    "event_drops": "Miss events dropped because the queue was full",
    "event_duplicates": "Miss events merged with a queued one of the same flow",
    "slow_path_events_lost": "Miss events the slow path could not write to the ring",
    "slow_path_events_sent": "Miss events the slow path wrote to the ring",
    "untracked": "Misses of packets of no steady connection (stateful hosts cache no others; "
    "a SYN, FIN, RST or fragment counts as unexpressible)",
    "ct_refreshes": "Connection-table entries whose idle timer a cache rule's use extended",
    "revoked": "Connections removed by --revoke-established on a policy update",
}
"""Counter name -> help text (exported as ``flowc_agent_<name>_total``)."""

EVICTION_REASONS: dict[str, str] = {
    "evictions_idle": "idle",
    "evictions_lru": "capacity",
    "revalidation_deletes": "revalidation",
    "reconcile_deletes": "reconcile",
    "evictions_conn_ended": "connection ended",
}
"""Counter name -> ``reason`` label of ``flowc_agent_evictions_total``."""

CT_COUNTERS: dict[str, str] = {
    "ct_commits": "Connections the slow path at this hook committed",
    "ct_untracked": "Commits at this hook a full connection table refused "
    "(the packet was still decided by the policy)",
}
"""Counter name -> help text (exported as ``flowc_ct_<name without ct_>_total``;
the slow path's own counts, so they start again from 0 when a policy update
loads a new program)."""

CT_STATES: dict[str, str] = {
    "ct_new": "new",
    "ct_established": "established",
    "ct_related": "related",
    "ct_invalid": "invalid",
}
"""Counter name -> ``state`` label of ``flowc_ct_packets_total``: the packets the
slow path at this hook saw in each state (a cached connection's packets are the
NIC's, counted per rule in the ``cache`` tier)."""

CT_EXPIRIES: dict[str, str] = {
    "ct_expired": "timeout",
    "ct_collected": "collected",
    "ct_closed": "reopened",
    "revoked": "revoked",
}
"""Counter name -> ``reason`` label of ``flowc_ct_expiries_total``: entries a packet
found past their timeout (the program removes them), entries past their timeout
the agent's collector removed, closed connections a new SYN on the same ports
replaced, and connections a policy update revoked (``--revoke-established``)."""

GAUGES: dict[str, str] = {
    "occupancy": "Cache rules installed now",
    "peak_occupancy": "Most cache rules installed at once",
    "capacity": "Cache rules the agent allows",
    "distinct_masks": "Mask signatures the cache rules use",
    "queue_depth": "Miss events waiting",
    "proactive_filters": "Proactive flower filters installed",
    "generation": "Policy generation running",
    "install_latency_p50_seconds": "Median time from miss event to installed rule",
    "ct_entries": "Connections in the host's connection table (stateful hosts)",
    "ct_cached": "Connections a cache rule carries",
    "ct_commits_per_second": "Commits at this hook per second over the last poll interval",
}
"""Gauge name -> help text (exported as ``flowc_agent_<name>``)."""

TIERS = ("slow", "cache", "flower")
"""Where a rule's packets were decided: the ``tier`` label of the rule metrics."""

DECLARED_COUNTERS = frozenset(
    [*COUNTERS, *EVICTION_REASONS, *CT_COUNTERS, *CT_STATES, *CT_EXPIRIES]
)


class UndeclaredMetric(KeyError):
    """A counter or gauge name the table above does not declare."""


class Counters(Counter[str]):
    """A Counter of declared counter names only (reading an unknown one gives 0,
    writing one raises :class:`UndeclaredMetric`)."""

    def __setitem__(self, name: str, value: int) -> None:
        check_counters([name])
        super().__setitem__(name, value)


def check_counters(names: Iterable[str]) -> None:
    """Raise :class:`UndeclaredMetric` for a name in ``names`` that is not a declared counter."""
    unknown = sorted(str(n) for n in names if n not in DECLARED_COUNTERS)
    if unknown:
        raise UndeclaredMetric(f"undeclared counter(s): {', '.join(unknown)}")


def check_gauges(names: Iterable[str]) -> None:
    """Raise :class:`UndeclaredMetric` for a name in ``names`` that is not a declared gauge."""
    unknown = sorted(str(n) for n in names if n not in GAUGES)
    if unknown:
        raise UndeclaredMetric(f"undeclared gauge(s): {', '.join(unknown)}")
