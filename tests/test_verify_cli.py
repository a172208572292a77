"""``flowc verify`` and ``flowc diff`` as a CI job sees them: exit codes, summaries, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.flower import lowering
from backends.flower.rules import FlowerAction, FlowerFilter, FlowerMatch
from backends.flower.text import to_tc_json
from cli.main import main
from compiler.frontend import compile_file, compile_source
from compiler.packet_syntax import parse_packet
from ir.diff import diff_policies
from ir.interp import evaluate
from tests.fixtures import EXAMPLE_PATHS
from verify.bpf import BpfCheck, Phase

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


def _same_priority_dump(tmp_path: Path, *, shielded: bool) -> Path:
    """web-tier's lowering with an ambiguous pair appended at a new priority: a
    drop and a pass on all TCP, overlapping; ``shielded`` puts a trap on all IPv4
    before them, so no packet reaches either."""
    filters = list(lowering.lower(compile_file(str(WEB)).program.policies[0]).filters)  # type: ignore[union-attr]
    last = max(f.prio for f in filters)
    tcp = FlowerMatch(0x0800, ip_proto=6)
    extra = [
        FlowerFilter(0, 1, 99, FlowerMatch(0x0800), FlowerAction("trap", chain=1)),
        FlowerFilter(0, last + 1, 1, tcp, FlowerAction("drop")),
        FlowerFilter(0, last + 1, 2, tcp, FlowerAction("pass")),
    ]
    if not shielded:
        extra = extra[1:]
        filters = [f for f in filters if f.match.protocol != 0x0800]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(to_tc_json([*filters, *extra])))
    return path


def test_an_unreachable_same_priority_overlap_verifies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _same_priority_dump(tmp_path, shielded=True)
    code, out, _ = run(capsys, "verify", str(WEB), "--flower", str(path), "--no-bpf")
    assert code == 0, out
    code, out, _ = run(capsys, "audit", "--policy", str(WEB), "--filters", str(path))
    assert code == 0, out


def test_a_reachable_same_priority_overlap_names_the_wrong_kernel_choice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = _same_priority_dump(tmp_path, shielded=False)
    code, out, _ = run(capsys, "verify", str(WEB), "--flower", str(path), "--no-bpf")
    assert code == 1
    assert "kernel:  may pick chain 0 prio" in out and "mask creation order decides" in out
    assert "WRONG" in out and "agrees" in out
    code, out, _ = run(capsys, "verify", str(WEB), "--flower", str(path), "--no-bpf", "--json")
    ce = json.loads(out)["counterexample"]
    choices = {c["handle"]: c for c in ce["choices"]}
    assert set(choices) == {1, 2}
    wrong = choices[ce["filter"]["handle"]]
    assert wrong["agrees"] is False and wrong["flower"] == ce["flower"]
    assert [c["agrees"] for c in ce["choices"]].count(True) == 1
    code, out, _ = run(capsys, "audit", "--policy", str(WEB), "--filters", str(path))
    assert code == 1 and "kernel:  may pick" in out


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


# ---------------------------------------------------------------------- audit
V2_TEXT = WEB.read_text().replace(
    "allow tcp from lb to webs dport 8080", "drop tcp from lb to webs dport 8080"
)


def saved_dump(capsys: pytest.CaptureFixture[str], tmp_path: Path, generation: int) -> Path:
    path = tmp_path / f"gen{generation}.json"
    code = main(
        ["compile", str(WEB), "--emit", "flower", "--generation", str(generation), "-o", str(path)]
    )
    capsys.readouterr()
    assert code == 0
    return path


def test_audit_of_the_policy_own_lowering_is_sound(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dump = saved_dump(capsys, tmp_path, 3)
    code, out, _ = run(capsys, "audit", "--policy", str(WEB), "--filters", str(dump))
    assert code == 0, out
    assert "generation 3" in out and out.rstrip().endswith("-> OK")


def test_audit_after_a_policy_edit_names_the_unsound_filters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dump = saved_dump(capsys, tmp_path, 1)
    v2 = tmp_path / "web-tier.fw"
    v2.write_text(V2_TEXT)
    code, out, _ = run(
        capsys, "audit", "--policy", str(v2), "--filters", str(dump), "--generation", "2", "--json"
    )
    assert code == 1
    report = json.loads(out)
    assert report["equivalent"] is False and report["generation"] == 2
    statuses = {f["status"] for f in report["filters"]}
    assert statuses == {"unsound", "stale"}
    assert report["counts"]["sound"] == 0  # every filter carries generation 1
    ce = report["counterexample"]
    assert ce["policy"] == "drop" and ce["flower"] == "pass"
    assert ce["rule"]["line"] == 31 and "dport 8080" in ce["rule"]["text"]
    # The packet, re-read in eval syntax, really is dropped by the new policy
    # and really is matched by the filter named.
    (new,) = compile_source(V2_TEXT, str(v2)).program.policies  # type: ignore[union-attr]
    packet = parse_packet(ce["packet"])
    assert str(evaluate(new, packet).action) == "drop"
    # Text form: one line per unsound filter with its packet and DSL line.
    code, out, _ = run(capsys, "audit", "--policy", str(v2), "--filters", str(dump))
    assert code == 1
    assert out.count("UNSOUND") == report["counts"]["unsound"] >= 1
    assert f"{v2}:31: drop tcp from lb to webs dport 8080" in out
    assert "COUNTEREXAMPLE FOUND" in out


def test_audit_lists_sound_filters_of_another_generation_as_stale(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dump = saved_dump(capsys, tmp_path, 4)
    code, out, _ = run(
        capsys, "audit", "--policy", str(WEB), "--filters", str(dump), "--generation", "5"
    )
    assert code == 0  # stale but sound filters do no harm; they are listed
    assert "STALE" in out and "installed by generation 4" in out


def test_audit_input_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "audit", "--policy", str(WEB), "--filters", str(tmp_path / "x"))
    assert code == 2 and "No such file" in err
    code, _, err = run(capsys, "audit", "--policy", str(WEB), "--dev", "flowc-no-such-dev")
    assert code == 2 and "no device 'flowc-no-such-dev'" in err
    bad = tmp_path / "bad.json"
    bad.write_text('[{"kind": "flower", "options": {"keys": {"enc_key_id": 5}}}]')
    code, _, err = run(capsys, "audit", "--policy", str(WEB), "--filters", str(bad))
    assert code == 2 and str(bad) in err


def test_audit_of_a_filter_the_policy_cannot_express_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = emitted(capsys)
    target = next(
        f
        for f in data
        if "options" in f and f["options"]["keys"].get("eth_type") == "ipv4"  # type: ignore[index]
    )
    target["options"]["keys"]["ip_tos"] = 1  # type: ignore[index]
    target["options"]["keys"]["ip_tos_mask"] = "3"  # type: ignore[index]
    path = tmp_path / "ecn.json"
    # Alone: with the others, the packets it would take (ECN 01) reach the
    # later filters, which may then be unsound, and exit 1 wins.
    path.write_text(json.dumps([target]))
    code, out, _ = run(capsys, "audit", "--policy", str(WEB), "--filters", str(path))
    assert code == 3, out
    assert "UNCHECKED" in out and "ECN" in out and "INCOMPLETE" in out


def test_bpf_rules_the_witness_search_gave_up_on_make_verify_incomplete(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported by name and counted in the JSON, never skipped silently (exit 3)."""
    policy = compile_file(str(WEB)).program.policies[0]  # type: ignore[union-attr]
    stuck = policy.rules[1]
    result = BpfCheck(
        packets=len(policy.rules) - 2 + 20 + 5,
        counterexample=None,
        witnessed=len(policy.rules) - 2,
        shadowed=1,
        gave_up=(stuck,),
        boundary=20,
        random=5,
        phases=(Phase("compile+load", 1.0, 50.0),),
    )
    monkeypatch.setattr("cli.verify.check_bpf", lambda *_a, **_k: result)
    code, out, _ = run(capsys, "verify", str(WEB))
    assert code == 3
    assert "bpf: gave up finding a packet for 1 rules" in out
    assert f"{stuck.origin}: {stuck.origin.text}" in out
    code, out, _ = run(capsys, "verify", str(WEB), "--json")
    bpf = next(c for c in json.loads(out)["checks"] if c["check"] == "bpf")
    assert code == 3 and bpf["equivalent"] and not bpf["settled"]
    assert bpf["rules"]["gave_up"] == [
        {"file": stuck.origin.file, "line": stuck.origin.line, "text": stuck.origin.text}
    ]
    assert bpf["rules"]["shadowed"] == 1 and bpf["boundary_packets"] == 20
