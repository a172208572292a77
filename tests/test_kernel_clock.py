"""Jiffies <-> CLOCK_MONOTONIC conversion (runtime/kernel_clock.py)."""

from __future__ import annotations

import pytest

from runtime.kernel_clock import (
    JiffiesClock,
    KernelClockError,
    hz_from_config,
    parse_timer_list,
)

TIMER_LIST = """Timer List Version: v0.9
HRTIMER_MAX_CLOCK_BASES: 8
now at 24464587158885 nsecs

cpu: 0
 clock 0:
  .base:               pK-error
jiffies: 4301008700
jiffies: 4301008701
"""


def test_timer_list_gives_now_and_the_first_jiffies_line() -> None:
    assert parse_timer_list(TIMER_LIST) == (24464587158885, 4301008700)


def test_timer_list_without_the_lines_is_an_error() -> None:
    with pytest.raises(KernelClockError):
        parse_timer_list("Timer List Version: v0.9\n")


def test_hz_from_config() -> None:
    assert hz_from_config("CONFIG_HZ_250=y\nCONFIG_HZ=250\n") == 250
    assert hz_from_config("# CONFIG_HZ is not set\n") is None


@pytest.mark.parametrize("hz", [100, 250, 300, 1000])
def test_jiffies_map_back_onto_the_monotonic_clock(hz: int) -> None:
    clock = JiffiesClock(hz, now_ns=50 * 10**9, now_jiffies=7 * hz + 5)
    assert clock.to_monotonic_ns(clock.now_jiffies) == 50 * 10**9
    # one second of ticks earlier is one second earlier
    assert clock.to_monotonic_ns(clock.now_jiffies - hz) == 49 * 10**9
