"""Example lists and small helpers the test modules share (no test module
imports another; tests/test_layering.py checks)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from backends.flower.rules import ROLE_CACHE, FlowerFilter
from cli.main import main
from compiler.frontend import compile_file, compile_source
from ir.model import Policy
from ir.packet import Packet
from runtime.nic_model import NicModel
from tests.conftest import EXAMPLES

__all__ = [
    "AGENT_POLICY",
    "EXAMPLES",
    "EXAMPLE_PATHS",
    "FakeClock",
    "compiled",
    "example_policies",
    "run",
    "udp",
]

# Every example policy: the single-file ones and the multi-file example's entry point.
EXAMPLE_PATHS = sorted([*EXAMPLES.glob("*.fw"), EXAMPLES / "multi-file" / "main.fw"])


@functools.cache
def example_policies(path: Path) -> tuple[Policy, ...]:
    result = compile_file(str(path))
    assert result.program is not None
    return result.program.policies


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class FakeClock:
    """A clock that moves only when a test sets ``now`` (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


AGENT_POLICY = """
policy t ingress on lo {
    default drop
    allow udp dport 5000
    allow udp dport 5001
    drop udp dport 6000
    allow tcp from 10.1.0.0/16 dport 80
}
"""
"""The agent tests' policy: two allowed UDP ports, a dropped one, a TCP rule, a default."""


def compiled(text: str, path: str = "agent.fw") -> Policy:
    """The first policy of DSL ``text`` (which must compile)."""
    result = compile_source(text, path)
    assert result.program is not None, result.diagnostics
    return result.program.policies[0]


def udp(i: int, dport: int) -> Packet:
    """Flow ``i`` of the agent tests: UDP from 10.0.0.i:1024+i to 10.99.0.1:dport."""
    return Packet.make(
        family=4, ip_proto=17, ip4_src=0x0A000000 + i, ip4_dst=0x0A630001, sport=1024 + i,
        dport=dport,
    )  # fmt: skip


def cache_filters(model: NicModel) -> list[FlowerFilter]:
    """The cache rules (cookie role ``cache``) installed in ``model``."""
    return [
        i.filter
        for i in model.dump()
        if i.filter.cookie is not None and i.filter.cookie.role == ROLE_CACHE
    ]
