"""The rule cache: megaflow rules in a flower table in front of the BPF slow path.

The slow path decides a flow's first packet and reports it (flow key, rule,
generation). :meth:`FlowCache.on_miss` turns the report into a cache rule:
the packet's megaflow (:mod:`ir.megaflow`: the widest maskable cube one
policy rule decides whole, or the exact 5-tuple in ``exact`` mode), proven
with :func:`ir.megaflow.decides_whole` on the cube the flower match really
covers, and installed through an :class:`runtime.agent.seams.Installer`
(:class:`runtime.flower_installer.FlowerInstaller` on a device,
:class:`runtime.nic_model.NicModel` in tests and ``flowc simulate``).

Cache rules sit in chain 0 at priorities of their own, ahead of the
proactive filters (they are sound wherever they sit: every packet they match
gets its own rule's action). Their cookie carries role ``cache``, the
generation and the rule, so a restart can adopt them and the per-rule
counters add up per DSL line.

What an operator of a flow cache expects, and where it lives here:

* admission: a flow earns a rule after ``admit_after`` slow-path packets;
* a negative cache: cubes the device refused are not retried for
  ``negative_ttl`` seconds (a full table must not cause a retry storm);
* an insertion rate limit of the agent's own (token bucket);
* few distinct masks: a new megaflow takes the mask signature of an
  installed one when that costs at most ``mask_slack`` bits, and must when
  the device's mask budget is used up;
* :meth:`expire`: idle rules (by the device's last-used time) go after
  ``max_idle``; over ``capacity``, least recently used go first;
* :meth:`update_policy`: revalidation. Rules whose cube does not meet the
  policy diff's changed regions are kept without a look; the others are
  kept only if still decided whole by their rule (same action) under the
  new policy;
* :meth:`reconcile`: on start, adopt the device's cache rules that are sound
  under the current policy and delete the rest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from backends.flower.lowering import expand
from backends.flower.rules import (
    ROLE_CACHE,
    Cookie,
    FlowerFilter,
    FlowerMatch,
    action_for,
)
from backends.nic_profile import NicProfile
from ir.algebra import Cube, intersect, is_feasible
from ir.diff import diff_policies
from ir.fields import HEADER_SPACE
from ir.megaflow import (
    EXACT_5TUPLE,
    MEGAFLOW,
    Megaflow,
    PolicyRegions,
    decides_whole,
    megaflow,
    narrowed,
)
from ir.model import Policy
from ir.packet import Point
from runtime.agent.counters import Counters
from runtime.agent.priorities import PLAN
from runtime.agent.seams import Installer
from runtime.flower_installer import FlowerInstallError
from runtime.flower_netlink import InstalledFilter
from runtime.token_bucket import TokenBucket

MODES = {"megaflow": MEGAFLOW, "exact": EXACT_5TUPLE}


class MissOutcome(StrEnum):
    """What :meth:`FlowCache.on_miss` did with a miss; the value names the cache
    counter it is counted under (and so the agent's metric)."""

    INSTALLED = "installed"  # a cache rule now covers the flow
    COVERED = "covered"  # an installed rule already did (the event was late)
    STALE = "stale"  # decided under another generation or rule: dropped
    ADMISSION = "admission"  # the flow has not earned a rule yet
    NEGATIVE = "negative"  # its cube was refused recently
    RATE = "rate"  # over the agent's insertion rate
    REFUSED = "refused"  # the device refused the rule
    UNEXPRESSIBLE = "unexpressible"  # no single flower match holds the megaflow


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """How the cache behaves (``flowc agent`` and ``flowc simulate`` options)."""

    mode: str = "megaflow"
    max_idle: float = 30.0
    capacity: int | None = None  # default: the profile's table size
    max_insert_rate: float | None = 1000.0  # rules per second; None: unlimited
    admit_after: int = 1  # slow-path packets before a flow earns a rule
    negative_ttl: float = 5.0
    # Bits a megaflow may give up to share an installed mask. 0 by default: on
    # acl1000 a slack of 8 narrowed most /24 megaflows to /32 and installed
    # 1.9x the rules (bench/results/cache.md); masks are shared at the budget anyway.
    mask_slack: int = 0
    flags: str | None = None  # flower flags; default the profile's
    admission_memory: int = 65536  # flows remembered for admission counting


@dataclass(slots=True)
class CacheEntry:
    """One installed cache rule."""

    filter: FlowerFilter
    flow: Megaflow
    installed_at: float
    last_seen: float
    packets: int = 0
    bytes: int = 0


class FlowCache:
    """Megaflow (or exact 5-tuple) cache rules on a flower table."""

    def __init__(
        self,
        policy: Policy,
        profile: NicProfile,
        installer: Installer,
        config: CacheConfig = CacheConfig(),
        *,
        generation: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {config.mode!r}")
        self.profile = profile
        self.installer = installer
        self.config = config
        self.clock = clock
        self.shapes = MODES[config.mode]
        self.capacity = config.capacity or profile.max_rules
        self.flags = config.flags or profile.install_flags
        self.stats = Counters()  # what the agent exports as metrics
        self.entries: dict[tuple[int, int], CacheEntry] = {}  # (prio, handle) -> entry
        # Tuple-space index over installed cubes: masks -> {masked point: key}.
        self.by_mask: dict[tuple[int, ...], dict[tuple[int, ...], tuple[int, int]]] = {}
        self.admission: OrderedDict[Point, int] = OrderedDict()
        self.negative: list[tuple[Cube, float]] = []
        self.next_handle = 1
        self.bucket = TokenBucket(config.max_insert_rate, clock())
        self.prio_of: dict[int, int] = {}  # ethertype -> priority of its cache rules
        self.peak_occupancy = 0
        self._set_policy(policy, generation)

    # ------------------------------------------------------------------ lookups
    def lookup(self, point: Point) -> CacheEntry | None:
        """The cache rule holding ``point`` (cache rules of one packet's rule may
        overlap; any of them decides it the same way)."""
        for masks, table in self.by_mask.items():
            key = table.get(tuple(v & m for v, m in zip(point, masks, strict=True)))
            if key is not None:
                return self.entries[key]
        return None

    @property
    def occupancy(self) -> int:
        """Cache rules installed."""
        return len(self.entries)

    # ------------------------------------------------------------------- misses
    def on_miss(
        self, point: Point, *, rule: int | None = None, generation: int | None = None
    ) -> MissOutcome:
        """A packet the slow path decided: maybe install its cache rule. Returns
        what happened."""
        now = self.clock()
        self.stats["misses"] += 1
        if generation is not None and generation != self.generation:
            # Decided by the previous policy during a swap: its rule id means
            # something else now, so the event is dropped (the next packet
            # comes back under the new generation).
            return self._count(MissOutcome.STALE)
        if self.lookup(point) is not None:
            return self._count(MissOutcome.COVERED)
        if self.config.admit_after > 1 and not self._admitted(point):
            return self._count(MissOutcome.ADMISSION)
        if any(c.contains(point) and now < until for c, until in self.negative):
            return self._count(MissOutcome.NEGATIVE)
        flow = megaflow(self.regions, point, self.shapes)
        if flow is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        if rule is not None and rule != flow.rule:
            return self._count(MissOutcome.STALE)
        flow = self._share_mask(flow)
        match = self._match(flow)
        if match is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        if not self.bucket.take(now):
            return self._count(MissOutcome.RATE)
        if self.occupancy >= self.capacity:
            self._evict_lru(self.occupancy - self.capacity + 1)
        f = self._filter(flow, match)
        try:
            self.installer.add([f])
        except FlowerInstallError:
            self.stats["install_failures"] += 1
            self.negative.append((flow.cube, now + self.config.negative_ttl))
            self._trim_negative(now)
            return MissOutcome.REFUSED
        self._remember(CacheEntry(f, flow, now, now))
        self.stats["installs"] += 1
        return MissOutcome.INSTALLED

    def _count(self, outcome: MissOutcome) -> MissOutcome:
        self.stats[outcome.value] += 1
        return outcome

    def _admitted(self, point: Point) -> bool:
        seen = self.admission.pop(point, 0) + 1
        if seen >= self.config.admit_after:
            return True
        self.admission[point] = seen
        while len(self.admission) > self.config.admission_memory:
            self.admission.popitem(last=False)
        return False

    def _trim_negative(self, now: float) -> None:
        self.negative = [(c, until) for c, until in self.negative if until > now][-1024:]

    def _share_mask(self, flow: Megaflow) -> Megaflow:
        """Take an installed mask signature that holds this megaflow's bits when
        it costs at most ``mask_slack`` bits, or at any cost at the mask budget."""
        if flow.masks in self.by_mask:
            return flow
        own = sum(m.bit_count() for m in flow.masks)
        best: tuple[int, tuple[int, ...]] | None = None
        for masks in self.by_mask:
            if all(m & o == o for m, o in zip(masks, flow.masks, strict=True)):
                extra = sum(m.bit_count() for m in masks) - own
                if best is None or extra < best[0]:
                    best = (extra, masks)
        at_budget = len(self.by_mask) >= self.profile.max_masks
        if best is not None and (best[0] <= self.config.mask_slack or at_budget):
            return narrowed(HEADER_SPACE, flow, best[1])
        return flow

    def _match(self, flow: Megaflow) -> FlowerMatch | None:
        """The one flower match covering exactly the megaflow's cube, proven to be
        decided whole by its rule (None: the profile cannot express it as one)."""
        expansion = expand(flow.cube, self.profile)
        if expansion.problem or len(expansion.matches) != 1:
            return None
        (match,) = expansion.matches
        covered = match.cube()
        if covered is None or not decides_whole(self.regions, covered, flow.rule):
            raise AssertionError(f"megaflow for rule {flow.rule} is not decided whole by it")
        return match

    def _filter(self, flow: Megaflow, match: FlowerMatch) -> FlowerFilter:
        handle = self.next_handle
        self.next_handle = handle % 0xFFFFFFFE + 1
        rule = self.policy.rules[flow.rule]
        return FlowerFilter(
            chain=0,
            prio=self._prio(match.protocol),
            handle=handle,
            match=match,
            action=action_for(rule.action),
            flags=self.flags,
            cookie=Cookie(ROLE_CACHE, self.generation, flow.rule, handle),
            origin=rule.origin,
        )

    def _prio(self, protocol: int) -> int:
        """The cache priority of ``protocol``'s rules (flower wants one protocol per
        priority), the lowest free one in the plan's cache range on first use; an
        ethertype past the range raises PriorityExhausted, never takes the guard's."""
        prio = self.prio_of.get(protocol)
        if prio is None:
            prio = self.prio_of[protocol] = PLAN.cache.first_free(self.prio_of.values())
        return prio

    def _remember(self, entry: CacheEntry) -> None:
        key = (entry.filter.prio, entry.filter.handle)
        self.entries[key] = entry
        masks = entry.flow.masks
        masked = tuple(v & m for v, m in zip(entry.flow.point, masks, strict=True))
        self.by_mask.setdefault(masks, {})[masked] = key
        self.peak_occupancy = max(self.peak_occupancy, len(self.entries))

    def _forget(self, keys: list[tuple[int, int]]) -> list[CacheEntry]:
        gone = []
        for key in keys:
            entry = self.entries.pop(key, None)
            if entry is None:
                continue
            masks = entry.flow.masks
            masked = tuple(v & m for v, m in zip(entry.flow.point, masks, strict=True))
            table = self.by_mask.get(masks, {})
            if table.get(masked) == key:
                del table[masked]
            if not table:
                self.by_mask.pop(masks, None)
            gone.append(entry)
        return gone

    def _delete(self, keys: list[tuple[int, int]], reason: str) -> int:
        gone = self._forget(keys)
        if gone:
            try:
                self.installer.delete([e.filter for e in gone])
            except FlowerInstallError:
                self.stats["delete_failures"] += 1
            self.stats[reason] += len(gone)
        return len(gone)

    # ----------------------------------------------------------------- eviction
    def expire(self, installed_filters: list[InstalledFilter] | None = None) -> int:
        """Read the device's counters (or take ``installed_filters``, a chain-0
        dump the caller already made); evict rules idle longer than ``max_idle``
        and, over capacity, the least recently used. Returns how many went."""
        now = self.clock()
        if installed_filters is None:
            installed_filters = self.installer.dump(chain=0)
        for installed in installed_filters:
            key = (installed.filter.prio, installed.filter.handle)
            entry = self.entries.get(key)
            if entry is None:
                continue
            if installed.packets > entry.packets and installed.last_used is not None:
                entry.last_seen = max(entry.last_seen, now - installed.last_used)
            entry.packets, entry.bytes = installed.packets, installed.bytes
        idle = [k for k, e in self.entries.items() if now - e.last_seen > self.config.max_idle]
        evicted = self._delete(idle, "evictions_idle")
        if self.occupancy > self.capacity:
            evicted += self._evict_lru(self.occupancy - self.capacity)
        return evicted

    def _evict_lru(self, count: int) -> int:
        victims = sorted(self.entries, key=lambda k: self.entries[k].last_seen)[:count]
        return self._delete(victims, "evictions_lru")

    def remove_all(self) -> int:
        """Delete every cache rule (agent shutdown)."""
        return self._delete(list(self.entries), "removed")

    # ------------------------------------------------------------------ updates
    def _set_policy(self, policy: Policy, generation: int) -> None:
        self.policy = policy
        self.generation = generation
        self.regions = PolicyRegions(HEADER_SPACE, [r.match.cube for r in policy.rules])

    def update_policy(self, policy: Policy, generation: int) -> tuple[int, int]:
        """Switch to ``policy`` and revalidate every cache rule: delete those whose
        cube meets a region the policy diff says changed verdict, keep the rest
        (their counters are credited to the rule that now decides the packet
        they were built for). Returns (kept, deleted)."""
        old = self.policy
        changed = [c.region for c in diff_policies(old, policy).changes]
        self._set_policy(policy, generation)
        self.negative.clear()
        self.admission.clear()
        doomed: list[tuple[int, int]] = []
        relabel: list[tuple[tuple[int, int], int]] = []
        for key, entry in self.entries.items():
            self.stats["revalidations"] += 1
            covered = entry.filter.match.cube()
            assert covered is not None
            # The diff is exact: a cube meeting no changed region keeps the
            # verdict of every packet, so its rule's action is still right.
            touched = any(
                (both := intersect(covered, region)) is not None and is_feasible(HEADER_SPACE, both)
                for region in changed
            )
            new_rule = self.regions.rule_of(entry.flow.point)
            if touched or new_rule is None:
                doomed.append(key)
            else:
                relabel.append((key, new_rule))
        for key, new_rule in relabel:
            entry = self.entries[key]
            entry.flow = Megaflow(entry.flow.cube, entry.flow.masks, entry.flow.point, new_rule)
        deleted = self._delete(doomed, "revalidation_deletes")
        return len(relabel), deleted

    def reconcile(self) -> tuple[int, int]:
        """Adopt the device's cache rules that are sound under the current policy
        (decided whole by the rule their cookie names); delete every other
        cache rule. Returns (adopted, deleted)."""
        now = self.clock()
        adopted, doomed = 0, []
        for installed in self.installer.dump(chain=0):
            f = installed.filter
            if f.cookie is None or f.cookie.role != ROLE_CACHE:
                continue
            covered = f.match.cube()
            rule = f.cookie.rule
            # Adopted rules join the mask index, so each field must be one
            # value/mask block (flowc's own cache rules always are); they must
            # sit in the cache's priorities, one ethertype per priority.
            ternaries = [s.as_ternary() for s in covered.sets] if covered is not None else []
            sound = (
                covered is not None
                and f.prio in PLAN.cache
                and all(p != f.prio or e == f.match.protocol for e, p in self.prio_of.items())
                and rule is not None
                and all(t is not None for t in ternaries)
                and 0 <= rule < len(self.policy.rules)
                and f.action == action_for(self.policy.rules[rule].action)
                and decides_whole(self.regions, covered, rule)
            )
            if not sound:
                doomed.append(f)
                continue
            assert covered is not None and rule is not None
            point = tuple(s.intervals[0][0] for s in covered.sets)
            masks = tuple(t[1] for t in ternaries if t is not None)
            flow = Megaflow(covered, masks, point, rule)
            last_seen = now - installed.last_used if installed.last_used is not None else now
            self.prio_of.setdefault(f.match.protocol, f.prio)
            self._remember(CacheEntry(f, flow, now, last_seen, installed.packets, installed.bytes))
            self.next_handle = max(self.next_handle, f.handle + 1)
            adopted += 1
        if doomed:
            try:
                self.installer.delete(doomed)
            except FlowerInstallError:
                self.stats["delete_failures"] += 1
        self.stats["adopted"] += adopted
        self.stats["reconcile_deletes"] += len(doomed)
        return adopted, len(doomed)
