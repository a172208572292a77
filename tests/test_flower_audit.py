"""Audit of installed filters: every filter judged on its own against the policy.

The oracle for "unsound" is a separate, plain question per filter: the
region walk (:func:`ir.equivalence.compare`, no refinement shortcuts) over
the filter's own cube, with every filter of an earlier priority deciding ANY
(packets they take never reach this one; filters of its own priority do not
shield it, since mask creation order may pick it first). Every UNSOUND
finding's packet is re-run through both interpreters.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.flower import lowering as flower
from backends.flower.dissector import MALFORMED_VIEWS
from backends.flower.rules import (
    TRAP,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    action_for,
    classify,
    ordered,
)
from backends.nic_profile import load_profile
from compiler.frontend import compile_source
from ir.algebra import full_cube, intersect
from ir.equivalence import ANY, Entry, compare
from ir.fields import HEADER_SPACE
from ir.interp import evaluate
from ir.model import Action, Match, Policy
from tests.fixtures import EXAMPLE_PATHS, EXAMPLES, example_policies
from tests.mutation import mutants
from tests.strategies import make_policy, rules
from verify.flower import SOUND, STALE, UNCHECKED, UNSOUND, Audit, audit


def reference_unsound(policy: Policy, filters: list[FlowerFilter]) -> set[int]:
    """Positions (in priority order, chain 0) of filters the kernel may pick for
    some packet the policy decides otherwise, one plain walk per filter."""
    chain0 = ordered(f for f in filters if f.chain == 0)
    left = [Entry(r.match.cube, action_for(r.action)) for r in policy.rules]
    drop = action_for(Action("drop"))
    # The slow path drops malformed frames: their flower views must be trapped or dropped.
    view_lists = [
        [Entry(v.cube, drop), Entry(full_cube(HEADER_SPACE), ANY)] for v in MALFORMED_VIEWS
    ]
    out = set()
    cubes = [f.match.cubes() for f in chain0]
    for i, f in enumerate(chain0):
        decision = ANY if f.action.kind == TRAP else f.action
        for c in cubes[i]:
            # Within c only earlier cubes meeting c can shadow it; the rest would
            # only make each walk (one per filter, so quadratic) slower.
            earlier = [
                Entry(e, ANY)
                for g, g_cubes in zip(chain0, cubes, strict=True)
                if g.prio < f.prio
                for e in g_cubes
                if intersect(e, c) is not None
            ]
            for spec in [left, *(view_lists if f.action.kind not in (TRAP, "drop") else [])]:
                walk = compare(
                    HEADER_SPACE,
                    spec,
                    [*earlier, Entry(c, decision)],
                    right_default=ANY,
                    within=[c],
                )
                assert walk.settled
                if walk.divergences:
                    out.add(i)
    return out


def assert_findings_valid(policy: Policy, filters: list[FlowerFilter], result: Audit) -> None:
    """Every UNSOUND finding carries a packet the filter really decides wrongly
    (or, for two filters of one priority, may decide wrongly: it is one of the
    kernel's choices for it)."""
    chain0 = ordered(f for f in filters if f.chain == 0)
    assert [a.filter for a in result.findings] == chain0
    for finding in result.with_status(UNSOUND):
        ce = finding.counterexample
        assert ce is not None and ce.filter == finding.filter
        assert finding.filter.match.matches(ce.packet)
        if ce.frame is not None:  # a malformed frame's view: the slow path drops it
            assert finding.filter.action.kind not in (TRAP, "drop")
            continue
        assert finding.filter.action != action_for(evaluate(policy, ce.packet).action)
        assert evaluate(policy, ce.packet).rule == ce.rule
        assert finding.filter in ce.choices
        if not ce.ambiguous:
            assert classify(chain0, ce.packet).filter == finding.filter


def assert_unsound_as_the_reference_says(
    policy: Policy, filters: list[FlowerFilter], result: Audit
) -> set[int]:
    """The UNSOUND filters are exactly those the per-filter walk finds unsound.
    Returns their positions."""
    unsound = positions(result, UNSOUND)
    assert unsound == reference_unsound(policy, filters)
    return unsound


def positions(result: Audit, *statuses: str) -> set[int]:
    return {i for i, a in enumerate(result.findings) if a.status in statuses}


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_every_example_lowering_audits_sound(path: Path) -> None:
    for policy in example_policies(path):
        for profile in ("software", "mlx5-connectx6dx"):
            program = flower.lower(policy, load_profile(profile), generation=7)
            result = audit(policy, program.filters, generation=7)
            assert result.sound
            assert {a.status for a in result.findings} == {SOUND}


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_example_mutants_match_the_per_filter_walk(path: Path) -> None:
    rng = random.Random(f"audit-{path.stem}")
    for policy in example_policies(path):
        flt = list(flower.lower(policy, load_profile("software")).filters)
        # The reference walks once per filter: six mutants per policy keep it quick.
        for _kind, mutant in itertools.islice(mutants(flt, rng), 6):
            result = audit(policy, mutant)
            assert result.settled
            assert_findings_valid(policy, mutant, result)
            assert_unsound_as_the_reference_says(policy, mutant, result)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(rules(), min_size=1, max_size=8),
    st.sampled_from(["allow", "drop"]),
    st.integers(0, 2**32),
)
def test_random_policies_with_several_mutations(
    specs: list[tuple[Match, Action]], default: str, seed: int
) -> None:
    policy = make_policy(specs, default)
    nic = load_profile("software")
    flt = list(flower.lower(policy, nic).filters)
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        candidates = [m for _kind, m in mutants(flt, rng)]
        if candidates:
            flt = rng.choice(candidates)
    result = audit(policy, flt)
    assert result.settled
    assert_findings_valid(policy, flt, result)
    unsound = assert_unsound_as_the_reference_says(policy, flt, result)
    assert result.sound == (not unsound)


VERSION_2 = (
    (EXAMPLES / "web-tier.fw")
    .read_text()
    .replace("allow tcp from lb to webs dport 8080", "drop tcp from lb to webs dport 8080")
)


def test_filters_of_an_old_generation_are_stale_or_unsound() -> None:
    (old,) = example_policies(EXAMPLES / "web-tier.fw")
    compiled = compile_source(VERSION_2, str(EXAMPLES / "web-tier.fw"))
    assert compiled.program is not None
    (new,) = compiled.program.policies
    installed = list(flower.lower(old, generation=1).filters)
    result = audit(new, installed, generation=2)
    assert not result.sound
    changed = [i for i, r in enumerate(old.rules) if r.origin.text.startswith("allow tcp from lb")]
    for finding in result.findings:
        f = finding.filter
        assert f.cookie is not None
        if f.cookie.rule in changed and f.action.kind != TRAP:
            assert finding.status == UNSOUND
            assert finding.counterexample is not None
            assert finding.counterexample.policy_verdict == "drop"
            assert "generation 1" in finding.note
        else:
            assert finding.status == STALE, finding
    # Without an expected generation the sound ones are simply sound.
    plain = audit(new, installed)
    assert positions(plain, UNSOUND) == positions(result, UNSOUND)
    assert positions(plain, STALE) == set()
    # The new lowering, of the new generation, is sound.
    assert audit(new, flower.lower(new, generation=2).filters, generation=2).sound


def test_a_filter_the_ir_cannot_express_is_unchecked_and_matches_nothing() -> None:
    (policy,) = example_policies(EXAMPLES / "web-tier.fw")[:1]
    ecn = FlowerFilter(
        0, 1, 1, FlowerMatch(0x0800, ip_tos=Masked(0x01, 0x03)), FlowerAction("drop")
    )
    wrong = FlowerFilter(0, 2, 1, FlowerMatch(0x0800), FlowerAction("pass"))
    result = audit(policy, [ecn, wrong])
    assert [a.status for a in result.findings] == [UNCHECKED, UNSOUND]
    assert "ECN" in result.findings[0].note
    assert not result.sound


def test_same_priority_overlap_with_different_actions_is_unsound() -> None:
    (policy,) = example_policies(EXAMPLES / "web-tier.fw")[:1]
    drop_everything = FlowerFilter(0, 5, 1, FlowerMatch(0x0800), FlowerAction("drop"))
    allow_everything = FlowerFilter(0, 5, 2, FlowerMatch(0x0800), FlowerAction("pass"))
    result = audit(policy, [drop_everything, allow_everything])
    # Both can decide some packet: the allow is wrong for dropped traffic.
    allow_finding = result.findings[1]
    assert allow_finding.status == UNSOUND
    assert allow_finding.counterexample is not None
    assert "mask creation order" in allow_finding.counterexample.reason
    # An earlier priority that takes every packet of the overlap removes the ambiguity.
    trap_all = FlowerFilter(0, 1, 1, FlowerMatch(0x0800), FlowerAction(TRAP, chain=1))
    shadowed = audit(policy, [trap_all, drop_everything, allow_everything])
    assert [a.status for a in shadowed.findings] == [SOUND, SOUND, SOUND]


def test_filters_on_other_chains_are_counted_not_judged() -> None:
    (policy,) = example_policies(EXAMPLES / "web-tier.fw")[:1]
    elsewhere = FlowerFilter(3, 1, 1, FlowerMatch(0x0800), FlowerAction("pass"))
    result = audit(policy, [elsewhere])
    assert result.findings == () and result.ignored == 1 and result.sound


def test_foreign_filters_are_judged_too() -> None:
    (policy,) = example_policies(EXAMPLES / "web-tier.fw")[:1]
    program = flower.lower(policy)
    foreign = dataclasses.replace(program.filters[0], cookie=None, prio=1, handle=99)
    result = audit(policy, [foreign, *program.filters], generation=0)
    assert result.sound
