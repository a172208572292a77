"""ClassBench filter sets and header traces -> flowc DSL and ``flowc eval`` packet lines.

Filter format (one per line, first match wins in file order)::

    @SIP/LEN<TAB>DIP/LEN<TAB>SPLO : SPHI<TAB>DPLO : DPHI<TAB>0xPP/0xMM<TAB>0xFFFF/0xFFFF<TAB>

Trace format: ``SIP DIP SPORT DPORT PROTO FLAGS GENRULE`` (unsigned integers).

Filter ``i`` (counted from 1) becomes a rule ``mark i`` so every verdict names
the filter that decided it, or allow/drop drawn from a seeded generator. The
6th filter column (ClassBench's flags) has no flowc meaning and is ignored.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ir.fields import PORT_PROTOCOLS, PROTO_ICMP, PROTO_TCP, PROTOCOL_BY_NUMBER

_FILTER = re.compile(
    r"^@(?P<sip>[\d.]+)/(?P<slen>\d+)\s+(?P<dip>[\d.]+)/(?P<dlen>\d+)\s+"
    r"(?P<splo>\d+)\s*:\s*(?P<sphi>\d+)\s+(?P<dplo>\d+)\s*:\s*(?P<dphi>\d+)\s+"
    r"0x(?P<proto>[0-9a-fA-F]+)/0x(?P<pmask>[0-9a-fA-F]+)(?:\s+\S+)?\s*$"
)

ACTION_MODES = ("mark", "allow-drop")


class ClassBenchError(ValueError):
    """A line that is not a ClassBench filter (or cannot be expressed exactly)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Filter:
    """One ClassBench filter; ``proto`` is None for the wildcard."""

    src: ipaddress.IPv4Network
    dst: ipaddress.IPv4Network
    sport: tuple[int, int]
    dport: tuple[int, int]
    proto: int | None

    def matches(self, sip: int, dip: int, sport: int, dport: int, proto: int) -> bool:
        """ClassBench's own semantics: every field in range (the oracle for tests)."""
        return (
            (sip & int(self.src.netmask)) == int(self.src.network_address)
            and (dip & int(self.dst.netmask)) == int(self.dst.network_address)
            and self.sport[0] <= sport <= self.sport[1]
            and self.dport[0] <= dport <= self.dport[1]
            and (self.proto is None or self.proto == proto)
        )


def parse_filters(lines: Iterable[str]) -> list[Filter]:
    """Parse a filter file's lines (blank lines skipped)."""
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        m = _FILTER.match(line.strip())
        if m is None:
            raise ClassBenchError(lineno, f"not a ClassBench filter: {line.strip()[:60]!r}")
        try:
            # ClassBench prefixes match on the leading bits; mask stray host bits.
            src = ipaddress.IPv4Network(f"{m['sip']}/{m['slen']}", strict=False)
            dst = ipaddress.IPv4Network(f"{m['dip']}/{m['dlen']}", strict=False)
        except ValueError as exc:
            raise ClassBenchError(lineno, str(exc)) from None
        sport = (int(m["splo"]), int(m["sphi"]))
        dport = (int(m["dplo"]), int(m["dphi"]))
        for lo, hi in (sport, dport):
            if not 0 <= lo <= hi <= 65535:
                raise ClassBenchError(lineno, f"bad port range {lo} : {hi}")
        value, mask = int(m["proto"], 16), int(m["pmask"], 16)
        if mask == 0:
            proto = None
        elif mask == 0xFF and value <= 0xFF:
            proto = value
        else:
            raise ClassBenchError(lineno, f"protocol mask 0x{mask:x} is neither 0x00 nor 0xFF")
        full = (0, 65535)
        if (sport != full or dport != full) and proto not in PORT_PROTOCOLS:
            raise ClassBenchError(
                lineno,
                "port range on a protocol without ports cannot be expressed exactly in flowc",
            )
        out.append(Filter(src, dst, sport, dport, proto))
    return out


def _addr(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def _ports(word: str, lo_hi: tuple[int, int]) -> str | None:
    lo, hi = lo_hi
    if (lo, hi) == (0, 65535):
        return None
    return f"{word} {lo}" if lo == hi else f"{word} {lo}-{hi}"


def filter_to_rule(f: Filter, action: str) -> str:
    """One filter as a DSL rule with the given action words."""
    words = [action]
    if f.proto is not None:
        name = PROTOCOL_BY_NUMBER.get(f.proto)
        words.append(name if name in ("tcp", "udp", "sctp", "icmp") else f"proto {f.proto}")
    if f.src.prefixlen:
        words.append(f"from {_addr(f.src)}")
    if f.dst.prefixlen:
        words.append(f"to {_addr(f.dst)}")
    for word, rng in (("sport", f.sport), ("dport", f.dport)):
        clause = _ports(word, rng)
        if clause:
            words.append(clause)
    return " ".join(words)


def filters_to_policy(
    filters: list[Filter],
    *,
    source_name: str,
    actions: str = "mark",
    seed: int = 0,
    device: str = "eth0",
) -> str:
    """A DSL policy named ``classbench`` (ingress on ``device``, default drop)."""
    if actions not in ACTION_MODES:
        raise ValueError(f"actions must be one of {ACTION_MODES}")
    rng = random.Random(seed)
    out = [
        f"# Imported from {source_name} by 'flowc import classbench' ({len(filters)} filters,"
        f" actions: {actions}{f', seed {seed}' if actions != 'mark' else ''}).",
        f"policy classbench ingress on {device} {{",
        "    default drop",
    ]
    for i, f in enumerate(filters, start=1):
        action = f"mark {i}" if actions == "mark" else rng.choice(("allow", "drop"))
        out.append("    " + filter_to_rule(f, action))
    out.append("}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class TracePacket:
    """One trace header; ``generated_by`` is the 0-based filter used to generate it."""

    sip: int
    dip: int
    sport: int
    dport: int
    proto: int
    generated_by: int


def parse_trace(lines: Iterable[str]) -> Iterator[TracePacket]:
    """Parse trace lines (blank lines skipped)."""
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5:
            raise ClassBenchError(lineno, "a trace line needs at least 5 numbers")
        try:
            nums = [int(x) for x in fields[:7]]
        except ValueError:
            raise ClassBenchError(lineno, f"not a trace line: {line.strip()[:60]!r}") from None
        sip, dip, sport, dport, proto = nums[:5]
        if sip >= 1 << 32 or dip >= 1 << 32 or sport > 65535 or dport > 65535 or proto > 255:
            raise ClassBenchError(lineno, "a field is out of range")
        gen = nums[6] if len(nums) > 6 else -1
        yield TracePacket(sip, dip, sport, dport, proto, gen)


def trace_packet_line(p: TracePacket) -> str:
    """The header in ``flowc eval --packets`` syntax (ports only where the protocol has them)."""
    src, dst = ipaddress.IPv4Address(p.sip), ipaddress.IPv4Address(p.dip)
    name = PROTOCOL_BY_NUMBER.get(p.proto, str(p.proto))
    if name == "icmpv6":  # proto 58 over IPv4 is just a number
        name = "58"
    if p.proto in PORT_PROTOCOLS:
        text = f"{name} {src}:{p.sport} -> {dst}:{p.dport}"
        if p.proto == PROTO_TCP:
            # ClassBench traces carry no TCP flags. Most of a host's TCP packets
            # are mid-connection ACKs; no flags at all is what a truncated TCP
            # header looks like to flower, which the cache must leave alone.
            text += " flags ack"
    else:
        text = f"{name} {src} -> {dst}"
        if p.proto == PROTO_ICMP:
            text = f"icmp {src} -> {dst}"
    if p.generated_by >= 0:
        text += f"  # generated by filter {p.generated_by + 1}"
    return text
