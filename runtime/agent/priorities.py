"""The agent's plan of chain-0 priorities: who may use which tc priority.

tc tries chain 0's filters by priority, lowest first, so the agent's layers are
kept apart by priority alone::

    1 .. guard-1            cache rules (one priority per ethertype)
    guard                   the update guard (a catch-all trap during updates)
    guard+1 .. catch_all-1  the proactive filters (the lowering's prio 1 at guard+1)
    catch_all               the catch-all trap

The ranges are derived from the three fixed points, so they cannot overlap,
and every allocation goes through :meth:`PrioRange.at`: a request past a
range's end raises :class:`PriorityExhausted` instead of landing in the next
layer.

>>> PLAN.cache, PLAN.guard, PLAN.proactive, PLAN.catch_all
(PrioRange(first=1, last=14), 15, PrioRange(first=16, last=65534), 65535)
>>> PLAN.proactive_prio(1)
16
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

TC_PRIO_MAX = 0xFFFF


class PriorityExhausted(ValueError):
    """A layer of the plan has no priority left for a request."""


@dataclass(frozen=True, slots=True)
class PrioRange:
    """The inclusive tc priorities ``first..last`` one layer may use."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= TC_PRIO_MAX:
            raise ValueError(f"priority range {self.first}..{self.last} is not inside 1..65535")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, prio: object) -> bool:
        return isinstance(prio, int) and self.first <= prio <= self.last

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.first, self.last + 1))

    def at(self, index: int) -> int:
        """The ``index``-th priority of the range (0 is ``first``).

        Raises:
            PriorityExhausted: ``index`` is outside the range.
        """
        if not 0 <= index < len(self):
            raise PriorityExhausted(
                f"priority #{index} is outside {self.first}..{self.last} ({len(self)} priorities)"
            )
        return self.first + index

    def first_free(self, used: Collection[int]) -> int:
        """The lowest priority of the range not in ``used``.

        Raises:
            PriorityExhausted: every priority of the range is used.
        """
        for prio in self:
            if prio not in used:
                return prio
        raise PriorityExhausted(f"every priority of {self.first}..{self.last} is in use")


@dataclass(frozen=True, slots=True)
class ChainZeroPlan:
    """Chain 0's layers, fixed by the guard's and the catch-all's priorities.

    Attributes:
        guard: the update guard's priority; cache rules use everything below it.
        catch_all: the catch-all trap's priority; proactive filters use what lies
            strictly between the guard and it.
    """

    guard: int = 15
    catch_all: int = TC_PRIO_MAX

    def __post_init__(self) -> None:
        # Each layer must keep at least one priority of its own.
        if not 2 <= self.guard <= self.catch_all - 2 or self.catch_all > TC_PRIO_MAX:
            raise ValueError(
                f"guard {self.guard} and catch-all {self.catch_all} leave a layer "
                "without priorities (need 2 <= guard <= catch_all - 2 <= 65533)"
            )

    @property
    def cache(self) -> PrioRange:
        """The cache rules' priorities: all below the guard."""
        return PrioRange(1, self.guard - 1)

    @property
    def proactive(self) -> PrioRange:
        """The proactive filters' priorities: between the guard and the catch-all."""
        return PrioRange(self.guard + 1, self.catch_all - 1)

    def proactive_prio(self, lowered_prio: int) -> int:
        """Where a filter the lowering put at ``lowered_prio`` (1 on) goes on chain 0.

        Raises:
            PriorityExhausted: the lowering used more priorities than the layer has.
        """
        return self.proactive.at(lowered_prio - 1)

    def layer_of(self, prio: int) -> str:
        """Which layer owns ``prio``: cache, guard, proactive or catch_all."""
        if prio in self.cache:
            return "cache"
        if prio == self.guard:
            return "guard"
        if prio in self.proactive:
            return "proactive"
        if prio == self.catch_all:
            return "catch_all"
        raise ValueError(f"priority {prio} is outside 1..{self.catch_all}")


PLAN = ChainZeroPlan()
"""The plan the agent and its cache run with."""
