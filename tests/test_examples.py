"""Every example compiles cleanly and gives the hand-written verdicts in tests/verdicts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.fmt import format_source
from compiler.frontend import compile_file
from compiler.packet_syntax import parse_packet
from compiler.parser import parse
from ir.interp import evaluate
from tests.conftest import EXAMPLES

VERDICTS = Path(__file__).resolve().parent / "verdicts"

EXAMPLE_FILES = {
    "uplink": EXAMPLES / "uplink.fw",
    "web-tier": EXAMPLES / "web-tier.fw",
    "db-isolation": EXAMPLES / "db-isolation.fw",
    "dns": EXAMPLES / "dns.fw",
    "dual-stack": EXAMPLES / "dual-stack.fw",
    "multi-file": EXAMPLES / "multi-file" / "main.fw",
    "qos-vlan": EXAMPLES / "qos-vlan.fw",
}


def test_every_example_is_listed() -> None:
    on_disk = {p.stem for p in EXAMPLES.glob("*.fw")} | {"multi-file"}
    assert on_disk == set(EXAMPLE_FILES)
    assert {p.stem for p in VERDICTS.glob("*.verdicts")} == set(EXAMPLE_FILES)


def _expected(text: str) -> tuple[str, str | None, int | None, int]:
    """'redirect web @13' -> ('redirect', 'web', None, 13)."""
    words, _, line = text.rpartition("@")
    parts = words.split()
    kind = parts[0]
    target = parts[1] if kind in ("redirect", "mirror") else None
    mark = int(parts[1], 0) if kind == "mark" else None
    return kind, target, mark, int(line)


@pytest.mark.parametrize("name", sorted(EXAMPLE_FILES))
def test_example_verdicts(name: str) -> None:
    result = compile_file(str(EXAMPLE_FILES[name]), lint=True)
    assert result.ok and result.program is not None
    assert not result.diagnostics, [d.message for d in result.diagnostics]
    policy = None
    checked = 0
    for raw in (VERDICTS / f"{name}.verdicts").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("hook "):
            policy = result.program.policy(line.split()[1])
            continue
        assert policy is not None, "verdict file must name a hook first"
        packet_text, expected = (s.strip() for s in line.split("=>"))
        kind, target, mark, source_line = _expected(expected)
        verdict = evaluate(policy, parse_packet(packet_text))
        got = (verdict.action.kind, verdict.action.target, verdict.action.mark)
        assert got == (kind, target, mark), packet_text
        assert verdict.rule.origin.line == source_line, packet_text
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("name", sorted(EXAMPLE_FILES))
def test_example_formatting_is_stable(name: str) -> None:
    path = EXAMPLE_FILES[name]
    for file in sorted(path.parent.glob("*.fw")) if name == "multi-file" else [path]:
        text = file.read_text()
        source, diags = parse(text, str(file))
        assert source is not None, diags
        once = format_source(source, text)
        again_source, _ = parse(once, str(file))
        assert again_source == source
        assert again_source is not None and format_source(again_source, once) == once
        if name != "uplink":  # uplink.fw is DESIGN.md's text verbatim, aligned by hand
            assert once == text, f"{file} is not in canonical form (flowc fmt -w)"
        # Every comment survives formatting.
        assert [c.text for c in source.comments] == [c.text for c in again_source.comments]
