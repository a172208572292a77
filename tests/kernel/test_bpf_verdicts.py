"""The BPF slow path decides what the IR interpreter decides, in the real kernel.

Every example and generated policies up to 10,000 rules are compiled by bcc
and checked by the kernel verifier; verdicts come from BPF_PROG_TEST_RUN on a
witness packet of every region of the policy's partition, hypothesis packets
(IPv4/IPv6, with and without VLAN tags), ClassBench traces, and truncated or
random frames checked against the reference parser.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.targets import TC_ACT_OK, TC_ACT_SHOT
from bench.workloads import generate_rules, policy_text, trace_lines
from compiler import classbench
from compiler.frontend import compile_file, compile_source
from compiler.packet_syntax import parse_packet
from ir.analysis import region_witnesses
from ir.interp import Unclassified
from ir.model import Policy
from ir.packet import Packet
from runtime.testrun import TestRunError
from runtime.testrun import test_run as kernel_run
from tests.conftest import CORPORA, EXAMPLES
from tests.fixtures import EXAMPLE_PATHS
from tests.kernel.conftest import Loaded, inside
from tests.strategies import packets
from verify.bpf import expected, expected_many, on_the_wire
from verify.frames import frame, parse_frame

pytestmark = pytest.mark.kernel

STRATEGIES = ("bitvec", "bitvec-memo", "bitvec-grid", "chain")
MALFORMED = (Unclassified.MALFORMED_L2, Unclassified.MALFORMED_L3, Unclassified.MALFORMED_L4)


@functools.cache
def example_policies(path: Path) -> tuple[Policy, ...]:
    result = compile_file(str(path))
    assert result.program is not None
    return result.program.policies


def check(
    loaded: Loaded,
    netns: str,
    policy: Policy,
    packet: Packet,
    strategy: str,
    want: tuple[int, int, int] | None = None,
) -> None:
    """The kernel's verdict on ``packet`` is ``want``, the IR's (computed here
    when the caller has not judged it already, as expected_many does in bulk)."""
    if not on_the_wire(packet):
        return
    slow_path = loaded.get(policy, strategy)
    if want is None:
        want = expected(policy, packet)
    # Twice: with the memo, the first run walks and fills the packet's class
    # tuple, the second answers from it; both must be the IR's verdict.
    runs = 2 if slow_path.program.capacities.memo else 1
    for _ in range(runs):
        with inside(netns):
            got = kernel_run(slow_path.fd, frame(packet))
        assert (got.retval, got.rule, got.mark) == want, packet


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_example_region_witnesses(
    loaded: Loaded, run_netns: str, path: Path, strategy: str
) -> None:
    for policy in example_policies(path):
        witnesses = region_witnesses(policy)
        assert witnesses
        for point, _rule in witnesses:
            check(loaded, run_netns, policy, Packet(point), strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
@settings(max_examples=120, deadline=None)
@given(packet=packets())
def test_example_random_packets(
    loaded: Loaded, run_netns: str, path: Path, strategy: str, packet: Packet
) -> None:
    for policy in example_policies(path):
        check(loaded, run_netns, policy, packet, strategy)


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_truncated_frames(loaded: Loaded, run_netns: str, path: Path) -> None:
    for policy in example_policies(path):
        slow_path = loaded.get(policy)
        for point, _rule in region_witnesses(policy)[:20]:
            packet = Packet(point)
            if not on_the_wire(packet):
                continue
            full = frame(packet, b"payload")
            # The kernel refuses test runs of untagged IP frames shorter than an IP
            # header (skb->protocol says IP); tagged frames reach the program.
            ip_min = 14 + (20 if packet.get("family") == 4 else 40)
            for cut in range(14, len(full) + 1):
                reference = parse_frame(full[:cut])
                with inside(run_netns):
                    try:
                        got = kernel_run(slow_path.fd, full[:cut])
                    except TestRunError:
                        assert not packet.get("vlan_tagged") and cut < ip_min, cut
                        continue
                if reference in MALFORMED:
                    assert (got.retval, got.rule) == (TC_ACT_SHOT, None), cut
                else:
                    assert isinstance(reference, Packet)
                    assert (got.retval, got.rule, got.mark) == expected(policy, reference), cut


@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from(
        [
            b"\x08\x00\x45",
            b"\x86\xdd\x60",
            b"\x81\x00\x00\x05\x08\x00\x45",
            b"\x81\x00\x00\x05\x86\xdd\x60",
            b"\x08\x06",
            b"",
        ]
    ),
    body=st.binary(min_size=0, max_size=120),
)
def test_random_frames_follow_the_reference_parser(
    loaded: Loaded, run_netns: str, head: bytes, body: bytes
) -> None:
    (policy,) = example_policies(EXAMPLES / "uplink.fw")
    data = (b"\x02" * 12 + head + body)[: max(14, 12 + len(head) + len(body))]
    data = data.ljust(14, b"\0")
    reference = parse_frame(data)
    with inside(run_netns):
        try:
            got = kernel_run(loaded.get(policy).fd, data)
        except TestRunError:
            # Only untagged IP frames too short for an IP header are refused.
            assert data[12:14] in (b"\x08\x00", b"\x86\xdd")
            assert len(data) < 14 + (20 if data[12:14] == b"\x08\x00" else 40)
            return
    if reference in MALFORMED:
        assert (got.retval, got.rule) == (TC_ACT_SHOT, None)
    elif reference is Unclassified.NOT_IP:
        assert (got.retval, got.rule) == (TC_ACT_OK, None)
    else:
        assert isinstance(reference, Packet)
        assert (got.retval, got.rule, got.mark) == expected(policy, reference)


def test_ipv6_extension_headers_and_fragments(loaded: Loaded, run_netns: str) -> None:
    (policy,) = example_policies(EXAMPLES / "dns.fw")
    slow_path = loaded.get(policy)
    packet = parse_packet("udp [fd00:30::1]:5353 -> [fd00:96::10]:53")
    with inside(run_netns):
        plain = kernel_run(slow_path.fd, frame(packet))
        two_hbh = frame(packet, ipv6_ext=[0, 60], ext_units=1)
        with_ext = kernel_run(slow_path.fd, two_hbh)
    assert plain.rule == with_ext.rule == expected(policy, packet)[1]
    # IPv4 later fragment: no transport header, so ports read as 0.
    v4 = bytearray(frame(parse_packet("udp 10.30.1.1:5353 -> 8.8.8.8:53")))
    v4[14 + 6 : 14 + 8] = (0x0010).to_bytes(2, "big")  # fragment offset 16 * 8 bytes
    reference = parse_frame(bytes(v4))
    assert isinstance(reference, Packet) and reference.get("dport") == 0
    with inside(run_netns):
        got = kernel_run(slow_path.fd, bytes(v4))
    assert (got.retval, got.rule, got.mark) == expected(policy, reference)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "strategy"),
    [
        (10, "bitvec"),
        (100, "bitvec"),
        (1000, "bitvec"),
        (10000, "bitvec"),
        (10, "chain"),
        (100, "chain"),
        (1000, "chain"),
    ],
)
def test_generated_policies_pass_the_verifier_and_agree(
    loaded: Loaded, run_netns: str, size: int, strategy: str
) -> None:
    result = compile_source(policy_text("fw", size, seed=3), f"fw{size}.fw")
    assert result.program is not None
    (policy,) = result.program.policies
    rules = generate_rules("fw", size, seed=3)
    for line in trace_lines(rules, flows=300, packets=300, skew=0.5, seed=3):
        check(loaded, run_netns, policy, parse_packet(line), strategy)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["neurocuts_acl1_10k", "neurocuts_fw1_10k", "neurocuts_ipc1_10k"])
def test_classbench_ten_thousand_rules(loaded: Loaded, run_netns: str, name: str) -> None:
    source = CORPORA / "classbench" / name
    if not source.exists():
        pytest.skip(f"no corpora at {CORPORA}")
    filters = classbench.parse_filters(source.read_text().splitlines())
    result = compile_source(classbench.filters_to_policy(filters, source_name=name), name)
    assert result.program is not None
    (policy,) = result.program.policies
    trace = classbench.parse_trace(
        (CORPORA / "classbench" / "jiachang_acl1_1k_trace").read_text().splitlines()
    )
    packets = [parse_packet(classbench.trace_packet_line(header)) for header in list(trace)[::10]]
    packets += [Packet(point) for point, _rule in region_witnesses(policy, per_rule=1)[::25]]
    # The IR's verdicts in bulk: evaluate() per packet over 10,000 rules was
    # nine tenths of this test's time.
    for packet, want in zip(packets, expected_many(policy, packets), strict=True):
        check(loaded, run_netns, policy, packet, "bitvec", want)


@pytest.mark.parametrize(
    ("memo", "grid"), [(False, False), (True, False), (False, True)], ids=["walk", "memo", "grid"]
)
def test_same_shape_update_is_a_map_refill(run_netns: str, memo: bool, grid: bool) -> None:
    """A new policy of the same shape goes live by refilling the idle bank and
    flipping one word: the program (and its fd) stay, verdicts change, and no
    class tuple remembered under the old tables answers for the new ones."""
    from backends.bpf.emit import ShapeChanged, lower
    from runtime.bpf_loader import SlowPath

    def policy_from(text: str) -> Policy:
        result = compile_source(text, "u.fw")
        assert result.program is not None
        return result.program.policies[0]

    old = policy_from(
        "policy p ingress on eth0 {\n default drop\n allow udp from 10.0.0.0/8 dport 53\n"
        " allow tcp to fd00::/16 dport 443\n}\n"
    )
    new = policy_from(
        "policy p ingress on eth0 {\n default allow\n drop udp from 10.1.0.0/16 dport 53-54\n"
        " mark 9 tcp to fd00:1::/32 dport 443\n drop udp from 11.0.0.0/8 dport 9\n}\n"
    )
    slow_path = SlowPath(lower(old, memo=memo, grid=grid), ifindex_of=lambda _dev: 1)
    assert slow_path.program.capacities.memo == memo
    assert (slow_path.program.capacities.grid is not None) == grid
    fd = slow_path.fd
    probes = [
        parse_packet(p)
        for p in (
            "udp 10.1.2.3:5 -> 1.1.1.1:53",
            "udp 10.2.2.3:5 -> 1.1.1.1:53",
            "udp 11.2.2.3:5 -> 1.1.1.1:9",
            "tcp [fd00:1::1]:5 -> [fd00:1::2]:443",
            "tcp [fd00:2::1]:5 -> [fd00:2::2]:443",
            "icmp 1.1.1.1 -> 2.2.2.2",
        )
    ]

    def agrees_with(policy: Policy) -> None:
        assert slow_path.fd == fd
        for packet in probes * 2:  # the second pass answers from the memo
            with inside(run_netns):
                got = kernel_run(fd, frame(packet))
            assert (got.retval, got.rule, got.mark) == expected(policy, packet), packet

    try:
        agrees_with(old)
        slow_path.update(new, generation=2)
        agrees_with(new)
        slow_path.update(old, generation=3)  # back into the first bank, refilled
        agrees_with(old)
        wider = policy_from("policy p ingress on eth0 {\n default drop\n allow vlan 5\n}\n")
        with pytest.raises(ShapeChanged):
            slow_path.update(wider, generation=3)
    finally:
        slow_path.close()
