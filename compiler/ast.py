"""The policy AST: what the user wrote, with positions, before names mean anything.

Nodes are frozen dataclasses. Positions (:class:`Pos`) are excluded from
equality, so ``parse(fmt(ast)) == ast`` compares meaning-bearing structure,
not layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Pos:
    """A source span: file, 1-based start line/column, end line/column (exclusive column)."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int


NOWHERE = Pos("<none>", 0, 0, 0, 0)


def _pos() -> Pos:
    return field(default=NOWHERE, compare=False, repr=False)


# ------------------------------------------------------------ set elements
@dataclass(frozen=True, slots=True)
class CidrLit:
    """An IPv4/IPv6 address or prefix, as written (validated by the resolver)."""

    text: str
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class AnyAddr:
    """``any``: every address of both families."""

    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class NameRef:
    """A reference to an endpoint or set."""

    name: str
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class PortLit:
    """A port or port range ``lo-hi`` (``hi`` is None for a single port)."""

    lo: int
    hi: int | None = None
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class SetLit:
    """An inline ``{ ... }`` set of elements."""

    elements: tuple[SetElement, ...]
    pos: Pos = _pos()


SetElement = CidrLit | AnyAddr | NameRef | PortLit | SetLit


# -------------------------------------------------------------- top level
@dataclass(frozen=True, slots=True)
class Include:
    """``include "path"``: the path as written (relative to the including file)."""

    path: str
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``endpoint NAME { ip A, B; dev D }``: a container on this host."""

    name: str
    addresses: tuple[CidrLit, ...]
    device: str | None
    pos: Pos = _pos()
    name_pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class SetDef:
    """``set NAME = { ... }``: a named set of addresses or of ports."""

    name: str
    value: SetLit
    pos: Pos = _pos()
    name_pos: Pos = _pos()


# ------------------------------------------------------------ rule clauses
@dataclass(frozen=True, slots=True)
class ProtoClause:
    """A protocol match: names (tcp, udp, icmp, icmpv6, sctp) or numbers."""

    protocols: tuple[str | int, ...]
    explicit: bool = False  # written as ``proto X`` rather than a bare name
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class AddrExpr:
    """An address operand, optionally negated."""

    negated: bool
    operand: SetElement
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class AddrClause:
    """``from X`` (direction ``from``) or ``to X``."""

    direction: str
    expr: AddrExpr
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class PortExpr:
    """A port operand, optionally negated."""

    negated: bool
    operand: SetElement
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class PortClause:
    """``sport P`` or ``dport P``."""

    direction: str
    expr: PortExpr
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class IcmpClause:
    """``type T`` or ``code C`` (T may be a name such as echo-request)."""

    field: str
    value: int | str
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class FlagsClause:
    """``flags syn,!ack`` (names; ``!`` means clear) or ``flags 0x02/0x12``.

    Attributes:
        named: ``(flag, must_be_set)`` pairs, empty for the masked form.
        value: the masked form's value, or None.
        mask: the masked form's mask, or None.
    """

    named: tuple[tuple[str, bool], ...] = ()
    value: int | None = None
    mask: int | None = None
    pos: Pos = _pos()
    item_pos: tuple[Pos, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class VlanClause:
    """``vlan N`` or ``vlan LO-HI``."""

    lo: int
    hi: int | None = None
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class DscpClause:
    """``dscp N`` or ``dscp NAME`` (ef, af11..af43, cs0..cs7)."""

    value: int | str
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class FragClause:
    """``frag none|first|later`` or a comma list of them (``frag first,later``)."""

    states: tuple[str, ...]
    pos: Pos = _pos()
    item_pos: tuple[Pos, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StateClause:
    """``state new|established|related|invalid`` or a comma list of them."""

    states: tuple[str, ...]
    pos: Pos = _pos()
    item_pos: tuple[Pos, ...] = field(default=(), compare=False, repr=False)


Clause = (
    ProtoClause
    | AddrClause
    | PortClause
    | IcmpClause
    | FlagsClause
    | VlanClause
    | DscpClause
    | FragClause
    | StateClause
)


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """The action words of a rule: ``allow``, ``drop``, ``redirect``, ``mirror``, ``mark N``."""

    kind: str
    mark: int | None = None
    target: NameRef | None = None
    pos: Pos = _pos()
    mark_hex: bool = field(default=False, compare=False, repr=False)  # written as 0x...


@dataclass(frozen=True, slots=True)
class RuleDef:
    """One rule: an action and the clauses ANDed together."""

    action: ActionSpec
    clauses: tuple[Clause, ...]
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class DefaultDef:
    """``default ACTION``."""

    action: ActionSpec
    pos: Pos = _pos()


@dataclass(frozen=True, slots=True)
class PolicyDef:
    """``policy NAME ingress|egress on DEV { ... }``.

    Attributes:
        defaults: every ``default`` statement written (the checker requires exactly one).
    """

    name: str
    direction: str
    device: str
    rules: tuple[RuleDef, ...]
    defaults: tuple[DefaultDef, ...]
    pos: Pos = _pos()
    name_pos: Pos = _pos()


Item = Include | Endpoint | SetDef | PolicyDef


@dataclass(frozen=True, slots=True)
class Comment:
    """A ``#`` comment, kept so ``flowc fmt`` does not lose it."""

    text: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One parsed file: its items in order, and its comments."""

    path: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
