"""Run the guest-kernel tier: boot Debian's kernel once with virtme-ng, run the
``guest``-marked tests inside, and return their exit status.

This machine's kernel has no cls_flower; Debian's linux-image-amd64 has it as
a module. virtme-ng boots that kernel under qemu over the host's file system
(read-only), so the guest sees this checkout and its .venv; results come back
through one writable directory. KVM is used when it works, else qemu's
emulation (slower, same results).

Usage: python -m tests.guest_runner [PYTEST ARGS...]
Exit status: pytest's inside the guest; 4 when the guest could not run them;
0 with a SKIP line when no Debian kernel or virtme-ng is installed and
FLOWC_REQUIRE_GUEST is not set.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
BOOT_TIMEOUT_S = 1500  # the whole guest run, emulated CPU included
EXIT_NO_GUEST = 4


def debian_kernel() -> str | None:
    """The newest Debian -amd64 kernel image in /boot, if any."""
    images = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    return images[-1] if images else None


def vng_command(kernel: str, rwdir: str, inner: str, *, kvm: bool) -> list[str]:
    """The virtme-ng command line running ``inner`` (a shell command) in the guest."""
    vng = shutil.which("vng", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}") or "vng"
    cmd = [vng, "--run", kernel, "--cpus", "2", "--memory", "2G", "--rwdir", rwdir]
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
    with tempfile.TemporaryDirectory(prefix="flowc-guest-") as rwdir:
        status_file = Path(rwdir) / "status"
        log_file = Path(rwdir) / "pytest.log"
        pytest_args = " ".join(shlex.quote(a) for a in argv) or "tests/guest"
        inner = (
            f"cd {shlex.quote(str(REPO))} && echo booted > {rwdir}/booted && "
            f"PYTHONDONTWRITEBYTECODE=1 FLOWC_IN_GUEST=1 FLOWC_GUEST_OUT={rwdir} "
            f"HYPOTHESIS_PROFILE=dev "
            f"{VENV_BIN}/python -m pytest -m guest -p no:cacheprovider -q {pytest_args} "
            f"> {log_file} 2>&1; echo $? > {status_file}"
        )
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        attempts = [True, False] if os.access("/dev/kvm", os.R_OK | os.W_OK) else [False]
        for kvm in attempts:
            try:
                proc = subprocess.run(
                    vng_command(kernel, rwdir, inner, kvm=kvm),
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BOOT_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                print(f"guest tier: the guest ran past {BOOT_TIMEOUT_S} s", file=sys.stderr)
                if log_file.exists():
                    sys.stdout.write(log_file.read_text())
                return EXIT_NO_GUEST
            if (Path(rwdir) / "booted").exists():
                break
            print(
                f"guest tier: the guest did not boot ({'kvm' if kvm else 'emulated'}"
                f"{', trying emulation' if kvm else ''}): {proc.stderr.strip()[-300:]}",
                file=sys.stderr,
            )
        else:
            return EXIT_NO_GUEST
        if log_file.exists():
            sys.stdout.write(log_file.read_text())
        if not status_file.exists():
            print("guest tier: pytest did not finish inside the guest", file=sys.stderr)
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return EXIT_NO_GUEST
        return int(status_file.read_text().strip() or EXIT_NO_GUEST)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
