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

Changing rules without changing which fields are used, and within the
capacities sized here, is a map update, not a recompile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class FieldTable:
    """How one field's value maps to a class, and each class's rule bit vector.

    Attributes:
        field: registry name of the field.
        kind: ``dir4`` (IPv4: DIR-16-8-8 direct arrays), ``lpm6`` (IPv6: LPM trie)
            or ``array`` (index = value).
        intervals: ``(lo, hi, class_id)`` covering the whole value space, in order.
        classes: rule bit set of each class (bit r set = rule r matches this value).
    """

    field: str
    kind: str
    intervals: tuple[tuple[int, int, int], ...]
    classes: tuple[int, ...]

    @property
    def width(self) -> int:
        """Bit width of the field."""
        return HEADER_SPACE.field(self.field).width

    def class_of(self, value: int) -> int:
        """The class of a field value (binary search over the intervals)."""
        lo_i, hi_i = 0, len(self.intervals)
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo, hi, cls = self.intervals[mid]
            if value < lo:
                hi_i = mid
            elif value > hi:
                lo_i = mid + 1
            else:
                return cls
        raise ValueError(f"{self.field}: value {value} outside every interval")

    def dir_levels(self) -> tuple[list[int], list[int], list[int]]:
        """See :func:`dir_levels` (cached per table)."""
        return dir_levels(self)

    def lpm_entries(self) -> list[tuple[int, int, int]]:
        """``(prefix value, prefix length, class)`` for an LPM trie: every interval as
        prefixes; disjoint, so longest-prefix match finds exactly one."""
        out = []
        width = self.width
        for lo, hi, cls in self.intervals:
            for value, plen in ValueSet.of_range(width, lo, hi).to_prefixes():
                out.append((value, plen, cls))
        return out


@functools.lru_cache(maxsize=32)
def dir_levels(table: FieldTable) -> tuple[list[int], list[int], list[int]]:
    """The IPv4 class lookup as DIR-16-8-8 arrays (level 1: 65,536 entries by the
    top 16 bits; levels 2 and 3: 256-entry chunks by the next byte).

    An entry is a class, or ``DIR_CHUNK | n`` when the block is not uniform
    and chunk ``n`` of the next level refines it. Three array reads at most,
    instead of an LPM trie walk of up to 32 levels.
    """
    level1: list[int] = []
    level2: list[int] = []
    level3: list[int] = []
    intervals = table.intervals
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
            level3.extend(table.class_of(lo24 | b) for b in range(256))
    return level1, level2, level3


@dataclass(frozen=True, slots=True)
class ClassifierTables:
    """Everything the BPF classifier's maps hold for one policy.

    Attributes:
        fields: one table per field some rule constrains, in registry order.
        n_rules: number of IR rules (the last is the default).
        n_words: 64-bit words per bit vector.
        n_summary: summary words per bit vector (bit w set = word w is non-zero).
    """

    fields: tuple[FieldTable, ...]
    n_rules: int

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
        vectors = [
            self.bitvector_words(t.classes[t.class_of(packet.get(t.field))]) for t in self.fields
        ]
        mask = (1 << WORD_BITS) - 1
        for s in range(self.n_summary):
            summary = mask
            for vec_summary, _ in vectors:
                summary &= vec_summary[s]
            while summary:
                bit = (summary & -summary).bit_length() - 1
                w = s * WORD_BITS + bit
                word = mask
                for _, vec_words in vectors:
                    word &= vec_words[w]
                if word:
                    return w * WORD_BITS + (word & -word).bit_length() - 1
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


def build_tables(policy: Policy) -> ClassifierTables:
    """The classifier tables of ``policy`` (rule ids are IR rule priorities)."""
    if [r.priority for r in policy.rules] != list(range(len(policy.rules))):
        raise ValueError("rule priorities must be 0..n-1 (renumber the policy first)")
    tables = tuple(build_field_table(policy, name) for name in used_fields(policy))
    return ClassifierTables(tables, len(policy.rules))
