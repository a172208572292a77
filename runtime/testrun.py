"""BPF_PROG_TEST_RUN: run a loaded tc program on a frame in the kernel.

Uses the bpf(2) syscall directly (its ``test`` attribute layout is kernel
ABI), so it needs nothing beyond libc and works with whatever loaded the
program. Requires root (CAP_BPF + CAP_NET_ADMIN).
"""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.bpf_syscall import SYS_BPF, BpfSyscallError, bpf_call

BPF_PROG_TEST_RUN = 10
SKB_SIZE = 192  # sizeof(struct __sk_buff)
SKB_MARK = 8
SKB_CB0 = 48
SKB_CB1 = 52
CB_COMMITTED = 0x100
"""FLOWC_CB_COMMITTED: the packet committed its connection (skb->cb[1])."""
CB_UNTRACKED = 0x200
"""FLOWC_CB_UNTRACKED: its commit found the connection table full."""

_libc = ct.CDLL(None, use_errno=True)


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
        ct: skb->cb[1] of a program with connection tracking (0 otherwise): the
            packet's state + 1 in the low byte, CB_COMMITTED, CB_UNTRACKED.
    """

    retval: int
    rule: int | None
    mark: int
    duration_ns: int
    ct: int = 0

    @property
    def state(self) -> int | None:
        """The connection state the program gave the packet (None: not tracked)."""
        return (self.ct & 0xFF) - 1 if self.ct & 0xFF else None

    @property
    def committed(self) -> bool:
        """The packet committed its connection."""
        return bool(self.ct & CB_COMMITTED)

    @property
    def untracked(self) -> bool:
        """The packet would have committed, but the table was full."""
        return bool(self.ct & CB_UNTRACKED)


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
    cb1 = int.from_bytes(raw[SKB_CB1 : SKB_CB1 + 4], "little")
    return RunResult(attr.retval, cb0 - 1 if cb0 else None, mark, attr.duration, cb1)


def test_run_many(prog_fd: int, frames: Sequence[bytes]) -> list[tuple[int, int | None, int]]:
    """(retval, rule, mark) of one run of the program on each frame, in order.

    One BPF_PROG_TEST_RUN per frame (the syscall takes one frame), but the
    attribute block and buffers are built once and reused, so the Python cost
    per frame is a copy and the syscall: a 100,000-frame check spends its time
    in the kernel rather than in ctypes object construction.
    """
    if not frames:
        return []
    size = max(len(f) for f in frames)
    data_in = ct.create_string_buffer(size)
    data_out = ct.create_string_buffer(size + 256)
    ctx_in = ct.create_string_buffer(SKB_SIZE)
    ctx_out = ct.create_string_buffer(SKB_SIZE)
    attr = _TestAttr(
        prog_fd=prog_fd,
        data_in=ct.addressof(data_in),
        data_out=ct.addressof(data_out),
        repeat=1,
        ctx_size_in=SKB_SIZE,
        ctx_in=ct.addressof(ctx_in),
        ctx_out=ct.addressof(ctx_out),
    )
    syscall, ref, attr_size = _libc.syscall, ct.byref(attr), ct.sizeof(attr)
    memmove, in_address, out_size = ct.memmove, ct.addressof(data_in), len(data_out)
    out: list[tuple[int, int | None, int]] = []
    for data in frames:
        memmove(in_address, data, len(data))
        attr.data_size_in = len(data)
        # The kernel writes back how much it copied out: reset both sizes each run.
        attr.data_size_out = out_size
        attr.ctx_size_out = SKB_SIZE
        if syscall(SYS_BPF, BPF_PROG_TEST_RUN, ref, attr_size) < 0:
            err = ct.get_errno()
            raise TestRunError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
        raw = ctx_out.raw
        cb0 = int.from_bytes(raw[SKB_CB0 : SKB_CB0 + 4], "little")
        mark = int.from_bytes(raw[SKB_MARK : SKB_MARK + 4], "little")
        out.append((attr.retval, cb0 - 1 if cb0 else None, mark))
    return out
