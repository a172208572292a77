"""The stateful variants of the examples (examples/stateful/): each is clean under
``check --strict`` and ``fmt --check``, and its packet file evaluates through the
reference tracker to the reviewed golden output (tests/golden/stateful/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.golden import check_golden

STATEFUL = Path(__file__).resolve().parent.parent / "examples" / "stateful"
EXAMPLES = sorted(STATEFUL.glob("*.fw"))


REPO = STATEFUL.parent.parent


def flowc(*args: str) -> subprocess.CompletedProcess[str]:
    # From the checkout's root with relative paths, so the golden text names
    # examples/stateful/NAME.fw wherever the checkout is.
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def test_every_example_has_a_stateful_variant() -> None:
    plain = {p.stem for p in (STATEFUL.parent).glob("*.fw")}
    assert plain <= {p.stem for p in EXAMPLES}, plain - {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_stateful_example(path: Path) -> None:
    path = path.relative_to(REPO)
    checked = flowc("check", "--strict", str(path))
    assert checked.returncode == 0, checked.stderr
    formatted = flowc("fmt", "--check", str(path))
    assert formatted.returncode == 0, formatted.stdout
    packets = path.with_suffix(".packets")
    out = flowc("eval", str(path), "--stateful", "--packets", str(packets), "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    lines = [
        line for line in (REPO / packets).read_text().splitlines() if line.split("#", 1)[0].strip()
    ]
    assert len(rows) == len(lines)
    # Every example shows all it is for: a commit, an established reply, something dropped.
    assert any(r["committed"] for r in rows)
    assert any(r["state"] == "established" and r["action"] != "drop" for r in rows)
    assert any(r["action"] == "drop" for r in rows)
    text = flowc("eval", str(path), "--stateful", "--packets", str(packets))
    check_golden(f"stateful/{path.stem}.txt", text.stdout)
