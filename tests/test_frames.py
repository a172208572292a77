"""Frames built from packets parse back to the same packets, and every odd
frame of the README's table parses as the table says (the reference parser,
verify/frames.py, which bpf/flowc_parse.h must equal: tests/kernel)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler.packet_syntax import parse_packet
from ir.fields import FRAG_FIRST, FRAG_LATER, FRAG_NONE
from ir.interp import Unclassified
from ir.packet import Packet
from tests.frame_strategies import ROWS, FrameCase, odd_frames, row_cases
from tests.strategies import packets
from verify.bpf import on_the_wire
from verify.frames import frame, parse_frame

L2, L3, L4 = Unclassified.MALFORMED_L2, Unclassified.MALFORMED_L3, Unclassified.MALFORMED_L4
TCP4 = parse_packet("tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags 0x02")
TCP6 = parse_packet("tcp [fd00:3::7]:40000 -> [fd00::10]:443 flags 0x10")

# What the README's table says of each case: an Unclassified, or the fields
# the parsed packet must have.
EXPECTED: dict[str, Unclassified | dict[str, int]] = {
    "not_ip:arp": Unclassified.NOT_IP,
    "not_ip:lldp": Unclassified.NOT_IP,
    "not_ip:mpls": Unclassified.NOT_IP,
    "l2_cut_short:vlan_tag_2_bytes": L2,
    "l2_cut_short:second_tag": L2,
    "ipv4_header_short:19_bytes": L3,
    "ipv4_header_short:ihl_4": L3,
    "ipv4_header_short:ihl_0": L3,
    "ipv4_version:version_6": {"family": 4, "dport": 443},
    "ipv4_version:version_0": {"family": 4, "ip_proto": 17, "dport": 443},
    "ipv4_options:tcp_4_bytes": {"dport": 443, "tcp_flags": 2},
    "ipv4_options:udp_40_bytes": {"ip_proto": 17, "dport": 443},
    "ipv4_options_cut_short:tcp": L4,
    "ipv4_options_cut_short:icmp": L4,
    "ipv4_options_cut_short:gre": {"ip_proto": 47, "frag": FRAG_NONE},
    "ipv4_first_fragment:tcp": {"frag": FRAG_FIRST, "dport": 443, "tcp_flags": 2},
    "ipv4_first_fragment:udp": {"frag": FRAG_FIRST, "dport": 443},
    "ipv4_first_fragment:icmp": {"frag": FRAG_FIRST, "icmp_type": 8},
    "ipv4_first_fragment:tcp_cut_in_header": L4,
    "ipv4_later_fragment:tcp": {"frag": FRAG_LATER, "ip_proto": 6, "dport": 0},
    "ipv4_later_fragment:last": {"frag": FRAG_LATER, "sport": 0},
    "ipv4_later_fragment:offset_1": {"frag": FRAG_LATER, "ip_proto": 17},
    "ipv6_header_short:39_bytes": L3,
    "ipv6_ext_chain:hbh_dst_routing": {"family": 6, "ip_proto": 6, "dport": 443},
    "ipv6_ext_chain:sixteen": {"ip_proto": 17, "dport": 443},
    "ipv6_ext_chain:fifteen_long": {"ip_proto": 6, "dport": 443},
    "ipv6_ext_cut_short_or_too_many:seventeen": L3,
    "ipv6_ext_cut_short_or_too_many:hbh_4_bytes": L3,
    "ipv6_ext_cut_short_or_too_many:dst_12_of_16": L3,
    "ipv6_ext_cut_short_or_too_many:routing_ends": L3,
    "ipv6_first_fragment:tcp": {"frag": FRAG_FIRST, "ip_proto": 6, "dport": 443},
    "ipv6_first_fragment:atomic_udp": {"frag": FRAG_FIRST, "ip_proto": 17, "dport": 443},
    "ipv6_first_fragment:after_hbh_icmp": {"frag": FRAG_FIRST, "ip_proto": 58, "icmp_type": 128},
    "ipv6_later_fragment:tcp": {"frag": FRAG_LATER, "ip_proto": 6, "dport": 0},
    "ipv6_later_fragment:udp_after_dst": {"frag": FRAG_LATER, "ip_proto": 17},
    "tcp_short:19_bytes": L4,
    "tcp_short:3_bytes_v6": L4,
    "tcp_short:doff_4": L4,
    "tcp_short:doff_0_v6": L4,
    "udp_sctp_short:udp_3_bytes": L4,
    "udp_sctp_short:sctp_2_bytes_v6": L4,
    "udp_length:zero": {"ip_proto": 17, "sport": 40000, "dport": 443},
    "udp_length:too_long_v6": {"ip_proto": 17, "dport": 443},
    "icmp_short:2_bytes": L4,
    "icmp_short:7_bytes_v6": L4,
    "vlan_priority_tag:vid_0_pcp_5": {"vlan_tagged": 1, "vlan_id": 0, "dport": 443},
    "vlan_priority_tag:vid_0_v6": {"vlan_tagged": 1, "vlan_id": 0, "family": 6},
    "qinq:8021ad_8021q": {"vlan_tagged": 1, "vlan_id": 100, "dport": 443},
    "qinq:8021ad_only": {"vlan_id": 7, "ip_proto": 17},
    "qinq:double_8021q_v6": {"vlan_id": 9, "family": 6},
    "qinq:three_tags": Unclassified.NOT_IP,
}
CASES = row_cases(TCP4, TCP6)


def test_every_row_has_cases_and_every_case_an_expectation() -> None:
    assert sorted({c.row for c in CASES}) == sorted(ROWS)
    assert sorted(c.id for c in CASES) == sorted(EXPECTED)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_table_row(case: FrameCase) -> None:
    got = parse_frame(case.data)
    want = EXPECTED[case.id]
    if isinstance(want, Unclassified):
        assert got is want
    else:
        assert isinstance(got, Packet), got
        assert {name: got.get(name) for name in want} == want


@given(packets(), st.binary(max_size=8))
def test_frame_round_trip(packet: Packet, payload: bytes) -> None:
    assert parse_frame(frame(packet, payload)) == packet


@given(packets())
def test_truncation_is_malformed_or_unchanged(packet: Packet) -> None:
    full = frame(packet)
    for cut in range(len(full)):
        got = parse_frame(full[:cut])
        assert got in (L2, L3, L4, packet)
        if cut < 14 or (packet.get("vlan_tagged") and cut < 18):
            assert got is L2


@given(packets(), st.lists(st.sampled_from([0, 43, 44, 60]), max_size=16), st.integers(0, 3))
def test_ipv6_chains_of_up_to_sixteen_headers_are_walked(
    packet: Packet, kinds: list[int], units: int
) -> None:
    if packet.get("family") != 6 or not on_the_wire(packet):
        return
    # An extra fragment header of a fragment is one more header: stay at 16.
    if packet.get("frag") != FRAG_NONE and len(kinds) == 16:
        kinds = kinds[:15]
    got = parse_frame(frame(packet, ipv6_ext=kinds, ext_units=units))
    if 44 in kinds and packet.get("frag") == FRAG_NONE:
        assert got == Packet.make(**{**packet.as_dict(), "frag": FRAG_FIRST})
    else:
        assert got == packet


@given(odd_frames())
def test_odd_frames_parse_to_a_packet_or_a_reason(data: bytes) -> None:
    got = parse_frame(data)
    assert isinstance(got, (Packet, Unclassified))
    if isinstance(got, Packet):
        # Whatever the frame, a parsed packet is one the IR can describe.
        assert got.get("family") in (4, 6)
        if got.get("frag") == FRAG_LATER:
            assert (got.get("sport"), got.get("dport"), got.get("tcp_flags")) == (0, 0, 0)
