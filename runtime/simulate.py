"""``flowc simulate``: replay a packet trace through slow path + rule cache, in Python.

Each packet is looked up in the cache rules (the NIC model's table); a miss
is decided by the policy (the IR interpreter's first match, what the BPF
slow path computes) and handed to :class:`runtime.flow_cache.FlowCache` as a
miss event. Packets arrive at a fixed rate on a simulated clock, and the
cache polls the model's counters once per simulated second, so idle
eviction and the insertion rate limit act as they would on a device.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from backends.nic_profile import NicProfile
from ir.model import Policy
from ir.packet import Packet
from runtime.flow_cache import CacheConfig, FlowCache
from runtime.nic_model import NicModel


@dataclass(frozen=True, slots=True)
class SimResult:
    """What one replay measured."""

    mode: str
    packets: int
    hits: int
    misses: int
    installs: int
    evictions: int
    refusals: int
    peak_occupancy: int
    final_occupancy: int
    distinct_masks: int
    seconds: float
    miss_seconds: float

    @property
    def hit_ratio(self) -> float:
        """Share of packets the cache rules decided."""
        return self.hits / self.packets if self.packets else 0.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    policy: Policy,
    packets: Iterable[Packet],
    profile: NicProfile,
    config: CacheConfig,
    *,
    pps: float = 10_000.0,
    insert_rate: float | None = None,
) -> SimResult:
    """Replay ``packets`` (arriving ``pps`` per simulated second) through the cache."""
    clock = _Clock()
    model = NicModel(profile, insert_rate=insert_rate, clock=clock)
    cache = FlowCache(policy, profile, model, config, clock=clock)
    hits = misses = count = 0
    next_poll = 1.0
    miss_seconds = 0.0
    start = time.perf_counter()
    for count, packet in enumerate(packets, start=1):
        clock.now = count / pps
        if clock.now >= next_poll:
            cache.expire()
            next_poll = clock.now + 1.0
        entry = cache.lookup(packet.values)
        if entry is not None:
            model.hit(entry.filter)
            hits += 1
            continue
        misses += 1
        began = time.perf_counter()
        cache.on_miss(packet.values, rule=cache.regions.rule_of(packet.values))
        miss_seconds += time.perf_counter() - began
    stats = cache.stats
    return SimResult(
        mode=config.mode,
        packets=count,
        hits=hits,
        misses=misses,
        installs=stats["installs"],
        evictions=stats["evictions_idle"] + stats["evictions_lru"],
        refusals=stats["install_failures"],
        peak_occupancy=cache.peak_occupancy,
        final_occupancy=cache.occupancy,
        distinct_masks=len({e.flow.masks for e in cache.entries.values()}),
        seconds=time.perf_counter() - start,
        miss_seconds=miss_seconds,
    )
