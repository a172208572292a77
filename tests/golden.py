"""Golden-file comparison with a regenerate switch (FLOWC_REGEN=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, actual: str) -> None:
    """Compare ``actual`` with tests/golden/NAME; FLOWC_REGEN=1 rewrites it instead."""
    path = GOLDEN_DIR / name
    if os.environ.get("FLOWC_REGEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(
            f"missing golden file {path}; create it with: FLOWC_REGEN=1 bash scripts/test.sh"
        )
    expected = path.read_text()
    assert actual == expected, f"{name} differs from its golden file (FLOWC_REGEN=1 to accept)"
