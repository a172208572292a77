"""`flowc check`'s shadowed/redundant warnings are safe to act on together.

A user who deletes every rule a ``shadowed`` or ``redundant`` warning names
must get a policy with the same verdict for every packet. Packets compared:
a witness of every region of both policies (so every rule's decided packets
are tried, cut into up to 32 cubes each) plus a fixed set of representative
packets. Policies are random small DSL texts with duplicated and overlapping
rules, and slices of the ClassBench generator's policies with lines repeated.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given, note
from hypothesis import strategies as st

from bench.workloads import policy_text
from compiler.diagnostics import WARNING
from compiler.frontend import Compilation, compile_source
from ir.analysis import region_witnesses
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet

CLAUSES = [
    "tcp",
    "udp",
    "tcp dport 1-2",
    "tcp dport 2",
    "udp dport 1-3",
    "from 10.0.0.0/30",
    "from 10.0.0.2/31",
    "tcp from 10.0.0.1",
    "from fd00::/127",
    "to not 10.0.0.0/31",
    "icmp",
    "",
]
ACTIONS = ["allow", "drop", "mark 1"]


def representatives() -> list[Packet]:
    out = []
    for proto, src, dst, port in itertools.product(
        (1, 6, 17), range(0x0A000000, 0x0A000005), (0x0A000000, 0x0A000003), (0, 1, 2, 3, 9)
    ):
        fields = {"family": 4, "ip_proto": proto, "ip4_src": src, "ip4_dst": dst}
        if proto != 1:
            fields.update(sport=1000, dport=port)
        elif port:
            continue
        out.append(Packet.make(**fields))
    for proto, src in itertools.product((6, 17, 58), (0xFD000000 << 96, (0xFD000000 << 96) + 1, 5)):
        fields = {"family": 6, "ip_proto": proto, "ip6_src": src}
        if proto != 58:
            fields.update(sport=1000, dport=2)
        out.append(Packet.make(**fields))
    return out


REPS = representatives()


def lint(text: str) -> tuple[Policy, Compilation]:
    result = compile_source(text, "gen.fw", lint=True)
    assert result.ok and result.program is not None, [d.message for d in result.diagnostics]
    (policy,) = result.program.policies
    return policy, result


def named_lines(result: Compilation) -> set[int]:
    """Lines of every rule a shadowed/redundant warning names (never the default)."""
    return {
        d.pos.line
        for d in result.diagnostics
        if d.severity == WARNING
        and d.code in ("shadowed", "redundant")
        and d.pos is not None
        and "default" not in d.message.split(":")[0]
    }


def assert_safe_together(text: str) -> None:
    policy, result = lint(text)
    gone = named_lines(result)
    note(text)
    note(f"deleting lines {sorted(gone)}")
    lines = text.splitlines(keepends=True)
    slim_text = "".join(line for n, line in enumerate(lines, start=1) if n not in gone)
    slim, slim_result = lint(slim_text)
    packets = list(REPS)
    for p in (policy, slim):
        packets += [Packet(point) for point, _ in region_witnesses(p)]
    for packet in packets:
        assert evaluate(policy, packet).action == evaluate(slim, packet).action, packet
    # Every note that says who decides the packets afterwards names a rule that stays.
    for d in result.diagnostics:
        if d.code not in ("shadowed", "redundant") or d.severity != WARNING:
            continue
        keeps = [r for r in d.related if r.message != "shadowed by this rule"]
        shadowed_by = [r for r in d.related if r.message == "shadowed by this rule"]
        if not keeps:  # a shadowed rule whose shadowers all stay
            keeps = shadowed_by
        for r in keeps:
            assert r.pos is not None and r.pos.line not in gone, d.message
    # Nothing more to delete: acting on the warnings leaves none behind.
    assert not named_lines(slim_result)


@st.composite
def policies(draw: st.DrawFn) -> str:
    base = draw(
        st.lists(
            st.tuples(st.sampled_from(ACTIONS), st.sampled_from(CLAUSES)), min_size=1, max_size=5
        )
    )
    rules = base + draw(st.lists(st.sampled_from(base), max_size=6))
    rules = draw(st.permutations(rules))
    default = draw(st.sampled_from(["allow", "drop"]))
    body = "".join(f"    {a} {c}".rstrip() + "\n" for a, c in rules)
    return f"policy p ingress on eth0 {{\n    default {default}\n{body}}}\n"


@given(policies())
def test_deleting_every_warned_rule_keeps_every_verdict(text: str) -> None:
    assert_safe_together(text)


@given(st.integers(0, 10_000), st.sampled_from(["acl", "fw"]))
def test_classbench_generator_with_duplicates(seed: int, family: str) -> None:
    rng = random.Random(seed)
    lines = policy_text(family, 25, seed).splitlines(keepends=True)
    head = next(n for n, line in enumerate(lines) if line.strip().startswith("default")) + 1
    rules = [line for line in lines[head:] if line.strip() != "}"]
    # Actions: a few of each, so rules can be redundant; then repeat some rules.
    rules = [
        line.replace(line.split()[0], rng.choice(["allow", "drop"]), 1)
        if line.split()[0] in ("allow", "drop")
        else line
        for line in rules
    ]
    for _ in range(5):
        rules.insert(rng.randrange(len(rules) + 1), rng.choice(rules))
    assert_safe_together("".join(lines[:head] + rules) + "}\n")


def test_identical_rules_one_warning() -> None:
    text = "policy p ingress on eth0 {\n    default drop\n    allow tcp\n    allow tcp\n}\n"
    _, result = lint(text)
    (w,) = result.diagnostics
    assert (w.code, w.pos and w.pos.line) == ("shadowed", 4)
    assert [r.pos and r.pos.line for r in w.related] == [3]


def test_redundant_warning_notes_the_rule_that_takes_over() -> None:
    text = (
        "policy p ingress on eth0 {\n    default drop\n    drop tcp dport 22\n"
        "    drop tcp\n    allow udp\n}\n"
    )
    _, result = lint(text)
    assert [(d.code, d.pos and d.pos.line) for d in result.diagnostics] == [
        ("redundant", 3),
        ("redundant", 4),
    ]
    first, second = result.diagnostics
    # Line 3's packets go to the default once line 4 is deleted too, not to line 4.
    assert "the default" in first.message and "line 4" not in first.message
    assert [(r.message, r.pos and r.pos.line) for r in first.related] == [
        ("this rule takes over its packets", 2)
    ]
    assert [r.pos and r.pos.line for r in second.related] == [2]


def test_shadowed_rule_whose_shadower_is_redundant() -> None:
    text = (
        "policy p ingress on eth0 {\n    default allow\n    allow tcp\n    allow tcp dport 22\n}\n"
    )
    _, result = lint(text)
    shadowed, redundant = result.diagnostics
    assert (shadowed.code, shadowed.pos and shadowed.pos.line) == ("shadowed", 4)
    assert [(r.message, r.pos and r.pos.line) for r in shadowed.related] == [
        ("shadowed by this rule", 3),
        ("with the rules warned about deleted, this rule decides its packets", 2),
    ]
    assert (redundant.code, redundant.pos and redundant.pos.line) == ("redundant", 3)
