"""The front end in one call: policy text -> IR program plus diagnostics.

>>> text = "policy p ingress on eth0 {\\n default drop\\n allow tcp dport 22\\n}\\n"
>>> result = compile_source(text)
>>> [str(r.action) for r in result.program.policy("p").rules]
['allow', 'drop']
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from compiler import ast
from compiler.diagnostics import Diagnostic, error, has_errors, note, warning
from compiler.lower import Lowerer
from compiler.resolve import Loaded, Resolver, load
from ir import analysis, state_analysis
from ir.model import Origin, Policy, Program, Rule
from ir.packet import Packet, format_packet


@dataclass(slots=True)
class Compilation:
    """The outcome of compiling one policy file.

    Attributes:
        program: the IR, or None when there were errors.
        diagnostics: errors, warnings and notes, in discovery order.
        sources: file text by display path, for rendering diagnostics.
    """

    program: Program | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    loaded: Loaded | None = None

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return self.program is not None and not has_errors(self.diagnostics)


def compile_file(path: str, *, lint: bool = False) -> Compilation:
    """Compile the policy file at ``path`` (and its includes)."""
    return _compile(path, None, lint)


def compile_source(text: str, path: str = "<input>", *, lint: bool = False) -> Compilation:
    """Compile policy text held in memory (``path`` is used in messages and for includes)."""
    return _compile(path, text, lint)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one compilation.

    Compiling allocates hundreds of thousands of small acyclic objects (AST,
    value sets, IR nodes); the collector's full passes over that growing heap
    cost about 40% of compile time at 10,000 rules while finding nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compile(path: str, text: str | None, lint: bool) -> Compilation:
    with _collector_paused():
        return _compile_unpaused(path, text, lint)


def _compile_unpaused(path: str, text: str | None, lint: bool) -> Compilation:
    loaded, diags = load(path, text)
    result = Compilation(None, list(diags), loaded.sources, loaded)
    if has_errors(diags):
        return result
    main = loaded.files[loaded.main]
    if not main.source.items:
        result.diagnostics.append(
            error(
                "empty",
                f"{main.display} is empty: nothing to compile",
                ast.Pos(main.display, 0, 0, 0, 0),
            )
        )
        return result
    resolver = Resolver(loaded)
    resolver.check_endpoints()
    lowerer = Lowerer(loaded, resolver)
    program = lowerer.program()
    # Resolver diagnostics can come from lowering (lookups), so gather them last.
    result.diagnostics.extend(_dedupe(resolver.diags + lowerer.diags))
    if has_errors(result.diagnostics):
        return result
    result.program = program
    if lint:
        for policy in program.policies:
            result.diagnostics.extend(lint_policy(policy))
        result.diagnostics.extend(lint_state(program))
    return result


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen = set()
    out = []
    for d in diags:
        key = (d.code, d.message, d.pos)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def origin_pos(origin: Origin) -> ast.Pos:
    """The DSL position of an IR rule's origin (caret under the rule's first word)."""
    word = len(origin.text.split()[0]) if origin.text.split() else 1
    return ast.Pos(origin.file, origin.line, origin.column, origin.line, origin.column + word)


def _rule_words(rule: Rule) -> str:
    return "the default" if rule.is_default else f"the rule at line {rule.origin.line}"


def lint_state(program: Program) -> list[Diagnostic]:
    """Warnings that need the whole host's policies: rules that commit connections
    no hook of the other direction answers (:mod:`ir.state_analysis`)."""
    diags: list[Diagnostic] = []
    for found in state_analysis.unanswered_commits(program):
        committed = format_packet(Packet(found.committed))
        reply = format_packet(Packet(found.reply))
        hooks = "; ".join(
            f"at {p.name} ({p.hook}) by {_rule_words(r)}" for p, r in found.dropped_by
        )
        diags.append(
            warning(
                "unanswered-commit",
                f"connections this rule commits never get a reply through: their established "
                f"replies are dropped {hooks} (e.g. {committed} is committed here and its reply "
                f"{reply} is dropped); allow 'state established' before those rules",
                origin_pos(found.rule.origin),
                *(
                    note(f"drops the replies at {p.name}", origin_pos(r.origin))
                    for p, r in found.dropped_by[:5]
                ),
            )
        )
    return diags


def lint_policy(policy: Policy) -> list[Diagnostic]:
    """Warnings for shadowed (unreachable) and redundant rules of one policy.

    The rules warned about can all be deleted together without changing any
    verdict (:func:`ir.analysis.analyse` picks them so); each warning carries
    notes naming the rules that decide its packets once they are deleted.
    """
    findings = analysis.analyse(policy)
    diags: list[Diagnostic] = []
    for shadowed in findings.shadowed:
        by = shadowed.by
        if shadowed.rule.is_default:
            message = "the default is never reached: earlier rules match every packet"
        elif len(by) == 1:
            message = (
                f"rule is never reached: every packet it matches is decided by "
                f"{_rule_words(by[0])} first"
            )
        else:
            lines = ", ".join(str(r.origin.line) for r in by)
            message = (
                f"rule is never reached: the rules at lines {lines} decide every packet it matches"
            )
        notes = [note("shadowed by this rule", origin_pos(r.origin)) for r in by[:5]]
        if shadowed.then_by and not shadowed.rule.is_default:
            notes.extend(
                note(
                    "with the rules warned about deleted, this rule decides its packets",
                    origin_pos(r.origin),
                )
                for r in shadowed.then_by[:5]
            )
        diags.append(warning("shadowed", message, origin_pos(shadowed.rule.origin), *notes))
    for redundant in findings.redundant:
        deciders = redundant.decided_by
        word = str(redundant.rule.action)
        diags.append(
            warning(
                "redundant",
                f"rule is redundant: without it, the packets it decides still get {word} from "
                + ", ".join(_rule_words(r) for r in deciders[:3])
                + (" and others" if len(deciders) > 3 else ""),
                origin_pos(redundant.rule.origin),
                *(
                    note("this rule takes over its packets", origin_pos(r.origin))
                    for r in deciders[:5]
                ),
            )
        )
    for gave_up in findings.gave_up:
        diags.append(
            note(
                "shadowing analysis skipped this rule: the overlap with earlier rules is too "
                "fragmented to finish",
                origin_pos(gave_up.rule.origin),
            )
        )
    return diags
