"""AST -> IR: type-check each rule and turn it into one cube per IP family.

This is where the DSL's semantics are decided:

* An address operand implies its family; a rule can only match the families
  every one of its operands allows. A set with both families matches either.
* ``not X`` matches addresses of X's families that are outside X.
* A clause on a protocol-specific field implies its protocol when the rule
  names none: ports imply tcp/udp/sctp, ``flags`` implies tcp, ``type`` and
  ``code`` imply icmp (IPv4) / icmpv6 (IPv6). A clause that conflicts with the
  protocol the rule names is an error, never an empty rule.
* One DSL rule becomes one IR rule, or two (IPv4 and IPv6) when its parts
  differ per family; both carry the rule's origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from compiler import ast
from compiler.diagnostics import Diagnostic, error, note
from compiler.resolve import (
    AddrValue,
    Loaded,
    Resolver,
    device_problem,
)
from ir import model
from ir.conntrack import hook_id
from ir.fields import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    FRAG_NAMES,
    PROTO_TCP,
    PROTOCOL_NAMES,
    STATE_NAMES,
    TCP_FLAG_BITS,
    field_exists,
    protocols_with,
)
from ir.valueset import ValueSet

K = TypeVar("K")  # what a clash check keys policies by

FAMILIES = (FAMILY_IPV4, FAMILY_IPV6)

# ICMP type names: (IPv4 type, IPv6 type); None where the family has no such type.
ICMP_TYPES: dict[str, tuple[int | None, int | None]] = {
    "echo-reply": (0, 129),
    "echo-request": (8, 128),
    "destination-unreachable": (3, 1),
    "dest-unreachable": (3, 1),
    "source-quench": (4, None),
    "redirect": (5, 137),
    "router-advertisement": (9, 134),
    "router-solicitation": (10, 133),
    "time-exceeded": (11, 3),
    "parameter-problem": (12, 4),
    "timestamp-request": (13, None),
    "timestamp-reply": (14, None),
    "packet-too-big": (None, 2),
    "neighbor-solicitation": (None, 135),
    "neighbor-advertisement": (None, 136),
    "mld-query": (None, 130),
}

DSCP_NAMES: dict[str, int] = {
    "be": 0,
    "df": 0,
    "ef": 46,
    "va": 44,
    **{f"cs{i}": 8 * i for i in range(8)},
    **{f"af{x}{y}": 8 * x + 2 * y for x in range(1, 5) for y in range(1, 4)},
}

_CLAUSE_WORD = {
    ast.ProtoClause: "protocol",
    ast.FlagsClause: "flags",
    ast.VlanClause: "vlan",
    ast.DscpClause: "dscp",
    ast.FragClause: "frag",
    ast.StateClause: "state",
}


@dataclass(slots=True)
class _RuleParts:
    """What one rule's clauses say, per family where it differs."""

    families: set[int]
    protocols: dict[int, ValueSet] | None = None  # family -> ip_proto set, None = any
    src: AddrValue | None = None
    dst: AddrValue | None = None
    sport: ValueSet | None = None
    dport: ValueSet | None = None
    icmp_type: dict[int, ValueSet] | None = None
    icmp_code: ValueSet | None = None
    tcp_flags: ValueSet | None = None
    vlan: ValueSet | None = None
    dscp: ValueSet | None = None
    frag: ValueSet | None = None
    state: ValueSet | None = None


class Lowerer:
    """Turns the resolved AST of a loaded program into IR, collecting diagnostics."""

    def __init__(self, loaded: Loaded, resolver: Resolver) -> None:
        self.loaded = loaded
        self.resolver = resolver
        self.diags: list[Diagnostic] = []

    def program(self) -> model.Program:
        """Every policy of every loaded file, in file then source order."""
        policies = []
        seen_names: dict[str, ast.PolicyDef] = {}
        seen_hooks: dict[tuple[str, str], ast.PolicyDef] = {}
        seen_ids: dict[int, ast.PolicyDef] = {}
        for lf in self.loaded.files.values():
            lines = self.loaded.sources.get(lf.display, "").splitlines()
            for item in lf.source.items:
                if not isinstance(item, ast.PolicyDef):
                    continue
                if item.name in seen_names:
                    self.diags.append(
                        error(
                            "duplicate-policy",
                            f"policy {item.name!r} is already defined",
                            item.name_pos,
                            note("first defined here", seen_names[item.name].name_pos),
                        )
                    )
                    continue
                seen_names[item.name] = item
                hook = (item.device, item.direction)
                self._clash(
                    seen_hooks, hook, item, "duplicate-hook",
                    f"both attach to {item.direction} on {item.device}",
                )  # fmt: skip
                # The host's connection table records a 32-bit id of the
                # committing policy's name (ir/conntrack.py hook_id), which
                # --revoke-established goes by: two names with one id would let
                # one policy's update revoke the other's connections.
                table_id = hook_id(item.name)
                self._clash(
                    seen_ids, table_id, item, "hook-id-clash",
                    f"have the same connection-table id {table_id:#010x}; rename one",
                )  # fmt: skip
                policy = self.policy(item, lf.key, lines)
                if policy is not None:
                    policies.append(policy)
        return model.Program(tuple(policies))

    def _clash(
        self, seen: dict[K, ast.PolicyDef], key: K, item: ast.PolicyDef, code: str, why: str
    ) -> None:
        """Report ``item`` when an earlier policy holds ``key`` in ``seen`` (error
        ``code``: "policies 'A' and 'B' WHY", with a note at the other one), and
        record ``item`` as the holder of ``key``."""
        other = seen.get(key)
        if other is not None:
            self.diags.append(
                error(
                    code,
                    f"policies {other.name!r} and {item.name!r} {why}",
                    item.name_pos,
                    note("the other policy", other.name_pos),
                )
            )
        seen[key] = item

    def policy(self, pdef: ast.PolicyDef, file_key: str, lines: list[str]) -> model.Policy | None:
        """One policy: its rules in order, then its default."""
        problem = device_problem(pdef.device)
        if problem:
            self.diags.append(error("bad-device", problem, pdef.pos))
        errors_before = len(self.diags)
        rules: list[model.Rule] = []
        for rdef in pdef.rules:
            action = self.action(rdef.action, file_key, is_default=False)
            parts = self.rule_parts(rdef, file_key)
            if action is None or parts is None:
                continue
            origin = _origin(rdef.pos, lines)
            for match in build_matches(parts):
                rules.append(model.Rule(len(rules), match, action, origin))
        default_action = None
        if not pdef.defaults:
            self.diags.append(
                error(
                    "missing-default",
                    f"policy {pdef.name!r} has no default; add 'default drop' or 'default allow'",
                    pdef.name_pos,
                )
            )
        else:
            for extra in pdef.defaults[1:]:
                self.diags.append(
                    error(
                        "duplicate-default",
                        f"policy {pdef.name!r} has more than one default",
                        extra.pos,
                        note("first default here", pdef.defaults[0].pos),
                    )
                )
            default_action = self.action(pdef.defaults[0].action, file_key, is_default=True)
        if default_action is None or len(self.diags) > errors_before:
            return None
        rules.append(
            model.Rule(
                len(rules),
                model.Match(),
                default_action,
                _origin(pdef.defaults[0].pos, lines),
                is_default=True,
            )
        )
        return model.Policy(
            pdef.name,
            model.Hook(pdef.device, pdef.direction),
            tuple(rules),
            _origin(pdef.pos, lines),
        )

    # ------------------------------------------------------------- actions
    def action(
        self, spec: ast.ActionSpec, file_key: str, *, is_default: bool
    ) -> model.Action | None:
        """The IR action; redirect/mirror targets must be endpoints with a device."""
        if spec.kind in (model.REDIRECT, model.MIRROR):
            if spec.target is None:
                self.diags.append(
                    error(
                        "missing-target",
                        f"{spec.kind} needs a target: end the rule with '-> ENDPOINT'",
                        spec.pos,
                    )
                )
                return None
            definition = self.resolver.lookup(spec.target, file_key)
            if definition is None:
                return None
            if not isinstance(definition, ast.Endpoint):
                self.diags.append(
                    error(
                        "bad-target",
                        f"{spec.target.name!r} is a set; {spec.kind} needs an endpoint",
                        spec.target.pos,
                    )
                )
                return None
            if definition.device is None:
                self.diags.append(
                    error(
                        "endpoint-no-dev",
                        f"endpoint {definition.name!r} has no dev, so nothing can be sent to it",
                        spec.target.pos,
                        note("defined here", definition.name_pos),
                    )
                )
                return None
            return model.Action(spec.kind, target=definition.name, device=definition.device)
        if spec.target is not None:
            self.diags.append(
                error(
                    "unexpected-target",
                    f"'-> {spec.target.name}' only goes with redirect or mirror, not {spec.kind}",
                    spec.target.pos,
                )
            )
            return None
        if spec.kind == model.MARK:
            assert spec.mark is not None
            if spec.mark >= 1 << model.MARK_WIDTH:
                self.diags.append(
                    error("bad-mark", f"mark {spec.mark:#x} does not fit in 32 bits", spec.pos)
                )
                return None
            return model.Action(model.MARK, mark=spec.mark)
        return model.Action(spec.kind)

    # ------------------------------------------------------------- clauses
    def rule_parts(self, rdef: ast.RuleDef, file_key: str) -> _RuleParts | None:
        """Evaluate and type-check one rule's clauses (None after reporting errors)."""
        errors_before = len(self.diags)
        parts = _RuleParts(families=set(FAMILIES))
        seen: dict[str, ast.Clause] = {}
        proto_clause: ast.ProtoClause | None = None
        port_clauses: list[ast.PortClause] = []
        icmp_clauses: list[ast.IcmpClause] = []
        flags_clause: ast.FlagsClause | None = None
        frag_clause: ast.FragClause | None = None
        for clause in rdef.clauses:
            word = _clause_key(clause)
            if word in seen:
                self.diags.append(
                    error(
                        "duplicate-clause",
                        f"'{word}' appears twice in one rule; put alternatives in a set {{...}}",
                        clause.pos,
                        note("first here", seen[word].pos),
                    )
                )
                continue
            seen[word] = clause
            if isinstance(clause, ast.ProtoClause):
                proto_clause = clause
                parts.protocols = self.protocols(clause)
            elif isinstance(clause, ast.AddrClause):
                value = self.address(clause.expr, file_key)
                if value is not None:
                    if clause.direction == "from":
                        parts.src = value
                    else:
                        parts.dst = value
            elif isinstance(clause, ast.PortClause):
                port_clauses.append(clause)
                ports = self.ports(clause.expr, file_key)
                if clause.direction == "sport":
                    parts.sport = ports
                else:
                    parts.dport = ports
            elif isinstance(clause, ast.IcmpClause):
                icmp_clauses.append(clause)
                self.icmp(clause, parts)
            elif isinstance(clause, ast.FlagsClause):
                flags_clause = clause
                parts.tcp_flags = self.flags(clause)
            elif isinstance(clause, ast.VlanClause):
                parts.vlan = self.vlan(clause)
            elif isinstance(clause, ast.DscpClause):
                parts.dscp = self.dscp(clause)
            elif isinstance(clause, ast.FragClause):
                frag_clause = clause
                parts.frag = self.frag(clause)
            elif isinstance(clause, ast.StateClause):
                parts.state = self.state(clause)
        if len(self.diags) > errors_before:
            return None
        self.imply_protocols(parts, proto_clause, port_clauses, icmp_clauses, flags_clause)
        if len(self.diags) > errors_before:
            return None
        self.imply_transport(parts, frag_clause, [*port_clauses, *icmp_clauses, flags_clause])
        if len(self.diags) > errors_before:
            return None
        self.narrow_families(rdef, parts)
        if len(self.diags) > errors_before:
            return None
        return parts

    def protocols(self, clause: ast.ProtoClause) -> dict[int, ValueSet] | None:
        """Per-family ip_proto sets: icmp is IPv4-only, icmpv6 IPv6-only, numbers both."""
        per_family: dict[int, set[int]] = {f: set() for f in FAMILIES}
        for proto in clause.protocols:
            if isinstance(proto, str):
                number = PROTOCOL_NAMES[proto]
                if proto == "icmp":
                    per_family[FAMILY_IPV4].add(number)
                elif proto == "icmpv6":
                    per_family[FAMILY_IPV6].add(number)
                else:
                    for fam in FAMILIES:
                        per_family[fam].add(number)
            elif not 0 <= proto <= 255:
                self.diags.append(
                    error("bad-protocol", f"protocol {proto} is out of range 0-255", clause.pos)
                )
                return None
            else:
                for fam in FAMILIES:
                    per_family[fam].add(proto)
        return {f: ValueSet.of_values(8, v) for f, v in per_family.items()}

    def address(self, expr: ast.AddrExpr, file_key: str) -> AddrValue | None:
        """An address operand (negation applied)."""
        value = self.resolver.evaluate_element(expr.operand, file_key)
        if value is None:
            return None
        if not isinstance(value, AddrValue):
            self.diags.append(
                error("type-mismatch", "expected addresses here, but this is a port set", expr.pos)
            )
            return None
        if expr.negated:
            value = value.negated()
            if not value.families():
                self.diags.append(
                    error("never-matches", "'not' of every address matches nothing", expr.pos)
                )
                return None
        return value

    def ports(self, expr: ast.PortExpr, file_key: str) -> ValueSet | None:
        """A port operand (negation applied)."""
        value = self.resolver.evaluate_element(expr.operand, file_key)
        if value is None:
            return None
        if not isinstance(value, ValueSet):
            self.diags.append(
                error("type-mismatch", "expected ports here, but this is an address", expr.pos)
            )
            return None
        if expr.negated:
            value = ~value
            if value.is_empty():
                self.diags.append(
                    error("never-matches", "'not' of every port matches nothing", expr.pos)
                )
                return None
        return value

    def icmp(self, clause: ast.IcmpClause, parts: _RuleParts) -> None:
        """``type``/``code``: a number 0-255 (both families) or a type name (per family)."""
        if isinstance(clause.value, int):
            if clause.value > 255:
                self.diags.append(
                    error(
                        "bad-icmp",
                        f"ICMP {clause.field} {clause.value} is out of range 0-255",
                        clause.pos,
                    )
                )
                return
            values = ValueSet.of_value(8, clause.value)
            if clause.field == "code":
                parts.icmp_code = values
            else:
                parts.icmp_type = {f: values for f in FAMILIES}
            return
        if clause.field == "code":
            self.diags.append(error("bad-icmp", "ICMP code must be a number 0-255", clause.pos))
            return
        types = ICMP_TYPES.get(clause.value)
        if types is None:
            known = ", ".join(sorted(ICMP_TYPES))
            self.diags.append(
                error(
                    "bad-icmp",
                    f"unknown ICMP type {clause.value!r}; use a number or one of: {known}",
                    clause.pos,
                )
            )
            return
        parts.icmp_type = {
            fam: ValueSet.of_values(8, [t] if t is not None else [])
            for fam, t in zip(FAMILIES, types, strict=True)
        }

    def flags(self, clause: ast.FlagsClause) -> ValueSet | None:
        """TCP flags as a ternary over the 8 flag bits."""
        if clause.value is not None and clause.mask is not None:
            if clause.value > 0xFF or clause.mask > 0xFF:
                self.diags.append(
                    error("bad-flags", "TCP flags value and mask must fit in 8 bits", clause.pos)
                )
                return None
            if clause.value & ~clause.mask:
                self.diags.append(
                    error(
                        "bad-flags",
                        f"flags value {clause.value:#04x} sets bits outside the mask "
                        f"{clause.mask:#04x}",
                        clause.pos,
                    )
                )
                return None
            return ValueSet.of_ternary(8, clause.value, clause.mask)
        value = mask = 0
        positions = clause.item_pos or tuple(clause.pos for _ in clause.named)
        for (name, must_set), pos in zip(clause.named, positions, strict=True):
            bit = TCP_FLAG_BITS.get(name)
            if bit is None:
                self.diags.append(
                    error(
                        "bad-flags",
                        f"unknown TCP flag {name!r}; flags are {', '.join(TCP_FLAG_BITS)}",
                        pos,
                    )
                )
                return None
            if mask & bit:
                self.diags.append(error("bad-flags", f"flag {name!r} is named twice", pos))
                return None
            mask |= bit
            if must_set:
                value |= bit
        return ValueSet.of_ternary(8, value, mask)

    def vlan(self, clause: ast.VlanClause) -> ValueSet | None:
        """A VLAN id or range within 0-4095."""
        hi = clause.hi if clause.hi is not None else clause.lo
        if hi > 4095 or clause.lo > 4095:
            self.diags.append(
                error(
                    "bad-vlan", f"VLAN id {max(hi, clause.lo)} is out of range 0-4095", clause.pos
                )
            )
            return None
        if clause.lo > hi:
            self.diags.append(
                error("bad-vlan", f"VLAN range {clause.lo}-{hi} is empty", clause.pos)
            )
            return None
        return ValueSet.of_range(12, clause.lo, hi)

    def dscp(self, clause: ast.DscpClause) -> ValueSet | None:
        """A DSCP value 0-63 or a PHB name (ef, afXY, csN)."""
        if isinstance(clause.value, str):
            code = DSCP_NAMES.get(clause.value.lower())
            if code is None:
                self.diags.append(
                    error(
                        "bad-dscp",
                        f"unknown DSCP name {clause.value!r}; use 0-63, ef, va, be, af11..af43 "
                        "or cs0..cs7",
                        clause.pos,
                    )
                )
                return None
            return ValueSet.of_value(6, code)
        if clause.value > 63:
            self.diags.append(
                error("bad-dscp", f"DSCP {clause.value} is out of range 0-63", clause.pos)
            )
            return None
        return ValueSet.of_value(6, clause.value)

    def frag(self, clause: ast.FragClause) -> ValueSet | None:
        """The fragment states a ``frag`` clause names."""
        return self._named_states(
            clause, FRAG_NAMES, "bad-frag", "fragment state", "none, first or later"
        )

    def state(self, clause: ast.StateClause) -> ValueSet | None:
        """The connection states a ``state`` clause names."""
        return self._named_states(
            clause,
            STATE_NAMES,
            "bad-state",
            "connection state",
            "new, established, related or invalid",
        )

    def _named_states(
        self,
        clause: ast.FragClause | ast.StateClause,
        names: dict[str, int],
        code: str,
        what: str,
        choices: str,
    ) -> ValueSet | None:
        """The values of a clause's comma list of ``names`` (2-bit fields), or None
        after an error at the first unknown name."""
        values = []
        for name, pos in zip(clause.states, clause.item_pos, strict=True):
            if name not in names:
                self.diags.append(error(code, f"unknown {what} {name!r}; use {choices}", pos))
                return None
            values.append(names[name])
        return ValueSet.of_values(2, values)

    # ------------------------------------------------------ implications
    def imply_transport(
        self,
        parts: _RuleParts,
        frag_clause: ast.FragClause | None,
        transport_clauses: list[ast.Clause | None],
    ) -> None:
        """A clause on a transport field (ports, ICMP type/code, TCP flags) matches only
        packets that carry a transport header: not later fragments (ir/fields.py)."""
        clauses = [c for c in transport_clauses if c is not None]
        if not clauses:
            return
        first = min(clauses, key=lambda c: (c.pos.line, c.pos.column))
        carrying = ValueSet.of_values(
            2, (v for v in FRAG_NAMES.values() if field_exists("dport", FAMILY_IPV4, PROTO_TCP, v))
        )
        if parts.frag is None:
            parts.frag = carrying
            return
        assert frag_clause is not None
        if not (parts.frag - carrying).is_empty():
            word = _clause_key(first)
            self.diags.append(
                error(
                    "frag-conflict",
                    f"'{word}' needs the transport header, which a later fragment does not "
                    "carry; write 'frag none,first' or drop 'later'",
                    frag_clause.pos,
                    note(f"'{word}' given here", first.pos),
                )
            )
            return

    def imply_protocols(
        self,
        parts: _RuleParts,
        proto_clause: ast.ProtoClause | None,
        port_clauses: list[ast.PortClause],
        icmp_clauses: list[ast.IcmpClause],
        flags_clause: ast.FlagsClause | None,
    ) -> None:
        """Fill in or check the protocol a protocol-specific clause needs."""
        # What each clause needs is the prerequisite of its field in ir/fields.py.
        icmp_by_family = protocols_with("icmp_type")
        needs: list[tuple[ast.Clause, dict[int, ValueSet], str]] = []
        if port_clauses:
            needs.append((port_clauses[0], protocols_with("dport"), "tcp, udp or sctp"))
        if icmp_clauses:
            needs.append((icmp_clauses[0], icmp_by_family, "icmp or icmpv6"))
        if flags_clause is not None:
            needs.append((flags_clause, protocols_with("tcp_flags"), "tcp"))
        if not needs:
            return
        needs.sort(key=lambda n: (n[0].pos.line, n[0].pos.column))
        required = dict(needs[0][1])
        for clause_b, req_b, what_b in needs[1:]:
            combined = {f: required[f] & req_b[f] for f in FAMILIES}
            if all(v.is_empty() for v in combined.values()):
                clause_a, _, what_a = needs[0]
                self.diags.append(
                    error(
                        "protocol-conflict",
                        f"this clause needs {what_b}, but another clause of the rule needs "
                        f"{what_a}: no packet has both",
                        clause_b.pos,
                        note("the other clause", clause_a.pos),
                    )
                )
                return
            required = combined
        # The most specific clause names the protocol in messages.
        clause, _, what = min(needs, key=lambda n: sum(v.size() for v in n[1].values()))
        if parts.protocols is None:
            parts.protocols = dict(required)
            return
        assert proto_clause is not None
        for fam in FAMILIES:
            given = parts.protocols[fam]
            if given.is_empty():
                continue
            outside = given - required[fam]
            # proto 1 over IPv6 (or 58 over IPv4) carries no ICMP header of that
            # kind: that family simply cannot match, which narrow_families reports.
            tolerated = (
                icmp_by_family[FAMILY_IPV4] | icmp_by_family[FAMILY_IPV6]
                if icmp_clauses
                else ValueSet.empty(8)
            )
            wrong = outside - tolerated
            if not wrong.is_empty():
                bad = wrong.pick()
                name = next((n for n, v in PROTOCOL_NAMES.items() if v == bad), str(bad))
                word = _clause_key(clause)
                self.diags.append(
                    error(
                        "protocol-mismatch",
                        f"'{word}' needs {what}, but the rule matches {name}",
                        clause.pos,
                        note("protocol given here", proto_clause.pos),
                    )
                )
                return
            parts.protocols[fam] = given & required[fam]

    def narrow_families(self, rdef: ast.RuleDef, parts: _RuleParts) -> None:
        """Keep the families every clause allows; none left is an error that says why."""
        reasons: list[tuple[str, frozenset[int]]] = []
        if parts.protocols is not None:
            reasons.append(
                (
                    "the protocol",
                    frozenset(f for f, v in parts.protocols.items() if not v.is_empty()),
                )
            )
        if parts.src is not None:
            reasons.append(("the source", parts.src.families()))
        if parts.dst is not None:
            reasons.append(("the destination", parts.dst.families()))
        if parts.icmp_type is not None:
            reasons.append(
                (
                    "the ICMP type",
                    frozenset(f for f, v in parts.icmp_type.items() if not v.is_empty()),
                )
            )
        families = set(FAMILIES)
        for _, fams in reasons:
            families &= fams
        if not families:
            described = "; ".join(f"{what} is {_family_words(fams)}" for what, fams in reasons)
            self.diags.append(
                error(
                    "family-conflict",
                    f"rule can never match: {described}",
                    rdef.pos,
                )
            )
        parts.families = families


def build_matches(parts: _RuleParts) -> list[model.Match]:
    """One match per family the rule can match; a single match when nothing differs."""
    per_family: dict[int, list[tuple[str, ValueSet]]] = {}
    for fam in sorted(parts.families):
        constraints: list[tuple[str, ValueSet]] = [("family", ValueSet.of_value(8, fam))]
        if parts.vlan is not None:
            constraints.append(("vlan_tagged", ValueSet.of_value(1, 1)))
            if not parts.vlan.is_full():
                constraints.append(("vlan_id", parts.vlan))
        if parts.dscp is not None:
            constraints.append(("dscp", parts.dscp))
        if parts.protocols is not None:
            constraints.append(("ip_proto", parts.protocols[fam]))
        if parts.frag is not None:
            constraints.append(("frag", parts.frag))
        if parts.state is not None:
            constraints.append(("state", parts.state))
        prefix = "ip4" if fam == FAMILY_IPV4 else "ip6"
        for name, value in ((f"{prefix}_src", parts.src), (f"{prefix}_dst", parts.dst)):
            if value is not None:
                constraints.append((name, value.for_family(fam)))
        for name, ports in (("sport", parts.sport), ("dport", parts.dport)):
            if ports is not None:
                constraints.append((name, ports))
        if parts.icmp_type is not None:
            constraints.append(("icmp_type", parts.icmp_type[fam]))
        if parts.icmp_code is not None:
            constraints.append(("icmp_code", parts.icmp_code))
        if parts.tcp_flags is not None:
            constraints.append(("tcp_flags", parts.tcp_flags))
        per_family[fam] = [(n, v) for n, v in constraints if not v.is_full()]
    if len(per_family) == 2:
        v4 = [c for c in per_family[FAMILY_IPV4] if c[0] != "family"]
        v6 = [c for c in per_family[FAMILY_IPV6] if c[0] != "family"]
        if v4 == v6:  # nothing family-specific: one rule for both
            return [model.Match(tuple(v4))]
    return [model.Match(tuple(c)) for c in per_family.values()]


def _clause_key(clause: ast.Clause) -> str:
    if isinstance(clause, ast.AddrClause | ast.PortClause):
        return clause.direction
    if isinstance(clause, ast.IcmpClause):
        return clause.field
    return _CLAUSE_WORD[type(clause)]


def _family_words(fams: frozenset[int]) -> str:
    if fams == {FAMILY_IPV4}:
        return "IPv4 only"
    if fams == {FAMILY_IPV6}:
        return "IPv6 only"
    if not fams:
        return "of no family"
    return "IPv4 or IPv6"


def _origin(pos: ast.Pos, lines: list[str]) -> model.Origin:
    text = lines[pos.line - 1].strip() if 0 < pos.line <= len(lines) else ""
    return model.Origin(pos.file, pos.line, pos.column, text)
