"""Apply A, then B, then A again: the device holds what A alone left (STYLE.md, 11).

Two paths change what a hook holds: the plain installer (a policy's flower
lowering replaced by another's) and the agent (a policy file changed under
SIGHUP). For both, the device after A -> B -> A is compared with the device
after A by :func:`tests.guest.helpers.canonical_dump`: every filter of every
chain and every classifier (flower and the agent's cls_bpf slow path) and
the hook's chains, as ``tc -j`` prints them, without counters, times, action
indexes, reference counts and program ids. So a filter, chain or program B
left behind, or one of A's that did not come back, fails the comparison.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.flower import lowering as flower
from backends.flower.rules import ROLE_CACHE, FlowerFilter
from backends.nic_profile import load_profile
from runtime.agent.metrics import read_status
from runtime.flower_installer import FlowerInstaller
from tests.fixtures import EXAMPLES
from tests.guest.conftest import Pair, inside
from tests.guest.helpers import (
    EDGE_POLICY,
    METRICS,
    REPO,
    AgentProcess,
    canonical_dump,
    device_filters,
    pace,
    policies,
    process_programs,
    target_devices,
    wait_for,
)
from tests.netns import received, send_udp

# (A's example, A's profile, B's example, B's profile): B's filters share some
# priorities with A's (replaced in place), add others and leave some out.
PAIRS = [
    ("uplink", "software", "web-tier", "mlx5-connectx6dx"),
    ("db-isolation", "software", "dual-stack", "nfp-agilio"),
]


def lowered(stem: str, profile: str, pair: Pair) -> list[FlowerFilter]:
    """The example's filters as partitioned for ``profile``, installed in
    software (a veth holds nothing in hardware: skip_sw would be refused)."""
    (policy, *_) = policies(EXAMPLES / f"{stem}.fw")
    for dev in target_devices(policy):
        pair.add_device(dev)
    filters = flower.lower(policy, load_profile(profile)).filters
    return [dataclasses.replace(f, flags="skip_hw") for f in filters]


def difference(left: dict[str, Any], right: dict[str, Any]) -> str:
    """What one canonical dump has and the other lacks, for a failure message."""
    lines = []
    for part in ("filters", "chains"):
        a = [json.dumps(e, sort_keys=True) for e in left[part]]
        b = [json.dumps(e, sort_keys=True) for e in right[part]]
        lines += [f"only before: {e}" for e in a if e not in b]
        lines += [f"only after:  {e}" for e in b if e not in a]
    return "\n".join(lines)


def key(f: FlowerFilter) -> tuple[int, int, int, int]:
    return (f.chain, f.prio, f.match.protocol, f.handle)


def apply(inst: FlowerInstaller, filters: list[FlowerFilter]) -> None:
    """Make the hook hold exactly ``filters``, as an installer moving from one
    policy to the next would: a filter whose place (chain, priority, protocol,
    handle) and match are already there is replaced in place (flower refuses
    a replacement with another mask), every other flowc filter is deleted,
    and the rest are added."""
    inst.ensure_clsact()
    have = {key(i.filter): i.filter for i in inst.dump() if i.filter.cookie is not None}
    in_place = [f for f in filters if key(f) in have and have[key(f)].match == f.match]
    kept = {key(f) for f in in_place}
    inst.delete([f for k, f in have.items() if k not in kept])
    if in_place:
        inst.add(in_place, replace=True)
    inst.add([f for f in filters if key(f) not in kept])
    assert inst.verify(filters) == []


@pytest.mark.parametrize("a, a_profile, b, b_profile", PAIRS, ids=lambda v: str(v))
def test_installer_a_b_a_leaves_a(
    pair: Pair, a: str, a_profile: str, b: str, b_profile: str
) -> None:
    first = lowered(a, a_profile, pair)
    second = lowered(b, b_profile, pair)
    with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
        inst.ensure_clsact()
        empty = canonical_dump(pair.ns_b, pair.dev_b)
        apply(inst, first)
        after_a = canonical_dump(pair.ns_b, pair.dev_b)
        assert len(after_a["filters"]) >= len(first)
        apply(inst, second)
        after_b = canonical_dump(pair.ns_b, pair.dev_b)
        assert after_b != after_a
        assert inst.verify(second) == []
        apply(inst, first)
        again = canonical_dump(pair.ns_b, pair.dev_b)
        assert again == after_a, difference(after_a, again)
        assert inst.verify(first) == []
        inst.flush()
    assert canonical_dump(pair.ns_b, pair.dev_b) == empty


POLICY_A = EDGE_POLICY
# B flips one verdict and adds a rule at the end (so A's rule numbers keep
# their meaning, and the slow path may have to change shape).
POLICY_B = POLICY_A.replace("allow udp dport 5001", "drop udp dport 5001").replace(
    "drop udp dport 6000\n", "drop udp dport 6000\n    allow udp dport 5002\n"
)
PORTS = (5000, 5001, 5002, 6000)


@pytest.fixture
def sockets(pair: Pair) -> Iterator[dict[int, socket.socket]]:
    socks = {}
    with inside(pair.ns_b):
        for port in PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((pair.addr_b, port))
            s.settimeout(pace().scaled(0.3))
            socks[port] = s
    yield socks
    for s in socks.values():
        s.close()


def cached_rules(pair: Pair) -> set[int]:
    """The IR rules the device's cache rules name."""
    return {
        i.filter.cookie.rule
        for i in device_filters(pair)
        if i.filter.cookie is not None
        and i.filter.cookie.role == ROLE_CACHE
        and i.filter.cookie.rule is not None
    }


def rule_numbers(pair: Pair, texts: list[str]) -> set[int]:
    with inside(pair.ns_b):
        rules = read_status(f"http://{METRICS}/metrics").rules.values()
    return {r.rule for r in rules if r.text in texts}


def generation(pair: Pair) -> float | None:
    with inside(pair.ns_b):
        return read_status(f"http://{METRICS}/metrics").agent.get("generation")


def cache_filters(pair: Pair) -> int:
    return sum(
        1
        for i in device_filters(pair)
        if i.filter.cookie is not None and i.filter.cookie.role == ROLE_CACHE
    )


def traffic(pair: Pair, sockets: dict[int, socket.socket], texts: list[str]) -> None:
    """One datagram to each port; wait until the cache holds a rule for each of
    the DSL rules ``texts`` and one rule per port in all (each port's datagram
    is decided by a different rule, the default included)."""
    for port in PORTS:
        send_udp(pair, port)
    for s in sockets.values():
        received(s)
    want = rule_numbers(pair, texts)
    assert len(want) == len(texts)
    wait_for(
        f"cache rules for {texts} and {len(PORTS)} in all",
        lambda: want <= cached_rules(pair) and cache_filters(pair) == len(PORTS),
    )


def test_agent_a_b_a_leaves_a(
    pair: Pair, sockets: dict[int, socket.socket], tmp_path: Path
) -> None:
    """The agent under policy A, then (SIGHUP) B, then (SIGHUP) A again, with
    the same datagrams sent after each change, and idle eviction out of reach.

    Canonical here is :func:`canonical_dump` of the hook with cache rules
    reduced further: a cache rule is its IR rule, priority, protocol, action
    and flags; its handle, cookie and flower keys are left out. Every flowc
    cookie loses its generation (the agent puts its catch-all trap up again
    on an update, under the new generation). A rule
    installed again under A gets a new handle and a cookie naming the
    generation that installed it (3, not 1), and its cube may differ from the
    first run's, since the cache widens a megaflow to a mask already on the
    device when it can, and B left other masks behind it than the first A
    found. So the keys are judged instead: ``flowc audit`` must find every
    cache rule sound under A. Everything else must be equal: the catch-all
    trap, chain 1's cls_bpf slow path (tag, name, flags), the hook's chains,
    one cache rule for each datagram's deciding rule and no other; and the
    agent holds as many BPF programs as after the first A (its own, by its
    fds: the other worker of the tier loads programs meanwhile).
    """
    path = tmp_path / "edge.fw"
    a = POLICY_A.format(dev=pair.dev_b)
    decided_by_a = ["allow udp dport 5000", "allow udp dport 5001", "drop udp dport 6000"]
    path.write_text(a)
    agent = AgentProcess(pair, path, tmp_path / "agent.log", "--max-idle", "100000")
    try:
        traffic(pair, sockets, decided_by_a)
        after_a = canonical_dump(pair.ns_b, pair.dev_b, cache_keys=False)
        programs_a = len(process_programs(agent.proc.pid))
        assert programs_a > 0  # the slow path is loaded
        assert sum("cache_rule" in f for f in after_a["filters"]) == len(PORTS)

        path.write_text(POLICY_B.format(dev=pair.dev_b))
        agent.signal(signal.SIGHUP)
        wait_for("generation 2", lambda: generation(pair) == 2)
        traffic(pair, sockets, ["drop udp dport 5001", "allow udp dport 5002"])
        assert canonical_dump(pair.ns_b, pair.dev_b) != after_a

        path.write_text(a)
        agent.signal(signal.SIGHUP)
        wait_for("generation 3", lambda: generation(pair) == 3)
        traffic(pair, sockets, decided_by_a)
        again = canonical_dump(pair.ns_b, pair.dev_b, cache_keys=False)
        assert again == after_a, difference(after_a, again)
        assert len(process_programs(agent.proc.pid)) == programs_a
        audit = subprocess.run(
            ["ip", "netns", "exec", pair.ns_b, sys.executable, "-m", "cli.main", "audit",
             "--dev", pair.dev_b, "--policy", str(path)],
            cwd=REPO, capture_output=True, text=True, timeout=pace().compiles(0), check=False,
        )  # fmt: skip
        assert audit.returncode == 0, audit.stdout + audit.stderr  # every cache rule sound
    finally:
        code = agent.signal(signal.SIGTERM)
    assert code == 0, (tmp_path / "agent.log").read_text()
    assert [i for i in device_filters(pair) if i.filter.cookie is not None] == []
