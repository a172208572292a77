"""Equivalence of two first-match lists over a header space, by cube walking.

Both sides of every question flowc asks (IR vs flower filters, old policy vs
new policy, an installed filter vs the policy) are *first-match lists*: cubes
in order, each with a decision, the first cube holding a packet deciding it.
:func:`compare` walks the header space once, witness first:

1. take a packet ``p`` of the not yet explained space;
2. find the entry deciding ``p`` on each side (first containing cube);
3. if the decisions differ, ``p`` is a counterexample;
4. otherwise grow a cube ``Q`` around ``p`` on which both sides keep those
   decisions (start from the two deciding cubes, and cut away every earlier
   entry with another decision, each along the field that loses least), and
   remove ``Q`` from what is left to explain.

Every packet is in some ``Q`` or is a counterexample, so the answer is
complete; each ``Q`` is as wide as the greedy cuts allow, so the walk takes
about as many steps as there are regions in the two partitions laid over
each other, not as many as there are packets. The same walk with
``collect=True`` returns every cube where the decisions differ (the exact
changed set a policy diff reports).

Why cubes and not BDDs or SMT: the IR is already cubes, the algebra is exact
about packets (prerequisites, domains), and a witness is what a counterexample
must be anyway. Measured (bench/verify_bench.py, bench/results/verify.md):
the plain walk alone needs one step per region of the two partitions laid
over each other (about 43,000 for a 1,000-rule ClassBench ACL, over a
minute); :func:`check_refinement` exploits that a lowering refines the
policy and proves 10,000-rule lowerings in seconds, falling back to the walk
only on the overlaps it cannot settle by index look-ups. BDD packages (dd,
oxidd) and z3 are on the package index but were not measured here; an SMT
solver answers one query at a time, where one walk settles every region.

A decision of :data:`ANY` agrees with every decision (a trap: the slow path
decides there, and that is checked separately).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from ir.algebra import Cube, full_cube, intersect, is_feasible, subtract, witness
from ir.analysis import OverlapIndex
from ir.fields import Space
from ir.packet import Point


class _Any:
    """The decision that agrees with every other one."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Hashable = _Any()


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a first-match list: packets in ``cube`` get ``decision``."""

    cube: Cube
    decision: Hashable


@dataclass(frozen=True, slots=True)
class Divergence:
    """A region where the two lists decide differently.

    Attributes:
        point: a packet in the region (the counterexample).
        left: index of the left entry deciding it (None: no left entry matches).
        right: index of the right entry deciding it (None: no right entry matches).
        region: a cube of packets, ``point`` among them, all decided by entries
            with the same two decisions (the diff's unit).
    """

    point: Point
    left: int | None
    right: int | None
    region: Cube


@dataclass(slots=True)
class Outcome:
    """What :func:`compare` found.

    Attributes:
        divergences: regions where the decisions differ (only the first unless
            ``collect``); empty means equivalent when ``settled``.
        settled: False when the walk hit its step limit before finishing.
        steps: regions explained (a measure of the work done).
    """

    divergences: list[Divergence] = field(default_factory=list)
    settled: bool = True
    steps: int = 0

    @property
    def equivalent(self) -> bool:
        """True when the whole space was explained with no divergence."""
        return self.settled and not self.divergences


def agree(a: Hashable, b: Hashable) -> bool:
    """True when two decisions agree (equal, or either is ANY)."""
    return a is ANY or b is ANY or a == b


class FirstMatch:
    """A first-match list, indexed for "which entry decides p" and "which
    earlier entries meet this cube". Build once, compare many times."""

    def __init__(self, space: Space, entries: Sequence[Entry]) -> None:
        self.entries = entries
        self.cubes = [e.cube for e in entries]
        self.index = OverlapIndex(space, self.cubes) if entries else None
        self.locate = self.index.locator(range(len(entries))) if self.index else None

    def prefix(self, stop: int) -> FirstMatch:
        """The list of the first ``stop`` entries, sharing this list's index (so
        many prefixes of one long list cost no index each)."""
        view = object.__new__(FirstMatch)
        view.entries = self.entries[:stop]
        view.cubes = self.cubes[:stop]
        view.index = self.index if stop > 0 else None
        view.locate = view.index.locator(range(stop)) if view.index is not None else None
        return view

    def first(self, point: Point) -> int | None:
        """Index of the entry deciding ``point`` (None: no entry matches)."""
        return self.locate(point) if self.locate is not None else None

    def earlier_meeting(self, q: Cube, stop: int) -> list[int]:
        """Entries before ``stop`` whose bounding box meets ``q``'s."""
        if self.index is None or stop <= 0:
            return []
        return self.index.candidates_of(q, 0, stop)


def _cut(q: Cube, obstacle: Cube, point: Point) -> Cube:
    """``q`` without ``obstacle``, keeping ``point``: narrow the one field (where
    ``point`` lies outside the obstacle) that keeps most of ``q``."""
    best_field, best_kept, best_set = -1, -1.0, None
    for i, (have, cut) in enumerate(zip(q.sets, obstacle.sets, strict=True)):
        if cut.is_full() or point[i] in cut:
            continue
        rest = have - cut
        kept = rest.size() / have.size()
        if kept > best_kept:
            best_field, best_kept, best_set = i, kept, rest
    assert best_set is not None, "the point lies inside the obstacle"
    sets = list(q.sets)
    sets[best_field] = best_set
    return Cube(tuple(sets))


def compare(
    space: Space,
    left: Sequence[Entry] | FirstMatch,
    right: Sequence[Entry] | FirstMatch,
    *,
    left_default: Hashable = ANY,
    right_default: Hashable = ANY,
    within: Sequence[Cube] | None = None,
    collect: bool = False,
    blame: bool = False,
    step_limit: int = 2_000_000,
) -> Outcome:
    """Do ``left`` and ``right`` decide every packet (of the disjoint cubes
    ``within``, or of the whole space) alike?

    A packet no entry of a side matches gets that side's default. With
    ``collect``, every divergent region is returned (they are disjoint and
    their union is exactly the packets where the two sides disagree); with
    ``blame``, one divergence per right entry that decides some packet
    wrongly (once an entry is blamed, the rest of its packets are skipped
    without looking at the left side, which is far quicker than ``collect``);
    otherwise the walk stops at the first.
    """
    sides = tuple(s if isinstance(s, FirstMatch) else FirstMatch(space, s) for s in (left, right))
    defaults = (left_default, right_default)
    outcome = Outcome()
    residual = list(within) if within is not None else [full_cube(space)]
    blamed: set[int | None] = set()
    while residual:
        piece = residual.pop()
        point = witness(space, piece)
        if point is None:
            continue
        outcome.steps += 1
        if outcome.steps > step_limit:
            outcome.settled = False
            return outcome
        hits = (sides[0].first(point), sides[1].first(point))
        if blame and hits[1] in blamed:
            # Hold only the right side, and its entry rather than its decision:
            # earlier entries of the same decision decide their own packets,
            # and each must get its own chance to be blamed.
            region = _hold(space, piece, point, sides[1], hits[1], _NO_DECISION)
            residual.extend(subtract(space, piece, region))
            continue
        decisions = tuple(
            defaults[s] if hits[s] is None else sides[s].entries[hits[s]].decision  # type: ignore[index]
            for s in (0, 1)
        )
        region = piece
        for s in _sides_to_hold(decisions, collect):
            region = _hold(space, region, point, sides[s], hits[s], decisions[s])
        if not agree(decisions[0], decisions[1]):
            outcome.divergences.append(Divergence(point, hits[0], hits[1], region))
            if blame:
                blamed.add(hits[1])
                residual.append(piece)  # walked again, now as the blamed entry's
                continue
            if not collect:
                return outcome
        residual.extend(subtract(space, piece, region))
    return outcome


def _sides_to_hold(decisions: tuple[Hashable, ...], collect: bool) -> tuple[int, ...]:
    """Which sides' decisions must stay constant over the grown region.

    Where one side says ANY and is held at ANY, the other side may vary
    without harm, and leaving it free gives a wider region. A diff
    (``collect``) reports the responsible entries, so it holds both.
    """
    if collect:
        return (0, 1)
    if decisions[1] is ANY:
        return (1,)
    if decisions[0] is ANY:
        return (0,)
    return (0, 1)


# A decision no entry has: holding it cuts away every earlier entry.
_NO_DECISION: Hashable = object()


def _hold(
    space: Space,
    region: Cube,
    point: Point,
    side: FirstMatch,
    hit: int | None,
    decision: Hashable,
) -> Cube:
    """Narrow ``region`` to packets the side decides with entry ``hit`` (None: its
    default) or, at least, with ``decision``: keep inside the hit entry and cut
    every earlier entry that would decide some of them differently (ANY
    entries differ from a concrete decision too: the side's verdict must be one
    value on the region)."""
    stop = len(side.entries) if hit is None else hit
    if hit is not None:
        both = intersect(region, side.cubes[hit])
        assert both is not None
        region = both
    for k in side.earlier_meeting(region, stop):
        entry = side.entries[k]
        if entry.decision == decision:
            continue
        if intersect(region, entry.cube) is None:
            continue
        region = _cut(region, entry.cube, point)
    return region


def check_refinement(
    space: Space,
    left: Sequence[Entry],
    right: Sequence[Entry],
    *,
    hints: Sequence[int | None] | None = None,
    collect: bool = False,
    step_limit: int = 200_000,
) -> Outcome:
    """Does every packet some ``right`` entry decides get the same decision from
    ``left``? (Packets no right entry matches, and right entries deciding ANY,
    agree with anything: that is the slow path's part.) ``left`` must match
    every packet (a policy ends in its default).

    The same question as :func:`compare` with ``right_default=ANY``, organised
    for a right list that *refines* the left one, as a lowering does: each
    right entry ``j`` usually lies inside a left entry ``o`` with its decision
    (or ANY, which agrees with every decision)
    (its *container*; ``hints[j]`` may name it). Every packet ``j`` decides is
    then decided on the left by ``o`` or by an earlier entry ``k`` meeting
    ``j``. Such a ``k`` with another decision is harmless once every packet
    of ``k`` is matched by some right entry before ``j`` (then ``j`` never sees
    those packets), and that position is bounded once per ``k``. Only pairs
    passing neither test, and right entries with no container, go to the
    exact walk, on just their overlap, so a 10,000-rule lowering is proven
    with index look-ups instead of a walk over every region.

    With ``collect``, the check goes on past the first divergence and every
    right entry that decides some packet differently from ``left`` appears as
    the ``right`` of at least one divergence (an audit lists them all).
    """
    return _Refinement(space, left, right, hints, collect, step_limit).run()


# Witness steps spent covering one left entry before the exact walk takes over.
_COVER_STEPS = 64


def _inside(inner: Cube, outer: Cube) -> bool:
    return all(a.is_subset(b) for a, b in zip(inner.sets, outer.sets, strict=True))


class _Refinement:
    def __init__(
        self,
        space: Space,
        left: Sequence[Entry],
        right: Sequence[Entry],
        hints: Sequence[int | None] | None,
        collect: bool,
        step_limit: int,
    ) -> None:
        self.space = space
        self.collect = collect
        self.left = FirstMatch(space, left)
        self.right = FirstMatch(space, right)
        self.hints = hints
        self.step_limit = step_limit
        self.outcome = Outcome()
        self.members: dict[int, list[int]] = {}
        self.cover_end: dict[int, float] = {}
        self.conflicts: dict[int, list[int]] = {}

    def run(self) -> Outcome:
        containers: list[int | None] = []
        previous: int | None = None
        for j in range(len(self.right.entries)):
            container = self._container(j, previous)
            containers.append(container)
            if container is not None:
                self.members.setdefault(container, []).append(j)
                previous = container
        for j, entry in enumerate(self.right.entries):
            if entry.decision is ANY:
                continue
            container = containers[j]
            if container is None:
                if self._exact([entry.cube]) and not self.collect:
                    break
                continue
            for k in self._conflicts(container):
                if agree(self.left.entries[k].decision, entry.decision):
                    continue
                if self._covered_before(k) <= j:
                    continue
                both = intersect(entry.cube, self.left.cubes[k])
                if both is None or not is_feasible(self.space, both):
                    continue
                if self._exact([both]):
                    if not self.collect:
                        return self.outcome
                    if any(d.right == j for d in self.outcome.divergences):
                        break  # one divergence is enough to name entry j
            if not self.outcome.settled:
                break
        return self.outcome

    def _container(self, j: int, previous: int | None) -> int | None:
        """A left entry holding right entry ``j`` with its decision (None: the
        first left entry holding it decides otherwise, or none holds it)."""
        entry = self.right.entries[j]
        if entry.decision is ANY:
            return None
        guesses = []
        if self.hints is not None and self.hints[j] is not None:
            guesses.append(self.hints[j])
        if previous is not None:
            guesses += [previous, previous + 1]
        n = len(self.left.entries)
        for o in guesses:
            # Any left entry holding it with its decision will do, not only the first.
            if (
                o is not None
                and 0 <= o < n
                and agree(self.left.entries[o].decision, entry.decision)
                and _inside(entry.cube, self.left.cubes[o])
            ):
                return o
        index = self.left.index
        assert index is not None
        for k in index.containers_of(entry.cube, 0, n):
            if _inside(entry.cube, self.left.cubes[k]):
                return k if agree(self.left.entries[k].decision, entry.decision) else None
        return None

    def _conflicts(self, o: int) -> list[int]:
        """Left entries before ``o`` meeting its cube that may decide some right
        entry held by ``o`` otherwise: another decision than ``o``'s, or, when
        ``o`` decides ANY (and so holds right entries of every decision), any
        decision but ANY. The caller skips those agreeing with its entry."""
        if o not in self.conflicts:
            index = self.left.index
            assert index is not None
            decision = self.left.entries[o].decision
            self.conflicts[o] = [
                k
                for k in index.candidates(o, 0, o)
                if self.left.entries[k].decision is not ANY
                and (decision is ANY or self.left.entries[k].decision != decision)
            ]
        return self.conflicts[o]

    def _covered_before(self, k: int) -> float:
        """A position P such that every packet of left entry ``k`` matches some
        right entry before P (infinity when not shown)."""
        if k not in self.cover_end:
            end = self._cover_with(k, self.members.get(k, []))
            if end is None:
                end = self._cover_with(k, None)
            self.cover_end[k] = float("inf") if end is None else end
        return self.cover_end[k]

    def _cover_with(self, k: int, members: list[int] | None) -> int | None:
        """Cover left entry ``k`` with right entries (``members``, or all of them
        by first match), witness first: the position after the last one used."""
        residual = [self.left.cubes[k]]
        last = -1
        for _ in range(_COVER_STEPS):
            if not residual:
                return last + 1
            piece = residual.pop()
            point = witness(self.space, piece)
            if point is None:
                continue
            if members is None:
                hit = self.right.first(point)
            else:
                hit = next((m for m in members if self.right.cubes[m].contains(point)), None)
            if hit is None:
                return None
            last = max(last, hit)
            residual.extend(subtract(self.space, piece, self.right.cubes[hit]))
        return last + 1 if not residual else None

    def _exact(self, within: list[Cube]) -> bool:
        """Walk ``within`` exactly; True when a divergence was found."""
        outcome = compare(
            self.space,
            self.left,
            self.right,
            right_default=ANY,
            within=within,
            blame=self.collect,
            step_limit=max(self.step_limit - self.outcome.steps, 1),
        )
        self.outcome.steps += outcome.steps
        self.outcome.settled = self.outcome.settled and outcome.settled
        self.outcome.divergences += outcome.divergences
        return bool(outcome.divergences)
