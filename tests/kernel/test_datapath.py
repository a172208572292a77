"""Kernel tier: one small policy installed three ways (flowc's slow path, iptables,
nftables) on veth pairs in fresh namespaces gives every trafgen packet the verdict
and rule ir.interp.evaluate gives it (bench/datapath_bench.py's agreement check).

Skipped without the tools (scripts/bench-setup.sh). Bounded: a few dozen packets,
one measuring round of a few hundred packets, every trafgen run under a timeout.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench.datapath_bench import (
    Workload,
    expected_counts,
    missing_tools,
    run_workload,
    trafgen_config,
    with_ip_checksum,
)
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.analysis import region_witnesses
from ir.packet import Packet

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(bool(missing_tools()), reason="needs iptables, nft, trafgen (bench-setup)"),
]

POLICY = """
policy small ingress on eth0 {
    default drop
    allow tcp from 10.1.0.0/16 dport 80
    drop tcp from 10.1.2.0/24 dport 1000-2000
    allow udp to 192.168.0.0/16 dport { 53, 123 }
    allow tcp flags syn,!ack dport 22
    drop icmp type echo-request
    allow icmp
    allow from 172.16.0.0/12
}
"""

EXTRA = [
    "tcp 10.1.2.3:40000 -> 10.9.9.9:80",
    "tcp 10.1.2.3:40000 -> 10.9.9.9:1500",
    "tcp 10.7.2.3:40000 -> 10.9.9.9:1500",
    "udp 10.5.0.1:5000 -> 192.168.4.4:123",
    "udp 10.5.0.1:5000 -> 192.169.4.4:123",
    "icmp 10.5.0.1 -> 10.9.9.9",
    "udp 172.20.0.1:1 -> 10.0.0.1:2",
]


def _workload() -> Workload:
    result = compile_source(POLICY, "small.fw")
    assert result.program is not None
    policy = result.program.policies[0]
    witnesses = [Packet(p) for p, _ in region_witnesses(policy, per_rule=4) if p[0] == 4]
    packets = witnesses + [parse_packet(line) for line in EXTRA]
    return Workload("small", len(policy.rules), policy, packets, len(witnesses))


def test_ip_checksum_is_what_the_kernel_checks() -> None:
    frame = with_ip_checksum(
        bytes(12) + b"\x08\x00" + bytes.fromhex("45000014000000004006") + bytes(10)
    )
    header = frame[14:34]
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, 20, 2))
    assert (total & 0xFFFF) + (total >> 16) == 0xFFFF


def test_every_rule_is_exercised_and_all_three_agree() -> None:
    work = _workload()
    # The packets reach every rule, so agreement is checked on each.
    assert set(expected_counts(work.policy, work.packets)) == {
        r.priority for r in work.policy.rules
    }
    assert trafgen_config(work.packets[:1], bytes(6), bytes(6)).startswith("{ 0x00")
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_workload(work, count=200, rounds=1, tmp=Path(tmp))
    assert not outcome.failed
    assert set(outcome.setups) == {"floor", "flowc", "flowc-walk", "iptables", "nftables"}
    disagreements = [f for f in outcome.findings if "rules differ" in f or "received" in f]
    assert disagreements == []
    assert all(len(s.rounds) == 1 for s in outcome.setups.values())
