"""An in-memory smart NIC flower table: the installer interface without a kernel.

No hardware NIC exists on these machines, so the cache agent's logic (and
``flowc simulate``) runs against this model of one: a flower table with the
limits a NIC profile names (table size, distinct masks), an insertion rate
limit, and per-filter statistics with a last-used time. It answers
:meth:`add`, :meth:`delete`, :meth:`dump`, :meth:`verify`, :meth:`install`
and :meth:`flush` as :class:`runtime.flower_installer.FlowerInstaller` does,
refusals included (same :class:`FlowerInstallError`, errno and message per
filter), and :meth:`classify` plays a packet through the table the way
flower's semantics say (priority, then handle), counting the hit.

Refusals, as a driver reports them: ENOSPC when the table is full, ENOSPC
with "mask" when a new mask signature would exceed the mask budget, EBUSY
when the insertion rate is exceeded, EOPNOTSUPP for a key or action the
profile does not offload, EEXIST for a duplicate without replace.
"""

from __future__ import annotations

import dataclasses
import errno
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from backends.flower.conformance import profile_problem
from backends.flower.rules import FlowerFilter, InstallFlags, classify, ordered
from backends.nic_profile import NicProfile
from ir.packet import Packet
from runtime.flower_installer import FilterFailure, FlowerInstallError, Mismatch
from runtime.flower_netlink import InstalledFilter
from runtime.token_bucket import TokenBucket

Key = tuple[int, int, int]


@dataclass(slots=True)
class _Slot:
    filter: FlowerFilter
    packets: int = 0
    bytes: int = 0
    last_hit: float | None = None


class NicModel:
    """A flower table with a NIC's limits, driven through the installer interface.

    Args:
        profile: the NIC profile (table size, mask budget, keys, actions).
        insert_rate: filters the device accepts per second (None: no limit),
            enforced as a token bucket with one second of burst.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        profile: NicProfile,
        *,
        insert_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        device: str = "nicmodel0",
        direction: str = "ingress",
    ) -> None:
        self.profile = profile
        self.insert_rate = insert_rate
        self.clock = clock
        self.device = device
        self.direction = direction
        self.slots: dict[Key, _Slot] = {}
        self.mask_refs: Counter[tuple[object, ...]] = Counter()
        self._inserts = TokenBucket(insert_rate, clock())
        self._order: list[FlowerFilter] | None = None
        self.inserts = 0
        self.refusals: Counter[int] = Counter()

    # ----------------------------------------------------------- the interface
    def __enter__(self) -> NicModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (the interface has it)."""

    def ensure_clsact(self) -> None:
        """The model's hook always exists."""

    def add(self, filters: Sequence[FlowerFilter], *, replace: bool = False) -> None:
        """Create ``filters`` (or replace them in place); refusals are listed in a
        FlowerInstallError and the others stay installed, as with the kernel."""
        failures = []
        for f in filters:
            signature = f.match.mask_signature()
            problem = self._refusal(f, replace, signature)
            if problem is not None:
                self.refusals[problem[0]] += 1
                failures.append(FilterFailure(f, *problem))
                continue
            key = _key(f)
            if key in self.slots:
                self._release(self.slots[key].filter)
            # The kernel keeps no DSL origin (a direct copy: dataclasses.replace
            # was a tenth of a cached connection's cost).
            stored = (
                f
                if f.origin is None
                else FlowerFilter(
                    f.chain, f.prio, f.handle, f.match, f.action, f.flags, f.cookie, None
                )
            )
            self.slots[key] = _Slot(stored)
            self.mask_refs[signature] += 1
            self.inserts += 1
            self._order = None
        if failures:
            raise FlowerInstallError(failures)

    def delete(self, filters: Sequence[FlowerFilter], *, missing_ok: bool = True) -> None:
        """Delete ``filters`` by (chain, prio, handle)."""
        failures = []
        for f in filters:
            slot = self.slots.pop(_key(f), None)
            if slot is None:
                if not missing_ok:
                    failures.append(FilterFailure(f, errno.ENOENT, "no such filter"))
                continue
            self._release(slot.filter)
            self._order = None
        if failures:
            raise FlowerInstallError(failures)

    def dump(
        self, chain: int | None = None, *, unreadable: list[str] | None = None
    ) -> list[InstalledFilter]:
        """Every filter (of one chain, or all) with its counters; ``last_used`` is
        seconds since the last hit (None: never hit)."""
        now = self.clock()
        hardware = self.profile.install_flags != InstallFlags.SKIP_HW
        out = []
        for slot in sorted(self.slots.values(), key=lambda s: _key(s.filter)):
            if chain is not None and slot.filter.chain != chain:
                continue
            in_hw = hardware and slot.filter.flags != InstallFlags.SKIP_HW
            last_used = None if slot.last_hit is None else max(now - slot.last_hit, 0.0)
            out.append(
                InstalledFilter(slot.filter, slot.packets, slot.bytes, last_used, in_hw, int(in_hw))
            )
        return out

    def verify(self, requested: Iterable[FlowerFilter]) -> list[Mismatch]:
        """Requested filters the table does not hold as requested."""
        out = []
        for want in requested:
            slot = self.slots.get(_key(want))
            if slot is None:
                out.append(Mismatch(want, "not installed"))
            elif slot.filter != dataclasses.replace(want, origin=None):
                out.append(Mismatch(want, "reads back differently"))
        return out

    def install(self, filters: Sequence[FlowerFilter], *, replace: bool = False) -> None:
        """Add and verify, as the real installer does."""
        self.add(filters, replace=replace)
        problems = self.verify(filters)
        if problems:
            raise FlowerInstallError([FilterFailure(p.filter, 0, p.problem) for p in problems])

    def flush(self, *, only_flowc: bool = True) -> int:
        """Delete the filters (flowc's only, by default); how many were deleted."""
        victims = [
            s.filter for s in self.slots.values() if s.filter.cookie is not None or not only_flowc
        ]
        self.delete(victims)
        return len(victims)

    # ------------------------------------------------------------ the datapath
    def classify(self, packet: Packet, nbytes: int = 64) -> FlowerFilter | None:
        """The chain-0 filter that decides ``packet`` (None: no filter matches,
        or it traps to the slow path); counts the hit on the deciding filter."""
        if self._order is None:
            self._order = ordered(s.filter for s in self.slots.values())
        verdict = classify(self._order, packet)
        if verdict.filter is None:
            return None
        slot = self.slots[_key(verdict.filter)]
        slot.packets += 1
        slot.bytes += nbytes
        slot.last_hit = self.clock()
        return None if verdict.trapped else verdict.filter

    def hit(self, f: FlowerFilter, nbytes: int = 64) -> None:
        """Count a packet on ``f`` (a caller that found the filter by its own
        index, as a fast path for long traces: :meth:`classify` scans)."""
        slot = self.slots[_key(f)]
        slot.packets += 1
        slot.bytes += nbytes
        slot.last_hit = self.clock()

    @property
    def occupancy(self) -> int:
        """Filters installed."""
        return len(self.slots)

    @property
    def distinct_masks(self) -> int:
        """Mask signatures in use."""
        return len(self.mask_refs)

    def _release(self, f: FlowerFilter) -> None:
        """Drop ``f``'s reference to its mask (freed with the last filter using it)."""
        signature = f.match.mask_signature()
        self.mask_refs[signature] -= 1
        if not self.mask_refs[signature]:
            del self.mask_refs[signature]

    # ---------------------------------------------------------------- limits
    def _refusal(
        self, f: FlowerFilter, replace: bool, signature: tuple[object, ...]
    ) -> tuple[int, str] | None:
        key = _key(f)
        exists = key in self.slots
        if exists and not replace:
            return errno.EEXIST, "filter exists (use replace)"
        if f.flags != InstallFlags.SKIP_HW:
            problem = profile_problem(f, self.profile)
            if problem is not None:
                return errno.EOPNOTSUPP, problem
        if not exists and len(self.slots) >= self.profile.max_rules:
            return errno.ENOSPC, f"table full ({self.profile.max_rules} filters)"
        if signature not in self.mask_refs and len(self.mask_refs) >= self.profile.max_masks:
            return errno.ENOSPC, f"no free mask ({self.profile.max_masks} masks in use)"
        if not self._inserts.take(self.clock()):
            return errno.EBUSY, f"insertion rate limit ({self.insert_rate:g}/s)"
        return None


def _key(f: FlowerFilter) -> Key:
    return (f.chain, f.prio, f.handle)
