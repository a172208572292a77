"""The BPF <-> user space ABI, Python side: map names and sizes, codes and flags,
and ctypes mirrors of the structs in bpf/flowc_common.h.

The emitter spells every map it declares with these names and sizes, and the
loader finds and fills the maps by the same names, so the two cannot drift
apart. Against the C header, tests/kernel/test_bpf_abi.py compiles a program
with bcc against ``bpf/`` that reports ``sizeof``/``offsetof`` of every mirrored
struct and the value of every constant here, and compares.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress

from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT
from ir.packet import Packet

ACTION_CODES = {ALLOW: 0, DROP: 1, REDIRECT: 2, MIRROR: 3, MARK: 4}
"""FLOWC_ACTION_*: the kind of an action table entry."""
ACTION_F_PEER = 1
"""FLOWC_ACTION_F_PEER: redirect with bpf_redirect_peer."""
CONFIG_F_EVENTS = 1
"""FLOWC_CONFIG_F_EVENTS: emit miss events."""
CONFIG_F_NO_MEMO = 2
"""FLOWC_CONFIG_F_NO_MEMO: walk the bit vectors even when the memo is compiled in."""
CONFIG_F_CT_GIVEN = 4
"""FLOWC_CONFIG_F_CT_GIVEN: the checker's mode, the state given, nothing tracked."""
CONFIG_CT_GIVEN_SHIFT = 8
"""FLOWC_CONFIG_CT_GIVEN_SHIFT: where in the flags the given state sits."""

STATUS_NAMES = (
    "not_ip",
    "malformed",
    "no_rule",
    "events_lost",
    "events_sent",
    "malformed_l2",
    "malformed_l3",
    "malformed_l4",
    "ct_new",
    "ct_established",
    "ct_related",
    "ct_invalid",
    "ct_commits",
    "ct_untracked",
    "ct_expired",
    "ct_closed",
)
"""The status counters by index (FLOWC_STATUS_*; FLOWC_STATUS_COUNT of them).
``malformed`` counts every malformed frame, ``malformed_l2/l3/l4`` the same frames
by layer (named as ``ir.interp.Unclassified``'s values); ``ct_*`` the connection
tracker's (ir/conntrack.py COUNTERS of the same names; 0 without tracking)."""

BANKS = 2
"""FLOWC_BANKS: every policy map holds this many copies (bank * size + index)."""
DIR_L1_ENTRIES = 1 << 16
"""FLOWC_DIR_L1: entries of an IPv4 DIR-16-8-8 table's first level, per bank."""
LPM6_BANK_BITS = 8
"""The bank byte in front of an IPv6 LPM key's address: a prefix of n bits is
stored with prefix length LPM6_BANK_BITS + n; FLOWC_LPM6_FULL looks up all 128."""

# Maps every program has (bpf/flowc_maps.h).
ACTIONS_MAP = "flowc_actions"
RULE_STATS_MAP = "flowc_rule_stats"
STATUS_MAP = "flowc_status"
CONFIG_MAP = "flowc_config"
EVENTS_MAP = "flowc_events"
CT_MAP = "flowc_ct"
"""The host's connection table (bpf/flowc_ct.h), pinned; struct flowc_ct_key -> entry."""


def class_map(field: str) -> str:
    """The map from a field's value to its class (array, or IPv6 LPM trie)."""
    return f"flowc_cls_{field}"


def dir_map(level: int, field: str) -> str:
    """Level 1, 2 or 3 of an IPv4 field's DIR-16-8-8 class table."""
    return f"flowc_l{level}_{field}"


def bitvec_map(field: str) -> str:
    """The map from a field's class to its rule bit vector."""
    return f"flowc_bv_{field}"


def array_entries(width: int) -> int:
    """Entries per bank of the class array of a field ``width`` bits wide."""
    return 1 << width


class FlowKey(ct.Structure):
    """struct flowc_key."""

    _fields_ = (
        ("family", ct.c_uint8),
        ("vlan_tagged", ct.c_uint8),
        ("vlan_id", ct.c_uint16),
        ("dscp", ct.c_uint8),
        ("ip_proto", ct.c_uint8),
        ("icmp_type", ct.c_uint8),
        ("icmp_code", ct.c_uint8),
        ("tcp_flags", ct.c_uint8),
        ("frag", ct.c_uint8),
        ("state", ct.c_uint8),
        ("pad0", ct.c_uint8),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("ip4_src", ct.c_uint8 * 4),
        ("ip4_dst", ct.c_uint8 * 4),
        ("ip6_src", ct.c_uint8 * 16),
        ("ip6_dst", ct.c_uint8 * 16),
    )

    SCALARS = (
        "family",
        "vlan_tagged",
        "vlan_id",
        "dscp",
        "ip_proto",
        "icmp_type",
        "icmp_code",
        "tcp_flags",
        "frag",
        "state",
        "sport",
        "dport",
    )
    """The fields that are one IR field each; the addresses are byte arrays."""
    ADDRESSES = (("ip4_src", 4), ("ip4_dst", 4), ("ip6_src", 16), ("ip6_dst", 16))
    """The address fields and their widths in bytes (network order)."""

    def to_packet(self) -> Packet:
        """The IR packet this key describes."""
        fields = {name: getattr(self, name) for name in self.SCALARS}
        for name, _width in self.ADDRESSES:
            fields[name] = int.from_bytes(bytes(getattr(self, name)), "big")
        return Packet.make(**fields)

    @classmethod
    def from_packet(cls, packet: Packet) -> FlowKey:
        """The key the program builds for ``packet`` (the inverse of :meth:`to_packet`)."""
        fields = packet.as_dict()
        key = cls(**{name: fields[name] for name in cls.SCALARS})
        for name, width in cls.ADDRESSES:
            getattr(key, name)[:] = list(fields[name].to_bytes(width, "big"))
        return key

    def __str__(self) -> str:
        src: ipaddress.IPv4Address | ipaddress.IPv6Address
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address
        if self.family == 4:
            src = ipaddress.IPv4Address(bytes(self.ip4_src))
            dst = ipaddress.IPv4Address(bytes(self.ip4_dst))
        else:
            src = ipaddress.IPv6Address(bytes(self.ip6_src))
            dst = ipaddress.IPv6Address(bytes(self.ip6_dst))
        return f"proto {self.ip_proto} {src}:{self.sport} -> {dst}:{self.dport}"


class ActionEntry(ct.Structure):
    """struct flowc_action."""

    _fields_ = (
        ("kind", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("mark", ct.c_uint32),
        ("flags", ct.c_uint32),
    )


class Config(ct.Structure):
    """struct flowc_config."""

    _fields_ = (
        ("generation", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("dedup_ns", ct.c_uint64),
        ("bank", ct.c_uint32),
        ("ct_fast", ct.c_uint32),
        ("ct_now_ns", ct.c_uint64),
        ("ct_hook", ct.c_uint32),
        ("pad0", ct.c_uint32),
    )


class CtKey(ct.Structure):
    """struct flowc_ct_key: a connection's tuple, canonical but for ICMP (bpf/flowc_common.h)."""

    _fields_ = (
        ("family", ct.c_uint8),
        ("proto", ct.c_uint8),
        ("pad0", ct.c_uint16),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("src", ct.c_uint8 * 16),
        ("dst", ct.c_uint8 * 16),
    )


class CtEntry(ct.Structure):
    """struct flowc_ct_entry: one connection."""

    _fields_ = (
        ("expires_ns", ct.c_uint64),
        ("created_ns", ct.c_uint64),
        ("last_ns", ct.c_uint64),
        ("packets_orig", ct.c_uint64),
        ("packets_reply", ct.c_uint64),
        ("replied", ct.c_uint8),
        ("tcp", ct.c_uint8),
        ("fin_from", ct.c_uint8),
        ("start_flags", ct.c_uint8),
        ("hook", ct.c_uint32),
        ("swapped", ct.c_uint8),
        ("pad1", ct.c_uint8 * 7),
    )


class Event(ct.Structure):
    """struct flowc_event."""

    _fields_ = (
        ("key", FlowKey),
        ("rule", ct.c_uint32),
        ("generation", ct.c_uint32),
        ("ts_ns", ct.c_uint64),
    )


MIRRORS: dict[str, type[ct.Structure]] = {
    "flowc_key": FlowKey,
    "flowc_action": ActionEntry,
    "flowc_config": Config,
    "flowc_event": Event,
    "flowc_ct_key": CtKey,
    "flowc_ct_entry": CtEntry,
}
"""C struct name -> its mirror: every struct user space reads or writes through
ctypes (bit vectors, LPM keys and rule counters go through the types bcc derives
from the C itself)."""
