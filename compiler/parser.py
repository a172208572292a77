"""Text -> AST: lark's LALR parser over ``flowc.lark``, building AST nodes as it goes.

The transformer runs inside the parser (no intermediate parse tree), which
keeps 10,000-rule policies fast. Syntax errors become diagnostics with a
caret and words a user knows ("a port or range") instead of terminal names.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, cast

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from compiler import ast
from compiler.diagnostics import Diagnostic, error

GRAMMAR = Path(__file__).with_name("flowc.lark")

# Inline sets nest; deeper than this is certainly a mistake (or an attack on
# the recursion in later stages), so it is refused with a clear error.
MAX_NESTING = 32

# How terminals are named in messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "DEVICE": "a device name",
    "INT": "a number",
    "HEX": "a hex number like 0x12",
    "CIDR4": "an IPv4 address or prefix",
    "CIDR6": "an IPv6 address or prefix",
    "STRING": 'a quoted path like "common.fw"',
    "DIRECTION": "ingress or egress",
    "ALLOW": "allow",
    "DROP": "drop",
    "REDIRECT": "redirect",
    "MIRROR": "mirror",
    "MARK": "mark",
    "NOT": "not",
    "ANY": "any",
    "BANG": "!",
    "ADDR_DIR": "from/to",
    "PORT_DIR": "sport/dport",
    "ICMP_FIELD": "type/code",
    "PROTO": "proto",
    "FLAGS": "flags",
    "VLAN": "vlan",
    "DSCP": "dscp",
    "FRAG": "frag",
    "STATE": "state",
    "PROTO_NAME": "a protocol (tcp, udp, icmp, icmpv6, sctp)",
    "LBRACE": "{",
    "RBRACE": "}",
    "SEMICOLON": ";",
    "COMMA": ",",
    "EQUAL": "=",
    "MINUS": "-",
    "SLASH": "/",
    "__ANON_0": "->",
}

_ACTION_WORDS = ("ALLOW", "DROP", "REDIRECT", "MIRROR", "MARK")


class _Builder(Transformer[Token, Any]):
    """Callbacks named after grammar rules and aliases; each returns an AST node."""

    def __init__(self) -> None:
        super().__init__()
        self.path = "<none>"
        # Nesting depth of each SetLit built so far in this parse, by id().
        self.depths: dict[int, int] = {}

    def reset(self, path: str) -> None:
        """Prepare for parsing another file."""
        self.path = path
        self.depths = {}

    # ---------------------------------------------------------- positions
    def _tok_pos(self, tok: Token) -> ast.Pos:
        return ast.Pos(
            self.path,
            tok.line or 0,
            tok.column or 0,
            tok.end_line or tok.line or 0,
            tok.end_column or tok.column or 0,
        )

    def _span(self, items: list[Any]) -> ast.Pos:
        """The span from the first to the last positioned child."""
        first = last = None
        for item in items:
            first = self._pos_of(item)
            if first is not None:
                break
        for item in reversed(items):
            last = self._pos_of(item)
            if last is not None:
                break
        if first is None or last is None:
            return ast.NOWHERE
        return ast.Pos(self.path, first.line, first.column, last.end_line, last.end_column)

    def _pos_of(self, item: Any) -> ast.Pos | None:
        if isinstance(item, Token):
            return self._tok_pos(item)
        pos = getattr(item, "pos", None)
        return pos if isinstance(pos, ast.Pos) and pos.line > 0 else None

    # ----------------------------------------------------------- top level
    def start(self, items: list[Any]) -> list[Any]:
        return items

    def include(self, items: list[Token]) -> ast.Include:
        raw = str(items[0])[1:-1]
        path = raw.encode().decode("unicode_escape") if "\\" in raw else raw
        return ast.Include(path, self._tok_pos(items[0]))

    def endpoint(self, items: list[Any]) -> ast.Endpoint:
        name = items[0]
        addresses: list[ast.CidrLit] = []
        devices: list[str] = []
        for attr in items[1:]:
            kind, value = attr
            if kind == "ip":
                addresses.extend(value)
            else:
                devices.append(value)
        # Several dev attributes are reported by the resolver; keep the first.
        return ast.Endpoint(
            str(name),
            tuple(addresses),
            devices[0] if devices else None,
            self._tok_pos(name),
            self._tok_pos(name),
        )

    def ep_ip(self, items: list[ast.CidrLit]) -> tuple[str, tuple[ast.CidrLit, ...]]:
        return ("ip", tuple(items))

    def ep_dev(self, items: list[Token]) -> tuple[str, str]:
        return ("dev", str(items[0]))

    def set_def(self, items: list[Any]) -> ast.SetDef:
        name, value = items
        return ast.SetDef(str(name), value, self._span(items), self._tok_pos(name))

    def set_literal(self, items: list[Any]) -> ast.SetLit:
        elements = tuple(i for i in items if i is not None)
        depth = 1 + max((self.depths.get(id(e), 0) for e in elements), default=0)
        node = ast.SetLit(elements, self._span(list(elements)))
        if depth > MAX_NESTING:
            raise _NestingError(node.pos)
        self.depths[id(node)] = depth
        return node

    def cidr(self, items: list[Token]) -> ast.CidrLit:
        return ast.CidrLit(str(items[0]), self._tok_pos(items[0]))

    def name_ref(self, items: list[Token]) -> ast.NameRef:
        return ast.NameRef(str(items[0]), self._tok_pos(items[0]))

    def any_addr(self, items: list[Token]) -> ast.AnyAddr:
        return ast.AnyAddr(self._tok_pos(items[0]))

    def port_range(self, items: list[Token]) -> ast.PortLit:
        lo = _int(items[0])
        hi = _int(items[1]) if len(items) > 1 else None
        return ast.PortLit(lo, hi, self._span(items))

    # -------------------------------------------------------------- policy
    def policy(self, items: list[Any]) -> ast.PolicyDef:
        name, direction, device, *stmts = items
        rules = tuple(s for s in stmts if isinstance(s, ast.RuleDef))
        defaults = tuple(s for s in stmts if isinstance(s, ast.DefaultDef))
        return ast.PolicyDef(
            str(name),
            str(direction),
            str(device),
            rules,
            defaults,
            self._tok_pos(name),
            self._tok_pos(name),
        )

    def default(self, items: list[Any]) -> ast.DefaultDef:
        action = items[0]
        target = items[1] if len(items) > 1 else None
        if target is not None:
            action = ast.ActionSpec(action.kind, action.mark, target, action.pos, action.mark_hex)
        return ast.DefaultDef(action, action.pos)

    def rule(self, items: list[Any]) -> ast.RuleDef:
        action: ast.ActionSpec = items[0]
        clauses = []
        for item in items[1:]:
            if isinstance(item, ast.NameRef):  # the -> target
                action = ast.ActionSpec(action.kind, action.mark, item, action.pos, action.mark_hex)
            else:
                clauses.append(item)
        return ast.RuleDef(action, tuple(clauses), self._span(items))

    def target(self, items: list[Token]) -> ast.NameRef:
        return ast.NameRef(str(items[0]), self._tok_pos(items[0]))

    def act_simple(self, items: list[Token]) -> ast.ActionSpec:
        return ast.ActionSpec(str(items[0]), None, None, self._tok_pos(items[0]))

    def act_mark(self, items: list[Token]) -> ast.ActionSpec:
        hex_form = str(items[1]).lower().startswith("0x")
        return ast.ActionSpec("mark", _int(items[1]), None, self._span(items), hex_form)

    # ------------------------------------------------------------- clauses
    def proto_named(self, items: list[Token]) -> ast.ProtoClause:
        return ast.ProtoClause((str(items[0]),), False, self._tok_pos(items[0]))

    def proto_explicit(self, items: list[Token]) -> ast.ProtoClause:
        protos = tuple(str(t) if t.type == "PROTO_NAME" else _int(t) for t in items[1:])
        return ast.ProtoClause(protos, True, self._span(items))

    def addr_clause(self, items: list[Any]) -> ast.AddrClause:
        return ast.AddrClause(str(items[0]), items[1], self._span(items))

    def addr_expr(self, items: list[Any]) -> ast.AddrExpr:
        negated = isinstance(items[0], Token) and items[0].type == "NOT"
        return ast.AddrExpr(negated, items[-1], self._span(items))

    def port_clause(self, items: list[Any]) -> ast.PortClause:
        return ast.PortClause(str(items[0]), items[1], self._span(items))

    def port_expr(self, items: list[Any]) -> ast.PortExpr:
        negated = isinstance(items[0], Token) and items[0].type == "NOT"
        return ast.PortExpr(negated, items[-1], self._span(items))

    def icmp_clause(self, items: list[Token]) -> ast.IcmpClause:
        value: int | str = _int(items[1]) if items[1].type == "INT" else str(items[1])
        return ast.IcmpClause(str(items[0]), value, self._span(items))

    def flags_named(self, items: list[Any]) -> ast.FlagsClause:
        keyword, flag_items = items[0], items[1:]
        named = tuple((name, is_set) for name, is_set, _ in flag_items)
        positions = tuple(p for _, _, p in flag_items)
        start = self._tok_pos(keyword)
        span = ast.Pos(
            self.path, start.line, start.column, positions[-1].end_line, positions[-1].end_column
        )
        return ast.FlagsClause(named, None, None, span, positions)

    def flag_item(self, items: list[Token]) -> tuple[str, bool, ast.Pos]:
        return (str(items[-1]).lower(), len(items) == 1, self._span(items))

    def flags_masked(self, items: list[Token]) -> ast.FlagsClause:
        return ast.FlagsClause((), _int(items[1]), _int(items[2]), self._span(items))

    def vlan_clause(self, items: list[Token]) -> ast.VlanClause:
        return ast.VlanClause(
            _int(items[1]), _int(items[2]) if len(items) > 2 else None, self._span(items)
        )

    def frag_clause(self, items: list[Token]) -> ast.FragClause:
        return ast.FragClause(*self._name_list(items))

    def state_clause(self, items: list[Token]) -> ast.StateClause:
        return ast.StateClause(*self._name_list(items))

    def _name_list(
        self, items: list[Token]
    ) -> tuple[tuple[str, ...], ast.Pos, tuple[ast.Pos, ...]]:
        """A ``WORD name, name, ...`` clause's names (lower case), span and name spans."""
        names = items[1:]
        return (
            tuple(str(t).lower() for t in names),
            self._span(items),
            tuple(self._span([t]) for t in names),
        )

    def dscp_clause(self, items: list[Token]) -> ast.DscpClause:
        value: int | str = _int(items[1]) if items[1].type == "INT" else str(items[1])
        return ast.DscpClause(value, self._span(items))


class _NestingError(Exception):
    def __init__(self, pos: ast.Pos) -> None:
        super().__init__("nesting")
        self.pos = pos


def _int(tok: Token) -> int:
    text = str(tok)
    return int(text, 16) if text.lower().startswith("0x") else int(text)


@cache
def _grammar_text() -> str:
    return GRAMMAR.read_text()


@cache
def _parser() -> tuple[Lark, _Builder]:
    """The parser, built once per process, and the transformer it calls."""
    builder = _Builder()
    lark = Lark(
        _grammar_text(),
        parser="lalr",
        lexer="contextual",
        transformer=builder,
        maybe_placeholders=False,
    )
    return lark, builder


def parse(text: str, path: str) -> tuple[ast.SourceFile | None, list[Diagnostic]]:
    """Parse one file's text.

    Returns the AST and no diagnostics, or None and the syntax errors.

    >>> sf, diags = parse("policy p ingress on eth0 { default drop }", "p.fw")
    >>> sf.items[0].name, diags
    ('p', [])
    """
    parser, builder = _parser()
    builder.reset(path)
    try:
        items = parser.parse(text)
    except _NestingError as exc:
        return None, [
            error(
                "nesting",
                f"sets nested more than {MAX_NESTING} levels deep",
                exc.pos,
            )
        ]
    except UnexpectedInput as exc:
        return None, [_syntax_error(exc, text, path)]
    finally:
        builder.depths = {}
    # Comments are ignored by the grammar; a separate scan keeps them for fmt.
    # With an inline transformer, parse() returns what start() returned.
    items_list = cast(list[ast.Item], items)
    return ast.SourceFile(path, tuple(items_list), tuple(_scan_comments(text))), []


def _scan_comments(text: str) -> list[ast.Comment]:
    """``#`` comments with their positions (outside quoted strings)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        in_string = False
        for col, ch in enumerate(line):
            if ch == '"':
                in_string = not in_string
            elif ch == "#" and not in_string:
                out.append(ast.Comment(line[col:].rstrip(), lineno, col + 1))
                break
    return out


def _describe_expected(expected: set[str]) -> str:
    words = sorted({_TERMINAL_WORDS.get(t, t.lower().strip("_")) for t in expected})
    if len(words) > 8:
        words = [*words[:8], "..."]
    return ", ".join(words)


def _syntax_error(exc: UnexpectedInput, text: str, path: str) -> Diagnostic:
    line = getattr(exc, "line", 0) or 0
    column = getattr(exc, "column", 0) or 0
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            return _eof_error(text, path, exc.expected)
        pos = ast.Pos(path, line, column, tok.end_line or line, tok.end_column or column + 1)
        expected = set(exc.expected)
        hint = _hint(tok, expected)
        message = f"unexpected {_token_words(tok)}; expected {_describe_expected(expected)}"
        return error("syntax", message + (f" ({hint})" if hint else ""), pos)
    if isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream or 0
        char = text[offset] if offset < len(text) else "?"
        pos = ast.Pos(path, line, column, line, column + 1)
        allowed = exc.allowed or set()
        message = f"unexpected character {char!r}"
        if allowed:
            message += f"; expected {_describe_expected(set(allowed))}"
        return error("syntax", message, pos)
    if isinstance(exc, UnexpectedEOF):
        return _eof_error(text, path, set(exc.expected))
    return error("syntax", str(exc).splitlines()[0], ast.Pos(path, line, column, line, column))


def _eof_error(text: str, path: str, expected: Any) -> Diagnostic:
    lines = text.splitlines() or [""]
    last = len(lines)
    col = len(lines[-1]) + 1
    words = _describe_expected(set(expected))
    missing_brace = "RBRACE" in set(expected)
    message = "unexpected end of file" + (
        " (a '{' is never closed)" if missing_brace else f"; expected {words}"
    )
    return error("syntax", message, ast.Pos(path, last, col, last, col + 1))


def _token_words(tok: Token) -> str:
    if tok.type in ("NAME", "INT", "CIDR4", "CIDR6", "DEVICE", "HEX"):
        return f"{_TERMINAL_WORDS[tok.type].split(' ', 1)[1]} {str(tok)!r}"
    return repr(str(tok))


def _hint(tok: Token, expected: set[str]) -> str:
    """A suggestion for the common mistakes."""
    if tok.type == "NAME" and str(tok) in ("accept", "pass", "permit"):
        return "use 'allow'"
    if tok.type == "NAME" and str(tok) in ("deny", "reject", "block"):
        return "use 'drop'"
    if "DIRECTION" in expected:
        return "a policy header reads: policy NAME ingress|egress on DEVICE { ... }"
    if tok.type == "NAME" and expected & set(_ACTION_WORDS):
        return "a rule starts with allow, drop, redirect, mirror or mark N"
    if tok.type == "INT" and "PROTO_NAME" in expected:
        return "write a protocol number as 'proto N'"
    return ""
