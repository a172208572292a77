"""Flower filters as `tc -j filter show` JSON and `tc -batch` text."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from backends.flower import lowering as flower
from backends.flower.rules import FlowerFilter
from backends.flower.text import (
    FlowerTextError,
    filter_words,
    parse_tc_json,
    to_tc_batch,
    to_tc_json,
)
from backends.nic_profile import load_profile
from tests.fixtures import EXAMPLE_PATHS, example_policies, run

# One real dump from iproute2 6.1 in the guest kernel (trimmed stats), the
# shape parse_tc_json must read besides flowc's own output.
TC_DUMP = [
    {"protocol": "ip", "pref": 3, "kind": "flower", "chain": 0},
    {
        "protocol": "ip",
        "pref": 3,
        "kind": "flower",
        "chain": 0,
        "options": {
            "handle": 1,
            "keys": {
                "eth_type": "ipv4",
                "ip_proto": "udp",
                "dst_port": {"start": 1000, "end": 2000},
            },
            "skip_hw": True,
            "not_in_hw": True,
            "actions": [
                {"order": 1, "kind": "skbedit", "mark": 16, "control_action": {"type": "pass"}}
            ],
        },
    },
    {
        "protocol": "ip",
        "pref": 9,
        "kind": "flower",
        "chain": 0,
        "options": {
            "handle": 1,
            "keys": {
                "eth_type": "ipv4",
                "ip_proto": "tcp",
                "src_port": 1024,
                "src_port_mask": "fc00",
            },
            "skip_hw": True,
            "actions": [{"order": 1, "kind": "gact", "control_action": {"type": "drop"}}],
        },
    },
    {
        "protocol": "802.1Q",
        "pref": 12,
        "kind": "flower",
        "chain": 0,
        "options": {
            "handle": 1,
            "keys": {
                "vlan_ethtype": "ipv6",
                "eth_type": "ipv6",
                "ip_proto": "udp",
                "ip_tos": 16,
                "ip_tos_mask": "fc",
                "dst_ip": "::1",
            },
            "skip_hw": True,
            "actions": [
                {
                    "order": 1,
                    "kind": "mirred",
                    "mirred_action": "redirect",
                    "direction": "egress",
                    "to_dev": "vb",
                    "control_action": {"type": "stolen"},
                }
            ],
        },
    },
]


def without_origin(filters: list[FlowerFilter] | tuple[FlowerFilter, ...]) -> list[FlowerFilter]:
    return [dataclasses.replace(f, origin=None) for f in filters]


@pytest.mark.parametrize("profile", ["software", "ice-e810"])
@pytest.mark.parametrize("path", EXAMPLE_PATHS, ids=lambda p: p.stem)
def test_json_round_trip(path: Path, profile: str) -> None:
    for policy in example_policies(path):
        filters = flower.lower(policy, load_profile(profile)).filters
        text = json.dumps(to_tc_json(filters))
        assert parse_tc_json(json.loads(text)) == without_origin(filters)


def test_reads_iproute2_dump() -> None:
    filters = parse_tc_json(TC_DUMP)
    assert [(f.prio, f.action.kind) for f in filters] == [
        (3, "mark"),
        (9, "drop"),
        (12, "redirect"),
    ]
    assert filters[0].match.dst_port == flower.PortRange(1000, 2000)
    assert filters[1].match.src_port == flower.Masked(1024, 0xFC00)
    assert filters[2].match.ip_tos == flower.Masked(16, 0xFC)
    assert filters[2].match.family == 6
    assert all(f.cookie is None for f in filters)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "u32", "pref": 1, "options": {}}, "not flower"),
        (
            {
                "kind": "flower",
                "pref": 1,
                "protocol": "ip",
                "options": {
                    "keys": {"enc_key_id": 5},
                    "actions": [{"kind": "gact", "control_action": {"type": "drop"}}],
                },
            },
            "does not model: enc_key_id",
        ),
        (
            {
                "kind": "flower",
                "pref": 1,
                "protocol": "ip",
                "options": {"keys": {}, "actions": [{"kind": "police"}]},
            },
            "'police' is not one flowc models",
        ),
        (
            {"kind": "flower", "protocol": "ip", "options": {"keys": {}, "actions": []}},
            "without actions",
        ),
        (
            {
                "kind": "flower",
                "protocol": "ip",
                "options": {
                    "keys": {},
                    "actions": [{"kind": "gact", "control_action": {"type": "pass"}}],
                },
            },
            "malformed",
        ),
    ],
)
def test_foreign_filters_are_refused_not_guessed(entry: dict, message: str) -> None:
    with pytest.raises(FlowerTextError, match=message):
        parse_tc_json([entry])


def test_batch_has_one_line_per_filter_and_tc_syntax() -> None:
    (policy,) = example_policies(EXAMPLE_PATHS[0])
    filters = flower.lower(policy).filters
    text = to_tc_batch(filters, "eth9", "ingress")
    lines = text.splitlines()
    assert lines[0] == "qdisc replace dev eth9 clsact"
    assert len(lines) == len(filters) + 1
    words = filter_words(filters[0], "eth9", "ingress")
    assert words[:5] == ["filter", "add", "dev", "eth9", "ingress"]
    assert "cookie" in words


def test_cli_emit_flower_and_tc(capsys: pytest.CaptureFixture[str]) -> None:
    uplink = str(EXAMPLE_PATHS[-2])
    code, out, err = run(capsys, "compile", uplink, "--emit", "flower")
    assert code == 0 and "filters" in err
    assert parse_tc_json(json.loads(out))
    code, out, err = run(capsys, "compile", uplink, "--emit", "tc", "--profile", "ice-e810")
    assert code == 0 and out.startswith("qdisc replace dev")
    assert "kept in the slow path" in err
    code, _out, err = run(capsys, "compile", uplink, "--emit", "tc", "--profile-set", "max_rules")
    assert code == 2 and "KEY=VALUE" in err
    code, _out, err = run(capsys, "compile", uplink, "--emit", "tc", "--profile", "nope")
    assert code == 2 and "unknown profile" in err
