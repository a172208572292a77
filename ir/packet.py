"""Concrete packets: one value per header field, 0 where the packet lacks the field.

The textual form is the one ``flowc eval --packet`` reads and every
counterexample prints (``compiler.packet_syntax`` parses it)::

    tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags syn
    udp [fd00::1]:5353 -> [fd00::53]:53 vlan 10 dscp 46
    icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0

>>> p = Packet.make(family=4, ip_proto=6, ip4_src=0x0A000307, ip4_dst=0x0A00010A,
...                 sport=40000, dport=443, tcp_flags=0x02)
>>> format_packet(p)
'tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags syn'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ir.fields import (
    FAMILY_IPV4,
    HEADER_SPACE,
    PROTOCOL_BY_NUMBER,
    RENDER_FLAGS,
    RENDER_IP4,
    RENDER_IP6,
    TCP_FLAG_BITS,
    Space,
)

Point = tuple[int, ...]


def prerequisites_met(space: Space, point: Point, field_index: int) -> bool:
    """True when the packet ``point`` has the field at ``field_index`` at all."""
    fld = space.fields[field_index]
    if not fld.prerequisite:
        return True
    return any(
        all(point[space.index[name]] in values for name, values in alternative)
        for alternative in fld.prerequisite
    )


def point_problems(space: Space, point: Point) -> list[str]:
    """Why ``point`` is not a packet of ``space`` (empty list when it is one)."""
    problems = []
    if len(point) != len(space.fields):
        return [f"expected {len(space.fields)} field values, got {len(point)}"]
    for i, fld in enumerate(space.fields):
        value = point[i]
        if not 0 <= value < (1 << fld.width):
            problems.append(f"{fld.name}={value} does not fit in {fld.width} bits")
        elif fld.domain is not None and value not in fld.domain:
            problems.append(f"{fld.name}={value} is not a possible value")
        elif value != 0 and not prerequisites_met(space, point, i):
            problems.append(f"{fld.name}={value} but the packet has no {fld.name}")
    return problems


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet of the header space (:data:`ir.fields.HEADER_SPACE`)."""

    values: Point

    def __post_init__(self) -> None:
        problems = point_problems(HEADER_SPACE, self.values)
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def make(**fields: int) -> Packet:
        """Build a packet from field values; unnamed fields are 0 (absent)."""
        unknown = set(fields) - set(HEADER_SPACE.names)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        return Packet(tuple(fields.get(name, 0) for name in HEADER_SPACE.names))

    def get(self, name: str) -> int:
        """The value of field ``name``."""
        return self.values[HEADER_SPACE.index[name]]

    def as_dict(self) -> dict[str, int]:
        """Field name to value, for every field."""
        return dict(zip(HEADER_SPACE.names, self.values, strict=True))

    def has(self, name: str) -> bool:
        """True when the packet carries field ``name``."""
        return prerequisites_met(HEADER_SPACE, self.values, HEADER_SPACE.index[name])


def render_value(render: str, value: int) -> str:
    """Write one field value the way IR text and packets write it."""
    if render == RENDER_IP4:
        return str(ipaddress.IPv4Address(value))
    if render == RENDER_IP6:
        return str(ipaddress.IPv6Address(value))
    if render == RENDER_FLAGS:
        return format_tcp_flags(value)
    return str(value)


def format_tcp_flags(value: int) -> str:
    """TCP flag bits as ``syn,ack``; ``none`` for 0."""
    names = [name for name, bit in TCP_FLAG_BITS.items() if value & bit]
    return ",".join(names) if names else "none"


def format_packet(packet: Packet) -> str:
    """The packet in ``flowc eval`` syntax (parsed back by ``compiler.packet_syntax``)."""
    v: Mapping[str, int] = packet.as_dict()
    proto = v["ip_proto"]
    text = PROTOCOL_BY_NUMBER.get(proto, str(proto))
    # "icmp" and "icmpv6" name a family too; the other family's packet uses the number.
    if (text == "icmp" and v["family"] != FAMILY_IPV4) or (
        text == "icmpv6" and v["family"] == FAMILY_IPV4
    ):
        text = str(proto)
    if v["family"] == FAMILY_IPV4:
        src = str(ipaddress.IPv4Address(v["ip4_src"]))
        dst = str(ipaddress.IPv4Address(v["ip4_dst"]))
    else:
        src = str(ipaddress.IPv6Address(v["ip6_src"]))
        dst = str(ipaddress.IPv6Address(v["ip6_dst"]))
    if packet.has("sport"):
        if v["family"] != FAMILY_IPV4:
            src, dst = f"[{src}]", f"[{dst}]"
        src, dst = f"{src}:{v['sport']}", f"{dst}:{v['dport']}"
    parts = [text, src, "->", dst]
    if packet.has("tcp_flags"):
        parts += ["flags", format_tcp_flags(v["tcp_flags"])]
    if packet.has("icmp_type"):
        parts += ["type", str(v["icmp_type"]), "code", str(v["icmp_code"])]
    if v["vlan_tagged"]:
        parts += ["vlan", str(v["vlan_id"])]
    if v["dscp"]:
        parts += ["dscp", str(v["dscp"])]
    return " ".join(parts)
