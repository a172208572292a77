"""The rule cache: megaflow rules in a flower table in front of the BPF slow path.

The slow path decides a flow's first packet and reports it (flow key, rule,
generation). :meth:`FlowCache.on_miss` turns the report into a cache rule:
the packet's megaflow (:mod:`ir.megaflow`: the widest maskable cube one
policy rule decides whole, or the exact 5-tuple in ``exact`` mode; the
event's rule saves the first-match look-up and is checked on the way),
proven with :func:`ir.megaflow.decides_whole` on the cube the flower match
really covers, and installed through an :class:`runtime.agent.seams.Installer`
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

On a host that tracks connections (``connections`` given: the slow path's
connection table, the one source of connection state) a megaflow could let a
packet past the slow path that must reach it: a ``new`` packet that commits,
a packet that advances a connection's TCP state. So there the cache holds
only **connection rules**: the exact tuple of a *steady* connection
(:attr:`ir.conntrack.Connection.steady`: replied, TCP established) with no
SYN, FIN or RST, decided whole by one rule as an established packet. Every
packet such a rule matches is, while the connection is stored and steady, an
established packet that changes nothing in the table but its idle timer, so
:meth:`expire` extends the timer from the rule's last use (as the kernel's
flowtable does for offloaded connections) and deletes the rule once the
connection is gone or no longer steady (a FIN or RST reaches the slow path,
since the rule does not match it). Between a RST and the next poll the rule
may still pass a packet the tracker would call invalid: that window is one
poll interval.
"""

from __future__ import annotations

import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from backends.flower.dissector import MALFORMED_VIEWS
from backends.flower.lowering import expand
from backends.flower.rules import (
    ETH_FOR_FAMILY,
    ETH_P_8021Q,
    ROLE_CACHE,
    Cookie,
    FlowerFilter,
    FlowerMatch,
    InstallFlags,
    Masked,
    action_for,
)
from backends.nic_profile import NicProfile
from ir.algebra import Cube, intersect, is_feasible
from ir.conntrack import FIN as TCP_FIN
from ir.conntrack import NS_PER_S, RST, SYN, ConnKey
from ir.diff import diff_policies
from ir.fields import FRAG_NONE, HEADER_SPACE, PORT_PROTOCOLS, PROTO_TCP, STATE_ESTABLISHED
from ir.megaflow import (
    EXACT_5TUPLE,
    MEGAFLOW,
    Megaflow,
    PolicyRegions,
    decides_whole,
    decides_whole_by_walk,
    mask_of_length,
    megaflow,
    megaflow_by_algebra,
    narrowed,
)
from ir.model import DROP, Policy
from ir.packet import Packet, Point
from ir.valueset import ValueSet
from runtime.agent.counters import Counters
from runtime.agent.priorities import PLAN
from runtime.agent.seams import ConnectionTable, Installer
from runtime.flower_installer import FlowerInstallError
from runtime.flower_netlink import InstalledFilter
from runtime.token_bucket import TokenBucket

MODES = {"megaflow": MEGAFLOW, "exact": EXACT_5TUPLE}
# How a miss becomes a proven cube: the miss-length search with the direct
# proof (default), or the construction and region-walk proof before issue 17
# (kept so the benchmark compares both in one run).
ALGORITHMS = ("lengths", "algebra")


_WHOLE_VALUE = frozenset(
    HEADER_SPACE.position(name) for name in ("ip_proto", "icmp_type", "icmp_code")
)


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
    UNTRACKED = "untracked"  # stateful host: the packet is of no steady connection


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
    algorithm: str = "lengths"  # one of ALGORITHMS


@dataclass(slots=True)
class CacheEntry:
    """One installed cache rule."""

    filter: FlowerFilter
    flow: Megaflow
    installed_at: float
    last_seen: float
    packets: int = 0
    bytes: int = 0
    connection: ConnKey | None = None  # the connection a connection rule carries


_STATE_AT = HEADER_SPACE.position("state")
_FLAGS_AT = HEADER_SPACE.position("tcp_flags")
_FRAG_AT = HEADER_SPACE.position("frag")
_PROTO_AT = HEADER_SPACE.position("ip_proto")
_SPORT_AT, _DPORT_AT = HEADER_SPACE.position("sport"), HEADER_SPACE.position("dport")
_FAMILY_AT = HEADER_SPACE.position("family")
_VLAN_TAGGED_AT, _VLAN_ID_AT = (
    HEADER_SPACE.position("vlan_tagged"),
    HEADER_SPACE.position("vlan_id"),
)
_WIDTHS = tuple(f.width for f in HEADER_SPACE.fields)
# A connection rule's exact fields, per family: what identifies the connection.
_CONNECTION_FIELDS = {
    4: ("family", "ip_proto", "ip4_src", "ip4_dst", "sport", "dport"),
    6: ("family", "ip_proto", "ip6_src", "ip6_dst", "sport", "dport"),
}
# The same as positions, with the tagging (one flower match per tagging).
_CONNECTION_POSITIONS = {
    family: frozenset({*(HEADER_SPACE.position(n) for n in names), _VLAN_TAGGED_AT})
    for family, names in _CONNECTION_FIELDS.items()
}
# The packets a connection rule must leave to the slow path: those that change
# a TCP connection's state.
_STATE_CHANGING = SYN | TCP_FIN | RST
_ESTABLISHED = ValueSet.of_value(2, STATE_ESTABLISHED)
# A connection cube before its pinned fields: every field free but the flags
# (no SYN/FIN/RST), the state (established: the NIC cannot see it, the rule's
# life guarantees it) and the fragment state (none: exact ports keep fragments
# out, since flower reads a fragment's ports as 0).
_CONNECTION_BASE = tuple(
    ValueSet.of_ternary(8, 0, _STATE_CHANGING)
    if i == _FLAGS_AT
    else _ESTABLISHED
    if i == _STATE_AT
    else ValueSet.of_value(2, FRAG_NONE)
    if i == _FRAG_AT
    else fld.full
    for i, fld in enumerate(HEADER_SPACE.fields)
)
# An exact-mode cube before its pinned fields: every field free but the fragment
# state (none: exact ports keep fragments out, as for a connection rule).
_EXACT_BASE = tuple(
    ValueSet.of_value(2, FRAG_NONE) if i == _FRAG_AT else fld.full
    for i, fld in enumerate(HEADER_SPACE.fields)
)
_FULL_MASKS = tuple((1 << f.width) - 1 for f in HEADER_SPACE.fields)
_ALL_BUT_FLAGS_AND_STATE = frozenset(range(len(HEADER_SPACE.fields))) - {_FLAGS_AT, _STATE_AT}


def _connection_cacheable(point: Point) -> bool:
    """Whether a connection rule could ever carry ``point``, by the packet alone:
    not a packet that changes the connection (SYN/FIN/RST), not a fragment, a
    protocol with ports, and ports that are not both 0."""
    if point[_FLAGS_AT] & _STATE_CHANGING or point[_FRAG_AT] != FRAG_NONE:
        return False
    if point[_PROTO_AT] not in PORT_PROTOCOLS:
        return False  # echo identifiers are no flower key
    # A fragment's ports read 0 in flower: a rule on them would match fragments.
    return bool(point[_SPORT_AT] or point[_DPORT_AT])


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
        connections: ConnectionTable | None = None,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {config.mode!r}")
        if config.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {', '.join(ALGORITHMS)}, not {config.algorithm!r}"
            )
        self.by_algebra = config.algorithm == "algebra"
        self.profile = profile
        self.installer = installer
        self.config = config
        self.clock = clock
        self.shapes = MODES[config.mode]
        self.capacity = config.capacity or profile.max_rules
        self.flags = InstallFlags(config.flags or profile.install_flags)
        self.stats = Counters()  # what the agent exports as metrics
        self.entries: dict[tuple[int, int], CacheEntry] = {}  # (prio, handle) -> entry
        # Tuple-space index over installed cubes: masks -> {masked point: key}.
        self.by_mask: dict[tuple[int, ...], dict[tuple[int, ...], tuple[int, int]]] = {}
        # The same index per policy rule (rule -> masks -> {masked point: key}):
        # a miss event names its rule, and only that rule's cache rules can hold
        # its packet, so its look-up walks a few signatures, not every one.
        self.by_rule: dict[int, dict[tuple[int, ...], dict[tuple[int, ...], tuple[int, int]]]] = {}
        self._mask_views: dict[tuple[int, ...], MaskView] = {}
        self._mask_bits: dict[tuple[int, ...], int] = {}  # signature -> packed_masks
        self.admission: OrderedDict[Point, int] = OrderedDict()
        self.negative: list[tuple[Cube, float]] = []
        self.next_handle = 1
        self.bucket = TokenBucket(config.max_insert_rate, clock())
        self.prio_of: dict[int, int] = {}  # ethertype -> priority of its cache rules
        self.peak_occupancy = 0
        self.connections = connections
        self._set_policy(policy, generation)

    # ------------------------------------------------------------------ lookups
    def lookup(self, point: Point, rule: int | None = None) -> CacheEntry | None:
        """The cache rule holding ``point`` (cache rules of one packet's rule may
        overlap; any of them decides it the same way).

        With ``rule``, the policy rule that decides ``point``, only that rule's
        cache rules are searched: each is decided whole by its rule, so no other
        can hold the packet. One exception, harmless: a cube a policy update kept
        (its verdicts unchanged) is relabelled with the rule of the packet it was
        built for and may hold packets another rule now decides the same way. A
        miss of such a packet builds a cube of its own, decided whole by its
        rule, so never that one's, and installs an overlapping rule with the
        same verdict."""
        index = self.by_mask if rule is None else self.by_rule.get(rule)
        if not index:
            return None
        for masks, table in index.items():
            key = table.get(self._view_of(masks)(point))
            if key is not None:
                return self.entries[key]
        return None

    def _view_of(self, masks: tuple[int, ...]) -> MaskView:
        """The bits of a point a mask signature keeps, on the fields it looks at
        (a look-up walks every signature, and most of a signature's fields are
        wildcards), remembered per signature."""
        view = self._mask_views.get(masks)
        if view is None:
            view = self._mask_views[masks] = mask_view(masks)
        return view

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
        if self.lookup(point, rule) is not None:
            return self._count(MissOutcome.COVERED)
        if self.connections is not None:
            return self._on_connection_miss(point, now, rule)
        if self.config.admit_after > 1 and not self._admitted(point):
            return self._count(MissOutcome.ADMISSION)
        if any(c.contains(point) and now < until for c, until in self.negative):
            return self._count(MissOutcome.NEGATIVE)
        if self.shapes is EXACT_5TUPLE and not self.by_algebra:
            direct = self._exact_flow(point, rule)
            if direct is not None:
                return self._install(*direct, now)
        if self.by_algebra:
            flow = megaflow_by_algebra(self.regions, point, self.shapes)
        else:
            flow = megaflow(self.regions, point, self.shapes, rule=rule)
        if flow is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        if rule is not None and rule != flow.rule:
            return self._count(MissOutcome.STALE)
        flow = self._off_malformed_views(flow)
        if flow is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        flow = self._share_mask(flow)
        match = self._match(flow)
        if match is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        return self._install(flow, match, now)

    def _install(
        self, flow: Megaflow, match: FlowerMatch, now: float, connection: ConnKey | None = None
    ) -> MissOutcome:
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
        self._remember(CacheEntry(f, flow, now, now, connection=connection))
        self.stats["installs"] += 1
        return MissOutcome.INSTALLED

    # ------------------------------------------------------ connection rules
    def _on_connection_miss(self, point: Point, now: float, rule: int | None) -> MissOutcome:
        """A stateful host's miss: a connection rule for a steady connection, or none."""
        assert self.connections is not None
        if any(c.contains(point) and now < until for c, until in self.negative):
            return self._count(MissOutcome.NEGATIVE)
        if not _connection_cacheable(point):
            # Before the table look-up (a bpf(2) call on a host): the SYN of every
            # connection reaches the agent, and none is ever cached.
            return self._count(MissOutcome.UNEXPRESSIBLE)
        found = self.connections.find(Packet.unchecked(point), int(now * NS_PER_S))
        if found is None or not found[0].steady:
            return self._count(MissOutcome.UNTRACKED)
        flow = self._connection_flow(point, rule)
        if flow is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        match = self._tuple_match(flow)
        if match is None:
            return self._count(MissOutcome.UNEXPRESSIBLE)
        return self._install(flow, match, now, found[0].key)

    def _connection_flow(self, point: Point, rule: int | None = None) -> Megaflow | None:
        """The cube of ``point``'s connection tuple as established packets without
        SYN/FIN/RST, decided whole by one rule (None when the packet itself changes
        the connection, is a fragment, or no one rule decides the tuple). ``rule``:
        the rule the slow path decided the packet by (it was established: its
        connection is steady), which saves the first-match look-up when it holds."""
        if not _connection_cacheable(point):
            return None
        point = (*point[:_STATE_AT], STATE_ESTABLISHED, *point[_STATE_AT + 1 :])
        if (
            rule is None
            or not 0 <= rule < len(self.regions.cubes)
            or not self.regions.holds(rule, point)
        ):
            rule = self._rule_of(point)
        if rule is None:
            return None
        return self._pinned_tuple(point, rule, _CONNECTION_BASE, _STATE_CHANGING)

    def _pinned_tuple(
        self, point: Point, rule: int, base: tuple[ValueSet, ...], flags_mask: int
    ) -> Megaflow | None:
        """``base`` with ``point``'s 5-tuple and tagging pinned (one flower match per
        tagging: the packet's own, and its VLAN when tagged), decided whole by
        ``rule``; if the policy looks at more (DSCP, VLAN), the packet's own
        values of every field but the flags and state. ``flags_mask``: the TCP
        flag bits ``base`` fixes. None when neither cube is decided whole."""
        exact = _CONNECTION_POSITIONS.get(point[_FAMILY_AT])
        if exact is None:
            return None
        exact = exact | {_VLAN_TAGGED_AT, _VLAN_ID_AT} if point[_VLAN_TAGGED_AT] else exact
        for pinned in (exact, _ALL_BUT_FLAGS_AND_STATE):
            sets = list(base)
            masks = [0] * len(sets)
            masks[_FLAGS_AT] = flags_mask
            for i in pinned:
                sets[i] = ValueSet.of_value(_WIDTHS[i], point[i])
                masks[i] = _FULL_MASKS[i]
            cube = Cube(tuple(sets))
            if decides_whole(self.regions, cube, rule):
                return Megaflow(cube, tuple(masks), point, rule)
        return None

    def _exact_flow(self, point: Point, rule: int | None) -> tuple[Megaflow, FlowerMatch] | None:
        """Exact mode's cache rule for a whole TCP/UDP/SCTP packet with ports, built
        directly: the 5-tuple and tagging exact (else every field but the flags
        and state, where the policy looks at more), proven decided whole by its
        rule, kept off the malformed frames' views, then matched by
        :meth:`_tuple_match`. None leaves the packet to the general construction
        (:func:`megaflow` with the exact shapes), which takes every packet; this
        path only skips its obstacle search and :func:`expand` for the common
        case, one rule per flow. ``rule``: the slow path's rule for the packet
        (checked: a cube decided whole by it has it as every packet's first match)."""
        if (
            point[_FRAG_AT] != FRAG_NONE
            or point[_PROTO_AT] not in PORT_PROTOCOLS
            or not (point[_SPORT_AT] or point[_DPORT_AT])
        ):
            return None
        if rule is None or not 0 <= rule < len(self.regions.cubes):
            rule = self._rule_of(point)
            if rule is None:
                return None
        proven = self._pinned_tuple(point, rule, _EXACT_BASE, 0)
        if proven is None:
            return None
        # Narrowed (a subset of the proven cube) so no malformed frame's view meets it.
        flow = self._off_malformed_views(proven)
        if flow is None:
            return None
        match = self._tuple_match(flow)
        return None if match is None else (flow, match)

    def _rule_of(self, point: Point) -> int | None:
        """The first rule holding ``point``: by a scan on short policies (the
        locator's set-up costs more than it saves there), else the locator."""
        regions = self.regions
        if len(regions.cubes) > 64:
            return regions.rule_of(point)
        return next((i for i in range(len(regions.cubes)) if regions.holds(i, point)), None)

    def _tuple_match(self, flow: Megaflow) -> FlowerMatch | None:
        """The one flower match of a cube with the exact 5-tuple: a connection
        rule's (no SYN/FIN/RST; state is not a key: every packet it meets while
        the rule lives is established) or an exact-mode rule's (the TCP flags its
        masks keep). The tagging and DSCP when the cube pins them. Built directly,
        not by :func:`expand`, since such rules come one per connection or flow;
        that it covers exactly the (proven) cube is what tests/test_conn_cache.py
        and tests/test_flow_cache.py hold it to against ``expand`` and
        :meth:`FlowerMatch.cubes`."""
        space = HEADER_SPACE
        p, masks = flow.point, flow.masks
        family, proto = p[space.position("family")], p[space.position("ip_proto")]
        prefix = "ip4" if family == 4 else "ip6"
        kinds = ["ipv4" if family == 4 else "ipv6", "ip_proto", "ports"]
        src_at, dst_at = space.position(f"{prefix}_src"), space.position(f"{prefix}_dst")
        full = (1 << space.fields[src_at].width) - 1
        keys: dict[str, object] = {
            "ip_proto": proto,
            "src_ip": Masked(p[src_at], full),
            "dst_ip": Masked(p[dst_at], full),
            "src_port": Masked(p[space.position("sport")], 0xFFFF),
            "dst_port": Masked(p[space.position("dport")], 0xFFFF),
        }
        flags_mask = masks[_FLAGS_AT]
        if proto == PROTO_TCP and flags_mask:
            keys["tcp_flags"] = Masked(p[_FLAGS_AT] & flags_mask, flags_mask)
            kinds.append("tcp_flags")
        dscp_at = space.position("dscp")
        if masks[dscp_at]:
            keys["ip_tos"] = Masked(p[dscp_at] << 2, 0xFC)
            kinds.append("ip_tos")
        eth = ETH_FOR_FAMILY[family]
        if p[space.position("vlan_tagged")]:
            kinds.append("vlan_id")
            match = FlowerMatch(
                ETH_P_8021Q,
                vlan_id=p[space.position("vlan_id")],
                vlan_ethtype=eth,
                **keys,  # type: ignore[arg-type]
            )
        else:
            match = FlowerMatch(eth, **keys)  # type: ignore[arg-type]
        if not all(self.profile.allows_field(kind) for kind in kinds):
            return None
        return match

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

    def _off_malformed_views(self, flow: Megaflow) -> Megaflow | None:
        """The megaflow narrowed so that no malformed frame's flower view falls in it
        (cache rules sit above the lowering's traps for those views, and the slow
        path drops such frames), or None when the packet itself looks like one.

        Each view pins fields (TCP flags, the ports, ICMP type and code to 0,
        ip_proto to a few values): for one the packet's value is outside of,
        fixing its bits down to its highest set one (or the whole value) keeps
        the packet and excludes the view. Drops need nothing: the slow path drops
        malformed frames too.
        """
        if self.policy.rules[flow.rule].action.kind == DROP:
            return flow
        for view, pinned in _VIEW_PINS:
            # Most megaflows fix the family and ip_proto, which rules most views
            # out on the fields each pins, before a whole intersection.
            sets = flow.cube.sets
            if not all(sets[i].overlaps(values) for i, values in pinned):
                continue
            both = intersect(flow.cube, view.cube)
            if both is None or not is_feasible(HEADER_SPACE, both):
                continue
            masks = list(flow.masks)
            for i, values in enumerate(view.cube.sets):
                if flow.point[i] in values:
                    continue
                width = HEADER_SPACE.fields[i].width
                if values.size() == 1 and values.pick() == 0 and i not in _WHOLE_VALUE:
                    # The packet's bits down to its highest set one exclude 0.
                    length = width - flow.point[i].bit_length() + 1
                else:
                    length = width  # one value at a time in flower: pinned whole
                masks[i] |= mask_of_length(width, length)
                # Flower keys the field only under its exact prerequisites
                # (ip_proto, the fragment state), as the megaflow does.
                for alternative in HEADER_SPACE.fields[i].prerequisite:
                    for root, _ in alternative:
                        r = HEADER_SPACE.position(root)
                        masks[r] = (1 << HEADER_SPACE.fields[r].width) - 1
                break
            else:
                return None
            flow = narrowed(HEADER_SPACE, flow, masks)
        return flow

    def _share_mask(self, flow: Megaflow) -> Megaflow:
        """Take an installed mask signature that holds this megaflow's bits when
        it costs at most ``mask_slack`` bits, or at any cost at the mask budget."""
        if flow.masks in self.by_mask:
            return flow
        # Each signature as one integer (the fields' masks side by side): "holds
        # every bit of the megaflow's" is then one AND, not one per field.
        own_bits = packed_masks(flow.masks)
        own = own_bits.bit_count()
        best: tuple[int, tuple[int, ...]] | None = None
        for masks in self.by_mask:
            bits = self._mask_bits.get(masks)
            if bits is None:
                bits = self._mask_bits[masks] = packed_masks(masks)
            if bits & own_bits == own_bits:
                extra = bits.bit_count() - own
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
        covered = match.cubes()
        prove = decides_whole_by_walk if self.by_algebra else decides_whole
        if not covered or not all(prove(self.regions, c, flow.rule) for c in covered):
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
            action=self.actions[flow.rule],
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
        self._index(key, entry.flow)
        self.peak_occupancy = max(self.peak_occupancy, len(self.entries))

    def _index(self, key: tuple[int, int], flow: Megaflow) -> None:
        masks = flow.masks
        masked = self._view_of(masks)(flow.point)
        self.by_mask.setdefault(masks, {})[masked] = key
        self.by_rule.setdefault(flow.rule, {}).setdefault(masks, {})[masked] = key

    def _unindex(self, key: tuple[int, int], flow: Megaflow) -> None:
        masks = flow.masks
        masked = self._view_of(masks)(flow.point)
        for index, owner in ((self.by_rule.get(flow.rule, {}), flow.rule), (self.by_mask, None)):
            table = index.get(masks, {})
            if table.get(masked) == key:
                del table[masked]
            if not table:
                index.pop(masks, None)
            if owner is not None and not index:
                self.by_rule.pop(owner, None)
        if masks not in self.by_mask:
            self._mask_views.pop(masks, None)
            self._mask_bits.pop(masks, None)

    def _forget(self, keys: list[tuple[int, int]]) -> list[CacheEntry]:
        gone = []
        for key in keys:
            entry = self.entries.pop(key, None)
            if entry is None:
                continue
            self._unindex(key, entry.flow)
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
                if entry.connection is not None and self.connections is not None:
                    seen_ns = int((now - installed.last_used) * NS_PER_S)
                    if self.connections.refresh(entry.connection, seen_ns):
                        self.stats["ct_refreshes"] += 1
            entry.packets, entry.bytes = installed.packets, installed.bytes
        if self.connections is not None:
            now_ns = int(now * NS_PER_S)
            ended = []
            for key, e in self.entries.items():
                if e.connection is None:
                    continue
                connection = self.connections.get(e.connection)
                if connection is None or not connection.steady or now_ns >= connection.expires_ns:
                    ended.append(key)
            self._delete(ended, "evictions_conn_ended")
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
        # Built now, at policy load, rather than by the first miss after it.
        _ = self.regions.columns
        self.actions = [action_for(r.action) for r in policy.rules]
        """Per rule, the flower action of its cache rules."""

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
            covered = entry.filter.match.cubes()
            assert covered
            # The diff is exact: a cube meeting no changed region keeps the
            # verdict of every packet, so its rule's action is still right.
            if entry.connection is not None:
                covered = tuple(_as_established(c) for c in covered)
            touched = any(
                (both := intersect(c, region)) is not None and is_feasible(HEADER_SPACE, both)
                for region in changed
                for c in covered
            )
            new_rule = self.regions.rule_of(entry.flow.point)
            if touched or new_rule is None:
                doomed.append(key)
            else:
                relabel.append((key, new_rule))
        for key, new_rule in relabel:
            entry = self.entries[key]
            self._unindex(key, entry.flow)
            entry.flow = Megaflow(entry.flow.cube, entry.flow.masks, entry.flow.point, new_rule)
            self._index(key, entry.flow)
        deleted = self._delete(doomed, "revalidation_deletes")
        return len(relabel), deleted

    def forget_connections(self, keys: list[ConnKey]) -> int:
        """Delete the connection rules of ``keys`` (connections revoked by a policy
        update); how many went."""
        gone = set(keys)
        doomed = [k for k, e in self.entries.items() if e.connection in gone]
        return self._delete(doomed, "revalidation_deletes")

    def cached_connections(self) -> int:
        """Connections a cache rule carries now."""
        return sum(1 for e in self.entries.values() if e.connection is not None)

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
            if self.connections is not None:
                if self._adopt_connection(installed, now):
                    adopted += 1
                else:
                    doomed.append(f)
                continue
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
                and f.action == self.actions[rule]
                and all(decides_whole(self.regions, c, rule) for c in f.match.cubes())
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

    def _adopt_connection(self, installed: InstalledFilter, now: float) -> bool:
        """Adopt a connection rule a previous run left, when it is exactly the rule
        this run would install for a steady connection of the table."""
        assert self.connections is not None
        f = installed.filter
        covered = f.match.cube()
        if covered is None or f.prio not in PLAN.cache:
            return False
        point = tuple(s.intervals[0][0] for s in covered.sets)
        found = self.connections.find(Packet(point), int(now * NS_PER_S))
        if found is None or not found[0].steady:
            return False
        flow = self._connection_flow(point)
        if flow is None or self._tuple_match(flow) != f.match:
            return False
        if f.cookie is None or f.cookie.rule != flow.rule:
            return False
        if f.action != self.actions[flow.rule]:
            return False
        if any(p == f.prio and e != f.match.protocol for e, p in self.prio_of.items()):
            return False
        last_seen = now - installed.last_used if installed.last_used is not None else now
        self.prio_of.setdefault(f.match.protocol, f.prio)
        entry = CacheEntry(
            f, flow, now, last_seen, installed.packets, installed.bytes, found[0].key
        )
        self._remember(entry)
        self.next_handle = max(self.next_handle, f.handle + 1)
        return True


def _as_established(c: Cube) -> Cube:
    """``c`` with its state narrowed to established."""
    sets = list(c.sets)
    sets[_STATE_AT] = sets[_STATE_AT] & _ESTABLISHED
    return Cube(tuple(sets))


_VIEW_PINS = tuple(
    (view, tuple((i, v) for i, v in enumerate(view.cube.sets) if not v.is_full()))
    for view in MALFORMED_VIEWS
)
"""Each malformed frame's flower view with the fields it pins (their positions
and values)."""

_MASK_OFFSETS = tuple(sum(_WIDTHS[:i]) for i in range(len(_WIDTHS)))


def packed_masks(masks: Sequence[int]) -> int:
    """A mask signature as one integer, each field's mask at its own offset
    (fields do not overlap, so ANDs and bit counts of the packed signatures are
    those of the fields')."""
    return sum(m << offset for m, offset in zip(masks, _MASK_OFFSETS, strict=True))


MaskView = Callable[[Point], tuple[int, ...]]
"""A point's values under one mask signature, on the fields it keeps."""


def mask_view(masks: Sequence[int]) -> MaskView:
    """The :data:`MaskView` of ``masks``: ``tuple(point[i] & m for each field i
    whose mask m is not 0)``, built from C-level pieces (itemgetter, map) since
    every cache look-up runs it once per installed signature."""
    positions = [i for i, m in enumerate(masks) if m]
    values = [masks[i] for i in positions]
    if not positions:
        return lambda point: ()
    if len(positions) == 1:
        (only,), (mask,) = positions, values
        return lambda point: (point[only] & mask,)
    pick = operator.itemgetter(*positions)
    return lambda point: tuple(map(operator.and_, pick(point), values))
