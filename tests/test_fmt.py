"""fmt: parse(fmt(ast)) == ast for generated files; comments are never lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from compiler import ast
from compiler.fmt import format_source
from compiler.parser import parse

NAMES = st.sampled_from(["web", "db", "frontends", "a1", "nk-web", "_x", "Svc_2", "echo-request"])
DEVICES = st.sampled_from(["eth0", "nk-web", "bond0.100", "veth@1", "br_db"])
CIDRS = st.sampled_from(
    ["10.0.0.1", "10.0.0.0/8", "192.168.1.0/24", "fd00::10", "2001:db8::/32", "::1", "::/0"]
)


def ports() -> st.SearchStrategy[ast.PortLit]:
    return st.builds(
        lambda lo, span: ast.PortLit(lo, None if span is None else lo + span),
        st.integers(0, 65535),
        st.one_of(st.none(), st.integers(0, 1000)),
    )


def set_literals(leaf: st.SearchStrategy[ast.SetElement]) -> st.SearchStrategy[ast.SetLit]:
    return st.recursive(
        st.builds(lambda xs: ast.SetLit(tuple(xs)), st.lists(leaf, min_size=1, max_size=3)),
        lambda inner: st.builds(
            lambda xs: ast.SetLit(tuple(xs)), st.lists(st.one_of(leaf, inner), max_size=3)
        ),
        max_leaves=6,
    )


SET_LEAF = st.one_of(st.builds(ast.CidrLit, CIDRS), st.builds(ast.NameRef, NAMES), ports())
ADDR_OPERAND = st.one_of(
    st.builds(ast.CidrLit, CIDRS),
    st.just(ast.AnyAddr()),
    st.builds(ast.NameRef, NAMES),
    set_literals(SET_LEAF),
)
PORT_OPERAND = st.one_of(ports(), st.builds(ast.NameRef, NAMES), set_literals(SET_LEAF))
PROTOS = st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "sctp"])

CLAUSES = st.one_of(
    st.builds(lambda p: ast.ProtoClause((p,), False), PROTOS),
    st.builds(
        lambda ps: ast.ProtoClause(tuple(ps), True),
        st.lists(st.one_of(PROTOS, st.integers(0, 300)), min_size=1, max_size=3),
    ),
    st.builds(
        lambda d, n, o: ast.AddrClause(d, ast.AddrExpr(n, o)),
        st.sampled_from(["from", "to"]),
        st.booleans(),
        ADDR_OPERAND,
    ),
    st.builds(
        lambda d, n, o: ast.PortClause(d, ast.PortExpr(n, o)),
        st.sampled_from(["sport", "dport"]),
        st.booleans(),
        PORT_OPERAND,
    ),
    st.builds(
        ast.IcmpClause,
        st.sampled_from(["type", "code"]),
        st.one_of(st.integers(0, 300), NAMES),
    ),
    st.builds(
        lambda items: ast.FlagsClause(tuple(items)),
        st.lists(
            st.tuples(st.sampled_from(["syn", "ack", "fin", "bogus"]), st.booleans()),
            min_size=1,
            max_size=3,
        ),
    ),
    st.builds(lambda v, m: ast.FlagsClause((), v, m), st.integers(0, 0x1FF), st.integers(0, 0x1FF)),
    st.builds(
        lambda lo, hi: ast.VlanClause(lo, hi),
        st.integers(0, 5000),
        st.one_of(st.none(), st.integers(0, 5000)),
    ),
    st.builds(ast.DscpClause, st.one_of(st.integers(0, 70), st.sampled_from(["ef", "af11", "x"]))),
)

ACTIONS = st.one_of(
    st.builds(ast.ActionSpec, st.sampled_from(["allow", "drop"])),
    st.builds(lambda m: ast.ActionSpec("mark", m), st.integers(0, 2**33)),
    st.builds(
        lambda k, t: ast.ActionSpec(k, None, ast.NameRef(t)),
        st.sampled_from(["redirect", "mirror", "allow"]),
        NAMES,
    ),
)

RULES = st.builds(lambda a, cs: ast.RuleDef(a, tuple(cs)), ACTIONS, st.lists(CLAUSES, max_size=5))
DEFAULTS = st.builds(ast.DefaultDef, ACTIONS)

ITEMS = st.one_of(
    st.builds(ast.Include, st.sampled_from(["common.fw", "dir/x y.fw", "../up.fw"])),
    st.builds(
        lambda n, addrs, dev: ast.Endpoint(n, tuple(ast.CidrLit(a) for a in addrs), dev),
        NAMES,
        st.lists(CIDRS, max_size=3),
        st.one_of(st.none(), DEVICES),
    ),
    st.builds(lambda n, v: ast.SetDef(n, v), NAMES, set_literals(SET_LEAF)),
    st.builds(
        lambda n, d, dev, rs, ds: ast.PolicyDef(n, d, dev, tuple(rs), tuple(ds)),
        NAMES,
        st.sampled_from(["ingress", "egress"]),
        DEVICES,
        st.lists(RULES, max_size=5),
        st.lists(DEFAULTS, max_size=2),
    ),
)


@given(st.lists(ITEMS, max_size=6))
def test_parse_of_fmt_is_identity(items: list[ast.Item]) -> None:
    source = ast.SourceFile("gen.fw", tuple(items))
    text = format_source(source)
    parsed, diags = parse(text, "gen.fw")
    assert not diags, (text, diags)
    assert parsed == source, text
    assert parsed is not None
    assert format_source(parsed, text) == text  # canonical text is a fixed point


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4))
def test_comments_survive_everywhere(words: list[str]) -> None:
    text = (
        "# head\n\n"
        "endpoint web { ip 10.0.0.1; dev nk-web }  # trailing on endpoint\n"
        "# before policy\n"
        "policy p ingress on eth0 {  # on header\n"
        + "".join(
            f"    # lead {w}\n    allow tcp dport {i}  # tail {w}\n" for i, w in enumerate(words)
        )
        + "    default drop\n"
        "    # before brace\n"
        "}  # after brace\n"
        "# tail of file\n"
    )
    source, diags = parse(text, "c.fw")
    assert source is not None, diags
    out = format_source(source, text)
    out_source, _ = parse(out, "c.fw")
    assert out_source == source
    assert out_source is not None
    assert sorted(c.text for c in out_source.comments) == sorted(c.text for c in source.comments)
    assert format_source(out_source, out) == out
