"""``point_problems``'s fast answer (``ir.packet._is_packet``) against the
per-field check it short-cuts (``field_problem`` on every field, the oracle),
on points that are packets and points that are almost packets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ir.fields import HEADER_SPACE
from ir.packet import Packet, field_problem, point_problems
from tests.strategies import packets


def oracle(point: tuple[int, ...]) -> list[str]:
    return [
        p for i in range(len(HEADER_SPACE.fields)) if (p := field_problem(HEADER_SPACE, point, i))
    ]


def near_values(width: int) -> st.SearchStrategy[int]:
    """Values a field takes in real and broken points: the edges of its width."""
    top = 1 << width
    return st.sampled_from([0, 1, 2, 4, 6, 17, top - 1, top, -1]) | st.integers(0, top - 1)


@given(packets())
def test_a_packet_has_no_problems(packet: Packet) -> None:
    point = packet.values
    assert point_problems(HEADER_SPACE, point) == oracle(point) == []


@given(packets(), st.data())
def test_a_broken_packet_gets_exactly_the_per_field_problems(
    packet: Packet, data: st.DataObject
) -> None:
    point = list(packet.values)
    for i in data.draw(st.sets(st.integers(0, len(point) - 1), min_size=1, max_size=3)):
        point[i] = data.draw(near_values(HEADER_SPACE.fields[i].width))
    assert point_problems(HEADER_SPACE, tuple(point)) == oracle(tuple(point))


def test_a_wrong_length_is_one_problem() -> None:
    assert point_problems(HEADER_SPACE, (0, 1)) == [
        f"expected {len(HEADER_SPACE.fields)} field values, got 2"
    ]
