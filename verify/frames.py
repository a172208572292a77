"""Ethernet frames: IR packets -> frames, odd and malformed frames, and the
reference of the slow path's parser.

:func:`frame` builds the frame of any IR packet (fragments included: a first
fragment carries the transport header with MF set or in an IPv6 fragment
header at offset 0, a later one only payload at a non-zero offset), so
``parse_frame(frame(p)) == p`` for every packet on the wire. The other
builders make the frames the IR does not describe, for every row of the
README's table "Frames the IR does not describe" (tests/frame_strategies.py
names a case of each row), and
:func:`parse_frame` is what bpf/flowc_parse.h makes of any frame: a packet or
an :class:`ir.interp.Unclassified`, line by line as the C reads it.

Checksums are left zero: nothing on the classification path reads them.

ICMP carries what the connection tracker reads (bpf/flowc_ct.h): an echo
request or reply has its identifier (``Packet.echo_id``) in bytes 4-5 of the
ICMP header; an error embeds the offending packet's IP header and the first 8
bytes of its transport (``Packet.embedded``; RFC 792), and :func:`parse_frame`
reads them back, an embedded header cut short or unparsable as ``embedded``
None.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ir.fields import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
)
from ir.interp import Unclassified
from ir.packet import Packet

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_ARP = 0x0806

IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
EXT_HEADERS = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS)
"""IPv6 next-header values the parser walks past as extension headers."""
MAX_EXT_HEADERS = 16
"""FLOWC_MAX_EXT_HEADERS: extension headers the parser walks; one more is malformed."""
MAX_OFF = 0xC000
"""FLOWC_MAX_OFF: the offset bound the verifier needs (no real frame reaches it)."""

LATER_OFFSET = 185
"""Fragment offset (8-byte units) of the later fragments :func:`frame` builds:
the second fragment of a 1500-byte MTU IPv4 packet."""
IPV4_MF = 0x2000


def transport(packet: Packet, payload: bytes = b"", *, tcp_doff: int = 5) -> bytes:
    """The transport header (and payload) of ``packet``; a later fragment has none."""
    if packet.get("frag") == FRAG_LATER:
        return payload or b"\0" * 8
    proto = packet.get("ip_proto")
    family = packet.get("family")
    sport, dport = packet.get("sport"), packet.get("dport")
    if proto == PROTO_TCP:
        flags = packet.get("tcp_flags")
        header = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, tcp_doff << 4, flags, 65535, 0, 0)
        return header + payload
    if proto == PROTO_UDP:
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if proto == PROTO_SCTP:
        return struct.pack("!HHII", sport, dport, 0, 0) + payload
    if (family, proto) in ((4, PROTO_ICMP), (6, PROTO_ICMPV6)):
        icmp_type = packet.get("icmp_type")
        head = struct.pack("!BBH", icmp_type, packet.get("icmp_code"), 0)
        if icmp_type in ICMP_ECHO_TYPES[family]:
            return head + struct.pack("!HH", packet.echo_id, 1) + payload
        if packet.embedded is not None and icmp_type in ICMP_ERROR_TYPES[family]:
            return head + b"\0" * 4 + embedded_header(packet.embedded) + payload
        return head + b"\0" * 4 + payload
    return payload or b"\0" * 8


ICMP_ECHO_TYPES = {4: (8, 0), 6: (128, 129)}
"""Echo request and reply types per family (ir/conntrack.py ICMP_ECHO)."""
ICMP_ERROR_TYPES = {4: (3, 4, 5, 11, 12), 6: (1, 2, 3, 4)}
"""ICMP error types that embed a header (ir/conntrack.py ICMP_ERRORS)."""
EMBEDDED_TRANSPORT = 8
"""Bytes of the embedded packet's transport an ICMP error carries (RFC 792)."""


def embedded_header(packet: Packet, kept: int | None = None) -> bytes:
    """What an ICMP error about ``packet`` carries: its IP header and the first 8
    bytes of its transport (``kept`` bytes of that in all, to cut it short)."""
    whole = ip_packet(packet, b"\0" * EMBEDDED_TRANSPORT)
    header = 20 if packet.get("family") == 4 else 40 + (8 if packet.get("frag") else 0)
    data = whole[: header + EMBEDDED_TRANSPORT]
    return data if kept is None else data[:kept]


def ext_header(kind: int, next_header: int, length_units: int = 0) -> bytes:
    """One IPv6 hop-by-hop, routing or destination options header of
    (length_units + 1) * 8 bytes (options: PadN)."""
    size = (length_units + 1) * 8
    return bytes([next_header, length_units, 1, size - 4]) + b"\0" * (size - 4)


def fragment_header(next_header: int, offset: int, more: bool) -> bytes:
    """An IPv6 fragment header: ``offset`` in 8-byte units, M flag ``more``."""
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), 0x1234)


def ipv6_chain(kinds: Sequence[int], next_header: int, length_units: int = 0) -> bytes:
    """Extension headers of the given kinds in order, the last pointing at
    ``next_header``; hop-by-hop/routing/destination options ones are
    (length_units + 1) * 8 bytes, fragment headers atomic (offset 0, M=0)."""
    out = b""
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else next_header
        if kind == IPPROTO_FRAGMENT:
            out += fragment_header(nxt, 0, False)
        else:
            out += ext_header(kind, nxt, length_units)
    return out


def ip_packet(
    packet: Packet,
    payload: bytes = b"",
    *,
    ipv6_ext: Sequence[int] = (),
    ext_units: int = 0,
    ip_options: bytes = b"",
    tcp_doff: int = 5,
) -> bytes:
    """The IP packet (no Ethernet header) of ``packet``.

    ``ipv6_ext``: kinds of IPv6 extension headers to put before the transport
    (see :func:`ipv6_chain`); ``ip_options``: IPv4 options (padded to 4 bytes).
    A fragment (frag first/later) is the IPv4 fragment with MF / the offset, or
    an IPv6 fragment header after ``ipv6_ext``."""
    body = transport(packet, payload, tcp_doff=tcp_doff)
    proto = packet.get("ip_proto")
    dscp = packet.get("dscp")
    frag = packet.get("frag")
    if packet.get("family") == 4:
        options = ip_options + b"\0" * (-len(ip_options) % 4)
        flags = {FRAG_NONE: 0, FRAG_FIRST: IPV4_MF, FRAG_LATER: LATER_OFFSET}[frag]
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | (5 + len(options) // 4),
            dscp << 2,
            20 + len(options) + len(body),
            0x4242,
            flags,
            64,
            proto,
            0,
            packet.get("ip4_src").to_bytes(4, "big"),
            packet.get("ip4_dst").to_bytes(4, "big"),
        )
        return header + options + body
    kinds = list(ipv6_ext)
    if frag == FRAG_NONE:
        ext = ipv6_chain(kinds, proto, ext_units)
    else:
        ext = ipv6_chain(kinds, IPPROTO_FRAGMENT, ext_units)
        offset = 0 if frag == FRAG_FIRST else LATER_OFFSET
        ext += fragment_header(proto, offset, True)
        kinds.append(IPPROTO_FRAGMENT)
    first_word = (6 << 28) | ((dscp << 2) << 20)
    header = struct.pack(
        "!IHBB16s16s",
        first_word,
        len(ext) + len(body),
        kinds[0] if kinds else proto,
        64,
        packet.get("ip6_src").to_bytes(16, "big"),
        packet.get("ip6_dst").to_bytes(16, "big"),
    )
    return header + ext + body


def ethernet(ethertype: int, body: bytes, tags: Sequence[tuple[int, int]] = ()) -> bytes:
    """An Ethernet frame: MACs, VLAN tags as (TPID, TCI) outermost first, ethertype, body."""
    head = DST_MAC + SRC_MAC
    for tpid, tci in tags:
        head += struct.pack("!HH", tpid, tci)
    return head + struct.pack("!H", ethertype) + body


def frame(
    packet: Packet,
    payload: bytes = b"",
    *,
    ipv6_ext: Sequence[int] = (),
    ext_units: int = 0,
    ip_options: bytes = b"",
    tcp_doff: int = 5,
    tags: Sequence[tuple[int, int]] | None = None,
) -> bytes:
    """An Ethernet frame carrying ``packet`` (with an 802.1Q tag when it has a
    VLAN, or exactly ``tags`` when given); keywords as :func:`ip_packet`."""
    ethertype = ETH_P_IP if packet.get("family") == 4 else ETH_P_IPV6
    if tags is None:
        tags = [(ETH_P_8021Q, packet.get("vlan_id"))] if packet.get("vlan_tagged") else []
    body = ip_packet(
        packet,
        payload,
        ipv6_ext=ipv6_ext,
        ext_units=ext_units,
        ip_options=ip_options,
        tcp_doff=tcp_doff,
    )
    return ethernet(ethertype, body, tags)


def l3_offset(data: bytes) -> int:
    """Where the IP header of a frame :func:`frame` built starts (after its tags)."""
    off = 14
    while int.from_bytes(data[off - 2 : off], "big") in (ETH_P_8021Q, ETH_P_8021AD):
        off += 4
    return off


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    """``data`` with ``value`` written at ``offset``."""
    return data[:offset] + value + data[offset + len(value) :]


def l4_offset(data: bytes) -> int:
    """Where the transport header of a frame :func:`frame` built starts (IPv4
    options and IPv6 extension headers skipped, as the parser does)."""
    off = l3_offset(data)
    if data[off] >> 4 == 4:
        return off + (data[off] & 0x0F) * 4
    nxt, off = data[off + 6], off + 40
    while nxt in EXT_HEADERS:
        size = 8 if nxt == IPPROTO_FRAGMENT else (data[off + 1] + 1) * 8
        nxt, off = data[off], off + size
    return off


# --------------------------------------------------------- the odd frames
def with_ihl(packet: Packet, ihl: int) -> bytes:
    """The IPv4 frame of ``packet`` with its header length field set to ``ihl``."""
    data = frame(packet)
    off = l3_offset(data)
    return patched(data, off, bytes([(data[off] & 0xF0) | ihl]))


def with_version(packet: Packet, version: int) -> bytes:
    """The frame of ``packet`` with the IP version nibble set to ``version``."""
    data = frame(packet)
    off = l3_offset(data)
    return patched(data, off, bytes([(version << 4) | (data[off] & 0x0F)]))


def options_cut_short(packet: Packet, options: int = 40, kept: int = 8) -> bytes:
    """An IPv4 frame whose header announces ``options`` bytes of options
    (ihl = 5 + options/4) of which only ``kept`` bytes are in the frame."""
    data = frame(packet, ip_options=b"\x01" * options)
    return data[: l3_offset(data) + 20 + kept]


def udp_length(packet: Packet, length: int) -> bytes:
    """The UDP frame of ``packet`` with the UDP length field set to ``length``."""
    data = frame(packet)
    return patched(data, l4_offset(data) + 4, length.to_bytes(2, "big"))


def truncated_l4(packet: Packet, kept: int) -> bytes:
    """The frame of ``packet`` cut ``kept`` bytes into its transport header."""
    data = frame(packet)
    return data[: l4_offset(data) + kept]


def ext_cut_short(packet: Packet, kinds: Sequence[int], kept: int, units: int = 1) -> bytes:
    """The IPv6 frame of ``packet`` with extension headers ``kinds`` of
    (units + 1) * 8 bytes, cut ``kept`` bytes into the last of them."""
    data = frame(packet, ipv6_ext=kinds, ext_units=units)
    start = (
        l3_offset(data)
        + 40
        + sum(8 if kind == IPPROTO_FRAGMENT else (units + 1) * 8 for kind in kinds[:-1])
    )
    return data[: start + kept]


def atomic_fragment(packet: Packet) -> bytes:
    """The IPv6 frame of (unfragmented) ``packet`` in an atomic fragment: a
    fragment header with offset 0 and M=0, which the parser calls a first fragment."""
    return frame(packet, ipv6_ext=[IPPROTO_FRAGMENT])


def ipv4_fragment(packet: Packet, offset: int, more: bool, payload: bytes = b"") -> bytes:
    """The IPv4 frame of ``packet`` with fragment ``offset`` (8-byte units) and MF
    ``more``; the transport header is there only when ``offset`` is 0."""
    data = frame(packet, payload)
    flags = (IPV4_MF if more else 0) | offset
    return patched(data, l3_offset(data) + 6, flags.to_bytes(2, "big"))


def non_ip(ethertype: int = ETH_P_ARP, size: int = 46) -> bytes:
    """A frame of another ethertype (ARP by default), ``size`` bytes of body."""
    return ethernet(ethertype, b"\0" * size)


# ----------------------------------------------------- the reference parser
def parse_frame(data: bytes) -> Packet | Unclassified:
    """What the slow path's parser (bpf/flowc_parse.h) makes of a frame: the
    packet, or why it is not one. The reference for differential tests.

    A frame's VLAN tag here is only the in-band one (test frames carry no
    skb->vlan_tci).
    """
    if len(data) < 14:
        return Unclassified.MALFORMED_L2
    proto = int.from_bytes(data[12:14], "big")
    off = 14
    fields: dict[str, int] = {}
    for _ in range(2):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        if len(data) < off + 4:
            return Unclassified.MALFORMED_L2
        if "vlan_tagged" not in fields:
            fields["vlan_tagged"] = 1
            fields["vlan_id"] = int.from_bytes(data[off : off + 2], "big") & 0x0FFF
        proto = int.from_bytes(data[off + 2 : off + 4], "big")
        off += 4
    if proto == ETH_P_IP:
        return _ipv4(data, off, fields)
    if proto == ETH_P_IPV6:
        return _ipv6(data, off, fields)
    return Unclassified.NOT_IP


def _ipv4(data: bytes, off: int, fields: dict[str, int]) -> Packet | Unclassified:
    if len(data) < off + 20:
        return Unclassified.MALFORMED_L3
    ihl = (data[off] & 0x0F) * 4
    if ihl < 20:  # the version nibble is not checked, as the dissector does not
        return Unclassified.MALFORMED_L3
    fields.update(
        family=4,
        dscp=data[off + 1] >> 2,
        ip_proto=data[off + 9],
        ip4_src=int.from_bytes(data[off + 12 : off + 16], "big"),
        ip4_dst=int.from_bytes(data[off + 16 : off + 20], "big"),
    )
    frag_off = int.from_bytes(data[off + 6 : off + 8], "big")
    if frag_off & 0x1FFF:
        fields["frag"] = FRAG_LATER
        return Packet.make(**fields)
    if frag_off & IPV4_MF:
        fields["frag"] = FRAG_FIRST
    # Options need not fit: only the transport read can fail on them.
    return _transport(data, off + ihl, fields)


def _ipv6(data: bytes, off: int, fields: dict[str, int]) -> Packet | Unclassified:
    if len(data) < off + 40:
        return Unclassified.MALFORMED_L3
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
        if nxt not in EXT_HEADERS:
            break
        if off > MAX_OFF or len(data) < off + 8:
            return Unclassified.MALFORMED_L3
        if nxt == IPPROTO_FRAGMENT:
            if int.from_bytes(data[off + 2 : off + 4], "big") & 0xFFF8:
                fields.update(frag=FRAG_LATER, ip_proto=data[off])
                return Packet.make(**fields)
            fields["frag"] = FRAG_FIRST  # atomic fragments too
            size = 8
        else:
            size = (data[off + 1] + 1) * 8
        nxt = data[off]
        off += size
        if off > MAX_OFF or len(data) < off:  # the whole extension header must be there
            return Unclassified.MALFORMED_L3
    if nxt in EXT_HEADERS:
        return Unclassified.MALFORMED_L3  # more extension headers than the parser walks
    fields["ip_proto"] = nxt
    return _transport(data, off, fields)


def l4_need(family: int, proto: int) -> int:
    """Bytes of transport header the parser reads (flowc_l4_need): 0 for none."""
    if proto == PROTO_TCP:
        return 20
    if proto in (PROTO_UDP, PROTO_SCTP):
        return 4
    if (family, proto) in ((4, PROTO_ICMP), (6, PROTO_ICMPV6)):
        return 8
    return 0


def _transport(data: bytes, off: int, fields: dict[str, int]) -> Packet | Unclassified:
    need = l4_need(fields["family"], fields["ip_proto"])
    if not need:
        return Packet.make(**fields)
    if off > MAX_OFF or len(data) < off + need:
        return Unclassified.MALFORMED_L4
    if need == 8:
        fields.update(icmp_type=data[off], icmp_code=data[off + 1])
        plain = Packet.make(**fields)
        family = fields["family"]
        if data[off] in ICMP_ECHO_TYPES[family]:
            return Packet(plain.values, echo_id=int.from_bytes(data[off + 4 : off + 6], "big"))
        if data[off] in ICMP_ERROR_TYPES[family]:
            return Packet(plain.values, embedded=parse_embedded(data, off + 8))
        return plain
    if need == 20:
        if data[off + 12] >> 4 < 5:  # data offset shorter than the fixed header
            return Unclassified.MALFORMED_L4
        fields["tcp_flags"] = data[off + 13]
    fields.update(
        sport=int.from_bytes(data[off : off + 2], "big"),
        dport=int.from_bytes(data[off + 2 : off + 4], "big"),
    )
    return Packet.make(**fields)


def parse_embedded(data: bytes, off: int) -> Packet | None:
    """The packet an ICMP error's body at ``off`` embeds, as bpf/flowc_ct.h
    reads it (flowc_ct_inner_key), or None when it cannot be read: cut short,
    an IP version other than 4 or 6, an IPv6 extension header other than one
    fragment header. Only the fields the tracker keys on are read (family,
    protocol, addresses, fragment state, ports or ICMP type and echo id)."""
    if len(data) < off + 1:
        return None
    version = data[off] >> 4
    fields: dict[str, int] = {}
    if version == 4:
        ihl = (data[off] & 0x0F) * 4
        if len(data) < off + 20 or ihl < 20:
            return None
        frag_off = int.from_bytes(data[off + 6 : off + 8], "big")
        if frag_off & 0x1FFF:
            return None  # a later fragment: the tracker cannot tie it (invalid)
        fields.update(
            family=4,
            ip_proto=data[off + 9],
            ip4_src=int.from_bytes(data[off + 12 : off + 16], "big"),
            ip4_dst=int.from_bytes(data[off + 16 : off + 20], "big"),
        )
        if frag_off & IPV4_MF:
            fields["frag"] = FRAG_FIRST
        off += ihl
    elif version == 6:
        if len(data) < off + 40:
            return None
        proto = data[off + 6]
        fields.update(
            family=6,
            ip6_src=int.from_bytes(data[off + 8 : off + 24], "big"),
            ip6_dst=int.from_bytes(data[off + 24 : off + 40], "big"),
        )
        off += 40
        if proto == IPPROTO_FRAGMENT:
            if len(data) < off + 8 or int.from_bytes(data[off + 2 : off + 4], "big") & 0xFFF8:
                return None
            fields["frag"] = FRAG_FIRST
            proto, off = data[off], off + 8
        if proto in EXT_HEADERS:
            return None
        fields["ip_proto"] = proto
    else:
        return None
    proto, family = fields["ip_proto"], fields["family"]
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        if len(data) < off + 4:
            return None
        fields.update(
            sport=int.from_bytes(data[off : off + 2], "big"),
            dport=int.from_bytes(data[off + 2 : off + 4], "big"),
        )
        return Packet.make(**fields)
    if (family, proto) in ((4, PROTO_ICMP), (6, PROTO_ICMPV6)):
        if len(data) < off + 8:
            return None
        fields["icmp_type"] = data[off]
        fields["icmp_code"] = data[off + 1]
        echo = int.from_bytes(data[off + 4 : off + 6], "big")
        plain = Packet.make(**fields)
        return Packet(plain.values, echo_id=echo if data[off] in ICMP_ECHO_TYPES[family] else 0)
    return Packet.make(**fields)
