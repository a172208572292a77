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
from collections.abc import Callable, Collection, Iterator
from typing import Any

from backends.bpf import abi as bpf_abi
from backends.bpf.emit import BPF_DIR, ENTRY_FUNCTION, GRID_MAP, BpfProgram, ShapeChanged, lower
from backends.bpf.tables import DIR4, GRID_MAX_GROUPS, LPM6, WORD_BITS, dir_levels
from ir.conntrack import hook_id
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
        peer_redirect: redirect with bpf_redirect_peer to every target (each is a
            veth/netkit device whose peer is in another namespace).
        peer_devices: the redirect targets to reach with bpf_redirect_peer
            (``runtime.netkit.peer_redirect_targets`` decides them from the
            devices' kinds); the others get bpf_redirect.
        memo: let the bitvec classifier remember each class tuple's rule (off: every
            packet walks the bit vectors; for measuring the walk itself).
        _shared: (module, prefix) when :func:`compile_together` compiled this
            program with others: its names carry ``prefix`` in that module.
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
        peer_devices: Collection[str] = (),
        memo: bool = True,
        _shared: tuple[_Module, str] | None = None,
    ) -> None:
        from bcc import BPF  # Debian's python3-bpfcc; imported late so unit tiers need no bcc

        self.program = program
        self.ifindex_of = ifindex_of
        self.peer_redirect = peer_redirect
        self.peer_devices = frozenset(peer_devices)
        self.memo = memo
        # The config's bank word: bit 0 is the live bank, the whole word an epoch
        # that advances on every fill, so the classifier's memo (keyed by it)
        # never answers from tables that have since been rewritten.
        self.epoch = -1
        # The test clock (flowc_config.ct_now_ns): 0, the kernel's clock, unless a
        # test sets it with set_clock().
        self.ct_now_ns = 0
        # The checker's given state (flowc_config flags CT_GIVEN): None tracks.
        self.ct_given: int | None = None
        if program.conntrack is not None:
            # bcc pins the host's connection table on first creation and opens
            # the pinned map afterwards; the directory must exist.
            from runtime.conntrack import CtTableError, check_pinned, ensure_bpffs

            try:
                ensure_bpffs()
                check_pinned(program.conntrack.pin, program.conntrack.config.capacity)
            except CtTableError as exc:
                raise BpfLoadError("maps", str(exc.strerror or exc)) from None
            os.makedirs(os.path.dirname(program.conntrack.pin), exist_ok=True)
        if _shared is None:
            module, self.prefix = _Module(_compile(program.source)), ""
        else:
            module, self.prefix = _shared
        self.module = module
        self.bpf = module.bpf
        prog_type = {"classifier": BPF.SCHED_CLS}[program.target.section]
        self.fn, error, log = _capturing(
            lambda: self.bpf.load_func((self.prefix + ENTRY_FUNCTION).encode(), prog_type)
        )
        if error is not None:
            if _shared is None:
                module.release()
            raise BpfLoadError("verifier", str(error), _tail(log), _dsl_line(log))
        module.users += 1
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
        return self.bpf[(self.prefix + name).encode()]

    # ------------------------------------------------------------ filling
    def fill(self, *, generation: int, events: bool, dedup_ns: int) -> None:
        """Write the program's policy (tables and actions) into bank 0 and make it
        live. Per-rule counters restart, as in :meth:`update`: a refilled program
        counts for the policy it now holds, not for an earlier use of its maps."""
        self.bank = 0
        self.generation, self.events, self.dedup_ns = generation, events, dedup_ns
        self._fill_bank(self.program, 0)
        self._advance_epoch()
        self.set_config(generation=generation, events=events, dedup_ns=dedup_ns)
        self.table(bpf_abi.RULE_STATS_MAP).clear()

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
            conntrack=self.program.conntrack,
        )
        if program.conntrack is not None and self.program.conntrack is None:
            raise ShapeChanged("the policy matches on state and the loaded program tracks nothing")
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
        if self.ct_given is not None:
            flags |= bpf_abi.CONFIG_F_CT_GIVEN | (self.ct_given << bpf_abi.CONFIG_CT_GIVEN_SHIFT)
        fast = self.program.fast_rule
        config = bpf_abi.Config(
            generation=generation,
            flags=flags,
            dedup_ns=dedup_ns,
            bank=self.epoch,
            ct_fast=0 if fast is None else fast + 1,
            ct_now_ns=self.ct_now_ns,
            ct_hook=hook_id(self.program.policy.name),
        )
        self.table(bpf_abi.CONFIG_MAP)[ct.c_uint32(0)] = config

    def set_clock(self, now_ns: int) -> None:
        """Make the connection tracker's "now" ``now_ns`` (the test clock, for
        BPF_PROG_TEST_RUN replays of the reference's timestamps); 0 returns to
        the kernel's CLOCK_MONOTONIC. Only for tests: production never sets it."""
        if now_ns < 0:
            raise ValueError("the test clock cannot be negative")
        self.ct_now_ns = now_ns
        self.set_config(generation=self.generation, events=self.events, dedup_ns=self.dedup_ns)

    def give_state(self, state: int | None) -> None:
        """The checker's mode: every packet is in connection state ``state`` and
        nothing is observed or committed (None: track connections again). For
        ``flowc verify``, which judges the classifier for every state."""
        if state is not None and not 0 <= state <= 3:
            raise ValueError(f"no connection state {state}")
        self.ct_given = state
        self.set_config(generation=self.generation, events=self.events, dedup_ns=self.dedup_ns)

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
                peer = self.peer_redirect or rule.action.device in self.peer_devices
                if rule.action.kind == REDIRECT and peer:
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
                for lo, hi, entry in field_table.entries:
                    values[lo : hi + 1] = [entry] * (hi - lo + 1)
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
        if tables.grid is not None:
            self._fill_grid(program, bank)

    def _fill_grid(self, program: BpfProgram, bank: int) -> None:
        """Write the summary grid's cells into ``bank`` (row-major, rows and columns
        spaced by the compiled-in group capacity)."""
        tables = program.tables
        assert tables is not None and tables.grid is not None
        grid = tables.grid
        n_summary = program.capacities.n_summary
        grid_map = self.table(GRID_MAP)
        n = grid.rows * grid.cols
        keys = (ct.c_uint32 * n)()
        leaves = (grid_map.Leaf * n)()
        mask = (1 << WORD_BITS) - 1
        base = bank * GRID_MAX_GROUPS * GRID_MAX_GROUPS
        for i, bits in enumerate(grid.cells):
            row, col = divmod(i, grid.cols)
            keys[i] = base + row * GRID_MAX_GROUPS + col
            for s in range(n_summary):
                leaves[i].summary[s] = (bits >> (WORD_BITS * s)) & mask
        grid_map.items_update_batch(keys, leaves)

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
        """Release the program and its maps (attached copies stay until detached);
        a module compiled with others is released when the last of them closes."""
        self.module.release()


# The include path is read when compiling (BPF_DIR at that moment), so a test
# can point the compiler at a copy of bpf/.
WARNING_FLAGS = ("-Wno-unused-function", "-Wno-compare-distinct-pointer-types")


def _compile(source: str) -> Any:
    """bcc's module for C text (BpfLoadError with clang's words on failure)."""
    from bcc import BPF

    bpf, error, log = _capturing(
        lambda: BPF(text=source.encode(), cflags=[f"-I{BPF_DIR}", *WARNING_FLAGS])
    )
    if error is not None:
        raise BpfLoadError("compile", str(error), _tail(log))
    return bpf


class _Module:
    """A compiled bcc module and how many loaded programs still use it."""

    def __init__(self, bpf: Any) -> None:
        self.bpf = bpf
        self.users = 0

    def release(self) -> None:
        """One user fewer; the maps and programs go with the last."""
        self.users -= 1
        if self.users <= 0:
            self.bpf.cleanup()


# Headers whose definitions every program shares (they depend on no per-program
# macro), so a batch includes them once; flowc_bitvec.h sizes its structs by
# the program's FLOWC_N_FIELDS and is pasted into each program instead.
SHARED_HEADERS = ("flowc_common.h", "flowc_parse.h")
_DEFINED = re.compile(r"^(?:#define (\w+)|static .*?\b(\w+)\()", re.M)


def _shared_names() -> frozenset[str]:
    """The macros and functions the shared headers define (their struct tags
    are told apart by the ``struct`` before them)."""
    names: set[str] = set()
    for header in SHARED_HEADERS:
        for match in _DEFINED.finditer((BPF_DIR / header).read_text()):
            names.update(n for n in match.groups() if n)
    return frozenset(names)


def prefixed_source(source: str, prefix: str) -> str:
    """A generated program's C with every ``flowc_`` name it defines (maps,
    functions, structs of its own) carrying ``prefix``, flowc_bitvec.h pasted
    in, and its macros undefined at its end, so several such texts compile as
    one translation unit without clashing (:func:`compile_together`)."""
    bitvec = [
        line
        for line in (BPF_DIR / "flowc_bitvec.h").read_text().splitlines()
        if line.strip() != "#pragma once" and not line.startswith("#include")
    ]
    text = source.replace('#include "flowc_bitvec.h"', "\n".join(bitvec))
    shared = _shared_names()
    own_structs = set(re.findall(r"^struct (flowc_\w+) \{", text, re.M))

    def rename(match: re.Match[str]) -> str:
        struct, name = match.group(1), match.group(2)
        if (name not in own_structs) if struct else (name in shared):
            return match.group(0)
        return f"{struct or ''}{prefix}{name}"

    body = re.sub(r"(struct\s+)?(?<![\"/])\b(flowc_\w+)\b", rename, text)
    macros = sorted(set(re.findall(r"^#define (\w+)", text, re.M)) - shared)
    return "\n".join([body, *(f"#undef {m}" for m in macros), ""])


def compile_together(programs: list[BpfProgram], **options: Any) -> list[SlowPath]:
    """Load several programs from one bcc compile (the compile's fixed cost,
    clang parsing the kernel headers twice, is paid once; in an emulated guest
    that is most of a minute per program). Each is the program it would be
    alone (tests/kernel/test_bpf_batch.py compares the instructions) with its
    own maps; ``options`` are :class:`SlowPath`'s, for every program."""
    prefixes = [f"p{i}_" for i in range(len(programs))]
    module = _Module(
        _compile(
            "\n".join(prefixed_source(p.source, x) for p, x in zip(programs, prefixes, strict=True))
        )
    )
    module.users = 1  # held while loading, so a failing program does not clean up the rest
    loaded: list[SlowPath] = []
    try:
        for program, prefix in zip(programs, prefixes, strict=True):
            loaded.append(SlowPath(program, _shared=(module, prefix), **options))
    except BaseException:
        for slow_path in loaded:
            slow_path.close()
        raise
    finally:
        module.release()
    return loaded
