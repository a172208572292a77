"""The reference connection tracker (ir/conntrack.py): its rules one by one on
written sequences, and its invariants under hypothesis' stateful testing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from compiler.packet_syntax import parse_packet
from ir.conntrack import (
    NS_PER_S,
    Connection,
    ConnKey,
    ConnTracker,
    CtConfig,
    CtTimeouts,
    Direction,
    TcpState,
    hook_id,
    parse_duration,
    revokes,
)
from ir.fields import (
    HEADER_SPACE,
    STATE_ESTABLISHED,
    STATE_INVALID,
    STATE_NEW,
    STATE_RELATED,
    TCP_FLAG_BITS,
)
from ir.interp import evaluate
from ir.model import Action, Hook, Match, Origin, Policy, Rule
from ir.packet import Packet
from ir.valueset import ValueSet


def _policy(*rules: tuple[str, Match]) -> Policy:
    built = [
        Rule(i, match, Action(kind), Origin("t.fw", i + 2)) for i, (kind, match) in enumerate(rules)
    ]
    built.append(Rule(len(built), Match(), Action("drop"), Origin("t.fw", 99), is_default=True))
    return Policy("p", Hook("eth0", "ingress"), tuple(built), Origin("t.fw", 1))


ALLOW_ALL = _policy(("allow", Match()))
DROP_ALL = _policy()
# The usual stateful shape: replies in, new only to port 80.
STATEFUL = _policy(
    ("allow", Match((("state", ValueSet.of_values(2, [STATE_ESTABLISHED, STATE_RELATED])),))),
    ("drop", Match((("state", ValueSet.of_value(2, STATE_INVALID)),))),
    (
        "allow",
        Match(
            (
                ("ip_proto", ValueSet.of_value(8, 6)),
                ("frag", ValueSet.of_values(2, [0, 1])),
                ("dport", ValueSet.of_value(16, 80)),
            )
        ),
    ),
)


def P(text: str) -> Packet:
    return parse_packet(text)


def s(seconds: float) -> int:
    return int(seconds * NS_PER_S)


def states(tracker: ConnTracker, policy: Policy, lines: list[tuple[float, str]]) -> list[str]:
    return [tracker.step(policy, P(text), s(t)).observation.state_name for t, text in lines]


SYN = "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags syn"
SYNACK = "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags syn,ack"
ACK = "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags ack"
ACK_BACK = "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags ack"


def test_tcp_handshake_data_and_close() -> None:
    tracker = ConnTracker()
    got = states(
        tracker,
        ALLOW_ALL,
        [
            (0, SYN),
            (0, SYN),  # retransmitted before any reply: new again
            (0, SYNACK),
            (0, ACK),
            (1, ACK_BACK),
            (2, "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags fin,ack"),
            (2, "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags fin,ack"),
            (2, ACK),
        ],
    )
    assert got == ["new", "new"] + ["established"] * 6
    (connection,) = tracker.connections()
    assert connection.tcp == TcpState.TIME_WAIT
    assert connection.packets == (5, 3)
    assert tracker.counters["commits"] == 1


def test_first_syn_commits_the_retransmission_does_not() -> None:
    tracker = ConnTracker()
    first = tracker.step(ALLOW_ALL, P(SYN), 0)
    again = tracker.step(ALLOW_ALL, P(SYN), s(1))
    assert (first.committed, again.committed) == (True, False)
    assert again.observation.stored and again.state == STATE_NEW


def test_dropped_new_commits_nothing_so_the_reply_is_invalid() -> None:
    tracker = ConnTracker()
    assert not tracker.step(DROP_ALL, P(SYN), 0).committed
    assert len(tracker) == 0
    assert tracker.step(ALLOW_ALL, P(SYNACK), 0).state == STATE_INVALID


@pytest.mark.parametrize(
    "flags",
    ["syn,fin", "syn,rst", "none", "fin", "fin,psh,urg", "syn,fin,ack", "rst,fin"],
)
def test_flag_combinations_the_kernel_rejects_are_invalid(flags: str) -> None:
    tracker = ConnTracker()
    tracker.step(ALLOW_ALL, P(SYN), 0)
    result = tracker.step(ALLOW_ALL, P(f"tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags {flags}"), 0)
    assert result.state == STATE_INVALID and not result.committed
    assert "never valid" in result.observation.reason


def test_mid_stream_pick_up_only_when_loose() -> None:
    strict, loose = ConnTracker(), ConnTracker(CtConfig(tcp_loose=True))
    assert strict.step(ALLOW_ALL, P(ACK), 0).state == STATE_INVALID
    picked = loose.step(ALLOW_ALL, P(ACK), 0)
    assert picked.state == STATE_NEW and picked.committed
    assert loose.step(ALLOW_ALL, P(ACK_BACK), 0).state == STATE_ESTABLISHED
    (connection,) = loose.connections()
    assert connection.tcp == TcpState.ESTABLISHED
    # Loose or not, a SYN+ACK, FIN or RST starts nothing.
    for text in (SYNACK, "tcp 10.0.0.5:1 -> 10.0.0.6:2 flags rst"):
        assert loose.step(ALLOW_ALL, P(text), 0).state == STATE_INVALID


def test_rst_closes_and_a_new_syn_reopens() -> None:
    tracker = ConnTracker()
    states(tracker, ALLOW_ALL, [(0, SYN), (0, SYNACK), (0, ACK)])
    rst = tracker.step(ALLOW_ALL, P("tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags rst"), s(1))
    assert rst.state == STATE_ESTABLISHED
    (connection,) = tracker.connections()
    assert connection.tcp == TcpState.CLOSE
    assert tracker.step(ALLOW_ALL, P(ACK), s(2)).state == STATE_INVALID
    reopened = tracker.step(ALLOW_ALL, P(SYN), s(3))
    assert reopened.state == STATE_NEW and reopened.committed
    assert tracker.counters["closed"] == 1
    # The closed connection's timeout is short: 10 s by default.
    assert tracker.step(ALLOW_ALL, P(SYNACK), s(3)).state == STATE_ESTABLISHED


def test_steps_that_do_not_fit_the_handshake_are_invalid() -> None:
    tracker = ConnTracker()
    tracker.step(ALLOW_ALL, P(SYN), 0)
    assert tracker.step(ALLOW_ALL, P(ACK), 0).state == STATE_INVALID  # nothing to ack yet
    assert tracker.step(ALLOW_ALL, P(ACK_BACK), 0).state == STATE_INVALID
    # a SYN+ACK from the originator
    assert (
        tracker.step(ALLOW_ALL, P("tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags syn,ack"), 0).state
        == STATE_INVALID
    )
    states(tracker, ALLOW_ALL, [(0, SYNACK), (0, ACK)])
    assert tracker.step(ALLOW_ALL, P(SYN), 0).state == STATE_INVALID  # SYN on a live connection


def test_udp_reply_established_then_both_ways() -> None:
    tracker = ConnTracker()
    out = "udp 10.0.0.1:5353 -> 10.0.0.53:53"
    back = "udp 10.0.0.53:53 -> 10.0.0.1:5353"
    assert states(tracker, STATEFUL, [(0, out)]) == ["new"]  # dropped by STATEFUL
    assert len(tracker) == 0
    assert states(tracker, ALLOW_ALL, [(0, out), (0, out), (0, back), (0, out)]) == [
        "new",
        "new",
        "established",
        "established",
    ]


def test_udp_timeouts_unreplied_then_stream() -> None:
    tracker = ConnTracker(CtConfig(CtTimeouts(udp=10, udp_stream=100)))
    out = "udp 10.0.0.1:5353 -> 10.0.0.53:53"
    back = "udp 10.0.0.53:53 -> 10.0.0.1:5353"
    tracker.step(ALLOW_ALL, P(out), 0)
    # Exactly at the expiry the connection is gone.
    assert tracker.step(ALLOW_ALL, P(back), s(10)).state == STATE_NEW
    assert tracker.counters["expired"] == 1
    tracker.step(ALLOW_ALL, P(out), s(20))
    assert tracker.step(ALLOW_ALL, P(back), s(29.999)).state == STATE_ESTABLISHED
    assert tracker.step(ALLOW_ALL, P(out), s(129)).state == STATE_ESTABLISHED
    assert tracker.step(ALLOW_ALL, P(out), s(229)).state == STATE_NEW


def test_icmp_echo_by_identifier() -> None:
    tracker = ConnTracker()
    got = states(
        tracker,
        ALLOW_ALL,
        [
            (0, "icmp 10.0.0.1 -> 10.0.0.2 type echo-request id 7"),
            (0, "icmp 10.0.0.2 -> 10.0.0.1 type echo-reply id 8"),  # another conversation
            (0, "icmp 10.0.0.2 -> 10.0.0.1 type echo-reply id 7"),
            (0, "icmp 10.0.0.2 -> 10.0.0.1 type echo-request id 7"),  # the other way: new
            (0, "icmpv6 fd00::1 -> fd00::2 type echo-request id 7"),
            (0, "icmpv6 fd00::2 -> fd00::1 type echo-reply id 7"),
        ],
    )
    assert got == ["new", "invalid", "established", "new", "new", "established"]


def test_icmp_errors_are_related_to_their_connection() -> None:
    tracker = ConnTracker()
    tracker.step(ALLOW_ALL, P("udp 10.0.0.1:5353 -> 10.0.0.53:53"), 0)
    error = "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3 inner "
    assert tracker.step(ALLOW_ALL, P(error + "udp 10.0.0.1:5353 -> 10.0.0.53:53"), 0).state == (
        STATE_RELATED
    )
    # From a router on the way, about the reply direction: still related.
    router = "icmp 10.9.9.9 -> 10.0.0.53 type time-exceeded inner udp 10.0.0.53:53 -> 10.0.0.1:5353"
    assert tracker.step(ALLOW_ALL, P(router), 0).state == STATE_RELATED
    assert tracker.step(ALLOW_ALL, P(error + "udp 10.0.0.1:5354 -> 10.0.0.53:53"), 0).state == (
        STATE_INVALID
    )
    truncated = "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3"
    assert tracker.step(ALLOW_ALL, P(truncated), 0).state == STATE_INVALID
    # Related packets commit nothing and update nothing.
    (connection,) = tracker.connections()
    assert connection.packets == (1, 0) and len(tracker) == 1


def test_connectionless_icmp_and_later_fragments_are_new_and_never_stored() -> None:
    tracker = ConnTracker()
    for text in (
        "icmpv6 fe80::1 -> ff02::1 type 135",
        "udp 10.0.0.1 -> 10.0.0.2 frag later",
        "icmp 10.0.0.1 -> 10.0.0.2 type 13",
    ):
        result = tracker.step(ALLOW_ALL, P(text), 0)
        assert (result.state, result.committed) == (STATE_NEW, False)
    assert len(tracker) == 0


def test_other_protocols_by_address_pair() -> None:
    tracker = ConnTracker()
    got = states(
        tracker, ALLOW_ALL, [(0, "47 10.0.0.1 -> 10.0.0.2"), (1, "47 10.0.0.2 -> 10.0.0.1")]
    )
    assert got == ["new", "established"]


def test_a_full_table_refuses_and_counts_and_on_full_decides() -> None:
    for on_full, action in (("allow", "allow"), ("drop", "drop")):
        tracker = ConnTracker(CtConfig(capacity=2, on_full=on_full))
        results = [
            tracker.step(ALLOW_ALL, P(f"udp 10.0.0.1:{port} -> 10.0.0.2:53"), 0)
            for port in (1, 2, 3)
        ]
        assert [r.committed for r in results] == [True, True, False]
        assert results[2].untracked and results[2].action.kind == action
        assert results[2].verdict.action.kind == "allow"  # the policy's own verdict
        assert tracker.counters["untracked"] == 1
        # The untracked connection's reply is not established; the tracked ones' are.
        assert tracker.step(ALLOW_ALL, P("udp 10.0.0.2:53 -> 10.0.0.1:3"), 0).state == STATE_NEW
        assert tracker.step(ALLOW_ALL, P("udp 10.0.0.2:53 -> 10.0.0.1:1"), 0).state == (
            STATE_ESTABLISHED
        )


def test_gc_frees_room_and_the_clock_never_goes_back() -> None:
    tracker = ConnTracker(CtConfig(CtTimeouts(udp=5), capacity=1))
    tracker.step(ALLOW_ALL, P("udp 10.0.0.1:1 -> 10.0.0.2:53"), 0)
    assert not tracker.step(ALLOW_ALL, P("udp 10.0.0.1:2 -> 10.0.0.2:53"), s(6)).committed
    assert tracker.gc(s(6)) == 1
    assert tracker.step(ALLOW_ALL, P("udp 10.0.0.1:2 -> 10.0.0.2:53"), s(6)).committed
    with pytest.raises(ValueError, match="time went back"):
        tracker.step(ALLOW_ALL, P("udp 10.0.0.1:2 -> 10.0.0.2:53"), s(5))


def test_a_clock_jump_expires_everything() -> None:
    tracker = ConnTracker()
    states(tracker, ALLOW_ALL, [(0, SYN), (0, SYNACK), (0, ACK)])
    # Five days and a second later even an established TCP connection is gone.
    assert tracker.step(ALLOW_ALL, P(ACK_BACK), s(432001)).state == STATE_INVALID


def test_timeout_text() -> None:
    assert CtTimeouts.parse("tcp=5d, udp=30s,icmp=2m,other=1h") == CtTimeouts(
        tcp=432000, udp=30, icmp=120, other=3600
    )
    for bad, why in (
        ("tcp", "NAME=DURATION"),
        ("tcpx=1", "unknown timeout"),
        ("udp=0", "positive"),
    ):
        with pytest.raises(ValueError, match=why):
            CtTimeouts.parse(bad)
    with pytest.raises(ValueError, match="not a number"):
        parse_duration("1.5h")


# ---------------------------------------------------------------- revocation
def _committed(tracker: ConnTracker, policy: Policy, text: str) -> None:
    verdict = tracker.step(policy, P(text), 0)
    assert verdict.committed, text


def test_revoke_goes_by_the_hook_the_tuple_and_the_committing_flags() -> None:
    tracker = ConnTracker(CtConfig(tcp_loose=True))
    _committed(tracker, ALLOW_ALL, "tcp 10.0.0.1:1000 -> 10.0.0.2:80 flags syn")
    _committed(tracker, ALLOW_ALL, "tcp 10.0.0.1:1001 -> 10.0.0.2:22 flags syn")
    _committed(tracker, ALLOW_ALL, "tcp 10.0.0.1:1002 -> 10.0.0.2:22 flags ack")  # loose pick-up
    other_hook = Policy("q", ALLOW_ALL.hook, ALLOW_ALL.rules, ALLOW_ALL.origin)
    _committed(tracker, other_hook, "tcp 10.0.0.1:1003 -> 10.0.0.2:22 flags syn")
    (syn_22,) = [c for c in tracker.connections() if c.key.sport == 1001]
    assert syn_22.start_flags == TCP_FLAG_BITS["syn"] and syn_22.hook_id == hook_id("p")
    # Port 22 only with a SYN: the loose pick-up on 22 goes, the SYN on 22
    # stays, 80 goes, and the other hook's connection is not this policy's.
    only_syn_22 = _policy(
        (
            "allow",
            Match(
                (
                    ("ip_proto", ValueSet.of_value(8, 6)),
                    ("frag", ValueSet.of_values(2, [0, 1])),
                    ("dport", ValueSet.of_value(16, 22)),
                    ("tcp_flags", ValueSet.of_value(8, TCP_FLAG_BITS["syn"])),
                )
            ),
        ),
    )
    gone = tracker.revoke(only_syn_22)
    assert sorted(k.sport for k in gone) == [1000, 1002]
    assert sorted(c.key.sport for c in tracker.connections()) == [1001, 1003]
    assert tracker.counters["revoked"] == 2


def test_revoke_fails_closed_on_a_field_the_table_does_not_record() -> None:
    # DSCP is not in the entry: a policy that now drops some DSCP of the same
    # tuple might have refused the connection, so it goes; one that lets every
    # DSCP of it through keeps it.
    tracker = ConnTracker()
    _committed(tracker, ALLOW_ALL, "udp 10.0.0.1:1000 -> 10.0.0.2:53")
    dscp_46 = Match((("dscp", ValueSet.of_value(6, 46)),))
    assert tracker.revoke(_policy(("drop", dscp_46), ("allow", Match()))) != []
    _committed(tracker, ALLOW_ALL, "udp 10.0.0.1:1000 -> 10.0.0.2:53")
    assert tracker.revoke(_policy(("allow", dscp_46), ("allow", Match()))) == []


DSCPS = (0, 10, 46)
REVOKE_FIELDS = st.sampled_from(
    [
        ("ip4_src", ValueSet.of_prefix(32, 0x0A000000, 31)),
        ("ip4_src", ValueSet.of_value(32, 0x0A000001)),
        ("ip_proto", ValueSet.of_value(8, 6)),
        ("ip_proto", ValueSet.of_value(8, 17)),
        ("dport", ValueSet.of_range(16, 0, 1)),
        ("sport", ValueSet.of_value(16, 7)),
        ("frag", ValueSet.of_value(2, 1)),
        ("frag", ValueSet.of_values(2, [0, 2])),
        ("dscp", ValueSet.of_value(6, 10)),
        ("dscp", ValueSet.of_range(6, 8, 15)),
        ("tcp_flags", ValueSet.of_value(8, TCP_FLAG_BITS["syn"])),
        ("state", ValueSet.of_value(2, STATE_NEW)),
        ("state", ValueSet.of_value(2, STATE_ESTABLISHED)),
    ]
)


@st.composite
def revoke_policies(draw: st.DrawFn) -> Policy:
    rules = []
    for _ in range(draw(st.integers(0, 5))):
        picked = dict(draw(st.lists(REVOKE_FIELDS, max_size=3)))
        if "dport" in picked or "sport" in picked or "tcp_flags" in picked:
            picked.setdefault("ip_proto", ValueSet.of_value(8, 6))
            picked["frag"] = ValueSet.of_values(2, [0, 1])
        if "tcp_flags" in picked:
            picked["ip_proto"] = ValueSet.of_value(8, 6)
        if picked:
            picked["family"] = ValueSet.of_value(8, 4)
        order = [f.name for f in HEADER_SPACE.fields if f.name in picked]
        constraints = tuple((name, picked[name]) for name in order)
        rules.append((draw(st.sampled_from(["allow", "drop"])), Match(constraints)))
    built = [Rule(i, m, Action(k), Origin("t.fw", i + 2)) for i, (k, m) in enumerate(rules)]
    default = draw(st.sampled_from(["allow", "drop"]))
    built.append(Rule(len(built), Match(), Action(default), Origin("t.fw", 99), is_default=True))
    return Policy("p", Hook("eth0", "ingress"), tuple(built), Origin("t.fw", 1))


@settings(max_examples=300, deadline=None)
@given(
    policy=revoke_policies(),
    proto=st.sampled_from([6, 17]),
    src=st.integers(0, 3),
    sport=st.sampled_from([7, 1000]),
    dport=st.integers(0, 3),
    flags=st.sampled_from([TCP_FLAG_BITS["syn"], TCP_FLAG_BITS["ack"]]),
)
def test_revokes_exactly_when_some_committing_packet_is_dropped(
    policy: Policy, proto: int, src: int, sport: int, dport: int, flags: int
) -> None:
    """The oracle: every packet the entry cannot tell from the committing one
    (the fields it does not record take each value any rule tells apart)."""
    key = ConnKey(4, proto, 0x0A000000 + src, 0x0A000009, sport, dport)
    connection = Connection(
        key, False, TcpState.NONE, 0, 1, 0, 0, start_flags=flags if proto == 6 else 0
    )
    recorded = {
        "family": 4,
        "ip_proto": proto,
        "ip4_src": key.src,
        "ip4_dst": key.dst,
        "sport": sport,
        "dport": dport,
        "state": STATE_NEW,
    }
    if proto == 6:
        recorded["tcp_flags"] = flags
    dropped = any(
        evaluate(policy, Packet.make(**recorded, frag=frag, dscp=dscp)).action.kind == "drop"
        for frag in (0, 1)
        for dscp in DSCPS
    )
    assert revokes(policy, connection) == dropped


# ---------------------------------------------------------------- invariants
HOSTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
PORTS = (1000, 80)
TCP_FLAGS = ("syn", "syn,ack", "ack", "fin,ack", "rst", "rst,ack", "syn,fin", "none", "psh,ack")


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    src, dst = draw(st.sampled_from(HOSTS)), draw(st.sampled_from(HOSTS))
    kind = draw(st.sampled_from(("tcp", "udp", "echo", "error")))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    if kind == "tcp":
        return P(f"tcp {src}:{sport} -> {dst}:{dport} flags {draw(st.sampled_from(TCP_FLAGS))}")
    if kind == "udp":
        return P(f"udp {src}:{sport} -> {dst}:{dport}")
    if kind == "echo":
        which = draw(st.sampled_from(("echo-request", "echo-reply")))
        return P(f"icmp {src} -> {dst} type {which} id {draw(st.integers(0, 2))}")
    inner = f"udp {dst}:{sport} -> {src}:{dport}"
    return P(f"icmp {src} -> {dst} type dest-unreachable code 3 inner {inner}")


class TrackerMachine(RuleBasedStateMachine):
    """Random traffic through a small table on a fake clock, against the
    invariants the issue names and a model of commits and replies."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts = CtTimeouts(
            tcp_syn_sent=7, tcp_syn_recv=5, tcp=50, udp=3, udp_stream=9, icmp=4
        )
        self.tracker = ConnTracker(CtConfig(self.timeouts, capacity=6))
        self.now = 0
        self.dropped_new: set[object] = set()  # keys a dropped new packet would have started
        self.committed_at: dict[object, int] = {}

    @rule(seconds=st.integers(0, 12))
    def tick(self, seconds: int) -> None:
        self.now += seconds * NS_PER_S

    @rule()
    def gc(self) -> None:
        self.tracker.gc(self.now)
        assert all(c.expires_ns > self.now for c in self.tracker.connections())

    @rule(packet=packets(), allow=st.booleans())
    def packet(self, packet: Packet, allow: bool) -> None:
        before = {c.key: c for c in self.tracker.connections()}
        result = self.tracker.step(ALLOW_ALL if allow else DROP_ALL, packet, self.now)
        obs = result.observation
        if result.committed:
            assert obs.state == STATE_NEW and allow
            assert obs.key is not None
            assert obs.key not in before or self._expired(before[obs.key])
            self.committed_at[obs.key] = self.now
            self.dropped_new.discard(obs.key)
        if not allow and obs.state == STATE_NEW and obs.starts is not None and not obs.stored:
            self.dropped_new.add(obs.key)
        if obs.state in (STATE_INVALID, STATE_RELATED):
            # Invalid and related packets change no entry (an expired one may go).
            after = {c.key: c for c in self.tracker.connections()}
            assert all(after[k] == before[k] for k in after)
        if obs.stored and obs.direction == Direction.REPLY:
            assert obs.state == STATE_ESTABLISHED  # a reply is never new after a commit
            assert obs.key is not None
            entry = self.tracker.get(obs.key)
            assert entry is not None and entry.replied

    def _expired(self, connection: object) -> bool:
        return getattr(connection, "expires_ns") <= self.now  # noqa: B009 - typed as object

    @invariant()
    def dropped_new_never_established(self) -> None:
        # A key only a dropped new packet ever tried is not in the table.
        for key in self.dropped_new:
            assert self.tracker.get(key) is None  # type: ignore[arg-type]

    @invariant()
    def bounded(self) -> None:
        assert len(self.tracker) <= self.tracker.config.capacity

    @invariant()
    def live_entries_were_refreshed_within_their_timeout(self) -> None:
        for connection in self.tracker.connections():
            timeout = self.timeouts.seconds(connection) * NS_PER_S
            assert connection.expires_ns == connection.last_ns + timeout
            assert connection.created_ns <= connection.last_ns <= self.now

    @precondition(lambda self: len(self.tracker) > 0)
    @rule()
    def expired_entries_are_not_found(self) -> None:
        # Jump past every expiry: every packet then finds nothing stored.
        latest = max(c.expires_ns for c in self.tracker.connections())
        self.now = max(self.now, latest)
        for connection in list(self.tracker.connections()):
            key = connection.key
            text = _reply_text(key)
            if text is None:
                continue
            # Dropped, so the probe itself commits nothing.
            result = self.tracker.step(DROP_ALL, P(text), self.now)
            assert not result.observation.stored
            assert result.state != STATE_ESTABLISHED


def _reply_text(key: object) -> str | None:
    """A packet in the reply direction of ``key``, in the packet syntax."""
    from ir.conntrack import ConnKey

    assert isinstance(key, ConnKey)
    back = key.reversed()
    text = str(back)
    if key.proto == 6:
        return text + " flags syn,ack"
    if key.proto == 17:
        return text
    if key.proto == 1:
        src, _, rest = text.partition(" -> ")
        dst, _, ident = rest.partition(" id ")
        return f"{src} -> {dst} type echo-reply id {ident}"
    return None


TrackerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tracker_invariants = TrackerMachine.TestCase
