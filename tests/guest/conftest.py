"""Guest-kernel tier fixtures: run only inside the kernel tests.guest_runner boots.

The host kernel has no cls_flower, so these tests skip anywhere else;
``python -m tests.guest_runner`` (called by scripts/test.sh) boots Debian's
kernel with virtme-ng and runs them there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.bpf_loader import SlowPath, compile_together
from tests.guest.helpers import Pace, calibrate
from tests.netns import Pair, inside, veth_pair

__all__ = ["Pair", "inside", "sh"]

IN_GUEST = os.environ.get("FLOWC_IN_GUEST") == "1"


MODULE_ORDER = (
    "test_netkit_guest",
    "test_agent_guest",
    "test_frames_guest",
    "test_revert_guest",
    "test_flower_guest",
    "test_ct_flower_guest",
    "test_audit_guest",
)
"""Guest modules, longest first (measured: the netkit module's CLI loads and
programs, the agent's two starts, the frames' compile). tests.guest_runner runs
the tier on one pytest-xdist worker per guest CPU with ``--dist loadscope
--no-loadscope-reorder``: whole modules, handed out in this order, so the
long ones start at once on both workers and the short ones fill in after."""


def _module_rank(item: pytest.Item) -> int:
    stem = Path(str(item.fspath)).stem
    return MODULE_ORDER.index(stem) if stem in MODULE_ORDER else len(MODULE_ORDER)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/guest/" in str(item.fspath):
            item.add_marker(pytest.mark.guest)
            if not IN_GUEST:
                item.add_marker(pytest.mark.skip(reason="guest tier: run by tests.guest_runner"))
    if IN_GUEST:
        items.sort(key=_module_rank)


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
fixture compiles them at once."""


@pytest.fixture(scope="module")
def batch(request: pytest.FixtureRequest) -> Iterator[dict[str, SlowPath]]:
    """The requesting module's in-process programs (its ``batch_programs()``) by
    name, from ONE bcc compile (compile_together): in the emulated guest a
    compile's fixed cost (clang parsing the kernel headers) is most of a minute,
    and a compile per program was a large share of the tier's time. Per module,
    not per session, since the tier runs modules on two workers
    (tests.guest_runner): a module's compile happens on the worker that runs it.
    Each program has its own maps and is filled with redirect targets of
    ifindex 1 here; a test refills it (tests.guest.helpers.refill) where its
    targets exist before attaching it."""
    provide = getattr(request.module, BATCH_HOOK, None)
    if provide is None:
        pytest.fail(f"{request.module.__name__} has no {BATCH_HOOK}() for the batch fixture")
    wanted = provide()
    loaded = compile_together(list(wanted.values()), ifindex_of=lambda _device: 1)
    try:
        yield dict(zip(wanted, loaded, strict=True))
    finally:
        for slow_path in loaded:
            slow_path.close()
