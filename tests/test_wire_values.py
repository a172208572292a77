"""Values that leave the process: cookie role bytes, flower action spellings,
install flags and their kernel bits, miss outcomes (metric names).

A filter an older flowc installed is read back by this one (agent restart,
``flowc audit``), so each value here is pinned literally: renumbering an enum
or reordering its members must fail this file, not relabel a device's filters.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.flower.rules import (
    COOKIE_MAGIC,
    FLOWER_KIND_OF,
    Cookie,
    CookieRole,
    FlowerAction,
    FlowerFilter,
    FlowerKind,
    FlowerMatch,
    InstallFlags,
    action_for,
)
from backends.nic_profile import ACTION_KINDS, INSTALL_FLAGS
from backends.targets import ETH_P_IP
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Action
from runtime.flow_cache import MissOutcome
from runtime.flower_netlink import TCA_CLS_FLAGS_SKIP_HW, TCA_CLS_FLAGS_SKIP_SW


def test_cookie_role_bytes_are_pinned() -> None:
    assert {r.name: r.value for r in CookieRole} == {
        "RULE": 0,
        "TRAP": 1,
        "FRAME": 2,
        "CUTOFF": 3,
        "CACHE": 4,
        "CT": 5,
    }


def test_flower_kinds_are_tc_spellings() -> None:
    assert {k.name: k.value for k in FlowerKind} == {
        "PASS": "pass",
        "DROP": "drop",
        "REDIRECT": "redirect",
        "MIRROR": "mirror",
        "MARK": "mark",
        "TRAP": "trap",
        "CT": "ct",
    }
    assert ACTION_KINDS == ("pass", "drop", "redirect", "mirror", "mark", "trap", "ct", "ct_commit")


def test_ir_actions_map_through_one_table() -> None:
    assert FLOWER_KIND_OF == {
        ALLOW: FlowerKind.PASS,
        DROP: FlowerKind.DROP,
        REDIRECT: FlowerKind.REDIRECT,
        MIRROR: FlowerKind.MIRROR,
        MARK: FlowerKind.MARK,
    }
    assert action_for(Action(ALLOW)).kind is FlowerKind.PASS
    assert action_for(Action(MARK, mark=7)) == FlowerAction(FlowerKind.MARK, mark=7)


def test_install_flags_spellings_and_kernel_bits_are_pinned() -> None:
    assert {f.name: (f.value, f.kernel_bits) for f in InstallFlags} == {
        "SKIP_HW": ("skip_hw", 1),
        "SKIP_SW": ("skip_sw", 2),
        "NONE": ("none", 0),
    }
    assert InstallFlags.SKIP_HW.kernel_bits == TCA_CLS_FLAGS_SKIP_HW
    assert InstallFlags.SKIP_SW.kernel_bits == TCA_CLS_FLAGS_SKIP_SW
    assert INSTALL_FLAGS == ("skip_hw", "skip_sw", "none")


def test_spellings_are_stored_as_members() -> None:
    f = FlowerFilter(0, 1, 1, FlowerMatch(ETH_P_IP), FlowerAction("drop"), "skip_sw")
    assert f.action.kind is FlowerKind.DROP and f.flags is InstallFlags.SKIP_SW
    with pytest.raises(ValueError, match="unknown flower action"):
        FlowerAction("allow")  # the IR's word, not flower's
    with pytest.raises(ValueError, match="flags must be one of"):
        FlowerFilter(0, 1, 1, FlowerMatch(ETH_P_IP), FlowerAction("drop"), "skip-hw")


def test_miss_outcomes_are_pinned() -> None:
    assert [o.value for o in MissOutcome] == [
        "installed",
        "covered",
        "stale",
        "admission",
        "negative",
        "rate",
        "refused",
        "unexpressible",
        "untracked",
    ]


# Cookies exactly as flowc wrote them before roles were an enum
# ("!2sBBIII": magic, version 1, role byte, generation, rule, tag).
OLD_COOKIES = [
    (
        b"FC\x01\x00\x00\x00\x00\x07\x00\x00\x00\x0c\x00\x00\x00\x63",
        Cookie(CookieRole.RULE, 7, 12, 99),
    ),
    (
        b"FC\x01\x01\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x05",
        Cookie(CookieRole.TRAP, 2, 0, 5),
    ),
    (
        b"FC\x01\x02\x00\x00\x00\x01\xff\xff\xff\xff\x00\x00\x00\x01",
        Cookie(CookieRole.FRAME, 1, None, 1),
    ),
    (
        b"FC\x01\x03\x00\x00\x00\x03\xff\xff\xff\xff\x00\x00\xff\xff",
        Cookie(CookieRole.CUTOFF, 3, None, 0xFFFF),
    ),
    (
        b"FC\x01\x04\xff\xff\xff\xff\x00\x00\x00\x02\x00\x01\x00\x00",
        Cookie(CookieRole.CACHE, 0xFFFFFFFF, 2, 0x10000),
    ),
]


@pytest.mark.parametrize(("data", "cookie"), OLD_COOKIES)
def test_cookies_an_older_flowc_wrote_decode(data: bytes, cookie: Cookie) -> None:
    assert Cookie.decode(data) == cookie
    assert cookie.encode() == data


@pytest.mark.parametrize(
    "data",
    [
        b"FC\x01\x06\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # no role 6
        b"FC\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # version 2
        b"XX\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # not flowc's
        b"FC\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",  # 15 bytes
        b"",
        None,
    ],
)
def test_foreign_cookies_are_not_flowcs(data: bytes | None) -> None:
    assert Cookie.decode(data) is None


@given(
    st.sampled_from(list(CookieRole)),
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.none(), st.integers(0, 0xFFFFFFFE)),
    st.integers(0, 0xFFFFFFFF),
)
def test_cookie_bytes_follow_the_documented_layout(
    role: CookieRole, generation: int, rule: int | None, tag: int
) -> None:
    # The oracle is the layout itself, written out independently of Cookie.
    expected = (
        COOKIE_MAGIC
        + bytes([1, role.value])
        + struct.pack("!III", generation, 0xFFFFFFFF if rule is None else rule, tag)
    )
    cookie = Cookie(role, generation, rule, tag)
    assert cookie.encode() == expected
    assert Cookie.decode(expected) == cookie
