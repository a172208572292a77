"""Every diagnostic the front end can give, on the input that provokes it.

Each case names the diagnostic code and where it must point (line, column).
All rendered messages are also kept in tests/golden/diagnostics.txt so a
reviewer sees what users see (FLOWC_REGEN=1 regenerates it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.diagnostics import ERROR, WARNING, render
from compiler.frontend import Compilation, compile_file
from tests.golden import check_golden

P = "policy p ingress on eth0 {{\n    default drop\n{}\n}}\n"


def rule(text: str, header: str = "") -> str:
    return header + P.format("    " + text)


# (case name, files {name: text}, expected code, line, column)
CASES: list[tuple[str, dict[str, str], str, int, int]] = [
    ("syntax-header", {"main.fw": "policy p on eth0 { default drop }\n"}, "syntax", 1, 10),
    ("syntax-accept", {"main.fw": rule("accept tcp")}, "syntax", 3, 5),
    ("syntax-missing-port", {"main.fw": rule("allow tcp dport")}, "syntax", 4, 1),
    (
        "syntax-unclosed",
        {"main.fw": "policy p ingress on eth0 {\n  default drop\n"},
        "syntax",
        2,
        15,
    ),
    ("syntax-bad-char", {"main.fw": "endpoint $x { }\n"}, "syntax", 1, 10),
    ("syntax-bare-number-proto", {"main.fw": rule("allow 47")}, "syntax", 3, 11),
    ("nesting", {"main.fw": "set s = " + "{" * 40 + "1" + "}" * 40 + "\n"}, "nesting", 1, 49),
    ("empty-file", {"main.fw": ""}, "empty", 0, 0),
    ("binary-file", {"main.fw": "policy\0\1\2"}, "io", 0, 0),
    ("missing-include", {"main.fw": 'include "nope.fw"\n' + rule("allow")}, "include", 1, 9),
    (
        "include-cycle",
        {"main.fw": 'include "a.fw"\n' + rule("allow"), "a.fw": 'include "main.fw"\n'},
        "include-cycle",
        1,
        9,
    ),
    ("reserved-name", {"main.fw": "endpoint any { ip 10.0.0.1 }\n"}, "reserved-name", 1, 10),
    (
        "duplicate-name",
        {"main.fw": "set a = { 1 }\nendpoint a { ip 10.0.0.1 }\n"},
        "duplicate-name",
        2,
        10,
    ),
    (
        "unknown-name",
        {"main.fw": rule("allow to dbb", "endpoint db { ip 10.0.0.1 }\n")},
        "unknown-name",
        4,
        14,
    ),
    (
        "ambiguous-name",
        {
            "main.fw": 'include "a.fw"\ninclude "b.fw"\n' + rule("allow to x"),
            "a.fw": "set x = { 10.0.0.0/8 }\n",
            "b.fw": "set x = { 11.0.0.0/8 }\n",
        },
        "ambiguous-name",
        5,
        14,
    ),
    (
        "names-do-not-leak-upward",
        {"main.fw": 'include "a.fw"\nset x = { 1 }\n', "a.fw": rule("allow dport x")},
        "unknown-name",
        3,
        17,
    ),
    ("set-cycle", {"main.fw": "set a = { b }\nset b = { a }\n"}, "set-cycle", 1, 5),
    ("empty-set", {"main.fw": "set a = { }\n"}, "empty-set", 1, 5),
    ("mixed-set", {"main.fw": "set a = { 10.0.0.0/8, 80 }\n"}, "mixed-set", 1, 23),
    (
        "endpoint-no-ip",
        {"main.fw": rule("allow to e", "endpoint e { dev nk-e }\n")},
        "endpoint-no-ip",
        4,
        14,
    ),
    ("host-bits", {"main.fw": rule("allow from 10.0.0.1/8")}, "bad-address", 3, 16),
    ("bad-ipv4", {"main.fw": rule("allow from 10.0.0.300")}, "bad-address", 3, 16),
    ("bad-prefix-len", {"main.fw": rule("allow from fd00::/129")}, "bad-address", 3, 16),
    ("port-out-of-range", {"main.fw": rule("allow tcp dport 70000")}, "bad-port", 3, 21),
    ("port-range-backwards", {"main.fw": rule("allow tcp dport 9000-8000")}, "bad-port", 3, 21),
    (
        "long-device",
        {"main.fw": "policy p ingress on averyveryverylongdevice { default drop }\n"},
        "bad-device",
        1,
        8,
    ),
    (
        "duplicate-policy",
        {
            "main.fw": "policy p ingress on a { default drop }\n"
            + "policy p ingress on b { default drop }\n"
        },
        "duplicate-policy",
        2,
        8,
    ),
    (
        "duplicate-hook",
        {
            "main.fw": "policy p ingress on a { default drop }\n"
            + "policy q ingress on a { default drop }\n"
        },
        "duplicate-hook",
        2,
        8,
    ),
    (
        # FNV-1a gives both names 0x8ade3a42 (ir/conntrack.py hook_id).
        "hook-id-clash",
        {
            "main.fw": "policy p2039599 ingress on a { default drop }\n"
            + "policy p2222382 ingress on b { default drop }\n"
        },
        "hook-id-clash",
        2,
        8,
    ),
    (
        "missing-default",
        {"main.fw": "policy p ingress on a { allow tcp }\n"},
        "missing-default",
        1,
        8,
    ),
    ("duplicate-default", {"main.fw": rule("default allow")}, "duplicate-default", 3, 13),
    ("missing-target", {"main.fw": rule("redirect tcp")}, "missing-target", 3, 5),
    (
        "target-is-a-set",
        {"main.fw": rule("redirect tcp -> s", "set s = { 10.0.0.0/8 }\n")},
        "bad-target",
        4,
        21,
    ),
    (
        "endpoint-no-dev",
        {"main.fw": rule("mirror tcp -> e", "endpoint e { ip 10.0.0.1 }\n")},
        "endpoint-no-dev",
        4,
        19,
    ),
    (
        "unexpected-target",
        {"main.fw": rule("allow tcp -> e", "endpoint e { ip 10.0.0.1; dev x }\n")},
        "unexpected-target",
        4,
        18,
    ),
    ("mark-too-big", {"main.fw": rule("mark 0x100000000 tcp")}, "bad-mark", 3, 5),
    (
        "duplicate-clause",
        {"main.fw": rule("allow from 10.0.0.0/8 from 11.0.0.0/8")},
        "duplicate-clause",
        3,
        27,
    ),
    ("protocol-range", {"main.fw": rule("allow proto 300")}, "bad-protocol", 3, 11),
    (
        "ports-where-addresses",
        {"main.fw": rule("allow from s", "set s = { 80 }\n")},
        "type-mismatch",
        4,
        16,
    ),
    (
        "addresses-where-ports",
        {"main.fw": rule("allow tcp dport s", "set s = { 10.0.0.0/8 }\n")},
        "type-mismatch",
        4,
        21,
    ),
    ("not-any", {"main.fw": rule("allow from not any")}, "never-matches", 3, 16),
    ("not-every-port", {"main.fw": rule("allow tcp dport not 0-65535")}, "never-matches", 3, 21),
    ("icmp-type-range", {"main.fw": rule("allow icmp type 256")}, "bad-icmp", 3, 16),
    ("icmp-type-name", {"main.fw": rule("allow icmp type echo")}, "bad-icmp", 3, 16),
    ("icmp-code-name", {"main.fw": rule("allow icmp code zero")}, "bad-icmp", 3, 16),
    ("unknown-flag", {"main.fw": rule("allow tcp flags syn,fyn")}, "bad-flags", 3, 25),
    ("flag-twice", {"main.fw": rule("allow tcp flags syn,!syn")}, "bad-flags", 3, 25),
    ("flags-outside-mask", {"main.fw": rule("allow tcp flags 0x12/0x02")}, "bad-flags", 3, 15),
    ("flags-too-wide", {"main.fw": rule("allow tcp flags 0x100/0x100")}, "bad-flags", 3, 15),
    ("vlan-range", {"main.fw": rule("allow vlan 4096")}, "bad-vlan", 3, 11),
    ("vlan-empty", {"main.fw": rule("allow vlan 20-10")}, "bad-vlan", 3, 11),
    ("dscp-name", {"main.fw": rule("allow dscp gold")}, "bad-dscp", 3, 11),
    ("dscp-range", {"main.fw": rule("allow dscp 64")}, "bad-dscp", 3, 11),
    ("port-on-icmp", {"main.fw": rule("allow icmp dport 80")}, "protocol-mismatch", 3, 16),
    ("flags-on-udp", {"main.fw": rule("allow udp flags syn")}, "protocol-mismatch", 3, 15),
    ("type-on-tcp", {"main.fw": rule("allow tcp type 8")}, "protocol-mismatch", 3, 15),
    ("type-and-port", {"main.fw": rule("allow type 8 dport 80")}, "protocol-conflict", 3, 18),
    (
        "families-conflict",
        {"main.fw": rule("allow from 10.0.0.0/8 to fd00::1")},
        "family-conflict",
        3,
        5,
    ),
    ("icmp-to-ipv6", {"main.fw": rule("allow icmp to fd00::1")}, "family-conflict", 3, 5),
    (
        "v6-only-icmp-type-on-v4",
        {"main.fw": rule("allow type packet-too-big from 10.0.0.0/8")},
        "family-conflict",
        3,
        5,
    ),
]


def _compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> Compilation:
    for name, text in files.items():
        (tmp_path / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    monkeypatch.chdir(tmp_path)
    return compile_file("main.fw")


@pytest.mark.parametrize(
    ("files", "code", "line", "column"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_each_diagnostic(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    code: str,
    line: int,
    column: int,
) -> None:
    result = _compile(tmp_path, monkeypatch, files)
    assert not result.ok
    errors = [d for d in result.diagnostics if d.severity == ERROR]
    assert errors, "expected at least one error"
    matching = [d for d in errors if d.code == code]
    assert matching, f"no {code} among {[(d.code, d.message) for d in errors]}"
    first = matching[0]
    assert first.pos is not None
    assert (first.pos.line, first.pos.column) == (line, column), first.message
    text = render(first, result.sources)
    if line > 0:
        assert text.startswith(f"main.fw:{line}:{column}: error: ") or ".fw:" in text
        assert "^" in text  # the caret is drawn
    assert "Traceback" not in text


def test_several_errors_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = rule("allow to nowhere\n    allow tcp dport 70000\n    allow icmp dport 80")
    result = _compile(tmp_path, monkeypatch, {"main.fw": text})
    codes = [d.code for d in result.diagnostics if d.severity == ERROR]
    assert codes == ["unknown-name", "bad-port", "protocol-mismatch"]


def test_warnings_name_the_shadowing_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = rule("allow tcp\n    drop tcp dport 22\n    drop tcp from 10.0.0.0/8\n    allow udp")
    for name, body in {"main.fw": text}.items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    result = compile_file("main.fw", lint=True)
    assert result.ok
    warnings = [d for d in result.diagnostics if d.severity == WARNING]
    assert [(w.code, w.pos.line if w.pos else 0) for w in warnings] == [
        ("shadowed", 4),
        ("shadowed", 5),
    ]
    assert "line 3" in warnings[0].message
    assert warnings[0].related[0].pos is not None and warnings[0].related[0].pos.line == 3


def test_redundant_rule_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "main.fw").write_text(rule("drop tcp dport 23\n    allow tcp"))
    monkeypatch.chdir(tmp_path)
    result = compile_file("main.fw", lint=True)
    assert [d.code for d in result.diagnostics] == []
    (tmp_path / "main.fw").write_text(rule("drop tcp dport 23\n    drop tcp from 10.0.0.0/8"))
    result = compile_file("main.fw", lint=True)
    assert [d.code for d in result.diagnostics] == ["redundant", "redundant"]


def test_unreached_default_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "main.fw").write_text(rule("allow"))
    monkeypatch.chdir(tmp_path)
    result = compile_file("main.fw", lint=True)
    assert [d.code for d in result.diagnostics] == ["shadowed"]
    assert "default is never reached" in result.diagnostics[0].message


def test_rendered_diagnostics_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = []
    for name, files, *_ in CASES:
        case_dir = tmp_path / name
        case_dir.mkdir()
        result = _compile(case_dir, monkeypatch, files)
        rendered = "\n".join(render(d, result.sources) for d in result.diagnostics)
        chunks.append(f"== {name}\n{rendered}\n")
    check_golden("diagnostics.txt", "\n".join(chunks))
