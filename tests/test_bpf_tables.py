"""The BPF classifier's tables decide exactly what the interpreter decides."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.bpf.tables import ClassifierTables, build_tables
from compiler.frontend import compile_file
from compiler.packet_syntax import parse_packet
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from tests.conftest import compile_ok
from tests.fixtures import EXAMPLE_PATHS
from tests.strategies import REPS, make_policy, packets, rules


@given(st.lists(rules(), min_size=0, max_size=12), st.sampled_from(["allow", "drop"]))
def test_tables_agree_with_interpreter_on_every_region(specs: list, default: str) -> None:
    policy = make_policy(specs, default)
    tables = build_tables(policy)
    for packet in REPS:
        assert tables.classify(packet) == evaluate(policy, packet).rule.priority


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


def _dir_lookup(levels: tuple[list[int], list[int], list[int]], addr: int) -> int:
    """What the generated C does with the DIR-16-8-8 arrays."""
    from backends.bpf.tables import DIR_CHUNK

    level1, level2, level3 = levels
    entry = level1[addr >> 16]
    if entry & DIR_CHUNK:
        entry = level2[((entry & ~DIR_CHUNK) << 8) | ((addr >> 8) & 0xFF)]
        if entry & DIR_CHUNK:
            entry = level3[((entry & ~DIR_CHUNK) << 8) | (addr & 0xFF)]
    return entry


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1, max_size=12),
    st.lists(st.integers(0, 2**32 - 1), max_size=40),
)
def test_ipv4_direct_arrays_agree_with_the_classes(prefixes: list, probes: list) -> None:
    import ipaddress

    from backends.bpf.tables import build_field_table, dir_levels

    lines = "\n".join(
        f" allow from {ipaddress.IPv4Network((v, plen), strict=False)}" for v, plen in prefixes
    )
    policy = compile_ok(f"policy p ingress on eth0 {{\n default drop\n{lines}\n}}\n").program
    assert policy is not None
    table = build_field_table(policy.policies[0], "ip4_src")
    levels = dir_levels(table)
    edges = [lo for lo, _, _ in table.intervals] + [hi for _, hi, _ in table.intervals]
    for addr in [*probes, *edges, 0, 2**32 - 1]:
        assert _dir_lookup(levels, addr) == table.class_of(addr)
