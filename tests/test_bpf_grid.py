"""The bit-vector classifier's summary grid (backends/bpf/tables.py, build_grid)
prunes the walk without changing a verdict, and stays bounded when the two
fields' cross-product is large."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.bpf.emit import GRID_MAP, lower, maps_json
from backends.bpf.tables import (
    CLASS_MASK,
    GRID_MAX_GROUPS,
    GRID_SHIFT,
    WORD_BITS,
    ClassifierTables,
    FieldTable,
    build_field_table,
    build_grid,
    build_tables,
)
from compiler.packet_syntax import parse_packet
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from tests.conftest import compile_ok
from tests.strategies import REPS, make_policy, rules

POOL = [0x0A000000, 0x0A010000, 0xC0A80000, 0xAC100000]  # 10/16, 10.1/16, 192.168/16, 172.16/16


@st.composite
def prefix_rules(draw: st.DrawFn) -> str:
    """A ClassBench-like rule line: nested IPv4 prefixes, port ranges, a protocol."""
    words = [draw(st.sampled_from(["allow", "drop"]))]
    proto = draw(st.sampled_from([None, "tcp", "udp"]))
    if proto:
        words.append(proto)
    for word in ("from", "to"):
        plen = draw(st.sampled_from([0, 8, 16, 20, 24, 28, 32]))
        if plen:
            addr = draw(st.sampled_from(POOL)) | draw(st.integers(0, 0xFFFF))
            words.append(f"{word} {ipaddress.IPv4Network((addr, plen), strict=False)}")
    if proto and draw(st.booleans()):
        lo = draw(st.integers(0, 65535))
        words.append(f"dport {lo}-{min(65535, lo + draw(st.integers(0, 2000)))}")
    return " ".join(words)


# 600 rules, each a /24 to a /24: many classes in both address fields.
SUBNET_PAIRS = [
    f"allow tcp from 10.{i // 256}.{i % 256}.0/24 to 11.{i // 256}.{i % 256}.0/24"
    for i in range(600)
]


def _policy(lines: list[str], default: str = "drop") -> Policy:
    body = "\n".join(f" {line}" for line in lines)
    result = compile_ok(f"policy p ingress on eth0 {{\n default {default}\n{body}\n}}\n")
    assert result.program is not None
    return result.program.policies[0]


def _probes(policy: Policy, rng: random.Random, count: int) -> list[Packet]:
    """Packets inside rules' boxes (random points of their prefixes) and anywhere."""
    out = []
    for _ in range(count):
        rule = policy.rules[rng.randrange(len(policy.rules))]
        fields = {"family": 4, "ip_proto": rng.choice([6, 17])}
        for name in ("ip4_src", "ip4_dst", "dport"):
            values = dict(rule.match.constraints).get(name)
            width = 16 if name == "dport" else 32
            if values is None or rng.random() < 0.2:
                fields[name] = rng.randrange(1 << width)
            else:
                lo, hi = values.intervals[rng.randrange(len(values.intervals))]
                fields[name] = rng.randint(lo, hi)
        out.append(Packet.make(sport=1024, **fields))
    return out


@settings(max_examples=80, deadline=None)
@given(
    st.lists(rules(), min_size=2, max_size=14),
    st.sampled_from(["allow", "drop"]),
    st.integers(1, 6),
)
def test_grid_agrees_with_interpreter_on_every_region(
    specs: list, default: str, max_groups: int
) -> None:
    policy = make_policy(specs, default)
    tables = build_tables(policy, grid=True, max_groups=max_groups)
    for packet in REPS:
        assert tables.classify(packet) == evaluate(policy, packet).rule.priority


@settings(max_examples=40, deadline=None)
@given(
    st.lists(prefix_rules(), min_size=2, max_size=150),
    st.integers(1, 32),
    st.randoms(use_true_random=False),
)
def test_grid_agrees_with_interpreter_on_prefix_policies(
    lines: list[str], max_groups: int, rng: random.Random
) -> None:
    policy = _policy(lines)
    tables = build_tables(policy, grid=True, max_groups=max_groups)
    plain = build_tables(policy, grid=False)
    for packet in _probes(policy, rng, 60):
        rule, words = tables.walk(packet)
        assert rule == evaluate(policy, packet).rule.priority
        # The grid only ever removes candidate words.
        assert words <= plain.walk(packet)[1]


@settings(max_examples=25, deadline=None)
@given(st.lists(prefix_rules(), min_size=2, max_size=80), st.integers(1, 12))
def test_every_cell_is_the_union_of_its_class_pairs(lines: list[str], max_groups: int) -> None:
    """The brute-force oracle: a cell's word set is exactly the words where some
    pair of classes of its row group and column group shares a rule."""
    tables = build_tables(_policy(lines), grid=True, max_groups=max_groups)
    if tables.grid is None:
        return
    by_name = {t.field: t for t in tables.fields}
    row, col = (by_name[name] for name in tables.grid.fields)

    def members(table: FieldTable, group: int) -> set[int]:
        return {
            cls
            for (_lo, _hi, cls), g in zip(table.intervals, table.groups, strict=True)
            if g == group
        }

    mask = (1 << WORD_BITS) - 1
    for r in range(tables.grid.rows):
        for c in range(tables.grid.cols):
            want = 0
            for a in members(row, r):
                for b in members(col, c):
                    both = row.classes[a] & col.classes[b]
                    for w in range(tables.n_words):
                        if (both >> (WORD_BITS * w)) & mask:
                            want |= 1 << w
            assert tables.grid.cells[r * tables.grid.cols + c] == want, (r, c)


def test_large_cross_product_is_bounded() -> None:
    """6,000 distinct host pairs: the classes' full cross-product would have
    ~36 million cells; the grid keeps GRID_MAX_GROUPS per axis and still decides
    what the interpreter decides."""
    rng = random.Random(5)
    lines = [
        f"drop tcp from 10.{i % 250}.{rng.randrange(256)}.{rng.randrange(256)} "
        f"to 192.168.{rng.randrange(256)}.{i % 250}"
        for i in range(6000)
    ]
    policy = _policy(lines, default="allow")
    tables = build_tables(policy)
    assert tables.grid is not None, tables.grid_note
    by_name = {t.field: t for t in tables.fields}
    row, col = (by_name[name] for name in tables.grid.fields)
    assert len(row.classes) * len(col.classes) > 10_000_000
    assert tables.grid.rows <= GRID_MAX_GROUPS and tables.grid.cols <= GRID_MAX_GROUPS
    assert len(tables.grid.cells) == tables.grid.rows * tables.grid.cols
    for packet in _probes(policy, rng, 200):
        assert tables.classify(packet) == evaluate(policy, packet).rule.priority


def test_lookup_values_carry_class_and_group() -> None:
    policy = _policy(SUBNET_PAIRS)
    tables = build_tables(policy, grid=True, max_groups=4)
    assert tables.grid is not None
    for t in tables.fields:
        for (lo, _hi, entry), (_lo, _hi2, cls) in zip(t.entries, t.intervals, strict=True):
            assert entry & CLASS_MASK == cls
            assert entry >> GRID_SHIFT < (4 if t.field in tables.grid.fields else 1)
            assert t.entry_of(lo) == entry
    # The class of value 0 is 0 with group 0: the C's value for an absent field.
    assert all(t.entry_of(0) == 0 for t in tables.fields)


def test_no_grid_says_why() -> None:
    small = _policy(["allow tcp from 10.0.0.0/8"])
    assert build_tables(small).grid is None
    assert "starts at" in build_tables(small).grid_note
    one_field = _policy([f"allow dport {i}" for i in range(600)])
    # dport implies ip_proto (and family) constraints; only dport has many classes.
    tables = build_tables(one_field, grid=True)
    assert tables.grid is None or "dport" in tables.grid.fields
    single = _policy(["allow from 10.0.0.0/8", "drop from 11.0.0.0/8"])
    only_src = ClassifierTables((build_field_table(single, "ip4_src"),), len(single.rules))
    tables = build_grid(only_src)
    assert tables.grid is None and "fewer than two fields" in tables.grid_note
    with pytest.raises(ValueError, match="not two of the policy's fields"):
        build_tables(small, grid=True, grid_fields=("ip4_src", "ip4_src"))
    with pytest.raises(ValueError, match="max_groups"):
        build_tables(small, grid=True, max_groups=0)


def test_generated_c_and_maps_json_carry_the_grid() -> None:
    policy = _policy(SUBNET_PAIRS)
    program = lower(policy)
    assert program.capacities.grid is not None
    assert "#define FLOWC_GRID 1" in program.source
    assert f"{GRID_MAP}.lookup(&idx)" in program.source
    grid = maps_json(program)["grid"]
    assert isinstance(grid, dict) and grid["fields"] == list(program.capacities.grid)
    off = lower(policy, grid=False)
    assert off.capacities.grid is None and "#define FLOWC_GRID 0" in off.source
    packet = parse_packet("tcp 10.0.7.1:5 -> 11.0.7.9:80")
    assert program.tables is not None and off.tables is not None
    assert program.tables.classify(packet) == off.tables.classify(packet) == 7
    # A refill keeps the loaded program's grid axes (or the shape changed).
    again = lower(policy, capacities=program.capacities)
    assert again.capacities == program.capacities
