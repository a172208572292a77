"""tc-flower over netlink: the TCA_FLOWER_* attributes pyroute2 0.9.7 lacks.

pyroute2 has no flower classifier (its issue #1284), and its action classes
decode neither cookies nor the gact/mirred timestamps. This module defines
them on pyroute2's own netlink classes: :class:`flower_options` (every
TCA_FLOWER_* attribute of Linux 6.1, keys and masks, port ranges, flags,
in_hw_count), actions with TCA_ACT_COOKIE and stats, gact/mirred/skbedit
options with their ``tcf_t`` timestamps, and a ``tcmsg`` that knows TCA_CHAIN.
Importing the module registers ``flower`` with pyroute2's tcmsg plugins, so
pyroute2's own dumps decode flower options too.

:func:`encode_filter` and :func:`decode_filter` convert between
:class:`~backends.flower.rules.FlowerFilter` and these messages; what the
kernel reports back (packets, bytes, last use, in_hw) comes with the decoded
filter as an :class:`InstalledFilter`.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLA_F_NESTED, nla
from pyroute2.netlink.rtnl.tcmsg import plugins as tc_plugins
from pyroute2.netlink.rtnl.tcmsg import tcmsg
from pyroute2.netlink.rtnl.tcmsg.common import stats2

from backends.flower.keys import (
    ETH_TYPE,
    FLOWER_KEYS,
    Attribute,
    Cover,
    FlowerKey,
    Variant,
    key_attributes,
)
from backends.flower.rules import (
    CT,
    CT_ZONE,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ALL,
    PASS,
    TRAP,
    Cookie,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    PortRange,
)
from backends.targets import (
    TC_ACT_EXT_VAL_MASK,
    TC_ACT_GOTO_CHAIN,
    TC_ACT_OK,
    TC_ACT_PIPE,
    TC_ACT_SHOT,
    TC_ACT_STOLEN,
)
from ir.fields import PROTOCOL_BY_NUMBER
from ir.model import DROP, MARK, MIRROR, REDIRECT

RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46

TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS = 0xFFF2
TC_H_MIN_EGRESS = 0xFFF3

TCA_CLS_FLAGS_SKIP_HW = 1 << 0
TCA_CLS_FLAGS_SKIP_SW = 1 << 1
TCA_CLS_FLAGS_IN_HW = 1 << 2
TCA_CLS_FLAGS_NOT_IN_HW = 1 << 3


TCA_EGRESS_REDIR = 1
TCA_EGRESS_MIRROR = 2
# TCA_CT_ACT_* (include/uapi/linux/tc_act/tc_ct.h): the ct action's flags.
TCA_CT_ACT_COMMIT = 1 << 0

# USER_HZ: the unit of tcf_t timestamps the kernel reports (clock_t ticks ago).
USER_HZ = 100


def hook_parent(direction: str) -> int:
    """The clsact parent handle of an ingress or egress hook."""
    minor = TC_H_MIN_INGRESS if direction == "ingress" else TC_H_MIN_EGRESS
    return (TC_H_CLSACT & 0xFFFF0000) | minor


class _tcf_t(nla):
    """struct tcf_t: install, lastuse, expires, firstuse (clock_t ticks ago)."""

    fields = (("install", "Q"), ("lastuse", "Q"), ("expires", "Q"), ("firstuse", "Q"))


class _tc_gen(nla):
    """The tc_gen header every action's parameters start with."""

    fields = (
        ("index", "I"),
        ("capab", "I"),
        ("action", "i"),
        ("refcnt", "i"),
        ("bindcnt", "i"),
    )


class gact_options(nla):
    """TCA_GACT_*: generic actions (pass, drop, goto chain)."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        ("TCA_GACT_UNSPEC", "none"),
        ("TCA_GACT_TM", "tcf_t"),
        ("TCA_GACT_PARMS", "tc_gen"),
        ("TCA_GACT_PROB", "hex"),
        ("TCA_GACT_PAD", "hex"),
    )
    tcf_t = _tcf_t
    tc_gen = _tc_gen


class mirred_options(nla):
    """TCA_MIRRED_*: redirect and mirror to a device."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        ("TCA_MIRRED_UNSPEC", "none"),
        ("TCA_MIRRED_TM", "tcf_t"),
        ("TCA_MIRRED_PARMS", "tc_mirred"),
        ("TCA_MIRRED_PAD", "hex"),
    )
    tcf_t = _tcf_t

    class tc_mirred(nla):
        fields = (
            ("index", "I"),
            ("capab", "I"),
            ("action", "i"),
            ("refcnt", "i"),
            ("bindcnt", "i"),
            ("eaction", "i"),
            ("ifindex", "I"),
        )


class skbedit_options(nla):
    """TCA_SKBEDIT_*: the packet mark (and the rest, decoded as opaque)."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        ("TCA_SKBEDIT_UNSPEC", "none"),
        ("TCA_SKBEDIT_TM", "tcf_t"),
        ("TCA_SKBEDIT_PARMS", "tc_gen"),
        ("TCA_SKBEDIT_PRIORITY", "uint32"),
        ("TCA_SKBEDIT_QUEUE_MAPPING", "uint16"),
        ("TCA_SKBEDIT_MARK", "uint32"),
        ("TCA_SKBEDIT_PAD", "hex"),
        ("TCA_SKBEDIT_PTYPE", "uint16"),
        ("TCA_SKBEDIT_MASK", "uint32"),
        ("TCA_SKBEDIT_FLAGS", "uint64"),
        ("TCA_SKBEDIT_QUEUE_MAPPING_MAX", "uint16"),
    )
    tcf_t = _tcf_t
    tc_gen = _tc_gen


class ct_options(nla):
    """TCA_CT_*: the conntrack action (act_ct); flowc writes zone 0 and the
    commit flag, the rest decodes as opaque."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        ("TCA_CT_UNSPEC", "none"),
        ("TCA_CT_PARMS", "tc_gen"),
        ("TCA_CT_TM", "tcf_t"),
        ("TCA_CT_ACTION", "uint16"),
        ("TCA_CT_ZONE", "uint16"),
        ("TCA_CT_MARK", "uint32"),
        ("TCA_CT_MARK_MASK", "uint32"),
        ("TCA_CT_LABELS", "hex"),
        ("TCA_CT_LABELS_MASK", "hex"),
        ("TCA_CT_NAT_IPV4_MIN", "hex"),
        ("TCA_CT_NAT_IPV4_MAX", "hex"),
        ("TCA_CT_NAT_IPV6_MIN", "hex"),
        ("TCA_CT_NAT_IPV6_MAX", "hex"),
        ("TCA_CT_NAT_PORT_MIN", "hex"),
        ("TCA_CT_NAT_PORT_MAX", "hex"),
        # TCA_CT_HELPER_* came after Linux 6.1 (whose headers the uapi test
        # also reads); flowc never writes them, and a dump with one is refused.
        ("TCA_CT_PAD", "hex"),
    )
    tcf_t = _tcf_t
    tc_gen = _tc_gen


_ACTION_OPTIONS = {
    "gact": gact_options,
    "mirred": mirred_options,
    "skbedit": skbedit_options,
    "ct": ct_options,
}


class tca_act_prio(nla):
    """The action list: TCA_ACT_PRIO_1.. each one action."""

    nla_flags = NLA_F_NESTED
    nla_map = tuple((f"TCA_ACT_PRIO_{i}", "tca_act") for i in range(33))

    class tca_act(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (
            ("TCA_ACT_UNSPEC", "none"),
            ("TCA_ACT_KIND", "asciiz"),
            ("TCA_ACT_OPTIONS", "get_act_options"),
            ("TCA_ACT_INDEX", "uint32"),
            ("TCA_ACT_STATS", "stats2"),
            ("TCA_ACT_PAD", "hex"),
            ("TCA_ACT_COOKIE", "cdata"),
            ("TCA_ACT_FLAGS", "hex"),
            ("TCA_ACT_HW_STATS", "hex"),
            ("TCA_ACT_USED_HW_STATS", "hex"),
            ("TCA_ACT_IN_HW_COUNT", "uint32"),
        )
        stats2 = stats2

        @staticmethod
        def get_act_options(self: Any, *argv: Any, **kwarg: Any) -> Any:
            kind = self.get_attr("TCA_ACT_KIND")
            return _ACTION_OPTIONS.get(kind, self.hex)


class flower_options(nla):
    """TCA_FLOWER_*: every attribute of Linux 6.1's cls_flower; the ones flowc
    does not model decode as hex so a foreign filter is never misread."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        ("TCA_FLOWER_UNSPEC", "none"),
        ("TCA_FLOWER_CLASSID", "uint32"),
        ("TCA_FLOWER_INDEV", "asciiz"),
        ("TCA_FLOWER_ACT", "tca_act_prio"),
        ("TCA_FLOWER_KEY_ETH_DST", "hex"),
        ("TCA_FLOWER_KEY_ETH_DST_MASK", "hex"),
        ("TCA_FLOWER_KEY_ETH_SRC", "hex"),
        ("TCA_FLOWER_KEY_ETH_SRC_MASK", "hex"),
        ("TCA_FLOWER_KEY_ETH_TYPE", "be16"),
        ("TCA_FLOWER_KEY_IP_PROTO", "uint8"),
        ("TCA_FLOWER_KEY_IPV4_SRC", "ip4addr"),
        ("TCA_FLOWER_KEY_IPV4_SRC_MASK", "ip4addr"),
        ("TCA_FLOWER_KEY_IPV4_DST", "ip4addr"),
        ("TCA_FLOWER_KEY_IPV4_DST_MASK", "ip4addr"),
        ("TCA_FLOWER_KEY_IPV6_SRC", "ip6addr"),
        ("TCA_FLOWER_KEY_IPV6_SRC_MASK", "ip6addr"),
        ("TCA_FLOWER_KEY_IPV6_DST", "ip6addr"),
        ("TCA_FLOWER_KEY_IPV6_DST_MASK", "ip6addr"),
        ("TCA_FLOWER_KEY_TCP_SRC", "be16"),
        ("TCA_FLOWER_KEY_TCP_DST", "be16"),
        ("TCA_FLOWER_KEY_UDP_SRC", "be16"),
        ("TCA_FLOWER_KEY_UDP_DST", "be16"),
        ("TCA_FLOWER_FLAGS", "uint32"),
        ("TCA_FLOWER_KEY_VLAN_ID", "uint16"),
        ("TCA_FLOWER_KEY_VLAN_PRIO", "uint8"),
        ("TCA_FLOWER_KEY_VLAN_ETH_TYPE", "be16"),
        ("TCA_FLOWER_KEY_ENC_KEY_ID", "be32"),
        ("TCA_FLOWER_KEY_ENC_IPV4_SRC", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV4_SRC_MASK", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV4_DST", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV4_DST_MASK", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV6_SRC", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV6_SRC_MASK", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV6_DST", "hex"),
        ("TCA_FLOWER_KEY_ENC_IPV6_DST_MASK", "hex"),
        ("TCA_FLOWER_KEY_TCP_SRC_MASK", "be16"),
        ("TCA_FLOWER_KEY_TCP_DST_MASK", "be16"),
        ("TCA_FLOWER_KEY_UDP_SRC_MASK", "be16"),
        ("TCA_FLOWER_KEY_UDP_DST_MASK", "be16"),
        ("TCA_FLOWER_KEY_SCTP_SRC_MASK", "be16"),
        ("TCA_FLOWER_KEY_SCTP_DST_MASK", "be16"),
        ("TCA_FLOWER_KEY_SCTP_SRC", "be16"),
        ("TCA_FLOWER_KEY_SCTP_DST", "be16"),
        ("TCA_FLOWER_KEY_ENC_UDP_SRC_PORT", "hex"),
        ("TCA_FLOWER_KEY_ENC_UDP_SRC_PORT_MASK", "hex"),
        ("TCA_FLOWER_KEY_ENC_UDP_DST_PORT", "hex"),
        ("TCA_FLOWER_KEY_ENC_UDP_DST_PORT_MASK", "hex"),
        ("TCA_FLOWER_KEY_FLAGS", "be32"),
        ("TCA_FLOWER_KEY_FLAGS_MASK", "be32"),
        ("TCA_FLOWER_KEY_ICMPV4_CODE", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV4_CODE_MASK", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV4_TYPE", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV4_TYPE_MASK", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV6_CODE", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV6_CODE_MASK", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV6_TYPE", "uint8"),
        ("TCA_FLOWER_KEY_ICMPV6_TYPE_MASK", "uint8"),
        ("TCA_FLOWER_KEY_ARP_SIP", "hex"),
        ("TCA_FLOWER_KEY_ARP_SIP_MASK", "hex"),
        ("TCA_FLOWER_KEY_ARP_TIP", "hex"),
        ("TCA_FLOWER_KEY_ARP_TIP_MASK", "hex"),
        ("TCA_FLOWER_KEY_ARP_OP", "hex"),
        ("TCA_FLOWER_KEY_ARP_OP_MASK", "hex"),
        ("TCA_FLOWER_KEY_ARP_SHA", "hex"),
        ("TCA_FLOWER_KEY_ARP_SHA_MASK", "hex"),
        ("TCA_FLOWER_KEY_ARP_THA", "hex"),
        ("TCA_FLOWER_KEY_ARP_THA_MASK", "hex"),
        ("TCA_FLOWER_KEY_MPLS_TTL", "hex"),
        ("TCA_FLOWER_KEY_MPLS_BOS", "hex"),
        ("TCA_FLOWER_KEY_MPLS_TC", "hex"),
        ("TCA_FLOWER_KEY_MPLS_LABEL", "hex"),
        ("TCA_FLOWER_KEY_TCP_FLAGS", "be16"),
        ("TCA_FLOWER_KEY_TCP_FLAGS_MASK", "be16"),
        ("TCA_FLOWER_KEY_IP_TOS", "uint8"),
        ("TCA_FLOWER_KEY_IP_TOS_MASK", "uint8"),
        ("TCA_FLOWER_KEY_IP_TTL", "hex"),
        ("TCA_FLOWER_KEY_IP_TTL_MASK", "hex"),
        ("TCA_FLOWER_KEY_CVLAN_ID", "hex"),
        ("TCA_FLOWER_KEY_CVLAN_PRIO", "hex"),
        ("TCA_FLOWER_KEY_CVLAN_ETH_TYPE", "be16"),
        ("TCA_FLOWER_KEY_ENC_IP_TOS", "hex"),
        ("TCA_FLOWER_KEY_ENC_IP_TOS_MASK", "hex"),
        ("TCA_FLOWER_KEY_ENC_IP_TTL", "hex"),
        ("TCA_FLOWER_KEY_ENC_IP_TTL_MASK", "hex"),
        ("TCA_FLOWER_KEY_ENC_OPTS", "hex"),
        ("TCA_FLOWER_KEY_ENC_OPTS_MASK", "hex"),
        ("TCA_FLOWER_IN_HW_COUNT", "uint32"),
        ("TCA_FLOWER_KEY_PORT_SRC_MIN", "be16"),
        ("TCA_FLOWER_KEY_PORT_SRC_MAX", "be16"),
        ("TCA_FLOWER_KEY_PORT_DST_MIN", "be16"),
        ("TCA_FLOWER_KEY_PORT_DST_MAX", "be16"),
        ("TCA_FLOWER_KEY_CT_STATE", "uint16"),
        ("TCA_FLOWER_KEY_CT_STATE_MASK", "uint16"),
        ("TCA_FLOWER_KEY_CT_ZONE", "hex"),
        ("TCA_FLOWER_KEY_CT_ZONE_MASK", "hex"),
        ("TCA_FLOWER_KEY_CT_MARK", "hex"),
        ("TCA_FLOWER_KEY_CT_MARK_MASK", "hex"),
        ("TCA_FLOWER_KEY_CT_LABELS", "hex"),
        ("TCA_FLOWER_KEY_CT_LABELS_MASK", "hex"),
        ("TCA_FLOWER_KEY_MPLS_OPTS", "hex"),
        ("TCA_FLOWER_KEY_HASH", "hex"),
        ("TCA_FLOWER_KEY_HASH_MASK", "hex"),
        ("TCA_FLOWER_KEY_NUM_OF_VLANS", "hex"),
        ("TCA_FLOWER_KEY_PPPOE_SID", "hex"),
        ("TCA_FLOWER_KEY_PPP_PROTO", "hex"),
        ("TCA_FLOWER_KEY_L2TPV3_SID", "hex"),
    )
    tca_act_prio = tca_act_prio


class flower_tcmsg(tcmsg):
    """pyroute2's tcmsg with the attributes after TCA_STAB (TCA_CHAIN, TCA_HW_OFFLOAD)."""

    # pyroute2 compiles an nla_map once per class and marks it in a private class
    # attribute; without resetting it here, a subclass created after tcmsg was
    # compiled would silently reuse tcmsg's table (and drop TCA_CHAIN).
    _nlmsg_base__compiled_nla = False

    nla_map = (
        ("TCA_UNSPEC", "none"),
        ("TCA_KIND", "asciiz"),
        ("TCA_OPTIONS", "get_options"),
        ("TCA_STATS", "stats"),
        ("TCA_XSTATS", "get_xstats"),
        ("TCA_RATE", "hex"),
        ("TCA_FCNT", "hex"),
        ("TCA_STATS2", "get_stats2"),
        ("TCA_STAB", "hex"),
        ("TCA_PAD", "hex"),
        ("TCA_DUMP_INVISIBLE", "flag"),
        ("TCA_CHAIN", "uint32"),
        ("TCA_HW_OFFLOAD", "uint8"),
        ("TCA_INGRESS_BLOCK", "uint32"),
        ("TCA_EGRESS_BLOCK", "uint32"),
        ("TCA_DUMP_FLAGS", "hex"),
    )


# Register flower with pyroute2's tc plugins: `options` is the class its
# tcmsg.get_options() resolves TCA_OPTIONS to for kind "flower".
options = flower_options
tc_plugins["flower"] = sys.modules[__name__]


# ------------------------------------------------------------------- encode
class FlowerCodecError(ValueError):
    """A filter that cannot be put into (or read out of) a netlink message."""


def _key_attrs(m: FlowerMatch) -> list[list[Any]]:
    attrs: list[list[Any]] = []
    if m.protocol != ETH_P_ALL:
        attrs.append([ETH_TYPE.name, m.protocol])
    for flower_key, variant, key in wire_keys(m):
        if isinstance(key, PortRange):
            assert flower_key.ranges is not None
            attrs.append([flower_key.ranges[0].name, key.lo])
            attrs.append([flower_key.ranges[1].name, key.hi])
        elif variant.mask is None:
            attrs.append([variant.value.name, _to_nla(variant.value, key)])
        else:
            attrs.append([variant.value.name, _to_nla(variant.value, key.value)])
            attrs.append([variant.mask.name, _to_nla(variant.mask, key.mask)])
    return attrs


# How refusals name a key.
_KEY_NOUN = {Cover.ADDRESS: "an address", Cover.PORT: "a port"}


def wire_keys(m: FlowerMatch) -> list[tuple[FlowerKey, Variant, Any]]:
    """Each key of ``m`` with the variant that carries it on the wire, in the order
    both encoders write them; raises FlowerCodecError for a key netlink cannot
    carry with the filter's ethertype and protocol."""
    out = []
    family = m.family
    for flower_key in FLOWER_KEYS:
        key = getattr(m, flower_key.name)
        if key is None:
            continue
        noun = _KEY_NOUN.get(flower_key.cover, f"a {flower_key.name}")
        if flower_key.needs_family and family is None:
            raise FlowerCodecError(f"{noun} key needs an IP ethertype")
        variant = flower_key.variant_for(family, m.ip_proto)
        if variant is None and not isinstance(key, PortRange):
            *most, last = [
                PROTOCOL_BY_NUMBER[v.ip_proto] for v in flower_key.variants if v.ip_proto
            ]
            raise FlowerCodecError(f"{noun} key needs ip_proto {', '.join(most)} or {last}")
        out.append((flower_key, variant or flower_key.variants[0], key))
    return out


def _to_nla(attribute: Attribute, value: int) -> Any:
    """The value as pyroute2 takes it for the attribute's nla type."""
    if not attribute.codec.address:
        return value
    if attribute.codec.size == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


def _from_nla(attribute: Attribute, value: Any) -> int:
    return int(ipaddress.ip_address(value)) if attribute.codec.address else int(value)


def action_steps(a: FlowerAction) -> list[FlowerAction | bool]:
    """The tc actions one flowc action is, in order: a ct step (True: ct
    commit, False: ct) before the verdict for ``ct`` (then goto chain) and for
    commits, else the verdict alone. Both encoders write this list."""
    if a.kind == CT:
        return [False, FlowerAction(TRAP, chain=a.chain)]
    if a.commit:
        return [True, FlowerAction(a.kind, device=a.device, mark=a.mark)]
    return [a]


def _action_attrs(
    a: FlowerAction, cookie: Cookie | None, ifindex_of: Callable[[str], int]
) -> dict[str, Any]:
    """TCA_FLOWER_ACT: the action list, the cookie on its last action."""
    steps = action_steps(a)
    out = []
    for n, step in enumerate(steps):
        act = _ct_attrs(step) if isinstance(step, bool) else _one_action_attrs(step, ifindex_of)
        if cookie is not None and n == len(steps) - 1:
            act.append(["TCA_ACT_COOKIE", cookie.encode()])
        out.append([f"TCA_ACT_PRIO_{n + 1}", {"attrs": act}])
    return {"attrs": out}


def _ct_attrs(commit: bool) -> list[list[Any]]:
    opts = {
        "attrs": [
            ["TCA_CT_PARMS", {"action": TC_ACT_PIPE}],
            ["TCA_CT_ACTION", TCA_CT_ACT_COMMIT if commit else 0],
            ["TCA_CT_ZONE", CT_ZONE],
        ]
    }
    return [["TCA_ACT_KIND", "ct"], ["TCA_ACT_OPTIONS", opts]]


def _one_action_attrs(a: FlowerAction, ifindex_of: Callable[[str], int]) -> list[list[Any]]:
    if a.kind in (PASS, DROP, TRAP):
        control = {PASS: TC_ACT_OK, DROP: TC_ACT_SHOT}.get(a.kind)
        if a.kind == TRAP:
            assert a.chain is not None
            control = TC_ACT_GOTO_CHAIN | a.chain
        kind = "gact"
        opts: dict[str, Any] = {"attrs": [["TCA_GACT_PARMS", {"action": control}]]}
    elif a.kind in (REDIRECT, MIRROR):
        assert a.device is not None
        parms = {
            "action": TC_ACT_STOLEN if a.kind == REDIRECT else TC_ACT_OK,
            "eaction": TCA_EGRESS_REDIR if a.kind == REDIRECT else TCA_EGRESS_MIRROR,
            "ifindex": ifindex_of(a.device),
        }
        kind, opts = "mirred", {"attrs": [["TCA_MIRRED_PARMS", parms]]}
    else:
        kind = "skbedit"
        opts = {
            "attrs": [
                ["TCA_SKBEDIT_PARMS", {"action": TC_ACT_OK}],
                ["TCA_SKBEDIT_MARK", a.mark],
            ]
        }
    return [["TCA_ACT_KIND", kind], ["TCA_ACT_OPTIONS", opts]]


def encode_filter(
    f: FlowerFilter,
    ifindex: int,
    direction: str,
    ifindex_of: Callable[[str], int] = socket.if_nametoindex,
) -> flower_tcmsg:
    """The tcmsg body adding ``f`` on the clsact hook of ``ifindex`` (header fields are
    the caller's: message type, flags, sequence)."""
    msg = flower_tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = f.handle
    msg["parent"] = hook_parent(direction)
    msg["info"] = (f.prio << 16) | socket.htons(f.match.protocol)
    flags = {"skip_hw": TCA_CLS_FLAGS_SKIP_HW, "skip_sw": TCA_CLS_FLAGS_SKIP_SW}.get(f.flags, 0)
    options = _key_attrs(f.match)
    options.append(["TCA_FLOWER_FLAGS", flags])
    options.append(["TCA_FLOWER_ACT", _action_attrs(f.action, f.cookie, ifindex_of)])
    attrs: list[list[Any]] = [["TCA_KIND", "flower"], ["TCA_OPTIONS", {"attrs": options}]]
    if f.chain:
        attrs.append(["TCA_CHAIN", f.chain])
    msg["attrs"] = attrs
    return msg


def delete_message(f: FlowerFilter, ifindex: int, direction: str) -> flower_tcmsg:
    """The tcmsg body deleting filter (chain, prio, protocol, handle) from a hook."""
    msg = flower_tcmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = f.handle
    msg["parent"] = hook_parent(direction)
    msg["info"] = (f.prio << 16) | socket.htons(f.match.protocol)
    attrs: list[list[Any]] = [["TCA_KIND", "flower"]]
    if f.chain:
        attrs.append(["TCA_CHAIN", f.chain])
    msg["attrs"] = attrs
    return msg


def message_bytes(msg: flower_tcmsg, msg_type: int, flags: int, seq: int) -> bytes:
    """A tcmsg with its netlink header filled in (port id 0: the kernel's), encoded."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


# ------------------------------------------------------------------- decode
@dataclass(frozen=True, slots=True)
class InstalledFilter:
    """A flower filter as the kernel reports it.

    Attributes:
        filter: the filter (match, action, flags, cookie).
        packets, bytes: the action's counters.
        last_used: seconds since the filter last matched (None: never).
        in_hw: the kernel says the filter is in hardware.
        in_hw_count: how many devices hold it in hardware.
    """

    filter: FlowerFilter
    packets: int
    bytes: int
    last_used: float | None
    in_hw: bool
    in_hw_count: int


_HANDLED = {"TCA_FLOWER_FLAGS", "TCA_FLOWER_ACT", "TCA_FLOWER_IN_HW_COUNT"} | {
    attribute.name for attribute in key_attributes()
}


def _decode_key(opts: Any, flower_key: FlowerKey) -> Masked | PortRange | int | None:
    """One key from decoded flower options: a native range first, else the first
    variant whose value attribute is present (a missing mask is a full one)."""
    if flower_key.ranges is not None:
        lo, hi = (opts.get_attr(a.name) for a in flower_key.ranges)
        if lo is not None and hi is not None:
            return PortRange(lo, hi)
    for variant in flower_key.variants:
        value = opts.get_attr(variant.value.name)
        if value is None:
            continue
        number = _from_nla(variant.value, value)
        if variant.mask is None:
            return number
        mask_value = opts.get_attr(variant.mask.name)
        mask = variant.full_mask if mask_value is None else _from_nla(variant.mask, mask_value)
        return Masked(number & mask, mask)
    return None


def decode_filter(
    msg: Any, name_of: Callable[[int], str] = socket.if_indextoname
) -> InstalledFilter | None:
    """The flower filter in a decoded RTM_NEWTFILTER message (None for the per-priority
    header message a dump starts each priority with). Raises FlowerCodecError for
    keys or actions flowc does not model, so a foreign filter is never misread."""
    if msg.get_attr("TCA_KIND") != "flower":
        raise FlowerCodecError(f"classifier {msg.get_attr('TCA_KIND')!r} is not flower")
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None:
        return None
    info = msg["info"]
    prio, protocol = info >> 16, socket.ntohs(info & 0xFFFF)
    unknown = sorted({name for name, _ in opts["attrs"]} - _HANDLED)
    if unknown:
        raise FlowerCodecError(
            f"prio {prio} handle {msg['handle']:#x}: "
            f"keys flowc does not model: {', '.join(unknown)}"
        )
    keys = {}
    for flower_key in FLOWER_KEYS:
        if flower_key.vlan_protocols_only and protocol not in (ETH_P_8021Q, ETH_P_8021AD):
            continue
        keys[flower_key.name] = _decode_key(opts, flower_key)
    match = FlowerMatch(protocol, **keys)  # type: ignore[arg-type]
    flags = opts.get_attr("TCA_FLOWER_FLAGS") or 0
    flag_name = (
        "skip_hw"
        if flags & TCA_CLS_FLAGS_SKIP_HW
        else "skip_sw"
        if flags & TCA_CLS_FLAGS_SKIP_SW
        else "none"
    )
    acts = opts.get_attr("TCA_FLOWER_ACT")
    actions = [a for _name, a in acts["attrs"]] if acts is not None else []
    where = f"prio {prio} handle {msg['handle']:#x}"
    if len(actions) == 2 and actions[0].get_attr("TCA_ACT_KIND") == "ct":
        commit = _decode_ct(actions[0], where)
        action, cookie, packets, nbytes, last_used = _decode_action(actions[1], name_of)
        if commit and action.kind in (PASS, REDIRECT, MIRROR, MARK):
            action = FlowerAction(action.kind, action.device, action.mark, commit=True)
        elif not commit and action.kind == TRAP:
            action = FlowerAction(CT, chain=action.chain)
        else:
            raise FlowerCodecError(f"{where}: ct then {action.kind} is not one flowc models")
        first_cookie = actions[0].get_attr("TCA_ACT_COOKIE")
        if cookie is None and first_cookie is not None:
            cookie = Cookie.decode(bytes(first_cookie))
    elif len(actions) == 1:
        action, cookie, packets, nbytes, last_used = _decode_action(actions[0], name_of)
    else:
        raise FlowerCodecError(f"{where}: {len(actions)} actions, flowc models one, or ct then one")
    chain = msg.get_attr("TCA_CHAIN") or 0
    flt = FlowerFilter(chain, prio, msg["handle"], match, action, flag_name, cookie)
    in_hw_count = opts.get_attr("TCA_FLOWER_IN_HW_COUNT") or 0
    return InstalledFilter(
        flt, packets, nbytes, last_used, bool(flags & TCA_CLS_FLAGS_IN_HW), in_hw_count
    )


def _decode_ct(act: Any, where: str) -> bool:
    """Whether a decoded ct action commits; refuses any ct flowc does not write
    (another zone, NAT, clear, force, marks or labels, a control but pipe)."""
    opts = act.get_attr("TCA_ACT_OPTIONS")
    parms = opts.get_attr("TCA_CT_PARMS")
    flags = opts.get_attr("TCA_CT_ACTION") or 0
    zone = opts.get_attr("TCA_CT_ZONE") or 0
    others = sorted(
        name
        for name, _value in opts["attrs"]
        if name not in ("TCA_CT_PARMS", "TCA_CT_TM", "TCA_CT_ACTION", "TCA_CT_ZONE", "TCA_CT_PAD")
    )
    if (
        parms is None
        or parms["action"] != TC_ACT_PIPE
        or flags & ~TCA_CT_ACT_COMMIT
        or zone != CT_ZONE
        or others
    ):
        raise FlowerCodecError(f"{where}: a ct action flowc does not model")
    return bool(flags & TCA_CT_ACT_COMMIT)


def _decode_action(
    act: Any, name_of: Callable[[int], str]
) -> tuple[FlowerAction, Cookie | None, int, int, float | None]:
    kind = act.get_attr("TCA_ACT_KIND")
    opts = act.get_attr("TCA_ACT_OPTIONS")
    cookie_bytes = act.get_attr("TCA_ACT_COOKIE")
    cookie = Cookie.decode(bytes(cookie_bytes)) if cookie_bytes is not None else None
    stats = act.get_attr("TCA_ACT_STATS")
    basic = stats.get_attr("TCA_STATS_BASIC") if stats is not None else None
    packets = basic["packets"] if basic is not None else 0
    nbytes = basic["bytes"] if basic is not None else 0
    if kind == "gact":
        parms, tm = opts.get_attr("TCA_GACT_PARMS"), opts.get_attr("TCA_GACT_TM")
        control = parms["action"]
        if control & ~TC_ACT_EXT_VAL_MASK == TC_ACT_GOTO_CHAIN:
            action = FlowerAction(TRAP, chain=control & TC_ACT_EXT_VAL_MASK)
        elif control == TC_ACT_OK:
            action = FlowerAction(PASS)
        elif control == TC_ACT_SHOT:
            action = FlowerAction(DROP)
        else:
            raise FlowerCodecError(f"gact control action {control} is not one flowc models")
    elif kind == "mirred":
        parms, tm = opts.get_attr("TCA_MIRRED_PARMS"), opts.get_attr("TCA_MIRRED_TM")
        eaction = {TCA_EGRESS_REDIR: REDIRECT, TCA_EGRESS_MIRROR: MIRROR}.get(parms["eaction"])
        if eaction is None:
            raise FlowerCodecError(f"mirred action {parms['eaction']} is not one flowc models")
        try:
            device = name_of(parms["ifindex"])
        except OSError:
            device = f"ifindex:{parms['ifindex']}"
        action = FlowerAction(eaction, device=device)
    elif kind == "skbedit" and opts.get_attr("TCA_SKBEDIT_MARK") is not None:
        tm = opts.get_attr("TCA_SKBEDIT_TM")
        action = FlowerAction(MARK, mark=opts.get_attr("TCA_SKBEDIT_MARK"))
    else:
        raise FlowerCodecError(f"action {kind!r} is not one flowc models")
    last_used = None
    if tm is not None and tm["firstuse"] != 0:
        last_used = tm["lastuse"] / USER_HZ
    return action, cookie, packets, nbytes, last_used
