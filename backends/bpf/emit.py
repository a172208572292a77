"""IR policy -> BPF C for the tc/tcx slow path (one entry point: :func:`lower`).

Two classification strategies share everything else (parsing, actions,
counters, events: the C in ``bpf/``):

* ``bitvec`` (default): per-field lookups into maps filled from
  :mod:`backends.bpf.tables`, then a bit-vector AND. The C only depends on
  which fields the policy uses and on table capacities; rule changes of the
  same shape are map updates.
* ``chain``: one ``if`` per rule, in priority order. The baseline the
  benchmark compares against; the verifier rejects it at a few thousand rules.

The generated C cites the DSL line of every rule it implements.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backends.bpf import abi
from backends.bpf.conntrack import CtSpec, ct_defines, established_rule
from backends.bpf.tables import (
    ARRAY,
    DIR4,
    GRID_MAX_GROUPS,
    GRID_MIN_WORDS,
    LPM6,
    ClassifierTables,
    FieldTable,
    build_tables,
    dir_levels,
    used_fields,
)
from backends.targets import TC, BpfTarget
from ir.fields import HEADER_SPACE, RENDER_IP4, RENDER_IP6
from ir.model import Policy, Rule
from ir.state_analysis import policy_uses_state
from ir.valueset import ValueSet

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
STRATEGIES = ("bitvec", "chain")
# Class tuples the bitvec classifier remembers, per CPU (direct-mapped: a tuple
# evicts the one that hashed to its slot). 32 bytes each: 256 KiB per CPU.
MEMO_BITS = 13
# The memo costs a hash of the class tuple, one inlined array read and a compare;
# the walk it saves grows with the match's position in the policy, and is the
# cheaper of the two below a few hundred rules (bench/bpf_bench.py).
MEMO_MIN_WORDS = 8
ENTRY_FUNCTION = "flowc_tc"
# The summary grid's map (backends/bpf/tables.py, build_grid): bank * cells +
# row group * GRID_MAX_GROUPS + column group -> struct flowc_grid_cell. Sized
# for the most groups a policy can have, so any refill fits.
GRID_MAP = "flowc_grid"


class BpfLoweringError(ValueError):
    """The policy cannot be lowered to BPF C (reported with the DSL line)."""


class ShapeChanged(ValueError):
    """A new policy does not fit the loaded program (other fields, or too big)."""


@dataclass(frozen=True, slots=True)
class Capacities:
    """Map sizes the C is compiled with (per bank); a new policy fits the same program
    when it uses the same fields and stays within these.

    Attributes:
        fields: the fields the classifier looks up, in order.
        n_rules: rule capacity (a power of two, at least 64).
    """

    fields: tuple[str, ...]
    n_rules: int
    n_words: int
    n_summary: int
    classes: tuple[tuple[str, int], ...]  # field -> max classes
    lpm_entries: tuple[tuple[str, int], ...]  # IPv6 field -> max trie entries
    dir_entries: tuple[tuple[str, int, int], ...]  # IPv4 field -> level-2, level-3 sizes
    memo: bool = False  # the bitvec classifier remembers class tuples (flowc_memo)
    grid: tuple[str, str] | None = None  # the summary grid's row and column fields


@dataclass(frozen=True, slots=True)
class BpfProgram:
    """The generated slow path for one policy.

    Attributes:
        policy: the IR it implements (rule ids are rule priorities).
        strategy: ``bitvec`` or ``chain``.
        source: the C text (compile with ``-I bpf/``).
        tables: what the bitvec maps hold (None for chain).
        capacities: the map sizes compiled in.
        target: the attach point it is generated for (entry signature, verdicts).
        conntrack: the connection tracking compiled in (None: none, every packet new).
        fast_rule: the rule id that decides every established packet (the
            established fast lane, written to the config map), or None.
    """

    policy: Policy
    strategy: str
    source: str
    tables: ClassifierTables | None
    capacities: Capacities
    target: BpfTarget = TC
    conntrack: CtSpec | None = None
    fast_rule: int | None = None


def _inlined(header: str) -> list[str]:
    """A bpf/ file's text pasted into the generated program.

    bcc rewrites map method calls (``map.lookup(&k)``) only in the main
    source text, not in included headers, so the parts of the runtime that
    touch maps are pasted in rather than included.
    """
    body = [
        line
        for line in (BPF_DIR / header).read_text().splitlines()
        if line.strip() != "#pragma once" and not line.startswith("#include")
    ]
    return [f"/* ---- from bpf/{header} ---- */", *body, f"/* ---- end of bpf/{header} ---- */"]


def _verdicts(target: BpfTarget) -> list[str]:
    """The attach point's verdict codes, as bpf/flowc_entry.h returns them."""
    codes = (("ALLOW", target.allow), ("DROP", target.drop), ("REDIRECT", target.redirect))
    return [
        "",
        f"/* Verdicts of the attach point: {target.description}. */",
        *(
            f"#define FLOWC_VERDICT_{what} {code} /* {target.verdict_name(code)} */"
            for what, code in codes
        ),
    ]


def _pow2(n: int, minimum: int) -> int:
    size = minimum
    while size < n:
        size *= 2
    return size


def _rule_label(rule: Rule) -> str:
    return "default" if rule.is_default else f"rule {rule.priority}"


def _rule_comment(rule: Rule) -> str:
    text = rule.origin.text.replace("*/", "* /")
    return f"{rule.origin}  {text}" if text else str(rule.origin)


def _header(policy: Policy, strategy: str) -> list[str]:
    lines = [
        "// SPDX-License-Identifier: GPL-2.0",
        f"// Generated by flowc ({strategy} classifier) for policy {policy.name!r},",
        f"// {policy.hook.direction} on {policy.hook.device}, declared at {policy.origin}.",
        "// Do not edit: change the policy and compile again.",
        "//",
        "// Rule ids (the id is the rule's bit in every bit vector and its index in",
        "// flowc_actions and flowc_rule_stats):",
    ]
    for rule in policy.rules:
        lines.append(f"//   {_rule_label(rule):>10}: {_rule_comment(rule)}  => {rule.action}")
    return lines


def _capacities(policy: Policy, tables: ClassifierTables | None, memo: bool | None) -> Capacities:
    """Map sizes for ``tables`` with head-room (see :class:`Capacities`)."""
    # Head-room so the next version of the policy can be a map refill.
    count = len(policy.rules)
    n_rules = _pow2(count, 64) if count <= 4096 else -(-count // 4096) * 4096
    n_words = n_rules // 64
    n_summary = max(1, -(-n_words // 64))
    classes: list[tuple[str, int]] = []
    lpm: list[tuple[str, int]] = []
    direct: list[tuple[str, int, int]] = []
    if tables is not None:
        for t in tables.fields:
            classes.append((t.field, _pow2(len(t.classes), 16)))
            if t.kind == LPM6:
                lpm.append((t.field, _pow2(len(t.lpm_entries()), 64)))
            elif t.kind == DIR4:
                _, level2, level3 = dir_levels(t)
                direct.append((t.field, _pow2(len(level2), 256), _pow2(len(level3), 256)))
    fields = tuple(t.field for t in tables.fields) if tables is not None else ()
    if memo is None:
        memo = n_words >= MEMO_MIN_WORDS
    return Capacities(
        fields,
        n_rules,
        n_words,
        n_summary,
        tuple(classes),
        tuple(lpm),
        tuple(direct),
        memo=memo and tables is not None and bool(fields),
        grid=tables.grid.fields if tables is not None and tables.grid is not None else None,
    )


def fits(need: Capacities, have: Capacities) -> bool:
    """True when tables needing ``need`` fit maps compiled with ``have``."""
    if need.fields != have.fields or need.n_rules > have.n_rules or need.grid != have.grid:
        return False
    pairs = [
        (dict(need.classes), dict(have.classes)),
        (dict(need.lpm_entries), dict(have.lpm_entries)),
    ]
    for needed, had in pairs:
        if any(n > had.get(name, 0) for name, n in needed.items()):
            return False
    had_dir = {name: (l2, l3) for name, l2, l3 in have.dir_entries}
    return all(
        l2 <= had_dir.get(name, (0, 0))[0] and l3 <= had_dir.get(name, (0, 0))[1]
        for name, l2, l3 in need.dir_entries
    )


def lower(
    policy: Policy,
    strategy: str = "bitvec",
    *,
    capacities: Capacities | None = None,
    memo: bool | None = None,
    grid: bool | None = None,
    target: BpfTarget = TC,
    conntrack: CtSpec | None = None,
) -> BpfProgram:
    """Generate the slow-path C for ``policy`` with the given classification strategy.

    With ``capacities`` (those of a loaded program), the program is generated
    with exactly those map sizes, so its maps can be refilled in place; raises
    :class:`ShapeChanged` when the policy does not fit them. ``memo`` compiles
    the bitvec classifier's class-tuple memo in or out (default: in from
    ``MEMO_MIN_WORDS`` words of rule capacity up); ``grid`` the summary grid
    (default: in from ``GRID_MIN_WORDS`` words of rules up; with ``capacities``,
    as the loaded program has it). ``target`` gives the entry function's
    context type and the verdict codes. ``conntrack`` compiles connection tracking
    in (bpf/flowc_ct.h); without it, a policy that matches on ``state`` gets the
    default :class:`CtSpec` and any other none. Every program of a host should
    get the same spec when any policy of the host uses state
    (:func:`ir.state_analysis.uses_state`), so all of them commit connections.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}")
    if [r.priority for r in policy.rules] != list(range(len(policy.rules))):
        raise BpfLoweringError("rule priorities must be 0..n-1 (renumber the policy first)")
    tables = None
    if strategy == "bitvec":
        if capacities is not None:
            grid = capacities.grid is not None
            if capacities.grid is not None and not set(capacities.grid) <= set(used_fields(policy)):
                raise ShapeChanged("the policy no longer uses the loaded program's grid fields")
        tables = build_tables(
            policy, grid=grid, grid_fields=capacities.grid if capacities is not None else None
        )
    caps = _capacities(policy, tables, memo)
    if capacities is not None:
        if strategy != "bitvec" or not fits(caps, capacities):
            raise ShapeChanged(
                "the policy uses other fields or needs larger maps than the loaded program"
            )
        caps = capacities
    if conntrack is None and policy_uses_state(policy):
        conntrack = CtSpec()
    fast = established_rule(policy) if conntrack is not None else None
    lines = _header(policy, strategy)
    lines += [
        "",
        f"#define FLOWC_N_RULES {caps.n_rules} /* capacity; the policy has {len(policy.rules)} */",
        *_verdicts(target),
    ]
    if tables is not None:
        lines += _bitvec_classifier(policy, tables, caps)
    else:
        lines += _chain_classifier(policy)
    lines += ["", *_ct_lines(conntrack, fast)]
    lines += [
        "",
        *_inlined("flowc_entry.h"),
        "",
        f"/* Entry point: {target.description}, {policy.hook.direction} on "
        f"{policy.hook.device}. */",
        f"int {ENTRY_FUNCTION}({target.context} *skb)",
        "{",
        "\treturn flowc_run(skb);",
        "}",
        "",
    ]
    return BpfProgram(
        policy,
        strategy,
        "\n".join(lines),
        tables,
        caps,
        target,
        conntrack,
        fast.priority if fast is not None else None,
    )


def _ct_lines(spec: CtSpec | None, fast: Rule | None) -> list[str]:
    """FLOWC_CT, and with tracking its configuration, bpf/flowc_ct.h and the fast lane's note."""
    if spec is None:
        return [
            "/* No connection tracking: every packet is new, nothing is committed. */",
            "#define FLOWC_CT 0",
        ]
    if fast is not None:
        lane = [
            f"/* Established fast lane: {_rule_label(fast)} decides every established packet",
            f" *   {_rule_comment(fast)}  => {fast.action}",
            " * so the loader sets flowc_config.ct_fast to its id + 1 and established",
            " * packets skip flowc_classify(). */",
        ]
    else:
        lane = [
            "/* No established fast lane: more than one rule decides established packets,",
            " * so they are classified with state as a field (flowc_config.ct_fast = 0). */",
        ]
    return [
        "/* Connection tracking (ir/conntrack.py semantics; one table per host). */",
        "#define FLOWC_CT 1",
        *ct_defines(spec),
        *lane,
        *_inlined("flowc_ct.h"),
    ]


# ------------------------------------------------------------------ bitvec
def _bitvec_classifier(policy: Policy, tables: ClassifierTables, caps: Capacities) -> list[str]:
    """Per-policy data and glue around bpf/flowc_bitvec.h and bpf/flowc_memo.h:
    the field list, table sizes, each field's maps and class lookup, and
    ``flowc_classify`` calling them in order."""
    memo_note = (
        "compiled in" if caps.memo else f"compiled out (in from {MEMO_MIN_WORDS * 64} rules)"
    )
    grid_note = tables.grid_note.replace("*/", "* /")
    if caps.grid is None and tables.grid is None and "starts at" in grid_note:
        grid_note = f"no grid (in from {GRID_MIN_WORDS * 64} rules)"
    out = [
        f"#define FLOWC_N_WORDS {caps.n_words}",
        f"#define FLOWC_N_SUMMARY {caps.n_summary}",
        f"#define FLOWC_N_FIELDS {len(tables.fields)}",
        f"#define FLOWC_GRID {int(caps.grid is not None)} /* {grid_note} */",
        f"#define FLOWC_MEMO {int(caps.memo)} /* class-tuple memo {memo_note} */",
        f"#define FLOWC_MEMO_BITS {MEMO_BITS}",
        "",
        '#include "flowc_common.h"',
        '#include "flowc_parse.h"',
        '#include "flowc_bitvec.h"',
        "",
        *_inlined("flowc_maps.h"),
        "",
        *_inlined("flowc_memo.h"),
    ]
    if caps.grid is not None:
        out += [
            "",
            f"/* The summary grid on {caps.grid[0]} (rows) x {caps.grid[1]} (columns). */",
            f"#define FLOWC_GRID_GROUPS {GRID_MAX_GROUPS}",
            f"BPF_ARRAY({GRID_MAP}, struct flowc_grid_cell, "
            "FLOWC_BANKS * FLOWC_GRID_GROUPS * FLOWC_GRID_GROUPS);",
        ]
    for t in tables.fields:
        out += ["", *_field_lines(policy, t, caps)]
    out += [
        "",
        "/* The first rule whose bit is set in every used field's vector, reading the",
        " * maps' live bank; -1 when a table entry is missing (the caller fails closed). */",
        "static __always_inline __s32 flowc_classify(const struct flowc_key *k,",
        "\t\t\t\t\t    const struct flowc_config *cfg)",
        "{",
    ]
    if not tables.fields:
        out += ["\treturn 0; /* no field is constrained: only the default */", "}"]
        return out
    out += [
        "\tstruct flowc_class_tuple tuple = { .epoch = cfg->bank };",
        "\tconst struct flowc_bitvec *v[FLOWC_N_FIELDS];",
        "\tconst struct flowc_grid_cell *cell = 0;",
        "\tstruct flowc_memo_entry *memo;",
        "\t__u32 bank = cfg->bank & 1;",
        "\t__u32 idx;",
        "\t__s32 rule;",
        "",
    ]
    calls = [
        f"flowc_class_{t.field}(k, bank, &tuple.cls[{slot}])"
        for slot, t in enumerate(tables.fields)
    ]
    out += [
        "\tif (" + " ||\n\t    ".join(calls) + ")",
        "\t\treturn -1;",
        "\tmemo = flowc_memo_slot(&tuple, cfg);",
        "\tif (memo && flowc_memo_holds(memo, &tuple))",
        "\t\treturn memo->rule_plus_one - 1;",
        "",
        "\t/* Each class's rules, the most selective field (most classes) first. */",
    ]
    slot_of = {t.field: slot for slot, t in enumerate(tables.fields)}
    by_selectivity = sorted(tables.fields, key=lambda t: -len(t.classes))
    for i, t in enumerate(by_selectivity):
        cls = f"tuple.cls[{slot_of[t.field]}]"
        if caps.grid is not None and t.field in caps.grid:
            cls = f"({cls} & FLOWC_CLASS_MASK)"  # the grid group rides above the class
        out += [
            f"\tidx = bank * FLOWC_CLASSES_{t.field} + {cls};",
            f"\tv[{i}] = {abi.bitvec_map(t.field)}.lookup(&idx);",
            f"\tif (!v[{i}])",
            "\t\treturn -1;",
        ]
    if caps.grid is not None:
        row, col = (slot_of[name] for name in caps.grid)
        out += [
            "\t/* The grid cell of the packet's two grid groups. */",
            "\tidx = (bank * FLOWC_GRID_GROUPS + "
            f"(tuple.cls[{row}] >> FLOWC_GRID_SHIFT)) * FLOWC_GRID_GROUPS +",
            f"\t      (tuple.cls[{col}] >> FLOWC_GRID_SHIFT);",
            f"\tcell = {GRID_MAP}.lookup(&idx);",
            "\tif (!cell)",
            "\t\treturn -1;",
        ]
    out += [
        "\trule = flowc_bitvec_first(v, cell);",
        "\tflowc_memo_store(memo, &tuple, rule);",
        "\treturn rule;",
        "}",
    ]
    return out


def _constrained_at(policy: Policy, name: str) -> str:
    lines = sorted(
        {r.origin.line for r in policy.rules for f, _ in r.match.constraints if f == name}
    )
    shown = ", ".join(str(n) for n in lines[:12]) + (", ..." if len(lines) > 12 else "")
    return f"line{'s' if len(lines) != 1 else ''} {shown}"


def _field_lines(policy: Policy, t: FieldTable, caps: Capacities) -> list[str]:
    """One field's maps and ``flowc_class_<field>()``: the packet's class in it
    (0 and success, -1 when a table entry is missing)."""
    name = t.field
    fld = HEADER_SPACE.field(name)
    out = [
        f"/* {name}: {fld.doc}. {len(t.classes)} classes; "
        f"constrained at {_constrained_at(policy, name)}. */",
        f"#define FLOWC_CLASSES_{name} {dict(caps.classes)[name]}",
        f"BPF_ARRAY({abi.bitvec_map(name)}, struct flowc_bitvec, "
        f"FLOWC_BANKS * FLOWC_CLASSES_{name});",
    ]
    head = [
        f"static __always_inline int flowc_class_{name}(const struct flowc_key *k, __u32 bank, "
        "__u32 *cls)",
        "{",
    ]
    # A packet of the other family carries 0 in an address field, and the class
    # of 0 is always class 0 (classes are numbered from the low end of the value
    # space), so the address lookup only runs when the field exists.
    if t.kind == DIR4:
        l2, l3 = {n: (a, b) for n, a, b in caps.dir_entries}[name]
        return [
            *out,
            f"#define FLOWC_L2_{name} {l2}",
            f"#define FLOWC_L3_{name} {l3}",
            f"BPF_ARRAY({abi.dir_map(1, name)}, __u32, FLOWC_BANKS * FLOWC_DIR_L1);",
            f"BPF_ARRAY({abi.dir_map(2, name)}, __u32, FLOWC_BANKS * FLOWC_L2_{name});",
            f"BPF_ARRAY({abi.dir_map(3, name)}, __u32, FLOWC_BANKS * FLOWC_L3_{name});",
            "",
            *head,
            f"\t__u32 addr = bpf_ntohl(k->{name});",
            "\t__u32 idx = bank * FLOWC_DIR_L1 + (addr >> 16);",
            "\t__u32 *entry;",
            "",
            f"\t*cls = 0; /* class of an absent {name} */",
            "\tif (k->family != 4)",
            "\t\treturn 0;",
            f"\tentry = {abi.dir_map(1, name)}.lookup(&idx);",
            "\tif (entry && (*entry & FLOWC_DIR_CHUNK)) {",
            f"\t\tidx = flowc_dir_next(bank, FLOWC_L2_{name}, *entry, addr >> 8);",
            f"\t\tentry = {abi.dir_map(2, name)}.lookup(&idx);",
            "\t}",
            "\tif (entry && (*entry & FLOWC_DIR_CHUNK)) {",
            f"\t\tidx = flowc_dir_next(bank, FLOWC_L3_{name}, *entry, addr);",
            f"\t\tentry = {abi.dir_map(3, name)}.lookup(&idx);",
            "\t}",
            "\tif (!entry)",
            "\t\treturn -1;",
            "\t*cls = *entry;",
            "\treturn 0;",
            "}",
        ]
    if t.kind == LPM6:
        return [
            *out,
            f"BPF_LPM_TRIE({abi.class_map(name)}, struct flowc_lpm6_key, __u32, "
            f"FLOWC_BANKS * {dict(caps.lpm_entries)[name]});",
            "",
            *head,
            "\tstruct flowc_lpm6_key key = { .prefixlen = FLOWC_LPM6_FULL, .bank = bank };",
            "\t__u32 *found;",
            "",
            f"\t*cls = 0; /* class of an absent {name} */",
            "\tif (k->family != 6)",
            "\t\treturn 0;",
            f"\t__builtin_memcpy(key.addr, k->{name}, 16);",
            f"\tfound = {abi.class_map(name)}.lookup(&key);",
            "\tif (!found)",
            "\t\treturn -1;",
            "\t*cls = *found;",
            "\treturn 0;",
            "}",
        ]
    assert t.kind == ARRAY
    size = abi.array_entries(fld.width)
    return [
        *out,
        f"BPF_ARRAY({abi.class_map(name)}, __u32, FLOWC_BANKS * {size});",
        "",
        *head,
        f"\t__u32 idx = bank * {size} + k->{name};",
        f"\t__u32 *found = {abi.class_map(name)}.lookup(&idx);",
        "",
        "\tif (!found)",
        "\t\treturn -1;",
        "\t*cls = *found;",
        "\treturn 0;",
        "}",
    ]


# ------------------------------------------------------------------- chain
def _chain_classifier(policy: Policy) -> list[str]:
    out = [
        "",
        '#include "flowc_common.h"',
        '#include "flowc_parse.h"',
        '#include "flowc_chain.h"',
        "",
        *_inlined("flowc_maps.h"),
        "",
        "/* First match, in priority order: one test per rule (the config is unused:",
        " * a chain program is replaced, never refilled). */",
        "static __always_inline __s32 flowc_classify(const struct flowc_key *k,",
        "\t\t\t\t\t    const struct flowc_config *cfg)",
        "{",
    ]
    for rule in policy.rules:
        out.append(f"\t/* {_rule_label(rule)}: {_rule_comment(rule)} */")
        conditions = [_condition(name, values) for name, values in rule.match.constraints]
        if conditions:
            out.append("\tif (" + " &&\n\t    ".join(conditions) + ")")
            out.append(f"\t\treturn {rule.priority};")
        else:
            out.append(f"\treturn {rule.priority};")
    if not policy.rules[-1].is_default or policy.rules[-1].match.constraints:
        out.append("\treturn -1;")
    out.append("}")
    return out


def _condition(name: str, values: ValueSet) -> str:
    render = HEADER_SPACE.field(name).render
    parts: list[str] = []
    if render == RENDER_IP4:
        var = f"flowc_ip4(&k->{name})"
        for value, plen in values.to_prefixes():
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
            parts.append(f"({var} & {mask:#010x}U) == {value:#010x}U")
    elif render == RENDER_IP6:
        hi, lo = f"flowc_ip6_half(k->{name})", f"flowc_ip6_half(k->{name} + 8)"
        for value, plen in values.to_prefixes():
            v_hi, v_lo = value >> 64, value & ((1 << 64) - 1)
            if plen <= 64:
                mask = ((1 << 64) - 1) ^ ((1 << (64 - plen)) - 1)
                parts.append(f"({hi} & {mask:#x}ULL) == {v_hi & mask:#x}ULL")
            else:
                mask = ((1 << 64) - 1) ^ ((1 << (128 - plen)) - 1)
                parts.append(f"({hi} == {v_hi:#x}ULL && ({lo} & {mask:#x}ULL) == {v_lo:#x}ULL)")
    else:
        var = f"FLOWC_FIELD({name})"
        for lo_v, hi_v in values.intervals:
            if lo_v == hi_v:
                parts.append(f"{var} == {lo_v}")
            else:
                parts.append(f"({var} >= {lo_v} && {var} <= {hi_v})")
    if not parts:
        return "0"
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def _grid_json(program: BpfProgram) -> dict[str, object] | None:
    """The summary grid's axes and cells (each cell's word set as hex), or None."""
    tables = program.tables
    if tables is None or tables.grid is None:
        return None
    grid = tables.grid
    return {
        "fields": list(grid.fields),
        "groups": [grid.rows, grid.cols],
        "capacity": GRID_MAX_GROUPS,
        "note": tables.grid_note,
        "cells": [f"{bits:#x}" for bits in grid.cells],
    }


def maps_json(program: BpfProgram) -> dict[str, object]:
    """What the program's maps must hold, as JSON data (``flowc compile --emit bpf``)."""
    rules = [
        {
            "rule": r.priority,
            "action": r.action.kind,
            "device": r.action.device,
            "mark": r.action.mark,
            "file": r.origin.file,
            "line": r.origin.line,
            "default": r.is_default,
        }
        for r in program.policy.rules
    ]
    fields: list[dict[str, object]] = []
    if program.tables is not None:
        for t in program.tables.fields:
            entry: dict[str, object] = {
                "field": t.field,
                "kind": t.kind,
                "classes": [f"{bits:#x}" for bits in t.classes],
                "intervals": [list(iv) for iv in t.intervals],
            }
            if t.kind == LPM6:
                entry["lpm"] = [[f"{v:#x}", plen, cls] for v, plen, cls in t.lpm_entries()]
            fields.append(entry)
    caps = program.capacities
    return {
        "policy": program.policy.name,
        "strategy": program.strategy,
        "rules": len(program.policy.rules),
        "n_words": caps.n_words,
        "n_summary": caps.n_summary,
        "rule_capacity": caps.n_rules,
        "class_capacity": dict(caps.classes),
        "lpm_capacity": dict(caps.lpm_entries),
        "dir_capacity": {name: [l2, l3] for name, l2, l3 in caps.dir_entries},
        "grid": _grid_json(program),
        "actions": rules,
        "fields": fields,
    }
