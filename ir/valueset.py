"""Sets of unsigned field values, kept as canonical sorted disjoint intervals.

Every per-field constraint in flowc's IR is a :class:`ValueSet`: a prefix, a
port range, a ternary (value, mask) and the complement of any of them are all
the same kind of value, so intersection, difference and equality are exact and
structural (two sets are equal iff they contain the same values).

Intervals instead of ternary bit strings: a port range stays one interval
instead of up to 30 prefixes, and prefixes/ternaries are recovered on demand
by :meth:`ValueSet.to_prefixes` and :meth:`ValueSet.to_ternaries` for the
backends that need masks.

>>> web = ValueSet.of_range(16, 8000, 8999) | ValueSet.of_values(16, [80, 443])
>>> web
ValueSet(16, '80,443,8000-8999')
>>> 8080 in web, 8999 in web, 9000 in web
(True, True, False)
>>> (~web).contains(22)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# A non-contiguous ternary on a wide field expands to exponentially many
# intervals; no DSL construct produces one, so refuse instead of exploding.
MAX_TERNARY_INTERVALS = 1 << 16


@dataclass(frozen=True, slots=True)
class ValueSet:
    """A set of integers in ``[0, 2**width)`` as sorted, disjoint, non-adjacent intervals.

    Attributes:
        width: bit width of the field the values belong to.
        intervals: inclusive ``(lo, hi)`` pairs, sorted, with gaps between them.
    """

    width: int
    intervals: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        top = (1 << self.width) - 1
        prev_hi = -2
        for lo, hi in self.intervals:
            if not (0 <= lo <= hi <= top) or lo <= prev_hi + 1:
                raise ValueError(
                    f"non-canonical intervals {self.intervals!r} for width {self.width}"
                )
            prev_hi = hi

    # ----------------------------------------------------------- construction
    @staticmethod
    def _trusted(width: int, intervals: tuple[tuple[int, int], ...]) -> ValueSet:
        """Build from intervals already known to be canonical (skips the check)."""
        obj = object.__new__(ValueSet)
        object.__setattr__(obj, "width", width)
        object.__setattr__(obj, "intervals", intervals)
        return obj

    @staticmethod
    def empty(width: int) -> ValueSet:
        """The empty set."""
        return _EMPTY.get(width) or ValueSet(width, ())

    @staticmethod
    def full(width: int) -> ValueSet:
        """Every value of a ``width``-bit field."""
        return _FULL.get(width) or ValueSet(width, ((0, (1 << width) - 1),))

    @staticmethod
    def of_range(width: int, lo: int, hi: int) -> ValueSet:
        """The inclusive range ``lo..hi`` (empty when ``lo > hi``)."""
        if lo > hi:
            return ValueSet.empty(width)
        if not 0 <= lo <= hi < (1 << width):
            raise ValueError(f"range {lo}-{hi} does not fit in {width} bits")
        return ValueSet._trusted(width, ((lo, hi),))

    @staticmethod
    def of_value(width: int, value: int) -> ValueSet:
        """A single value."""
        if not 0 <= value < (1 << width):
            raise ValueError(f"value {value} does not fit in {width} bits")
        return ValueSet._trusted(width, ((value, value),))

    @staticmethod
    def of_values(width: int, values: Iterable[int]) -> ValueSet:
        """A set of single values."""
        return ValueSet.from_intervals(width, ((v, v) for v in values))

    @staticmethod
    def of_prefix(width: int, value: int, prefix_len: int) -> ValueSet:
        """All values whose top ``prefix_len`` bits equal those of ``value``."""
        if not 0 <= prefix_len <= width:
            raise ValueError(f"prefix length {prefix_len} outside 0..{width}")
        host_bits = width - prefix_len
        lo = ((value >> host_bits) << host_bits) & ((1 << width) - 1)
        return ValueSet._trusted(width, ((lo, lo | ((1 << host_bits) - 1)),))

    @staticmethod
    def of_ternary(width: int, value: int, mask: int) -> ValueSet:
        """All ``x`` with ``x & mask == value & mask``.

        >>> ValueSet.of_ternary(4, 0b0010, 0b0011).intervals
        ((2, 2), (6, 6), (10, 10), (14, 14))
        """
        top = (1 << width) - 1
        mask &= top
        value &= mask
        # Free bits below the lowest cared-for bit form contiguous blocks;
        # every other free bit doubles the number of blocks.
        low_free = (mask & -mask).bit_length() - 1 if mask else width
        block = (1 << low_free) - 1
        high_free = [b for b in range(low_free, width) if not (mask >> b) & 1]
        if (1 << len(high_free)) > MAX_TERNARY_INTERVALS:
            raise ValueError(f"ternary {value:#x}/{mask:#x} on {width} bits is too fragmented")
        starts = []
        for combo in range(1 << len(high_free)):
            base = value
            for i, bit in enumerate(high_free):
                if (combo >> i) & 1:
                    base |= 1 << bit
            starts.append(base)
        return ValueSet.from_intervals(width, ((s, s | block) for s in starts))

    @staticmethod
    def from_intervals(width: int, intervals: Iterable[tuple[int, int]]) -> ValueSet:
        """Canonicalise arbitrary (possibly overlapping, unsorted) inclusive intervals."""
        merged: list[tuple[int, int]] = []
        top = (1 << width) - 1
        for lo, hi in sorted(intervals):
            if lo > hi:
                continue
            if lo < 0 or hi > top:
                raise ValueError(f"interval {lo}-{hi} does not fit in {width} bits")
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return ValueSet._trusted(width, tuple(merged))

    # ----------------------------------------------------------------- queries
    def is_empty(self) -> bool:
        """True when the set has no values."""
        return not self.intervals

    def is_full(self) -> bool:
        """True when the set holds every value of the field."""
        return self.intervals == ((0, (1 << self.width) - 1),)

    def contains(self, value: int) -> bool:
        """Membership test (binary search over the intervals)."""
        ivs = self.intervals
        lo_i, hi_i = 0, len(ivs)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo, hi = ivs[mid]
            if value < lo:
                hi_i = mid
            elif value > hi:
                lo_i = mid + 1
            else:
                return True
        return False

    __contains__ = contains

    def size(self) -> int:
        """How many values the set holds."""
        return sum(hi - lo + 1 for lo, hi in self.intervals)

    def is_subset(self, other: ValueSet) -> bool:
        """True when every value of ``self`` is in ``other``.

        Canonical intervals never touch, so each interval of ``self`` must lie
        inside a single interval of ``other``: one merge-like pass, nothing built
        (the proofs ask this millions of times)."""
        a, b = self.intervals, other.intervals
        if not a:
            return True
        if len(b) == 1:
            return b[0][0] <= a[0][0] and a[-1][1] <= b[0][1]
        j, n = 0, len(b)
        for lo, hi in a:
            while j < n and b[j][1] < lo:
                j += 1
            if j == n or b[j][0] > lo or b[j][1] < hi:
                return False
        return True

    def overlaps(self, other: ValueSet) -> bool:
        """True when the sets share a value."""
        a, b = self.intervals, other.intervals
        i = j = 0
        while i < len(a) and j < len(b):
            if a[i][1] < b[j][0]:
                i += 1
            elif b[j][1] < a[i][0]:
                j += 1
            else:
                return True
        return False

    def pick(self, preferred: Iterable[int] = ()) -> int:
        """One member: the first of ``preferred`` that is in the set, else the smallest
        non-zero member, else 0. Raises ValueError on the empty set."""
        if not self.intervals:
            raise ValueError("pick from an empty set")
        for value in preferred:
            if value in self:
                return value
        lo, hi = self.intervals[0]
        if lo == 0 and hi == 0 and len(self.intervals) > 1:
            return self.intervals[1][0]
        return max(lo, 1) if hi >= 1 else lo

    def hull(self) -> tuple[int, int]:
        """The smallest interval containing the set (raises on the empty set)."""
        if not self.intervals:
            raise ValueError("hull of an empty set")
        return self.intervals[0][0], self.intervals[-1][1]

    # -------------------------------------------------------------- algebra
    def __and__(self, other: ValueSet) -> ValueSet:
        a, b = self.intervals, other.intervals
        if len(a) == 1 and len(b) == 1:  # the common case: two intervals
            lo, hi = max(a[0][0], b[0][0]), min(a[0][1], b[0][1])
            return ValueSet._trusted(self.width, ((lo, hi),) if lo <= hi else ())
        out: list[tuple[int, int]] = []
        i = j = 0
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return ValueSet._trusted(self.width, tuple(out))

    def __or__(self, other: ValueSet) -> ValueSet:
        return ValueSet.from_intervals(self.width, self.intervals + other.intervals)

    def __invert__(self) -> ValueSet:
        out: list[tuple[int, int]] = []
        nxt = 0
        for lo, hi in self.intervals:
            if lo > nxt:
                out.append((nxt, lo - 1))
            nxt = hi + 1
        top = (1 << self.width) - 1
        if nxt <= top:
            out.append((nxt, top))
        return ValueSet._trusted(self.width, tuple(out))

    def __sub__(self, other: ValueSet) -> ValueSet:
        if not other.intervals or not self.intervals:
            return self
        return self & ~other

    # ------------------------------------------------------ mask conversions
    def to_prefixes(self) -> list[tuple[int, int]]:
        """The minimal list of ``(value, prefix_len)`` prefixes whose union is the set.

        >>> ValueSet.of_range(16, 1, 6).to_prefixes()
        [(1, 16), (2, 15), (4, 15), (6, 16)]
        """
        out: list[tuple[int, int]] = []
        for lo, hi in self.intervals:
            out.extend(_range_to_prefixes(self.width, lo, hi))
        return out

    def to_ternaries(self) -> list[tuple[int, int]]:
        """The set as ``(value, mask)`` pairs (prefix masks; exact, not necessarily minimal)."""
        top = (1 << self.width) - 1
        return [(value, (top << (self.width - plen)) & top) for value, plen in self.to_prefixes()]

    def as_prefix(self) -> tuple[int, int] | None:
        """``(value, prefix_len)`` when the set is exactly one prefix, else None."""
        if len(self.intervals) != 1:
            return None
        prefixes = self.to_prefixes()
        return prefixes[0] if len(prefixes) == 1 else None

    def as_ternary(self) -> tuple[int, int] | None:
        """``(value, mask)`` when the set is exactly one ternary (any mask shape), else None."""
        if not self.intervals:
            return None
        lo = self.intervals[0][0]
        # The cared-for bits are those equal across all members; a ternary of
        # that mask has 2**free members, so compare sizes.
        diff = 0
        for a, b in self.intervals:
            diff |= (a ^ lo) | (b ^ lo)
        # Bits that vary inside a block are covered by the XOR of block ends'
        # spans; accumulate them as well.
        for a, b in self.intervals:
            if a != b:
                diff |= (1 << (a ^ b).bit_length()) - 1
        top = (1 << self.width) - 1
        mask = top & ~diff
        if ValueSet.of_ternary(self.width, lo, mask) == self:
            return lo & mask, mask
        return None

    def ternary_cover(self) -> list[tuple[int, int]]:
        """Disjoint ``(value, mask)`` ternaries whose union is exactly the set.

        Built bit by bit from the most significant end, merging the two halves
        of a subtree wherever they hold the same ternary, so any single ternary
        (``flags syn,!ack``) comes back as one entry and a range never needs
        more entries than its prefixes.

        >>> ValueSet.of_ternary(8, 0x02, 0x12).ternary_cover()
        [(2, 18)]
        >>> ValueSet.of_values(8, [1, 3]).ternary_cover()
        [(1, 253)]
        """
        if not self.intervals:
            return []
        single = self.as_ternary()
        if single is not None:
            return [single]
        return [(value, mask) for value, mask in self._cover(0, self.width, 0, len(self.intervals))]

    def _cover(self, base: int, bits: int, first: int, stop: int) -> list[tuple[int, int]]:
        """Cover of the set inside ``[base, base + 2**bits)``, whose intervals
        overlapping that block are ``intervals[first:stop]``; masks span the
        whole width, so entries are ready to use."""
        top_block = base + (1 << bits) - 1
        width_top = (1 << self.width) - 1
        block_mask = width_top & ~((1 << bits) - 1)
        ivs = self.intervals[first:stop]
        if not ivs:
            return []
        if ivs[0][0] <= base and ivs[0][1] >= top_block:
            return [(base, block_mask)]
        half = base + (1 << (bits - 1))
        # Intervals meeting each half: [first, low_stop) and [high_first, stop);
        # one interval may straddle both.
        low_stop = first
        while low_stop < stop and self.intervals[low_stop][0] < half:
            low_stop += 1
        high_first = first
        while high_first < stop and self.intervals[high_first][1] < half:
            high_first += 1
        low = self._cover(base, bits - 1, first, low_stop)
        high = self._cover(half, bits - 1, high_first, stop)
        bit = 1 << (bits - 1)
        high_keys = {(v & ~bit, m) for v, m in high}
        merged = []
        for value, mask in low:
            if (value, mask) in high_keys:
                merged.append((value, mask & ~bit))
                high_keys.discard((value, mask))
            else:
                merged.append((value, mask))
        merged.extend((v | bit, m) for v, m in high if (v & ~bit, m) in high_keys)
        return merged

    def covering_ternary(self) -> tuple[int, int]:
        """The smallest single ``(value, mask)`` ternary containing the set
        (the bits all members share); used to widen trap rules, never a decision rule.

        >>> ValueSet.of_values(16, [80, 443]).covering_ternary()
        (16, 65044)
        """
        if not self.intervals:
            raise ValueError("covering ternary of an empty set")
        lo = self.intervals[0][0]
        diff = 0
        for a, b in self.intervals:
            diff |= (a ^ lo) | (b ^ lo)
            if a != b:
                diff |= (1 << (a ^ b).bit_length()) - 1
        mask = ((1 << self.width) - 1) & ~diff
        return lo & mask, mask

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.intervals)

    def __repr__(self) -> str:
        parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.intervals]
        return f"ValueSet({self.width}, {','.join(parts)!r})"


_FULL = {w: ValueSet(w, ((0, (1 << w) - 1),)) for w in (1, 4, 6, 8, 12, 16, 32, 128)}
_EMPTY = {w: ValueSet(w, ()) for w in _FULL}


def _range_to_prefixes(width: int, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Split an inclusive range into maximal aligned blocks (the classic range-to-prefix walk)."""
    while lo <= hi:
        # Largest block aligned at lo that does not pass hi.
        size_bits = (lo & -lo).bit_length() - 1 if lo else width
        while size_bits > 0 and lo + (1 << size_bits) - 1 > hi:
            size_bits -= 1
        yield lo, width - size_bits
        lo += 1 << size_bits
