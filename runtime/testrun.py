"""BPF_PROG_TEST_RUN: run a loaded tc program on a frame in the kernel.

Uses the bpf(2) syscall directly (its ``test`` attribute layout is kernel
ABI), so it needs nothing beyond libc and works with whatever loaded the
program. Requires root (CAP_BPF + CAP_NET_ADMIN).
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

from runtime.bpf_syscall import BpfSyscallError, bpf_call

BPF_PROG_TEST_RUN = 10
SKB_SIZE = 192  # sizeof(struct __sk_buff)
SKB_MARK = 8
SKB_CB0 = 48


class _TestAttr(ct.Structure):
    _fields_ = (
        ("prog_fd", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("data_in", ct.c_uint64),
        ("data_out", ct.c_uint64),
        ("repeat", ct.c_uint32),
        ("duration", ct.c_uint32),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("ctx_in", ct.c_uint64),
        ("ctx_out", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
        ("_pad", ct.c_uint32),
    )


class TestRunError(OSError):
    """The kernel refused the test run."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True, slots=True)
class RunResult:
    """What the program did with one frame.

    Attributes:
        retval: the tc verdict (TC_ACT_*).
        rule: the deciding rule id, or None when no rule decided (non-IP, malformed).
        mark: skb->mark afterwards.
        duration_ns: the kernel's average time per repetition.
    """

    retval: int
    rule: int | None
    mark: int
    duration_ns: int


def test_run(prog_fd: int, frame: bytes, *, repeat: int = 1) -> RunResult:
    """Run the program ``repeat`` times on ``frame``; the result of the last run."""
    data_in = ct.create_string_buffer(frame, len(frame))
    data_out = ct.create_string_buffer(len(frame) + 256)
    ctx_in = ct.create_string_buffer(SKB_SIZE)
    ctx_out = ct.create_string_buffer(SKB_SIZE)
    attr = _TestAttr(
        prog_fd=prog_fd,
        data_size_in=len(frame),
        data_size_out=len(data_out),
        data_in=ct.addressof(data_in),
        data_out=ct.addressof(data_out),
        repeat=repeat,
        ctx_size_in=SKB_SIZE,
        ctx_size_out=SKB_SIZE,
        ctx_in=ct.addressof(ctx_in),
        ctx_out=ct.addressof(ctx_out),
    )
    try:
        bpf_call(BPF_PROG_TEST_RUN, attr)
    except BpfSyscallError as exc:
        raise TestRunError(exc.errno, f"BPF_PROG_TEST_RUN failed: {exc.strerror}") from None
    raw = ctx_out.raw
    cb0 = int.from_bytes(raw[SKB_CB0 : SKB_CB0 + 4], "little")
    mark = int.from_bytes(raw[SKB_MARK : SKB_MARK + 4], "little")
    return RunResult(attr.retval, cb0 - 1 if cb0 else None, mark, attr.duration)
