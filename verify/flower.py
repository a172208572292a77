"""Is a flower rule list the policy? A complete symbolic check, with counterexamples.

The rule list is flowc's own lowering or any filters read from ``tc -j
filter show`` JSON or a device dump. Chain 0 is what the hardware (or
software flower) decides, and this module holds it to the kernel's rules:
priorities are tried in order, and the first priority with a filter matching
the packet decides; inside that priority the kernel tries masks in creation
order, which no rule list records, so *every* filter of it that matches the
packet is a possible outcome. Packets that hit a trap, or no filter at all,
go on to the slow path, which implements the whole policy (its agreement with
the IR is the BPF check), so they count as agreeing here. Every other
possible outcome must be exactly the policy's action.

The question goes to :func:`ir.equivalence.check_refinement` with each filter
turned into the cubes of IR packets it matches (:func:`filter_cubes`), in
priority then handle order: that proves one possible outcome per packet (the
filter first by handle). The other outcomes come from filters of one priority
that overlap: for each such pair, the later filter's decision is compared
with the policy on the packets of the overlap that no earlier priority takes
(:func:`ir.equivalence.compare`, exact, within the same step budget). Two
overlapping filters are therefore no finding by themselves: only a packet
that reaches both and gets a wrong verdict from one kernel choice is, and a
trap (the slow path decides) never is.

Stateful lowerings (a chain-0 ``ct`` action going to a chain whose filters
match ``ct_state``) are checked as the kernel runs them: the ct filter's
packets are walked through the ct chain, where a packet carries +trk and its
state's flag, so a ct_state key constrains the IR's ``state`` coordinate and a
filter without one matches every state; before the ct action every packet is
untracked (``-trk``). A packet no filter of the ct chain matches passes (tc
ends classification), and an IP fragment reaching a ct action is a finding of
its own: act_ct reassembles fragments, which the IR decides one by one. When
the policy is stateful (it, or another policy of the host, matches on state),
a verdict includes its commit: a new packet the policy lets on must meet
``ct commit``, and no other packet may.

The answer is "equivalent" or a packet, with the IR rule (and DSL line), the
filter that gives the wrong verdict and, when the kernel may choose, every
filter it may choose from.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

from backends.flower.dissector import MALFORMED_VIEWS, DissectorView
from backends.flower.rules import (
    CT,
    PASS,
    TRAP,
    FlowerAction,
    FlowerFilter,
    FlowerMatchError,
    action_for,
    ordered,
)
from ir.algebra import Cube, full_cube, intersect, is_feasible
from ir.analysis import OverlapIndex
from ir.equivalence import ANY, Entry, FirstMatch, check_refinement, compare
from ir.fields import FRAG_FIRST, FRAG_LATER, FRAG_NONE, HEADER_SPACE, STATE_NEW
from ir.interp import evaluate
from ir.model import DROP, Action, Policy, Rule
from ir.packet import Packet
from ir.state_analysis import policy_uses_state
from ir.valueset import ValueSet

# What the kernel does to an IP fragment that reaches a ct action: reassemble
# it (act_ct's defrag), which no IR verdict of a fragment is.
DEFRAG = "reassembled by act_ct"
# What tc does with a packet no filter of a chain after a ct action matches.
_PASSED = FlowerAction(PASS)
_FRAG_AT = HEADER_SPACE.position("frag")
_STATE_AT = HEADER_SPACE.position("state")
_FRAGMENTS = ValueSet.of_values(2, (FRAG_FIRST, FRAG_LATER))
_WHOLE = ValueSet.of_value(2, FRAG_NONE)
_NEW = ValueSet.of_value(HEADER_SPACE.field("state").width, STATE_NEW)


class FlowerCheckError(ValueError):
    """A rule list the check cannot read exactly (the message names the filter)."""


@dataclass(frozen=True, slots=True)
class FlowerCounterexample:
    """A packet the policy and the flower rules (in some kernel choice) decide differently.

    Attributes:
        packet: the packet.
        rule: the IR rule that decides it (its origin is the DSL line).
        filter: the filter that gives it the wrong verdict on the flower side.
        reason: why the two differ, in words.
        choices: every filter the kernel may pick for the packet (those of the
            first priority holding a match, in handle order), ``filter`` among
            them; more than one means mask creation order decides.
        frame: when the packet is flower's view of a malformed frame (which the
            slow path drops before any rule), what the frame is.
    """

    packet: Packet
    rule: Rule
    filter: FlowerFilter
    reason: str
    choices: tuple[FlowerFilter, ...] = ()
    frame: str | None = None

    @property
    def policy_verdict(self) -> str:
        """The policy's action, as the DSL writes it."""
        if self.frame is not None:
            return "drop (malformed frame, before any rule)"
        return str(self.rule.action)

    @property
    def flower_verdict(self) -> str:
        """The filter's action, as tc writes it."""
        return describe_action(self.filter.action)

    @property
    def ambiguous(self) -> bool:
        """True when the kernel may pick another filter for the packet than ``filter``."""
        return len(self.choices) > 1

    def agrees(self, f: FlowerFilter) -> bool:
        """True when kernel choice ``f`` gives the packet the policy's verdict
        (its commit aside)."""
        if self.frame is not None:
            return f.action.kind in (TRAP, DROP)
        plain = FlowerAction(f.action.kind, f.action.device, f.action.mark, f.action.chain)
        return f.action.kind == TRAP or plain == action_for(self.rule.action)


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
    if action.kind == CT:
        return f"ct zone 0, goto chain {action.chain}"
    commit = "ct commit, " if action.commit else ""
    if action.device is not None:
        return f"{commit}{action.kind} {action.device}"
    if action.mark is not None:
        return f"{commit}mark {action.mark:#x}"
    return f"{commit}{action.kind}"


def _decision(action: FlowerAction, stateful: bool = True) -> Hashable:
    """What a filter decides: ANY for a trap, else its action (its commit only
    when commits are observable)."""
    if action.kind == TRAP:
        return ANY
    if not stateful and action.commit:
        return FlowerAction(action.kind, action.device, action.mark, action.chain)
    return action


def _with(c: Cube, at: int, values: ValueSet) -> Cube | None:
    both = c.sets[at] & values
    if both.is_empty():
        return None
    sets = list(c.sets)
    sets[at] = both
    return Cube(tuple(sets))


def _policy_entries(policy: Policy, stateful: bool = False) -> list[Entry]:
    """The policy as a first-match list deciding flower actions; stateful: a
    rule letting packets on decides its new packets with a commit."""
    out = []
    for r in policy.rules:
        if not stateful or r.action.kind == DROP:
            out.append(Entry(r.match.cube, action_for(r.action)))
            continue
        new = _with(r.match.cube, _STATE_AT, _NEW)
        rest = _with(r.match.cube, _STATE_AT, HEADER_SPACE.field("state").full - _NEW)
        if new is not None:
            out.append(Entry(new, action_for(r.action, commit=True)))
        if rest is not None:
            out.append(Entry(rest, action_for(r.action)))
    return out


def _left_index(policy: Policy, stateful: bool) -> dict[tuple[int, bool], int]:
    """(rule, commits) -> the position of that part of the rule in
    :func:`_policy_entries` (hints for the walk)."""
    out: dict[tuple[int, bool], int] = {}
    pos = 0
    for i, r in enumerate(policy.rules):
        if not stateful or r.action.kind == DROP:
            out[(i, False)] = out[(i, True)] = pos
            pos += 1
            continue
        parts = [
            (commit, _with(r.match.cube, _STATE_AT, s))
            for commit, s in ((True, _NEW), (False, HEADER_SPACE.field("state").full - _NEW))
        ]
        for commit, part in parts:
            if part is not None:
                out[(i, commit)] = pos
                pos += 1
        for commit, part in parts:
            if part is None:
                out[(i, commit)] = out.get((i, not commit), pos - 1)
    return out


def filter_cubes(f: FlowerFilter, tracked: bool = False) -> list[Cube]:
    """The IR packets filter ``f`` matches, as a union of cubes (empty: none), as
    the kernel matches them: through the flow dissector's view of fragments
    (``tracked``: behind a ct action, as for FlowerMatch.cube).

    Raises FlowerMatchError for keys the IR cannot see.
    """
    return list(f.match.cubes(tracked))


def _checked_cubes(f: FlowerFilter, tracked: bool = False) -> list[Cube]:
    try:
        return filter_cubes(f, tracked)
    except FlowerMatchError as err:
        where = f" ({f.origin})" if f.origin else ""
        raise FlowerCheckError(f"{f.label()}{where}: {err}") from None


@dataclass(slots=True)
class _Flat:
    """The filters as one first-match list over IR packets, chains walked."""

    right: list[Entry]
    owners: list[FlowerFilter]
    groups: list[Hashable]
    reached: set[int]


def _flatten(
    filters: Sequence[FlowerFilter],
    stateful: bool,
    unchecked: dict[int, str] | None = None,
) -> _Flat:
    """Chain 0 in order, each ct filter's packets walked through its chain (whole
    packets; fragments there decide DEFRAG), and what no filter of that chain
    matches passing. Each entry's group is (where the walk was, chain, prio):
    the kernel picks by mask order only among entries of one group.
    ``unchecked``: record filters the IR cannot express there (by ``id``) and
    treat them as matching nothing, instead of raising FlowerCheckError."""
    chains: dict[int, list[FlowerFilter]] = defaultdict(list)
    for f in sorted(filters, key=lambda f: (f.chain, f.prio, f.handle)):
        chains[f.chain].append(f)
    flat = _Flat([], [], [], {0})

    def add(c: Cube, decision: Hashable, f: FlowerFilter, group: Hashable) -> None:
        flat.right.append(Entry(c, decision))
        flat.owners.append(f)
        flat.groups.append(group)

    def walk(chain: int, within: Cube | None, tracked: bool, path: tuple[int, ...]) -> None:
        if len(path) > len(chains):
            raise FlowerCheckError(f"ct actions loop back to chain {chain}")
        flat.reached.add(chain)
        for f in chains.get(chain, []):
            group = (path, f.chain, f.prio)
            if unchecked is None:
                cubes = _checked_cubes(f, tracked)
            else:
                try:
                    cubes = filter_cubes(f, tracked)
                except FlowerMatchError as err:
                    unchecked[id(f)] = f"the policy cannot express its match: {err}"
                    continue
            for c in cubes:
                if within is not None:
                    both = intersect(c, within)
                    if both is None or not is_feasible(HEADER_SPACE, both):
                        continue
                    c = both
                if f.action.kind != CT:
                    add(c, _decision(f.action, stateful), f, group)
                    continue
                assert f.action.chain is not None
                fragments = _with(c, _FRAG_AT, _FRAGMENTS)
                if fragments is not None and is_feasible(HEADER_SPACE, fragments):
                    add(fragments, DEFRAG, f, group)
                whole = _with(c, _FRAG_AT, _WHOLE)
                if whole is None or not is_feasible(HEADER_SPACE, whole):
                    continue
                walk(f.action.chain, whole, True, (*path, len(flat.right)))
                add(whole, _PASSED, f, group)

    walk(0, None, False, ())
    return flat


def first_match_lists(
    policy: Policy, filters: Sequence[FlowerFilter], *, stateful: bool | None = None
) -> tuple[list[Entry], list[Entry], list[FlowerFilter]]:
    """The policy and the filters as first-match lists over IR packets (traps
    decide ANY, a filter is one entry per cube of :func:`filter_cubes`, ct
    filters walked into their chain as :func:`check` describes), and the
    filter of each right entry (filters no IR packet can match have none).
    ``stateful``: decisions include commits (default: the policy matches on state).

    Raises FlowerCheckError for a filter whose keys the IR cannot express.
    """
    stateful = policy_uses_state(policy) if stateful is None else stateful
    flat = _flatten(filters, stateful)
    return _policy_entries(policy, stateful), flat.right, flat.owners


class _Chain0:
    """The filters in the kernel's terms, over the entries of :func:`_flatten`:
    which entries an earlier priority holds, and which filters the kernel may
    pick for a packet."""

    def __init__(
        self,
        owners: Sequence[FlowerFilter],
        right: Sequence[Entry],
        groups: Sequence[Hashable] | None = None,
    ) -> None:
        self.owners = owners
        self.cubes = [e.cube for e in right]
        self.decisions = [e.decision for e in right]
        self.groups: Sequence[Hashable] = (
            groups if groups is not None else [((), f.chain, f.prio) for f in owners]
        )
        self.group_start: dict[Hashable, int] = {}
        for pos, g in enumerate(self.groups):
            self.group_start.setdefault(g, pos)
        self._blockers: FirstMatch | None = None
        self.prefixes: dict[int, FirstMatch] = {}

    @property
    def blockers(self) -> FirstMatch:
        """Every entry, deciding ANY: what an earlier priority takes is out of the
        question, whatever it does with it (the first-match walk judges that).
        Built on first use: a list with no same-priority overlap never needs it."""
        if self._blockers is None:
            self._blockers = FirstMatch(HEADER_SPACE, [Entry(c, ANY) for c in self.cubes])
        return self._blockers

    def earlier(self, group: Hashable) -> FirstMatch:
        """The entries before ``group`` (earlier priorities), all deciding ANY."""
        start = self.group_start[group]
        if start not in self.prefixes:
            self.prefixes[start] = self.blockers.prefix(start)
        return self.prefixes[start]

    def choices(self, point: tuple[int, ...]) -> tuple[FlowerFilter, ...]:
        """The filters the kernel may pick for ``point``: those of the first
        priority holding a match that match it, in handle order."""
        first = self.blockers.first(point)
        if first is None:
            return ()
        group = self.groups[first]
        out: list[FlowerFilter] = []
        for pos in range(first, len(self.owners)):
            f = self.owners[pos]
            if self.groups[pos] != group:
                break
            if self.cubes[pos].contains(point) and f not in out:
                out.append(f)
        return tuple(out)

    def same_priority_pairs(self) -> Iterator[tuple[int, int, Cube]]:
        """Entry pairs (a, b), a before b, of different filters of one priority
        whose cubes intersect, with the intersection."""
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for pos, g in enumerate(self.groups):
            groups[g].append(pos)
        for members in groups.values():
            if len({id(self.owners[m]) for m in members}) < 2:
                continue
            index = OverlapIndex(HEADER_SPACE, [self.cubes[m] for m in members])
            for i in range(len(members)):
                for j in index.candidates(i, i + 1, len(members)):
                    a, b = members[i], members[j]
                    if self.owners[a] is self.owners[b]:
                        continue
                    both = intersect(self.cubes[a], self.cubes[b])
                    if both is not None:
                        yield a, b, both


@dataclass(slots=True)
class _Budget:
    """Steps left for the exact walks, and whether one ran out."""

    left: int
    settled: bool = True
    spent: int = 0


def _wrong_kernel_choices(
    policy: Sequence[Entry],
    chain0: _Chain0,
    budget: _Budget,
    *,
    every_pair: bool,
    skip: set[int] | None = None,
) -> Iterator[tuple[FlowerFilter, FlowerFilter, tuple[int, ...]]]:
    """``(wrong, other, packet)``: a filter the kernel may pick for ``packet``
    instead of ``other`` (both of one priority, both matching, no earlier
    priority taking it) and whose action is not the policy's for it.

    Only the later filter of each pair is judged there: on packets where the
    earlier one comes first by handle, the first-match walk judges it. With
    ``every_pair`` False, pairs of one decision are skipped (the later filter
    then does what the earlier one does, which is judged already); the audit
    sets it, to name every filter that may decide wrongly. Filters whose
    ``id`` is in ``skip`` (already found wrong) are not judged again.
    """
    indexed: FirstMatch | None = None  # built for the first walk: most lists need none
    for a, b, both in chain0.same_priority_pairs():
        fa, fb = chain0.owners[a], chain0.owners[b]
        da, db = chain0.decisions[a], chain0.decisions[b]
        if db == ANY or (skip is not None and id(fb) in skip):
            continue
        if not every_pair and da == db:
            continue
        if budget.left <= 0:
            budget.settled = False
            return
        indexed = indexed or FirstMatch(HEADER_SPACE, policy)
        walk = compare(
            HEADER_SPACE,
            indexed,
            chain0.earlier(chain0.groups[b]),
            right_default=db,
            within=[both],
            step_limit=budget.left,
        )
        budget.left -= walk.steps
        budget.spent += walk.steps
        budget.settled = budget.settled and walk.settled
        if walk.divergences:
            yield fb, fa, walk.divergences[0].point
        elif not walk.settled:
            return


def check(
    policy: Policy,
    filters: Sequence[FlowerFilter],
    *,
    step_limit: int = 200_000,
    stateful: bool | None = None,
) -> FlowerCheck:
    """Prove ``filters`` (chain 0 decides, ct filters go on in their chain, traps
    go to the slow path) mean ``policy`` in every choice the kernel may make,
    or return a counterexample packet. ``stateful``: verdicts include commits
    (default: the policy matches on state; pass True when another policy of
    the host does).

    Raises FlowerCheckError for a filter whose keys the IR cannot express.
    """
    stateful = policy_uses_state(policy) if stateful is None else stateful
    left = _policy_entries(policy, stateful)
    flat = _flatten(filters, stateful)
    right, owners = flat.right, flat.owners
    reached = [f for f in filters if f.chain in flat.reached]
    kept = len({id(f) for f in owners})
    counts = (len(reached), len(filters) - len(reached), len(reached) - kept)
    chain0 = _Chain0(owners, right, flat.groups)
    index = _left_index(policy, stateful)
    hints = [_hint(f, index) for f in owners]
    # One index over the filters for the policy's walk and every malformed view's.
    filter_list = FirstMatch(HEADER_SPACE, right)
    outcome = check_refinement(HEADER_SPACE, left, filter_list, hints=hints, step_limit=step_limit)
    if outcome.divergences:
        d = outcome.divergences[0]
        assert d.right is not None, "no filter matched, so the slow path decides"
        ce = _counterexample(policy, chain0, d.point, owners[d.right], decision=d.right)
        return FlowerCheck(ce, True, outcome.steps, *counts)
    if not outcome.settled:
        return FlowerCheck(None, False, outcome.steps, *counts)
    budget = _Budget(step_limit - outcome.steps)
    for wrong, other, point in _wrong_kernel_choices(left, chain0, budget, every_pair=False):
        ce = _counterexample(policy, chain0, point, wrong, other)
        return FlowerCheck(ce, True, outcome.steps + budget.spent, *counts)
    steps = outcome.steps + budget.spent
    if not budget.settled:
        return FlowerCheck(None, False, steps, *counts)
    # Malformed frames: chain 0 may decide their flower view only by a trap, a
    # drop or nothing, since the slow path drops them before any rule.
    drop = action_for(Action(DROP))
    for view in MALFORMED_VIEWS:
        view_left = [Entry(view.cube, drop), Entry(full_cube(HEADER_SPACE), ANY)]
        walk = check_refinement(
            HEADER_SPACE, view_left, filter_list, step_limit=max(1, step_limit - steps)
        )
        steps += walk.steps
        if not walk.settled:
            return FlowerCheck(None, False, steps, *counts)
        if walk.divergences:
            d = walk.divergences[0]
            assert d.right is not None
            ce = _view_counterexample(policy, chain0, view, d.point, owners[d.right])
            return FlowerCheck(ce, True, steps, *counts)
    return FlowerCheck(None, True, steps, *counts)


def _view_counterexample(
    policy: Policy,
    chain0: _Chain0,
    view: DissectorView,
    point: tuple[int, ...],
    f: FlowerFilter,
) -> FlowerCounterexample:
    packet = Packet(point)
    reason = (
        f"a frame with a {view.what} looks like this packet to flower, and {f.label()} "
        f"decides it ({describe_action(f.action)}); the slow path drops it"
    )
    return FlowerCounterexample(
        packet, evaluate(policy, packet).rule, f, reason, chain0.choices(point), view.what
    )


def _counterexample(
    policy: Policy,
    chain0: _Chain0,
    point: tuple[int, ...],
    f: FlowerFilter,
    other: FlowerFilter | None = None,
    *,
    decision: int | None = None,
) -> FlowerCounterexample:
    """The counterexample ``point`` where kernel choice ``f`` is wrong (``other``:
    the filter of the same priority the search paired it with; ``decision``:
    the right entry that decides it, when known)."""
    packet = Packet(point)
    rule = evaluate(policy, packet).rule
    choices = chain0.choices(point)
    assert f in choices, "the wrong filter is a possible kernel choice"
    others = [c for c in choices if c is not f]
    if other is not None and other in others:
        others.remove(other)
        others.insert(0, other)
    said = chain0.decisions[decision] if decision is not None else None
    if said == DEFRAG:
        reason = (
            f"this IP fragment reaches the ct action of {f.label()}, which reassembles "
            "fragments; the policy decides each fragment on its own (trap fragments "
            "before the ct action)"
        )
    elif f.action.kind == CT:
        reason = (
            f"no filter of chain {f.action.chain} matches this packet after {f.label()}'s "
            "ct action, so tc passes it"
        )
    elif (
        isinstance(said, FlowerAction)
        and FlowerAction(said.kind, said.device, said.mark, said.chain) == action_for(rule.action)
        and said.commit != (packet.get("state") == STATE_NEW and rule.action.kind != DROP)
    ):
        reason = (
            "the verdicts differ in ct commit: the policy commits exactly the new packets "
            "it lets on"
        )
    elif not others:
        reason = "the actions differ"
    else:
        named = " and ".join(c.label() for c in [f, *others])
        reason = (
            f"filters {named} share priority {f.prio}, all match this packet and no "
            f"earlier priority takes it: the kernel picks by mask creation order, and "
            f"if it picks {f.label()} the packet gets {describe_action(f.action)}, "
            f"the policy says {rule.action}"
        )
    return FlowerCounterexample(packet, rule, f, reason, choices)


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
    """Check every installed chain-0 filter on its own: each packet the kernel
    may give it (no earlier priority matches the packet; inside its priority
    mask creation order picks, so any matching filter may) must get its action
    from the policy (traps always agree: the slow path decides). Filters of
    flowc whose cookie names a ``generation`` other than the given one are
    STALE even when sound. A filter the IR cannot express is UNCHECKED and
    treated as matching nothing, so the filters after it are checked on a
    superset of their packets (a SOUND verdict stays a proof).
    """
    stateful = policy_uses_state(policy)
    unchecked_ids: dict[int, str] = {}
    flat = _flatten(filters, stateful, unchecked_ids)
    chain0 = ordered(filters)
    position = {id(f): i for i, f in enumerate(chain0)}
    unchecked = {position[k]: v for k, v in unchecked_ids.items() if k in position}
    left = _policy_entries(policy, stateful)
    right, owners = flat.right, flat.owners
    chain0_view = _Chain0(owners, right, flat.groups)
    unsound: dict[int, tuple[FlowerCounterexample, str]] = {}
    index = _left_index(policy, stateful)
    hints = [_hint(f, index) for f in owners]
    outcome = check_refinement(
        HEADER_SPACE, left, right, hints=hints, collect=True, step_limit=step_limit
    )
    for d in outcome.divergences:
        assert d.right is not None, "no filter matched, so the slow path decides"
        f = owners[d.right]
        i = position[id(f)]
        if i not in unsound:
            ce = _counterexample(policy, chain0_view, d.point, f, decision=d.right)
            unsound[i] = (ce, _why(ce))
    budget = _Budget(step_limit - outcome.steps)
    if outcome.settled:
        # Filters found wrong are not walked again (the set grows as the walk goes).
        skip = {id(chain0[i]) for i in unsound}
        found = _wrong_kernel_choices(left, chain0_view, budget, every_pair=True, skip=skip)
        for wrong, other, point in found:
            skip.add(id(wrong))
            ce = _counterexample(policy, chain0_view, point, wrong, other)
            unsound[position[id(wrong)]] = (ce, _why(ce))
    settled = outcome.settled and budget.settled
    view_steps = 0
    if settled:
        # Malformed frames: a filter the kernel may pick for the flower view of
        # one (no earlier priority takes it) must trap or drop it, as the slow
        # path drops such frames before any rule.
        drop = action_for(Action(DROP))
        views = [
            (
                v,
                FirstMatch(
                    HEADER_SPACE, [Entry(v.cube, drop), Entry(full_cube(HEADER_SPACE), ANY)]
                ),
            )
            for v in MALFORMED_VIEWS
        ]
        for pos, (c, f) in enumerate(zip(chain0_view.cubes, owners, strict=True)):
            i = position[id(f)]
            decided = chain0_view.decisions[pos]
            if decided == ANY or f.action.kind == DROP or i in unsound:
                continue
            for view, view_list in views:
                both = intersect(c, view.cube)
                if both is None or not is_feasible(HEADER_SPACE, both):
                    continue
                walk = compare(
                    HEADER_SPACE,
                    view_list,
                    chain0_view.earlier(chain0_view.groups[pos]),
                    right_default=decided,
                    within=[both],
                    step_limit=max(1, step_limit - outcome.steps - budget.spent - view_steps),
                )
                view_steps += walk.steps
                settled = settled and walk.settled
                if walk.divergences:
                    point = walk.divergences[0].point
                    ce = _view_counterexample(policy, chain0_view, view, point, f)
                    why = (
                        f"it decides frames with a {view.what} ({describe_action(f.action)}), "
                        "which the slow path drops"
                    )
                    unsound[i] = (ce, why)
                    break
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
    steps = outcome.steps + budget.spent + view_steps
    return Audit(tuple(findings), settled, steps, generation, len(filters) - len(chain0))


def _why(ce: FlowerCounterexample) -> str:
    """An audit finding's note: the filter's verdict against the policy's, and
    when the kernel may choose, that this is one of its choices."""
    why = f"the filter says {ce.flower_verdict}, the policy {ce.policy_verdict}"
    if ce.ambiguous:
        others = ", ".join(c.label() for c in ce.choices if c is not ce.filter)
        why += f" (when mask creation order picks it over {others}, which also match)"
    return why


def _hint(f: FlowerFilter, index: dict[tuple[int, bool], int] | None = None) -> int | None:
    rule = f.cookie.rule if f.cookie is not None else None
    if rule is None or index is None:
        return rule
    return index.get((rule, f.action.commit))


def _cookie_note(f: FlowerFilter, generation: int | None) -> str:
    """'' for a filter of the expected generation (or no expectation), else why it is stale."""
    if generation is None or f.cookie is None or f.cookie.generation == generation:
        return ""
    return f"; installed by generation {f.cookie.generation}, the policy is generation {generation}"
