"""IR policy -> tc-flower filters for a NIC profile (one entry point: :func:`lower`).

Every IR rule is expanded into flower filters that match exactly its packets:
one per IP family and VLAN tagging, per IP protocol (flower keys transport
ports by protocol), and per piece of each field's value set (prefix or
ternary covers, native port ranges where the profile has them). Nothing is
widened: a rule whose expansion the profile cannot hold (a key it lacks, an
action it cannot run, more filters than ``max_expansion``, a full table) is
*partitioned* to the slow path behind a **trap** filter, which may be wider
than the rule because the slow path decides exactly anyway.

The partition is sound by construction: rules are placed in priority order,
each either in hardware or trapped at its own priority, so every
higher-priority rule a hardware rule overlaps is already "there or trapped
above it". When the device is full, one catch-all trap ends the table and
everything below it is the slow path's.

Stateful policies (a rule with a ``state`` clause) on a profile that runs the
ct action take the multi-chain shape OVS offloads to tc: chain 0 keeps the
frame, fragment and malformed-frame traps, then sends every untracked IP
packet (``ct_state -trk``) through ``ct zone 0`` to the ct chain, where the
rules' filters match ``ct_state`` (+trk+new, +trk+est, +trk+rel, +trk+inv;
+trk-new for established, related and invalid at once) and a verdict other
than drop on a new packet runs ``ct commit`` first. IP fragments are always
trapped before the ct action: act_ct would reassemble them, and the IR (and
the slow path) decides fragments one by one. A profile without the ct
action keeps the one-chain shape: it cannot see ``state`` nor commit, so
rules with state clauses, and rules that would let new packets on (which
must commit), stay in the slow path behind traps.

Priorities: tc keeps one flower instance per (chain, priority) with one
protocol, and inside an instance the first matching *mask* wins, not the
first rule. So consecutive filters share a priority only when no packet can
match two of them; otherwise each group gets the next priority. Frames the IR
does not model as classified (double tags, an 802.1ad outer tag) are trapped
first, so flower never decides a packet the slow path would see differently.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from backends.flower.dissector import MALFORMED_VIEWS, DissectorView
from backends.flower.keys import (
    CAPABILITY_OF_FIELD,
    CT_FLAG_NEW,
    CT_FLAG_TRACKED,
    CT_STATE_KEY_BITS,
    FLAG_IS_FRAGMENT,
    FLOWER_KEYS,
    KEY_OF_FIELD,
    Cover,
    FlowerKey,
)
from backends.flower.rules import (
    CT,
    CT_COMMIT,
    ETH_FOR_FAMILY,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ALL,
    ETH_P_IP,
    ETH_P_IPV6,
    PASS,
    ROLE_CT,
    ROLE_CUTOFF,
    ROLE_FRAME,
    ROLE_RULE,
    ROLE_TRAP,
    TRANSPORT_FIELDS,
    TRAP,
    Cookie,
    CookieRole,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    PortKey,
    PortRange,
    action_for,
    frag_states,
    keys_disjoint,
)
from backends.nic_profile import NicProfile, load_profile
from ir.algebra import Cube, intersect, is_feasible
from ir.fields import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NAMES,
    FRAG_NONE,
    HEADER_SPACE,
    STATE_BY_NUMBER,
    STATE_ESTABLISHED,
    STATE_INVALID,
    STATE_NEW,
    STATE_RELATED,
    field_exists,
)
from ir.model import DROP, Policy, Rule
from ir.state_analysis import policy_uses_state
from ir.valueset import ValueSet

DEFAULT_SLOW_CHAIN = 1
# Filters sharing one priority (and so one flower instance): more share a
# lookup, but each joiner is checked against every member.
DEFAULT_GROUP_LIMIT = 32
MAX_PRIO = 0xFFFF

HARDWARE = "hardware"
TRAPPED = "trapped"
SLOW = "slow"
PLACEMENTS = (HARDWARE, TRAPPED, SLOW)

# The profile's key group for each IR field a flower key carries, in header order.
_FIELD_KIND = {
    f.name: CAPABILITY_OF_FIELD[f.name]
    for f in HEADER_SPACE.fields
    if f.name in CAPABILITY_OF_FIELD
}
# Fields that exist only with some IP protocols: a filter keys them per protocol.
_DEPENDENTS = tuple(
    f.name
    for f in HEADER_SPACE.fields
    if f.name in CAPABILITY_OF_FIELD
    and any(root == "ip_proto" for alternative in f.prerequisite for root, _ in alternative)
)
# The keys expand() covers per (family, protocol) slice, in FlowerMatch order.
_PIECE_KEYS = tuple(k for k in FLOWER_KEYS if k.cover not in (Cover.SPLIT, Cover.NONE, Cover.FRAG))
_FRAG_AT = HEADER_SPACE.position("frag")
_STATE_AT = HEADER_SPACE.position("state")
_STATE_WIDTH = HEADER_SPACE.field("state").width
_NOT_NEW = ValueSet.of_values(_STATE_WIDTH, (STATE_ESTABLISHED, STATE_RELATED, STATE_INVALID))
FRAG_STATES = tuple(FRAG_NAMES.values())
_NONE_ONLY = ValueSet.of_value(2, FRAG_NONE)
# Every ip_flags value/mask over the two flags, with the fragment states it
# admits, fewest mask bits first (the cheapest key that does the job).
_FLAG_KEYS = sorted(
    (
        (Masked(v, m), frozenset(s for s in FRAG_STATES if s in frag_states(Masked(v, m))))
        for m in range(4)
        for v in range(4)
        if v & ~m == 0
    ),
    key=lambda km: (km[0].mask.bit_count(), km[0].mask, km[0].value),
)


class FlowerLoweringError(ValueError):
    """The policy cannot be lowered at all (not: a rule stays in the slow path)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the partitioner put one IR rule.

    Attributes:
        rule: position of the rule in ``policy.rules``.
        placement: ``hardware`` (flower decides), ``trapped`` (a trap at the
            rule's priority hands its packets to the slow path) or ``slow`` (below
            the cut-off trap).
        filters: flower filters emitted for the rule.
        reason: why the rule is not in hardware ("" when it is).
    """

    rule: int
    placement: str
    filters: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FlowerProgram:
    """The flower side of one policy.

    Attributes:
        policy: the policy lowered.
        profile: the NIC profile it was partitioned for.
        filters: chain-0 filters in priority order.
        placements: one per IR rule, in rule order.
        slow_chain: the chain traps jump to (where the BPF slow path sits).
        generation: policy generation written into every cookie.
        ct_chain: in the stateful shape, the chain chain 0's ct filters go to
            (the rules' filters are there); None in the one-chain shape.
    """

    policy: Policy
    profile: NicProfile
    filters: tuple[FlowerFilter, ...]
    placements: tuple[Placement, ...]
    slow_chain: int
    generation: int
    ct_chain: int | None = None

    def distinct_masks(self) -> int:
        """How many distinct masks the filters need."""
        return len({f.match.mask_signature() for f in self.filters})

    def counts(self) -> dict[str, int]:
        """IR rules per placement."""
        return {p: sum(1 for x in self.placements if x.placement == p) for p in PLACEMENTS}


@dataclass(frozen=True, slots=True)
class Expansion:
    """The flower matches of one cube, or why there are none that fit."""

    matches: tuple[FlowerMatch, ...]
    problem: str = ""


def ct_shape_for(profile: NicProfile) -> bool:
    """True when ``profile`` can hold the stateful shape's chain 0: the ct action,
    and the ip_flags key that traps fragments before it."""
    return profile.allows_action(CT) and profile.allows_field("ip_flags")


# A lowering entry before priorities: (chain, match, action, cookie role, rule).
_Entry = tuple[int, FlowerMatch, FlowerAction, CookieRole, "int | None"]


def lower(
    policy: Policy,
    profile: NicProfile | None = None,
    *,
    generation: int = 0,
    slow_chain: int = DEFAULT_SLOW_CHAIN,
    group_limit: int = DEFAULT_GROUP_LIMIT,
    stateful: bool | None = None,
    ct_chain: int | None = None,
) -> FlowerProgram:
    """Lower ``policy`` to flower filters partitioned for ``profile`` (software by default).

    ``stateful``: commits are observable (some policy of the host matches on
    state), so a new packet the filters let on must be committed; default:
    this policy matches on state. Stateful lowerings on a profile with the ct
    action take the multi-chain shape, rules in ``ct_chain`` (default: the
    chain after the slow path's).
    """
    profile = profile or load_profile("software")
    if slow_chain < 1:
        raise FlowerLoweringError("the slow-path chain must not be chain 0")
    stateful = policy_uses_state(policy) if stateful is None else stateful
    tracked = stateful and ct_shape_for(profile)
    rule_chain = 0
    if tracked:
        rule_chain = slow_chain + 1 if ct_chain is None else ct_chain
        if rule_chain in (0, slow_chain):
            raise FlowerLoweringError("the ct chain must be neither chain 0 nor the slow path's")
    trap_action = FlowerAction(TRAP, chain=slow_chain)
    # Entries before prio assignment.
    entries: list[_Entry] = [
        (0, FlowerMatch(ETH_P_8021Q, vlan_ethtype=ETH_P_8021Q), trap_action, ROLE_FRAME, None),
        (0, FlowerMatch(ETH_P_8021AD), trap_action, ROLE_FRAME, None),
    ]
    # act_ct reassembles fragments, which the IR decides one by one: in the
    # stateful shape every fragment goes to the slow path before the ct action.
    reads_transport = _policy_reads_transport(policy) or tracked
    frag_traps = profile.allows_field("ip_flags") and reads_transport
    # Fragments are safe in chain 0 when trapped above, or when no rule tells
    # them from whole packets (then flower's view gets the policy's verdict).
    fragments_safe = frag_traps or not reads_transport
    if frag_traps:
        entries.extend((0, m, trap_action, ROLE_FRAME, None) for m in fragment_traps())
    unhandled: list[DissectorView] = []
    for view in MALFORMED_VIEWS:
        if not _decides_otherwise(policy, view.cube):
            continue  # only drops (or nothing) meet it: the slow path's verdict already
        traps = expand(view.cube, profile, fragments_trapped=True)
        if traps.problem or not traps.matches:
            unhandled.append(view)
            continue
        entries.extend((0, m, trap_action, ROLE_FRAME, None) for m in traps.matches)
    cutoff = FlowerMatch(ETH_P_ALL)
    if tracked:
        ct_action = FlowerAction(CT, chain=rule_chain)
        entries.extend((0, m, ct_action, ROLE_CT, None) for m in ct_filters())
        # A packet tracked before flowc's hook (an earlier ct, netfilter) is not
        # what the ct chain's filters were proven for: the slow path decides it.
        entries.append((0, cutoff, trap_action, ROLE_FRAME, None))
    budget = _Budget(profile)
    placements: list[Placement] = []
    cut = False
    if not budget.fits([e[1] for e in entries] + [cutoff]):
        # Not even the traps fit: one catch-all trap, the slow path decides all.
        entries = [(0, cutoff, trap_action, ROLE_CUTOFF, None)]
        cut = True
        rule_chain = 0
    budget.take([e[1] for e in entries] + [cutoff])
    for index, rule in enumerate(policy.rules):
        if cut:
            reason = (
                "below the cut-off trap"
                if index
                else "the fragment and malformed-frame traps do not fit the table"
            )
            placements.append(Placement(index, SLOW, 0, reason))
            continue
        # One part per group of states (new apart when it commits); the parts
        # are disjoint, so those flower decides go first and the traps of the
        # others (wider than their part) after them.
        decided: list[_Entry] = []
        trapped: list[_Entry] = []
        first_problem = ""
        failed = ""
        for part, commit in state_parts(rule, profile, stateful=stateful, tracked=tracked):
            exact = expand(part, profile, fragments_trapped=True, tracked=tracked)
            problem = (
                exact.problem
                or _action_problem(rule, profile, commit=commit, tracked=tracked)
                or _view_problem(rule, exact.matches, unhandled, fragments_safe, profile)
            )
            if not problem and budget.fits(exact.matches):
                budget.take(exact.matches)
                action = action_for(rule.action, commit=commit)
                decided.extend((rule_chain, m, action, ROLE_RULE, index) for m in exact.matches)
                continue
            problem = problem or budget.why_not(exact.matches)
            first_problem = first_problem or problem
            trap = expand(
                trap_cube(part, profile, tracked=tracked),
                profile,
                fragments_trapped=True,
                tracked=tracked,
            )
            if not trap.problem and budget.fits(trap.matches):
                budget.take(trap.matches)
                trapped.extend((rule_chain, m, trap_action, ROLE_TRAP, index) for m in trap.matches)
                continue
            why_trap = trap.problem or budget.why_not(trap.matches)
            failed = f"{problem}; no trap fits either: {why_trap}"
            break
        if failed:
            # What of the rule was placed stays (it is exact or a trap), the
            # cut-off below it sends the rest to the slow path.
            entries.extend(decided + trapped)
            entries.append((rule_chain, cutoff, trap_action, ROLE_CUTOFF, None))
            placements.append(Placement(index, SLOW, 0, failed))
            cut = True
            continue
        entries.extend(decided + trapped)
        if trapped:
            placements.append(Placement(index, TRAPPED, len(decided) + len(trapped), first_problem))
        else:
            placements.append(Placement(index, HARDWARE, len(decided)))
    filters = _assign(entries, policy, profile, generation, group_limit)
    return FlowerProgram(
        policy,
        profile,
        filters,
        tuple(placements),
        slow_chain,
        generation,
        rule_chain if tracked and rule_chain else None,
    )


def ct_filters() -> list[FlowerMatch]:
    """Chain 0's filters sending untracked IP packets (tagged or not) through
    conntrack: ``ct_state -trk``, per IP family."""
    untracked = Masked(0, CT_FLAG_TRACKED)
    out = []
    for eth in (ETH_P_IP, ETH_P_IPV6):
        out.append(FlowerMatch(eth, ct_state=untracked))
        out.append(FlowerMatch(ETH_P_8021Q, vlan_ethtype=eth, ct_state=untracked))
    return out


def state_parts(
    rule: Rule, profile: NicProfile, *, stateful: bool, tracked: bool
) -> list[tuple[Cube, bool]]:
    """The rule's cube cut by connection state into the parts the lowering
    places one by one, each with whether its verdict commits: new packets
    apart when the rule lets them on in a stateful policy (they commit, the
    others do not), and in the ct chain one part per state the profile cannot
    key together with the others, so a device that matches only some states
    (+trk+est) holds those and traps the rest."""
    cube = rule.match.cube
    states = cube.sets[_STATE_AT]
    commits = stateful and rule.action.kind != DROP
    if not tracked:
        # Before a ct action nothing tells states apart: the rule is one part.
        return [(cube, commits and STATE_NEW in states)]
    if not commits and states.is_full():
        return [(cube, False)]
    groups: list[tuple[ValueSet, bool]] = []
    rest = states
    if commits and STATE_NEW in states:
        groups.append((ValueSet.of_value(_STATE_WIDTH, STATE_NEW), True))
        rest = states - ValueSet.of_value(_STATE_WIDTH, STATE_NEW)
    values = [v for lo, hi in rest.intervals for v in range(lo, hi + 1)]
    if values and tracked and not all(profile.allows_state(v) for v in values):
        groups.extend((ValueSet.of_value(_STATE_WIDTH, v), False) for v in values)
    elif values:
        groups.append((rest, False))
    return [(_with_state(cube, s), commit) for s, commit in groups]


def _with_state(c: Cube, states: ValueSet) -> Cube:
    sets = list(c.sets)
    sets[_STATE_AT] = states
    return Cube(tuple(sets))


def fragment_traps() -> list[FlowerMatch]:
    """Filters sending every IP fragment (tagged or not) to the slow path: flower
    reads no transport header of a fragment, the slow path classifies a first
    fragment by its own."""
    frag = Masked(FLAG_IS_FRAGMENT, FLAG_IS_FRAGMENT)
    out = []
    for eth in (ETH_P_IP, ETH_P_IPV6):
        out.append(FlowerMatch(eth, ip_flags=frag))
        out.append(FlowerMatch(ETH_P_8021Q, vlan_ethtype=eth, ip_flags=frag))
    return out


def _policy_reads_transport(policy: Policy) -> bool:
    """Whether some rule tells fragments apart from whole packets (a constraint on
    the fragment state or a transport field); if none does, flower's view of a
    fragment gets the policy's verdict anyway."""
    positions = [HEADER_SPACE.position(n) for n in ("frag", *TRANSPORT_FIELDS)]
    return any(not r.match.cube.sets[i].is_full() for r in policy.rules for i in positions)


def _decides_otherwise(policy: Policy, view: Cube) -> bool:
    """Whether a rule that does not drop meets ``view`` (then flower could give a
    malformed frame that rule's verdict where the slow path drops it)."""
    return any(
        r.action.kind != DROP
        and (both := intersect(r.match.cube, view)) is not None
        and is_feasible(HEADER_SPACE, both)
        for r in policy.rules
    )


def _view_problem(
    rule: Rule,
    matches: tuple[FlowerMatch, ...],
    unhandled: list[DissectorView],
    fragments_safe: bool,
    profile: NicProfile,
) -> str:
    """Why the rule's filters may not decide in chain 0 frames the slow path
    treats apart: fragments (when no trap sends them up first) and malformed
    frames whose view the profile could not trap."""
    if rule.action.kind == DROP and not unhandled and fragments_safe:
        return ""
    for m in matches:
        for c in m.cubes():
            if not fragments_safe:
                fragments = _with_frag(c, _FRAGMENTS)
                if fragments is not None and is_feasible(HEADER_SPACE, fragments):
                    return (
                        f"its filters would decide IP fragments on transport fields flower reads "
                        f"as 0, and profile {profile.name} cannot match ip_flags to trap them"
                    )
            if rule.action.kind == DROP:
                continue
            for view in unhandled:
                both = intersect(c, view.cube)
                if both is not None and is_feasible(HEADER_SPACE, both):
                    return (
                        f"its filters would pass {view.what}, which the slow path drops; "
                        f"profile {profile.name} has no key to trap them"
                    )
    return ""


_FRAGMENTS = ValueSet.of_values(2, (FRAG_FIRST, FRAG_LATER))


def _with_frag(c: Cube, frags: ValueSet) -> Cube | None:
    both = c.sets[_FRAG_AT] & frags
    if both.is_empty():
        return None
    sets = list(c.sets)
    sets[_FRAG_AT] = both
    return Cube(tuple(sets))


def _action_problem(rule: Rule, profile: NicProfile, *, commit: bool, tracked: bool) -> str:
    kind = action_for(rule.action).kind
    if not profile.allows_action(kind):
        return f"action {kind} is not offloaded by profile {profile.name}"
    if commit and not tracked:
        return (
            f"it lets new packets on, which commits their connections, and profile "
            f"{profile.name} has no ct action"
        )
    if commit and not profile.allows_action(CT_COMMIT):
        return f"ct commit (of its new packets) is not offloaded by profile {profile.name}"
    return ""


class _Budget:
    """The device's remaining table entries and masks."""

    def __init__(self, profile: NicProfile) -> None:
        self.profile = profile
        self.rules = 0
        self.masks: set[tuple[object, ...]] = set()

    def fits(self, matches: tuple[FlowerMatch, ...] | list[FlowerMatch]) -> bool:
        new_masks = {m.mask_signature() for m in matches} - self.masks
        return (
            self.rules + len(matches) <= self.profile.max_rules
            and len(self.masks) + len(new_masks) <= self.profile.max_masks
        )

    def why_not(self, matches: tuple[FlowerMatch, ...]) -> str:
        if self.rules + len(matches) > self.profile.max_rules:
            return f"the table is full ({self.profile.max_rules} rules)"
        return f"no free mask ({self.profile.max_masks} masks)"

    def take(self, matches: tuple[FlowerMatch, ...] | list[FlowerMatch]) -> None:
        self.rules += len(matches)
        self.masks |= {m.mask_signature() for m in matches}


def _assign(
    entries: list[_Entry],
    policy: Policy,
    profile: NicProfile,
    generation: int,
    group_limit: int,
) -> tuple[FlowerFilter, ...]:
    """Give entries priorities (sharing one only among disjoint neighbours of one
    protocol) and handles; cookies carry role, generation and rule."""
    next_prios: dict[int, int] = {}
    # (chain, protocol) -> (prio, members) of the newest group of that protocol
    groups: dict[tuple[int, int], tuple[int, list[FlowerMatch]]] = {}
    filters = []
    for number, (chain, match, action, role, rule) in enumerate(entries):
        next_prio = next_prios.get(chain, 1)
        group = groups.get((chain, match.protocol))
        shareable = role in (ROLE_RULE, ROLE_TRAP) and match.protocol != ETH_P_ALL
        if (
            shareable
            and group is not None
            and len(group[1]) < group_limit
            and all(keys_disjoint(match, other) for other in group[1])
        ):
            prio = group[0]
            group[1].append(match)
        else:
            if next_prio > MAX_PRIO:
                raise FlowerLoweringError(
                    f"policy {policy.name}: more than {MAX_PRIO} flower priorities needed"
                )
            prio = next_prio
            next_prios[chain] = next_prio + 1
            groups[(chain, match.protocol)] = (prio, [match])
            # A later filter of another protocol can never join an older group of
            # this one past a newer group of its own, so only the newest group per
            # protocol is kept.
        origin = policy.rules[rule].origin if rule is not None else None
        filters.append(
            FlowerFilter(
                chain=chain,
                prio=prio,
                handle=number + 1,
                match=match,
                action=action,
                flags=profile.install_flags,
                cookie=Cookie(role, generation, rule, number + 1),
                origin=origin,
            )
        )
    return tuple(sorted(filters, key=lambda f: (f.chain, f.prio, f.handle)))


# --------------------------------------------------------------------------- expansion
def _get(c: Cube, name: str) -> ValueSet:
    return c.sets[HEADER_SPACE.position(name)]


def _ternaries(values: ValueSet) -> list[Masked]:
    return [Masked(v, m) for v, m in values.ternary_cover()]


def _prefixes(values: ValueSet) -> list[Masked]:
    return [Masked(v, m) for v, m in values.to_ternaries()]


def _exact_values(values: ValueSet, limit: int) -> list[int] | None:
    if values.size() > limit:
        return None
    return [v for lo, hi in values.intervals for v in range(lo, hi + 1)]


def _port_pieces(values: ValueSet, ranges: bool) -> list[PortKey]:
    """Each interval as one value/mask block when aligned, else a native range
    (lo > 0: the kernel and tc refuse ranges starting at 0), else prefixes."""
    whole = values.as_ternary()
    if whole is not None:
        return [Masked(*whole)]
    pieces: list[PortKey] = []
    for lo, hi in values.intervals:
        block = ValueSet.of_range(16, lo, hi)
        single = block.as_ternary()
        if single is not None:
            pieces.append(Masked(*single))
        elif ranges:
            if lo == 0:
                pieces.append(Masked(0, 0xFFFF))
                lo = 1
            if lo == hi:
                pieces.append(Masked(lo, 0xFFFF))
            else:
                pieces.append(PortRange(lo, hi))
        else:
            pieces.extend(_prefixes(block))
    return pieces


def expand(
    c: Cube, profile: NicProfile, *, fragments_trapped: bool = False, tracked: bool = False
) -> Expansion:
    """The flower matches whose union, as the kernel matches them
    (:meth:`FlowerMatch.cubes`), is exactly the packets of ``c``, or the reason the
    profile cannot hold them (a key it lacks, or more than ``max_expansion``).

    ``fragments_trapped``: no IP fragment reaches these filters (traps above
    them send every fragment to the slow path), so only ``c``'s whole packets
    need matching and the fragment state needs no key.

    ``tracked``: the filters sit behind a ct action, so ``state`` is keyed by
    ct_state; before one, no key can tell states apart.
    """
    limit = profile.max_expansion
    states = _get(c, "state")
    if not states.is_full():
        if not tracked:
            return Expansion((), "state is only known after a ct action")
        for v in (v for lo, hi in states.intervals for v in range(lo, hi + 1)):
            if not profile.allows_state(v):
                return Expansion(
                    (),
                    f"state {STATE_BY_NUMBER[v]} (ct_state +trk+{_CT_WORD[v]}) is not matched "
                    f"by profile {profile.name}",
                )
    if fragments_trapped:
        if FRAG_NONE not in _get(c, "frag"):
            return Expansion(())
        sets = list(c.sets)
        sets[_FRAG_AT] = HEADER_SPACE.field("frag").full
        c = Cube(tuple(sets))
    for name, kind in _FIELD_KIND.items():
        if name == "frag":
            continue  # keyed per slice (_frag_pieces), only where it must be
        if not _get(c, name).is_full() and not profile.allows_field(kind):
            return Expansion((), f"{name} is not matched by profile {profile.name}")
    out: list[FlowerMatch] = []
    for family in (FAMILY_IPV4, FAMILY_IPV6):
        if family not in _get(c, "family"):
            continue
        eth = ETH_FOR_FAMILY[family]
        for tagged in (0, 1):
            if tagged not in _get(c, "vlan_tagged"):
                continue
            vlan_set = _get(c, "vlan_id")
            vlan_ids: list[int | None]
            if not tagged:
                if 0 not in vlan_set:
                    continue
                vlan_ids = [None]
            elif vlan_set.is_full():
                vlan_ids = [None]
            else:
                exact = _exact_values(vlan_set, limit)
                if exact is None:
                    return _too_many(vlan_set.size(), limit, "VLAN ids")
                vlan_ids = list(exact)
            proto_set = _get(c, "ip_proto")
            protos: list[int | None]
            if proto_set.is_full():
                protos = [None]
            else:
                exact = _exact_values(proto_set, limit)
                if exact is None:
                    return _too_many(proto_set.size(), limit, "IP protocols")
                protos = list(exact)
            for proto in protos:
                pieces = _field_pieces(c, family, proto, profile)
                if pieces is None:
                    continue
                frag_keys = [] if fragments_trapped else _frag_pieces(c, family, proto, pieces)
                if isinstance(frag_keys, str):
                    return Expansion((), frag_keys)
                if frag_keys and not profile.allows_field("ip_flags"):
                    return Expansion(
                        (),
                        f"the fragment state needs ip_flags, not matched by profile {profile.name}",
                    )
                if frag_keys:
                    pieces["ip_flags"] = list(frag_keys)
                total = len(vlan_ids) * _product_size(pieces.values())
                if len(out) + total > limit:
                    return _too_many(len(out) + total, limit, "filters")
                keys = list(pieces)
                for vlan_id in vlan_ids:
                    for combo in itertools.product(*(pieces[k] for k in keys)):
                        kw = dict(zip(keys, combo, strict=True))
                        if tagged:
                            out.append(
                                FlowerMatch(
                                    ETH_P_8021Q,
                                    vlan_id=vlan_id,
                                    vlan_ethtype=eth,
                                    ip_proto=proto,
                                    **kw,  # type: ignore[arg-type]
                                )
                            )
                        else:
                            out.append(FlowerMatch(eth, ip_proto=proto, **kw))  # type: ignore[arg-type]
    return Expansion(tuple(out))


def _too_many(n: int, limit: int, what: str) -> Expansion:
    return Expansion((), f"expands to {n} {what} (profile limit {limit} filters per rule)")


def _product_size(lists: object) -> int:
    size = 1
    for pieces in lists:  # type: ignore[attr-defined]
        size *= len(pieces)
    return size


def _field_pieces(
    c: Cube, family: int, proto: int | None, profile: NicProfile
) -> dict[str, list[object]] | None:
    """Per flower key, the alternatives (key values) for one (family, proto) slice
    of the cube; None when the slice is empty. Keys with one wildcard are left out."""
    pieces: dict[str, list[object]] = {}
    for dependent in _DEPENDENTS:
        values = _get(c, dependent)
        if values.is_full():
            continue
        if not field_exists(dependent, family, proto):
            # The field is absent here and so reads 0.
            if 0 not in values:
                return None
            continue
    for flower_key in _PIECE_KEYS:
        name = flower_key.field_for(family)
        assert name is not None
        values = _get(c, name)
        if not values.is_full() and field_exists(name, family, proto):
            pieces[flower_key.name] = _key_cover(flower_key, family, values, profile)
    return pieces


def _frag_pieces(
    c: Cube, family: int, proto: int | None, pieces: dict[str, list[object]]
) -> list[Masked] | str:
    """The ``ip_flags`` keys one (family, protocol) slice of ``c`` needs (none when
    the other keys already match exactly ``c``'s fragment states), or why no set
    of filters can.

    In a fragment the dissector reads every transport field as 0: a filter with
    transport keys admitting 0 matches every fragment of its other keys, one
    with a transport key excluding 0 none. So a state needs excluding by a key
    only where the keys would match it and ``c`` has none of it.
    """
    frags = _get(c, "frag")
    transport = [
        name
        for name in TRANSPORT_FIELDS
        if field_exists(name, family, proto) and not _get(c, name).is_full()
    ]
    zero_matches = all(0 in _get(c, name) for name in transport)
    wanted: set[int] = set()
    unwanted: set[int] = set()
    for state, cared in (
        (FRAG_NONE, True),
        (FRAG_LATER, zero_matches),
        (FRAG_FIRST, zero_matches),
    ):
        if state == FRAG_FIRST and transport and state in frags:
            return (
                "first fragments carry ports/flags/type the kernel's flower does not read; "
                "only the slow path can decide them"
            )
        if not cared:
            continue
        (wanted if state in frags else unwanted).add(state)
    if not unwanted:
        return []
    for key, admitted in _FLAG_KEYS:
        if wanted <= admitted and not unwanted & admitted:
            return [key]
    # No single key: one per wanted state (each state has an exact key).
    return [
        next(k for k, admitted in _FLAG_KEYS if admitted == {state}) for state in sorted(wanted)
    ]


def _key_cover(
    flower_key: FlowerKey, family: int, values: ValueSet, profile: NicProfile
) -> list[object]:
    """Keys of ``flower_key`` whose union is exactly ``values`` of its IR field."""
    cover = flower_key.cover
    if cover == Cover.TERNARY:
        shift = flower_key.ir_shift
        return [Masked(m.value << shift, m.mask << shift) for m in _ternaries(values)]
    if cover == Cover.ADDRESS:
        by_masks: Callable[[ValueSet], list[Masked]] = (
            _prefixes if profile.address_masks == "prefix" else _ternaries
        )
        return list(by_masks(values))
    if cover == Cover.PORT:
        return list(_port_pieces(values, profile.port_ranges))
    if cover == Cover.VALUES:
        full = flower_key.family_variant(family).full_mask
        return [Masked(v, full) for lo, hi in values.intervals for v in range(lo, hi + 1)]
    if cover == Cover.CT:
        if values == _NOT_NEW:
            return [Masked(CT_FLAG_TRACKED, CT_FLAG_TRACKED | CT_FLAG_NEW)]  # +trk-new
        bits = [CT_STATE_KEY_BITS[v] for lo, hi in values.intervals for v in range(lo, hi + 1)]
        return [Masked(b, b) for b in bits]
    raise FlowerLoweringError(f"flower key {flower_key.name}: no cover for {cover}")


# ct_state's word for each IR state, as tc spells the flag.
_CT_WORD = {STATE_NEW: "new", STATE_ESTABLISHED: "est", STATE_RELATED: "rel", STATE_INVALID: "inv"}


def trap_cube(c: Cube, profile: NicProfile, *, tracked: bool = False) -> Cube:
    """A cube containing ``c`` that expands to at most one filter per (family,
    tagging): fields the profile lacks or that need several keys are widened to
    one covering ternary, or dropped. Only ever used for traps. ``tracked``
    as for :func:`expand` (before a ct action, state is always widened)."""
    sets = list(c.sets)

    def widen(name: str, values: ValueSet) -> None:
        sets[HEADER_SPACE.position(name)] = values

    def full(name: str) -> None:
        widen(name, HEADER_SPACE.field(name).full)

    for name, kind in _FIELD_KIND.items():
        values = _get(c, name)
        if values.is_full():
            continue
        if not profile.allows_field(kind):
            full(name)
            continue
        cover = KEY_OF_FIELD[name].cover
        if cover == Cover.CT:
            single = values.size() == 1 and profile.allows_state(values.intervals[0][0])
            if not (tracked and single):
                full(name)
            continue
        if cover in (Cover.SPLIT, Cover.VALUES):
            if values.size() != 1:
                full(name)
            continue
        if cover == Cover.ADDRESS:
            # The covering prefix: a wide non-prefix ternary would fragment.
            lo, hi = values.hull()
            common = HEADER_SPACE.field(name).width - (lo ^ hi).bit_length()
            widen(name, ValueSet.of_prefix(values.width, lo, common))
            continue
        widen(name, ValueSet.of_ternary(values.width, *values.covering_ternary()))
    if sets[HEADER_SPACE.position("ip_proto")].is_full():
        for name in _DEPENDENTS:
            full(name)
    return Cube(tuple(sets))


def describe(program: FlowerProgram) -> list[str]:
    """Human lines: what stayed out of hardware and why (for `flowc compile` stderr)."""
    lines = []
    for p in program.placements:
        if p.placement == HARDWARE:
            continue
        rule = program.policy.rules[p.rule]
        lines.append(f"{rule.origin}: rule kept in the slow path ({p.placement}): {p.reason}")
    return lines


__all__ = [
    "HARDWARE",
    "PASS",
    "SLOW",
    "TRAPPED",
    "Expansion",
    "FlowerLoweringError",
    "FlowerProgram",
    "Placement",
    "describe",
    "expand",
    "lower",
    "trap_cube",
]
