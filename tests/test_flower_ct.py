"""Stateful flower: the multi-chain ct shape, its partition per NIC profile, and
its proof.

Stateful policies (examples/stateful/*.fw) lower to chain 0 (frame and
fragment traps, then ``ct_state -trk`` -> ct zone 0 -> goto the ct chain) and a
ct chain whose filters match ct_state, with ``ct commit`` before verdicts on
new packets. These tests hold that shape to three judges: ``verify.flower``
(the symbolic proof, state a coordinate like any field), flowc's flower model
(``classify``, which walks the chains) and the independent JSON evaluator
(tests/flower_json_eval.py), on every bundled profile, and show the proof
catching mutations that break the shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from backends.flower import lowering
from backends.flower.conformance import profile_violations
from backends.flower.keys import CT_FLAG_TRACKED
from backends.flower.rules import (
    CT,
    TRAP,
    FlowerAction,
    FlowerFilter,
    Masked,
    classify,
    ct_states,
    ordered,
)
from backends.flower.text import parse_tc_json, to_tc_batch, to_tc_json
from backends.nic_profile import load_profile, profile_names
from ir.analysis import region_witnesses
from ir.fields import (
    FRAG_LATER,
    STATE_ESTABLISHED,
    STATE_INVALID,
    STATE_NEW,
    STATE_RELATED,
)
from ir.interp import evaluate
from ir.model import DROP, Policy
from ir.packet import Packet
from ir.valueset import ValueSet
from tests.conftest import EXAMPLES
from tests.fixtures import compiled, example_policies
from tests.flower_json_eval import COMMIT, DEFRAG, load, outcomes, wrong_outcomes
from verify.flower import check

STATEFUL = sorted((EXAMPLES / "stateful").glob("*.fw"))
PROFILES = profile_names()
STATES = (STATE_NEW, STATE_ESTABLISHED, STATE_RELATED, STATE_INVALID)

SMALL = """
endpoint web { ip 10.0.0.2 }
policy small ingress on eth0 {
    default drop
    allow state established,related
    drop state invalid
    allow state new tcp to web dport 80
    allow udp dport 53
}
"""


def small() -> Policy:
    return compiled(SMALL, "small.fw")


def probes(policy: Policy) -> list[Packet]:
    """Region witnesses of every rule, in every state, whole and as a later fragment."""
    out = []
    for point, _rule in region_witnesses(policy, per_rule=2):
        base = Packet(point).as_dict()
        for state in STATES:
            out.append(Packet.make(**(base | {"state": state})))
        absent = dict.fromkeys(("sport", "dport", "tcp_flags", "icmp_type", "icmp_code"), 0)
        out.append(Packet.make(**(base | absent | {"frag": FRAG_LATER})))
    return out


def stateful_policies() -> list[tuple[str, Policy]]:
    return [(f"{p.stem}:{pol.name}", pol) for p in STATEFUL for pol in example_policies(p)]


# ---------------------------------------------------------------- the shape
def test_the_software_shape_is_ct_then_a_chain_matching_ct_state() -> None:
    program = lowering.lower(small(), load_profile("software"))
    assert program.ct_chain == 2
    chain0 = [f for f in program.filters if f.chain == 0]
    ct = [f for f in chain0 if f.action.kind == CT]
    # One ct filter per IP family, tagged or not, each matching untracked packets.
    assert len(ct) == 4
    assert all(f.match.ct_state == Masked(0, CT_FLAG_TRACKED) for f in ct)
    assert {f.action.chain for f in ct} == {2}
    # Fragments are trapped above the ct action (act_ct would reassemble them).
    frag_traps = [f for f in chain0 if f.match.ip_flags is not None]
    assert frag_traps and max(f.prio for f in frag_traps) < min(f.prio for f in ct)
    assert all(f.action.kind == TRAP for f in frag_traps)
    rules = [f for f in program.filters if f.chain == 2]
    # allow state established,related: +trk+est and +trk+rel, no commit.
    first = [f for f in rules if f.cookie is not None and f.cookie.rule == 0]
    assert {ct_states(f.match.ct_state, True) for f in first if f.match.ct_state} == {
        ValueSet.of_value(2, STATE_ESTABLISHED),
        ValueSet.of_value(2, STATE_RELATED),
    }
    assert not any(f.action.commit for f in first)
    # allow state new tcp ...: +trk+new with ct commit.
    third = [f for f in rules if f.cookie is not None and f.cookie.rule == 2]
    assert third and all(f.action.commit and f.match.ct_state == Masked(9, 9) for f in third)
    # allow udp dport 53 (every state): new commits, the rest (+trk-new) does not.
    fourth = [f for f in rules if f.cookie is not None and f.cookie.rule == 3]
    assert {(f.action.commit, f.match.ct_state) for f in fourth} == {
        (True, Masked(9, 9)),
        (False, Masked(CT_FLAG_TRACKED, CT_FLAG_TRACKED | 1)),
    }


def test_stateless_policies_keep_the_one_chain_shape() -> None:
    for path in sorted(EXAMPLES.glob("*.fw")):
        for policy in example_policies(path):
            program = lowering.lower(policy)
            assert program.ct_chain is None
            assert all(f.chain == 0 and f.action.kind != CT for f in program.filters)
            assert not any(f.match.ct_state or f.action.commit for f in program.filters)


def test_the_tc_words_of_the_shape() -> None:
    program = lowering.lower(small())
    batch = to_tc_batch(program.filters, "eth0", "ingress")
    assert "ct_state -trk action ct zone 0 pipe action gact goto chain 2" in batch
    assert "ct_state +trk+new action ct commit zone 0 pipe action gact pass" in batch
    assert "chain 2 prio" in batch and "ct_state +trk+est action gact pass" in batch


def test_tc_json_round_trips_ct_keys_and_actions() -> None:
    program = lowering.lower(small())
    back = parse_tc_json(to_tc_json(program.filters))
    assert [(f.chain, f.prio, f.handle, f.match, f.action, f.cookie) for f in back] == [
        (f.chain, f.prio, f.handle, f.match, f.action, f.cookie) for f in program.filters
    ]


# ----------------------------------------------------- per profile and proof
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name,policy", stateful_policies(), ids=lambda x: str(x))
def test_stateful_examples_are_proven_on_every_profile(
    name: str, policy: Policy, profile: str
) -> None:
    nic = load_profile(profile)
    program = lowering.lower(policy, nic)
    result = check(policy, program.filters)
    assert result.equivalent, (name, result.counterexample)
    assert profile_violations(list(program.filters), nic) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_the_three_judges_agree_on_every_state(profile: str) -> None:
    """flowc's model (classify walks chains), the independent JSON evaluator and
    the policy agree packet by packet, with commits counted."""
    policy = small()
    program = lowering.lower(policy, load_profile(profile))
    dump = load(to_tc_json(program.filters))
    filters = ordered(program.filters)
    for packet in probes(policy):
        assert not wrong_outcomes(policy, dump, packet, stateful=True), packet
        verdict = classify(filters, packet)
        if verdict.trapped:
            continue
        assert verdict.filter is not None
        want = evaluate(policy, packet)
        assert verdict.filter.action.kind == lowering.action_for(want.action).kind, packet
        commits = packet.get("state") == STATE_NEW and want.action.kind != DROP
        assert verdict.filter.action.commit == commits, packet


def test_mlx5_offloads_established_only() -> None:
    program = lowering.lower(small(), load_profile("mlx5-connectx6dx"))
    assert program.ct_chain == 2
    in_chain = [f for f in program.filters if f.chain == 2 and f.action.kind != TRAP]
    keyed = {ct_states(f.match.ct_state, True) for f in in_chain if f.match.ct_state}
    assert keyed == {ValueSet.of_value(2, STATE_ESTABLISHED)}
    assert not any(f.action.commit for f in program.filters)
    placements = program.placements
    # est,rel: est in hardware, rel trapped; invalid and new: trapped.
    assert [p.placement for p in placements[:3]] == ["trapped", "trapped", "trapped"]
    assert "related" in placements[0].reason


@pytest.mark.parametrize("profile", ["nfp-agilio", "ice-e810"])
def test_profiles_without_ct_keep_stateful_rules_behind_traps(profile: str) -> None:
    program = lowering.lower(small(), load_profile(profile))
    assert program.ct_chain is None
    assert all(f.chain == 0 and f.action.kind != CT for f in program.filters)
    reasons = [p.reason for p in program.placements]
    assert "state is only known after a ct action" in reasons[0]
    # allow udp dport 53 has no state clause, but lets new packets on: it commits.
    assert "commits their connections" in reasons[3]
    # The default drop needs neither state nor a commit (ice keeps it out for
    # fragments it cannot trap, as for stateless policies).
    last = program.placements[-1]
    assert last.placement == "hardware" or "fragment" in last.reason, last


# ------------------------------------------------------------ mutations
def _mutated(
    filters: tuple[FlowerFilter, ...],
    pick: Callable[[FlowerFilter], bool],
    change: Callable[[FlowerFilter], FlowerFilter],
) -> list[FlowerFilter]:
    out, done = [], False
    for f in filters:
        if not done and pick(f):
            out.append(change(f))
            done = True
        else:
            out.append(f)
    assert done, "the mutation found its filter"
    return out


def test_the_proof_catches_a_missing_commit() -> None:
    policy = small()
    program = lowering.lower(policy)
    bad = _mutated(
        program.filters,
        lambda f: f.action.commit,
        lambda f: replace(f, action=FlowerAction(f.action.kind)),
    )
    result = check(policy, bad)
    assert result.counterexample is not None
    assert result.counterexample.packet.get("state") == STATE_NEW
    assert "ct commit" in result.counterexample.reason


def test_the_proof_catches_a_wrong_ct_state() -> None:
    policy = small()
    program = lowering.lower(policy)
    bad = _mutated(
        program.filters,
        lambda f: f.chain == 2 and f.match.ct_state == Masked(10, 10),
        lambda f: replace(f, match=replace(f.match, ct_state=Masked(9, 9))),
    )
    result = check(policy, bad)
    assert result.counterexample is not None
    assert result.counterexample.packet.get("state") == STATE_NEW


def test_the_proof_catches_fragments_reaching_the_ct_action() -> None:
    policy = small()
    program = lowering.lower(policy)
    bad = [f for f in program.filters if f.match.ip_flags is None]
    result = check(policy, bad)
    assert result.counterexample is not None
    assert result.counterexample.packet.get("frag") != 0
    assert "reassembles" in result.counterexample.reason
    assert DEFRAG in outcomes(load(to_tc_json(bad)), result.counterexample.packet)


def test_the_proof_catches_a_state_blind_filter() -> None:
    """The pre-ct lowering ignored state: a filter allowing every state where the
    policy allows only established ones is refuted with a new packet."""
    policy = small()
    program = lowering.lower(policy)
    bad = _mutated(
        program.filters,
        lambda f: f.chain == 2 and f.match.ct_state == Masked(10, 10),
        lambda f: replace(f, match=replace(f.match, ct_state=None)),
    )
    result = check(policy, bad)
    assert result.counterexample is not None
    assert result.counterexample.packet.get("state") in (STATE_NEW, STATE_INVALID)


def test_json_eval_reads_commits_and_chain_walks() -> None:
    program = lowering.lower(small())
    dump = load(to_tc_json(program.filters))
    syn = Packet.make(
        family=4, ip_proto=6, ip4_dst=0x0A000002, dport=80, tcp_flags=0x02, state=STATE_NEW
    )
    assert outcomes(dump, syn) == {(COMMIT, "pass")}
    reply = Packet.make(family=4, ip_proto=6, sport=80, tcp_flags=0x12, state=STATE_ESTABLISHED)
    assert outcomes(dump, reply) == {("pass",)}
    stray = Packet.make(family=4, ip_proto=6, dport=22, tcp_flags=0x02, state=STATE_NEW)
    assert outcomes(dump, stray) == {("drop",)}


def test_stateful_flag_defaults_to_the_policy(tmp_path: Path) -> None:
    """A stateless policy lowered as stateful (another policy of the host reads
    state) commits its new packets, and is proven so."""
    policy = compiled("policy p egress on eth0 {\n default drop\n allow udp dport 53\n}\n")
    plain = lowering.lower(policy)
    assert plain.ct_chain is None
    tracked = lowering.lower(policy, stateful=True)
    assert tracked.ct_chain == 2 and any(f.action.commit for f in tracked.filters)
    assert check(policy, tracked.filters, stateful=True).equivalent
    # Without commits the host's other policies would see no connection.
    assert not check(policy, plain.filters, stateful=True).equivalent
