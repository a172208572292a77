"""The cache on a host that tracks connections: one source of connection state
(the slow path's table, here the reference tracker in the slow-path model),
the NIC carrying only steady connections, and the hard cases of issue 15 item 4:
a connection the NIC carries past the table's timeout, a NIC rule evicted
mid-connection, a policy update with and without ``--revoke-established``.

Every packet goes through the NIC model first and the slow path for what the
NIC does not decide; each test also replays the same packets through the
reference tracker alone and asserts the verdicts agree."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.flower.lowering import expand
from backends.flower.rules import FlowerFilter, FlowerKind
from backends.nic_profile import load_profile
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.algebra import Cube
from ir.conntrack import NS_PER_S, ConnTracker, CtConfig, CtTimeouts, TcpState
from ir.fields import HEADER_SPACE, STATE_ESTABLISHED
from ir.megaflow import PolicyRegions, decides_whole
from ir.model import Policy, Program
from ir.packet import Packet
from ir.valueset import ValueSet
from runtime.agent.core import Agent, AgentConfig
from runtime.agent.slow_path_model import SlowPathModel
from runtime.flow_cache import CacheConfig, FlowCache, MissOutcome
from runtime.nic_model import NicModel
from tests.fixtures import FakeClock, cache_filters

HOST = """
endpoint web { ip 10.0.1.10 }
policy up_in ingress on eth0 {
    default drop
    allow state established,related
    allow state new tcp to web dport 443
    allow state new udp to web dport 53
}
policy up_out egress on eth0 {
    default drop
    allow state established,related
}
"""
# The update: web stops serving 443 to new connections.
UPDATED = HOST.replace(
    "allow state new tcp to web dport 443", "allow state new tcp to web dport 8443"
)

SYN = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags syn"
SYNACK = "tcp 10.0.1.10:443 -> 10.0.3.7:40000 flags syn,ack"
ACK = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags ack"
DATA = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags psh,ack"
FIN = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags fin,ack"
RST = "tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags rst"


def _program(text: str) -> Program:
    result = compile_source(text, "host.fw")
    assert result.ok and result.program is not None, result.diagnostics
    return result.program


class StatefulHost:
    """The uplink's ingress hook with the agent (NIC model + slow-path model), its
    egress hook as a slow path alone, one tracker for both; and the same traffic
    replayed through a reference tracker of its own."""

    def __init__(self, timeouts: CtTimeouts | None = None, **config: object) -> None:
        self.clock = FakeClock()
        self.config = CtConfig(timeouts or CtTimeouts())
        self.tracker = ConnTracker(self.config)
        self.reference = ConnTracker(self.config)
        self.program = _program(HOST)
        profile = dataclasses.replace(load_profile("software"), max_rules=200)
        self.model = NicModel(profile, clock=self.clock)
        self.loaded: list[SlowPathModel] = []

        def load(policy: Policy, generation: int) -> SlowPathModel:
            loaded = SlowPathModel(
                policy,
                generation=generation,
                dedup_ns=0,
                clock_ns=self.now_ns,
                tracker=self.tracker,
            )
            self.loaded.append(loaded)
            return loaded

        settings = {
            "proactive": True,
            "cache": CacheConfig(max_insert_rate=None, max_idle=30.0),
            **config,
        }
        cfg = AgentConfig(
            device="eth0", direction="ingress", profile=profile,
            **settings,  # type: ignore[arg-type]
        )  # fmt: skip
        self.agent = Agent(
            cfg, lambda: self.program.policy("up_in"), clock=self.clock, installer=self.model,
            slow_path=load, attach=False, connections=self.tracker,
        )  # fmt: skip
        self.agent.start()
        self.egress = SlowPathModel(
            self.program.policy("up_out"), dedup_ns=0, clock_ns=self.now_ns, tracker=self.tracker
        )

    def now_ns(self) -> int:
        return int(self.clock.now * NS_PER_S)

    def at(self, seconds: float) -> None:
        self.clock.now = 1000.0 + seconds

    def inbound(self, text: str) -> tuple[str, FlowerFilter | None]:
        """One packet in at eth0: the NIC, else the slow path; then the agent's turn.
        Returns (action, the NIC filter that decided it or None)."""
        packet = parse_packet(text)
        expected = self.reference.step(self.program.policy("up_in"), packet, self.now_ns())
        f = self.model.classify(packet)
        if f is None:
            self.loaded[-1].receive(packet)
            action = self.loaded[-1].actions[-1]
        else:
            action = _flower_action(f)
        assert action == expected.action.kind, (text, action, expected)
        assert self.agent.slow_path is not None
        self.agent.slow_path.poll_events(0)
        while self.agent.handle_events():
            pass
        return action, f

    def outbound(self, text: str) -> str:
        packet = parse_packet(text)
        expected = self.reference.step(self.program.policy("up_out"), packet, self.now_ns())
        self.egress.receive(packet)
        assert self.egress.actions[-1] == expected.action.kind, (text, expected)
        return self.egress.actions[-1]

    def poll(self) -> None:
        self.agent.poll()

    def cache_rules(self) -> list[FlowerFilter]:
        return list(cache_filters(self.model))

    def connection(self) -> object:
        (connection,) = self.tracker.connections()
        return connection


def _flower_action(f: FlowerFilter) -> str:
    """The policy action word of a cache rule's flower action."""
    kind = FlowerKind(f.action.kind)
    return {FlowerKind.PASS: "allow", FlowerKind.DROP: "drop"}.get(kind, kind.value)


def handshake(host: StatefulHost) -> None:
    host.inbound(SYN)
    host.outbound(SYNACK)
    host.inbound(ACK)


def test_stateful_host_offloads_nothing_proactively_and_caches_only_steady_connections() -> None:
    host = StatefulHost()
    assert host.agent.proactive == []  # every packet meets the slow path first
    _, nic = host.inbound(SYN)
    assert nic is None and host.cache_rules() == []  # a new packet commits: never cached
    assert host.agent.cache is not None
    # A SYN is never a connection rule's packet: counted without a table look-up.
    assert host.agent.cache.stats[MissOutcome.UNEXPRESSIBLE.value] == 1
    assert host.agent.cache.stats[MissOutcome.UNTRACKED.value] == 0
    host.outbound(SYNACK)
    host.inbound(ACK)  # now steady: the agent installs the connection rule
    (rule,) = host.cache_rules()
    assert rule.match.tcp_flags is not None
    _, nic = host.inbound(DATA)
    assert nic is not None  # carried by the NIC
    # A FIN changes the connection: the rule does not match it, the slow path sees it.
    _, nic = host.inbound(FIN)
    assert nic is None
    connection = host.connection()
    assert connection.tcp == TcpState.FIN_WAIT  # type: ignore[attr-defined]
    host.poll()
    assert host.cache_rules() == []  # no longer steady: the rule went


def test_the_nic_carries_a_connection_past_the_table_timeout() -> None:
    host = StatefulHost(CtTimeouts(tcp=10))
    handshake(host)
    host.inbound(DATA)
    assert host.cache_rules()
    for second in range(1, 40):
        host.at(second)
        _, nic = host.inbound(DATA)
        assert nic is not None
        host.poll()  # the rule's last use extends the table's entry
    assert host.agent.cache is not None and host.agent.cache.stats["ct_refreshes"] > 0
    # 39 s after the handshake, long past the 10 s timeout, the FIN is established.
    action, nic = host.inbound(FIN)
    assert nic is None and action == "allow"
    assert host.connection().tcp == TcpState.FIN_WAIT  # type: ignore[attr-defined]


def test_evicting_the_nic_rule_mid_connection_leaves_it_established() -> None:
    host = StatefulHost()
    handshake(host)
    host.inbound(DATA)
    assert host.agent.cache is not None and host.agent.cache.remove_all() == 1
    action, nic = host.inbound(DATA)
    assert nic is None and action == "allow"  # back in the slow path, still established
    assert host.loaded[-1].tracker is host.tracker
    assert host.tracker.counters["established"] >= 2
    assert host.cache_rules()  # and cached again


def test_an_idle_rule_goes_and_the_connection_then_expires_in_the_table() -> None:
    host = StatefulHost(CtTimeouts(tcp=60))
    handshake(host)
    host.inbound(DATA)
    host.at(31)
    host.poll()
    assert host.cache_rules() == []  # idle past max_idle
    host.at(61)
    action, _ = host.inbound(DATA)
    assert action == "drop"  # expired at 60 s: a mid-stream ACK of nothing is invalid


def test_rst_through_the_slow_path_ends_the_rule_at_the_next_poll() -> None:
    host = StatefulHost()
    handshake(host)
    host.inbound(DATA)
    assert host.cache_rules()
    host.outbound("tcp 10.0.1.10:443 -> 10.0.3.7:40000 flags rst")
    host.poll()
    assert host.cache_rules() == []
    action, _ = host.inbound(DATA)
    assert action == "drop"  # invalid after the RST


def test_a_policy_update_keeps_established_connections_by_default() -> None:
    host = StatefulHost()
    handshake(host)
    host.inbound(DATA)
    host.program = _program(UPDATED)
    host.agent.update(host.program.policy("up_in"))
    action, _ = host.inbound(DATA)
    assert action == "allow"
    assert len(host.tracker) == 1
    # A new connection to 443 is refused by the new policy.
    action, _ = host.inbound("tcp 10.0.3.8:40000 -> 10.0.1.10:443 flags syn")
    assert action == "drop"


def test_revoke_established_removes_connections_the_new_policy_would_not_start() -> None:
    host = StatefulHost(revoke_established=True)
    handshake(host)
    host.inbound(DATA)
    udp = "udp 10.0.3.7:5353 -> 10.0.1.10:53"
    host.inbound(udp)
    host.outbound("udp 10.0.1.10:53 -> 10.0.3.7:5353")
    assert len(host.tracker) == 2
    host.program = _program(UPDATED)
    # The reference does the same revocation at the same moment.
    host.reference.revoke(host.program.policy("up_in"))
    host.agent.update(host.program.policy("up_in"))
    assert host.agent.stats["revoked"] == 1
    assert len(host.tracker) == 1  # the DNS one is still allowed to start, so it stays
    assert all("tcp" not in str(f.match) for f in host.cache_rules())
    action, nic = host.inbound(DATA)
    assert nic is None and action == "drop"  # its rule went with it: invalid now


def test_restart_adopts_connection_rules_of_steady_connections() -> None:
    host = StatefulHost(keep=True)
    handshake(host)
    host.inbound(DATA)
    (rule,) = host.cache_rules()
    host.agent.stop()
    restarted = Agent(
        host.agent.config, lambda: host.program.policy("up_in"), clock=host.clock,
        installer=host.model, slow_path=lambda p, g: host.loaded[-1], attach=False,
        connections=host.tracker,
    )  # fmt: skip
    restarted.start()
    assert restarted.cache is not None and restarted.cache.stats["adopted"] == 1
    assert [f.match for f in host.cache_rules()] == [rule.match]


def test_a_packet_of_the_connection_that_is_no_ack_is_left_to_the_slow_path() -> None:
    host = StatefulHost()
    handshake(host)
    host.inbound(DATA)
    # The same tuple with SYN: not matched by the connection rule.
    packet = parse_packet(SYN)
    assert host.model.classify(packet) is None
    assert host.model.classify(Packet(parse_packet(DATA).values)) is not None


DSCP_POLICY = """
policy p ingress on eth0 {
    default drop
    drop state established dscp ef
    allow state established
}
"""


@settings(max_examples=120, deadline=None)
@given(
    family=st.sampled_from([4, 6]),
    proto=st.sampled_from([6, 17, 132]),
    ports=st.tuples(st.integers(1, 65535), st.integers(0, 65535)),
    vlan=st.one_of(st.none(), st.integers(0, 4095)),
    dscp=st.sampled_from([0, 46, 10]),
    text=st.sampled_from([HOST, DSCP_POLICY]),
)
def test_the_connection_match_is_what_expand_gives_and_is_decided_whole(
    family: int,
    proto: int,
    ports: tuple[int, int],
    vlan: int | None,
    dscp: int,
    text: str,
) -> None:
    """The cache builds connection matches directly (one per connection, fast);
    they must be exactly the one match ``expand`` gives for the proven cube, and
    every packet they cover, as an established packet, decided by the rule."""
    program = _program(text)
    policy = program.policies[0]
    fields = {
        "family": family,
        "ip_proto": proto,
        "sport": ports[0],
        "dport": ports[1],
        "dscp": dscp,
        "tcp_flags": 0x10 if proto == 6 else 0,
    }
    if family == 4:
        fields.update(ip4_src=0x0A000307, ip4_dst=0x0A00010A)
    else:
        fields.update(ip6_src=(0xFD00 << 112) | 7, ip6_dst=(0xFD00 << 112) | 10)
    if vlan is not None:
        fields.update(vlan_tagged=1, vlan_id=vlan)
    point = Packet.make(**fields).values
    profile = load_profile("software")
    cache = FlowCache(policy, profile, NicModel(profile), CacheConfig())
    flow = cache._connection_flow(point)
    if flow is None:
        return
    match = cache._tuple_match(flow)
    assert match is not None
    sets = list(flow.cube.sets)
    sets[HEADER_SPACE.position("state")] = HEADER_SPACE.field("state").full
    expansion = expand(Cube(tuple(sets)), profile)
    assert expansion.problem == "" or expansion.problem is None
    assert list(expansion.matches) == [match]
    regions = PolicyRegions(HEADER_SPACE, [r.match.cube for r in policy.rules])
    for covered in match.cubes():
        established = list(covered.sets)
        established[HEADER_SPACE.position("state")] = ValueSet.of_value(2, STATE_ESTABLISHED)
        assert decides_whole(regions, Cube(tuple(established)), flow.rule)
