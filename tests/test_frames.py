"""Frames built from packets parse back to the same packets (the reference parser)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ir.packet import Packet
from tests.strategies import packets
from verify.frames import MALFORMED, NOT_IP, frame, hop_by_hop, parse_frame


@given(packets(), st.binary(max_size=8))
def test_frame_round_trip(packet: Packet, payload: bytes) -> None:
    assert parse_frame(frame(packet, payload)) == packet


@given(packets())
def test_truncation_is_malformed_or_unchanged(packet: Packet) -> None:
    full = frame(packet)
    for cut in range(len(full)):
        got = parse_frame(full[:cut])
        assert got in (MALFORMED, packet)


def test_ipv6_extension_headers_and_non_ip() -> None:
    p = Packet.make(family=6, ip_proto=17, ip6_src=1, ip6_dst=2, sport=5, dport=53)
    ext = hop_by_hop(17)
    assert parse_frame(frame(p, ipv6_ext=ext)) == p
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert parse_frame(arp) == NOT_IP
