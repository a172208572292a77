"""netkit mode in a kernel that has netkit (bookworm-backports' 6.12 in the guest).

A site the tests build: a host namespace (where flowc runs, as on a container
host) with an uplink veth to an "outside" namespace and two containers, each
on a netkit pair (primary ``nk-web`` / ``nk-db`` in the host, peer ``eth0`` in
the container; web in L3 mode, db in L2), routed by the host. Real TCP, UDP
and ICMP cross it; crafted frames (a witness of every region of every
example) go through a netkit hook and its per-rule counters must be what the
IR says. Also: bpf_redirect_peer from the uplink's tc ingress into a
container, an atomic program replace under counted traffic, flower on the
uplink in front of netkit on the container, and unload leaving nothing.

flowc is run with ``nsenter --net`` rather than ``ip netns exec``: the latter
gives the command a private /sys, so a link it pins would live in a bpffs
instance that dies with it.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyroute2.netns
import pytest
from pyroute2 import IPRoute

from backends.bpf.emit import BpfProgram, lower
from backends.flower import lowering as flower
from backends.nic_profile import load_profile
from backends.targets import NETKIT
from compiler.frontend import compile_source
from ir.analysis import region_witnesses
from ir.interp import evaluate
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT, Policy
from ir.packet import Packet
from runtime import bpf_syscall, netkit, tc_attach
from runtime.agent.core import AgentConfig
from runtime.agent.netkit_agent import NetkitAgent
from runtime.bpf_loader import SlowPath
from runtime.flower_installer import FlowerInstaller
from tests.fixtures import EXAMPLE_PATHS
from tests.guest.conftest import inside, sh
from tests.guest.helpers import REPO, pace, ping, policies, refill, target_devices
from verify.frames import frame

FLOWC = [sys.executable, "-m", "cli.main"]
SO_RCVBUFFORCE = 33
UNLOAD_WEB = ("unload", "--dev", "nk-web", "--direction", "egress", "--mode", "netkit")
WEB, DB, OUTSIDE = "10.201.1.2", "10.201.2.2", "10.201.0.2"


@dataclass
class Site:
    """The namespaces of one test's site (device names are fixed inside each)."""

    host: str
    outside: str
    web: str
    db: str

    def all(self) -> tuple[str, ...]:
        return (self.host, self.outside, self.web, self.db)


def _sysctl(ns: str, *settings: str) -> None:
    """Write ``key=value`` sysctls of namespace ``ns`` (/proc/sys/net is the
    opener's namespace's; no process is spawned: in an emulated guest each
    costs seconds)."""
    with inside(ns):
        for setting in settings:
            key, _, value = setting.partition("=")
            Path("/proc/sys", *key.split(".")).write_text(value)


def _ip(ns: str) -> IPRoute:
    """An rtnetlink socket in namespace ``ns``."""
    with inside(ns):
        return IPRoute()


def _index(ipr: IPRoute, dev: str) -> int:
    return int(ipr.link_lookup(ifname=dev)[0])


@pytest.fixture
def site() -> Iterator[Site]:
    tag = f"{os.getpid() % 1000}{int(time.time() * 1000) % 10000}"
    s = Site(f"nkH{tag}", f"nkX{tag}", f"nkW{tag}", f"nkD{tag}")
    for ns in s.all():
        pyroute2.netns.create(ns)
    try:
        for ns in s.all():
            # No IPv6: its neighbour discovery would be classified too and make
            # per-rule counts depend on timing. No reverse-path filter: the host
            # routes between devices without addresses of their own.
            _sysctl(
                ns,
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )
            with _ip(ns) as ipr:
                ipr.link("set", index=_index(ipr, "lo"), state="up")
        _sysctl(s.host, "net.ipv4.ip_forward=1")
        with _ip(s.host) as ipr:
            ipr.link("add", ifname="upl-h", kind="veth", peer="upl-x")
            ipr.link("set", index=_index(ipr, "upl-x"), net_ns_fd=s.outside)
        with inside(s.host):
            netkit.create_pair("nk-web", "eth0", mode="l3", peer_netns=s.web)
            netkit.create_pair("nk-db", "eth0", mode="l2", peer_netns=s.db)
        for ns, dev, addr, gateway in (
            (s.host, "upl-h", "10.201.0.1", None),
            (s.outside, "upl-x", OUTSIDE, "10.201.0.1"),
            (s.host, "nk-web", "10.201.1.1", None),
            (s.web, "eth0", WEB, "10.201.1.1"),
            (s.host, "nk-db", "10.201.2.1", None),
            (s.db, "eth0", DB, "10.201.2.1"),
        ):
            with _ip(ns) as ipr:
                index = _index(ipr, dev)
                ipr.addr("add", index=index, address=addr, prefixlen=24)
                ipr.link("set", index=index, state="up")
                if gateway:
                    ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
        # Resolve the uplink's neighbours now, so no test's counted traffic waits on ARP.
        assert ping(s.outside, "10.201.0.1")
        yield s
    finally:
        for pin in tc_attach.PIN_DIR.glob("nk-*"):
            pin.unlink()
        for ns in s.all():
            pyroute2.netns.remove(ns)


def flowc(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flowc ARGS`` in namespace ``ns``'s network (and this process's bpffs)."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *FLOWC, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=pace().compiles(2),
        check=False,
    )


def compiled(text: str) -> Policy:
    result = compile_source(text, "netkit.fw")
    assert result.program is not None, result.diagnostics
    (policy,) = result.program.policies
    return policy


TEST_POLICIES = {
    "to_web": lambda: TO_WEB,
    "from_web": lambda: FROM_WEB,
    "to_db": lambda: TO_WEB.replace("nk-web", "nk-db").replace("to_web", "to_db"),
    "to_web2": lambda: TO_WEB.replace("allow tcp dport 8080", "drop tcp dport 8080").replace(
        "to_web", "to_web2"
    ),
    "web_guard": lambda: WEB_GUARD,
    "nk_agent": lambda: NK_AGENT,
    "nk_agent_wide": lambda: NK_AGENT_WIDE,
    "nk_agent_next": lambda: NK_AGENT_NEXT,
}


def batch_programs() -> dict[str, BpfProgram]:
    """Every program this module's tests load (their policies and every
    example's), lowered for netkit, for the module's one compile (conftest.batch);
    each test uses its programs once, and :func:`load` refills one in the
    site's namespace before attaching it."""
    wanted = [compiled(text()) for text in TEST_POLICIES.values()]
    wanted += [policy for path in EXAMPLE_PATHS for policy in policies(path)]
    names = [policy.name for policy in wanted]
    assert len(set(names)) == len(names), names
    return {policy.name: lower(policy, target=NETKIT) for policy in wanted}


@pytest.fixture
def programs(batch: dict[str, SlowPath]) -> dict[str, SlowPath]:
    """This module's programs (conftest.batch), by policy name."""
    return batch


def load(site: Site, slow_path: SlowPath, device: str, direction: str) -> SlowPath:
    """A program of :func:`programs` refilled in the site's host namespace (its
    redirect targets resolved there) and attached to ``device``."""
    refill(slow_path, site.host)
    with inside(site.host):
        tc_attach.attach(slow_path.fd, device, direction, mode="netkit")
    return slow_path


def udp_listener(ns: str, addr: str, port: int) -> socket.socket:
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Past rmem_max (root may): a counted stream must not overflow the socket.
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
        s.bind((addr, port))
    s.settimeout(pace().scaled(1))
    return s


def send_udp(ns: str, addr: str, port: int, count: int) -> None:
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(count):
            s.sendto(b"flowc-netkit", (addr, port))
    finally:
        s.close()


def received(sock: socket.socket, limit: int) -> int:
    n = 0
    for _ in range(limit):
        try:
            sock.recv(2048)
        except TimeoutError:
            break
        n += 1
    return n


def tcp_connects(ns: str, addr: str, port: int) -> bool:
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(pace().scaled(2))
    try:
        s.connect((addr, port))
        s.sendall(b"hello")
        return True
    except OSError:
        return False
    finally:
        s.close()


def counts(slow_path: SlowPath) -> list[int]:
    return [packets for packets, _bytes, _last in slow_path.rule_stats()]


def link_stats(ns: str, dev: str) -> dict[str, int]:
    """rx/tx packet counters of a device, as rtnetlink reports them."""
    with _ip(ns) as ipr:
        (link,) = ipr.get_links(_index(ipr, dev))
    stats = link.get_attr("IFLA_STATS64")
    return {"rx": int(stats["rx_packets"]), "tx": int(stats["tx_packets"])}


def netkit_links(ifindex: int) -> list[bpf_syscall.LinkInfo]:
    return [
        link
        for link in bpf_syscall.links()
        if link.link_type == bpf_syscall.BPF_LINK_TYPE_NETKIT and link.ifindex == ifindex
    ]


def test_the_guest_kernel_has_netkit() -> None:
    assert bpf_syscall.netkit_supported(), f"guest kernel {os.uname().release} has no netkit"


TO_WEB = """
policy to_web egress on nk-web {
    default drop
    allow icmp
    allow tcp dport 8080
    allow udp dport 5000
    drop udp dport 6000
}
"""
FROM_WEB = """
policy from_web ingress on nk-web {
    default drop
    allow icmp
    allow tcp sport 8080
    allow udp dport 5000
    drop udp dport 6000
}
"""


def test_real_traffic_both_directions(site: Site, programs: dict[str, SlowPath]) -> None:
    """egress of nk-web (BPF_NETKIT_PRIMARY) is what web receives, ingress
    (BPF_NETKIT_PEER) what it sends; UDP and ICMP counted exactly."""
    to_web = load(site, programs["to_web"], "nk-web", "egress")
    from_web = load(site, programs["from_web"], "nk-web", "ingress")
    try:
        # ICMP both ways: 3 echo requests in, 3 replies out (rule 0 of each).
        assert ping(site.outside, WEB, 3)
        # UDP toward web: 5000 allowed, 6000 dropped.
        listeners = {p: udp_listener(site.web, WEB, p) for p in (5000, 6000)}
        send_udp(site.outside, WEB, 5000, 5)
        send_udp(site.outside, WEB, 6000, 4)
        assert received(listeners[5000], 20) == 5
        assert received(listeners[6000], 20) == 0
        # UDP from web: the same split on the other hook.
        outside = {p: udp_listener(site.outside, OUTSIDE, p) for p in (5000, 6000)}
        send_udp(site.web, OUTSIDE, 5000, 6)
        send_udp(site.web, OUTSIDE, 6000, 2)
        assert received(outside[5000], 20) == 6
        assert received(outside[6000], 20) == 0
        assert counts(to_web)[:1] + counts(to_web)[2:] == [3, 5, 4, 0]
        assert counts(from_web)[:1] + counts(from_web)[2:] == [3, 6, 2, 0]
        # TCP: 8080 allowed (its replies by from_web's sport rule), 8081 by no rule.
        # TCP's packet counts depend on timing (retransmits), so only the verdicts
        # and that the rules decided are checked.
        servers = []
        for port in (8080, 8081):
            with inside(site.web):
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                server.bind((WEB, port))
                server.listen(4)
            servers.append(server)
        assert tcp_connects(site.outside, WEB, 8080)
        assert not tcp_connects(site.outside, WEB, 8081)
        assert counts(to_web)[1] > 0 and counts(from_web)[1] > 0
        assert counts(to_web)[4] > 0  # the SYNs to 8081: the default's drop
        for s in (*servers, *listeners.values(), *outside.values()):
            s.close()
    finally:
        with inside(site.host):
            tc_attach.detach("nk-web", "egress", mode="netkit")
            tc_attach.detach("nk-web", "ingress", mode="netkit")


def test_l2_pair_carries_traffic_under_a_program(site: Site, programs: dict[str, SlowPath]) -> None:
    """The L2 pair (ARP crosses it, not IP, so no rule counts it) under a program."""
    slow_path = load(site, programs["to_db"], "nk-db", "egress")
    try:
        assert ping(site.outside, DB, 2)
        listener = udp_listener(site.db, DB, 5000)
        send_udp(site.outside, DB, 5000, 3)
        assert received(listener, 20) == 3
        assert counts(slow_path)[0] == 2 and counts(slow_path)[2] == 3
        assert slow_path.status()["not_ip"] > 0  # ARP, passed uncounted by any rule
        listener.close()
    finally:
        with inside(site.host):
            tc_attach.detach("nk-db", "egress", mode="netkit")


PASSES = (ALLOW, MARK, MIRROR)


def _witness_packets(policy: Policy) -> list[Packet]:
    return [
        Packet(point)
        for point, _ in region_witnesses(policy)
        # IPv6 "transports" 0/43/44/60 are extension headers: no frame carries them.
        if not (point[0] == 6 and Packet(point).get("ip_proto") in (0, 43, 44, 60))
    ]


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_examples_on_netkit_match_the_ir(
    site: Site, programs: dict[str, SlowPath], path: Path
) -> None:
    """Every example's witnesses through a netkit hook (sent by the container on
    its eth0, so the BPF_NETKIT_PEER program of ``ingress on nk-db`` decides):
    per-rule counters exactly the IR's, what crossed to the primary exactly what
    the IR passes, what went to the redirect/mirror targets (devices of the
    host) exactly the IR's redirects and mirrors, and the send refused
    (ENOBUFS) exactly for the frames the IR drops: netkit's transmit returns
    NET_XMIT_DROP for a frame its program drops, which AF_PACKET reports to the
    sender. The ingress hook, because its program runs with the packet on the
    primary, where the kernel looks the targets up; the egress hook refuses
    these policies (test_diversion_on_egress_is_refused)."""
    for policy in policies(path):
        targets = sorted(target_devices(policy))
        # nk-web is the site's own netkit primary: a redirect to it transmits
        # there (its tx counter) and crosses to web. Other targets are new veths.
        made = [d for d in targets if d not in ("nk-web", "nk-db")]
        assert "nk-db" not in targets  # the hook under test; a redirect to itself would loop
        with _ip(site.host) as ipr:
            for dev in made:
                peer = f"{dev[:12]}-p"
                ipr.link("add", ifname=dev, kind="veth", peer=peer)
                for name in (dev, peer):
                    ipr.link("set", index=_index(ipr, name), state="up")
        packets = _witness_packets(policy)
        decided = [evaluate(policy, p).rule for p in packets]
        want = collections.Counter(rule.priority for rule in decided)
        passed = sum(1 for rule in decided if rule.action.kind in PASSES)
        diverted = sum(1 for rule in decided if rule.action.kind in (REDIRECT, MIRROR))
        dropped = sum(1 for rule in decided if rule.action.kind == DROP)
        refused = 0
        slow_path = load(site, programs[policy.name], "nk-db", "ingress")
        try:
            before = link_stats(site.host, "nk-db")["rx"]
            target_before = sum(link_stats(site.host, d)["tx"] for d in targets)
            with inside(site.db):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind(("eth0", 0))
            for packet in packets:
                try:
                    s.send(frame(packet))
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    refused += 1
            s.close()
            got = {rule: n for rule, n in enumerate(counts(slow_path)) if n}
            crossed = link_stats(site.host, "nk-db")["rx"] - before
            target_tx = sum(link_stats(site.host, d)["tx"] for d in targets) - target_before
        finally:
            with inside(site.host):
                tc_attach.detach("nk-db", "ingress", mode="netkit")
            with _ip(site.host) as ipr:
                for dev in made:
                    ipr.link("del", index=_index(ipr, dev))
        assert got == dict(want), policy.name
        # The frames' destination MAC is not nk-db's, so the host's stack takes
        # none of them further (no forwarding into a counted target); the
        # primary's rx is exactly the frames that crossed.
        assert crossed == passed, policy.name
        assert target_tx == diverted, policy.name
        assert refused == dropped, policy.name


DIVERT_EGRESS = """
endpoint tap { ip 10.201.0.9; dev upl-h }
policy divert egress on nk-db {
    default allow
    mirror tcp dport 80 -> tap
}
"""


def test_diversion_on_egress_is_refused(site: Site, tmp_path: Path) -> None:
    """On the egress hook the kernel runs the program with the packet on db's
    eth0 and looks the mirror target up in db's namespace: flowc refuses before
    compiling rather than mirror to whatever db's device of that number is."""
    policy = tmp_path / "divert.fw"
    policy.write_text(DIVERT_EGRESS)
    refused = flowc(site.host, "load", str(policy), "--mode", "netkit")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "redirect/mirror to upl-h on egress of netkit device 'nk-db'" in refused.stderr
    assert "Traceback" not in refused.stderr
    with inside(site.host):
        ifindex = socket.if_nametoindex("nk-db")
    assert netkit_links(ifindex) == []


def test_load_reload_unload_from_the_command_line(site: Site, tmp_path: Path) -> None:
    """flowc load --mode netkit pins one link (BPF_NETKIT_PRIMARY for egress); a
    second load (a restart) finds that pin and swaps the program behind the same
    link; unload leaves no link and no pin; wrong devices fail before compiling."""
    policy = tmp_path / "web.fw"
    policy.write_text(TO_WEB)
    loaded = flowc(site.host, "load", str(policy), "--mode", "netkit")
    assert loaded.returncode == 0, loaded.stderr
    assert "on egress of nk-web (netkit)" in loaded.stdout
    with inside(site.host):
        ifindex = socket.if_nametoindex("nk-web")
    pin = tc_attach.pin_path("nk-web", "egress", "netkit")
    (link,) = netkit_links(ifindex)
    assert link.attach_type == bpf_syscall.BPF_NETKIT_PRIMARY and pin.exists()
    (found,) = [p for p in tc_attach.pinned_links() if p.pin == pin]
    assert found.info.link_id == link.link_id
    assert ping(site.outside, WEB)

    reloaded = flowc(site.host, "load", str(policy), "--mode", "netkit")
    assert reloaded.returncode == 0, reloaded.stderr
    (again,) = netkit_links(ifindex)
    assert again.link_id == link.link_id and again.prog_id != link.prog_id

    unloaded = flowc(site.host, *UNLOAD_WEB)
    assert unloaded.returncode == 0, unloaded.stderr
    assert netkit_links(ifindex) == [] and not pin.exists()
    # No program: the pair's default policy (pass) applies again.
    assert ping(site.outside, WEB)
    twice = flowc(site.host, *UNLOAD_WEB)
    assert twice.returncode == 1 and "nothing attached" in twice.stderr

    veth = flowc(site.host, "load", str(policy), "--mode", "netkit", "--dev", "upl-h")
    assert veth.returncode == 1
    assert "is a veth device, not netkit" in veth.stderr and "Traceback" not in veth.stderr


def test_atomic_replace_under_traffic_loses_nothing_both_allow(
    site: Site, programs: dict[str, SlowPath]
) -> None:
    """A second program swapped in with BPF_LINK_UPDATE while UDP flows: every
    datagram both policies allow is counted by exactly one of them and arrives."""
    first = load(site, programs["to_web"], "nk-web", "egress")
    second = refill(programs["to_web2"], site.host)
    after_swap = 1500
    cap = 200_000  # a bound, never reached unless the swap never comes
    sent = 0
    got = 0
    listener = udp_listener(site.web, WEB, 5000)
    started, swapped = threading.Event(), threading.Event()

    def drain() -> None:
        nonlocal got
        got = received(listener, cap + 1)

    def blast() -> None:
        # Bounded bursts: a backlog queue (not the hook) would drop an unpaced flood.
        nonlocal sent
        with inside(site.outside):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tail = None
        while sent < cap and (tail is None or sent < tail):
            s.sendto(b"x", (WEB, 5000))
            sent += 1
            if sent % 50 == 0:
                time.sleep(0.002)
            if sent == 500:
                started.set()
            if tail is None and swapped.is_set():
                tail = sent + after_swap
        s.close()

    backlog_path = Path("/proc/sys/net/core/netdev_max_backlog")
    backlog = backlog_path.read_text().strip()
    backlog_path.write_text("20000")  # the guest's own (global) setting
    reader = threading.Thread(target=drain)
    sender = threading.Thread(target=blast)
    reader.start()
    sender.start()
    try:
        assert started.wait(pace().scaled(60))
        with inside(site.host):
            tc_attach.attach(second.fd, "nk-web", "egress", mode="netkit")
        swapped.set()
        sender.join(pace().scaled(300))
        reader.join(pace().scaled(300))
        before, after = counts(first)[2], counts(second)[2]
        assert before >= 500 and after >= after_swap, (before, after)
        assert before + after == sent
        assert got == sent
    finally:
        with inside(site.host):
            tc_attach.detach("nk-web", "egress", mode="netkit")
        listener.close()
        backlog_path.write_text(backlog)


REDIRECT_PEER = """
endpoint web {{ ip {web}; dev nk-web }}
policy uplink ingress on upl-h {{
    default allow
    redirect udp dport 7000 -> web
}}
"""


def test_redirect_peer_delivers_into_the_container(site: Site, tmp_path: Path) -> None:
    """On the uplink's tc ingress, a redirect to nk-web becomes bpf_redirect_peer
    (decided from the device kinds): the datagrams appear in web's namespace
    without ever being transmitted by nk-web, and without the host forwarding."""
    policy = tmp_path / "uplink.fw"
    policy.write_text(REDIRECT_PEER.format(web=WEB))
    loaded = flowc(site.host, "load", str(policy))
    assert loaded.returncode == 0, loaded.stderr
    assert "bpf_redirect_peer to nk-web" in loaded.stdout
    try:
        _sysctl(site.host, "net.ipv4.ip_forward=0")
        listener = udp_listener(site.web, WEB, 7000)
        tx_before = link_stats(site.host, "nk-web")["tx"]
        send_udp(site.outside, WEB, 7000, 5)
        assert received(listener, 20) == 5
        assert link_stats(site.host, "nk-web")["tx"] == tx_before
        listener.close()
    finally:
        flowc(site.host, "unload", "--dev", "upl-h", "--direction", "ingress")
        _sysctl(site.host, "net.ipv4.ip_forward=1")


FLOWER_UPLINK = """
endpoint web {{ ip {web}; dev nk-web }}
policy uplink ingress on upl-h {{
    default allow
    redirect udp dport 7100 -> web
    redirect udp dport 7101 -> web
}}
"""
WEB_GUARD = """
policy web_guard egress on nk-web {
    default drop
    allow udp dport 7100
    drop udp dport 7101
}
"""


def test_flower_on_the_uplink_netkit_on_the_container(
    site: Site, programs: dict[str, SlowPath]
) -> None:
    """Flower on the uplink (the NIC's place) redirects to nk-web with mirred,
    which transmits on nk-web: the container's own netkit program still sees
    every such packet and has the last word (7101 redirected, then dropped)."""
    uplink = compiled(FLOWER_UPLINK.format(web=WEB))
    program = flower.lower(uplink)
    guard = load(site, programs["web_guard"], "nk-web", "egress")
    listeners = {p: udp_listener(site.web, WEB, p) for p in (7100, 7101)}
    try:
        with inside(site.host), FlowerInstaller("upl-h", "ingress") as inst:
            inst.install(program.filters)
            # mirred keeps the uplink's Ethernet header; the L3 netkit peer accepts
            # frames for its own (all-zero) address, so web's host stack takes them.
            sh("ip", "-n", site.outside, "neigh", "replace", "10.201.0.1", "lladdr",
               "00:00:00:00:00:00", "dev", "upl-x", "nud", "permanent")  # fmt: skip
            send_udp(site.outside, WEB, 7100, 4)
            send_udp(site.outside, WEB, 7101, 3)
            hits: collections.Counter[int] = collections.Counter()
            for installed in inst.dump():
                cookie = installed.filter.cookie
                if cookie is not None and cookie.rule is not None:
                    hits[cookie.rule] += installed.packets
            inst.flush()
        assert hits[0] == 4 and hits[1] == 3, hits
        assert received(listeners[7100], 20) == 4
        assert received(listeners[7101], 20) == 0
        # Rules in order, the default last: allow 7100, drop 7101, default drop.
        assert counts(guard) == [4, 3, 0]
    finally:
        with inside(site.host):
            tc_attach.detach("nk-web", "egress", mode="netkit")
        for s in listeners.values():
            s.close()


NK_AGENT = """
policy nk_agent egress on nk-web {
    default drop
    allow icmp
    allow udp dport 5000
    drop udp dport 6000
}
"""
NK_AGENT_SAME_SHAPE = NK_AGENT.replace("allow udp dport 5000", "drop udp dport 5000").replace(
    "drop udp dport 6000", "allow udp dport 6000"
)
NK_AGENT_WIDE = """
policy nk_agent_wide egress on nk-web {
    default drop
    allow icmp
    allow udp dport 5000
    allow udp from 10.201.0.0/24 dport 6000
}
"""
NK_AGENT_NEXT = """
policy nk_agent_next egress on nk-web {
    default drop
    allow icmp
    allow udp dport 7000
}
"""
NK_AGENT_DIVERTS = """
endpoint tap { ip 10.201.0.9; dev upl-h }
policy nk_agent egress on nk-web {
    default allow
    mirror udp dport 7000 -> tap
}
"""


def test_agent_on_netkit_updates_and_adopts_its_link_across_a_restart(
    site: Site, programs: dict[str, SlowPath]
) -> None:
    """The agent with --attach netkit (in process, on batch programs): start pins a
    link; an update of the same shape stays in the program, one of a new shape
    swaps a program in behind the same link, a diverting one is refused; a stop
    with keep leaves the program enforcing; the next agent adopts the link (same
    link, new program); a stop without keep leaves no link and no pin."""
    with inside(site.host):
        ifindex = socket.if_nametoindex("nk-web")
    pin = tc_attach.pin_path("nk-web", "egress", "netkit")
    loaded: list[SlowPath] = []

    def load_program(policy: Policy, _generation: int) -> SlowPath:
        loaded.append(refill(programs[policy.name], site.host))
        return loaded[-1]

    current = [compiled(NK_AGENT)]
    config = AgentConfig(
        device="nk-web", direction="egress", profile=load_profile("software"), keep=True
    )
    listeners = {port: udp_listener(site.web, WEB, port) for port in (5000, 6000, 7000)}

    def delivered(allowed: set[int]) -> dict[int, int]:
        """3 datagrams to each port from outside; how many reached web (the
        allowed ports' 3 are awaited; a dropped port waits out one timeout)."""
        for port in listeners:
            send_udp(site.outside, WEB, port, 3)
        return {p: received(s, 3 if p in allowed else 1) for p, s in listeners.items()}

    def agent(keep: bool) -> NetkitAgent:
        made = NetkitAgent(
            dataclasses.replace(config, keep=keep), lambda: current[0], slow_path=load_program
        )
        with inside(site.host):
            made.start()
        return made

    try:
        first = agent(keep=True)
        assert first.adopted is None
        (link,) = netkit_links(ifindex)
        assert link.attach_type == bpf_syscall.BPF_NETKIT_PRIMARY and pin.exists()
        assert delivered({5000}) == {5000: 3, 6000: 0, 7000: 0}
        first.poll()
        assert first.snapshot is not None
        # Rules in order, the default last: icmp, 5000, 6000, default.
        assert [r[3].packets["slow"] for r in first.snapshot.rules] == [0, 3, 3, 3]

        current[0] = compiled(NK_AGENT_SAME_SHAPE)
        with inside(site.host):
            assert first.reload()
        assert netkit_links(ifindex) == [link] and len(loaded) == 1  # in place
        assert delivered({6000}) == {5000: 0, 6000: 3, 7000: 0}

        current[0] = compiled(NK_AGENT_WIDE)  # a source prefix: other maps
        with inside(site.host):
            assert first.reload()
        (wide,) = netkit_links(ifindex)
        assert wide.link_id == link.link_id and wide.prog_id != link.prog_id
        assert delivered({5000, 6000}) == {5000: 3, 6000: 3, 7000: 0}

        current[0] = compiled(NK_AGENT_DIVERTS)
        with inside(site.host):
            assert not first.reload()
        assert first.stats["policy_update_failures"] == 1 and netkit_links(ifindex) == [wide]

        first.stop()  # keep: the link and its program stay, enforcing
        assert netkit_links(ifindex) == [wide] and pin.exists()
        assert delivered({5000, 6000}) == {5000: 3, 6000: 3, 7000: 0}

        current[0] = compiled(NK_AGENT_NEXT)
        second = agent(keep=False)
        assert second.adopted == wide
        (adopted,) = netkit_links(ifindex)
        assert adopted.link_id == link.link_id and adopted.prog_id != wide.prog_id
        assert delivered({7000}) == {5000: 0, 6000: 0, 7000: 3}

        with inside(site.host):
            second.stop()
        assert netkit_links(ifindex) == [] and not pin.exists()
        # No program: the pair's default policy (pass) applies again.
        assert delivered({5000, 6000, 7000}) == {5000: 3, 6000: 3, 7000: 3}
    finally:
        with inside(site.host):
            tc_attach.detach("nk-web", "egress", mode="netkit")
        for s in listeners.values():
            s.close()
