"""Header-space algebra: cubes, intersection, difference, emptiness and witnesses.

A :class:`Cube` is a product of per-field :class:`~ir.valueset.ValueSet` s: the
packets whose every field value lies in that field's set. A *region* is a union
of cubes (a list). The checker, the shadowing analysis, the offload partitioner
and the megaflow computation all work on these.

Emptiness is exact with respect to real packets: a cube such as "ICMP with
destination port 80" has raw members but no packet, because ICMP packets have
no ports (they carry 0 there). :func:`is_feasible` and :func:`witness` take the
space's prerequisites and domains into account, so "empty" always means "no
packet", and a witness is always a packet the interpreter accepts.

>>> from ir.fields import HEADER_SPACE as S
>>> tcp = cube(S, ip_proto=ValueSet.of_value(8, 6))
>>> web = cube(S, ip_proto=ValueSet.of_value(8, 6), dport=ValueSet.of_value(16, 80))
>>> rest = subtract(S, tcp, web)
>>> [format_cube(S, c) for c in rest]
['ip_proto=6 dport=0-79,81-65535']
>>> is_feasible(S, cube(S, ip_proto=ValueSet.of_value(8, 1), dport=ValueSet.of_value(16, 80)))
False
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ir.fields import Space
from ir.packet import Point, render_value
from ir.valueset import ValueSet

# A partial assignment of root fields to the sets still allowed for them.
_RootOption = dict[int, ValueSet]


@dataclass(frozen=True, slots=True)
class Cube:
    """A product of per-field value sets, in the order of the space's fields."""

    sets: tuple[ValueSet, ...]

    def contains(self, point: Point) -> bool:
        """True when every coordinate of ``point`` lies in this cube."""
        return all(v in s for v, s in zip(point, self.sets, strict=True))


def full_cube(space: Space) -> Cube:
    """The cube of every value of every field."""
    return Cube(tuple(f.full for f in space.fields))


def cube(space: Space, **constraints: ValueSet) -> Cube:
    """A cube constraining the named fields, every other field unconstrained."""
    sets = [f.full for f in space.fields]
    for name, values in constraints.items():
        sets[space.position(name)] = values
    return Cube(tuple(sets))


def intersect(a: Cube, b: Cube) -> Cube | None:
    """The cube of packets in both, or None when the raw product is empty."""
    out = []
    for sa, sb in zip(a.sets, b.sets, strict=True):
        if sa is sb or sb.is_full():
            out.append(sa)
            continue
        if sa.is_full():
            out.append(sb)
            continue
        s = sa & sb
        if not s.intervals:
            return None
        out.append(s)
    return Cube(tuple(out))


def overlaps(space: Space, a: Cube, b: Cube) -> bool:
    """True when some packet lies in both cubes."""
    both = intersect(a, b)
    return both is not None and is_feasible(space, both)


def _root_options(space: Space, c: Cube) -> list[_RootOption]:
    """The ways to choose root-field sets so that a packet exists in ``c``.

    A dependent field whose set excludes 0 must be present in the packet, so
    one of its prerequisite alternatives must hold; a field whose set
    includes 0 can always be absent and so imposes nothing.
    """
    for s, dom in zip(c.sets, space.domains, strict=True):
        if not s.intervals or not s.overlaps(dom):
            return []
    base: _RootOption = {}
    options = [base]
    for index, alternatives in space.dependents:
        if 0 in c.sets[index]:
            continue
        extended: list[_RootOption] = []
        for option in options:
            for alternative in alternatives:
                new = dict(option)
                for root, allowed in alternative:
                    current = new.get(root)
                    if current is None:
                        current = c.sets[root] & space.domains[root]
                    narrowed = current & allowed
                    if not narrowed.intervals:
                        break
                    new[root] = narrowed
                else:
                    if new not in extended:
                        extended.append(new)
        options = extended
        if not options:
            return []
    return options


def is_feasible(space: Space, c: Cube) -> bool:
    """True when at least one real packet lies in ``c`` (prerequisites and domains respected)."""
    return bool(_root_options(space, c))


def witness(space: Space, c: Cube) -> Point | None:
    """A packet inside ``c``, or None when there is none.

    Values are chosen to look like real traffic where the cube allows it
    (each field's ``preferred`` values, non-zero addresses).
    """
    options = _root_options(space, c)
    if not options:
        return None
    option = options[0]
    point = [0] * len(space.fields)
    dependent_index = {i for i, _ in space.dependents}
    for i, fld in enumerate(space.fields):
        if i in dependent_index:
            continue
        allowed = option.get(i)
        if allowed is None:
            allowed = c.sets[i] & space.domains[i]
        point[i] = allowed.pick(fld.preferred)
    for i, alternatives in space.dependents:
        present = any(all(point[r] in vs for r, vs in alt) for alt in alternatives)
        point[i] = c.sets[i].pick(space.fields[i].preferred) if present else 0
    return tuple(point)


def subtract(space: Space, a: Cube, b: Cube) -> list[Cube]:
    """``a`` minus ``b`` as disjoint cubes; every new piece holds at least one packet
    (``a`` itself is returned unchanged when ``b`` misses it).

    Fields are peeled in the space's order (prerequisites first), the
    classic header-space difference: one piece per field where ``a`` leaves
    ``b``'s set, the remaining fields narrowed to ``b`` as the walk goes.
    """
    if intersect(a, b) is None:
        return [a]
    pieces: list[Cube] = []
    current = list(a.sets)
    for i, sb in enumerate(b.sets):
        if sb.is_full():
            continue
        sa = current[i]
        outside = sa - sb
        if outside.intervals:
            piece = Cube((*current[:i], outside, *current[i + 1 :]))
            if is_feasible(space, piece):
                pieces.append(piece)
        current[i] = sa & sb
    return pieces


def region_is_empty(space: Space, region: Iterable[Cube]) -> bool:
    """True when no cube of the region holds a packet."""
    return not any(is_feasible(space, c) for c in region)


def first_containing(cubes: Sequence[Cube], point: Point) -> int | None:
    """Index of the first cube holding ``point``, or None."""
    for i, c in enumerate(cubes):
        if c.contains(point):
            return i
    return None


Locator = Callable[[Point], int | None]


def uncovered_witness(
    space: Space,
    c: Cube,
    cover: Sequence[Cube],
    limit: int = 20000,
    locate: Locator | None = None,
) -> tuple[bool, Point | None]:
    """Look for a packet of ``c`` outside every cube of ``cover``.

    Witness-driven: take a packet of the residual region, find a cover cube
    holding it, subtract only that cube, repeat. An uncovered region is
    usually found after a few steps, and a covered one only ever subtracts
    cubes that matter, so the residual stays small.

    Returns ``(True, packet)`` when a packet escapes the cover, ``(True,
    None)`` when the cover holds all of ``c``, and ``(False, None)`` when the
    residual grew past ``limit`` cubes and the question was not settled.
    ``locate`` may replace the linear search for the first cover cube holding a
    packet (an index, as :func:`first_containing` would return).
    """
    find = locate if locate is not None else (lambda point: first_containing(cover, point))
    residual = [c]
    while residual:
        piece = residual.pop()
        point = witness(space, piece)
        if point is None:
            continue
        hit = find(point)
        if hit is None:
            return True, point
        residual.extend(subtract(space, piece, cover[hit]))
        if len(residual) > limit:
            return False, None
    return True, None


def covered_by(
    space: Space,
    c: Cube,
    cover: Sequence[Cube],
    limit: int = 20000,
    locate: Locator | None = None,
) -> bool | None:
    """True when every packet of ``c`` lies in the union of ``cover``.

    Returns None when the residual region grows past ``limit`` cubes, so the
    caller can say the question was too expensive instead of guessing.
    """
    settled, escaped = uncovered_witness(space, c, cover, limit, locate)
    if not settled:
        return None
    return escaped is None


def format_cube(space: Space, c: Cube) -> str:
    """The constrained fields of ``c`` as ``name=values`` (unconstrained fields omitted)."""
    parts = []
    for fld, s in zip(space.fields, c.sets, strict=True):
        if s.is_full():
            continue
        parts.append(f"{fld.name}={format_values(fld.render, s)}")
    return " ".join(parts) if parts else "*"


def format_values(render: str, values: ValueSet) -> str:
    """A value set as prefixes (address fields) or values and ranges (others)."""
    if not values.intervals:
        return "{}"
    if render in ("ip4", "ip6"):
        return ",".join(
            f"{render_value(render, v)}/{plen}" if plen != values.width else render_value(render, v)
            for v, plen in values.to_prefixes()
        )
    if render == "tcp_flags":
        ternary = values.as_ternary()
        if ternary is not None:
            return f"{ternary[0]:#04x}/{ternary[1]:#04x}"
        outside = (~values).as_ternary()
        if outside is not None:
            return f"!{outside[0]:#04x}/{outside[1]:#04x}"
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in values.intervals)
