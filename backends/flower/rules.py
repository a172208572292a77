"""The flower rule model: filters, keys, actions, cookies, and what they mean.

A :class:`FlowerFilter` is one tc-flower filter as the kernel holds it
(chain, priority, handle, protocol, keys, one action, flags, cookie). The
lowering in :mod:`backends.flower` produces them; the text forms in
:mod:`backends.flower.text` print and parse them; the netlink codec in
:mod:`runtime.flower_netlink` encodes and decodes them. :func:`classify` is
flower's semantics over IR packets (priority order, masks, ranges), the
reference the unit tests and the equivalence checker hold the lowering to.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from backends.flower.keys import FLOWER_KEYS, FlowerKey, Matching
from backends.targets import ETH_P_8021AD, ETH_P_8021Q, ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from ir.algebra import Cube, full_cube
from ir.fields import FAMILY_IPV4, FAMILY_IPV6, HEADER_SPACE
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Action, Origin
from ir.packet import Packet
from ir.valueset import ValueSet

VLAN_PROTOCOLS = (ETH_P_8021Q, ETH_P_8021AD)
ETH_FOR_FAMILY = {FAMILY_IPV4: ETH_P_IP, FAMILY_IPV6: ETH_P_IPV6}
FAMILY_FOR_ETH = {v: k for k, v in ETH_FOR_FAMILY.items()}


class FlowerKind(StrEnum):
    """A flower action kind; the value is its tc spelling (``tc -j`` JSON, ``tc -batch``,
    profile files), so a member's value may never change."""

    PASS = "pass"
    DROP = "drop"
    REDIRECT = "redirect"
    MIRROR = "mirror"
    MARK = "mark"
    TRAP = "trap"  # hands the packet to the slow path (goto chain)


PASS = FlowerKind.PASS
TRAP = FlowerKind.TRAP
FLOWER_ACTIONS = tuple(FlowerKind)

# IR action kind -> the flower action kind that does the same: the one place
# where the IR's vocabulary (``allow``) meets flower's (``pass``).
FLOWER_KIND_OF = {
    ALLOW: FlowerKind.PASS,
    DROP: FlowerKind.DROP,
    REDIRECT: FlowerKind.REDIRECT,
    MIRROR: FlowerKind.MIRROR,
    MARK: FlowerKind.MARK,
}


class CookieRole(IntEnum):
    """What a filter is for. The value is the role byte of the cookie on the wire:
    filters an older flowc installed carry these numbers, so a value never changes
    and a new role takes a new number."""

    RULE = 0  # decides like an IR rule
    TRAP = 1  # sends an IR rule's packets (or more) to the slow path
    FRAME = 2  # sends frames outside the IR's model (QinQ, 802.1ad) to the slow path
    CUTOFF = 3  # the device is full: everything below goes to the slow path
    CACHE = 4  # a runtime cache entry (megaflow) installed by the agent


ROLE_RULE = CookieRole.RULE
ROLE_TRAP = CookieRole.TRAP
ROLE_FRAME = CookieRole.FRAME
ROLE_CUTOFF = CookieRole.CUTOFF
ROLE_CACHE = CookieRole.CACHE
ROLES = tuple(CookieRole)


class InstallFlags(StrEnum):
    """Where a filter may run. The value is its tc spelling; :attr:`kernel_bits` is
    what TCA_FLOWER_FLAGS carries."""

    SKIP_HW = "skip_hw"  # software flower only
    SKIP_SW = "skip_sw"  # hardware only (refused when the NIC cannot)
    NONE = "none"  # both

    @property
    def kernel_bits(self) -> int:
        """The TCA_CLS_FLAGS_* bits of the flag."""
        return _KERNEL_FLAG_BITS[self]


# TCA_CLS_FLAGS_SKIP_HW and TCA_CLS_FLAGS_SKIP_SW (include/uapi/linux/pkt_cls.h).
_KERNEL_FLAG_BITS = {
    InstallFlags.SKIP_HW: 1 << 0,
    InstallFlags.SKIP_SW: 1 << 1,
    InstallFlags.NONE: 0,
}
FLAGS = tuple(InstallFlags)

COOKIE_MAGIC = b"FC"
COOKIE_VERSION = 1
_COOKIE = struct.Struct("!2sBBIII")
_ROLE_BYTES = frozenset(int(r) for r in CookieRole)
NO_RULE = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Masked:
    """A ``value/mask`` key; an exact key has every bit of its width in ``mask``."""

    value: int
    mask: int

    def __post_init__(self) -> None:
        if self.value & ~self.mask:
            raise ValueError(f"value {self.value:#x} has bits outside mask {self.mask:#x}")

    def contains(self, value: int) -> bool:
        """True when ``value`` matches under the mask."""
        return value & self.mask == self.value


@dataclass(frozen=True, slots=True)
class PortRange:
    """A native flower port range ``lo-hi`` (the kernel needs ``lo < hi``)."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi <= 0xFFFF:
            raise ValueError(f"port range {self.lo}-{self.hi}: need 0 < lo < hi <= 65535")

    def contains(self, value: int) -> bool:
        """True when ``lo <= value <= hi``."""
        return self.lo <= value <= self.hi


PortKey = Masked | PortRange

# FlowerMatch keys flower compares exactly, and those that are value/mask or ranges.
EXACT_KEYS = tuple(k.name for k in FLOWER_KEYS if k.matching == Matching.EXACT)
MASKED_KEYS = tuple(k.name for k in FLOWER_KEYS if k.matching != Matching.EXACT)
# The keys the frame logic does not read: IR fields, each through its registry entry.
_FIELD_KEYS = tuple(k for k in FLOWER_KEYS if not k.tag)


@dataclass(frozen=True, slots=True)
class FlowerMatch:
    """The keys of one flower filter; None means the key is not matched.

    Attributes:
        protocol: the filter's protocol (the frame's outer ethertype as tc sees
            it: 802.1Q for tagged frames, ETH_P_ALL for every frame).
        vlan_id: 802.1Q VLAN id (flower matches it exactly).
        vlan_ethtype: the ethertype inside the tag, for VLAN protocols.
        ip_proto: IP protocol (exact only in flower).
        ip_tos: the TOS / traffic-class byte (DSCP is its top six bits).
        src_ip, dst_ip: addresses of the filter's IP family.
        src_port, dst_port: transport ports (value/mask or a native range).
        tcp_flags: TCP flags (low 8 bits of flower's 12-bit key).
        icmp_type, icmp_code: ICMP or ICMPv6 per family.
    """

    protocol: int
    vlan_id: int | None = None
    vlan_ethtype: int | None = None
    ip_proto: int | None = None
    ip_tos: Masked | None = None
    src_ip: Masked | None = None
    dst_ip: Masked | None = None
    src_port: PortKey | None = None
    dst_port: PortKey | None = None
    tcp_flags: Masked | None = None
    icmp_type: Masked | None = None
    icmp_code: Masked | None = None

    @property
    def eth_type(self) -> int | None:
        """The network-layer ethertype the filter matches (inside a VLAN tag if any)."""
        if self.protocol in VLAN_PROTOCOLS:
            return self.vlan_ethtype
        return None if self.protocol == ETH_P_ALL else self.protocol

    @property
    def family(self) -> int | None:
        """4 or 6 when the filter only matches that IP family, else None."""
        eth = self.eth_type
        return FAMILY_FOR_ETH.get(eth) if eth is not None else None

    def key_items(self) -> list[tuple[str, object]]:
        """``(key name, key)`` for every matched key, in a fixed order."""
        return [
            (k.name, getattr(self, k.name))
            for k in FLOWER_KEYS
            if getattr(self, k.name) is not None
        ]

    def mask_signature(self) -> tuple[object, ...]:
        """What the device must allocate a mask (hash table, matcher) for: which keys,
        with which masks; ranges count by kind, values do not."""
        sig: list[object] = [self.protocol]
        for name, key in self.key_items():
            if isinstance(key, Masked):
                sig.append((name, key.mask))
            elif isinstance(key, PortRange):
                sig.append((name, "range"))
            else:
                sig.append((name, "exact"))
        return tuple(sig)

    def cube(self) -> Cube | None:
        """The IR packets this filter matches, as one cube of the header space
        (None when no IR packet can match: QinQ and 802.1ad frames, other
        ethertypes). Exactly the packets :meth:`matches` accepts.

        Raises FlowerMatchError for keys the IR cannot see (ECN bits of the
        TOS byte; an address key without an IP ethertype; a mask too
        fragmented to enumerate), so nothing is checked on a guess.
        """
        space = HEADER_SPACE
        sets = {f.name: f.full for f in space.fields}
        if self.protocol in VLAN_PROTOCOLS:
            if self.protocol != ETH_P_8021Q or self.vlan_ethtype in VLAN_PROTOCOLS:
                return None
            sets["vlan_tagged"] = ValueSet.of_value(1, 1)
            if self.vlan_id is not None:
                sets["vlan_id"] = ValueSet.of_value(12, self.vlan_id)
        elif self.vlan_id is not None or self.vlan_ethtype is not None:
            return None
        elif self.protocol == ETH_P_ALL and not self.key_items():
            return full_cube(space)
        else:
            sets["vlan_tagged"] = ValueSet.of_value(1, 0)
        eth = self.eth_type
        family = self.family
        if eth is not None:
            if family is None:
                return None
            sets["family"] = ValueSet.of_value(8, family)
        for flower_key in _FIELD_KEYS:
            key = getattr(self, flower_key.name)
            if key is None:
                continue
            if flower_key.needs_family and family is None:
                raise FlowerMatchError(f"{flower_key.name} key without an IP protocol")
            name = flower_key.field_for(family)
            assert name is not None
            width = space.field(name).width
            if isinstance(key, PortRange):
                sets[name] = ValueSet.of_range(width, key.lo, key.hi)
            elif isinstance(key, Masked):
                sets[name] = _ternary_set(name, width, _shifted(flower_key, key))
            else:
                sets[name] = ValueSet.of_value(width, key)
        return Cube(tuple(sets[f.name] for f in space.fields))

    def matches(self, packet: Packet) -> bool:
        """Flower's match of this filter against an IR packet (absent fields read 0,
        as the flow dissector leaves keys it does not parse zeroed)."""
        p = packet.as_dict()
        eth = ETH_FOR_FAMILY.get(p["family"])
        if p["vlan_tagged"]:
            if self.protocol == ETH_P_ALL:
                return not self.key_items()
            if self.protocol != ETH_P_8021Q:
                return False
            if self.vlan_ethtype is not None and self.vlan_ethtype != eth:
                return False
            if self.vlan_id is not None and self.vlan_id != p["vlan_id"]:
                return False
        else:
            if self.protocol not in (ETH_P_ALL, eth) or self.vlan_id is not None:
                return False
            if self.vlan_ethtype is not None:
                return False
        for flower_key in _FIELD_KEYS:
            key = getattr(self, flower_key.name)
            if key is None:
                continue
            name = flower_key.field_for(p["family"])
            assert name is not None
            value = p[name] << flower_key.ir_shift
            if isinstance(key, Masked | PortRange):
                if not key.contains(value):
                    return False
            elif key != value:
                return False
        return True


class FlowerMatchError(ValueError):
    """A filter key outside what the IR can express (so no check may guess)."""


def _shifted(flower_key: FlowerKey, key: Masked) -> Masked:
    """The IR field's value/mask inside a key that carries it shifted left."""
    shift = flower_key.ir_shift
    if key.mask & ((1 << shift) - 1):
        raise FlowerMatchError(
            f"{flower_key.name} mask {key.mask:#04x} covers {flower_key.ir_shift_bits}, "
            "which a policy cannot match on"
        )
    return Masked(key.value >> shift, key.mask >> shift)


def _ternary_set(name: str, width: int, key: Masked) -> ValueSet:
    try:
        return ValueSet.of_ternary(width, key.value, key.mask)
    except ValueError:
        raise FlowerMatchError(
            f"{name} mask {key.mask:#x} is too fragmented to check exactly"
        ) from None


@dataclass(frozen=True, slots=True)
class FlowerAction:
    """What a filter does: one of FLOWER_ACTIONS.

    Attributes:
        kind: pass, drop, redirect, mirror, mark or trap (a tc spelling is
            taken too and stored as its :class:`FlowerKind`).
        device: egress device of redirect/mirror.
        mark: the skb mark of ``mark``.
        chain: the slow-path chain a trap jumps to.
    """

    kind: FlowerKind | str
    device: str | None = None
    mark: int | None = None
    chain: int | None = None

    def __post_init__(self) -> None:
        try:
            # Decoders and tests hand in tc spellings; the member is what stays.
            object.__setattr__(self, "kind", FlowerKind(self.kind))
        except ValueError:
            raise ValueError(f"unknown flower action {self.kind!r}") from None
        if (self.kind in (REDIRECT, MIRROR)) != (self.device is not None):
            raise ValueError(
                f"{self.kind}: device {'missing' if self.device is None else 'unexpected'}"
            )
        if (self.kind == MARK) != (self.mark is not None):
            raise ValueError(
                f"{self.kind}: mark {'missing' if self.mark is None else 'unexpected'}"
            )
        if (self.kind == TRAP) != (self.chain is not None):
            raise ValueError(
                f"{self.kind}: chain {'missing' if self.chain is None else 'unexpected'}"
            )

    def __str__(self) -> str:
        if self.kind in (REDIRECT, MIRROR):
            return f"{self.kind} dev {self.device}"
        if self.kind == MARK:
            return f"mark {self.mark:#x}"
        if self.kind == TRAP:
            return f"trap (goto chain {self.chain})"
        return self.kind


def action_for(ir_action: Action) -> FlowerAction:
    """The flower action that does what an IR action does."""
    kind = FLOWER_KIND_OF[ir_action.kind]
    if kind in (FlowerKind.REDIRECT, FlowerKind.MIRROR):
        return FlowerAction(kind, device=ir_action.device)
    if kind == FlowerKind.MARK:
        return FlowerAction(kind, mark=ir_action.mark)
    return FlowerAction(kind)


def same_decision(flower: FlowerAction, ir_action: Action) -> bool:
    """True when a (non-trap) flower action does to a packet what the IR action does."""
    return flower.kind != TRAP and flower == action_for(ir_action)


@dataclass(frozen=True, slots=True)
class Cookie:
    """What flowc writes into a filter's action cookie (16 bytes).

    Attributes:
        role: what the filter is for (its wire byte is the role's value).
        generation: the policy generation that installed the filter.
        rule: the IR rule position the filter implements (None for frame/cutoff traps).
        tag: free 32 bits (the agent's cache-entry id; the lowering's filter number).
    """

    role: CookieRole
    generation: int
    rule: int | None
    tag: int = 0

    def encode(self) -> bytes:
        """The 16 cookie bytes."""
        return _COOKIE.pack(
            COOKIE_MAGIC,
            COOKIE_VERSION,
            int(self.role),
            self.generation & 0xFFFFFFFF,
            NO_RULE if self.rule is None else self.rule,
            self.tag & 0xFFFFFFFF,
        )

    @staticmethod
    def decode(data: bytes | None) -> Cookie | None:
        """The cookie in ``data``, or None when it is not one of flowc's."""
        if not data or len(data) != _COOKIE.size:
            return None
        magic, version, role, generation, rule, tag = _COOKIE.unpack(data)
        if magic != COOKIE_MAGIC or version != COOKIE_VERSION or role not in _ROLE_BYTES:
            return None
        return Cookie(CookieRole(role), generation, None if rule == NO_RULE else rule, tag)


@dataclass(frozen=True, slots=True)
class FlowerFilter:
    """One flower filter on a hook.

    Attributes:
        chain: tc chain (0 is where classification starts).
        prio: tc priority (lower runs first; 1..65535).
        handle: filter handle, unique within (chain, prio).
        match: the keys.
        action: the action.
        flags: skip_hw, skip_sw or none (a tc spelling is taken too and stored
            as its :class:`InstallFlags`).
        cookie: flowc's cookie, or None for foreign filters.
        origin: the DSL rule the filter implements, when known.
    """

    chain: int
    prio: int
    handle: int
    match: FlowerMatch
    action: FlowerAction
    flags: InstallFlags | str = InstallFlags.SKIP_HW
    cookie: Cookie | None = None
    origin: Origin | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.prio <= 0xFFFF:
            raise ValueError(f"prio {self.prio} outside 1..65535")
        try:
            object.__setattr__(self, "flags", InstallFlags(self.flags))
        except ValueError:
            raise ValueError(
                f"flags must be one of {tuple(f.value for f in FLAGS)}, not {self.flags!r}"
            ) from None

    def label(self) -> str:
        """How messages name the filter."""
        return f"chain {self.chain} prio {self.prio} handle {self.handle:#x}"


@dataclass(frozen=True, slots=True)
class FlowerVerdict:
    """What the flower table does to a packet: the filter that matched (None: no
    filter did, so tc passes the packet on) and its action."""

    filter: FlowerFilter | None

    @property
    def trapped(self) -> bool:
        """True when the slow path decides (a trap matched, or nothing did)."""
        return self.filter is None or self.filter.action.kind == TRAP


def ordered(filters: Iterable[FlowerFilter]) -> list[FlowerFilter]:
    """Filters in the order tc tries them on chain 0: priority, then handle."""
    return sorted((f for f in filters if f.chain == 0), key=lambda f: (f.prio, f.handle))


def classify(filters: Sequence[FlowerFilter], packet: Packet) -> FlowerVerdict:
    """Flower's verdict for an IR packet: the first chain-0 filter (by priority, then
    handle) whose keys match. ``filters`` must already be :func:`ordered`.

    Within one priority the kernel tries masks in creation order; flowc's own
    lowering only shares a priority between filters no packet can match both
    of, so handle order is as good as the kernel's there.
    """
    for f in filters:
        if f.match.matches(packet):
            return FlowerVerdict(f)
    return FlowerVerdict(None)


def keys_disjoint(a: FlowerMatch, b: FlowerMatch) -> bool:
    """True when no frame can match both (some key both match on cannot agree)."""
    if a.protocol != b.protocol and ETH_P_ALL not in (a.protocol, b.protocol):
        return True
    for name in EXACT_KEYS:
        x, y = getattr(a, name), getattr(b, name)
        if x is not None and y is not None and x != y:
            return True
    for name in MASKED_KEYS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            continue
        if _key_disjoint(x, y):
            return True
    return False


def _key_disjoint(x: Masked | PortRange, y: Masked | PortRange) -> bool:
    if isinstance(x, Masked) and isinstance(y, Masked):
        return bool((x.value ^ y.value) & x.mask & y.mask)
    if isinstance(x, PortRange) and isinstance(y, PortRange):
        return x.hi < y.lo or y.hi < x.lo
    masked, rng = (x, y) if isinstance(x, Masked) else (y, x)
    assert isinstance(masked, Masked) and isinstance(rng, PortRange)
    if masked.mask == 0xFFFF:
        return not rng.contains(masked.value)
    # Masked port blocks: disjoint when the block's hull misses the range.
    lowest = masked.value
    highest = masked.value | (~masked.mask & 0xFFFF)
    return highest < rng.lo or rng.hi < lowest
