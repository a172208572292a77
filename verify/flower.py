"""Is a flower rule list the policy? A complete symbolic check, with counterexamples.

The rule list is flowc's own lowering or any filters read from ``tc -j
filter show`` JSON or a device dump. Chain 0 is what the hardware (or
software flower) decides: filters are tried by priority, then handle.
Packets that hit a trap, or no filter at all, go on to the slow path, which
implements the whole policy (its agreement with the IR is the BPF check), so
they count as agreeing here. Every other packet must get from its first
matching filter exactly the policy's action.

The question goes to :func:`ir.equivalence.compare` with each filter turned
into the cube of IR packets it matches (:meth:`FlowerMatch.cube`). The
answer is "equivalent" or a packet, with the IR rule (and DSL line) and the
filter (priority, handle) that decided it on each side.

Two filters of one priority that overlap with different actions are a
finding of their own: the kernel then decides by mask creation order, which
no rule list records, so such a list cannot be proven equivalent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

from backends.flower.rules import (
    TRAP,
    FlowerAction,
    FlowerFilter,
    FlowerMatchError,
    action_for,
    ordered,
)
from ir.algebra import Cube, intersect, is_feasible, subtract, witness
from ir.analysis import OverlapIndex
from ir.equivalence import ANY, Entry, FirstMatch, agree, check_refinement
from ir.fields import HEADER_SPACE
from ir.interp import evaluate
from ir.model import Policy, Rule
from ir.packet import Packet


class FlowerCheckError(ValueError):
    """A rule list the check cannot read exactly (the message names the filter)."""


@dataclass(frozen=True, slots=True)
class FlowerCounterexample:
    """A packet the policy and the flower rules decide differently.

    Attributes:
        packet: the packet.
        rule: the IR rule that decides it (its origin is the DSL line).
        filter: the filter that decides it on the flower side.
        reason: why the two differ, in words.
    """

    packet: Packet
    rule: Rule
    filter: FlowerFilter
    reason: str

    @property
    def policy_verdict(self) -> str:
        """The policy's action, as the DSL writes it."""
        return str(self.rule.action)

    @property
    def flower_verdict(self) -> str:
        """The filter's action, as tc writes it."""
        return describe_action(self.filter.action)


@dataclass(frozen=True, slots=True)
class FlowerCheck:
    """The answer of :func:`check`.

    Attributes:
        counterexample: None when equivalent.
        settled: False when the walk ran out of steps (answer unknown).
        steps: regions the walk explained.
        filters: chain-0 filters checked; ignored: filters on other chains.
        unmatchable: chain-0 filters no IR packet can match (QinQ, other ethertypes).
    """

    counterexample: FlowerCounterexample | None
    settled: bool
    steps: int
    filters: int
    ignored: int
    unmatchable: int

    @property
    def equivalent(self) -> bool:
        """True when proven: every packet the flower rules decide gets the policy's action."""
        return self.settled and self.counterexample is None


def describe_action(action: FlowerAction) -> str:
    """A flower action in tc's words."""
    if action.kind == TRAP:
        return f"goto chain {action.chain} (slow path)"
    if action.device is not None:
        return f"{action.kind} {action.device}"
    if action.mark is not None:
        return f"mark {action.mark:#x}"
    return action.kind


def _decision(action: FlowerAction) -> Hashable:
    return ANY if action.kind == TRAP else action


def _policy_entries(policy: Policy) -> list[Entry]:
    """The policy as a first-match list deciding flower actions."""
    return [Entry(r.match.cube, action_for(r.action)) for r in policy.rules]


def _filter_cube(f: FlowerFilter) -> Cube | None:
    try:
        return f.match.cube()
    except FlowerMatchError as err:
        where = f" ({f.origin})" if f.origin else ""
        raise FlowerCheckError(f"{f.label()}{where}: {err}") from None


def first_match_lists(
    policy: Policy, filters: Sequence[FlowerFilter]
) -> tuple[list[Entry], list[Entry], list[FlowerFilter]]:
    """The policy and the chain-0 filters as first-match lists over IR packets
    (traps decide ANY), and the filters kept: those some IR packet can match.

    Raises FlowerCheckError for a filter whose keys the IR cannot express.
    """
    left = _policy_entries(policy)
    right: list[Entry] = []
    kept: list[FlowerFilter] = []
    for f in ordered(filters):
        c = _filter_cube(f)
        if c is not None:
            kept.append(f)
            right.append(Entry(c, _decision(f.action)))
    return left, right, kept


def check(
    policy: Policy, filters: Sequence[FlowerFilter], *, step_limit: int = 200_000
) -> FlowerCheck:
    """Prove ``filters`` (chain 0 decides, traps go to the slow path) mean ``policy``,
    or return a counterexample packet.

    Raises FlowerCheckError for a filter whose keys the IR cannot express.
    """
    left, right, kept = first_match_lists(policy, filters)
    chain0 = sum(1 for f in filters if f.chain == 0)
    counts = (chain0, len(filters) - chain0, chain0 - len(kept))
    found = _same_priority_conflict(kept, [e.cube for e in right])
    if found is not None:
        point, a, b = found
        reason = _order_reason(kept[a], kept[b])
        return FlowerCheck(_counterexample(policy, point, kept[b], reason), True, 0, *counts)
    hints = [f.cookie.rule if f.cookie is not None else None for f in kept]
    outcome = check_refinement(HEADER_SPACE, left, right, hints=hints, step_limit=step_limit)
    counterexample = None
    if outcome.divergences:
        d = outcome.divergences[0]
        assert d.right is not None, "no filter matched, so the slow path decides"
        counterexample = _counterexample(policy, d.point, kept[d.right], "the actions differ")
    return FlowerCheck(counterexample, outcome.settled, outcome.steps, *counts)


def _counterexample(
    policy: Policy, point: tuple[int, ...], f: FlowerFilter, reason: str
) -> FlowerCounterexample:
    packet = Packet(point)
    return FlowerCounterexample(packet, evaluate(policy, packet).rule, f, reason)


def _order_reason(a: FlowerFilter, b: FlowerFilter) -> str:
    return (
        f"filters {a.label()} and {b.label()} share priority {a.prio}, overlap, and "
        f"act differently ({describe_action(a.action)} vs {describe_action(b.action)}): "
        "the kernel picks by mask creation order"
    )


def _same_priority_conflict(
    filters: Sequence[FlowerFilter], cubes: Sequence[Cube]
) -> tuple[tuple[int, ...], int, int] | None:
    """Two filters of one priority that some packet matches both of, acting differently."""
    for a, b, both in _same_priority_overlaps(filters, cubes):
        if is_feasible(HEADER_SPACE, both):
            point = witness(HEADER_SPACE, both)
            assert point is not None
            return point, a, b
    return None


def _same_priority_overlaps(
    filters: Sequence[FlowerFilter], cubes: Sequence[Cube]
) -> Iterator[tuple[int, int, Cube]]:
    """Pairs (a, b), a before b, of filters of one priority that act differently
    and whose cubes intersect, with the intersection."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, f in enumerate(filters):
        groups[f.prio].append(i)
    for members in groups.values():
        if len({filters[i].action for i in members}) < 2:
            continue
        index = OverlapIndex(HEADER_SPACE, [cubes[i] for i in members])
        for a in range(len(members)):
            for b in index.candidates(a, a + 1, len(members)):
                if filters[members[a]].action == filters[members[b]].action:
                    continue
                both = intersect(cubes[members[a]], cubes[members[b]])
                if both is not None:
                    yield members[a], members[b], both


# Audit statuses of one installed filter.
SOUND = "sound"
STALE = "stale"
UNSOUND = "unsound"
UNCHECKED = "unchecked"


@dataclass(frozen=True, slots=True)
class FilterAudit:
    """What the audit found about one installed chain-0 filter.

    Attributes:
        filter: the filter as installed.
        status: SOUND (every packet it decides gets its action from the
            policy), STALE (sound, but its cookie names another generation),
            UNSOUND (``counterexample`` is a packet it decides wrongly), or
            UNCHECKED (its keys are outside what the IR can express).
        counterexample: for UNSOUND, a packet that reaches the filter, matches
            it, and gets another verdict from the policy.
        note: why, in words.
    """

    filter: FlowerFilter
    status: str
    counterexample: FlowerCounterexample | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Audit:
    """The answer of :func:`audit`: one finding per chain-0 filter, in priority order.

    Attributes:
        findings: per filter.
        settled: False when the walk ran out of steps (some UNSOUND filters may
            be missing; no SOUND finding is then a proof).
        steps: regions walked exactly.
        generation: the generation filters were expected to carry (None: not checked).
        ignored: filters on other chains (the policy decides in chain 0).
    """

    findings: tuple[FilterAudit, ...]
    settled: bool
    steps: int
    generation: int | None
    ignored: int

    def with_status(self, status: str) -> list[FilterAudit]:
        """The findings of one status."""
        return [f for f in self.findings if f.status == status]

    @property
    def sound(self) -> bool:
        """True when proven: no installed filter gives a verdict the policy would not."""
        return self.settled and not any(f.status in (UNSOUND, UNCHECKED) for f in self.findings)


def audit(
    policy: Policy,
    filters: Sequence[FlowerFilter],
    *,
    generation: int | None = None,
    step_limit: int = 200_000,
) -> Audit:
    """Check every installed chain-0 filter on its own: each packet that reaches
    it (no earlier filter matches) and matches it must get its action from the
    policy (traps always agree: the slow path decides). Filters of flowc whose
    cookie names a ``generation`` other than the given one are STALE even
    when sound. A filter the IR cannot express is UNCHECKED and treated as
    matching nothing, so the filters after it are checked on a superset of
    their packets (a SOUND verdict stays a proof).
    """
    chain0 = ordered(f for f in filters if f.chain == 0)
    left = _policy_entries(policy)
    right: list[Entry] = []
    kept: list[int] = []
    unchecked: dict[int, str] = {}
    for i, f in enumerate(chain0):
        try:
            c = f.match.cube()
        except FlowerMatchError as err:
            unchecked[i] = f"the policy cannot express its match: {err}"
            continue
        if c is not None:
            kept.append(i)
            right.append(Entry(c, _decision(f.action)))
    unsound: dict[int, tuple[FlowerCounterexample, str]] = {}
    pairs, settled = _ambiguous_pairs(chain0, kept, right, step_limit)
    for a, b, point in pairs:
        rule = evaluate(policy, Packet(point)).rule
        for x, y in ((a, b), (b, a)):
            if x not in unsound and not agree(_decision(chain0[x].action), action_for(rule.action)):
                reason = _order_reason(chain0[x], chain0[y])
                unsound[x] = (_counterexample(policy, point, chain0[x], reason), reason)
    hints = [_hint(chain0[i]) for i in kept]
    outcome = check_refinement(
        HEADER_SPACE, left, right, hints=hints, collect=True, step_limit=step_limit
    )
    settled, steps = settled and outcome.settled, outcome.steps
    for d in outcome.divergences:
        assert d.right is not None, "no filter matched, so the slow path decides"
        i = kept[d.right]
        if i not in unsound:
            ce = _counterexample(policy, d.point, chain0[i], "the actions differ")
            why = f"the filter says {ce.flower_verdict}, the policy {ce.policy_verdict}"
            unsound[i] = (ce, why)
    findings = []
    for i, f in enumerate(chain0):
        origin = _cookie_note(f, generation)
        if i in unchecked:
            findings.append(FilterAudit(f, UNCHECKED, None, unchecked[i]))
        elif i in unsound:
            ce, why = unsound[i]
            findings.append(FilterAudit(f, UNSOUND, ce, why + origin))
        elif origin:
            findings.append(FilterAudit(f, STALE, None, "sound" + origin))
        else:
            findings.append(FilterAudit(f, SOUND))
    return Audit(tuple(findings), settled, steps, generation, len(filters) - len(chain0))


def _ambiguous_pairs(
    chain0: Sequence[FlowerFilter], kept: Sequence[int], right: Sequence[Entry], step_limit: int
) -> tuple[list[tuple[int, int, tuple[int, ...]]], bool]:
    """Pairs of filters (positions in ``chain0``) of one priority with different
    actions, and a packet matching both that no filter of an earlier priority
    takes: the kernel decides it by mask creation order. False when a search
    for such a packet ran out of steps."""
    kept_filters = [chain0[i] for i in kept]
    group_start: dict[int, int] = {}
    for pos, f in enumerate(kept_filters):
        group_start.setdefault(f.prio, pos)
    found = []
    settled = True
    taken: FirstMatch | None = None
    for a, b, both in _same_priority_overlaps(kept_filters, [e.cube for e in right]):
        taken = taken or FirstMatch(HEADER_SPACE, right)
        point, done = _reaching_point(taken, both, group_start[kept_filters[a].prio], step_limit)
        settled = settled and done
        if point is not None:
            found.append((kept[a], kept[b], point))
    return found, settled


def _reaching_point(
    taken: FirstMatch, region: Cube, start: int, step_limit: int
) -> tuple[tuple[int, ...] | None, bool]:
    """A packet of ``region`` that no entry before ``start`` takes (None: there
    is none), and False when the search ran out of steps."""
    residual = [region]
    for _ in range(step_limit):
        if not residual:
            return None, True
        piece = residual.pop()
        point = witness(HEADER_SPACE, piece)
        if point is None:
            continue
        k = taken.first(point)
        if k is None or k >= start:
            return point, True
        residual.extend(subtract(HEADER_SPACE, piece, taken.cubes[k]))
    return None, not residual


def _hint(f: FlowerFilter) -> int | None:
    return f.cookie.rule if f.cookie is not None else None


def _cookie_note(f: FlowerFilter, generation: int | None) -> str:
    """'' for a filter of the expected generation (or no expectation), else why it is stale."""
    if generation is None or f.cookie is None or f.cookie.generation == generation:
        return ""
    return f"; installed by generation {f.cookie.generation}, the policy is generation {generation}"
