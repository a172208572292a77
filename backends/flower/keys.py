"""The flower key registry: one entry per key a :class:`~backends.flower.rules.FlowerMatch` holds.

Everything flowc knows about a flower key lives in its :class:`FlowerKey`
entry: the IR field it carries, the NIC-profile capability it needs, how
flower matches it, how ``tc -j`` and ``tc -batch`` spell it, and its
TCA_FLOWER_* netlink attributes with their codecs. The lowering, the flower
model's ``cube()``/``matches()``, the conformance check, the text forms and
both netlink encoders read these entries instead of naming keys themselves,
so a new key is one new entry here (plus its IR field in :mod:`ir.fields`
and its attribute on ``FlowerMatch``). When a key exists in a packet comes
from the IR field's prerequisite, never from here.

>>> KEYS["dst_port"].variant_for(FAMILY_IPV4, PROTO_UDP).value.name
'TCA_FLOWER_KEY_UDP_DST'
>>> KEYS["src_ip"].variant_for(6, None).field
'ip6_src'
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from ir.fields import FAMILY_IPV4, PROTO_SCTP, PROTO_TCP, PROTO_UDP


class Matching(enum.StrEnum):
    """How flower compares a key with a packet."""

    EXACT = "exact"  # the key is a plain value (no mask attribute)
    MASKED = "masked"  # value/mask
    PORT = "port"  # value/mask, or a native lo-hi range


class Cover(enum.StrEnum):
    """How the lowering covers an IR value set with keys of this kind."""

    SPLIT = "split"  # one filter per value; expand() splits on it (vlan id, ip proto)
    VALUES = "values"  # one exact key per value (tc's text takes no mask for it)
    TERNARY = "ternary"  # a minimal value/mask cover
    ADDRESS = "address"  # prefixes, or ternaries where the profile allows any mask
    PORT = "port"  # aligned blocks, native ranges where the profile has them, else prefixes
    NONE = "none"  # not an IR field: set by the lowering itself (the tag's ethertype)
    FRAG = "frag"  # the IR's fragment state, through the dissector's fragment flags
    CT = "ct"  # the IR's connection state, through conntrack's ct_state flags


class Text(enum.StrEnum):
    """How ``tc -j`` prints and ``tc -batch`` takes a key's value (one writer and
    reader per style in :mod:`backends.flower.text`)."""

    NUMBER = "number"  # decimal
    ETHERTYPE = "ethertype"  # ipv4 / ipv6 / 802.1Q, else hex
    PROTOCOL = "protocol"  # tcp / udp / ..., else hex
    VALUE_AND_MASK_KEY = "value_and_mask_key"  # JSON: value, mask under <key>_mask in hex
    ADDRESS = "address"  # address[/prefix length or /mask]
    PORT = "port"  # a port (mask under <key>_mask) or {"start", "end"}
    HEX_SLASH_MASK = "hex_slash_mask"  # 0xVALUE/MASK
    NUMBER_SLASH_MASK = "number_slash_mask"  # VALUE or VALUE/MASK; tc -batch: the value only
    MATCHING_FLAGS = "matching_flags"  # JSON {"frag": true, ...}; tc -batch frag/nofirstfrag
    CT_FLAGS = "ct_flags"  # +trk+est-new, in tc -j and tc -batch alike


@dataclass(frozen=True, slots=True)
class Codec:
    """How one attribute's payload is written on the wire.

    Attributes:
        nla_type: the pyroute2 nla type that decodes it (``flower_options.nla_map``).
        size: payload bytes.
        byteorder: ``big`` or the host's order (``sys.byteorder``).
        address: pyroute2 takes and gives the value as an address string.
    """

    nla_type: str
    size: int
    byteorder: str
    address: bool = False

    def pack(self, value: int) -> bytes:
        """The payload bytes of ``value``."""
        return value.to_bytes(self.size, self.byteorder)  # type: ignore[arg-type]


BE32 = Codec("be32", 4, "big")
U8 = Codec("uint8", 1, "big")
U16 = Codec("uint16", 2, sys.byteorder)
BE16 = Codec("be16", 2, "big")
IP4 = Codec("ip4addr", 4, "big", address=True)
IP6 = Codec("ip6addr", 16, "big", address=True)


@dataclass(frozen=True, slots=True)
class Attribute:
    """One TCA_FLOWER_* attribute: its name and number in include/uapi/linux/pkt_cls.h."""

    name: str
    number: int
    codec: Codec


@dataclass(frozen=True, slots=True)
class Variant:
    """One way a key goes on the wire, chosen by the filter's IP family and protocol.

    Attributes:
        family: the IP family this variant is for; None: any family no earlier
            variant of the key claims.
        ip_proto: the IP protocol it is for; None: any.
        field: the IR field the key carries here (None: not an IR field).
        capability: the NIC profile's ``allows_field`` kind (None: always held).
        width: bits of the key's value (a missing mask attribute means all of them).
        value: the value attribute.
        mask: the mask attribute (None for exact keys).
    """

    family: int | None
    ip_proto: int | None
    field: str | None
    capability: str | None
    width: int
    value: Attribute
    mask: Attribute | None = None

    @property
    def full_mask(self) -> int:
        """Every bit of the key's value."""
        return (1 << self.width) - 1


@dataclass(frozen=True, slots=True)
class FlowerKey:
    """Everything about one flower key.

    Attributes:
        name: the ``FlowerMatch`` attribute (and the key's name in messages).
        matching: how flower compares it.
        cover: how the lowering covers an IR value set with it.
        variants: its wire forms, tried in order (see :meth:`variant_for`).
        tc_json: its key in ``tc -j filter show`` output.
        tc_batch: its word in ``tc filter add ... flower``.
        text: how its value is spelled in both.
        tc_json_order: where iproute2 prints it (not the netlink order).
        ranges: the (min, max) attributes of a native port range.
        flag_names: for matching flags, the name of each bit, lowest first.
        ir_shift: the key carries the IR value shifted left by this many bits.
        ir_shift_bits: what the bits below the shift are, for the refusal message.
        tag: a key of the 802.1Q tag, read by the model's frame logic with the
            filter's protocol rather than as an IR field.
        needs_family: the key means nothing without an IP ethertype.
        vlan_protocols_only: decoded only on filters of a VLAN protocol, since
            the kernel reports the attribute on others too.
    """

    name: str
    matching: Matching
    cover: Cover
    variants: tuple[Variant, ...]
    tc_json: str
    tc_batch: str
    text: Text
    tc_json_order: int
    ranges: tuple[Attribute, Attribute] | None = None
    ir_shift: int = 0
    ir_shift_bits: str = ""
    tag: bool = False
    needs_family: bool = False
    vlan_protocols_only: bool = False
    flag_names: tuple[str, ...] = ()

    def variant_for(self, family: int | None, ip_proto: int | None) -> Variant | None:
        """The first variant for ``family`` and ``ip_proto`` (None when there is none)."""
        for variant in self.variants:
            if variant.family not in (None, family):
                continue
            if variant.ip_proto is not None and variant.ip_proto != ip_proto:
                continue
            return variant
        return None

    def family_variant(self, family: int | None) -> Variant:
        """The first variant for ``family`` whatever the protocol (the IR field,
        capability and width do not depend on the protocol)."""
        return next(v for v in self.variants if v.family in (None, family))

    def field_for(self, family: int | None) -> str | None:
        """The IR field the key carries in packets of ``family``."""
        return self.family_variant(family).field

    def attributes(self) -> tuple[Attribute, ...]:
        """Every attribute the key may be written with."""
        out: list[Attribute] = []
        for variant in self.variants:
            out += [variant.value] + ([variant.mask] if variant.mask is not None else [])
        out += list(self.ranges or ())
        return tuple(dict.fromkeys(out))


def _attr(name: str, number: int, codec: Codec) -> Attribute:
    return Attribute(f"TCA_FLOWER_KEY_{name}", number, codec)


def _masked(name: str, number: int, mask_number: int, codec: Codec) -> tuple[Attribute, Attribute]:
    return _attr(name, number, codec), _attr(f"{name}_MASK", mask_number, codec)


# The filter's protocol is not a key of FlowerMatch but goes on the wire as one.
ETH_TYPE = _attr("ETH_TYPE", 8, BE16)
# tc -j prints eth_type between the tag's keys and the rest.
ETH_TYPE_JSON_ORDER = 25


def _ports(side: str, numbers: dict[int, tuple[int, int]]) -> tuple[Variant, ...]:
    field = "sport" if side == "SRC" else "dport"
    variants = []
    for proto, name in ((PROTO_TCP, "TCP"), (PROTO_UDP, "UDP"), (PROTO_SCTP, "SCTP")):
        value, mask = _masked(f"{name}_{side}", *numbers[proto], BE16)
        variants.append(Variant(None, proto, field, "ports", 16, value, mask))
    return tuple(variants)


def _address(side: str, v4: tuple[int, int], v6: tuple[int, int]) -> tuple[Variant, ...]:
    field = side.lower()
    return (
        Variant(FAMILY_IPV4, None, f"ip4_{field}", "ipv4", 32, *_masked(f"IPV4_{side}", *v4, IP4)),
        # Family None: a filter without an IP ethertype is checked as IPv6, the wider.
        Variant(None, None, f"ip6_{field}", "ipv6", 128, *_masked(f"IPV6_{side}", *v6, IP6)),
    )


def _icmp(what: str, v4: tuple[int, int], v6: tuple[int, int]) -> tuple[Variant, ...]:
    field = f"icmp_{what.lower()}"
    return (
        Variant(FAMILY_IPV4, None, field, "icmp", 8, *_masked(f"ICMPV4_{what}", *v4, U8)),
        Variant(None, None, field, "icmp", 8, *_masked(f"ICMPV6_{what}", *v6, U8)),
    )


FLOWER_KEYS: tuple[FlowerKey, ...] = (
    FlowerKey(
        "vlan_id",
        Matching.EXACT,
        Cover.SPLIT,
        (Variant(None, None, "vlan_id", "vlan_id", 12, _attr("VLAN_ID", 23, U16)),),
        tc_json="vlan_id",
        tc_batch="vlan_id",
        text=Text.NUMBER,
        tc_json_order=10,
        tag=True,
    ),
    FlowerKey(
        "vlan_ethtype",
        Matching.EXACT,
        Cover.NONE,
        (Variant(None, None, None, None, 16, _attr("VLAN_ETH_TYPE", 25, BE16)),),
        tc_json="vlan_ethtype",
        tc_batch="vlan_ethtype",
        text=Text.ETHERTYPE,
        tc_json_order=20,
        tag=True,
        vlan_protocols_only=True,
    ),
    FlowerKey(
        "ip_proto",
        Matching.EXACT,
        Cover.SPLIT,
        (Variant(None, None, "ip_proto", "ip_proto", 8, _attr("IP_PROTO", 9, U8)),),
        tc_json="ip_proto",
        tc_batch="ip_proto",
        text=Text.PROTOCOL,
        tc_json_order=30,
    ),
    FlowerKey(
        "ip_tos",
        Matching.MASKED,
        Cover.TERNARY,
        (Variant(None, None, "dscp", "ip_tos", 8, *_masked("IP_TOS", 73, 74, U8)),),
        tc_json="ip_tos",
        tc_batch="ip_tos",
        text=Text.VALUE_AND_MASK_KEY,
        tc_json_order=40,
        ir_shift=2,
        ir_shift_bits="the ECN bits",
    ),
    FlowerKey(
        "src_ip",
        Matching.MASKED,
        Cover.ADDRESS,
        _address("SRC", (10, 11), (14, 15)),
        tc_json="src_ip",
        tc_batch="src_ip",
        text=Text.ADDRESS,
        tc_json_order=50,
        needs_family=True,
    ),
    FlowerKey(
        "dst_ip",
        Matching.MASKED,
        Cover.ADDRESS,
        _address("DST", (12, 13), (16, 17)),
        tc_json="dst_ip",
        tc_batch="dst_ip",
        text=Text.ADDRESS,
        tc_json_order=60,
        needs_family=True,
    ),
    FlowerKey(
        "src_port",
        Matching.PORT,
        Cover.PORT,
        _ports("SRC", {PROTO_TCP: (18, 35), PROTO_UDP: (20, 37), PROTO_SCTP: (41, 39)}),
        tc_json="src_port",
        tc_batch="src_port",
        text=Text.PORT,
        tc_json_order=80,  # tc prints dst_port first
        ranges=(_attr("PORT_SRC_MIN", 87, BE16), _attr("PORT_SRC_MAX", 88, BE16)),
    ),
    FlowerKey(
        "dst_port",
        Matching.PORT,
        Cover.PORT,
        _ports("DST", {PROTO_TCP: (19, 36), PROTO_UDP: (21, 38), PROTO_SCTP: (42, 40)}),
        tc_json="dst_port",
        tc_batch="dst_port",
        text=Text.PORT,
        tc_json_order=70,
        ranges=(_attr("PORT_DST_MIN", 89, BE16), _attr("PORT_DST_MAX", 90, BE16)),
    ),
    FlowerKey(
        "tcp_flags",
        Matching.MASKED,
        Cover.TERNARY,
        # flower's key is 12 bits wide; the IR field holds the low eight.
        (Variant(None, None, "tcp_flags", "tcp_flags", 12, *_masked("TCP_FLAGS", 71, 72, BE16)),),
        tc_json="tcp_flags",
        tc_batch="tcp_flags",
        text=Text.HEX_SLASH_MASK,
        tc_json_order=90,
    ),
    FlowerKey(
        "icmp_type",
        Matching.MASKED,
        # Flower takes ICMP masks, but iproute2's tc text does not: exact values.
        Cover.VALUES,
        _icmp("TYPE", (51, 52), (55, 56)),
        tc_json="icmp_type",
        tc_batch="type",
        text=Text.NUMBER_SLASH_MASK,
        tc_json_order=100,
    ),
    FlowerKey(
        "icmp_code",
        Matching.MASKED,
        Cover.VALUES,
        _icmp("CODE", (49, 50), (53, 54)),
        tc_json="icmp_code",
        tc_batch="code",
        text=Text.NUMBER_SLASH_MASK,
        tc_json_order=110,
    ),
    FlowerKey(
        "ip_flags",
        Matching.MASKED,
        Cover.FRAG,
        (Variant(None, None, "frag", "ip_flags", 2, *_masked("FLAGS", 47, 48, BE32)),),
        tc_json="ip_flags",
        tc_batch="ip_flags",
        text=Text.MATCHING_FLAGS,
        # iproute2 prints the matching flags after the transport keys.
        tc_json_order=200,
        needs_family=True,
        flag_names=("frag", "firstfrag"),
    ),
    FlowerKey(
        "ct_state",
        Matching.MASKED,
        Cover.CT,
        # The IR's state field, seen through the flags the flow dissector sets
        # from the skb's conntrack entry (skb_flow_dissect_ct); host-order u16.
        (Variant(None, None, "state", "ct_state", 6, *_masked("CT_STATE", 91, 92, U16)),),
        tc_json="ct_state",
        tc_batch="ct_state",
        text=Text.CT_FLAGS,
        tc_json_order=300,
        flag_names=("new", "est", "rel", "trk", "inv", "rpl"),
    ),
)

# TCA_FLOWER_KEY_FLAGS bits (include/uapi/linux/pkt_cls.h): the flow dissector's
# FLOW_DIS_IS_FRAGMENT and FLOW_DIS_FIRST_FRAG.
FLAG_IS_FRAGMENT = 1 << 0
FLAG_FRAG_IS_FIRST = 1 << 1
# The ip_flags bits the dissector reports for each IR fragment state (ir/fields.py
# frag: none, first, later): a first fragment has both, a later one only "frag".
FRAG_FLAG_BITS = (0, FLAG_IS_FRAGMENT | FLAG_FRAG_IS_FIRST, FLAG_IS_FRAGMENT)

# TCA_FLOWER_KEY_CT_FLAGS_* (include/uapi/linux/pkt_cls.h), the bits of ct_state.
CT_FLAG_NEW = 1 << 0
CT_FLAG_ESTABLISHED = 1 << 1
CT_FLAG_RELATED = 1 << 2
CT_FLAG_TRACKED = 1 << 3
CT_FLAG_INVALID = 1 << 4
CT_FLAG_REPLY = 1 << 5
# The ct_state flags a tracked packet of each IR state carries (ir/fields.py
# state: new, established, related, invalid), as skb_flow_dissect_ct maps the
# conntrack info: established and related come with or without +rpl (the IR
# does not model the direction bit, so a key must not tell the two apart), and
# a packet conntrack refused (no entry) is +trk+inv.
CT_STATE_FLAGS: tuple[tuple[int, ...], ...] = (
    (CT_FLAG_TRACKED | CT_FLAG_NEW,),
    (CT_FLAG_TRACKED | CT_FLAG_ESTABLISHED, CT_FLAG_TRACKED | CT_FLAG_ESTABLISHED | CT_FLAG_REPLY),
    (CT_FLAG_TRACKED | CT_FLAG_RELATED, CT_FLAG_TRACKED | CT_FLAG_RELATED | CT_FLAG_REPLY),
    (CT_FLAG_TRACKED | CT_FLAG_INVALID,),
)
# The key that matches exactly one IR state among tracked packets: +trk+<state>.
CT_STATE_KEY_BITS = (
    CT_FLAG_TRACKED | CT_FLAG_NEW,
    CT_FLAG_TRACKED | CT_FLAG_ESTABLISHED,
    CT_FLAG_TRACKED | CT_FLAG_RELATED,
    CT_FLAG_TRACKED | CT_FLAG_INVALID,
)

KEYS: dict[str, FlowerKey] = {key.name: key for key in FLOWER_KEYS}

# The key carrying each IR field, for the lowering.
KEY_OF_FIELD: dict[str, FlowerKey] = {
    variant.field: key
    for key in FLOWER_KEYS
    for variant in key.variants
    if variant.field is not None
}

# The NIC-profile capability each IR field needs to be matched in hardware.
CAPABILITY_OF_FIELD: dict[str, str] = {
    variant.field: variant.capability
    for key in FLOWER_KEYS
    for variant in key.variants
    if variant.field is not None and variant.capability is not None
}


def key_attributes() -> tuple[Attribute, ...]:
    """Every TCA_FLOWER_* attribute a key of the registry (or the ethertype) is written with."""
    return (ETH_TYPE, *(a for key in FLOWER_KEYS for a in key.attributes()))
