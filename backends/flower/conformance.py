"""Whether flower filters fit a NIC profile: keys, mask kinds, port ranges,
actions, table size and distinct masks (what the partitioner must respect and
``flowc verify`` checks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backends.flower.keys import KEYS, Cover
from backends.flower.rules import (
    CT_COMMIT,
    FlowerFilter,
    FlowerMatchError,
    Masked,
    PortRange,
    ct_states,
)
from backends.nic_profile import NicProfile


@dataclass(frozen=True, slots=True)
class ProfileViolation:
    """A filter placed in hardware that the NIC profile says the device cannot hold."""

    filter: FlowerFilter | None
    problem: str

    def __str__(self) -> str:
        if self.filter is None:
            return self.problem
        where = f" ({self.filter.origin})" if self.filter.origin else ""
        return f"{self.filter.label()}{where}: {self.problem}"


def profile_problem(f: FlowerFilter, profile: NicProfile) -> str | None:
    """Why the device ``profile`` describes cannot hold filter ``f`` (None: it can)."""
    if not profile.allows_action(f.action.kind):
        return f"action {f.action.kind} is not offloaded by {profile.name}"
    if f.action.commit and not profile.allows_action(CT_COMMIT):
        return f"ct commit is not offloaded by {profile.name}"
    m = f.match
    for name, key in m.key_items():
        flower_key = KEYS[name]
        variant = flower_key.family_variant(m.family)
        if flower_key.cover == Cover.ADDRESS:
            assert isinstance(key, Masked)
            if profile.address_masks == "prefix" and not _is_prefix_mask(key.mask, variant.width):
                return f"{name} mask {key.mask:#x} is not a prefix ({profile.name})"
        kind = variant.capability
        if kind and not profile.allows_field(kind):
            return f"key {name} is not matched by {profile.name}"
        if flower_key.cover == Cover.CT and kind and profile.allows_field(kind):
            assert isinstance(key, Masked)
            try:
                states = ct_states(key, tracked=True)
            except FlowerMatchError as err:
                return str(err)
            for lo, hi in states.intervals:
                for state in range(lo, hi + 1):
                    if f.chain != 0 and not profile.allows_state(state):
                        word = f"{key.value:#x}/{key.mask:#x}"
                        return f"{name} {word}: a state {profile.name} cannot match"
        if isinstance(key, PortRange) and not profile.port_ranges:
            return f"{name} is a port range; {profile.name} has no range matching"
    return None


def _is_prefix_mask(mask: int, width: int) -> bool:
    low = ~mask & ((1 << width) - 1)
    return low & (low + 1) == 0


def profile_violations(
    filters: Sequence[FlowerFilter], profile: NicProfile
) -> list[ProfileViolation]:
    """What in ``filters`` exceeds ``profile``: keys, masks or actions it lacks,
    more filters or distinct masks than the device holds."""
    out = [
        ProfileViolation(f, problem)
        for f in filters
        if (problem := profile_problem(f, profile)) is not None
    ]
    if len(filters) > profile.max_rules:
        out.append(
            ProfileViolation(
                None, f"{len(filters)} filters; {profile.name} holds {profile.max_rules}"
            )
        )
    masks = {f.match.mask_signature() for f in filters}
    if len(masks) > profile.max_masks:
        out.append(
            ProfileViolation(
                None, f"{len(masks)} distinct masks; {profile.name} holds {profile.max_masks}"
            )
        )
    return out
