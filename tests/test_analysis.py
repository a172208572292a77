"""Shadowing, redundancy and overlap analyses against brute force.

The oracle enumerates representative packets: for every field the policy
constrains, one value from each elementary interval the constraints carve
out (plus one value outside all of them). Every packet of the space then
behaves exactly like one representative, so "no representative has rule r
as its first match" is exactly "r is shadowed".
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from ir import analysis
from ir.interp import evaluate
from ir.model import Action, Match, Policy, Program, Rule
from ir.packet import Packet
from ir.passes import drop_unreachable
from ir.valueset import ValueSet
from tests.strategies import REPS, make_policy, rules


def without(policy: Policy, gone: set[int]) -> Policy:
    return policy.renumbered(tuple(r for r in policy.rules if r.priority not in gone))


def same_verdicts(a: Policy, b: Policy) -> bool:
    return all(evaluate(a, p).action == evaluate(b, p).action for p in REPS)


def brute_force(policy: Policy) -> tuple[set[int], set[int]]:
    """Unreachable rules, then the greedy removal set, last rule first, by trial deletion."""
    first: dict[int, list[Packet]] = {}
    for packet in REPS:
        first.setdefault(evaluate(policy, packet).rule.priority, []).append(packet)
    shadowed = {r.priority for r in policy.rules if r.priority not in first}
    gone = {s for s in shadowed if s != policy.default.priority}
    redundant = set()
    for r in reversed(policy.rules[:-1]):
        if r.priority in shadowed:
            continue
        if same_verdicts(without(policy, gone), without(policy, gone | {r.priority})):
            redundant.add(r.priority)
            gone.add(r.priority)
    # The default is unreached only if it stays so once the findings go.
    slim = without(policy, gone)
    if any(evaluate(slim, p).rule.is_default for p in REPS):
        shadowed.discard(policy.default.priority)
    return shadowed, redundant


def deciding(policy: Policy, gone: set[int], rule: Rule, *, region: bool) -> set[int]:
    """Priorities (in ``policy``) of the rules deciding ``rule``'s packets once ``gone`` go.

    With ``region``, only the packets ``rule`` decides in ``policy``; else all it matches.
    """
    slim = without(policy, gone)
    by_origin = {r.origin: r.priority for r in policy.rules}
    return {
        by_origin[evaluate(slim, p).rule.origin]
        for p in REPS
        if rule.match.matches(p.values) and (not region or evaluate(policy, p).rule == rule)
    }


@given(st.lists(rules(), min_size=1, max_size=7), st.sampled_from(["allow", "drop"]))
def test_shadowing_and_redundancy_match_brute_force(specs: list, default: str) -> None:
    policy = make_policy(specs, default)
    findings = analysis.analyse(policy)
    assert not findings.gave_up
    shadowed, redundant = brute_force(policy)
    assert {s.rule.priority for s in findings.shadowed} == shadowed
    assert {r.rule.priority for r in findings.redundant} == redundant
    for s in findings.shadowed:
        assert all(b.priority < s.rule.priority for b in s.by)


@given(
    st.lists(rules(), min_size=1, max_size=5).flatmap(
        lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=8).map(
            lambda more: base + more
        )
    ),
    st.randoms(use_true_random=False),
    st.sampled_from(["allow", "drop"]),
)
def test_findings_are_safe_to_act_on_together(
    specs: list, rnd: random.Random, default: str
) -> None:
    """Duplicated and overlapping rules: deleting every finding keeps every verdict."""
    rnd.shuffle(specs)
    policy = make_policy(specs, default)
    findings = analysis.analyse(policy)
    assert not findings.gave_up
    gone = {s.rule.priority for s in findings.shadowed if not s.rule.is_default}
    gone |= {r.rule.priority for r in findings.redundant}
    slim = without(policy, gone)
    assert same_verdicts(policy, slim)
    # Maximal: no rule left could be deleted as well.
    for r in slim.rules[:-1]:
        assert not same_verdicts(slim, without(slim, {r.priority}))
    # Each finding names rules that stay and decide its packets after the deletion.
    for red in findings.redundant:
        named = {r.priority for r in red.decided_by}
        assert named and not named & gone
        assert all(n > red.rule.priority for n in named)
        assert named == deciding(policy, gone, red.rule, region=True)
    for sh in findings.shadowed:
        if sh.rule.is_default:
            continue
        if sh.then_by:
            takers = {r.priority for r in sh.then_by}
            assert takers == deciding(policy, gone, sh.rule, region=False)
            assert {r.priority for r in sh.by} & gone
        else:
            assert not {r.priority for r in sh.by} & gone
            assert all(d < sh.rule.priority for d in deciding(policy, gone, sh.rule, region=False))


def test_identical_rules_are_not_both_findings() -> None:
    tcp22 = Match(
        (
            ("ip_proto", ValueSet.of_value(8, 6)),
            ("frag", ValueSet.of_values(2, (0, 1))),
            ("dport", ValueSet.of_value(16, 22)),
        )
    )
    policy = make_policy([(tcp22, Action("allow")), (tcp22, Action("allow"))], "drop")
    findings = analysis.analyse(policy)
    assert [s.rule.priority for s in findings.shadowed] == [1]
    assert [s.priority for s in findings.shadowed[0].by] == [0]
    assert findings.redundant == ()


def test_redundant_names_the_rule_left_after_a_chain() -> None:
    """A redundant via B, B redundant via the default: A's packets go to the default."""
    tcp = Match((("ip_proto", ValueSet.of_value(8, 6)),))
    tcp22 = Match(
        (
            ("ip_proto", ValueSet.of_value(8, 6)),
            ("frag", ValueSet.of_values(2, (0, 1))),
            ("dport", ValueSet.of_value(16, 22)),
        )
    )
    policy = make_policy([(tcp22, Action("allow")), (tcp, Action("allow"))], "allow")
    findings = analysis.analyse(policy)
    assert [(r.rule.priority, [d.priority for d in r.decided_by]) for r in findings.redundant] == [
        (0, [2]),
        (1, [2]),
    ]


def test_shadowed_rule_whose_shadower_goes_names_the_rule_that_takes_over() -> None:
    tcp = Match((("ip_proto", ValueSet.of_value(8, 6)),))
    tcp22 = Match(
        (
            ("ip_proto", ValueSet.of_value(8, 6)),
            ("frag", ValueSet.of_values(2, (0, 1))),
            ("dport", ValueSet.of_value(16, 22)),
        )
    )
    policy = make_policy([(tcp, Action("allow")), (tcp22, Action("allow"))], "allow")
    findings = analysis.analyse(policy)
    ((sh, [by], then),) = [
        (s.rule.priority, [b.priority for b in s.by], [t.priority for t in s.then_by])
        for s in findings.shadowed
    ]
    assert (sh, by, then) == (1, 0, [2])
    assert [r.rule.priority for r in findings.redundant] == [0]


@given(st.lists(rules(), min_size=1, max_size=7), st.sampled_from(["allow", "drop"]))
def test_drop_unreachable_keeps_every_verdict(specs: list, default: str) -> None:
    policy = make_policy(specs, default)
    (slim,) = drop_unreachable(Program((policy,))).policies
    for packet in REPS:
        before, after = evaluate(policy, packet), evaluate(slim, packet)
        assert before.action == after.action
        assert before.rule.origin == after.rule.origin


def test_single_shadowing_rule_is_named() -> None:
    wide = Match((("ip_proto", ValueSet.of_value(8, 6)),))
    narrow = Match(
        (
            ("ip_proto", ValueSet.of_value(8, 6)),
            ("frag", ValueSet.of_values(2, (0, 1))),
            ("dport", ValueSet.of_value(16, 22)),
        )
    )
    policy = make_policy([(wide, Action("allow")), (narrow, Action("drop"))], "drop")
    (finding,) = analysis.analyse(policy).shadowed
    assert finding.rule.priority == 1
    assert [r.priority for r in finding.by] == [0]
