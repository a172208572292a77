"""IR vs BPF: run the compiled slow path in the kernel and compare with the IR.

The program is compiled and loaded as the agent would load it, then run with
BPF_PROG_TEST_RUN on a witness packet of every region of the policy's
partition, on boundary packets of every prefix and range a rule matches
(each bound and its neighbours outside), and on seeded random packets. The
first packet whose verdict, rule id or mark differs from the IR interpreter's
is the counterexample. Needs root (CAP_BPF, CAP_NET_ADMIN) and bcc; without
them :class:`BpfCheckUnavailable` says so, and ``flowc verify`` exits 3.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

from backends.bpf.emit import lower
from backends.targets import TC, TC_ACT_NAMES, BpfTarget
from ir.algebra import witness
from ir.analysis import region_witnesses
from ir.fields import HEADER_SPACE
from ir.interp import evaluate
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Policy, Rule
from ir.packet import Packet, point_problems
from runtime.bpf_loader import SlowPath
from runtime.testrun import test_run
from verify.frames import frame


def retval(kind: str, target: BpfTarget = TC) -> int:
    """The verdict the program returns for an action kind on ``target``."""
    return {
        ALLOW: target.allow,
        DROP: target.drop,
        REDIRECT: target.redirect,
        MIRROR: target.allow,
        MARK: target.allow,
    }[kind]


class BpfCheckUnavailable(RuntimeError):
    """The BPF check cannot run here (no privileges, no bcc)."""


@dataclass(frozen=True, slots=True)
class BpfCounterexample:
    """A packet the program decides differently from the IR.

    Attributes:
        packet: the packet (sent as an Ethernet frame).
        rule: the IR rule deciding it.
        expected: (tc verdict, rule id, mark) the IR implies.
        got: what the program returned.
    """

    packet: Packet
    rule: Rule
    expected: tuple[int, int, int]
    got: tuple[int, int | None, int]

    @property
    def bpf_verdict(self) -> str:
        """The program's answer in words."""
        retval, rule, mark = self.got
        name = TC_ACT_NAMES.get(retval, str(retval))
        return f"{name} rule {rule if rule is not None else 'none'} mark {mark:#x}"


@dataclass(frozen=True, slots=True)
class BpfCheck:
    """The answer of :func:`check_bpf`: packets run, and the first divergence."""

    packets: int
    counterexample: BpfCounterexample | None

    @property
    def equivalent(self) -> bool:
        """True when every packet run agreed (a test, not a proof)."""
        return self.counterexample is None


def expected(policy: Policy, packet: Packet, target: BpfTarget = TC) -> tuple[int, int, int]:
    """(verdict, rule id, mark) the IR says the program must produce on ``target``."""
    verdict = evaluate(policy, packet)
    mark = verdict.action.mark if verdict.action.kind == MARK else 0
    return retval(verdict.action.kind, target), verdict.rule.priority, mark or 0


def on_the_wire(packet: Packet) -> bool:
    """False for IPv6 packets whose 'transport' is an extension header number
    (0, 43, 44, 60): no frame can carry them, the parser walks past those."""
    return not (packet.get("family") == 6 and packet.get("ip_proto") in (0, 43, 44, 60))


def probe_packets(policy: Policy, *, random_count: int = 2000, seed: int = 0) -> Iterator[Packet]:
    """Region witnesses, boundary packets of every rule's sets, then random packets."""
    for point, _rule in region_witnesses(policy, per_rule=4):
        yield Packet(point)
    for rule in policy.rules:
        base = witness(HEADER_SPACE, rule.match.cube)
        if base is None:
            continue
        for i, values in enumerate(rule.match.cube.sets):
            if values.is_full():
                continue
            top = (1 << values.width) - 1
            for lo, hi in values.intervals:
                for v in (lo - 1, lo, hi, hi + 1):
                    if 0 <= v <= top:
                        point = (*base[:i], v, *base[i + 1 :])
                        if not point_problems(HEADER_SPACE, point):
                            yield Packet(point)
    rng = random.Random(seed)
    for _ in range(random_count):
        yield _random_packet(rng)


def _random_packet(rng: random.Random) -> Packet:
    family = rng.choice((4, 6))
    proto = rng.choice((6, 17, 132, 1 if family == 4 else 58, 47))
    fields = {"family": family, "ip_proto": proto, "dscp": rng.randrange(64)}
    width, prefix = (32, "ip4") if family == 4 else (128, "ip6")
    fields[f"{prefix}_src"] = rng.getrandbits(width)
    fields[f"{prefix}_dst"] = rng.getrandbits(width)
    if proto in (6, 17, 132):
        fields["sport"], fields["dport"] = rng.randrange(65536), rng.randrange(65536)
    if proto == 6:
        fields["tcp_flags"] = rng.randrange(256)
    if proto in (1, 58):
        fields["icmp_type"], fields["icmp_code"] = rng.randrange(256), rng.randrange(256)
    if rng.random() < 0.3:
        fields["vlan_tagged"], fields["vlan_id"] = 1, rng.randrange(4096)
    return Packet.make(**fields)


def check_bpf(
    policy: Policy, *, strategy: str = "bitvec", random_count: int = 2000, seed: int = 0
) -> BpfCheck:
    """Run the compiled program on the probe packets; the first divergence, if any.

    Raises BpfCheckUnavailable without root or bcc, and BpfLoadError when the
    program does not load (the verifier's log tail and DSL line included).
    """
    if os.geteuid() != 0:
        raise BpfCheckUnavailable("the BPF check needs root (CAP_BPF and CAP_NET_ADMIN)")
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError:
        raise BpfCheckUnavailable("the BPF check needs bcc (python3-bpfcc)") from None

    # Redirect targets resolve to loopback: BPF_PROG_TEST_RUN never sends the frame.
    slow_path = SlowPath(lower(policy, strategy), ifindex_of=lambda _device: 1)
    count = 0
    try:
        for packet in probe_packets(policy, random_count=random_count, seed=seed):
            if not on_the_wire(packet):
                continue
            count += 1
            got = test_run(slow_path.fd, frame(packet))
            want = expected(policy, packet, slow_path.program.target)
            if (got.retval, got.rule, got.mark) != want:
                rule = evaluate(policy, packet).rule
                return BpfCheck(
                    count, BpfCounterexample(packet, rule, want, (got.retval, got.rule, got.mark))
                )
    finally:
        slow_path.close()
    return BpfCheck(count, None)
