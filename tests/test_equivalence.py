"""The cube-walking equivalence engine against brute-force enumeration.

A small header space (a few bits per field, with a prerequisite, as ports
need a protocol) is small enough to enumerate every packet, so the engine's
answers are checked exactly: "equivalent" only when no packet disagrees, a
counterexample is a real packet where the two lists disagree, and the
collected divergent regions are disjoint and hold exactly the disagreeing
packets.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from ir.algebra import Cube
from ir.equivalence import ANY, Entry, agree, check_refinement, compare
from ir.packet import Point
from ir.valueset import ValueSet
from tests.strategies import PACKETS, SMALL, cubes

decisions = st.sampled_from(["allow", "drop", "mark"])
entry_lists = st.lists(st.builds(Entry, cubes, decisions | st.just(ANY)), max_size=7)


def decide(entries: Sequence[Entry], default: Hashable, point: Point) -> Hashable:
    for entry in entries:
        if entry.cube.contains(point):
            return entry.decision
    return default


@settings(max_examples=300, deadline=None)
@given(entry_lists, entry_lists, decisions, decisions | st.just(ANY))
def test_compare_matches_enumeration(
    left: list[Entry], right: list[Entry], left_default: str, right_default: Hashable
) -> None:
    disagree = {
        p
        for p in PACKETS
        if not agree(decide(left, left_default, p), decide(right, right_default, p))
    }
    first = compare(SMALL, left, right, left_default=left_default, right_default=right_default)
    assert first.settled
    assert first.equivalent == (not disagree)
    if first.divergences:
        (d,) = first.divergences
        assert d.point in disagree
        assert d.left == next((i for i, e in enumerate(left) if e.cube.contains(d.point)), None)
        assert d.right == next((i for i, e in enumerate(right) if e.cube.contains(d.point)), None)

    every = compare(
        SMALL, left, right, left_default=left_default, right_default=right_default, collect=True
    )
    covered: list[Point] = [p for d in every.divergences for p in PACKETS if d.region.contains(p)]
    assert len(covered) == len(set(covered)), "divergent regions overlap"
    assert set(covered) == disagree
    for d in every.divergences:
        # One decision per side over the whole region, the region's own entries.
        for p in PACKETS:
            if d.region.contains(p):
                assert decide(left, left_default, p) == decide(left, left_default, d.point)
                assert decide(right, right_default, p) == decide(right, right_default, d.point)

    blamed = compare(
        SMALL, left, right, left_default=left_default, right_default=right_default, blame=True
    )
    assert blamed.settled
    assert {d.right for d in blamed.divergences} == {
        next((i for i, e in enumerate(right) if e.cube.contains(p)), None) for p in disagree
    }
    assert all(d.point in disagree for d in blamed.divergences)


def test_identical_lists_are_equivalent_and_a_changed_action_is_found() -> None:
    proto3 = Cube((ValueSet.of_value(2, 3), ValueSet.full(4), ValueSet.of_range(3, 2, 5)))
    rules = [Entry(proto3, "drop")]
    assert compare(SMALL, rules, rules, left_default="allow", right_default="allow").equivalent
    changed = [Entry(proto3, "mark")]
    out = compare(SMALL, rules, changed, left_default="allow", right_default="allow")
    (d,) = out.divergences
    assert d.left == d.right == 0 and proto3.contains(d.point)


def test_any_agrees_with_everything() -> None:
    everything = Cube(tuple(f.full for f in SMALL.fields))
    out = compare(SMALL, [Entry(everything, "drop")], [Entry(everything, ANY)])
    assert out.equivalent


@st.composite
def refinements(draw: st.DrawFn) -> tuple[list[Entry], list[Entry], list[int | None]]:
    """A first-match list ending in a default, and a 'lowering' of it: each entry
    cut into pieces along one field, then randomly damaged (pieces dropped,
    decisions changed, neighbours swapped, pieces widened, traps added)."""
    rules = draw(st.lists(st.builds(Entry, cubes, decisions), max_size=6))
    rules.append(Entry(Cube(tuple(f.full for f in SMALL.fields)), draw(decisions)))
    pieces: list[Entry] = []
    hints: list[int | None] = []
    for i, rule in enumerate(rules):
        field = draw(st.integers(0, len(SMALL.fields) - 1))
        values = rule.cube.sets[field]
        cut = draw(st.integers(0, (1 << SMALL.fields[field].width) - 1))
        below = values & ValueSet.of_range(values.width, 0, cut)
        for part in (below, values - below):
            if part.intervals:
                sets = list(rule.cube.sets)
                sets[field] = part
                pieces.append(Entry(Cube(tuple(sets)), rule.decision))
                hints.append(i)
    # Traps first, as a lowering puts its fragment and malformed-frame traps:
    # sometimes one cube's two halves (cut along a field), which the checker
    # joins back into one hull.
    for _ in range(draw(st.integers(0, 2))):
        trap = draw(cubes)
        field = draw(st.integers(0, len(SMALL.fields) - 1))
        cut = draw(st.integers(0, (1 << SMALL.fields[field].width) - 1))
        below = trap.sets[field] & ValueSet.of_range(trap.sets[field].width, 0, cut)
        for part in (below, trap.sets[field] - below):
            if part.intervals:
                sets = list(trap.sets)
                sets[field] = part
                pieces.insert(0, Entry(Cube(tuple(sets)), ANY))
                hints.insert(0, None)
    for _ in range(draw(st.integers(0, 2))):
        if not pieces:
            break
        k = draw(st.integers(0, len(pieces) - 1))
        damage = draw(st.sampled_from(["drop", "decide", "swap", "widen", "trap"]))
        if damage == "drop":
            del pieces[k], hints[k]
        elif damage == "decide":
            pieces[k] = Entry(pieces[k].cube, draw(decisions))
        elif damage == "swap" and k + 1 < len(pieces):
            pieces[k], pieces[k + 1] = pieces[k + 1], pieces[k]
            hints[k], hints[k + 1] = hints[k + 1], hints[k]
        elif damage == "widen":
            pieces[k] = Entry(draw(cubes), pieces[k].decision)
        elif damage == "trap":
            pieces.insert(k, Entry(draw(cubes), ANY))
            hints.insert(k, None)
    return rules, pieces, hints


@settings(max_examples=400, deadline=None)
@given(refinements(), st.booleans())
def test_check_refinement_matches_enumeration(
    case: tuple[list[Entry], list[Entry], list[int | None]], use_hints: bool
) -> None:
    rules, pieces, hints = case
    disagree = {p for p in PACKETS if not agree(decide(rules, None, p), decide(pieces, ANY, p))}
    out = check_refinement(SMALL, rules, pieces, hints=hints if use_hints else None)
    assert out.settled
    assert out.equivalent == (not disagree)
    if out.divergences:
        assert out.divergences[0].point in disagree


def first_index(entries: Sequence[Entry], point: Point) -> int | None:
    return next((i for i, e in enumerate(entries) if e.cube.contains(point)), None)


@settings(max_examples=400, deadline=None)
@given(refinements(), st.booleans())
def test_check_refinement_collect_names_every_unsound_entry(
    case: tuple[list[Entry], list[Entry], list[int | None]], use_hints: bool
) -> None:
    """With collect, the right entries named by divergences are exactly those
    that decide some packet differently from the left list (an audit's list)."""
    rules, pieces, hints = case
    unsound = set()
    for p in PACKETS:
        j = first_index(pieces, p)
        if j is not None and not agree(decide(rules, None, p), pieces[j].decision):
            unsound.add(j)
    out = check_refinement(SMALL, rules, pieces, hints=hints if use_hints else None, collect=True)
    assert out.settled
    assert {d.right for d in out.divergences} == unsound
    for d in out.divergences:
        assert first_index(pieces, d.point) == d.right
        assert not agree(decide(rules, None, d.point), pieces[d.right].decision)  # type: ignore[index]
