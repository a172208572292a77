"""IR -> flower lowering: every construct, the partitioner, and flower's semantics
(priority order, masks, ranges) agreeing with the IR interpreter."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.flower import lowering as flower
from backends.flower.dissector import MALFORMED_VIEWS
from backends.flower.rules import (
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    PASS,
    ROLE_CUTOFF,
    ROLE_FRAME,
    ROLE_RULE,
    TRAP,
    Cookie,
    FlowerAction,
    FlowerMatch,
    Masked,
    PortRange,
    classify,
    keys_disjoint,
    ordered,
    same_decision,
)
from backends.nic_profile import ProfileError, load_profile, profile_names
from ir.analysis import region_witnesses
from ir.fields import FRAG_NONE
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from ir.valueset import ValueSet
from tests.conftest import policy_of
from tests.fixtures import EXAMPLE_PATHS, example_policies
from tests.strategies import make_policy, packets, rules

PROFILES = profile_names()


@functools.cache
def lowered(
    policy: Policy, profile: str, overrides: tuple[tuple[str, str], ...] = ()
) -> flower.FlowerProgram:
    return flower.lower(policy, load_profile(profile, dict(overrides)))


def assert_agrees(program: flower.FlowerProgram, packet: Packet) -> None:
    """Flower first, then the slow path (the IR) for trapped or unmatched packets,
    decides as the IR does; and flower alone never decides differently."""
    want = evaluate(program.policy, packet)
    got = classify(ordered(program.filters), packet)
    if got.trapped:
        return
    assert got.filter is not None
    assert same_decision(got.filter.action, want.action), (
        f"{packet}: flower {got.filter.label()} {got.filter.action} vs IR {want.rule}"
    )


# ----------------------------------------------------------------- constructs
def only_rule_filters(
    program: flower.FlowerProgram, rule: int = 0, *, untagged: bool = True, family: int | None = 4
) -> list[FlowerMatch]:
    """The matches of one IR rule's filters (by default only those for untagged IPv4)."""
    return [
        f.match
        for f in program.filters
        if f.cookie is not None
        and f.cookie.rule == rule
        and f.cookie.role == ROLE_RULE
        and not (untagged and f.match.protocol == ETH_P_8021Q)
        and family in (None, f.match.family)
    ]


def test_prefixes_protocol_and_ports_become_keys() -> None:
    policy = policy_of("allow tcp from 10.0.0.0/8 to 192.168.1.5 dport 443")
    (m,) = only_rule_filters(flower.lower(policy))
    assert m == FlowerMatch(
        ETH_P_IP,
        ip_proto=6,
        src_ip=Masked(0x0A000000, 0xFF000000),
        dst_ip=Masked(0xC0A80105, 0xFFFFFFFF),
        dst_port=Masked(443, 0xFFFF),
    )


def test_port_range_native_or_expanded_by_profile() -> None:
    policy = policy_of("allow udp dport 1000-2000")
    (native,) = only_rule_filters(flower.lower(policy))
    assert native.dst_port == PortRange(1000, 2000)
    expanded = only_rule_filters(flower.lower(policy, load_profile("mlx5-connectx6dx")))
    assert all(isinstance(m.dst_port, Masked) for m in expanded)
    assert len(expanded) == len(ValueSet.of_range(16, 1000, 2000).to_prefixes()) == 8


def test_range_from_zero_splits_off_port_zero() -> None:
    policy = policy_of("allow tcp dport 0-1000")
    keys = [m.dst_port for m in only_rule_filters(flower.lower(policy))]
    assert keys == [Masked(0, 0xFFFF), PortRange(1, 1000)]


def test_tcp_flags_ternary_and_icmp_type_code() -> None:
    policy = policy_of("drop tcp flags syn,!ack\nallow icmp type echo-request code 0")
    (syn,) = only_rule_filters(flower.lower(policy), 0)
    assert syn.tcp_flags == Masked(0x02, 0x12) and syn.ip_proto == 6
    (echo,) = only_rule_filters(flower.lower(policy), 1)
    assert (echo.ip_proto, echo.icmp_type, echo.icmp_code) == (1, Masked(8, 0xFF), Masked(0, 0xFF))


def test_dscp_is_the_top_of_ip_tos() -> None:
    policy = policy_of("mark 0x10 udp dscp ef")
    matches = only_rule_filters(flower.lower(policy))
    assert {m.ip_tos for m in matches} == {Masked(46 << 2, 0xFC)}
    assert {f.action for f in flower.lower(policy).filters if f.cookie and f.cookie.rule == 0} == {
        FlowerAction("mark", mark=0x10)
    }


def test_vlan_ids_are_exact_under_an_8021q_protocol() -> None:
    policy = policy_of("allow udp vlan 100-101")
    matches = only_rule_filters(flower.lower(policy), untagged=False, family=None)
    assert {(m.protocol, m.vlan_id, m.vlan_ethtype) for m in matches} == {
        (ETH_P_8021Q, 100, ETH_P_IP),
        (ETH_P_8021Q, 101, ETH_P_IP),
        (ETH_P_8021Q, 100, ETH_P_IPV6),
        (ETH_P_8021Q, 101, ETH_P_IPV6),
    }


def test_unconstrained_tagging_and_family_give_four_protocol_variants() -> None:
    policy = policy_of("allow udp")
    matches = only_rule_filters(flower.lower(policy), untagged=False, family=None)
    protocols = {(m.protocol, m.vlan_ethtype) for m in matches}
    assert protocols == {
        (ETH_P_IP, None),
        (ETH_P_IPV6, None),
        (ETH_P_8021Q, ETH_P_IP),
        (ETH_P_8021Q, ETH_P_IPV6),
    }


def test_negation_expands_exactly_never_widens() -> None:
    policy = policy_of("allow tcp from not 10.0.0.0/8 dport 22")
    matches = [m for m in only_rule_filters(flower.lower(policy)) if m.protocol == ETH_P_IP]
    assert len(matches) == 8
    covered = sum(1 << (32 - bin(m.src_ip.mask).count("1")) for m in matches if m.src_ip)
    assert covered == (1 << 32) - (1 << 24)
    assert all(
        (m.src_ip.value ^ 0x0A000000) & m.src_ip.mask & 0xFF000000 != 0 for m in matches if m.src_ip
    )


def test_actions_map_to_gact_mirred_skbedit_kinds() -> None:
    header = "endpoint web { ip 10.0.0.5; dev veth-web }\n"
    policy = policy_of(
        "redirect tcp dport 80 -> web\nmirror tcp dport 22 -> web\ndrop udp\nmark 7 icmp",
        header=header,
        default="allow",
    )
    program = flower.lower(policy)
    kinds = {
        f.cookie.rule: f.action for f in program.filters if f.cookie and f.cookie.role == ROLE_RULE
    }
    assert kinds[0] == FlowerAction("redirect", device="veth-web")
    assert kinds[1] == FlowerAction("mirror", device="veth-web")
    assert kinds[2] == FlowerAction("drop")
    assert kinds[3] == FlowerAction("mark", mark=7)
    assert kinds[4] == FlowerAction(PASS)


def test_frames_outside_the_model_are_trapped_first() -> None:
    program = flower.lower(policy_of("allow udp"))
    frames = [f for f in program.filters if f.cookie is not None and f.cookie.role == ROLE_FRAME]
    # QinQ and 802.1ad first, then the flower views of truncated UDP headers
    # (the policy reads no transport field, so fragments need no trap).
    assert [(f.prio, f.action.kind) for f in frames[:2]] == [(1, TRAP), (2, TRAP)]
    assert frames[0].match.vlan_ethtype == ETH_P_8021Q and frames[1].match.protocol == 0x88A8
    assert all(f.action.kind == TRAP for f in frames)
    assert all(f.match.ip_flags is None for f in frames)
    assert {f.match.ip_proto for f in frames[2:]} == {17}
    # Later filters may share a trap's priority only when disjoint from it.
    for f in program.filters:
        if f not in frames:
            assert all(keys_disjoint(f.match, t.match) for t in frames if t.prio == f.prio)


def test_fragments_are_trapped_when_the_policy_reads_ports() -> None:
    program = flower.lower(policy_of("allow tcp dport 80"))
    traps = [f for f in program.filters if f.match.ip_flags is not None]
    assert {(f.match.protocol, f.match.vlan_ethtype) for f in traps} == {
        (ETH_P_IP, None),
        (ETH_P_IPV6, None),
        (ETH_P_8021Q, ETH_P_IP),
        (ETH_P_8021Q, ETH_P_IPV6),
    }
    assert all(f.action.kind == TRAP and f.match.ip_flags == Masked(1, 1) for f in traps)
    first = max(f.prio for f in traps)
    assert all(f.prio > first for f in program.filters if f.cookie and f.cookie.rule is not None)


def test_priorities_shared_only_by_disjoint_filters_of_one_protocol() -> None:
    policy = policy_of("allow tcp dport 80\nallow tcp dport 81\ndrop tcp\nallow udp dport 53")
    program = flower.lower(policy)
    by_prio: dict[int, list[FlowerMatch]] = {}
    for f in program.filters:
        by_prio.setdefault(f.prio, []).append(f.match)
    for members in by_prio.values():
        assert len({m.protocol for m in members}) == 1
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                assert keys_disjoint(a, b)
    # dport 80 and 81 share one, "drop tcp" (overlapping both) must not.
    prio_of = {
        f.cookie.rule: f.prio for f in program.filters if f.cookie and f.match.protocol == ETH_P_IP
    }
    assert prio_of[0] == prio_of[1] != prio_of[2]


def test_cookie_round_trip_and_foreign_cookies() -> None:
    cookie = Cookie(ROLE_RULE, 7, 12, 99)
    assert Cookie.decode(cookie.encode()) == cookie
    assert Cookie.decode(Cookie(ROLE_CUTOFF, 1, None).encode()) == Cookie(ROLE_CUTOFF, 1, None)
    assert Cookie.decode(b"\x00" * 16) is None
    assert Cookie.decode(b"FC") is None
    assert Cookie.decode(None) is None


# --------------------------------------------------------------- partitioner
def test_unsupported_key_is_trapped_and_reported() -> None:
    # (An allow would be trapped too on ice: it would pass truncated TCP headers,
    # whose flags read 0, and ice has no TCP-flags key to trap those.)
    policy = policy_of("drop tcp flags syn,!ack\ndrop tcp dport 80")
    program = flower.lower(policy, load_profile("ice-e810"))
    assert program.placements[0].placement == flower.TRAPPED
    assert "tcp_flags" in program.placements[0].reason
    assert program.placements[1].placement == flower.HARDWARE
    assert any("tcp_flags" in line for line in flower.describe(program))


def test_full_table_cuts_off_with_a_catch_all_trap() -> None:
    policy = policy_of("\n".join(f"allow tcp dport {1000 + i}" for i in range(20)))
    program = flower.lower(policy, load_profile("software", {"max_rules": "30"}))
    counts = program.counts()
    assert counts[flower.SLOW] > 0 and counts[flower.HARDWARE] > 0
    assert sum(1 for f in program.filters if f.cookie and f.cookie.role == ROLE_CUTOFF) == 1
    assert len(program.filters) <= 30
    first_slow = min(p.rule for p in program.placements if p.placement == flower.SLOW)
    assert all(p.placement == flower.SLOW for p in program.placements[first_slow:])


def test_mask_limit_is_respected() -> None:
    policy = policy_of("\n".join(f"allow tcp from 10.0.0.0/{8 + i}" for i in range(16)))
    program = flower.lower(policy, load_profile("software", {"max_masks": "10"}))
    assert program.distinct_masks() <= 10


def test_profiles_load_and_overrides_are_checked() -> None:
    assert {"software", "mlx5-connectx6dx", "ice-e810", "nfp-agilio"} <= set(PROFILES)
    for name in PROFILES:
        profile = load_profile(name)
        assert profile.approximate == (name != "software")
    with pytest.raises(ProfileError, match="unknown profile"):
        load_profile("no-such-nic")
    with pytest.raises(ProfileError, match="expected an integer"):
        load_profile("software", {"max_rules": "many"})
    with pytest.raises(ProfileError, match="cannot override"):
        load_profile("software", {"colour": "blue"})
    with pytest.raises(ProfileError, match="unknown field kind"):
        load_profile("software", {"fields": "ipv4,mpls"})


# ------------------------------------------------------------ vs the IR
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_examples_region_witnesses(path: Path, profile: str) -> None:
    for policy in example_policies(path):
        program = lowered(policy, profile)
        for point, _rule in region_witnesses(policy):
            assert_agrees(program, Packet(point))


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_software_profile_decides_every_ip_packet_itself(path: Path) -> None:
    for policy in example_policies(path):
        program = lowered(policy, "software")
        assert program.counts()[flower.HARDWARE] == len(policy.rules)
        for point, _rule in region_witnesses(policy):
            packet = Packet(point)
            # Fragments and the flower views of malformed frames go to the slow path.
            if packet.get("frag") != FRAG_NONE or any(
                v.cube.contains(point) for v in MALFORMED_VIEWS
            ):
                continue
            assert not classify(ordered(program.filters), packet).trapped


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
@settings(max_examples=60, deadline=None)
@given(packet=packets())
def test_examples_random_packets(path: Path, profile: str, packet: Packet) -> None:
    for policy in example_policies(path):
        assert_agrees(lowered(policy, profile), packet)


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(rules(), min_size=1, max_size=8),
    default=st.sampled_from(["allow", "drop"]),
    profile=st.sampled_from(PROFILES),
    max_rules=st.integers(4, 40),
    packet_list=st.lists(packets(), min_size=1, max_size=10),
)
def test_random_policies_under_tight_budgets(
    specs: list, default: str, profile: str, max_rules: int, packet_list: list[Packet]
) -> None:
    policy = make_policy(specs, default)
    program = flower.lower(policy, load_profile(profile, {"max_rules": str(max_rules)}))
    assert len(program.filters) <= max_rules
    for point, _rule in region_witnesses(policy):
        assert_agrees(program, Packet(point))
    for packet in packet_list:
        assert_agrees(program, packet)
