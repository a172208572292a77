"""The agent on a stateful host, on this machine's kernel: the real slow paths of
both hooks with their shared pinned connection table, the real ring buffer, the
real table read and refreshed through bpf(2) (runtime/agent/host_table.py); the
flower table is the NIC model (this kernel has no cls_flower) and packets go
through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator

import pytest

from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import lower
from backends.nic_profile import load_profile
from backends.targets import TC_ACT_OK, TC_ACT_SHOT
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.conntrack import ConnTracker, TcpState, hook_id
from ir.fields import TCP_FLAG_BITS
from ir.model import Policy
from runtime.agent.core import Agent, AgentConfig
from runtime.bpf_loader import SlowPath
from runtime.conntrack import CtTable
from runtime.flow_cache import CacheConfig
from runtime.nic_model import NicModel
from runtime.testrun import test_run as run_frame
from tests.fixtures import cache_filters
from verify.frames import frame

pytestmark = pytest.mark.kernel

HOST = """
endpoint web { ip 10.0.1.10 }
policy up_in ingress on eth0 {
    default drop
    allow state established,related
    allow state new tcp to web dport 443
}
policy up_out egress on eth0 {
    default drop
    allow state established,related
}
"""
SYN = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags syn"
SYNACK = "tcp 10.0.1.10:443 -> 10.0.3.7:40000 flags syn,ack"
ACK = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags ack"
DATA = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags psh,ack"
FIN = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags fin,ack"


class Host:
    """Both hooks' slow paths on one private table, the agent on the ingress one."""

    def __init__(self, **config: object) -> None:
        self.pin = f"/sys/fs/bpf/flowc-agent-test-{os.getpid()}/ct"
        self.spec = CtSpec(pin=self.pin)
        program = compile_source(HOST, "host.fw").program
        assert program is not None
        self.ingress: Policy = program.policy("up_in")
        self.egress_path = SlowPath(lower(program.policy("up_out"), conntrack=self.spec))
        profile = dataclasses.replace(load_profile("software"), max_rules=64)
        self.model = NicModel(profile, clock=time.monotonic)
        self.loaded: list[SlowPath] = []

        def load(policy: Policy, generation: int) -> SlowPath:
            path = SlowPath(
                lower(policy, conntrack=self.spec), generation=generation, events=True, dedup_ns=0
            )
            self.loaded.append(path)
            return path

        cfg = AgentConfig(
            device="eth0", direction="ingress", profile=profile, stateful=True, dedup_ns=0,
            cache=CacheConfig(max_insert_rate=None), **config,  # type: ignore[arg-type]
        )  # fmt: skip
        self.agent = Agent(cfg, lambda: self.ingress, installer=self.model, slow_path=load,
                           attach=False)  # fmt: skip

    def inbound(self, text: str) -> int:
        """One packet through the NIC model, else the ingress program; the agent's turn.
        Returns the verdict (TC_ACT_*) or -1 when the NIC decided."""
        packet = parse_packet(text)
        if self.model.classify(packet) is not None:
            return -1
        path = self.loaded[-1]
        retval = run_frame(path.fd, frame(packet)).retval
        path.poll_events(0)
        while self.agent.handle_events():
            pass
        return retval

    def outbound(self, text: str) -> int:
        return run_frame(self.egress_path.fd, frame(parse_packet(text))).retval

    def cache_rules(self) -> list[object]:
        return list(cache_filters(self.model))

    def close(self) -> None:
        for path in [*self.loaded, self.egress_path]:
            path.close()
        with contextlib.suppress(OSError):
            os.unlink(self.pin)
            os.rmdir(os.path.dirname(self.pin))


@pytest.fixture
def host() -> Iterator[Host]:
    made = Host()
    try:
        made.agent.start()
        yield made
    finally:
        made.close()


def test_a_steady_connection_gets_a_rule_the_nic_uses_and_the_table_is_refreshed(
    host: Host,
) -> None:
    assert host.agent.proactive == []  # nothing decides in front of the slow path
    host.inbound(SYN)
    assert host.cache_rules() == []  # a committing packet is never cached
    host.outbound(SYNACK)
    host.inbound(ACK)
    assert len(host.cache_rules()) == 1
    assert host.inbound(DATA) == -1  # the NIC carries it
    with CtTable(host.pin) as table:
        (before,) = list(table.connections())
        assert before.tcp == TcpState.ESTABLISHED and before.replied
        time.sleep(0.05)
        assert host.inbound(DATA) == -1
        host.agent.poll()
        (after,) = list(table.connections())
    # The NIC's last use moved the table's idle timer; the program's fields stand.
    assert after.last_ns > before.last_ns and after.expires_ns > before.expires_ns
    assert (after.tcp, after.replied, after.packets) == (before.tcp, before.replied, before.packets)
    assert host.agent.cache is not None and host.agent.cache.stats["ct_refreshes"] >= 1


def test_a_fin_reaches_the_slow_path_and_the_rule_goes_at_the_next_poll(host: Host) -> None:
    host.inbound(SYN)
    host.outbound(SYNACK)
    host.inbound(ACK)
    assert host.cache_rules()
    assert host.inbound(FIN) != -1  # not matched by the connection rule
    with CtTable(host.pin) as table:
        (connection,) = list(table.connections())
    assert connection.tcp == TcpState.FIN_WAIT
    host.agent.poll()
    assert host.cache_rules() == []


def test_revoke_established_on_the_bpf_table_ends_what_the_reference_ends() -> None:
    """--revoke-established on the host's real table: the program records the
    committing hook and TCP flags, and the agent's update deletes exactly the
    connections the reference tracker revokes for the same packets."""
    made = Host(revoke_established=True)
    reference = ConnTracker()
    try:
        made.agent.start()
        syns = [SYN, SYN.replace("10.0.3.7", "10.0.4.7")]
        for text in syns:
            assert made.inbound(text) == TC_ACT_OK
            assert reference.step(made.ingress, parse_packet(text), 0).committed
        with CtTable(made.pin) as table:
            stored = sorted(table.connections(), key=lambda c: c.key)
        recorded = sorted(reference.connections(), key=lambda c: c.key)
        assert [(c.key, c.hook_id, c.start_flags) for c in stored] == [
            (c.key, c.hook_id, c.start_flags) for c in recorded
        ]
        assert {c.hook_id for c in stored} == {hook_id("up_in")}
        assert {c.start_flags for c in stored} == {TCP_FLAG_BITS["syn"]}
        narrowed = compile_source(HOST.replace("tcp to web", "tcp from 10.0.3.0/24 to web"), "h.fw")
        assert narrowed.program is not None
        made.ingress = narrowed.program.policy("up_in")
        assert made.agent.reload()
        revoked = reference.revoke(made.ingress)
        assert [k.src for k in revoked] == [0x0A000407]
        assert made.agent.stats["revoked"] == 1
        with CtTable(made.pin) as table:
            assert [c.key for c in table.connections()] == [c.key for c in reference.connections()]
        # The revoked connection's next packet finds none: invalid, dropped.
        assert made.inbound(ACK.replace("10.0.3.7", "10.0.4.7")) == TC_ACT_SHOT
    finally:
        made.close()


def test_the_agents_collector_removes_the_expired_entries_no_packet_came_back_for() -> None:
    """The program removes an expired entry only when a packet of it returns; the
    agent's poll collects the rest from the real table (a half-open connection
    past its SYN_SENT timeout goes, an established one stays), and the snapshot
    carries the program's counters and the collector's."""
    made = Host(ct_gc_interval=5.0)
    skew = [0.0]  # the agent's clock runs ahead of the kernel's by this much
    made.agent.clock = lambda: time.monotonic() + skew[0]
    try:
        made.agent.start()
        made.inbound(SYN)
        made.outbound(SYNACK)
        made.inbound(ACK)  # established, and cached
        made.inbound("tcp 10.0.3.8:40001 -> 10.0.1.10:443 flags syn")  # half-open
        made.agent.poll()
        with CtTable(made.pin) as table:
            assert table.count() == 2  # not due yet: nothing collected
            snap = made.agent.snapshot
            assert snap is not None
            assert snap.stats["ct_commits"] == 2 and snap.stats["ct_collected"] == 0
            assert snap.stats["ct_new"] == 2 and snap.stats["ct_established"] == 1
            skew[0] = 121.0  # past tcp_syn_sent (120 s), far inside established's
            made.agent.poll()
            (left,) = list(table.connections())
        assert left.key.sport == 40000 and left.tcp == TcpState.ESTABLISHED
        snap = made.agent.snapshot
        assert snap is not None and snap.stats["ct_collected"] == 1
        assert snap.gauges["ct_entries"] == 1
    finally:
        made.close()
