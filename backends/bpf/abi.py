"""ctypes mirrors of the structs in bpf/flowc_common.h (the BPF <-> user space ABI).

Sizes are asserted at import, so a change on one side that the other misses
fails loudly instead of misreading maps.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress

from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT
from ir.packet import Packet

ACTION_CODES = {ALLOW: 0, DROP: 1, REDIRECT: 2, MIRROR: 3, MARK: 4}
ACTION_F_PEER = 1
CONFIG_F_EVENTS = 1
CONFIG_F_NO_MEMO = 2


STATUS_NAMES = ("not_ip", "malformed", "no_rule", "events_lost", "events_sent")


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
        ("pad0", ct.c_uint8 * 3),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("ip4_src", ct.c_uint8 * 4),
        ("ip4_dst", ct.c_uint8 * 4),
        ("ip6_src", ct.c_uint8 * 16),
        ("ip6_dst", ct.c_uint8 * 16),
    )

    def to_packet(self) -> Packet:
        """The IR packet this key describes."""
        fields = {
            name: getattr(self, name)
            for name in (
                "family",
                "vlan_tagged",
                "vlan_id",
                "dscp",
                "ip_proto",
                "icmp_type",
                "icmp_code",
                "tcp_flags",
                "sport",
                "dport",
            )
        }
        fields["ip4_src"] = int.from_bytes(bytes(self.ip4_src), "big")
        fields["ip4_dst"] = int.from_bytes(bytes(self.ip4_dst), "big")
        fields["ip6_src"] = int.from_bytes(bytes(self.ip6_src), "big")
        fields["ip6_dst"] = int.from_bytes(bytes(self.ip6_dst), "big")
        return Packet.make(**fields)

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


class RuleStats(ct.Structure):
    """struct flowc_rule_stats."""

    _fields_ = (("packets", ct.c_uint64), ("bytes", ct.c_uint64), ("last_jiffies", ct.c_uint64))


class Config(ct.Structure):
    """struct flowc_config."""

    _fields_ = (
        ("generation", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("dedup_ns", ct.c_uint64),
        ("bank", ct.c_uint32),
        ("pad0", ct.c_uint32),
    )


class Event(ct.Structure):
    """struct flowc_event."""

    _fields_ = (
        ("key", FlowKey),
        ("rule", ct.c_uint32),
        ("generation", ct.c_uint32),
        ("ts_ns", ct.c_uint64),
    )


class Lpm4Key(ct.Structure):
    """struct flowc_lpm4_key."""

    _fields_ = (("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 4))


class Lpm6Key(ct.Structure):
    """struct flowc_lpm6_key."""

    _fields_ = (("prefixlen", ct.c_uint32), ("bank", ct.c_uint8), ("addr", ct.c_uint8 * 16))


assert ct.sizeof(FlowKey) == 56
assert ct.sizeof(ActionEntry) == 16
assert ct.sizeof(Event) == 72
assert ct.sizeof(Config) == 24
