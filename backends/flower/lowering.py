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

from backends.flower.keys import (
    CAPABILITY_OF_FIELD,
    FLOWER_KEYS,
    KEY_OF_FIELD,
    Cover,
    FlowerKey,
)
from backends.flower.rules import (
    ETH_FOR_FAMILY,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ALL,
    PASS,
    ROLE_CUTOFF,
    ROLE_FRAME,
    ROLE_RULE,
    ROLE_TRAP,
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
    keys_disjoint,
)
from backends.nic_profile import NicProfile, load_profile
from ir.algebra import Cube
from ir.fields import FAMILY_IPV4, FAMILY_IPV6, HEADER_SPACE, field_exists
from ir.model import Policy, Rule
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
_PIECE_KEYS = tuple(k for k in FLOWER_KEYS if k.cover not in (Cover.SPLIT, Cover.NONE))


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
    """

    policy: Policy
    profile: NicProfile
    filters: tuple[FlowerFilter, ...]
    placements: tuple[Placement, ...]
    slow_chain: int
    generation: int

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


def lower(
    policy: Policy,
    profile: NicProfile | None = None,
    *,
    generation: int = 0,
    slow_chain: int = DEFAULT_SLOW_CHAIN,
    group_limit: int = DEFAULT_GROUP_LIMIT,
) -> FlowerProgram:
    """Lower ``policy`` to flower filters partitioned for ``profile`` (software by default)."""
    profile = profile or load_profile("software")
    if slow_chain < 1:
        raise FlowerLoweringError("the slow-path chain must not be chain 0")
    trap_action = FlowerAction(TRAP, chain=slow_chain)
    # Entries before prio assignment: (match, action, cookie role, rule index).
    entries: list[tuple[FlowerMatch, FlowerAction, CookieRole, int | None]] = [
        (FlowerMatch(ETH_P_8021Q, vlan_ethtype=ETH_P_8021Q), trap_action, ROLE_FRAME, None),
        (FlowerMatch(ETH_P_8021AD), trap_action, ROLE_FRAME, None),
    ]
    cutoff = FlowerMatch(ETH_P_ALL)
    budget = _Budget(profile)
    budget.take([e[0] for e in entries] + [cutoff])
    placements: list[Placement] = []
    cut = False
    for index, rule in enumerate(policy.rules):
        if cut:
            placements.append(Placement(index, SLOW, 0, "below the cut-off trap"))
            continue
        exact = expand(rule.match.cube, profile)
        problem = exact.problem or _action_problem(rule, profile)
        if not problem and budget.fits(exact.matches):
            budget.take(exact.matches)
            entries.extend((m, action_for(rule.action), ROLE_RULE, index) for m in exact.matches)
            placements.append(Placement(index, HARDWARE, len(exact.matches)))
            continue
        if not problem:
            problem = budget.why_not(exact.matches)
        trap = expand(trap_cube(rule.match.cube, profile), profile)
        if not trap.problem and budget.fits(trap.matches):
            budget.take(trap.matches)
            entries.extend((m, trap_action, ROLE_TRAP, index) for m in trap.matches)
            placements.append(Placement(index, TRAPPED, len(trap.matches), problem))
            continue
        entries.append((cutoff, trap_action, ROLE_CUTOFF, None))
        why_trap = trap.problem or budget.why_not(trap.matches)
        placements.append(Placement(index, SLOW, 0, f"{problem}; no trap fits either: {why_trap}"))
        cut = True
    filters = _assign(entries, policy, profile, generation, group_limit)
    return FlowerProgram(policy, profile, filters, tuple(placements), slow_chain, generation)


def _action_problem(rule: Rule, profile: NicProfile) -> str:
    kind = action_for(rule.action).kind
    if profile.allows_action(kind):
        return ""
    return f"action {kind} is not offloaded by profile {profile.name}"


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
    entries: list[tuple[FlowerMatch, FlowerAction, CookieRole, int | None]],
    policy: Policy,
    profile: NicProfile,
    generation: int,
    group_limit: int,
) -> tuple[FlowerFilter, ...]:
    """Give entries priorities (sharing one only among disjoint neighbours of one
    protocol) and handles; cookies carry role, generation and rule."""
    next_prio = 1
    # protocol -> (prio, members) of the newest group of that protocol
    groups: dict[int, tuple[int, list[FlowerMatch]]] = {}
    filters = []
    for number, (match, action, role, rule) in enumerate(entries):
        group = groups.get(match.protocol)
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
            next_prio += 1
            groups[match.protocol] = (prio, [match])
            # A later filter of another protocol can never join an older group of
            # this one past a newer group of its own, so only the newest group per
            # protocol is kept.
        origin = policy.rules[rule].origin if rule is not None else None
        filters.append(
            FlowerFilter(
                chain=0,
                prio=prio,
                handle=number + 1,
                match=match,
                action=action,
                flags=profile.install_flags,
                cookie=Cookie(role, generation, rule, number + 1),
                origin=origin,
            )
        )
    return tuple(sorted(filters, key=lambda f: (f.prio, f.handle)))


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


def expand(c: Cube, profile: NicProfile) -> Expansion:
    """The flower matches whose union is exactly the packets of ``c``, or the reason
    the profile cannot hold them (a key it lacks, or more than ``max_expansion``)."""
    limit = profile.max_expansion
    for name, kind in _FIELD_KIND.items():
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
    raise FlowerLoweringError(f"flower key {flower_key.name}: no cover for {cover}")


def trap_cube(c: Cube, profile: NicProfile) -> Cube:
    """A cube containing ``c`` that expands to at most one filter per (family,
    tagging): fields the profile lacks or that need several keys are widened to
    one covering ternary, or dropped. Only ever used for traps."""
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
