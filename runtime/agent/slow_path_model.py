"""An in-memory slow path: the BPF program's behaviour, decided by the IR interpreter.

The agent's unit tests (and anything else that cannot load bcc or be root)
hand :class:`SlowPathModel` to the agent in place of
:class:`runtime.bpf_loader.SlowPath`. It keeps what the agent can observe of
the real one:

* :meth:`receive` decides a packet by :func:`ir.interp.evaluate` (the
  reference the real program is tested against), counts it per rule, and
  reports the flow as a :class:`backends.bpf.abi.Event` record, as the
  program writes into its ring buffer: at most once per ``dedup_ns`` per
  flow, stamped with the generation and CLOCK_MONOTONIC nanoseconds;
* the ring holds ``ring_capacity`` records; more are lost and counted
  (``events_lost``), as ``bpf_ringbuf_reserve`` failing is;
* :meth:`poll_events` hands waiting records to the callback of
  :meth:`open_events`; :meth:`update` switches policy and generation and
  restarts the per-rule counters, as the bank flip does;
* with a ``tracker`` (the host's connection table, :class:`ir.conntrack.ConnTracker`),
  a packet is decided by :meth:`ir.conntrack.ConnTracker.step`: its state
  observed, the policy deciding with it, its connection committed, as the
  stateful slow path does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backends.bpf.abi import STATUS_NAMES, Event, FlowKey
from ir.conntrack import ConnTracker
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet


class SlowPathModel:
    """The slow path's observable behaviour, in memory (see the module docstring).

    Args:
        policy: the policy it decides by.
        generation: stamped on miss events.
        dedup_ns: a flow is reported at most once per this interval (0: every packet).
        ring_capacity: records the ring holds until polled.
        clock_ns: CLOCK_MONOTONIC nanoseconds (tests pass a fake one).
        tracker: the host's connection table (None: a stateless slow path).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        generation: int = 1,
        dedup_ns: int = 1_000_000_000,
        ring_capacity: int = 4096,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        tracker: ConnTracker | None = None,
    ) -> None:
        self.policy = policy
        self.generation = generation
        self.dedup_ns = dedup_ns
        self.ring_capacity = ring_capacity
        self.clock_ns = clock_ns
        self.tracker = tracker
        self.actions: list[str] = []  # what happened to each packet, for tests
        self.ring: list[Event] = []
        self.callback: Callable[[Event], None] | None = None
        self.reported: dict[bytes, int] = {}  # flow key -> when it was last reported
        self.counters = dict.fromkeys(STATUS_NAMES, 0)
        self.closed = False
        self._reset_rule_stats()

    def _reset_rule_stats(self) -> None:
        self.stats = [[0, 0, 0] for _ in self.policy.rules]  # packets, bytes, last ns

    # --------------------------------------------------------- the datapath
    def receive(self, packet: Packet, nbytes: int = 64) -> int:
        """Decide ``packet`` as the program would: count it on its rule and report
        the flow when due. Returns the deciding rule's id (its position)."""
        now = self.clock_ns()
        if self.tracker is not None:
            result = self.tracker.step(self.policy, packet, now)
            rule = self.policy.rules.index(result.verdict.rule)
            self.actions.append(result.action.kind)
        else:
            verdict = evaluate(self.policy, packet)
            rule = self.policy.rules.index(verdict.rule)
            self.actions.append(verdict.action.kind)
        stats = self.stats[rule]
        stats[0] += 1
        stats[1] += nbytes
        stats[2] = now
        key = FlowKey.from_packet(packet)
        raw = bytes(key)
        last = self.reported.get(raw)
        if last is not None and self.dedup_ns and now - last < self.dedup_ns:
            return rule
        self.reported[raw] = now
        if len(self.ring) >= self.ring_capacity:
            self.counters["events_lost"] += 1
            return rule
        self.ring.append(Event(key=key, rule=rule, generation=self.generation, ts_ns=now))
        self.counters["events_sent"] += 1
        return rule

    # ------------------------------------------------ the SlowPath protocol
    @property
    def fd(self) -> int:
        """There is no program to attach: asking for its descriptor is an error."""
        raise OSError("the in-memory slow path has no program to attach")

    def update(self, policy: Policy, *, generation: int) -> None:
        """Switch to ``policy`` and ``generation`` at once; per-rule counters restart."""
        self.policy = policy
        self.generation = generation
        self._reset_rule_stats()

    def open_events(self, callback: Callable[[Event], None]) -> None:
        """Deliver records to ``callback`` when :meth:`poll_events` runs."""
        self.callback = callback

    def poll_events(self, timeout_ms: int = 100) -> None:
        """Hand every waiting record to the callback (never waits: nothing else
        can write the ring while the caller runs)."""
        if self.callback is None:
            return
        ring, self.ring = self.ring, []
        for event in ring:
            self.callback(event)

    def rule_stats(self) -> list[tuple[int, int, int]]:
        """(packets, bytes, last hit in CLOCK_MONOTONIC ns or 0) per rule id."""
        return [(p, b, last) for p, b, last in self.stats]

    def status(self) -> dict[str, int]:
        """The status counters, named as the program's."""
        return dict(self.counters)

    def close(self) -> None:
        """Nothing to release; later use is still answered (the real one is not)."""
        self.closed = True

    def __repr__(self) -> str:
        return f"SlowPathModel({self.policy.name}, generation {self.generation})"
