"""The chain-0 priority plan: layers that cannot overlap, allocations that stop at
their layer's end."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.agent.core import CATCH_ALL_PRIO, GUARD_PRIO
from runtime.agent.priorities import PLAN, ChainZeroPlan, PrioRange, PriorityExhausted


def test_the_agents_plan() -> None:
    assert (PLAN.cache.first, PLAN.cache.last) == (1, 14)
    assert (PLAN.guard, GUARD_PRIO) == (15, 15)
    assert (PLAN.proactive.first, PLAN.proactive.last) == (16, 65534)
    assert (PLAN.catch_all, CATCH_ALL_PRIO) == (65535, 65535)


def test_cache_range_ends_below_the_guard() -> None:
    assert PLAN.cache.at(13) == 14
    with pytest.raises(PriorityExhausted):
        PLAN.cache.at(14)
    with pytest.raises(PriorityExhausted):
        PLAN.cache.at(-1)
    assert PLAN.cache.first_free(range(1, 14)) == 14
    with pytest.raises(PriorityExhausted):
        PLAN.cache.first_free(range(1, 15))


def test_proactive_prios_sit_above_the_guard_and_stop_before_the_catch_all() -> None:
    assert PLAN.proactive_prio(1) == 16
    assert PLAN.proactive_prio(65534 - 15) == 65534
    with pytest.raises(PriorityExhausted):
        PLAN.proactive_prio(65535 - 15)  # would be the catch-all
    with pytest.raises(PriorityExhausted):
        PLAN.proactive_prio(0)  # would be the guard


@pytest.mark.parametrize(("guard", "catch_all"), [(1, 100), (99, 100), (15, 0x10000), (50, 40)])
def test_plans_that_starve_a_layer_are_refused(guard: int, catch_all: int) -> None:
    with pytest.raises(ValueError, match="without priorities"):
        ChainZeroPlan(guard, catch_all)


def test_ranges_stay_inside_tc_priorities() -> None:
    for first, last in ((0, 5), (5, 4), (1, 0x10000)):
        with pytest.raises(ValueError):
            PrioRange(first, last)


@st.composite
def plans(draw: st.DrawFn) -> ChainZeroPlan:
    catch_all = draw(st.integers(4, 0xFFFF))
    return ChainZeroPlan(draw(st.integers(2, catch_all - 2)), catch_all)


@given(plans(), st.integers(0, 0xFFFF), st.integers(1, 0x10000))
def test_no_two_layers_can_hand_out_one_priority(
    plan: ChainZeroPlan, cache_index: int, lowered: int
) -> None:
    # Oracle: each layer's own definition, written out by hand.
    handed: dict[str, int] = {"guard": plan.guard, "catch_all": plan.catch_all}
    try:
        handed["cache"] = plan.cache.at(cache_index)
        assert 1 <= handed["cache"] < plan.guard
    except PriorityExhausted:
        assert cache_index >= plan.guard - 1
    try:
        handed["proactive"] = plan.proactive_prio(lowered)
        assert plan.guard < handed["proactive"] < plan.catch_all
    except PriorityExhausted:
        assert lowered >= plan.catch_all - plan.guard
    assert len(set(handed.values())) == len(handed)
    for layer, prio in handed.items():
        assert plan.layer_of(prio) == layer


@given(plans(), st.integers(1, 0xFFFF))
def test_every_priority_belongs_to_exactly_one_layer(plan: ChainZeroPlan, prio: int) -> None:
    owners = [
        prio in plan.cache,
        prio == plan.guard,
        prio in plan.proactive,
        prio == plan.catch_all,
    ]
    assert owners.count(True) == (1 if prio <= plan.catch_all else 0)
