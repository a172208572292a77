"""The BPF ABI as the compiler lays it out equals its Python side (backends/bpf/abi.py).

A tiny program compiled by bcc against ``bpf/`` writes ``sizeof`` and
``offsetof`` of every mirrored struct, and the value of every shared
constant, into an array map when BPF_PROG_TEST_RUN runs it; each is compared
with the ctypes mirror or the Python constant. A field renamed on one side
fails to compile; one moved, resized or padded differently fails here.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterator

import pytest

from backends.bpf import abi
from backends.bpf.emit import BPF_DIR
from backends.bpf.tables import DIR_CHUNK
from ir.conntrack import TcpState
from ir.fields import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    STATE_ESTABLISHED,
    STATE_INVALID,
    STATE_NEW,
    STATE_RELATED,
)
from ir.model import ALLOW, DROP, MARK, MIRROR, REDIRECT
from runtime.testrun import CB_COMMITTED, CB_UNTRACKED
from runtime.testrun import test_run as kernel_run
from tests.kernel.conftest import inside

pytestmark = pytest.mark.kernel

CONSTANTS = {
    "FLOWC_ACTION_ALLOW": abi.ACTION_CODES[ALLOW],
    "FLOWC_ACTION_DROP": abi.ACTION_CODES[DROP],
    "FLOWC_ACTION_REDIRECT": abi.ACTION_CODES[REDIRECT],
    "FLOWC_ACTION_MIRROR": abi.ACTION_CODES[MIRROR],
    "FLOWC_ACTION_MARK": abi.ACTION_CODES[MARK],
    "FLOWC_ACTION_F_PEER": abi.ACTION_F_PEER,
    "FLOWC_CONFIG_F_EVENTS": abi.CONFIG_F_EVENTS,
    "FLOWC_CONFIG_F_NO_MEMO": abi.CONFIG_F_NO_MEMO,
    "FLOWC_CONFIG_F_CT_GIVEN": abi.CONFIG_F_CT_GIVEN,
    "FLOWC_CONFIG_CT_GIVEN_SHIFT": abi.CONFIG_CT_GIVEN_SHIFT,
    "FLOWC_STATUS_COUNT": len(abi.STATUS_NAMES),
    **{f"FLOWC_STATUS_{name.upper()}": i for i, name in enumerate(abi.STATUS_NAMES)},
    "FLOWC_FRAG_NONE": FRAG_NONE,
    "FLOWC_FRAG_FIRST": FRAG_FIRST,
    "FLOWC_FRAG_LATER": FRAG_LATER,
    "FLOWC_BANKS": abi.BANKS,
    "FLOWC_DIR_CHUNK": DIR_CHUNK,
    "FLOWC_DIR_L1": abi.DIR_L1_ENTRIES,
    "FLOWC_LPM6_FULL": abi.LPM6_BANK_BITS + 128,
    "FLOWC_STATE_NEW": STATE_NEW,
    "FLOWC_STATE_ESTABLISHED": STATE_ESTABLISHED,
    "FLOWC_STATE_RELATED": STATE_RELATED,
    "FLOWC_STATE_INVALID": STATE_INVALID,
    **{f"FLOWC_TCP_{state.name}": state.value for state in TcpState},
    "FLOWC_CB_COMMITTED": CB_COMMITTED,
    "FLOWC_CB_UNTRACKED": CB_UNTRACKED,
}


def expectations() -> Iterator[tuple[str, int]]:
    """(C expression, the value Python expects of it), for every struct and constant."""
    for struct, mirror in abi.MIRRORS.items():
        yield f"sizeof(struct {struct})", ct.sizeof(mirror)
        for name, *_ in mirror._fields_:
            yield f"__builtin_offsetof(struct {struct}, {name})", getattr(mirror, name).offset
            yield f"sizeof(((struct {struct} *)0)->{name})", getattr(mirror, name).size
    yield from CONSTANTS.items()


def program(checks: list[tuple[str, int]]) -> str:
    stores = "\n".join(f"\tflowc_abi_put({i}, {expr});" for i, (expr, _) in enumerate(checks))
    return f"""
#include "flowc_common.h"

BPF_ARRAY(flowc_abi_values, __u64, {len(checks)});

static __always_inline void flowc_abi_put(__u32 i, __u64 value)
{{
	__u64 *slot = flowc_abi_values.lookup(&i);

	if (slot)
		*slot = value;
}}

int flowc_abi(struct __sk_buff *skb)
{{
{stores}
	return 0;
}}
"""


def test_c_layout_matches_the_python_abi(run_netns: str) -> None:
    from bcc import BPF

    checks = list(expectations())
    bpf = BPF(text=program(checks).encode(), cflags=[f"-I{BPF_DIR}"])
    try:
        fn = bpf.load_func(b"flowc_abi", BPF.SCHED_CLS)
        with inside(run_netns):
            kernel_run(fn.fd, b"\x02" * 12 + b"\x88\xb5" + b"\0" * 46)  # local experimental
        values = bpf[b"flowc_abi_values"]
        got = {expr: values[ct.c_uint32(i)].value for i, (expr, _) in enumerate(checks)}
    finally:
        bpf.cleanup()
    assert got == dict(checks)
