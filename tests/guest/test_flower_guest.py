"""Flower rules in a real kernel's cls_flower (Debian's kernel under virtme-ng).

Every example's lowered filters are installed with pyroute2 (skip_hw), read
back with pyroute2 and with iproute2's ``tc -j filter show`` and compared with
the request; real frames (a witness of every region of the policy) go through
a veth pair into the hook, and the per-filter counters the kernel keeps must
be exactly what flower's semantics and the IR predict. Redirect, mirror, drop
and pass are also observed from the outside; a refused filter reports the
kernel's extack text with the DSL line.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import socket
from pathlib import Path

import pytest

from backends.flower import lowering as flower
from backends.flower.dissector import MALFORMED_VIEWS
from backends.flower.rules import CT, ROLE_FRAME, FlowerFilter, classify, ordered
from backends.flower.text import parse_tc_json, to_tc_batch
from compiler.frontend import compile_file, compile_source
from ir.analysis import region_witnesses
from ir.fields import FRAG_NONE
from ir.interp import evaluate
from ir.packet import Packet
from ir.state_analysis import uses_state
from runtime.flower_installer import FlowerInstaller, FlowerInstallError
from tests.fixtures import EXAMPLE_PATHS
from tests.guest.conftest import Pair, inside, sh
from tests.guest.helpers import pace, policies, send_frames, target_devices
from verify.frames import frame


def plain(filters: list[FlowerFilter] | tuple[FlowerFilter, ...]) -> list[FlowerFilter]:
    return sorted(
        (dataclasses.replace(f, origin=None) for f in filters), key=lambda f: (f.prio, f.handle)
    )


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_examples_install_and_read_back(pair: Pair, path: Path) -> None:
    for policy in policies(path):
        for dev in target_devices(policy):
            pair.add_device(dev)
        program = flower.lower(policy)
        direction = policy.hook.direction
        with inside(pair.ns_b), FlowerInstaller(pair.dev_b, direction) as inst:
            inst.install(program.filters)
            assert inst.verify(program.filters) == []
            dumped = [i.filter for i in inst.dump()]
            assert plain(dumped) == plain(program.filters)
            tc_json = sh(
                "ip",
                "netns",
                "exec",
                pair.ns_b,
                "tc",
                "-j",
                "filter",
                "show",
                "dev",
                pair.dev_b,
                direction,
            )
            assert plain(parse_tc_json(json.loads(tc_json.stdout))) == plain(program.filters)
            assert inst.flush() == len(program.filters)
            assert inst.dump() == []


STATEFUL_EXAMPLES = sorted((EXAMPLE_PATHS[0].parent / "stateful").glob("*.fw"))


@pytest.mark.parametrize("path", STATEFUL_EXAMPLES, ids=lambda p: p.stem)
def test_stateful_examples_read_back_from_tc_json(pair: Pair, path: Path) -> None:
    """The ct shape (ct_state keys, the ct action, commits, goto chains) as iproute2
    prints it: parse_tc_json of a real `tc -j` dump gives back every filter
    installed, in every chain."""
    for module in ("nf_conntrack", "act_ct"):
        sh("modprobe", module)
    result = compile_file(str(path))
    assert result.program is not None, result.diagnostics
    stateful = uses_state(result.program)
    assert stateful, f"{path.name} is no stateful example"
    for policy in result.program.policies:
        for dev in target_devices(policy):
            pair.add_device(dev)
        program = flower.lower(policy, stateful=stateful)
        assert any(f.action.kind == CT for f in program.filters), policy.name
        direction = policy.hook.direction
        with inside(pair.ns_b), FlowerInstaller(pair.dev_b, direction) as inst:
            inst.install(program.filters)
            tc_json = sh(
                "ip", "netns", "exec", pair.ns_b, "tc", "-j", "filter", "show",
                "dev", pair.dev_b, direction,
            )  # fmt: skip
            assert plain(parse_tc_json(json.loads(tc_json.stdout))) == plain(program.filters)
            assert inst.flush() == len(program.filters)


@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_examples_real_frames_hit_the_filters_the_ir_predicts(pair: Pair, path: Path) -> None:
    for policy in policies(path):
        for dev in target_devices(policy):
            pair.add_device(dev)
        program = flower.lower(policy)
        filters = ordered(program.filters)
        packets = [
            Packet(point)
            for point, _ in region_witnesses(policy)
            # IPv6 "transports" 0/43/44/60 are extension headers: no frame carries them.
            if not (point[0] == 6 and Packet(point).get("ip_proto") in (0, 43, 44, 60))
        ]
        want: collections.Counter[int] = collections.Counter()
        for packet in packets:
            verdict = classify(filters, packet)
            assert verdict.filter is not None and verdict.filter.cookie is not None
            if verdict.filter.cookie.role == ROLE_FRAME:
                # Fragments and the flower views of malformed frames are trapped
                # to the slow path first (README, "Frames the IR does not describe").
                assert packet.get("frag") != FRAG_NONE or any(
                    view.cube.contains(packet.values) for view in MALFORMED_VIEWS
                )
            else:
                assert verdict.filter.cookie.rule == evaluate(policy, packet).rule.priority
            want[verdict.filter.handle] += 1
        with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
            inst.install(program.filters)
            send_frames(pair, [frame(p) for p in packets])
            got = {i.filter.handle: i.packets for i in inst.dump() if i.packets}
            inst.flush()
        assert got == dict(want)


POLICY = """
endpoint out {{ ip 10.198.1.1; dev {target} }}
policy t ingress on {dev} {{
    default drop
    allow udp dport 5000
    redirect udp dport 5002 -> out
    mirror udp dport 5003 -> out
    mark 0x42 udp dport 5001
}}
"""


def test_verdicts_seen_from_outside(pair: Pair) -> None:
    peer = pair.add_device("fgout")
    text = POLICY.format(target="fgout", dev=pair.dev_b)
    result = compile_source(text, "guest.fw")
    assert result.program is not None
    (policy,) = result.program.policies
    program = flower.lower(policy)
    with inside(pair.ns_b):
        listeners = {}
        for port in (5000, 5001, 5003, 6000):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("10.198.0.2", port))
            s.settimeout(pace().scaled(0.5))
            listeners[port] = s
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sniff.bind((peer, 0))
        sniff.settimeout(pace().scaled(0.5))
        with FlowerInstaller(pair.dev_b, "ingress") as inst:
            inst.install(program.filters)
            # A static neighbour entry: the UDP sends below must not wait on ARP.
            link = json.loads(sh("ip", "-n", pair.ns_b, "-j", "link", "show", pair.dev_b).stdout)
            sh(
                "ip",
                "-n",
                pair.ns_a,
                "neigh",
                "replace",
                "10.198.0.2",
                "lladdr",
                link[0]["address"],
                "dev",
                pair.dev_a,
            )
            with inside(pair.ns_a):
                out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                out.bind(("10.198.0.1", 40000))
            for port in (5000, 5001, 5002, 5003, 6000):
                out.sendto(b"flowc", ("10.198.0.2", port))
            out.close()

            def got(port: int) -> bool:
                try:
                    listeners[port].recv(64)
                    return True
                except TimeoutError:
                    return False

            assert got(5000) and got(5001) and got(5003)  # pass, mark (then pass), mirror
            assert not got(6000)  # default drop
            captured = []
            for _ in range(20):
                try:
                    captured.append(sniff.recv(2048))
                except TimeoutError:
                    break
            ports = {int.from_bytes(d[36:38], "big") for d in captured if d[12:14] == b"\x08\x00"}
            assert {5002, 5003} <= ports  # redirected and mirrored copies left via fgout
            stats = {i.filter.cookie.rule: i for i in inst.dump() if i.filter.cookie and i.packets}
            assert stats[0].last_used is not None  # rule 0 (allow 5000) has a last-use time
            inst.flush()


def test_kernel_refusal_reports_extack_and_dsl_line(pair: Pair) -> None:
    (policy,) = policies(EXAMPLE_PATHS[0])
    program = flower.lower(policy)
    first = next(f for f in program.filters if f.origin is not None)
    with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
        inst.ensure_clsact()
        inst.add([first])
        # The same priority with another protocol: tc keeps one protocol per priority.
        clash = dataclasses.replace(
            first, handle=first.handle + 1, match=dataclasses.replace(first.match, protocol=0x88CC)
        )
        with pytest.raises(FlowerInstallError) as info:
            inst.add([clash])
        failure = info.value.failures[0]
        assert failure.errno != 0 and failure.message
        assert str(first.origin) in str(info.value)
        with pytest.raises(FlowerInstallError, match="File exists"):
            inst.add([first])
        inst.flush()
        # One batch with a refused request in the middle: requests carry no ack,
        # so only the refusal is answered, the fence closes the batch, and the
        # requests on both sides of the refusal still land.
        others = [f for f in program.filters if f.prio == first.prio and f != first][:2]
        if len(others) == 2:
            with pytest.raises(FlowerInstallError) as info:
                inst.add([others[0], clash, others[1]])
            assert [failure.filter for failure in info.value.failures] == [clash]
            assert {i.filter.handle for i in inst.dump()} == {others[0].handle, others[1].handle}
            inst.flush()


def test_tc_batch_installs_the_same_filters(
    pair: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import os

    (policy,) = policies(EXAMPLE_PATHS[0])
    for dev in target_devices(policy):
        pair.add_device(dev)
    program = flower.lower(policy)
    out_dir = Path(os.environ.get("FLOWC_GUEST_OUT", "/tmp"))
    batch = out_dir / "uplink.tc"
    batch.write_text(to_tc_batch(program.filters, pair.dev_b, "ingress"))
    sh("ip", "netns", "exec", pair.ns_b, "tc", "-batch", str(batch))
    with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
        assert plain([i.filter for i in inst.dump()]) == plain(program.filters)
        inst.flush()


def test_replace_changes_a_filter_in_place(pair: Pair) -> None:
    (policy,) = policies(EXAMPLE_PATHS[0])
    program = flower.lower(policy)
    target = next(f for f in program.filters if f.action.kind == "drop")
    changed = dataclasses.replace(target, action=dataclasses.replace(target.action, kind="pass"))
    with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
        inst.install(program.filters)
        inst.add([changed], replace=True)
        after = {(i.filter.prio, i.filter.handle): i.filter for i in inst.dump()}
        assert after[(target.prio, target.handle)].action.kind == "pass"
        assert len(after) == len(program.filters)
        inst.delete([changed])
        assert (target.prio, target.handle) not in {
            (i.filter.prio, i.filter.handle) for i in inst.dump()
        }
        inst.flush()


def test_pyroute2_message_classes_install_the_same_filters(pair: Pair) -> None:
    """The pyroute2-class encoder (the wire encoder's oracle) is a working
    installer path in the kernel too, not only in byte comparisons."""
    for path in EXAMPLE_PATHS:
        for policy in policies(path):
            for dev in target_devices(policy):
                pair.add_device(dev)
            program = flower.lower(policy)
            with (
                inside(pair.ns_b),
                FlowerInstaller(pair.dev_b, policy.hook.direction, codec="pyroute2") as inst,
            ):
                inst.install(program.filters)
                assert inst.verify(program.filters) == []
                inst.flush()
