"""Bad input gives a clear error or a result: never a traceback or a hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import ROOT


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    code = main(["check", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.fw"
    path.write_text("")
    code, err = check(capsys, path)
    assert code == 1 and "is empty: nothing to compile" in err


def test_only_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.fw"
    path.write_text("# nothing here\n")
    code, err = check(capsys, path)
    assert code == 1 and "nothing to compile" in err


def test_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.fw"
    path.write_bytes(bytes(range(256)) * 4)
    code, err = check(capsys, path)
    assert code == 1 and "binary file" in err


def test_invalid_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "u.fw"
    path.write_bytes(b"policy p ingress on eth0 { default drop } \xff\xfe")
    code, err = check(capsys, path)
    assert code == 1 and "not UTF-8" in err


def test_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = check(capsys, tmp_path / "nope.fw")
    assert code == 1 and "No such file" in err
    code, err = check(capsys, tmp_path)
    assert code == 1 and "is a directory" in err


def test_deep_nesting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.fw"
    path.write_text("set s = " + "{" * 100000 + "1" + "}" * 100000 + "\n")
    code, err = check(capsys, path)
    assert code == 1 and "nested more than" in err


def test_long_chain_of_named_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 5,000 sets each naming the previous: no recursion limit may be hit.
    lines = ["set s0 = { 10.0.0.0/8 }"]
    lines += [f"set s{i} = {{ s{i - 1} }}" for i in range(1, 5000)]
    lines.append("policy p ingress on eth0 { default drop\n allow from s4999 }")
    path = tmp_path / "chain.fw"
    path.write_text("\n".join(lines) + "\n")
    code, err = check(capsys, path)
    assert code == 0, err


def test_include_cycle_of_three(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.fw").write_text('include "b.fw"\npolicy p ingress on eth0 { default drop }\n')
    (tmp_path / "b.fw").write_text('include "c.fw"\n')
    (tmp_path / "c.fw").write_text('include "a.fw"\n')
    code, err = check(capsys, tmp_path / "a.fw")
    assert code == 1 and "include cycle:" in err and "c.fw" in err


def test_self_include(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.fw").write_text('include "a.fw"\npolicy p ingress on eth0 { default drop }\n')
    code, err = check(capsys, tmp_path / "a.fw")
    assert code == 1 and "include cycle" in err


def test_diamond_include_is_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base.fw").write_text("set nets = { 10.0.0.0/8 }\n")
    (tmp_path / "l.fw").write_text('include "base.fw"\n')
    (tmp_path / "r.fw").write_text('include "base.fw"\n')
    (tmp_path / "main.fw").write_text(
        'include "l.fw"\ninclude "r.fw"\n'
        "policy p ingress on eth0 { default drop\n allow from nets }\n"
    )
    code, err = check(capsys, tmp_path / "main.fw")
    assert code == 0, err


@pytest.mark.slow
def test_huge_file_gives_a_result(tmp_path: Path) -> None:
    body = "".join(
        f"    allow tcp from 10.{i // 256 % 256}.{i % 256}.0/24 dport {i % 65536}\n"
        for i in range(100000)
    )
    path = tmp_path / "huge.fw"
    path.write_text("policy p ingress on eth0 {\n    default drop\n" + body + "}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "compile", str(path), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "o").read_text().count("\n") == 100002  # header, rules, default


def test_very_long_line_diagnostic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "long.fw"
    rule = "allow from { " + ", ".join(f"10.0.{i}.0/24" for i in range(200)) + ", nope }"
    path.write_text(f"policy p ingress on eth0 {{ default drop\n{rule}\n}}\n")
    code, err = check(capsys, path)
    assert code == 1 and "unknown name 'nope'" in err
    caret_line = next(line for line in err.splitlines() if "^" in line)
    assert len(caret_line) < 200
