"""Benchmark workloads: deterministic, compilable, and traces that follow their rules."""

from __future__ import annotations

import collections

import pytest

from bench.workloads import SEED_FAMILIES, generate_rules, policy_text, trace_lines, zipf_indexes
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.interp import evaluate


@pytest.mark.parametrize("family", SEED_FAMILIES)
def test_generated_policies_are_deterministic_and_compile(family: str) -> None:
    text = policy_text(family, 300, seed=5)
    assert text == policy_text(family, 300, seed=5)
    assert text != policy_text(family, 300, seed=6)
    result = compile_source(text, f"{family}.fw")
    assert result.ok and result.program is not None
    assert len(result.program.policies[0].rules) == 301


def test_generated_prefixes_overlap() -> None:
    rules = generate_rules("fw", 500, seed=1)
    dsts = {r.dst for r in rules if r.dst[1]}
    nested = sum(
        1
        for a in dsts
        for b in dsts
        if a != b and a[1] < b[1] and (b[0] >> (32 - a[1])) == (a[0] >> (32 - a[1]))
    )
    assert nested > 50  # many overlapping (nested) prefixes, as in ClassBench


def test_trace_packets_fall_inside_rules_and_follow_zipf() -> None:
    rules = generate_rules("acl", 200, seed=2)
    policy_result = compile_source(policy_text("acl", 200, seed=2), "acl.fw")
    assert policy_result.program is not None
    policy = policy_result.program.policies[0]
    lines = list(trace_lines(rules, flows=100, packets=5000, skew=1.2, seed=2))
    assert len(lines) == 5000
    decided_by_rule = sum(
        1 for line in lines[:500] if not evaluate(policy, parse_packet(line)).rule.is_default
    )
    assert decided_by_rule == 500  # every sampled flow lies inside the rule it came from
    counts = collections.Counter(lines).most_common()
    assert counts[0][1] > 5 * counts[len(counts) // 2][1]  # skewed popularity


def test_zipf_skew_parameter() -> None:
    import random

    flat = collections.Counter(zipf_indexes(random.Random(1), 50, 20000, 0.0))
    steep = collections.Counter(zipf_indexes(random.Random(1), 50, 20000, 2.0))
    assert max(flat.values()) < 2 * min(flat.values())
    assert steep[0] > 0.5 * 20000
