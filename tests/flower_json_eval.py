"""An evaluator of flower filters as `tc -j filter show` prints them, independent
of flowc's flower model.

It reads only the JSON (``flowc compile --emit flower`` writes the same shape)
and none of flowc's flower code, and decides a concrete IR packet the way the
kernel does: from chain 0, priorities (``pref``) in ascending order, the first
priority holding a matching filter decides; inside it the kernel tries masks
in creation order, which a dump does not record, so every matching filter
there is a possible outcome (:func:`outcomes` returns them all). A ``goto
chain`` action, or no match at all in chain 0, hands the packet to the slow
path, which decides exactly as the policy (:data:`SLOW`).

Connection tracking: a ``ct`` action (zone 0, pipe) followed by ``goto chain
N`` tracks the packet and classification goes on in chain N, where the packet
carries conntrack's ct_state flags: +trk and +new, +est, +rel or +inv for the
IR states new, established, related, invalid, and an established or related
packet may carry +rpl or not (the IR does not say which direction), so both
are tried. Before any ct action a packet's ct_state is 0. No match in chain N
ends classification: tc passes the packet. ``ct commit`` (pipe) before a
verdict makes the outcome ``("ct commit", verdict...)``. An IP fragment that
reaches a ct action gets :data:`DEFRAG` (act_ct reassembles it, which no
policy verdict is).

What a packet looks like to flower, written here from the kernel's and
iproute2's behaviour rather than from flowc: an 802.1Q-tagged frame has
protocol 802.1Q and its inner ethertype under ``vlan_ethtype``; a key the
packet lacks (ports of ICMP, ICMP type of TCP) reads 0, as the flow dissector
leaves unparsed keys zeroed; ``ip_tos`` is the whole TOS byte (DSCP << 2, and
an IR packet's ECN bits are 0); ``tcp_flags`` is a 12-bit key of which an IR
packet sets the low eight. Keys or actions it does not know are an
:class:`EvalError`, never a guess.

Masks: a ``<key>_mask`` may be a JSON number (iproute2's JSON prints masks
as numbers) or a hex string (flowc writes them so), and the mask of an ICMP
key's ``value/mask`` string is read as hex, as flowc writes it; iproute2's
``flower_print_masked_u8`` prints that mask in decimal, so a real dump with a
partial ICMP mask means something else than flowc reads (flowc itself writes
exact ICMP keys only).

>>> dump = [{"protocol": "ip", "pref": 1, "kind": "flower", "chain": 0, "options": {
...     "handle": 1, "keys": {"eth_type": "ipv4", "ip_proto": "tcp", "dst_port": 80},
...     "actions": [{"kind": "gact", "control_action": {"type": "drop"}}]}}]
>>> from ir.packet import Packet
>>> sorted(outcomes(load(dump), Packet.make(family=4, ip_proto=6, dport=80)))
[('drop',)]
>>> sorted(outcomes(load(dump), Packet.make(family=4, ip_proto=6, dport=81)))
[('slow path',)]
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ir.interp import evaluate
from ir.model import Action, Policy
from ir.packet import Packet

# An outcome: ("pass",), ("drop",), ("redirect", dev), ("mirror", dev), ("mark", n),
# or SLOW (the slow path, i.e. the policy, decides).
Outcome = tuple[object, ...]
SLOW: Outcome = ("slow path",)
DEFRAG: Outcome = ("reassembled by act_ct",)
COMMIT = "ct commit"
# TCA_FLOWER_KEY_CT_FLAGS_* as iproute2 names them.
_CT_BITS = {"new": 1, "est": 2, "rel": 4, "trk": 8, "inv": 16, "rpl": 32}
_TRK = _CT_BITS["trk"]
# The ct_state flags a tracked packet of each IR state may carry.
_STATE_FLAGS = {
    0: (_TRK | 1,),
    1: (_TRK | 2, _TRK | 2 | 32),
    2: (_TRK | 4, _TRK | 4 | 32),
    3: (_TRK | 16,),
}

_ETHERTYPES = {"all": 0x0003, "ip": 0x0800, "ipv4": 0x0800, "ipv6": 0x86DD}
_ETHERTYPES |= {"802.1q": 0x8100, "802.1ad": 0x88A8}
_IPV4, _IPV6, _VLAN = 0x0800, 0x86DD, 0x8100
_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
_KNOWN_KEYS = {
    "ip_flags",
    "eth_type",
    "vlan_id",
    "vlan_ethtype",
    "ip_proto",
    "ip_tos",
    "ip_tos_mask",
    "src_ip",
    "dst_ip",
    "src_port",
    "src_port_mask",
    "dst_port",
    "dst_port_mask",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
    "ct_state",
}


class EvalError(ValueError):
    """JSON this evaluator does not model (so it cannot judge the filter)."""


@dataclass(frozen=True)
class JsonFilter:
    """One flower filter of a dump, as read here: its place, its keys as a
    predicate over packets, and its outcome."""

    chain: int
    prio: int
    handle: int
    test: Callable[[Packet, int], bool]
    outcome: Outcome

    def matches(self, packet: Packet, ct: int = 0) -> bool:
        """True when the filter's keys match ``packet`` carrying ct_state ``ct``."""
        return self.test(packet, ct)


def load(data: Any) -> list[JsonFilter]:
    """The flower filters of a `tc -j filter show` dump (header objects skipped)."""
    if not isinstance(data, list):
        raise EvalError("a dump is a JSON list")
    out = []
    for item in data:
        if "options" not in item:
            continue
        if item.get("kind") != "flower":
            raise EvalError(f"classifier {item.get('kind')!r}")
        options = item["options"]
        out.append(
            JsonFilter(
                chain=int(item.get("chain", 0)),
                prio=int(item["pref"]),
                handle=int(options.get("handle", 0)),
                test=_predicate(str(item.get("protocol", "all")), options.get("keys", {})),
                outcome=_outcome(options.get("actions", [])),
            )
        )
    return out


def deciders(
    filters: list[JsonFilter], packet: Packet, chain: int = 0, ct: int = 0
) -> list[JsonFilter]:
    """The filters the kernel may pick for ``packet`` (ct_state ``ct``) on
    ``chain``: those of the first priority holding a match that match it
    (empty: none matches)."""
    here = [f for f in filters if f.chain == chain]
    seen = dissected(packet)
    for prio in sorted({f.prio for f in here}):
        hits = [f for f in here if f.prio == prio and f.matches(seen, ct)]
        if hits:
            return hits
    return []


_TRANSPORT = ("sport", "dport", "tcp_flags", "icmp_type", "icmp_code")


def dissected(packet: Packet) -> Packet:
    """What cls_flower's flow dissector reads of ``packet``: it parses no transport
    header of an IP fragment (no FLOW_DISSECTOR_F_PARSE_1ST_FRAG), so a first
    fragment's ports, flags and ICMP type/code read 0 (a later one has none)."""
    if packet.get("frag") != 1:
        return packet
    values = packet.as_dict()
    values.update({name: 0 for name in _TRANSPORT})
    return Packet.make(**values)


def outcomes(filters: list[JsonFilter], packet: Packet) -> frozenset[Outcome]:
    """Every outcome the kernel may give ``packet``, from chain 0 on."""
    out: set[Outcome] = set()
    _walk(filters, packet, 0, 0, out, 0)
    return frozenset(out)


def _walk(
    filters: list[JsonFilter], packet: Packet, chain: int, ct: int, out: set[Outcome], hops: int
) -> None:
    if hops > len(filters):
        raise EvalError("ct actions loop between chains")
    hits = deciders(filters, packet, chain, ct)
    if not hits:
        # No match in chain 0: the slow path; after a ct action: tc passes it.
        out.add(SLOW if chain == 0 and ct == 0 else ("pass",))
        return
    for f in hits:
        if f.outcome[0] != "ct":
            out.add(f.outcome)
            continue
        if packet.get("frag") != 0:
            out.add(DEFRAG)
            continue
        for flags in _STATE_FLAGS[packet.get("state")]:
            _walk(filters, packet, int(f.outcome[1]), flags, out, hops + 1)  # type: ignore[call-overload]


def policy_outcome(action: Action, commit: bool = False) -> Outcome:
    """The outcome an IR action means, in this module's terms (``commit``: the
    packet is new and commits are observable, so a verdict but drop commits)."""
    if action.kind == "drop":
        return ("drop",)
    if action.kind == "allow":
        verdict: Outcome = ("pass",)
    elif action.kind in ("redirect", "mirror"):
        verdict = (action.kind, action.device)
    elif action.kind == "mark":
        verdict = ("mark", action.mark)
    else:
        raise EvalError(f"IR action {action.kind!r}")
    return (COMMIT, *verdict) if commit else verdict


def wrong_outcomes(
    policy: Policy, filters: list[JsonFilter], packet: Packet, *, stateful: bool = False
) -> set[Outcome]:
    """The possible outcomes for ``packet`` that are not the policy's verdict
    (the slow path is the policy's verdict); empty when flower agrees.
    ``stateful``: commits count (a new packet let on must be committed, no
    other); otherwise a commit is ignored."""
    commit = stateful and packet.get("state") == 0
    right = policy_outcome(evaluate(policy, packet).action, commit)
    seen = outcomes(filters, packet)
    if not stateful:
        seen = frozenset(o[1:] if o and o[0] == COMMIT else o for o in seen)
    return {o for o in seen if o not in (SLOW, right)}


def wrong_frame_outcomes(filters: list[JsonFilter], packet: Packet) -> set[Outcome]:
    """The possible outcomes for a malformed frame that looks like ``packet`` to
    flower which are not the slow path's (it drops such frames): anything but a
    trap, no match or a drop."""
    return {o for o in outcomes(filters, packet) if o not in (SLOW, ("drop",))}


# ------------------------------------------------------------------ actions
def _outcome(actions: list[dict[str, Any]]) -> Outcome:
    steps = sorted(actions, key=lambda a: int(a.get("order", 0)))
    if len(steps) == 2 and steps[0].get("kind") == "ct":
        ct, then = steps
        if int(ct.get("zone", 0)) != 0 or (ct.get("control_action") or {}).get("type") != "pipe":
            raise EvalError(f"ct {ct!r}")
        if ct.get("action") == "commit":
            verdict = _one_outcome(then)
            if verdict in (SLOW, ("drop",)):
                raise EvalError("ct commit before a trap or drop")
            return (COMMIT, *verdict)
        if ct.get("action") not in (None, ""):
            raise EvalError(f"ct {ct.get('action')!r}")
        control = then.get("control_action") or {}
        if then.get("kind") != "gact" or control.get("type") != "goto":
            raise EvalError("ct without commit must be followed by goto chain")
        return ("ct", int(control["chain"]))
    if len(steps) != 1:
        raise EvalError(f"{len(actions)} actions (one, or ct then one, is modelled)")
    return _one_outcome(steps[0])


def _one_outcome(a: dict[str, Any]) -> Outcome:
    kind = a.get("kind")
    control = a.get("control_action") or {}
    if kind == "gact":
        ctype = control.get("type")
        if ctype == "goto":
            return SLOW
        if ctype in ("pass", "ok"):
            return ("pass",)
        if ctype in ("drop", "shot"):
            return ("drop",)
        raise EvalError(f"gact {ctype!r}")
    if kind == "mirred" and a.get("direction") == "egress":
        if a.get("mirred_action") == "redirect" and control.get("type") == "stolen":
            return ("redirect", a["to_dev"])
        if a.get("mirred_action") == "mirror" and control.get("type") == "pass":
            return ("mirror", a["to_dev"])
    if kind == "skbedit" and "mark" in a and control.get("type") == "pass":
        return ("mark", int(a["mark"]))
    raise EvalError(f"action {a!r}")


# ------------------------------------------------------------------ keys
def _number(text: Any, base: int = 10) -> int:
    if isinstance(text, int):
        return text
    s = str(text).strip().lower()
    return int(s, 16) if s.startswith("0x") else int(s, base)


def _ethertype(text: Any) -> int:
    s = str(text).lower()
    return _ETHERTYPES[s] if s in _ETHERTYPES else int(s, 16)


def _value_mask(keys: dict[str, Any], name: str, width: int) -> tuple[int, int]:
    """A key printed as ``value`` with ``<name>_mask`` in hex, or as ``0xV/M``."""
    text = keys[name]
    full = (1 << width) - 1
    if isinstance(text, str) and "/" in text:
        value_text, mask_text = text.split("/")
        return _number(value_text), int(mask_text, 16)
    mask = _mask(keys[f"{name}_mask"]) if f"{name}_mask" in keys else full
    return _number(text), mask


def _mask(text: Any) -> int:
    """A ``<key>_mask``: a JSON number as iproute2 prints it, or a hex string as
    flowc writes it (the two disagree; see the module docstring)."""
    return text if isinstance(text, int) else int(str(text), 16)


def _address(text: str) -> tuple[int, int, int]:
    """``(version, value, mask)`` of ``addr``, ``addr/plen`` or ``addr/mask``."""
    addr_text, _, mask_text = text.partition("/")
    addr = ipaddress.ip_address(addr_text)
    width = addr.max_prefixlen
    full = (1 << width) - 1
    if not mask_text:
        mask = full
    elif mask_text.isdigit():
        mask = (full << (width - int(mask_text))) & full
    else:
        mask = int(ipaddress.ip_address(mask_text))
    return addr.version, int(addr), mask


def _ct_state(text: Any) -> tuple[int, int]:
    """``(value, mask)`` of iproute2's ``+trk+est-new``."""
    s = str(text)
    parts = re.findall(r"([+-])([a-z]+)", s)
    if not parts or "".join(sign + name for sign, name in parts) != s:
        raise EvalError(f"ct_state {text!r}")
    value = mask = 0
    for sign, name in parts:
        if name not in _CT_BITS:
            raise EvalError(f"ct_state flag {name!r}")
        mask |= _CT_BITS[name]
        value |= _CT_BITS[name] if sign == "+" else 0
    return value, mask


def _predicate(protocol_text: str, keys: dict[str, Any]) -> Callable[[Packet, int], bool]:
    """The packets a filter's protocol and keys match (with the ct_state flags
    the packet carries), as a function."""
    unknown = set(keys) - _KNOWN_KEYS
    if unknown:
        raise EvalError(f"keys {sorted(unknown)}")
    keys = dict(keys)
    ct_test: Callable[[int], bool] = lambda ct: True  # noqa: E731
    if "ct_state" in keys:
        ct_value, ct_mask = _ct_state(keys.pop("ct_state"))
        ct_test = lambda ct: ct & ct_mask == ct_value  # noqa: E731
    packet_test = _packet_predicate(protocol_text, keys)
    return lambda packet, ct: ct_test(ct) and packet_test(packet)


def _packet_predicate(protocol_text: str, keys: dict[str, Any]) -> Callable[[Packet], bool]:
    protocol = _ethertype(protocol_text)
    tests: list[Callable[[Packet], bool]] = []
    if protocol == 0x0003:
        if keys:
            raise EvalError("keys on a protocol-all filter")
        return lambda packet: True
    if protocol == _VLAN:
        tests.append(lambda p: p.get("vlan_tagged") == 1)
        if "vlan_id" in keys:
            vid = _number(keys["vlan_id"])
            tests.append(lambda p: p.get("vlan_id") == vid)
        network = _ethertype(keys["vlan_ethtype"]) if "vlan_ethtype" in keys else None
        if "eth_type" in keys and network is not None and _ethertype(keys["eth_type"]) != network:
            raise EvalError("eth_type differs from vlan_ethtype")
    else:
        if "vlan_id" in keys or "vlan_ethtype" in keys:
            raise EvalError("VLAN keys without protocol 802.1Q")
        if "eth_type" in keys and _ethertype(keys["eth_type"]) != protocol:
            raise EvalError("eth_type differs from protocol")
        tests.append(lambda p: p.get("vlan_tagged") == 0)
        network = protocol
    if network is not None:
        # An IR packet is IPv4 or IPv6: any other network ethertype matches nothing.
        family = {_IPV4: 4, _IPV6: 6}.get(network)
        tests.append(lambda p: p.get("family") == family)
    ip_keys = set(keys) - {"eth_type", "vlan_id", "vlan_ethtype"}
    if ip_keys and network not in (_IPV4, _IPV6):
        raise EvalError(f"IP keys {sorted(ip_keys)} without an IP ethertype")
    prefix = "ip4" if network == _IPV4 else "ip6"
    if "ip_proto" in keys:
        text = str(keys["ip_proto"]).lower()
        proto = _PROTOCOLS[text] if text in _PROTOCOLS else int(text, 16)
        tests.append(lambda p: p.get("ip_proto") == proto)
    elif ip_keys & {"src_port", "dst_port", "tcp_flags", "icmp_type", "icmp_code"}:
        raise EvalError("transport keys without ip_proto")
    if "ip_flags" in keys:
        flags = keys["ip_flags"]
        if not isinstance(flags, dict) or set(flags) - {"frag", "firstfrag"}:
            raise EvalError(f"ip_flags {flags!r}")
        # The dissector's FLOW_DIS_IS_FRAGMENT and FLOW_DIS_FIRST_FRAG.
        if "frag" in flags:
            want_frag = bool(flags["frag"])
            tests.append(lambda p: (p.get("frag") != 0) == want_frag)
        if "firstfrag" in flags:
            want_first = bool(flags["firstfrag"])
            tests.append(lambda p: (p.get("frag") == 1) == want_first)
    if "ip_tos" in keys:
        tos, tos_mask = _value_mask(keys, "ip_tos", 8)
        tests.append(lambda p: (p.get("dscp") << 2) & tos_mask == tos & tos_mask)
    for key, field in (("src_ip", "src"), ("dst_ip", "dst")):
        if key in keys:
            version, addr, mask = _address(str(keys[key]))
            if version != (4 if network == _IPV4 else 6):
                raise EvalError(f"{key} of the other IP version")
            name = f"{prefix}_{field}"
            tests.append(lambda p, n=name, a=addr, m=mask: p.get(n) & m == a & m)  # type: ignore[misc]
    for key, field in (("src_port", "sport"), ("dst_port", "dport")):
        if key in keys:
            tests.append(_port_test(keys, key, field))
    if "tcp_flags" in keys:
        flags, flags_mask = _value_mask(keys, "tcp_flags", 12)
        tests.append(lambda p: p.get("tcp_flags") & flags_mask == flags & flags_mask)
    for key in ("icmp_type", "icmp_code"):
        if key in keys:
            value_text, _, mask_text = str(keys[key]).partition("/")
            value, mask = int(value_text), int(mask_text, 16) if mask_text else 0xFF
            tests.append(lambda p, k=key, v=value, m=mask: p.get(k) & m == v & m)  # type: ignore[misc]
    return lambda packet: all(t(packet) for t in tests)


def _port_test(keys: dict[str, Any], key: str, field: str) -> Callable[[Packet], bool]:
    text = keys[key]
    if isinstance(text, dict):
        lo, hi = _number(text["start"]), _number(text["end"])
        return lambda p: lo <= p.get(field) <= hi
    value, mask = _value_mask(keys, key, 16)
    return lambda p: p.get(field) & mask == value & mask
