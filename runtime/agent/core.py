"""The flow cache agent: a flower table in front of the BPF slow path, kept as a cache.

Layout on the hook (tc clsact, one device and direction)::

    chain 0  prio 1..14      cache rules (megaflows, cookie role "cache")
             prio 15         the update guard: a catch-all trap, present only
                             while the proactive filters are being replaced
             prio 16..       the proactive filters the partitioner allows
                             (rules in hardware, traps for the rest)
             prio 65535      a catch-all trap: whatever chain 0 did not decide
    chain 1  prio 49152      the BPF slow path (cls_bpf, direct action)

A trap is ``goto chain 1``, so every packet chain 0 does not decide meets the
slow path, which decides it exactly as the policy says and reports the flow
on its ring buffer. The agent turns reports into cache rules
(:class:`runtime.flow_cache.FlowCache`), polls the device's counters to evict
idle rules, revalidates on a policy update and adopts or deletes what a
previous run left behind. The cache is only an optimisation: with every
cache rule gone the slow path still enforces the policy, which is why the
guard trap makes replacing the proactive filters safe (for that moment the
slow path decides everything).

The agent never compiles DSL text itself (that is :mod:`compiler`'s room): it
is handed a ``load_policy`` callable returning an IR policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from backends.bpf.abi import Event, FlowKey
from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import ShapeChanged, lower
from backends.flower import lowering as flower
from backends.flower.rules import (
    ETH_P_ALL,
    ROLE_CACHE,
    ROLE_CUTOFF,
    ROLE_RULE,
    TRAP,
    Cookie,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
)
from backends.nic_profile import NicProfile
from ir.fields import HEADER_SPACE
from ir.model import Policy
from ir.packet import Point, point_problems
from runtime import bpf_loader, tc_attach
from runtime.agent.counters import TIERS, Counters, check_counters, check_gauges
from runtime.agent.ct_watch import ConnectionWatch
from runtime.agent.host_table import HostConnectionTable
from runtime.agent.loop import AgentError, PolicyLoop
from runtime.agent.priorities import PLAN, PriorityExhausted
from runtime.agent.seams import ConnectionTable, Installer, SlowPath, SlowPathFactory
from runtime.conntrack import CtTable, CtTableError
from runtime.flow_cache import CacheConfig, FlowCache, MissOutcome
from runtime.flower_installer import FlowerInstaller, FlowerInstallError
from runtime.flower_netlink import InstalledFilter

log = logging.getLogger("flowc.agent")

SLOW_CHAIN = flower.DEFAULT_SLOW_CHAIN
GUARD_PRIO = PLAN.guard
CATCH_ALL_PRIO = PLAN.catch_all


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What ``flowc agent`` was asked to do.

    Attributes:
        device, direction: the hook.
        profile: the NIC profile (its install_flags are the ``--offload`` flags).
        cache: cache behaviour; ``cache.capacity`` None means: half the table
            when proactive filters are installed, all of it otherwise.
        proactive: install the partitioner's filters in front of the slow path.
        keep: leave rules and programs in place on a clean stop.
        strategy: slow-path classifier (bitvec or chain).
        poll_interval: seconds between statistics polls (eviction, metrics).
        queue_size: miss events held between polls; more are dropped and counted.
        events_per_tick: events handled per loop turn before polling again.
        dedup_ns: the slow path reports a flow at most once per this interval.
        revoke_established: on a policy update, remove the connections committed at
            this hook that the new policy would not let start
            (:func:`ir.conntrack.revokes`), and their cache rules; by default
            they survive, as the kernel's conntrack keeps established
            connections across an iptables change.
        stateful: the host tracks connections (some policy of it matches on
            state): the agent opens the slow path's connection table after
            loading it, unless one was handed to it.
        ct_gc_interval: seconds between the connection collector's passes on a
            stateful host (runtime/agent/ct_watch.py; also at once when the
            table refused commits).
    """

    device: str
    direction: str
    profile: NicProfile
    cache: CacheConfig = field(default_factory=CacheConfig)
    proactive: bool = True
    keep: bool = False
    strategy: str = "bitvec"
    poll_interval: float = 1.0
    queue_size: int = 4096
    events_per_tick: int = 512
    dedup_ns: int = 1_000_000_000
    revoke_established: bool = False
    stateful: bool = False
    ct_gc_interval: float = 5.0


class EventQueue:
    """Miss events between the ring buffer and the cache: bounded, de-duplicated.

    A burst bigger than ``capacity`` is cut, not buffered without end: the
    dropped flows' next packets report them again once the slow path's
    de-duplication interval has passed.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pending: OrderedDict[bytes, tuple[Point, int, int, int]] = OrderedDict()
        self.received = 0
        self.dropped = 0
        self.duplicates = 0

    def push(self, event: Event) -> None:
        """Take one ring-buffer record (copied: its memory is the ring's)."""
        self.received += 1
        key = bytes(event.key)
        if key in self.pending:
            self.duplicates += 1
            return
        if len(self.pending) >= self.capacity:
            self.dropped += 1
            return
        point = _point_of(event.key, key)
        self.pending[key] = (point, int(event.rule), int(event.generation), int(event.ts_ns))

    def pop(self, count: int) -> list[tuple[Point, int, int, int]]:
        """Up to ``count`` events, oldest first."""
        out: list[tuple[Point, int, int, int]] = []
        while self.pending and len(out) < count:
            out.append(self.pending.popitem(last=False)[1])
        return out

    def __len__(self) -> int:
        return len(self.pending)


@functools.cache
def _key_layout() -> tuple[tuple[int, int, Literal["little", "big"]], ...] | None:
    """(start, end, byte order) of each IR field in a flow key's bytes, in the
    header space's order (None when the key lacks some field: then the key's
    own conversion is used)."""
    addresses = {name for name, _ in FlowKey.ADDRESSES}
    layout: list[tuple[int, int, Literal["little", "big"]]] = []
    for name in HEADER_SPACE.names:
        member = getattr(FlowKey, name, None)
        if member is None:
            return None
        order: Literal["little", "big"] = "big" if name in addresses else sys.byteorder
        layout.append((member.offset, member.offset + member.size, order))
    return tuple(layout)


_WORD = {1: "B", 2: "H", 4: "I", 8: "Q"}


@functools.cache
def _key_reader() -> Callable[[bytes], Point] | None:
    """One ``struct`` unpack of a flow key's bytes into a point (a 16-byte
    address read as two 64-bit halves), from :func:`_key_layout`; None where
    the layout has no such reading (a field of another size)."""
    layout = _key_layout()
    if layout is None:
        return None
    native, network = ["="], [">"]
    native_at = network_at = 0
    # Per field: which unpacked values make it (one, or a high and a low half).
    parts: list[tuple[bool, int, int]] = []  # (network order, first index, count)
    native_n = network_n = 0
    for start, end, order in sorted(layout):
        size = end - start
        halves = size // 8 if size == 16 else 1
        word = _WORD.get(size // halves)
        if word is None:
            return None
        if order == "big":
            network.append(f"{start - network_at}x{word * halves}")
            network_at = end
            parts.append((True, network_n, halves))
            network_n += halves
        else:
            native.append(f"{start - native_at}x{word}")
            native_at = end
            parts.append((False, native_n, 1))
            native_n += 1
    by_offset = sorted(range(len(layout)), key=lambda i: layout[i])
    order_of = {field: slot for slot, field in enumerate(by_offset)}
    plan = tuple(parts[order_of[i]] for i in range(len(layout)))
    read_native = struct.Struct("".join(native)).unpack_from
    read_network = struct.Struct("".join(network)).unpack_from

    def read(raw: bytes) -> Point:
        host, net = read_native(raw), read_network(raw)
        return tuple(
            (net[at] << 64 | net[at + 1] if count == 2 else net[at]) if big else host[at]
            for big, at, count in plan
        )

    return read


def _point_of(key: FlowKey, raw: bytes) -> Point:
    """The packet a flow key describes, read from its bytes (``raw``): the
    key's own field-by-field conversion costs more than the rest of a cache
    hit. Checked as :class:`ir.packet.Packet` checks (ValueError)."""
    read = _key_reader()
    if read is None:
        return key.to_packet().values
    point = read(raw)
    problems = point_problems(HEADER_SPACE, point)
    if problems:
        raise ValueError("; ".join(problems))
    return point


@dataclass(slots=True)
class RuleCounters:
    """Traffic one DSL rule carried, per tier (slow path, cache rules, proactive flower)."""

    packets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    last_hit: float | None = None  # unix time

    def hit(self, tier: str, packets: int, nbytes: int, last_hit: float | None) -> None:
        """Add one counter source."""
        self.packets[tier] += packets
        self.bytes[tier] += nbytes
        if packets and last_hit is not None:
            self.last_hit = last_hit if self.last_hit is None else max(self.last_hit, last_hit)


def slow_path_counters(rules: int, slow_path: SlowPath) -> list[RuleCounters]:
    """Per policy rule (``rules`` of them), what the slow path's map counted:
    packets, bytes and the last hit as unix time."""
    counters = [RuleCounters() for _ in range(rules)]
    now_wall, now_mono_ns = time.time(), time.monotonic_ns()
    for rule, (packets, nbytes, last_ns) in enumerate(slow_path.rule_stats()):
        if rule < rules:
            last = now_wall - (now_mono_ns - last_ns) / 1e9 if last_ns else None
            counters[rule].hit("slow", packets, nbytes, last)
    return counters


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The agent's state at the last poll, read by the metrics endpoint's thread."""

    taken: float
    generation: int
    stats: dict[str, int]
    gauges: dict[str, float]
    rules: tuple[tuple[int, str, str, RuleCounters], ...]  # (rule, origin, text, counters)

    def __post_init__(self) -> None:
        # Only declared names reach the exporter (runtime.agent.counters).
        check_counters(self.stats)
        check_gauges(self.gauges)


class Agent(PolicyLoop):
    """One hook's flow cache agent. :meth:`start`, then :meth:`run`, then :meth:`stop`."""

    def __init__(
        self,
        config: AgentConfig,
        load_policy: Callable[[], Policy],
        *,
        clock: Callable[[], float] = time.monotonic,
        installer: Installer | None = None,
        slow_path: SlowPathFactory | None = None,
        attach: bool = True,
        connections: ConnectionTable | None = None,
    ) -> None:
        """``installer`` replaces the device's flower installer (the NIC model,
        where no real part can run); ``slow_path`` loads the slow path for a
        (policy, generation) instead of compiling it with bcc (the in-memory
        :class:`runtime.agent.slow_path_model.SlowPathModel` in unit tests);
        ``attach=False`` leaves the loaded slow path unattached (fed through
        BPF_PROG_TEST_RUN or the model instead of a hook). ``connections`` is the
        host's connection table when the host tracks connections: then the cache
        holds only connection rules (runtime/flow_cache.py) and no proactive
        filter is installed, since a filter deciding in front of the slow path
        would keep commits and state changes from the table."""
        super().__init__(load_policy, clock, config.poll_interval)
        self.config = config
        self.make_slow_path = slow_path or self._load_bpf_slow_path
        self.attach_slow_path = attach
        self.connections = connections
        self.queue = EventQueue(config.queue_size)
        self.installer: Installer | None = installer
        self.slow_path: SlowPath | None = None
        self.cache: FlowCache | None = None
        self.proactive: list[FlowerFilter] = []
        self.catch_all: FlowerFilter | None = None
        self.snapshot: Snapshot | None = None
        self.retired: dict[int, tuple[int, int]] = {}  # rule -> cache counts of deleted rules
        self.install_latency: list[float] = []  # seconds, event timestamp -> rule installed
        self.ct_watch: ConnectionWatch | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Compile, load and attach the slow path, adopt or delete what a previous
        run left, install the proactive filters; ready for :meth:`run`."""
        cfg = self.config
        policy = self.load_policy()
        try:
            if self.installer is None:
                self.installer = FlowerInstaller(cfg.device, cfg.direction)
            self.installer.ensure_clsact()
            left = self.installer.dump()
        except FlowerInstallError as exc:
            raise AgentError(str(exc)) from None
        previous = [i.filter.cookie.generation for i in left if i.filter.cookie is not None]
        self.generation = max(previous, default=0) + 1
        self.policy = policy
        self.slow_path = self._load_slow_path(policy)
        self._attach(self.slow_path)
        if cfg.stateful and self.connections is None:
            self.connections = self._open_connection_table()
        if cfg.revoke_established and (self.connections is None or not self.connections.can_revoke):
            raise AgentError(
                "revoke_established needs connection tracking (a stateful host) and a "
                "connection table that records the committing hook"
            )
        if self.connections is not None:
            self.ct_watch = ConnectionWatch(self.connections, cfg.ct_gc_interval, self.clock())
        self._guard(True)
        self.cache = FlowCache(
            policy,
            cfg.profile,
            self.installer,
            dataclasses.replace(cfg.cache, capacity=self._cache_capacity()),
            generation=self.generation,
            clock=self.clock,
            connections=self.connections,
        )
        adopted, deleted = self.cache.reconcile()
        leftovers = [
            i.filter
            for i in left
            if i.filter.cookie is not None
            and i.filter.cookie.role != ROLE_CACHE
            and not (i.filter.chain == 0 and i.filter.prio == GUARD_PRIO)
        ]
        self._delete(leftovers)
        self._install_proactive(policy)
        self._guard(False)
        self.slow_path.open_events(self.queue.push)
        log.info(
            "started",
            extra={
                "fields": {
                    "device": cfg.device,
                    "direction": cfg.direction,
                    "policy": policy.name,
                    "rules": len(policy.rules),
                    "generation": self.generation,
                    "adopted": adopted,
                    "reconcile_deletes": deleted,
                    "leftovers_deleted": len(leftovers),
                    "proactive_filters": len(self.proactive),
                    "cache_capacity": self.cache.capacity,
                }
            },
        )
        self._take_snapshot([])

    def _open_connection_table(self) -> ConnectionTable:
        """The host's pinned BPF connection table, which loading the slow path created."""
        assert self.slow_path is not None
        program = getattr(self.slow_path, "program", None)
        spec = getattr(program, "conntrack", None)
        if spec is None:
            raise AgentError("the host tracks connections but the slow path was built without")
        try:
            return HostConnectionTable(CtTable(spec.pin), spec.config)
        except CtTableError as exc:
            raise AgentError(str(exc)) from None

    def _cache_capacity(self) -> int:
        cfg = self.config
        if cfg.cache.capacity is not None:
            return cfg.cache.capacity
        table = cfg.profile.max_rules - 2  # the catch-all and the guard
        # Half for the proactive filters, unless the host tracks connections (then none).
        proactive = cfg.proactive and self.connections is None
        return max(1, table // 2 if proactive else table)

    def _load_slow_path(self, policy: Policy) -> SlowPath:
        return self.make_slow_path(policy, self.generation)

    def _load_bpf_slow_path(self, policy: Policy, generation: int) -> SlowPath:
        """The real slow path: the policy compiled to BPF and loaded with bcc."""
        # On a host that tracks connections every hook commits, this one too.
        conntrack = CtSpec() if self.config.stateful else None
        return bpf_loader.SlowPath(
            lower(policy, self.config.strategy, conntrack=conntrack),
            generation=generation,
            events=True,
            dedup_ns=self.config.dedup_ns,
        )

    def _attach(self, slow_path: SlowPath) -> None:
        if not self.attach_slow_path:
            return
        try:
            tc_attach.attach(
                slow_path.fd, self.config.device, self.config.direction, chain=SLOW_CHAIN
            )
        except tc_attach.AttachError as exc:
            raise AgentError(str(exc)) from None

    def _trap(self, prio: int) -> FlowerFilter:
        return FlowerFilter(
            chain=0,
            prio=prio,
            handle=1,
            match=FlowerMatch(ETH_P_ALL),
            action=FlowerAction(TRAP, chain=SLOW_CHAIN),
            flags=self.config.profile.install_flags,
            cookie=Cookie(ROLE_CUTOFF, self.generation, None, prio),
        )

    def _guard(self, on: bool) -> None:
        """Put up (or take down) the catch-all trap in front of the proactive filters."""
        assert self.installer is not None
        guard = self._trap(GUARD_PRIO)
        try:
            if on:
                self.installer.add([guard], replace=True)
            else:
                self.installer.delete([guard])
        except FlowerInstallError as exc:
            raise AgentError(f"update guard: {exc}") from None

    def _proactive_filters(self, policy: Policy) -> list[FlowerFilter]:
        cfg = self.config
        if not cfg.proactive or self.connections is not None:
            return []
        assert self.cache is not None
        budget = max(0, cfg.profile.max_rules - 2 - self.cache.capacity)
        profile = dataclasses.replace(cfg.profile, max_rules=budget)
        try:
            lowered = flower.lower(policy, profile, generation=self.generation)
        except flower.FlowerLoweringError as exc:
            raise AgentError(str(exc)) from None
        for line in flower.describe(lowered):
            log.info("partition", extra={"fields": {"note": line}})
        try:
            return [
                dataclasses.replace(f, prio=PLAN.proactive_prio(f.prio)) for f in lowered.filters
            ]
        except PriorityExhausted:
            raise AgentError(
                f"policy {policy.name}: too many flower priorities for the agent"
            ) from None

    def _install_proactive(self, policy: Policy) -> None:
        assert self.installer is not None
        filters = self._proactive_filters(policy)
        catch_all = self._trap(CATCH_ALL_PRIO)
        try:
            self.installer.install([*filters, catch_all], replace=True)
        except FlowerInstallError as exc:
            raise AgentError(f"installing the proactive filters: {exc}") from None
        self.proactive, self.catch_all = filters, catch_all

    def _proactive_installed(self) -> list[FlowerFilter]:
        """The proactive filters and the catch-all this agent installed."""
        return [*self.proactive, *([self.catch_all] if self.catch_all else [])]

    def _delete(self, filters: list[FlowerFilter]) -> None:
        assert self.installer is not None
        try:
            self.installer.delete(filters)
        except FlowerInstallError as exc:
            self.stats["delete_failures"] += 1
            log.warning("delete failed", extra={"fields": {"error": str(exc)}})

    # ------------------------------------------------------------------- loop
    def wait(self) -> None:
        """Read the ring buffer (up to 50 ms) and turn what came into cache rules."""
        assert self.slow_path is not None
        self.slow_path.poll_events(50)
        self.handle_events()

    def handle_events(self) -> int:
        """Turn queued miss events into cache rules; returns how many were handled."""
        assert self.cache is not None
        events = self.queue.pop(self.config.events_per_tick)
        debug = log.isEnabledFor(logging.DEBUG)  # once per batch, not per install
        for point, rule, generation, ts_ns in events:
            outcome = self.cache.on_miss(point, rule=rule, generation=generation)
            if outcome == MissOutcome.INSTALLED:
                self.install_latency.append(max(0.0, time.monotonic() - ts_ns / 1e9))
                if debug:
                    log.debug(
                        "installed", extra={"fields": {"rule": rule, "generation": generation}}
                    )
        del self.install_latency[:-1024]
        return len(events)

    def poll(self) -> None:
        """Read the device's counters once: collect expired connections (stateful
        hosts), evict idle and surplus cache rules and refresh the metrics snapshot."""
        assert self.installer is not None and self.cache is not None
        assert self.slow_path is not None
        try:
            installed = self.installer.dump(chain=0)
        except FlowerInstallError as exc:
            log.warning("dump failed", extra={"fields": {"error": str(exc)}})
            return
        status = self.slow_path.status()  # one read for the collector and the snapshot
        if self.ct_watch is not None:
            # First the collector: a connection it removed takes its cache rule along.
            self.ct_watch.poll(self.clock(), status)
        before = self._cache_counts()
        evicted = self.cache.expire(installed)
        self._retire(before)
        if evicted:
            log.info(
                "evicted",
                extra={"fields": {"rules": evicted, "occupancy": self.cache.occupancy}},
            )
        self._take_snapshot(installed, status)

    def _cache_counts(self) -> dict[tuple[int, int], tuple[int, int, int]]:
        assert self.cache is not None
        return {k: (e.flow.rule, e.packets, e.bytes) for k, e in self.cache.entries.items()}

    def _retire(self, before: dict[tuple[int, int], tuple[int, int, int]]) -> None:
        """Keep the traffic of cache rules that went, so per-rule totals do not drop."""
        assert self.cache is not None
        for key, (rule, packets, nbytes) in before.items():
            if key not in self.cache.entries:
                old_packets, old_bytes = self.retired.get(rule, (0, 0))
                self.retired[rule] = (old_packets + packets, old_bytes + nbytes)

    # ----------------------------------------------------------------- update
    def update(self, policy: Policy) -> None:
        """Switch to ``policy``: guard, swap the slow path, revalidate the cache,
        replace the proactive filters, drop the guard."""
        assert self.slow_path is not None and self.cache is not None
        old_generation = self.generation
        self.generation += 1
        self._guard(True)
        try:
            self.slow_path.update(policy, generation=self.generation)
        except ShapeChanged:
            fresh = self._load_slow_path(policy)
            self._attach(fresh)  # cls_bpf replace: atomic
            self.slow_path.close()
            self.slow_path = fresh
            fresh.open_events(self.queue.push)
        kept, deleted = self.cache.update_policy(policy, self.generation)
        if self.connections is not None and self.config.revoke_established:
            revoked = self.connections.revoke(policy)
            deleted += self.cache.forget_connections(revoked)
            self.stats["revoked"] += len(revoked)
        # Rule ids now mean the new policy's rules: the counts of deleted cache
        # rules (these revalidation deletes included) start again from zero.
        self.retired.clear()
        self._delete(self._proactive_installed())
        self._install_proactive(policy)
        self._guard(False)
        self.policy = policy
        self.stats["policy_updates"] += 1
        log.info(
            "policy updated",
            extra={
                "fields": {
                    "generation": self.generation,
                    "previous_generation": old_generation,
                    "rules": len(policy.rules),
                    "cache_kept": kept,
                    "cache_deleted": deleted,
                    "proactive_filters": len(self.proactive),
                }
            },
        )

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Remove every flowc rule and the slow path (unless ``keep``); release handles."""
        if not self.config.keep and self.installer is not None:
            if self.cache is not None:
                self.cache.remove_all()
            self._delete(self._proactive_installed())
            with contextlib.suppress(tc_attach.AttachError):
                if self.attach_slow_path:
                    tc_attach.detach(self.config.device, self.config.direction, chain=SLOW_CHAIN)
        if self.slow_path is not None:
            self.slow_path.close()
            self.slow_path = None
        if self.installer is not None:
            self.installer.close()
            self.installer = None
        log.info("stopped", extra={"fields": {"kept": self.config.keep}})

    # ------------------------------------------------------------ observation
    def rule_counters(self, installed: list[InstalledFilter]) -> list[RuleCounters]:
        """Per policy rule: packets, bytes and last hit from the slow path's map,
        the cache rules (live and retired) and the proactive flower filters."""
        assert self.policy is not None and self.slow_path is not None and self.cache is not None
        counters = slow_path_counters(len(self.policy.rules), self.slow_path)
        now_wall = time.time()
        for rule, (packets, nbytes) in self.retired.items():
            if rule < len(counters):
                counters[rule].hit("cache", packets, nbytes, None)
        for i in installed:
            cookie = i.filter.cookie
            if cookie is None or cookie.rule is None or not 0 <= cookie.rule < len(counters):
                continue
            last = now_wall - i.last_used if i.last_used is not None else None
            if cookie.role == ROLE_CACHE:
                entry = self.cache.entries.get((i.filter.prio, i.filter.handle))
                rule = entry.flow.rule if entry is not None else cookie.rule
                counters[rule].hit("cache", i.packets, i.bytes, last)
            elif cookie.role == ROLE_RULE and cookie.generation == self.generation:
                counters[cookie.rule].hit("flower", i.packets, i.bytes, last)
        return counters

    def _take_snapshot(
        self, installed: list[InstalledFilter], status: dict[str, int] | None = None
    ) -> None:
        assert self.cache is not None and self.policy is not None and self.slow_path is not None
        stats = Counters(self.cache.stats)
        stats.update(self.stats)
        stats["events_received"] = self.queue.received
        stats["event_drops"] = self.queue.dropped
        stats["event_duplicates"] = self.queue.duplicates
        if status is None:
            status = self.slow_path.status()
        stats["slow_path_events_lost"] = status["events_lost"]
        stats["slow_path_events_sent"] = status["events_sent"]
        if self.ct_watch is not None:
            self.ct_watch.count_into(stats, status)
        latency = sorted(self.install_latency)
        gauges = {
            "occupancy": float(self.cache.occupancy),
            "peak_occupancy": float(self.cache.peak_occupancy),
            "capacity": float(self.cache.capacity),
            "distinct_masks": float(len(self.cache.by_mask)),
            "queue_depth": float(len(self.queue)),
            "proactive_filters": float(len(self.proactive)),
            "generation": float(self.generation),
            "install_latency_p50_seconds": latency[len(latency) // 2] if latency else 0.0,
            "ct_entries": float(len(self.connections)) if self.connections is not None else 0.0,
            "ct_cached": float(self.cache.cached_connections()),
            "ct_commits_per_second": self.ct_watch.commit_rate if self.ct_watch else 0.0,
        }
        rules = tuple(
            (index, str(rule.origin), rule.origin.text, counters)
            for index, (rule, counters) in enumerate(
                zip(self.policy.rules, self.rule_counters(installed), strict=True)
            )
        )
        self.snapshot = Snapshot(time.time(), self.generation, dict(stats), gauges, rules)


def structured(record: logging.LogRecord) -> dict[str, Any]:
    """A log record as one JSON-ready object: time, level, event and its fields."""
    out: dict[str, Any] = {
        "ts": round(record.created, 3),
        "level": record.levelname.lower(),
        "event": record.getMessage(),
    }
    out.update(getattr(record, "fields", {}))
    return out
