"""The host's BPF connection table as the agent's :class:`runtime.agent.seams.ConnectionTable`.

The slow path's pinned table (:class:`runtime.conntrack.CtTable`) is the one
source of connection state; the agent reads it to decide what a connection
rule may carry and writes back only the idle timer of connections the NIC
carried (:meth:`HostConnectionTable.refresh`); on a policy update with
``revoke_established`` it deletes the connections the new policy would not
let start (:meth:`HostConnectionTable.revoke`).

The write is a read-modify-write of a whole entry the program may update at
the same moment (bpf(2) has no partial update of a hash value without a
spin lock in it). The entry is read again just before the write, and the
write happens only when what the program owns (TCP state, replied, FIN bits,
packet counts) has not changed since; the window left is the two syscalls
between that read and the write, in which a packet of the same connection
must reach the slow path — which for a connection the NIC carries means a
FIN or RST, whose effect the next packet's observation sees again.
"""

from __future__ import annotations

from ir.conntrack import (
    Connection,
    ConnKey,
    CtConfig,
    Direction,
    find_connection,
    revoked,
)
from ir.model import Policy
from ir.packet import Packet
from runtime.conntrack import CtTable


class HostConnectionTable:
    """A :class:`runtime.agent.seams.ConnectionTable` over the pinned BPF table."""

    def __init__(self, table: CtTable, config: CtConfig) -> None:
        self.table = table
        self.config = config

    def find(self, packet: Packet, now_ns: int) -> tuple[Connection, Direction] | None:
        """The live connection ``packet`` belongs to, and its direction."""
        return find_connection(self.table.get, packet, now_ns)

    def get(self, key: ConnKey) -> Connection | None:
        """The stored entry of ``key`` (expired or not)."""
        return self.table.get(key)

    def refresh(self, key: ConnKey, seen_ns: int) -> bool:
        """Extend ``key``'s idle timer from ``seen_ns`` (see the module doc for the
        one race); False when it is gone or expired by then."""
        stored = self.table.get(key)
        if stored is None or seen_ns >= stored.expires_ns:
            return False
        if seen_ns <= stored.last_ns:
            return True
        timeout_ns = self.config.timeouts.seconds(stored) * 1_000_000_000
        again = self.table.get(key)
        if again is None or _owned(again) != _owned(stored):
            return again is not None
        self.table.put(stored._replace(last_ns=seen_ns, expires_ns=seen_ns + timeout_ns))
        return True

    can_revoke = True
    """Entries record the committing hook (its hook_id) and TCP flags, which
    :func:`ir.conntrack.revokes` goes by, in this table as in the reference."""

    def revoke(self, policy: Policy) -> list[ConnKey]:
        """``--revoke-established``: delete the connections committed at ``policy``'s
        hook that ``policy`` would no longer let start. Returns their keys.

        The program may touch an entry between this read and the delete; what it
        changes (timer, TCP state, replied) is not what revocation judges, so the
        delete stands. A packet of the connection arriving after it is new again
        and is decided by ``policy``."""
        doomed = revoked(policy, list(self.table.connections()))
        return [c.key for c in doomed if self.table.remove(c.key)]

    def gc(self, now_ns: int) -> int:
        """The collector: remove every entry expired at ``now_ns`` (an entry a
        packet refreshed meanwhile is read again and kept: CtTable.gc)."""
        return self.table.gc(now_ns)

    def __len__(self) -> int:
        return self.table.count()


def _owned(c: Connection) -> tuple[object, ...]:
    """What the program owns in an entry (the agent must not overwrite it)."""
    return (c.tcp, c.replied, c.fin_from, c.packets)
