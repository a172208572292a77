"""Raw netlink for flowc's tc requests: message flags, the header, a socket with
extended acks, splitting replies, and the kernel's extack text.

Both the flower installer and the cls_bpf attach speak NETLINK_ROUTE with
requests flowc encodes itself; what the protocol is lives here once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
# Flags of an NLMSG_ERROR reply (the same bits mean other things on requests).
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1
SO_RCVBUFFORCE = 33

NLMSGHDR = struct.Struct("=IHHII")
"""struct nlmsghdr: length, type, flags, sequence number, port id."""

REPLY_TIMEOUT_S = 60.0
"""The kernel answers within milliseconds; a minute without an answer is a lost
reply, reported, never an endless wait."""


def header(length: int, msg_type: int, flags: int, seq: int) -> bytes:
    """An nlmsghdr for a message of ``length`` bytes in all."""
    return NLMSGHDR.pack(length, msg_type, flags, seq, 0)


def route_socket(*, cap_ack: bool = False, rcvbuf: int | None = None) -> socket.socket:
    """A bound NETLINK_ROUTE socket with extended acks (the kernel's error text) on,
    replies capped to the error when ``cap_ack``, and a bounded wait for replies."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    if cap_ack:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    if rcvbuf is not None:
        with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN; the default still works
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    sock.bind((0, 0))
    sock.settimeout(REPLY_TIMEOUT_S)
    return sock


def messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split a netlink buffer into (type, flags, seq, payload)."""
    return [(t, f, s, p) for t, f, s, p, _raw in messages_raw(data)]


def messages_raw(data: bytes) -> list[tuple[int, int, int, bytes, bytes]]:
    """Split a netlink buffer: (type, flags, seq, payload, whole message)."""
    out = []
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size:
            break
        out.append((msg_type, flags, seq, data[off + 16 : off + length], data[off : off + length]))
        off += (length + 3) & ~3
    return out


def error_code(payload: bytes) -> int:
    """The (negative errno, or 0 for an ack) of an NLMSG_ERROR payload."""
    (error,) = struct.unpack_from("=i", payload, 0)
    return int(error)


def extack_text(flags: int, payload: bytes) -> str:
    """The NLMSGERR_ATTR_MSG of an error message, or ''."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # struct nlmsgerr: int error + the request's nlmsghdr (+ its payload unless capped).
    off = 4 + 16
    if not flags & NLM_F_CAPPED:
        (req_len,) = struct.unpack_from("=I", payload, 4)
        off = 4 + ((req_len + 3) & ~3)
    while off + 4 <= len(payload):
        nla_len, nla_type = struct.unpack_from("=HH", payload, off)
        if nla_len < 4:
            break
        if nla_type & 0x3FFF == NLMSGERR_ATTR_MSG:
            return payload[off + 4 : off + nla_len].rstrip(b"\0").decode(errors="replace")
        off += (nla_len + 3) & ~3
    return ""


def request(data: bytes, seq: int, *, max_replies: int = 64) -> bool:
    """Send one request that asks for an ack and wait for that ack.

    Returns True on the ack, False when ``max_replies`` messages came and none
    was it; raises OSError with the kernel's extack text (or strerror) when the
    kernel refused the request.
    """
    with route_socket() as sock:
        sock.sendall(data)
        for _ in range(max_replies):
            for msg_type, ack_flags, reply_seq, payload in messages(sock.recv(65536)):
                if msg_type != NLMSG_ERROR or reply_seq != seq:
                    continue
                error = error_code(payload)
                if error:
                    raise OSError(-error, extack_text(ack_flags, payload) or os.strerror(-error))
                return True
    return False
