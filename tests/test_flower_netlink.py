"""Netlink encoding of flower filters: every attribute round-trips through
pyroute2's message classes (no kernel needed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.flower import lowering as flower
from backends.flower.rules import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ROLE_FRAME,
    Cookie,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
)
from backends.nic_profile import load_profile
from runtime.flower_netlink import (
    RTM_DELTFILTER,
    RTM_NEWTFILTER,
    TCA_CLS_FLAGS_IN_HW,
    FlowerCodecError,
    InstalledFilter,
    decode_filter,
    delete_message,
    encode_filter,
    flower_tcmsg,
    message_bytes,
)
from runtime.flower_wire import delete_filter_request, new_filter_request
from tests.fixtures import EXAMPLE_PATHS, example_policies
from tests.strategies import filters

DEVICES: dict[str, int] = {}
NAMES: dict[int, str] = {}


def ifindex_of(name: str) -> int:
    """A stand-in ifindex per device name (assigned on first use)."""
    if name not in DEVICES:
        DEVICES[name] = 100 + len(DEVICES)
        NAMES[DEVICES[name]] = name
    return DEVICES[name]


def round_trip(
    f: FlowerFilter, tweak: Callable[[flower_tcmsg], None] | None = None
) -> InstalledFilter:
    msg = encode_filter(f, 3, "ingress", ifindex_of)
    if tweak is not None:
        tweak(msg)
    msg["header"]["type"] = RTM_NEWTFILTER
    msg["header"]["flags"] = 1
    msg.encode()
    decoded = flower_tcmsg(bytes(msg.data))
    decoded.decode()
    installed = decode_filter(decoded, NAMES.__getitem__)
    assert installed is not None
    return installed


@pytest.mark.parametrize("profile", ["software", "mlx5-connectx6dx"])
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_examples_round_trip(path: Path, profile: str) -> None:
    for policy in example_policies(path):
        for f in flower.lower(policy, load_profile(profile)).filters:
            got = round_trip(f)
            assert got is not None
            assert got.filter == dataclasses.replace(f, origin=None)


@given(filters())
def test_every_attribute_round_trips(f: FlowerFilter) -> None:
    got = round_trip(f)
    assert got is not None
    assert got.filter == f


def test_frame_traps_round_trip() -> None:
    for match in (FlowerMatch(ETH_P_8021Q, vlan_ethtype=ETH_P_8021Q), FlowerMatch(ETH_P_8021AD)):
        f = FlowerFilter(
            0, 1, 1, match, FlowerAction("trap", chain=1), "skip_hw", Cookie(ROLE_FRAME, 1, None)
        )
        assert round_trip(f).filter == f


def test_statistics_timestamps_and_hardware_state_decode() -> None:
    f = FlowerFilter(0, 5, 9, FlowerMatch(ETH_P_IP, ip_proto=6), FlowerAction("drop"), "skip_sw")

    def kernel_side(msg: flower_tcmsg) -> None:
        options = msg["attrs"][1][1]["attrs"]
        for item in options:
            if item[0] == "TCA_FLOWER_FLAGS":
                item[1] |= TCA_CLS_FLAGS_IN_HW
            if item[0] == "TCA_FLOWER_ACT":
                act = item[1]["attrs"][0][1]["attrs"]
                act.append(
                    [
                        "TCA_ACT_STATS",
                        {"attrs": [["TCA_STATS_BASIC", {"bytes": 1500, "packets": 3}]]},
                    ]
                )
                act[1][1]["attrs"].append(
                    ["TCA_GACT_TM", {"install": 900, "lastuse": 250, "expires": 0, "firstuse": 800}]
                )
        options.append(["TCA_FLOWER_IN_HW_COUNT", 1])

    got = round_trip(f, kernel_side)
    assert (got.packets, got.bytes, got.last_used, got.in_hw, got.in_hw_count) == (
        3,
        1500,
        2.5,
        True,
        1,
    )


def test_foreign_keys_are_refused() -> None:
    f = FlowerFilter(0, 5, 9, FlowerMatch(ETH_P_IP), FlowerAction("drop"))

    def add_mpls(msg: flower_tcmsg) -> None:
        msg["attrs"][1][1]["attrs"].append(["TCA_FLOWER_KEY_ENC_KEY_ID", 42])

    with pytest.raises(FlowerCodecError, match="ENC_KEY_ID"):
        round_trip(f, add_mpls)


def pyroute2_bytes(f: FlowerFilter, seq: int, flags: int) -> bytes:
    return message_bytes(encode_filter(f, 3, "ingress", ifindex_of), RTM_NEWTFILTER, flags, seq)


@given(filters(), st.integers(1, 2**32 - 1))
def test_wire_encoder_writes_pyroute2s_bytes(f: FlowerFilter, seq: int) -> None:
    flags = 0x605
    fast = new_filter_request(f, 3, "ingress", flags=flags, seq=seq, ifindex_of=ifindex_of)
    assert fast == pyroute2_bytes(f, seq, flags)


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_wire_encoder_on_examples(path: Path) -> None:
    for policy in example_policies(path):
        for seq, f in enumerate(flower.lower(policy, load_profile("mlx5-connectx6dx")).filters):
            fast = new_filter_request(f, 3, "ingress", flags=0x405, seq=seq, ifindex_of=ifindex_of)
            assert fast == pyroute2_bytes(f, seq, 0x405)


@given(filters())
def test_wire_delete_request_writes_pyroute2s_bytes(f: FlowerFilter) -> None:
    pyroute2 = message_bytes(delete_message(f, 3, "egress"), RTM_DELTFILTER, 5, 7)
    assert delete_filter_request(f, 3, "egress", flags=5, seq=7) == pyroute2


STATEFUL_PATHS = sorted((EXAMPLE_PATHS[0].parent / "stateful").glob("*.fw"))


@pytest.mark.parametrize("profile", ["software", "mlx5-connectx6dx"])
@pytest.mark.parametrize("path", STATEFUL_PATHS, ids=lambda p: p.stem)
def test_stateful_examples_round_trip_through_both_encoders(path: Path, profile: str) -> None:
    """ct_state keys, ct + goto chain and ct commit before a verdict: pyroute2's
    encoder and the wire encoder write the same bytes, and they decode back."""
    seen_ct = seen_commit = False
    for policy in example_policies(path):
        program = flower.lower(policy, load_profile(profile))
        for seq, f in enumerate(program.filters):
            seen_ct |= f.action.kind == "ct"
            seen_commit |= f.action.commit
            assert round_trip(f).filter == dataclasses.replace(f, origin=None)
            fast = new_filter_request(f, 3, "ingress", flags=0x405, seq=seq, ifindex_of=ifindex_of)
            assert fast == pyroute2_bytes(f, seq, 0x405)
    assert seen_ct and (seen_commit or profile != "software")


def test_a_foreign_ct_action_is_refused() -> None:
    f = FlowerFilter(
        0, 1, 1, FlowerMatch(ETH_P_8021AD), FlowerAction("ct", chain=2), "skip_hw", None
    )

    def other_zone(msg: flower_tcmsg) -> None:
        options = msg["attrs"][1][1]["attrs"]
        for item in options:
            if item[0] == "TCA_FLOWER_ACT":
                ct = item[1]["attrs"][0][1]["attrs"][1][1]["attrs"]
                ct[2][1] = 7  # TCA_CT_ZONE

    assert round_trip(f).filter == f
    with pytest.raises(FlowerCodecError, match="ct action flowc does not model"):
        round_trip(f, other_zone)
