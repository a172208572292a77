"""Generated BPF C: golden text for review, DSL citations, map contents JSON, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backends.bpf.emit import lower, maps_json
from cli.main import main
from compiler.frontend import compile_file, compile_source
from ir.model import Policy
from tests.conftest import EXAMPLES
from tests.golden import check_golden


def uplink() -> Policy:
    result = compile_file("examples/uplink.fw")
    assert result.program is not None
    return result.program.policies[0]


@pytest.mark.parametrize("strategy", ["bitvec", "chain"])
def test_generated_c_golden(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)
    check_golden(f"uplink.{strategy}.c", lower(uplink(), strategy).source)


def test_generated_c_golden_with_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The class-tuple memo as large policies get it (forced on for a small one)."""
    monkeypatch.chdir(EXAMPLES.parent)
    program = lower(uplink(), "bitvec", memo=True)
    assert program.capacities.memo
    check_golden("uplink.bitvec-memo.c", program.source)


def test_memo_is_compiled_in_by_rule_capacity() -> None:
    small = uplink()
    assert not lower(small).capacities.memo
    assert "#define FLOWC_MEMO 0" in lower(small).source
    assert not lower(small, "chain", memo=True).capacities.memo
    text = (
        "policy p ingress on eth0 {\n default drop\n"
        + "".join(
            f" allow udp from 10.{i // 250}.{i % 250}.0/24 dport {i + 1}\n" for i in range(600)
        )
        + "}\n"
    )
    result = compile_source(text, "big.fw")
    assert result.program is not None
    big = lower(result.program.policies[0])
    assert big.capacities.memo and "flowc_memo.lookup" in big.source
    assert "#define FLOWC_MEMO 1" in big.source


@pytest.mark.parametrize("strategy", ["bitvec", "chain"])
def test_every_rule_is_cited_with_its_line(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)
    source = lower(uplink(), strategy).source
    for line in (11, 12, 13, 14, 15, 10):
        assert f"examples/uplink.fw:{line}" in source
    assert "int flowc_tc(struct __sk_buff *skb)" in source


def test_maps_json_describes_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)
    data: dict[str, Any] = maps_json(lower(uplink()))
    assert data["rules"] == 7 and data["rule_capacity"] == 64 and data["strategy"] == "bitvec"
    fields = {f["field"]: f for f in data["fields"]}
    assert set(fields) == {
        "family",
        "ip_proto",
        "frag",  # port rules imply frag none,first (FRAMES.md)
        "ip4_src",
        "ip4_dst",
        "ip6_src",
        "ip6_dst",
        "dport",
    }
    # The default rule (id 6) is in every class of every field.
    for f in fields.values():
        assert all(int(bits, 16) >> 6 & 1 for bits in f["classes"])
    assert data["actions"][2]["action"] == "redirect" and data["actions"][2]["line"] == 13


def test_cli_emit_bpf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(EXAMPLES / "uplink.fw"), "--emit", "bpf", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "uplink.bpf.c").read_text().startswith("// SPDX-License-Identifier")
    json.loads((tmp_path / "uplink.maps.json").read_text())
    assert (
        main(["compile", str(EXAMPLES / "uplink.fw"), "--emit", "bpf", "--strategy", "chain"]) == 0
    )
    assert "First match, in priority order" in capsys.readouterr().out
