"""The BPF slow path treats every frame as FRAMES.md (the README's table of
frames the IR does not describe) decides, in the real kernel.

For generated frames (tests/frame_strategies.py: fragments, truncations, IPv4
options, ihl and version nibbles, IPv6 extension header chains, VLAN tag
stacks, odd UDP lengths and TCP data offsets, other ethertypes) and for named
frames of every row of the table, BPF_PROG_TEST_RUN's verdict, the deciding
rule (skb->cb[0]), the mark and the status counter that moved must equal
``evaluate_frame(policy, parse_frame(frame))``, on policies with port rules,
``frag`` rules and defaults both ways.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from backends.bpf import abi
from compiler.packet_syntax import parse_packet
from ir.interp import FrameVerdict, Unclassified, evaluate_frame
from ir.model import MARK, Policy
from runtime.testrun import TestRunError
from runtime.testrun import test_run as kernel_run
from tests.fixtures import EXAMPLES, compiled, example_policies
from tests.frame_strategies import DENY_POLICY, FRAG_POLICY, FrameCase, odd_frames, row_cases
from tests.kernel.conftest import Loaded, inside
from verify.bpf import retval
from verify.frames import ETH_P_IP, ETH_P_IPV6, parse_frame

pytestmark = pytest.mark.kernel


def policies() -> list[Policy]:
    """The policies every frame runs through."""
    (uplink,) = example_policies(EXAMPLES / "uplink.fw")
    (dual,) = example_policies(EXAMPLES / "dual-stack.fw")
    return [uplink, dual, compiled(FRAG_POLICY, "frags.fw"), compiled(DENY_POLICY, "strict.fw")]


POLICIES = policies()
TCP4 = parse_packet("tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags 0x02")
TCP6 = parse_packet("tcp [fd00:3::7]:40000 -> [fd00::10]:443 flags 0x10")
CASES = row_cases(TCP4, TCP6, tagged_l3=True)
COUNTED = ("not_ip", "malformed", "no_rule", "malformed_l2", "malformed_l3", "malformed_l4")


def refused(data: bytes) -> bool:
    """Frames BPF_PROG_TEST_RUN refuses before the program runs: shorter than an
    Ethernet header, or untagged IP shorter than its IP header (the kernel reads
    skb->protocol from the ethertype and pulls the IP header)."""
    if len(data) < 14:
        return True
    ethertype = int.from_bytes(data[12:14], "big")
    return (ethertype == ETH_P_IP and len(data) < 34) or (
        ethertype == ETH_P_IPV6 and len(data) < 54
    )


def moved_counters(verdict: FrameVerdict) -> dict[str, int]:
    """The status counters one frame moves, by what flowc decided."""
    if verdict.unclassified is Unclassified.NOT_IP:
        return {"not_ip": 1}
    if verdict.unclassified is not None:
        return {"malformed": 1, verdict.unclassified.value: 1}
    return {}


def check_frame(loaded: Loaded, netns: str, policy: Policy, data: bytes) -> None:
    """One frame through the loaded program of ``policy``: verdict, rule, mark and
    status counters as evaluate_frame says."""
    slow_path = loaded.get(policy)
    verdict = evaluate_frame(policy, parse_frame(data))
    before = slow_path.status()
    with inside(netns):
        try:
            got = kernel_run(slow_path.fd, data)
        except TestRunError:
            assert refused(data), data.hex()
            return
    assert not refused(data), data.hex()
    after = slow_path.status()
    moved = {name: after[name] - before[name] for name in COUNTED if after[name] != before[name]}
    mark = verdict.action.mark if verdict.action.kind == MARK else 0
    rule = verdict.rule.priority if verdict.rule is not None else None
    want = (retval(verdict.action.kind), rule, mark or 0, moved_counters(verdict))
    assert (got.retval, got.rule, got.mark, moved) == want, data.hex()


def test_status_names_follow_the_unclassified_layers() -> None:
    for member in Unclassified:
        if member is not Unclassified.NOT_IP:
            assert member.value in abi.STATUS_NAMES


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_table_row(loaded: Loaded, run_netns: str, case: FrameCase, policy: Policy) -> None:
    check_frame(loaded, run_netns, policy, case.data)


def test_first_fragment_of_the_issue_gets_the_policy_verdict(
    loaded: Loaded, run_netns: str
) -> None:
    (uplink,) = example_policies(EXAMPLES / "uplink.fw")
    first = parse_packet("tcp 10.0.3.7:40000 -> 10.0.1.10:443 frag first")
    (case,) = [c for c in row_cases(first, TCP6) if c.id == "ipv4_first_fragment:tcp"]
    verdict = evaluate_frame(uplink, parse_frame(case.data))
    assert verdict.action.kind == "redirect" and verdict.action.target == "web"
    check_frame(loaded, run_netns, uplink, case.data)


@settings(max_examples=400, deadline=None)
@given(data=odd_frames())
def test_generated_frames(loaded: Loaded, run_netns: str, data: bytes) -> None:
    for policy in POLICIES:
        check_frame(loaded, run_netns, policy, data)
