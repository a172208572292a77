"""Shadowing, redundancy and overlap analyses against brute force.

The oracle enumerates representative packets: for every field the policy
constrains, one value from each elementary interval the constraints carve
out (plus one value outside all of them). Every packet of the space then
behaves exactly like one representative, so "no representative has rule r
as its first match" is exactly "r is shadowed".
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ir import analysis
from ir.interp import evaluate
from ir.model import Action, Match, Policy, Program
from ir.packet import Packet
from ir.passes import drop_unreachable
from ir.valueset import ValueSet
from tests.strategies import REPS, make_policy, rules


def brute_force(policy: Policy) -> tuple[set[int], set[int]]:
    first: dict[int, list[Packet]] = {}
    for packet in REPS:
        first.setdefault(evaluate(policy, packet).rule.priority, []).append(packet)
    shadowed = {r.priority for r in policy.rules if r.priority not in first}
    redundant = set()
    for r in policy.rules[:-1]:
        if r.priority in shadowed:
            continue
        without = policy.renumbered(tuple(x for x in policy.rules if x is not r))
        if all(evaluate(without, p).action == r.action for p in first[r.priority]):
            redundant.add(r.priority)
    return shadowed, redundant


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


@given(st.lists(rules(), min_size=1, max_size=7), st.sampled_from(["allow", "drop"]))
def test_drop_unreachable_keeps_every_verdict(specs: list, default: str) -> None:
    policy = make_policy(specs, default)
    (slim,) = drop_unreachable(Program((policy,))).policies
    for packet in REPS:
        before, after = evaluate(policy, packet), evaluate(slim, packet)
        assert before.action == after.action
        assert before.rule.origin == after.rule.origin


@given(st.lists(rules(), min_size=1, max_size=6))
def test_overlap_graph_matches_brute_force(specs: list) -> None:
    policy = make_policy(specs, "drop")
    graph = analysis.overlap_graph(policy)
    expected = {
        (a.priority, b.priority)
        for a, b in itertools.combinations(policy.rules, 2)
        if any(a.match.matches(p.values) and b.match.matches(p.values) for p in REPS)
    }
    assert set(graph.edges) == expected


def test_single_shadowing_rule_is_named() -> None:
    wide = Match((("ip_proto", ValueSet.of_value(8, 6)),))
    narrow = Match((("ip_proto", ValueSet.of_value(8, 6)), ("dport", ValueSet.of_value(16, 22))))
    policy = make_policy([(wide, Action("allow")), (narrow, Action("drop"))], "drop")
    (finding,) = analysis.analyse(policy).shadowed
    assert finding.rule.priority == 1
    assert [r.priority for r in finding.by] == [0]
