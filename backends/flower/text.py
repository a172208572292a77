"""Flower filters as text: the JSON `tc -j filter show` prints, and `tc -batch` lines.

:func:`to_tc_json` writes filters in the shape iproute2 prints them (a header
object per priority, then one object per filter with ``options``), so the
output of ``flowc compile --emit flower`` and of ``tc -j filter show`` are read
by the same :func:`parse_tc_json`, which takes any such dump, including
filters flowc did not write. :func:`to_tc_batch` writes a file for
``tc -batch`` that installs the same filters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from backends.flower.rules import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_ALL,
    ETH_P_IP,
    ETH_P_IPV6,
    PASS,
    TRAP,
    Cookie,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    PortRange,
)
from ir.fields import FAMILY_IPV4, PROTOCOL_BY_NUMBER, PROTOCOL_NAMES
from ir.model import DROP, MARK, MIRROR, REDIRECT

PROTOCOL_TEXT = {
    ETH_P_ALL: "all",
    ETH_P_IP: "ip",
    ETH_P_IPV6: "ipv6",
    ETH_P_8021Q: "802.1Q",
    ETH_P_8021AD: "802.1ad",
}
# tc prints eth_type/vlan_ethtype keys with these names.
ETHTYPE_TEXT = {
    ETH_P_IP: "ipv4",
    ETH_P_IPV6: "ipv6",
    ETH_P_8021Q: "802.1Q",
    ETH_P_8021AD: "802.1ad",
}
_TEXT_PROTOCOL = {v.lower(): k for k, v in PROTOCOL_TEXT.items()} | {
    v.lower(): k for k, v in ETHTYPE_TEXT.items()
}


class FlowerTextError(ValueError):
    """A filter dump or rule list that is not flower JSON flowc can read."""


# ------------------------------------------------------------------ JSON out
def _ip_text(key: Masked, family: int | None) -> str:
    width = 32 if family == FAMILY_IPV4 else 128
    addr = ipaddress.ip_address(key.value) if width == 32 else ipaddress.IPv6Address(key.value)
    full = (1 << width) - 1
    if key.mask == full:
        return str(addr)
    plen = bin(key.mask).count("1")
    if key.mask == (full << (width - plen)) & full:
        return f"{addr}/{plen}"
    mask = ipaddress.ip_address(key.mask) if width == 32 else ipaddress.IPv6Address(key.mask)
    return f"{addr}/{mask}"


def _proto_text(proto: int) -> str:
    name = PROTOCOL_BY_NUMBER.get(proto)
    return name if name else f"{proto:02x}"


def _keys_json(m: FlowerMatch) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if m.vlan_id is not None:
        keys["vlan_id"] = m.vlan_id
    if m.vlan_ethtype is not None:
        keys["vlan_ethtype"] = ETHTYPE_TEXT.get(m.vlan_ethtype, f"{m.vlan_ethtype:04x}")
    if m.eth_type is not None:
        keys["eth_type"] = ETHTYPE_TEXT.get(m.eth_type, f"{m.eth_type:04x}")
    if m.ip_proto is not None:
        keys["ip_proto"] = _proto_text(m.ip_proto)
    if m.ip_tos is not None:
        keys["ip_tos"] = m.ip_tos.value
        if m.ip_tos.mask != 0xFF:
            keys["ip_tos_mask"] = f"{m.ip_tos.mask:x}"
    for name in ("src_ip", "dst_ip"):
        key = getattr(m, name)
        if key is not None:
            keys[name] = _ip_text(key, m.family)
    for name in ("dst_port", "src_port"):
        port = getattr(m, name)
        if isinstance(port, PortRange):
            keys[name] = {"start": port.lo, "end": port.hi}
        elif port is not None:
            keys[name] = port.value
            if port.mask != 0xFFFF:
                keys[f"{name}_mask"] = f"{port.mask:x}"
    if m.tcp_flags is not None:
        keys["tcp_flags"] = f"{m.tcp_flags.value:#x}/{m.tcp_flags.mask:x}"
    for name in ("icmp_type", "icmp_code"):
        key = getattr(m, name)
        if key is not None:
            keys[name] = str(key.value) if key.mask == 0xFF else f"{key.value}/{key.mask:x}"
    return keys


def _action_json(a: FlowerAction, cookie: Cookie | None) -> dict[str, Any]:
    out: dict[str, Any] = {"order": 1}
    if a.kind in (PASS, DROP):
        out |= {"kind": "gact", "control_action": {"type": a.kind}}
    elif a.kind == TRAP:
        out |= {"kind": "gact", "control_action": {"type": "goto", "chain": a.chain}}
    elif a.kind in (REDIRECT, MIRROR):
        out |= {
            "kind": "mirred",
            "mirred_action": a.kind,
            "direction": "egress",
            "to_dev": a.device,
            "control_action": {"type": "stolen" if a.kind == REDIRECT else "pass"},
        }
    else:
        out |= {"kind": "skbedit", "mark": a.mark, "control_action": {"type": "pass"}}
    if cookie is not None:
        out["cookie"] = cookie.encode().hex()
    return out


def to_tc_json(filters: Iterable[FlowerFilter]) -> list[dict[str, Any]]:
    """Filters as `tc -j filter show` prints them (header object per priority)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    for f in sorted(filters, key=lambda f: (f.chain, f.prio, f.handle)):
        protocol = PROTOCOL_TEXT.get(f.match.protocol, f"{f.match.protocol:04x}")
        head = {"protocol": protocol, "pref": f.prio, "kind": "flower", "chain": f.chain}
        if (f.chain, f.prio) not in seen:
            seen.add((f.chain, f.prio))
            out.append(dict(head))
        options: dict[str, Any] = {"handle": f.handle, "keys": _keys_json(f.match)}
        if f.flags == "skip_hw":
            options["skip_hw"] = True
        elif f.flags == "skip_sw":
            options["skip_sw"] = True
        options["actions"] = [_action_json(f.action, f.cookie)]
        out.append(head | {"options": options})
    return out


# ------------------------------------------------------------------- JSON in
def _int(text: Any, base: int = 10) -> int:
    if isinstance(text, int):
        return text
    s = str(text).strip().lower()
    if s.startswith("0x"):
        return int(s, 16)
    return int(s, base)


def _ethtype(text: Any) -> int:
    s = str(text).lower()
    if s in _TEXT_PROTOCOL:
        return _TEXT_PROTOCOL[s]
    return _int(s, 16)


def _ip_key(text: str) -> tuple[Masked, int]:
    addr_text, _, mask_text = str(text).partition("/")
    addr = ipaddress.ip_address(addr_text)
    width = addr.max_prefixlen
    full = (1 << width) - 1
    if not mask_text:
        mask = full
    elif mask_text.isdigit():
        plen = int(mask_text)
        mask = (full << (width - plen)) & full
    else:
        mask = int(ipaddress.ip_address(mask_text))
    return Masked(int(addr) & mask, mask), 4 if width == 32 else 6


def _masked_text(text: Any, width_mask: int) -> Masked:
    value_text, _, mask_text = str(text).partition("/")
    value = _int(value_text)
    mask = int(mask_text, 16) if mask_text else width_mask
    return Masked(value & mask, mask)


def _match_from_json(protocol_text: str, keys: dict[str, Any]) -> FlowerMatch:
    protocol = _ethtype(protocol_text)
    kw: dict[str, Any] = {}
    if "vlan_id" in keys:
        kw["vlan_id"] = _int(keys["vlan_id"])
    if "vlan_ethtype" in keys:
        kw["vlan_ethtype"] = _ethtype(keys["vlan_ethtype"])
    if "ip_proto" in keys:
        text = str(keys["ip_proto"]).lower()
        kw["ip_proto"] = PROTOCOL_NAMES[text] if text in PROTOCOL_NAMES else _int(text, 16)
    if "ip_tos" in keys:
        mask = int(str(keys.get("ip_tos_mask", "ff")), 16)
        kw["ip_tos"] = Masked(_int(keys["ip_tos"]) & mask, mask)
    for name in ("src_ip", "dst_ip"):
        if name in keys:
            kw[name], _family = _ip_key(keys[name])
    for name in ("src_port", "dst_port"):
        if name not in keys:
            continue
        value = keys[name]
        if isinstance(value, dict):
            kw[name] = PortRange(_int(value["start"]), _int(value["end"]))
        else:
            mask = int(str(keys.get(f"{name}_mask", "ffff")), 16)
            kw[name] = Masked(_int(value) & mask, mask)
    if "tcp_flags" in keys:
        flags = _masked_text(keys["tcp_flags"], 0xFFF)
        kw["tcp_flags"] = flags
    for name in ("icmp_type", "icmp_code"):
        if name in keys:
            kw[name] = _masked_text(keys[name], 0xFF)
    if (
        "eth_type" in keys
        and protocol not in (ETH_P_8021Q, ETH_P_8021AD, ETH_P_ALL)
        and _ethtype(keys["eth_type"]) != protocol
    ):
        raise FlowerTextError(
            f"eth_type {keys['eth_type']} disagrees with protocol {protocol_text}"
        )
    known = {
        "vlan_id",
        "vlan_ethtype",
        "eth_type",
        "ip_proto",
        "ip_tos",
        "ip_tos_mask",
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
        "src_port_mask",
        "dst_port_mask",
        "tcp_flags",
        "icmp_type",
        "icmp_code",
    }
    unknown = sorted(set(keys) - known)
    if unknown:
        # A key flowc does not model would make the filter narrower than read;
        # refusing is the only answer that cannot claim a wrong verdict.
        raise FlowerTextError(f"flower key(s) flowc does not model: {', '.join(unknown)}")
    return FlowerMatch(protocol, **kw)


def _action_from_json(actions: Sequence[dict[str, Any]]) -> tuple[FlowerAction, Cookie | None]:
    if not actions:
        raise FlowerTextError("filter without actions")
    first = actions[0]
    cookie = Cookie.decode(bytes.fromhex(first["cookie"])) if "cookie" in first else None
    kind = first.get("kind")
    control = first.get("control_action", {}) or {}
    if kind == "gact":
        ctype = control.get("type")
        if ctype == "goto":
            return FlowerAction(TRAP, chain=_int(control["chain"])), cookie
        if ctype in ("pass", "ok"):
            return FlowerAction(PASS), cookie
        if ctype in ("drop", "shot"):
            return FlowerAction(DROP), cookie
        raise FlowerTextError(f"gact control action {ctype!r} is not one flowc models")
    if kind == "mirred":
        mirred = first.get("mirred_action")
        if first.get("direction") != "egress" or mirred not in (REDIRECT, MIRROR):
            raise FlowerTextError(f"mirred {first.get('direction')} {mirred} is not modelled")
        return FlowerAction(mirred, device=first["to_dev"]), cookie
    if kind == "skbedit" and "mark" in first:
        return FlowerAction(MARK, mark=_int(first["mark"])), cookie
    raise FlowerTextError(f"action {kind!r} is not one flowc models")


def parse_tc_json(data: Any) -> list[FlowerFilter]:
    """Flower filters from a `tc -j filter show` dump (or flowc's own --emit flower).

    Header objects (no ``options``) are skipped; filters of other classifiers
    are an error, since what they decide is unknown here.
    """
    if not isinstance(data, list):
        raise FlowerTextError("expected a JSON list, as `tc -j filter show` prints")
    out = []
    for n, item in enumerate(data):
        if not isinstance(item, dict):
            raise FlowerTextError(f"entry {n}: expected an object")
        if "options" not in item:
            continue
        where = f"entry {n} (pref {item.get('pref')})"
        if item.get("kind") != "flower":
            raise FlowerTextError(f"{where}: classifier {item.get('kind')!r} is not flower")
        try:
            options = item["options"]
            match = _match_from_json(str(item.get("protocol", "all")), options.get("keys", {}))
            action, cookie = _action_from_json(options.get("actions", []))
            flags = (
                "skip_hw"
                if options.get("skip_hw")
                else "skip_sw"
                if options.get("skip_sw")
                else "none"
            )
            out.append(
                FlowerFilter(
                    chain=_int(item.get("chain", 0)),
                    prio=_int(item["pref"]),
                    handle=_int(options.get("handle", 0)),
                    match=match,
                    action=action,
                    flags=flags,
                    cookie=cookie,
                )
            )
        except FlowerTextError as err:
            raise FlowerTextError(f"{where}: {err}") from None
        except (KeyError, ValueError, TypeError) as err:
            raise FlowerTextError(f"{where}: malformed ({err})") from None
    return out


# ------------------------------------------------------------------ tc -batch
def _match_words(m: FlowerMatch) -> list[str]:
    words: list[str] = []
    if m.vlan_id is not None:
        words += ["vlan_id", str(m.vlan_id)]
    if m.vlan_ethtype is not None:
        words += ["vlan_ethtype", PROTOCOL_TEXT.get(m.vlan_ethtype, f"{m.vlan_ethtype:#06x}")]
    if m.ip_proto is not None:
        name = PROTOCOL_BY_NUMBER.get(m.ip_proto)
        # tc reads a numeric ip_proto as hex.
        words += ["ip_proto", name if name else f"{m.ip_proto:#x}"]
    if m.ip_tos is not None:
        words += ["ip_tos", f"{m.ip_tos.value:#x}/{m.ip_tos.mask:#x}"]
    for name in ("src_ip", "dst_ip"):
        key = getattr(m, name)
        if key is not None:
            words += [name, _ip_text(key, m.family)]
    for name in ("src_port", "dst_port"):
        port = getattr(m, name)
        if isinstance(port, PortRange):
            words += [name, f"{port.lo}-{port.hi}"]
        elif port is not None:
            words += [
                name,
                str(port.value) if port.mask == 0xFFFF else f"{port.value}/{port.mask:#x}",
            ]
    if m.tcp_flags is not None:
        words += ["tcp_flags", f"{m.tcp_flags.value:#x}/{m.tcp_flags.mask:#x}"]
    if m.icmp_type is not None:
        words += ["type", str(m.icmp_type.value)]
    if m.icmp_code is not None:
        words += ["code", str(m.icmp_code.value)]
    return words


def _action_words(a: FlowerAction) -> list[str]:
    if a.kind in (PASS, DROP):
        return ["action", "gact", a.kind]
    if a.kind == TRAP:
        return ["action", "gact", "goto", "chain", str(a.chain)]
    if a.kind in (REDIRECT, MIRROR):
        tail = [] if a.kind == REDIRECT else ["pass"]
        return ["action", "mirred", "egress", a.kind, "dev", str(a.device), *tail]
    return ["action", "skbedit", "mark", str(a.mark), "pass"]


def filter_words(f: FlowerFilter, device: str, direction: str) -> list[str]:
    """The words of one `tc filter add` command (without the leading `tc`)."""
    words = [
        "filter",
        "add",
        "dev",
        device,
        direction,
        "chain",
        str(f.chain),
        "prio",
        str(f.prio),
        "handle",
        f"{f.handle:#x}",
        "protocol",
        PROTOCOL_TEXT.get(f.match.protocol, f"{f.match.protocol:#06x}"),
        "flower",
    ]
    if f.flags != "none":
        words.append(f.flags)
    words += _match_words(f.match)
    words += _action_words(f.action)
    if f.cookie is not None:
        words += ["cookie", f.cookie.encode().hex()]
    return words


def to_tc_batch(filters: Iterable[FlowerFilter], device: str, direction: str) -> str:
    """A `tc -batch` file installing ``filters`` on ``device`` (clsact created if missing)."""
    lines = [f"qdisc replace dev {device} clsact"]
    for f in sorted(filters, key=lambda f: (f.chain, f.prio, f.handle)):
        lines.append(" ".join(filter_words(f, device, direction)))
    return "\n".join(lines) + "\n"
