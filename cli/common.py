"""What every ``flowc`` command shares: exit codes, usage errors, compiling a
policy file with its diagnostics on stderr, choosing a hook, NIC profiles from
the command line, writing output, and reading packet lines.
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from backends.nic_profile import NicProfile, ProfileError, load_profile
from compiler.diagnostics import WARNING, Diagnostic, render, summary
from compiler.frontend import Compilation, compile_file
from compiler.packet_syntax import PacketLine, read_packet_lines
from compiler.resolve import read_source
from ir.model import Policy, Program
from ir.state_analysis import uses_state

if TYPE_CHECKING:  # argparse's class is generic only in the type stubs
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction
"""The type of ``ArgumentParser.add_subparsers()``'s result, which argparse does not name."""


class ExitCode(enum.IntEnum):
    """flowc's exit statuses, one meaning each for every command."""

    OK = 0
    FAIL = 1
    """The input has errors (a policy, a trace, a rule file), ``check --strict``
    found warnings, ``fmt --check`` a file to reformat, or a check found a
    counterexample (``verify``, ``audit``; ``diff`` when a verdict changes)."""
    USAGE = 2
    """flowc was invoked wrongly (options, missing or unreadable files)."""
    UNAVAILABLE = 3
    """A check could not run or did not finish (no root for the BPF part, keys
    the IR cannot see), or ``agent status`` found no agent."""
    INTERRUPTED = 130


class UsageError(Exception):
    """A problem with how flowc was invoked (exit 2)."""


class InputError(Exception):
    """A file flowc was given that it cannot read or understand (the message says where)."""


def print_diagnostics(result: Compilation, stream: TextIO, *, warnings: bool = True) -> None:
    """Render every diagnostic of a compilation (file:line:col, caret) to ``stream``."""
    for diag in result.diagnostics:
        if diag.severity == WARNING and not warnings:
            continue
        print(render(diag, result.sources), file=stream)


def compile_or_report(path: str, *, lint: bool = False) -> Program | None:
    """The compiled program of ``path``, or None after its errors went to stderr."""
    result = compile_file(path, lint=lint)
    print_diagnostics(result, sys.stderr)
    if not result.ok or result.program is None:
        print(f"flowc: {path}: {summary(result.diagnostics)}", file=sys.stderr)
        return None
    return result.program


def select_policy(program: Program, hook: str | None) -> Policy:
    """The policy named ``hook``, or the file's only policy (UsageError otherwise)."""
    if hook is not None:
        try:
            return program.policy(hook)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
    if len(program.policies) == 1:
        return program.policies[0]
    if not program.policies:
        raise UsageError("the file defines no policy")
    names = ", ".join(p.name for p in program.policies)
    raise UsageError(f"the file defines several policies ({names}); choose one with --hook NAME")


def compile_policy(path: str, hook: str | None) -> Policy | None:
    """The policy ``hook`` of the file at ``path``, or None after its errors went to stderr."""
    program = compile_or_report(path)
    return None if program is None else select_policy(program, hook)


def compile_host_policy(path: str, hook: str | None) -> tuple[Policy, bool] | None:
    """The policy ``hook`` of the file at ``path`` and whether its host tracks
    connections (some policy of the file matches on state: then every hook's
    verdicts commit), or None after its errors went to stderr."""
    program = compile_or_report(path)
    if program is None:
        return None
    return select_policy(program, hook), uses_state(program)


def add_profile_options(p: argparse.ArgumentParser, *, help_text: str) -> None:
    """``--profile`` and ``--profile-set``, as every flower-facing command spells them."""
    p.add_argument("--profile", default="software", help=help_text)
    p.add_argument(
        "--profile-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a profile value (repeatable), e.g. max_rules=2000",
    )


def profile_from_args(args: argparse.Namespace) -> NicProfile:
    """The NIC profile named by ``--profile`` with ``--profile-set`` overrides applied."""
    overrides: dict[str, str] = {}
    for item in args.profile_set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--profile-set takes KEY=VALUE, not {item!r}")
        overrides[key.strip()] = value.strip()
    try:
        return load_profile(args.profile, overrides)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None


def write_output(text: str, output: str | None) -> None:
    """Write ``text`` to the file ``output``, or to stdout for None or ``-``."""
    if output is None or output == "-":
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None


def read_text(path: str) -> str:
    """The text of ``path`` (``-`` is stdin); InputError says why not."""
    if path == "-":
        return sys.stdin.read()
    text, problem = read_source(Path(path), path)
    if problem is not None or text is None:
        raise InputError(problem.message if problem is not None else f"cannot read {path}")
    return text


def packet_lines(
    text: str, where: str
) -> tuple[Sequence[PacketLine], Sequence[Diagnostic], dict[str, str]]:
    """The packets of a file of ``flowc eval`` lines, the diagnostics of the lines
    that could not be read, and the sources to render those diagnostics against."""
    lines, problems = read_packet_lines(text, where)
    return lines, problems, {where: text}
