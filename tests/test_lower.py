"""What DSL rules mean: families, negation, implied protocols, per-family split."""

from __future__ import annotations

from compiler.packet_syntax import parse_packet
from ir.interp import evaluate
from ir.model import Policy
from tests.conftest import policy_of

EP = "endpoint dual { ip 10.0.0.1, fd00::1; dev nk-d }\nendpoint v4 { ip 10.0.0.2; dev nk-4 }\n"


def verdict(policy: Policy, packet: str) -> str:
    v = evaluate(policy, parse_packet(packet))
    return "default" if v.rule.is_default else f"{v.action.kind}@{v.rule.origin.line}"


def test_ipv4_operand_implies_ipv4() -> None:
    p = policy_of(" allow from 10.0.0.0/8")
    assert verdict(p, "udp 10.1.1.1:1 -> 1.1.1.1:2") == "allow@4"
    assert verdict(p, "udp [fd00::1]:1 -> [fd00::2]:2") == "default"
    (rule, _default) = p.rules
    assert rule.match.get("family").intervals == ((4, 4),)


def test_rule_without_addresses_matches_both_families_as_one_ir_rule() -> None:
    p = policy_of(" allow tcp dport 22")
    assert len(p.rules) == 2
    assert verdict(p, "tcp 10.1.1.1:1 -> 1.1.1.1:22") == "allow@4"
    assert verdict(p, "tcp [fd00::1]:1 -> [fd00::2]:22") == "allow@4"


def test_dual_stack_endpoint_splits_per_family() -> None:
    p = policy_of(" allow to dual", header=EP)
    assert [r.origin.line for r in p.rules[:-1]] == [6, 6]
    assert verdict(p, "icmp 9.9.9.9 -> 10.0.0.1") == "allow@6"
    assert verdict(p, "icmpv6 fd00::9 -> fd00::1") == "allow@6"
    assert verdict(p, "icmpv6 fd00::9 -> fd00::2") == "default"


def test_family_intersection_of_operands() -> None:
    p = policy_of(" allow from dual to v4", header=EP)
    assert len(p.rules) == 2  # only IPv4 can match both operands
    assert verdict(p, "icmp 10.0.0.1 -> 10.0.0.2") == "allow@6"


def test_not_stays_within_the_family() -> None:
    p = policy_of(" allow from not 10.0.0.0/8")
    assert verdict(p, "icmp 11.0.0.1 -> 1.1.1.1") == "allow@4"
    assert verdict(p, "icmp 10.0.0.1 -> 1.1.1.1") == "default"
    # An IPv6 packet is not "outside 10.0.0.0/8": it is of another family.
    assert verdict(p, "icmpv6 fd00::1 -> fd00::2") == "default"


def test_not_of_dual_set_covers_both_families() -> None:
    p = policy_of(" drop to not dual", header=EP, default="allow")
    assert verdict(p, "icmp 9.9.9.9 -> 10.0.0.9") == "drop@6"
    assert verdict(p, "icmpv6 fd00::9 -> fd00::9") == "drop@6"
    assert verdict(p, "icmpv6 fd00::9 -> fd00::1") == "default"


def test_ports_imply_port_protocols() -> None:
    p = policy_of(" allow dport 53")
    assert verdict(p, "udp 1.1.1.1:1 -> 2.2.2.2:53") == "allow@4"
    assert verdict(p, "sctp 1.1.1.1:1 -> 2.2.2.2:53") == "allow@4"
    assert verdict(p, "icmp 1.1.1.1 -> 2.2.2.2") == "default"
    # An ICMP packet carries 0 in the port fields; "dport 0-100" must not catch it.
    q = policy_of(" allow dport 0-100")
    assert verdict(q, "icmp 1.1.1.1 -> 2.2.2.2") == "default"
    assert verdict(q, "tcp 1.1.1.1:1 -> 2.2.2.2:0") == "allow@4"


def test_icmp_type_name_differs_per_family() -> None:
    p = policy_of(" allow type echo-request")
    assert verdict(p, "icmp 1.1.1.1 -> 2.2.2.2 type 8") == "allow@4"
    assert verdict(p, "icmpv6 fd00::1 -> fd00::2 type 128") == "allow@4"
    assert verdict(p, "icmpv6 fd00::1 -> fd00::2 type 8") == "default"
    assert verdict(p, "icmp 1.1.1.1 -> 2.2.2.2 type 128") == "default"


def test_flags_imply_tcp_and_are_ternary() -> None:
    p = policy_of(" drop flags syn,!ack", default="allow")
    assert verdict(p, "tcp 1.1.1.1:1 -> 2.2.2.2:3 flags syn") == "drop@4"
    assert verdict(p, "tcp 1.1.1.1:1 -> 2.2.2.2:3 flags syn,psh") == "drop@4"
    assert verdict(p, "tcp 1.1.1.1:1 -> 2.2.2.2:3 flags syn,ack") == "default"
    assert verdict(p, "udp 1.1.1.1:1 -> 2.2.2.2:3") == "default"


def test_vlan_and_dscp() -> None:
    p = policy_of(" mark 5 vlan 10-20 dscp af41", default="allow")
    assert verdict(p, "udp 1.1.1.1:1 -> 2.2.2.2:3 vlan 15 dscp 34") == "mark@4"
    assert verdict(p, "udp 1.1.1.1:1 -> 2.2.2.2:3 dscp 34") == "default"
    assert verdict(p, "udp 1.1.1.1:1 -> 2.2.2.2:3 vlan 21 dscp 34") == "default"


def test_protocol_numbers_and_sets() -> None:
    p = policy_of(" allow proto { 47, udp }")
    assert verdict(p, "47 1.1.1.1 -> 2.2.2.2") == "allow@4"
    assert verdict(p, "udp 1.1.1.1:5 -> 2.2.2.2:6") == "allow@4"
    assert verdict(p, "tcp 1.1.1.1:5 -> 2.2.2.2:6") == "default"


def test_nested_and_inline_sets() -> None:
    header = "set inner = { 10.1.0.0/16 }\nset outer = { inner, { 10.2.0.0/16, 10.3.0.1 } }\n"
    p = policy_of(" allow from outer sport not { 1-1023, 8080 }", header=header)
    assert verdict(p, "tcp 10.2.3.4:2000 -> 1.1.1.1:1") == "allow@6"
    assert verdict(p, "tcp 10.1.3.4:8080 -> 1.1.1.1:1") == "default"
    assert verdict(p, "tcp 10.3.0.1:80 -> 1.1.1.1:1") == "default"
    assert verdict(p, "tcp 10.3.0.2:2000 -> 1.1.1.1:1") == "default"


def test_actions_carry_their_targets() -> None:
    p = policy_of(" redirect tcp -> dual\n mirror udp -> v4\n mark 0x10 icmp", header=EP)
    kinds = [(r.action.kind, r.action.target, r.action.device, r.action.mark) for r in p.rules[:-1]]
    assert kinds == [
        ("redirect", "dual", "nk-d", None),
        ("mirror", "v4", "nk-4", None),
        ("mark", None, None, 16),
    ]


def test_first_match_wins() -> None:
    p = policy_of(" drop tcp from 10.0.0.0/8\n allow tcp from 10.1.0.0/16")
    assert verdict(p, "tcp 10.1.0.1:1 -> 2.2.2.2:3") == "drop@4"


def test_default_redirect() -> None:
    p = policy_of(" allow icmp", header=EP, default="redirect -> dual")
    assert p.default.action.kind == "redirect"
    assert p.default.action.device == "nk-d"
