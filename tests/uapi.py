"""Numbers from the kernel's uapi headers, read with a small C enum/#define
evaluator, for tests that check flowc's netlink numbers against the kernel's
own (Debian's linux-headers-*-common, installed by scripts/setup.sh)."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HEADER_DIRS = sorted(glob.glob("/usr/src/linux-headers-*-common/include/uapi/linux"))
HEADERS = (
    "pkt_cls.h",
    "pkt_sched.h",
    "rtnetlink.h",
    "netlink.h",
    "if_ether.h",
    "tc_act/tc_gact.h",
    "tc_act/tc_mirred.h",
    "tc_act/tc_skbedit.h",
    "tc_act/tc_ct.h",
)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_ENUM = re.compile(r"\benum\b[^{;]*\{(.*?)\}", re.S)
_DEFINE = re.compile(r"^#define[ \t]+(\w+)(\([\w, ]*\))?[ \t]*(.*)$", re.M)


def _expr(text: str) -> str:
    return _SUFFIX.sub(r"\1", text.replace("\\\n", " ")).strip()


def uapi_numbers(root: Path) -> dict[str, int]:
    """Every enum member and integer #define of HEADERS under ``root``, by name."""
    return header_numbers((root / header).read_text() for header in HEADERS)


def header_numbers(texts: Iterable[str]) -> dict[str, int]:
    """Every enum member and integer #define of the C header ``texts``, by name
    (a member without a value is the previous one's plus one)."""
    names: dict[str, Any] = {}
    defines: list[tuple[str, str | None, str]] = []
    for raw in texts:
        text = _COMMENT.sub(" ", raw)
        for body in _ENUM.findall(text):
            body = re.sub(r"^[ \t]*#.*$", "", body, flags=re.M)  # defines inside an enum
            previous = None
            for item in body.split(","):
                name, _, expr = (part.strip() for part in item.partition("="))
                if not name:
                    continue
                # a member without a value is the previous one's plus one
                value = expr or (f"({previous}) + 1" if previous else "0")
                defines.append((name, None, value))
                previous = name
        defines += [(m[0], m[1] or None, m[2]) for m in _DEFINE.findall(text)]
    pending = [d for d in defines if d[2] and d[2] != d[0]]
    while pending:  # a define may use one defined later in the file or another header
        left = []
        for name, params, body in pending:
            try:
                if params:
                    args = params.strip("()")
                    names[name] = eval(f"lambda {args}: {_expr(body)}", names)
                else:
                    value = eval(_expr(body), names)
                    if isinstance(value, int):
                        names[name] = value
            except (NameError, SyntaxError, TypeError):
                left.append((name, params, body))
        if len(left) == len(pending):
            break  # the rest are not integer expressions (types, strings, ...)
        pending = left
    return {k: v for k, v in names.items() if isinstance(v, int) and not isinstance(v, bool)}
