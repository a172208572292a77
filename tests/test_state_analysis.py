"""``flowc check``'s state warnings: rules made dead by state (shadowing in the
state coordinate) and connections whose replies no hook lets through, checked
on examples and, for soundness, against the interpreter on generated programs."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.fields import STATE_ESTABLISHED, STATE_NEW
from ir.interp import evaluate
from ir.model import DROP, Program
from ir.packet import Packet
from ir.state_analysis import unanswered_commits, uses_state


def _warnings(text: str) -> list[tuple[str, int]]:
    result = compile_source(text, "t.fw", lint=True)
    assert result.ok, result.diagnostics
    return [(d.code, d.pos.line) for d in result.diagnostics if d.severity == "warning" and d.pos]


HOST = """
endpoint web {{ ip 10.0.1.10 }}
policy inside ingress on eth0 {{
    default drop
{ingress}
}}
policy outside egress on eth0 {{
    default drop
{egress}
}}
"""


def test_replies_dropped_by_a_stateless_rule_first() -> None:
    text = HOST.format(
        ingress="    allow state established\n    allow state new tcp to web dport 443",
        egress="    drop tcp sport 443\n    allow state established",
    )
    assert ("unanswered-commit", 6) in _warnings(text)


def test_replies_dropped_by_the_default_when_no_rule_allows_established() -> None:
    text = HOST.format(
        ingress="    allow state new tcp to web dport 443", egress="    allow udp dport 53"
    )
    assert ("unanswered-commit", 5) in _warnings(text)


def test_no_warning_when_replies_get_through() -> None:
    text = HOST.format(
        ingress="    allow state established,related\n    allow state new tcp to web dport 443",
        egress="    allow state established,related",
    )
    assert not [w for w in _warnings(text) if w[0] == "unanswered-commit"]
    # A stateless allow of the replies is as good for the ingress rule (line 5);
    # the egress rule itself lets new connections out from port 443, whose
    # replies ingress drops, and that is worth the warning it gets (line 9).
    text = HOST.format(
        ingress="    allow state new tcp to web dport 443", egress="    allow tcp sport 443"
    )
    assert [w for w in _warnings(text) if w[0] == "unanswered-commit"] == [("unanswered-commit", 9)]


def test_stateless_programs_and_lone_hooks_get_no_state_warning() -> None:
    text = HOST.format(ingress="    allow tcp to web dport 443", egress="    allow udp dport 53")
    assert not [w for w in _warnings(text) if w[0] == "unanswered-commit"]
    lone = "policy p ingress on eth0 {\n default drop\n allow state new tcp dport 80\n}\n"
    assert not _warnings(lone)


def test_established_rule_after_one_that_decides_those_packets_is_shadowed() -> None:
    text = (
        "policy p ingress on eth0 {\n default drop\n allow tcp\n allow udp\n"
        " allow state established tcp\n}\n"
    )
    assert ("shadowed", 5) in _warnings(text)
    # Partly decided before is no warning.
    text = (
        "policy p ingress on eth0 {\n default drop\n allow tcp dport 80\n"
        " allow state established\n}\n"
    )
    assert not _warnings(text)


# ------------------------------------------------------------- soundness
INGRESS_RULES = (
    "allow state established,related",
    "allow state new tcp to 10.0.1.10 dport 443",
    "allow state new udp dport 53",
    "allow tcp dport 80",
    "drop state invalid",
    "allow icmp",
    "mark 0x10 state new tcp",
)
EGRESS_RULES = (
    "allow state established",
    "drop tcp sport 443",
    "drop tcp sport 80",
    "allow udp",
    "drop state established udp",
    "allow tcp sport 443 to 10.0.3.0/24",
    "allow state new",
)
ADDRESSES = ("10.0.1.10", "10.0.3.7")
PORTS = (53, 80, 443, 40000)


def _universe_pairs() -> list[tuple[str, str]]:
    """Packets a host might commit and a reply of each (state set by the caller)."""
    pairs = []
    for src, dst in itertools.permutations(ADDRESSES, 2):
        for sport, dport in itertools.product(PORTS, PORTS):
            for proto, flags, back in (("tcp", " flags syn", " flags syn,ack"), ("udp", "", "")):
                pairs.append(
                    (
                        f"{proto} {src}:{sport} -> {dst}:{dport}{flags}",
                        f"{proto} {dst}:{dport} -> {src}:{sport}{back}",
                    )
                )
    return pairs


PAIRS = [(parse_packet(a), parse_packet(b)) for a, b in _universe_pairs()]


def _program(ingress: list[str], egress: list[str]) -> Program:
    text = HOST.format(
        ingress="\n".join(f"    {r}" for r in ingress), egress="\n".join(f"    {r}" for r in egress)
    )
    result = compile_source(text, "gen.fw")
    assert result.ok and result.program is not None, result.diagnostics
    return result.program


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(INGRESS_RULES), min_size=1, max_size=4, unique=True),
    st.lists(st.sampled_from(EGRESS_RULES), min_size=0, max_size=4, unique=True),
)
def test_every_finding_holds_for_the_interpreter(ingress: list[str], egress: list[str]) -> None:
    program = _program(ingress, egress)
    findings = unanswered_commits(program)
    assert uses_state(program) or not findings
    for finding in findings:
        answering = [
            p for p in program.policies if p.hook.direction != finding.policy.hook.direction
        ]
        # The witness pair is what the warning says it is.
        committed = finding.policy.rules.index(finding.rule)
        assert evaluate(finding.policy, _packet(finding.committed)).rule is finding.rule
        assert committed >= 0
        for policy, rule in finding.dropped_by:
            verdict = evaluate(policy, _packet(finding.reply))
            assert verdict.rule is rule and verdict.action.kind == DROP
        # And no packet of the universe the rule commits gets an established reply.
        for packet, reply in PAIRS:
            verdict = evaluate(finding.policy, packet.with_field("state", STATE_NEW))
            if verdict.rule is not finding.rule:
                continue
            for policy in answering:
                back = evaluate(policy, reply.with_field("state", STATE_ESTABLISHED))
                assert back.action.kind == DROP, (packet, reply, policy.name)


def _packet(point: tuple[int, ...]) -> Packet:
    return Packet(point)
