"""IR as text a person reads (``flowc compile --emit ir``) and as JSON (``--format json``)."""

from __future__ import annotations

from typing import Any

from ir.fields import HEADER_SPACE
from ir.model import Policy, Program, format_constraint
from ir.valueset import ValueSet
from ir.walk import to_data


def format_policy(policy: Policy) -> str:
    """One policy: a header line, then one line per rule with its DSL origin."""
    out = [
        f"policy {policy.name} {policy.hook.direction} on {policy.hook.device}   # {policy.origin}"
    ]
    width = len(str(len(policy.rules) - 1))
    for rule in policy.rules:
        label = "default" if rule.is_default else f"rule {rule.priority:>{width}}"
        source = f"{rule.origin}  {rule.origin.text}" if rule.origin.text else str(rule.origin)
        out.append(f"  {label}  {rule.match} => {rule.action}   # {source}")
    return "\n".join(out)


def format_program(program: Program) -> str:
    """Every policy, separated by blank lines."""
    return "\n\n".join(format_policy(p) for p in program.policies) + "\n"


def program_to_json(program: Program) -> dict[str, Any]:
    """The program as JSON data: the generic node form plus readable ``text`` per constraint."""
    data: dict[str, Any] = to_data(program)
    for policy_data in data["policies"]:
        for rule_data in policy_data["rules"]:
            constraints = []
            for name, values in rule_data["match"]["constraints"]:
                render = HEADER_SPACE.field(name).render
                vs = ValueSet(values["width"], tuple(tuple(iv) for iv in values["intervals"]))
                constraints.append({"field": name, "text": format_constraint(render, vs), **values})
            rule_data["match"]["constraints"] = constraints
    return data
