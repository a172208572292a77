"""Guest-kernel tier fixtures: run only inside the kernel tests.guest_runner boots.

The host kernel has no cls_flower, so these tests skip anywhere else;
``python -m tests.guest_runner`` (called by scripts/test.sh) boots Debian's
kernel with virtme-ng and runs them there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.guest.helpers import Pace, calibrate
from tests.netns import Pair, inside, veth_pair

__all__ = ["Pair", "inside", "sh"]

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


@pytest.fixture
def pair() -> Iterator[Pair]:
    with veth_pair("fg", "10.198.0.1", "10.198.0.2") as p:
        yield p


@pytest.fixture(scope="session", autouse=IN_GUEST)
def pace() -> Pace:
    """The guest's pace: one bcc compile timed before any test's timed wait
    (tests.guest.helpers); every wait in this tier scales from it."""
    return calibrate()
