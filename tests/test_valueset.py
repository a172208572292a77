"""ValueSet against Python sets on small widths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ir.valueset import ValueSet

WIDTH = 6
TOP = (1 << WIDTH) - 1


@st.composite
def value_sets(draw: st.DrawFn, width: int = WIDTH) -> tuple[ValueSet, set[int]]:
    top = (1 << width) - 1
    pairs = draw(
        st.lists(st.tuples(st.integers(0, top), st.integers(0, top)), min_size=0, max_size=5)
    )
    intervals = [(min(a, b), max(a, b)) for a, b in pairs]
    members = {v for lo, hi in intervals for v in range(lo, hi + 1)}
    return ValueSet.from_intervals(width, intervals), members


def members(vs: ValueSet) -> set[int]:
    return {v for lo, hi in vs.intervals for v in range(lo, hi + 1)}


@given(value_sets(), value_sets())
def test_boolean_operations_match_python_sets(a: tuple, b: tuple) -> None:
    (va, sa), (vb, sb) = a, b
    assert members(va) == sa
    assert members(va & vb) == sa & sb
    assert members(va | vb) == sa | sb
    assert members(va - vb) == sa - sb
    assert members(~va) == set(range(TOP + 1)) - sa
    assert va.overlaps(vb) == bool(sa & sb)
    assert va.is_subset(vb) == (sa <= sb)
    assert va.size() == len(sa)
    assert all(va.contains(v) == (v in sa) for v in range(TOP + 1))


@given(value_sets())
def test_canonical_form_is_unique(a: tuple) -> None:
    va, sa = a
    rebuilt = ValueSet.of_values(WIDTH, sorted(sa))
    assert rebuilt == va
    assert hash(rebuilt) == hash(va)


@given(value_sets())
def test_prefix_cover_is_exact_and_disjoint(a: tuple) -> None:
    va, sa = a
    covered: list[int] = []
    for value, plen in va.to_prefixes():
        block = ValueSet.of_prefix(WIDTH, value, plen)
        covered.extend(members(block))
    assert sorted(covered) == sorted(sa)  # exact and no value twice


@given(st.integers(0, TOP), st.integers(0, TOP))
def test_ternary_matches_bit_definition(value: int, mask: int) -> None:
    vs = ValueSet.of_ternary(WIDTH, value, mask)
    assert members(vs) == {x for x in range(TOP + 1) if x & mask == value & mask}
    assert vs.as_ternary() == (value & mask, mask)


@given(value_sets())
def test_as_ternary_only_for_ternaries(a: tuple) -> None:
    va, sa = a
    t = va.as_ternary()
    if t is not None:
        assert members(ValueSet.of_ternary(WIDTH, *t)) == sa
    else:
        assert not any(
            {x for x in range(TOP + 1) if x & m == v & m} == sa
            for m in range(TOP + 1)
            for v in range(TOP + 1)
        )


@given(value_sets())
def test_pick_returns_a_member(a: tuple) -> None:
    va, sa = a
    if not sa:
        with pytest.raises(ValueError):
            va.pick()
    else:
        assert va.pick() in sa
        assert va.pick(preferred=[max(sa)]) == max(sa)


def test_non_canonical_construction_is_refused() -> None:
    with pytest.raises(ValueError):
        ValueSet(8, ((5, 3),))
    with pytest.raises(ValueError):
        ValueSet(8, ((1, 3), (4, 6)))  # adjacent intervals must be merged
    with pytest.raises(ValueError):
        ValueSet(8, ((0, 256),))
    with pytest.raises(ValueError):
        ValueSet.of_range(8, 0, 300)


def test_wide_prefix_and_range() -> None:
    v6 = ValueSet.of_prefix(128, 0xFD00 << 112, 8)
    assert v6.as_prefix() == (0xFD00 << 112, 8)
    assert (~v6).size() == (1 << 128) - (1 << 120)
    assert ValueSet.of_range(16, 1024, 65535).to_prefixes()[0] == (1024, 6)


@given(value_sets(), st.sets(st.integers(0, TOP), max_size=20))
def test_ternary_cover_is_exact_disjoint_and_no_longer_than_prefixes(
    a: tuple, extra: set[int]
) -> None:
    vs = a[0] | ValueSet.of_values(WIDTH, extra)
    want = members(vs)
    seen: set[int] = set()
    cover = vs.ternary_cover()
    for value, mask in cover:
        assert value & ~mask == 0
        block = {x for x in range(TOP + 1) if x & mask == value}
        assert not block & seen
        seen |= block
    assert seen == want
    assert len(cover) <= len(vs.to_prefixes())


@given(value_sets())
def test_covering_ternary_is_the_smallest_single_ternary(a: tuple) -> None:
    vs, want = a
    if not want:
        return
    value, mask = vs.covering_ternary()
    block = {x for x in range(TOP + 1) if x & mask == value}
    assert want <= block
    # Dropping a cared-for bit is not needed: every kept bit is shared by all members.
    for bit in range(WIDTH):
        if mask >> bit & 1:
            assert len({x >> bit & 1 for x in want}) == 1
