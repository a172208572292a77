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

Speed (issue 17): the construction runs per new flow, so it never builds a
cube while searching. For each earlier rule that can meet the packet's
starting cube (the obstacles) and each field the packet carries it computes
once, with numpy over the rules' per-field bounds (precomputed per policy),
the shortest prefix around the packet's value that misses the rule's set on
that field. A cube of per-field prefix lengths then misses an obstacle iff
some field is at least that long, so the greedy cut and the widening back
are comparisons of small integers. :func:`megaflow_by_algebra` is the
previous construction (the same greedy, each step a cube operation), kept
as the reference the benchmark and the tests compare against.

Shapes: :data:`MEGAFLOW` (prefix blocks of any length, bit masks for TCP
flags) and :data:`EXACT_5TUPLE` (the published per-flow design: addresses,
protocol and ports exact; other fields exact only where the policy needs).
"""

from __future__ import annotations

import functools
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ir.algebra import Cube, intersect, is_feasible, subtract
from ir.analysis import OverlapIndex
from ir.equivalence import Entry, FirstMatch, compare
from ir.fields import Space
from ir.packet import Point, fields_present
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
    free = ((1 << width) - 1) ^ mask
    if not free & (free + 1):  # a prefix mask: one range, the common case
        return ValueSet.of_range(width, value & mask, (value & mask) | free)
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
        self.roots = _roots(space)
        # Box queries compare only the fields some rule constrains (the others
        # meet every box), as the rank arrays' columns.
        self.informative = [
            j for j in range(len(space.fields)) if not all(c.sets[j].is_full() for c in self.cubes)
        ]
        self.lo_ranks = self.index.lo[:, self.informative]
        self.hi_ranks = self.index.hi[:, self.informative]
        # Per rule, the fields it constrains: membership and subset tests skip the rest.
        self.constraints = [
            tuple((j, s) for j, s in enumerate(c.sets) if not s.is_full()) for c in self.cubes
        ]
        self._shapes: dict[int, tuple[Shapes, tuple[FieldShape, ...]]] = {}

    def rule_of(self, point: Point) -> int | None:
        """The first rule whose cube holds ``point``."""
        return self.first_match.first(point)

    def holds(self, rule: int, point: Point) -> bool:
        """Whether rule ``rule``'s cube holds ``point``."""
        return all(point[j] in s for j, s in self.constraints[rule])

    def exists_of(self, point: Point) -> tuple[bool, ...]:
        """Per field, whether ``point`` carries it (:func:`ir.packet.fields_present`)."""
        return fields_present(self.space, point)

    @functools.cached_property
    def columns(self) -> _Columns:
        """The rules' per-field bounds as arrays (built on first use; the cache
        asks for them when it takes a policy, so no flow waits for them)."""
        return _Columns(self.space, self.cubes)

    def shapes_of(self, shapes: Shapes) -> tuple[FieldShape, ...]:
        """``shapes.of(space)``, remembered (it runs once per new flow otherwise)."""
        known = self._shapes.get(id(shapes))
        if known is None or known[0] is not shapes:
            known = self._shapes[id(shapes)] = (shapes, shapes.of(self.space))
        return known[1]


def megaflow(
    regions: PolicyRegions, point: Point, shapes: Shapes, *, rule: int | None = None
) -> Megaflow | None:
    """The megaflow of ``point`` (None when no rule matches it).

    ``rule`` is the slow path's word for the rule deciding ``point`` (a miss
    event carries it), which saves the first-match look-up; it is checked on
    the way (``point`` in its cube, in no earlier rule's), and a wrong one
    is replaced by the first match.

    Greedy, as :func:`megaflow_by_algebra`: the widest blocks inside the
    rule, each obstacle still met cut away along the field that loses the
    fewest bits, then each field widened back as far as every obstacle
    stays missed; obstacle tests are comparisons of per-field miss lengths.
    """
    space = regions.space
    if rule is None or not 0 <= rule < len(regions.cubes) or not regions.holds(rule, point):
        rule = regions.rule_of(point)
    if rule is None:
        return None
    ctx, masks = _start(regions, point, shapes, rule)
    rule_cube = regions.cubes[rule]
    # Only a field left whole (one the packet lacks) can reach outside the rule.
    pieces = (
        subtract(space, _cube(space, point, masks), rule_cube)
        if any(not masks[i] and not rule_cube.sets[i].is_full() for i in range(len(space.fields)))
        else []
    )
    candidates = _box_candidates(regions, point, masks, rule)
    if pieces or candidates:
        obstacles = _Obstacles(regions, ctx, pieces, candidates, masks)
        if obstacles.holding_point():
            # An earlier rule holds the packet: the hint was not its first match.
            return megaflow(regions, point, shapes)
        obstacles.cut_all(masks)
        obstacles.widen_back(masks)
        if obstacles.bits_fields:
            # The per-obstacle ternaries of bit-mask fields can leave a bit a
            # single exact step would free (hypothesis found one): finish with
            # the cube algebra's widening, which only ever widens while inside.
            _widen_back(regions, ctx, masks, rule)
    return Megaflow(_cube(space, point, masks), tuple(masks), point, rule)


def _box_candidates(
    regions: PolicyRegions, point: Point, masks: Sequence[int], stop: int
) -> list[int]:
    """Rules before ``stop`` whose bounding box meets the box of the blocks of
    ``masks`` around ``point`` (without building the cube)."""
    fields = regions.space.fields
    hulls = []
    for j in regions.informative:
        lo = point[j] & masks[j]
        hulls.append((lo, lo | (((1 << fields[j].width) - 1) ^ masks[j])))
    return _boxes_meeting(regions, hulls, stop)


def _boxes_meeting(regions: PolicyRegions, hulls: list[tuple[int, int]], stop: int) -> list[int]:
    """Rules before ``stop`` whose box meets the box of ``hulls`` (one (lo, hi) per
    informative field), by rank as :class:`ir.analysis.OverlapIndex` does."""
    if stop <= 0:
        return []
    endpoints = regions.index.endpoints
    below, above = [], []
    for j, (lo, hi) in zip(regions.informative, hulls, strict=True):
        below.append(bisect_right(endpoints[j], hi) - 1)
        above.append(bisect_left(endpoints[j], lo))
    hit = np.all(
        (regions.lo_ranks[:stop] <= np.asarray(below))
        & (regions.hi_ranks[:stop] >= np.asarray(above)),
        axis=1,
    )
    return [int(k) for k in np.flatnonzero(hit)]


def _start(
    regions: PolicyRegions, point: Point, shapes: Shapes, rule: int
) -> tuple[_Context, list[int]]:
    """Both constructions' first step: per field the widest block around the
    packet inside the rule's set (the packet's absent fields stay whole), with
    the prerequisites of narrowed fields pinned."""
    space = regions.space
    ctx = _Context(space, point, regions.shapes_of(shapes), regions.roots, regions.exists_of(point))
    rule_cube = regions.cubes[rule]
    masks = [
        _widest(fld.width, point[i], ctx.shapes[i], inside=rule_cube.sets[i])
        if ctx.exists[i]
        else 0
        for i, fld in enumerate(space.fields)
    ]
    ctx.pin_roots(masks)
    return ctx, masks


def megaflow_by_algebra(regions: PolicyRegions, point: Point, shapes: Shapes) -> Megaflow | None:
    """The megaflow of ``point`` built with cube operations at every step: the
    construction :func:`megaflow` replaced (7-11 ms per flow on acl1000), kept
    as the reference its rule counts and speed are measured against."""
    space = regions.space
    rule = regions.rule_of(point)
    if rule is None:
        return None
    ctx, masks = _start(regions, point, shapes, rule)
    rule_cube = regions.cubes[rule]
    # Packets of the cube outside the rule (fields the packet lacks stay wide):
    for piece in subtract(space, _cube(space, point, masks), rule_cube):
        ctx.cut_away(masks, piece)
    for k in regions.index.candidates_of(_cube(space, point, masks), 0, rule):
        ctx.cut_away(masks, regions.cubes[k])
    _widen_back(regions, ctx, masks, rule)
    return Megaflow(_cube(space, point, masks), tuple(masks), point, rule)


def decides_whole_by_walk(regions: PolicyRegions, q: Cube, rule: int) -> bool:
    """The same proof as :func:`decides_whole` by the equivalence checker's region
    walk (the install-time proof before issue 17, kept for the comparison)."""
    outcome = compare(
        regions.space,
        regions.first_match,
        [Entry(q, rule)],
        left_default=_NO_RULE,
        right_default=rule,
        within=[q],
    )
    return outcome.equivalent


def decides_whole(regions: PolicyRegions, q: Cube, rule: int) -> bool:
    """Proof that every packet of ``q`` is decided by ``rule``: no packet of ``q``
    lies outside the rule's cube, and none lies in an earlier rule's cube.

    Exact cube algebra on the earlier rules whose bounding boxes meet ``q``
    (the box index is exact about which boxes meet), independent of how the
    megaflow was built; first-match semantics make these two conditions the
    whole of "decided by ``rule``".
    """
    space = regions.space
    rule_cube = regions.cubes[rule]
    inside = all(q.sets[j] is r or q.sets[j].is_subset(r) for j, r in regions.constraints[rule])
    if not inside and any(is_feasible(space, p) for p in subtract(space, q, rule_cube)):
        return False
    if any(not s.intervals for s in q.sets):
        return True  # no packet at all
    hulls = [q.sets[j].hull() for j in regions.informative]
    for k in _boxes_meeting(regions, hulls, rule):
        both = intersect(q, regions.cubes[k])
        if both is not None and is_feasible(space, both):
            return False
    return True


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


def _roots(space: Space) -> tuple[tuple[int, ...], ...]:
    """Per field, the root fields its prerequisite names (empty for roots)."""
    roots: list[set[int]] = [set() for _ in space.fields]
    for i, alternatives in space.dependents:
        roots[i] = {root for alt in alternatives for root, _vs in alt}
    return tuple(tuple(sorted(r)) for r in roots)


class _Context:
    """What the construction knows about one packet: field shapes, which fields
    it carries, and which fields are prerequisites of which."""

    def __init__(
        self,
        space: Space,
        point: Point,
        shapes: tuple[FieldShape, ...],
        roots: tuple[tuple[int, ...], ...],
        exists: tuple[bool, ...],
    ) -> None:
        self.space = space
        self.point = point
        self.shapes = shapes
        self.exists = exists
        self.roots = roots
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
    if inside.is_full():
        if shape.kind == BITS:
            return 0
        assert shape.lengths is not None
        return mask_of_length(width, shape.lengths[0])
    if shape.kind == PREFIX and shape.lengths is not None:
        # A prefix block is an aligned range: it lies in ``inside`` iff it stays
        # inside the one interval holding ``value``, i.e. misses both neighbours.
        intervals = inside.intervals
        j = bisect_right(intervals, (value, 1 << width)) - 1
        if j >= 0 and intervals[j][1] >= value:
            lo, hi = intervals[j]
            need = max(
                _miss_value(width, value, lo - 1) if lo > 0 else 0,
                _miss_value(width, value, hi + 1) if hi < (1 << width) - 1 else 0,
            )
            for n in shape.lengths:
                if n >= need:
                    return mask_of_length(width, n)
        return (1 << width) - 1
    for m in _candidates(width, shape, 0):
        if block(width, value, m).is_subset(inside):
            return m
    return (1 << width) - 1


def _miss_value(width: int, value: int, other: int) -> int:
    """The shortest prefix length whose block around ``value`` excludes ``other``
    (one past their common prefix)."""
    return width - (value ^ other).bit_length() + 1


def _miss_length(width: int, value: int, values: ValueSet) -> int:
    """The shortest prefix length whose block around ``value`` misses ``values``
    (_INF when ``value`` is in it). The block misses the set iff it misses the
    nearest interval on each side."""
    intervals = values.intervals
    j = bisect_right(intervals, (value, 1 << width)) - 1
    if j >= 0 and intervals[j][1] >= value:
        return _INF
    need = 0
    if j >= 0:
        need = _miss_value(width, value, intervals[j][1])
    if j + 1 < len(intervals):
        need = max(need, _miss_value(width, value, intervals[j + 1][0]))
    return need


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


# ------------------------------------------------------------- miss-length search
_INF = 1 << 20  # a prefix length no field reaches: no block on this field misses the set
# float64 holds XORs of values this wide exactly, so frexp gives their bit length.
_NUMPY_MAX_WIDTH = 48


def _normalised(space: Space, c: Cube) -> Cube:
    """``c`` with the same packets and tighter raw sets: each field cut to its
    domain, and the root fields of every dependent field ``c`` requires present
    (its set lacks 0) cut to the values some prerequisite alternative allows.
    Raw disjointness from the tighter cube is then what usually makes an
    obstacle miss a cube that pins the packet's protocol."""
    sets = [s if d.is_full() else s & d for s, d in zip(c.sets, space.domains, strict=True)]
    for i, alternatives in space.dependents:
        if 0 in sets[i]:
            continue
        for root in {r for alt in alternatives for r, _ in alt}:
            allowed = ValueSet.empty(space.fields[root].width)
            for alt in alternatives:
                named = [vs for r, vs in alt if r == root]
                allowed = allowed | (named[0] if named else space.fields[root].full)
            sets[root] = sets[root] & allowed
    return Cube(tuple(sets))


class _Columns:
    """Per field, every rule's (normalised) set as arrays: whether it is the whole
    field (never separates), one interval (handled by numpy over its bounds)
    or more (looked up one by one). Built once per policy."""

    def __init__(self, space: Space, cubes: Sequence[Cube]) -> None:
        self.cubes = [_normalised(space, c) for c in cubes]
        n = len(self.cubes)
        self.sets: list[list[ValueSet]] = []
        self.full: list[np.ndarray] = []
        self.simple: list[np.ndarray] = []
        self.lo: list[np.ndarray | None] = []
        self.hi: list[np.ndarray | None] = []
        for i, fld in enumerate(space.fields):
            sets = [c.sets[i] for c in self.cubes]
            self.sets.append(sets)
            self.full.append(np.fromiter((s.is_full() for s in sets), bool, n))
            self.simple.append(np.fromiter((len(s.intervals) == 1 for s in sets), bool, n))
            if fld.width <= _NUMPY_MAX_WIDTH:
                self.lo.append(
                    np.fromiter(
                        (s.intervals[0][0] if s.intervals else 0 for s in sets), np.int64, n
                    )
                )
                self.hi.append(
                    np.fromiter(
                        (s.intervals[0][1] if s.intervals else 0 for s in sets), np.int64, n
                    )
                )
            else:
                self.lo.append(None)
                self.hi.append(None)

    def miss_lengths(self, i: int, width: int, value: int, rules: np.ndarray) -> np.ndarray:
        """Per rule of ``rules``: the shortest prefix length around ``value`` whose
        block misses the rule's set on field ``i`` (_INF: none does)."""
        full = self.full[i][rules]
        out = np.full(len(rules), _INF, dtype=np.int64)
        if full.all():
            return out
        lo_all, hi_all = self.lo[i], self.hi[i]
        if lo_all is None or hi_all is None:
            slow = np.flatnonzero(~full)
        else:
            lo, hi = lo_all[rules], hi_all[rules]
            # A single interval lies wholly on one side of a value outside it.
            diff = np.where(hi < value, value ^ hi, np.where(lo > value, value ^ lo, 0))
            length = width - np.frexp(diff.astype(np.float64))[1] + 1
            out = np.where(full | (diff == 0), _INF, length)
            slow = np.flatnonzero(~self.simple[i][rules] & ~full)
        sets = self.sets[i]
        for j in slow:
            out[j] = _miss_length(width, value, sets[int(rules[j])])
        return out


class _Obstacles:
    """The cubes one megaflow must miss (pieces of its start outside the rule, and
    earlier rules whose boxes meet the start) as a matrix of miss lengths.

    Row k, column f: the shortest allowed prefix length on field f that makes the
    cube miss obstacle k (_INF: the field cannot). A cube of prefix masks misses
    obstacle k iff some field's length reaches its entry; bit-mask (BITS)
    fields keep each obstacle's set as disjoint ternaries instead. Obstacles
    that no field separates raw (their packets are excluded only by
    prerequisites in combination) are kept aside and tested with the algebra.
    """

    def __init__(
        self,
        regions: PolicyRegions,
        ctx: _Context,
        pieces: list[Cube],
        candidates: list[int],
        start: list[int],
    ) -> None:
        space = regions.space
        columns = regions.columns
        self.ctx = ctx
        self.start = list(start)
        normal = [_normalised(space, p) for p in pieces]
        rules = np.asarray(candidates, dtype=np.int64)
        self.cubes: list[Cube] = [*normal, *(columns.cubes[k] for k in candidates)]
        count = len(self.cubes)
        self.bits_fields = [i for i, s in enumerate(ctx.shapes) if s.kind == BITS and ctx.exists[i]]
        matrix = np.full((count, len(space.fields)), _INF, dtype=np.int64)
        for i, fld in enumerate(space.fields):
            shape = ctx.shapes[i]
            if not ctx.exists[i] or shape.kind == BITS:
                continue
            value = ctx.point[i]
            need = np.concatenate(
                [
                    np.asarray(
                        [_miss_length(fld.width, value, c.sets[i]) for c in normal], dtype=np.int64
                    ),
                    columns.miss_lengths(i, fld.width, value, rules),
                ]
            )
            assert shape.lengths is not None
            allowed = np.asarray(shape.lengths, dtype=np.int64)
            at = np.searchsorted(allowed, need)
            matrix[:, i] = np.where(
                at < len(allowed), allowed[np.minimum(at, len(allowed) - 1)], _INF
            )
        # Per BITS field, per obstacle: its set as disjoint ternaries (None: whole field).
        self.ternaries: dict[int, list[list[tuple[int, int]] | None]] = {
            i: [None if c.sets[i].is_full() else c.sets[i].ternary_cover() for c in self.cubes]
            for i in self.bits_fields
        }
        self.exact: list[Cube] = []
        self.matrix = matrix
        # Obstacles the starting cube already misses never meet a sub-cube of it.
        met = ~self._separated(start)
        self.matrix = matrix[met]
        self.cubes = [c for c, m in zip(self.cubes, met, strict=True) if m]
        self.ternaries = {
            i: [t for t, m in zip(ts, met, strict=True) if m] for i, ts in self.ternaries.items()
        }

    # ------------------------------------------------------------------ tests
    def holding_point(self) -> bool:
        """Whether some obstacle holds the packet itself (no cut can miss it)."""
        point = self.ctx.point
        return any(c.contains(point) for c in self.cubes)

    def _bits_miss(self, i: int, mask: int, ternaries: list[tuple[int, int]] | None) -> bool:
        """Whether the block of ``mask`` around the packet misses the ternaries."""
        if ternaries is None:
            return False
        value = self.ctx.point[i]
        return all((value ^ v) & mask & m for v, m in ternaries)

    def _separating(self, masks: Sequence[int]) -> np.ndarray:
        """Obstacle x field: does this field of ``masks`` make the cube miss it."""
        lengths = np.asarray([m.bit_count() for m in masks], dtype=np.int64)
        sep = self.matrix <= lengths
        for i in self.bits_fields:
            sep[:, i] = [self._bits_miss(i, masks[i], t) for t in self.ternaries[i]]
        return sep

    def _separated(self, masks: Sequence[int]) -> np.ndarray:
        return np.asarray(self._separating(masks).any(axis=1), dtype=bool)

    def _row_missed(self, k: int, masks: Sequence[int]) -> bool:
        row = self.matrix[k]
        for i, m in enumerate(masks):
            if row[i] <= m.bit_count():
                return True
        return any(self._bits_miss(i, masks[i], self.ternaries[i][k]) for i in self.bits_fields)

    def _exact_missed(self, masks: list[int]) -> bool:
        return not any(self.ctx.meets(masks, c) for c in self.exact)

    # ------------------------------------------------------------------ steps
    def cut_all(self, masks: list[int]) -> None:
        """Cut away each obstacle the cube still meets, in order, along the field
        that loses the fewest bits (pinned prerequisites count as lost bits)."""
        ctx = self.ctx
        space = ctx.space
        for k in range(len(self.cubes)):
            if self._row_missed(k, masks):
                continue
            row = self.matrix[k]
            best: tuple[int, list[int]] | None = None
            before = sum(m.bit_count() for m in masks)
            for i, fld in enumerate(space.fields):
                if not ctx.exists[i]:
                    continue
                if ctx.shapes[i].kind == BITS:
                    ternaries = self.ternaries[i][k]
                    options = [
                        m
                        for m in _candidates(fld.width, ctx.shapes[i], masks[i])
                        if m != masks[i] and self._bits_miss(i, m, ternaries)
                    ][:1]
                else:
                    options = [mask_of_length(fld.width, int(row[i]))] if row[i] < _INF else []
                for m in options:
                    trial = list(masks)
                    trial[i] = m
                    ctx.pin_roots(trial)
                    loss = sum(t.bit_count() for t in trial) - before
                    if best is None or loss < best[0]:
                        best = (loss, trial)
            if best is not None:
                masks[:] = best[1]
                continue
            # No single field misses it raw: prerequisites in combination decide.
            self.matrix[k] = 0
            self.exact.append(self.cubes[k])
            ctx.cut_away(masks, self.cubes[k])

    def widen_back(self, masks: list[int]) -> None:
        """Widen each field to the widest allowed block (no wider than the start)
        that keeps every obstacle missed, until no field widens: the greedy cuts
        may have overshot."""
        ctx = self.ctx
        space = ctx.space
        changed = True
        while changed:
            changed = False
            for i, fld in enumerate(space.fields):
                if not masks[i] or masks[i] == self.start[i]:
                    continue
                if i in ctx.is_root and any(
                    masks[d] and i in ctx.roots[d] for d in range(len(masks))
                ):
                    continue  # pinned for a narrowed dependent field
                sep = self._separating(masks)
                others = sep.sum(axis=1) - sep[:, i]
                needy = np.flatnonzero(others == 0)
                if ctx.shapes[i].kind == BITS:
                    ternaries = self.ternaries[i]
                    options = [
                        m
                        for m in _wider(fld.width, ctx.shapes[i], masks[i])
                        if m & self.start[i] == self.start[i]
                        and all(self._bits_miss(i, m, ternaries[int(k)]) for k in needy)
                    ]
                else:
                    need = max(
                        int(self.matrix[needy, i].max()) if len(needy) else 0,
                        self.start[i].bit_count(),
                    )
                    options = (
                        [mask_of_length(fld.width, need)] if need < masks[i].bit_count() else []
                    )
                for m in options:
                    trial = list(masks)
                    trial[i] = m
                    if self._exact_missed(trial):
                        masks[i] = m
                        changed = True
                        break
