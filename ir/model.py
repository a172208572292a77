"""The IR: immutable values for matches, actions, rules, policies and programs.

The IR is the contract in the middle of flowc. The DSL front end produces it,
every backend consumes it, and :func:`ir.interp.evaluate` defines what it
means. Nodes are frozen dataclasses with tuple fields, so they hash and
compare structurally and a pass returns a new IR instead of editing one.

A :class:`Match` is a conjunction of per-field constraints, each a
:class:`~ir.valueset.ValueSet` (a union of prefixes, ternaries or ranges). A
:class:`Rule` is (priority, match, action, origin); the origin names the DSL
line, so every diagnostic and counterexample can point at source. A
:class:`Policy` is the ordered rule list of one hook; its last rule is the
``default`` and matches every packet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from ir.algebra import Cube, format_values
from ir.fields import HEADER_SPACE
from ir.valueset import ValueSet

ALLOW = "allow"
DROP = "drop"
REDIRECT = "redirect"
MIRROR = "mirror"
MARK = "mark"
ACTION_KINDS = (ALLOW, DROP, REDIRECT, MIRROR, MARK)

INGRESS = "ingress"
EGRESS = "egress"

MARK_WIDTH = 32


class IRError(ValueError):
    """An IR value breaks one of its invariants."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where in the DSL a rule came from.

    Attributes:
        file: path of the policy file as the user named it.
        line: 1-based line.
        column: 1-based column.
        text: the rule as written (one line, for messages).
    """

    file: str
    line: int
    column: int = 1
    text: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Action:
    """What a rule does with a packet it decides.

    Attributes:
        kind: one of ``allow``, ``drop``, ``redirect``, ``mirror``, ``mark``.
        target: endpoint name for redirect/mirror.
        device: the endpoint's device, resolved by the front end.
        mark: the packet mark for ``mark``.
    """

    kind: str
    target: str | None = None
    device: str | None = None
    mark: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise IRError when the fields do not fit the kind."""
        if self.kind not in ACTION_KINDS:
            raise IRError(f"unknown action {self.kind!r}")
        wants_target = self.kind in (REDIRECT, MIRROR)
        if wants_target != (self.target is not None and self.device is not None):
            raise IRError(
                f"{self.kind}: target/device {'missing' if wants_target else 'unexpected'}"
            )
        if (self.kind == MARK) != (self.mark is not None):
            raise IRError(f"{self.kind}: mark {'missing' if self.kind == MARK else 'unexpected'}")
        if self.mark is not None and not 0 <= self.mark < (1 << MARK_WIDTH):
            raise IRError(f"mark {self.mark} does not fit in {MARK_WIDTH} bits")

    def __str__(self) -> str:
        if self.kind in (REDIRECT, MIRROR):
            return f"{self.kind} -> {self.target} (dev {self.device})"
        if self.kind == MARK:
            return f"mark {self.mark:#x}" if self.mark is not None else "mark"
        return self.kind


def format_constraint(render: str, values: ValueSet) -> str:
    """One field's value set as IR text; an address set whose complement needs fewer
    prefixes is written as that complement: ``not 192.168.0.0/16`` (within the field,
    so within the address family), prefixes joined by commas either way.

    >>> format_constraint("ip4", ~ValueSet.of_prefix(32, 0xC0A80000, 16))
    'not 192.168.0.0/16'
    >>> format_constraint("ip4", ValueSet.of_prefix(32, 0x0A000000, 8))
    '10.0.0.0/8'
    """
    if render in ("ip4", "ip6") and values.intervals:
        outside = ~values
        if outside.intervals and len(outside.to_prefixes()) < len(values.to_prefixes()):
            return "not " + format_values(render, outside)
    return format_values(render, values)


@dataclass(frozen=True, slots=True)
class Match:
    """A conjunction of per-field constraints.

    Attributes:
        constraints: ``(field, values)`` pairs in registry order, only for
            constrained fields; a field that is absent matches anything.
        cube: the same constraints as a cube over the header space (derived).
    """

    constraints: tuple[tuple[str, ValueSet], ...] = ()
    cube: Cube = field(init=False, compare=False, hash=False, repr=False)
    # (field position, values) of the constrained fields, for the interpreter's loop.
    positions: tuple[tuple[int, ValueSet], ...] = field(
        init=False, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        sets = [f.full for f in HEADER_SPACE.fields]
        positions = []
        for name, values in self.constraints:
            if name not in HEADER_SPACE.index:
                raise IRError(f"unknown field {name!r}")
            sets[HEADER_SPACE.position(name)] = values
            positions.append((HEADER_SPACE.position(name), values))
        object.__setattr__(self, "cube", Cube(tuple(sets)))
        object.__setattr__(self, "positions", tuple(positions))
        self.validate()

    def matches(self, point: tuple[int, ...]) -> bool:
        """True when the packet (its field values) satisfies every constraint."""
        return all(point[i] in values for i, values in self.positions)

    @staticmethod
    def from_cube(c: Cube) -> Match:
        """The match of exactly the packets in ``c``."""
        return Match(
            tuple(
                (f.name, s)
                for f, s in zip(HEADER_SPACE.fields, c.sets, strict=True)
                if not s.is_full()
            )
        )

    def validate(self) -> None:
        """Raise IRError unless constraints are canonical and prerequisites are explicit.

        A constraint on a dependent field (say ``dport``) must come with
        constraints that imply the field exists (``ip_proto`` in TCP/UDP/SCTP);
        otherwise a packet lacking the field, which carries 0 there, could
        match by accident.
        """
        positions = []
        for name, values in self.constraints:
            if name not in HEADER_SPACE.index:
                raise IRError(f"unknown field {name!r}")
            fld = HEADER_SPACE.field(name)
            if values.width != fld.width:
                raise IRError(f"{name}: width {values.width}, expected {fld.width}")
            if values.is_full():
                raise IRError(f"{name}: a full constraint must be omitted")
            positions.append(HEADER_SPACE.position(name))
        if positions != sorted(set(positions)):
            raise IRError("constraints must be unique and in registry order")
        for name, _ in self.constraints:
            fld = HEADER_SPACE.field(name)
            if not fld.prerequisite:
                continue
            implied = any(
                all(
                    self.cube.sets[HEADER_SPACE.position(root)].is_subset(allowed)
                    for root, allowed in alternative
                )
                for alternative in fld.prerequisite
            )
            if not implied:
                raise IRError(f"{name} is constrained but its prerequisites are not")

    def get(self, name: str) -> ValueSet:
        """The constraint on ``name`` (the full set when unconstrained)."""
        return self.cube.sets[HEADER_SPACE.position(name)]

    def __str__(self) -> str:
        if not self.constraints:
            return "*"
        return " ".join(
            f"{name}={format_constraint(HEADER_SPACE.field(name).render, values)}"
            for name, values in self.constraints
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One prioritised match-action rule.

    Attributes:
        priority: position in the policy (0 is tried first); unique per policy.
        match: the packets the rule matches.
        action: what happens to them.
        origin: the DSL rule this came from (one DSL rule may yield an IPv4
            and an IPv6 IR rule with the same origin).
        is_default: True for the policy's final catch-all rule.
    """

    priority: int
    match: Match
    action: Action
    origin: Origin
    is_default: bool = False

    def __str__(self) -> str:
        return f"{self.priority:>5}  {self.match}  => {self.action}   # {self.origin}"


@dataclass(frozen=True, slots=True)
class Hook:
    """Where a policy attaches: a device and a direction."""

    device: str
    direction: str

    def __post_init__(self) -> None:
        if self.direction not in (INGRESS, EGRESS):
            raise IRError(f"direction must be ingress or egress, not {self.direction!r}")

    def __str__(self) -> str:
        return f"{self.direction} on {self.device}"


@dataclass(frozen=True, slots=True)
class Policy:
    """The ordered rules of one hook; the first matching rule decides.

    Attributes:
        name: the DSL policy name (``--hook NAME`` on the CLI).
        hook: device and direction.
        rules: rules in priority order, ending with the default.
        origin: where the policy was declared.
    """

    name: str
    hook: Hook
    rules: tuple[Rule, ...]
    origin: Origin

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise IRError unless priorities increase and the last rule is a catch-all default."""
        if not self.rules or not self.rules[-1].is_default or self.rules[-1].match.constraints:
            raise IRError(f"policy {self.name}: must end with a catch-all default rule")
        if any(r.is_default for r in self.rules[:-1]):
            raise IRError(f"policy {self.name}: default rule before the end")
        prios = [r.priority for r in self.rules]
        if any(a >= b for a, b in itertools.pairwise(prios)):
            raise IRError(f"policy {self.name}: priorities must strictly increase")

    @property
    def default(self) -> Rule:
        """The catch-all rule at the end."""
        return self.rules[-1]

    def renumbered(self, rules: tuple[Rule, ...]) -> Policy:
        """A policy with ``rules`` renumbered 0, 1, 2, ... (for passes that drop rules)."""
        return replace(self, rules=tuple(replace(r, priority=i) for i, r in enumerate(rules)))


@dataclass(frozen=True, slots=True)
class Program:
    """Everything one compilation produced: one policy per hook."""

    policies: tuple[Policy, ...]

    def policy(self, name: str) -> Policy:
        """The policy called ``name`` (KeyError with the known names if none)."""
        for p in self.policies:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.policies) or "none"
        raise KeyError(f"no policy named {name!r} (policies: {known})")
