"""netkit on a kernel built without it (the development machines' kernel): a
clear error naming the kernel feature, exit status 3, never a traceback.

On a kernel that has netkit these skip; the guest tier (bookworm-backports'
6.12) runs netkit itself (tests/guest/test_netkit_guest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import bpf_syscall, netkit, tc_attach
from tests.netns import inside

pytestmark = pytest.mark.kernel

if bpf_syscall.netkit_supported():
    pytest.skip("this kernel has netkit (the guest tier tests it)", allow_module_level=True)

FLOWC = [sys.executable, "-m", "cli.main"]
POLICY = "policy p ingress on fknv0 {\n default drop\n allow udp dport 53\n}\n"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fcnk{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    run = ["ip", "-n", name]
    subprocess.run(
        [*run, "link", "add", "fknv0", "type", "veth", "peer", "name", "fknv1"], check=True
    )
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_load_mode_netkit_names_the_missing_feature(netns: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.fw"
    policy.write_text(POLICY)
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", *FLOWC, "load", str(policy), "--mode", "netkit"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "CONFIG_NETKIT" in proc.stderr and "Linux 6.7+" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_attach_raises_hook_unavailable(netns: str) -> None:
    """The attach path itself (not only the pre-compile check) says the same."""
    with inside(netns):
        with pytest.raises(tc_attach.HookUnavailable, match="CONFIG_NETKIT"):
            tc_attach.check_hook("fknv0", "netkit")
        prog = bpf_syscall.probe_program()
        try:
            with pytest.raises(tc_attach.HookUnavailable, match="CONFIG_NETKIT"):
                tc_attach.attach(prog, "fknv0", "ingress", mode="netkit")
        finally:
            os.close(prog)
        assert not tc_attach.pin_path("fknv0", "ingress", "netkit").exists()


def test_creating_a_pair_reports_the_kernels_words(netns: str) -> None:
    with inside(netns), pytest.raises(netkit.NetkitError, match="Unknown device type"):
        netkit.create_pair("fknk0", "fknk1")


def test_agent_attach_netkit_names_the_missing_feature(netns: str, tmp_path: Path) -> None:
    """The agent refuses before compiling, as ``flowc load`` does, and leaves nothing."""
    policy = tmp_path / "p.fw"
    policy.write_text(POLICY)
    proc = subprocess.run(
        [
            "nsenter", f"--net=/run/netns/{netns}", *FLOWC, "agent", "--policy", str(policy),
            "--attach", "netkit", "--metrics-addr", "none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "CONFIG_NETKIT" in proc.stderr and "Linux 6.7+" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not tc_attach.pin_path("fknv0", "ingress", "netkit").exists()
