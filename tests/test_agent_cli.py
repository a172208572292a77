"""``flowc agent`` command line paths that need no kernel: usage, bad policy, no agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main


def test_agent_needs_a_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent"]) == 2
    assert "--policy" in capsys.readouterr().err


def test_agent_reports_policy_errors_with_a_caret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.fw"
    bad.write_text("policy p ingress on eth0 {\n    default drop\n    allow udp dport 99999\n}\n")
    assert main(["agent", "--policy", str(bad), "--metrics-addr", "none"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:" in err and "^" in err
    assert "Traceback" not in err


def test_status_without_an_agent_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "status", "--metrics-addr", "127.0.0.1:1"]) == 3
    assert "no agent answers" in capsys.readouterr().err


def test_agent_on_netkit_refuses_offload(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["agent", "--policy", "examples/dns.fw", "--attach", "netkit", "--offload", "skip_sw"]
    assert main([*args, "--metrics-addr", "none"]) == 2
    assert "--attach netkit runs no flower cache" in capsys.readouterr().err
