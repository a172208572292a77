"""The slow path on a real hook: veth pairs in namespaces the test creates, real packets.

Namespace A sends with ordinary sockets to namespace B, where the program is
attached to B's veth ingress. Verdicts are observed from both ends: B's
sockets see what was allowed, an AF_PACKET socket in A sees what the program
sent back out of B's veth (redirects and mirror copies), and the program's
own per-rule counters and ring-buffer events are read from user space.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bpf.abi import Event
from backends.bpf.emit import BPF_DIR, lower
from compiler.frontend import compile_source
from ir.model import Policy
from runtime import bpf_loader, tc_attach
from runtime.bpf_loader import BpfLoadError, SlowPath
from tests.netns import Pair, inside, received, send_udp, veth_pair

pytestmark = pytest.mark.kernel

A_ADDR, B_ADDR = "10.199.0.1", "10.199.0.2"
POLICY = """
endpoint back {{ ip 10.199.0.1; dev {dev_b} }}
policy t ingress on {dev_b} {{
    default drop
    allow udp dport 5000
    mark 0x42 udp dport 5001
    redirect udp dport 5002 -> back
    mirror udp dport 5003 -> back
    drop udp dport 6000
    allow icmp
    {extra}
}}
"""


@pytest.fixture
def pair() -> Iterator[Pair]:
    with veth_pair("fc", A_ADDR, B_ADDR) as p:
        yield p


def compile_policy(pair: Pair, extra: str = "") -> Policy:
    result = compile_source(POLICY.format(dev_b=pair.dev_b, extra=extra), "veth.fw")
    assert result.program is not None, result.diagnostics
    return result.program.policies[0]


def load_in_b(pair: Pair, policy: Policy, **kw: object) -> SlowPath:
    with inside(pair.ns_b):
        return SlowPath(lower(policy), **kw)  # type: ignore[arg-type]


def udp_listeners(pair: Pair, ports: list[int]) -> dict[int, socket.socket]:
    socks = {}
    with inside(pair.ns_b):
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((B_ADDR, port))
            s.settimeout(0.3)
            socks[port] = s
    return socks


def sniffer(pair: Pair) -> socket.socket:
    with inside(pair.ns_a):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((pair.dev_a, 0))
        s.settimeout(0.3)
    return s


def came_back(sniff: socket.socket, port: int, limit: int = 50) -> int:
    """Incoming UDP frames on A's veth addressed to B:port (sent back by the program)."""
    n = 0
    for _ in range(limit):
        try:
            data, addr = sniff.recvfrom(2048)
        except TimeoutError:
            break
        if addr[2] == socket.PACKET_OUTGOING or data[12:14] != b"\x08\x00":
            continue
        if data[23] == 17 and int.from_bytes(data[36:38], "big") == port:
            n += 1
    return n


def rule_of(policy: Policy, line_text: str) -> int:
    return next(r.priority for r in policy.rules if r.origin.text == line_text)


def test_real_packets_verdicts_counters_and_events(pair: Pair) -> None:
    policy = compile_policy(pair)
    with inside(pair.ns_b):
        slow_path = SlowPath(lower(policy), events=True, generation=7)
        tc_attach.attach(slow_path.fd, pair.dev_b, "ingress")
    events: list[Event] = []
    slow_path.open_events(lambda ev: events.append(Event.from_buffer_copy(bytes(ev))))
    try:
        listeners = udp_listeners(pair, [5000, 5001, 5003, 6000, 7000])
        sniff = sniffer(pair)
        send_udp(pair, 5000, count=3)
        assert received(listeners[5000]) == 3
        send_udp(pair, 5001)
        assert received(listeners[5001]) == 1
        send_udp(pair, 5002, count=2)
        assert came_back(sniff, 5002) == 2  # redirected out of B's veth, back to A
        send_udp(pair, 5003)
        assert received(listeners[5003]) == 1  # mirrored: the original is allowed...
        assert came_back(sniff, 5003) == 1  # ...and a copy went back out
        send_udp(pair, 6000, count=2)
        assert received(listeners[6000]) == 0
        send_udp(pair, 7000)
        assert received(listeners[7000]) == 0  # the default drops it

        stats = slow_path.rule_stats()
        counts = {r.origin.text: stats[r.priority][0] for r in policy.rules}
        # Last hit: stamped in jiffies by the program, read back as CLOCK_MONOTONIC.
        now_ns = time.monotonic_ns()
        for rule in policy.rules:
            packets, _bytes, last_ns = stats[rule.priority]
            if packets:
                assert now_ns - 60 * 10**9 < last_ns <= now_ns + 50_000_000, rule.origin.text
            else:
                assert last_ns == 0
        assert counts["allow udp dport 5000"] == 3
        assert counts["mark 0x42 udp dport 5001"] == 1
        assert counts["redirect udp dport 5002 -> back"] == 2
        assert counts["mirror udp dport 5003 -> back"] == 1
        assert counts["drop udp dport 6000"] == 2
        assert counts["default drop"] == 1
        assert stats[rule_of(policy, "allow udp dport 5000")][1] == 3 * (14 + 20 + 8 + 10)
        assert slow_path.status()["not_ip"] >= 1  # ARP went through untouched

        for _ in range(20):  # bounded wait for the ring buffer
            slow_path.poll_events(100)
            if len(events) >= 6:
                break
        flows = {(ev.key.dport, ev.rule, ev.generation) for ev in events}
        assert (5000, rule_of(policy, "allow udp dport 5000"), 7) in flows
        assert (6000, rule_of(policy, "drop udp dport 6000"), 7) in flows
        assert sum(1 for ev in events if ev.key.dport == 5000) == 1  # de-duplicated
        ev = next(ev for ev in events if ev.key.dport == 5000)
        assert str(ev.key) == f"proto 17 {A_ADDR}:40000 -> {B_ADDR}:5000"
    finally:
        with inside(pair.ns_b):
            assert tc_attach.detach(pair.dev_b, "ingress")
        slow_path.close()


def test_atomic_replace_and_detach(pair: Pair) -> None:
    first = compile_policy(pair)
    # The second version allows what the first drops.
    text = POLICY.format(dev_b=pair.dev_b, extra="").replace(
        "    drop udp dport 6000", "    allow udp dport 6000"
    )
    result = compile_source(text, "veth2.fw")
    assert result.program is not None
    second = result.program.policies[0]
    with inside(pair.ns_b):
        one = SlowPath(lower(first))
        two = SlowPath(lower(second))
        tc_attach.attach(one.fd, pair.dev_b, "ingress")
    try:
        listeners = udp_listeners(pair, [6000])
        send_udp(pair, 6000)
        assert received(listeners[6000]) == 0
        with inside(pair.ns_b):
            tc_attach.attach(two.fd, pair.dev_b, "ingress")  # replace in place
            assert tc_attach.attached_names(pair.dev_b, "ingress") == ["flowc"]
        send_udp(pair, 6000)
        assert received(listeners[6000]) == 1
        assert two.rule_stats()[rule_of(second, "allow udp dport 6000")][0] == 1
        with inside(pair.ns_b):
            assert tc_attach.detach(pair.dev_b, "ingress")
            assert tc_attach.attached_names(pair.dev_b, "ingress") == []
            assert not tc_attach.detach(pair.dev_b, "ingress")
        send_udp(pair, 7000)  # nothing attached: no verdict, counters unchanged
        assert two.rule_stats()[-1][0] == 0
    finally:
        one.close()
        two.close()


def test_tcx_attach(pair: Pair) -> None:
    policy = compile_policy(pair)
    with inside(pair.ns_b):
        slow_path = SlowPath(lower(policy))
        tc_attach.attach(slow_path.fd, pair.dev_b, "ingress", mode="tcx")
    try:
        listeners = udp_listeners(pair, [5000, 6000])
        send_udp(pair, 5000)
        send_udp(pair, 6000)
        assert received(listeners[5000]) == 1
        assert received(listeners[6000]) == 0
        assert slow_path.rule_stats()[rule_of(policy, "drop udp dport 6000")][0] == 1
    finally:
        with inside(pair.ns_b):
            assert tc_attach.detach(pair.dev_b, "ingress", mode="tcx")
        slow_path.close()


def test_missing_redirect_device_is_a_clear_error(pair: Pair) -> None:
    policy = compile_policy(pair)
    with pytest.raises(BpfLoadError) as info:
        SlowPath(lower(policy))  # in the root namespace there is no such device
    assert f"device '{pair.dev_b}'" in str(info.value)
    assert info.value.dsl_line == 7 and "redirect target of veth.fw:7" in str(info.value)


def test_verifier_rejection_reports_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = "\n".join(f" allow tcp dport {i}" for i in range(100))
    result = compile_source(f"policy p ingress on eth0 {{\n default drop\n{body}\n}}\n", "p.fw")
    assert result.program is not None
    program = lower(result.program.policies[0])
    # Remove the bound check before the bit-vector word access (in a copy of
    # bpf/ the program is compiled against): the verifier must refuse the
    # out-of-bounds map access and say so in its own words.
    unsafe_dir = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, unsafe_dir)
    bitvec = unsafe_dir / "flowc_bitvec.h"
    safe = bitvec.read_text()
    unsafe = safe.replace("if (w >= FLOWC_N_WORDS)\n\t\t\t\tbreak;", "")
    assert unsafe != safe
    bitvec.write_text(unsafe)
    with monkeypatch.context() as patch:
        patch.setattr(bpf_loader, "BPF_DIR", unsafe_dir)
        with pytest.raises(BpfLoadError) as info:
            SlowPath(program)
    assert info.value.stage == "verifier"
    assert "invalid access to map value" in info.value.log_tail
    broken = program.source.replace("return flowc_run(skb);", "return flowc_run(skb)")
    with pytest.raises(BpfLoadError) as info:
        SlowPath(dataclasses.replace(program, source=broken))
    assert info.value.stage == "compile"
    assert "error" in info.value.log_tail


def test_attach_in_chain_one_sits_behind_chain_zero(pair: Pair) -> None:
    """``flowc agent`` keeps the slow path in chain 1, reached only by flower's
    ``goto chain 1`` traps: attached there, it sees no packet chain 0 does not
    send (this kernel has no flower to send any), replaces in place, detaches."""
    policy = compile_policy(pair)
    with inside(pair.ns_b):
        slow_path = SlowPath(lower(policy))
        tc_attach.attach(slow_path.fd, pair.dev_b, "ingress", chain=1)
        tc_attach.attach(slow_path.fd, pair.dev_b, "ingress", chain=1)  # replace in place
        assert tc_attach.attached_names(pair.dev_b, "ingress") == ["flowc"]
    try:
        listeners = udp_listeners(pair, [6000])
        send_udp(pair, 6000)  # the policy drops it, but chain 0 is empty: it passes
        assert received(listeners[6000]) == 1
        assert slow_path.rule_stats()[rule_of(policy, "drop udp dport 6000")][0] == 0
    finally:
        with inside(pair.ns_b):
            assert tc_attach.detach(pair.dev_b, "ingress", chain=1)
            assert tc_attach.attached_names(pair.dev_b, "ingress") == []
            assert not tc_attach.detach(pair.dev_b, "ingress", chain=1)
        slow_path.close()
