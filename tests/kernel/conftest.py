"""Kernel tier fixtures: root, bcc, a private network namespace, loaded programs.

Every BPF_PROG_TEST_RUN happens inside a namespace the tests create, so a
mirrored clone (which test runs really transmit) only ever reaches that
namespace's loopback device.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from backends.bpf_c import lower
from ir.interp import evaluate
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Policy
from ir.packet import Packet
from runtime.bpf_abi import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT
from runtime.bpf_loader import SlowPath
from tests.netns import inside

__all__ = ["inside"]


def _have_bcc() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


if os.geteuid() != 0 or not _have_bcc():
    pytest.skip("kernel tier needs root and bcc (scripts/setup.sh)", allow_module_level=True)

RETVAL = {
    ALLOW: TC_ACT_OK,
    DROP: TC_ACT_SHOT,
    REDIRECT: TC_ACT_REDIRECT,
    MIRROR: TC_ACT_OK,
    MARK: TC_ACT_OK,
}


@pytest.fixture(scope="session")
def run_netns() -> Iterator[str]:
    """A network namespace with only loopback, up, for test runs."""
    name = f"fcrun{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


class Loaded:
    """Programs loaded once per session, keyed by (policy identity, strategy)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str], SlowPath] = {}
        self._keep: list[Policy] = []

    def get(self, policy: Policy, strategy: str = "bitvec") -> SlowPath:

        key = (id(policy), strategy)
        if key not in self._cache:
            self._keep.append(policy)
            # Every redirect/mirror target is the namespace's loopback (ifindex 1).
            self._cache[key] = SlowPath(lower(policy, strategy), ifindex_of=lambda _dev: 1)
        return self._cache[key]

    def close(self) -> None:
        for slow_path in self._cache.values():
            slow_path.close()


@pytest.fixture(scope="session")
def loaded() -> Iterator[Loaded]:
    """The session's cache of loaded programs."""
    cache = Loaded()
    yield cache
    cache.close()


def expected(policy: Policy, packet: Packet) -> tuple[int, int, int]:
    """(tc verdict, rule id, mark) the IR says the program must produce."""
    verdict = evaluate(policy, packet)
    mark = verdict.action.mark if verdict.action.kind == MARK else 0
    return RETVAL[verdict.action.kind], verdict.rule.priority, mark or 0


def on_the_wire(packet: Packet) -> bool:
    """False for IPv6 packets whose 'transport' is an extension header number
    (0, 43, 44, 60): no frame can carry them, the parser walks past those."""
    return not (packet.get("family") == 6 and packet.get("ip_proto") in (0, 43, 44, 60))
