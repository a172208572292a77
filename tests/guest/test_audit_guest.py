"""``flowc audit --dev`` on a real cls_flower hook (Debian's kernel under virtme-ng).

The test installs the current lowering of a policy (generation 2) behind
two filters left over from the previous version (generation 1): one still
agrees with the new policy (stale), one allows what the new policy drops
(unsound). The audit must name exactly those two, and the counterexample it
gives must be real: a frame built from it, sent into the hook, is counted by
the unsound filter.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from backends.flower import lowering as flower
from backends.flower.rules import TRAP, FlowerFilter
from cli.main import main
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.model import Policy
from runtime.flower_installer import FlowerInstaller
from tests.guest.conftest import Pair, inside
from tests.guest.helpers import send_frames, target_devices
from verify.frames import frame

WEB = Path(__file__).resolve().parent.parent.parent / "examples" / "web-tier.fw"
OLD_RULE = "allow tcp from lb to webs dport 8080"
NEW_RULE = "drop tcp from lb to webs dport 8080"


def compiled(text: str, path: Path) -> Policy:
    result = compile_source(text, str(path))
    assert result.program is not None
    (policy,) = result.program.policies
    return policy


def leftover(filters: tuple[FlowerFilter, ...], rule_text: str, policy: Policy) -> FlowerFilter:
    """An IPv4 filter (not a trap) of the old lowering implementing ``rule_text``."""
    return next(
        f
        for f in filters
        if f.cookie is not None
        and f.cookie.rule is not None
        and policy.rules[f.cookie.rule].origin.text.startswith(rule_text)
        and f.action.kind != TRAP
        and f.match.family == 4
        and f.match.vlan_id is None
    )


def test_audit_names_the_stale_and_the_unsound_filter(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1_text = WEB.read_text()
    v2_path = tmp_path / "web-tier.fw"
    v2_path.write_text(v1_text.replace(OLD_RULE, NEW_RULE))
    old = compiled(v1_text, WEB)
    new = compiled(v2_path.read_text(), v2_path)
    for dev in target_devices(new):
        pair.add_device(dev)
    old_filters = flower.lower(old, generation=1).filters
    stale = dataclasses.replace(leftover(old_filters, "drop from blocklist", old), prio=1)
    unsound = dataclasses.replace(leftover(old_filters, OLD_RULE, old), prio=2)
    current = [
        dataclasses.replace(f, prio=f.prio + 10) for f in flower.lower(new, generation=2).filters
    ]
    with inside(pair.ns_b), FlowerInstaller(pair.dev_b, "ingress") as inst:
        inst.install([stale, unsound, *current])
        code = main(["audit", "--dev", pair.dev_b, "--policy", str(v2_path), "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 1
        assert report["generation"] == 2  # the newest on the device
        assert report["counts"]["sound"] == len(current)
        found = {(f["prio"], f["handle"]): f["status"] for f in report["filters"]}
        assert found == {(1, stale.handle): "stale", (2, unsound.handle): "unsound"}
        ce = report["counterexample"]
        assert ce["policy"] == "drop" and ce["flower"] == "pass"
        # Moved to prio 2, the leftover also overtakes the scan rule, so the
        # deciding rule may be either drop the new policy has for lb -> web.
        assert ce["rule"]["file"] == str(v2_path) and ce["rule"]["text"].startswith("drop tcp")

        # The counterexample is real: the kernel counts its frame on the unsound filter.
        send_frames(pair, [frame(parse_packet(ce["packet"]))])
        hits = {(i.filter.prio, i.filter.handle): i.packets for i in inst.dump() if i.packets}
        assert hits == {(2, unsound.handle): 1}

        # Without the unsound filter the device is sound; the stale one is still listed.
        inst.delete([unsound])
        code = main(["audit", "--dev", pair.dev_b, "--policy", str(v2_path)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "STALE" in out and "installed by generation 1" in out and "UNSOUND" not in out
        inst.flush()
