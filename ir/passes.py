"""IR passes: named pure functions Program -> Program, run in the order of ``PASSES``.

``flowc compile --list-passes`` lists them; ``--dump-after NAME`` prints the IR
after one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ir import analysis, walk
from ir.model import Policy, Program


@dataclass(frozen=True, slots=True)
class Pass:
    """A named IR -> IR function with a one-line description."""

    name: str
    run: Callable[[Program], Program]
    doc: str
    optimization: bool = False  # only run when optimising (costly analyses)


def check_invariants(program: Program) -> Program:
    """Validate every node (canonical constraints, explicit prerequisites, ordered priorities)."""
    walk.validate(program)
    return program


def drop_unreachable(program: Program) -> Program:
    """Remove rule groups no packet can reach; verdicts are unchanged by construction."""
    return Program(tuple(_drop_unreachable(p) for p in program.policies))


def _drop_unreachable(policy: Policy) -> Policy:
    findings = analysis.analyse(policy, redundancy=False)
    dead = {s.rule.origin for s in findings.shadowed if not s.rule.is_default}
    if not dead:
        return policy
    return policy.renumbered(tuple(r for r in policy.rules if r.origin not in dead))


PASSES: tuple[Pass, ...] = (
    Pass("check-invariants", check_invariants, check_invariants.__doc__ or ""),
    Pass("drop-unreachable", drop_unreachable, drop_unreachable.__doc__ or "", optimization=True),
)


def pass_names() -> list[str]:
    """Names of the passes, in order."""
    return [p.name for p in PASSES]


def run_passes(program: Program, *, optimize: bool = False, until: str | None = None) -> Program:
    """Run the passes in order (optimisations only when ``optimize``), stopping after
    ``until`` when given (which runs that pass even if it is an optimisation)."""
    for p in PASSES:
        if not p.optimization or optimize or p.name == until:
            program = p.run(program)
        if p.name == until:
            break
    return program
