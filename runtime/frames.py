"""IR packets -> Ethernet frames, for BPF_PROG_TEST_RUN and real traffic in tests.

Checksums are left zero: nothing on the classification path reads them.
"""

from __future__ import annotations

import struct

from ir.fields import PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP
from ir.packet import Packet

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100


def transport(packet: Packet, payload: bytes = b"") -> bytes:
    """The transport header (and payload) of ``packet``."""
    proto = packet.get("ip_proto")
    family = packet.get("family")
    sport, dport = packet.get("sport"), packet.get("dport")
    if proto == PROTO_TCP:
        flags = packet.get("tcp_flags")
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    if proto == PROTO_UDP:
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if proto == PROTO_SCTP:
        return struct.pack("!HHII", sport, dport, 0, 0) + payload
    if (family, proto) in ((4, PROTO_ICMP), (6, PROTO_ICMPV6)):
        return (
            struct.pack("!BBHI", packet.get("icmp_type"), packet.get("icmp_code"), 0, 0) + payload
        )
    return payload or b"\0" * 8


def ip_packet(packet: Packet, payload: bytes = b"", *, ipv6_ext: bytes = b"") -> bytes:
    """The IP packet (no Ethernet header). ``ipv6_ext``: extension headers to insert,
    each starting with its next-header byte already set by the caller."""
    body = transport(packet, payload)
    proto = packet.get("ip_proto")
    dscp = packet.get("dscp")
    if packet.get("family") == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            dscp << 2,
            20 + len(body),
            0,
            0,
            64,
            proto,
            0,
            packet.get("ip4_src").to_bytes(4, "big"),
            packet.get("ip4_dst").to_bytes(4, "big"),
        )
        return header + body
    first_word = (6 << 28) | ((dscp << 2) << 20)
    next_header = proto if not ipv6_ext else 0  # hop-by-hop first when ext given
    header = struct.pack(
        "!IHBB16s16s",
        first_word,
        len(ipv6_ext) + len(body),
        next_header,
        64,
        packet.get("ip6_src").to_bytes(16, "big"),
        packet.get("ip6_dst").to_bytes(16, "big"),
    )
    return header + ipv6_ext + body


def frame(packet: Packet, payload: bytes = b"", *, ipv6_ext: bytes = b"") -> bytes:
    """An Ethernet frame carrying ``packet`` (with an 802.1Q tag when it has a VLAN)."""
    ethertype = ETH_P_IP if packet.get("family") == 4 else ETH_P_IPV6
    head = DST_MAC + SRC_MAC
    if packet.get("vlan_tagged"):
        head += struct.pack("!HH", ETH_P_8021Q, packet.get("vlan_id"))
    return head + struct.pack("!H", ethertype) + ip_packet(packet, payload, ipv6_ext=ipv6_ext)


def hop_by_hop(next_header: int, length_units: int = 0) -> bytes:
    """An IPv6 hop-by-hop options header of (length_units + 1) * 8 bytes (PadN filled)."""
    size = (length_units + 1) * 8
    return bytes([next_header, length_units, 1, size - 4]) + b"\0" * (size - 4)
