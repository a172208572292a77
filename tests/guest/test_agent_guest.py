"""``flowc agent`` end to end on a real hook (Debian's kernel under virtme-ng, skip_hw).

One agent process runs in namespace B on B's veth ingress, with no proactive
filters, so every flow starts in the BPF slow path (chain 1). The test sends
real UDP from namespace A and watches the device (flower dumps), the agent's
metrics endpoint and its structured log:

* a flow's first packet is decided by the slow path and becomes a cache rule;
  the flow's later packets are counted by that flower rule, not the slow path;
* with a short ``--max-idle`` the rule goes once the flow stops;
* a policy edit (SIGHUP) revalidates: the rule of a changed line goes, the
  rule of an unchanged line stays, and the changed line's new verdict holds;
* SIGKILL leaves rules and program behind; a new agent adopts the sound
  cache rules, and a clean stop then leaves nothing flowc installed.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.flower.rules import ROLE_CACHE
from runtime import tc_attach
from runtime.agent.metrics import Status, read_status
from runtime.flower_netlink import InstalledFilter
from tests.guest.conftest import Pair, inside
from tests.guest.helpers import EDGE_POLICY, METRICS, AgentProcess, device_filters, pace, wait_for
from tests.netns import received, send_udp

POLICY = EDGE_POLICY


@pytest.fixture
def policy_file(pair: Pair, tmp_path: Path) -> Path:
    path = tmp_path / "edge.fw"
    path.write_text(POLICY.format(dev=pair.dev_b))
    return path


@pytest.fixture
def listeners(pair: Pair) -> Iterator[dict[int, socket.socket]]:
    socks = {}
    with inside(pair.ns_b):
        for port in (5000, 5001, 6000):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((pair.addr_b, port))
            s.settimeout(pace().scaled(0.3))
            socks[port] = s
    yield socks
    for s in socks.values():
        s.close()


def cache_rules(pair: Pair, rule_text: str, status: Status) -> list[InstalledFilter]:
    """The device's cache rules for the policy rule whose DSL text is ``rule_text``."""
    index = next(r.rule for r in status.rules.values() if r.text == rule_text)
    return [
        i
        for i in device_filters(pair)
        if i.filter.cookie is not None
        and i.filter.cookie.role == ROLE_CACHE
        and i.filter.cookie.rule == index
    ]


def cached(pair: Pair, rule_text: str) -> Callable[[], list[InstalledFilter]]:
    """A check for :func:`wait_for`: the current cache rules of ``rule_text``."""
    return lambda: cache_rules(pair, rule_text, status(pair))


def status(pair: Pair) -> Status:
    with inside(pair.ns_b):
        return read_status(f"http://{METRICS}/metrics")


def rule_status(pair: Pair, text: str) -> Any:
    return next(r for r in status(pair).rules.values() if r.text == text)


def test_agent_end_to_end(
    pair: Pair, policy_file: Path, listeners: dict[int, socket.socket], tmp_path: Path
) -> None:
    agent = AgentProcess(pair, policy_file, tmp_path / "agent1.log")
    try:
        # 1. the first packet goes through the slow path and earns a cache rule
        send_udp(pair, 5000)
        assert received(listeners[5000]) == 1
        first = wait_for("a cache rule for dport 5000", lambda: cache_rules(
            pair, "allow udp dport 5000", status(pair)))  # fmt: skip
        (rule,) = first
        assert rule.filter.flags == "skip_hw"
        slow = wait_for("slow-path count", lambda: rule_status(
            pair, "allow udp dport 5000").packets.get("slow"))  # fmt: skip
        assert slow == 1
        # 2. later packets hit the flower rule, not the slow path
        send_udp(pair, 5000, count=5)
        assert received(listeners[5000]) == 5
        (after,) = cache_rules(pair, "allow udp dport 5000", status(pair))
        assert after.packets == rule.packets + 5
        wait_for("cache counts in the metrics", lambda: rule_status(
            pair, "allow udp dport 5000").packets.get("cache", 0) >= 5)  # fmt: skip
        assert rule_status(pair, "allow udp dport 5000").packets["slow"] == 1
        # 3. idle eviction (max idle: helpers.max_idle(), 10 s on an unloaded guest)
        # The metrics are the poll's snapshot, published after its deletes: wait for
        # the count, and the rule must be gone from the device by then.
        wait_for("idle eviction", lambda: status(pair).evictions.get("idle", 0) >= 1, timeout=30)
        assert not cache_rules(pair, "allow udp dport 5000", status(pair))
        # 4. a policy update revalidates: 5001's rule changes verdict, 5000's does not
        send_udp(pair, 5000)
        send_udp(pair, 5001)
        assert received(listeners[5000]) == 1 and received(listeners[5001]) == 1
        wait_for("a cache rule for 5000 again", cached(pair, "allow udp dport 5000"))
        wait_for("a cache rule for 5001", cached(pair, "allow udp dport 5001"))
        policy_file.write_text(
            POLICY.format(dev=pair.dev_b).replace("allow udp dport 5001", "drop udp dport 5001")
        )
        agent.signal(signal.SIGHUP)
        wait_for("the update", lambda: status(pair).agent.get("generation") == 2)
        after_update = status(pair)
        assert after_update.evictions["revalidation"] >= 1
        assert cache_rules(pair, "allow udp dport 5000", after_update), "unchanged rule kept"
        assert not cache_rules(pair, "drop udp dport 5001", after_update)
        send_udp(pair, 5001, count=3)
        assert received(listeners[5001]) == 0  # the new verdict holds
        wait_for("a drop cache rule for 5001", lambda: cache_rules(
            pair, "drop udp dport 5001", status(pair)))  # fmt: skip
        # 5. SIGKILL leaves rules behind; a new agent adopts or deletes them
        left = [i for i in device_filters(pair) if i.filter.cookie is not None]
        assert agent.signal(signal.SIGKILL) == -signal.SIGKILL
        assert [i.filter for i in device_filters(pair) if i.filter.cookie] == [
            i.filter for i in left
        ]
    finally:
        if agent.proc.poll() is None:
            agent.signal(signal.SIGKILL)
    again = AgentProcess(pair, policy_file, tmp_path / "agent2.log")
    try:
        (started,) = again.events("started")
        assert started["generation"] == 3
        assert started["adopted"] >= 1  # the sound cache rules of the first run
        now = [i for i in device_filters(pair) if i.filter.cookie is not None]
        cache_now = [
            i for i in now if i.filter.cookie is not None and i.filter.cookie.role == ROLE_CACHE
        ]
        assert len(cache_now) == started["adopted"]
        assert len(now) == len(cache_now) + 1  # and one catch-all trap: nothing doubled
        send_udp(pair, 5000, count=2)
        assert received(listeners[5000]) == 2
    finally:
        code = again.signal(signal.SIGTERM)
    assert code == 0, (tmp_path / "agent2.log").read_text()
    assert [i for i in device_filters(pair) if i.filter.cookie is not None] == []
    with inside(pair.ns_b):
        assert tc_attach.attached_names(pair.dev_b, "ingress") == []
    assert os.path.exists(policy_file)
