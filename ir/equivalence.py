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

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from ir.algebra import Cube, full_cube, intersect, is_feasible, subtract, witness
from ir.analysis import OverlapIndex
from ir.fields import Space
from ir.packet import Point
from ir.valueset import ValueSet


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
        self.space = space
        self._traps: _Traps | None = None
        self._reach: list[Cube | None] | None = None

    def prefix(self, stop: int) -> FirstMatch:
        """The list of the first ``stop`` entries, sharing this list's index (so
        many prefixes of one long list cost no index each)."""
        view = object.__new__(FirstMatch)
        view.entries = self.entries[:stop]
        view.cubes = self.cubes[:stop]
        view.index = self.index if stop > 0 else None
        view.locate = view.index.locator(range(stop)) if view.index is not None else None
        view.space = self.space
        view._traps = None  # its own: a prefix has fewer traps
        view._reach = self._reach[:stop] if self._reach is not None else None
        return view

    def traps(self) -> _Traps:
        """This list's ANY entries, indexed (computed once per list)."""
        if self._traps is None:
            self._traps = _Traps(self.space, self)
        return self._traps

    def reachable(self) -> list[Cube | None]:
        """Per entry, a cube holding every packet it decides: its own without
        what the leading traps take (:meth:`_Traps.trim_leading`; None when
        they take it whole). Computed once per list.

        A lowering puts traps first (every fragment, every malformed frame to
        the slow path), and a filter's cube still holds what they take: a
        filter keyed on ports holds later fragments with port 0, one whose
        keys admit 0 first fragments of any port. Those packets keep the
        filter out of the one rule that holds everything it really decides;
        first match makes the trimmed list decide exactly as the whole one,
        since an earlier entry decides what it holds.
        """
        if self._reach is None:
            traps = self.traps()
            self._reach = [traps.trim_leading(cube, j) for j, cube in enumerate(self.cubes)]
        return self._reach

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
    right: Sequence[Entry] | FirstMatch,
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
    the ``right`` of at least one divergence (an audit lists them all). Pass
    ``right`` as a :class:`FirstMatch` to check it against several left lists
    with one index.
    """
    return _Refinement(space, left, right, hints, collect, step_limit).run()


# Witness steps spent covering one left entry before the exact walk takes over.
_COVER_STEPS = 64


class _Traps:
    """The ANY entries (traps) of a first-match list, to take out of a cube
    what they decide before the entries after them.

    A lowering puts its global traps (every fragment, every malformed frame)
    first; the unions of those leading traps along one field (:func:`_merged`,
    the *hulls*) take a rule's or a filter's share of them in a step or two,
    where the traps one by one would each leave the rest in pieces. Traps
    further down (a NIC profile's traps for rules it cannot hold, a catch-all)
    are found through an index.
    """

    def __init__(self, space: Space, side: FirstMatch) -> None:
        self.positions = [k for k, e in enumerate(side.entries) if e.decision is ANY]
        self.cubes = [side.cubes[k] for k in self.positions]
        self.narrow = [_narrow(c) for c in self.cubes]
        self.index = OverlapIndex(space, self.cubes) if self.positions else None
        self.locate = self.index.locator(range(len(self.cubes))) if self.index else None
        items = list(zip(self.cubes, self.positions, strict=True))
        self.lead = 0  # traps at positions 0, 1, ... before any other entry
        while self.lead < len(self.positions) and self.positions[self.lead] == self.lead:
            self.lead += 1
        # Only the leading traps are joined: a hull carries its last part's
        # position, and one joined with a late trap (a catch-all at the end)
        # would place every packet it holds at the end of the list.
        self.hulls = _widest(_merged(items[: self.lead]))

    def holding(self, point: Point) -> int | None:
        """The position of the first trap holding ``point`` (None: no trap does)."""
        if self.locate is None:
            return None
        found = self.locate(point)
        return None if found is None else self.positions[found]

    def trim_leading(self, cube: Cube, stop: int) -> Cube | None:
        """``cube`` without what the leading traps hold (when they all come before
        position ``stop``), where each removal leaves one cube (None: nothing left)."""
        if stop < self.lead:
            return cube
        return _trim(cube, self.hulls)[0]

    def trim_later(self, cube: Cube, stop: int) -> Cube | None:
        """``cube`` without what the traps after the leading ones and before
        position ``stop`` hold, where each removal leaves one cube (None: nothing
        left): an index look-up, done only when it may find a container."""
        before = bisect.bisect_left(self.positions, stop)
        if self.index is None or before <= self.lead:
            return cube
        current: Cube | None = cube
        for t in self.index.candidates_of(cube, self.lead, before):
            assert current is not None
            current = _without(current, self.cubes[t], self.narrow[t])
            if current is None:
                break
        return current

    def cover_trim(self, cube: Cube) -> tuple[Cube | None, int]:
        """``cube`` without what the trap hulls hold, where each removal leaves
        one cube (None: nothing left), and the position of the last trap whose
        packets were removed (-1: none)."""
        return _trim(cube, self.hulls)


_Hull = tuple[Cube, int, tuple[int, ...]]
"""A union of traps: its cube, the last trap's position, :func:`_narrow` of it."""


def _trim(cube: Cube, hulls: list[_Hull]) -> tuple[Cube | None, int]:
    """One pass of :func:`_without` over ``hulls``: what is left (None: nothing)
    and the last position of a hull that took something (-1: none)."""
    last = -1
    current = cube
    for hull, position, narrow in hulls:
        trimmed = _without(current, hull, narrow)
        if trimmed is None:
            return None, max(last, position)
        if trimmed is not current:
            last, current = max(last, position), trimmed
    return current, last


def _widest(items: list[tuple[Cube, int]]) -> list[_Hull]:
    """The :data:`_TRAP_HULLS` cubes holding the most packets, widest first."""
    by_size = sorted(items, key=lambda item: -sum(s.size().bit_length() for s in item[0].sets))
    return [(cube, position, _narrow(cube)) for cube, position in by_size[:_TRAP_HULLS]]


# Trap hulls a cover tries before walking (the widest; a lowering's fragment
# and malformed-frame traps are few, a NIC profile's traps for rules it cannot
# hold many and narrow).
_TRAP_HULLS = 32


def _merged(items: list[tuple[Cube, int]]) -> list[tuple[Cube, int]]:
    """Cubes (each with a position) joined where two differ in one field only,
    until no two do: each result is the union of its parts, with their last
    position."""
    changed = True
    while changed and len(items) > 1:
        changed = False
        for f in range(len(items[0][0].sets)):
            groups: dict[tuple[ValueSet, ...], tuple[ValueSet, int]] = {}
            for cube, position in items:
                rest = cube.sets[:f] + cube.sets[f + 1 :]
                if rest in groups:
                    have, last = groups[rest]
                    groups[rest] = (have | cube.sets[f], max(last, position))
                    changed = True
                else:
                    groups[rest] = (cube.sets[f], position)
            items = [
                (Cube((*rest[:f], joined, *rest[f:])), last)
                for rest, (joined, last) in groups.items()
            ]
    return items


_ANY_NUMBER = -1


def _number(decision: Hashable, numbers: dict[Hashable, int]) -> int:
    """``decision`` as a small number, the same for equal decisions (ANY: -1)."""
    if decision is ANY:
        return _ANY_NUMBER
    return numbers.setdefault(decision, len(numbers))


def _meets(a: Cube, b: Cube) -> bool:
    """Whether the two cubes share a point of their raw product (prerequisites
    aside): a check that builds nothing."""
    return all(x.overlaps(y) for x, y in zip(a.sets, b.sets, strict=True))


def _narrow(cube: Cube) -> tuple[int, ...]:
    """The fields where ``cube`` is not full (the only ones :func:`_without`
    must look at: every set is a subset of a full one)."""
    return tuple(i for i, values in enumerate(cube.sets) if not values.is_full())


def _without(cube: Cube, obstacle: Cube, narrow: Sequence[int]) -> Cube | None:
    """``cube`` minus ``obstacle`` when that is one cube (None: nothing left);
    ``cube`` itself when they do not meet or the rest would be several cubes.
    ``narrow`` is :func:`_narrow` of ``obstacle``."""
    outside = -1
    for i in narrow:
        if cube.sets[i].is_subset(obstacle.sets[i]):
            continue
        if outside >= 0:
            return cube  # two fields stick out: the rest is not one cube
        outside = i
    if outside < 0:
        return None
    rest = cube.sets[outside] - obstacle.sets[outside]
    if rest.size() == cube.sets[outside].size():
        return cube  # they do not meet
    sets = list(cube.sets)
    sets[outside] = rest
    return Cube(tuple(sets))


class _Refinement:
    def __init__(
        self,
        space: Space,
        left: Sequence[Entry],
        right: Sequence[Entry] | FirstMatch,
        hints: Sequence[int | None] | None,
        collect: bool,
        step_limit: int,
    ) -> None:
        self.space = space
        self.collect = collect
        self.left = FirstMatch(space, left)
        self.right = right if isinstance(right, FirstMatch) else FirstMatch(space, right)
        # Decisions as small numbers (ANY is -1): compared half a million
        # times on a 10,000-rule policy, where each comparison of the
        # decisions themselves is a dataclass __eq__.
        numbers: dict[Hashable, int] = {}
        self.left_says = [_number(e.decision, numbers) for e in self.left.entries]
        self.right_says = [_number(e.decision, numbers) for e in self.right.entries]
        self.cube_of = list(self.right.reachable())
        self.hints = hints
        self.step_limit = step_limit
        self.outcome = Outcome()
        self.members: dict[int, list[int]] = {}
        self.cover_end: dict[int, float] = {}
        self.conflicts: dict[int, list[int]] = {}
        self.left_narrow: dict[int, tuple[int, ...]] = {}

    def run(self) -> Outcome:
        containers: list[int | None] = []
        previous: int | None = None
        for j in range(len(self.right.entries)):
            container = self._container(j, previous)
            containers.append(container)
            if container is not None:
                self.members.setdefault(container, []).append(j)
                previous = container
        for j, says in enumerate(self.right_says):
            reach = self.cube_of[j]
            if says == _ANY_NUMBER or reach is None:
                continue
            container = containers[j]
            if container is None:
                if self._exact([reach]) and not self.collect:
                    break
                continue
            for k in self._conflicts(container):
                if self.left_says[k] == says:
                    continue
                if self._covered_before(k) <= j:
                    continue
                both = intersect(reach, self.left.cubes[k])
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
        """A left entry holding right entry ``j`` (what it can decide: ``cube_of[j]``)
        with its decision (None: the first left entry holding it decides
        otherwise, or none holds it, or ``j`` decides nothing)."""
        says, cube = self.right_says[j], self.cube_of[j]
        if says == _ANY_NUMBER or cube is None:
            return None
        found = self._container_of(cube, says, j, previous)
        if found is not None:
            return found
        # Traps further down (a profile's traps for rules it cannot hold) may
        # take what keeps it out of every rule: looked up only now.
        trimmed = self.right.traps().trim_later(cube, j)
        if trimmed is cube:
            return None
        self.cube_of[j] = trimmed
        return None if trimmed is None else self._container_of(trimmed, says, j, previous)

    def _container_of(self, cube: Cube, says: int, j: int, previous: int | None) -> int | None:
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
                and self.left_says[o] in (says, _ANY_NUMBER)
                and self._holds(o, cube)
            ):
                return o
        index = self.left.index
        assert index is not None
        for k in index.containers_of(cube, 0, n):
            if self._holds(k, cube):
                return k if self.left_says[k] in (says, _ANY_NUMBER) else None
        return None

    def _holds(self, k: int, cube: Cube) -> bool:
        """Whether left entry ``k`` holds ``cube`` (looking only at the fields
        where ``k`` is not full, found once per entry)."""
        narrow = self.left_narrow.get(k)
        if narrow is None:
            narrow = self.left_narrow[k] = _narrow(self.left.cubes[k])
        outer = self.left.cubes[k].sets
        return all(cube.sets[i].is_subset(outer[i]) for i in narrow)

    def _conflicts(self, o: int) -> list[int]:
        """Left entries before ``o`` meeting its cube that may decide some right
        entry held by ``o`` otherwise: another decision than ``o``'s, or, when
        ``o`` decides ANY (and so holds right entries of every decision), any
        decision but ANY. The caller skips those agreeing with its entry."""
        if o not in self.conflicts:
            index = self.left.index
            assert index is not None
            says, left_says = self.left_says[o], self.left_says
            self.conflicts[o] = [
                k
                for k in index.candidates(o, 0, o)
                if left_says[k] != _ANY_NUMBER and (says == _ANY_NUMBER or left_says[k] != says)
            ]
        return self.conflicts[o]

    def _covered_before(self, k: int) -> float:
        """A position P such that every packet of left entry ``k`` matches some
        right entry before P (infinity when not shown)."""
        if k not in self.cover_end:
            end = self._cover_with(k, self.members.get(k, []))
            self.cover_end[k] = float("inf") if end is None else end
        return self.cover_end[k]

    def _cover_with(self, k: int, members: list[int]) -> int | None:
        """Cover left entry ``k`` with right entries: each piece loses what the
        trap hulls hold, then what a member (a right entry ``k`` holds) meeting
        it holds; a piece no member meets is covered witness first, by a trap
        holding its witness, else by the first right entry holding it. The
        position after the last entry used. (A member met only where no packet is makes that
        position later than need be, never wrong.)"""
        traps = self.right.traps()
        residual = [self.left.cubes[k]]
        last = -1
        for _ in range(_COVER_STEPS):
            if not residual:
                return last + 1
            piece, trapped = traps.cover_trim(residual.pop())
            last = max(last, trapped)
            if piece is None:
                continue
            hit = next((m for m in members if _meets(piece, self.right.cubes[m])), None)
            if hit is not None:
                last = max(last, hit)
                residual.extend(subtract(self.space, piece, self.right.cubes[hit]))
                continue
            point = witness(self.space, piece)
            if point is None:
                continue
            # Any entry holding the point will do; the few traps are found far
            # more cheaply than the first of all entries.
            hit = traps.holding(point)
            if hit is None:
                hit = self.right.first(point)
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
