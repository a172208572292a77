"""flowc load / unload from the command line, inside a namespace the test creates."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

FLOWC = [str(Path(sys.executable).with_name("flowc"))]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fccli{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    run = ["ip", "-n", name]
    subprocess.run(
        [*run, "link", "add", "fcv0", "type", "veth", "peer", "name", "fcv1"], check=True
    )
    subprocess.run([*run, "link", "set", "fcv0", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def flowc(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *FLOWC, *args], capture_output=True, text=True, timeout=300
    )


def tc_filters(netns: str) -> str:
    """What iproute2's tc shows on fcv0's ingress."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "tc", "filter", "show", "dev", "fcv0", "ingress"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_load_show_unload(netns: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.fw"
    policy.write_text(
        "endpoint peer { ip 10.9.0.2; dev fcv1 }\n"
        "policy p ingress on fcv0 {\n default drop\n allow udp dport 53\n mirror tcp -> peer\n}\n"
    )
    loaded = flowc(netns, "load", str(policy))
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded policy p (3 rules, bitvec) on ingress of fcv0 (tc)" in loaded.stdout
    shown = tc_filters(netns)
    assert "flowc" in shown and "direct-action" in shown
    # Loading again replaces in place: still exactly one filter.
    assert flowc(netns, "load", str(policy)).returncode == 0
    assert tc_filters(netns).count("direct-action") == 1
    unloaded = flowc(netns, "unload", "--dev", "fcv0", "--direction", "ingress")
    assert unloaded.returncode == 0, unloaded.stderr
    again = flowc(netns, "unload", "--dev", "fcv0", "--direction", "ingress")
    assert again.returncode == 1 and "nothing attached" in again.stderr


def test_load_errors_are_clear(netns: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.fw"
    policy.write_text(
        "endpoint gone { ip 10.9.0.2; dev nosuchdev }\n"
        "policy p ingress on fcv0 {\n default drop\n redirect tcp -> gone\n}\n"
    )
    result = flowc(netns, "load", str(policy))
    assert result.returncode == 1
    assert "device 'nosuchdev'" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    policy.write_text("policy p ingress on nodev0 {\n default drop\n}\n")
    result = flowc(netns, "load", str(policy))
    assert result.returncode == 1 and "device 'nodev0' does not exist" in result.stderr
