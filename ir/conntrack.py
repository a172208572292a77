"""The connection tracker: what connection state a packet is in, and what the
table remembers. This module is the definition every datapath's connection
tracking is checked against (the BPF slow path, flower with act_ct, the cache).

A host has one table, shared by every hook of the host, as the kernel's
conntrack is one per network namespace. Each packet goes through two steps:

1. :meth:`ConnTracker.observe`, before the policy decides: the packet's state
   (``new``, ``established``, ``related`` or ``invalid``) is computed, and a
   packet of a connection already in the table updates that connection
   (refreshes its idle timer, advances its TCP state, marks it replied). As in
   the kernel, whose conntrack sees a packet before the filter decides, this
   happens whatever the policy then does with the packet.
2. :meth:`ConnTracker.commit`, after the policy decided anything but drop:
   a ``new`` packet that starts a connection stores it. A dropped ``new``
   packet stores nothing, so nothing dropped as new ever becomes established.

The semantics, which the README's "Connection tracking" section restates:

* Identity. TCP, UDP, SCTP: the 5-tuple; the reverse tuple is the same
  connection. ICMP/ICMPv6 echo: the addresses and the echo identifier; echo
  request is the original direction, echo reply the reply. Other IP
  protocols: the addresses and the protocol (the kernel's generic tracker).
* ``established``: a packet in the reply direction of a stored connection, and a
  packet in either direction once a reply was seen. A repeat of the original
  direction before any reply (a retransmitted SYN, a second UDP datagram, a
  second echo request) is ``new`` again, decided as new, and commits nothing
  more.
* ``related``: an ICMP error whose embedded header belongs to a stored
  connection (either direction). Related packets update nothing.
* ``invalid``: a TCP packet whose flags the kernel's TCP tracker rejects
  (:data:`TCP_VALID_FLAGS`: SYN+FIN, SYN+RST, no flags, FIN without ACK, ...);
  a TCP packet that fits no step of its connection's state machine (below); a
  TCP packet other than a SYN with no connection (unless ``tcp_loose``); an
  echo reply with no request; an ICMP error whose embedded header is missing or
  belongs to no connection. Invalid packets update nothing.
* ``new`` otherwise; that includes packets the tracker cannot tie to a
  connection and never stores (IP fragments after the first, which carry no
  ports; ICMP messages that are neither echo nor error, such as neighbour
  discovery).
* TCP. A connection starts with a SYN without ACK (SYN_SENT); the reply's
  SYN+ACK makes it SYN_RECV, the originator's ACK ESTABLISHED; a FIN in either
  direction FIN_WAIT, a FIN from the other direction too TIME_WAIT; a RST
  CLOSE. A SYN without ACK in the original direction of a connection in
  TIME_WAIT or CLOSE starts the connection afresh (the old entry goes). With
  ``tcp_loose`` (off by default, unlike Linux's nf_conntrack_tcp_loose), a
  mid-stream packet (ACK, no SYN/FIN/RST) of an unknown connection is ``new``
  and commits it straight into ESTABLISHED, as after a restart that lost the
  table; off, such a packet is ``invalid``.
* Life. A connection expires when it has been idle for its timeout
  (:class:`CtTimeouts`, Linux's defaults, per protocol and TCP state); a
  packet at or after the expiry finds no connection, and the entry is removed.
* Capacity. The table holds at most ``capacity`` entries; expired entries
  count until removed (by a packet of theirs or :meth:`ConnTracker.gc`, which
  the caller runs when it chooses, as the agent's collector does for the BPF
  table). A commit into a full table stores nothing and is counted as
  untracked; ``on_full`` says whether that new packet keeps its verdict
  (``allow``, the default: its replies will not be established) or is
  dropped (``drop``, fail closed).
* Revocation (``--revoke-established``, on a policy update). An entry records
  the committing hook (:func:`hook_id`) and, for TCP, the committing packet's
  flags; a connection of the updated hook is removed when the new policy drops
  some packet that could have committed it as recorded (:func:`revokes`).

Times are integer nanoseconds on a clock that never goes back.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from ir.algebra import Cube, cube, intersect, is_feasible
from ir.analysis import deciding_witnesses
from ir.fields import (
    FAMILY_IPV4,
    FRAG_LATER,
    HEADER_SPACE,
    PORT_PROTOCOLS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_BY_NUMBER,
    STATE_BY_NUMBER,
    STATE_ESTABLISHED,
    STATE_INVALID,
    STATE_NEW,
    STATE_RELATED,
    TCP_FLAG_BITS,
    Space,
)
from ir.interp import Verdict, evaluate
from ir.model import DROP, Action, Policy
from ir.packet import Packet
from ir.valueset import ValueSet

NS_PER_S = 1_000_000_000

FIN = TCP_FLAG_BITS["fin"]
SYN = TCP_FLAG_BITS["syn"]
RST = TCP_FLAG_BITS["rst"]
ACK = TCP_FLAG_BITS["ack"]
URG = TCP_FLAG_BITS["urg"]
# The flags the kernel's TCP tracker judges (nf_conntrack_proto_tcp.c
# tcp_valid_flags); PSH, ECE and CWR may accompany any of these.
TCP_JUDGED_FLAGS = FIN | SYN | RST | ACK | URG
TCP_VALID_FLAGS = frozenset(
    {
        SYN,
        SYN | URG,
        SYN | ACK,
        RST,
        RST | ACK,
        FIN | ACK,
        FIN | ACK | URG,
        ACK,
        ACK | URG,
    }
)

# ICMP echo request/reply types, and the error types that embed a header, per family.
ICMP_ECHO = {4: (8, 0), 6: (128, 129)}
ICMP_ERRORS = {4: frozenset({3, 4, 5, 11, 12}), 6: frozenset({1, 2, 3, 4})}


class Direction(enum.IntEnum):
    """Which way a packet goes relative to the packet that started its connection."""

    ORIGINAL = 0
    REPLY = 1


class TcpState(enum.IntEnum):
    """The TCP tracker's states (Linux's, with CLOSE_WAIT and LAST_ACK folded
    into FIN_WAIT). The numbers are the BPF table's too."""

    NONE = 0  # not TCP
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    TIME_WAIT = 5
    CLOSE = 6


@dataclass(frozen=True, slots=True)
class CtTimeouts:
    """Idle timeouts in seconds, per protocol and TCP state (Linux's defaults:
    nf_conntrack_tcp_timeout_*, nf_conntrack_udp_timeout[_stream],
    nf_conntrack_icmp_timeout, nf_conntrack_generic_timeout). ``*_stream`` is
    the timeout once a reply was seen."""

    tcp_syn_sent: int = 120
    tcp_syn_recv: int = 60
    tcp: int = 432000  # ESTABLISHED: 5 days
    tcp_fin_wait: int = 120
    tcp_time_wait: int = 120
    tcp_close: int = 10
    udp: int = 30
    udp_stream: int = 120
    sctp: int = 30
    sctp_stream: int = 210
    icmp: int = 30
    other: int = 600

    @staticmethod
    def parse(text: str) -> CtTimeouts:
        """Read ``--ct-timeout`` text: ``NAME=DURATION`` pairs joined by commas,
        a duration in seconds or with a unit (``90``, ``30s``, ``5m``, ``2h``, ``5d``).

        >>> CtTimeouts.parse("tcp=1h,udp=10").tcp, CtTimeouts.parse("udp=10").udp
        (3600, 10)

        Raises:
            ValueError: an unknown name, a malformed or non-positive duration.
        """
        names = [f.name for f in fields(CtTimeouts)]
        values: dict[str, int] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, sep, duration = item.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"expected NAME=DURATION, not {item!r}")
            if name not in names:
                raise ValueError(f"unknown timeout {name!r}; the timeouts are {', '.join(names)}")
            values[name] = parse_duration(duration.strip())
        return CtTimeouts(**values)

    def seconds(self, connection: Connection) -> int:
        """The idle timeout of ``connection`` in its present state."""
        return self.of(connection.key.proto, connection.tcp, connection.replied)

    def of(self, proto: int, tcp: TcpState, replied: bool) -> int:
        """The idle timeout of a connection of ``proto`` in TCP state ``tcp``."""
        if proto == PROTO_TCP:
            return int(getattr(self, _TCP_TIMEOUT[tcp]))
        if proto == PROTO_UDP:
            return self.udp_stream if replied else self.udp
        if proto == PROTO_SCTP:
            return self.sctp_stream if replied else self.sctp
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return self.icmp
        return self.other


# CtTimeouts' field per TcpState (index = state number; NONE is never TCP).
_TCP_TIMEOUT = (
    "other",
    "tcp_syn_sent",
    "tcp_syn_recv",
    "tcp",
    "tcp_fin_wait",
    "tcp_time_wait",
    "tcp_close",
)

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``text`` (``90``, ``30s``, ``5m``, ``2h``, ``5d``); ValueError if malformed."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration {text!r} is not a number of seconds or N[smhd]")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


ON_FULL_CHOICES = ("allow", "drop")


@dataclass(frozen=True, slots=True)
class CtConfig:
    """How the tracker behaves; every datapath is built from the same values."""

    timeouts: CtTimeouts = field(default_factory=CtTimeouts)
    tcp_loose: bool = False
    capacity: int = 65536
    on_full: str = "allow"

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(
                f"the connection table needs a capacity of at least 1, not {self.capacity}"
            )
        if self.on_full not in ON_FULL_CHOICES:
            raise ValueError(f"on_full is allow or drop, not {self.on_full!r}")


class ConnKey(NamedTuple):
    """A connection's identity in its original direction (a tuple: hashed and
    built once per packet, so cheaply).

    For port protocols ``sport``/``dport`` are the ports; for ICMP echo
    ``sport`` is the echo identifier and ``dport`` 0; for other protocols both
    are 0. Addresses are the integers of the IR's address fields.
    """

    family: int
    proto: int
    src: int
    dst: int
    sport: int = 0
    dport: int = 0

    def reversed(self) -> ConnKey:
        """The key as a packet in the reply direction carries it."""
        if self.proto in PORT_PROTOCOLS:
            return ConnKey(self.family, self.proto, self.dst, self.src, self.dport, self.sport)
        return ConnKey(self.family, self.proto, self.dst, self.src, self.sport, self.dport)

    def __str__(self) -> str:
        """The key in the packet syntax's words (``tcp 10.0.0.1:1 -> 10.0.0.2:80``)."""
        word = PROTOCOL_BY_NUMBER.get(self.proto, str(self.proto))
        src, dst = self._address(self.src), self._address(self.dst)
        if self.proto in PORT_PROTOCOLS:
            if self.family != FAMILY_IPV4:
                src, dst = f"[{src}]", f"[{dst}]"
            return f"{word} {src}:{self.sport} -> {dst}:{self.dport}"
        if self.proto in (PROTO_ICMP, PROTO_ICMPV6):
            return f"{word} {src} -> {dst} id {self.sport}"
        return f"{word} {src} -> {dst}"

    def _address(self, value: int) -> str:
        if self.family == FAMILY_IPV4:
            return str(ipaddress.IPv4Address(value))
        return str(ipaddress.IPv6Address(value))


class Connection(NamedTuple):
    """One table entry (immutable; the tracker replaces it on every packet).

    Attributes:
        key: the identity in the original direction.
        replied: a reply has been seen (then both directions are established).
        tcp: the TCP state (NONE for other protocols).
        fin_from: bit per Direction that has sent a FIN (TCP).
        expires_ns: the time at which the connection is gone unless a packet comes first.
        created_ns, last_ns: when it was committed and last saw a packet.
        packets: packets seen (original, reply), the committing one included.
        hook: the policy (hook) whose verdict committed it ("" when not known;
            the BPF table records only its :func:`hook_id`).
        hook_id: :func:`hook_id` of that policy's name (0 when not known).
        start_flags: the committing packet's TCP flags (0 for other protocols).
            With the tuple and the hook, all ``--revoke-established`` goes by
            (:func:`revokes`): what every datapath's table records.
    """

    key: ConnKey
    replied: bool
    tcp: TcpState
    fin_from: int
    expires_ns: int
    created_ns: int
    last_ns: int
    packets: tuple[int, int] = (1, 0)
    hook: str = ""
    hook_id: int = 0
    start_flags: int = 0

    @property
    def steady(self) -> bool:
        """Replied and, for TCP, past the handshake and before any FIN or RST: every
        packet of it without SYN, FIN or RST is established and changes nothing but
        its idle timer (what a cache in front of the tracker may carry)."""
        return self.replied and self.tcp in (TcpState.NONE, TcpState.ESTABLISHED)


class Observation(NamedTuple):
    """What the tracker made of a packet before the policy decides.

    Attributes:
        state: STATE_NEW, STATE_ESTABLISHED, STATE_RELATED or STATE_INVALID.
        key: the original-direction key of the packet's connection: the stored
            one, or the one a commit would store; None when the packet cannot
            belong to a stored connection (an unstorable new packet, invalid).
        direction: the packet's direction in that connection (None with key None).
        stored: the connection was in the table (so a commit adds nothing).
        starts: what a commit would store (TCP state), None when committing
            stores nothing (already stored, or a packet that cannot start one).
        reason: for invalid packets, why (for humans and counters).
    """

    state: int
    key: ConnKey | None = None
    direction: Direction | None = None
    stored: bool = False
    starts: TcpState | None = None
    reason: str = ""

    @property
    def state_name(self) -> str:
        """The state as the DSL writes it."""
        return STATE_BY_NUMBER[self.state]


@dataclass(frozen=True, slots=True)
class StatefulVerdict:
    """One packet through the tracker and a policy.

    Attributes:
        verdict: the policy's verdict for the packet with its state.
        observation: the tracker's view of the packet before the decision.
        committed: this packet stored a connection.
        untracked: the packet would have committed but the table was full.
        action: what happens to the packet (the verdict's action, or drop when
            the table was full and ``on_full`` is drop).
    """

    verdict: Verdict
    observation: Observation
    committed: bool
    untracked: bool
    action: Action

    @property
    def state(self) -> int:
        """The packet's state before the decision."""
        return self.observation.state


COUNTERS = (
    "commits",
    "untracked",
    "expired",
    "collected",
    "closed",
    "revoked",
    "invalid",
    "new",
    "established",
    "related",
)
"""The tracker's counters (README, "Connection tracking"): commits; commits
refused by a full table; entries found expired by a packet, removed by gc,
replaced by a reopening SYN, revoked by a policy update; and packets per state."""


class ConnTracker:
    """A host's connection table and the rules above (see the module doc)."""

    can_revoke = True
    """Entries record the committing hook and TCP flags, so :meth:`revoke` can decide."""

    def __init__(self, config: CtConfig | None = None) -> None:
        self.config = config if config is not None else CtConfig()
        self._table: dict[ConnKey, Connection] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._now_ns = 0

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._table)

    def connections(self) -> Iterator[Connection]:
        """Every stored entry (expired ones included until removed), oldest first."""
        return iter(list(self._table.values()))

    def get(self, key: ConnKey) -> Connection | None:
        """The stored entry with original-direction ``key`` (expired or not), if any."""
        return self._table.get(key)

    # ------------------------------------------------------------ the clock
    def _advance(self, now_ns: int) -> None:
        if now_ns < self._now_ns:
            raise ValueError(
                f"time went back: {now_ns / NS_PER_S:g} s after {self._now_ns / NS_PER_S:g} s"
            )
        self._now_ns = now_ns

    # ------------------------------------------------------------ step 1
    def observe(self, packet: Packet, now_ns: int) -> Observation:
        """The packet's state, updating the connection it belongs to (see the module doc)."""
        self._advance(now_ns)
        observation = self._observe(packet, now_ns)
        self.counters[observation.state_name] += 1
        return observation

    def _observe(self, packet: Packet, now_ns: int) -> Observation:
        values = packet.values
        family = values[_FAMILY]
        proto = values[_PROTO]
        if values[_FRAG] == FRAG_LATER:
            return Observation(STATE_NEW)  # no ports: no connection to find
        if proto in (PROTO_ICMP, PROTO_ICMPV6) and is_icmp_of(family, proto):
            return self._observe_icmp(packet, family, now_ns)
        key = _key_of(packet)
        found = self._find(key, now_ns)
        if proto == PROTO_TCP:
            return self._observe_tcp(packet, key, found, now_ns)
        if found is None:
            return Observation(STATE_NEW, key, Direction.ORIGINAL, starts=TcpState.NONE)
        connection, direction = found
        return self._touch(connection, direction, now_ns)

    def _observe_icmp(self, packet: Packet, family: int, now_ns: int) -> Observation:
        icmp_type = packet.get("icmp_type")
        request, reply = ICMP_ECHO[family]
        if icmp_type in ICMP_ERRORS[family]:
            inner = packet.embedded
            if inner is None or inner.get("frag") == FRAG_LATER:
                return self._invalid("ICMP error without an embedded header it can be tied to")
            if (
                is_icmp_of(inner.get("family"), inner.get("ip_proto"))
                and inner.get("icmp_type") not in ICMP_ECHO[inner.get("family")]
            ):
                return self._invalid("ICMP error about an ICMP message that is not echo")
            if self._find(_key_of(inner), now_ns) is None:
                return self._invalid("ICMP error about no tracked connection")
            return Observation(STATE_RELATED)
        if icmp_type not in (request, reply):
            return Observation(STATE_NEW)  # connectionless ICMP: decided alone, never stored
        key = ConnKey(
            family,
            packet.get("ip_proto"),
            *_addresses(packet),
            packet.echo_id,
            0,
        )
        if icmp_type == request:
            stored = self._live(key, now_ns)
            if stored is None:
                return Observation(STATE_NEW, key, Direction.ORIGINAL, starts=TcpState.NONE)
            return self._touch(stored, Direction.ORIGINAL, now_ns)
        stored = self._live(key.reversed(), now_ns)
        if stored is None:
            return self._invalid("echo reply to no echo request")
        return self._touch(stored, Direction.REPLY, now_ns)

    def _observe_tcp(
        self,
        packet: Packet,
        key: ConnKey,
        found: tuple[Connection, Direction] | None,
        now_ns: int,
    ) -> Observation:
        flags = packet.get("tcp_flags")
        judged = flags & TCP_JUDGED_FLAGS
        if judged not in TCP_VALID_FLAGS:
            return self._invalid(f"TCP flags {_flag_words(flags)} are never valid")
        kind = _tcp_kind(judged)
        if found is None:
            if kind == "syn":
                return Observation(STATE_NEW, key, Direction.ORIGINAL, starts=TcpState.SYN_SENT)
            if kind == "ack" and self.config.tcp_loose:
                return Observation(STATE_NEW, key, Direction.ORIGINAL, starts=TcpState.ESTABLISHED)
            return self._invalid(f"TCP {_flag_words(flags)} of no tracked connection")
        connection, direction = found
        tcp = connection.tcp
        after: TcpState | None = None
        fin_from = connection.fin_from
        if kind == "rst":
            after = TcpState.CLOSE
        elif kind == "syn":
            if direction == Direction.ORIGINAL and tcp == TcpState.SYN_SENT:
                after = tcp  # a retransmitted SYN
            elif direction == Direction.ORIGINAL and tcp in (TcpState.TIME_WAIT, TcpState.CLOSE):
                # The port pair is reused: the old connection is over.
                del self._table[connection.key]
                self.counters["closed"] += 1
                return Observation(STATE_NEW, key, Direction.ORIGINAL, starts=TcpState.SYN_SENT)
        elif kind == "synack":
            if direction == Direction.REPLY and tcp in (TcpState.SYN_SENT, TcpState.SYN_RECV):
                after = TcpState.SYN_RECV
        elif tcp == TcpState.SYN_SENT:
            after = None  # only a SYN+ACK or RST may answer a SYN
        elif tcp == TcpState.CLOSE:
            after = None
        else:  # ack or fin on a connection past the handshake
            after = tcp
            if tcp == TcpState.SYN_RECV and direction == Direction.ORIGINAL:
                after = TcpState.ESTABLISHED
            if kind == "fin":
                fin_from |= 1 << direction
                after = TcpState.TIME_WAIT if fin_from == 0b11 else TcpState.FIN_WAIT
        if after is None:
            return self._invalid(
                f"TCP {_flag_words(flags)} in the {direction.name.lower()} direction "
                f"does not fit a connection in {tcp.name}"
            )
        return self._touch(connection, direction, now_ns, tcp=after, fin_from=fin_from)

    def _invalid(self, reason: str) -> Observation:
        return Observation(STATE_INVALID, reason=reason)

    def _touch(
        self,
        connection: Connection,
        direction: Direction,
        now_ns: int,
        *,
        tcp: TcpState | None = None,
        fin_from: int | None = None,
    ) -> Observation:
        """Update ``connection`` for a packet in ``direction``; the packet's observation."""
        replied = connection.replied or direction == Direction.REPLY
        original, reply = connection.packets
        tcp = connection.tcp if tcp is None else tcp
        key = connection.key
        timeout_ns = self.config.timeouts.of(key.proto, tcp, replied) * NS_PER_S
        self._table[key] = Connection(
            key,
            replied,
            tcp,
            connection.fin_from if fin_from is None else fin_from,
            now_ns + timeout_ns,
            connection.created_ns,
            now_ns,
            (original + 1, reply) if direction == Direction.ORIGINAL else (original, reply + 1),
            connection.hook,
            connection.hook_id,
            connection.start_flags,
        )
        state = STATE_ESTABLISHED if replied else STATE_NEW
        return Observation(state, connection.key, direction, stored=True)

    def _expired(self, connection: Connection, now_ns: int) -> bool:
        """True (and the entry removed) when ``connection`` is past its expiry."""
        if now_ns < connection.expires_ns:
            return False
        del self._table[connection.key]
        self.counters["expired"] += 1
        return True

    def _live(self, key: ConnKey, now_ns: int) -> Connection | None:
        """The entry stored under ``key`` unless absent or expired (then removed)."""
        stored = self._table.get(key)
        if stored is None or self._expired(stored, now_ns):
            return None
        return stored

    def _find(self, key: ConnKey, now_ns: int) -> tuple[Connection, Direction] | None:
        """The live connection ``key`` belongs to, and the direction it goes in."""
        stored = self._live(key, now_ns)
        if stored is not None:
            return stored, Direction.ORIGINAL
        # Reversed only when needed: most packets go in their connection's
        # original direction, and the reverse key is a new tuple per packet.
        stored = self._live(key.reversed(), now_ns)
        return None if stored is None else (stored, Direction.REPLY)

    # ------------------------------------------------------------ step 2
    def commit(
        self,
        observation: Observation,
        now_ns: int,
        *,
        hook: str = "",
        packet: Packet | None = None,
    ) -> bool:
        """Store the connection ``observation`` starts (after the policy let its packet
        through at ``hook``; ``packet`` is that packet); False when it starts none or
        the table is full (counted untracked)."""
        self._advance(now_ns)
        if observation.starts is None or observation.key is None or observation.stored:
            return False
        if len(self._table) >= self.config.capacity:
            self.counters["untracked"] += 1
            return False
        key, tcp = observation.key, observation.starts
        timeout_ns = self.config.timeouts.of(key.proto, tcp, False) * NS_PER_S
        self._table[key] = Connection(
            key,
            replied=False,
            tcp=tcp,
            fin_from=0,
            expires_ns=now_ns + timeout_ns,
            created_ns=now_ns,
            last_ns=now_ns,
            hook=hook,
            hook_id=hook_id(hook) if hook else 0,
            start_flags=packet.get("tcp_flags")
            if packet is not None and key.proto == PROTO_TCP
            else 0,
        )
        self.counters["commits"] += 1
        return True

    def would_refuse(self, observation: Observation) -> bool:
        """True when committing ``observation`` now would fail for want of room."""
        return (
            observation.starts is not None
            and not observation.stored
            and len(self._table) >= self.config.capacity
        )

    # ------------------------------------------------------------ both
    def step(self, policy: Policy, packet: Packet, now_ns: int) -> StatefulVerdict:
        """One packet at ``policy``'s hook: observe, decide with the state, commit."""
        observation = self.observe(packet, now_ns)
        verdict = evaluate(policy, packet.with_field("state", observation.state))
        committed = untracked = False
        action = verdict.action
        if (
            verdict.action.kind != DROP
            and observation.starts is not None
            and not observation.stored
        ):
            untracked = self.would_refuse(observation)
            committed = self.commit(observation, now_ns, hook=policy.name, packet=packet)
            if untracked and self.config.on_full == "drop":
                action = Action(DROP)
        return StatefulVerdict(verdict, observation, committed, untracked, action)

    # ------------------------------------------------------------ for caches
    def find(self, packet: Packet, now_ns: int) -> tuple[Connection, Direction] | None:
        """The live stored connection ``packet`` belongs to and its direction, without
        changing anything (what a cache asks before it carries a flow)."""
        return find_connection(self._table.get, packet, now_ns)

    def refresh(self, key: ConnKey, seen_ns: int) -> bool:
        """A packet of ``key``'s connection was seen at ``seen_ns`` by something in
        front of the tracker (a cache rule's last use): extend its idle timer from
        then. False when the connection is gone or expired by then."""
        stored = self._table.get(key)
        if stored is None or seen_ns >= stored.expires_ns:
            return False
        if seen_ns > stored.last_ns:
            timeout_ns = self.config.timeouts.seconds(stored) * NS_PER_S
            self._table[key] = stored._replace(last_ns=seen_ns, expires_ns=seen_ns + timeout_ns)
        return True

    def remove(self, key: ConnKey) -> bool:
        """Forget ``key``'s connection; False when there was none."""
        return self._table.pop(key, None) is not None

    def revoke(self, policy: Policy) -> list[ConnKey]:
        """``--revoke-established``: remove the connections committed at ``policy``'s
        hook that ``policy`` would no longer let start (:func:`revokes`). Returns
        their keys."""
        gone = [c.key for c in revoked(policy, list(self._table.values()))]
        for key in gone:
            del self._table[key]
        self.counters["revoked"] += len(gone)
        return gone

    # ------------------------------------------------------------ housekeeping
    def gc(self, now_ns: int) -> int:
        """Remove every entry expired at ``now_ns``; how many went."""
        self._advance(now_ns)
        gone = [key for key, c in self._table.items() if now_ns >= c.expires_ns]
        for key in gone:
            del self._table[key]
        self.counters["collected"] += len(gone)
        return len(gone)

    def flush(self) -> int:
        """Remove every entry; how many there were."""
        count = len(self._table)
        self._table.clear()
        return count


def find_connection(
    get: Callable[[ConnKey], Connection | None], packet: Packet, now_ns: int
) -> tuple[Connection, Direction] | None:
    """The live connection ``packet`` belongs to in the table ``get`` reads (the
    reference's dict or the BPF map), and its direction; nothing is changed."""
    for candidate, direction in candidate_keys(packet):
        stored = get(candidate)
        if stored is not None and now_ns < stored.expires_ns:
            return stored, direction
    return None


def candidate_keys(packet: Packet) -> list[tuple[ConnKey, Direction]]:
    """The original-direction keys ``packet``'s connection may be stored under, with
    the direction the packet would go in: its own tuple, then the reversed one;
    for ICMP echo the one its type allows; none for what is never stored."""
    family, proto = packet.get("family"), packet.get("ip_proto")
    if packet.get("frag") == FRAG_LATER:
        return []
    if is_icmp_of(family, proto):
        request, reply = ICMP_ECHO[family]
        icmp_type = packet.get("icmp_type")
        key = ConnKey(family, proto, *_addresses(packet), packet.echo_id, 0)
        if icmp_type == request:
            return [(key, Direction.ORIGINAL)]
        if icmp_type == reply:
            return [(key.reversed(), Direction.REPLY)]
        return []
    key = _key_of(packet)
    return [(key, Direction.ORIGINAL), (key.reversed(), Direction.REPLY)]


def is_icmp_of(family: int, proto: int) -> bool:
    """True for ICMP of its own family (ICMPv4 in IPv4, ICMPv6 in IPv6): the
    protocol keyed by echo identifier and type rather than by a reversible tuple."""
    return (family, proto) in ((4, PROTO_ICMP), (6, PROTO_ICMPV6))


# Field positions, read straight from Packet.values on the hot path (what
# Packet.get does, without its name lookup per call).
_AT = HEADER_SPACE.index
_FAMILY, _PROTO, _FRAG = _AT["family"], _AT["ip_proto"], _AT["frag"]
_IP4_SRC, _IP4_DST = _AT["ip4_src"], _AT["ip4_dst"]
_IP6_SRC, _IP6_DST = _AT["ip6_src"], _AT["ip6_dst"]
_SPORT, _DPORT = _AT["sport"], _AT["dport"]


def _addresses(packet: Packet) -> tuple[int, int]:
    v = packet.values
    if v[_FAMILY] == FAMILY_IPV4:
        return v[_IP4_SRC], v[_IP4_DST]
    return v[_IP6_SRC], v[_IP6_DST]


def _key_of(packet: Packet) -> ConnKey:
    """The key of a (non-ICMP-echo) packet as it travels: its own direction's tuple."""
    v = packet.values
    family, proto = v[_FAMILY], v[_PROTO]
    if proto in PORT_PROTOCOLS:
        if family == FAMILY_IPV4:
            return ConnKey(family, proto, v[_IP4_SRC], v[_IP4_DST], v[_SPORT], v[_DPORT])
        return ConnKey(family, proto, v[_IP6_SRC], v[_IP6_DST], v[_SPORT], v[_DPORT])
    src, dst = _addresses(packet)
    if is_icmp_of(family, proto):
        # An embedded echo: the error is about the echo conversation.
        icmp_type = packet.get("icmp_type")
        key = ConnKey(family, proto, src, dst, packet.echo_id, 0)
        return key.reversed() if icmp_type == ICMP_ECHO[family][1] else key
    return ConnKey(family, proto, src, dst)


def _tcp_kind(judged: int) -> str:
    """Linux's TCP flag index: rst, synack, syn, fin or ack."""
    if judged & RST:
        return "rst"
    if judged & SYN:
        return "synack" if judged & ACK else "syn"
    if judged & FIN:
        return "fin"
    return "ack"


def _flag_words(flags: int) -> str:
    names = [name for name, bit in TCP_FLAG_BITS.items() if flags & bit]
    return "+".join(n.upper() for n in names) if names else "with no flags"


# ---------------------------------------------------------------- revocation
#
# A table entry records the connection's original-direction tuple, the hook
# that committed it (hook_id) and, for TCP, the committing packet's flags: all
# a datapath's table can afford per entry (the BPF table has five spare bytes
# per entry, not a packet). Revocation goes by exactly that, in every table,
# so the reference and the kernel revoke the same connections: a connection
# is revoked when the new policy of its hook would drop SOME packet that
# could have committed it as recorded (its tuple, state new, its TCP flags,
# anything in every field the entry does not record: DSCP, VLAN, fragment
# state). Where the new policy looks only at recorded fields that is the
# committing packet's own verdict; where it tells such packets apart by an
# unrecorded field, the connection goes (fail closed: a policy change never
# keeps a connection it might have refused).

_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


@functools.lru_cache(maxsize=1024)
def hook_id(name: str) -> int:
    """The 32-bit id a table entry records for the hook (policy) ``name`` that
    committed it: FNV-1a of the name's UTF-8 bytes, never 0 (0: not recorded).

    >>> hex(hook_id("web_in"))
    '0xfc824855'
    """
    value = _FNV_OFFSET
    for byte in name.encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value or 1


def commit_cube(key: ConnKey, start_flags: int = 0, space: Space = HEADER_SPACE) -> Cube:
    """The packets that could have committed connection ``key`` as its entry
    records it: the original-direction tuple, state ``new``, an echo request
    for ICMP echo, ``start_flags`` for TCP; every other field free."""
    width = 32 if key.family == FAMILY_IPV4 else 128
    prefix = "ip4" if key.family == FAMILY_IPV4 else "ip6"
    constraints = {
        "family": ValueSet.of_value(8, key.family),
        "ip_proto": ValueSet.of_value(8, key.proto),
        "state": ValueSet.of_value(2, STATE_NEW),
        f"{prefix}_src": ValueSet.of_value(width, key.src),
        f"{prefix}_dst": ValueSet.of_value(width, key.dst),
    }
    if key.proto in PORT_PROTOCOLS:
        constraints["sport"] = ValueSet.of_value(16, key.sport)
        constraints["dport"] = ValueSet.of_value(16, key.dport)
    elif is_icmp_of(key.family, key.proto):
        constraints["icmp_type"] = ValueSet.of_value(8, ICMP_ECHO[key.family][0])
    if key.proto == PROTO_TCP:
        constraints["tcp_flags"] = ValueSet.of_value(8, start_flags)
    return cube(space, **constraints)


def revokes(policy: Policy, connection: Connection, space: Space = HEADER_SPACE) -> bool:
    """Whether ``--revoke-established`` removes ``connection`` when ``policy``
    becomes its hook's policy: ``policy`` drops some packet of its
    :func:`commit_cube` (see the note above). Exact over that cube: the rules
    meeting it, up to the first that holds it whole, searched for one packet
    per rule that the rule decides; a search that gives up counts as a drop."""
    committing = commit_cube(connection.key, connection.start_flags, space)
    met: list[tuple[Cube, bool]] = []
    for rule in policy.rules:
        part = intersect(committing, rule.match.cube)
        if part is None or not is_feasible(space, part):
            continue
        met.append((part, rule.action.kind == DROP))
        if all(a.is_subset(b) for a, b in zip(committing.sets, rule.match.cube.sets, strict=True)):
            break
    if not any(drops for _, drops in met):
        return False
    if met[0][1] and len(met) == 1:
        return True
    found = deciding_witnesses([part for part, _ in met], space=space)
    return any(met[i][1] for _, i in found.witnesses) or any(met[i][1] for i in found.gave_up)


def revoked(policy: Policy, connections: Iterable[Connection]) -> list[Connection]:
    """The connections of ``connections`` that ``--revoke-established`` removes
    when ``policy`` becomes its hook's policy: those committed at that hook
    (by :func:`hook_id`) that :func:`revokes` says go. Every table's revoke."""
    hook = hook_id(policy.name)
    return [c for c in connections if c.hook_id == hook and revokes(policy, c)]
