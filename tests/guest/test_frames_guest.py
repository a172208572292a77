"""Real frames of every row of FRAMES.md (the README's table of frames the IR
does not describe) through both datapaths in the guest kernel.

B's veth ingress gets flowc's software-profile flower filters in chain 0 and
the policy's BPF slow path (cls_bpf) in chain 1, where the traps jump, as
``flowc agent`` sets them up. Frames built byte by byte (verify/frames.py) are
sent one at a time from namespace A through an AF_PACKET socket; each frame's
fate is read from the kernel's counters: which chain-0 filter counted it, and
when that was a trap, which slow-path rule or status counter did. The fate
must be ``evaluate_frame(policy, parse_frame(frame))``: the policy's rule and
action for a packet; for a malformed frame a drop (by a chain-0 drop filter
or the slow path's malformed counter); for a non-IP frame nothing (it passes).
Every observation is written to FLOWC_GUEST_OUT/frames-<policy>.json.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from backends.bpf.emit import BpfProgram
from backends.bpf.emit import lower as lower_bpf
from backends.flower import lower as lower_flower
from backends.flower.rules import TRAP, same_decision
from compiler.packet_syntax import parse_packet
from ir.interp import FrameVerdict, Unclassified, evaluate_frame
from ir.model import Policy
from runtime import tc_attach
from runtime.bpf_loader import SlowPath
from runtime.flower_installer import FlowerInstaller
from tests.fixtures import EXAMPLES, compiled, example_policies
from tests.frame_strategies import FRAG_POLICY, FrameCase, row_cases
from tests.guest.conftest import Pair, inside
from tests.guest.helpers import pace, refill, send_frames, target_devices
from verify.frames import frame, parse_frame

SLOW_CHAIN = 1
TCP4 = parse_packet("tcp 10.0.3.7:40000 -> 10.0.1.10:443 flags 0x02")
TCP6 = parse_packet("tcp [fd00:3::7]:40000 -> [fd00::10]:443 flags 0x10")
ISSUE_FRAGMENT = frame(parse_packet("tcp 10.0.3.7:40000 -> 10.0.1.10:443 frag first"), b"x" * 64)
"""The issue's case: the first fragment (MF=1, offset 0) of a flow uplink.fw
redirects to nk-web."""


def guest_policies() -> dict[str, Policy]:
    """Default drop with port rules and a redirect (uplink.fw, the issue's
    policy), and default allow with ``frag`` rules."""
    (uplink,) = example_policies(EXAMPLES / "uplink.fw")
    return {"uplink": uplink, "frags": compiled(FRAG_POLICY, "frags.fw")}


def batch_programs() -> dict[str, BpfProgram]:
    """The slow paths of :func:`guest_policies`, for the module's one compile (conftest.batch)."""
    return {name: lower_bpf(policy) for name, policy in guest_policies().items()}


def counters(
    inst: FlowerInstaller, slow: SlowPath
) -> tuple[dict[int, int], list[int], dict[str, int]]:
    """Chain-0 filter packet counts by handle, slow-path packets per rule, status counters."""
    filters = {i.filter.handle: i.packets for i in inst.dump() if i.filter.chain == 0}
    return filters, [p for p, _b, _t in slow.rule_stats()], slow.status()


def fate_problem(
    verdict: FrameVerdict,
    by_handle: dict[int, Any],
    before: tuple[dict[int, int], list[int], dict[str, int]],
    after: tuple[dict[int, int], list[int], dict[str, int]],
) -> tuple[dict[str, Any], str]:
    """What the counters say happened to one frame, and how that differs from
    ``verdict`` ("" when it does not)."""
    hits = [h for h, n in after[0].items() if n != before[0].get(h, 0)]
    rules = [i for i, (a, b) in enumerate(zip(after[1], before[1], strict=True)) if a != b]
    status = {k: after[2][k] - before[2][k] for k in after[2] if after[2][k] != before[2][k]}
    seen: dict[str, Any] = {
        "chain0": [str(by_handle[h]) for h in hits],
        "slow_rules": rules,
        "status": status,
    }
    if len(hits) > 1:
        return seen, "more than one chain-0 filter counted the frame"
    malformed = verdict.unclassified not in (None, Unclassified.NOT_IP)
    if not hits:
        if verdict.unclassified is Unclassified.NOT_IP:
            return seen, ""
        if verdict.unclassified is Unclassified.MALFORMED_L2 and not rules and not status:
            # The receive path (skb_vlan_untag) frees a frame whose tag is cut
            # short before tc sees it: dropped, as flowc's verdict says.
            return seen, ""
        return seen, "no chain-0 filter counted the frame: it passed"
    flt = by_handle[hits[0]]
    if flt.action.kind != TRAP:
        if rules or status:
            return seen, "decided in chain 0 but the slow path counted it too"
        if malformed:
            return seen, "" if flt.action.kind == "drop" else "a malformed frame not dropped"
        if verdict.rule is None:
            return seen, "a non-IP frame decided by a filter"
        ok = (
            flt.cookie is not None
            and flt.cookie.rule == verdict.rule.priority
            and same_decision(flt.action, verdict.action)
        )
        return seen, "" if ok else f"chain 0 decided, the policy says rule {verdict.rule.priority}"
    if verdict.rule is not None:
        ok = rules == [verdict.rule.priority] and not status
        return seen, "" if ok else f"slow path: want rule {verdict.rule.priority}"
    want = (
        {"not_ip": 1}
        if verdict.unclassified is Unclassified.NOT_IP
        else {"malformed": 1, verdict.unclassified.value if verdict.unclassified else "": 1}
    )
    return seen, "" if (not rules and status == want) else f"slow path: want status {want}"


def settle(read: Any, before: Any) -> Any:
    """The counters once the frame went through: polled until they move, for one
    unloaded second (scaled) at most, as a frame nobody counts moves nothing."""
    deadline = time.monotonic() + pace().scaled(1.0)
    while time.monotonic() < deadline:
        now = read()
        if now != before:
            time.sleep(pace().scaled(0.05))
            return read()
        time.sleep(0.02)
    return read()


@pytest.mark.parametrize("name", ["uplink", "frags"])
def test_every_row_gets_the_policys_fate(pair: Pair, batch: dict[str, SlowPath], name: str) -> None:
    policy = guest_policies()[name]
    peers = {dev: pair.add_device(dev) for dev in sorted(target_devices(policy))}
    cases: list[FrameCase] = [
        c for c in row_cases(TCP4, TCP6) if len(c.data) >= 14
    ]  # AF_PACKET sends nothing shorter than an Ethernet header
    if name == "uplink":
        cases.append(FrameCase("ipv4_first_fragment", "issue_16", ISSUE_FRAGMENT))
    program = lower_flower(policy, slow_chain=SLOW_CHAIN)
    by_handle = {f.handle: f for f in program.filters if f.chain == 0}
    observed: list[dict[str, Any]] = []
    problems: list[str] = []
    slow = refill(batch[name], pair.ns_b)  # nk-web is B's
    with inside(pair.ns_b):
        sniff = None
        if "nk-web" in peers:
            sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            sniff.bind((peers["nk-web"], 0))
            sniff.settimeout(pace().scaled(1.0))
        try:
            with FlowerInstaller(pair.dev_b, "ingress") as inst:
                inst.install(program.filters)
                tc_attach.attach(slow.fd, pair.dev_b, "ingress", chain=SLOW_CHAIN)
                # Each frame's "after" is the next one's "before" (a dump costs
                # seconds in the emulated guest); a count that came in late
                # would then show against the next frame and fail it.
                after = counters(inst, slow)
                for case in cases:
                    verdict = evaluate_frame(policy, parse_frame(case.data))
                    before = after
                    send_frames(pair, [case.data])
                    after = settle(lambda: counters(inst, slow), before)
                    seen, problem = fate_problem(verdict, by_handle, before, after)
                    seen.update(case=case.id, verdict=verdict.action.kind, problem=problem)
                    observed.append(seen)
                    if problem:
                        problems.append(f"{case.id}: {problem}: {seen}")
                    if case.name == "issue_16" and sniff is not None:
                        # Delivered where the policy sends it: out of nk-web.
                        got = []
                        while True:
                            try:
                                got.append(sniff.recv(4096))
                            except TimeoutError:
                                break
                        if case.data not in got:
                            problems.append("issue_16: the first fragment did not leave nk-web")
                tc_attach.detach(pair.dev_b, "ingress", chain=SLOW_CHAIN)
                inst.flush()
        finally:
            if sniff is not None:
                sniff.close()
    out = os.environ.get("FLOWC_GUEST_OUT")
    if out:
        Path(out, f"frames-{name}.json").write_text(json.dumps(observed, indent=1))
    assert problems == []
