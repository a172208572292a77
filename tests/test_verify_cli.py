"""``flowc verify`` and ``flowc diff`` as a CI job sees them: exit codes, summaries, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.frontend import compile_file, compile_source
from compiler.packet_syntax import parse_packet
from ir.diff import diff_policies
from ir.interp import evaluate
from tests.test_flower import EXAMPLE_PATHS

WEB = Path(__file__).resolve().parent.parent / "examples" / "web-tier.fw"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("profile", ["software", "ice-e810"])
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_every_example_verifies(
    capsys: pytest.CaptureFixture[str], path: Path, profile: str
) -> None:
    policies = compile_file(str(path)).program.policies  # type: ignore[union-attr]
    for policy in policies:
        code, out, _ = run(
            capsys, "verify", str(path), "--hook", policy.name, "--no-bpf", "--profile", profile
        )
        assert code == 0, out
        assert "flower: equivalent" in out and "partition: sound" in out


def emitted(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["compile", str(WEB), "--emit", "flower"]) == 0
    data: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return data


def test_a_changed_action_in_tc_json_is_a_counterexample(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = emitted(capsys)
    # The first filter that drops: make it pass.
    victim: dict[str, object] = next(
        f
        for f in data
        if "options" in f
        and f["options"]["actions"][0].get("control_action", {}).get("type") == "drop"  # type: ignore[index]
    )
    victim["options"]["actions"][0]["control_action"]["type"] = "pass"  # type: ignore[index]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    code, out, _ = run(capsys, "verify", str(WEB), "--flower", str(path), "--no-bpf", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["equivalent"] is False
    ce = report["counterexample"]
    assert ce["flower"] == "pass" and ce["policy"] == "drop"
    # The packet is in eval syntax, and the policy really drops it.
    (policy,) = compile_file(str(WEB)).program.policies  # type: ignore[union-attr]
    packet = parse_packet(ce["packet"])
    assert evaluate(policy, packet).action.kind == "drop"
    assert ce["filter"]["prio"] == victim["pref"]
    assert ce["rule"]["line"] == evaluate(policy, packet).rule.origin.line


def test_foreign_json_is_an_input_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = emitted(capsys)
    target = next(f for f in data if "options" in f)
    target["options"]["keys"]["enc_key_id"] = 5  # type: ignore[index]
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "verify", str(WEB), "--flower", str(path), "--no-bpf")
    assert code == 2 and "enc_key_id" in err
    path.write_text("[{")
    code, _, err = run(capsys, "verify", str(WEB), "--flower", str(path), "--no-bpf")
    assert code == 2 and "foreign.json:1:" in err


def test_bpf_check_without_root_exits_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    code, out, _ = run(capsys, "verify", str(WEB))
    assert code == 3
    assert "bpf: could not run: the BPF check needs root" in out
    assert "flower: equivalent" in out


SOURCE = WEB.read_text()


def test_diff_of_a_policy_with_itself_is_empty(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diff", str(WEB), str(WEB))
    assert code == 0 and "no packet changes verdict" in out


def test_diff_reports_exactly_the_changed_regions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    new = tmp_path / "web-tier.fw"
    new.write_text(
        SOURCE.replace(
            "allow tcp from lb to webs dport 8080", "allow tcp from lb to webs dport { 8080, 8443 }"
        )
    )
    code, out, _ = run(capsys, "diff", str(WEB), str(new))
    assert code == 1
    assert "dport=8443" in out and "drop -> allow" in out
    assert "web-tier.fw:31" in out  # the edited line on the new side
    assert run(capsys, "diff", str(WEB), str(new), "--allow-change")[0] == 0


@pytest.mark.parametrize(
    ("edit", "changed", "unchanged"),
    [
        # Narrowing the blocklist lets 100.64/10 through wherever a later rule allows.
        (
            ("drop from blocklist", "drop from { 192.0.2.0/24 }"),
            ["tcp 100.64.1.1:40000 -> 10.10.0.2:443 flags syn", "icmp 100.64.0.9 -> 10.0.0.1"],
            ["tcp 192.0.2.7:40000 -> 10.10.0.2:443 flags syn", "udp 100.64.0.9:1 -> 10.0.0.1:53"],
        ),
        # Swapping two rules that overlap changes only their overlap.
        (
            (
                "    allow tcp to lb dport http\n",
                "",
            ),
            ["tcp 8.8.8.8:40000 -> 10.10.0.2:80 flags syn"],
            ["tcp 198.51.100.1:40000 -> 10.10.1.11:80 flags ack"],
        ),
    ],
)
def test_diff_regions_hold_exactly_the_changed_packets(
    edit: tuple[str, str], changed: list[str], unchanged: list[str]
) -> None:
    (old,) = compile_source(SOURCE, "web-tier.fw").program.policies  # type: ignore[union-attr]
    (new,) = compile_source(SOURCE.replace(*edit), "web-tier.fw").program.policies  # type: ignore[union-attr]
    d = diff_policies(old, new)
    assert d.settled and d.changes
    for c in d.changes:
        assert evaluate(old, c.example).action != evaluate(new, c.example).action
        assert evaluate(old, c.example).rule == c.old
        assert evaluate(new, c.example).rule == c.new
    for text in changed + unchanged:
        p = parse_packet(text)
        in_diff = any(c.region.contains(p.values) for c in d.changes)
        differs = evaluate(old, p).action != evaluate(new, p).action
        assert in_diff == differs == (text in changed), text
