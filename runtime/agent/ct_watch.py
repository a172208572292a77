"""The connection table's housekeeping on a stateful host: the collector and the
connection metrics, per agent poll, for both agents (tc and netkit).

The program removes an expired entry only when a packet of it comes back
(bpf/flowc_ct.h); an entry no packet asks about again would hold room until
the table is full and every new connection is refused (untracked). The
agent's collector is what reclaims that room: it removes every expired entry
every ``interval`` seconds, and at once when the program's untracked count
rose since the last poll (the table was full: room may be waiting in expired
entries). Several agents of one host share the one table; each collects, and
what one removed the next finds gone.
"""

from __future__ import annotations

import logging

from ir.conntrack import NS_PER_S
from runtime.agent.counters import CT_COUNTERS, CT_STATES, Counters
from runtime.agent.seams import ConnectionTable

log = logging.getLogger("flowc.agent")


class ConnectionWatch:
    """The collector's schedule and the commit rate, from one poll to the next."""

    def __init__(self, table: ConnectionTable, interval: float, now: float) -> None:
        self.table = table
        self.interval = interval
        self.next_collect = now + interval
        self.collected = 0
        self.untracked_seen = 0
        self.commits_at: tuple[float, int] | None = None
        self.commit_rate = 0.0

    def poll(self, now: float, status: dict[str, int]) -> int:
        """One poll at ``now`` (the agent's clock, in the table's time base) with the
        slow path's ``status`` counters: collect when due or when the table
        refused commits since the last poll, and update the commit rate.
        Returns how many entries the collector removed."""
        untracked = status.get("ct_untracked", 0)
        gone = 0
        if now >= self.next_collect or untracked > self.untracked_seen:
            gone = self.table.gc(int(now * NS_PER_S))
            self.collected += gone
            self.next_collect = now + self.interval
            if gone:
                log.info("collected", extra={"fields": {"entries": gone}})
        self.untracked_seen = untracked
        commits = status.get("ct_commits", 0)
        if self.commits_at is not None:
            then, before = self.commits_at
            elapsed = now - then
            # A new program (policy update) counts from 0 again: no negative rate.
            self.commit_rate = (
                (commits - before) / elapsed if elapsed > 0 and commits >= before else 0.0
            )
        self.commits_at = (now, commits)
        return gone

    def count_into(self, stats: Counters, status: dict[str, int]) -> None:
        """The connection counters of a metrics snapshot: the program's (commits,
        untracked, per state, expiries it saw) and the collector's."""
        for name in (*CT_COUNTERS, *CT_STATES, "ct_expired", "ct_closed"):
            stats[name] = status.get(name, 0)
        stats["ct_collected"] = self.collected
