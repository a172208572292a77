"""IR policy -> the lookup tables of flowc's BPF classifier (bit-vector search).

Why bit vectors: the slow path must classify in time that does not grow with
the number of rules, and a first-match ``if`` chain is both linear and
rejected by the verifier at a few thousand rules. Tuple-space search costs one
hash probe per distinct mask tuple (hundreds on ClassBench sets), a decision
tree costs its depth plus a linear leaf scan, and a full cross-product of
field classes (RFC) needs tables of |src classes| x |dst classes| entries
(26 million at 10,000 rules). Bit-vector search (as in bpf-iptables) costs one
lookup per *field* the policy uses, then an AND of per-field rule bit vectors,
with a one-word summary per 64 words ("aggregated bit vectors") to skip empty
stretches. On wildcard-heavy sets most 64-rule words ahead of the match have
some matching rule in every field, so the walk still grows with the match's
position (measured: 77 ns at 1,000 rules, 180 ns at 10,000, against 58 ns at
10), and large programs put a memo in front of it
(``bpf/flowc_memo.h``): the result is a function of the packet's class tuple,
which a per-CPU direct-mapped table remembers, and a repeated tuple costs the
field lookups plus one array read (50 ns at 10,000 rules).

For each field a rule constrains, the field's value space is cut into
elementary intervals where the set of matching rules is constant; equal sets
share a *class*. A packet's field value maps to its class (an LPM trie for
addresses, an array for fields of up to 16 bits), each class to the bit
vector of rules matching that value, and the first set bit of the AND over
fields is the deciding rule (the default rule's bit is set in every class,
so there always is one).

On wildcard-heavy sets most 64-rule words ahead of the match have some
matching rule in every field (in the generated fw set at 10,000 rules, 34 such
*candidate* words per packet on average, each costing a word AND per field),
so large programs add a *grid* (:func:`build_grid`): the two fields whose
pairing prunes most have their elementary intervals cut into at most
``GRID_MAX_GROUPS`` contiguous groups each, and every (row group, column group)
cell holds the summary of the AND of the two groups' rule unions. Since
``OR_a A_a & OR_b B_b = OR_(a,b) (A_a & B_b)`` over a rectangle of groups, a
cell's summary covers every packet in it, and the walk ANDs it into the
fields' summaries: 3.3 candidate words instead of 34 on that set, for one
array read and 24 bytes per cell. The group rides in the class lookup's
value (``class | group << GRID_SHIFT``), so it costs no extra lookup. A full
cross-product of the two fields' classes would be exact but has 26 million
cells at 10,000 rules; the grid is the bounded version of it.

Changing rules without changing which fields are used, and within the
capacities sized here, is a map update, not a recompile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from ir.fields import HEADER_SPACE, RENDER_IP4, RENDER_IP6
from ir.model import Policy
from ir.packet import Packet
from ir.valueset import ValueSet

WORD_BITS = 64

DIR4 = "dir4"
LPM6 = "lpm6"
ARRAY = "array"
# Entry flag in a DIR-16-8-8 level: the rest of the entry is a chunk number.
DIR_CHUNK = 0x80000000
# A class lookup's value on a grid axis: the class in the low GRID_SHIFT bits,
# the field's grid group above them (below DIR_CHUNK).
GRID_SHIFT = 20
CLASS_MASK = (1 << GRID_SHIFT) - 1
# Groups per grid axis: 256 x 256 cells of n_summary words (24 bytes at 10,000
# rules) is 1.5 MiB per bank. More groups prune more (1,024: 2.2 candidate
# words instead of 3.3 on the generated fw set) at 16x the memory.
GRID_MAX_GROUPS = 256
# The grid costs a cell read and one AND per summary word; below a few words of
# rules the walk has almost nothing to prune (bench/bpf_bench.py).
GRID_MIN_WORDS = 8
# Fields whose pairings are scored for the grid (the most classes first).
GRID_CANDIDATE_FIELDS = 3


@dataclass(frozen=True, slots=True)
class FieldTable:
    """How one field's value maps to a class, and each class's rule bit vector.

    Attributes:
        field: registry name of the field.
        kind: ``dir4`` (IPv4: DIR-16-8-8 direct arrays), ``lpm6`` (IPv6: LPM trie)
            or ``array`` (index = value).
        intervals: ``(lo, hi, class_id)`` covering the whole value space, in order.
        classes: rule bit set of each class (bit r set = rule r matches this value).
        groups: the grid group of each interval when the field is a grid axis, else ().
    """

    field: str
    kind: str
    intervals: tuple[tuple[int, int, int], ...]
    classes: tuple[int, ...]
    groups: tuple[int, ...] = ()

    @property
    def entries(self) -> tuple[tuple[int, int, int], ...]:
        """``(lo, hi, lookup value)`` per interval: what the class lookup returns
        (the class, with the grid group above ``GRID_SHIFT`` on a grid axis)."""
        if not self.groups:
            return self.intervals
        return tuple(
            (lo, hi, cls | (group << GRID_SHIFT))
            for (lo, hi, cls), group in zip(self.intervals, self.groups, strict=True)
        )

    def entry_of(self, value: int) -> int:
        """The class lookup's value for a field value (see :attr:`entries`)."""
        i = self._interval_of(value)
        cls = self.intervals[i][2]
        return cls | (self.groups[i] << GRID_SHIFT) if self.groups else cls

    @property
    def width(self) -> int:
        """Bit width of the field."""
        return HEADER_SPACE.field(self.field).width

    def class_of(self, value: int) -> int:
        """The class of a field value (binary search over the intervals)."""
        return self.intervals[self._interval_of(value)][2]

    def _interval_of(self, value: int) -> int:
        lo_i, hi_i = 0, len(self.intervals)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo, hi, _cls = self.intervals[mid]
            if value < lo:
                hi_i = mid
            elif value > hi:
                lo_i = mid + 1
            else:
                return mid
        raise ValueError(f"{self.field}: value {value} outside every interval")

    def dir_levels(self) -> tuple[list[int], list[int], list[int]]:
        """See :func:`dir_levels` (cached per table)."""
        return dir_levels(self)

    def lpm_entries(self) -> list[tuple[int, int, int]]:
        """``(prefix value, prefix length, lookup value)`` for an LPM trie: every interval as
        prefixes; disjoint, so longest-prefix match finds exactly one."""
        out = []
        width = self.width
        for lo, hi, cls in self.entries:
            for value, plen in ValueSet.of_range(width, lo, hi).to_prefixes():
                out.append((value, plen, cls))
        return out


@functools.lru_cache(maxsize=32)
def dir_levels(table: FieldTable) -> tuple[list[int], list[int], list[int]]:
    """The IPv4 class lookup as DIR-16-8-8 arrays (level 1: 65,536 entries by the
    top 16 bits; levels 2 and 3: 256-entry chunks by the next byte).

    An entry is a lookup value (:attr:`FieldTable.entries`), or
    ``DIR_CHUNK | n`` when the block is not uniform and chunk ``n`` of the next
    level refines it. Three array reads at most,
    instead of an LPM trie walk of up to 32 levels.
    """
    level1: list[int] = []
    level2: list[int] = []
    level3: list[int] = []
    intervals = table.entries
    pos = 0  # first interval that may still overlap the current block

    def uniform(lo: int, hi: int) -> int | None:
        nonlocal pos
        while intervals[pos][1] < lo:
            pos += 1
        first = intervals[pos]
        return first[2] if first[1] >= hi else None

    for b16 in range(1 << 16):
        lo16 = b16 << 16
        cls = uniform(lo16, lo16 | 0xFFFF)
        if cls is not None:
            level1.append(cls)
            continue
        level1.append(DIR_CHUNK | (len(level2) >> 8))
        for b8 in range(256):
            lo24 = lo16 | (b8 << 8)
            cls = uniform(lo24, lo24 | 0xFF)
            if cls is not None:
                level2.append(cls)
                continue
            level2.append(DIR_CHUNK | (len(level3) >> 8))
            level3.extend(table.entry_of(lo24 | b) for b in range(256))
    return level1, level2, level3


@dataclass(frozen=True, slots=True)
class Grid:
    """The summary grid over two fields' groups (module docstring).

    Attributes:
        fields: the row field and the column field.
        rows, cols: groups on each axis.
        cells: per cell (row-major), the set of words (bit w = word w) where the
            two groups' rule unions intersect: a superset of the words where a
            packet of the cell can match a rule in both fields.
    """

    fields: tuple[str, str]
    rows: int
    cols: int
    cells: tuple[int, ...]

    def cell(self, row_entry: int, col_entry: int) -> int:
        """The cell of two lookup values (row field's, column field's)."""
        return self.cells[(row_entry >> GRID_SHIFT) * self.cols + (col_entry >> GRID_SHIFT)]


@dataclass(frozen=True, slots=True)
class ClassifierTables:
    """Everything the BPF classifier's maps hold for one policy.

    Attributes:
        fields: one table per field some rule constrains, in registry order.
        n_rules: number of IR rules (the last is the default).
        grid: the summary grid, or None.
        grid_note: why there is a grid on these fields, or why there is none.
        n_words: 64-bit words per bit vector.
        n_summary: summary words per bit vector (bit w set = word w is non-zero).
    """

    fields: tuple[FieldTable, ...]
    n_rules: int
    grid: Grid | None = None
    grid_note: str = "no grid"

    @property
    def n_words(self) -> int:
        """64-bit words per bit vector."""
        return max(1, -(-self.n_rules // WORD_BITS))

    @property
    def n_summary(self) -> int:
        """Summary words per bit vector."""
        return max(1, -(-self.n_words // WORD_BITS))

    def bitvector_words(
        self, bits: int, n_words: int | None = None, n_summary: int | None = None
    ) -> tuple[list[int], list[int]]:
        """A class's bit set as (summary words, words), the layout of the BPF map value
        (sized for this policy, or for a program's larger capacities when given)."""
        n_words = n_words or self.n_words
        n_summary = n_summary or self.n_summary
        mask = (1 << WORD_BITS) - 1
        words = [(bits >> (WORD_BITS * w)) & mask for w in range(n_words)]
        summary_bits = sum(1 << w for w, word in enumerate(words) if word)
        summary = [(summary_bits >> (WORD_BITS * s)) & mask for s in range(n_summary)]
        return summary, words

    def classify(self, packet: Packet) -> int:
        """The rule the BPF program picks for ``packet``: the same summary-then-words walk
        as ``flowc_classify`` in the generated C, so tests can check the algorithm
        without a kernel."""
        return self.walk(packet)[0]

    def walk(self, packet: Packet) -> tuple[int, int]:
        """(the rule :meth:`classify` picks, the candidate words the walk tests on the
        way: words every summary allows, the last being the match's). The walk's
        cost grows with the second number (bench/cold_bench.py reports it)."""
        tested = 0
        vectors = [
            self.bitvector_words(t.classes[t.class_of(packet.get(t.field))]) for t in self.fields
        ]
        mask = (1 << WORD_BITS) - 1
        cell = (1 << (WORD_BITS * self.n_summary)) - 1
        if self.grid is not None:
            by_name = {t.field: t for t in self.fields}
            row, col = (by_name[name] for name in self.grid.fields)
            cell = self.grid.cell(
                row.entry_of(packet.get(row.field)), col.entry_of(packet.get(col.field))
            )
        for s in range(self.n_summary):
            summary = (cell >> (WORD_BITS * s)) & mask
            for vec_summary, _ in vectors:
                summary &= vec_summary[s]
            while summary:
                bit = (summary & -summary).bit_length() - 1
                w = s * WORD_BITS + bit
                tested += 1
                word = mask
                for _, vec_words in vectors:
                    word &= vec_words[w]
                if word:
                    return w * WORD_BITS + (word & -word).bit_length() - 1, tested
                summary &= summary - 1
        raise AssertionError("no rule matched: the default's bit must be in every class")


def field_kind(name: str) -> str:
    """Which lookup structure a field uses."""
    render = HEADER_SPACE.field(name).render
    if render == RENDER_IP4:
        return DIR4
    if render == RENDER_IP6:
        return LPM6
    if HEADER_SPACE.field(name).width > 16:
        raise ValueError(f"field {name} is too wide for an array lookup")
    return ARRAY


def build_field_table(policy: Policy, name: str) -> FieldTable:
    """Cut one field's values into classes by sweeping the rules' interval endpoints.

    Rule bit sets are Python ints, so each step of the sweep is one big-int
    operation whatever the number of rules.
    """
    position = HEADER_SPACE.position(name)
    top = (1 << HEADER_SPACE.field(name).width) - 1
    everywhere = 0
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for rule in policy.rules:
        values = rule.match.cube.sets[position]
        bit = 1 << rule.priority
        if values.is_full():
            everywhere |= bit
            continue
        for lo, hi in values.intervals:
            starts[lo] = starts.get(lo, 0) | bit
            if hi < top:
                ends[hi + 1] = ends.get(hi + 1, 0) | bit
    points = sorted({0, *starts, *ends})
    # Classes are numbered in value order, so the class of value 0 (what a
    # packet lacking the field carries) is always class 0; the generated C
    # relies on that to skip lookups of absent fields.
    class_ids: dict[int, int] = {}
    intervals: list[tuple[int, int, int]] = []
    current = 0
    for i, point in enumerate(points):
        current = (current | starts.get(point, 0)) & ~ends.get(point, 0)
        bits = current | everywhere
        cls = class_ids.setdefault(bits, len(class_ids))
        hi = points[i + 1] - 1 if i + 1 < len(points) else top
        if intervals and intervals[-1][2] == cls:
            intervals[-1] = (intervals[-1][0], hi, cls)
        else:
            intervals.append((point, hi, cls))
    classes = [0] * len(class_ids)
    for bits, cls in class_ids.items():
        classes[cls] = bits
    return FieldTable(name, field_kind(name), tuple(intervals), tuple(classes))


def used_fields(policy: Policy) -> list[str]:
    """Fields at least one rule constrains, in registry order."""
    used = {name for rule in policy.rules for name, _ in rule.match.constraints}
    return [name for name in HEADER_SPACE.names if name in used]


def build_tables(
    policy: Policy,
    *,
    grid: bool | None = None,
    grid_fields: tuple[str, str] | None = None,
    max_groups: int = GRID_MAX_GROUPS,
) -> ClassifierTables:
    """The classifier tables of ``policy`` (rule ids are IR rule priorities).

    ``grid``: build the summary grid (None: from ``GRID_MIN_WORDS`` words of
    rules up). ``grid_fields`` pins its axes (a loaded program's, so a refill
    keeps the shape); otherwise the best-pruning pair is chosen.
    """
    if [r.priority for r in policy.rules] != list(range(len(policy.rules))):
        raise ValueError("rule priorities must be 0..n-1 (renumber the policy first)")
    tables = tuple(build_field_table(policy, name) for name in used_fields(policy))
    plain = ClassifierTables(tables, len(policy.rules))
    if grid is None:
        grid = plain.n_words >= GRID_MIN_WORDS
        if not grid:
            note = f"no grid: {plain.n_words} words of rules, the grid starts at {GRID_MIN_WORDS}"
            return ClassifierTables(tables, len(policy.rules), None, note)
    if not grid:
        return ClassifierTables(tables, len(policy.rules), None, "no grid: switched off")
    return build_grid(plain, grid_fields=grid_fields, max_groups=max_groups)


def _groups(table: FieldTable, max_groups: int) -> tuple[int, ...]:
    """Each interval's group: runs of equally many consecutive intervals."""
    n = len(table.intervals)
    per = -(-n // max_groups)
    return tuple(i // per for i in range(n))


def _group_unions(table: FieldTable, groups: tuple[int, ...], n_words: int) -> np.ndarray:
    """Per group, the union of its intervals' rule sets, as rows of 64-bit words."""
    unions = [0] * (groups[-1] + 1)
    for (_lo, _hi, cls), group in zip(table.intervals, groups, strict=True):
        unions[group] |= table.classes[cls]
    data = b"".join(u.to_bytes(8 * n_words, "little") for u in unions)
    return np.frombuffer(data, dtype="<u8").reshape(len(unions), n_words)


def _cell_words(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per cell (row-major), whether each word of the two unions' AND is non-zero."""
    # 16 rows at a time: the AND of all cells at once would be rows x cols x words
    # 64-bit words (82 MB at 10,000 rules).
    return np.concatenate(
        [
            ((rows[i : i + 16, None, :] & cols[None, :, :]) != 0).reshape(-1, rows.shape[1])
            for i in range(0, len(rows), 16)
        ]
    )


def build_grid(
    tables: ClassifierTables,
    *,
    grid_fields: tuple[str, str] | None = None,
    max_groups: int = GRID_MAX_GROUPS,
) -> ClassifierTables:
    """``tables`` with the summary grid on two fields (module docstring), or without
    it and a note saying why (fewer than two fields with more than one class, or
    more classes than a lookup value can carry beside its group).

    Without ``grid_fields`` the pair is chosen among the ``GRID_CANDIDATE_FIELDS``
    fields with the most classes by the mean number of candidate words per cell
    (fewer is better: that is the walk the grid leaves).
    """
    if not 1 <= max_groups <= (DIR_CHUNK >> GRID_SHIFT):
        raise ValueError(f"max_groups must be 1..{DIR_CHUNK >> GRID_SHIFT}")
    n_words = tables.n_words
    by_name = {t.field: t for t in tables.fields}
    if grid_fields is not None:
        missing = [name for name in grid_fields if name not in by_name]
        if missing or grid_fields[0] == grid_fields[1]:
            raise ValueError(f"grid fields {grid_fields} are not two of the policy's fields")
        pairs = [grid_fields]
    else:
        ranked = sorted(
            (t for t in tables.fields if len(t.classes) > 1), key=lambda t: -len(t.classes)
        )[:GRID_CANDIDATE_FIELDS]
        if len(ranked) < 2:
            return ClassifierTables(
                tables.fields,
                tables.n_rules,
                None,
                "no grid: fewer than two fields have more than one class",
            )
        pairs = [(a.field, b.field) for i, a in enumerate(ranked) for b in ranked[i + 1 :]]
    too_many = [name for name in by_name if len(by_name[name].classes) > CLASS_MASK]
    if any(name in pair for pair in pairs for name in too_many):
        return ClassifierTables(
            tables.fields,
            tables.n_rules,
            None,
            f"no grid: {', '.join(too_many)} has more than {CLASS_MASK} classes",
        )
    best: tuple[float, tuple[str, str], np.ndarray, int, int] | None = None
    for pair in pairs:
        row, col = by_name[pair[0]], by_name[pair[1]]
        row_unions = _group_unions(row, _groups(row, max_groups), n_words)
        col_unions = _group_unions(col, _groups(col, max_groups), n_words)
        cells = _cell_words(row_unions, col_unions)
        score = float(cells.sum()) / len(cells)
        if best is None or score < best[0]:
            best = (score, pair, cells, len(row_unions), len(col_unions))
    assert best is not None
    score, pair, cells, n_rows, n_cols = best
    packed = np.packbits(cells, axis=1, bitorder="little")
    cell_bits = tuple(int.from_bytes(row.tobytes(), "little") for row in packed)
    fields = tuple(
        replace(t, groups=_groups(t, max_groups)) if t.field in pair else t for t in tables.fields
    )
    note = (
        f"grid on {pair[0]} x {pair[1]}: {n_rows} x {n_cols} groups, "
        f"{score:.1f} of {n_words} words per cell on average"
    )
    return ClassifierTables(fields, tables.n_rules, Grid(pair, n_rows, n_cols, cell_bits), note)
