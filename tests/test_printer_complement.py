"""Address sets print as `not X, Y` when their complement is the shorter form, exactly.

The printed form is read back two ways: by value sets (the prefixes, inverted
after `not`, within the field's width, so within the address family) and
through the DSL (`from not {X, Y}`), which must compile to the same set.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.main import main
from compiler.frontend import compile_source
from ir.model import Match, format_constraint
from ir.printer import program_to_json
from ir.valueset import ValueSet

FIELDS = {"ip4_src": (4, 32), "ip6_dst": (6, 128)}


@st.composite
def prefix_sets(draw: st.DrawFn) -> tuple[str, ValueSet]:
    name = draw(st.sampled_from(sorted(FIELDS)))
    _, width = FIELDS[name]
    prefixes = draw(
        st.lists(
            st.tuples(st.integers(0, (1 << width) - 1), st.integers(0, width)),
            min_size=1,
            max_size=4,
        )
    )
    values = None
    for value, plen in prefixes:
        p = ValueSet.of_prefix(width, value >> (width - plen) << (width - plen), plen)
        values = p if values is None else values | p
    assert values is not None
    if draw(st.booleans()):
        values = ~values
    return name, values


def read_back(text: str, width: int) -> ValueSet:
    negated = text.startswith("not ")
    body = text.removeprefix("not ")
    out = None
    for word in body.split(","):
        net = ipaddress.ip_network(word, strict=True)
        p = ValueSet.of_prefix(width, int(net.network_address), net.prefixlen)
        out = p if out is None else out | p
    assert out is not None
    return ~out if negated else out


def shortest(values: ValueSet) -> int:
    return min(len(values.to_prefixes()), len((~values).to_prefixes()))


@given(prefix_sets())
def test_printed_address_set_reads_back_exactly(case: tuple[str, ValueSet]) -> None:
    name, values = case
    family, width = FIELDS[name]
    if values.is_full() or not values.intervals:
        return
    match = Match((("family", ValueSet.of_value(8, family)), (name, values)))
    text = str(match).split(f"{name}=", 1)[1]
    assert read_back(text, width) == values
    # The shorter of the two forms is printed.
    assert len(text.removeprefix("not ").split(",")) == shortest(values)
    assert text.startswith("not ") == (len((~values).to_prefixes()) < len(values.to_prefixes()))
    # Through the DSL: `from|to [not] {X, Y}` compiles to the same set.
    direction = "from" if name.endswith("src") else "to"
    operand = text.removeprefix("not ")
    dsl = f"{direction} {'not ' if text.startswith('not ') else ''}{{{operand.replace(',', ', ')}}}"
    source = f"policy p ingress on eth0 {{\n    default drop\n    allow {dsl}\n}}\n"
    result = compile_source(source)
    assert result.ok and result.program is not None, [d.message for d in result.diagnostics]
    (rule, *_) = result.program.policy("p").rules
    assert rule.match.get(name) == values


def test_complement_of_one_prefix_prints_as_not() -> None:
    values = ~ValueSet.of_prefix(32, 0xC0A80000, 16)
    assert len(values.to_prefixes()) == 16
    match = Match((("family", ValueSet.of_value(8, 4)), ("ip4_src", values)))
    assert str(match) == "family=4 ip4_src=not 192.168.0.0/16"
    assert format_constraint("ip4", ValueSet.of_prefix(32, 0xC0A80000, 16)) == "192.168.0.0/16"


def test_compile_ir_text_and_json_use_the_complement() -> None:
    source = "policy p ingress on eth0 {\n    default drop\n    allow from not 10.0.0.0/8\n}\n"
    result = compile_source(source)
    assert result.program is not None
    (rule, _) = result.program.policy("p").rules
    assert "ip4_src=not 10.0.0.0/8" in str(rule.match)
    data = program_to_json(result.program)
    texts = [c["text"] for c in data["policies"][0]["rules"][0]["match"]["constraints"]]
    assert "not 10.0.0.0/8" in texts


def test_diff_text_and_json_name_the_complement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.fw"
    new = tmp_path / "new.fw"
    old.write_text("policy p ingress on eth0 {\n    default drop\n}\n")
    new.write_text(
        "policy p ingress on eth0 {\n    default drop\n    allow tcp from not 192.168.0.0/16\n}\n"
    )
    assert main(["diff", str(old), str(new), "--allow-change"]) == 0
    out = capsys.readouterr().out
    assert "ip4_src=not 192.168.0.0/16: drop -> allow" in out
    assert main(["diff", str(old), str(new), "--allow-change", "--json"]) == 0
    (change,) = json.loads(capsys.readouterr().out)["changes"]
    assert change["match"] == "family=4 ip_proto=6 ip4_src=not 192.168.0.0/16"
