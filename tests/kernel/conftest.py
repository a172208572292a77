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

from backends.bpf.emit import lower
from ir.model import Policy
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
        """The loaded program of ``policy``: ``bitvec`` or ``chain`` as lowered by
        default, ``bitvec-memo`` (the class-tuple memo compiled in whatever the
        policy's size, so small example policies exercise it too) or
        ``bitvec-grid`` (the summary grid built whatever the size)."""
        key = (id(policy), strategy)
        if key not in self._cache:
            self._keep.append(policy)
            if strategy == "bitvec-memo":
                program = lower(policy, "bitvec", memo=True)
            elif strategy == "bitvec-grid":
                program = lower(policy, "bitvec", grid=True)
            else:
                program = lower(policy, strategy)
            # Every redirect/mirror target is the namespace's loopback (ifindex 1).
            self._cache[key] = SlowPath(program, ifindex_of=lambda _dev: 1)
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
