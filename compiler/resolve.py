"""Loading files and giving names meaning: includes, scopes, endpoints and sets.

``load`` reads the main file and everything it includes (each file once,
cycles refused), and ``Resolver`` answers "what does this name mean here":
an endpoint, or a named set evaluated to addresses or ports.

Names are scoped per file: a file sees its own definitions and those of the
files it includes (transitively); it never sees the names of a file that
includes it. A file's own definition wins over an included one; two
different included definitions of one name make that name ambiguous in the
including file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler import ast
from compiler.diagnostics import Diagnostic, error, note
from compiler.parser import parse
from ir.valueset import ValueSet


def _networkx() -> Any:
    """networkx, imported only for a graph with edges: most policies have no
    includes and no set naming another set, and the import is most of a
    second of every ``flowc`` start (an agent's, a CLI load's)."""
    import networkx

    return networkx


def _digraph(nodes: Iterable[Any], edges: Iterable[tuple[Any, Any]]) -> Any:
    """A networkx DiGraph of ``nodes`` (in this order) and ``edges``."""
    graph = _networkx().DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    return graph


def _include_edges(loaded: Loaded) -> list[tuple[str, str]]:
    """(includer, included) for every include of a loaded file, in load order."""
    return [
        (lf.key, inc_key)
        for lf in loaded.files.values()
        for inc_key, _ in lf.includes
        if inc_key in loaded.files
    ]


# Larger inputs are refused rather than read into memory.
MAX_FILE_BYTES = 64 * 1024 * 1024

# Words of the language; an endpoint or set may not take one as its name.
RESERVED_WORDS = frozenset(
    (
        "any not tcp udp icmp icmpv6 sctp allow drop redirect mirror mark default from to "
        "sport dport type code flags vlan dscp proto policy set endpoint include ingress "
        "egress on ip dev"
    ).split()
)


@dataclass(frozen=True, slots=True)
class AddrValue:
    """Addresses of both families; a family is absent when its set is empty."""

    v4: ValueSet
    v6: ValueSet

    @staticmethod
    def none() -> AddrValue:
        """No address at all."""
        return AddrValue(ValueSet.empty(32), ValueSet.empty(128))

    @staticmethod
    def any() -> AddrValue:
        """Every address of both families."""
        return AddrValue(ValueSet.full(32), ValueSet.full(128))

    def __or__(self, other: AddrValue) -> AddrValue:
        return AddrValue(self.v4 | other.v4, self.v6 | other.v6)

    def negated(self) -> AddrValue:
        """Addresses of this value's families that are not in it."""
        return AddrValue(
            ~self.v4 if not self.v4.is_empty() else self.v4,
            ~self.v6 if not self.v6.is_empty() else self.v6,
        )

    def families(self) -> frozenset[int]:
        """The IP versions this value can match."""
        fams = set()
        if not self.v4.is_empty():
            fams.add(4)
        if not self.v6.is_empty():
            fams.add(6)
        return frozenset(fams)

    def for_family(self, family: int) -> ValueSet:
        """The set of the given family."""
        return self.v4 if family == 4 else self.v6


@dataclass(slots=True)
class LoadedFile:
    """A parsed file and what it includes (resolved paths)."""

    key: str  # normalised absolute path, identifies the file
    display: str  # the path as shown in messages
    source: ast.SourceFile
    includes: list[tuple[str, ast.Include]] = field(default_factory=list)


@dataclass(slots=True)
class Loaded:
    """Every file of one compilation, in include order (the main file first)."""

    main: str
    files: dict[str, LoadedFile]
    sources: dict[str, str]  # display path -> text, for rendering diagnostics


def read_source(path: Path, display: str) -> tuple[str | None, Diagnostic | None]:
    """The text of a policy file, or a diagnostic saying why it cannot be read."""
    where = ast.Pos(display, 0, 0, 0, 0)
    try:
        if path.is_dir():
            return None, error("io", f"{display} is a directory, not a policy file", where)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, error(
                "io", f"{display} is {size} bytes; the limit is {MAX_FILE_BYTES}", where
            )
        data = path.read_bytes()
    except OSError as exc:
        return None, error("io", f"cannot read {display}: {exc.strerror or exc}", where)
    if b"\0" in data:
        return None, error("io", f"{display} is a binary file (it contains NUL bytes)", where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, error(
            "io", f"{display} is not UTF-8 text (bad byte at offset {exc.start})", where
        )
    return text, None


def load(main_path: str, text: str | None = None) -> tuple[Loaded, list[Diagnostic]]:
    """Read and parse ``main_path`` and its includes.

    Args:
        main_path: the file as the user named it.
        text: the main file's text when already in hand (tests, stdin).
    """
    diags: list[Diagnostic] = []
    files: dict[str, LoadedFile] = {}
    sources: dict[str, str] = {}
    main_key = os.path.abspath(main_path)
    loaded = Loaded(main_key, files, sources)

    if text is None:
        text, problem = read_source(Path(main_path), main_path)
        if problem is not None:
            return loaded, [problem]
    assert text is not None
    # Depth-first over includes with an explicit stack (no recursion, so a
    # long include chain cannot exhaust Python's stack).
    pending: list[tuple[str, str, str]] = [(main_key, main_path, text)]
    while pending:
        key, display, file_text = pending.pop()
        sources[display] = file_text
        source, syntax = parse(file_text, display)
        diags.extend(syntax)
        if source is None:
            source = ast.SourceFile(display, ())
        lf = LoadedFile(key, display, source)
        files[key] = lf
        base = os.path.dirname(key)
        for item in source.items:
            if not isinstance(item, ast.Include):
                continue
            inc_key = os.path.normpath(os.path.join(base, item.path))
            inc_display = os.path.normpath(os.path.join(os.path.dirname(display), item.path))
            lf.includes.append((inc_key, item))
            if inc_key in files or any(p[0] == inc_key for p in pending):
                continue
            inc_text, problem = read_source(Path(inc_key), inc_display)
            if problem is not None:
                diags.append(
                    error("include", f"cannot include {item.path!r}: {problem.message}", item.pos)
                )
                continue
            assert inc_text is not None
            pending.append((inc_key, inc_display, inc_text))
    diags.extend(_include_cycles(loaded))
    return loaded, diags


def _include_cycles(loaded: Loaded) -> list[Diagnostic]:
    edges = _include_edges(loaded)
    if not edges:
        return []
    nx = _networkx()
    graph = _digraph(loaded.files, edges)
    diags = []
    order = {key: i for i, key in enumerate(loaded.files)}
    for found in nx.simple_cycles(graph):
        # Report each cycle once, starting from the file loaded first (the main
        # file when it is on the cycle), so the message does not depend on hashing.
        start = min(range(len(found)), key=lambda i: order[found[i]])
        cycle = found[start:] + found[:start]
        first = cycle[0]
        nxt = cycle[1] if len(cycle) > 1 else cycle[0]
        include = next(inc for k, inc in loaded.files[first].includes if k == nxt)
        chain = " -> ".join(loaded.files[k].display for k in [*cycle, first])
        diags.append(error("include-cycle", f"include cycle: {chain}", include.pos))
        if len(diags) >= 10:
            break
    return diags


Definition = ast.Endpoint | ast.SetDef


class Resolver:
    """Name lookup and evaluation of endpoints and sets for a loaded program."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.diags: list[Diagnostic] = []
        # file key -> name -> definition; None marks an ambiguous name.
        self.scopes: dict[str, dict[str, Definition | None]] = {}
        self.ambiguity: dict[tuple[str, str], tuple[Definition, Definition]] = {}
        self.def_file: dict[int, str] = {}
        self.set_values: dict[int, AddrValue | ValueSet | None] = {}
        self.endpoint_values: dict[int, AddrValue] = {}
        self._build_scopes()
        self._evaluate_sets()

    # ------------------------------------------------------------- scopes
    def _own_definitions(self, lf: LoadedFile) -> dict[str, Definition]:
        own: dict[str, Definition] = {}
        for item in lf.source.items:
            if not isinstance(item, ast.Endpoint | ast.SetDef):
                continue
            self.def_file[id(item)] = lf.key
            if item.name in RESERVED_WORDS:
                self.diags.append(
                    error(
                        "reserved-name",
                        f"{item.name!r} is a reserved word and cannot name an "
                        f"{'endpoint' if isinstance(item, ast.Endpoint) else 'set'}",
                        item.name_pos,
                    )
                )
                continue
            first = own.get(item.name)
            if first is not None:
                self.diags.append(
                    error(
                        "duplicate-name",
                        f"{item.name!r} is already defined in this file",
                        item.name_pos,
                        note("first defined here", first.name_pos),
                    )
                )
                continue
            own[item.name] = item
        return own

    def _build_scopes(self) -> None:
        edges = [(a, b) for a, b in _include_edges(self.loaded) if a != b]
        # Without includes every order is a dependency order; this is the one
        # networkx's topological sort gives an edgeless graph, reversed.
        order = list(reversed(self.loaded.files))
        if edges:
            nx = _networkx()
            graph = _digraph(self.loaded.files, edges)
            try:
                order = list(reversed(list(nx.topological_sort(graph))))
            except nx.NetworkXUnfeasible:
                order = list(self.loaded.files)  # cycles were reported; scope best-effort
        for key in order:
            lf = self.loaded.files[key]
            scope: dict[str, Definition | None] = {}
            for inc_key, _ in lf.includes:
                for name, definition in self.scopes.get(inc_key, {}).items():
                    if name in scope and scope[name] is not definition:
                        prev = scope[name]
                        if prev is not None and definition is not None:
                            self.ambiguity[(key, name)] = (prev, definition)
                        scope[name] = None
                    else:
                        scope[name] = definition
            scope.update(self._own_definitions(lf))
            self.scopes[key] = scope

    def lookup(self, ref: ast.NameRef, file_key: str) -> Definition | None:
        """The definition ``ref`` names in ``file_key``; reports and returns None if none."""
        scope = self.scopes.get(file_key, {})
        if ref.name not in scope:
            hint = _closest(ref.name, scope)
            self.diags.append(
                error(
                    "unknown-name",
                    f"unknown name {ref.name!r} (no endpoint or set of that name"
                    + (f"; did you mean {hint!r}?)" if hint else ")"),
                    ref.pos,
                )
            )
            return None
        definition = scope[ref.name]
        if definition is None:
            pair = self.ambiguity.get((file_key, ref.name))
            related = [note("defined here", d.name_pos) for d in pair] if pair else []
            self.diags.append(
                error(
                    "ambiguous-name",
                    f"{ref.name!r} is defined differently by two included files",
                    ref.pos,
                    *related,
                )
            )
        return definition

    # --------------------------------------------------------------- sets
    def _evaluate_sets(self) -> None:
        """Evaluate every named set once, in dependency order (cycles are errors)."""
        defs: dict[int, tuple[ast.SetDef, str]] = {}
        for lf in self.loaded.files.values():
            for item in lf.source.items:
                if isinstance(item, ast.SetDef) and item.name not in RESERVED_WORDS:
                    defs[id(item)] = (item, lf.key)
        edges = []
        for set_id, (set_def, key) in defs.items():
            for ref in _names_in(set_def.value):
                target = self.scopes.get(key, {}).get(ref.name)
                if isinstance(target, ast.SetDef) and id(target) in defs:
                    edges.append((set_id, id(target)))
        in_cycle: set[int] = set()
        # With no set naming another every order is a dependency order; this is
        # the one networkx's topological sort gives an edgeless graph, reversed.
        evaluation = list(reversed(defs))
        if edges:
            nx = _networkx()
            graph = _digraph(defs, edges)
            order = {set_id: i for i, set_id in enumerate(defs)}
            for found in nx.simple_cycles(graph):
                start = min(range(len(found)), key=lambda i: order[found[i]])
                cycle = found[start:] + found[:start]
                names = [defs[i][0].name for i in cycle]
                first = defs[cycle[0]][0]
                self.diags.append(
                    error(
                        "set-cycle",
                        "set refers to itself: " + " -> ".join([*names, names[0]]),
                        first.name_pos,
                    )
                )
                in_cycle.update(cycle)
                if len(in_cycle) > 100:
                    break
            acyclic = graph.subgraph([n for n in graph if n not in in_cycle])
            evaluation = list(reversed(list(nx.topological_sort(acyclic))))
        for set_id in evaluation:
            set_def, key = defs[set_id]
            self.set_values[set_id] = self.evaluate_set(
                set_def.value, key, set_def.name, set_def.name_pos
            )
        for set_id in in_cycle:
            self.set_values[set_id] = None

    def evaluate_set(
        self,
        literal: ast.SetLit,
        file_key: str,
        name: str | None = None,
        name_pos: ast.Pos | None = None,
    ) -> AddrValue | ValueSet | None:
        """A set literal's value: addresses or ports (None after reporting an error)."""
        label = f"set {name!r}" if name else "set"
        if not literal.elements:
            # "{ }" has no positioned token; point at the set's name when it has one.
            where = name_pos if literal.pos.line == 0 and name_pos is not None else literal.pos
            self.diags.append(error("empty-set", f"{label} is empty", where))
            return None
        addresses: AddrValue | None = None
        ports: ValueSet | None = None
        first_kind: tuple[str, ast.Pos] | None = None
        ok = True
        for element in literal.elements:
            value = self.evaluate_element(element, file_key)
            if value is None:
                ok = False
                continue
            kind = "address" if isinstance(value, AddrValue) else "port"
            if first_kind is None:
                first_kind = (kind, element.pos)
            elif first_kind[0] != kind:
                self.diags.append(
                    error(
                        "mixed-set",
                        f"{label} mixes addresses and ports: this is {_article(kind)}",
                        element.pos,
                        note(f"the first element is {_article(first_kind[0])}", first_kind[1]),
                    )
                )
                ok = False
                continue
            if isinstance(value, AddrValue):
                addresses = value if addresses is None else addresses | value
            else:
                ports = value if ports is None else ports | value
        if not ok:
            return None
        return addresses if addresses is not None else ports

    def evaluate_element(
        self, element: ast.SetElement, file_key: str
    ) -> AddrValue | ValueSet | None:
        """One operand or set element: addresses or ports (None after an error)."""
        if isinstance(element, ast.CidrLit):
            return self.parse_cidr(element)
        if isinstance(element, ast.AnyAddr):
            return AddrValue.any()
        if isinstance(element, ast.PortLit):
            return self.parse_port(element)
        if isinstance(element, ast.SetLit):
            return self.evaluate_set(element, file_key)
        definition = self.lookup(element, file_key)
        if definition is None:
            return None
        if isinstance(definition, ast.Endpoint):
            return self.endpoint_addresses(definition, element)
        if id(definition) not in self.set_values:
            return None  # not evaluated: reserved name or error already reported
        return self.set_values[id(definition)]

    def endpoint_addresses(self, endpoint: ast.Endpoint, use: ast.NameRef) -> AddrValue | None:
        """The addresses of an endpoint used as an address operand."""
        if not endpoint.addresses:
            self.diags.append(
                error(
                    "endpoint-no-ip",
                    f"endpoint {endpoint.name!r} has no addresses to match on",
                    use.pos,
                    note("defined here", endpoint.name_pos),
                )
            )
            return None
        cached = self.endpoint_values.get(id(endpoint))
        if cached is not None:
            return cached
        value = AddrValue.none()
        for lit in endpoint.addresses:
            part = self.parse_cidr(lit)
            if part is None:
                return None
            value = value | part
        self.endpoint_values[id(endpoint)] = value
        return value

    def check_endpoints(self) -> None:
        """Validate every endpoint's addresses and device, used or not."""
        for lf in self.loaded.files.values():
            for item in lf.source.items:
                if isinstance(item, ast.Endpoint):
                    for lit in item.addresses:
                        self.parse_cidr(lit)
                    if item.device is not None:
                        problem = device_problem(item.device)
                        if problem:
                            self.diags.append(error("bad-device", problem, item.pos))

    # --------------------------------------------------------- literals
    def parse_cidr(self, lit: ast.CidrLit) -> AddrValue | None:
        """An address or prefix literal; host bits must be zero."""
        value = parse_cidr_text(lit.text)
        if isinstance(value, str):
            self.diags.append(error("bad-address", value, lit.pos))
            return None
        return value

    def parse_port(self, lit: ast.PortLit) -> ValueSet | None:
        """A port or ``lo-hi`` range within 0..65535, lo <= hi."""
        hi = lit.hi if lit.hi is not None else lit.lo
        for v in (lit.lo, hi):
            if v > 65535:
                self.diags.append(error("bad-port", f"port {v} is out of range 0-65535", lit.pos))
                return None
        if lit.lo > hi:
            self.diags.append(
                error(
                    "bad-port",
                    f"port range {lit.lo}-{hi} is empty (the low end is above the high end)",
                    lit.pos,
                )
            )
            return None
        return ValueSet.of_range(16, lit.lo, hi)


def parse_cidr_text(text: str) -> AddrValue | str:
    """``10.0.0.0/8`` or ``fd00::1`` as an AddrValue, or an error message."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            return f"{text} has host bits set; did you mean {fixed}?"
        return f"invalid address {text!r}: {exc}"
    width = 32 if net.version == 4 else 128
    values = ValueSet.of_prefix(width, int(net.network_address), net.prefixlen)
    if net.version == 4:
        return AddrValue(values, ValueSet.empty(128))
    return AddrValue(ValueSet.empty(32), values)


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux network device name (None when it can)."""
    if len(name) > 15:
        return f"device name {name!r} is longer than 15 characters"
    if name in (".", ".."):
        return f"{name!r} is not a device name"
    return None


def _names_in(literal: ast.SetLit) -> Iterable[ast.NameRef]:
    stack: list[ast.SetElement] = list(literal.elements)
    while stack:
        element = stack.pop()
        if isinstance(element, ast.NameRef):
            yield element
        elif isinstance(element, ast.SetLit):
            stack.extend(element.elements)


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _closest(name: str, scope: dict[str, Definition | None]) -> str | None:
    matches = difflib.get_close_matches(name, list(scope), n=1, cutoff=0.75)
    return matches[0] if matches else None
