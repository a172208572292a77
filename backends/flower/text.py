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

from backends.flower.keys import ETH_TYPE_JSON_ORDER, FLOWER_KEYS, FlowerKey, Text
from backends.flower.rules import (
    CT,
    CT_ZONE,
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
    keys: list[tuple[int, str, Any]] = []
    if m.eth_type is not None:
        keys.append((ETH_TYPE_JSON_ORDER, "eth_type", _ethtype_json(m.eth_type)))
    for flower_key in FLOWER_KEYS:
        key = getattr(m, flower_key.name)
        if key is not None:
            order = flower_key.tc_json_order
            keys += [(order, name, value) for name, value in _key_json(flower_key, key, m.family)]
    return {name: value for _order, name, value in sorted(keys, key=lambda k: k[0])}


def _ethtype_json(ethtype: int) -> str:
    return ETHTYPE_TEXT.get(ethtype, f"{ethtype:04x}")


def _key_json(flower_key: FlowerKey, key: Any, family: int | None) -> list[tuple[str, Any]]:
    """The ``(name, value)`` pairs tc -j prints for one key."""
    name = flower_key.tc_json
    full = flower_key.family_variant(family).full_mask
    style = flower_key.text
    if style == Text.NUMBER:
        return [(name, key)]
    if style == Text.ETHERTYPE:
        return [(name, _ethtype_json(key))]
    if style == Text.PROTOCOL:
        return [(name, _proto_text(key))]
    if style == Text.ADDRESS:
        return [(name, _ip_text(key, family))]
    if style == Text.HEX_SLASH_MASK:
        return [(name, f"{key.value:#x}/{key.mask:x}")]
    if style == Text.NUMBER_SLASH_MASK:
        return [(name, str(key.value) if key.mask == full else f"{key.value}/{key.mask:x}")]
    if style == Text.CT_FLAGS:
        return [(name, _ct_flags_text(flower_key, key))]
    if style == Text.MATCHING_FLAGS:
        # iproute2 opens an object and prints one boolean per flag in the mask.
        return [
            (
                name,
                {
                    flag: bool(key.value & bit)
                    for flag, bit in _flag_bits(flower_key)
                    if key.mask & bit
                },
            )
        ]
    if isinstance(key, PortRange):
        return [(name, {"start": key.lo, "end": key.hi})]
    # VALUE_AND_MASK_KEY, and a value/mask PORT: the mask printed apart, when partial.
    pairs: list[tuple[str, Any]] = [(name, key.value)]
    if key.mask != full:
        pairs.append((f"{name}_mask", f"{key.mask:x}"))
    return pairs


# The order iproute2 prints ct_state flags in (tc/f_flower.c's table).
_CT_FLAG_ORDER = ("trk", "new", "est", "rel", "rpl", "inv")


def _ct_flags_text(flower_key: FlowerKey, key: Masked) -> str:
    """``+trk+est-new``: each flag of the mask, + when set in the value."""
    bits = dict(_flag_bits(flower_key))
    return "".join(
        ("+" if key.value & bits[flag] else "-") + flag
        for flag in _CT_FLAG_ORDER
        if key.mask & bits[flag]
    )


def _ct_flags_from_text(flower_key: FlowerKey, text: Any) -> Masked:
    bits = dict(_flag_bits(flower_key))
    s = str(text).strip()
    value = mask = 0
    pos = 0
    while pos < len(s):
        sign = s[pos]
        end = pos + 1
        while end < len(s) and s[end] not in "+-":
            end += 1
        flag = s[pos + 1 : end]
        if sign not in "+-" or flag not in bits:
            raise FlowerTextError(f"{flower_key.tc_json}: cannot read {text!r} as ct_state flags")
        mask |= bits[flag]
        value |= bits[flag] if sign == "+" else 0
        pos = end
    if not mask:
        raise FlowerTextError(f"{flower_key.tc_json}: empty ct_state {text!r}")
    return Masked(value, mask)


def _ct_json(commit: bool) -> dict[str, Any]:
    """The ct action (zone 0) that hands on to the next action (pipe)."""
    out: dict[str, Any] = {"kind": "ct"}
    if commit:
        out["action"] = "commit"
    return out | {"zone": CT_ZONE, "control_action": {"type": "pipe"}}


def _actions_json(a: FlowerAction, cookie: Cookie | None) -> list[dict[str, Any]]:
    """The filter's action list: a ct action first for ``ct`` and for commits;
    the cookie on the last action (where ``tc -batch``'s cookie word puts it)."""
    if a.kind == CT:
        steps = [
            _ct_json(False),
            {"kind": "gact", "control_action": {"type": "goto", "chain": a.chain}},
        ]
    elif a.commit:
        steps = [_ct_json(True), _action_json(a)]
    else:
        steps = [_action_json(a)]
    out = [{"order": n + 1} | step for n, step in enumerate(steps)]
    if cookie is not None:
        out[-1]["cookie"] = cookie.encode().hex()
    return out


def _action_json(a: FlowerAction) -> dict[str, Any]:
    out: dict[str, Any] = {}
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
        options["actions"] = _actions_json(f.action, f.cookie)
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
    for flower_key in FLOWER_KEYS:
        if flower_key.tc_json in keys:
            kw[flower_key.name] = _key_from_json(flower_key, keys)
    if (
        "eth_type" in keys
        and protocol not in (ETH_P_8021Q, ETH_P_8021AD, ETH_P_ALL)
        and _ethtype(keys["eth_type"]) != protocol
    ):
        raise FlowerTextError(
            f"eth_type {keys['eth_type']} disagrees with protocol {protocol_text}"
        )
    unknown = sorted(set(keys) - _KNOWN_JSON_KEYS)
    if unknown:
        # A key flowc does not model would make the filter narrower than read;
        # refusing is the only answer that cannot claim a wrong verdict.
        raise FlowerTextError(f"flower key(s) flowc does not model: {', '.join(unknown)}")
    return FlowerMatch(protocol, **kw)


def _key_from_json(flower_key: FlowerKey, keys: dict[str, Any]) -> Any:
    """One key's value from tc -j's ``keys`` object (its entry is there)."""
    name = flower_key.tc_json
    text = keys[name]
    # The family is not known yet; every key but the address has one width.
    full = flower_key.variants[-1].full_mask
    style = flower_key.text
    if style == Text.NUMBER:
        return _int(text)
    if style == Text.ETHERTYPE:
        return _ethtype(text)
    if style == Text.PROTOCOL:
        proto = str(text).lower()
        return PROTOCOL_NAMES[proto] if proto in PROTOCOL_NAMES else _int(proto, 16)
    if style == Text.ADDRESS:
        return _ip_key(text)[0]
    if style in (Text.HEX_SLASH_MASK, Text.NUMBER_SLASH_MASK):
        return _masked_text(text, full)
    if style == Text.MATCHING_FLAGS:
        return _flags_from_json(flower_key, text)
    if style == Text.CT_FLAGS:
        return _ct_flags_from_text(flower_key, text)
    if style == Text.PORT and isinstance(text, dict):
        return PortRange(_int(text["start"]), _int(text["end"]))
    mask = int(str(keys.get(f"{name}_mask", f"{full:x}")), 16)
    return Masked(_int(text) & mask, mask)


# Every key tc -j may print that flowc reads; any other narrows the filter.
_KNOWN_JSON_KEYS = {"eth_type"} | {
    name
    for k in FLOWER_KEYS
    for name in (k.tc_json, f"{k.tc_json}_mask")
    if name == k.tc_json or k.text in (Text.VALUE_AND_MASK_KEY, Text.PORT)
}


def _action_from_json(actions: Sequence[dict[str, Any]]) -> tuple[FlowerAction, Cookie | None]:
    if not actions:
        raise FlowerTextError("filter without actions")
    steps = sorted(actions, key=lambda a: _int(a.get("order", 0)))
    cookies = [Cookie.decode(bytes.fromhex(a["cookie"])) for a in steps if "cookie" in a]
    cookie = next((c for c in cookies if c is not None), None)
    if len(steps) == 1:
        return _one_action_from_json(steps[0]), cookie
    if len(steps) != 2 or steps[0].get("kind") != "ct":
        raise FlowerTextError(
            f"{len(steps)} actions ({', '.join(str(a.get('kind')) for a in steps)}); "
            "flowc models one, or ct then one"
        )
    ct, then = steps
    zone = _int(ct.get("zone", 0))
    ct_control = (ct.get("control_action") or {}).get("type", "pipe")
    unknown = sorted(
        set(ct)
        - {
            "order",
            "kind",
            "action",
            "zone",
            "control_action",
            "index",
            "ref",
            "bind",
            "cookie",
            "stats",
            "used_hw_stats",
            "not_in_hw",
        }
    )
    if zone != CT_ZONE or ct_control != "pipe" or ct.get("action") not in (None, "", "commit"):
        raise FlowerTextError(
            f"ct action {ct.get('action', '')} zone {zone} {ct_control} is not one flowc models"
        )
    if unknown:
        raise FlowerTextError(f"ct action options flowc does not model: {', '.join(unknown)}")
    action = _one_action_from_json(then)
    if ct.get("action") == "commit":
        if action.kind in (DROP, TRAP):
            raise FlowerTextError(f"ct commit before {action.kind} is not one flowc models")
        return FlowerAction(
            action.kind, device=action.device, mark=action.mark, commit=True
        ), cookie
    if action.kind != TRAP:
        raise FlowerTextError("ct without commit must be followed by goto chain")
    return FlowerAction(CT, chain=action.chain), cookie


def _one_action_from_json(first: dict[str, Any]) -> FlowerAction:
    kind = first.get("kind")
    control = first.get("control_action", {}) or {}
    if kind == "gact":
        ctype = control.get("type")
        if ctype == "goto":
            return FlowerAction(TRAP, chain=_int(control["chain"]))
        if ctype in ("pass", "ok"):
            return FlowerAction(PASS)
        if ctype in ("drop", "shot"):
            return FlowerAction(DROP)
        raise FlowerTextError(f"gact control action {ctype!r} is not one flowc models")
    if kind == "mirred":
        mirred = first.get("mirred_action")
        if first.get("direction") != "egress" or mirred not in (REDIRECT, MIRROR):
            raise FlowerTextError(f"mirred {first.get('direction')} {mirred} is not modelled")
        return FlowerAction(mirred, device=first["to_dev"])
    if kind == "skbedit" and "mark" in first:
        return FlowerAction(MARK, mark=_int(first["mark"]))
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
def _flag_bits(flower_key: FlowerKey) -> list[tuple[str, int]]:
    return [(flag, 1 << i) for i, flag in enumerate(flower_key.flag_names)]


def _flags_from_json(flower_key: FlowerKey, text: Any) -> Masked:
    if not isinstance(text, dict):
        raise FlowerTextError(f"{flower_key.tc_json}: expected an object of flags, got {text!r}")
    known = dict(_flag_bits(flower_key))
    unknown = sorted(set(text) - set(known))
    if unknown:
        # A flag flowc does not model narrows the filter: refuse rather than guess.
        raise FlowerTextError(f"{flower_key.tc_json}: flags flowc does not model: {unknown}")
    value = sum(known[flag] for flag, on in text.items() if on)
    mask = sum(known[flag] for flag in text)
    return Masked(value, mask)


def _match_words(m: FlowerMatch) -> list[str]:
    words: list[str] = []
    for flower_key in FLOWER_KEYS:
        key = getattr(m, flower_key.name)
        if key is not None:
            words += [flower_key.tc_batch, _key_word(flower_key, key, m.family)]
    return words


def _key_word(flower_key: FlowerKey, key: Any, family: int | None) -> str:
    """How ``tc filter add ... flower`` takes one key's value."""
    style = flower_key.text
    if style == Text.NUMBER:
        return str(key)
    if style == Text.ETHERTYPE:
        return PROTOCOL_TEXT.get(key, f"{key:#06x}")
    if style == Text.PROTOCOL:
        name = PROTOCOL_BY_NUMBER.get(key)
        # tc reads a numeric ip_proto as hex.
        return name if name else f"{key:#x}"
    if style == Text.ADDRESS:
        return _ip_text(key, family)
    if style == Text.NUMBER_SLASH_MASK:
        # tc's text takes no mask here; the lowering writes exact values only.
        return str(key.value)
    if style == Text.CT_FLAGS:
        return _ct_flags_text(flower_key, key)
    if style == Text.MATCHING_FLAGS:
        return "/".join(
            flag if key.value & bit else f"no{flag}"
            for flag, bit in _flag_bits(flower_key)
            if key.mask & bit
        )
    if style == Text.PORT:
        if isinstance(key, PortRange):
            return f"{key.lo}-{key.hi}"
        full = flower_key.family_variant(family).full_mask
        return str(key.value) if key.mask == full else f"{key.value}/{key.mask:#x}"
    return f"{key.value:#x}/{key.mask:#x}"


def _action_words(a: FlowerAction) -> list[str]:
    if a.kind == CT:
        return [
            "action",
            "ct",
            "zone",
            str(CT_ZONE),
            "pipe",
            "action",
            "gact",
            "goto",
            "chain",
            str(a.chain),
        ]
    if a.commit:
        plain = FlowerAction(a.kind, device=a.device, mark=a.mark)
        return ["action", "ct", "commit", "zone", str(CT_ZONE), "pipe", *_action_words(plain)]
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
