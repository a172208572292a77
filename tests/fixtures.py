"""Example lists and small helpers the test modules share (no test module
imports another; tests/test_layering.py checks)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from cli.main import main
from compiler.frontend import compile_file
from ir.model import Policy
from tests.conftest import EXAMPLES

__all__ = ["EXAMPLES", "EXAMPLE_PATHS", "example_policies", "run"]

# Every example policy: the single-file ones and the multi-file example's entry point.
EXAMPLE_PATHS = sorted([*EXAMPLES.glob("*.fw"), EXAMPLES / "multi-file" / "main.fw"])


@functools.cache
def example_policies(path: Path) -> tuple[Policy, ...]:
    result = compile_file(str(path))
    assert result.program is not None
    return result.program.policies


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
