"""Concrete packets: one value per header field, 0 where the packet lacks the field.

The textual form is the one ``flowc eval --packet`` reads and every
counterexample prints (``compiler.packet_syntax`` parses it)::

    tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags syn
    udp [fd00::1]:5353 -> [fd00::53]:53 vlan 10 dscp 46
    icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0 id 7
    icmp 10.0.0.9 -> 10.0.0.1 type 3 code 3 inner udp 10.0.0.1:5353 -> 10.0.0.2:53

A packet also carries what the connection tracker reads besides the header
fields (:mod:`ir.conntrack`): the ICMP echo identifier, and the header an ICMP
error embeds (the packet that caused the error, as sent).

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
    FRAG_BY_NUMBER,
    HEADER_SPACE,
    PROTOCOL_BY_NUMBER,
    RENDER_FLAGS,
    RENDER_FRAG,
    RENDER_IP4,
    RENDER_IP6,
    RENDER_STATE,
    STATE_BY_NUMBER,
    TCP_FLAG_BITS,
    Space,
)
from ir.valueset import ValueSet

Point = tuple[int, ...]
# Root fields whose value decides whether other fields exist.
_DEPENDED_ON = frozenset(
    root for f in HEADER_SPACE.fields for alt in f.prerequisite for root, _ in alt
)


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
    problems: list[str] = []
    if len(point) != len(space.fields):
        return [f"expected {len(space.fields)} field values, got {len(point)}"]
    if _is_packet(space, point):
        return problems
    for i in range(len(space.fields)):
        problem = field_problem(space, point, i)
        if problem:
            problems.append(problem)
    return problems


@dataclass(slots=True)
class _PointChecks:
    """What :func:`_is_packet` needs of one space, derived once."""

    space: Space
    limits: tuple[int, ...]
    domains: tuple[tuple[int, ValueSet], ...]
    roots: tuple[int, ...]
    exists: dict[tuple[int, ...], tuple[bool, ...]]  # root values -> which fields exist


_CHECKS: dict[int, _PointChecks] = {}


def _is_packet(space: Space, point: Point) -> bool:
    """Whether :func:`field_problem` finds nothing in any field of ``point``, the
    common case answered in a few C-level passes (the agent checks every miss
    event's point): values within their widths and domains, and no field
    nonzero that the root fields' values say the packet lacks (remembered per
    root values, which have few combinations)."""
    checks = _checks_of(space)
    if min(point) < 0 or any(v >= limit for v, limit in zip(point, checks.limits, strict=True)):
        return False
    if not all(point[i] in d for i, d in checks.domains):
        return False
    exists = _fields_present(checks, point)
    return all(there or not v for v, there in zip(point, exists, strict=True))


def _checks_of(space: Space) -> _PointChecks:
    checks = _CHECKS.get(id(space))
    if checks is None or checks.space is not space:
        checks = _CHECKS[id(space)] = _PointChecks(
            space,
            tuple(1 << f.width for f in space.fields),
            tuple((i, f.domain) for i, f in enumerate(space.fields) if f.domain is not None),
            tuple(
                sorted({space.index[n] for f in space.fields for a in f.prerequisite for n, _ in a})
            ),
            {},
        )
    return checks


def fields_present(space: Space, point: Point) -> tuple[bool, ...]:
    """Per field of ``space``, whether the packet ``point`` has it at all
    (:func:`prerequisites_met`): a function of the root fields' values alone,
    so remembered per root values."""
    return _fields_present(_checks_of(space), point)


def _fields_present(checks: _PointChecks, point: Point) -> tuple[bool, ...]:
    root_values = tuple(point[r] for r in checks.roots)
    exists = checks.exists.get(root_values)
    if exists is None:
        space = checks.space
        exists = tuple(prerequisites_met(space, point, i) for i in range(len(space.fields)))
        if len(checks.exists) < 4096:
            checks.exists[root_values] = exists
    return exists


def field_problem(space: Space, point: Point, field_index: int) -> str:
    """Why the value of one field of ``point`` cannot be (empty when it can)."""
    fld = space.fields[field_index]
    value = point[field_index]
    if not 0 <= value < (1 << fld.width):
        return f"{fld.name}={value} does not fit in {fld.width} bits"
    if fld.domain is not None and value not in fld.domain:
        return f"{fld.name}={value} is not a possible value"
    if value != 0 and not prerequisites_met(space, point, field_index):
        return f"{fld.name}={value} but the packet has no {fld.name}"
    return ""


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet of the header space (:data:`ir.fields.HEADER_SPACE`).

    Attributes:
        values: one value per header field, in :data:`HEADER_SPACE` order.
        echo_id: the identifier of an ICMP/ICMPv6 echo request or reply (0 otherwise);
            the tracker tells echo conversations apart by it. No rule matches it.
        embedded: the header an ICMP error carries (the offending packet as it was
            sent), or None; the tracker finds the error's connection from it.
    """

    values: Point
    echo_id: int = 0
    embedded: Packet | None = None

    def __post_init__(self) -> None:
        problems = point_problems(HEADER_SPACE, self.values)
        if not 0 <= self.echo_id <= 0xFFFF:
            problems.append(f"echo id {self.echo_id} does not fit in 16 bits")
        if self.embedded is not None and self.embedded.embedded is not None:
            problems.append("an embedded header cannot embed another")
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def make(**fields: int) -> Packet:
        """Build a packet from field values; unnamed fields are 0 (absent)."""
        unknown = set(fields) - set(HEADER_SPACE.names)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        return Packet(tuple(fields.get(name, 0) for name in HEADER_SPACE.names))

    @staticmethod
    def unchecked(values: Point, echo_id: int = 0, embedded: Packet | None = None) -> Packet:
        """A packet of ``values`` already known to be one (a point the algebra or a
        checked flow key produced), without checking again: the per-packet paths
        (the tracker, the cache) build one for every packet they see."""
        packet = object.__new__(Packet)
        object.__setattr__(packet, "values", values)
        object.__setattr__(packet, "echo_id", echo_id)
        object.__setattr__(packet, "embedded", embedded)
        return packet

    def with_field(self, name: str, value: int) -> Packet:
        """The same packet with field ``name`` set to ``value`` (ValueError when the
        value is not one this packet can carry there)."""
        at = HEADER_SPACE.index[name]
        values = (*self.values[:at], value, *self.values[at + 1 :])
        if name in _DEPENDED_ON:
            # A root other fields depend on: the whole packet must be checked again.
            return Packet(values, self.echo_id, self.embedded)
        problem = field_problem(HEADER_SPACE, values, at)
        if problem:
            raise ValueError(problem)
        return Packet.unchecked(values, self.echo_id, self.embedded)

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
    if render == RENDER_FRAG:
        return FRAG_BY_NUMBER.get(value, str(value))
    if render == RENDER_STATE:
        return STATE_BY_NUMBER.get(value, str(value))
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
    if packet.echo_id:
        parts += ["id", str(packet.echo_id)]
    if v["vlan_tagged"]:
        parts += ["vlan", str(v["vlan_id"])]
    if v["dscp"]:
        parts += ["dscp", str(v["dscp"])]
    if v["frag"]:
        parts += ["frag", FRAG_BY_NUMBER[v["frag"]]]
    if v["state"]:
        parts += ["state", STATE_BY_NUMBER[v["state"]]]
    if packet.embedded is not None:
        parts += ["inner", format_packet(packet.embedded)]
    return " ".join(parts)
