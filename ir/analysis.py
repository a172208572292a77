"""Rule-level analyses over a policy: overlap, shadowing and redundancy.

A DSL rule may have become several IR rules (one per IP family); they share an
origin and are analysed as one *rule group*. A group is **shadowed** when
every packet it matches is already decided by earlier rules, so it can never
decide anything. A group is **redundant** when removing it changes no
verdict: every packet it decides would get the same action from the rules
after it.

Finding which earlier rules can overlap a rule is the expensive part at
10,000 rules, so :class:`OverlapIndex` prefilters with each cube's bounding
box (per-field hull), rank-compressed into a numpy array, before the exact
cube algebra runs on the few candidates.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ir.algebra import Cube, covered_by, intersect, is_feasible, uncovered_witness, witness
from ir.algebra import subtract as _subtract
from ir.fields import HEADER_SPACE, Space
from ir.model import Policy, Rule

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
        lo, hi = self.lo[start:stop], self.hi[start:stop]
        hit = np.all((lo <= self.hi[i]) & (hi >= self.lo[i]), axis=1)
        return [start + int(k) for k in np.flatnonzero(hit)]


@dataclass(frozen=True, slots=True)
class Shadowed:
    """A rule group no packet can reach.

    Attributes:
        rule: the first IR rule of the shadowed group.
        by: earlier rules covering it; a single rule when one covers it alone.
    """

    rule: Rule
    by: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Redundant:
    """A rule group whose removal changes no verdict.

    Attributes:
        rule: the first IR rule of the group.
        decided_by: the later rules that would decide its packets the same way.
    """

    rule: Rule
    decided_by: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class GaveUp:
    """A rule group the analysis did not finish (residual region too fragmented)."""

    rule: Rule


@dataclass(frozen=True, slots=True)
class Findings:
    """Everything :func:`analyse` found."""

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
    """Find shadowed and (optionally) redundant rule groups of ``policy``."""
    rules = policy.rules
    cubes = [r.match.cube for r in rules]
    index = OverlapIndex(space, cubes)
    shadowed: list[Shadowed] = []
    redundant: list[Redundant] = []
    gave_up: list[GaveUp] = []
    # Last position of each action: a rule whose action no later rule has
    # cannot be redundant (unless shadowed), which skips most proofs on policies
    # with many distinct actions (such as one mark per rule).
    last_with_action: dict[object, int] = {}
    for i, r in enumerate(rules):
        last_with_action[r.action] = i
    for group in rule_groups(policy):
        first = group[0]
        # Boxes that meet the group's boxes; a box hit that is no real overlap only
        # costs a failed containment test, so the exact filter waits for reporting.
        earlier = sorted({c for i in group for c in index.candidates(i, 0, first)})
        earlier_cubes = [cubes[c] for c in earlier]
        locate = index.locator(earlier) if len(earlier) > LOCATOR_MIN else None
        answers = [
            covered_by(space, cubes[i], earlier_cubes, FRAGMENT_LIMIT, locate) for i in group
        ]
        if None in answers:
            gave_up.append(GaveUp(rules[first]))
            continue
        if all(answers):
            overlapping = [
                c for c in earlier if any(_meets(space, cubes[i], cubes[c]) for i in group)
            ]
            shadowed.append(Shadowed(rules[first], _shadowers(space, group, overlapping, rules)))
            continue
        if not redundancy or rules[first].is_default:
            continue
        if last_with_action[rules[first].action] <= group[-1]:
            continue
        verdict = _later_decides_same(space, policy, group, earlier_cubes, index)
        if verdict is None:
            gave_up.append(GaveUp(rules[first]))
        elif verdict:
            redundant.append(Redundant(rules[first], verdict))
    return Findings(tuple(shadowed), tuple(redundant), tuple(gave_up))


def _meets(space: Space, a: Cube, b: Cube) -> bool:
    both = intersect(a, b)
    return both is not None and is_feasible(space, both)


def _shadowers(
    space: Space, group: list[int], earlier: list[int], rules: Sequence[Rule]
) -> tuple[Rule, ...]:
    """One earlier rule covering the whole group if there is one, else all that overlap."""
    for c in earlier:
        cover = [rules[c].match.cube]
        if all(covered_by(space, rules[i].match.cube, cover) is True for i in group):
            return (rules[c],)
    return tuple(rules[c] for c in earlier)


def _later_decides_same(
    space: Space,
    policy: Policy,
    group: list[int],
    earlier_cubes: list[Cube],
    index: OverlapIndex,
) -> tuple[Rule, ...] | None:
    """The later rules deciding the group's packets when all of them give its action.

    The group is redundant iff, for every later rule ``t`` with another
    action, each packet of (group ∩ t) is taken first by an earlier rule or by
    a later rule before ``t`` with the group's action. Returns () when some
    packet would change verdict, None when a question was too fragmented.
    """
    rules = policy.rules
    action = rules[group[0]].action
    last = group[-1]
    later = sorted({c for i in group for c in index.candidates(i, last + 1, len(rules))})
    same: list[Cube] = []
    deciders: list[Rule] = []
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
            deciders.append(other)
            continue
        for x in touching:
            answer = covered_by(space, x, earlier_cubes + same, FRAGMENT_LIMIT)
            if answer is None:
                return None
            if not answer:
                return ()
    return tuple(deciders)


def overlap_graph(policy: Policy, space: Space = HEADER_SPACE) -> nx.DiGraph[int]:
    """Directed graph over rule priorities: an edge a -> b when a < b and they overlap.

    Nodes carry ``rule`` attributes. Used to reason about which rules can
    interfere (the offload partitioner's "everything above it that it overlaps").
    """
    rules = policy.rules
    cubes = [r.match.cube for r in rules]
    index = OverlapIndex(space, cubes)
    graph: nx.DiGraph[int] = nx.DiGraph()
    for i, rule in enumerate(rules):
        graph.add_node(rule.priority, rule=rule)
        for c in index.candidates(i, 0, i):
            if _meets(space, cubes[c], cubes[i]):
                graph.add_edge(rules[c].priority, rule.priority)
    return graph


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
