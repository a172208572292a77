"""Megaflows: the widest maskable cube around a packet that one policy rule decides whole.

The runtime cache installs one rule per megaflow instead of one per flow
(Open vSwitch's megaflows, computed here from the IR algebra rather than by
tracking which bits a classifier looked at). A megaflow for packet ``p``
decided by rule ``r`` is a cube ``Q`` with

* ``p`` in ``Q``;
* every field of ``Q`` a *block* a match key can express around ``p``'s
  value: a prefix (``value/len``) of an allowed length, or for small flag
  fields any bit mask;
* ``Q`` inside ``r``'s cube and disjoint from every earlier rule, so every
  packet of ``Q`` is decided by ``r`` (same action, and the cache rule's
  counters belong to one DSL line);
* maximal: no single field can be widened to its next block and stay so.

:func:`megaflow` builds it greedily: start from the widest blocks inside
``r``, cut away each earlier rule that still meets ``Q`` along the field
that loses the fewest bits, then widen each field back as far as it goes
(the cuts were greedy, so some may have become unnecessary). Dependent
fields (ports, ICMP, TCP flags) are narrowed only in packets that carry
them, and narrowing one pins ``ip_proto``, as a flower key needs.
:func:`decides_whole` is the proof the cache runs before installing.

Shapes: :data:`MEGAFLOW` (prefix blocks of any length, bit masks for TCP
flags) and :data:`EXACT_5TUPLE` (the published per-flow design: addresses,
protocol and ports exact; other fields exact only where the policy needs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ir.algebra import Cube, intersect, is_feasible, subtract
from ir.analysis import OverlapIndex
from ir.equivalence import Entry, FirstMatch, compare
from ir.fields import Space
from ir.packet import Point, prerequisites_met
from ir.valueset import ValueSet

_NO_RULE = -1
PREFIX = "prefix"
BITS = "bits"
# Bit-mask blocks are searched exhaustively: only for fields this narrow.
_BITS_MAX_WIDTH = 8


@dataclass(frozen=True, slots=True)
class FieldShape:
    """The blocks a match key can express on one field.

    Attributes:
        kind: PREFIX (``value/len`` for ``len`` in ``lengths``) or BITS (any mask).
        lengths: allowed prefix lengths, ascending, ending at the field width
            (None: every length 0..width).
    """

    kind: str = PREFIX
    lengths: tuple[int, ...] | None = None


EXACT_OR_ANY = FieldShape(PREFIX, (0,))  # the width is appended per field


@dataclass(frozen=True, slots=True)
class Shapes:
    """Per-field block shapes by field name; unnamed fields take ``default``."""

    name: str
    fields: Mapping[str, FieldShape]
    default: FieldShape = FieldShape()

    def of(self, space: Space) -> tuple[FieldShape, ...]:
        """One shape per field of ``space``, lengths filled in."""
        out = []
        for fld in space.fields:
            shape = self.fields.get(fld.name, self.default)
            if shape.kind == BITS and fld.width > _BITS_MAX_WIDTH:
                shape = FieldShape(PREFIX)
            if shape.kind == PREFIX:
                lengths = shape.lengths if shape.lengths is not None else range(fld.width + 1)
                allowed = sorted({n for n in lengths if 0 <= n <= fld.width} | {fld.width})
                shape = FieldShape(PREFIX, tuple(allowed))
            out.append(shape)
        return tuple(out)


# Flower needs the ethertype: the IP family and the VLAN tag are always exact.
EXACT = FieldShape(PREFIX, ())

MEGAFLOW = Shapes(
    "megaflow",
    {
        "family": EXACT,
        "vlan_tagged": EXACT,
        "vlan_id": EXACT_OR_ANY,
        "ip_proto": EXACT_OR_ANY,
        "icmp_type": EXACT_OR_ANY,
        "icmp_code": EXACT_OR_ANY,
        "tcp_flags": FieldShape(BITS),
    },
)

EXACT_5TUPLE = Shapes(
    "exact",
    {
        name: EXACT
        for name in (
            "family",
            "vlan_tagged",
            "ip_proto",
            "ip4_src",
            "ip4_dst",
            "ip6_src",
            "ip6_dst",
            "sport",
            "dport",
        )
    },
    default=EXACT_OR_ANY,
)


def mask_of_length(width: int, length: int) -> int:
    """The mask of the top ``length`` bits of a ``width``-bit field."""
    return ((1 << length) - 1) << (width - length)


def block(width: int, value: int, mask: int) -> ValueSet:
    """The values agreeing with ``value`` on the bits of ``mask``."""
    return ValueSet.of_ternary(width, value & mask, mask)


@dataclass(frozen=True, slots=True)
class Megaflow:
    """A megaflow: the cube, its per-field masks (the mask signature), and its rule.

    Attributes:
        cube: the packets it covers.
        masks: per field, the bits that must equal ``point``'s.
        point: the packet it was built around.
        rule: position of the policy rule deciding every packet of ``cube``.
    """

    cube: Cube
    masks: tuple[int, ...]
    point: Point
    rule: int


class PolicyRegions:
    """A first-match list of rule cubes with the indexes megaflows need."""

    def __init__(self, space: Space, cubes: Sequence[Cube]) -> None:
        self.space = space
        self.cubes = list(cubes)
        self.index = OverlapIndex(space, self.cubes)
        self.first_match = FirstMatch(space, [Entry(c, i) for i, c in enumerate(self.cubes)])

    def rule_of(self, point: Point) -> int | None:
        """The first rule whose cube holds ``point``."""
        return self.first_match.first(point)


def megaflow(regions: PolicyRegions, point: Point, shapes: Shapes) -> Megaflow | None:
    """The megaflow of ``point`` (None when no rule matches it)."""
    space = regions.space
    rule = regions.rule_of(point)
    if rule is None:
        return None
    ctx = _Context(space, point, shapes.of(space))
    rule_cube = regions.cubes[rule]
    masks = [
        _widest(fld.width, point[i], ctx.shapes[i], inside=rule_cube.sets[i])
        if ctx.exists[i]
        else 0
        for i, fld in enumerate(space.fields)
    ]
    ctx.pin_roots(masks)
    # Packets of the cube outside the rule (fields the packet lacks stay wide):
    for piece in subtract(space, _cube(space, point, masks), rule_cube):
        ctx.cut_away(masks, piece)
    for k in regions.index.candidates_of(_cube(space, point, masks), 0, rule):
        ctx.cut_away(masks, regions.cubes[k])
    _widen_back(regions, ctx, masks, rule)
    return Megaflow(_cube(space, point, masks), tuple(masks), point, rule)


def decides_whole(regions: PolicyRegions, q: Cube, rule: int) -> bool:
    """Proof that every packet of ``q`` is decided by ``rule`` (a region walk)."""
    outcome = compare(
        regions.space,
        regions.first_match,
        [Entry(q, rule)],
        left_default=_NO_RULE,
        right_default=rule,
        within=[q],
    )
    return outcome.equivalent


def narrowed(space: Space, flow: Megaflow, masks: Sequence[int]) -> Megaflow:
    """The same megaflow with more bits fixed (``masks`` must hold its own):
    a subset, so still decided whole by its rule. Used to share a mask signature."""
    if any(m & own != own for m, own in zip(masks, flow.masks, strict=True)):
        raise ValueError("narrowed: the new masks must include the megaflow's own")
    return Megaflow(_cube(space, flow.point, masks), tuple(masks), flow.point, flow.rule)


# --------------------------------------------------------------------------- internals
def _cube(space: Space, point: Point, masks: Sequence[int]) -> Cube:
    return Cube(
        tuple(
            block(fld.width, point[i], masks[i]) if masks[i] else fld.full
            for i, fld in enumerate(space.fields)
        )
    )


class _Context:
    """What the construction knows about one packet: field shapes, which fields
    it carries, and which fields are prerequisites of which."""

    def __init__(self, space: Space, point: Point, shapes: tuple[FieldShape, ...]) -> None:
        self.space = space
        self.point = point
        self.shapes = shapes
        self.exists = tuple(prerequisites_met(space, point, i) for i in range(len(space.fields)))
        roots: list[set[int]] = [set() for _ in space.fields]
        for i, alternatives in space.dependents:
            roots[i] = {root for alt in alternatives for root, _vs in alt}
        self.roots = tuple(tuple(sorted(r)) for r in roots)
        self.is_root = frozenset(r for rs in self.roots for r in rs)

    def pin_roots(self, masks: list[int]) -> None:
        """A narrowed dependent field needs its prerequisite fields exact (flower
        matches ports only under one ip_proto)."""
        for i, mask in enumerate(masks):
            if mask:
                for root in self.roots[i]:
                    masks[root] = (1 << self.space.fields[root].width) - 1

    def meets(self, masks: list[int], obstacle: Cube) -> bool:
        both = intersect(_cube(self.space, self.point, masks), obstacle)
        return both is not None and is_feasible(self.space, both)

    def cut_away(self, masks: list[int], obstacle: Cube) -> None:
        """Narrow one field so the cube no longer meets ``obstacle``, losing the
        fewest bits (pinning prerequisites counts as lost bits too)."""
        if not self.meets(masks, obstacle):
            return
        best: tuple[int, list[int]] | None = None
        before = sum(m.bit_count() for m in masks)
        for i, fld in enumerate(self.space.fields):
            if not self.exists[i]:
                continue
            for m in _candidates(fld.width, self.shapes[i], masks[i]):
                if m == masks[i]:
                    continue
                trial = list(masks)
                trial[i] = m
                self.pin_roots(trial)
                if i not in self.is_root:
                    if block(fld.width, self.point[i], m).overlaps(obstacle.sets[i]):
                        continue
                elif self.meets(trial, obstacle):
                    continue
                loss = sum(t.bit_count() for t in trial) - before
                if best is None or loss < best[0]:
                    best = (loss, trial)
                break
        if best is None:
            raise AssertionError("megaflow: no field separates the packet from an obstacle")
        masks[:] = best[1]


def _candidates(width: int, shape: FieldShape, current: int) -> list[int]:
    """Masks holding ``current``'s bits, widest block first."""
    if shape.kind == BITS:
        masks = [m for m in range(1 << width) if m & current == current]
        return sorted(masks, key=lambda m: (m.bit_count(), m))
    assert shape.lengths is not None
    out = []
    for n in shape.lengths:
        m = mask_of_length(width, n)
        if m & current == current:
            out.append(m)
    return out


def _widest(width: int, value: int, shape: FieldShape, *, inside: ValueSet) -> int:
    """The widest mask whose block around ``value`` lies in ``inside``."""
    for m in _candidates(width, shape, 0):
        if block(width, value, m).is_subset(inside):
            return m
    return (1 << width) - 1


def _wider(width: int, shape: FieldShape, current: int) -> list[int]:
    """Masks with fewer bits than ``current`` (held by it), widest first."""
    if shape.kind == BITS:
        subs = [m for m in range(1 << width) if m & current == m and m != current]
        return sorted(subs, key=lambda m: (m.bit_count(), m))
    assert shape.lengths is not None
    return [
        mask_of_length(width, n)
        for n in shape.lengths
        if mask_of_length(width, n) & current == mask_of_length(width, n)
        and mask_of_length(width, n) != current
    ]


def _widen_back(regions: PolicyRegions, ctx: _Context, masks: list[int], rule: int) -> None:
    """Widen each field to the widest block that keeps the cube decided whole by
    ``rule``, until no field widens (the greedy cuts may have overshot)."""
    space = regions.space
    changed = True
    while changed:
        changed = False
        for i, fld in enumerate(space.fields):
            if not masks[i]:
                continue
            if i in ctx.is_root and any(masks[d] and i in ctx.roots[d] for d in range(len(masks))):
                continue  # pinned for a narrowed dependent field
            for m in _wider(fld.width, ctx.shapes[i], masks[i]):
                trial = list(masks)
                trial[i] = m
                if _inside_region(regions, _cube(space, ctx.point, trial), rule):
                    masks[i] = m
                    changed = True
                    break


def _inside_region(regions: PolicyRegions, q: Cube, rule: int) -> bool:
    """Whether every packet of ``q`` is in ``rule``'s cube and in no earlier one
    (index look-ups; :func:`decides_whole` is the independent proof)."""
    space = regions.space
    for piece in subtract(space, q, regions.cubes[rule]):
        if is_feasible(space, piece):
            return False
    for k in regions.index.candidates_of(q, 0, rule):
        both = intersect(q, regions.cubes[k])
        if both is not None and is_feasible(space, both):
            return False
    return True
