"""Network namespaces and veth pairs that tests create for real packets (kernel and guest tiers)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block with this thread in the named network namespace."""
    from pyroute2.netns import popns, pushns

    pushns(netns)
    try:
        yield
    finally:
        popns()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Pair:
    """Namespace A (sender) and B (the hook under test), joined by a veth pair."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str

    def add_device(self, name: str) -> str:
        """A veth in B called ``name`` whose peer (returned) is also in B, up:
        a redirect/mirror target whose output can be captured on the peer."""
        peer = f"{name[:12]}-p"
        _run("ip", "-n", self.ns_b, "link", "add", name, "type", "veth", "peer", "name", peer)
        for dev in (name, peer):
            _run("ip", "-n", self.ns_b, "link", "set", dev, "up")
        return peer


@contextmanager
def veth_pair(prefix: str, addr_a: str, addr_b: str) -> Iterator[Pair]:
    """Two fresh namespaces (names starting ``prefix``) joined by a veth pair with
    ``addr_a``/``addr_b`` (/24), IPv6 off, removed afterwards."""
    tag = f"{os.getpid() % 1000}{int(time.time() * 1000) % 10000}"
    p = Pair(
        f"{prefix}A{tag}", f"{prefix}B{tag}", f"{prefix}a{tag}", f"{prefix}b{tag}", addr_a, addr_b
    )
    _run("ip", "netns", "add", p.ns_a)
    _run("ip", "netns", "add", p.ns_b)
    try:
        # No IPv6 on these links: its neighbour discovery and MLD chatter would be
        # classified too and make the per-rule counts depend on timing.
        for ns in (p.ns_a, p.ns_b):
            for conf in ("all", "default"):
                _run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{conf}.disable_ipv6=1",
                )
        _run(
            "ip",
            "link",
            "add",
            p.dev_a,
            "netns",
            p.ns_a,
            "type",
            "veth",
            "peer",
            "name",
            p.dev_b,
            "netns",
            p.ns_b,
        )
        for ns, dev, addr in ((p.ns_a, p.dev_a, addr_a), (p.ns_b, p.dev_b, addr_b)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        subprocess.run(["ip", "netns", "del", p.ns_a], check=False)
        subprocess.run(["ip", "netns", "del", p.ns_b], check=False)


def send_udp(pair: Pair, port: int, count: int = 1, sport: int = 40000) -> None:
    """Send ``count`` UDP datagrams from A (port ``sport``) to B:``port``."""
    with inside(pair.ns_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((pair.addr_a, sport))
    try:
        for _ in range(count):
            s.sendto(b"flowc-test", (pair.addr_b, port))
    finally:
        s.close()


def received(sock: socket.socket, limit: int = 20) -> int:
    """How many datagrams arrive on ``sock`` (each wait bounded by its timeout),
    counting at most ``limit``."""
    n = 0
    for _ in range(limit):
        try:
            sock.recv(2048)
        except TimeoutError:
            break
        n += 1
    return n
