"""Diagnostics: errors and warnings that point at policy text with a caret.

Every problem the front end finds becomes a :class:`Diagnostic`; the CLI
renders them the way compilers do::

    web.fw:7:39: error: unknown name 'dbb' (no endpoint or set of that name)
        drop  tcp from 192.168.0.0/16 to dbb
                                         ^~~

Nothing in the front end raises a Python exception at a user for bad input;
it collects diagnostics and stops at the end of the stage that found errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from compiler.ast import Pos

ERROR = "error"
WARNING = "warning"
NOTE = "note"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding.

    Attributes:
        severity: ``error``, ``warning`` or ``note``.
        message: one sentence, lower case, no trailing period.
        pos: where it applies (None for file-less problems).
        code: a stable short name (``unknown-name``, ``shadowed``) for tests and --json.
        related: notes pointing at other places (the rule that shadows, the first definition).
    """

    severity: str
    message: str
    pos: Pos | None
    code: str
    related: tuple[Diagnostic, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        out: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        }
        if self.pos is not None:
            out.update(file=self.pos.file, line=self.pos.line, column=self.pos.column)
        if self.related:
            out["related"] = [r.as_dict() for r in self.related]
        return out


def error(code: str, message: str, pos: Pos | None, *related: Diagnostic) -> Diagnostic:
    """An error diagnostic."""
    return Diagnostic(ERROR, message, pos, code, tuple(related))


def warning(code: str, message: str, pos: Pos | None, *related: Diagnostic) -> Diagnostic:
    """A warning diagnostic."""
    return Diagnostic(WARNING, message, pos, code, tuple(related))


def note(message: str, pos: Pos | None) -> Diagnostic:
    """A note attached to another diagnostic."""
    return Diagnostic(NOTE, message, pos, "note")


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    """True when any diagnostic is an error."""
    return any(d.severity == ERROR for d in diagnostics)


def render(diag: Diagnostic, sources: Mapping[str, str]) -> str:
    """``file:line:col: severity: message`` with the source line and a caret underneath."""
    lines = [_render_one(diag, sources)]
    lines.extend(_render_one(r, sources) for r in diag.related)
    return "\n".join(lines)


def _render_one(diag: Diagnostic, sources: Mapping[str, str]) -> str:
    pos = diag.pos
    if pos is None or pos.line <= 0:
        where = f"{pos.file}: " if pos is not None and pos.file != "<none>" else ""
        return f"{where}{diag.severity}: {diag.message}"
    head = f"{pos.file}:{pos.line}:{pos.column}: {diag.severity}: {diag.message}"
    text = sources.get(pos.file)
    if text is None:
        return head
    source_lines = text.splitlines()
    if pos.line > len(source_lines):
        return head
    line = source_lines[pos.line - 1].expandtabs(1)
    if len(line) > 200:  # keep a window around the caret on very long lines
        start = max(0, pos.column - 80)
        line = line[start : start + 160]
        column = pos.column - start
    else:
        column = pos.column
    width = 1
    if pos.end_line == pos.line and pos.end_column > pos.column:
        width = pos.end_column - pos.column
    width = max(1, min(width, len(line) - column + 1))
    caret = " " * (column - 1) + "^" + "~" * (width - 1)
    return f"{head}\n    {line}\n    {caret}"


def summary(diagnostics: Iterable[Diagnostic]) -> str:
    """``2 errors, 1 warning`` (empty string when there is nothing)."""
    diags = list(diagnostics)
    n_err = sum(d.severity == ERROR for d in diags)
    n_warn = sum(d.severity == WARNING for d in diags)
    parts = []
    if n_err:
        parts.append(f"{n_err} error{'s' if n_err != 1 else ''}")
    if n_warn:
        parts.append(f"{n_warn} warning{'s' if n_warn != 1 else ''}")
    return ", ".join(parts)
