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

from runtime.bpf_loader import SlowPath, compile_together
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


BATCH_HOOK = "batch_programs"
"""A guest test module that loads BPF programs in this process defines a
function of this name returning them ({name: BpfProgram}); the ``batch``
fixture compiles every collected module's programs at once."""


@pytest.fixture(scope="session")
def batch(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, SlowPath]]]:
    """Every in-process program of the tests collected in this run, by module
    name and then by program name, from ONE bcc compile (compile_together): in
    the emulated guest a compile's fixed cost (clang parsing the kernel
    headers) is most of a minute, and separate compiles per module were a
    large share of the tier's time. Each program has its own maps and is
    filled with redirect targets of ifindex 1 here; a test refills it
    (tests.guest.helpers.refill) where its targets exist before attaching it."""
    modules = {item.module for item in request.session.items if isinstance(item, pytest.Function)}
    wanted = [
        (module.__name__, name, program)
        for module in sorted(modules, key=lambda m: m.__name__)
        if (provide := getattr(module, BATCH_HOOK, None)) is not None
        for name, program in provide().items()
    ]
    loaded = compile_together([program for *_, program in wanted], ifindex_of=lambda _device: 1)
    by_module: dict[str, dict[str, SlowPath]] = {}
    for (module_name, name, _program), slow_path in zip(wanted, loaded, strict=True):
        by_module.setdefault(module_name, {})[name] = slow_path
    try:
        yield by_module
    finally:
        for slow_path in loaded:
            slow_path.close()
