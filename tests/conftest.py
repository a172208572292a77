"""Shared test helpers: paths, compiling policy text, hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from compiler.diagnostics import render
from compiler.frontend import Compilation, compile_source
from ir.model import Policy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CORPORA = Path(os.environ.get("FLOWC_CORPORA", ROOT.parent / "shared" / "corpora"))

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def compile_ok(text: str, path: str = "t.fw", *, lint: bool = False) -> Compilation:
    """Compile text that must have no errors (fails the test with rendered errors)."""
    result = compile_source(text, path, lint=lint)
    if not result.ok:
        rendered = "\n".join(render(d, result.sources) for d in result.diagnostics)
        pytest.fail(f"unexpected errors:\n{rendered}")
    return result


def single_policy(text: str) -> Policy:
    """The only policy of compiled text."""
    result = compile_ok(text)
    assert result.program is not None
    (policy,) = result.program.policies
    return policy


def policy_of(body: str, *, header: str = "", default: str = "drop") -> Policy:
    """A policy ``p`` with the given rule lines (and definitions before it)."""
    return single_policy(f"{header}\npolicy p ingress on eth0 {{\n default {default}\n{body}\n}}\n")


@pytest.fixture
def corpora() -> Path:
    """The shared corpora directory (skips when this checkout has none beside it)."""
    if not CORPORA.is_dir():
        pytest.skip(f"no corpora at {CORPORA}")
    return CORPORA
