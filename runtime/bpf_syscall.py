"""The few bpf(2) commands flowc needs beyond bcc: tcx and netkit links, pinning,
link introspection, and a probe for netkit support.

Attribute layouts are kernel ABI (include/uapi/linux/bpf.h), filled into a
zeroed buffer the size of ``union bpf_attr``'s largest member we use.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import struct
from dataclasses import dataclass

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_DETACH = 34
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_NETKIT_PRIMARY = 54
BPF_NETKIT_PEER = 55
BPF_LINK_TYPE_TCX = 11
BPF_LINK_TYPE_NETKIT = 13
ATTR_SIZE = 128
LINK_INFO_SIZE = 256  # struct bpf_link_info is smaller; the kernel fills what it has

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


def bpf_packed(cmd: int, attr: bytes) -> int:
    """bpf(2) with an attribute block given as packed bytes (zero-padded to the
    kernel's size)."""
    return bpf_call(cmd, ct.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE))


def tcx_attach(prog_fd: int, ifindex: int, ingress: bool) -> int:
    """Attach with a tcx link; returns the link fd (the link lives while it is open or pinned)."""
    attach_type = BPF_TCX_INGRESS if ingress else BPF_TCX_EGRESS
    return bpf_packed(BPF_LINK_CREATE, struct.pack("=IIII", prog_fd, ifindex, attach_type, 0))


def netkit_attach(prog_fd: int, primary_ifindex: int, attach_type: int) -> int:
    """Attach to a netkit pair with a link; returns the link fd.

    ``attach_type`` is BPF_NETKIT_PRIMARY (the primary device's own program, run
    as the primary transmits toward the peer) or BPF_NETKIT_PEER (the peer's,
    run as the peer transmits toward the primary). Both name the pair by its
    primary device's ifindex: the kernel refuses the peer's (EACCES), a device
    that is not netkit (ENXIO), and an attach type it does not know (EINVAL).
    """
    return bpf_packed(
        BPF_LINK_CREATE, struct.pack("=IIII", prog_fd, primary_ifindex, attach_type, 0)
    )


# mov r0, 0; exit: the smallest program the verifier accepts, for probing hooks.
_RETURN_ZERO = struct.pack("=BBhi", 0xB7, 0, 0, 0) + struct.pack("=BBhi", 0x95, 0, 0, 0)


def probe_program() -> int:
    """Load ``return 0`` as a SCHED_CLS program (for probing hooks); returns its fd."""
    insns = ct.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    license_ = ct.create_string_buffer(b"GPL")
    attr = struct.pack(
        "=IIQQ", BPF_PROG_TYPE_SCHED_CLS, 2, ct.addressof(insns), ct.addressof(license_)
    )
    return bpf_packed(BPF_PROG_LOAD, attr)


def netkit_supported() -> bool:
    """Whether this kernel attaches programs to netkit devices (CONFIG_NETKIT, 6.7+).

    Asks for a netkit link on ifindex 0, which no device has: a kernel with
    netkit looks the device up and answers ENODEV; one without (its stub, or
    an attach type it does not know) answers EINVAL. Nothing is ever attached.
    """
    prog = probe_program()
    try:
        link = netkit_attach(prog, 0, BPF_NETKIT_PRIMARY)
    except BpfSyscallError as exc:
        if exc.errno == errno.ENODEV:
            return True
        if exc.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.close(prog)
    os.close(link)  # unreachable on any kernel so far; never leak a link
    return True


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the kernel says about a bpf link (``struct bpf_link_info``).

    Attributes:
        link_type: BPF_LINK_TYPE_* (tcx 11, netkit 13).
        link_id: the link's id.
        prog_id: the id of the program behind it.
        ifindex: the device (tcx, netkit links), 0 once the device is gone.
        attach_type: BPF_TCX_* / BPF_NETKIT_* (tcx, netkit links).
    """

    link_type: int
    link_id: int
    prog_id: int
    ifindex: int
    attach_type: int


def link_info(link_fd: int) -> LinkInfo:
    """The kernel's description of a link."""
    info = ct.create_string_buffer(LINK_INFO_SIZE)
    bpf_packed(
        BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", link_fd, LINK_INFO_SIZE, ct.addressof(info))
    )
    # type, id, prog_id, then the union; tcx and netkit both start {ifindex, attach_type}
    # at offset 16 (the union is 8-byte aligned).
    link_type, link_id, prog_id = struct.unpack_from("=III", info.raw, 0)
    ifindex, attach_type = struct.unpack_from("=II", info.raw, 16)
    return LinkInfo(link_type, link_id, prog_id, ifindex, attach_type)


def links() -> list[LinkInfo]:
    """Every bpf link in the kernel (walked by id; links that go away meanwhile are skipped)."""
    found: list[LinkInfo] = []
    next_id = 0
    while True:
        request = struct.pack("=III", next_id, 0, 0).ljust(ATTR_SIZE, b"\0")
        attr = ct.create_string_buffer(request, ATTR_SIZE)
        try:
            bpf_call(BPF_LINK_GET_NEXT_ID, attr)
        except BpfSyscallError as exc:
            if exc.errno == errno.ENOENT:
                return found
            raise
        (_, next_id) = struct.unpack_from("=II", attr.raw, 0)
        try:
            fd = bpf_packed(BPF_LINK_GET_FD_BY_ID, struct.pack("=I", next_id))
        except BpfSyscallError:
            continue  # released between the two calls
        try:
            found.append(link_info(fd))
        finally:
            os.close(fd)


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Swap the program behind a link atomically."""
    bpf_packed(BPF_LINK_UPDATE, struct.pack("=IIII", link_fd, new_prog_fd, 0, 0))


def link_detach(link_fd: int) -> None:
    """Detach a link from its hook (the fd stays valid but inert)."""
    bpf_packed(BPF_LINK_DETACH, struct.pack("=I", link_fd))


def obj_pin(fd: int, path: str) -> None:
    """Pin a BPF object (program, map, link) at a path in bpffs."""
    name = ct.create_string_buffer(path.encode())
    bpf_packed(BPF_OBJ_PIN, struct.pack("=QII", ct.addressof(name), fd, 0))


def obj_get(path: str) -> int:
    """Open a pinned BPF object; returns its fd."""
    name = ct.create_string_buffer(path.encode())
    return bpf_packed(BPF_OBJ_GET, struct.pack("=QII", ct.addressof(name), 0, 0))
