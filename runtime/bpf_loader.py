"""Compile a generated slow path with bcc, load it (the real verifier), fill its maps.

Failures come back as :class:`BpfLoadError` with the compiler's or the
verifier's own words (the tail of its log), never as a bcc traceback.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from backends.bpf import abi as bpf_abi
from backends.bpf.emit import BPF_DIR, ENTRY_FUNCTION, BpfProgram, lower
from backends.bpf.tables import DIR4, LPM6, dir_levels
from ir.model import MIRROR, REDIRECT, Policy
from runtime.kernel_clock import JiffiesClock, kernel_hz

LOG_TAIL_LINES = 25


class BpfLoadError(Exception):
    """Compiling or loading the program failed.

    Attributes:
        stage: ``compile``, ``verifier`` or ``maps``.
        log_tail: the last lines of clang's or the verifier's output.
        dsl_line: the policy line involved, when the log names one.
    """

    def __init__(self, stage: str, message: str, log_tail: str = "", dsl_line: int | None = None):
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.log_tail = log_tail
        self.dsl_line = dsl_line

    def __str__(self) -> str:
        where = f" (policy line {self.dsl_line})" if self.dsl_line else ""
        tail = f"\n{self.log_tail}" if self.log_tail else ""
        return f"{self.stage} failed{where}: {self.message}{tail}"


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C code writes to fd 2 (libbcc prints clang errors and verifier logs)."""
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _capturing(step: Callable[[], Any]) -> tuple[Any, Exception | None, str]:
    """Run a bcc step, returning (result, the exception it raised, what C code printed)."""
    result, error = None, None
    with _captured_stderr() as out:
        try:
            result = step()
        except Exception as exc:  # bcc raises bare Exception for clang and verifier failures
            error = exc
    return result, error, out[0]


def _dsl_line(log: str) -> int | None:
    """The DSL line the verifier log points at last, via the rule comments the C carries."""
    lines = re.findall(r"(?:rule \d+|default): \S+:(\d+)", log)
    return int(lines[-1]) if lines else None


def _update_u32_array(table: Any, values: list[int], offset: int = 0) -> None:
    """Write ``values`` to indexes offset.. of a u32 array map in one batch."""
    n = len(values)
    keys = (ct.c_uint32 * n)(*range(offset, offset + n))
    table.items_update_batch(keys, (ct.c_uint32 * n)(*values))


def device_ifindex(name: str) -> int:
    """The ifindex of a network device in this network namespace (OSError if none)."""
    return socket.if_nametoindex(name)


class SlowPath:
    """A flowc program compiled, verified and loaded, with its maps filled.

    Args:
        program: the generated C and tables (``backends.bpf.emit.lower``).
        ifindex_of: resolves redirect/mirror devices to ifindexes.
        generation: policy generation stamped on miss events.
        events: emit miss events on the ring buffer.
        dedup_ns: report a flow at most once per this interval.
        peer_redirect: redirect with bpf_redirect_peer (target is a veth/netkit peer).
        memo: let the bitvec classifier remember each class tuple's rule (off: every
            packet walks the bit vectors; for measuring the walk itself).
    """

    def __init__(
        self,
        program: BpfProgram,
        *,
        ifindex_of: Callable[[str], int] = device_ifindex,
        generation: int = 1,
        events: bool = False,
        dedup_ns: int = 1_000_000_000,
        peer_redirect: bool = False,
        memo: bool = True,
    ) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported late so unit tiers need no bcc

        self.program = program
        self.ifindex_of = ifindex_of
        self.peer_redirect = peer_redirect
        self.memo = memo
        # The config's bank word: bit 0 is the live bank, the whole word an epoch
        # that advances on every fill, so the classifier's memo (keyed by it)
        # never answers from tables that have since been rewritten.
        self.epoch = -1
        cflags = [f"-I{BPF_DIR}", "-Wno-unused-function", "-Wno-compare-distinct-pointer-types"]
        self.bpf, error, log = _capturing(lambda: BPF(text=program.source.encode(), cflags=cflags))
        if error is not None:
            raise BpfLoadError("compile", str(error), _tail(log))
        prog_type = {"classifier": BPF.SCHED_CLS}[program.target.section]
        self.fn, error, log = _capturing(
            lambda: self.bpf.load_func(ENTRY_FUNCTION.encode(), prog_type)
        )
        if error is not None:
            self.bpf.cleanup()
            raise BpfLoadError("verifier", str(error), _tail(log), _dsl_line(log))
        try:
            self.fill(generation=generation, events=events, dedup_ns=dedup_ns)
        except Exception:
            self.close()
            raise

    @property
    def fd(self) -> int:
        """The program's file descriptor."""
        fd: int = self.fn.fd
        return fd

    def table(self, name: str) -> Any:
        """A bcc table of the program."""
        return self.bpf[name.encode()]

    # ------------------------------------------------------------ filling
    def fill(self, *, generation: int, events: bool, dedup_ns: int) -> None:
        """Write the program's policy (tables and actions) into bank 0 and make it live."""
        self.bank = 0
        self.generation, self.events, self.dedup_ns = generation, events, dedup_ns
        self._fill_bank(self.program, 0)
        self._advance_epoch()
        self.set_config(generation=generation, events=events, dedup_ns=dedup_ns)

    def update(self, policy: Policy, *, generation: int) -> None:
        """Switch to ``policy`` without recompiling: fill the idle bank of every map,
        then flip the live bank in one write, so each packet sees either the old
        or the new policy, never a mix. Per-rule counters restart (rule ids change).

        Raises:
            ShapeChanged: the policy needs other fields or larger maps; load a new
                program and replace the attached one instead.
        """
        program = lower(
            policy,
            self.program.strategy,
            capacities=self.program.capacities,
            target=self.program.target,
        )
        idle = 1 - self.bank
        self._fill_bank(program, idle)
        self.program = program
        self.bank = idle
        self._advance_epoch()
        self.generation = generation
        self.set_config(generation=generation, events=self.events, dedup_ns=self.dedup_ns)
        self.table(bpf_abi.RULE_STATS_MAP).clear()

    def _advance_epoch(self) -> None:
        """The next epoch whose low bit is the live bank (wraps at 32 bits)."""
        self.epoch = (self.epoch + 1) & 0xFFFFFFFF
        if self.epoch & 1 != self.bank:
            self.epoch = (self.epoch + 1) & 0xFFFFFFFF

    def set_memo(self, enabled: bool) -> None:
        """Turn the classifier's class-tuple memo on or off (takes effect at once)."""
        self.memo = enabled
        self.set_config(generation=self.generation, events=self.events, dedup_ns=self.dedup_ns)

    def set_config(self, *, generation: int, events: bool, dedup_ns: int) -> None:
        """Rewrite the config entry (live bank and epoch, generation, flags, dedup interval)."""
        flags = bpf_abi.CONFIG_F_EVENTS if events else 0
        if not self.memo:
            flags |= bpf_abi.CONFIG_F_NO_MEMO
        config = bpf_abi.Config(
            generation=generation, flags=flags, dedup_ns=dedup_ns, bank=self.epoch
        )
        self.table(bpf_abi.CONFIG_MAP)[ct.c_uint32(0)] = config

    def _fill_bank(self, program: BpfProgram, bank: int) -> None:
        policy = program.policy
        if program.tables is not None:
            self._fill_tables(program, bank)
        actions = self.table(bpf_abi.ACTIONS_MAP)
        base = bank * program.capacities.n_rules
        for rule in policy.rules:
            entry = bpf_abi.ActionEntry(kind=bpf_abi.ACTION_CODES[rule.action.kind])
            if rule.action.kind in (REDIRECT, MIRROR):
                assert rule.action.device is not None
                try:
                    entry.ifindex = self.ifindex_of(rule.action.device)
                except OSError:
                    raise BpfLoadError(
                        "maps",
                        f"device {rule.action.device!r} ({rule.action.kind} target of "
                        f"{rule.origin}) does not exist",
                        dsl_line=rule.origin.line,
                    ) from None
                if rule.action.kind == REDIRECT and self.peer_redirect:
                    entry.flags = bpf_abi.ACTION_F_PEER
            if rule.action.mark is not None:
                entry.mark = rule.action.mark
            actions[ct.c_uint32(base + rule.priority)] = entry

    def _fill_tables(self, program: BpfProgram, bank: int) -> None:
        tables = program.tables
        assert tables is not None
        caps = program.capacities
        class_cap = dict(caps.classes)
        dir_cap = {name: (l2, l3) for name, l2, l3 in caps.dir_entries}
        for field_table in tables.fields:
            name = field_table.field
            if field_table.kind == DIR4:
                level1, level2, level3 = dir_levels(field_table)
                l2_cap, l3_cap = dir_cap[name]
                for level, entries, size in (
                    (1, level1, bpf_abi.DIR_L1_ENTRIES),
                    (2, level2, l2_cap),
                    (3, level3, l3_cap),
                ):
                    if entries:
                        table = self.table(bpf_abi.dir_map(level, name))
                        _update_u32_array(table, entries, offset=bank * size)
            elif field_table.kind == LPM6:
                cls_map = self.table(bpf_abi.class_map(name))
                stale = [key for key in cls_map if key.bank == bank]
                for key in stale:
                    del cls_map[key]
                for value, plen, cls in field_table.lpm_entries():
                    key = cls_map.Key()
                    key.prefixlen = bpf_abi.LPM6_BANK_BITS + plen
                    key.bank = bank
                    for i, byte in enumerate(value.to_bytes(16, "big")):
                        key.addr[i] = byte
                    cls_map[key] = ct.c_uint32(cls)
            else:
                size = bpf_abi.array_entries(field_table.width)
                values = [0] * size
                for lo, hi, cls in field_table.intervals:
                    values[lo : hi + 1] = [cls] * (hi - lo + 1)
                _update_u32_array(self.table(bpf_abi.class_map(name)), values, offset=bank * size)
            bv_map = self.table(bpf_abi.bitvec_map(name))
            n = len(field_table.classes)
            base = bank * class_cap[name]
            keys = (ct.c_uint32 * n)(*range(base, base + n))
            leaves = (bv_map.Leaf * n)()
            for cls, bits in enumerate(field_table.classes):
                summary, words = tables.bitvector_words(bits, caps.n_words, caps.n_summary)
                for i, word in enumerate(summary):
                    leaves[cls].summary[i] = word
                for i, word in enumerate(words):
                    leaves[cls].words[i] = word
            bv_map.items_update_batch(keys, leaves)

    # ----------------------------------------------------------- reading
    def rule_stats(self) -> list[tuple[int, int, int]]:
        """(packets, bytes, last hit as CLOCK_MONOTONIC ns or 0) per rule id, summed
        over CPUs (the program stamps jiffies; this converts them)."""
        stats = self.table(bpf_abi.RULE_STATS_MAP)
        clock = JiffiesClock.read(kernel_hz())
        out = []
        for rule in range(len(self.program.policy.rules)):
            per_cpu = stats[ct.c_uint32(rule)]
            last = max(s.last_jiffies for s in per_cpu)
            out.append(
                (
                    sum(s.packets for s in per_cpu),
                    sum(s.bytes for s in per_cpu),
                    clock.to_monotonic_ns(last) if last else 0,
                )
            )
        return out

    def status(self) -> dict[str, int]:
        """The status counters (non-IP, malformed, events sent/lost, ...)."""
        table = self.table(bpf_abi.STATUS_MAP)
        return {
            name: int(sum(table[ct.c_uint32(i)])) for i, name in enumerate(bpf_abi.STATUS_NAMES)
        }

    def open_events(self, callback: Callable[[bpf_abi.Event], None]) -> None:
        """Deliver ring-buffer events to ``callback`` when :meth:`poll_events` runs."""

        def on_event(_ctx: Any, data: Any, _size: int) -> None:
            callback(ct.cast(data, ct.POINTER(bpf_abi.Event)).contents)

        self.table(bpf_abi.EVENTS_MAP).open_ring_buffer(on_event)

    def poll_events(self, timeout_ms: int = 100) -> None:
        """Wait up to ``timeout_ms`` for events and deliver them."""
        self.bpf.ring_buffer_poll(timeout_ms)

    def close(self) -> None:
        """Release the program and its maps (attached copies stay until detached)."""
        self.bpf.cleanup()
