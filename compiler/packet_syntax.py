"""The packet syntax of ``flowc eval``: text -> :class:`ir.packet.Packet`.

::

    PROTO SRC -> DST [flags F] [type T] [code C] [vlan V] [dscp D]

* PROTO: tcp, udp, sctp, icmp, icmpv6, or a protocol number (0-255).
* SRC/DST: ``10.0.0.1:443`` or ``[fd00::1]:443`` for tcp/udp/sctp (ports are
  required there); a bare address otherwise (``fd00::1`` or ``[fd00::1]``).
* flags (tcp only): names joined by commas (``syn,ack``), ``none``, or a number.
  Default: none.
* type/code (icmp, icmpv6 only): numbers or type names. Default: echo-request, code 0.
* vlan: the 802.1Q id of a tagged frame. dscp: 0-63 or a name (ef, af11, cs1).

>>> from ir.packet import format_packet
>>> format_packet(parse_packet("udp [fd00::1]:5353 -> [fd00::53]:53 dscp ef"))
'udp [fd00::1]:5353 -> [fd00::53]:53 dscp 46'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from compiler.ast import Pos
from compiler.diagnostics import Diagnostic, error
from compiler.lower import DSCP_NAMES, ICMP_TYPES
from ir.fields import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    PORT_PROTOCOLS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTOCOL_NAMES,
    TCP_FLAG_BITS,
)
from ir.packet import Packet

_TOKEN = re.compile(r"\S+")
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::(\d+))?$")


class PacketSyntaxError(ValueError):
    """A packet description that cannot be read; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True, slots=True)
class PacketLine:
    """One packet read from a file of packet lines, with the line it came from."""

    line: int
    text: str
    packet: Packet


def read_packet_lines(text: str, where: str) -> tuple[list[PacketLine], list[Diagnostic]]:
    """Every packet of a file of packet lines (``#`` comments and blank lines skipped),
    and a diagnostic (file:line:col, for a caret) for each line that cannot be read.

    >>> lines, problems = read_packet_lines("udp 10.0.0.1:1 -> 10.0.0.2:53\\nudp x", "t.txt")
    >>> [p.line for p in lines], [(d.pos.line, d.pos.column) for d in problems if d.pos]
    ([1], [(2, 6)])
    """
    packets: list[PacketLine] = []
    problems: list[Diagnostic] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.split("#", 1)[0].strip():
            continue
        try:
            packets.append(PacketLine(lineno, raw, parse_packet(raw)))
        except PacketSyntaxError as exc:
            pos = Pos(where, lineno, exc.column, lineno, exc.column + 1)
            problems.append(error("packet-syntax", exc.message, pos))
    return packets, problems


def parse_packet(text: str) -> Packet:
    """Read one packet description (see the module docstring for the syntax); a ``#``
    starts a comment."""
    text = text.split("#", 1)[0]
    tokens = [(m.group(), m.start() + 1) for m in _TOKEN.finditer(text)]
    if not tokens:
        raise PacketSyntaxError("empty packet; expected e.g. 'tcp 10.0.0.1:1234 -> 10.0.0.2:80'", 1)
    proto_text, proto_col = tokens[0]
    proto = _protocol(proto_text, proto_col)
    has_ports = proto in PORT_PROTOCOLS
    if len(tokens) < 4 or tokens[2][0] != "->":
        col = tokens[2][1] if len(tokens) > 2 else len(text) + 1
        raise PacketSyntaxError("expected 'PROTO SRC -> DST'", col)
    src_fam, src_addr, sport = _endpoint(tokens[1], has_ports, proto_text)
    dst_fam, dst_addr, dport = _endpoint(tokens[3], has_ports, proto_text)
    if src_fam != dst_fam:
        raise PacketSyntaxError("source and destination are of different IP versions", tokens[3][1])
    family = src_fam
    if proto == PROTO_ICMP and family == FAMILY_IPV6 and proto_text == "icmp":
        raise PacketSyntaxError("icmp is for IPv4 addresses; use icmpv6", proto_col)
    if proto == PROTO_ICMPV6 and family == FAMILY_IPV4 and proto_text == "icmpv6":
        raise PacketSyntaxError("icmpv6 is for IPv6 addresses; use icmp", proto_col)
    is_icmp = (family, proto) in ((FAMILY_IPV4, PROTO_ICMP), (FAMILY_IPV6, PROTO_ICMPV6))
    values: dict[str, int] = {"family": family, "ip_proto": proto}
    prefix = "ip4" if family == FAMILY_IPV4 else "ip6"
    values[f"{prefix}_src"] = src_addr
    values[f"{prefix}_dst"] = dst_addr
    if has_ports:
        values["sport"], values["dport"] = sport, dport
    if is_icmp:
        values["icmp_type"] = 8 if family == FAMILY_IPV4 else 128
    rest = tokens[4:]
    seen: set[str] = set()
    while rest:
        (word, col), *rest = rest
        if word not in ("flags", "type", "code", "vlan", "dscp"):
            raise PacketSyntaxError(
                f"unexpected {word!r}; expected flags, type, code, vlan or dscp", col
            )
        if word in seen:
            raise PacketSyntaxError(f"{word!r} given twice", col)
        seen.add(word)
        if not rest:
            raise PacketSyntaxError(f"{word!r} needs a value", col + len(word))
        (value, vcol), *rest = rest
        if word == "flags":
            if proto != PROTO_TCP:
                raise PacketSyntaxError("flags only apply to tcp packets", col)
            values["tcp_flags"] = _flags(value, vcol)
        elif word in ("type", "code"):
            if not is_icmp:
                raise PacketSyntaxError(f"{word} only applies to icmp/icmpv6 packets", col)
            values[f"icmp_{word}"] = _icmp(word, value, vcol, family)
        elif word == "vlan":
            values["vlan_tagged"] = 1
            values["vlan_id"] = _number(value, vcol, 4095, "VLAN id")
        else:
            named = DSCP_NAMES.get(value.lower())
            values["dscp"] = named if named is not None else _number(value, vcol, 63, "DSCP")
    return Packet.make(**values)


def _protocol(text: str, col: int) -> int:
    if text in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[text]
    if text.isdigit():
        return _number(text, col, 255, "protocol")
    raise PacketSyntaxError(
        f"unknown protocol {text!r}; use tcp, udp, sctp, icmp, icmpv6 or a number 0-255", col
    )


def _endpoint(token: tuple[str, int], has_ports: bool, proto: str) -> tuple[int, int, int]:
    """(family, address, port) of ``ADDR``, ``ADDR:PORT``, ``[V6]`` or ``[V6]:PORT``."""
    text, col = token
    port_text: str | None = None
    bracketed = _BRACKETED.match(text)
    if bracketed:
        addr_text, port_text = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        addr_text, port_text = text.split(":")
    else:
        addr_text = text
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        hint = " (write IPv6 with a port as [fd00::1]:443)" if text.count(":") > 1 else ""
        raise PacketSyntaxError(f"invalid address {addr_text!r}{hint}", col) from None
    family = FAMILY_IPV4 if addr.version == 4 else FAMILY_IPV6
    if has_ports and port_text is None:
        example = "10.0.0.1:1234" if family == FAMILY_IPV4 else "[fd00::1]:1234"
        raise PacketSyntaxError(f"a {proto} packet needs ports: write e.g. {example}", col)
    if not has_ports and port_text is not None:
        raise PacketSyntaxError(f"{proto} packets have no ports", col)
    port = _number(port_text, col, 65535, "port") if port_text is not None else 0
    return family, int(addr), port


def _number(text: str, col: int, top: int, what: str) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise PacketSyntaxError(f"{what} must be a number, not {text!r}", col) from None
    if not 0 <= value <= top:
        raise PacketSyntaxError(f"{what} {value} is out of range 0-{top}", col)
    return value


def _flags(text: str, col: int) -> int:
    if text == "none":
        return 0
    if text[0].isdigit():
        return _number(text, col, 0xFF, "TCP flags")
    value = 0
    for name in text.lower().split(","):
        bit = TCP_FLAG_BITS.get(name)
        if bit is None:
            raise PacketSyntaxError(
                f"unknown TCP flag {name!r}; flags are {', '.join(TCP_FLAG_BITS)}", col
            )
        value |= bit
    return value


def _icmp(word: str, text: str, col: int, family: int) -> int:
    if word == "type" and not text[0].isdigit():
        types = ICMP_TYPES.get(text)
        if types is None:
            raise PacketSyntaxError(f"unknown ICMP type {text!r}", col)
        number = types[0] if family == FAMILY_IPV4 else types[1]
        if number is None:
            raise PacketSyntaxError(f"ICMP type {text!r} does not exist for this IP version", col)
        return number
    return _number(text, col, 255, f"ICMP {word}")
