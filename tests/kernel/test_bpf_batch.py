"""Programs compiled together (runtime.bpf_loader.compile_together) are the
programs compiled alone: the same instructions, each referring to its own maps
by the same names, and each loaded program deciding with its own tables."""

from __future__ import annotations

import re
import struct

import pytest

from backends.bpf.emit import lower
from backends.targets import NETKIT, TC
from compiler.frontend import compile_source
from ir.analysis import region_witnesses
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from runtime.bpf_loader import SlowPath, compile_together
from runtime.testrun import test_run as kernel_run
from tests.fixtures import EXAMPLE_PATHS
from tests.guest.helpers import policies
from tests.kernel.conftest import inside
from verify.bpf import on_the_wire
from verify.frames import frame

pytestmark = pytest.mark.kernel

LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1
MAP_DECL = r'^BPF_\w+\((?:"[^"]*",\s*[^,]+,\s*[^,]+,\s*)?(\w+)'
SMALL = """
policy small ingress on lo {
    default drop
    allow udp dport 5000
    drop tcp dport 22
}
"""


def _example(stem: str) -> Policy:
    (path,) = [p for p in EXAMPLE_PATHS if p.stem == stem]
    return policies(path)[0]


def _small() -> Policy:
    result = compile_source(SMALL, "small.fw")
    assert result.program is not None, result.diagnostics
    return result.program.policies[0]


def _maps(slow_path: SlowPath) -> list[str]:
    """The names of the maps the program's C declares (BPF_ARRAY(name, ...),
    BPF_TABLE("type", key, leaf, name, ...))."""
    declared = re.findall(MAP_DECL, slow_path.program.source, re.M)
    assert declared
    return declared


def _instructions(slow_path: SlowPath) -> list[tuple[int, int, int, int, object]]:
    """The entry function's instructions, a map reference shown as the map's
    name (without the batch prefix) instead of this process's fd for it."""
    from bcc.libbcc import lib  # the fd alone: bcc cannot wrap every map (the memo's)

    bpf = slow_path.bpf
    names = {
        lib.bpf_table_fd(bpf.module, (slow_path.prefix + name).encode()): name
        for name in _maps(slow_path)
    }
    code = bpf.dump_func((slow_path.prefix + "flowc_tc").encode())
    out: list[tuple[int, int, int, int, object]] = []
    for off in range(0, len(code), 8):
        opcode, regs, offset, imm = struct.unpack_from("<BBhi", code, off)
        if out and out[-1][0] == LD_IMM64 and out[-1][1] >> 4 == BPF_PSEUDO_MAP_FD:
            imm = 0  # the second half of a map fd load: zero
        operand: object = imm
        if opcode == LD_IMM64 and regs >> 4 == BPF_PSEUDO_MAP_FD:
            operand = names[imm]
        out.append((opcode, regs, offset, 0, operand))
    return out


def test_a_batch_compiles_each_program_as_alone(run_netns: str) -> None:
    """IPv4 and IPv6 tries, VLAN fields, a memo and the netkit target side by
    side: every program's instructions equal its solo compile's, and each
    decides its own policy's witnesses (so no map is another program's)."""
    programs = [
        lower(_example("dns"), target=NETKIT),
        lower(_example("qos-vlan")),
        lower(_small(), memo=True, target=TC),
    ]
    together = compile_together(programs, ifindex_of=lambda _device: 1)
    try:
        for program, batched in zip(programs, together, strict=True):
            alone = SlowPath(program, ifindex_of=lambda _device: 1)
            try:
                assert _instructions(batched) == _instructions(alone), program.policy.name
            finally:
                alone.close()
        # Each loaded program counts its own policy's rules for its witnesses.
        for program, batched in zip(programs, together, strict=True):
            policy = program.policy
            wanted: dict[int, int] = {}
            with inside(run_netns):
                for point, _ in region_witnesses(policy)[:20]:
                    packet = Packet(point)
                    if not on_the_wire(packet):
                        continue
                    kernel_run(batched.fd, frame(packet))
                    rule = evaluate(policy, packet).rule.priority
                    wanted[rule] = wanted.get(rule, 0) + 1
            got = {rule: n for rule, (n, _b, _t) in enumerate(batched.rule_stats()) if n}
            assert got == wanted, policy.name
    finally:
        for slow_path in together:
            slow_path.close()
