"""The host's BPF connection table from user space: open, list, flush, gc.

Every flowc program with connection tracking (bpf/flowc_ct.h) shares one
``BPF_MAP_TYPE_HASH`` pinned at :data:`backends.bpf.conntrack.CT_PIN`. This
module reads it with the bpf(2) syscall alone (no bcc), for ``flowc ct`` and
the agent.

Expiry is lazy in the program: a packet that finds its connection expired
removes it. An entry nobody asks about again stays (and counts against the
table's capacity, as in the reference) until :func:`gc` removes it; the agent
calls :func:`gc` periodically, as ``ConnTracker.gc`` is the reference's.
Times are CLOCK_MONOTONIC_COARSE nanoseconds, the program's clock
(bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC as of the last tick), which
:func:`table_now_ns` reads; CLOCK_MONOTONIC runs ahead of it by less than one
tick, so a caller that passes CLOCK_MONOTONIC times (the agent's collector)
may remove an entry up to one tick before the program would.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from backends.bpf.abi import CtEntry, CtKey
from backends.bpf.conntrack import CT_PIN
from ir.conntrack import Connection, ConnKey, TcpState, is_icmp_of
from ir.fields import FAMILY_IPV4
from runtime.bpf_syscall import BPF_OBJ_GET_INFO_BY_FD, BpfSyscallError, bpf_packed, obj_get

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPFFS = "/sys/fs/bpf"
CLOCK_MONOTONIC_COARSE = 6
"""Linux's clock id (include/uapi/linux/time.h); the time module does not name it."""


class CtTableError(OSError):
    """The connection table cannot be opened or read (not pinned, not root)."""


def ensure_bpffs(root: str = BPFFS) -> None:
    """Mount bpffs at ``root`` unless it is mounted (pinning needs it); root only."""
    with open("/proc/mounts") as mounts:
        if any(line.split()[1:3] == [root, "bpf"] for line in mounts):
            return
    done = subprocess.run(
        ["mount", "-t", "bpf", "bpf", root], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise CtTableError(
            errno.EPERM, f"cannot mount bpffs at {root}: {done.stderr.strip() or 'mount failed'}"
        )


def conn_key(key: CtKey) -> ConnKey:
    """The reference's key of a table key, as the key reads (not turned round)."""
    width = 4 if key.family == FAMILY_IPV4 else 16
    return ConnKey(
        key.family,
        key.proto,
        int.from_bytes(bytes(key.src)[:width], "big"),
        int.from_bytes(bytes(key.dst)[:width], "big"),
        key.sport,
        key.dport,
    )


def ct_key(key: ConnKey) -> CtKey:
    """The table key spelling ``key`` as it reads (not made canonical)."""
    width = 4 if key.family == FAMILY_IPV4 else 16
    out = CtKey(family=key.family, proto=key.proto, sport=key.sport, dport=key.dport)
    out.src[:width] = list(key.src.to_bytes(width, "big"))
    out.dst[:width] = list(key.dst.to_bytes(width, "big"))
    return out


def _address_words(address: ct.Array[ct.c_uint8]) -> tuple[int, ...]:
    """flowc_ct_address_order()'s view of a key's address: four native-endian words."""
    return struct.unpack("=4I", bytes(address))


def table_key(key: ConnKey) -> tuple[CtKey, int]:
    """The table key a connection with original-direction ``key`` is stored
    under, and its entry's ``swapped`` (flowc_ct_canonical() in bpf/flowc_ct.h:
    of the tuple and its reverse, the one whose (src, sport) is not above
    (dst, dport); ICMP keys as they are)."""
    raw = ct_key(key)
    if is_icmp_of(key.family, key.proto):  # flowc_ct_is_icmp(): not canonical
        return raw, 0
    if (_address_words(raw.src), raw.sport) <= (_address_words(raw.dst), raw.dport):
        return raw, 0
    return ct_key(key.reversed()), 1


def connection(key: CtKey, entry: CtEntry) -> Connection:
    """The reference's :class:`Connection` of a table entry (its key the
    original direction's, turned back when the entry says it was swapped)."""
    stored = conn_key(key)
    return Connection(
        stored.reversed() if entry.swapped else stored,
        replied=bool(entry.replied),
        tcp=TcpState(entry.tcp),
        fin_from=entry.fin_from,
        expires_ns=entry.expires_ns,
        created_ns=entry.created_ns,
        last_ns=entry.last_ns,
        packets=(entry.packets_orig, entry.packets_reply),
        hook_id=entry.hook,
        start_flags=entry.start_flags,
    )


BPF_MAP_TYPE_HASH = 1
MAP_INFO_SIZE = 96  # struct bpf_map_info is larger; the kernel fills what it has


@dataclass(frozen=True, slots=True)
class MapShape:
    """What a map was created with (struct bpf_map_info's first fields)."""

    map_type: int
    key_size: int
    value_size: int
    max_entries: int


def pinned_shape(pin: str) -> MapShape | None:
    """The shape of the map pinned at ``pin``, or None when nothing is pinned there."""
    if not os.path.exists(pin):
        return None
    fd = obj_get(pin)
    try:
        info = ct.create_string_buffer(MAP_INFO_SIZE)
        bpf_packed(
            BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, MAP_INFO_SIZE, ct.addressof(info))
        )
        map_type, _id, key_size, value_size, max_entries = struct.unpack_from("=IIIII", info.raw)
    finally:
        os.close(fd)
    return MapShape(map_type, key_size, value_size, max_entries)


def check_pinned(pin: str, capacity: int) -> None:
    """Raise CtTableError when a table is pinned at ``pin`` with another layout or
    capacity than a program built for ``capacity`` entries expects: bcc would
    silently reuse it, and the program would run with the old table's size."""
    shape = pinned_shape(pin)
    want = MapShape(BPF_MAP_TYPE_HASH, ct.sizeof(CtKey), ct.sizeof(CtEntry), capacity)
    if shape is None or shape == want:
        return
    raise CtTableError(
        errno.EEXIST,
        f"the connection table pinned at {pin} was created with {shape.max_entries} entries "
        f"(key {shape.key_size} B, value {shape.value_size} B, map type {shape.map_type}); "
        f"this program needs {capacity} entries of {want.key_size} + {want.value_size} B. "
        "Unload every flowc program of the host and remove the pin (its connections go), "
        "or build with the capacity the host already has",
    )


@dataclass
class CtTable:
    """The pinned connection table, opened by path (close it, or use ``with``)."""

    pin: str = CT_PIN
    fd: int = -1

    def __post_init__(self) -> None:
        try:
            self.fd = obj_get(self.pin)
        except BpfSyscallError as exc:
            why = "no flowc program with connection tracking has created it"
            if exc.errno != errno.ENOENT:
                why = exc.strerror or str(exc)
            raise CtTableError(exc.errno, f"connection table {self.pin}: {why}") from None

    def __enter__(self) -> CtTable:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the table's fd (the pinned map stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _keys(self) -> list[CtKey]:
        """Every key, read before anything is deleted (so deletion cannot restart
        the walk); bounded by the map's own size."""
        keys: list[CtKey] = []
        previous: CtKey | None = None
        while True:
            nxt = CtKey()
            attr = struct.pack(
                "=IIQQ",
                self.fd,
                0,
                ct.addressof(previous) if previous is not None else 0,
                ct.addressof(nxt),
            )
            try:
                bpf_packed(BPF_MAP_GET_NEXT_KEY, attr)
            except BpfSyscallError as exc:
                if exc.errno == errno.ENOENT:
                    return keys
                raise
            keys.append(nxt)
            previous = nxt

    def _lookup(self, key: CtKey) -> CtEntry | None:
        entry = CtEntry()
        attr = struct.pack("=IIQQ", self.fd, 0, ct.addressof(key), ct.addressof(entry))
        try:
            bpf_packed(BPF_MAP_LOOKUP_ELEM, attr)
        except BpfSyscallError as exc:
            if exc.errno == errno.ENOENT:
                return None  # gone since the key walk
            raise
        return entry

    def _delete(self, key: CtKey) -> bool:
        attr = struct.pack("=IIQ", self.fd, 0, ct.addressof(key))
        try:
            bpf_packed(BPF_MAP_DELETE_ELEM, attr)
        except BpfSyscallError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def connections(self) -> Iterator[Connection]:
        """Every stored connection (expired ones included until removed)."""
        for key in self._keys():
            entry = self._lookup(key)
            if entry is not None:
                yield connection(key, entry)

    def count(self) -> int:
        """Entries stored (expired ones included until removed): the key walk
        alone, no entry read."""
        return len(self._keys())

    def get(self, key: ConnKey) -> Connection | None:
        """The connection whose original direction is ``key``, if one is stored
        (not the one ``key`` is the reply direction of)."""
        raw, swapped = table_key(key)
        entry = self._lookup(raw)
        if entry is None or entry.swapped != swapped:
            return None
        return connection(raw, entry)

    def put(self, c: Connection) -> None:
        """Store ``c`` (insert or replace): restart adoption, benchmarks, tests.
        Raises BpfSyscallError (E2BIG) when the table is full."""
        key, swapped = table_key(c.key)
        entry = CtEntry(
            expires_ns=c.expires_ns,
            created_ns=c.created_ns,
            last_ns=c.last_ns,
            packets_orig=c.packets[0],
            packets_reply=c.packets[1],
            replied=int(c.replied),
            tcp=int(c.tcp),
            fin_from=c.fin_from,
            start_flags=c.start_flags,
            hook=c.hook_id,
            swapped=swapped,
        )
        attr = struct.pack("=IIQQQ", self.fd, 0, ct.addressof(key), ct.addressof(entry), 0)
        bpf_packed(BPF_MAP_UPDATE_ELEM, attr)

    def remove(self, key: ConnKey) -> bool:
        """Delete the connection whose original direction is ``key``; False when
        there was none."""
        raw, swapped = table_key(key)
        entry = self._lookup(raw)
        return entry is not None and entry.swapped == swapped and self._delete(raw)

    def memlock_bytes(self) -> int:
        """The kernel's memory charge for the whole map (fdinfo ``memlock``)."""
        with open(f"/proc/self/fdinfo/{self.fd}") as info:
            for line in info:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
        raise CtTableError(errno.EINVAL, "fdinfo has no memlock line")

    def flush(self) -> int:
        """Remove every entry; how many went."""
        return sum(self._delete(key) for key in self._keys())

    def gc(self, now_ns: int | None = None) -> int:
        """Remove every entry expired at ``now_ns`` (default: :func:`table_now_ns`);
        how many went. An entry a packet refreshed between the read and the
        delete is re-read first, so gc never removes a live connection."""
        now = table_now_ns() if now_ns is None else now_ns
        gone = 0
        for key in self._keys():
            entry = self._lookup(key)
            if entry is not None and now >= entry.expires_ns:
                again = self._lookup(key)
                if again is not None and now >= again.expires_ns and self._delete(key):
                    gone += 1
        return gone


def table_now_ns() -> int:
    """Now on the program's clock (CLOCK_MONOTONIC_COARSE), in ns."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


def gc(pin: str = CT_PIN, now_ns: int | None = None) -> int:
    """Remove the expired entries of the table pinned at ``pin``; how many went."""
    with CtTable(pin) as table:
        return table.gc(now_ns)
