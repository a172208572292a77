"""``flowc fmt``: print a parsed file as canonical DSL text.

Canonical means: one statement per line, four-space indentation inside a
policy, the ``default`` first, single spaces between words, ``{ a, b }`` for
sets, at most one blank line between statements. Clause order inside a rule
is kept as written (it is part of what the author meant to say), so
``parse(fmt(ast)) == ast``.

Comments are never dropped: a comment on a statement's line stays at the end
of that line; any other comment goes on its own line before the next
statement (or before the closing brace / end of file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler import ast

INDENT = "    "


@dataclass(slots=True)
class _Anchor:
    """A place comments attach to: a statement, a policy's closing brace, or the file end."""

    line: int
    leading: list[ast.Comment] = field(default_factory=list)
    trailing: list[str] = field(default_factory=list)


def format_element(element: ast.SetElement) -> str:
    """One address/port operand or set element."""
    if isinstance(element, ast.CidrLit):
        return element.text
    if isinstance(element, ast.AnyAddr):
        return "any"
    if isinstance(element, ast.NameRef):
        return element.name
    if isinstance(element, ast.PortLit):
        return str(element.lo) if element.hi is None else f"{element.lo}-{element.hi}"
    return format_set(element)


def format_set(literal: ast.SetLit) -> str:
    """``{ a, b }`` (``{ }`` when empty)."""
    if not literal.elements:
        return "{ }"
    return "{ " + ", ".join(format_element(e) for e in literal.elements) + " }"


def format_clause(clause: ast.Clause) -> str:
    """One rule clause as DSL text."""
    if isinstance(clause, ast.ProtoClause):
        names = [str(p) for p in clause.protocols]
        if not clause.explicit:
            return names[0]
        return "proto " + (names[0] if len(names) == 1 else "{ " + ", ".join(names) + " }")
    if isinstance(clause, ast.AddrClause | ast.PortClause):
        neg = "not " if clause.expr.negated else ""
        return f"{clause.direction} {neg}{format_element(clause.expr.operand)}"
    if isinstance(clause, ast.IcmpClause):
        return f"{clause.field} {clause.value}"
    if isinstance(clause, ast.FlagsClause):
        if clause.value is not None and clause.mask is not None:
            return f"flags {clause.value:#04x}/{clause.mask:#04x}"
        return "flags " + ",".join(("" if is_set else "!") + n for n, is_set in clause.named)
    if isinstance(clause, ast.VlanClause):
        return f"vlan {clause.lo}" + (f"-{clause.hi}" if clause.hi is not None else "")
    if isinstance(clause, ast.FragClause):
        return "frag " + ",".join(clause.states)
    if isinstance(clause, ast.StateClause):
        return "state " + ",".join(clause.states)
    return f"dscp {clause.value}"


def format_action(action: ast.ActionSpec) -> str:
    """The action words of a rule (without the target)."""
    if action.kind != "mark":
        return action.kind
    return f"mark {action.mark:#x}" if action.mark_hex else f"mark {action.mark}"


def format_rule(rule: ast.RuleDef) -> str:
    """One rule on one line."""
    words = [format_action(rule.action), *(format_clause(c) for c in rule.clauses)]
    if rule.action.target is not None:
        words += ["->", rule.action.target.name]
    return " ".join(words)


def format_default(default: ast.DefaultDef) -> str:
    """``default ACTION`` (with ``-> target`` for redirect/mirror)."""
    text = f"default {format_action(default.action)}"
    if default.action.target is not None:
        text += f" -> {default.action.target.name}"
    return text


def _format_item_head(item: ast.Item) -> str:
    if isinstance(item, ast.Include):
        escaped = item.path.replace("\\", "\\\\").replace('"', '\\"')
        return f'include "{escaped}"'
    if isinstance(item, ast.Endpoint):
        attrs = []
        if item.addresses:
            attrs.append("ip " + ", ".join(a.text for a in item.addresses))
        if item.device is not None:
            attrs.append(f"dev {item.device}")
        return (
            f"endpoint {item.name} {{ {'; '.join(attrs)} }}"
            if attrs
            else (f"endpoint {item.name} {{ }}")
        )
    if isinstance(item, ast.SetDef):
        return f"set {item.name} = {format_set(item.value)}"
    return f"policy {item.name} {item.direction} on {item.device} {{"


def format_source(source: ast.SourceFile, text: str = "") -> str:
    """The whole file as canonical text (``text`` is the original, used for comments and
    blank lines; without it comments are not available and none are written)."""
    lines = text.splitlines()
    blank = {i + 1 for i, line in enumerate(lines) if not line.strip()}
    anchors: list[_Anchor] = []

    # Each statement gets an anchor, in source order, for comment attribution.
    item_anchor: dict[int, _Anchor] = {}
    stmt_anchor: dict[int, _Anchor] = {}
    close_anchor: dict[int, _Anchor] = {}
    for item in source.items:
        a = _Anchor(item.pos.line)
        anchors.append(a)
        item_anchor[id(item)] = a
        if isinstance(item, ast.PolicyDef):
            stmts: list[ast.RuleDef | ast.DefaultDef] = [*item.rules, *item.defaults]
            stmts.sort(key=lambda s: (s.pos.line, s.pos.column))
            for stmt in stmts:
                sa = _Anchor(stmt.pos.line)
                anchors.append(sa)
                stmt_anchor[id(stmt)] = sa
            ca = _Anchor(_closing_brace_line(lines, item))
            anchors.append(ca)
            close_anchor[id(item)] = ca
    end = _Anchor(len(lines) + 1)
    anchors.append(end)
    anchors.sort(key=lambda a: a.line)
    for comment in source.comments:
        on_line = [a for a in anchors if a.line == comment.line and a is not end]
        if on_line and comment.column > 1 and _code_before(lines, comment):
            on_line[-1].trailing.append(comment.text)
            continue
        target = next((a for a in anchors if a.line > comment.line), end)
        if on_line and not _code_before(lines, comment):
            target = on_line[0]
        target.leading.append(comment)

    out: list[str] = []
    prev_end = 0
    for index, item in enumerate(source.items):
        anchor = item_anchor[id(item)]
        if index > 0 and (
            isinstance(item, ast.PolicyDef)
            or isinstance(source.items[index - 1], ast.PolicyDef)
            or _blank_between(blank, prev_end, item.pos.line)
            or type(item) is not type(source.items[index - 1])
        ):
            out.append("")
        _emit_leading(out, anchor, blank, "")
        out.append(_with_trailing(_format_item_head(item), anchor.trailing))
        prev_end = item.pos.end_line
        if isinstance(item, ast.PolicyDef):
            prev_end = _format_policy_body(item, stmt_anchor, blank, out)
            ca = close_anchor[id(item)]
            _emit_leading(out, ca, blank, INDENT)
            out.append(_with_trailing("}", ca.trailing))
            prev_end = ca.line
    if end.leading:
        if out:
            out.append("")
        _emit_leading(out, end, blank, "")
        while out and not out[-1]:
            out.pop()
    return "\n".join(out) + "\n" if out else ""


def _format_policy_body(
    policy: ast.PolicyDef,
    stmt_anchor: dict[int, _Anchor],
    blank: set[int],
    out: list[str],
) -> int:
    ordered: Sequence[ast.RuleDef | ast.DefaultDef] = [*policy.defaults, *policy.rules]
    prev_end = policy.pos.end_line
    for n, stmt in enumerate(ordered):
        anchor = stmt_anchor[id(stmt)]
        if n > 0 and _blank_between(blank, prev_end, stmt.pos.line):
            out.append("")
        _emit_leading(out, anchor, blank, INDENT)
        text = format_default(stmt) if isinstance(stmt, ast.DefaultDef) else format_rule(stmt)
        out.append(INDENT + _with_trailing(text, anchor.trailing))
        prev_end = stmt.pos.end_line
    return prev_end


def _emit_leading(out: list[str], anchor: _Anchor, blank: set[int], indent: str) -> None:
    """An anchor's own-line comments, keeping one blank line where the source had any
    between them or between the last of them and the statement."""
    for n, comment in enumerate(anchor.leading):
        if n > 0 and _blank_between(blank, anchor.leading[n - 1].line, comment.line):
            out.append("")
        out.append(indent + comment.text)
    if anchor.leading and _blank_between(blank, anchor.leading[-1].line, anchor.line):
        out.append("")


def _with_trailing(text: str, trailing: list[str]) -> str:
    return text + "".join("  " + c for c in trailing)


def _blank_between(blank: set[int], after: int, before: int) -> bool:
    return any(line in blank for line in range(after + 1, before))


def _code_before(lines: list[str], comment: ast.Comment) -> bool:
    if not 0 < comment.line <= len(lines):
        return False
    return bool(lines[comment.line - 1][: comment.column - 1].strip())


def _closing_brace_line(lines: list[str], policy: ast.PolicyDef) -> int:
    """The line of the '}' that closes ``policy`` (braces counted outside comments)."""
    if policy.pos.line <= 0:  # built, not parsed: no source to look at
        return len(lines)
    depth = 0
    for lineno in range(policy.pos.line, len(lines) + 1):
        code = lines[lineno - 1].split("#", 1)[0]
        if lineno == policy.pos.line:
            code = " " * (policy.pos.column - 1) + code[policy.pos.column - 1 :]
        for ch in code:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return lineno
    return len(lines)
