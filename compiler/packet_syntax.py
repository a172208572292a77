"""The packet syntax of ``flowc eval``: text -> :class:`ir.packet.Packet`.

::

    PROTO SRC -> DST [flags F] [type T] [code C] [id N] [vlan V] [dscp D] [frag S]
                     [state S] [inner PACKET]

* PROTO: tcp, udp, sctp, icmp, icmpv6, or a protocol number (0-255).
* SRC/DST: ``10.0.0.1:443`` or ``[fd00::1]:443`` for tcp/udp/sctp (ports are
  required there); a bare address otherwise (``fd00::1`` or ``[fd00::1]``).
* flags (tcp only): names joined by commas (``syn,ack``), ``none``, or a number.
  Default: none.
* type/code (icmp, icmpv6 only): numbers or type names. Default: echo-request, code 0.
* vlan: the 802.1Q id of a tagged frame. dscp: 0-63 or a name (ef, af11, cs1).
* frag: ``first`` (offset 0, more fragments) or ``later`` (a fragment after the
  first, which carries no transport header: no ports, flags or ICMP type);
  ``none`` (the default) is a whole packet.
* id (icmp/icmpv6 echo request or reply only): the echo identifier, 0-65535
  (default 0); the connection tracker tells echo conversations apart by it.
* state: new (the default), established, related or invalid: the connection
  state a stateless ``eval`` takes the packet to have (``eval --stateful``
  computes it instead, so there it is an error).
* inner (ICMP errors only: destination unreachable, time exceeded, parameter
  problem, source quench / packet too big): the rest of the line is the header
  the error embeds, the offending packet as it was sent, in this same syntax.

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
    FRAG_LATER,
    FRAG_NAMES,
    FRAG_NONE,
    PORT_PROTOCOLS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTOCOL_NAMES,
    STATE_NAMES,
    TCP_FLAG_BITS,
)
from ir.packet import Packet

_TOKEN = re.compile(r"\S+")
_WORDS = ("flags", "type", "code", "id", "vlan", "dscp", "frag", "state")
# ICMP types that report an error about a packet and embed its header (RFC 792,
# RFC 4443): the ones the kernel's conntrack relates to a connection.
ICMP_ERROR_TYPES: dict[int, frozenset[int]] = {
    FAMILY_IPV4: frozenset({3, 4, 5, 11, 12}),
    FAMILY_IPV6: frozenset({1, 2, 3, 4}),
}
# Echo request and reply, per family: the ICMP types that carry an identifier.
ICMP_ECHO_TYPES: dict[int, tuple[int, int]] = {FAMILY_IPV4: (8, 0), FAMILY_IPV6: (128, 129)}
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


def parse_packet(text: str, column: int = 1) -> Packet:
    """Read one packet description (see the module docstring for the syntax); a ``#``
    starts a comment. ``column`` is where ``text`` starts in its line (for errors)."""
    text = text.split("#", 1)[0]
    tokens = [(m.group(), m.start() + column) for m in _TOKEN.finditer(text)]
    embedded: Packet | None = None
    inner_col = 0
    inner_at = next((i for i, (w, _) in enumerate(tokens) if w == "inner" and i >= 4), None)
    if inner_at is not None:
        word_col = inner_col = tokens[inner_at][1]
        if inner_at + 1 >= len(tokens):
            raise PacketSyntaxError("'inner' needs the embedded packet", word_col + len("inner"))
        start = tokens[inner_at + 1][1]
        embedded = parse_packet(text[start - column :], start)
        if embedded.embedded is not None:
            raise PacketSyntaxError("an embedded header cannot embed another", word_col)
        tokens = tokens[:inner_at]
    if not tokens:
        raise PacketSyntaxError("empty packet; expected e.g. 'tcp 10.0.0.1:1234 -> 10.0.0.2:80'", 1)
    proto_text, proto_col = tokens[0]
    proto = _protocol(proto_text, proto_col)
    frag = _frag_state(tokens)
    # A later fragment carries no transport header: no ports, flags or ICMP type.
    has_l4 = frag != FRAG_LATER
    has_ports = proto in PORT_PROTOCOLS and has_l4
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
    is_icmp = has_l4 and (family, proto) in ((FAMILY_IPV4, PROTO_ICMP), (FAMILY_IPV6, PROTO_ICMPV6))
    values: dict[str, int] = {"family": family, "ip_proto": proto, "frag": frag}
    prefix = "ip4" if family == FAMILY_IPV4 else "ip6"
    values[f"{prefix}_src"] = src_addr
    values[f"{prefix}_dst"] = dst_addr
    if has_ports:
        values["sport"], values["dport"] = sport, dport
    if is_icmp:
        values["icmp_type"] = 8 if family == FAMILY_IPV4 else 128
    rest = tokens[4:]
    echo_id, echo_id_col = 0, 0
    seen: set[str] = set()
    while rest:
        (word, col), *rest = rest
        if word not in _WORDS:
            raise PacketSyntaxError(
                f"unexpected {word!r}; expected {', '.join(_WORDS[:-1])}, {_WORDS[-1]} or inner",
                col,
            )
        if word in seen:
            raise PacketSyntaxError(f"{word!r} given twice", col)
        seen.add(word)
        if not rest:
            raise PacketSyntaxError(f"{word!r} needs a value", col + len(word))
        (value, vcol), *rest = rest
        if word == "frag":
            continue  # read before the addresses (_frag_state)
        if word == "flags":
            if proto != PROTO_TCP:
                raise PacketSyntaxError("flags only apply to tcp packets", col)
            if not has_l4:
                raise PacketSyntaxError("a later fragment carries no TCP flags", col)
            values["tcp_flags"] = _flags(value, vcol)
        elif word in ("type", "code"):
            if not is_icmp and not has_l4:
                raise PacketSyntaxError(f"a later fragment carries no ICMP {word}", col)
            if not is_icmp:
                raise PacketSyntaxError(f"{word} only applies to icmp/icmpv6 packets", col)
            values[f"icmp_{word}"] = _icmp(word, value, vcol, family)
        elif word == "id":
            if not is_icmp:
                raise PacketSyntaxError("id only applies to icmp/icmpv6 echo packets", col)
            echo_id = _number(value, vcol, 0xFFFF, "echo id")
            echo_id_col = col
        elif word == "state":
            if value.lower() not in STATE_NAMES:
                raise PacketSyntaxError(
                    f"unknown connection state {value!r}; use new, established, related or invalid",
                    vcol,
                )
            values["state"] = STATE_NAMES[value.lower()]
        elif word == "vlan":
            values["vlan_tagged"] = 1
            values["vlan_id"] = _number(value, vcol, 4095, "VLAN id")
        else:
            named = DSCP_NAMES.get(value.lower())
            values["dscp"] = named if named is not None else _number(value, vcol, 63, "DSCP")
    if "id" in seen and values.get("icmp_type") not in ICMP_ECHO_TYPES[family]:
        raise PacketSyntaxError("id only applies to echo request and echo reply", echo_id_col)
    if embedded is not None:
        if not is_icmp or values.get("icmp_type") not in ICMP_ERROR_TYPES[family]:
            raise PacketSyntaxError(
                "inner only applies to ICMP errors (unreachable, time exceeded, "
                "parameter problem, quench, packet too big)",
                inner_col,
            )
        if embedded.get("family") != family:
            raise PacketSyntaxError(
                "the embedded header is of another IP version than the error", inner_col
            )
    return Packet(Packet.make(**values).values, echo_id, embedded)


def _frag_state(tokens: list[tuple[str, int]]) -> int:
    """The packet's fragment state from its ``frag NAME`` words (none when absent)."""
    for i, (word, _) in enumerate(tokens[4:], start=4):
        if word != "frag":
            continue
        if i + 1 >= len(tokens):
            raise PacketSyntaxError("'frag' needs a value", tokens[i][1] + len(word))
        value, vcol = tokens[i + 1]
        if value.lower() not in FRAG_NAMES:
            raise PacketSyntaxError(
                f"unknown fragment state {value!r}; use none, first or later", vcol
            )
        return FRAG_NAMES[value.lower()]
    return FRAG_NONE


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


@dataclass(frozen=True, slots=True)
class StatefulLine:
    """One line of a host's traffic for ``flowc eval --stateful``: when, at which
    hook (a policy name), and the packet."""

    line: int
    time_ns: int
    hook: str
    text: str
    packet: Packet


_TIME = re.compile(r"^@(\d+(?:\.\d{1,9})?)$")


def read_stateful_lines(
    text: str, where: str, hooks: tuple[str, ...]
) -> tuple[list[StatefulLine], list[Diagnostic]]:
    """Every line ``[@SECONDS] HOOK PACKET`` of ``text`` (``#`` comments and blank
    lines skipped), and a diagnostic (file:line:col) for each line that cannot be
    read: a malformed or decreasing time, a hook that is not one of ``hooks``, a
    packet that does not parse or that states its own connection state (the
    tracker computes it). A line without a time happens at the previous line's.

    >>> lines, _ = read_stateful_lines("@1.5 web udp 10.0.0.1:1 -> 10.0.0.2:53\\n"
    ...                                "web udp 10.0.0.2:53 -> 10.0.0.1:1", "t", ("web",))
    >>> [(x.line, x.time_ns, x.hook) for x in lines]
    [(1, 1500000000, 'web'), (2, 1500000000, 'web')]
    """
    out: list[StatefulLine] = []
    problems: list[Diagnostic] = []
    now_ns = 0

    def problem(lineno: int, column: int, message: str) -> None:
        pos = Pos(where, lineno, column, lineno, column + 1)
        problems.append(error("packet-syntax", message, pos))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        body = raw.split("#", 1)[0]
        tokens = [(m.group(), m.start() + 1) for m in _TOKEN.finditer(body)]
        if not tokens:
            continue
        time_ns = now_ns
        if tokens[0][0].startswith("@"):
            word, col = tokens.pop(0)
            matched = _TIME.match(word)
            if matched is None:
                problem(lineno, col, f"time {word!r} is not @SECONDS (e.g. @1.25)")
                continue
            whole, _, fraction = matched.group(1).partition(".")
            time_ns = int(whole) * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)
            if time_ns < now_ns:
                problem(lineno, col, f"time {word} is before the previous line's")
                continue
        if not tokens:
            problem(lineno, len(body) + 1, "expected HOOK PACKET after the time")
            continue
        hook, hook_col = tokens[0]
        if hook not in hooks:
            known = ", ".join(hooks) if hooks else "none"
            problem(lineno, hook_col, f"no policy named {hook!r} (the file's policies: {known})")
            continue
        if len(tokens) < 2:
            problem(lineno, hook_col + len(hook), "expected a packet after the hook")
            continue
        start = tokens[1][1]
        try:
            packet = parse_packet(body[start - 1 :], start)
        except PacketSyntaxError as exc:
            problem(lineno, exc.column, exc.message)
            continue
        if packet.get("state"):
            state_col = next(c for w, c in tokens if w == "state")
            problem(
                lineno, state_col, "with --stateful the tracker computes the state: drop 'state'"
            )
            continue
        now_ns = time_ns
        out.append(StatefulLine(lineno, time_ns, hook, body.strip(), packet))
    return out, problems
