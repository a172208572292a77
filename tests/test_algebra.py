"""Header-space algebra against brute-force enumeration of a small space."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ir import algebra
from ir.algebra import Cube
from ir.fields import HEADER_SPACE, Field, Space
from ir.packet import Packet, point_problems
from ir.valueset import ValueSet

# A toy space with the same kinds of structure as the real one: a root field
# with a restricted domain, a protocol-like root field, and dependent fields
# that only exist for some root values (as ports exist only for TCP/UDP).
SMALL = Space(
    (
        Field("fam", 2, "dec", "family-like", domain=ValueSet.of_values(2, [1, 2])),
        Field("proto", 2, "dec", "protocol-like"),
        Field(
            "port",
            3,
            "dec",
            "exists when proto is 1 or 2",
            prerequisite=((("proto", ValueSet.of_values(2, [1, 2])),),),
        ),
        Field(
            "code",
            2,
            "dec",
            "exists when (fam 1, proto 3) or (fam 2, proto 0)",
            prerequisite=(
                (("fam", ValueSet.of_value(2, 1)), ("proto", ValueSet.of_value(2, 3))),
                (("fam", ValueSet.of_value(2, 2)), ("proto", ValueSet.of_value(2, 0))),
            ),
        ),
        Field("addr", 3, "dec", "always present"),
    )
)

ALL_POINTS = [
    p
    for p in itertools.product(*(range(1 << f.width) for f in SMALL.fields))
    if not point_problems(SMALL, p)
]


@st.composite
def cubes(draw: st.DrawFn) -> Cube:
    sets = []
    for f in SMALL.fields:
        top = (1 << f.width) - 1
        if draw(st.booleans()):
            sets.append(f.full)
            continue
        values = draw(st.sets(st.integers(0, top), min_size=0, max_size=top + 1))
        sets.append(ValueSet.of_values(f.width, values))
    return Cube(tuple(sets))


def packets(c: Cube) -> set[tuple[int, ...]]:
    return {p for p in ALL_POINTS if c.contains(p)}


@given(cubes(), cubes())
def test_intersection_is_exact(a: Cube, b: Cube) -> None:
    both = algebra.intersect(a, b)
    expected = packets(a) & packets(b)
    assert (packets(both) if both is not None else set()) == expected
    assert algebra.overlaps(SMALL, a, b) == bool(expected)


@given(cubes(), cubes())
def test_difference_is_exact_and_disjoint(a: Cube, b: Cube) -> None:
    pieces = algebra.subtract(SMALL, a, b)
    expected = packets(a) - packets(b)
    union: set[tuple[int, ...]] = set()
    for piece in pieces:
        got = packets(piece)
        assert not (got & union), "pieces overlap"
        union |= got
    assert union == expected


@given(cubes())
def test_feasibility_and_witness_agree_with_enumeration(c: Cube) -> None:
    inside = packets(c)
    assert algebra.is_feasible(SMALL, c) == bool(inside)
    w = algebra.witness(SMALL, c)
    if inside:
        assert w in inside
    else:
        assert w is None


@given(cubes(), st.lists(cubes(), max_size=4))
def test_coverage_agrees_with_enumeration(c: Cube, cover: list[Cube]) -> None:
    inside = packets(c)
    covered = set().union(*(packets(x) for x in cover)) if cover else set()
    settled, escaped = algebra.uncovered_witness(SMALL, c, cover)
    assert settled
    if inside <= covered:
        assert escaped is None
        assert algebra.covered_by(SMALL, c, cover) is True
    else:
        assert escaped in inside - covered
        assert algebra.covered_by(SMALL, c, cover) is False


def test_real_space_ports_need_port_protocols() -> None:
    icmp_port_80 = algebra.cube(
        HEADER_SPACE, ip_proto=ValueSet.of_value(8, 1), dport=ValueSet.of_value(16, 80)
    )
    assert not algebra.is_feasible(HEADER_SPACE, icmp_port_80)
    icmp_port_0 = algebra.cube(
        HEADER_SPACE, ip_proto=ValueSet.of_value(8, 1), dport=ValueSet.of_range(16, 0, 10)
    )
    w = algebra.witness(HEADER_SPACE, icmp_port_0)
    assert w is not None
    packet = Packet(w)
    assert packet.get("ip_proto") == 1 and packet.get("dport") == 0


def test_real_space_witness_is_a_valid_packet() -> None:
    v6_echo = algebra.cube(
        HEADER_SPACE,
        family=ValueSet.of_value(8, 6),
        ip_proto=ValueSet.of_value(8, 58),
        icmp_type=ValueSet.of_value(8, 128),
    )
    w = algebra.witness(HEADER_SPACE, v6_echo)
    assert w is not None
    assert Packet(w).get("icmp_type") == 128
    # ICMP type on IPv4 proto 58 is no ICMP header at all: no packet.
    v4_58 = algebra.cube(
        HEADER_SPACE,
        family=ValueSet.of_value(8, 4),
        ip_proto=ValueSet.of_value(8, 58),
        icmp_type=ValueSet.of_value(8, 128),
    )
    assert algebra.witness(HEADER_SPACE, v4_58) is None


def test_format_cube() -> None:
    c = algebra.cube(
        HEADER_SPACE,
        ip4_src=ValueSet.of_prefix(32, 0x0A000000, 8),
        dport=ValueSet.of_range(16, 80, 81),
        family=ValueSet.of_value(8, 4),
        ip_proto=ValueSet.of_value(8, 6),
    )
    assert algebra.format_cube(HEADER_SPACE, c) == (
        "family=4 ip_proto=6 ip4_src=10.0.0.0/8 dport=80-81"
    )
