"""``check_bpf`` and ``flowc verify``'s BPF half in the real kernel.

Every example policy agrees with its program on every rule's deciding
witness, the bounds and random packets, with every rule accounted for; a
program built from a policy with one action changed is caught on that
rule's witness; and a ClassBench 1K set goes through ``flowc verify`` (both
halves, JSON) end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import pytest

from backends.bpf.emit import lower
from cli.main import main
from compiler.frontend import compile_file, compile_source
from ir.model import DROP, Action, Policy
from tests.conftest import CORPORA
from tests.fixtures import EXAMPLE_PATHS
from tests.kernel.conftest import inside
from verify.bpf import check_bpf

pytestmark = pytest.mark.kernel


def policies(path: Path) -> tuple[Policy, ...]:
    result = compile_file(str(path))
    assert result.program is not None
    return result.program.policies


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_every_example_agrees_and_every_rule_is_accounted_for(run_netns: str, path: Path) -> None:
    for policy in policies(path):
        with inside(run_netns):
            result = check_bpf(policy, random_count=200)
        assert result.equivalent, result.counterexample
        assert result.settled
        assert result.witnessed + result.shadowed + result.unsendable == len(policy.rules)
        assert result.packets == result.witnessed + result.boundary + result.random
        assert [p.name for p in result.phases] == [
            "compile+load",
            "witness search",
            "boundary and random packets",
            "ir verdicts",
            "kernel runs",
        ]


def test_a_program_of_another_policy_is_caught_on_the_changed_rule(run_netns: str) -> None:
    policy = next(p for path in EXAMPLE_PATHS for p in policies(path) if len(p.rules) > 3)
    # The first non-default rule that does not drop now drops, in the program only.
    k, victim = next(
        (k, r) for k, r in enumerate(policy.rules) if not r.is_default and r.action.kind != DROP
    )
    rules = list(policy.rules)
    rules[k] = dataclasses.replace(victim, action=Action(DROP))
    changed = dataclasses.replace(policy, rules=tuple(rules))
    with inside(run_netns):
        result = check_bpf(policy, random_count=0, program=lower(changed, "bitvec"))
    ce = result.counterexample
    assert ce is not None
    assert ce.rule.priority == victim.priority
    assert ce.got[1] == victim.priority and ce.got[0] != ce.expected[0]


@pytest.mark.parametrize("name", ["neurocuts_acl1_1k", "neurocuts_fw1_1k", "neurocuts_ipc1_1k"])
def test_flowc_verify_a_classbench_1k_set_end_to_end(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_netns: str, name: str
) -> None:
    source = CORPORA / "classbench" / name
    if not source.exists():
        pytest.skip(f"no corpora at {CORPORA}")
    fw = tmp_path / f"{name}.fw"
    assert main(["import", "classbench", str(source), "-o", str(fw)]) == 0
    with inside(run_netns):
        code = main(["verify", str(fw), "--json", "--random", "500"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    bpf = next(c for c in report["checks"] if c["check"] == "bpf")
    policy = compile_source(fw.read_text(), fw.name).program.policies[0]  # type: ignore[union-attr]
    rules = bpf["rules"]
    assert bpf["equivalent"] and bpf["settled"] and rules["gave_up"] == []
    assert rules["witnessed"] + rules["shadowed"] + rules["unsendable"] == len(policy.rules)
    assert bpf["packets"] == rules["witnessed"] + bpf["boundary_packets"] + bpf["random_packets"]


STATEFUL_PATHS = sorted(
    (Path(__file__).resolve().parents[2] / "examples" / "stateful").glob("*.fw")
)


@pytest.mark.parametrize("path", STATEFUL_PATHS, ids=lambda p: p.stem)
def test_stateful_examples_agree_for_every_state(run_netns: str, path: Path) -> None:
    """The checker gives the program each witness's state (nothing tracked), on a
    table of its own: the classifier and the fast lane judged for every state."""
    for policy in policies(path):
        with inside(run_netns):
            result = check_bpf(policy, random_count=100)
        assert result.equivalent, result.counterexample
        assert result.settled
    assert not Path(f"/sys/fs/bpf/flowc-verify-{os.getpid()}").exists()


def test_a_wrong_fast_lane_is_caught_on_an_established_packet(run_netns: str) -> None:
    """A program whose fast lane names a rule that does not decide every
    established packet: the checker's established witnesses catch it."""
    path = next(p for p in STATEFUL_PATHS if p.stem == "web-tier")
    policy = policies(path)[0]
    program = lower(policy)
    assert program.conntrack is not None and program.fast_rule is not None
    wrong = next(k for k, r in enumerate(policy.rules) if r.action.kind == DROP)
    spec = dataclasses.replace(program.conntrack, pin="/sys/fs/bpf/flowc-test-fast/ct")
    program = dataclasses.replace(lower(policy, conntrack=spec), fast_rule=wrong)
    try:
        with inside(run_netns):
            result = check_bpf(policy, random_count=0, program=program)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(spec.pin)
            os.rmdir(os.path.dirname(spec.pin))
    assert not result.equivalent
    assert result.counterexample is not None
    assert result.counterexample.packet.get("state") == 1  # established
