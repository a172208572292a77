"""Tuple-space explosion (runtime/tse_replay.py): crafted flows that ask for many
masks do not break the cache's budget, its hit ratio for everyone else, the
agent's queue bound or a single verdict."""

from __future__ import annotations

import dataclasses
import random

import pytest

from backends.flower.rules import FlowerFilter  # noqa: F401  (before nic_profile: a cycle)
from backends.nic_profile import NicProfile, load_profile
from compiler.packet_syntax import parse_packet
from ir.fields import HEADER_SPACE
from ir.model import Policy
from ir.packet import Packet
from runtime.flow_cache import CacheConfig
from runtime.tse_replay import ReplayConfig, attack_packets, mixed, replay
from tests.conftest import compile_ok

POLICY = """policy edge ingress on eth0 {
    default drop
    allow tcp from 10.0.0.0/16 to 192.168.1.0/24 dport 443
    allow tcp from 10.1.0.0/16 to 192.168.2.0/24 dport 80-89
    drop tcp from 10.0.7.0/24
    allow udp to 192.168.3.0/24 dport 53
    allow tcp from 172.16.0.0/12 dport 22
    allow udp from 10.2.0.0/16 sport 1024-65535 dport 5000-5999
    mark 7 tcp to 192.168.4.0/22 dport 8080
}
"""


def _policy() -> Policy:
    result = compile_ok(POLICY)
    assert result.program is not None
    return result.program.policies[0]


def _good_trace(count: int, flows: int, seed: int = 1) -> list[Packet]:
    """Well-behaved flows inside the policy's rules, Zipf-like popularity."""
    rng = random.Random(seed)
    templates = [
        "tcp 10.0.{a}.{b}:{p} -> 192.168.1.{c}:443",
        "tcp 10.1.{a}.{b}:{p} -> 192.168.2.{c}:80",
        "udp 10.9.{a}.{b}:{p} -> 192.168.3.{c}:53",
        "tcp 172.16.{a}.{b}:{p} -> 10.5.5.{c}:22",
        "tcp 10.3.{a}.{b}:{p} -> 192.168.4.{c}:8080",
    ]
    flow_list = [
        parse_packet(
            rng.choice(templates).format(
                a=rng.randrange(256),
                b=rng.randrange(256),
                c=rng.randrange(256),
                p=rng.randrange(1024, 65536),
            )
        )
        for _ in range(flows)
    ]
    weights = [1.0 / (i + 1) for i in range(flows)]
    return rng.choices(flow_list, weights, k=count)


def _budget(masks: int) -> NicProfile:
    """The software profile (every key and action) with a mask budget."""
    return dataclasses.replace(load_profile("software"), max_masks=masks)


def test_crafted_packets_are_distinct_valid_and_one_bit_pair_away() -> None:
    good = _good_trace(200, 20)
    attack = attack_packets(good, 150, seed=4)
    assert len(attack) == 150 == len({p.values for p in attack})
    seeds = {p.values for p in good}
    for packet in attack:
        differing = [
            min(bin(a ^ s.__getitem__(i)).count("1") for s in seeds)
            for i, a in enumerate(packet.values)
        ]
        assert sum(differing) <= 2
        assert all(
            HEADER_SPACE.names[i] in ("ip4_src", "ip4_dst", "sport", "dport")
            for i, d in enumerate(differing)
            if d
        )


def test_mixed_trace_keeps_the_good_order_and_the_share() -> None:
    good = _good_trace(2000, 30)
    attack = attack_packets(good, 500, seed=5)
    trace = mixed(good, attack, 0.2, seed=6)
    assert [p for p, bad in trace if not bad] == good
    n_attack = sum(bad for _, bad in trace)
    assert 0.15 < n_attack / len(trace) < 0.25
    with pytest.raises(ValueError, match="attack share"):
        mixed(good, attack, 1.0)


def test_attack_stays_within_the_mask_budget_and_spares_good_flows() -> None:
    policy = _policy()
    good = _good_trace(6000, 60)
    attack = attack_packets(good, 700, seed=2)
    trace = mixed(good, attack, 0.1, seed=3)
    # Without a budget the crafted flows really ask for many masks ...
    unbounded = replay(policy, trace, _budget(1_000_000))
    assert unbounded.masks_requested > 16
    # ... and with one, the device never holds more than it allows.
    profile = _budget(8)
    base = replay(policy, [(p, False) for p in good], profile)
    under = replay(policy, trace, profile)
    assert under.peak_masks <= 8 and base.peak_masks <= 8
    assert base.good_hit_ratio - under.good_hit_ratio <= 0.05
    assert under.peak_queue <= under.queue_capacity
    assert under.wrong_verdicts == base.wrong_verdicts == unbounded.wrong_verdicts == 0
    assert under.attack_packets == len(attack) and under.good_packets == len(good)


def test_queue_stays_bounded_when_the_agent_falls_behind() -> None:
    """An agent far slower than the miss rate: the queue drops (and counts) what it
    cannot hold, and every packet is still decided by the policy."""
    policy = _policy()
    good = _good_trace(3000, 40)
    trace = mixed(good, attack_packets(good, 800, seed=7), 0.2, seed=8)
    slow = ReplayConfig(agent_rate=50.0, queue_size=16)
    result = replay(policy, trace, _budget(8), CacheConfig(), slow)
    assert result.peak_queue <= 16
    assert result.events_dropped > 0
    assert result.wrong_verdicts == 0
