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


NOT_IP = "not_ip"
MALFORMED = "malformed"
_EXT_HEADERS = (0, 43, 44, 60)
MAX_EXT_HEADERS = 4


def parse_frame(data: bytes) -> Packet | str:
    """What the slow path's parser (bpf/flowc_parse.h) makes of a frame: the packet,
    or ``NOT_IP`` / ``MALFORMED``. The reference for differential tests of the parser.

    A frame's VLAN tag here is only the in-band one (test frames carry no
    skb->vlan_tci).
    """
    if len(data) < 14:
        return MALFORMED
    proto = int.from_bytes(data[12:14], "big")
    off = 14
    fields: dict[str, int] = {}
    for _ in range(2):
        if proto not in (0x8100, 0x88A8):
            break
        if len(data) < off + 4:
            return MALFORMED
        if "vlan_tagged" not in fields:
            fields["vlan_tagged"] = 1
            fields["vlan_id"] = int.from_bytes(data[off : off + 2], "big") & 0x0FFF
        proto = int.from_bytes(data[off + 2 : off + 4], "big")
        off += 4
    if proto == ETH_P_IP:
        if len(data) < off + 20:
            return MALFORMED
        version, ihl = data[off] >> 4, (data[off] & 0x0F) * 4
        if version != 4 or ihl < 20 or len(data) < off + ihl:
            return MALFORMED
        fields.update(
            family=4,
            dscp=data[off + 1] >> 2,
            ip_proto=data[off + 9],
            ip4_src=int.from_bytes(data[off + 12 : off + 16], "big"),
            ip4_dst=int.from_bytes(data[off + 16 : off + 20], "big"),
        )
        if int.from_bytes(data[off + 6 : off + 8], "big") & 0x1FFF:
            return Packet.make(**fields)
        return _transport(data, off + ihl, fields)
    if proto == ETH_P_IPV6:
        if len(data) < off + 40:
            return MALFORMED
        if data[off] >> 4 != 6:
            return MALFORMED
        traffic_class = ((data[off] & 0x0F) << 4) | (data[off + 1] >> 4)
        fields.update(
            family=6,
            dscp=traffic_class >> 2,
            ip6_src=int.from_bytes(data[off + 8 : off + 24], "big"),
            ip6_dst=int.from_bytes(data[off + 24 : off + 40], "big"),
        )
        nxt = data[off + 6]
        off += 40
        for _ in range(MAX_EXT_HEADERS):
            if nxt not in _EXT_HEADERS:
                break
            if off > 512 or len(data) < off + 8:
                return MALFORMED
            if nxt == 44:
                nxt = data[off]
                if int.from_bytes(data[off + 2 : off + 4], "big") & 0xFFF8:
                    fields["ip_proto"] = nxt
                    return Packet.make(**fields)
                off += 8
            else:
                nxt, off = data[off], off + (data[off + 1] + 1) * 8
        if nxt in _EXT_HEADERS:
            return MALFORMED
        fields["ip_proto"] = nxt
        return _transport(data, off, fields)
    return NOT_IP


def _transport(data: bytes, off: int, fields: dict[str, int]) -> Packet | str:
    family, proto = fields["family"], fields["ip_proto"]
    if off > 1024:
        return MALFORMED
    if proto == PROTO_TCP:
        need = 14
    elif proto in (PROTO_UDP, PROTO_SCTP):
        need = 4
    elif (family, proto) in ((4, PROTO_ICMP), (6, PROTO_ICMPV6)):
        need = 2
    else:
        return Packet.make(**fields)
    if len(data) < off + need:
        return MALFORMED
    if need == 2:
        fields.update(icmp_type=data[off], icmp_code=data[off + 1])
    else:
        fields.update(
            sport=int.from_bytes(data[off : off + 2], "big"),
            dport=int.from_bytes(data[off + 2 : off + 4], "big"),
        )
        if need == 14:
            fields["tcp_flags"] = data[off + 13]
    return Packet.make(**fields)
