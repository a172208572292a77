"""Run the guest-kernel tier: boot a Debian kernel once with virtme-ng, run the
``guest``-marked tests inside, and return their exit status.

This machine's kernel has no cls_flower and no netkit; bookworm-backports'
6.12 (GUEST_KERNEL_SERIES) has cls_flower as a module and netkit built in.
virtme-ng boots that kernel under qemu over the host's file system (read-only),
so the guest sees this checkout and its .venv; results come back through one
writable directory. KVM is used when a short probe boot shows it works
(:func:`kvm_usable`), else qemu's emulation (slower, same results).

Usage: python -m tests.guest_runner [PYTEST ARGS...]
Exit status: pytest's inside the guest; 4 when the guest could not run them;
0 with a SKIP line when no Debian kernel or virtme-ng is installed and
FLOWC_REQUIRE_GUEST is not set.

No limit here is a fixed number of seconds a loaded machine can exceed
(an emulated guest on a machine other work shares runs many times slower):

* boot: BOOT_S unloaded seconds, scaled by the host's load, re-read while
  waiting (the guest's vCPUs get a share of the cores the load leaves);
* after boot, the guest writes a heartbeat every second; a heartbeat older
  than HEARTBEAT_STALE_S (load-scaled) means the guest died or hung;
* the tests: before any timed wait, tests/guest/conftest.py times one bcc
  compile in the guest (tests.guest.helpers.calibrate) and writes it to
  calibration.json; the tests then get TEST_BUDGET_COMPILES such compiles.
"""

from __future__ import annotations

import glob
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The venv of the Python running this (the guest sees the host file system):
# a worktree without its own .venv runs with the checkout's venv it was given.
VENV_BIN = Path(sys.executable).parent
EXIT_NO_GUEST = 4
GUEST_CPUS = 2
# One pytest-xdist worker per guest CPU. Emulation runs each vCPU on a host
# thread of its own (qemu's multi-threaded TCG): two bcc compiles side by side
# in the guest took 102 s and 109 s where one alone took 117 s (measured), so
# the tier's wall time is about halved. Whole modules go to a worker
# (loadscope), longest first (tests/guest/conftest.py MODULE_ORDER).
GUEST_WORKERS = GUEST_CPUS
# Two workers, each with bcc's clang in it, beside the agents and CLI loads
# the tests start.
GUEST_MEMORY = "4G"
BOOT_S = 300  # an unloaded emulated boot takes 30-60 s
HEARTBEAT_STALE_S = 120  # a guest that cannot run `sleep 1` in this long is gone
# The tier's work in units of the calibration compile: 23 measured (1,837 s of
# tests after a 79 s calibration) and 35 on a run whose calibration took 41 s:
# since the C includes only uapi headers (a compile 7x faster in the guest), the
# tier is mostly Python start-up, imports and traffic, which do not scale with
# the compile, and the calibration varies with the host's page cache. The budget
# is over twice the larger: a watchdog that ends a livelocked guest (with the
# log so far), not a target; a dead guest is caught by its heartbeat first.
TEST_BUDGET_COMPILES = 100


def host_slowdown() -> float:
    """How many times slower than unloaded the guest's vCPUs run now, from the
    host's load average: the guest's threads share the cores with that load."""
    cores = os.cpu_count() or 1
    return max(1.0, (os.getloadavg()[0] + GUEST_CPUS) / max(cores, GUEST_CPUS))


class Watchdog:
    """Decides when a guest run has failed to make progress (see the module doc)."""

    def __init__(self, rwdir: Path) -> None:
        self.rwdir = rwdir
        self.started = time.monotonic()
        self.slowdown = host_slowdown()
        self.booted_at: float | None = None
        self.calibrated_at: float | None = None
        self.compile_s: float | None = None
        self.beat = ""
        self.beat_at: float | None = None

    def verdict(self) -> str | None:
        """None while the run is making progress, else why it is considered stuck."""
        now = time.monotonic()
        self.slowdown = max(self.slowdown, host_slowdown())
        if self.booted_at is None:
            if (self.rwdir / "booted").exists():
                self.booted_at = now
            elif now - self.started > BOOT_S * self.slowdown:
                return f"the guest did not boot in {now - self.started:.0f} s"
            return None
        heartbeat = self.rwdir / "heartbeat"
        beat = heartbeat.read_text() if heartbeat.exists() else ""
        if beat != self.beat:  # a counter the guest advances (its clock is emulated too)
            self.beat, self.beat_at = beat, now
        stale = HEARTBEAT_STALE_S * self.slowdown
        if now - (self.beat_at or self.booted_at) > stale:
            return f"the guest's heartbeat stopped for over {stale:.0f} s"
        calibration = self.rwdir / "calibration.json"
        if self.compile_s is None and calibration.exists():
            try:
                self.compile_s = float(json.loads(calibration.read_text())["compile_s"])
                self.calibrated_at = now
            except (ValueError, KeyError):
                pass  # being written
        if self.compile_s is not None and self.calibrated_at is not None:
            budget = TEST_BUDGET_COMPILES * self.compile_s
            if now - self.calibrated_at > budget:
                return (
                    f"the tests ran past {budget:.0f} s "
                    f"({TEST_BUDGET_COMPILES} bcc compiles of {self.compile_s:.1f} s)"
                )
        return None

    def summary(self) -> str:
        took = time.monotonic() - self.started
        compile_s = f"{self.compile_s:.1f} s" if self.compile_s is not None else "not measured"
        return (
            f"guest tier: {took:.0f} s in all; one bcc compile in the guest {compile_s}; "
            f"host slowdown {self.slowdown:.1f}"
        )


def kvm_failed(kvm: bool, rwdir: Path) -> bool:
    """A KVM attempt that never booted (emulation is tried next)."""
    return kvm and not (rwdir / "booted").exists()


KVM_PROBE_S = 30  # a KVM guest reaches its root-mount panic in a few seconds


def kvm_usable(kernel: str) -> bool:
    """Whether KVM runs this kernel: a probe boots it with KVM to its panic for
    want of a root device (qemu exits at once with -no-reboot). On these
    machines KVM stops on the kernel's first instructions ("KVM internal
    error", an MSR) and qemu then waits forever; without the probe the tier
    lost a whole boot limit (8 minutes, measured) before trying emulation."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False
    probe = [
        qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none",
        "-serial", "stdio", "-monitor", "none", "-no-reboot", "-kernel", kernel,
        "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip
    deadline = time.monotonic() + KVM_PROBE_S
    seen = ""
    with subprocess.Popen(probe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([proc.stdout], [], [], 0.5)
                if ready:  # what is there, never a wait for a whole line
                    seen += os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
                if "KVM internal error" in seen or "Kernel panic" in seen:
                    break
            if proc.poll() is not None:  # exited: what it wrote last is still in the pipe
                seen += proc.stdout.read().decode(errors="replace")
        finally:
            proc.kill()
    return "Kernel panic" in seen and "KVM internal error" not in seen


def run_guest(cmd: list[str], env: dict[str, str], rwdir: Path) -> tuple[int | None, str, str]:
    """Run the guest until it exits or the watchdog gives up (then kill it):
    its exit status (None when killed), stdout and stderr."""
    watchdog = Watchdog(rwdir)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # A session of its own: killing vng alone left its qemu running.
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
        )
        reason = None
        while proc.poll() is None:
            reason = watchdog.verdict()
            if reason is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(1)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    print(watchdog.summary(), file=sys.stderr)
    if reason is not None:
        print(f"guest tier: {reason}; stopped", file=sys.stderr)
        return None, stdout, stderr
    return proc.returncode, stdout, stderr


GUEST_KERNEL_SERIES = os.environ.get("FLOWC_GUEST_KERNEL_SERIES", "6.12.")
"""The guest tier boots bookworm-backports' 6.12 kernel (scripts/setup.sh installs
it): it has everything Debian 12's 6.1 has (cls_flower, act_ct, nf_flow_table as
modules) and netkit (CONFIG_NETKIT=y, Linux 6.7+), so one kernel serves the
whole tier. FLOWC_GUEST_KERNEL_SERIES=6.1. boots Debian 12's own kernel instead
(the netkit tests then fail: that kernel predates netkit)."""

BCC_HEADER_SERIES = "6.1."
"""The kernel headers bcc compiles against, in the guest as on the host. Debian
12's bcc 0.26 cannot compile against 6.12's headers (include/linux/bpf.h takes
``__alignof`` of struct bpf_wq, bpf_rb_root, bpf_rb_node and bpf_refcount, which
bcc's bundled uapi bpf.h does not define), measured in the guest. flowc's
programs use only stable uapi (struct __sk_buff, helpers by number), which a
newer kernel loads unchanged, so the guest sees the 6.1 headers where bcc looks
for the running kernel's (:func:`header_binds`)."""


def debian_kernel(series: str = GUEST_KERNEL_SERIES) -> str | None:
    """The newest Debian -amd64 kernel image of ``series`` in /boot, if any."""
    images = glob.glob(f"/boot/vmlinuz-{series}*-amd64")
    images.sort(key=lambda path: [int(n) for n in re.findall(r"\d+", path)])
    return images[-1] if images else None


def header_binds(kernel: str, series: str = BCC_HEADER_SERIES) -> str:
    """Shell commands for the guest that bind-mount Debian's ``series`` headers over
    the booted kernel's (the directories /lib/modules/RELEASE/{build,source} point
    at), so bcc finds headers it can compile; '' when the booted kernel is of that
    series already or no such headers are installed. The binds live in the
    guest's mount table only: the host's files are not touched."""
    release = Path(kernel).name.removeprefix("vmlinuz-")
    if release.startswith(series):
        return ""
    builds = sorted(
        glob.glob(f"/usr/src/linux-headers-{series}*-amd64"),
        key=lambda path: [int(n) for n in re.findall(r"\d+", path)],
    )
    if not builds:
        return ""
    build = builds[-1]
    sources = {"build": build, "source": build.removesuffix("-amd64") + "-common"}
    commands = []
    for name, headers in sources.items():
        link = Path("/lib/modules", release, name)
        if link.exists() and Path(headers).is_dir():
            target = shlex.quote(str(link.resolve()))
            commands.append(f"mount --bind {shlex.quote(headers)} {target}")
    return " && ".join(commands)


def vng_command(kernel: str, rwdir: str, inner: str, *, kvm: bool) -> list[str]:
    """The virtme-ng command line running ``inner`` (a shell command) in the guest."""
    vng = shutil.which("vng", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}") or "vng"
    cmd = [
        vng,
        "--run",
        kernel,
        "--cpus",
        str(GUEST_CPUS),
        "--memory",
        GUEST_MEMORY,
        "--rwdir",
        rwdir,
    ]
    if not kvm:
        cmd.append("--disable-kvm")
    return [*cmd, "--exec", inner]


def main(argv: list[str]) -> int:
    """Boot the guest once and run ``pytest -m guest tests/guest`` in it."""
    kernel = debian_kernel()
    vng = shutil.which("vng", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    if kernel is None or vng is None:
        missing = "Debian kernel image" if kernel is None else "virtme-ng (vng)"
        if os.environ.get("FLOWC_REQUIRE_GUEST"):
            print(f"guest tier: no {missing}; run scripts/setup.sh", file=sys.stderr)
            return EXIT_NO_GUEST
        print(f"guest tier: SKIP (no {missing}; run scripts/setup.sh)")
        return 0
    # The results directory lives in the checkout, not in /tmp: virtme-ng lays a
    # writable overlay over the guest's /tmp, and a directory mounted inside it
    # was seen missing in the guest (the script could not write its status).
    with tempfile.TemporaryDirectory(prefix=".guest-run-", dir=REPO) as rwdir:
        status_file = Path(rwdir) / "status"
        log_file = Path(rwdir) / "pytest.log"
        pytest_args = " ".join(shlex.quote(a) for a in argv) or "tests/guest"
        heartbeat = (
            f"( n=0; while :; do n=$((n+1)); echo $n > {rwdir}/heartbeat; sleep 1; done ) "
            "</dev/null >/dev/null 2>&1 & hb=$!"
        )
        binds = header_binds(kernel)
        inner = (
            f"cd {shlex.quote(str(REPO))} || exit 4; echo booted > {rwdir}/booted; {heartbeat}; "
            f"{binds + ' || exit 4; ' if binds else ''}"
            f"PYTHONDONTWRITEBYTECODE=1 FLOWC_IN_GUEST=1 FLOWC_GUEST_OUT={rwdir} "
            f"HYPOTHESIS_PROFILE=dev "
            f"{VENV_BIN}/python -m pytest -m guest -p no:cacheprovider -q "
            f"-n {GUEST_WORKERS} --dist loadscope --no-loadscope-reorder {pytest_args} "
            f"> {log_file} 2>&1; echo $? > {status_file}; kill $hb"
        )
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        # Emulation twice: once (after a host tier of many namespaces and
        # programs) vng exited within seconds without booting and without a
        # word, and the same command booted at once when run again.
        attempts = ([True] if kvm_usable(kernel) else []) + [False, False]
        for attempt, kvm in enumerate(attempts):
            code, stdout, stderr = run_guest(
                vng_command(kernel, rwdir, inner, kvm=kvm), env, Path(rwdir)
            )
            if code is None and not kvm_failed(kvm, Path(rwdir)):
                if log_file.exists():
                    sys.stdout.write(log_file.read_text())
                return EXIT_NO_GUEST
            if (Path(rwdir) / "booted").exists():
                break
            then = "" if attempt + 1 == len(attempts) else ", trying emulation again"
            if kvm:
                then = ", trying emulation"
            print(
                f"guest tier: the guest did not boot ({'kvm' if kvm else 'emulated'}{then}; "
                f"vng exit {code}): {stderr.strip()[-300:]} {stdout.strip()[-300:]}",
                file=sys.stderr,
            )
        else:
            return EXIT_NO_GUEST
        if log_file.exists():
            sys.stdout.write(log_file.read_text())
        if not status_file.exists():
            print("guest tier: pytest did not finish inside the guest", file=sys.stderr)
            print(stdout[-2000:], stderr[-2000:], file=sys.stderr)
            return EXIT_NO_GUEST
        return int(status_file.read_text().strip() or EXIT_NO_GUEST)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
