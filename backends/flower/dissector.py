"""What the kernel's flow dissector shows cls_flower of frames the IR calls malformed.

cls_flower classifies on the keys ``__skb_flow_dissect`` fills
(net/core/flow_dissector.c), with every key it does not fill left 0. For a
frame whose headers are cut short that is a perfectly ordinary-looking IR
packet with zeros where the missing header would be, and flower decides it
like that packet; the slow path drops such a frame as malformed
(:class:`ir.interp.Unclassified`). These are the views, one cube of IR
packets per kind of malformed frame, each holding every view such a frame can
have. The lowering traps them to the slow path above every other filter and
the checker proves that chain 0 decides none of them by anything but a trap, a
drop, or nothing (README, "Frames the IR does not describe").

>>> [view.name for view in MALFORMED_VIEWS][:2]
['truncated-ipv4', 'truncated-ipv6']
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.algebra import Cube, full_cube
from ir.fields import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    FRAG_NONE,
    HEADER_SPACE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
)
from ir.interp import Unclassified
from ir.valueset import ValueSet

# IPv6 extension headers the dissector walks (hop-by-hop, routing, fragment,
# destination options): where it stops on one, it reports it as ip_proto.
IPV6_EXTENSION_HEADERS = (0, 43, 44, 60)


@dataclass(frozen=True, slots=True)
class DissectorView:
    """The flower view of one kind of malformed frame.

    Attributes:
        name: short name for messages and tests.
        layer: the layer that is malformed.
        what: the frames, in words.
        cube: every IR packet such a frame can look like to flower.
    """

    name: str
    layer: Unclassified
    what: str
    cube: Cube


def _cube(**constraints: ValueSet) -> Cube:
    sets = list(full_cube(HEADER_SPACE).sets)
    for name, values in constraints.items():
        sets[HEADER_SPACE.position(name)] = values
    return Cube(tuple(sets))


def _v(width: int, *values: int) -> ValueSet:
    return ValueSet.of_values(width, values)


_WHOLE = _v(2, FRAG_NONE)
_ZERO16 = _v(16, 0)

MALFORMED_VIEWS: tuple[DissectorView, ...] = (
    DissectorView(
        "truncated-ipv4",
        Unclassified.MALFORMED_L3,
        "IPv4 header shorter than 20 bytes or ihl < 5 (dissected no further: ip_proto 0)",
        _cube(family=_v(8, FAMILY_IPV4), ip_proto=_v(8, 0)),
    ),
    DissectorView(
        "truncated-ipv6",
        Unclassified.MALFORMED_L3,
        "IPv6 header or extension header cut short, or more extension headers than the "
        "dissector walks (ip_proto left at 0 or the extension header's number)",
        _cube(family=_v(8, FAMILY_IPV6), ip_proto=_v(8, *IPV6_EXTENSION_HEADERS)),
    ),
    DissectorView(
        "truncated-tcp",
        Unclassified.MALFORMED_L4,
        "TCP header shorter than 20 bytes or data offset < 5 (flags read 0)",
        _cube(ip_proto=_v(8, PROTO_TCP), frag=_WHOLE, tcp_flags=_v(8, 0)),
    ),
    DissectorView(
        "truncated-udp",
        Unclassified.MALFORMED_L4,
        "UDP header shorter than 4 bytes (ports read 0)",
        _cube(ip_proto=_v(8, PROTO_UDP), frag=_WHOLE, sport=_ZERO16, dport=_ZERO16),
    ),
    DissectorView(
        "truncated-sctp",
        Unclassified.MALFORMED_L4,
        "SCTP header shorter than 4 bytes (ports read 0)",
        _cube(ip_proto=_v(8, PROTO_SCTP), frag=_WHOLE, sport=_ZERO16, dport=_ZERO16),
    ),
    DissectorView(
        "truncated-icmp",
        Unclassified.MALFORMED_L4,
        "ICMP header shorter than 8 bytes (type and code read 0)",
        _cube(
            family=_v(8, FAMILY_IPV4),
            ip_proto=_v(8, PROTO_ICMP),
            frag=_WHOLE,
            icmp_type=_v(8, 0),
            icmp_code=_v(8, 0),
        ),
    ),
    DissectorView(
        "truncated-icmpv6",
        Unclassified.MALFORMED_L4,
        "ICMPv6 header shorter than 8 bytes (type and code read 0)",
        _cube(
            family=_v(8, FAMILY_IPV6),
            ip_proto=_v(8, PROTO_ICMPV6),
            frag=_WHOLE,
            icmp_type=_v(8, 0),
            icmp_code=_v(8, 0),
        ),
    ),
)
