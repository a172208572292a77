"""The agent on a netkit device: the slow path as the device's own program,
behind the bpf link flowc pins for that hook.

A netkit device has no qdisc, so no flower table sits in front of its program
and there is nothing to cache here: the NIC's cache belongs on the uplink
(README, "Where flower fits"). What the agent does on a netkit hook is what it
does for the slow path on a tc hook, without the cache:

* **start**: refuse a kernel without netkit (:class:`runtime.tc_attach.HookUnavailable`,
  naming the feature) and a device that is not a netkit primary before any
  compile; load the program; attach it through the hook's pinned link. A link
  a previous run pinned (``--keep``, a crash, an upgrade) is **adopted**: the
  new program is swapped in behind it with BPF_LINK_UPDATE, so between the two
  agents the container was enforced by the old program and never fell back
  to its pair's default policy. On a host that tracks connections the table
  is pinned too, so established connections survive the restart.
* **policy update** (SIGHUP, an edit): in place when the maps keep their shape
  (the bank flip), otherwise a new program swapped behind the same link
  (atomic: no packet meets no program); a policy that does not compile, does
  not load, or diverts where a netkit program cannot is refused and the
  running one stays.
* **poll**: per-rule counters and the connection table's size into the
  metrics snapshot (the same exporter and ``flowc agent status``).
* **stop**: the link detached and its pin removed, returning the device to its
  default policy, unless ``keep``: then the program goes on enforcing with no
  agent, for the next one to adopt.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import ShapeChanged, lower
from backends.targets import NETKIT
from ir.model import Policy
from runtime import bpf_loader, netkit, tc_attach
from runtime.agent.core import AgentConfig, Snapshot, slow_path_counters
from runtime.agent.counters import Counters
from runtime.agent.ct_watch import ConnectionWatch
from runtime.agent.host_table import HostConnectionTable
from runtime.agent.loop import AgentError, PolicyLoop
from runtime.agent.seams import ConnectionTable, SlowPath, SlowPathFactory
from runtime.bpf_syscall import LinkInfo
from runtime.conntrack import CtTable, CtTableError

log = logging.getLogger("flowc.agent")

MODE = "netkit"


class NetkitAgent(PolicyLoop):
    """One netkit hook's agent. :meth:`start`, then :meth:`run`, then :meth:`stop`.

    ``slow_path`` loads the program for a (policy, generation) instead of
    compiling it with bcc (tests hand over programs compiled in one batch);
    ``attach=False`` leaves it unattached and skips the device checks (unit
    tests, with :class:`runtime.agent.slow_path_model.SlowPathModel`).
    """

    def __init__(
        self,
        config: AgentConfig,
        load_policy: Callable[[], Policy],
        *,
        clock: Callable[[], float] = time.monotonic,
        slow_path: SlowPathFactory | None = None,
        attach: bool = True,
    ) -> None:
        super().__init__(load_policy, clock, config.poll_interval)
        self.config = config
        self.make_slow_path = slow_path or self._load_bpf_slow_path
        self.attach_slow_path = attach
        self.slow_path: SlowPath | None = None
        self.connections: ConnectionTable | None = None
        self.ct_watch: ConnectionWatch | None = None
        self.adopted: LinkInfo | None = None
        """The link a previous run left on this hook, as found at start (None: a new one)."""
        self.snapshot: Snapshot | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Check the hook, load the program and attach it (adopting flowc's pinned
        link when there is one); ready for :meth:`run`."""
        cfg = self.config
        if cfg.revoke_established and not cfg.stateful:
            raise AgentError("revoke_established needs connection tracking (a stateful host)")
        policy = self.load_policy()
        if self.attach_slow_path:
            # Before the compile: a kernel without netkit, or the wrong kind of
            # device, is known in a millisecond (HookUnavailable propagates).
            try:
                tc_attach.check_hook(cfg.device, MODE)
                self.adopted = tc_attach.held_link(cfg.device, cfg.direction, MODE)
            except tc_attach.HookUnavailable:
                raise
            except tc_attach.AttachError as exc:
                raise AgentError(str(exc)) from None
            self._check_diversions(policy)
        self.generation = 1
        self.policy = policy
        self.slow_path = self.make_slow_path(policy, self.generation)
        self._attach(self.slow_path)
        if cfg.stateful:
            self.connections = self._open_connection_table()
            self.ct_watch = ConnectionWatch(self.connections, cfg.ct_gc_interval, self.clock())
        log.info(
            "started",
            extra={
                "fields": {
                    "device": cfg.device,
                    "direction": cfg.direction,
                    "attach": MODE,
                    "policy": policy.name,
                    "rules": len(policy.rules),
                    "generation": self.generation,
                    "adopted_link": self.adopted.link_id if self.adopted else None,
                    "previous_program": self.adopted.prog_id if self.adopted else None,
                }
            },
        )
        self._take_snapshot()

    def _check_diversions(self, policy: Policy) -> None:
        try:
            netkit.check_diversion_targets(
                self.config.device, self.config.direction, netkit.diversion_targets(policy)
            )
        except netkit.NetkitError as exc:
            raise AgentError(str(exc)) from None

    def _load_bpf_slow_path(self, policy: Policy, generation: int) -> SlowPath:
        """The real program: the policy lowered for netkit and loaded with bcc
        (no miss events: nothing here caches flows)."""
        # On a host that tracks connections every hook commits, this one too.
        conntrack = CtSpec() if self.config.stateful else None
        program = lower(policy, self.config.strategy, target=NETKIT, conntrack=conntrack)
        return bpf_loader.SlowPath(program, generation=generation)

    def _attach(self, slow_path: SlowPath) -> None:
        if not self.attach_slow_path:
            return
        try:
            tc_attach.attach(slow_path.fd, self.config.device, self.config.direction, mode=MODE)
        except tc_attach.AttachError as exc:
            raise AgentError(str(exc)) from None

    def _open_connection_table(self) -> ConnectionTable:
        """The host's pinned BPF connection table (loading the program created it)."""
        assert self.slow_path is not None
        spec = getattr(getattr(self.slow_path, "program", None), "conntrack", None)
        if spec is None:
            raise AgentError("the host tracks connections but the slow path was built without")
        try:
            return HostConnectionTable(CtTable(spec.pin), spec.config)
        except CtTableError as exc:
            raise AgentError(str(exc)) from None

    # ------------------------------------------------------------------- loop
    def wait(self) -> None:
        """Nothing arrives between polls here: sleep briefly (a signal is seen at once)."""
        time.sleep(min(0.05, self.poll_interval))

    def poll(self) -> None:
        """Collect expired connections (stateful hosts) and refresh the metrics
        snapshot from the program's counters."""
        assert self.slow_path is not None
        status = self.slow_path.status()  # one read for the collector and the snapshot
        if self.ct_watch is not None:
            self.ct_watch.poll(self.clock(), status)
        self._take_snapshot(status)

    # ----------------------------------------------------------------- update
    def update(self, policy: Policy) -> None:
        """Switch to ``policy``: in place when the maps keep their shape, else a new
        program swapped behind the same link (BPF_LINK_UPDATE, atomic)."""
        assert self.slow_path is not None
        if self.attach_slow_path:
            self._check_diversions(policy)
        generation = self.generation + 1
        try:
            self.slow_path.update(policy, generation=generation)
            swapped = False
        except ShapeChanged:
            fresh = self.make_slow_path(policy, generation)
            try:
                self._attach(fresh)
            except AgentError:
                fresh.close()
                raise
            self.slow_path.close()
            self.slow_path = fresh
            swapped = True
        previous, self.generation, self.policy = self.generation, generation, policy
        self.stats["policy_updates"] += 1
        if self.connections is not None and self.config.revoke_established:
            self.stats["revoked"] += len(self.connections.revoke(policy))
        log.info(
            "policy updated",
            extra={
                "fields": {
                    "generation": generation,
                    "previous_generation": previous,
                    "rules": len(policy.rules),
                    "new_program": swapped,
                }
            },
        )

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Detach the link and remove its pin (unless ``keep``); release handles."""
        if not self.config.keep and self.attach_slow_path and self.slow_path is not None:
            with contextlib.suppress(tc_attach.AttachError):
                tc_attach.detach(self.config.device, self.config.direction, mode=MODE)
        if self.slow_path is not None:
            self.slow_path.close()
            self.slow_path = None
        log.info("stopped", extra={"fields": {"kept": self.config.keep}})

    # ------------------------------------------------------------ observation
    def _take_snapshot(self, status: dict[str, int] | None = None) -> None:
        assert self.policy is not None and self.slow_path is not None
        stats = Counters(self.stats)
        if status is None:
            status = self.slow_path.status()
        stats["slow_path_events_lost"] = status["events_lost"]
        stats["slow_path_events_sent"] = status["events_sent"]
        if self.ct_watch is not None:
            self.ct_watch.count_into(stats, status)
        gauges = {
            "generation": float(self.generation),
            "ct_entries": float(len(self.connections)) if self.connections is not None else 0.0,
            "ct_commits_per_second": self.ct_watch.commit_rate if self.ct_watch else 0.0,
        }
        counters = slow_path_counters(len(self.policy.rules), self.slow_path)
        rules = tuple(
            (index, str(rule.origin), rule.origin.text, counted)
            for index, (rule, counted) in enumerate(zip(self.policy.rules, counters, strict=True))
        )
        self.snapshot = Snapshot(time.time(), self.generation, dict(stats), gauges, rules)
