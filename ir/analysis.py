"""Rule-level analyses over a policy: overlap, shadowing and redundancy.

A DSL rule may have become several IR rules (one per IP family); they share an
origin and are analysed as one *rule group*. A group is **shadowed** when
every packet it matches is already decided by earlier rules, so it can never
decide anything. A group is **redundant** when removing it changes no
verdict: every packet it decides would get the same action from the rules
after it. The findings are chosen so that acting on all of them at once is
safe: no group is called redundant because of a rule that is itself
shadowed or redundant (see :func:`analyse`).

Finding which earlier rules can overlap a rule is the expensive part at
10,000 rules, so :class:`OverlapIndex` prefilters with each cube's bounding
box (per-field hull), rank-compressed into a numpy array, before the exact
cube algebra runs on the few candidates.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ir.algebra import (
    Cube,
    Locator,
    covered_by,
    intersect,
    is_feasible,
    region_is_empty,
    uncovered_witness,
    witness,
)
from ir.algebra import subtract as _subtract
from ir.fields import HEADER_SPACE, Space
from ir.model import Policy, Rule
from ir.packet import Point

# Residual regions larger than this are given up on (reported, not guessed).
FRAGMENT_LIMIT = 5000
# Cover lists longer than this are searched through the box index, not linearly.
LOCATOR_MIN = 32


class OverlapIndex:
    """Bounding-box prefilter: which cubes might intersect cube ``i``."""

    def __init__(self, space: Space, cubes: Sequence[Cube]) -> None:
        n, width = len(cubes), len(space.fields)
        self.cubes = cubes
        self.lo = np.zeros((n, width), dtype=np.int64)
        self.hi = np.zeros((n, width), dtype=np.int64)
        self.endpoints: list[list[int]] = []
        for j in range(width):
            hulls = [c.sets[j].hull() if c.sets[j].intervals else (1, 0) for c in cubes]
            # Rank-compress so 128-bit values fit in int64 while order (and so
            # interval overlap) is preserved exactly.
            endpoints = sorted({v for h in hulls for v in h})
            ranks = {v: k for k, v in enumerate(endpoints)}
            self.endpoints.append(endpoints)
            self.lo[:, j] = [ranks[h[0]] for h in hulls]
            self.hi[:, j] = [ranks[h[1]] for h in hulls]
        # Field-major copies for :meth:`candidates`, which narrows field by
        # field starting with the fields of most distinct bounds (addresses):
        # after one or two fields few boxes are left to test.
        self.lo_by_field = np.ascontiguousarray(self.lo.T)
        self.hi_by_field = np.ascontiguousarray(self.hi.T)
        self.narrowing = sorted(range(width), key=lambda j: -len(self.endpoints[j]))

    def locator(self, members: Sequence[int]) -> Callable[[tuple[int, ...]], int | None]:
        """A fast ``first_containing`` over the cubes ``members`` (by position in it).

        A packet's value v lies in a hull [lo, hi] iff rank(lo) <= (rank of the
        largest endpoint <= v) and rank(hi) >= (rank of the smallest endpoint >= v);
        the boxes hit are then checked exactly, in order.
        """
        index = np.asarray(members, dtype=np.int64)
        lo, hi = self.lo[index], self.hi[index]
        cubes = [self.cubes[m] for m in members]

        def locate(point: tuple[int, ...]) -> int | None:
            below = [bisect_right(e, v) - 1 for e, v in zip(self.endpoints, point, strict=True)]
            above = [bisect_left(e, v) for e, v in zip(self.endpoints, point, strict=True)]
            hit = np.all((lo <= np.asarray(below)) & (hi >= np.asarray(above)), axis=1)
            for k in np.flatnonzero(hit):
                if cubes[k].contains(point):
                    return int(k)
            return None

        return locate

    def candidates_of(self, c: Cube, start: int, stop: int) -> list[int]:
        """Indexes in ``[start, stop)`` whose box meets the box of any cube ``c``."""
        return self._box_query(c, start, stop, hold=False)

    def containers_of(self, c: Cube, start: int, stop: int) -> list[int]:
        """Indexes in ``[start, stop)`` whose box holds the box of cube ``c``."""
        return self._box_query(c, start, stop, hold=True)

    def _box_query(self, c: Cube, start: int, stop: int, *, hold: bool) -> list[int]:
        """Boxes in ``[start, stop)`` that meet (or, with ``hold``, hold) ``c``'s box.

        A box [lo, hi] meets [a, b] iff lo <= b and hi >= a, and holds it iff
        lo <= a and hi >= b; values outside the endpoint list compare by rank
        as in :meth:`locator`.
        """
        if stop <= start:
            return []
        below, above = [], []
        for endpoints, values in zip(self.endpoints, c.sets, strict=True):
            lo, hi = values.hull()
            below.append(bisect_right(endpoints, lo if hold else hi) - 1)
            above.append(bisect_left(endpoints, hi if hold else lo))
        lo_ranks, hi_ranks = self.lo[start:stop], self.hi[start:stop]
        hit = np.all((lo_ranks <= np.asarray(below)) & (hi_ranks >= np.asarray(above)), axis=1)
        return [start + int(k) for k in np.flatnonzero(hit)]

    def candidates(self, i: int, start: int, stop: int) -> list[int]:
        """Indexes in ``[start, stop)`` whose box meets cube ``i``'s box."""
        if stop <= start:
            return []
        hits = np.arange(stop - start)
        for j in self.narrowing:
            lo, hi = self.lo_by_field[j, start:stop][hits], self.hi_by_field[j, start:stop][hits]
            hits = hits[(lo <= self.hi[i, j]) & (hi >= self.lo[i, j])]
            if not len(hits):
                return []
        return [start + int(k) for k in hits]


@dataclass(frozen=True, slots=True)
class Shadowed:
    """A rule group no packet can reach.

    Attributes:
        rule: the first IR rule of the shadowed group.
        by: earlier rules covering it; a single rule when one covers it alone.
            Rules that stay when every finding is acted on are preferred.
        then_by: when some rule of ``by`` is itself removable (a redundant
            finding), the rules that decide the group's packets once every
            finding is removed; empty otherwise.
    """

    rule: Rule
    by: tuple[Rule, ...]
    then_by: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class Redundant:
    """A rule group whose removal, together with every other finding, changes no verdict.

    Attributes:
        rule: the first IR rule of the group.
        decided_by: the later rules that take over its packets once every
            finding is removed (each decides at least one of them).
    """

    rule: Rule
    decided_by: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class GaveUp:
    """A rule group the analysis did not finish (residual region too fragmented)."""

    rule: Rule


@dataclass(frozen=True, slots=True)
class Findings:
    """Everything :func:`analyse` found.

    The shadowed and redundant groups together are a set that can be removed
    at once without changing any verdict (see :func:`analyse`).
    """

    shadowed: tuple[Shadowed, ...]
    redundant: tuple[Redundant, ...]
    gave_up: tuple[GaveUp, ...]


def rule_groups(policy: Policy) -> list[list[int]]:
    """Indexes of IR rules grouped by DSL origin, in priority order."""
    groups: list[list[int]] = []
    for i, rule in enumerate(policy.rules):
        if groups and policy.rules[groups[-1][0]].origin == rule.origin:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def analyse(policy: Policy, *, redundancy: bool = True, space: Space = HEADER_SPACE) -> Findings:
    """Find shadowed and (optionally) redundant rule groups of ``policy``.

    The findings are safe to act on together: removing every shadowed and
    every redundant group at once leaves every verdict unchanged, and no
    further group could then be removed alone (a maximal set, found greedily).

    1. Shadowed groups are those no packet reaches in the policy as written.
       Removing one leaves every other rule's region as it was, so all of them
       go together (the default is reported but never counted as removed).
    2. The remaining groups are then tried from the last to the first: one is
       redundant when removing it from what is left changes no verdict.
       Going backwards means the later rules that take over its packets are
       final when it is judged, and the earlier rules (still all there)
       cover exactly what they covered in the policy as written; a group kept
       because some packet would change verdict stays unremovable when
       earlier groups go later.
    """
    rules = policy.rules
    cubes = [r.match.cube for r in rules]
    index = OverlapIndex(space, cubes)
    gave_up: list[GaveUp] = []
    # IR rules of shadowed groups (never the default): removing them leaves
    # the union of the rules before any position unchanged, so they are left
    # out of every cover below.
    dead: set[int] = set()
    shadow_groups: list[tuple[list[int], list[int]]] = []
    live: list[list[int]] = []
    for group in rule_groups(policy):
        first = group[0]
        # Boxes that meet the group's boxes; a box hit that is no real overlap only
        # costs a failed containment test, so the exact filter waits for reporting.
        earlier = sorted({c for i in group for c in index.candidates(i, 0, first) if c not in dead})
        answers = [_escape(space, index, i, earlier) for i in group]
        if None in answers:
            gave_up.append(GaveUp(rules[first]))
        elif all(answers):
            shadow_groups.append((group, earlier))
            if not rules[first].is_default:
                dead.update(group)
        elif not rules[first].is_default:
            live.append(group)
    removed = set(dead)
    redundant: list[Redundant] = []
    if redundancy:
        # Last position of each action: a rule whose action no later rule has
        # cannot be redundant, which skips most proofs on policies with many
        # distinct actions (such as one mark per rule).
        last_with_action: dict[object, int] = {}
        for i, r in enumerate(rules):
            last_with_action[r.action] = i
        for group in reversed(live):
            if last_with_action[rules[group[0]].action] <= group[-1]:
                continue
            verdict = _later_decides_same(space, policy, group, index, removed)
            if verdict is None:
                gave_up.append(GaveUp(rules[group[0]]))
            elif verdict:
                removed.update(group)
                redundant.append(Redundant(rules[group[0]], verdict))
        redundant.reverse()
    shadowed = [
        s
        for group, earlier in shadow_groups
        if (s := _name_shadowers(space, policy, group, earlier, index, removed)) is not None
    ]
    gave_up.sort(key=lambda g: g.rule.priority)
    return Findings(tuple(shadowed), tuple(redundant), tuple(gave_up))


def _escape(
    space: Space, index: OverlapIndex, i: int, earlier: Sequence[int], avoid: Sequence[Cube] = ()
) -> bool | None:
    """True when cube ``i`` lies in the union of cubes ``earlier`` (and ``avoid``),
    False when some packet escapes, None when the search gave up."""
    settled, point = _escape_witness(space, index, i, earlier, avoid)
    if not settled:
        return None
    return point is None


def _escape_witness(
    space: Space, index: OverlapIndex, i: int, earlier: Sequence[int], avoid: Sequence[Cube] = ()
) -> tuple[bool, Point | None]:
    """A packet of cube ``i`` outside the cubes ``earlier`` and ``avoid``, as
    :func:`~ir.algebra.uncovered_witness` answers (the witness-driven search).

    ``avoid`` cubes come first in the cover and are tried linearly (they are
    few); the earlier cubes go through the box index when there are many.
    """
    cubes = index.cubes
    cover = [*avoid, *(cubes[c] for c in earlier)]
    if len(earlier) <= LOCATOR_MIN:
        return uncovered_witness(space, cubes[i], cover, FRAGMENT_LIMIT)
    through_index = index.locator(earlier)
    skip = len(avoid)

    def locate(point: Point) -> int | None:
        for k, a in enumerate(avoid):
            if a.contains(point):
                return k
        hit = through_index(point)
        return None if hit is None else skip + hit

    found: Locator = locate
    return uncovered_witness(space, cubes[i], cover, FRAGMENT_LIMIT, found)


@dataclass(frozen=True, slots=True)
class DecidingWitnesses:
    """The answer of :func:`deciding_witnesses`; rules by index in the list searched.

    Attributes:
        witnesses: (packet, rule) for every rule that decides some packet
            outside ``avoid``: the rule is the first match of that packet.
        shadowed: rules proven to decide no packet (covered by earlier rules).
        avoided: rules that decide packets, but only packets inside ``avoid``.
        gave_up: rules whose search hit the fragment limit, settled neither way.
    """

    witnesses: tuple[tuple[Point, int], ...]
    shadowed: tuple[int, ...]
    avoided: tuple[int, ...]
    gave_up: tuple[int, ...]


def deciding_witnesses(
    cubes: Sequence[Cube], *, avoid: Sequence[Cube] = (), space: Space = HEADER_SPACE
) -> DecidingWitnesses:
    """One packet per rule (cube, first match wins) that the rule decides, or a
    proof that it decides none.

    The same witness-driven search :func:`analyse` runs for shadowing, per
    rule: a packet of the rule's cube that no earlier rule holds is a packet
    the rule decides; when the earlier cubes cover it the rule is shadowed.
    Rules proven shadowed are left out of every later cover (their cubes add
    nothing to the union before any position), which keeps covers short.
    Packets in ``avoid`` (say, ones no frame can carry) are never chosen; a
    rule whose decided packets all lie there is told apart from a shadowed
    one by a second search without ``avoid``.
    """
    index = OverlapIndex(space, cubes)
    dead: set[int] = set()
    witnesses: list[tuple[Point, int]] = []
    shadowed: list[int] = []
    avoided: list[int] = []
    gave_up: list[int] = []
    for i in range(len(cubes)):
        earlier = [c for c in index.candidates(i, 0, i) if c not in dead]
        settled, point = _escape_witness(space, index, i, earlier, avoid)
        if not settled:
            gave_up.append(i)
        elif point is not None:
            witnesses.append((point, i))
        else:
            answer = _escape(space, index, i, earlier) if avoid else True
            if answer is None:
                gave_up.append(i)
            elif answer:
                shadowed.append(i)
                dead.add(i)
            else:
                avoided.append(i)
    return DecidingWitnesses(tuple(witnesses), tuple(shadowed), tuple(avoided), tuple(gave_up))


def _meets(space: Space, a: Cube, b: Cube) -> bool:
    both = intersect(a, b)
    return both is not None and is_feasible(space, both)


def _name_shadowers(
    space: Space,
    policy: Policy,
    group: list[int],
    earlier: list[int],
    index: OverlapIndex,
    removed: set[int],
) -> Shadowed | None:
    """The finding for a shadowed group, naming rules that stay where they suffice.

    One earlier rule covering the group alone is named when there is one
    (only a rule whose box holds the group's boxes can), one that stays
    preferred; else every earlier rule that overlaps it. None for a default
    that only removed rules keep from being reached: it is reached once they
    go, so calling it unreached would contradict their findings.
    """
    rules = policy.rules
    cubes = [rules[i].match.cube for i in group]
    holders = set(earlier)
    for x in cubes:
        holders.intersection_update(index.containers_of(x, 0, group[0]))
    single = [
        c
        for c in sorted(holders)
        if all(covered_by(space, x, [rules[c].match.cube]) is True for x in cubes)
    ]
    kept_single = [c for c in single if c not in removed]
    if kept_single:
        return Shadowed(rules[group[0]], (rules[kept_single[0]],))
    overlapping = [c for c in earlier if any(_meets(space, x, rules[c].match.cube) for x in cubes)]
    kept = [c for c in overlapping if c not in removed]
    kept_cubes = [rules[c].match.cube for c in kept]
    if all(covered_by(space, x, kept_cubes, FRAGMENT_LIMIT) is True for x in cubes):
        return Shadowed(rules[group[0]], tuple(rules[c] for c in kept))
    if rules[group[0]].is_default:
        return None
    by = (rules[single[0]],) if single else tuple(rules[c] for c in overlapping)
    others = sorted(
        {
            c
            for i in group
            for c in index.candidates(i, 0, len(rules))
            if c not in removed and c not in group
        }
    )
    deciders = _deciders(space, cubes, others, rules)
    then_by = tuple(rules[c] for c in deciders) if deciders is not None else ()
    return Shadowed(rules[group[0]], by, then_by)


def _deciders(
    space: Space, cubes: Sequence[Cube], others: Sequence[int], rules: Sequence[Rule]
) -> list[int] | None:
    """Which of ``others`` (ascending) decide some packet of ``cubes`` first.

    A sweep in priority order: a rule that meets what is left of the region
    decides those packets, and its cube is taken out of the rest. None when
    the rest grows past the fragment limit or some packet is left to none.
    """
    found: list[int] = []
    for c in cubes:
        residual = [c]
        for k in others:
            if not residual:
                break
            other = rules[k].match.cube
            if any(_meets(space, piece, other) for piece in residual):
                if k not in found:
                    found.append(k)
                residual = [p for piece in residual for p in _subtract(space, piece, other)]
                if len(residual) > FRAGMENT_LIMIT:
                    return None
        if not region_is_empty(space, residual):
            return None
    return sorted(found)


def _later_decides_same(
    space: Space,
    policy: Policy,
    group: list[int],
    index: OverlapIndex,
    removed: set[int],
) -> tuple[Rule, ...] | None:
    """The later rules taking over the group's packets when all of them give its action.

    Rules in ``removed`` are treated as gone. The group is redundant iff, for
    every later rule ``t`` with another action, each packet of (group ∩ t)
    is taken first by an earlier rule or by a later rule before ``t`` with
    the group's action. Returns () when some packet would change verdict,
    None when a question was too fragmented.
    """
    rules = policy.rules
    action = rules[group[0]].action
    first, last = group[0], group[-1]
    earlier = sorted({c for i in group for c in index.candidates(i, 0, first) if c not in removed})
    earlier_cubes = [rules[c].match.cube for c in earlier]
    later = sorted(
        {c for i in group for c in index.candidates(i, last + 1, len(rules)) if c not in removed}
    )
    same: list[Cube] = []
    same_touching: list[tuple[int, list[Cube]]] = []
    for t in later:
        other = rules[t]
        touching = [
            x
            for x in (intersect(rules[i].match.cube, other.match.cube) for i in group)
            if x is not None and is_feasible(space, x)
        ]
        if not touching:
            continue
        if other.action == action:
            same.append(other.match.cube)
            same_touching.append((t, touching))
            continue
        for x in touching:
            answer = covered_by(space, x, earlier_cubes + same, FRAGMENT_LIMIT)
            if answer is None:
                return None
            if not answer:
                return ()
    # Name the later rules that really take some of its packets: those whose
    # overlap with it is not all taken first by the earlier rules or by a later
    # one before them (rules of another action take none, or it would not be
    # redundant). A question too fragmented to settle names the rule anyway.
    deciders: list[Rule] = []
    for k, (t, touching) in enumerate(same_touching):
        cover = earlier_cubes + same[:k]
        if any(covered_by(space, x, cover, FRAGMENT_LIMIT) is not True for x in touching):
            deciders.append(rules[t])
    return tuple(deciders)


def region_witnesses(
    policy: Policy, *, per_rule: int = 32, space: Space = HEADER_SPACE
) -> list[tuple[tuple[int, ...], Rule]]:
    """Packets in the regions of the policy's partition, with the rule deciding each.

    A rule's region is its cube minus every earlier rule. With ``per_rule`` 1
    each non-empty region gets one witness, found witness-first (cheap even at
    10,000 rules); with more, the region is cut into cubes and each cube (up to
    ``per_rule``) gets one, which covers every shape of a fragmented region.
    """
    rules = policy.rules
    cubes = [r.match.cube for r in rules]
    index = OverlapIndex(space, cubes)
    out: list[tuple[tuple[int, ...], Rule]] = []
    for i, rule in enumerate(rules):
        earlier = [cubes[c] for c in index.candidates(i, 0, i)]
        if per_rule == 1:
            _settled, point = uncovered_witness(space, cubes[i], earlier, FRAGMENT_LIMIT)
            if point is not None:
                out.append((point, rule))
            continue
        region = [cubes[i]]
        for other in earlier:
            region = [p for piece in region for p in _subtract(space, piece, other)]
            if not region:
                break
            if len(region) > FRAGMENT_LIMIT:
                region = region[:per_rule]
        for piece in region[:per_rule]:
            point = witness(space, piece)
            if point is not None:
                out.append((point, rule))
    return out
