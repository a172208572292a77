"""Connection tracking in the generated BPF (no kernel needed): the C as
generated (golden, for review), the configuration compiled in, the
established fast lane decided from the IR, and the frames the kernel tier
sends (echo identifiers, embedded headers) read back by the reference parser."""

from __future__ import annotations

import pytest

from backends.bpf.conntrack import CtSpec, ct_defines, established_rule
from backends.bpf.emit import lower
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.conntrack import CtConfig, CtTimeouts
from ir.model import Policy
from ir.packet import Packet
from tests.golden import check_golden
from verify.frames import embedded_header, frame, parse_frame

STATEFUL = """
policy web ingress on eth0 {
    default drop
    allow state established,related
    drop state invalid
    allow state new tcp dport 80
}
"""


def _policy(text: str) -> Policy:
    result = compile_source(text, "ct.fw")
    assert result.program is not None, result.diagnostics
    return result.program.policies[0]


def _first_rules(*rules: str) -> Policy:
    body = "\n".join(f"    {r}" for r in rules)
    return _policy(f"policy p ingress on eth0 {{\n    default drop\n{body}\n}}\n")


def test_stateful_c_golden() -> None:
    program = lower(_policy(STATEFUL), "bitvec")
    assert program.conntrack == CtSpec()  # a policy matching on state gets tracking
    check_golden("web.ct.bitvec.c", program.source)


def test_tracking_only_when_asked_or_state_is_used() -> None:
    plain = lower(_first_rules("allow tcp dport 80"))
    assert plain.conntrack is None and "#define FLOWC_CT 0" in plain.source
    spec = CtSpec(CtConfig(capacity=5, on_full="drop"), pin="/sys/fs/bpf/t/ct")
    asked = lower(_first_rules("allow tcp dport 80"), conntrack=spec)
    assert asked.conntrack == spec
    for line in (
        "#define FLOWC_CT 1",
        '#define FLOWC_CT_PIN "/sys/fs/bpf/t/ct"',
        "#define FLOWC_CT_CAPACITY 5",
        "#define FLOWC_CT_ON_FULL_DROP 1",
    ):
        assert line in asked.source


def test_timeouts_are_compiled_in() -> None:
    lines = ct_defines(CtSpec(CtConfig(CtTimeouts(udp=7, tcp=99))))
    assert "#define FLOWC_CT_T_UDP 7ULL" in lines
    assert "#define FLOWC_CT_T_TCP 99ULL" in lines
    assert "#define FLOWC_CT_TCP_LOOSE 0" in lines
    with pytest.raises(ValueError, match="/sys/fs/bpf/"):
        CtSpec(pin="/tmp/ct")


@pytest.mark.parametrize(
    ("rules", "fast"),
    [
        (("allow state established,related", "allow tcp dport 80"), 0),
        (("allow state established", "drop state invalid"), 0),
        (("drop state invalid", "allow state established"), 1),  # invalid is not established
        (("allow tcp dport 22", "allow state established"), None),  # port 22 comes first
        (("allow state established tcp", "allow state established"), None),  # two rules
        (("allow tcp dport 80",), None),  # default drop and rule 0 share them
        (("mark 0x1", "allow state established"), 0),  # a rule for everything
    ],
)
def test_the_fast_lane_rule_comes_from_the_ir(rules: tuple[str, ...], fast: int | None) -> None:
    policy = _first_rules(*rules)
    rule = established_rule(policy)
    assert (rule.priority if rule is not None else None) == fast
    program = lower(policy, conntrack=CtSpec())
    assert program.fast_rule == fast
    if fast is not None:
        assert f"Established fast lane: rule {fast}" in program.source
        assert f"ct.fw:{rule.origin.line if rule else 0}" in program.source


@pytest.mark.parametrize(
    "text",
    [
        "icmp 10.0.0.1 -> 10.0.0.2 type echo-request id 7",
        "icmp 10.0.0.2 -> 10.0.0.1 type echo-reply id 65535",
        "icmpv6 fd00::1 -> fd00::2 type echo-request id 9",
        "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3 inner "
        "udp 10.0.0.1:5353 -> 10.0.0.53:53",
        "icmp 10.0.0.9 -> 10.0.0.1 type time-exceeded inner "
        "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags syn",
        "icmp 10.0.0.2 -> 10.0.0.1 type time-exceeded inner "
        "icmp 10.0.0.1 -> 10.0.0.2 type echo-request id 3",
        "icmpv6 fd00::2 -> fd00::1 type 1 inner udp [fd00::1]:1000 -> [fd00::2]:53",
        "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3",
    ],
)
def test_icmp_frames_carry_what_the_tracker_reads(text: str) -> None:
    packet = parse_packet(text)
    got = parse_frame(frame(packet))
    assert isinstance(got, Packet)
    assert got.echo_id == packet.echo_id
    want = packet.embedded
    if want is None:
        assert got.embedded is None
        return
    assert got.embedded is not None
    # Only the tracker's fields come back: TCP flags lie past the 8 bytes carried.
    keep = ("family", "ip_proto", "ip4_src", "ip4_dst", "ip6_src", "ip6_dst", "sport", "dport")
    assert {f: got.embedded.get(f) for f in keep} == {f: want.get(f) for f in keep}
    assert got.embedded.echo_id == want.echo_id


def test_cut_short_or_unparsable_embedded_headers_read_as_none() -> None:
    inner = parse_packet("udp 10.0.0.1:5353 -> 10.0.0.53:53")
    error = parse_packet("icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3")
    head = frame(error)
    for kept in range(0, 24):  # up to the IP header and half the ports
        got = parse_frame(head + embedded_header(inner, kept=kept))
        assert isinstance(got, Packet) and got.embedded is None, kept
    got = parse_frame(head + embedded_header(inner, kept=24))
    assert isinstance(got, Packet) and got.embedded is not None
    later = parse_packet("udp 10.0.0.1 -> 10.0.0.53 frag later")
    got = parse_frame(head + embedded_header(later))
    assert isinstance(got, Packet) and got.embedded is None
