"""The BPF classifier's tables decide exactly what the interpreter decides."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.bpf_tables import ClassifierTables, build_tables
from compiler.frontend import compile_file
from compiler.packet_syntax import parse_packet
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from tests.conftest import EXAMPLES, compile_ok
from tests.test_analysis import REPS, make_policy, rules
from tests.test_packet_syntax import packets


@given(st.lists(rules(), min_size=0, max_size=12), st.sampled_from(["allow", "drop"]))
def test_tables_agree_with_interpreter_on_every_region(specs: list, default: str) -> None:
    policy = make_policy(specs, default)
    tables = build_tables(policy)
    for packet in REPS:
        assert tables.classify(packet) == evaluate(policy, packet).rule.priority


EXAMPLE_PATHS = sorted([*EXAMPLES.glob("*.fw"), EXAMPLES / "multi-file" / "main.fw"])


@functools.cache
def _compiled(path: Path) -> list[tuple[Policy, ClassifierTables]]:
    result = compile_file(str(path))
    assert result.program is not None
    return [(p, build_tables(p)) for p in result.program.policies]


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
@given(packet=packets())
def test_examples_on_random_packets(path: Path, packet: Packet) -> None:
    for policy, tables in _compiled(path):
        assert tables.classify(packet) == evaluate(policy, packet).rule.priority


def test_many_rules_span_several_words_and_summaries() -> None:
    body = "\n".join(f" drop tcp dport {i}" for i in range(5000))
    result = compile_ok(f"policy p ingress on eth0 {{\n default allow\n{body}\n}}\n")
    assert result.program is not None
    policy = result.program.policies[0]
    tables = build_tables(policy)
    assert tables.n_words == 79 and tables.n_summary == 2
    for port in (0, 63, 64, 4095, 4096, 4999, 5000, 65535):
        packet = parse_packet(f"tcp 1.1.1.1:1 -> 2.2.2.2:{port}")
        assert tables.classify(packet) == evaluate(policy, packet).rule.priority
