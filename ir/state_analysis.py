"""Analyses across the hooks of one host that only connection state makes
meaningful: connections a policy commits whose replies no hook lets through.

The connection table is one per host (ir/conntrack.py), so a connection
committed at one hook is answered at the hooks of the other direction: what
``eth0 ingress`` lets in comes back out through some egress hook. When every
egress policy of the host drops every established reply of the packets a rule
commits (typically a ``default drop`` with no ``allow state established``
before it, or a stateless drop that comes first), those connections can
never work: the rule commits table entries for nothing. flowc cannot know the
host's routing, so "the hooks of the other direction" are all of them; the
finding is made only when every one of them drops the replies.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.algebra import Cube, intersect, is_feasible, subtract, witness
from ir.fields import HEADER_SPACE, STATE_ESTABLISHED, STATE_NEW, TCP_FLAG_BITS, Space
from ir.model import DROP, EGRESS, INGRESS, Policy, Program, Rule
from ir.packet import Point
from ir.valueset import ValueSet

SYN, ACK = TCP_FLAG_BITS["syn"], TCP_FLAG_BITS["ack"]
# Pieces of a region tracked before an analysis gives up on a rule (reported
# as nothing: a finding must be exact).
PIECE_LIMIT = 256

# Fields a reply swaps, and fields whose reply value is unrelated to the
# original packet's (flags, ICMP type, marking, fragmentation).
_SWAPPED = (("ip4_src", "ip4_dst"), ("ip6_src", "ip6_dst"), ("sport", "dport"))
_UNRELATED = ("tcp_flags", "icmp_type", "icmp_code", "dscp", "vlan_tagged", "vlan_id", "frag")


@dataclass(frozen=True, slots=True)
class UnansweredCommit:
    """A rule whose committed connections get no reply through any hook.

    Attributes:
        policy, rule: where the connections are committed.
        committed: a packet the rule allows as ``new`` (so commits).
        reply: that packet's reply, as an established packet.
        dropped_by: per hook of the other direction, the rule that drops ``reply``.
    """

    policy: Policy
    rule: Rule
    committed: Point
    reply: Point
    dropped_by: tuple[tuple[Policy, Rule], ...]


def policy_uses_state(policy: Policy) -> bool:
    """True when some rule of ``policy`` matches on connection state."""
    return any(name == "state" for r in policy.rules for name, _ in r.match.constraints)


def uses_state(program: Program) -> bool:
    """True when some rule of ``program`` matches on connection state."""
    return any(policy_uses_state(p) for p in program.policies)


def reply_cube(c: Cube, space: Space = HEADER_SPACE) -> Cube:
    """The established replies of the packets of ``c``: addresses and ports
    swapped, the fields a reply chooses afresh left free."""
    sets = list(c.sets)
    for a, b in _SWAPPED:
        ia, ib = space.position(a), space.position(b)
        sets[ia], sets[ib] = c.sets[ib], c.sets[ia]
    for name in _UNRELATED:
        sets[space.position(name)] = space.field(name).full
    sets[space.position("state")] = ValueSet.of_value(2, STATE_ESTABLISHED)
    return Cube(tuple(sets))


def _deciding_region(policy: Policy, index: int, space: Space) -> list[Cube] | None:
    """The packets rule ``index`` decides (its cube minus every earlier rule's), as
    ``new`` packets; None past PIECE_LIMIT."""
    state_new = ValueSet.of_value(2, STATE_NEW)
    sets = list(policy.rules[index].match.cube.sets)
    at = space.position("state")
    narrowed = sets[at] & state_new
    if not narrowed.intervals:
        return []
    sets[at] = narrowed
    region = [Cube(tuple(sets))]
    for earlier in policy.rules[:index]:
        region = [piece for c in region for piece in subtract(space, c, earlier.match.cube)]
        if len(region) > PIECE_LIMIT:
            return None
        if not region:
            break
    return region


def _first_pass(policy: Policy, region: list[Cube], space: Space) -> bool | None:
    """True when some packet of ``region`` gets a non-drop verdict at ``policy``;
    None past PIECE_LIMIT."""
    remaining = region
    for rule in policy.rules:
        rest: list[Cube] = []
        for c in remaining:
            met = intersect(c, rule.match.cube)
            if met is not None and is_feasible(space, met):
                if rule.action.kind != DROP:
                    return True
                rest.extend(subtract(space, c, rule.match.cube))
            else:
                rest.append(c)
        if len(rest) > PIECE_LIMIT:
            return None
        remaining = rest
        if not remaining:
            return False
    return False


def unanswered_commits(program: Program, space: Space = HEADER_SPACE) -> list[UnansweredCommit]:
    """Every non-drop rule whose ``new`` packets' established replies every hook of
    the other direction drops (see the module doc), with a witness pair.
    Empty when the program never matches on state (then state does not matter)
    or has no hook of the other direction."""
    if not uses_state(program):
        return []
    found: list[UnansweredCommit] = []
    for policy in program.policies:
        other = INGRESS if policy.hook.direction == EGRESS else EGRESS
        answering = [p for p in program.policies if p.hook.direction == other]
        if not answering:
            continue
        for index, rule in enumerate(policy.rules):
            if rule.action.kind == DROP:
                continue
            region = _deciding_region(policy, index, space)
            if not region:
                continue  # nothing committed, or too fragmented to be sure
            replies = [reply_cube(c, space) for c in region]
            if any(_first_pass(p, replies, space) is not False for p in answering):
                continue
            committed = witness(space, region[0])
            assert committed is not None  # subtract keeps only feasible pieces
            reply = _reply_witness(committed, space)
            dropped_by = tuple((p, _decider(p, reply)) for p in answering)
            found.append(UnansweredCommit(policy, rule, committed, reply, dropped_by))
    return found


def _reply_witness(committed: Point, space: Space) -> Point:
    """The reply of ``committed`` as a real one looks: a TCP SYN answered by SYN+ACK."""
    point_cube = Cube(
        tuple(ValueSet.of_value(f.width, v) for f, v in zip(space.fields, committed, strict=True))
    )
    replies = reply_cube(point_cube, space)
    flags_at = space.position("tcp_flags")
    if committed[flags_at] == SYN:
        sets = list(replies.sets)
        sets[flags_at] = ValueSet.of_value(8, SYN | ACK)
        replies = Cube(tuple(sets))
    reply = witness(space, replies)
    assert reply is not None  # a swapped packet is a packet
    return reply


def _decider(policy: Policy, point: Point) -> Rule:
    return next(r for r in policy.rules if r.match.matches(point))
