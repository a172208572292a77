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

import operator
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from backends.flower.keys import (
    CT_STATE_FLAGS,
    FLOWER_KEYS,
    FRAG_FLAG_BITS,
    Cover,
    FlowerKey,
    Matching,
)
from backends.targets import ETH_P_8021AD, ETH_P_8021Q, ETH_P_ALL, ETH_P_IP, ETH_P_IPV6
from ir.algebra import Cube, full_cube
from ir.fields import FAMILY_IPV4, FAMILY_IPV6, FRAG_FIRST, FRAG_LATER, FRAG_NONE, HEADER_SPACE
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Action, Origin
from ir.packet import Packet
from ir.valueset import ValueSet

VLAN_PROTOCOLS = (ETH_P_8021Q, ETH_P_8021AD)
ETH_FOR_FAMILY = {FAMILY_IPV4: ETH_P_IP, FAMILY_IPV6: ETH_P_IPV6}
FAMILY_FOR_ETH = {v: k for k, v in ETH_FOR_FAMILY.items()}
_FULL_SETS = {f.name: f.full for f in HEADER_SPACE.fields}
"""Every field's full set, the start of every filter's cube (built once)."""
_KEY_NAMES = tuple(k.name for k in FLOWER_KEYS)
"""Every flower key's name, in FLOWER_KEYS order (key_items walks it per call)."""
_KEY_VALUES = operator.attrgetter(*_KEY_NAMES)
"""A match's value of every key in _KEY_NAMES order, in one C call (key_items
runs per cache rule installed)."""


class FlowerKind(StrEnum):
    """A flower action kind; the value is its tc spelling (``tc -j`` JSON, ``tc -batch``,
    profile files), so a member's value may never change."""

    PASS = "pass"
    DROP = "drop"
    REDIRECT = "redirect"
    MIRROR = "mirror"
    MARK = "mark"
    TRAP = "trap"  # hands the packet to the slow path (goto chain)
    CT = "ct"  # conntrack lookup (act_ct, zone 0), then goto chain: the stateful shape


CT = FlowerKind.CT
# What a NIC profile lists when it can run ``ct commit`` before an action (the
# commit is a flag of the action, not a kind of its own).
CT_COMMIT = "ct_commit"
# The conntrack zone flowc's ct actions use: the namespace's default zone, the
# one table ir.conntrack models per host.
CT_ZONE = 0


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
    CT = 5  # sends untracked packets through conntrack to the stateful chain


ROLE_RULE = CookieRole.RULE
ROLE_TRAP = CookieRole.TRAP
ROLE_FRAME = CookieRole.FRAME
ROLE_CUTOFF = CookieRole.CUTOFF
ROLE_CACHE = CookieRole.CACHE
ROLE_CT = CookieRole.CT
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
_KEY_FIELDS = {
    family: tuple(
        (key, name, HEADER_SPACE.field(name).width if name is not None else 0)
        for key in _FIELD_KEYS
        for name in (key.field_for(family),)
    )
    for family in (None, FAMILY_IPV4, FAMILY_IPV6)
}
"""Per family, each field key with the IR field it carries and that field's
width (looked up once: every filter's cube walks this)."""
# Fields that exist only where the transport header does (their prerequisite
# names the fragment state): the flow dissector reads them as 0 in every IP
# fragment, as cls_flower dissects without FLOW_DISSECTOR_F_PARSE_1ST_FRAG.
TRANSPORT_FIELDS = tuple(
    f.name
    for f in HEADER_SPACE.fields
    if any(root == "frag" for alternative in f.prerequisite for root, _ in alternative)
)
_FRAG_STATES = (FRAG_NONE, FRAG_FIRST, FRAG_LATER)


def ct_states(key: Masked, tracked: bool) -> ValueSet:
    """The IR connection states a ct_state value/mask admits: before a ct action
    (``tracked`` False) every packet carries 0, so all or none; after one, the
    states whose flags (:data:`CT_STATE_FLAGS`) match.

    Raises FlowerMatchError when the key admits an established or related
    packet in one direction only (+rpl), which the IR's state cannot say.

    >>> ct_states(Masked(0b1010, 0b1010), True) == ValueSet.of_value(2, 1)
    True
    """
    width = HEADER_SPACE.field("state").width
    if not tracked:
        return ValueSet.full(width) if key.contains(0) else ValueSet.empty(width)
    admitted = []
    for state, combos in enumerate(CT_STATE_FLAGS):
        hits = {key.contains(flags) for flags in combos}
        if len(hits) > 1:
            raise FlowerMatchError(
                f"ct_state {key.value:#x}/{key.mask:#x} tells replies (+rpl) apart, "
                "which a policy cannot match on"
            )
        if hits.pop():
            admitted.append(state)
    return ValueSet.of_values(width, admitted)


def frag_states(key: Masked) -> ValueSet:
    """The IR fragment states an ``ip_flags`` value/mask admits.

    >>> frag_states(Masked(0, 1)) == ValueSet.of_value(2, FRAG_NONE)
    True
    """
    return ValueSet.of_values(2, (s for s in _FRAG_STATES if key.contains(FRAG_FLAG_BITS[s])))


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
        ip_flags: the dissector's fragment flags (bit 0 ``frag``, bit 1 ``firstfrag``).
        ct_state: conntrack's flags (TCA_FLOWER_KEY_CT_FLAGS_*: +trk+est, ...).
            What a packet carries depends on where the filter is: before any ct
            action it is untracked (0), after one (the chain a ``ct`` action
            goes to) it is +trk and one of new/est/rel/inv; the ``tracked``
            argument of :meth:`cube`, :meth:`cubes` and :meth:`matches` says which.
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
    ip_flags: Masked | None = None
    ct_state: Masked | None = None

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
        return [(n, v) for n, v in zip(_KEY_NAMES, _KEY_VALUES(self), strict=True) if v is not None]

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

    def cube(self, tracked: bool = False) -> Cube | None:
        """The filter's keys as one cube of the header space, read as if every
        packet carried its own field values (None when no IR packet can match:
        QinQ and 802.1ad frames, other ethertypes).

        This is what the keys say, not yet what the kernel matches: in an IP
        fragment the flow dissector reads the transport fields as 0, which
        :meth:`cubes` accounts for.

        ``tracked``: the filter sits behind a ct action (its packets carry
        +trk and their state's flag), else before any (ct_state 0).

        Raises FlowerMatchError for keys the IR cannot see (ECN bits of the
        TOS byte; an address key without an IP ethertype; a mask too
        fragmented to enumerate; a ct_state key telling +rpl apart), so
        nothing is checked on a guess.
        """
        space = HEADER_SPACE
        sets = dict(_FULL_SETS)
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
        for flower_key, name, width in _KEY_FIELDS[family]:
            key = getattr(self, flower_key.name)
            if key is None:
                continue
            if flower_key.needs_family and family is None:
                raise FlowerMatchError(f"{flower_key.name} key without an IP protocol")
            assert name is not None
            if flower_key.cover == Cover.FRAG:
                assert isinstance(key, Masked)
                sets[name] = frag_states(key)
            elif flower_key.cover == Cover.CT:
                assert isinstance(key, Masked)
                states = ct_states(key, tracked)
                if states.is_empty():
                    return None
                sets[name] = states
            elif isinstance(key, PortRange):
                sets[name] = ValueSet.of_range(width, key.lo, key.hi)
            elif isinstance(key, Masked):
                sets[name] = _ternary_set(name, width, _shifted(flower_key, key))
            else:
                sets[name] = ValueSet.of_value(width, key)
        return Cube(tuple(sets[f.name] for f in space.fields))

    def cubes(self, tracked: bool = False) -> tuple[Cube, ...]:
        """The IR packets the kernel's flower matches with this filter, as cubes
        (none when no IR packet can match). Exactly the packets :meth:`matches`
        accepts.

        Whole packets and later fragments are matched on their own values (a
        later fragment has no transport fields, 0 in the IR as in the
        dissector). A first fragment carries a transport header the dissector
        does not read: the filter matches every first fragment of its other
        keys when each transport key admits 0, and none otherwise.

        Raises FlowerMatchError as :meth:`cube` does.
        """
        keys = self.cube(tracked)
        if keys is None:
            return ()
        space = HEADER_SPACE
        frag_at = space.position("frag")
        frags = keys.sets[frag_at]
        out = []
        transport = [space.position(name) for name in TRANSPORT_FIELDS]
        zero_matches = all(0 in keys.sets[i] for i in transport)
        # A later fragment's transport fields are 0: a transport key excluding 0
        # matches none, so the cube leaves later fragments out rather than holding
        # (packet-less) later fragments with ports, which would keep every IR rule
        # (frag none,first when it has ports) from containing it.
        direct = frags & ValueSet.of_values(
            2, (FRAG_NONE, FRAG_LATER) if zero_matches else (FRAG_NONE,)
        )
        if not direct.is_empty():
            out.append(_with(keys, frag_at, direct))
        if FRAG_FIRST in frags and zero_matches:
            first = _with(keys, frag_at, ValueSet.of_value(2, FRAG_FIRST))
            for i in transport:
                first = _with(first, i, space.fields[i].full)
            out.append(first)
        return tuple(out)

    def matches(self, packet: Packet, tracked: bool = False) -> bool:
        """Flower's match of this filter against an IR packet (absent fields read 0,
        as the flow dissector leaves keys it does not parse zeroed, and so do the
        transport fields of a first fragment, which it does not dissect);
        ``tracked`` as for :meth:`cube`."""
        p = packet.as_dict()
        if p["frag"] == FRAG_FIRST:
            p.update({name: 0 for name in TRANSPORT_FIELDS})
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
            if flower_key.cover == Cover.FRAG:
                assert isinstance(key, Masked)
                if not key.contains(FRAG_FLAG_BITS[p[name]]):
                    return False
                continue
            if flower_key.cover == Cover.CT:
                assert isinstance(key, Masked)
                if p[name] not in ct_states(key, tracked):
                    return False
                continue
            value = p[name] << flower_key.ir_shift
            if isinstance(key, Masked | PortRange):
                if not key.contains(value):
                    return False
            elif key != value:
                return False
        return True


class FlowerMatchError(ValueError):
    """A filter key outside what the IR can express (so no check may guess)."""


def _with(c: Cube, i: int, values: ValueSet) -> Cube:
    sets = list(c.sets)
    sets[i] = values
    return Cube(tuple(sets))


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
        chain: the slow-path chain a trap jumps to; for ``ct``, the chain the
            tracked packet is classified in next.
        commit: ``ct commit`` (zone 0) runs first: the packet's connection is
            stored in the kernel's conntrack (pass, redirect, mirror, mark only).
    """

    kind: FlowerKind | str
    device: str | None = None
    mark: int | None = None
    chain: int | None = None
    commit: bool = False

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
        if (self.kind in (TRAP, CT)) != (self.chain is not None):
            raise ValueError(
                f"{self.kind}: chain {'missing' if self.chain is None else 'unexpected'}"
            )
        if self.commit and self.kind in (DROP, TRAP, CT):
            raise ValueError(f"{self.kind}: only a verdict that lets a packet on commits it")

    def __str__(self) -> str:
        commit = "ct commit, " if self.commit else ""
        if self.kind in (REDIRECT, MIRROR):
            return f"{commit}{self.kind} dev {self.device}"
        if self.kind == MARK:
            return f"{commit}mark {self.mark:#x}"
        if self.kind == TRAP:
            return f"trap (goto chain {self.chain})"
        if self.kind == CT:
            return f"ct zone {CT_ZONE}, goto chain {self.chain}"
        return f"{commit}{self.kind}"


def action_for(ir_action: Action, commit: bool = False) -> FlowerAction:
    """The flower action that does what an IR action does (``commit``: and
    stores the packet's connection first, as the IR does for a new packet
    whose verdict is not drop)."""
    kind = FLOWER_KIND_OF[ir_action.kind]
    commit = commit and kind != FlowerKind.DROP
    if kind in (FlowerKind.REDIRECT, FlowerKind.MIRROR):
        return FlowerAction(kind, device=ir_action.device, commit=commit)
    if kind == FlowerKind.MARK:
        return FlowerAction(kind, mark=ir_action.mark, commit=commit)
    return FlowerAction(kind, commit=commit)


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
        if type(self.flags) is InstallFlags:
            return  # the agent builds one per cache rule: the enum call was a tenth of it
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
    tracked_at: int | None = None

    @property
    def trapped(self) -> bool:
        """True when the slow path decides (a trap matched, or nothing did in
        chain 0; in a chain after a ct action, no match lets the packet pass)."""
        if self.filter is None:
            return self.tracked_at is None
        return self.filter.action.kind == TRAP


def ordered(filters: Iterable[FlowerFilter]) -> list[FlowerFilter]:
    """Filters in the order tc tries them: chain 0 first (where classification
    starts), then the chains ``ct`` actions go to, each by priority, then handle.
    Filters of other chains (the slow path's) are left out."""
    chosen = list(filters)
    reached = {0} | {f.action.chain for f in chosen if f.action.kind == CT}
    return sorted(
        (f for f in chosen if f.chain in reached), key=lambda f: (f.chain, f.prio, f.handle)
    )


def classify(filters: Sequence[FlowerFilter], packet: Packet) -> FlowerVerdict:
    """Flower's verdict for an IR packet: the first chain-0 filter (by priority, then
    handle) whose keys match; a ``ct`` action tracks the packet (it then carries
    its state's ct_state flags) and classification goes on in its chain, where
    no match ends classification (tc passes the packet, FlowerVerdict(None)
    with ``tracked_at``). ``filters`` must already be :func:`ordered`.

    Within one priority the kernel tries masks in creation order; flowc's own
    lowering only shares a priority between filters no packet can match both
    of, so handle order is as good as the kernel's there.
    """
    chain, tracked = 0, False
    for _hop in range(len(filters) + 1):  # each hop moves to a chain; no loop is longer
        for f in filters:
            if f.chain == chain and f.match.matches(packet, tracked):
                if f.action.kind != CT:
                    return FlowerVerdict(f, tracked_at=chain if tracked else None)
                assert f.action.chain is not None
                chain, tracked = f.action.chain, True
                break
        else:
            return FlowerVerdict(None, tracked_at=chain if tracked else None)
    raise ValueError("ct actions loop between chains")


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
