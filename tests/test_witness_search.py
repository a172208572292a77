"""The BPF check's packet choice, against brute force: deciding witnesses and bulk first match.

``deciding_witnesses`` must give every rule that decides some packet a packet
it decides (its first match) and call shadowed exactly the rules that decide
none. Two oracles: the representative packets of the small rule space
(tests/strategies.py REPS, exhaustive for those rules) judged by the
interpreter, and every packet of the enumerable SMALL space for arbitrary
cubes (ternary masks make fragmented regions). ``FirstMatch`` must give the
interpreter's first match for every packet. The BPF check's probes of the
examples are judged by the interpreter too (no kernel needed for that part).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from compiler.frontend import compile_file
from ir.algebra import Cube, cube, first_containing, full_cube
from ir.analysis import deciding_witnesses
from ir.fields import HEADER_SPACE
from ir.firstmatch import FirstMatch
from ir.interp import evaluate
from ir.model import Action, Match
from ir.packet import Packet
from ir.valueset import ValueSet
from tests.fixtures import EXAMPLE_PATHS
from tests.strategies import PACKETS, REPS, SMALL, cubes, make_policy, packets, rules
from verify.bpf import expected, expected_many, on_the_wire, probes

# Cubes to avoid that the REPS classes respect (each representative stands
# for packets wholly inside or wholly outside each of them).
AVOIDS: list[list[Cube]] = [
    [],
    [cube(HEADER_SPACE, family=ValueSet.of_value(8, 6))],
    [cube(HEADER_SPACE, ip_proto=ValueSet.of_value(8, 17))],
    [
        cube(HEADER_SPACE, family=ValueSet.of_value(8, 4), dport=ValueSet.of_range(16, 0, 1)),
        cube(HEADER_SPACE, ip_proto=ValueSet.of_value(8, 1)),
    ],
]


SRC_0_3 = ValueSet.of_range(32, 0x0A000000, 0x0A000003)


@given(
    st.lists(rules(), min_size=0, max_size=8),
    st.sampled_from(["allow", "drop"]),
    st.sampled_from(range(len(AVOIDS))),
)
# Found by hypothesis: the third rule decides SCTP from 10.0.0.0/30 to port 2,
# which REPS lacked until it had SCTP (a port protocol) of its own.
@example(
    [
        (Match((("ip_proto", ValueSet.of_value(8, 6)),)), Action("allow")),
        (Match((("ip_proto", ValueSet.of_value(8, 17)),)), Action("allow")),
        (Match((("family", ValueSet.of_value(8, 4)), ("ip4_src", SRC_0_3))), Action("allow")),
    ],
    "allow",
    3,
)
def test_every_rule_that_decides_a_packet_gets_a_witness_it_decides(
    specs: list, default: str, which: int
) -> None:
    policy = make_policy(specs, default)
    avoid = AVOIDS[which]
    found = deciding_witnesses([r.match.cube for r in policy.rules], avoid=avoid)
    assert not found.gave_up
    deciders: dict[int, set[bool]] = {}  # rule index -> avoided?, per packet it decides
    for packet in REPS:
        rule = evaluate(policy, packet).rule
        deciders.setdefault(policy.rules.index(rule), set()).add(
            any(a.contains(packet.values) for a in avoid)
        )
    for point, i in found.witnesses:
        assert evaluate(policy, Packet(point)).rule is policy.rules[i]
        assert not any(a.contains(point) for a in avoid)
    witnessed = {i for _, i in found.witnesses}
    assert witnessed == {i for i, inside in deciders.items() if False in inside}
    assert set(found.avoided) == {i for i, inside in deciders.items() if inside == {True}}
    assert set(found.shadowed) == set(range(len(policy.rules))) - set(deciders)


@given(st.lists(cubes, min_size=1, max_size=8))
def test_witnesses_over_an_enumerable_space(some: list[Cube]) -> None:
    """Arbitrary cubes, brute force over every packet of the space."""
    listed = [*some, full_cube(SMALL)]
    found = deciding_witnesses(listed, space=SMALL)
    assert not found.gave_up and not found.avoided
    decided = {first_containing(listed, p) for p in PACKETS}
    for point, i in found.witnesses:
        assert point in PACKETS and first_containing(listed, point) == i
    assert {i for _, i in found.witnesses} == decided
    assert set(found.shadowed) == set(range(len(listed))) - decided


@given(st.lists(cubes, min_size=1, max_size=10))
def test_first_match_equals_a_linear_scan(some: list[Cube]) -> None:
    listed = [*some, full_cube(SMALL)]
    assert FirstMatch(listed).first(PACKETS) == [first_containing(listed, p) for p in PACKETS]


@given(
    st.lists(rules(), min_size=0, max_size=70),
    st.sampled_from(["allow", "drop"]),
    st.lists(packets(), max_size=20),
)
def test_first_match_equals_the_interpreter(specs: list, default: str, more: list) -> None:
    """Up to 71 rules, so bit vectors span more than one 64-bit word; and the
    kernel tier's bulk oracle built on it, verify.bpf.expected_many."""
    policy = make_policy(specs, default)
    probes = [*REPS, *more]
    got = FirstMatch([r.match.cube for r in policy.rules]).first([p.values for p in probes])
    assert [policy.rules[i] for i in got] == [evaluate(policy, p).rule for p in probes]
    assert expected_many(policy, probes) == [expected(policy, p) for p in probes]


def test_first_match_says_when_no_cube_holds_a_packet() -> None:
    tcp = cube(HEADER_SPACE, ip_proto=ValueSet.of_value(8, 6))
    udp = Packet.make(family=4, ip_proto=17, sport=1, dport=2)
    with pytest.raises(ValueError, match="no rule matches"):
        FirstMatch([tcp]).first([udp.values])


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_bpf_probes_of_the_examples(path: Path) -> None:
    """What the BPF check runs: a packet each live rule decides, then distinct
    boundary and random packets, all of them sendable."""
    for policy in compile_file(str(path)).program.policies:  # type: ignore[union-attr]
        found = probes(policy, random_count=300)
        assert not found.gave_up
        assert len(found.witnesses) + found.shadowed + found.unsendable == len(policy.rules)
        for packet, i in found.witnesses:
            assert evaluate(policy, packet).rule is policy.rules[i]
        everything = [p for p, _ in found.witnesses] + [*found.boundary, *found.random]
        assert len(set(everything)) == len(everything)
        assert all(on_the_wire(p) for p in everything)
