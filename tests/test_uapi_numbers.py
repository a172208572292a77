"""The netlink numbers flowc writes, against the kernel's own uapi headers.

The byte tests in test_flower_netlink.py take attribute numbers from the very
tables they check, so a table with one entry left out would shift every later
number and still pass them (only the guest tier would notice). This test
reads Debian's installed kernel headers (linux/pkt_cls.h, rtnetlink.h,
pkt_sched.h, tc_act/*.h, ...) with a small C enum/#define evaluator and
compares every TCA_*/TC_*/RTM_*/NLM*/ETH_P_* number flowc uses, by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.uapi import HEADER_DIRS, header_numbers, uapi_numbers


def flowc_numbers() -> dict[str, dict[str, int]]:
    """The numbers flowc uses, by where they are defined: each netlink
    attribute table (name -> number by position, as pyroute2 reads it) and
    each module's named constants. Point this at new tables when they move
    (a flower key registry, say); the test below needs no change."""
    from backends import targets
    from backends.flower import keys
    from backends.flower.keys import key_attributes
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
        "backends.flower.keys (TCA_FLOWER_KEY_*)": {a.name: a.number for a in key_attributes()},
        "flower_tcmsg (TCA_*)": table(fn.flower_tcmsg.nla_map),
        "flower_options (TCA_FLOWER_*)": table(fn.flower_options.nla_map),
        "tca_act (TCA_ACT_*)": table(fn.tca_act_prio.tca_act.nla_map),
        "gact_options (TCA_GACT_*)": table(fn.gact_options.nla_map),
        "mirred_options (TCA_MIRRED_*)": table(fn.mirred_options.nla_map),
        "skbedit_options (TCA_SKBEDIT_*)": table(fn.skbedit_options.nla_map),
        "ct_options (TCA_CT_*)": table(fn.ct_options.nla_map),
        "backends.flower.keys (ct_state flags)": {
            f"TCA_FLOWER_KEY_CT_FLAGS_{name}": getattr(keys, f"CT_FLAG_{name}")
            for name in ("NEW", "ESTABLISHED", "RELATED", "TRACKED", "INVALID", "REPLY")
        },
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


def test_the_evaluator_reads_positions_and_explicit_values() -> None:
    text = "enum {\n\tTCA_FLOWER_UNSPEC,\n\tTCA_FLOWER_A, /* x, y */\n\tTCA_FLOWER_B = 7,\n"
    text += (
        "\tTCA_FLOWER_C,\n\t__TCA_FLOWER_MAX,\n};\n#define TCA_FLOWER_MAX (__TCA_FLOWER_MAX - 1)\n"
    )
    numbers = header_numbers([text])
    assert {k: v for k, v in numbers.items() if not k.startswith("__")} == {
        "TCA_FLOWER_UNSPEC": 0,
        "TCA_FLOWER_A": 1,
        "TCA_FLOWER_B": 7,
        "TCA_FLOWER_C": 8,
        "TCA_FLOWER_MAX": 8,
    }


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


NETKIT_HEADERS = ("bpf.h", "if_link.h", "rtnetlink.h")
NETKIT_HEADER_DIRS = [
    d for d in HEADER_DIRS if "BPF_NETKIT_PEER" in (Path(d) / "bpf.h").read_text()
]


def netkit_numbers() -> dict[str, dict[str, int]]:
    """The bpf(2) and rtnetlink numbers of flowc's link attach and netkit pairs
    (attach types, link types, commands, IFLA_* attributes, netkit's verdicts
    and modes), which live in headers the tc test above does not read."""
    from backends import targets
    from runtime import bpf_syscall, netkit

    pattern = re.compile(r"^(BPF|IFLA|NETKIT|RTM)_[A-Z0-9_]+$")

    def constants(module: Any) -> dict[str, int]:
        return {
            k: v
            for k, v in vars(module).items()
            if pattern.match(k) and isinstance(v, int) and not isinstance(v, bool)
        }

    return {
        "runtime.bpf_syscall": constants(bpf_syscall),
        "runtime.netkit": constants(netkit),
        "backends.targets": constants(targets),
    }


def test_netkit_numbers_are_the_kernels() -> None:
    if not NETKIT_HEADER_DIRS:
        pytest.skip("no kernel headers with netkit (linux-headers-6.12.*-common); run setup.sh")
    root = Path(NETKIT_HEADER_DIRS[-1])
    kernel = header_numbers((root / header).read_text() for header in NETKIT_HEADERS)
    checked = netkit_numbers()
    assert {"BPF_NETKIT_PRIMARY", "BPF_NETKIT_PEER"} <= set(checked["runtime.bpf_syscall"])
    assert {"IFLA_NETKIT_PEER_INFO", "NETKIT_L2"} <= set(checked["runtime.netkit"])
    wrong = [
        f"{where}: {name} is {number}, the kernel's {kernel.get(name, '(absent)')}"
        for where, numbers in checked.items()
        for name, number in numbers.items()
        if kernel.get(name) != number
    ]
    assert wrong == []
