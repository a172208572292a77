"""Connection tracking in the BPF slow path: what the generator needs to know.

The tracker itself is C (bpf/flowc_ct.h, a line-by-line copy of
:mod:`ir.conntrack`); this module turns a :class:`ir.conntrack.CtConfig` into
the constants that C is compiled with, and decides the *established fast
lane*: when one rule decides every packet in state ``established``, the
program returns that rule's verdict for established packets without running
the classifier (the rule goes into the config map, so a refill that changes
it switches with the bank).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ir.algebra import cube, intersect, is_feasible, subtract
from ir.conntrack import CtConfig, CtTimeouts
from ir.fields import HEADER_SPACE, STATE_ESTABLISHED, Space
from ir.model import Policy, Rule
from ir.valueset import ValueSet

CT_PIN = "/sys/fs/bpf/flowc/ct"
"""Where the host's connection table is pinned (bpffs)."""


@dataclass(frozen=True, slots=True)
class CtSpec:
    """Connection tracking compiled into a program.

    Attributes:
        config: the tracker's behaviour (capacity is the map's size, timeouts,
            tcp_loose and on_full are compiled in); every program of a host must
            be built with the same one, since they share the table.
        pin: the bpffs path of the host's table (tests use their own).
    """

    config: CtConfig = field(default_factory=CtConfig)
    pin: str = CT_PIN

    def __post_init__(self) -> None:
        if not self.pin.startswith("/sys/fs/bpf/") or '"' in self.pin or "\\" in self.pin:
            raise ValueError(f"the connection table's pin {self.pin!r} must be under /sys/fs/bpf/")


def established_rule(policy: Policy, space: Space = HEADER_SPACE) -> Rule | None:
    """The rule that decides every ``established`` packet of ``policy``, or None.

    The first rule that matches some established packet decides all of them
    exactly when its cube holds every established packet (nothing of the
    established cube is left after subtracting it); any earlier rule matches
    none. Sound, not complete: the established cube also holds packets the
    tracker never calls established (later fragments, TCP with invalid flags),
    so a policy that differs only there gets no fast lane.
    """
    established = cube(space, state=ValueSet.of_value(2, STATE_ESTABLISHED))
    for rule in policy.rules:
        met = intersect(established, rule.match.cube)
        if met is None or not is_feasible(space, met):
            continue
        return rule if not subtract(space, established, rule.match.cube) else None
    return None


def ct_defines(spec: CtSpec) -> list[str]:
    """The ``#define`` lines bpf/flowc_ct.h is compiled with."""
    config = spec.config
    out = [
        f'#define FLOWC_CT_PIN "{spec.pin}"',
        f"#define FLOWC_CT_CAPACITY {config.capacity} /* entries; a commit beyond is untracked */",
        f"#define FLOWC_CT_TCP_LOOSE {int(config.tcp_loose)}",
        f"#define FLOWC_CT_ON_FULL_DROP {int(config.on_full == 'drop')} "
        f"/* on_full {config.on_full} */",
        "/* Idle timeouts in seconds (ir/conntrack.py CtTimeouts). */",
    ]
    for f in fields(CtTimeouts):
        out.append(f"#define FLOWC_CT_T_{f.name.upper()} {getattr(config.timeouts, f.name)}ULL")
    return out
