"""The eval packet syntax: round trips, defaults and errors."""

from __future__ import annotations

import pytest
from hypothesis import given

from compiler.packet_syntax import PacketSyntaxError, parse_packet
from ir.packet import Packet, format_packet
from tests.strategies import packets


@given(packets())
def test_format_then_parse_is_identity(packet: Packet) -> None:
    assert parse_packet(format_packet(packet)) == packet


def test_defaults() -> None:
    p = parse_packet("icmp 1.1.1.1 -> 2.2.2.2")
    assert (p.get("icmp_type"), p.get("icmp_code")) == (8, 0)
    p6 = parse_packet("icmpv6 fd00::1 -> [fd00::2]")
    assert p6.get("icmp_type") == 128
    assert parse_packet("tcp 1.1.1.1:1 -> 2.2.2.2:2").get("tcp_flags") == 0


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "empty packet", 1),
        ("tcp 1.1.1.1:1 2.2.2.2:2", "expected 'PROTO SRC -> DST'", 15),
        ("tcpp 1.1.1.1:1 -> 2.2.2.2:2", "unknown protocol", 1),
        ("tcp 1.1.1.1 -> 2.2.2.2:2", "needs ports", 5),
        ("icmp 1.1.1.1:5 -> 2.2.2.2", "have no ports", 6),
        ("tcp 1.1.1.1:99999 -> 2.2.2.2:2", "out of range", 5),
        ("tcp 1.1.1.300:1 -> 2.2.2.2:2", "invalid address", 5),
        ("tcp fd00::1:80 -> [fd00::2]:80", "needs ports", 5),
        ("tcp 1.1.1.1:1 -> [fd00::2]:2", "different IP versions", 18),
        ("icmp fd00::1 -> fd00::2", "use icmpv6", 1),
        ("udp 1.1.1.1:1 -> 2.2.2.2:2 flags syn", "only apply to tcp", 28),
        ("tcp 1.1.1.1:1 -> 2.2.2.2:2 flags syn,foo", "unknown TCP flag", 34),
        ("tcp 1.1.1.1:1 -> 2.2.2.2:2 vlan", "needs a value", 32),
        ("tcp 1.1.1.1:1 -> 2.2.2.2:2 vlan 5000", "out of range", 33),
        ("tcp 1.1.1.1:1 -> 2.2.2.2:2 vlan 1 vlan 2", "given twice", 35),
        ("tcp 1.1.1.1:1 -> 2.2.2.2:2 type 3", "icmp/icmpv6", 28),
        ("icmp 1.1.1.1 -> 2.2.2.2 type packet-too-big", "does not exist", 30),
        ("tcp 1.1.1.1:1 -> 2.2.2.2:2 color red", "unexpected 'color'", 28),
    ],
)
def test_errors_explain_and_point(text: str, message: str, column: int) -> None:
    with pytest.raises(PacketSyntaxError) as info:
        parse_packet(text)
    assert message in info.value.message
    assert info.value.column == column
