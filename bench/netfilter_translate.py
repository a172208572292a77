"""Translate a flowc IR policy into iptables rules and into an nftables ruleset.

Both translations express the policy as IPv4 packets see it, at netfilter's
``prerouting`` hook (iptables' ``raw`` table, nftables' ``raw`` priority): the
earliest place iptables can filter, so both netfilter setups sit at the same
hook and differ only in how they classify. A rule whose family set excludes
IPv4 is left out (it can never decide an IPv4 packet); IPv6 would need a
second, ``ip6`` translation and is outside the benchmark.

**iptables** is the translation a straightforward tool emits: one rule per IR
rule, in the policy's first-match order, each with its verdict (``ACCEPT`` or
``DROP``), the default as the chain's last rule. Prefixes become ``-s``/``-d``,
other address intervals ``-m iprange``, one port interval ``--sport lo:hi``,
several ``-m multiport`` (15 ports per rule, a range counting two),
TCP flags ``--tcp-flags MASK COMP`` per ternary, ICMP ``--icmp-type T[/C]``,
DSCP ``-m dscp``. A field whose set needs more than one such clause (two
protocols, three prefixes) makes the rule several consecutive iptables rules
with the same target, which keeps first-match semantics; the benchmark's
policies (one interval per field) never need it.

**nftables** is written as an expert would: rules are grouped into *verdict
maps* keyed on a concatenation with interval flags (the ``pipapo`` set type),
one lookup deciding a whole group. Two key shapes exist: ``ip saddr . ip daddr
. ip protocol`` for rules without ports and ``ip saddr . ip daddr . ip protocol
. th sport . th dport`` for rules with ports; a field the rule leaves open is
its full interval in the key. Elements of one map must not overlap (an
interval map gives no order among its elements), so rule ``j`` joins the
earliest open group of its shape that started after the last earlier rule
overlapping ``j``: moving ``j`` up to that group's position passes only rules
disjoint from it, which keeps first-match semantics exactly, per rule. Each
element carries a ``counter`` and a ``comment`` naming its IR rule, so
per-rule counts can be read back. Falls back to a plain rule (anonymous sets
for multi-valued fields, with its own counter) where a rule constrains DSCP,
ICMP type/code or TCP flags (not map key material here), where its
cross-product of intervals would exceed ``MAX_ELEMENTS_PER_RULE`` elements,
or where a group would hold one rule only. The default is the chain's last
rule.

Both refuse, with :class:`TranslateError`, what they cannot express: VLAN
fields, actions other than allow and drop (redirect, mirror, mark) and any
field this module does not know.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from ir.analysis import OverlapIndex
from ir.fields import FAMILY_IPV4, HEADER_SPACE, TCP_FLAG_BITS
from ir.model import ALLOW, DROP, Policy, Rule
from ir.valueset import ValueSet

MAX_EXPANSION = 256
MAX_ELEMENTS_PER_RULE = 256
MULTIPORT_SLOTS = 15
# Fields the IPv4 translations express; every other field is refused when constrained.
IPV4_FIELDS = frozenset(
    {
        "family",
        "dscp",
        "ip_proto",
        "ip4_src",
        "ip4_dst",
        "sport",
        "dport",
        "icmp_type",
        "icmp_code",
        "tcp_flags",
    }
)
NFT_TABLE = "flowc_bench"
NFT_CHAIN = "pre"
NFT_SHAPES = (
    ("ip4_src", "ip4_dst", "ip_proto"),
    ("ip4_src", "ip4_dst", "ip_proto", "sport", "dport"),
)
NFT_EXPR = {
    "ip4_src": "ip saddr",
    "ip4_dst": "ip daddr",
    "ip_proto": "ip protocol",
    "sport": "th sport",
    "dport": "th dport",
    "dscp": "ip dscp",
    "icmp_type": "icmp type",
    "icmp_code": "icmp code",
}
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp"}
VERDICT = {ALLOW: ("ACCEPT", "accept"), DROP: ("DROP", "drop")}


class TranslateError(ValueError):
    """The policy has a rule the translation cannot express; the message names it."""


Interval = tuple[int, int]


def _check(rule: Rule, tool: str) -> bool:
    """Whether ``rule`` can decide IPv4 packets; raise TranslateError if it is inexpressible."""
    if rule.action.kind not in VERDICT:
        raise TranslateError(
            f"{rule.origin}: {tool} translation expresses allow and drop, not {rule.action.kind}"
        )
    if FAMILY_IPV4 not in rule.match.get("family"):
        return False
    names = {name for name, _ in rule.match.constraints}
    for name, values in rule.match.constraints:
        if name == "frag" and values == _HAS_L4 and names & _TRANSPORT:
            # Implied by the transport match itself: iptables' tcp/udp/icmp matches
            # never match a later fragment (xt_tcpudp checks fragoff) and nft's
            # transport payload expressions break on one, as the IR's ports do.
            continue
        if name not in IPV4_FIELDS:
            raise TranslateError(f"{rule.origin}: {tool} translation has no match for {name}")
    return True


_HAS_L4 = ValueSet.of_values(2, (0, 1))
_TRANSPORT = frozenset({"sport", "dport", "icmp_type", "icmp_code", "tcp_flags"})


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _addr_text(lo: int, hi: int) -> str:
    """An address interval as nft writes it: a prefix where it is one, else lo-hi."""
    values = ValueSet.of_range(32, lo, hi)
    prefix = values.as_prefix()
    if prefix is not None:
        return _ip(prefix[0]) if prefix[1] == 32 else f"{_ip(prefix[0])}/{prefix[1]}"
    return f"{_ip(lo)}-{_ip(hi)}"


def _flag_names(bits: int) -> str:
    names = [name.upper() for name, bit in TCP_FLAG_BITS.items() if bits & bit]
    return ",".join(names) or "NONE"


# ------------------------------------------------------------------ iptables


@dataclass(frozen=True, slots=True)
class IptRule:
    """One iptables rule: its match arguments, target and the IR rule it came from."""

    args: tuple[str, ...]
    target: str
    priority: int

    def text(self, chain: str = "PREROUTING") -> str:
        """The rule as an ``iptables-restore`` line."""
        return " ".join(("-A", chain, *self.args, "-j", self.target))


def _port_clauses(name: str, values: ValueSet) -> list[list[str]]:
    """Alternatives for a port set: one ``--sport`` clause, or multiport chunks."""
    word = "--sport" if name == "sport" else "--dport"
    if len(values.intervals) == 1:
        lo, hi = values.intervals[0]
        return [[word, str(lo) if lo == hi else f"{lo}:{hi}"]]
    chunks: list[list[str]] = []
    chunk: list[str] = []
    used = 0
    for lo, hi in values.intervals:
        cost = 1 if lo == hi else 2
        if used + cost > MULTIPORT_SLOTS:
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(str(lo) if lo == hi else f"{lo}:{hi}")
        used += cost
    chunks.append(chunk)
    return [["-m", "multiport", word + "s", ",".join(c)] for c in chunks]


def _small_values(rule: Rule, name: str, values: ValueSet) -> list[int]:
    if values.size() > MAX_EXPANSION:
        raise TranslateError(f"{rule.origin}: {name} has {values.size()} values, too many to list")
    return [v for lo, hi in values.intervals for v in range(lo, hi + 1)]


def _ipt_alternatives(rule: Rule) -> list[list[list[str]]]:
    """Per constrained field, the alternative clause lists (their product is the rule)."""
    m = rule.match
    out: list[list[list[str]]] = []
    proto = m.get("ip_proto")
    if not proto.is_full():
        outside = ~proto
        if outside.size() == 1 and outside.intervals[0][0] != 0:
            out.append([["!", "-p", str(outside.intervals[0][0])]])
        else:
            numbers = _small_values(rule, "ip_proto", proto)
            if 0 in numbers:  # iptables reads "-p 0" as every protocol
                raise TranslateError(f"{rule.origin}: iptables cannot match IP protocol 0")
            out.append([["-p", PROTO_NAMES.get(v, str(v))] for v in numbers])
    for name, flag, module in (("ip4_src", "-s", "--src-range"), ("ip4_dst", "-d", "--dst-range")):
        values = m.get(name)
        if values.is_full():
            continue
        alternatives = []
        for lo, hi in values.intervals:
            prefix = ValueSet.of_range(32, lo, hi).as_prefix()
            if prefix is not None:
                alternatives.append([flag, f"{_ip(prefix[0])}/{prefix[1]}"])
            else:
                alternatives.append(["-m", "iprange", module, f"{_ip(lo)}-{_ip(hi)}"])
        out.append(alternatives)
    dscp = m.get("dscp")
    if not dscp.is_full():
        outside = ~dscp
        if outside.size() == 1:
            out.append([["-m", "dscp", "!", "--dscp", str(outside.intervals[0][0])]])
        else:
            out.append(
                [["-m", "dscp", "--dscp", str(v)] for v in _small_values(rule, "dscp", dscp)]
            )
    for name in ("sport", "dport"):
        values = m.get(name)
        if not values.is_full():
            out.append(_port_clauses(name, values))
    itype, icode = m.get("icmp_type"), m.get("icmp_code")
    if not icode.is_full():
        pairs = [
            f"{t}/{c}"
            for t in _small_values(rule, "icmp_type", itype)
            for c in _small_values(rule, "icmp_code", icode)
        ]
        out.append([["-m", "icmp", "--icmp-type", p] for p in pairs])
    elif not itype.is_full():
        out.append(
            [["-m", "icmp", "--icmp-type", str(t)] for t in _small_values(rule, "icmp_type", itype)]
        )
    flags = m.get("tcp_flags")
    if not flags.is_full():
        out.append(
            [
                ["-m", "tcp", "--tcp-flags", _flag_names(mask), _flag_names(value)]
                for value, mask in flags.ternary_cover()
            ]
        )
    return out


def iptables_rules(policy: Policy) -> list[IptRule]:
    """The policy as iptables rules in first-match order (IPv4; see the module doc).

    Raises:
        TranslateError: a rule cannot be expressed.
    """
    out: list[IptRule] = []
    for rule in policy.rules:
        if not _check(rule, "iptables"):
            continue
        target = VERDICT[rule.action.kind][0]
        alternatives = _ipt_alternatives(rule)
        count = 1
        for alt in alternatives:
            count *= len(alt)
        if count > MAX_EXPANSION:
            raise TranslateError(
                f"{rule.origin}: needs {count} iptables rules (more than {MAX_EXPANSION})"
            )
        for combo in itertools.product(*alternatives):
            args = _ordered(combo)
            out.append(IptRule(tuple(args), target, rule.priority))
    return out


def _ordered(combo: tuple[list[str], ...]) -> list[str]:
    """Clauses with ``-p`` first, and ``-m PROTO`` before a single-port clause: iptables
    loads a protocol's match module (``--dport``) only after the protocol is named."""
    protos = [c for c in combo if c[0] == "-p"]
    proto = protos[0][1] if protos else None
    out: list[str] = []
    for clause in protos + [c for c in combo if c[0] != "-p"]:
        if clause[0] in ("--sport", "--dport"):
            if proto is None:
                raise TranslateError("a port clause without a protocol")
            out += ["-m", proto]
        out += clause
    return out


def iptables_restore_text(rules: list[IptRule]) -> str:
    """An ``iptables-restore`` file replacing the raw table with ``rules`` in PREROUTING."""
    lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [r.text() for r in rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ nftables


@dataclass(frozen=True, slots=True)
class NftPlain:
    """A plain nft rule: per field its intervals (an anonymous set when several),
    an optional TCP flags ternary, the verdict and the IR rule it came from."""

    fields: tuple[tuple[str, tuple[Interval, ...]], ...]
    tcp_flags: tuple[int, int] | None
    verdict: str
    priority: int


@dataclass(frozen=True, slots=True)
class NftElement:
    """One verdict-map element: an interval per key field, the verdict, the IR rule."""

    key: tuple[Interval, ...]
    verdict: str
    priority: int


@dataclass(frozen=True, slots=True)
class NftMap:
    """A verdict map keyed on the concatenation ``shape``, with its elements."""

    name: str
    shape: tuple[str, ...]
    elements: tuple[NftElement, ...]


NftStatement = NftPlain | NftMap


@dataclass(frozen=True, slots=True)
class NftRuleset:
    """The chain's statements in order, and the policy rules left out (not IPv4)."""

    statements: tuple[NftStatement, ...]
    skipped: tuple[int, ...]

    @property
    def maps(self) -> list[NftMap]:
        """The verdict maps."""
        return [s for s in self.statements if isinstance(s, NftMap)]


def _shape_of(rule: Rule) -> tuple[str, ...] | None:
    """The verdict-map key shape the rule fits, or None (plain rule)."""
    names = {name for name, _ in rule.match.constraints} - {"family"}
    if not names or names & {"dscp", "icmp_type", "icmp_code", "tcp_flags"}:
        return None
    return NFT_SHAPES[1] if names & {"sport", "dport"} else NFT_SHAPES[0]


def _key_elements(rule: Rule, shape: tuple[str, ...]) -> list[NftElement] | None:
    per_field = [rule.match.get(name).intervals for name in shape]
    count = 1
    for intervals in per_field:
        count *= len(intervals)
    if count > MAX_ELEMENTS_PER_RULE:
        return None
    verdict = VERDICT[rule.action.kind][1]
    return [NftElement(key, verdict, rule.priority) for key in itertools.product(*per_field)]


def _plain(rule: Rule) -> list[NftPlain]:
    fields = tuple(
        (name, values.intervals)
        for name, values in rule.match.constraints
        # frag none,first is implied by the transport match (see _check).
        if name not in ("family", "tcp_flags", "frag")
    )
    flags = rule.match.get("tcp_flags")
    verdict = VERDICT[rule.action.kind][1]
    if flags.is_full():
        return [NftPlain(fields, None, verdict, rule.priority)]
    ternaries = flags.ternary_cover()
    if len(ternaries) > MAX_EXPANSION:
        raise TranslateError(f"{rule.origin}: tcp flags need {len(ternaries)} nft rules")
    return [NftPlain(fields, t, verdict, rule.priority) for t in ternaries]


def nft_ruleset(policy: Policy) -> NftRuleset:
    """The policy as an expert's nftables chain: verdict maps where rules allow, plain
    rules elsewhere (see the module doc for the grouping and its correctness).

    Raises:
        TranslateError: a rule cannot be expressed.
    """
    rules = [r for r in policy.rules if _check(r, "nftables")]
    skipped = tuple(r.priority for r in policy.rules if r not in rules)
    body, default = rules[:-1], rules[-1]
    index = OverlapIndex(HEADER_SPACE, [r.match.cube for r in body])
    # slots[k] is a plain rule or a group (shape, members); groups stay open for joining.
    slots: list[tuple[tuple[str, ...] | None, list[int]]] = []
    open_groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}  # shape -> (start, slot)
    for j, rule in enumerate(body):
        shape = _shape_of(rule)
        if shape is None or _key_elements(rule, shape) is None:
            slots.append((None, [j]))
            continue
        overlapping = [k for k in index.candidates(j, 0, j) if _meets(body[k], rule)]
        last = max(overlapping, default=-1)
        target = next((slot for start, slot in open_groups.get(shape, []) if start > last), None)
        if target is None:
            open_groups.setdefault(shape, []).append((j, len(slots)))
            slots.append((shape, [j]))
        else:
            slots[target][1].append(j)
    statements: list[NftStatement] = []
    for shape, members in slots:
        if shape is None or len(members) == 1:
            for j in members:
                statements.extend(_plain(body[j]))
            continue
        elements: list[NftElement] = []
        for j in members:
            elements.extend(_key_elements(body[j], shape) or ())
        statements.append(NftMap(f"g{len(statements)}", shape, tuple(elements)))
    statements.extend(_plain(default))
    return NftRuleset(tuple(statements), skipped)


def _meets(a: Rule, b: Rule) -> bool:
    """Whether two rules' constraints overlap on every field (a conservative overlap test:
    prerequisites only make a real overlap smaller)."""
    return all(x.overlaps(y) for x, y in zip(a.match.cube.sets, b.match.cube.sets, strict=True))


def _interval_text(name: str, lo: int, hi: int) -> str:
    if name in ("ip4_src", "ip4_dst"):
        return _addr_text(lo, hi)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _field_text(name: str, intervals: tuple[Interval, ...]) -> str:
    items = [_interval_text(name, lo, hi) for lo, hi in intervals]
    value = items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"
    return f"{NFT_EXPR[name]} {value}"


def _comment(priority: int) -> str:
    return f'comment "r{priority}"'


def nft_text(ruleset: NftRuleset) -> str:
    """The ruleset as an ``nft -f`` file: table ``ip flowc_bench``, chain ``pre`` at
    prerouting, raw priority, policy accept (the default rule decides every packet)."""
    out = [f"table ip {NFT_TABLE} {{"]
    for m in ruleset.maps:
        out.append(f"  map {m.name} {{")
        out.append("    typeof " + " . ".join(NFT_EXPR[n] for n in m.shape) + " : verdict")
        out.append("    flags interval")
        out.append("    counter")
        out.append("    elements = {")
        lines = []
        for e in m.elements:
            key = " . ".join(
                _interval_text(n, lo, hi) for n, (lo, hi) in zip(m.shape, e.key, strict=True)
            )
            lines.append(f"      {key} {_comment(e.priority)} : {e.verdict}")
        out.append(",\n".join(lines))
        out.append("    }")
        out.append("  }")
    out.append(f"  chain {NFT_CHAIN} {{")
    out.append("    type filter hook prerouting priority raw; policy accept;")
    for s in ruleset.statements:
        if isinstance(s, NftMap):
            out.append("    " + " . ".join(NFT_EXPR[n] for n in s.shape) + f" vmap @{s.name}")
            continue
        words = [_field_text(name, intervals) for name, intervals in s.fields]
        if s.tcp_flags is not None:
            value, mask = s.tcp_flags
            words.append(f"tcp flags & {mask:#04x} == {value:#04x}")
        words += ["counter", s.verdict, _comment(s.priority)]
        out.append("    " + " ".join(words))
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"
