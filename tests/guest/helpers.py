"""Helpers the guest-tier tests share: a pace measured in the guest, bounded
waits scaled by it, the agent as a child process, and canonical device dumps.

The guest is an emulated CPU on a machine other work shares, so no wait here
is a fixed number of seconds. :func:`calibrate` (run once per guest session by
the ``pace`` fixture in conftest.py) times one bcc compile of a slow path
like the agent's; every wait is then either a number of such compiles or a
number of seconds an unloaded guest needs, scaled by how much slower than
that this guest measured.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.bpf.emit import lower
from backends.flower.rules import ROLE_CACHE, Cookie
from backends.flower.text import parse_tc_json
from compiler.frontend import compile_file, compile_source
from ir.model import MIRROR, REDIRECT, Policy
from runtime.bpf_loader import SlowPath, device_ifindex
from runtime.flower_installer import FlowerInstaller
from runtime.flower_netlink import InstalledFilter
from tests.netns import Pair, inside

REPO = Path(__file__).resolve().parent.parent.parent
METRICS = "127.0.0.1:9468"
# The calibration compile (the boot's first) on a guest the waits below were
# written for. Waits written in unloaded seconds scale by compile_s / this. It
# was 15 s while the C included the kernel's internal headers, when calibration
# measured 81-176 s; with uapi headers only the same guests calibrate at 41-79 s
# (the boot's first compile, cold page cache; later ones 25 s), while the work
# the waits cover (Python start-up, imports, installs, traffic) is as slow as it
# was. So the nominal moved with the compile (15 s x 41/81), keeping the factor
# the waits were tuned with.
NOMINAL_COMPILE_S = 7.5
# The slow path :func:`calibrate` compiles: the agent tests' policy shape.
CALIBRATION_POLICY = """\
policy calibrate ingress on lo {
    default drop
    allow icmp
    allow udp dport 5000
    allow udp dport 5001
    drop udp dport 6000
}
"""


@dataclass(frozen=True)
class Pace:
    """How fast this guest runs, from one bcc compile timed in it.

    Attributes:
        compile_s: seconds one bcc compile and load of the calibration slow path took.
    """

    compile_s: float

    @property
    def factor(self) -> float:
        """How many times slower than an unloaded guest (never below 1)."""
        return max(1.0, self.compile_s / NOMINAL_COMPILE_S)

    def scaled(self, seconds: float) -> float:
        """``seconds`` an unloaded guest needs, on this guest."""
        return seconds * self.factor

    def compiles(self, count: int, *, slack_s: float = 60.0) -> float:
        """A bound for work that does ``count`` bcc compiles plus ``slack_s``
        unloaded seconds of other work (process start, imports, installs)."""
        return 3 * count * self.compile_s + self.scaled(slack_s)


_pace: Pace | None = None


def calibrate() -> Pace:
    """Time one bcc compile and load in this guest (once per process) and
    record it in FLOWC_GUEST_OUT/calibration.json for the runner."""
    global _pace
    if _pace is None:
        from runtime.bpf_loader import SlowPath

        result = compile_source(CALIBRATION_POLICY, "calibrate.fw")
        assert result.program is not None, result.diagnostics
        program = lower(result.program.policies[0])
        began = time.monotonic()
        slow_path = SlowPath(program, events=True, dedup_ns=0)
        _pace = Pace(time.monotonic() - began)
        slow_path.close()
        out = os.environ.get("FLOWC_GUEST_OUT")
        if out:
            Path(out, "calibration.json").write_text(json.dumps({"compile_s": _pace.compile_s}))
    return _pace


def pace() -> Pace:
    """The pace :func:`calibrate` measured (calibrating now if nothing has)."""
    return _pace or calibrate()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; ``timeout`` is in
    unloaded-guest seconds (scaled by the measured pace)."""
    return wait_until(what, check, pace().scaled(timeout))


def wait_until(what: str, check: Callable[[], Any], seconds: float) -> Any:
    """Poll ``check`` until it returns something truthy, for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} ({seconds:.0f} s, pace {pace().compile_s:.1f} s)")


def max_idle() -> float:
    """The agent's --max-idle in these tests: short, so idle eviction is seen in
    a test's time, but long enough (10 unloaded seconds, scaled) that a rule
    outlives the steps between its flow's last packet and a check on it."""
    return pace().scaled(10)


class AgentProcess:
    """``flowc agent`` running in namespace B, its JSON log collected.

    Starting waits for the agent's ``started`` log line for one bcc compile's
    worth of time (measured), not a fixed number of seconds.
    """

    def __init__(self, pair: Pair, policy: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        self.log = log.open("w")
        cmd = [
            "ip", "netns", "exec", pair.ns_b,
            sys.executable, "-m", "cli.main", "agent",
            "--policy", str(policy), "--no-proactive", "--max-idle", f"{max_idle():.1f}",
            "--poll-interval", "0.5", "--metrics-addr", METRICS, *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=self.log, stdout=subprocess.DEVNULL)
        wait_until(
            "the agent to start",
            lambda: self.events("started") or self.dead(),
            pace().compiles(1),
        )
        assert self.proc.poll() is None, self.log_path.read_text()

    def dead(self) -> bool:
        return self.proc.poll() is not None

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out

    def signal(self, signum: int) -> int | None:
        self.proc.send_signal(signum)
        if signum in (signal.SIGTERM, signal.SIGKILL):
            code = self.proc.wait(timeout=pace().compiles(0))
            self.log.close()
            return code
        return None


def refill(slow_path: SlowPath, netns: str) -> SlowPath:
    """A program of the tier's batch (conftest.batch) refilled in ``netns``,
    where its redirect and mirror targets resolve, with its counters restarted."""
    with inside(netns):
        slow_path.ifindex_of = device_ifindex
        slow_path.fill(generation=1, events=False, dedup_ns=slow_path.dedup_ns)
    return slow_path


def policies(path: Path) -> tuple[Policy, ...]:
    """The policies of a DSL file (which must compile)."""
    result = compile_file(str(path))
    assert result.program is not None
    return result.program.policies


def target_devices(policy: Policy) -> set[str]:
    """The devices the policy redirects or mirrors to (the test must create them)."""
    return {
        r.action.device
        for r in policy.rules
        if r.action.kind in (REDIRECT, MIRROR) and r.action.device is not None
    }


def send_frames(pair: Pair, frames: list[bytes]) -> None:
    with inside(pair.ns_a):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((pair.dev_a, 0))
    try:
        for data in frames:
            s.send(data)
    finally:
        s.close()


def device_filters(pair: Pair) -> list[InstalledFilter]:
    """The flower filters on B's ingress hook, read with pyroute2."""
    with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
        return inst.dump()


def tc_json(ns: str, *args: str) -> Any:
    """``tc -j ARGS`` run in namespace ``ns``, parsed (``[]`` for no output)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "-j", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        pytest.fail(f"tc -j {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout) if proc.stdout.strip() else []


# What a dump says that is about one run rather than about the device's rules:
# counters and times, kernel-assigned action indexes and reference counts, and
# loaded programs' ids (a program's tag, a hash of its instructions, stays).
VOLATILE_KEYS = frozenset(
    {"stats", "index", "ref", "bind", "installed", "last_used", "first_used", "expires", "id"}
)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _cookie(entry: dict[str, Any]) -> Cookie | None:
    """The flowc cookie of a flower filter's dump entry (None for anything else)."""
    if entry.get("kind") != "flower" or "options" not in entry:
        return None
    (parsed,) = parse_tc_json([entry])
    return parsed.cookie


def canonical_dump(
    ns: str, dev: str, direction: str = "ingress", *, cache_keys: bool = True
) -> dict[str, Any]:
    """The hook's filters (every chain, every classifier) and chains, as
    ``tc -j`` prints them, with what is about one run taken out.

    Canonical means: counters, times, action indexes, reference counts and
    program ids dropped (see VOLATILE_KEYS); entries sorted; a flowc cookie
    shown decoded, without the generation that installed the filter (a
    policy update may put a filter up again under the new generation). A
    flowc cache rule also loses its handle and the cookie's tag (the handle
    again), and is named by the IR rule its cookie names: installed again
    after a policy change it gets the next handle, while its match, action,
    priority and rule are what the policy decides.
    ``cache_keys=False`` leaves a cache rule's flower keys out as well.
    """
    entries = []
    for entry in tc_json(ns, "filter", "show", "dev", dev, direction):
        cookie = _cookie(entry)
        clean = _scrub(entry)
        if cookie is not None:
            cache = cookie.role == ROLE_CACHE
            for action in clean["options"].get("actions", []):
                if "cookie" in action:
                    action["cookie"] = {
                        "role": cookie.role,
                        "rule": cookie.rule,
                        "tag": None if cache else cookie.tag,
                    }
            if cache:
                clean.pop("handle", None)
                clean["options"].pop("handle", None)
                if not cache_keys:
                    clean["options"].pop("keys", None)
                clean["cache_rule"] = cookie.rule
        entries.append(clean)
    chains = _scrub(tc_json(ns, "chain", "show", "dev", dev, direction))
    return {
        "filters": sorted(entries, key=lambda e: json.dumps(e, sort_keys=True)),
        "chains": sorted(chains, key=lambda e: json.dumps(e, sort_keys=True)),
    }


def process_programs(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds open (its fds' fdinfo
    ``prog_id``): what a process leaks when it loses track of a program, and,
    unlike a walk of every program in the kernel, blind to what other tests
    load meanwhile
    (the tier runs on two workers)."""
    ids = set()
    fd_dir = Path(f"/proc/{pid}/fdinfo")
    for info in fd_dir.iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue  # closed since the listing
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


EDGE_POLICY = """\
policy edge ingress on {dev} {{
    default drop
    allow icmp
    allow udp dport 5000
    allow udp dport 5001
    drop udp dport 6000
}}
"""
"""The agent's guest-tier policy (``.format(dev=...)`` names the hook's device)."""


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(ns: str, addr: str, count: int = 1, *, ident: int | None = None) -> bool:
    """ICMP echo from namespace ``ns`` (a raw socket; the machines have no ping
    binary, and each process spawn costs seconds in the emulated guest): True
    when every one of ``count`` requests (echo identifier ``ident``, else one
    from this process's id) got its reply within a paced 2 s."""
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    if ident is None:
        ident = os.getpid() & 0xFFFF
    try:
        for seq in range(count):
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"flowc-guest"
            request = head[:2] + struct.pack("!H", _checksum(head)) + head[4:]
            s.sendto(request, (addr, 0))
            deadline = time.monotonic() + pace().scaled(2)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                s.settimeout(left)
                try:
                    data, (source, _) = s.recvfrom(2048)
                except TimeoutError:
                    return False
                icmp = data[(data[0] & 0x0F) * 4 :]
                kind, _code, _sum, got_id, got_seq = struct.unpack_from("!BBHHH", icmp)
                if source == addr and kind == 0 and (got_id, got_seq) == (ident, seq):
                    break
        return True
    finally:
        s.close()
