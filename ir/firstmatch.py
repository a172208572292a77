"""First match over many packets at once: the interpreter's answer, in bulk.

:func:`ir.interp.evaluate` tries the rules in order for one packet, which is
the definition but costs a Python loop over the rules per packet: checking
100,000 probe packets against a 10,000-rule policy that way takes minutes.
:class:`FirstMatch` gives the same answer (the index of the first rule whose
match holds the packet) for a batch of packets with per-field bit vectors,
the classic parallel bit-vector classifier:

* for each field, the endpoints of every rule's intervals cut the field's
  values into elementary intervals, each inside or outside every rule's set;
* each elementary interval gets a bit vector of the rules whose set holds it;
* a packet's rules are the AND over fields of its intervals' vectors, and
  its first match is the lowest set bit.

Exact (no approximation), so it can stand in for the interpreter wherever
many packets are judged; tests/test_witness_search.py checks it against
``evaluate`` and against a linear scan.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from ir.algebra import Cube
from ir.packet import Point

# Packets per numpy batch: the AND of a batch is batch x words uint64s.
BATCH = 2048
# Fields wider than this are looked up with bisect (numpy has no 128-bit ints).
NUMPY_WIDTH = 62


class _FieldVectors:
    """One field's elementary intervals and their rule bit vectors."""

    def __init__(self, position: int, width: int, cubes: Sequence[Cube], words: int) -> None:
        self.position = position
        self.wide = width > NUMPY_WIDTH
        top = 1 << width
        cuts = {0}
        for c in cubes:
            for lo, hi in c.sets[position].intervals:
                cuts.add(lo)
                if hi + 1 < top:
                    cuts.add(hi + 1)
        self.starts = sorted(cuts)
        rows = len(self.starts)
        row_of = {v: k for k, v in enumerate(self.starts)}
        # A rule's intervals on one field are disjoint, so toggling its bit at
        # each interval's first row and just past its last row, then taking
        # the running XOR down the rows, sets the bit exactly on its rows.
        toggles = np.zeros((rows + 1, words), dtype=np.uint64)
        rows_at: list[int] = []
        cols: list[int] = []
        bits: list[int] = []
        for r, c in enumerate(cubes):
            bit = 1 << (r & 63)
            for lo, hi in c.sets[position].intervals:
                for row in (row_of[lo], row_of.get(hi + 1, rows)):
                    rows_at.append(row)
                    cols.append(r >> 6)
                    bits.append(bit)
        np.bitwise_xor.at(
            toggles,
            (np.asarray(rows_at, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
            np.asarray(bits, dtype=np.uint64),
        )
        self.vectors = np.bitwise_xor.accumulate(toggles[:rows], axis=0)
        self.numpy_starts = None if self.wide else np.asarray(self.starts, dtype=np.int64)

    def rows(self, points: Sequence[Point]) -> np.ndarray:
        """The elementary interval of each point's value of this field."""
        if self.numpy_starts is not None:
            values = np.fromiter((p[self.position] for p in points), np.int64, len(points))
            return np.searchsorted(self.numpy_starts, values, side="right") - 1
        return np.fromiter(
            (bisect_right(self.starts, p[self.position]) - 1 for p in points),
            np.int64,
            len(points),
        )


class FirstMatch:
    """The first cube of a list (a policy's rules, in order) holding each packet."""

    def __init__(self, cubes: Sequence[Cube]) -> None:
        self._words = (len(cubes) + 63) // 64
        self._fields: list[_FieldVectors] = []
        space_fields = len(cubes[0].sets) if cubes else 0
        for position in range(space_fields):
            sets = [c.sets[position] for c in cubes]
            if all(s.is_full() for s in sets):
                continue  # every rule holds every value: the field decides nothing
            width = sets[0].width
            self._fields.append(_FieldVectors(position, width, cubes, self._words))
        # Rules that constrain no field at all hold every packet.
        self._all = np.zeros(self._words, dtype=np.uint64)
        for r in range(len(cubes)):
            self._all[r >> 6] |= np.uint64(1 << (r & 63))

    def first(self, points: Sequence[Point]) -> list[int]:
        """The index of the first cube holding each point (of a policy's rules,
        its first matching rule).

        Raises ValueError for a point no cube holds (for a policy: it has no
        catch-all default, which Policy.validate rejects).
        """
        out: list[int] = []
        for start in range(0, len(points), BATCH):
            out.extend(self._batch(points[start : start + BATCH]))
        return out

    def _batch(self, points: Sequence[Point]) -> list[int]:
        if not self._words:
            raise ValueError("no cube to match: the list is empty")
        acc = np.broadcast_to(self._all, (len(points), self._words)).copy()
        for fv in self._fields:
            acc &= fv.vectors[fv.rows(points)]
        nonzero = acc != 0
        word = np.argmax(nonzero, axis=1)
        hit = nonzero[np.arange(len(points)), word]
        if not hit.all():
            raise ValueError(f"no rule matches {points[int(np.argmin(hit))]}")
        low = acc[np.arange(len(points)), word]
        lowest = low & (~low + np.uint64(1))
        # Powers of two convert to float exactly; frexp gives their exponent.
        bit = np.frexp(lowest.astype(np.float64))[1] - 1
        return [int(x) for x in word * 64 + bit]
