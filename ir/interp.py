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

from dataclasses import dataclass

from ir.model import Action, Policy, Rule
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
