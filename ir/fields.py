"""The header field registry: the one list of packet fields flowc matches on.

Every part of flowc (interpreter, algebra, checker, backends) reads fields from
here, as faucet's ``MATCH_FIELDS`` does. A field has a width, a rendering, an
optional *domain* (values a real packet can carry) and optional
*prerequisites*: a field such as ``dport`` only exists in a packet whose
``ip_proto`` is TCP, UDP or SCTP. A packet that lacks a field carries 0 in it,
so the header space is a plain product of integer ranges plus these
conditions, which :mod:`ir.algebra` checks exactly.

Fields are listed so that prerequisites come before the fields that need them;
prerequisite fields are themselves unconditional (roots).

>>> HEADER_SPACE.field("dport").width
16
>>> [f.name for f in HEADER_SPACE.fields][:7]
['family', 'vlan_tagged', 'vlan_id', 'dscp', 'ip_proto', 'frag', 'state']
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ir.valueset import ValueSet

# Rendering kinds: how a value of the field is written in IR text and packets.
RENDER_DEC = "dec"
RENDER_IP4 = "ip4"
RENDER_IP6 = "ip6"
RENDER_FLAGS = "tcp_flags"
RENDER_FRAG = "frag"
RENDER_STATE = "state"

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132
PROTO_ICMPV6 = 58
PORT_PROTOCOLS = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)

FAMILY_IPV4 = 4
FAMILY_IPV6 = 6

# Fragment state of an IP packet (IPv4 MF/offset, IPv6 fragment header), as
# the kernel's flow dissector calls them: a first fragment (offset 0, more to
# come) still carries the transport header, a later one does not.
FRAG_NONE = 0
FRAG_FIRST = 1
FRAG_LATER = 2
FRAG_NAMES: dict[str, int] = {"none": FRAG_NONE, "first": FRAG_FIRST, "later": FRAG_LATER}
FRAG_BY_NUMBER: dict[int, str] = {v: k for k, v in FRAG_NAMES.items()}

# Connection state of a packet, computed by the connection tracker before the
# policy decides (ir/conntrack.py is its definition). ``new`` is 0 so that a
# packet no tracker has looked at (stateless evaluation) is new.
STATE_NEW = 0
STATE_ESTABLISHED = 1
STATE_RELATED = 2
STATE_INVALID = 3
STATE_NAMES: dict[str, int] = {
    "new": STATE_NEW,
    "established": STATE_ESTABLISHED,
    "related": STATE_RELATED,
    "invalid": STATE_INVALID,
}
STATE_BY_NUMBER: dict[int, str] = {v: k for k, v in STATE_NAMES.items()}

# Condition: alternatives (OR) of conjunctions (AND) of (root field, allowed values).
Condition = tuple[tuple[tuple[str, ValueSet], ...], ...]


@dataclass(frozen=True, slots=True)
class Field:
    """One matchable header field.

    Attributes:
        name: registry name, used in IR text and by every backend.
        width: width in bits; values are unsigned integers below ``2**width``.
        render: how values are written (``dec``, ``hex``, ``ip4``, ``ip6``, ``tcp_flags``).
        doc: what the field is, in packet terms.
        domain: the values a real packet can carry, or None for every value.
        prerequisite: when the field exists in a packet (alternatives of
            conjunctions over root fields); empty means always.
        preferred: values a witness packet should use when allowed (realism only).
    """

    name: str
    width: int
    render: str
    doc: str
    domain: ValueSet | None = None
    prerequisite: Condition = ()
    preferred: tuple[int, ...] = ()

    @property
    def full(self) -> ValueSet:
        """Every value of the field's width."""
        return ValueSet.full(self.width)


@dataclass(frozen=True, slots=True)
class Space:
    """An ordered collection of fields: the coordinates of a header space."""

    fields: tuple[Field, ...]
    index: dict[str, int] = field(init=False, compare=False, hash=False)
    # Derived once, for the algebra's hot paths: the prerequisite conditions of
    # dependent fields with field indexes instead of names, and each field's domain.
    dependents: tuple[tuple[int, tuple[tuple[tuple[int, ValueSet], ...], ...]], ...] = field(
        init=False, compare=False, hash=False
    )
    domains: tuple[ValueSet, ...] = field(init=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index = {f.name: i for i, f in enumerate(self.fields)}
        object.__setattr__(self, "index", index)
        object.__setattr__(
            self,
            "dependents",
            tuple(
                (i, tuple(tuple((index[n], vs) for n, vs in alt) for alt in f.prerequisite))
                for i, f in enumerate(self.fields)
                if f.prerequisite
            ),
        )
        object.__setattr__(
            self,
            "domains",
            tuple(f.domain if f.domain is not None else f.full for f in self.fields),
        )
        roots = {f.name for f in self.fields if not f.prerequisite}
        for i, fld in enumerate(self.fields):
            for alternative in fld.prerequisite:
                for name, values in alternative:
                    if name not in roots:
                        raise ValueError(f"{fld.name}: prerequisite {name} is not a root field")
                    if self.index[name] >= i:
                        raise ValueError(f"{fld.name}: prerequisite {name} must come first")
                    if values.width != self.fields[self.index[name]].width:
                        raise ValueError(f"{fld.name}: prerequisite {name} has the wrong width")

    def field(self, name: str) -> Field:
        """The field called ``name`` (KeyError if there is none)."""
        return self.fields[self.index[name]]

    def position(self, name: str) -> int:
        """The field's coordinate index."""
        return self.index[name]

    @property
    def names(self) -> tuple[str, ...]:
        """Field names in coordinate order."""
        return tuple(f.name for f in self.fields)


def _values(width: int, *values: int) -> ValueSet:
    return ValueSet.of_values(width, values)


def _cond(*alternatives: tuple[tuple[str, ValueSet], ...]) -> Condition:
    return tuple(alternatives)


_IS_IPV4 = ("family", _values(8, FAMILY_IPV4))
_IS_IPV6 = ("family", _values(8, FAMILY_IPV6))
# Transport fields exist only in a packet that carries the transport header.
_HAS_L4 = ("frag", _values(2, FRAG_NONE, FRAG_FIRST))

HEADER_SPACE = Space(
    (
        Field(
            "family",
            8,
            RENDER_DEC,
            "IP version of the packet: 4 or 6 (flower eth_type 0x0800 / 0x86DD)",
            domain=_values(8, FAMILY_IPV4, FAMILY_IPV6),
            preferred=(FAMILY_IPV4, FAMILY_IPV6),
        ),
        Field(
            "vlan_tagged",
            1,
            RENDER_DEC,
            "1 when the frame carries an 802.1Q tag",
            preferred=(0,),
        ),
        Field(
            "vlan_id",
            12,
            RENDER_DEC,
            "802.1Q VLAN identifier",
            prerequisite=_cond((("vlan_tagged", _values(1, 1)),)),
        ),
        Field(
            "dscp",
            6,
            RENDER_DEC,
            "DiffServ code point (IPv4 TOS / IPv6 traffic class >> 2)",
            preferred=(0,),
        ),
        Field(
            "ip_proto",
            8,
            RENDER_DEC,
            "IPv4 protocol / IPv6 next header of the transport",
            preferred=(PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP),
        ),
        Field(
            "frag",
            2,
            RENDER_FRAG,
            "IP fragment state: 0 not a fragment, 1 first fragment (offset 0, more "
            "fragments), 2 later fragment (no transport header)",
            domain=_values(2, FRAG_NONE, FRAG_FIRST, FRAG_LATER),
            preferred=(FRAG_NONE,),
        ),
        Field(
            "state",
            2,
            RENDER_STATE,
            "connection state before the policy decides: 0 new, 1 established, "
            "2 related, 3 invalid (ir/conntrack.py)",
            preferred=(STATE_NEW,),
        ),
        Field("ip4_src", 32, RENDER_IP4, "IPv4 source address", prerequisite=_cond((_IS_IPV4,))),
        Field(
            "ip4_dst", 32, RENDER_IP4, "IPv4 destination address", prerequisite=_cond((_IS_IPV4,))
        ),
        Field("ip6_src", 128, RENDER_IP6, "IPv6 source address", prerequisite=_cond((_IS_IPV6,))),
        Field(
            "ip6_dst",
            128,
            RENDER_IP6,
            "IPv6 destination address",
            prerequisite=_cond((_IS_IPV6,)),
        ),
        Field(
            "sport",
            16,
            RENDER_DEC,
            "TCP/UDP/SCTP source port",
            prerequisite=_cond((("ip_proto", _values(8, *PORT_PROTOCOLS)), _HAS_L4)),
            preferred=(40000,),
        ),
        Field(
            "dport",
            16,
            RENDER_DEC,
            "TCP/UDP/SCTP destination port",
            prerequisite=_cond((("ip_proto", _values(8, *PORT_PROTOCOLS)), _HAS_L4)),
        ),
        Field(
            "icmp_type",
            8,
            RENDER_DEC,
            "ICMP (IPv4, proto 1) or ICMPv6 (IPv6, next header 58) type",
            prerequisite=_cond(
                (_IS_IPV4, ("ip_proto", _values(8, PROTO_ICMP)), _HAS_L4),
                (_IS_IPV6, ("ip_proto", _values(8, PROTO_ICMPV6)), _HAS_L4),
            ),
            preferred=(8, 128),
        ),
        Field(
            "icmp_code",
            8,
            RENDER_DEC,
            "ICMP / ICMPv6 code",
            prerequisite=_cond(
                (_IS_IPV4, ("ip_proto", _values(8, PROTO_ICMP)), _HAS_L4),
                (_IS_IPV6, ("ip_proto", _values(8, PROTO_ICMPV6)), _HAS_L4),
            ),
            preferred=(0,),
        ),
        Field(
            "tcp_flags",
            8,
            RENDER_FLAGS,
            "TCP flags byte: FIN SYN RST PSH ACK URG ECE CWR (bit 0 is FIN)",
            prerequisite=_cond((("ip_proto", _values(8, PROTO_TCP)), _HAS_L4)),
            preferred=(0x02, 0x10),
        ),
    )
)

TCP_FLAG_BITS: dict[str, int] = {
    "fin": 0x01,
    "syn": 0x02,
    "rst": 0x04,
    "psh": 0x08,
    "ack": 0x10,
    "urg": 0x20,
    "ece": 0x40,
    "cwr": 0x80,
}

PROTOCOL_NAMES: dict[str, int] = {
    "icmp": PROTO_ICMP,
    "tcp": PROTO_TCP,
    "udp": PROTO_UDP,
    "icmpv6": PROTO_ICMPV6,
    "sctp": PROTO_SCTP,
}
PROTOCOL_BY_NUMBER: dict[int, str] = {v: k for k, v in PROTOCOL_NAMES.items()}


def field_exists(name: str, family: int, ip_proto: int | None, frag: int = FRAG_NONE) -> bool:
    """Whether field ``name`` is present in a packet of ``family`` carrying ``ip_proto``
    with fragment state ``frag`` (not a fragment unless given).

    The answer is read from the field's prerequisite, so the flower lowering and
    the DSL's protocol implication agree with the interpreter. ``ip_proto``
    None means "not known to be any one protocol", where no protocol-dependent
    field can be relied on.

    >>> field_exists("dport", FAMILY_IPV4, PROTO_UDP), field_exists("dport", FAMILY_IPV4, 47)
    (True, False)
    >>> field_exists("icmp_type", FAMILY_IPV6, PROTO_ICMP)
    False
    >>> field_exists("dport", FAMILY_IPV4, PROTO_TCP, FRAG_LATER)
    False

    Raises:
        ValueError: the prerequisite depends on a root other than family, ip_proto and frag.
    """
    prerequisite = HEADER_SPACE.field(name).prerequisite
    if not prerequisite:
        return True
    known: dict[str, int | None] = {"family": family, "ip_proto": ip_proto, "frag": frag}
    for alternative in prerequisite:
        holds = True
        for root, values in alternative:
            if root not in known:
                raise ValueError(f"{name}: prerequisite on {root} is not family, ip_proto or frag")
            value = known[root]
            holds = holds and value is not None and value in values
        if holds:
            return True
    return False


def protocols_with(name: str) -> dict[int, ValueSet]:
    """Per IP family, the IP protocols with which field ``name`` exists.

    >>> protocols_with("tcp_flags")[FAMILY_IPV6] == ValueSet.of_value(8, PROTO_TCP)
    True
    """
    return dict(_protocols_with(name))


@functools.cache
def _protocols_with(name: str) -> tuple[tuple[int, ValueSet], ...]:
    # 256 protocols, so asking field_exists of each is exact; cached because the
    # compiler asks once per clause.
    return tuple(
        (family, ValueSet.of_values(8, (p for p in range(256) if field_exists(name, family, p))))
        for family in (FAMILY_IPV4, FAMILY_IPV6)
    )
