"""Hand-style edits of a flower filter list, for the checker's false-alarm tests.

Each edit returns ``(kind, filters, probes)``. *Preserving* edits change the
list but, by construction, no packet's set of possible kernel outcomes in a
way the policy would notice: split a filter into two halves, merge two
halves back, swap two adjacent priority groups whose filters are pairwise
disjoint, hoist a filter that is disjoint from its group to a priority of its
own, add a filter no packet reaches (inside an earlier filter) anywhere
after it, add a trap anywhere. *Changing* edits flip an action, delete a
filter, widen a mask or swap the priorities of two overlapping filters with
different actions; their ``probes`` are packets of the region the edit
touched that reach it, for the evaluator to confirm the change (the caller
judges, not this module).

The construction arguments rely on flowc's lowering sharing a priority only
among disjoint filters (:func:`backends.flower.rules.keys_disjoint`, a
syntactic test); the tests check the input has that shape.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from collections.abc import Callable

from backends.flower.rules import (
    TRAP,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    Masked,
    PortRange,
    keys_disjoint,
)
from ir.algebra import Cube, intersect, subtract, uncovered_witness, witness
from ir.fields import HEADER_SPACE
from ir.packet import Packet

Edit = tuple[str, list[FlowerFilter], list[Packet]]

PRESERVING = (
    "split a filter",
    "merge two filters",
    "swap disjoint priorities",
    "hoist a disjoint filter",
    "add an unreachable filter",
    "add a trap",
)
CHANGING = ("flip an action", "delete a filter", "widen a mask", "swap overlapping priorities")

ACTIONS = (
    FlowerAction("pass"),
    FlowerAction("drop"),
    FlowerAction("redirect", device="flowc-edit"),
    FlowerAction("mark", mark=7),
)
TRAP_ACTION = FlowerAction(TRAP, chain=1)
# Widths of the masked keys an edit may cut or widen (ICMP keys stay exact:
# tc's text takes no ICMP mask).
_WIDTH = {"src_port": 16, "dst_port": 16, "tcp_flags": 8, "ip_tos": 8}
_ADDRESSES = ("src_ip", "dst_ip")
_PORTS = (6, 17, 132)


def spread(filters: list[FlowerFilter]) -> list[FlowerFilter] | None:
    """The list with every priority times four, so edits can put filters between
    groups (None when that overflows tc's 16 bits)."""
    if max(f.prio for f in filters) * 4 + 2 > 0xFFFF:
        return None
    return [dataclasses.replace(f, prio=f.prio * 4) for f in filters]


def _cube(f: FlowerFilter) -> Cube | None:
    return f.match.cube()


def _new_handle(filters: list[FlowerFilter]) -> int:
    return max(f.handle for f in filters) + 1


def _groups(filters: list[FlowerFilter]) -> dict[int, list[FlowerFilter]]:
    out: dict[int, list[FlowerFilter]] = {}
    for f in sorted(filters, key=lambda f: (f.prio, f.handle)):
        out.setdefault(f.prio, []).append(f)
    return out


def reaching(filters: list[FlowerFilter], prio: int, region: Cube) -> list[Packet]:
    """Packets of ``region`` no filter of a priority before ``prio`` matches (at
    most one, found witness first; empty when there is none)."""
    earlier = [c for f in filters if f.prio < prio and (c := _cube(f)) is not None]
    settled, point = uncovered_witness(HEADER_SPACE, region, earlier, limit=2000)
    return [Packet(point)] if settled and point is not None else []


def _width(m: FlowerMatch, name: str) -> int:
    if name in _ADDRESSES:
        return 32 if m.family == 4 else 128
    return _WIDTH[name]


def _halves(m: FlowerMatch, rng: random.Random) -> tuple[FlowerMatch, FlowerMatch] | None:
    """Two disjoint matches whose union is ``m`` (None when no key can be cut)."""
    options: list[Callable[[], tuple[FlowerMatch, FlowerMatch]]] = []
    family_known = m.family in (4, 6)
    for name in (*_ADDRESSES, "src_port", "dst_port", "tcp_flags", "ip_tos"):
        key = getattr(m, name)
        if name in ("src_port", "dst_port") and m.ip_proto not in _PORTS:
            continue
        if name == "tcp_flags" and m.ip_proto != 6:
            continue
        if name in _ADDRESSES and not family_known:
            continue
        if name == "ip_tos" and not family_known:
            continue
        width = _width(m, name)
        if key is None:
            key = Masked(0, 0)
        if isinstance(key, PortRange):
            if key.hi - key.lo >= 1:
                options.append(functools.partial(_split_range, m, name, key))
            continue
        if name in _ADDRESSES:
            free = [width - 1 - bin(key.mask).count("1")] if key.mask != (1 << width) - 1 else []
        else:
            low = 2 if name == "ip_tos" else 0
            free = [b for b in range(low, width) if not key.mask >> b & 1]
        if free:
            bit = rng.choice(free)
            options.append(functools.partial(_split_bit, m, name, key, bit))
    if not options:
        return None
    return rng.choice(options)()


def _split_bit(m: FlowerMatch, name: str, key: Masked, bit: int) -> tuple[FlowerMatch, FlowerMatch]:
    mask = key.mask | 1 << bit
    zero = dataclasses.replace(m, **{name: Masked(key.value, mask)})  # type: ignore[arg-type]
    one = dataclasses.replace(m, **{name: Masked(key.value | 1 << bit, mask)})  # type: ignore[arg-type]
    return zero, one


def _port(lo: int, hi: int) -> PortRange | Masked:
    return Masked(lo, 0xFFFF) if lo == hi else PortRange(lo, hi)


def _split_range(m: FlowerMatch, name: str, key: PortRange) -> tuple[FlowerMatch, FlowerMatch]:
    mid = (key.lo + key.hi) // 2
    low = dataclasses.replace(m, **{name: _port(key.lo, mid)})  # type: ignore[arg-type]
    high = dataclasses.replace(m, **{name: _port(mid + 1, key.hi)})  # type: ignore[arg-type]
    return low, high


def _merged(a: FlowerMatch, b: FlowerMatch) -> FlowerMatch | None:
    """One match equal to the union of ``a`` and ``b`` (None when there is none
    this edit knows: they differ in one key, by one bit or as adjacent ranges)."""
    if a.protocol != b.protocol:
        return None
    keys_a, keys_b = dict(a.key_items()), dict(b.key_items())
    if keys_a.keys() != keys_b.keys():
        return None
    differ = [n for n in keys_a if keys_a[n] != keys_b[n]]
    if len(differ) != 1 or differ[0] not in (*_ADDRESSES, *_WIDTH):
        return None
    name = differ[0]
    x, y = keys_a[name], keys_b[name]
    if isinstance(x, PortRange) and isinstance(y, PortRange):
        lo, hi = (x, y) if x.lo < y.lo else (y, x)
        if lo.hi + 1 != hi.lo:
            return None
        return dataclasses.replace(a, **{name: PortRange(lo.lo, hi.hi)})  # type: ignore[arg-type]
    if not (isinstance(x, Masked) and isinstance(y, Masked)) or x.mask != y.mask:
        return None
    diff = x.value ^ y.value
    if bin(diff).count("1") != 1:
        return None
    if name in _ADDRESSES and diff != x.mask & -x.mask:
        return None  # not the last bit of the prefix: the merge would have a hole
    mask = x.mask & ~diff
    return dataclasses.replace(a, **{name: Masked(x.value & mask, mask)})  # type: ignore[arg-type]


def _replace(
    filters: list[FlowerFilter], old: FlowerFilter, *new: FlowerFilter
) -> list[FlowerFilter]:
    i = next(k for k, f in enumerate(filters) if f is old)
    return filters[:i] + list(new) + filters[i + 1 :]


# ---------------------------------------------------------------- preserving
def split(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """One filter becomes its two halves, at its priority."""
    for f in rng.sample(filters, len(filters)):
        halves = _halves(f.match, rng)
        if halves is None:
            continue
        zero = dataclasses.replace(f, match=halves[0])
        one = dataclasses.replace(f, match=halves[1], handle=_new_handle(filters))
        return "split a filter", _replace(filters, f, zero, one), []
    return None


def merge(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """Two filters of one action that are halves of one match become it, at the
    earlier one's priority: exact when every other filter of the priorities from
    the earlier's to the later's is disjoint from the later one (its packets
    then reach the earlier priority and nothing on the way takes them)."""
    ordered_filters = sorted(filters, key=lambda f: (f.prio, f.handle))
    pairs = []
    for i, a in enumerate(ordered_filters):
        for b in ordered_filters[i + 1 :]:
            if a.action != b.action or (m := _merged(a.match, b.match)) is None:
                continue
            between = [
                h for h in filters if a.prio <= h.prio <= b.prio and h is not a and h is not b
            ]
            if all(keys_disjoint(b.match, h.match) for h in between):
                pairs.append((a, b, m))
    if not pairs:
        return None
    a, b, m = rng.choice(pairs)
    out = [f for f in _replace(filters, a, dataclasses.replace(a, match=m)) if f is not b]
    return "merge two filters", out, []


def swap_disjoint(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """Two neighbouring priority groups whose filters are pairwise disjoint trade places."""
    groups = _groups(filters)
    prios = sorted(groups)
    options = [
        (p, q)
        for p, q in itertools.pairwise(prios)
        if all(keys_disjoint(a.match, b.match) for a in groups[p] for b in groups[q])
    ]
    if not options:
        return None
    p, q = rng.choice(options)
    swap = {p: q, q: p}
    out = [dataclasses.replace(f, prio=swap.get(f.prio, f.prio)) for f in filters]
    return "swap disjoint priorities", out, []


def hoist(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """A filter disjoint from the rest of its group moves to a priority of its own
    just before or after the group (``filters`` must be :func:`spread`)."""
    groups = _groups(filters)
    options = [
        f
        for members in groups.values()
        if len(members) > 1
        for f in members
        if all(keys_disjoint(f.match, g.match) for g in members if g is not f)
    ]
    if not options:
        return None
    f = rng.choice(options)
    moved = dataclasses.replace(f, prio=f.prio + rng.choice([-1, 1]))
    return "hoist a disjoint filter", _replace(filters, f, moved), []


def add_unreachable(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """A filter inside an earlier one (so no packet reaches it), with any action,
    in a later group of its protocol or at a new priority after it
    (``filters`` must be :func:`spread`)."""
    for g in rng.sample(filters, len(filters)):
        if _cube(g) is None:
            continue
        halves = _halves(g.match, rng)
        match = g.match if halves is None else halves[rng.randrange(2)]
        action = rng.choice([a for a in (*ACTIONS, TRAP_ACTION) if a != g.action])
        later = [
            f.prio for f in filters if f.prio > g.prio and f.match.protocol == g.match.protocol
        ]
        if later and rng.random() < 0.7:
            prio = rng.choice(later)  # inside a group: it overlaps its members, unreachably
        else:
            prio = rng.choice([f.prio for f in filters if f.prio >= g.prio]) + 1
        h = FlowerFilter(0, prio, _new_handle(filters), match, action, g.flags)
        return "add an unreachable filter", [*filters, h], []
    return None


def add_trap(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """A trap anywhere: in an existing group of its protocol or at a new priority,
    with the keys of some filter, perhaps without one of them (``filters`` must
    be :func:`spread`)."""
    g = rng.choice(filters)
    match = g.match
    items = [n for n, _k in match.key_items() if n in (*_ADDRESSES, *_WIDTH)]
    if items and rng.random() < 0.5:
        match = dataclasses.replace(match, **{rng.choice(items): None})  # type: ignore[arg-type]
    same = [f.prio for f in filters if f.match.protocol == match.protocol]
    if same and rng.random() < 0.5:
        prio = rng.choice(same)
    else:
        prio = rng.choice([f.prio for f in filters]) + rng.choice([-1, 1])
    trap = FlowerFilter(0, prio, _new_handle(filters), match, TRAP_ACTION, g.flags)
    return "add a trap", [*filters, trap], []


# ------------------------------------------------------------------ changing
def _decisive(filters: list[FlowerFilter], rng: random.Random) -> list[tuple[FlowerFilter, Packet]]:
    """Non-trap filters with a packet that reaches them, in random order."""
    out = []
    for f in rng.sample(filters, len(filters)):
        c = _cube(f)
        if f.action.kind == TRAP or c is None:
            continue
        for p in reaching(filters, f.prio, c):
            out.append((f, p))
        if len(out) >= 3:
            break
    return out


def flip(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """A filter that decides some packet gets another action."""
    for f, p in _decisive(filters, rng):
        action = rng.choice([a for a in ACTIONS if a != f.action])
        return "flip an action", _replace(filters, f, dataclasses.replace(f, action=action)), [p]
    return None


def delete(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """A filter that decides some packet is deleted."""
    for f, p in _decisive(filters, rng):
        return "delete a filter", [g for g in filters if g is not f], [p]
    return None


def widen(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """A non-trap filter loses a mask bit (addresses: the last prefix bit) or a key."""
    for f in rng.sample(filters, len(filters)):
        c = _cube(f)
        if f.action.kind == TRAP or c is None:
            continue
        items = [(n, k) for n, k in f.match.key_items() if n in (*_ADDRESSES, *_WIDTH)]
        if not items:
            continue
        name, key = rng.choice(items)
        new_key: Masked | None = None
        if isinstance(key, Masked) and key.mask and rng.random() < 0.7:
            cared = [b for b in range(_width(f.match, name)) if key.mask >> b & 1]
            bit = cared[0] if name in _ADDRESSES else rng.choice(cared)
            mask = key.mask & ~(1 << bit)
            new_key = Masked(key.value & mask, mask) if mask else None
        wider = dataclasses.replace(f, match=dataclasses.replace(f.match, **{name: new_key}))  # type: ignore[arg-type]
        wide_cube = _cube(wider)
        assert wide_cube is not None
        probes = [
            p
            for piece in subtract(HEADER_SPACE, wide_cube, c)[:4]
            for p in reaching(filters, f.prio, piece)
        ]
        return "widen a mask", _replace(filters, f, wider), probes
    return None


def swap_overlapping(filters: list[FlowerFilter], rng: random.Random) -> Edit | None:
    """Two filters of different priorities (one protocol) that overlap and act
    differently trade priorities and handles."""
    cubes = [(f, c) for f in filters if (c := _cube(f)) is not None]
    rng.shuffle(cubes)
    for f, cf in cubes[:40]:
        for g, cg in cubes:
            if g.prio <= f.prio or g.action == f.action or g.match.protocol != f.match.protocol:
                continue
            both = intersect(cf, cg)
            if both is None or witness(HEADER_SPACE, both) is None:
                continue
            a = dataclasses.replace(f, prio=g.prio, handle=g.handle)
            b = dataclasses.replace(g, prio=f.prio, handle=f.handle)
            out = _replace(_replace(filters, f, a), g, b)
            return "swap overlapping priorities", out, reaching(filters, f.prio, both)
    return None


EDITS: dict[str, Callable[[list[FlowerFilter], random.Random], Edit | None]] = {
    "split a filter": split,
    "merge two filters": merge,
    "swap disjoint priorities": swap_disjoint,
    "hoist a disjoint filter": hoist,
    "add an unreachable filter": add_unreachable,
    "add a trap": add_trap,
    "flip an action": flip,
    "delete a filter": delete,
    "widen a mask": widen,
    "swap overlapping priorities": swap_overlapping,
}
