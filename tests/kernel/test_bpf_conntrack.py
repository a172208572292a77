"""Connection tracking in the BPF slow path gives exactly the reference
tracker's states, verdicts, commits and table (ir/conntrack.py), in the kernel.

One host: an egress and an ingress program sharing one pinned table (a pin of
the test's own, not the host's), run with BPF_PROG_TEST_RUN on the frames of
written and hypothesis-generated packet sequences, with the test clock
(flowc_config.ct_now_ns) set to the reference's timestamps. Per packet the
kernel's verdict, rule, mark, state and commit (skb->cb[1]) must be the
reference's; after each sequence the table's entries (every field: TCP state,
FIN bits, expiry, creation and last-seen times, packet counts) and the
tracker's counters must be too. Each policy is compiled once per session.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import shutil
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.bpf import abi
from backends.bpf.conntrack import CtSpec
from backends.bpf.emit import lower
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.conntrack import NS_PER_S, Connection, ConnKey, CtConfig, CtTimeouts, TcpState, hook_id
from ir.fields import STATE_ESTABLISHED, STATE_INVALID, STATE_NEW, STATE_RELATED
from ir.model import DROP
from ir.packet import Packet, format_packet
from runtime.bpf_loader import SlowPath
from runtime.conntrack import CtTable
from runtime.testrun import test_run as kernel_run
from tests.kernel.conftest import inside
from tests.kernel.ct_replay import EPOCH_NS, Host, load_host, replay
from verify.frames import embedded_header, frame

pytestmark = pytest.mark.kernel

HOST = """
policy out egress on eth0 {
    default drop
    allow state established,related
    drop state invalid
    allow tcp dport 80
    allow tcp dport 1000
    mark 0x10 udp
    allow icmp
    allow icmpv6
    allow proto 47
}
policy in ingress on eth0 {
    default drop
    drop state invalid
    allow state established tcp
    allow state established,related udp
    allow state established icmp
    allow tcp dport 22
    mark 0x7 udp dport 53
    allow icmp type echo-request
}
"""
# Small timeouts, so sequences of a few seconds see connections expire; the
# table small enough that hypothesis fills it (on_full allow: untracked).
TIMEOUTS = CtTimeouts(
    tcp_syn_sent=5,
    tcp_syn_recv=4,
    tcp=40,
    tcp_fin_wait=6,
    tcp_time_wait=3,
    tcp_close=2,
    udp=3,
    udp_stream=9,
    icmp=4,
    other=5,
)
CONFIG = CtConfig(TIMEOUTS, capacity=4)


def _pin(name: str) -> str:
    return f"/sys/fs/bpf/flowc-test-{os.getpid()}/{name}"


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """The two-hook host, compiled once for the module."""
    spec = CtSpec(CONFIG, pin=_pin("ct"))
    loaded = load_host(HOST, spec)
    yield loaded
    for slow_path in loaded.paths.values():
        slow_path.close()
    shutil.rmtree(os.path.dirname(spec.pin), ignore_errors=True)


def P(text: str) -> Packet:
    return parse_packet(text)


def _lines(*items: tuple[float, str, str]) -> list[tuple[float, str, Packet]]:
    return [(t, hook, P(text)) for t, hook, text in items]


# ------------------------------------------------------------- written cases
def test_tcp_connection_out_and_its_replies_in(host: Host, run_netns: str) -> None:
    syn = "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags syn"
    synack = "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags syn,ack"
    ack = "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags ack"
    ack_back = "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags ack"
    fin = "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags fin,ack"
    fin_back = "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags fin,ack"
    states = replay(
        host,
        run_netns,
        _lines(
            (0, "out", syn),
            (0.5, "out", syn),  # retransmitted: new, commits nothing more
            (1, "in", synack),  # committed at egress, answered at ingress
            (1, "out", ack),
            (2, "in", ack_back),
            (2, "out", fin),
            (3, "in", fin_back),
            (3, "out", ack),
            (10, "out", syn),  # TIME_WAIT expired (3 s): a new connection
        ),
    )
    assert states == [
        "new",
        "new",
        "established",
        "established",
        "established",
        "established",
        "established",
        "established",
        "new",
    ]


def test_unsolicited_and_invalid_tcp(host: Host, run_netns: str) -> None:
    states = replay(
        host,
        run_netns,
        _lines(
            (0, "in", "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags syn,ack"),  # reply of nothing
            (0, "in", "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags syn"),  # new, allowed in
            (0, "out", "tcp 10.0.0.1:22 -> 10.0.0.9:5555 flags syn,ack"),
            (0, "out", "tcp 10.0.0.1:22 -> 10.0.0.9:5555 flags syn,fin"),  # never valid
            (0, "in", "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags syn"),  # SYN after SYN+ACK
            (0, "in", "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags rst"),
            (1, "in", "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags ack"),  # after RST: invalid
            (1, "in", "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags syn"),  # reopens the CLOSE entry
            (1, "out", "tcp 10.0.0.1:5000 -> 10.0.0.9:443 flags syn"),  # dropped new
            (1, "in", "tcp 10.0.0.9:443 -> 10.0.0.1:5000 flags syn,ack"),  # so invalid
        ),
    )
    assert states[:4] == ["invalid", "new", "established", "invalid"]
    assert states[-1] == "invalid"


def test_udp_icmp_echo_errors_and_other_protocols(host: Host, run_netns: str) -> None:
    dns = "udp 10.0.0.1:5353 -> 10.0.0.53:53"
    dns_back = "udp 10.0.0.53:53 -> 10.0.0.1:5353"
    states = replay(
        host,
        run_netns,
        _lines(
            (0, "out", dns),  # marked, commits
            (0, "out", dns),  # repeat before the reply: new
            (1, "in", dns_back),
            (2, "in", "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3 inner " + dns),
            (2, "in", "icmp 10.9.9.9 -> 10.0.0.1 type time-exceeded inner " + dns),
            (
                2,
                "in",
                "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3 inner "
                "udp 10.0.0.1:5354 -> 10.0.0.53:53",
            ),  # about nothing: invalid
            (2, "in", "icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3"),  # no header
            (3, "out", "icmp 10.0.0.1 -> 10.0.0.2 type echo-request id 7"),
            (3, "in", "icmp 10.0.0.2 -> 10.0.0.1 type echo-reply id 8"),  # another id
            (3, "in", "icmp 10.0.0.2 -> 10.0.0.1 type echo-reply id 7"),
            (
                3,
                "in",
                "icmp 10.0.0.2 -> 10.0.0.1 type time-exceeded inner "
                "icmp 10.0.0.1 -> 10.0.0.2 type echo-request id 7",
            ),
            (3, "out", "icmpv6 fd00::1 -> fd00::2 type echo-request id 9"),
            (3, "in", "icmpv6 fd00::2 -> fd00::1 type echo-reply id 9"),
            (3, "out", "icmp 10.0.0.1 -> 10.0.0.2 type 13"),  # connectionless: new
            (3, "out", "udp 10.0.0.1 -> 10.0.0.2 frag later"),  # no ports: new
            (3, "out", "47 10.0.0.1 -> 10.0.0.7"),
            (4, "in", "47 10.0.0.7 -> 10.0.0.1"),
            (4, "out", "udp [fd00::1]:7000 -> [fd00::53]:53"),
            (5, "in", "udp [fd00::53]:53 -> [fd00::1]:7000"),
            (30, "in", dns_back),  # expired (udp_stream 9 s): new, dropped
        ),
    )
    assert states[:3] == ["new", "new", "established"]
    assert states[3:7] == ["related", "related", "invalid", "invalid"]
    assert states[-1] == "new"


def test_truncated_embedded_header_is_invalid(host: Host, run_netns: str) -> None:
    dns = P("udp 10.0.0.1:5353 -> 10.0.0.53:53")
    error = P("icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3 inner " + str_of(dns))
    head = frame(error)[: 14 + 20 + 8]  # Ethernet, IP, ICMP header: the body follows
    cut_ip = head + embedded_header(dns, kept=12)  # half an IP header
    cut_ports = head + embedded_header(dns, kept=22)  # IP header, half the ports
    whole = head + embedded_header(dns)
    # The reference sees a truncated header as no embedded header at all.
    bare = P("icmp 10.0.0.53 -> 10.0.0.1 type dest-unreachable code 3")
    lines = [(0.0, "out", dns), (0.0, "in", bare), (0.0, "in", bare), (0.0, "in", error)]
    states = replay(host, run_netns, lines, frames=[frame(dns), cut_ip, cut_ports, whole])
    assert states == ["new", "invalid", "invalid", "related"]


def str_of(packet: Packet) -> str:
    from ir.packet import format_packet

    return format_packet(packet)


def test_the_fast_lane_is_where_one_rule_decides_established(host: Host) -> None:
    out, inward = host.paths["out"].program, host.paths["in"].program
    assert out.fast_rule == 0  # allow state established,related, line 4
    assert "Established fast lane: rule 0" in out.source and "host.fw:4" in out.source
    assert inward.fast_rule is None  # established tcp, udp, icmp: three rules
    assert "No established fast lane" in inward.source


# ------------------------------------------------------------- hypothesis
HOSTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
PORTS = (1000, 80, 53, 22)
TCP_FLAGS = (
    "syn",
    "syn",
    "syn,ack",
    "ack",
    "ack",
    "fin,ack",
    "rst",
    "rst,ack",
    "syn,fin",
    "none",
    "psh,ack",
    "fin",
)


@st.composite
def packet_texts(draw: st.DrawFn) -> str:
    """A packet among few hosts and ports, so connections meet again."""
    src, dst = draw(st.sampled_from(HOSTS)), draw(st.sampled_from(HOSTS))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    kind = draw(
        st.sampled_from(("tcp", "tcp", "tcp", "udp", "udp", "echo", "error", "other", "frag", "v6"))
    )
    if kind == "tcp":
        return f"tcp {src}:{sport} -> {dst}:{dport} flags {draw(st.sampled_from(TCP_FLAGS))}"
    if kind == "udp":
        return f"udp {src}:{sport} -> {dst}:{dport}"
    if kind == "echo":
        which = draw(st.sampled_from(("echo-request", "echo-reply")))
        return f"icmp {src} -> {dst} type {which} id {draw(st.integers(0, 2))}"
    if kind == "error":
        inner = draw(
            st.sampled_from(
                (
                    f"udp {dst}:{sport} -> {src}:{dport}",
                    f"tcp {dst}:{sport} -> {src}:{dport} flags syn",
                    f"icmp {dst} -> {src} type echo-request id 1",
                    f"icmp {dst} -> {src} type echo-reply id 1",
                    f"icmp {dst} -> {src} type 13",
                )
            )
        )
        which = draw(st.sampled_from(("dest-unreachable code 3", "time-exceeded")))
        return f"icmp {src} -> {dst} type {which} inner {inner}"
    if kind == "other":
        return f"47 {src} -> {dst}"
    if kind == "frag":
        return f"udp {src} -> {dst} frag later"
    a, b = (
        draw(st.sampled_from(("fd00::1", "fd00::2"))),
        draw(st.sampled_from(("fd00::1", "fd00::2"))),
    )
    return f"udp [{a}]:{sport} -> [{b}]:{dport}"


# Seconds between packets: mostly none, sometimes past one timeout or all of them.
STEPS_S = (0,) * 16 + (0.5, 1, 2, 4, 7, 50)


def _answer(packet: Packet, flags: str) -> Packet | None:
    """The packet going back the other way (TCP with ``flags``; an echo request's
    reply), or None for packets that have no answer."""
    proto = packet.get("ip_proto")
    text = format_packet(packet)
    if proto in (6, 17) and packet.get("frag") == 0:
        v = packet.as_dict()
        family = "ip4" if v["family"] == 4 else "ip6"
        swapped = packet.with_field(f"{family}_src", v[f"{family}_dst"])
        swapped = swapped.with_field(f"{family}_dst", v[f"{family}_src"])
        swapped = swapped.with_field("sport", v["dport"]).with_field("dport", v["sport"])
        if proto == 6:
            swapped = swapped.with_field(
                "tcp_flags", P(f"tcp 1.1.1.1:1 -> 1.1.1.1:1 flags {flags}").get("tcp_flags")
            )
        return swapped
    if text.startswith("icmp ") and " type echo-request" in text:
        src, dst = text.split()[1], text.split()[3]
        return P(f"icmp {dst} -> {src} type echo-reply id {packet.echo_id}")
    return None


@st.composite
def sequences(draw: st.DrawFn) -> list[tuple[float, str, Packet]]:
    """Up to 40 packets at non-decreasing times (jumps past every timeout too):
    fresh packets, answers to earlier ones (so connections get replies, FINs
    and RSTs), repeats, and ICMP errors about earlier ones."""
    out: list[tuple[float, str, Packet]] = []
    now = 0.0
    for _ in range(draw(st.integers(1, 40))):
        now += draw(st.sampled_from(STEPS_S))
        hook = draw(st.sampled_from(("out", "in")))
        kind = draw(st.sampled_from(("fresh", "answer", "answer", "repeat", "error")))
        packet = P(draw(packet_texts()))
        if out and kind != "fresh":
            earlier = draw(st.sampled_from([p for _, _, p in out]))
            flags = draw(st.sampled_from(TCP_FLAGS))
            if kind == "answer":
                packet = _answer(earlier, flags) or packet
            elif kind == "repeat":
                packet = earlier
                if earlier.get("ip_proto") == 6:
                    packet = _answer(_answer(earlier, "ack") or earlier, flags) or earlier
            elif earlier.embedded is None and earlier.get("frag") == 0:
                text = format_packet(earlier)
                src, dst = text.split()[1].rsplit(":", 1)[0], text.split()[3].rsplit(":", 1)[0]
                if not src.startswith("[") and "icmpv6" not in text:
                    packet = P(f"icmp {dst} -> {src} type dest-unreachable code 3 inner {text}")
        out.append((now, hook, packet))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=sequences())
def test_generated_sequences_match_the_reference(
    host: Host, run_netns: str, lines: list[tuple[float, str, Packet]]
) -> None:
    replay(host, run_netns, lines)


# ------------------------------------------------------- capacity and clock
FULL = """
policy edge ingress on eth0 {
    default drop
    allow state established
    allow udp
}
"""


@pytest.fixture(scope="module")
def full_host() -> Iterator[Host]:
    """A host with a table of 3 that drops what it cannot track."""
    spec = CtSpec(CtConfig(TIMEOUTS, capacity=3, on_full="drop"), pin=_pin("ct-full"))
    loaded = load_host(FULL, spec)
    yield loaded
    for slow_path in loaded.paths.values():
        slow_path.close()
    shutil.rmtree(os.path.dirname(spec.pin), ignore_errors=True)


def test_a_full_table_counts_untracked_and_on_full_drops(full_host: Host, run_netns: str) -> None:
    new = [(0.0, "edge", P(f"udp 10.0.0.{i}:1000 -> 10.0.0.9:53")) for i in range(1, 6)]
    replies = [(1.0, "edge", P(f"udp 10.0.0.9:53 -> 10.0.0.{i}:1000")) for i in range(1, 6)]
    states = replay(full_host, run_netns, new + replies)
    # Three fit; the fourth and fifth are untracked and dropped (on_full drop),
    # and their replies are new again.
    assert states == ["new"] * 5 + ["established"] * 3 + ["new"] * 2
    assert full_host.counters()["untracked"] == 4  # two commits, two reply commits


def test_a_clock_jump_expires_and_gc_frees_room(full_host: Host, run_netns: str) -> None:
    lines = [(0.0, "edge", P(f"udp 10.0.0.{i}:1000 -> 10.0.0.9:53")) for i in range(1, 4)]
    lines += [(100000.0, "edge", P("udp 10.0.0.9:53 -> 10.0.0.1:1000"))]  # the clock jumps
    states = replay(full_host, run_netns, lines)
    assert states == ["new", "new", "new", "new"]  # expired: found, removed, new again
    # Two stale entries remain and count against capacity until gc removes them.
    with CtTable(full_host.spec.pin) as table:
        assert len(list(table.connections())) == 3  # the two stale ones and the new reply's
        assert table.gc(EPOCH_NS + 100000 * NS_PER_S) == 2
        assert len(list(table.connections())) == 1


def test_status_counter_names_cover_the_reference() -> None:
    ct_names = {n[3:] for n in abi.STATUS_NAMES if n.startswith("ct_")}
    assert ct_names == {
        "new",
        "established",
        "related",
        "invalid",
        "commits",
        "untracked",
        "expired",
        "closed",
    }
    assert (STATE_NEW, STATE_ESTABLISHED, STATE_RELATED, STATE_INVALID) == (0, 1, 2, 3)
    assert DROP == "drop"
    assert ct.sizeof(abi.CtKey) == 40 and ct.sizeof(abi.CtEntry) == 56


# ------------------------------------------------------------- flowc ct
def test_ct_list_and_flush_commands(
    host: Host, run_netns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    replay(
        host,
        run_netns,
        _lines(
            (0, "out", "tcp 10.0.0.1:40000 -> 10.0.0.2:80 flags syn"),
            (0, "in", "tcp 10.0.0.2:80 -> 10.0.0.1:40000 flags syn,ack"),
            (0, "out", "icmp 10.0.0.1 -> 10.0.0.2 type echo-request id 7"),
        ),
    )
    capsys.readouterr()
    assert main(["ct", "list", "--json", "--pin", host.spec.pin]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_key = {row["connection"]: row for row in rows}
    assert set(by_key) == {
        "tcp 10.0.0.1:40000 -> 10.0.0.2:80",
        "icmp 10.0.0.1 -> 10.0.0.2 id 7",
    }
    tcp = by_key["tcp 10.0.0.1:40000 -> 10.0.0.2:80"]
    assert (tcp["state"], tcp["tcp"], tcp["packets"]) == (
        "established",
        "syn_recv",
        {"original": 1, "reply": 1},
    )
    assert (tcp["hook_id"], tcp["start_flags"]) == (f"{hook_id('out'):#010x}", 0x02)  # SYN
    assert by_key["icmp 10.0.0.1 -> 10.0.0.2 id 7"]["state"] == "new"
    assert main(["ct", "list", "--pin", host.spec.pin]) == 0
    text = capsys.readouterr().out
    assert "tcp 10.0.0.1:40000 -> 10.0.0.2:80  established tcp SYN_RECV" in text
    assert text.rstrip().endswith("2 connections")
    assert main(["ct", "flush", "--json", "--pin", host.spec.pin]) == 0
    assert json.loads(capsys.readouterr().out) == {"action": "flush", "removed": 2}
    with CtTable(host.spec.pin) as table:
        assert list(table.connections()) == []
    assert main(["ct", "list", "--pin", "/sys/fs/bpf/flowc-test-none/ct"]) == 3


def test_forced_states_check_the_classifier_without_the_table(host: Host, run_netns: str) -> None:
    from verify.bpf import expected

    host.reset()
    texts = [
        "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags syn",
        "tcp 10.0.0.9:5555 -> 10.0.0.1:23 flags ack",
        "udp 10.0.0.53:53 -> 10.0.0.1:5353",
        "icmp 10.0.0.2 -> 10.0.0.1 type echo-reply id 7",
    ]
    try:
        for hook, slow_path in host.paths.items():
            policy = host.policies[hook]
            for state in (STATE_NEW, STATE_ESTABLISHED, STATE_RELATED, STATE_INVALID):
                slow_path.give_state(state)
                for text in texts:
                    packet = P(text)
                    with inside(run_netns):
                        got = kernel_run(slow_path.fd, frame(packet))
                    assert got.state == state and not got.committed
                    want = expected(policy, packet.with_field("state", state))
                    assert (got.retval, got.rule, got.mark) == want, (hook, state, text)
    finally:
        for slow_path in host.paths.values():
            slow_path.give_state(None)
    with CtTable(host.spec.pin) as table:
        assert list(table.connections()) == []


def test_a_program_built_for_another_capacity_is_refused(host: Host) -> None:
    from runtime.bpf_loader import BpfLoadError

    other = CtSpec(CtConfig(TIMEOUTS, capacity=CONFIG.capacity + 1), pin=host.spec.pin)
    with pytest.raises(BpfLoadError, match=f"created with {CONFIG.capacity} entries") as caught:
        SlowPath(lower(host.policies["in"], conntrack=other))
    assert caught.value.stage == "maps"


def test_a_refill_moves_the_fast_lane_with_the_bank(host: Host, run_netns: str) -> None:
    old = host.policies["out"]
    swapped = HOST.replace(
        "    allow state established,related\n    drop state invalid\n    allow tcp dport 80",
        "    drop state invalid\n    allow state established,related\n    allow tcp dport 80",
    )
    result = compile_source(swapped, "host.fw")
    assert result.program is not None
    new = next(p for p in result.program.policies if p.name == "out")
    slow_path = host.paths["out"]
    slow_path.update(new, generation=2)
    host.policies["out"] = new
    try:
        assert slow_path.program.fast_rule == 1  # the established rule is second now
        config = slow_path.table(abi.CONFIG_MAP)[ct.c_uint32(0)]
        assert config.ct_fast == 2
        states = replay(
            host,
            run_netns,
            _lines(
                (0, "in", "tcp 10.0.0.9:5555 -> 10.0.0.1:22 flags syn"),
                (0, "out", "tcp 10.0.0.1:22 -> 10.0.0.9:5555 flags syn,ack"),
                (0, "out", "tcp 10.0.0.1:22 -> 10.0.0.9:5555 flags syn,fin"),
            ),
        )
        assert states == ["new", "established", "invalid"]
    finally:
        slow_path.update(old, generation=3)
        host.policies["out"] = old
    assert slow_path.program.fast_rule == 0


@pytest.mark.parametrize(
    ("original", "reply"),
    [
        # Original above its reverse in the key order: stored swapped.
        ("udp 10.0.0.9:5000 -> 10.0.0.1:53", "udp 10.0.0.1:53 -> 10.0.0.9:5000"),
        # Original the canonical one: stored as it reads.
        ("udp 10.0.0.1:5000 -> 10.0.0.9:53", "udp 10.0.0.9:53 -> 10.0.0.1:5000"),
        # Equal addresses: the ports decide.
        ("udp 10.0.0.1:5000 -> 10.0.0.1:53", "udp 10.0.0.1:53 -> 10.0.0.1:5000"),
        ("udp [fd00::9]:5000 -> [fd00::1]:53", "udp [fd00::1]:53 -> [fd00::9]:5000"),
    ],
)
def test_user_space_and_the_program_agree_on_canonical_keys(
    host: Host, run_netns: str, original: str, reply: str
) -> None:
    """A connection user space stores (restart adoption, the agent) is found by
    the program in both directions with one canonical key, and user space reads
    back, finds and removes it by its original direction only, as the reference."""
    host.reset()
    sent, back = P(original), P(reply)
    key = ConnKey(
        sent.get("family"),
        sent.get("ip_proto"),
        sent.get("ip4_src" if sent.get("family") == 4 else "ip6_src"),
        sent.get("ip4_dst" if sent.get("family") == 4 else "ip6_dst"),
        sent.get("sport"),
        sent.get("dport"),
    )
    now = EPOCH_NS + NS_PER_S
    stored = Connection(key, False, TcpState.NONE, 0, now + 3 * NS_PER_S, now, now, (1, 0))
    for slow_path in host.paths.values():
        slow_path.set_clock(now)
    with CtTable(host.spec.pin) as table:
        table.put(stored)
        assert table.get(key) == stored
        assert table.get(key.reversed()) is None  # the reply direction is no original
        with inside(run_netns):
            again = kernel_run(host.paths["out"].fd, frame(sent))
            answer = kernel_run(host.paths["in"].fd, frame(back))
        # A repeat before any reply is new again; the reply is established.
        assert (again.state, again.committed) == (STATE_NEW, False)
        assert answer.state == STATE_ESTABLISHED
        (read,) = list(table.connections())
        assert read.key == key and read.replied and read.packets == (2, 1)
        assert table.remove(key.reversed()) is False
        assert table.remove(key) is True
        assert table.count() == 0
