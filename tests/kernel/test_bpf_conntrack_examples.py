"""The stateful examples' packet files through the BPF slow path: every hook of
an example loaded on one private table, each line at its time on the test
clock, the kernel's state, verdict, rule and commit equal to the reference
tracker's (``flowc eval --stateful``) line by line, and the same table at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from backends.bpf.conntrack import CtSpec
from compiler.packet_syntax import read_stateful_lines
from ir.conntrack import NS_PER_S, CtConfig
from tests.kernel.ct_replay import load_host, replay

pytestmark = pytest.mark.kernel

STATEFUL = sorted((Path(__file__).resolve().parents[2] / "examples" / "stateful").glob("*.fw"))


@pytest.mark.parametrize("path", STATEFUL, ids=lambda p: p.stem)
def test_example_packets_through_the_kernel_match_the_reference(path: Path, run_netns: str) -> None:
    spec = CtSpec(CtConfig(), pin=f"/sys/fs/bpf/flowc-examples-{os.getpid()}/ct")
    host = load_host(path.read_text(), spec)
    try:
        packets = path.with_suffix(".packets")
        lines, problems = read_stateful_lines(
            packets.read_text(), str(packets), tuple(host.policies)
        )
        assert not problems
        states = replay(
            host, run_netns, [(line.time_ns / NS_PER_S, line.hook, line.packet) for line in lines]
        )
        assert "established" in states
    finally:
        for slow_path in host.paths.values():
            slow_path.close()
        shutil.rmtree(os.path.dirname(spec.pin), ignore_errors=True)
