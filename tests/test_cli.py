"""The flowc command line: outputs, exit codes, errors on stderr, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import EXAMPLES, ROOT
from tests.fixtures import run

UPLINK = str(EXAMPLES / "uplink.fw")
MULTI = str(EXAMPLES / "multi-file" / "main.fw")


def test_compile_text_names_source_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", UPLINK, "--emit", "ir")
    assert code == 0 and not err
    assert "policy uplink ingress on eth0" in out
    assert "uplink.fw:13  redirect tcp from frontends to web dport web_ports -> web" in out
    assert "default  * => drop" in out


def test_compile_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "compile", UPLINK, "--format", "json")
    assert code == 0
    data = json.loads(out)
    rules = data["policies"][0]["rules"]
    assert rules[0]["match"]["constraints"][0] == {
        "field": "family",
        "text": "4",
        "width": 8,
        "intervals": [[4, 4]],
    }
    assert rules[-1]["is_default"] is True
    assert rules[2]["origin"]["line"] == 13


def test_compile_passes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "compile", "--list-passes")
    assert code == 0 and "drop-unreachable" in out
    policy = tmp_path / "p.fw"
    policy.write_text(
        "policy p ingress on eth0 {\n default drop\n allow tcp\n allow tcp dport 22\n}\n"
    )
    code, out, _ = run(capsys, "compile", str(policy))
    assert out.count("=> allow") == 2
    code, out, _ = run(capsys, "compile", str(policy), "-O")
    assert out.count("=> allow") == 1
    code, out, _ = run(capsys, "compile", str(policy), "--dump-after", "drop-unreachable")
    assert out.count("=> allow") == 1
    code, _, err = run(capsys, "compile", str(policy), "--dump-after", "nope")
    assert code == 2 and "no pass named" in err


def test_compile_errors_go_to_stderr_with_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "bad.fw"
    policy.write_text("policy p ingress on eth0 {\n default drop\n allow to nowhere\n}\n")
    code, out, err = run(capsys, "compile", str(policy))
    assert code == 1 and not out
    assert f"{policy}:3:11: error: unknown name 'nowhere'" in err
    assert "^~~~~~~" in err
    assert "Traceback" not in err


def test_check_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", UPLINK)
    assert code == 0 and "ok" in err
    shadowed = tmp_path / "s.fw"
    shadowed.write_text(
        "policy p ingress on eth0 {\n default drop\n allow tcp\n drop tcp dport 1\n}\n"
    )
    code, _, err = run(capsys, "check", str(shadowed))
    assert code == 0 and "warning: rule is never reached" in err
    code, _, _ = run(capsys, "check", str(shadowed), "--strict")
    assert code == 1
    code, out, _ = run(capsys, "check", str(shadowed), "--format", "json")
    data = json.loads(out)
    assert data["ok"] is True
    assert data["diagnostics"][0]["code"] == "shadowed"
    assert data["diagnostics"][0]["line"] == 4


def test_eval_single_packet(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "eval",
        UPLINK,
        "--hook",
        "uplink",
        "--packet",
        "tcp 10.0.3.7:40000 -> 10.0.1.10:443",
    )
    assert code == 0
    assert "redirect -> web (dev nk-web)" in out and "uplink.fw:13" in out


def test_eval_json_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "eval", UPLINK, "--json", "--packet", "udp [fd00::1]:5353 -> [fd00::53]:53"
    )
    assert code == 0
    record = json.loads(out)
    assert record["action"] == "drop" and record["default"] is True
    assert record["line"] == 10 and record["target"] is None and record["mark"] is None
    code, out, _ = run(
        capsys,
        "eval",
        str(EXAMPLES / "db-isolation.fw"),
        "--json",
        "--packet",
        "tcp 10.20.8.5:40000 -> 10.20.9.10:5432",
    )
    record = json.loads(out)
    assert (record["action"], record["mark"], record["line"]) == ("mark", 42, 18)


def test_eval_packets_file_reports_bad_lines_and_goes_on(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    packets = tmp_path / "packets.txt"
    packets.write_text(
        "# a comment\n\ntcp 10.0.3.7:1 -> 10.0.1.10:443\n"
        "  tcp 1.1.1.1 -> 2.2.2.2:3\nicmp 1.1.1.1 -> 10.0.0.1\n"
    )
    code, out, err = run(capsys, "eval", UPLINK, "--packets", str(packets), "--json")
    assert code == 1
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["redirect", "allow"]
    assert f"{packets}:4:7: error: a tcp packet needs ports" in err


def test_eval_needs_hook_when_several(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "eval", MULTI, "--packet", "icmp 1.1.1.1 -> 2.2.2.2")
    assert code == 2 and "host_in, host_out" in err
    code, _, err = run(
        capsys, "eval", MULTI, "--hook", "nope", "--packet", "icmp 1.1.1.1 -> 2.2.2.2"
    )
    assert code == 2 and "no policy named 'nope'" in err
    code, out, _ = run(
        capsys, "eval", MULTI, "--hook", "host_out", "--packet", "udp 1.1.1.1:1 -> 2.2.2.2:123"
    )
    assert code == 0 and "mark 0x7" in out


def test_fmt_check_and_write(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    messy = tmp_path / "m.fw"
    messy.write_text("policy   p ingress on eth0 {allow tcp   # keep me\n default drop}\n")
    code, out, err = run(capsys, "fmt", "--check", str(messy))
    assert code == 1 and "+    allow tcp  # keep me" in out and "not formatted" in err
    code, out, _ = run(capsys, "fmt", str(messy))
    assert code == 0 and out.startswith("policy p ingress on eth0 {\n    default drop\n")
    code, _, _ = run(capsys, "fmt", "-w", str(messy))
    assert code == 0
    code, _, _ = run(capsys, "fmt", "--check", str(messy))
    assert code == 0


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["eval"])
    assert info.value.code == 2
    code, _, err = run(capsys, "eval", UPLINK)
    assert code == 2 and "exactly one of --packet" in err


def test_console_script_help() -> None:
    flowc = Path(sys.executable).with_name("flowc")
    exe = [str(flowc)] if flowc.exists() else [sys.executable, "-m", "cli.main"]
    result = subprocess.run([*exe, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0
    for command in ("compile", "check", "eval", "fmt", "import"):
        assert command in result.stdout
    result = subprocess.run([*exe, "eval", "--help"], capture_output=True, text=True)
    assert "PROTO SRC -> DST" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "{bad}"],
        ["compile", "{bad}"],
        ["compile", "{bad}", "--emit", "flower"],
        ["eval", "{bad}", "--packet", "udp 10.0.0.1:1 -> 10.0.0.2:53"],
        ["load", "{bad}", "--dev", "lo"],
        ["verify", "{bad}", "--no-bpf"],
        ["diff", "{bad}", "{good}"],
        ["diff", "{good}", "{bad}"],
        ["audit", "--policy", "{bad}", "--filters", "{good}"],
        ["simulate", "--policy", "{bad}", "--trace", "{good}"],
        ["agent", "--policy", "{bad}"],
    ],
    ids=lambda argv: "-".join(a for a in argv if not a.startswith("{")),
)
def test_a_policy_with_errors_exits_1_from_every_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    """One exit status for one meaning: every command that reads a policy says 1
    for a policy with errors, with file:line:col and a caret on stderr."""
    bad = tmp_path / "bad.fw"
    bad.write_text("policy p ingress on eth0 {\n    default drop\n    allow tcp to nowhere\n}\n")
    good = tmp_path / "good.fw"
    good.write_text("policy p ingress on eth0 {\n    default drop\n}\n")
    code = main([a.format(bad=bad, good=good) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{bad}:3:" in err and "^" in err
