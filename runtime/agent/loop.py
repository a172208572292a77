"""What every agent does over time, whatever it attaches to: follow the policy.

:class:`PolicyLoop` polls on an interval, reloads the policy when asked (SIGHUP)
or when its file changed, and stops when asked. A reload that does not compile,
or does not load, is reported and the running policy stays: an agent must
never be left without a policy because an operator saved a typo. What a poll
and a switch mean is the subclass's: :class:`runtime.agent.core.Agent` (a flower
cache in front of the slow path on a tc hook) and
:class:`runtime.agent.netkit_agent.NetkitAgent` (the slow path as a netkit
device's own program).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ir.model import Policy
from runtime.agent.counters import Counters
from runtime.bpf_loader import BpfLoadError

log = logging.getLogger("flowc.agent")


class AgentError(Exception):
    """The agent cannot start or go on; the message says why in the kernel's words."""


class PolicyLoop:
    """The loop of an agent: :meth:`run` until stopped, :meth:`reload` on request.

    Subclasses provide :meth:`wait` (block briefly for work, handling what
    arrives), :meth:`poll` (the periodic read of counters) and :meth:`update`
    (switch to a new policy, raising :class:`AgentError` when it cannot).
    """

    def __init__(
        self, load_policy: Callable[[], Policy], clock: Callable[[], float], poll_interval: float
    ) -> None:
        self.load_policy = load_policy
        self.clock = clock
        self.poll_interval = poll_interval
        self.policy: Policy | None = None
        self.generation = 0
        self.stats = Counters()
        self.reload_requested = False
        self.stop_requested = False

    def wait(self) -> None:
        """Wait a moment (at most ~50 ms, so signals are seen) for work, and do it."""
        raise NotImplementedError

    def poll(self) -> None:
        """The periodic poll: counters, eviction, the metrics snapshot."""
        raise NotImplementedError

    def update(self, policy: Policy) -> None:
        """Switch to ``policy``; raise AgentError (the running one stays) when it cannot."""
        raise NotImplementedError

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        reload_if: Callable[[], bool] | None = None,
    ) -> None:
        """Wait for work and poll until :attr:`stop_requested` (set by a signal
        handler) or ``until()`` is true; reload the policy when
        :attr:`reload_requested` is set or ``reload_if()`` says the file changed."""
        next_poll = self.clock() + self.poll_interval
        while not self.stop_requested and not (until is not None and until()):
            self.wait()
            now = self.clock()
            if now >= next_poll:
                next_poll = now + self.poll_interval
                if reload_if is not None and reload_if():
                    self.reload_requested = True
                self.poll()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()

    def reload(self) -> bool:
        """Recompile the policy and switch to it; a policy that does not compile
        or load is reported and the running one stays, and an unchanged one is
        left alone. True when switched."""
        try:
            policy = self.load_policy()
        except Exception as exc:  # the loader's own error, already worded for people
            self.stats["policy_update_failures"] += 1
            log.error("policy update refused", extra={"fields": {"error": str(exc)}})
            return False
        if policy == self.policy:
            log.info("policy unchanged", extra={"fields": {"generation": self.generation}})
            return False
        try:
            self.update(policy)
        except (AgentError, BpfLoadError) as exc:
            self.stats["policy_update_failures"] += 1
            log.error("policy update failed", extra={"fields": {"error": str(exc)}})
            return False
        return True
