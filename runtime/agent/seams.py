"""What the agent and its cache need of a flower table and of a slow path.

The agent runs against these two protocols, not against the kernel classes,
so its logic (events, revalidation, reconcile) runs without root on the
in-memory models: :class:`runtime.nic_model.NicModel` is an
:class:`Installer` as :class:`runtime.flower_installer.FlowerInstaller` is,
and :class:`runtime.agent.slow_path_model.SlowPathModel` a :class:`SlowPath`
as :class:`runtime.bpf_loader.SlowPath` is. Each protocol names exactly the
members the agent and :class:`runtime.flow_cache.FlowCache` call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from backends.bpf.abi import Event
from backends.flower.rules import FlowerFilter
from ir.conntrack import Connection, ConnKey, Direction
from ir.model import Policy
from ir.packet import Packet
from runtime.flower_netlink import InstalledFilter


class Installer(Protocol):
    """A hook's flower table: filters in, filters out, filters read back with counters.

    Every method raises :class:`runtime.flower_installer.FlowerInstallError` for
    what the device refuses.
    """

    def ensure_clsact(self) -> None:
        """Make sure the hook exists (the clsact qdisc)."""

    def add(self, filters: Sequence[FlowerFilter], *, replace: bool = False) -> None:
        """Create ``filters`` (or replace them in place)."""

    def install(self, filters: Sequence[FlowerFilter], *, replace: bool = False) -> None:
        """Add ``filters`` and check that the device holds them as asked."""

    def delete(self, filters: Sequence[FlowerFilter], *, missing_ok: bool = True) -> None:
        """Delete ``filters`` by (chain, prio, handle)."""

    def dump(self, chain: int | None = None) -> list[InstalledFilter]:
        """Every filter (of one chain, or all) with its counters and last use."""

    def close(self) -> None:
        """Release the table's handles."""


class SlowPath(Protocol):
    """The loaded slow path: decides what chain 0 did not, and reports new flows."""

    @property
    def fd(self) -> int:
        """The program's file descriptor (what tc attaches)."""

    def update(self, policy: Policy, *, generation: int) -> None:
        """Switch to ``policy`` in place (per-rule counters restart).

        Raises :class:`backends.bpf.emit.ShapeChanged` when a new slow path must
        be loaded instead.
        """

    def open_events(self, callback: Callable[[Event], None]) -> None:
        """Deliver miss events to ``callback`` when :meth:`poll_events` runs."""

    def poll_events(self, timeout_ms: int = 100) -> None:
        """Deliver the events waiting (waiting up to ``timeout_ms`` for some)."""

    def rule_stats(self) -> list[tuple[int, int, int]]:
        """(packets, bytes, last hit as CLOCK_MONOTONIC ns or 0) per rule id."""

    def status(self) -> dict[str, int]:
        """The status counters (``backends.bpf.abi.STATUS_NAMES``)."""

    def close(self) -> None:
        """Release the program and its maps."""


class ConnectionTable(Protocol):
    """The host's connection table as a cache in front of it needs it: the one
    source of connection state (the slow path's table; :class:`ir.conntrack.ConnTracker`
    is the model and the reference)."""

    def find(self, packet: Packet, now_ns: int) -> tuple[Connection, Direction] | None:
        """The live connection ``packet`` belongs to, and its direction."""

    def get(self, key: ConnKey) -> Connection | None:
        """The stored entry of ``key`` (expired or not)."""

    def refresh(self, key: ConnKey, seen_ns: int) -> bool:
        """Extend ``key``'s idle timer from ``seen_ns``; False when it is gone."""

    can_revoke: bool
    """Whether :meth:`revoke` can decide (the table records committing hook and packet)."""

    def revoke(self, policy: Policy) -> list[ConnKey]:
        """Remove the connections committed at ``policy``'s hook that ``policy``
        would no longer let start; their keys."""

    def gc(self, now_ns: int) -> int:
        """Remove every entry expired at ``now_ns``; how many went."""

    def __len__(self) -> int:
        """Entries stored."""


SlowPathFactory = Callable[[Policy, int], SlowPath]
"""Loads a slow path for (policy, generation), with miss events on."""
