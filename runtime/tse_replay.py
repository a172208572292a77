"""Tuple-space-explosion replay: well-behaved flows and crafted attack flows through
slow path, event queue, rule cache and NIC model, on a simulated clock.

The attack (Csikor et al., "Tuple Space Explosion", CoNEXT 2019; CVE-2019-25076)
sends packets whose megaflows each need a mask no other megaflow has: a packet
one bit away from a rule's edge in some field gets a megaflow exactly as wide
as that bit allows, so flipping bit ``k`` of a field (and bit ``j`` of another)
asks for a different mask tuple each time. In OVS every mask is one more hash
probe for every packet; on a NIC the masks are a hard budget (the profile's
``max_masks``), so the question is what the attack takes from everyone else:
mask slots, table space, the insertion budget and the agent's event queue.

:func:`replay` plays a labelled trace the way the agent sees it: a packet the
cache rules decide is counted on its rule; any other packet is decided by the
policy (the slow path: first match, what the BPF program computes) and, at
most once per flow per de-duplication interval, reported into the agent's
bounded :class:`runtime.agent.core.EventQueue`; the agent drains the queue
at its own rate into :meth:`runtime.flow_cache.FlowCache.on_miss`. Every
packet's decision is checked against the IR interpreter, cache hits included.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.bpf import abi as bpf_abi
from ir.fields import HEADER_SPACE
from ir.interp import evaluate
from ir.model import Policy
from ir.packet import Packet, point_problems
from runtime.agent.core import EventQueue
from runtime.flow_cache import CacheConfig, FlowCache
from runtime.nic_model import NicModel

if TYPE_CHECKING:  # imported for real through runtime.flow_cache (an import cycle otherwise)
    from backends.nic_profile import NicProfile

# Fields an attacker on the wire controls, and whose bits megaflows mask.
ATTACK_FIELDS = ("ip4_src", "ip4_dst", "sport", "dport")


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """The replay's clock and the agent's limits.

    Attributes:
        pps: packets per simulated second (all flows together).
        agent_rate: miss events the agent turns into rules per simulated second.
        queue_size: the agent's event queue (events beyond it are dropped, counted).
        dedup_s: the slow path reports one flow at most once per this interval.
        tick_s: how often the agent drains the queue.
    """

    pps: float = 10_000.0
    agent_rate: float = 2_000.0
    queue_size: int = 4096
    dedup_s: float = 1.0
    tick_s: float = 0.01


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replay measured (``good``: packets not labelled as attack)."""

    packets: int
    good_packets: int
    good_hits: int
    attack_packets: int
    attack_hits: int
    peak_masks: int  # distinct masks on the NIC, at most, during the run
    mask_budget: int
    masks_requested: int  # distinct mask tuples among the megaflows the cache built
    peak_queue: int
    queue_capacity: int
    events_dropped: int
    installs: int
    refusals: int
    wrong_verdicts: int  # packets decided otherwise than the IR decides them

    @property
    def good_hit_ratio(self) -> float:
        """Share of well-behaved packets the cache rules decided."""
        return self.good_hits / self.good_packets if self.good_packets else 0.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def attack_packets(
    seeds: Sequence[Packet], count: int, *, seed: int = 0, fields: Sequence[str] = ATTACK_FIELDS
) -> list[Packet]:
    """``count`` distinct crafted packets: a seed packet with one bit flipped in each
    of two attacker-controlled fields, over every (field, bit, field, bit) choice
    in turn, so megaflows need as many different mask tuples as the policy allows."""
    rng = random.Random(seed)
    choices = [
        (f, k)
        for f in fields
        for k in range(HEADER_SPACE.field(f).width)
        if f in HEADER_SPACE.index
    ]
    out: list[Packet] = []
    seen: set[tuple[int, ...]] = set()
    attempts = 0
    while len(out) < count and attempts < 50 * count:
        attempts += 1
        base = list(rng.choice(seeds).values)
        for name, bit in rng.sample(choices, 2):
            base[HEADER_SPACE.index[name]] ^= 1 << bit
        point = tuple(base)
        if point in seen or point_problems(HEADER_SPACE, point):
            continue
        seen.add(point)
        out.append(Packet(point))
    return out


def mixed(
    good: Sequence[Packet], attack: Sequence[Packet], share: float, *, seed: int = 0
) -> list[tuple[Packet, bool]]:
    """The good trace with attack packets interleaved so that ``share`` of all
    packets are attack packets (each crafted packet sent once, in order)."""
    if not 0.0 <= share < 1.0:
        raise ValueError("attack share must be in [0, 1)")
    rng = random.Random(seed)
    out: list[tuple[Packet, bool]] = []
    pending = list(attack)
    pending.reverse()
    for packet in good:
        out.append((packet, False))
        while pending and rng.random() < share / (1.0 - share):
            out.append((pending.pop(), True))
    return out


def replay(
    policy: Policy,
    trace: Iterable[tuple[Packet, bool]],
    profile: NicProfile,
    cache_config: CacheConfig | None = None,
    config: ReplayConfig | None = None,
) -> ReplayResult:
    """Play ``trace`` (packet, is-attack) through the pipeline (module docstring)."""
    cache_config = cache_config or CacheConfig()
    config = config or ReplayConfig()
    clock = _Clock()
    model = NicModel(profile, clock=clock)
    cache = FlowCache(policy, profile, model, cache_config, clock=clock)
    queue = EventQueue(config.queue_size)
    reported: dict[tuple[int, ...], float] = {}
    masks_requested: set[tuple[int, ...]] = set()
    counts = {"packets": 0, "good": 0, "good_hits": 0, "attack": 0, "attack_hits": 0}
    peak_masks = peak_queue = wrong = 0
    next_poll = 1.0
    next_tick = config.tick_s
    budget = 0.0
    for packet, is_attack in trace:
        counts["packets"] += 1
        clock.now = counts["packets"] / config.pps
        if clock.now >= next_tick:
            budget = min(
                budget + (clock.now - next_tick + config.tick_s) * config.agent_rate,
                config.agent_rate,
            )
            next_tick = clock.now + config.tick_s
            handled = queue.pop(int(budget))
            budget -= len(handled)
            for point, rule, generation, _ts in handled:
                cache.on_miss(point, rule=rule, generation=generation)
            masks_requested.update(e.flow.masks for e in cache.entries.values())
            peak_masks = max(peak_masks, model.distinct_masks)
        if clock.now >= next_poll:
            cache.expire()
            next_poll = clock.now + 1.0
        counts["attack" if is_attack else "good"] += 1
        want = evaluate(policy, packet).rule.priority
        entry = cache.lookup(packet.values)
        got: int | None
        if entry is not None:
            model.hit(entry.filter)
            counts["attack_hits" if is_attack else "good_hits"] += 1
            got = entry.flow.rule
        else:
            got = cache.regions.rule_of(packet.values)
            last = reported.get(packet.values)
            if last is None or clock.now - last >= config.dedup_s:
                reported[packet.values] = clock.now
                event = bpf_abi.Event(
                    key=bpf_abi.FlowKey.from_packet(packet),
                    rule=got if got is not None else 0,
                    generation=cache.generation,
                )
                queue.push(event)
                peak_queue = max(peak_queue, len(queue))
        # A cache rule must give its packets their own rule's action; the slow
        # path must give every other packet its first matching rule.
        if got is None or policy.rules[got].action != policy.rules[want].action:
            wrong += 1
    stats = cache.stats
    return ReplayResult(
        packets=counts["packets"],
        good_packets=counts["good"],
        good_hits=counts["good_hits"],
        attack_packets=counts["attack"],
        attack_hits=counts["attack_hits"],
        peak_masks=max(peak_masks, model.distinct_masks),
        mask_budget=profile.max_masks,
        masks_requested=len(masks_requested),
        peak_queue=peak_queue,
        queue_capacity=config.queue_size,
        events_dropped=queue.dropped,
        installs=stats["installs"],
        refusals=stats["install_failures"],
        wrong_verdicts=wrong,
    )
