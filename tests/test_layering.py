"""The layout's one-way imports, read from the source with ``ast``.

The packages stack in rooms: ``ir`` (semantics and algebra) at the bottom,
``compiler`` (the DSL) beside it and lowering into it, then ``backends``
(targets), ``runtime`` (kernels and devices), ``verify`` (the checkers) and
``cli`` (the shell) on top. A package may import only the packages its row
names; nothing but the CLI itself, tests and benchmarks imports the CLI; and
no module reaches into another module's private names (``_x``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ALLOWED: dict[str, frozenset[str]] = {
    "ir": frozenset({"ir"}),
    "compiler": frozenset({"compiler", "ir"}),
    "backends": frozenset({"backends", "ir"}),
    "runtime": frozenset({"runtime", "backends", "ir"}),
    "verify": frozenset({"verify", "runtime", "backends", "ir"}),
    "cli": frozenset({"cli", "verify", "runtime", "backends", "compiler", "ir"}),
}
"""Which project packages each package may import (its own included)."""

PROJECT = frozenset(ALLOWED) | {"tests", "bench"}


@dataclass(frozen=True)
class Import:
    """One import of a project module: who imports what, and which names."""

    file: Path
    line: int
    importer: str
    module: str
    names: tuple[str, ...]


def module_name(path: Path, root: Path) -> str:
    """``cli/main.py`` -> ``cli.main``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import of a project module in the file at ``path`` (any depth, not only
    the top: a function-local import is an import all the same)."""
    importer = module_name(path, root)
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT:
                    yield Import(path, node.lineno, importer, alias.name, ())
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] in PROJECT
        ):
            names = tuple(a.name for a in node.names)
            yield Import(path, node.lineno, importer, node.module, names)


def back_edges(root: Path) -> list[str]:
    """Imports that go against the layering, as ``file:line: a imports b``."""
    found = []
    for pkg, allowed in ALLOWED.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for imp in imports_of(path, root):
                target = imp.module.split(".")[0]
                if target not in allowed:
                    where = f"{path.relative_to(root)}:{imp.line}"
                    found.append(f"{where}: {imp.importer} imports {imp.module}")
    return found


def private_imports(root: Path) -> list[str]:
    """``from other.module import _private`` anywhere in the project's packages."""
    found = []
    for pkg in ALLOWED:
        for path in sorted((root / pkg).rglob("*.py")):
            for imp in imports_of(path, root):
                if imp.module == imp.importer:
                    continue
                for name in imp.names:
                    if name.startswith("_") and not name.startswith("__"):
                        where = f"{path.relative_to(root)}:{imp.line}"
                        found.append(f"{where}: {imp.importer} imports {imp.module}.{name}")
    return found


def test_imports_run_one_way() -> None:
    """No package imports a package above it (the table ALLOWED)."""
    assert back_edges(ROOT) == []


def test_no_module_imports_another_modules_private_names() -> None:
    """Private helpers stay private: what two modules share is public in one of them."""
    assert private_imports(ROOT) == []


def test_every_top_level_package_has_a_row() -> None:
    """A new package must say where it sits before it can be imported from."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} == set(ALLOWED)


@pytest.mark.parametrize(
    ("importer", "line"),
    [
        ("ir/back_edge.py", "from compiler.ast import Pos\n"),
        ("compiler/back_edge.py", "def f() -> None:\n    from backends import bpf\n"),
        ("backends/back_edge.py", "import runtime.bpf_loader\n"),
        ("runtime/back_edge.py", "from verify.flower import check\n"),
        ("verify/back_edge.py", "from cli.main import main\n"),
    ],
)
def test_a_back_edge_is_caught(tmp_path: Path, importer: str, line: str) -> None:
    """The checker itself: a copy of the tree with one back-edge added fails."""
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / importer).write_text(line)
    assert len(back_edges(tmp_path)) == 1


def test_a_private_import_is_caught(tmp_path: Path) -> None:
    """The checker itself: ``from x import _y`` across modules is found, within one module not."""
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "ir" / "a.py").write_text("from ir.b import _helper, public\n")
    (tmp_path / "ir" / "b.py").write_text("def _helper() -> None: ...\n")
    assert private_imports(tmp_path) == ["ir/a.py:1: ir.a imports ir.b._helper"]


def imports_of_test_modules(root: Path) -> list[str]:
    """Imports of a test module (``tests.test_x``, ``tests.guest.test_y``, or
    ``from tests import test_x``) anywhere under ``tests/``: what tests share
    lives in helper modules (tests.strategies, tests.fixtures, tests.netns, ...)."""
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ("." * node.level) + (node.module or "")
                modules = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                inside_tests = module.startswith((".", "tests."))
                if inside_tests and module.split(".")[-1].startswith("test_"):
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    found.append(f"{where}: imports the test module {module}")
                    break
    return found


def test_no_test_module_imports_another() -> None:
    """Tests share strategies and fixtures through helper modules, never through
    each other (one test module importing another runs and couples both)."""
    assert imports_of_test_modules(ROOT) == []


@pytest.mark.parametrize(
    "line",
    [
        "from tests.test_flower import EXAMPLE_PATHS\n",
        "import tests.guest.test_agent_guest\n",
        "from tests import test_cli\n",
        "from .test_analysis import rules\n",
    ],
)
def test_a_test_module_import_is_caught(tmp_path: Path, line: str) -> None:
    """The checker itself: each form of importing a test module is found; helpers are not."""
    (tmp_path / "tests" / "guest").mkdir(parents=True)
    (tmp_path / "tests" / "test_a.py").write_text(line)
    (tmp_path / "tests" / "guest" / "test_b.py").write_text(
        "from tests.strategies import packets\nfrom tests.guest.helpers import wait_for\n"
    )
    assert len(imports_of_test_modules(tmp_path)) == 1
