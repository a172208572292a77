"""The kernel's jiffies counter, mapped onto CLOCK_MONOTONIC.

The slow path stamps per-rule "last hit" with ``bpf_jiffies64()``, which the
verifier inlines into a load (``bpf_ktime_get_coarse_ns()`` is a helper call,
measured at ~20 ns per packet on this machine's kernel: a fifth of a packet's
cost). Jiffies tick at CONFIG_HZ, the same resolution a coarse clock has, so
nothing is lost; user space converts them back with :class:`JiffiesClock`.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

STANDARD_HZ = (100, 250, 300, 1000)
TIMER_LIST = Path("/proc/timer_list")


class KernelClockError(OSError):
    """The kernel's jiffies or HZ could not be read."""


def parse_timer_list(text: str) -> tuple[int, int]:
    """(monotonic ns, jiffies) from /proc/timer_list's text: its ``now at`` line
    (ktime_get(), i.e. CLOCK_MONOTONIC) and its first ``jiffies:`` line."""
    now = re.search(r"^now at (\d+) nsecs", text, re.MULTILINE)
    jiffies = re.search(r"^jiffies: (\d+)", text, re.MULTILINE)
    if now is None or jiffies is None:
        raise KernelClockError("/proc/timer_list has no 'now at' or 'jiffies:' line")
    return int(now.group(1)), int(jiffies.group(1))


def hz_from_config(text: str) -> int | None:
    """CONFIG_HZ from a kernel config's text, or None."""
    found = re.search(r"^CONFIG_HZ=(\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _read_timer_list() -> tuple[int, int]:
    try:
        return parse_timer_list(TIMER_LIST.read_text())
    except OSError as exc:
        raise KernelClockError(f"cannot read {TIMER_LIST}: {exc.strerror}") from None


@functools.cache
def kernel_hz() -> int:
    """The running kernel's CONFIG_HZ (read once per process): from its config (/proc/config.gz or
    /boot/config-RELEASE), else measured from jiffies over 100 ms and rounded to
    the nearest standard value."""
    release = os.uname().release
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        hz = hz_from_config(text)
        if hz:
            return hz
    ns0, j0 = _read_timer_list()
    time.sleep(0.1)
    ns1, j1 = _read_timer_list()
    measured = (j1 - j0) * 1e9 / max(1, ns1 - ns0)
    return min(STANDARD_HZ, key=lambda hz: abs(hz - measured))


@dataclass(frozen=True, slots=True)
class JiffiesClock:
    """Converts jiffies to CLOCK_MONOTONIC ns, from one reading of both.

    Attributes:
        hz: ticks per second.
        now_ns: CLOCK_MONOTONIC at the reading.
        now_jiffies: jiffies at the reading.
    """

    hz: int
    now_ns: int
    now_jiffies: int

    @classmethod
    def read(cls, hz: int) -> JiffiesClock:
        """Read the kernel's clocks now."""
        now_ns, now_jiffies = _read_timer_list()
        return cls(hz, now_ns, now_jiffies)

    def to_monotonic_ns(self, jiffies: int) -> int:
        """CLOCK_MONOTONIC ns of a jiffies value (to within one tick)."""
        return self.now_ns - (self.now_jiffies - jiffies) * 1_000_000_000 // self.hz
