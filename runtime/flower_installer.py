"""Install, replace, delete and dump flower filters on a clsact hook, in batches.

Requests are encoded with :mod:`runtime.flower_wire` (precompiled layouts,
byte-equal to pyroute2's message classes in :mod:`runtime.flower_netlink`,
which stay selectable with ``codec="pyroute2"``) and sent many per
``sendmsg`` on one NETLINK_ROUTE socket with extended acks on, so a batch
of N filters costs a few system calls instead of N round trips. Requests ask
for no ack: the kernel answers a refused request anyway, with its extack text
(matched to the filter and its DSL line by sequence number), and each batch
ends in an acked NLMSG_NOOP fence whose answer says every refusal has arrived.

After an install, :meth:`FlowerInstaller.verify` dumps the hook and compares
every filter with the request, and checks ``in_hw`` when hardware was asked
for (``skip_sw``): Open vSwitch learned that a swallowed error otherwise
records a rule as offloaded when it is not.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from backends.flower.rules import (
    ETH_P_ALL,
    PASS,
    FlowerAction,
    FlowerFilter,
    FlowerMatch,
    InstallFlags,
)
from runtime.flower_netlink import (
    RTM_DELTFILTER,
    RTM_GETTFILTER,
    RTM_NEWTFILTER,
    FlowerCodecError,
    InstalledFilter,
    decode_filter,
    delete_message,
    encode_filter,
    flower_tcmsg,
    hook_parent,
    message_bytes,
)
from runtime.flower_wire import delete_filter_request, new_filter_request
from runtime.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSGHDR,
    REPLY_TIMEOUT_S,
    error_code,
    extack_text,
    messages,
    messages_raw,
    route_socket,
)

# Requests per sendmsg: large enough to amortise the system call, small enough
# that the acks (36 bytes each, more with extack) fit the receive buffer.
DEFAULT_BATCH = 512
_RCVBUF = 8 << 20


class FlowerInstallError(RuntimeError):
    """The kernel refused filters; ``failures`` pairs each with its error."""

    def __init__(self, failures: list[FilterFailure]) -> None:
        self.failures = failures
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(f"{first}{more}")


@dataclass(frozen=True, slots=True)
class FilterFailure:
    """One filter the kernel refused (or that read back differently)."""

    filter: FlowerFilter
    errno: int
    message: str

    def __str__(self) -> str:
        where = f" ({self.filter.origin}: {self.filter.origin.text})" if self.filter.origin else ""
        err = f"{os.strerror(self.errno)}: " if self.errno else ""
        return f"{self.filter.label()}{where}: {err}{self.message}"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A difference between what was requested and what the kernel holds."""

    filter: FlowerFilter
    problem: str

    def __str__(self) -> str:
        where = f" ({self.filter.origin})" if self.filter.origin else ""
        return f"{self.filter.label()}{where}: {self.problem}"


class FlowerInstaller:
    """Flower filters on one device's clsact hook (ingress or egress).

    Use as a context manager, or call :meth:`close`. Device names in actions
    (mirred) resolve to ifindexes when the request is encoded.
    """

    def __init__(
        self, device: str, direction: str, *, batch: int = DEFAULT_BATCH, codec: str = "wire"
    ) -> None:
        if direction not in ("ingress", "egress"):
            raise ValueError(f"direction must be ingress or egress, not {direction!r}")
        if codec not in ("wire", "pyroute2"):
            raise ValueError(f"codec must be wire or pyroute2, not {codec!r}")
        self.codec = codec
        try:
            self.ifindex = socket.if_nametoindex(device)
        except OSError:
            raise FlowerInstallError(
                [FilterFailure(_no_filter(), errno.ENODEV, f"no device {device!r}")]
            ) from None
        self.device = device
        self.direction = direction
        self.batch = batch
        self.sock = route_socket(cap_ack=True, rcvbuf=_RCVBUF)
        self.seq = 1

    def __enter__(self) -> FlowerInstaller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket."""
        self.sock.close()

    # ------------------------------------------------------------------ setup
    def ensure_clsact(self) -> None:
        """Add the clsact qdisc to the device unless it has one."""
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", self.ifindex)
            except NetlinkError as err:
                if err.code != errno.EEXIST:
                    raise FlowerInstallError(
                        [FilterFailure(_no_filter(), err.code, f"clsact on {self.device}: {err}")]
                    ) from None

    # ---------------------------------------------------------------- changes
    def add(self, filters: Sequence[FlowerFilter], *, replace: bool = False) -> None:
        """Create ``filters`` (or with ``replace``, create or replace each in place).

        Raises FlowerInstallError listing every filter the kernel refused; the
        others stay installed (a batch is not a transaction in the kernel).
        """
        # No NLM_F_ACK: the kernel answers a failed request anyway (with its
        # extack), and the fence that ends each batch says when all answers are in.
        flags = NLM_F_REQUEST | NLM_F_CREATE
        flags |= NLM_F_REPLACE if replace else NLM_F_EXCL
        failures: list[FilterFailure] = []
        for start in range(0, len(filters), self.batch):
            chunk = filters[start : start + self.batch]
            messages: list[bytes | None] = []
            for f in chunk:
                try:
                    messages.append(self._new_request(f, flags))
                except OSError:
                    failures.append(
                        FilterFailure(
                            f, errno.ENODEV, f"action device {f.action.device!r} does not exist"
                        )
                    )
                    messages.append(None)
                except FlowerCodecError as err:
                    failures.append(FilterFailure(f, errno.EINVAL, str(err)))
                    messages.append(None)
            failures += self._transact(chunk, messages)
        if failures:
            raise FlowerInstallError(failures)

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def _new_request(self, f: FlowerFilter, flags: int) -> bytes:
        if self.codec == "wire":
            return new_filter_request(
                f, self.ifindex, self.direction, flags=flags, seq=self._next_seq()
            )
        msg = encode_filter(f, self.ifindex, self.direction, socket.if_nametoindex)
        return message_bytes(msg, RTM_NEWTFILTER, flags, self._next_seq())

    def _delete_request(self, f: FlowerFilter, flags: int) -> bytes:
        if self.codec == "wire":
            return delete_filter_request(
                f, self.ifindex, self.direction, flags=flags, seq=self._next_seq()
            )
        msg = delete_message(f, self.ifindex, self.direction)
        return message_bytes(msg, RTM_DELTFILTER, flags, self._next_seq())

    def delete(self, filters: Sequence[FlowerFilter], *, missing_ok: bool = True) -> None:
        """Delete ``filters`` (by chain, priority, protocol and handle)."""
        failures: list[FilterFailure] = []
        for start in range(0, len(filters), self.batch):
            chunk = filters[start : start + self.batch]
            flags = NLM_F_REQUEST  # failures are answered; the batch's fence ends it
            messages: list[bytes | None] = [self._delete_request(f, flags) for f in chunk]
            for failure in self._transact(chunk, messages):
                if missing_ok and failure.errno in (errno.ENOENT, errno.EINVAL):
                    continue
                failures.append(failure)
        if failures:
            raise FlowerInstallError(failures)

    def _transact(
        self, filters: Sequence[FlowerFilter], messages: Sequence[bytes | None]
    ) -> list[FilterFailure]:
        """Send the encoded requests, and a fence, in one buffer; collect the errors.

        The requests carry no NLM_F_ACK, so the kernel writes an answer only for
        a request it refuses; the fence (an NLMSG_NOOP with NLM_F_ACK, the last
        message) is acknowledged after every request before it was processed,
        in order, so its ack means every refusal has arrived. That saves the
        kernel an ack per filter and this side parsing them (what ``tc -batch``
        pays), without losing any error.
        """
        by_seq: dict[int, FlowerFilter] = {}
        for f, msg in zip(filters, messages, strict=True):
            if msg is not None:
                (seq,) = struct.unpack_from("=I", msg, 8)
                by_seq[seq] = f
        if not by_seq:
            return []
        fence_seq = self._next_seq()
        fence = NLMSGHDR.pack(NLMSGHDR.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, fence_seq, 0)
        self.sock.sendall(b"".join(m for m in messages if m is not None) + fence)
        failures = []
        fenced = False
        while not fenced:
            for seq, code, text in self._read_acks():
                if seq == fence_seq:
                    fenced = True
                elif seq in by_seq and code:
                    failures.append(FilterFailure(by_seq[seq], code, text or os.strerror(code)))
        return failures

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except TimeoutError:
            raise FlowerInstallError(
                [
                    FilterFailure(
                        _no_filter(),
                        errno.ETIMEDOUT,
                        f"no answer from the kernel in {REPLY_TIMEOUT_S:.0f} s",
                    )
                ]
            ) from None

    def _read_acks(self) -> list[tuple[int, int, str]]:
        data = self._recv()
        out = []
        for msg_type, flags, seq, payload in messages(data):
            if msg_type != NLMSG_ERROR:
                continue
            error = error_code(payload)
            out.append((seq, -error, extack_text(flags, payload)))
        return out

    # ------------------------------------------------------------------- read
    def dump(
        self, chain: int | None = None, *, unreadable: list[str] | None = None
    ) -> list[InstalledFilter]:
        """Every flower filter on the hook (of one chain, or all), with statistics.

        A filter with keys or actions flowc does not model raises
        FlowerCodecError, unless ``unreadable`` is given: then the reason is
        appended there and the dump goes on (an audit lists them).
        """
        msg = flower_tcmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = self.ifindex
        msg["parent"] = hook_parent(self.direction)
        msg["attrs"] = [] if chain is None else [["TCA_CHAIN", chain]]
        seq = self._next_seq()
        self.sock.sendall(message_bytes(msg, RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, seq))
        out: list[InstalledFilter] = []
        done = False
        while not done:
            for msg_type, flags, got_seq, payload, raw in messages_raw(self._recv()):
                if got_seq != seq:
                    continue
                if msg_type == NLMSG_DONE:
                    done = True
                    break
                if msg_type == NLMSG_ERROR:
                    error = error_code(payload)
                    if error:
                        raise FlowerInstallError(
                            [FilterFailure(_no_filter(), -error, extack_text(flags, payload))]
                        )
                    continue
                decoded = flower_tcmsg(raw)
                decoded.decode()
                if decoded.get_attr("TCA_KIND") != "flower":
                    continue
                try:
                    installed = decode_filter(decoded, _index_name)
                except FlowerCodecError as err:
                    if unreadable is None:
                        raise
                    unreadable.append(str(err))
                    continue
                if installed is not None:
                    out.append(installed)
        return out

    def verify(self, requested: Iterable[FlowerFilter]) -> list[Mismatch]:
        """Compare the hook's filters with ``requested``: missing, different, or
        asked for in hardware (skip_sw) but not there."""
        installed = {(i.filter.chain, i.filter.prio, i.filter.handle): i for i in self.dump()}
        problems = []
        for want in requested:
            have = installed.get((want.chain, want.prio, want.handle))
            if have is None:
                problems.append(Mismatch(want, "not installed"))
                continue
            got = have.filter
            if got != dataclasses.replace(want, origin=None):
                problems.append(Mismatch(want, f"reads back as {got.match} -> {got.action}"))
            elif want.flags == InstallFlags.SKIP_SW and not (have.in_hw and have.in_hw_count > 0):
                problems.append(
                    Mismatch(want, "asked for in hardware, but the device does not hold it")
                )
        return problems

    def install(self, filters: Sequence[FlowerFilter], *, replace: bool = False) -> None:
        """Add ``filters`` and verify them; raise FlowerInstallError on any refusal or mismatch."""
        self.ensure_clsact()
        self.add(filters, replace=replace)
        problems = self.verify(filters)
        if problems:
            raise FlowerInstallError([FilterFailure(p.filter, 0, p.problem) for p in problems])

    def flush(self, *, only_flowc: bool = True) -> int:
        """Delete the hook's flower filters (only those with flowc's cookie by default);
        returns how many were deleted."""
        victims = [i.filter for i in self.dump() if i.filter.cookie is not None or not only_flowc]
        self.delete(victims)
        return len(victims)


def _no_filter() -> FlowerFilter:
    return FlowerFilter(0, 1, 0, FlowerMatch(ETH_P_ALL), FlowerAction(PASS))


def _index_name(ifindex: int) -> str:
    return socket.if_indextoname(ifindex)
