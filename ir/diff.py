"""Semantic diff of two policy versions: exactly the packets whose verdict changes.

A packet can only change verdict inside the cube of a rule that was added
or removed: the two rule lists are aligned (longest common subsequence of
identical rules, as ``diff`` aligns lines), and if a packet's deciding rule
is an aligned rule on both sides, order preservation makes it the same rule
with the same action. So the walk of :func:`ir.equivalence.compare`
(``collect=True``) only visits the union of the changed rules' cubes, and a
one-line edit to a 10,000-rule policy costs a few regions, not the whole
partition.

The changed set comes back as disjoint cubes, each with the deciding rule on
both sides and an example packet; cubes with the same pair of rules are
merged where they differ in one field only, so the summary stays short.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from ir.algebra import Cube, subtract, witness
from ir.equivalence import Entry, compare
from ir.fields import HEADER_SPACE
from ir.model import Match, Policy, Rule
from ir.packet import Packet


@dataclass(frozen=True, slots=True)
class Change:
    """A cube of packets whose verdict changes, and the rule deciding it on each side.

    Attributes:
        region: the packets (a cube of the header space).
        example: one of them.
        old: the rule deciding them in the old policy.
        new: the rule deciding them in the new policy.
    """

    region: Cube
    example: Packet
    old: Rule
    new: Rule

    def summary(self) -> str:
        """``<match>: <old action> -> <new action>``."""
        return f"{Match.from_cube(self.region)}: {self.old.action} -> {self.new.action}"


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """The outcome of :func:`diff_policies`.

    Attributes:
        changes: disjoint cubes whose union is exactly the changed packets.
        settled: False when the walk hit its step limit (the list may be partial).
        changed_rules: rules present on one side only (removed, added).
    """

    changes: tuple[Change, ...]
    settled: bool
    changed_rules: tuple[tuple[Rule, ...], tuple[Rule, ...]]

    @property
    def empty(self) -> bool:
        """True when no packet changes verdict (and the walk finished)."""
        return self.settled and not self.changes


def _rule_key(rule: Rule) -> tuple[object, ...]:
    return (rule.match, rule.action)


def changed_rules(old: Policy, new: Policy) -> tuple[list[int], list[int]]:
    """Positions of old rules not kept and new rules not present before."""
    a = [_rule_key(r) for r in old.rules]
    b = [_rule_key(r) for r in new.rules]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    kept_old: set[int] = set()
    kept_new: set[int] = set()
    for block in matcher.get_matching_blocks():
        kept_old.update(range(block.a, block.a + block.size))
        kept_new.update(range(block.b, block.b + block.size))
    removed = [i for i in range(len(a)) if i not in kept_old]
    added = [j for j in range(len(b)) if j not in kept_new]
    return removed, added


def _disjoint(cubes: Sequence[Cube]) -> list[Cube]:
    """The union of ``cubes`` as disjoint cubes."""
    out: list[Cube] = []
    for c in cubes:
        pieces = [c]
        for earlier in out:
            pieces = [p for piece in pieces for p in subtract(HEADER_SPACE, piece, earlier)]
        out.extend(pieces)
    return out


def diff_policies(old: Policy, new: Policy, *, step_limit: int = 500_000) -> PolicyDiff:
    """Every packet whose verdict differs between ``old`` and ``new``, as cubes."""
    removed, added = changed_rules(old, new)
    suspects = [old.rules[i].match.cube for i in removed] + [new.rules[j].match.cube for j in added]
    rules_changed = (tuple(old.rules[i] for i in removed), tuple(new.rules[j] for j in added))
    if not suspects:
        return PolicyDiff((), True, rules_changed)
    left = [Entry(r.match.cube, r.action) for r in old.rules]
    right = [Entry(r.match.cube, r.action) for r in new.rules]
    outcome = compare(
        HEADER_SPACE,
        left,
        right,
        within=_disjoint(suspects),
        collect=True,
        step_limit=step_limit,
    )
    changes = []
    for d in outcome.divergences:
        assert d.left is not None and d.right is not None, "both policies end in a default"
        changes.append((d.region, old.rules[d.left], new.rules[d.right]))
    merged = _merge(changes)
    out = []
    for region, old_rule, new_rule in merged:
        point = witness(HEADER_SPACE, region)
        assert point is not None
        out.append(Change(region, Packet(point), old_rule, new_rule))
    return PolicyDiff(tuple(out), outcome.settled, rules_changed)


def _merge(changes: list[tuple[Cube, Rule, Rule]]) -> list[tuple[Cube, Rule, Rule]]:
    """Merge cubes with the same pair of rules that differ in exactly one field."""
    merged = True
    items = list(changes)
    while merged:
        merged = False
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                ca, ra, na = items[a]
                cb, rb, nb = items[b]
                if (ra.priority, na.priority) != (rb.priority, nb.priority):
                    continue
                differing = [
                    i for i, (x, y) in enumerate(zip(ca.sets, cb.sets, strict=True)) if x != y
                ]
                if len(differing) != 1:
                    continue
                i = differing[0]
                sets = list(ca.sets)
                sets[i] = ca.sets[i] | cb.sets[i]
                items[a] = (Cube(tuple(sets)), ra, na)
                del items[b]
                merged = True
                break
            if merged:
                break
    return items
