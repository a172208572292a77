"""The few bpf(2) commands flowc needs beyond bcc: tcx links and pinning.

Attribute layouts are kernel ABI (include/uapi/linux/bpf.h), filled into a
zeroed buffer the size of ``union bpf_attr``'s largest member we use.
"""

from __future__ import annotations

import ctypes as ct
import os
import struct

SYS_BPF = 321  # x86_64
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
ATTR_SIZE = 128

_libc = ct.CDLL(None, use_errno=True)


class BpfSyscallError(OSError):
    """A bpf(2) command failed; ``errno`` says why."""


def bpf_call(cmd: int, attr: ct.Structure | ct.Array[ct.c_char]) -> int:
    """bpf(cmd, attr): the kernel reads and may write ``attr`` in place."""
    rc: int = _libc.syscall(SYS_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if rc < 0:
        err = ct.get_errno()
        raise BpfSyscallError(err, os.strerror(err))
    return rc


def _bpf(cmd: int, attr: bytes) -> int:
    return bpf_call(cmd, ct.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE))


def tcx_attach(prog_fd: int, ifindex: int, ingress: bool) -> int:
    """Attach with a tcx link; returns the link fd (the link lives while it is open or pinned)."""
    attach_type = BPF_TCX_INGRESS if ingress else BPF_TCX_EGRESS
    return _bpf(BPF_LINK_CREATE, struct.pack("=IIII", prog_fd, ifindex, attach_type, 0))


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program behind a link atomically."""
    _bpf(BPF_LINK_UPDATE, struct.pack("=IIII", link_fd, new_prog_fd, 0, 0))


def link_detach(link_fd: int) -> None:
    """Detach a link from its hook (the fd stays valid but inert)."""
    _bpf(BPF_LINK_DETACH, struct.pack("=I", link_fd))


def obj_pin(fd: int, path: str) -> None:
    """Pin a BPF object (program, map, link) at a path in bpffs."""
    name = ct.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, struct.pack("=QII", ct.addressof(name), fd, 0))


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns its fd."""
    name = ct.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, struct.pack("=QII", ct.addressof(name), 0, 0))
