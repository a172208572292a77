"""Generic traversal of IR values, derived from their dataclass fields.

Fields are declared once on each node; walking, rebuilding and serialising
read ``dataclasses.fields()`` instead of per-node code, so adding a field to a
node needs no change here.

>>> from ir.model import Action
>>> to_data(Action("mark", mark=7))
{'node': 'Action', 'kind': 'mark', 'target': None, 'device': None, 'mark': 7}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from ir.valueset import ValueSet


def _children(node: Any) -> Iterator[Any]:
    for f in dataclasses.fields(node):
        if not f.init or not f.compare:
            continue
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            yield from value
        else:
            yield value


def walk(node: Any) -> Iterator[Any]:
    """Every IR node reachable from ``node`` (pre-order), including tuples' members."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple):
            stack.extend(reversed(current))
            continue
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            yield current
            if not isinstance(current, ValueSet):
                stack.extend(reversed(list(_children(current))))


def validate(node: Any) -> None:
    """Run ``validate()`` on every node that has one (raises ir.model.IRError)."""
    for n in walk(node):
        check = getattr(n, "validate", None)
        if callable(check):
            check()


def transform(node: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild ``node`` bottom-up, replacing each dataclass node ``n`` by ``fn(n)``."""
    if isinstance(node, tuple):
        return tuple(transform(x, fn) for x in node)
    if not dataclasses.is_dataclass(node) or isinstance(node, type | ValueSet):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        if not f.init or not f.compare:
            continue
        old = getattr(node, f.name)
        new = transform(old, fn)
        if new is not old:
            changes[f.name] = new
    rebuilt = dataclasses.replace(node, **changes) if changes else node
    return fn(rebuilt)


def to_data(node: Any) -> Any:
    """A JSON-ready form: dataclasses become dicts tagged with ``node``; ValueSets become
    ``{"intervals": [[lo, hi], ...]}``."""
    if isinstance(node, ValueSet):
        return {"width": node.width, "intervals": [list(iv) for iv in node.intervals]}
    if isinstance(node, tuple | list):
        return [to_data(x) for x in node]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        out: dict[str, Any] = {"node": type(node).__name__}
        for f in dataclasses.fields(node):
            if f.init and f.compare:
                out[f.name] = to_data(getattr(node, f.name))
        return out
    return node
