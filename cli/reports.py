"""Report pieces ``verify`` and ``audit`` share: reading a ``tc -j`` dump, the
JSON of a DSL rule and of a flower counterexample, and how statuses combine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backends.flower.rules import FlowerFilter
from backends.flower.text import FlowerTextError, parse_tc_json
from cli.common import ExitCode, InputError
from ir.model import Rule
from ir.packet import format_packet
from verify.flower import FlowerCounterexample, describe_action


def read_tc_json(path: str) -> list[FlowerFilter]:
    """The filters of a `tc -j filter show` file; InputError says precisely why not."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from None
    try:
        return parse_tc_json(json.loads(text))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}:{err.colno}: {err.msg}") from None
    except FlowerTextError as err:
        raise InputError(f"{path}: {err}") from None


def rule_json(rule: Rule) -> dict[str, Any]:
    """The DSL rule a verdict came from, for JSON reports."""
    return {"file": rule.origin.file, "line": rule.origin.line, "text": rule.origin.text}


def flower_counterexample_json(ce: FlowerCounterexample) -> dict[str, Any]:
    """A flower counterexample (verify's or an audit finding's) for JSON reports."""
    return {
        "packet": format_packet(ce.packet),
        "policy": ce.policy_verdict,
        "flower": ce.flower_verdict,
        "rule": rule_json(ce.rule),
        "filter": {"chain": ce.filter.chain, "prio": ce.filter.prio, "handle": ce.filter.handle},
        "reason": ce.reason,
        # Every filter the kernel may pick for the packet (more than one: mask
        # creation order decides) and whether that choice gives the policy's verdict.
        "choices": [
            {
                "chain": f.chain,
                "prio": f.prio,
                "handle": f.handle,
                "flower": describe_action(f.action),
                "agrees": ce.agrees(f),
            }
            for f in ce.choices
        ],
    }


def kernel_choices_line(ce: FlowerCounterexample) -> str:
    """How a text report names the kernel's choices for an ambiguous
    counterexample ("" when only one filter can decide the packet)."""
    if not ce.ambiguous:
        return ""
    named = " or ".join(
        f"{f.label()} ({describe_action(f.action)}: {'agrees' if ce.agrees(f) else 'WRONG'})"
        for f in ce.choices
    )
    return f"may pick {named}; mask creation order decides"


def first_failure(worst: ExitCode, status: ExitCode) -> ExitCode:
    """The exit status so far, after a check ended with ``status``: the first
    check that failed (counterexample or could not run) decides."""
    return status if worst == ExitCode.OK else worst


def status_word(code: ExitCode) -> str:
    """How a report's last line names a failing status."""
    return {ExitCode.FAIL: "COUNTEREXAMPLE FOUND", ExitCode.UNAVAILABLE: "INCOMPLETE"}.get(
        code, "FAILED"
    )
