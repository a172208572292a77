"""The iptables and nftables translations of bench.netfilter_translate, checked without root.

The iptables rules are checked through their text: a small independent reader of
the ``iptables-restore`` lines evaluates each packet first-match, and must pick
the same rule (and target) as :func:`ir.interp.evaluate`. The nftables ruleset is
checked through its structure, evaluated the way nft does (a verdict map's
elements must be disjoint: at most one may match a packet), and its text is
checked for the pieces nft needs. The kernel tier (tests/kernel/test_datapath.py)
loads both for real.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.netfilter_translate import (
    NftMap,
    NftRuleset,
    TranslateError,
    iptables_restore_text,
    iptables_rules,
    nft_ruleset,
    nft_text,
)
from bench.workloads import generate_rules, policy_text, trace_lines
from compiler.frontend import compile_source
from compiler.packet_syntax import parse_packet
from ir.analysis import region_witnesses
from ir.fields import TCP_FLAG_BITS
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet
from ir.valueset import ValueSet
from tests.strategies import REPS, make_policy, packets, rules

TARGETS = {"allow": "ACCEPT", "drop": "DROP"}
NFT_VERDICTS = {"allow": "accept", "drop": "drop"}


# ------------------------------------------------------- independent iptables reader
def _addr_in(text: str, value: int) -> bool:
    if "-" in text:
        lo, hi = (int(ipaddress.IPv4Address(a)) for a in text.split("-"))
        return lo <= value <= hi
    return ipaddress.IPv4Address(value) in ipaddress.IPv4Network(text)


def _port_in(text: str, value: int) -> bool:
    for item in text.split(","):
        lo, _, hi = item.partition(":")
        if int(lo) <= value <= int(hi or lo):
            return True
    return False


def _flags(text: str) -> int:
    return 0 if text == "NONE" else sum(TCP_FLAG_BITS[n.lower()] for n in text.split(","))


PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}


def ipt_matches(args: list[str], p: Packet) -> bool:
    """Whether an iptables rule's match arguments accept the IPv4 packet ``p``."""
    i, negate = 0, False
    proto = p.get("ip_proto")
    while i < len(args):
        word = args[i]
        if word == "!":
            negate, i = True, i + 1
            continue
        if word == "-m":  # a module name only loads options
            i += 2
            continue
        value = args[i + 1]
        if word == "-p":
            hit = proto == PROTO_NUMBERS.get(value, int(value) if value.isdigit() else -1)
        elif word == "-s":
            hit = _addr_in(value, p.get("ip4_src"))
        elif word == "-d":
            hit = _addr_in(value, p.get("ip4_dst"))
        elif word == "--src-range":
            hit = _addr_in(value, p.get("ip4_src"))
        elif word == "--dst-range":
            hit = _addr_in(value, p.get("ip4_dst"))
        elif word in ("--sport", "--sports"):
            hit = _port_in(value, p.get("sport"))
        elif word in ("--dport", "--dports"):
            hit = _port_in(value, p.get("dport"))
        elif word == "--dscp":
            hit = p.get("dscp") == int(value)
        elif word == "--icmp-type":
            t, _, c = value.partition("/")
            hit = p.get("icmp_type") == int(t) and (not c or p.get("icmp_code") == int(c))
        elif word == "--tcp-flags":
            mask, comp = _flags(value), _flags(args[i + 2])
            hit = p.get("tcp_flags") & mask == comp
            i += 1
        else:
            raise AssertionError(f"reader does not know {word}")
        if hit == negate:
            return False
        negate, i = False, i + 2
    return True


def ipt_evaluate(text: str, priorities: list[int], p: Packet) -> tuple[str, int] | None:
    """(target, IR priority) of the first PREROUTING rule matching ``p``."""
    lines = [line.split() for line in text.splitlines() if line.startswith("-A PREROUTING")]
    assert len(lines) == len(priorities)
    for words, prio in zip(lines, priorities, strict=True):
        assert words[-2] == "-j"
        if ipt_matches(words[2:-2], p):
            return words[-1], prio
    return None


# ------------------------------------------------------- nft structure evaluation
PORT_PROTOCOLS = {6, 17, 132}


def _nft_key_value(name: str, p: Packet) -> int:
    if name in ("sport", "dport") and p.get("ip_proto") not in PORT_PROTOCOLS:
        raise AssertionError(f"th {name} read from a packet without ports")
    return p.get(name)


def nft_evaluate(ruleset: NftRuleset, p: Packet) -> tuple[str, int] | None:
    """(verdict, IR priority) the chain gives ``p``: statements in order; a map lookup
    must find at most one element (pipapo has no order among overlapping ones)."""
    for s in ruleset.statements:
        if isinstance(s, NftMap):
            for name, _ in zip(s.shape, range(3), strict=False):
                assert name in ("ip4_src", "ip4_dst", "ip_proto")
            hits = []
            for e in s.elements:
                proto_lo, proto_hi = e.key[2]
                if len(s.shape) == 5:
                    # th sport/dport exist only for port protocols: elements must say so.
                    assert all(v in PORT_PROTOCOLS for v in range(proto_lo, proto_hi + 1))
                    if p.get("ip_proto") not in PORT_PROTOCOLS:
                        continue
                if all(
                    lo <= _nft_key_value(n, p) <= hi
                    for n, (lo, hi) in zip(s.shape, e.key, strict=True)
                ):
                    hits.append(e)
            assert len(hits) <= 1, f"overlapping elements in {s.name}: {hits}"
            if hits:
                return hits[0].verdict, hits[0].priority
            continue
        ok = all(
            any(lo <= p.get(name) <= hi for lo, hi in intervals) for name, intervals in s.fields
        )
        if ok and s.tcp_flags is not None:
            value, mask = s.tcp_flags
            ok = p.get("ip_proto") == 6 and p.get("tcp_flags") & mask == value
        if ok:
            return s.verdict, s.priority
    return None


# ------------------------------------------------------------------ helpers
def _check_both(policy: Policy, pkts: list[Packet]) -> None:
    ipt = iptables_rules(policy)
    text = iptables_restore_text(ipt)
    priorities = [r.priority for r in ipt]
    ruleset = nft_ruleset(policy)
    for p in pkts:
        # IPv4 whole packets: the evaluators here model the rules' header
        # matches, not the tools' fragment handling (the translation relies on
        # their transport matches never matching a later fragment).
        if p.get("family") != 4 or p.get("frag") != 0:
            continue
        want = evaluate(policy, p)
        expected = want.rule.priority
        assert ipt_evaluate(text, priorities, p) == (TARGETS[want.action.kind], expected), p
        assert nft_evaluate(ruleset, p) == (NFT_VERDICTS[want.action.kind], expected), p


def _compile(text: str) -> Policy:
    result = compile_source(text, "t.fw")
    assert result.program is not None
    return result.program.policies[0]


# ------------------------------------------------------------------ tests
@settings(max_examples=150, deadline=None)
@given(st.lists(rules(), max_size=8), st.sampled_from(["allow", "drop"]))
def test_small_policies_agree_with_the_interpreter_on_every_class(specs, default):
    # REPS holds one packet per class of the small space these rules live in,
    # so agreement on REPS is agreement on every packet.
    # Explicit fragment states are not translated (only the frag none,first a
    # transport clause implies is, by the transport match itself).
    implied = ValueSet.of_values(2, (0, 1))
    specs = [
        (m, a)
        for m, a in specs
        if m.get("frag").is_full() or (m.get("frag") == implied and not m.get("dport").is_full())
    ]
    _check_both(make_policy(specs, default), REPS)


@pytest.mark.parametrize("family", ["acl", "fw", "ipc"])
def test_generated_policies_agree_on_witnesses_and_traces(family):
    policy = _compile(policy_text(family, 150, seed=5))
    pkts = [Packet(point) for point, _ in region_witnesses(policy, per_rule=2)]
    gen = generate_rules(family, 150, seed=5)
    pkts += [parse_packet(t) for t in trace_lines(gen, flows=300, packets=300, skew=0.0, seed=5)]
    _check_both(policy, pkts)


@settings(max_examples=200, deadline=None)
@given(packets())
def test_generated_policy_agrees_on_random_packets(p):
    _check_both(_FW, [p])


_FW = _compile(policy_text("fw", 80, seed=9))

RICH = """
policy rich ingress on eth0 {
    default allow
    drop tcp flags syn,!ack dport 22
    drop tcp flags 0x03/0x03
    allow icmp type echo-request
    drop icmp type destination-unreachable code 4
    allow udp dscp 46
    drop udp to 10.1.0.0/16 dport { 53, 123, 5000-5100 }
    allow tcp from 10.0.0.0/8 to not 10.2.0.0/16 dport { 80, 443 }
    drop from 192.168.1.0/24
    drop tcp sport { 1-3, 7, 9-11, 13, 15-17, 19, 21-23, 25, 27-29, 31, 33-35, 37 } dport 80
}
"""


def test_rich_policy_uses_every_clause_and_agrees():
    policy = _compile(RICH)
    text = iptables_restore_text(iptables_rules(policy))
    for clause in ("--tcp-flags", "--icmp-type 3/4", "--dscp 46", "multiport", "-d 10.1.0.0/16"):
        assert clause in text
    rng = random.Random(1)
    pkts = [Packet(point) for point, _ in region_witnesses(policy, per_rule=8)]
    for _ in range(400):
        proto = rng.choice([1, 6, 17])
        fields = {
            "family": 4,
            "ip_proto": proto,
            "ip4_src": rng.choice([0x0A000001, 0xC0A80105, rng.getrandbits(32)]),
            "ip4_dst": rng.choice([0x0A010203, 0x0A020001, rng.getrandbits(32)]),
            "dscp": rng.choice([0, 46]),
        }
        if proto in (6, 17):
            fields["sport"] = rng.choice([2, 8, 16, rng.getrandbits(16)])
            fields["dport"] = rng.choice([22, 53, 80, 443, 5050, rng.getrandbits(16)])
        if proto == 6:
            fields["tcp_flags"] = rng.getrandbits(8)
        if proto == 1:
            fields["icmp_type"] = rng.choice([3, 8, 0])
            fields["icmp_code"] = rng.choice([0, 4])
        pkts.append(Packet.make(**fields))
    _check_both(policy, pkts)


def test_multiport_splits_long_port_lists_into_consecutive_rules():
    policy = _compile(RICH)
    ipt = iptables_rules(policy)
    # 19 single ports and ranges (a range counts twice) need two multiport rules.
    last = [r for r in ipt if r.priority == 8]
    assert len(last) == 2 and all(r.target == "DROP" for r in last)


def test_nft_groups_disjoint_rules_into_verdict_maps():
    policy = _compile(policy_text("acl", 200, seed=3))
    ruleset = nft_ruleset(policy)
    grouped = sum(len(m.elements) for m in ruleset.maps)
    assert grouped > 100  # acl rules are specific: most end up in maps
    text = nft_text(ruleset)
    assert "flags interval" in text and "vmap @" in text
    assert text.count("counter") >= len(ruleset.statements)
    for m in ruleset.maps:
        assert f"vmap @{m.name}" in text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("policy p ingress on eth0 {\n default drop\n allow vlan 100\n}\n", "vlan"),
        ("policy p ingress on eth0 {\n default drop\n mark 0x5 tcp\n}\n", "mark"),
    ],
)
def test_inexpressible_rules_are_refused_by_name(text, words):
    policy = _compile(text)
    with pytest.raises(TranslateError, match=words):
        iptables_rules(policy)
    with pytest.raises(TranslateError, match=words):
        nft_ruleset(policy)


def test_ipv6_only_rules_are_left_out_of_the_ipv4_translations():
    policy = _compile(
        "policy p ingress on eth0 {\n default drop\n allow tcp from 2001:db8::/32\n"
        " allow tcp from 10.0.0.0/8\n}\n"
    )
    assert [r.priority for r in iptables_rules(policy)] == [1, 2]
    assert nft_ruleset(policy).skipped == (0,)
