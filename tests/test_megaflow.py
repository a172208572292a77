"""Megaflows against brute force: sound (one rule decides every packet),
maximal (no field widens to its next block and stays sound), and built of
blocks a match key can express.

The small space of tests/test_equivalence.py (a protocol root, an address,
a port that only exists under protocol 3) is enumerated exactly; on the real
header space the proof is :func:`ir.megaflow.decides_whole` plus the
interpreter on sampled packets.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ir.algebra import Cube
from ir.analysis import region_witnesses
from ir.fields import HEADER_SPACE, Space
from ir.interp import evaluate
from ir.megaflow import (
    BITS,
    EXACT_5TUPLE,
    MEGAFLOW,
    FieldShape,
    Megaflow,
    PolicyRegions,
    Shapes,
    _wider,
    block,
    decides_whole,
    decides_whole_by_walk,
    mask_of_length,
    megaflow,
    megaflow_by_algebra,
    narrowed,
)
from ir.packet import Packet, Point, prerequisites_met
from ir.valueset import ValueSet
from tests.fixtures import EXAMPLE_PATHS, example_policies
from tests.strategies import PACKETS, SMALL, cubes

SMALL_SHAPES = (
    Shapes("prefix", {"proto": FieldShape(lengths=(0,))}),
    Shapes("bits", {"proto": FieldShape(lengths=(0,)), "port": FieldShape(BITS)}),
    Shapes("coarse", {"src": FieldShape(lengths=(0, 2))}),
)


def first_rule(rules: list[Cube], point: Point) -> int | None:
    return next((i for i, c in enumerate(rules) if c.contains(point)), None)


def is_block(space: Space, flow: Megaflow, shapes: Shapes) -> bool:
    for i, (shape, mask) in enumerate(zip(shapes.of(space), flow.masks, strict=True)):
        width = space.fields[i].width
        if shape.kind != BITS:
            assert shape.lengths is not None
            if mask not in {mask_of_length(width, n) for n in shape.lengths} | {0}:
                return False
        expected = block(width, flow.point[i], mask) if mask else space.fields[i].full
        if flow.cube.sets[i] != expected:
            return False
    return True


def widenings(space: Space, flow: Megaflow, shapes: Shapes) -> list[tuple[int, ...]]:
    """Every mask list with one field widened to a wider allowed block, keeping
    prerequisite fields exact under narrowed dependents (as a match key needs)."""
    out = []
    roots = {
        i: {space.index[name] for alt in f.prerequisite for name, _ in alt}
        for i, f in enumerate(space.fields)
    }
    for i, shape in enumerate(shapes.of(space)):
        mask = flow.masks[i]
        if not mask:
            continue
        if any(flow.masks[d] and i in roots[d] for d in roots):
            continue
        for m in _wider(space.fields[i].width, shape, mask):
            trial = list(flow.masks)
            trial[i] = m
            out.append(tuple(trial))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(cubes, max_size=6), st.sampled_from(SMALL_SHAPES), st.data())
def test_megaflows_are_sound_maximal_blocks(
    rule_cubes: list[Cube], shapes: Shapes, data: st.DataObject
) -> None:
    rules = [*rule_cubes, Cube(tuple(f.full for f in SMALL.fields))]
    regions = PolicyRegions(SMALL, rules)
    point = data.draw(st.sampled_from(PACKETS))
    flow = megaflow(regions, point, shapes)
    assert flow is not None
    assert flow.rule == first_rule(rules, point)
    assert flow.cube.contains(point)
    assert is_block(SMALL, flow, shapes)
    members = [p for p in PACKETS if flow.cube.contains(p)]
    assert all(first_rule(rules, p) == flow.rule for p in members)
    assert decides_whole(regions, flow.cube, flow.rule)
    # Dependent fields are narrowed only under exact prerequisite fields.
    for i, f in enumerate(SMALL.fields):
        if flow.masks[i] and f.prerequisite:
            assert prerequisites_met(SMALL, point, i)
            for alt in f.prerequisite:
                for name, _ in alt:
                    root = SMALL.index[name]
                    assert flow.masks[root] == (1 << SMALL.fields[root].width) - 1
    # Maximal: any one field widened holds a packet another rule decides.
    for trial in widenings(SMALL, flow, shapes):
        wider = narrowed(SMALL, Megaflow(flow.cube, (0,) * len(trial), point, flow.rule), trial)
        assert any(first_rule(rules, p) != flow.rule for p in PACKETS if wider.cube.contains(p))


def test_narrowing_keeps_the_packet_and_refuses_wider_masks() -> None:
    rules = [Cube(tuple(f.full for f in SMALL.fields))]
    point = PACKETS[5]
    flow = megaflow(PolicyRegions(SMALL, rules), point, SMALL_SHAPES[0])
    assert flow is not None and flow.masks == (0, 0, 0)
    exact = narrowed(SMALL, flow, (3, 15, 0))
    assert exact.cube.contains(point) and exact.rule == flow.rule
    with pytest.raises(ValueError, match="include"):
        narrowed(SMALL, exact, (0, 0, 0))


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_example_megaflows_are_proven_and_checked_by_the_interpreter(path: Path) -> None:
    rng = random.Random(path.stem)
    for policy in example_policies(path):
        regions = PolicyRegions(HEADER_SPACE, [r.match.cube for r in policy.rules])
        for point, _rule in region_witnesses(policy, per_rule=2):
            for shapes in (MEGAFLOW, EXACT_5TUPLE):
                flow = megaflow(regions, point, shapes)
                assert flow is not None
                assert flow.rule == evaluate(policy, Packet(point)).rule.priority
                assert is_block(HEADER_SPACE, flow, shapes)
                assert decides_whole(regions, flow.cube, flow.rule)
                # Packets drawn from the cube: the interpreter agrees.
                for _ in range(5):
                    sample = tuple(
                        rng.choice([lo, hi]) for lo, hi in (s.intervals[0] for s in flow.cube.sets)
                    )
                    if flow.cube.contains(sample):
                        try:
                            packet = Packet(sample)
                        except ValueError:
                            continue
                        assert evaluate(policy, packet).rule.priority == flow.rule


def test_exact_5tuple_pins_the_five_tuple_and_megaflow_is_wider() -> None:
    (policy,) = example_policies(EXAMPLE_PATHS[-1])[:1]
    regions = PolicyRegions(HEADER_SPACE, [r.match.cube for r in policy.rules])
    point = Packet.make(
        family=4, ip_proto=6, ip4_src=0x0A0A000A, ip4_dst=0x0A0A0002, sport=40000, dport=443
    ).values
    exact = megaflow(regions, point, EXACT_5TUPLE)
    wide = megaflow(regions, point, MEGAFLOW)
    assert exact is not None and wide is not None
    for name in ("ip4_src", "ip4_dst", "sport", "dport", "ip_proto"):
        assert exact.cube.sets[HEADER_SPACE.index[name]].size() == 1
    assert all(e.is_subset(w) for e, w in zip(exact.cube.sets, wide.cube.sets, strict=True))
    assert wide.cube != exact.cube


@settings(max_examples=300, deadline=None)
@given(st.lists(cubes, max_size=6), st.sampled_from(SMALL_SHAPES), st.data())
def test_a_slow_path_rule_hint_is_checked_not_trusted(
    rule_cubes: list[Cube], shapes: Shapes, data: st.DataObject
) -> None:
    """A miss event's rule saves the first-match look-up; a wrong one (another
    generation's, a corrupted event) must still give the first match's megaflow."""
    rules = [*rule_cubes, Cube(tuple(f.full for f in SMALL.fields))]
    regions = PolicyRegions(SMALL, rules)
    point = data.draw(st.sampled_from(PACKETS))
    hint = data.draw(st.integers(-1, len(rules)))
    flow = megaflow(regions, point, shapes, rule=hint)
    plain = megaflow(regions, point, shapes)
    assert flow is not None and plain is not None
    assert flow.rule == first_rule(rules, point)
    assert flow.masks == plain.masks


@settings(max_examples=300, deadline=None)
@given(st.lists(cubes, max_size=6), st.sampled_from(SMALL_SHAPES), st.data())
def test_miss_lengths_build_the_same_megaflows_as_the_cube_algebra(
    rule_cubes: list[Cube], shapes: Shapes, data: st.DataObject
) -> None:
    """The fast construction runs the old greedy on integers: same cuts, same
    widening, so the same cube (rule counts do not move)."""
    rules = [*rule_cubes, Cube(tuple(f.full for f in SMALL.fields))]
    regions = PolicyRegions(SMALL, rules)
    point = data.draw(st.sampled_from(PACKETS))
    fast = megaflow(regions, point, shapes)
    slow = megaflow_by_algebra(regions, point, shapes)
    assert fast is not None and slow is not None
    assert fast.rule == slow.rule
    assert fast.masks == slow.masks


@settings(max_examples=400, deadline=None)
@given(st.lists(cubes, max_size=6), cubes, st.data())
def test_the_install_proof_is_exact(rule_cubes: list[Cube], q: Cube, data: st.DataObject) -> None:
    """decides_whole says yes exactly when every packet of ``q`` has ``rule`` as its
    first match (brute force), and agrees with the region walk it replaced."""
    rules = [*rule_cubes, Cube(tuple(f.full for f in SMALL.fields))]
    regions = PolicyRegions(SMALL, rules)
    rule = data.draw(st.integers(0, len(rules) - 1))
    members = [p for p in PACKETS if q.contains(p)]
    truth = all(first_rule(rules, p) == rule for p in members)
    assert decides_whole(regions, q, rule) == truth
    assert decides_whole_by_walk(regions, q, rule) == truth


def test_proof_refuses_a_cube_reaching_into_an_earlier_rule() -> None:
    web = Cube((ValueSet.of_value(2, 3), ValueSet.full(4), ValueSet.of_value(3, 5)))
    rest = Cube(tuple(f.full for f in SMALL.fields))
    regions = PolicyRegions(SMALL, [web, rest])
    proto3 = Cube((ValueSet.of_value(2, 3), ValueSet.full(4), ValueSet.full(3)))
    assert not decides_whole(regions, proto3, 1)
    other = Cube((ValueSet.of_value(2, 1), ValueSet.full(4), ValueSet.full(3)))
    assert decides_whole(regions, other, 1)
