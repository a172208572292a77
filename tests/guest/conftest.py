"""Guest-kernel tier fixtures: run only inside the kernel tests.guest_runner boots.

The host kernel has no cls_flower, so these tests skip anywhere else;
``python -m tests.guest_runner`` (called by scripts/test.sh) boots Debian's
kernel with virtme-ng and runs them there.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

IN_GUEST = os.environ.get("FLOWC_IN_GUEST") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/guest/" in str(item.fspath):
            item.add_marker(pytest.mark.guest)
            if not IN_GUEST:
                item.add_marker(pytest.mark.skip(reason="guest tier: run by tests.guest_runner"))


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block with this thread in the named network namespace."""
    from pyroute2.netns import popns, pushns

    pushns(netns)
    try:
        yield
    finally:
        popns()


@dataclass
class Pair:
    """Namespace A (sender) and B (the hook under test), joined by a veth pair."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str

    def add_device(self, name: str) -> str:
        """A veth in B called ``name`` whose peer (returned) is also in B, up:
        a redirect/mirror target whose output can be captured on the peer."""
        peer = f"{name[:12]}-p"
        sh("ip", "-n", self.ns_b, "link", "add", name, "type", "veth", "peer", "name", peer)
        for dev in (name, peer):
            sh("ip", "-n", self.ns_b, "link", "set", dev, "up")
        return peer


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = f"{os.getpid() % 1000}{int(time.time() * 1000) % 10000}"
    p = Pair(f"fgA{tag}", f"fgB{tag}", f"fga{tag}", f"fgb{tag}")
    sh("ip", "netns", "add", p.ns_a)
    sh("ip", "netns", "add", p.ns_b)
    try:
        # No IPv6 on these links: neighbour discovery would add to the counters.
        for ns in (p.ns_a, p.ns_b):
            for conf in ("all", "default"):
                sh(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{conf}.disable_ipv6=1",
                )
        sh(
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
        for ns, dev, addr in ((p.ns_a, p.dev_a, "10.198.0.1"), (p.ns_b, p.dev_b, "10.198.0.2")):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        subprocess.run(["ip", "netns", "del", p.ns_a], check=False)
        subprocess.run(["ip", "netns", "del", p.ns_b], check=False)
