"""IR vs flower: the symbolic check proves correct lowerings and catches mutants.

The mutation suite takes flowc's lowering of every example (and generated
policies) and applies one mutation at a time: swap two priorities, widen or
narrow a mask, change an action, drop a filter, shift a range bound. Each
mutant's answer is held to two independent oracles: a counterexample must
be a packet the IR interpreter and the flower interpreter really decide
differently, and "equivalent" must agree with the plain region walk
(:func:`ir.equivalence.compare`, a different algorithm) and with every
sampled packet. The score is printed (pytest -s) and recorded in the
issue note.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.flower import lowering as flower
from backends.flower.conformance import profile_violations
from backends.flower.rules import (
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    FlowerMatchError,
    Masked,
    action_for,
    classify,
    ordered,
)
from backends.flower.text import to_tc_json
from backends.nic_profile import load_profile
from ir.algebra import full_cube, subtract, witness
from ir.analysis import region_witnesses
from ir.equivalence import ANY, compare
from ir.fields import HEADER_SPACE
from ir.interp import evaluate
from ir.model import Action, Match, Policy
from ir.packet import Packet
from tests.fixtures import EXAMPLE_PATHS, example_policies
from tests.flower_json_eval import load, wrong_frame_outcomes, wrong_outcomes
from tests.mutation import mutants
from tests.strategies import filters as random_filters
from tests.strategies import make_policy, packets, rules
from verify.flower import FlowerCheckError, check, first_match_lists


def disagree(policy: Policy, flt: list[FlowerFilter], packet: Packet) -> bool:
    verdict = classify(ordered(flt), packet)
    if verdict.trapped:
        return False
    assert verdict.filter is not None
    return verdict.filter.action != action_for(evaluate(policy, packet).action)


# ---------------------------------------------------------------- the cubes
@settings(max_examples=300, deadline=None)
@given(random_filters(), packets())
def test_filter_cube_is_exactly_what_the_filter_matches(f: FlowerFilter, extra: Packet) -> None:
    try:
        c = f.match.cube()
    except FlowerMatchError as err:
        # Refused, not guessed: ECN bits, or a mask with too many holes to enumerate.
        assert "ECN" in str(err) or "fragmented" in str(err)
        return
    probes = [extra]
    if c is not None:
        inside = witness(HEADER_SPACE, c)
        if inside is not None:
            probes.append(Packet(inside))
        for piece in subtract(HEADER_SPACE, full_cube(HEADER_SPACE), c):
            outside = witness(HEADER_SPACE, piece)
            if outside is not None:
                probes.append(Packet(outside))
    for p in probes:
        in_cube = c is not None and c.contains(p.values)
        assert f.match.matches(p) == in_cube, (p, f.match)


def test_ecn_bits_are_refused_not_guessed() -> None:
    m = FlowerMatch(0x0800, ip_tos=Masked(0x01, 0x03))
    with pytest.raises(FlowerMatchError, match="ECN"):
        m.cube()
    f = FlowerFilter(0, 1, 1, m, FlowerAction("drop"))
    (policy,) = example_policies(EXAMPLE_PATHS[0])[:1]
    with pytest.raises(FlowerCheckError, match="prio 1"):
        check(policy, [f])


# ------------------------------------------------------------ correct lowerings
@pytest.mark.parametrize("profile", ["software", "mlx5-connectx6dx", "nfp-agilio", "ice-e810"])
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_every_example_lowering_is_proven(path: Path, profile: str) -> None:
    nic = load_profile(profile)
    for policy in example_policies(path):
        program = flower.lower(policy, nic)
        result = check(policy, program.filters)
        assert result.equivalent, result.counterexample
        assert profile_violations(program.filters, nic) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(rules(), min_size=1, max_size=10),
    st.sampled_from(["allow", "drop"]),
    st.sampled_from(["software", "mlx5-connectx6dx", "ice-e810"]),
    st.integers(0, 2**32),
)
def test_random_policies_and_random_mutations(
    specs: list[tuple[Match, Action]], default: str, profile: str, seed: int
) -> None:
    policy = make_policy(specs, default)
    nic = load_profile(profile, {"max_rules": "40", "max_masks": "6"})
    flt = list(flower.lower(policy, nic).filters)
    assert check(policy, flt).equivalent
    rng = random.Random(seed)
    candidates = list(mutants(flt, rng))
    if not candidates:
        return
    kind, mutant = rng.choice(candidates)
    judge(policy, mutant, kind)


def reference_equivalent(policy: Policy, flt: list[FlowerFilter]) -> bool:
    """The plain region walk over the whole space (no refinement shortcuts)."""
    left, right, _kept = first_match_lists(policy, flt)
    return compare(HEADER_SPACE, left, right, right_default=ANY).equivalent


def judge(policy: Policy, mutant: list[FlowerFilter], kind: str) -> bool:
    """Check a mutant and hold the answer to the oracles; True when caught."""
    result = check(policy, mutant)
    ce = result.counterexample
    evaluator = load(to_tc_json(mutant))
    if ce is not None:
        # Valid: replayed through the independent JSON evaluator, some kernel
        # choice for the packet is not the policy's verdict, and the filter
        # named is such a choice; the IR side's decider is the one reported.
        if ce.frame is not None:
            # A malformed frame's view: the slow path drops the frame.
            assert wrong_frame_outcomes(evaluator, ce.packet), (kind, ce)
            assert ce.filter.action.kind not in ("trap", "drop")
            return True
        wrong = wrong_outcomes(policy, evaluator, ce.packet)
        assert wrong, (kind, ce)
        assert evaluate(policy, ce.packet).rule == ce.rule
        assert ce.filter in ce.choices and ce.filter.match.matches(ce.packet)
        assert ce.filter.action != action_for(ce.rule.action)
        if not ce.ambiguous:
            assert disagree(policy, mutant, ce.packet), (kind, ce)
            assert classify(ordered(mutant), ce.packet).filter == ce.filter
        return True
    assert result.equivalent
    assert reference_equivalent(policy, mutant), (kind, "missed by check")
    # Each probe through both the flower model and the independent JSON evaluator.
    for p in samples(policy, mutant):
        assert not disagree(policy, mutant, p), (kind, "missed by check", p)
        assert not wrong_outcomes(policy, evaluator, p), (kind, "missed by check", p)
    return False


def samples(policy: Policy, flt: list[FlowerFilter]) -> list[Packet]:
    probes = [Packet(p) for p, _rule in region_witnesses(policy, per_rule=4)]
    for f in flt:
        c = f.match.cube()
        if c is not None and (p := witness(HEADER_SPACE, c)) is not None:
            probes.append(Packet(p))
    return probes


# kind -> [caught, mutants]; mutants not caught were proven equivalent by both oracles.
SCORE: dict[str, list[int]] = {}


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_mutants_are_caught_with_valid_counterexamples(path: Path) -> None:
    rng = random.Random(path.stem)
    for policy in example_policies(path):
        for profile in ("software", "mlx5-connectx6dx"):
            flt = list(flower.lower(policy, load_profile(profile)).filters)
            for kind, mutant in mutants(flt, rng):
                tally = SCORE.setdefault(kind, [0, 0])
                tally[0] += judge(policy, mutant, kind)
                tally[1] += 1
    caught = sum(t[0] for t in SCORE.values())
    total = sum(t[1] for t in SCORE.values())
    print(f"\nmutation score so far: {caught} caught / {total} mutants; per kind {SCORE}")
