"""Frames the kernel and guest tiers send: a hypothesis strategy of odd and
well-formed frames, and named cases of every row of the README's table
"Frames the IR does not describe" (FRAMES.md).

Both tiers judge a frame by ``evaluate_frame(policy, parse_frame(frame))``
(ir/interp.py, verify/frames.py); this module only builds frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from ir.fields import FRAG_FIRST, FRAG_LATER, HEADER_SPACE
from ir.packet import Packet, prerequisites_met
from tests.strategies import packets
from verify import frames as fr

FRAG_POLICY = """
policy frags ingress on eth0 {
    default allow
    drop tcp dport 22
    drop frag later from 10.0.3.0/24
    mark 7 udp dport 53
    allow frag first,later to fd00::10
    drop icmp type 8
    drop tcp to fd00::/16 dport 443
}
"""
"""Default allow: port rules, ``frag later`` and ``frag first,later`` rules."""

DENY_POLICY = """
policy strict ingress on eth0 {
    default drop
    allow frag none tcp to 10.0.1.10 dport 443
    mark 3 frag first udp
    allow frag later tcp
    allow icmpv6 type 128
    allow vlan 100
}
"""
"""Default drop: a rule for each fragment state, VLAN and ICMPv6 rules."""

ETHERTYPES_NOT_IP = (fr.ETH_P_ARP, 0x88CC, 0x8847, 0x88B5, 0x0000, 0x05DC)


def replaced(packet: Packet, **fields: int) -> Packet:
    """``packet`` with some fields changed; fields the result no longer has
    (ports of ICMP, transport fields of a later fragment) become 0."""
    merged = {**packet.as_dict(), **fields}
    values = [merged[name] for name in HEADER_SPACE.names]
    for i in range(len(values)):
        if not prerequisites_met(HEADER_SPACE, tuple(values), i):
            values[i] = 0
    return Packet(tuple(values))


# ---------------------------------------------------------------- strategy
@st.composite
def odd_frames(draw: st.DrawFn, base: st.SearchStrategy[Packet] | None = None) -> bytes:
    """A frame of some packet (``base``, or any packet), well-formed or made odd
    in one of the ways the README's table lists, then possibly cut short."""
    packet = draw(base if base is not None else packets())
    family = packet.get("family")
    kind = draw(
        st.sampled_from(
            [
                "plain",
                "plain",
                "ext",
                "options",
                "ihl",
                "version",
                "tags",
                "udp_length",
                "tcp_doff",
                "fragment",
                "not_ip",
            ]
        )
    )
    payload = draw(st.binary(max_size=16))
    data: bytes
    if kind == "ext" and family == 6:
        kinds = draw(st.lists(st.sampled_from(fr.EXT_HEADERS), max_size=fr.MAX_EXT_HEADERS + 2))
        data = fr.frame(packet, payload, ipv6_ext=kinds, ext_units=draw(st.integers(0, 2)))
    elif kind == "options" and family == 4:
        data = fr.frame(packet, payload, ip_options=draw(st.binary(min_size=1, max_size=40)))
    elif kind == "ihl" and family == 4:
        data = fr.with_ihl(packet, draw(st.integers(0, 15)))
    elif kind == "version":
        data = fr.with_version(packet, draw(st.integers(0, 15)))
    elif kind == "tags":
        tags = draw(
            st.lists(
                st.tuples(
                    st.sampled_from([fr.ETH_P_8021Q, fr.ETH_P_8021AD]), st.integers(0, 0xFFFF)
                ),
                min_size=1,
                max_size=3,
            )
        )
        data = fr.frame(packet, payload, tags=tags)
    elif kind == "udp_length" and packet.get("ip_proto") == 17 and packet.get("frag") < 2:
        data = fr.udp_length(packet, draw(st.sampled_from([0, 1, 7, 8, 9, 0xFFFF])))
    elif kind == "tcp_doff" and packet.get("ip_proto") == 6 and packet.get("frag") < 2:
        data = fr.frame(packet, payload, tcp_doff=draw(st.integers(0, 15)))
    elif kind == "fragment" and family == 4:
        offset = draw(st.sampled_from([0, 1, fr.LATER_OFFSET, 0x1FFF]))
        data = fr.ipv4_fragment(packet, offset, draw(st.booleans()), payload)
    elif kind == "not_ip":
        data = fr.non_ip(draw(st.sampled_from(ETHERTYPES_NOT_IP)), draw(st.integers(0, 46)))
    else:
        data = fr.frame(packet, payload)
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


# ------------------------------------------------------------- table rows
@dataclass(frozen=True, slots=True)
class FrameCase:
    """One frame of a row of the README's table."""

    row: str
    name: str
    data: bytes

    @property
    def id(self) -> str:
        """The case's test id."""
        return f"{self.row}:{self.name}"


ROWS = (
    "not_ip",
    "l2_cut_short",
    "ipv4_header_short",
    "ipv4_version",
    "ipv4_options",
    "ipv4_options_cut_short",
    "ipv4_first_fragment",
    "ipv4_later_fragment",
    "ipv6_header_short",
    "ipv6_ext_chain",
    "ipv6_ext_cut_short_or_too_many",
    "ipv6_first_fragment",
    "ipv6_later_fragment",
    "tcp_short",
    "udp_sctp_short",
    "udp_length",
    "icmp_short",
    "vlan_priority_tag",
    "qinq",
)
"""The README table's rows, in its order."""


def row_cases(tcp4: Packet, tcp6: Packet, *, tagged_l3: bool = False) -> list[FrameCase]:
    """Frames of every row, built around a TCP packet of each family (UDP, SCTP
    and ICMP variants take its addresses). ``tagged_l3``: put an 802.1Q tag
    (VID 0) on the frames whose IP header is cut short, which BPF_PROG_TEST_RUN
    refuses untagged (skb->protocol says IP)."""
    udp4 = replaced(tcp4, ip_proto=17, tcp_flags=0)
    sctp6 = replaced(tcp6, ip_proto=132, tcp_flags=0)
    udp6 = replaced(tcp6, ip_proto=17, tcp_flags=0)
    icmp4 = replaced(tcp4, ip_proto=1, sport=0, dport=0, tcp_flags=0, icmp_type=8)
    icmp6 = replaced(tcp6, ip_proto=58, sport=0, dport=0, tcp_flags=0, icmp_type=128)
    short_tags = [(fr.ETH_P_8021Q, 0)] if tagged_l3 else []

    def first(p: Packet) -> Packet:
        return replaced(p, frag=FRAG_FIRST)

    def later(p: Packet) -> Packet:
        return replaced(p, frag=FRAG_LATER, sport=0, dport=0, tcp_flags=0, icmp_type=0)

    full4 = fr.frame(tcp4, tags=short_tags)
    full6 = fr.frame(tcp6, tags=short_tags)
    l3_4, l3_6 = fr.l3_offset(full4), fr.l3_offset(full6)
    cases = [
        ("not_ip", "arp", fr.non_ip()),
        ("not_ip", "lldp", fr.non_ip(0x88CC)),
        ("not_ip", "mpls", fr.non_ip(0x8847, 20)),
        ("l2_cut_short", "vlan_tag_2_bytes", fr.frame(tcp4, tags=[(fr.ETH_P_8021Q, 5)])[:16]),
        ("l2_cut_short", "second_tag", fr.frame(tcp4, tags=[(0x88A8, 5), (0x8100, 6)])[:20]),
        ("ipv4_header_short", "19_bytes", full4[: l3_4 + 19]),
        ("ipv4_header_short", "ihl_4", fr.with_ihl(tcp4, 4)),
        ("ipv4_header_short", "ihl_0", fr.with_ihl(tcp4, 0)),
        ("ipv4_version", "version_6", fr.with_version(tcp4, 6)),
        ("ipv4_version", "version_0", fr.with_version(udp4, 0)),
        ("ipv4_options", "tcp_4_bytes", fr.frame(tcp4, ip_options=b"\x01" * 4)),
        ("ipv4_options", "udp_40_bytes", fr.frame(udp4, ip_options=b"\x01" * 40)),
        ("ipv4_options_cut_short", "tcp", fr.options_cut_short(tcp4)),
        ("ipv4_options_cut_short", "icmp", fr.options_cut_short(icmp4, 40, 4)),
        ("ipv4_options_cut_short", "gre", fr.options_cut_short(replaced(tcp4, ip_proto=47))),
        ("ipv4_first_fragment", "tcp", fr.frame(first(tcp4), b"x" * 32)),
        ("ipv4_first_fragment", "udp", fr.frame(first(udp4), b"x" * 32)),
        ("ipv4_first_fragment", "icmp", fr.frame(first(icmp4), b"x" * 32)),
        ("ipv4_first_fragment", "tcp_cut_in_header", fr.truncated_l4(first(tcp4), 8)),
        ("ipv4_later_fragment", "tcp", fr.frame(later(tcp4), b"x" * 32)),
        ("ipv4_later_fragment", "last", fr.ipv4_fragment(tcp4, fr.LATER_OFFSET, False)),
        ("ipv4_later_fragment", "offset_1", fr.ipv4_fragment(udp4, 1, True)),
        ("ipv6_header_short", "39_bytes", full6[: l3_6 + 39]),
        ("ipv6_ext_chain", "hbh_dst_routing", fr.frame(tcp6, ipv6_ext=[0, 60, 43])),
        ("ipv6_ext_chain", "sixteen", fr.frame(udp6, ipv6_ext=[60] * 16)),
        ("ipv6_ext_chain", "fifteen_long", fr.frame(tcp6, ipv6_ext=[60] * 15, ext_units=2)),
        ("ipv6_ext_cut_short_or_too_many", "seventeen", fr.frame(tcp6, ipv6_ext=[60] * 17)),
        ("ipv6_ext_cut_short_or_too_many", "hbh_4_bytes", fr.ext_cut_short(tcp6, [0], 4)),
        ("ipv6_ext_cut_short_or_too_many", "dst_12_of_16", fr.ext_cut_short(udp6, [0, 60], 12)),
        ("ipv6_ext_cut_short_or_too_many", "routing_ends", fr.ext_cut_short(tcp6, [43], 16)[:-1]),
        ("ipv6_first_fragment", "tcp", fr.frame(first(tcp6), b"x" * 32)),
        ("ipv6_first_fragment", "atomic_udp", fr.atomic_fragment(udp6)),
        ("ipv6_first_fragment", "after_hbh_icmp", fr.frame(first(icmp6), ipv6_ext=[0])),
        ("ipv6_later_fragment", "tcp", fr.frame(later(tcp6), b"x" * 32)),
        ("ipv6_later_fragment", "udp_after_dst", fr.frame(later(udp6), ipv6_ext=[60])),
        ("tcp_short", "19_bytes", fr.truncated_l4(tcp4, 19)),
        ("tcp_short", "3_bytes_v6", fr.truncated_l4(tcp6, 3)),
        ("tcp_short", "doff_4", fr.frame(tcp4, tcp_doff=4)),
        ("tcp_short", "doff_0_v6", fr.frame(tcp6, tcp_doff=0)),
        ("udp_sctp_short", "udp_3_bytes", fr.truncated_l4(udp4, 3)),
        ("udp_sctp_short", "sctp_2_bytes_v6", fr.truncated_l4(sctp6, 2)),
        ("udp_length", "zero", fr.udp_length(udp4, 0)),
        ("udp_length", "too_long_v6", fr.udp_length(udp6, 0xFFFF)),
        ("icmp_short", "2_bytes", fr.truncated_l4(icmp4, 2)),
        ("icmp_short", "7_bytes_v6", fr.truncated_l4(icmp6, 7)),
        ("vlan_priority_tag", "vid_0_pcp_5", fr.frame(tcp4, tags=[(fr.ETH_P_8021Q, 5 << 13)])),
        ("vlan_priority_tag", "vid_0_v6", fr.frame(tcp6, tags=[(fr.ETH_P_8021Q, 0)])),
        ("qinq", "8021ad_8021q", fr.frame(tcp4, tags=[(0x88A8, 100), (0x8100, 5)])),
        ("qinq", "8021ad_only", fr.frame(udp4, tags=[(0x88A8, 7)])),
        ("qinq", "double_8021q_v6", fr.frame(tcp6, tags=[(0x8100, 9), (0x8100, 10)])),
        ("qinq", "three_tags", fr.frame(tcp4, tags=[(0x88A8, 1), (0x8100, 2), (0x8100, 3)])),
    ]
    return [FrameCase(row, name, data) for row, name, data in cases]
