"""The independent flower-JSON evaluator (tests/flower_json_eval.py), on hand-written
dumps: priority order, every choice inside a priority, traps and misses as the
slow path, each key's matching, and refusal of what it does not model. Then
held against flowc's own flower model on flowc's lowerings of the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from backends.flower import lowering
from backends.flower.rules import action_for, classify, ordered
from backends.flower.text import to_tc_json
from backends.nic_profile import load_profile
from ir.algebra import witness
from ir.analysis import region_witnesses
from ir.fields import HEADER_SPACE
from ir.model import Action, Hook, Match, Origin, Policy, Rule
from ir.packet import Packet
from ir.valueset import ValueSet
from tests.fixtures import EXAMPLE_PATHS, example_policies
from tests.flower_json_eval import SLOW, EvalError, load, outcomes, wrong_outcomes
from tests.strategies import packets

DROP: dict[str, Any] = {"kind": "gact", "control_action": {"type": "drop"}}
PASS: dict[str, Any] = {"kind": "gact", "control_action": {"type": "pass"}}
TRAP: dict[str, Any] = {"kind": "gact", "control_action": {"type": "goto", "chain": 1}}


def flt(
    pref: int,
    keys: dict[str, Any],
    action: dict[str, Any],
    protocol: str = "ip",
    chain: int = 0,
    handle: int = 1,
) -> dict[str, Any]:
    """One filter object of a `tc -j filter show` dump."""
    return {
        "protocol": protocol,
        "pref": pref,
        "kind": "flower",
        "chain": chain,
        "options": {"handle": handle, "keys": keys, "actions": [action]},
    }


def tcp4(dport: int = 80, src: int = 0x0A000001, flags: int = 0x02, **kw: int) -> Packet:
    fields = {"ip4_src": src, "ip4_dst": 0x0A000002, "sport": 40000, "dport": dport}
    return Packet.make(family=4, ip_proto=6, tcp_flags=flags, **(fields | kw))


V4 = {"eth_type": "ipv4"}


def test_the_first_priority_with_a_match_decides() -> None:
    dump = [
        {"protocol": "ip", "pref": 1, "kind": "flower", "chain": 0},  # header object
        flt(1, V4 | {"ip_proto": "tcp", "dst_port": 80}, DROP),
        flt(2, V4, PASS),
    ]
    filters = load(dump)
    assert outcomes(filters, tcp4(80)) == {("drop",)}
    assert outcomes(filters, tcp4(81)) == {("pass",)}
    # Listing order in the dump is not priority order.
    assert outcomes(load(dump[::-1]), tcp4(80)) == {("drop",)}


def test_every_matching_filter_of_one_priority_is_a_possible_outcome() -> None:
    filters = load(
        [
            flt(3, V4 | {"ip_proto": "tcp"}, DROP, handle=1),
            flt(3, V4 | {"ip_proto": "tcp", "dst_port": 80}, PASS, handle=2),
            flt(3, V4 | {"ip_proto": "udp"}, TRAP, handle=3),
        ]
    )
    assert outcomes(filters, tcp4(80)) == {("drop",), ("pass",)}
    assert outcomes(filters, tcp4(81)) == {("drop",)}


def test_traps_misses_and_other_chains_are_the_slow_path() -> None:
    filters = load(
        [
            flt(1, V4 | {"ip_proto": "udp"}, TRAP),
            flt(1, V4 | {"ip_proto": "tcp"}, DROP, chain=1, handle=2),
        ]
    )
    udp = Packet.make(family=4, ip_proto=17, sport=1, dport=53)
    assert outcomes(filters, udp) == {SLOW}
    assert outcomes(filters, tcp4()) == {SLOW}


def test_vlan_frames_match_only_802_1q_filters() -> None:
    filters = load(
        [
            flt(1, {"vlan_id": 10, "vlan_ethtype": "ipv4", "eth_type": "ipv4"}, DROP, "802.1Q"),
            flt(2, {"vlan_ethtype": "ipv6", "eth_type": "ipv6"}, PASS, "802.1Q"),
            flt(3, V4, TRAP),
            flt(4, {}, PASS, "all"),
        ]
    )
    assert outcomes(filters, tcp4(vlan_tagged=1, vlan_id=10)) == {("drop",)}
    assert outcomes(filters, tcp4(vlan_tagged=1, vlan_id=11)) == {("pass",)}  # protocol all
    assert outcomes(filters, tcp4()) == {SLOW}
    v6 = Packet.make(family=6, ip_proto=17, vlan_tagged=1, vlan_id=10, sport=1, dport=2)
    assert outcomes(filters, v6) == {("pass",)}
    qinq = load([flt(1, {"vlan_ethtype": "802.1Q", "eth_type": "802.1Q"}, DROP, "802.1Q")])
    assert outcomes(qinq, tcp4(vlan_tagged=1, vlan_id=10)) == {SLOW}
    assert outcomes(load([flt(1, {}, DROP, "802.1ad")]), tcp4(vlan_tagged=1)) == {SLOW}


def test_ports_by_value_mask_and_range() -> None:
    filters = load(
        [
            flt(1, V4 | {"ip_proto": "tcp", "dst_port": 8000, "dst_port_mask": "ffc0"}, DROP),
            flt(2, V4 | {"ip_proto": "tcp", "src_port": {"start": 39000, "end": 40000}}, PASS),
        ]
    )
    assert outcomes(filters, tcp4(8000 + 63)) == {("drop",)}
    assert outcomes(filters, tcp4(8064)) == {("pass",)}  # sport 40000 is in the range
    assert outcomes(filters, tcp4(8064, sport=40001)) == {SLOW}


def test_addresses_tos_flags_and_icmp() -> None:
    filters = load(
        [
            flt(1, V4 | {"src_ip": "10.0.0.0/255.255.255.254"}, DROP, handle=1),
            flt(2, V4 | {"ip_tos": 184, "ip_tos_mask": "fc"}, PASS),
            flt(3, V4 | {"ip_proto": "tcp", "tcp_flags": "0x2/12"}, DROP),
            flt(4, V4 | {"ip_proto": "icmp", "icmp_type": "8", "icmp_code": "0"}, PASS),
            flt(5, {"eth_type": "ipv6", "dst_ip": "fd00::/16"}, DROP, "ipv6"),
        ]
    )
    assert outcomes(filters, tcp4(src=0x0A000001)) == {("drop",)}
    assert outcomes(filters, tcp4(src=0x0A000002, dscp=46)) == {("pass",)}
    assert outcomes(filters, tcp4(src=0x0A000002, flags=0x02)) == {("drop",)}  # syn, no ack
    assert outcomes(filters, tcp4(src=0x0A000002, flags=0x12)) == {SLOW}  # syn+ack
    echo = Packet.make(family=4, ip_proto=1, ip4_src=0x0A000009, icmp_type=8)
    assert outcomes(filters, echo) == {("pass",)}
    v6 = Packet.make(family=6, ip_proto=17, ip6_dst=0xFD00 << 112, sport=1, dport=2)
    assert outcomes(filters, v6) == {("drop",)}
    assert outcomes(filters, Packet.make(family=6, ip_proto=17, sport=1, dport=2)) == {SLOW}
    # The same key in tc's "0xV/M" spelling.
    tos = load([flt(1, V4 | {"ip_tos": "0xb8/fc"}, DROP)])
    assert outcomes(tos, tcp4(dscp=46)) == {("drop",)}
    # A mask as a JSON number, as iproute2 prints it.
    number = load([flt(1, V4 | {"ip_proto": "tcp", "dst_port": 80, "dst_port_mask": 65520}, DROP)])
    assert outcomes(number, tcp4(95)) == {("drop",)} and outcomes(number, tcp4(96)) == {SLOW}
    # A masked ICMP type (mask in hex, as flowc writes it): types 8-15.
    icmp = load([flt(1, V4 | {"ip_proto": "icmp", "icmp_type": "8/f8"}, DROP)])
    assert outcomes(icmp, Packet.make(family=4, ip_proto=1, icmp_type=15)) == {("drop",)}
    assert outcomes(icmp, Packet.make(family=4, ip_proto=1, icmp_type=16)) == {SLOW}


def test_actions() -> None:
    redirect = {
        "kind": "mirred",
        "mirred_action": "redirect",
        "direction": "egress",
        "to_dev": "nk-web",
        "control_action": {"type": "stolen"},
    }
    mark = {"kind": "skbedit", "mark": 42, "control_action": {"type": "pass"}}
    filters = load([flt(1, V4 | {"ip_proto": "tcp"}, redirect), flt(2, V4, mark)])
    assert outcomes(filters, tcp4()) == {("redirect", "nk-web")}
    assert outcomes(filters, Packet.make(family=4, ip_proto=17)) == {("mark", 42)}


@pytest.mark.parametrize(
    "dump",
    [
        [flt(1, V4 | {"ct_zone": 1}, DROP)],
        [flt(1, V4 | {"ct_state": "+trk+bogus"}, DROP)],
        [flt(1, {"ip_proto": "tcp"}, DROP, "all")],
        [flt(1, {"ip_proto": "tcp"}, DROP, "802.1Q")],
        [flt(1, V4 | {"dst_port": 80}, DROP)],
        [flt(1, V4 | {"src_ip": "fd00::1"}, DROP)],
        [{**flt(1, V4, DROP), "options": {"keys": {}, "actions": [DROP, PASS]}}],
        [flt(1, V4, {"kind": "police"})],
        [{**flt(1, V4, DROP), "kind": "u32"}],
        {"not": "a list"},
    ],
)
def test_what_it_does_not_model_is_refused(dump: Any) -> None:
    with pytest.raises(EvalError):
        load(dump)


def test_wrong_outcomes_against_a_policy() -> None:
    web = Match(
        (
            ("ip_proto", ValueSet.of_value(8, 6)),
            ("frag", ValueSet.of_values(2, (0, 1))),
            ("dport", ValueSet.of_value(16, 80)),
        )
    )
    policy = Policy(
        "p",
        Hook("eth0", "ingress"),
        (
            Rule(0, web, Action("allow"), Origin("p.fw", 2)),
            Rule(1, Match(), Action("drop"), Origin("p.fw", 1), is_default=True),
        ),
        Origin("p.fw", 1),
    )
    filters = load([flt(1, V4 | {"ip_proto": "tcp"}, TRAP), flt(1, V4, PASS, handle=2)])
    assert wrong_outcomes(policy, filters, tcp4(80)) == set()  # trap or pass: both right
    assert wrong_outcomes(policy, filters, tcp4(81)) == {("pass",)}  # the pass is wrong


# ------------------------------------------- against flowc's own flower model
@pytest.mark.parametrize("profile", ["software", "mlx5-connectx6dx"])
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_agrees_with_flowcs_model_on_its_lowerings(path: Path, profile: str) -> None:
    for policy in example_policies(path):
        program = lowering.lower(policy, load_profile(profile))
        filters = load(to_tc_json(program.filters))
        chain0 = ordered(program.filters)
        probes = [Packet(p) for p, _rule in region_witnesses(policy, per_rule=2)]
        for f in chain0:
            c = f.match.cube()
            if c is not None and (p := witness(HEADER_SPACE, c)) is not None:
                probes.append(Packet(p))
        for packet in probes:
            verdict = classify(chain0, packet)
            expected = SLOW if verdict.trapped else _outcome_of(verdict.filter)
            # flowc shares a priority only among disjoint filters: one outcome.
            assert outcomes(filters, packet) == {expected}, (packet, verdict)
            assert not wrong_outcomes(policy, filters, packet)


@settings(max_examples=200, deadline=None)
@given(packets())
def test_agrees_with_flowcs_model_on_random_packets(packet: Packet) -> None:
    (policy,) = example_policies(EXAMPLE_PATHS[-1])[:1]
    program = lowering.lower(policy)
    verdict = classify(ordered(program.filters), packet)
    expected = SLOW if verdict.trapped else _outcome_of(verdict.filter)
    assert outcomes(load(to_tc_json(program.filters)), packet) == {expected}


def _outcome_of(f: Any) -> tuple[object, ...]:
    a = f.action
    if a.kind in ("redirect", "mirror"):
        return (str(a.kind), a.device)
    if a.kind == "mark":
        return ("mark", a.mark)
    assert a == action_for(Action("allow")) or a == action_for(Action("drop"))
    return (str(a.kind),)
