"""Stateful flower with the kernel's conntrack (act_ct, nf_conntrack) in the guest.

A policy pair on one veth of namespace B (the host: ingress takes what A
sends, egress what B sends) is lowered for the software profile in the ct
shape and installed; real UDP, ICMP echo and TCP cross it. What gets through
must be what ``ir.conntrack.ConnTracker`` says for the same packets (a reply
allowed only by ``allow state established`` passes, an unsolicited packet is
dropped, a new packet the policy does not allow commits nothing), and the
filters' hit counters must be the ones flowc's flower model picks for each
packet carrying the tracker's state.

Besides the written cases, hypothesis generates UDP sequences in both
directions, checked the same way (verdict by delivery, state by which filter
counted the packet).

The kernel's TCP tracker is loose by default; the IR's is not, so namespace B
sets nf_conntrack_tcp_loose=0. One boot of the emulated guest costs minutes:
the traffic is a few packets per case, every wait bounded.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.flower import lowering as flower
from backends.flower.lowering import FlowerProgram
from backends.flower.rules import CT, ROLE_RULE, classify, ordered
from compiler.frontend import compile_source
from ir.conntrack import ConnTracker
from ir.model import Policy
from ir.packet import Packet
from runtime.flower_installer import FlowerInstaller
from tests.guest.conftest import Pair, inside
from tests.guest.helpers import pace, ping
from tests.netns import veth_pair

POLICY = """
policy inb ingress on {dev} {{
    default drop
    allow state established,related
    allow state new icmp type echo-request
    allow state new tcp dport 8080
}}
policy outb egress on {dev} {{
    default drop
    allow state established,related
    allow state new udp dport 9000
}}
"""
A, B = "10.197.0.1", "10.197.0.2"


@pytest.fixture
def ct_pair() -> Iterator[Pair]:
    for module in ("nf_conntrack", "act_ct"):
        proc = subprocess.run(["modprobe", module], capture_output=True, text=True, check=False)
        if proc.returncode:
            pytest.fail(f"modprobe {module}: {proc.stderr.strip()}")
    with veth_pair("ct", A, B) as p:
        with inside(p.ns_b):
            Path("/proc/sys/net/netfilter/nf_conntrack_tcp_loose").write_text("0")
        yield p


def policies(dev: str) -> tuple[Policy, Policy]:
    """The ingress and egress policy of the host B, on ``dev``."""
    result = compile_source(POLICY.format(dev=dev), "ct.fw")
    assert result.program is not None, result.diagnostics
    inb, outb = result.program.policies
    return inb, outb


def udp(src: str, sport: int, dst: str, dport: int) -> Packet:
    return Packet.make(
        family=4,
        ip_proto=17,
        ip4_src=int.from_bytes(socket.inet_aton(src), "big"),
        ip4_dst=int.from_bytes(socket.inet_aton(dst), "big"),
        sport=sport,
        dport=dport,
    )


def echo(src: str, dst: str, type_: int, ident: int) -> Packet:
    base = Packet.make(
        family=4,
        ip_proto=1,
        ip4_src=int.from_bytes(socket.inet_aton(src), "big"),
        ip4_dst=int.from_bytes(socket.inet_aton(dst), "big"),
        icmp_type=type_,
    )
    return Packet(base.values, ident)


@contextlib.contextmanager
def hooks_installed(
    pair: Pair, programs: dict[str, FlowerProgram]
) -> Iterator[dict[str, FlowerInstaller]]:
    """Inside B, ``programs["inb"]`` installed on the ingress of B's veth and
    ``programs["outb"]`` on its egress; the installers by policy name."""
    with (
        inside(pair.ns_b),
        FlowerInstaller(pair.dev_b, "ingress") as ingress,
        FlowerInstaller(pair.dev_b, "egress") as egress,
    ):
        ingress.install(programs["inb"].filters)
        egress.install(programs["outb"].filters)
        yield {"inb": ingress, "outb": egress}


def filter_hits(installers: dict[str, FlowerInstaller]) -> dict[str, dict[int, int]]:
    """Per policy name, each installed filter's packet count by handle."""
    return {
        name: {i.filter.handle: i.packets for i in inst.dump()} for name, inst in installers.items()
    }


def check_rule_hits(
    programs: dict[str, FlowerProgram],
    got: dict[str, dict[int, int]],
    want: dict[str, collections.Counter[int]],
    context: object,
) -> None:
    """Every rule filter (not the ct action, not a trap) counted exactly the
    packets flowc's model picks it for; a default drop at least that many, since
    it also sees whatever else the kernel sends (ARP goes to chain 0's
    catch-all, but IGMP and the like would not)."""
    for name, program in programs.items():
        for f in program.filters:
            cookie = f.cookie
            if f.action.kind == CT or cookie is None or cookie.role != ROLE_RULE:
                continue
            assert cookie.rule is not None
            rule = program.policy.rules[cookie.rule]
            counted, expected = got[name].get(f.handle, 0), want[name][f.handle]
            if rule.is_default:
                assert counted >= expected, (context, name, f.label())
            else:
                assert counted == expected, (context, name, f.label(), rule.origin)


def _sock(ns: str, kind: int, addr: str, port: int) -> socket.socket:
    with inside(ns):
        s = socket.socket(socket.AF_INET, kind)
    s.bind((addr, port))
    s.settimeout(pace().scaled(2.0))
    return s


def _received(s: socket.socket) -> tuple[bytes, tuple[str, int]] | None:
    try:
        return s.recvfrom(64)
    except TimeoutError:
        return None


def test_udp_and_echo_states_verdicts_and_counters_are_the_trackers(ct_pair: Pair) -> None:
    inb, outb = policies(ct_pair.dev_b)
    programs = {p.name: flower.lower(p) for p in (inb, outb)}
    assert all(prog.ct_chain is not None for prog in programs.values())
    tracker = ConnTracker()
    expected_hits: dict[str, collections.Counter[int]] = {
        name: collections.Counter() for name in programs
    }

    def expect(policy: Policy, packet: Packet, t: int) -> bool:
        """The tracker's verdict for ``packet`` at ``policy``'s hook, and the
        filter flowc's model picks for it with its state."""
        step = tracker.step(policy, packet, t)
        program = programs[policy.name]
        verdict = classify(ordered(program.filters), packet.with_field("state", step.state))
        assert verdict.filter is not None
        expected_hits[policy.name][verdict.filter.handle] += 1
        return step.action.kind != "drop"

    with hooks_installed(ct_pair, programs) as installers:
        # 1. B opens UDP to A:9000 (egress: new, committed); A's reply comes
        #    back established; an unsolicited datagram from A is new and dropped.
        b_sock = _sock(ct_pair.ns_b, socket.SOCK_DGRAM, B, 7000)
        a_sock = _sock(ct_pair.ns_a, socket.SOCK_DGRAM, A, 9000)
        a_other = _sock(ct_pair.ns_a, socket.SOCK_DGRAM, A, 9001)
        b_other = _sock(ct_pair.ns_b, socket.SOCK_DGRAM, B, 7001)
        try:
            b_sock.sendto(b"query", (A, 9000))
            assert expect(outb, udp(B, 7000, A, 9000), 1)
            assert _received(a_sock) is not None
            a_sock.sendto(b"answer", (B, 7000))
            assert expect(inb, udp(A, 9000, B, 7000), 2)
            assert _received(b_sock) is not None, "the established reply was dropped"
            a_other.sendto(b"stray", (B, 7001))
            assert not expect(inb, udp(A, 9001, B, 7001), 3)
            assert _received(b_other) is None, "an unsolicited datagram got through"
        finally:
            for s in (b_sock, a_sock, a_other, b_other):
                s.close()
        # 2. A pings B: the request is new and allowed (committed), B's reply
        #    leaves established. B pinging A is new at egress: dropped.
        ident = 0x4242
        got = ping(ct_pair.ns_a, B, ident=ident)
        assert expect(inb, echo(A, B, 8, ident), 4)
        assert expect(outb, echo(B, A, 0, ident), 5)
        assert got, "the echo reply (established) was dropped"
        assert not ping(ct_pair.ns_b, A, ident=ident + 1)
        assert not expect(outb, echo(B, A, 8, ident + 1), 6)
        check_rule_hits(programs, filter_hits(installers), expected_hits, "written")


def test_tcp_replies_pass_only_for_allowed_connections(ct_pair: Pair) -> None:
    inb, outb = policies(ct_pair.dev_b)
    with hooks_installed(ct_pair, {p.name: flower.lower(p) for p in (inb, outb)}) as installers:
        ingress = installers["inb"]
        servers = [_sock(ct_pair.ns_b, socket.SOCK_STREAM, B, port) for port in (8080, 8081)]
        for s in servers:
            s.listen(1)
        try:
            with inside(ct_pair.ns_a):
                ok = socket.create_connection((B, 8080), timeout=pace().scaled(5.0))
            peer, _ = servers[0].accept()
            ok.sendall(b"hello")
            assert peer.recv(16) == b"hello"
            peer.sendall(b"world")  # egress: established, allowed only by state
            assert ok.recv(16) == b"world"
            ok.close()
            peer.close()
            with inside(ct_pair.ns_a), pytest.raises(OSError):
                socket.create_connection((B, 8081), timeout=pace().scaled(2.0))
        finally:
            for s in servers:
                s.close()
        # The SYN to 8080 met the commit filter of its rule; the one to 8081
        # (and its retransmissions) the default drop.
        decided: collections.Counter[int | None] = collections.Counter()
        for installed in ingress.dump():
            cookie = installed.filter.cookie
            if cookie is not None and cookie.role == ROLE_RULE:
                decided[cookie.rule] += installed.packets
        assert decided.get(2, 0) >= 1 and decided.get(len(inb.rules) - 1, 0) >= 1, decided


# A's two UDP ports (9000: the port outb lets B open connections to) and B's.
A_PORTS = (9000, 9001)
B_PORTS = (7000, 7001)
UDP_STEPS = st.lists(
    st.tuples(st.sampled_from(["b->a", "a->b"]), st.integers(0, 1), st.integers(0, 1)),
    min_size=2,
    max_size=8,
)


def test_generated_udp_sequences_get_the_trackers_verdicts_and_counters(ct_pair: Pair) -> None:
    """Hypothesis-generated datagram sequences between A and B through both hooks
    with act_ct: each datagram is delivered exactly when the reference tracker
    (same order, same clock) says its hook lets it through, and each example's
    filter hits are the ones flowc's model picks with the tracker's states.
    Every example uses B ports of its own, so its connections are new in both
    tables; one wait per example settles what was dropped."""
    inb, outb = policies(ct_pair.dev_b)
    programs = {p.name: flower.lower(p) for p in (inb, outb)}
    tracker = ConnTracker()
    began = time.monotonic_ns()
    a_socks = [_sock(ct_pair.ns_a, socket.SOCK_DGRAM, A, port) for port in A_PORTS]
    examples = iter(range(1, 10_000))
    with hooks_installed(ct_pair, programs) as installers:

        @settings(
            max_examples=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(steps=UDP_STEPS)
        def run(steps: list[tuple[str, int, int]]) -> None:
            offset = 10 * next(examples)
            b_ports = [port + offset for port in B_PORTS]
            b_socks = [_sock(ct_pair.ns_b, socket.SOCK_DGRAM, B, port) for port in b_ports]
            before = filter_hits(installers)
            expected = {name: collections.Counter[int]() for name in programs}
            delivered_want = set()
            try:
                for i, (way, a, b) in enumerate(steps):
                    payload = f"{offset}:{i}".encode()
                    if way == "b->a":
                        policy, packet = outb, udp(B, b_ports[b], A, A_PORTS[a])
                        b_socks[b].sendto(payload, (A, A_PORTS[a]))
                    else:
                        policy, packet = inb, udp(A, A_PORTS[a], B, b_ports[b])
                        a_socks[a].sendto(payload, (B, b_ports[b]))
                    step = tracker.step(policy, packet, time.monotonic_ns() - began)
                    picked = classify(
                        ordered(programs[policy.name].filters),
                        packet.with_field("state", step.state),
                    )
                    assert picked.filter is not None
                    expected[policy.name][picked.filter.handle] += 1
                    if step.action.kind != "drop":
                        delivered_want.add(payload)
                    # The next datagram's state may depend on this one: let the
                    # kernel see it first (veth delivery is asynchronous).
                    time.sleep(pace().scaled(0.05))
                time.sleep(pace().scaled(1.0))
                delivered = set()
                for s in (*a_socks, *b_socks):
                    s.setblocking(False)
                    try:
                        while True:
                            delivered.add(s.recv(64))
                    except BlockingIOError:
                        pass
                    finally:
                        s.settimeout(pace().scaled(2.0))
                # Datagrams of earlier examples never arrive late: each was
                # drained after its own wait.
                assert delivered == delivered_want, (steps, sorted(delivered ^ delivered_want))
                after = filter_hits(installers)
                delta = {
                    name: {h: n - before[name].get(h, 0) for h, n in counts.items()}
                    for name, counts in after.items()
                }
                check_rule_hits(programs, delta, expected, steps)
            finally:
                for s in b_socks:
                    s.close()

        try:
            run()
        finally:
            for s in a_socks:
                s.close()
