"""The netlink numbers flowc writes, against the kernel's own uapi headers.

The byte tests in test_flower_netlink.py take attribute numbers from the very
tables they check, so a table with one entry left out would shift every later
number and still pass them (only the guest tier would notice). This test
reads Debian's installed kernel headers (linux/pkt_cls.h, rtnetlink.h,
pkt_sched.h, tc_act/*.h, ...) with a small C enum/#define evaluator and
compares every TCA_*/TC_*/RTM_*/NLM*/ETH_P_* number flowc uses, by name.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

import pytest

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
)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_ENUM = re.compile(r"\benum\b[^{;]*\{(.*?)\}", re.S)
_DEFINE = re.compile(r"^#define[ \t]+(\w+)(\([\w, ]*\))?[ \t]*(.*)$", re.M)


def _expr(text: str) -> str:
    return _SUFFIX.sub(r"\1", text.replace("\\\n", " ")).strip()


def uapi_numbers(root: Path) -> dict[str, int]:
    """Every enum member and integer #define of HEADERS under ``root``, by name."""
    names: dict[str, Any] = {}
    defines: list[tuple[str, str | None, str]] = []
    for header in HEADERS:
        text = _COMMENT.sub(" ", (root / header).read_text())
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


def flowc_numbers() -> dict[str, dict[str, int]]:
    """The numbers flowc uses, by where they are defined: each netlink
    attribute table (name -> number by position, as pyroute2 reads it) and
    each module's named constants. Point this at new tables when they move
    (a flower key registry, say); the test below needs no change."""
    from backends import targets
    from runtime import flower_netlink as fn
    from runtime import flower_wire, netlink

    def table(nla_map: tuple[tuple[str, str], ...]) -> dict[str, int]:
        return {name: number for number, (name, _kind) in enumerate(nla_map)}

    def constants(module: Any) -> dict[str, int]:
        pattern = re.compile(r"^(TCA|TC|RTM|NLM|NLMSG|ETH_P)_[A-Z0-9_]+$")
        return {
            k: v
            for k, v in vars(module).items()
            if pattern.match(k) and isinstance(v, int) and not isinstance(v, bool)
        }

    return {
        "flower_tcmsg (TCA_*)": table(fn.flower_tcmsg.nla_map),
        "flower_options (TCA_FLOWER_*)": table(fn.flower_options.nla_map),
        "tca_act (TCA_ACT_*)": table(fn.tca_act_prio.tca_act.nla_map),
        "gact_options (TCA_GACT_*)": table(fn.gact_options.nla_map),
        "mirred_options (TCA_MIRRED_*)": table(fn.mirred_options.nla_map),
        "skbedit_options (TCA_SKBEDIT_*)": table(fn.skbedit_options.nla_map),
        "runtime.flower_netlink": constants(fn),
        "runtime.flower_wire": constants(flower_wire),
        "runtime.netlink": constants(netlink),
        "backends.targets": constants(targets),
    }


def test_the_evaluator_reads_known_numbers() -> None:
    """A self-check of the parser on numbers nobody will renumber."""
    if not HEADER_DIRS:
        pytest.skip("no Debian kernel headers (/usr/src/linux-headers-*-common); run setup.sh")
    numbers = uapi_numbers(Path(HEADER_DIRS[-1]))
    assert numbers["TCA_KIND"] == 1 and numbers["TCA_FLOWER_CLASSID"] == 1
    assert numbers["RTM_NEWTFILTER"] == 44 and numbers["TC_ACT_SHOT"] == 2
    assert numbers["TC_H_CLSACT"] == 0xFFFFFFF1 and numbers["TC_ACT_GOTO_CHAIN"] == 2 << 28


@pytest.mark.parametrize("headers", HEADER_DIRS or ["(none)"])
def test_flowc_numbers_are_the_kernels(headers: str) -> None:
    if headers == "(none)":
        pytest.skip("no Debian kernel headers (/usr/src/linux-headers-*-common); run setup.sh")
    kernel = uapi_numbers(Path(headers))
    wrong = [
        f"{where}: {name} is {number}, the kernel's {kernel[name]}"
        for where, numbers in flowc_numbers().items()
        for name, number in numbers.items()
        if name in kernel and kernel[name] != number
    ]
    unknown = [
        f"{where}: {name} ({number}) is not in {headers}"
        for where, numbers in flowc_numbers().items()
        for name, number in numbers.items()
        if name not in kernel
    ]
    assert wrong == [] and unknown == []
