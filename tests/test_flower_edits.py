"""The flower checker without false alarms: edits of flowc's own output, judged
by an evaluator that reads only the emitted JSON (tests/flower_json_eval.py).

Behaviour-preserving edits (tests/edits.py: split, merge, swap disjoint
priority groups, hoist a disjoint filter, add a filter no packet reaches, add
a trap) must verify. Behaviour-changing edits (flip an action, delete a
filter, widen a mask, swap overlapping priorities) must be rejected with a
counterexample the evaluator confirms: the packet has a possible kernel
outcome other than the policy's verdict, the filter named is one of the
kernel's choices for it and is that wrong outcome, and the choices listed are
exactly the evaluator's. A changing edit may be accepted only when it did not
change behaviour: then no probe of the region it touched, nor any sampled
packet, diverges. The score is printed (pytest -s).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.flower import lowering
from backends.flower.rules import (
    TRAP,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    keys_disjoint,
)
from backends.flower.text import parse_tc_json, to_tc_json
from backends.nic_profile import load_profile
from compiler.frontend import compile_source
from ir.algebra import witness
from ir.analysis import region_witnesses
from ir.equivalence import ANY, compare
from ir.fields import HEADER_SPACE
from ir.model import Action, Match, Policy
from ir.packet import Packet
from ir.valueset import ValueSet
from tests.edits import CHANGING, EDITS, PRESERVING, spread
from tests.fixtures import EXAMPLE_PATHS, example_policies
from tests.flower_json_eval import deciders, load, wrong_frame_outcomes, wrong_outcomes
from tests.strategies import make_policy, rules
from verify.flower import audit, check, first_match_lists

# edit kind -> outcome -> count, over every test of this module (printed).
SCORE: dict[str, Counter[str]] = {}

VERIFIED = "verified"
CONFIRMED = "changed (a probe diverges): rejected, real counterexample"
REJECTED = "not shown by a probe: rejected, real counterexample"
ACCEPTED = "not shown by a probe: accepted, no divergence found"
# Tries of a changing edit for one whose change a probe packet shows.
TRIES = 6


def samples(policy: Policy, filters: list[FlowerFilter]) -> list[Packet]:
    """Packets to look for divergences at: every policy region's, every filter's."""
    out = [Packet(p) for p, _rule in region_witnesses(policy, per_rule=2)]
    for f in filters:
        c = f.match.cube()
        if c is not None and (p := witness(HEADER_SPACE, c)) is not None:
            out.append(Packet(p))
    return out


def judge(policy: Policy, kind: str, edited: list[FlowerFilter], probes: list[Packet]) -> str:
    """Check one edited list (read back from its JSON, as `verify --flower` does)
    and hold the answer to the evaluator; the outcome's name."""
    dump = to_tc_json(edited)
    evaluator = load(dump)
    result = check(policy, parse_tc_json(dump))
    if kind in PRESERVING:
        assert result.equivalent, (kind, result.counterexample)
        for p in samples(policy, edited):
            assert not wrong_outcomes(policy, evaluator, p), (kind, "the edit changed", p)
        return VERIFIED
    ce = result.counterexample
    changed = any(wrong_outcomes(policy, evaluator, p) for p in probes)
    if ce is not None:
        if ce.frame is not None:  # a malformed frame's view: the slow path drops it
            wrong = wrong_frame_outcomes(evaluator, ce.packet)
        else:
            wrong = wrong_outcomes(policy, evaluator, ce.packet)
        assert wrong, (kind, "the counterexample does not diverge", ce)
        choices = deciders(evaluator, ce.packet)
        assert {(f.prio, f.handle) for f in choices} == {(f.prio, f.handle) for f in ce.choices}
        named = next(f for f in choices if (f.prio, f.handle) == (ce.filter.prio, ce.filter.handle))
        assert named.outcome in wrong, (kind, "the kernel choice named is right", ce)
        return CONFIRMED if changed else REJECTED
    assert result.settled
    for p in [*probes, *samples(policy, edited)]:
        assert not wrong_outcomes(policy, evaluator, p), (kind, "accepted a divergence", p)
    # A second, plain algorithm: the region walk over the whole space, first
    # match by (priority, handle) (one of the kernel's choices everywhere).
    left, right, _owners = first_match_lists(policy, parse_tc_json(dump))
    assert compare(HEADER_SPACE, left, right, right_default=ANY).equivalent, kind
    return ACCEPTED


def try_every_edit(policy: Policy, filters: list[FlowerFilter], rng: random.Random) -> None:
    """Each edit kind once on flowc's (proven) lowering ``filters``."""
    assert check(policy, filters).equivalent
    groups: dict[int, list[FlowerFilter]] = {}
    for f in filters:
        groups.setdefault(f.prio, []).append(f)
    for members in groups.values():
        # What the edits' construction relies on: a priority holds disjoint filters.
        assert all(keys_disjoint(a.match, b.match) for a in members for b in members if a is not b)
    base = spread(filters)
    assert base is not None
    for kind, edit in EDITS.items():
        made = edit(base, rng)
        if kind in CHANGING:
            # Prefer an edit whose change the evaluator shows on a probe packet
            # (the check must then reject it); the last one tried is judged anyway.
            for _ in range(TRIES):
                if made is None or _shows_change(policy, made[1], made[2]):
                    break
                made = edit(base, rng)
        if made is None:
            SCORE.setdefault(kind, Counter())["not applicable"] += 1
            continue
        made_kind, edited, probes = made
        assert made_kind == kind
        SCORE.setdefault(kind, Counter())[judge(policy, kind, edited, probes)] += 1


def _shows_change(policy: Policy, edited: list[FlowerFilter], probes: list[Packet]) -> bool:
    evaluator = load(to_tc_json(edited))
    return any(wrong_outcomes(policy, evaluator, p) for p in probes)


def print_score() -> None:
    print("\nflower edits:")
    for kind in (*PRESERVING, *CHANGING):
        print(f"  {kind:30} {dict(SCORE.get(kind, {}))}")


@pytest.mark.parametrize("profile", ["software", "mlx5-connectx6dx"])
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_edits_of_example_lowerings(path: Path, profile: str) -> None:
    rng = random.Random(f"{path.stem}-{profile}")
    for policy in example_policies(path):
        filters = list(lowering.lower(policy, load_profile(profile)).filters)
        for _ in range(3):
            try_every_edit(policy, filters, rng)
    print_score()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(rules(), min_size=1, max_size=8),
    st.sampled_from(["allow", "drop"]),
    st.sampled_from([{}, {"max_rules": "12", "max_masks": "4"}]),
    st.integers(0, 2**32),
)
def test_edits_of_random_policy_lowerings(
    specs: list[tuple[Match, Action]], default: str, limits: dict[str, str], seed: int
) -> None:
    policy = make_policy(specs, default)
    filters = list(lowering.lower(policy, load_profile("software", limits)).filters)
    try_every_edit(policy, filters, random.Random(seed))


@st.composite
def sibling_rules(draw: st.DrawFn) -> tuple[Match, Action]:
    """Rules on single ports and /25 halves, so that flowc's filters of
    neighbouring rules are often halves of one (what a merge needs)."""
    constraints = [("family", ValueSet.of_value(8, 4)), ("ip_proto", ValueSet.of_value(8, 6))]
    with_port = draw(st.booleans())
    if with_port:
        constraints.append(("frag", ValueSet.of_values(2, (0, 1))))  # ports need the header
    if draw(st.booleans()):
        constraints.append(("ip4_src", ValueSet.of_prefix(32, draw(st.sampled_from(HALVES)), 25)))
    if with_port:
        constraints.append(("dport", ValueSet.of_value(16, draw(st.integers(80, 83)))))
    return Match(tuple(constraints)), Action(draw(st.sampled_from(["allow", "allow", "drop"])))


HALVES = [0x0A000000, 0x0A000080]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(sibling_rules(), min_size=2, max_size=8),
    st.sampled_from(["allow", "drop"]),
    st.integers(0, 2**32),
)
def test_edits_of_sibling_rule_lowerings(
    specs: list[tuple[Match, Action]], default: str, seed: int
) -> None:
    policy = make_policy(specs, default)
    filters = list(lowering.lower(policy, load_profile("software")).filters)
    try_every_edit(policy, filters, random.Random(seed))


def test_print_the_score() -> None:
    """The tally of the tests above (run with -s to see it); the preserving kinds
    and the changing kinds each have been exercised."""
    print_score()
    if not SCORE:
        pytest.skip("run with the edit tests to see the score")
    assert sum(SCORE.get(k, Counter())[VERIFIED] for k in PRESERVING) > 0
    assert sum(SCORE.get(k, Counter())[CONFIRMED] for k in CHANGING) > 0


# ----------------------------------------------- the two false alarms
POLICY = """
policy p ingress on eth0 {
    default drop
    allow tcp dport 80
    allow tcp from 10.0.0.0/8
}
"""


def _policy() -> Policy:
    result = compile_source(POLICY, "p.fw")
    assert result.program is not None
    return result.program.policies[0]


def _tcp(**keys: object) -> FlowerMatch:
    # ACK set: a TCP filter matching flags 0 would also decide truncated TCP
    # headers (their flags read 0), which these cases are not about.
    keys.setdefault("tcp_flags", Masked(0x10, 0x10))
    return FlowerMatch(0x0800, ip_proto=6, **keys)  # type: ignore[arg-type]


def test_an_overlap_inside_an_earlier_broader_filter_is_no_finding() -> None:
    policy = _policy()
    broad = FlowerFilter(0, 1, 1, _tcp(dst_port=Masked(80, 0xFFFF)), FlowerAction("pass"))
    # Two filters of one later priority, overlapping, acting differently, but
    # every packet of their overlap is tcp dport 80: priority 1 takes it.
    ten = Masked(0x0A000000, 0xFF000000)
    a = FlowerFilter(0, 2, 1, _tcp(src_ip=ten, dst_port=Masked(80, 0xFFFF)), FlowerAction("drop"))
    b = FlowerFilter(0, 2, 2, _tcp(src_ip=ten), FlowerAction("pass"))
    rest = FlowerFilter(0, 3, 1, FlowerMatch(0x0800), FlowerAction(TRAP, chain=1))
    filters = [broad, a, b, rest]
    result = check(policy, filters)
    assert result.equivalent, result.counterexample
    assert audit(policy, filters).sound
    evaluator = load(to_tc_json(filters))
    assert not any(wrong_outcomes(policy, evaluator, p) for p in samples(policy, filters))
    # Without the earlier filter the overlap is reached, and picking a is wrong.
    shown = check(policy, [a, b, rest])
    ce = shown.counterexample
    assert ce is not None and ce.filter == a and ce.ambiguous
    assert {f.handle for f in ce.choices} == {1, 2}
    assert (
        "mask creation order" in ce.reason and "if it picks chain 0 prio 2 handle 0x1" in ce.reason
    )
    assert wrong_outcomes(policy, load(to_tc_json([a, b, rest])), ce.packet) == {("drop",)}


def test_a_trap_overlapping_a_correct_filter_is_no_finding() -> None:
    policy = _policy()
    web = FlowerFilter(0, 1, 1, _tcp(dst_port=Masked(80, 0xFFFF)), FlowerAction("pass"))
    trap = FlowerFilter(0, 1, 2, _tcp(), FlowerAction(TRAP, chain=1))
    rest = FlowerFilter(0, 2, 1, FlowerMatch(0x0800), FlowerAction(TRAP, chain=1))
    filters = [web, trap, rest]
    # Either kernel choice on tcp dport 80 gives the policy's verdict.
    assert check(policy, filters).equivalent
    assert audit(policy, filters).sound
    # The same trap beside a wrong filter: the filter is a wrong kernel choice.
    wrong = FlowerFilter(0, 1, 1, _tcp(dst_port=Masked(81, 0xFFFF)), FlowerAction("pass"))
    result = check(policy, [wrong, trap, rest])
    ce = result.counterexample
    assert ce is not None and ce.filter == wrong and ce.policy_verdict == "drop"
    found = audit(policy, [wrong, trap, rest])
    assert [a.status for a in found.findings] == ["unsound", "sound", "sound"]


def test_a_step_limit_gives_up_rather_than_guess() -> None:
    """The pair walks share the check's step budget: cut short, the answer is
    "gave up" (never a false alarm, never a false proof)."""
    policy = _policy()
    ten = Masked(0x0A000000, 0xFF000000)
    a = FlowerFilter(0, 2, 1, _tcp(src_ip=ten, dst_port=Masked(80, 0xFFFF)), FlowerAction("drop"))
    b = FlowerFilter(0, 2, 2, _tcp(src_ip=ten), FlowerAction("pass"))
    broad = FlowerFilter(0, 1, 1, _tcp(dst_port=Masked(80, 0xFFFF)), FlowerAction("pass"))
    trap = FlowerFilter(0, 2, 3, _tcp(), FlowerAction(TRAP, chain=1))
    rest = FlowerFilter(0, 3, 1, FlowerMatch(0x0800), FlowerAction(TRAP, chain=1))
    filters = [broad, a, b, trap, rest]
    full = check(policy, filters)
    assert full.equivalent and full.steps > 1
    answers = set()
    for limit in range(1, full.steps + 1):
        result = check(policy, filters, step_limit=limit)
        assert result.counterexample is None
        answers.add(result.settled)
        found = audit(policy, filters, step_limit=limit)
        assert not found.with_status("unsound")
        assert found.sound == found.settled
    assert answers == {False, True}
