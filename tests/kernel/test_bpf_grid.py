"""The summary grid in the real kernel: generated programs with the grid built
(coarse groups included) decide what the IR interpreter decides, on random
ClassBench-like policies and on packets inside and outside their rules."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.bpf.emit import lower
from compiler.frontend import compile_source
from ir.model import Policy
from ir.packet import Packet
from runtime.bpf_loader import SlowPath
from runtime.testrun import test_run as kernel_run
from tests.kernel.conftest import inside
from verify.bpf import expected
from verify.frames import frame

pytestmark = pytest.mark.kernel

POOL = [0x0A000000, 0x0A010000, 0xC0A80000]


@st.composite
def prefix_policies(draw: st.DrawFn) -> Policy:
    """Up to 400 rules of nested IPv4 prefixes, port ranges and protocols: more
    elementary intervals than some policies have groups, so groups coarsen."""
    lines = []
    for _ in range(draw(st.integers(2, 400))):
        words = [draw(st.sampled_from(["allow", "drop", "mark 7"]))]
        proto = draw(st.sampled_from([None, "tcp", "udp"]))
        if proto:
            words.append(proto)
        for word in ("from", "to"):
            plen = draw(st.sampled_from([0, 8, 16, 24, 28, 32]))
            if plen:
                addr = draw(st.sampled_from(POOL)) | draw(st.integers(0, 0xFFFF))
                words.append(f"{word} {ipaddress.IPv4Network((addr, plen), strict=False)}")
        if proto and draw(st.booleans()):
            lo = draw(st.integers(0, 65535))
            words.append(f"dport {lo}-{min(65535, lo + draw(st.integers(0, 3000)))}")
        lines.append("    " + " ".join(words))
    body = "\n".join(lines)
    default = draw(st.sampled_from(["allow", "drop"]))
    result = compile_source(
        f"policy g ingress on eth0 {{\n default {default}\n{body}\n}}\n", "g.fw"
    )
    assert result.program is not None
    return result.program.policies[0]


def _probes(policy: Policy, rng: random.Random, count: int) -> list[Packet]:
    out = []
    for _ in range(count):
        rule = policy.rules[rng.randrange(len(policy.rules))]
        constraints = dict(rule.match.constraints)
        fields = {"family": 4, "ip_proto": rng.choice([6, 17]), "sport": rng.randrange(65536)}
        for name, width in (("ip4_src", 32), ("ip4_dst", 32), ("dport", 16)):
            values = constraints.get(name)
            if values is None or rng.random() < 0.15:
                fields[name] = rng.randrange(1 << width)
            else:
                lo, hi = values.intervals[rng.randrange(len(values.intervals))]
                fields[name] = rng.randint(lo, hi)
        out.append(Packet.make(**fields))
    return out


@settings(max_examples=12, deadline=None)
@given(policy=prefix_policies(), rng=st.randoms(use_true_random=False))
def test_grid_programs_agree_with_the_interpreter(
    run_netns: str, policy: Policy, rng: random.Random
) -> None:
    program = lower(policy, grid=True)
    slow_path = SlowPath(program, ifindex_of=lambda _dev: 1, memo=False)
    try:
        for packet in _probes(policy, rng, 80):
            with inside(run_netns):
                got = kernel_run(slow_path.fd, frame(packet))
            assert (got.retval, got.rule, got.mark) == expected(policy, packet), packet
    finally:
        slow_path.close()
