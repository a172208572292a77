"""Connection tracking on real connections: TCP and UDP over a veth pair.

Namespace B is the host under policy: flowc programs on its veth's ingress
and egress share one connection table (a pin of the test's own) and run on
the kernel's clock. B's ingress admits new connections to one port only, so
every other packet coming in gets through only as the reply of a connection
B's egress committed (``allow state established,related``); unsolicited
packets from A do not. Bounded: a handful of connections, every socket
operation under a one-second timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import pytest

from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import lower
from compiler.frontend import compile_source
from ir.conntrack import TcpState
from runtime import tc_attach
from runtime.bpf_loader import SlowPath
from runtime.conntrack import CtTable
from tests.netns import Pair, inside, veth_pair

pytestmark = pytest.mark.kernel

A_ADDR, B_ADDR = "10.77.0.1", "10.77.0.2"
POLICY = """
policy b_in ingress on {dev} {{
    default drop
    allow state established,related
    allow tcp dport 8080
}}
policy b_out egress on {dev} {{
    default drop
    allow state established,related
    allow tcp dport 9090
    allow udp dport 5400
}}
"""
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[Pair, CtSpec]]:
    """The pair, with B's programs attached both ways (compiled once)."""
    spec = CtSpec(pin=f"/sys/fs/bpf/flowc-veth-{os.getpid()}/ct")
    with veth_pair("ct", A_ADDR, B_ADDR) as pair:
        result = compile_source(POLICY.format(dev=pair.dev_b), "b.fw")
        assert result.program is not None, result.diagnostics
        paths = []
        try:
            for policy in result.program.policies:
                slow_path = SlowPath(lower(policy, conntrack=spec))
                paths.append(slow_path)
                with inside(pair.ns_b):
                    tc_attach.attach(slow_path.fd, pair.dev_b, policy.hook.direction)
            yield pair, spec
        finally:
            for slow_path in paths:
                slow_path.close()
            shutil.rmtree(os.path.dirname(spec.pin), ignore_errors=True)


def _socket(ns: str, kind: int, bind: tuple[str, int] | None = None) -> socket.socket:
    with inside(ns):
        s = socket.socket(socket.AF_INET, kind)
    s.settimeout(TIMEOUT_S)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind is not None:
        s.bind(bind)
    return s


def test_tcp_replies_get_in_only_as_established(host: tuple[Pair, CtSpec]) -> None:
    pair, spec = host
    # B connects out to A:9090: the SYN commits at egress; the SYN+ACK and the
    # data coming back are let in by the established rule alone.
    listener = _socket(pair.ns_a, socket.SOCK_STREAM, (A_ADDR, 9090))
    listener.listen(1)
    client = _socket(pair.ns_b, socket.SOCK_STREAM, (B_ADDR, 41000))
    try:
        client.connect((A_ADDR, 9090))
        client.sendall(b"ping")
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT_S)
            assert conn.recv(64) == b"ping"
            conn.sendall(b"pong")
            assert client.recv(64) == b"pong"
            with CtTable(spec.pin) as table:
                entries = {str(c.key): c for c in table.connections()}
            entry = entries[f"tcp {B_ADDR}:41000 -> {A_ADDR}:9090"]
            assert entry.replied and entry.tcp == TcpState.ESTABLISHED
            assert entry.packets[0] >= 3 and entry.packets[1] >= 2
    finally:
        client.close()
        listener.close()
    # A connecting to B on a port no rule admits as new: the SYN is dropped.
    listener = _socket(pair.ns_b, socket.SOCK_STREAM, (B_ADDR, 9091))
    listener.listen(1)
    stranger = _socket(pair.ns_a, socket.SOCK_STREAM)
    try:
        with pytest.raises(TimeoutError):
            stranger.connect((B_ADDR, 9091))
    finally:
        stranger.close()
        listener.close()
    # A connecting to B:8080 (admitted as new at ingress): B's SYN+ACK and data
    # go out as established, though b_out admits nothing new to A's port.
    listener = _socket(pair.ns_b, socket.SOCK_STREAM, (B_ADDR, 8080))
    listener.listen(1)
    visitor = _socket(pair.ns_a, socket.SOCK_STREAM)
    try:
        visitor.connect((B_ADDR, 8080))
        visitor.sendall(b"hello")
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT_S)
            assert conn.recv(64) == b"hello"
            conn.sendall(b"back")
            assert visitor.recv(64) == b"back"
    finally:
        visitor.close()
        listener.close()


def test_udp_reply_only_after_the_request(host: tuple[Pair, CtSpec]) -> None:
    pair, _spec = host
    b_sock = _socket(pair.ns_b, socket.SOCK_DGRAM, (B_ADDR, 6000))
    a_sock = _socket(pair.ns_a, socket.SOCK_DGRAM, (A_ADDR, 5400))
    try:
        # Unsolicited: A's datagram to B:6000 before B said anything is dropped.
        a_sock.sendto(b"early", (B_ADDR, 6000))
        with pytest.raises(TimeoutError):
            b_sock.recv(64)
        # B asks, A answers: the answer is established and gets in, both ways after.
        b_sock.sendto(b"query", (A_ADDR, 5400))
        data, peer = a_sock.recvfrom(64)
        assert (data, peer) == (b"query", (B_ADDR, 6000))
        a_sock.sendto(b"answer", (B_ADDR, 6000))
        assert b_sock.recv(64) == b"answer"
        a_sock.sendto(b"more", (B_ADDR, 6000))
        assert b_sock.recv(64) == b"more"
    finally:
        b_sock.close()
        a_sock.close()
    # Another port of A's, same B port: another connection, never committed.
    other = _socket(pair.ns_a, socket.SOCK_DGRAM, (A_ADDR, 5401))
    b_again = _socket(pair.ns_b, socket.SOCK_DGRAM, (B_ADDR, 6000))
    try:
        other.sendto(b"stranger", (B_ADDR, 6000))
        with pytest.raises(TimeoutError):
            b_again.recv(64)
    finally:
        other.close()
        b_again.close()
