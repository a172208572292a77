#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, format check, types,
# then every test tier this machine can run (unit/property always; kernel
# tier when root; the guest-kernel tier under virtme-ng). Fails when any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
echo "== ruff check";        .venv/bin/ruff check .
echo "== ruff format";       .venv/bin/ruff format --check .
echo "== mypy";              .venv/bin/mypy
echo "== pytest"
# Doctests in the packages run alongside the tests. --durations: the slowest
# tests in the log, so the README's time budget can be kept with evidence.
# Two workers (pytest-xdist), one per core: the tier is CPU-bound (bcc's clang,
# hypothesis, the checkers). loadscope keeps a module's tests on one worker, so
# a module-scoped fixture (a compiled program) is built once; kernel tests
# name their namespaces, devices and pins by process id, so workers never meet.
"$PY" -m pytest -q -n 2 --dist loadscope --durations=15 \
    tests compiler ir backends runtime verify cli "$@"
echo "== guest kernel tier (virtme-ng, Debian kernel; boots once)"
FLOWC_REQUIRE_GUEST=1 "$PY" -m tests.guest_runner --durations=15 tests/guest
