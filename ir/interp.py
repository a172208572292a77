"""The reference interpreter: what a flowc policy does to a packet.

This is the semantics of flowc. Rules are tried in priority order and the
first whose match contains the packet decides; the policy's last rule (the
``default``) matches everything, so every packet gets a verdict. Every other
implementation (the BPF program, flower rules, the rule cache) is checked
against this function.

>>> from ir.model import Action, Hook, Match, Origin, Policy, Rule
>>> from ir.packet import Packet
>>> deny_all = Rule(0, Match(), Action("drop"), Origin("p.fw", 3), is_default=True)
>>> policy = Policy("p", Hook("eth0", "ingress"), (deny_all,), Origin("p.fw", 1))
>>> evaluate(policy, Packet.make(family=4, ip_proto=1)).action.kind
'drop'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ir.model import ALLOW, DROP, Action, Policy, Rule
from ir.packet import Packet


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome for one packet: the action taken and the rule that decided it."""

    action: Action
    rule: Rule


def evaluate(policy: Policy, packet: Packet) -> Verdict:
    """The verdict of ``policy`` for ``packet``: the first matching rule decides."""
    values = packet.values
    for rule in policy.rules:
        if rule.match.matches(values):
            return Verdict(rule.action, rule)
    # Policy.validate guarantees a catch-all default, so this is unreachable.
    raise AssertionError(f"policy {policy.name} has no rule for {packet}")


class Unclassified(enum.Enum):
    """A frame that is not an IR packet, by the layer that makes it so.

    The datapaths read a frame's headers the way the kernel's flow dissector
    does (README, "Frames the IR does not describe"); these are the frames
    where that reading yields no IR packet:

    * ``NOT_IP``: the ethertype (after VLAN tags) is neither IPv4 nor IPv6.
      Policy is about IP, so such frames pass, as they do through iptables.
    * ``MALFORMED_L2``: an Ethernet header or VLAN tag cut short.
    * ``MALFORMED_L3``: an IPv4 header shorter than 20 bytes or with ihl < 5, an
      IPv6 header cut short, an IPv6 extension header cut short, or more
      extension headers than the slow path walks.
    * ``MALFORMED_L4``: a transport header shorter than the fields flowc reads
      (TCP 20 bytes with data offset >= 5, UDP and SCTP 4, ICMP 8).

    Malformed frames are dropped before any rule sees them (fail closed): a
    header the policy cannot read must not decide in the sender's favour.
    """

    NOT_IP = "not_ip"
    MALFORMED_L2 = "malformed_l2"
    MALFORMED_L3 = "malformed_l3"
    MALFORMED_L4 = "malformed_l4"


@dataclass(frozen=True, slots=True)
class FrameVerdict:
    """What flowc does with a frame: the action, and the rule that decided it
    (None when the frame never reached the policy: not IP, or malformed)."""

    action: Action
    rule: Rule | None
    unclassified: Unclassified | None = None


def evaluate_frame(policy: Policy, parsed: Packet | Unclassified) -> FrameVerdict:
    """The verdict for a parsed frame: a packet is decided by the policy; a non-IP
    frame passes and a malformed one is dropped, before any rule.

    >>> from ir.model import Action, Hook, Match, Origin, Policy, Rule
    >>> deny_all = Rule(0, Match(), Action("drop"), Origin("p.fw", 3), is_default=True)
    >>> policy = Policy("p", Hook("eth0", "ingress"), (deny_all,), Origin("p.fw", 1))
    >>> evaluate_frame(policy, Unclassified.NOT_IP).action.kind
    'allow'
    """
    if isinstance(parsed, Packet):
        verdict = evaluate(policy, parsed)
        return FrameVerdict(verdict.action, verdict.rule)
    if parsed is Unclassified.NOT_IP:
        return FrameVerdict(Action(ALLOW), None, parsed)
    return FrameVerdict(Action(DROP), None, parsed)
