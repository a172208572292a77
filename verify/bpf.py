"""IR vs BPF: run the compiled slow path in the kernel and compare with the IR.

The program is compiled and loaded as the agent would load it, then run with
BPF_PROG_TEST_RUN on

* a *deciding witness* of every rule that decides some packet: a packet whose
  first matching rule it is, found by the witness-driven search of
  :func:`ir.analysis.deciding_witnesses` (rules proven shadowed need none; a
  rule the search gave up on is reported, never skipped silently);
* boundary packets of every prefix and range a rule matches (each bound and
  its neighbours outside);
* seeded random packets.

The IR's answer for every packet comes from :class:`ir.firstmatch.FirstMatch`
(the interpreter's first match, computed for all packets at once), and the
kernel runs reuse one attribute block (:func:`runtime.testrun.test_run_many`),
so 10,000-rule policies check in seconds. The first packet whose verdict,
rule id or mark differs from the IR's is the counterexample. Needs root
(CAP_BPF, CAP_NET_ADMIN) and bcc; without them :class:`BpfCheckUnavailable`
says so, and ``flowc verify`` exits 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from backends.bpf.emit import BpfProgram, lower
from backends.targets import TC, TC_ACT_NAMES, BpfTarget
from ir.algebra import Cube, cube, witness
from ir.analysis import deciding_witnesses
from ir.fields import HEADER_SPACE
from ir.firstmatch import FirstMatch
from ir.interp import evaluate
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Policy, Rule
from ir.packet import Packet, Point, format_packet, point_problems
from ir.valueset import ValueSet
from runtime.bpf_loader import SlowPath
from runtime.testrun import test_run_many
from verify.frames import frame

# IPv6 next-header values the parser walks past as extension headers: a
# packet whose "transport" is one of them cannot be put in a frame.
EXTENSION_HEADERS = (0, 43, 44, 60)


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
class Phase:
    """One step of the check: how long it took, and the process's peak RSS after it."""

    name: str
    seconds: float
    peak_rss_mib: float


@dataclass(frozen=True, slots=True)
class BpfCheck:
    """The answer of :func:`check_bpf`: packets run, coverage, and the first divergence.

    Attributes:
        packets: packets run through the program (witnesses, boundary, random).
        counterexample: the first packet the program decided differently.
        witnessed: rules run on a packet they decide (first match).
        shadowed: rules proven to decide no packet (they need no witness).
        unsendable: rules deciding only packets no frame can carry (IPv6
            with an extension header number as transport).
        gave_up: rules whose witness search hit its budget, settled neither way.
        boundary: boundary packets run (distinct from the witnesses).
        random: random packets run (distinct from the packets before).
        phases: time and memory of each step.
    """

    packets: int
    counterexample: BpfCounterexample | None
    witnessed: int = 0
    shadowed: int = 0
    unsendable: int = 0
    gave_up: tuple[Rule, ...] = ()
    boundary: int = 0
    random: int = 0
    phases: tuple[Phase, ...] = ()

    @property
    def equivalent(self) -> bool:
        """True when every packet run agreed (a test, not a proof)."""
        return self.counterexample is None

    @property
    def settled(self) -> bool:
        """True when every rule got a witness or a proof that it needs none."""
        return not self.gave_up


def expected(policy: Policy, packet: Packet, target: BpfTarget = TC) -> tuple[int, int, int]:
    """(verdict, rule id, mark) the IR says the program must produce on ``target``."""
    return _expected_of(evaluate(policy, packet).rule, target)


def expected_many(
    policy: Policy, packets: Sequence[Packet], target: BpfTarget = TC
) -> list[tuple[int, int, int]]:
    """:func:`expected` of each packet, from one :class:`FirstMatch` (the
    interpreter's first match in bulk: a 10,000-rule policy judged packet by
    packet costs minutes)."""
    rules = policy.rules
    first = FirstMatch([r.match.cube for r in rules]).first([p.values for p in packets])
    return [_expected_of(rules[k], target) for k in first]


def on_the_wire(packet: Packet) -> bool:
    """False for IPv6 packets whose 'transport' is an extension header number
    (0, 43, 44, 60): no frame can carry them, the parser walks past those."""
    return not (packet.get("family") == 6 and packet.get("ip_proto") in EXTENSION_HEADERS)


def unsendable_cubes() -> tuple[Cube, ...]:
    """The packets :func:`on_the_wire` rejects, as cubes the witness search avoids."""
    return (
        cube(
            HEADER_SPACE,
            family=ValueSet.of_value(8, 6),
            ip_proto=ValueSet.of_values(8, EXTENSION_HEADERS),
        ),
    )


@dataclass(frozen=True, slots=True)
class Probes:
    """The packets the check runs, by kind, each kind free of earlier duplicates.

    Attributes:
        witnesses: (packet, index of the rule it is decided by).
        boundary: bounds of every prefix and range of every rule, and their
            outside neighbours.
        random: seeded random packets.
        shadowed, unsendable, gave_up: the witness search's other answers.
    """

    witnesses: tuple[tuple[Packet, int], ...]
    boundary: tuple[Packet, ...]
    random: tuple[Packet, ...]
    shadowed: int
    unsendable: int
    gave_up: tuple[Rule, ...]


def probes(
    policy: Policy,
    *,
    random_count: int = 2000,
    seed: int = 0,
    done: Callable[[str], None] = lambda _step: None,
) -> Probes:
    """Deciding witnesses, boundary packets of every rule's sets, then random packets.

    ``done`` is called with the name of each step as it ends (for timing).
    """
    found = deciding_witnesses([r.match.cube for r in policy.rules], avoid=unsendable_cubes())
    done("witness search")
    witnesses = tuple((Packet(point), index) for point, index in found.witnesses)
    seen = {point for point, _ in found.witnesses}
    bases = {index: point for point, index in found.witnesses}
    boundary = _fresh(_boundary_points(policy, bases), seen)
    rng = random.Random(seed)
    randoms = _fresh((_random_packet(rng).values for _ in range(random_count)), seen)
    done("boundary and random packets")
    return Probes(
        witnesses,
        boundary,
        randoms,
        len(found.shadowed),
        len(found.avoided),
        tuple(policy.rules[i] for i in found.gave_up),
    )


def _fresh(points: Iterator[Point], seen: set[Point]) -> tuple[Packet, ...]:
    """The sendable packets among ``points`` not in ``seen``, once each (``seen`` grows).

    Duplicates are dropped before the (costlier) packet checks: boundary
    packets of rules sharing a bound coincide often.
    """
    family, proto = HEADER_SPACE.index["family"], HEADER_SPACE.index["ip_proto"]
    out = []
    for point in points:
        if point in seen:
            continue
        seen.add(point)
        if point[family] == 6 and point[proto] in EXTENSION_HEADERS:
            continue
        if not point_problems(HEADER_SPACE, point):
            out.append(Packet(point))
    return tuple(out)


def _boundary_points(policy: Policy, bases: dict[int, Point]) -> Iterator[Point]:
    """For every rule, a packet of its cube moved to each bound of each of its
    intervals, and just outside it, one field at a time.

    The packet moved is the rule's deciding witness in ``bases`` (by rule
    index) when it has one, so the bounds are probed next to packets the rule
    decides; else any packet of its cube. Points may break prerequisites
    (a port moved on a packet...), the caller filters.
    """
    for r, rule in enumerate(policy.rules):
        base = bases.get(r) or witness(HEADER_SPACE, rule.match.cube)
        if base is None:
            continue
        for i, values in enumerate(rule.match.cube.sets):
            if values.is_full():
                continue
            top = (1 << values.width) - 1
            for lo, hi in values.intervals:
                for v in (lo - 1, lo, hi, hi + 1):
                    if 0 <= v <= top:
                        yield (*base[:i], v, *base[i + 1 :])


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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_bpf(
    policy: Policy,
    *,
    strategy: str = "bitvec",
    random_count: int = 2000,
    seed: int = 0,
    program: BpfProgram | None = None,
) -> BpfCheck:
    """Run the compiled program on the probe packets; the first divergence, if any.

    ``program`` replaces flowc's own lowering of ``policy`` (``strategy``), so
    a program built some other way can be judged against the policy. With the
    class-tuple memo compiled in, every packet runs twice: the first run walks
    the classifier and fills the memo, the second answers from it, and both
    must give the IR's verdict.

    Raises BpfCheckUnavailable without root or bcc, and BpfLoadError when the
    program does not load (the verifier's log tail and DSL line included).
    """
    if os.geteuid() != 0:
        raise BpfCheckUnavailable("the BPF check needs root (CAP_BPF and CAP_NET_ADMIN)")
    try:
        import bcc  # noqa: F401  (Debian's python3-bpfcc)
    except ImportError:
        raise BpfCheckUnavailable("the BPF check needs bcc (python3-bpfcc)") from None

    phases: list[Phase] = []
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases.append(Phase(name, now - clock, _peak_rss_mib()))
        clock = now

    # A program that tracks connections is judged with its state given per packet
    # (the checker's mode: nothing observed or committed), on a table of its own
    # so a check never touches the host's; the tracker itself is held to
    # ir/conntrack.py by the kernel tier's replays.
    private_pin = f"/sys/fs/bpf/flowc-verify-{os.getpid()}/ct"
    if program is None:
        program = lower(policy, strategy)
        if program.conntrack is not None:
            spec = dataclasses.replace(program.conntrack, pin=private_pin)
            program = lower(policy, strategy, conntrack=spec)
    # Redirect targets resolve to loopback: BPF_PROG_TEST_RUN never sends the frame.
    slow_path = SlowPath(program, ifindex_of=lambda _device: 1)
    try:
        phase("compile+load")
        found = probes(policy, random_count=random_count, seed=seed, done=phase)
        packets = [packet for packet, _ in found.witnesses] + [*found.boundary, *found.random]
        rules = policy.rules
        first = FirstMatch([r.match.cube for r in rules]).first([p.values for p in packets])
        for (packet, decider), got in zip(found.witnesses, first, strict=False):
            if got != decider:
                raise AssertionError(
                    f"witness {format_packet(packet)} of rule {rules[decider].priority} is "
                    f"decided by rule {rules[got].priority}: the witness search or FirstMatch "
                    "is wrong"
                )
        target = slow_path.program.target
        want = [_expected_of(rules[k], target) for k in first]
        phase("ir verdicts")
        frames = [frame(packet) for packet in packets]
        runs = 2 if slow_path.program.capacities.memo else 1
        if slow_path.program.conntrack is None:
            answers = [test_run_many(slow_path.fd, frames) for _ in range(runs)]
        else:
            answers = [_runs_by_state(slow_path, packets, frames) for _ in range(runs)]
        phase("kernel runs")
    finally:
        slow_path.close()
        _remove_pin(private_pin)
    counterexample = None
    for k, packet in enumerate(packets):
        wrong = next((a[k] for a in answers if a[k] != want[k]), None)
        if wrong is not None:
            counterexample = BpfCounterexample(packet, rules[first[k]], want[k], wrong)
            break
    return BpfCheck(
        packets=len(packets),
        counterexample=counterexample,
        witnessed=len(found.witnesses),
        shadowed=found.shadowed,
        unsendable=found.unsendable,
        gave_up=found.gave_up,
        boundary=len(found.boundary),
        random=len(found.random),
        phases=tuple(phases),
    )


def _runs_by_state(
    slow_path: SlowPath, packets: Sequence[Packet], frames: Sequence[bytes]
) -> list[tuple[int, int | None, int]]:
    """Every frame through a connection-tracking program with its packet's state
    given (one batch per state), answers in the packets' order."""
    out: list[tuple[int, int | None, int] | None] = [None] * len(packets)
    by_state: dict[int, list[int]] = {}
    for k, packet in enumerate(packets):
        by_state.setdefault(packet.get("state"), []).append(k)
    try:
        for state, indexes in sorted(by_state.items()):
            slow_path.give_state(state)
            got = test_run_many(slow_path.fd, [frames[k] for k in indexes])
            for k, answer in zip(indexes, got, strict=True):
                out[k] = answer
    finally:
        slow_path.give_state(None)
    assert all(a is not None for a in out)
    return [a for a in out if a is not None]


def _remove_pin(pin: str) -> None:
    """Remove a check's private table pin and its directory, if they were made."""
    with contextlib.suppress(OSError):
        os.unlink(pin)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(pin))


def _expected_of(rule: Rule, target: BpfTarget) -> tuple[int, int, int]:
    """(verdict, rule id, mark) the program must produce for a packet ``rule`` decides."""
    mark = rule.action.mark if rule.action.kind == MARK else 0
    return retval(rule.action.kind, target), rule.priority, mark or 0
